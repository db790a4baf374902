"""A local multi-coordinator deployment on loopback: one etcd, N coordinator *processes* with the
software TEE. Shared by the cluster tests, the convergence benchmark and ``hack/cluster``.

Each coordinator runs ``coordinator.service.server.serve`` in its own interpreter (``sys.executable``),
with every port chosen by the kernel; the process prints one JSON line
``{"event": "serving", "pid", "user", "mesh", "http"}`` once it listens, which is how its
addresses are learnt. Slots keep their node id across restarts (``c0``, ``c1``, ...), so a
restarted coordinator takes over its own membership key. Every process started here is stopped
at interpreter exit at the latest.

No pytest imports (the helpers for test modules import service_helpers lazily): ``hack/cluster``
runs ``python -m tests.integration.cluster_helpers``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import hashlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.etcd_server import stop_process

if TYPE_CHECKING:
    from tests.integration.service_helpers import Keys, MockTee

REPO = Path(__file__).resolve().parents[2]

COORDINATOR_POLICY = b"concord test policy: coordinator\n"
"""The policy the mock coordinator CVMs run (same bytes as the service tests use)."""

SERVE_TIMEOUT = 30.0

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


@dataclass(frozen=True)
class Addresses:
    pid: int
    user: str
    mesh: str
    http: str


class CoordinatorProcess:
    """One coordinator slot: a node id, a log file, and the process currently running it."""

    def __init__(
        self,
        node_id: str,
        workdir: Path,
        config: dict[str, Any],
    ) -> None:
        self.node_id = node_id
        self.workdir = workdir
        self.config = config
        self.log_path = workdir / f"{node_id}.log"
        self._out_path = workdir / f"{node_id}.out"
        self._proc: subprocess.Popen[bytes] | None = None
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
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ---------------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the process (returns at once; :meth:`wait_serving` waits for its addresses)."""
        if self.running:
            raise ClusterError(f"coordinator {self.node_id} is already running")
        self.addresses = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._out_path.write_bytes(b"")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self._out_path, "ab") as out, open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, json.dumps(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                cwd=REPO,
                env=env,
                start_new_session=True,
            )
        self.starts += 1

    def wait_serving(self, timeout: float = SERVE_TIMEOUT) -> Addresses:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._serving_line()
            if line is not None:
                self.addresses = Addresses(
                    pid=int(line["pid"]), user=line["user"], mesh=line["mesh"], http=line["http"]
                )
                return self.addresses
            if self._proc is None or self._proc.poll() is not None:
                raise ClusterError(f"coordinator {self.node_id} exited; see {self.log_path}")
            time.sleep(0.02)
        raise ClusterError(f"coordinator {self.node_id} did not serve in time; see {self.log_path}")

    def _serving_line(self) -> dict[str, Any] | None:
        try:
            text = self._out_path.read_text()
        except OSError:
            return None
        for raw in text.splitlines():
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if isinstance(line, dict) and line.get("event") == "serving":
                    return line
        return None

    def start(self, timeout: float = SERVE_TIMEOUT) -> Addresses:
        self.spawn()
        return self.wait_serving(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash (no membership revocation, no graceful shutdown)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._proc = None
        self.addresses = None

    def terminate(self) -> None:
        """SIGTERM without waiting (a graceful stop: the member key is revoked)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            stop_process(proc, timeout)
        self._proc = None
        self.addresses = None
        return proc.returncode

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


# --- observing coordinators from a client ------------------------------------------------------


async def server_certificate(address: str, timeout: float = 10.0) -> bytes:
    """The DER certificate a coordinator presents (unverified: attestation decides).

    The TLS connection is aborted, not closed: a close_notify sent before the gRPC server wrote
    anything is never answered and a graceful close would wait for the SSL shutdown timeout.
    """
    from coordinator.core.tlsid import SERVER_NAME

    host, _, port = address.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(host, int(port), ssl=ctx, server_hostname=SERVER_NAME), timeout
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        if not der:
            raise ClusterError(f"{address} presented no certificate")
        return bytes(der)
    finally:
        writer.transport.abort()


async def http_get(address: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.transport.abort()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def readyz(node: CoordinatorProcess) -> int:
    status, _ = await http_get(node.http, "/readyz")
    return status


_GAUGE = re.compile(rb"^(concord_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$", re.M)


async def gauges(node: CoordinatorProcess) -> dict[str, float]:
    """The coordinator's metrics as ``name{labels}`` -> value."""
    _, body = await http_get(node.http, "/metrics")
    return {
        (m.group(1) + (m.group(2) or b"")).decode(): float(m.group(3))
        for m in _GAUGE.finditer(body)
    }


async def status(node: CoordinatorProcess) -> tuple[bool, int]:
    """(ready, manifest generation) from the coordinator's own metrics."""
    g = await gauges(node)
    return g.get('concord_state{state="ready"}') == 1.0, int(
        g.get("concord_manifest_generation", 0)
    )


async def wait_status(
    nodes: Sequence[CoordinatorProcess],
    *,
    ready: bool,
    generation: int | None = None,
    timeout: float,
    interval: float = 0.01,
) -> dict[str, float]:
    """Wait until every node reports ``ready`` (at ``generation``); returns the seconds each
    one took. Raises TimeoutError naming the nodes that did not get there."""
    started = time.perf_counter()
    pending = {n.node_id: n for n in nodes}
    took: dict[str, float] = {}
    while True:
        for node_id, node in list(pending.items()):
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                is_ready, gen = await status(node)
                if is_ready == ready and (generation is None or gen == generation):
                    took[node_id] = time.perf_counter() - started
                    del pending[node_id]
        if not pending:
            return took
        if time.perf_counter() - started > timeout:
            raise TimeoutError(
                f"not {'ready' if ready else 'unready'} (generation {generation}) "
                f"after {timeout}s: {sorted(pending)}"
            )
        await asyncio.sleep(interval)


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


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

    from tests.etcd_server import EtcdServer

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
    except ClusterError as exc:
        print(f"hack/cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        if cluster is not None:
            cluster.stop()
        if etcd is not None:
            etcd.close()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())


# --- clients of a cluster (tests and benchmarks) ----------------------------------------------


def coordinator_policy(mock_dir: Path, policy: bytes = COORDINATOR_POLICY) -> Any:
    """What a client expects of these coordinators: the mock anchors, the mock reference values
    and the coordinator policy hash."""
    from attestation import anchors
    from attestation.providers import mock
    from attestation.reference import parse_reference_values
    from coordinator.client.channel import CoordinatorPolicy

    refs = json.loads((Path(mock_dir) / mock.REFERENCE_FILE).read_text())
    return CoordinatorPolicy(
        anchors.mock(mock_dir),
        parse_reference_values(refs, "ReferenceValues"),
        hashlib.sha256(policy).digest(),
    )


async def attested(address: str, policy: Any, timeout: float = 10.0) -> Any:
    """An attested channel (coordinator.client.channel.AttestedChannel) to ``address``."""
    from coordinator.client.channel import AttestedChannel

    pinned = await server_certificate(address, timeout)
    return await AttestedChannel.connect(
        address, policy, timeout=timeout, pinned_certificate=pinned
    )


def check_history(resp: Any) -> list[bytes]:
    """Re-verify a GetManifests answer offline: the manifests chain linearly (from the zero
    hash) up to the signed ``latest``. Returns the transition hash after each manifest."""
    from cryptography.hazmat.primitives import serialization

    from coordinator.core.history import ZERO_HASH, SignedLatest, transition_hash

    previous = ZERO_HASH
    chain: list[bytes] = []
    for raw in resp.manifests:
        previous = transition_hash(hashlib.sha256(raw).digest(), previous)
        chain.append(previous)
    if not chain or previous != resp.latest_transition_hash:
        raise AssertionError("the manifests do not chain up to the latest transition")
    key = serialization.load_der_public_key(resp.history_signing_public_key)
    SignedLatest(bytes(resp.latest_transition_hash), bytes(resp.latest_signature)).verify(
        key  # type: ignore[arg-type]
    )
    return chain


def manifest_v(tee: MockTee, keys: Keys, version: str) -> bytes:
    """A manifest that differs from every other version only in the web workload's SANs."""
    from tests.integration.service_helpers import (
        DB_POLICY,
        WEB_ENTRY,
        WEB_POLICY,
        manifest_bytes,
        manifest_dict,
    )

    entry = dict(WEB_ENTRY, SANs=[f"web-{version}", "web.default.svc"])
    return manifest_bytes(
        manifest_dict(
            tee,
            workloads={WEB_POLICY: entry, DB_POLICY: {}},
            owners=[keys.owner],
            seedshare=[keys.seedshare],
        )
    )


async def attested_state(address: str, tee: MockTee) -> tuple[bytes, bytes, bytes]:
    """(latest transition, root CA PEM, mesh CA PEM) as the coordinator at ``address`` attests
    them."""
    chan = await attested(address, tee.coordinator_policy())
    await chan.close()
    att = chan.attestation
    return att.latest_transition_hash, att.root_ca_pem, att.mesh_ca_pem
