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
import os
import signal
import sys
import tempfile
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
            # gRPC core's own lines are not JSON; the log stays one JSON object per line.
            env={**python_env(REPO), "GRPC_VERBOSITY": os.environ.get("GRPC_VERBOSITY", "NONE")},
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

CONTROL_FIFO = "control"
"""Name of the FIFO in the work directory through which ``hack/cluster --restart NAME`` (another
shell) reaches the running cluster."""
CURRENT = Path(tempfile.gettempdir()) / f"concord-cluster-{os.getuid()}.current"
"""Holds the work directory of the most recently started ``hack/cluster`` of this user."""

COMMANDS_HELP = (
    "commands: status | kill NAME (SIGKILL, a crash) | stop NAME (graceful) | "
    "restart NAME | start NAME | help | quit"
)


class Controller:
    """The interactive side of ``hack/cluster``: reports deaths once, runs operator commands.

    A dead coordinator is reported and left dead (the others keep serving, which is the point:
    failover can be watched); ``restart NAME`` brings it back with its node id, so it takes over
    its own membership key and recovers the state from a peer.
    """

    def __init__(self, cluster: Cluster, etcd: Any | None = None) -> None:
        self.cluster = cluster
        self.etcd = etcd
        self._reported: set[str] = set()

    def node(self, name: str) -> CoordinatorProcess | None:
        return next((n for n in self.cluster.nodes if n.node_id == name), None)

    def poll(self) -> list[str]:
        """One line per coordinator (or etcd) found dead since the last poll."""
        lines = []
        for node in self.cluster.nodes:
            if node.starts and not node.running and node.node_id not in self._reported:
                self._reported.add(node.node_id)
                node.addresses = None
                lines.append(
                    f"{node.node_id} exited; the others keep serving. log: {node.log_path} "
                    f"(type `restart {node.node_id}` to start it again)"
                )
        if self.etcd is not None and not self.etcd.running and "etcd" not in self._reported:
            self._reported.add("etcd")
            lines.append("etcd exited: the coordinators lose their store (readyz turns 503)")
        return lines

    def status(self) -> list[str]:
        lines = []
        for node in self.cluster.nodes:
            if node.running and node.addresses is not None:
                lines.append(
                    f"{node.node_id:<4} running  pid {node.pid}  user {node.user}  "
                    f"mesh {node.mesh}  http {node.http}  log {node.log_path}"
                )
            else:
                lines.append(f"{node.node_id:<4} stopped  log {node.log_path}")
        return lines

    def handle(self, line: str) -> tuple[list[str], bool]:
        """Run one command; returns what to print and whether to quit."""
        words = line.split()
        if not words:
            return [], False
        verb, names = words[0].lower(), words[1:]
        if verb in ("quit", "exit"):
            return [], True
        if verb in ("help", "?"):
            return [COMMANDS_HELP], False
        if verb == "status":
            return self.status(), False
        if verb not in ("kill", "stop", "restart", "start") or len(names) != 1:
            return [f"unknown command {line.strip()!r}; {COMMANDS_HELP}"], False
        node = self.node(names[0])
        if node is None:
            known = ", ".join(n.node_id for n in self.cluster.nodes)
            return [f"no coordinator {names[0]!r} (known: {known})"], False
        return self._lifecycle(verb, node), False

    def _lifecycle(self, verb: str, node: CoordinatorProcess) -> list[str]:
        name = node.node_id
        if verb in ("kill", "stop"):
            if not node.running:
                return [f"{name} is not running"]
            self._reported.add(name)  # asked for: not news
            if verb == "kill":
                node.kill()
                return [f"{name} killed (SIGKILL): its member key expires in a few seconds"]
            node.stop()
            return [f"{name} stopped (SIGTERM): its member key is revoked"]
        if verb == "start" and node.running:
            return [f"{name} is already running"]
        try:
            if node.running:
                node.stop()
            addresses = node.start()
        except ClusterError as exc:
            self._reported.add(name)
            return [f"{name} did not come back: {exc}"]
        self._reported.discard(name)
        return [
            f"{name} serving again: user {addresses.user}  mesh {addresses.mesh}  "
            f"http {addresses.http}  (it recovers the state from a ready peer)"
        ]


def _open_control(workdir: Path) -> tuple[int, int]:
    """Create the control FIFO; returns (read fd, keep-alive write fd). Holding a writer of our
    own means the reader never sees end-of-file when a ``--restart`` client closes."""
    path = workdir / CONTROL_FIFO
    os.mkfifo(path, 0o600)
    rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    return rfd, wfd


def send_command(command: str, workdir: Path | None = None) -> str:
    """Write ``command`` into a running ``hack/cluster``'s control FIFO; raises ClusterError
    when none runs there. The cluster prints the outcome in its own terminal."""
    if workdir is None:
        try:
            workdir = Path(CURRENT.read_text().strip())
        except OSError:
            raise ClusterError(
                "no running hack/cluster found (start one, or pass --workdir)"
            ) from None
    path = workdir / CONTROL_FIFO
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        raise ClusterError(f"no hack/cluster is running in {workdir}") from None
    try:
        os.write(fd, command.encode() + b"\n")
    finally:
        os.close(fd)
    return str(workdir)


def _watch_hints(cluster: Cluster) -> list[str]:
    https = " ".join(n.http for n in cluster.nodes)
    logs = " ".join(str(n.log_path) for n in cluster.nodes)
    victim = cluster.nodes[0].node_id
    return [
        "watch failover (in another shell):",
        f"  readiness  watch -n1 'for a in {https}; do "
        'curl -s -o /dev/null -w "$a %{http_code}  " http://$a/readyz; done\'',
        f"  logs       tail -F {logs}",
        f"  then type `kill {victim}` here (or run ./hack/cluster --restart {victim} "
        "from another shell later): the others keep serving; "
        f"`restart {victim}` brings it back and it recovers from a peer",
    ]


def _announce(
    cluster: Cluster, endpoint: str, deployment: str, mock_dir: Path, workdir: Path
) -> None:
    print(f"etcd          {endpoint} (deployment {deployment})")
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
    for line in _watch_hints(cluster):
        print(line)
    print(f"work dir      {workdir} (kept on exit: logs, mock TEE, etcd data)")
    print(COMMANDS_HELP)
    print("Ctrl-C, SIGTERM or `quit` stops everything.", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hack/cluster",
        description="Run a local etcd and N coordinators with the software TEE on loopback. "
        "A coordinator that dies is reported and the others keep running; commands on stdin "
        "(or --restart NAME from another shell) kill, stop and restart coordinators.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-n", type=int, default=3, help="number of coordinators")
    parser.add_argument(
        "--etcd-endpoint", metavar="HOST:PORT", help="use this etcd instead of starting one"
    )
    parser.add_argument("--deployment", default="local", help="deployment name")
    parser.add_argument("--log-level", default="info", help="coordinators' log level")
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="work directory (logs, mock TEE, etcd data); default: a new temporary directory. "
        "Never deleted. With --restart: the running cluster's (default: the latest started)",
    )
    parser.add_argument(
        "--restart",
        metavar="NAME",
        help="do not start a cluster: restart coordinator NAME of the running one",
    )
    args = parser.parse_args(argv)
    if args.restart is not None:
        try:
            where = send_command(
                f"restart {args.restart}", Path(args.workdir) if args.workdir else None
            )
        except ClusterError as exc:
            print(f"hack/cluster: {exc}", file=sys.stderr)
            return 1
        print(f"sent `restart {args.restart}` to the cluster in {where}; it reports there")
        return 0
    if args.n < 1:
        parser.error("-n must be at least 1")
    return _run_cluster(args)


def _run_cluster(args: argparse.Namespace) -> int:
    import selectors

    from tools.etcd_server import EtcdError, EtcdServer

    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="concord-cluster-"))
    etcd: EtcdServer | None = None
    cluster: Cluster | None = None
    control: tuple[int, int] | None = None
    try:
        if args.etcd_endpoint:
            endpoint = args.etcd_endpoint
        else:
            etcd = EtcdServer(data_dir=workdir / "etcd" / "data")
            etcd.start()
            endpoint = etcd.endpoint
        mock_dir = workdir / "mock-tee"
        if not (mock_dir / "reference-values.json").exists():
            init_mock_tee(mock_dir)
        cluster = Cluster(
            endpoint, args.deployment, mock_dir, workdir / "coordinators", log_level=args.log_level
        )
        cluster.start(args.n)
        control = _open_control(workdir)
        CURRENT.write_text(f"{workdir}\n")
        _announce(cluster, endpoint, args.deployment, mock_dir, workdir)
        controller = Controller(cluster, etcd)
        selector = selectors.DefaultSelector()
        selector.register(control[0], selectors.EVENT_READ, "control")
        with contextlib.suppress(ValueError, OSError):  # stdin closed or not selectable
            selector.register(sys.stdin, selectors.EVENT_READ, "stdin")
        pending = {"control": b"", "stdin": b""}
        while not stop:
            for line in controller.poll():
                print(line, flush=True)
            for key, _ in selector.select(0.2):
                fd = control[0] if key.data == "control" else sys.stdin.fileno()
                try:
                    chunk = os.read(fd, 4096)
                except BlockingIOError:
                    continue
                if not chunk:  # stdin at end (e.g. </dev/null): keep running, stop reading it
                    selector.unregister(key.fileobj)
                    continue
                pending[key.data] += chunk
                *lines, pending[key.data] = pending[key.data].split(b"\n")
                for raw in lines:
                    output, quit_now = controller.handle(raw.decode("utf-8", "replace"))
                    for text in output:
                        print(text, flush=True)
                    stop = stop or quit_now
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
        if control is not None:
            for fd in control:
                os.close(fd)
            with contextlib.suppress(OSError):
                (workdir / CONTROL_FIFO).unlink()
        with contextlib.suppress(OSError):
            if CURRENT.read_text().strip() == str(workdir):
                CURRENT.unlink()
        print(f"logs kept in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
