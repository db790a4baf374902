"""A local multi-coordinator deployment on loopback: one etcd, N coordinator *processes* with the
software TEE. Used by ``hack/cluster``, the cluster tests and the convergence benchmark.

Each coordinator runs ``coordinator.service.server.serve`` in its own interpreter
(``sys.executable``) under :class:`coordinator.supervisor.Supervised`, with every port chosen by
the kernel; the process prints one JSON line ``{"event": "serving", "pid", "user", "mesh",
"http"}`` once it listens, which is how its addresses are learnt. Slots keep their node id
across restarts (``c0``, ``c1``, ...), so a restarted coordinator takes over its own membership
key. Every process started here is stopped at interpreter exit at the latest.

Run ``python -m tools.cluster --help`` (what ``hack/cluster`` does).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import json
import shutil
import signal
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.supervisor import ChildExited, Supervised, SupervisorError, python_env

REPO = Path(__file__).resolve().parents[1]

COORDINATOR_POLICY = b"concord test policy: coordinator\n"
"""The policy the mock coordinator CVMs run (same bytes as the service tests use)."""

SERVE_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

# The child: configure logging, build the ServerConfig from argv[1] and serve until SIGTERM.
_CHILD = """
import asyncio, json, sys
from pathlib import Path
from coordinator.service.server import ServerConfig, serve, setup_logging
cfg = json.loads(sys.argv[1])
setup_logging(cfg.pop("log_level"))
cfg["mock_policy"] = Path(cfg["mock_policy"])
cfg["peers"] = tuple(cfg.get("peers", ()))
asyncio.run(serve(ServerConfig(**cfg)))
"""

_LIVE: weakref.WeakSet[CoordinatorProcess] = weakref.WeakSet()


class ClusterError(RuntimeError):
    """A coordinator did not come up; the message points at its log."""

    reason = "coordinator_not_serving"


@dataclass(frozen=True)
class Addresses:
    pid: int
    user: str
    mesh: str
    http: str


def _is_serving(info: dict[str, Any]) -> bool:
    return info.get("event") == "serving"


class CoordinatorProcess:
    """One coordinator slot: a node id, a log file, and the supervised process running it."""

    def __init__(self, node_id: str, workdir: Path, config: dict[str, Any]) -> None:
        self.node_id = node_id
        self.workdir = workdir
        self.config = config
        self.log_path = workdir / f"{node_id}.log"
        self._child: Supervised | None = None
        self.addresses: Addresses | None = None
        self.starts = 0
        _LIVE.add(self)

    # -- addresses ---------------------------------------------------------------------------

    def _addr(self) -> Addresses:
        if self.addresses is None:
            raise ClusterError(f"coordinator {self.node_id} is not serving")
        return self.addresses

    @property
    def user(self) -> str:
        return self._addr().user

    @property
    def mesh(self) -> str:
        return self._addr().mesh

    @property
    def http(self) -> str:
        return self._addr().http

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running

    # -- lifecycle ---------------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the process (returns at once; :meth:`wait_serving` waits for its addresses).
        The configuration is read now, so a test may change it between restarts."""
        if self.running:
            raise ClusterError(f"coordinator {self.node_id} is already running")
        self.addresses = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._child = Supervised(
            [sys.executable, "-c", _CHILD, json.dumps(self.config)],
            self.log_path,
            env=python_env(REPO),
            cwd=REPO,
            stop_timeout=STOP_TIMEOUT,
            name=f"coordinator {self.node_id}",
        ).start()
        self.starts += 1

    def wait_serving(self, timeout: float = SERVE_TIMEOUT) -> Addresses:
        if self._child is None:
            raise ClusterError(f"coordinator {self.node_id} was not started")
        try:
            line = self._child.wait_ready(timeout, accept=_is_serving)
        except ChildExited:
            raise ClusterError(f"coordinator {self.node_id} exited; see {self.log_path}") from None
        except SupervisorError:
            raise ClusterError(
                f"coordinator {self.node_id} did not serve in time; see {self.log_path}"
            ) from None
        self.addresses = Addresses(
            pid=int(line["pid"]), user=line["user"], mesh=line["mesh"], http=line["http"]
        )
        return self.addresses

    def start(self, timeout: float = SERVE_TIMEOUT) -> Addresses:
        self.spawn()
        return self.wait_serving(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash (no membership revocation, no graceful shutdown)."""
        if self._child is not None:
            self._child.kill()
        self.addresses = None

    def terminate(self) -> None:
        """SIGTERM without waiting (a graceful stop: the member key is revoked)."""
        if self._child is not None:
            self._child.terminate()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code."""
        self.addresses = None
        if self._child is None:
            return None
        return self._child.stop(timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"CoordinatorProcess({self.node_id}, {'running' if self.running else 'stopped'})"


def init_mock_tee(directory: Path) -> Path:
    """Create the software TEE (vendor hierarchies + reference values) in ``directory``."""
    from attestation.providers import mock

    mock.init(directory)
    return directory


class Cluster:
    """N coordinator slots on one etcd deployment, sharing one mock TEE and coordinator policy."""

    def __init__(
        self,
        etcd_endpoint: str,
        deployment: str,
        mock_dir: Path,
        workdir: Path,
        *,
        policy: bytes = COORDINATOR_POLICY,
        log_level: str = "info",
        etcd_timeout: float | None = None,
    ) -> None:
        self.etcd_endpoint = etcd_endpoint
        self.deployment = deployment
        self.mock_dir = Path(mock_dir)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.policy = policy
        self.policy_path = self.workdir / "coordinator-policy"
        self.policy_path.write_bytes(policy)
        self.log_level = log_level
        self.etcd_timeout = etcd_timeout
        self.nodes: list[CoordinatorProcess] = []

    @property
    def policy_hash(self) -> bytes:
        return hashlib.sha256(self.policy).digest()

    def add(self) -> CoordinatorProcess:
        node_id = f"c{len(self.nodes)}"
        config: dict[str, Any] = {
            "store": f"etcd://{self.etcd_endpoint}",
            "deployment": self.deployment,
            "tee": f"mock:{self.mock_dir}",
            "mock_policy": str(self.policy_path),
            "trust_anchors": f"mock:{self.mock_dir}",
            "user_addr": "127.0.0.1:0",
            "mesh_addr": "127.0.0.1:0",
            "http_addr": "127.0.0.1:0",
            "node_id": node_id,
            "issuer_workers": 0,  # inline issuance in the subprocess coordinators
            "log_level": self.log_level,
        }
        if self.etcd_timeout is not None:
            config["etcd_options"] = {"timeout": self.etcd_timeout}
        node = CoordinatorProcess(node_id, self.workdir, config)
        self.nodes.append(node)
        return node

    def start(self, n: int, timeout: float = SERVE_TIMEOUT) -> list[CoordinatorProcess]:
        """Add and start ``n`` coordinators (spawned together, then waited for)."""
        new = [self.add() for _ in range(n)]
        for node in new:
            node.spawn()
        for node in new:
            node.wait_serving(timeout)
        return new

    def restart(self, node: CoordinatorProcess, timeout: float = SERVE_TIMEOUT) -> Addresses:
        node.stop()
        return node.start(timeout)

    def stop(self) -> None:
        """SIGTERM every coordinator at once, then wait for each."""
        for node in self.nodes:
            node.terminate()
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_cluster(
    etcd_endpoint: str, deployment: str, mock_dir: Path, workdir: Path, **options: Any
) -> Iterator[Cluster]:
    """A :class:`Cluster` stopped on exit, printing the tail of every coordinator's log (pytest
    shows it when the test failed)."""
    cluster = Cluster(etcd_endpoint, deployment, mock_dir, workdir, **options)
    try:
        yield cluster
    finally:
        cluster.stop()
        for node in cluster.nodes:
            tail = "\n".join(node.log_text().splitlines()[-40:])
            print(f"--- {node.node_id} ({node.log_path}) ---\n{tail}")


@atexit.register
def _stop_all() -> None:
    for node in list(_LIVE):
        with contextlib.suppress(Exception):
            node.kill()


# --- hack/cluster ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hack/cluster",
        description="Run a local etcd and N coordinators with the software TEE on loopback.",
    )
    parser.add_argument("-n", type=int, default=3, help="number of coordinators (default 3)")
    parser.add_argument(
        "--etcd-endpoint", metavar="HOST:PORT", help="use this etcd instead of starting one"
    )
    parser.add_argument("--deployment", default="local", help="deployment name (default local)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("-n must be at least 1")

    from tools.etcd_server import EtcdError, EtcdServer

    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    workdir = Path(tempfile.mkdtemp(prefix="concord-cluster-"))
    etcd: EtcdServer | None = None
    cluster: Cluster | None = None
    try:
        if args.etcd_endpoint:
            endpoint = args.etcd_endpoint
        else:
            etcd = EtcdServer(data_dir=workdir / "etcd" / "data")
            etcd.start()
            endpoint = etcd.endpoint
        mock_dir = init_mock_tee(workdir / "mock-tee")
        cluster = Cluster(
            endpoint, args.deployment, mock_dir, workdir / "coordinators", log_level=args.log_level
        )
        cluster.start(args.n)
        print(f"etcd          {endpoint} (deployment {args.deployment})")
        print(f"mock TEE      {mock_dir}")
        print(f"coord policy  {cluster.policy_path} (sha256 {cluster.policy_hash.hex()})")
        for node in cluster.nodes:
            print(
                f"{node.node_id:<13} user {node.user}  mesh {node.mesh}  http {node.http}"
                f"  log {node.log_path}"
            )
        first = cluster.nodes[0]
        print(f"references    {mock_dir / 'reference-values.json'} (a manifest's ReferenceValues)")
        print(
            f"set manifest  .venv/bin/concord set -c {first.user} --trust-anchors mock:{mock_dir}"
            f" --policy {cluster.policy_path} [more policies] --out DIR MANIFEST"
        )
        print("Ctrl-C or SIGTERM stops everything.", flush=True)
        while not stop:
            for node in cluster.nodes:
                if not node.running:
                    print(f"{node.node_id} exited; see {node.log_path}", file=sys.stderr)
                    stop = True
            if etcd is not None and not etcd.running:
                print("etcd exited", file=sys.stderr)
                stop = True
            time.sleep(0.2)
        print("stopping ...", file=sys.stderr)
        return 0
    except (ClusterError, EtcdError) as exc:
        print(f"hack/cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        if cluster is not None:
            cluster.stop()
        if etcd is not None:
            etcd.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
