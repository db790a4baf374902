"""A throwaway single-member etcd on loopback, for integration tests and ``hack/`` scripts.

Picks free client and peer ports, keeps its data in a temporary directory (or a given one) and
its logs in a file, and can be stopped, restarted on the same ports and data, or paused
(SIGSTOP) to simulate an outage. Every server started here is stopped at interpreter exit at the
latest, so a crashed test run leaves no etcd behind. No pytest imports: ``hack/`` uses it too.

Run ``python -m tools.etcd_server`` to start one in the foreground; it prints its endpoint.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from coordinator.supervisor import Supervised, SupervisorError

_LIVE: weakref.WeakSet[EtcdServer] = weakref.WeakSet()


def find_etcd() -> str | None:
    """Path of the etcd binary ($ETCD_BIN, then PATH, then the Debian location), or None."""
    env = os.environ.get("ETCD_BIN")
    candidates = [env] if env else []
    found = shutil.which("etcd")
    if found:
        candidates.append(found)
    candidates += ["/usr/bin/etcd", "/usr/local/bin/etcd"]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdError(RuntimeError):
    """etcd could not be found or did not come up; the message points at its log."""


@dataclass(frozen=True)
class EtcdTls:
    """PEM files for an etcd that serves its clients over TLS (and, with ``client_ca``, wants
    a client certificate issued by that CA). ``client_cert``/``client_key`` are what the
    fixture itself presents to the health check."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if self.client_cert is not None and self.client_key is not None:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx


class EtcdServer:
    """One etcd process; ``start()``/``stop()`` may be repeated on the same ports and data."""

    def __init__(
        self,
        *,
        binary: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        name: str = "t",
        startup_timeout: float = 30.0,
        extra_args: tuple[str, ...] = (),
        tls: EtcdTls | None = None,
        initial_cluster: str | None = None,
    ) -> None:
        found = binary or find_etcd()
        if found is None:
            raise EtcdError("etcd binary not found (install etcd-server or set ETCD_BIN)")
        self.binary = found
        self.name = name
        self.startup_timeout = startup_timeout
        self.extra_args = extra_args
        self.tls = tls
        self.initial_cluster = initial_cluster  # None: a cluster of this member alone
        self._tmp: str | None = None
        if data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="concord-etcd-")
            self.workdir = Path(self._tmp)
            self.data_dir = self.workdir / "data"
        else:
            self.data_dir = Path(data_dir)
            self.workdir = self.data_dir.parent
        self.log_path = self.workdir / f"etcd-{name}.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        self._child: Supervised | None = None
        self._paused = False
        _LIVE.add(self)

    # -- addresses ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client listener (what EtcdStore.connect takes)."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running

    # -- lifecycle ---------------------------------------------------------------------------

    def _argv(self) -> list[str]:
        return [
            self.binary,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-state",
            "new",
            "--logger",
            "zap",
            "--log-level",
            "warn",
            # Loopback timings: a restart elects itself in ~0.3 s instead of ~1.5 s, and the
            # minimum lease TTL drops to 1 s (membership tests).
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "300",
            *self._tls_args(),
            *self.extra_args,
        ]

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        args = ["--cert-file", str(self.tls.server_cert), "--key-file", str(self.tls.server_key)]
        if self.tls.client_ca is not None:
            args += ["--client-cert-auth", "--trusted-ca-file", str(self.tls.client_ca)]
        return args

    def start(self) -> EtcdServer:
        """Start (or restart) etcd and wait until it answers its health check."""
        if self.running:
            return self
        first = not self.data_dir.exists()
        attempts = 3 if first else 1
        for attempt in range(attempts):
            if attempt:  # a port was taken between free_port() and bind: pick new ones
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self.client_port, self.peer_port = free_port(), free_port()
            self._spawn()
            if self._wait_healthy():
                return self
            self._terminate()
        raise EtcdError(f"etcd did not become healthy; see {self.log_path}")

    def _spawn(self) -> None:
        # A new child each time: the arguments carry the (possibly re-picked) ports.
        self._child = Supervised(
            self._argv(), self.log_path, ready_line=False, name=f"etcd {self.name}"
        ).start()
        self._paused = False

    def _wait_healthy(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False
            if self.healthy(timeout=0.5):
                return True
            time.sleep(0.05)
        return False

    def healthy(self, timeout: float = 1.0) -> bool:
        """etcd's own ``/health`` on the client listener (true only with a leader)."""
        context = self.tls.context() if self.tls else None
        try:
            with urllib.request.urlopen(
                f"{self.client_url}/health", timeout=timeout, context=context
            ) as r:
                return r.status == 200 and b'"true"' in r.read()
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; data and ports are kept for ``start()``."""
        self._terminate(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, no graceful shutdown."""
        if self._child is not None:
            self._child.kill()
        self._child = None
        self._paused = False

    def _terminate(self, timeout: float = 5.0) -> None:
        """SIGTERM (a paused etcd is continued first), SIGKILL after ``timeout``, reap."""
        if self._child is not None:
            self._child.stop(timeout)
        self._child = None
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing (a hung server)."""
        if not self.running or self._child is None:
            raise EtcdError("etcd is not running")
        self._child.signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self._child is not None and self._paused:
            with contextlib.suppress(SupervisorError):
                self._child.signal(signal.SIGCONT)
            self._paused = False

    def close(self) -> None:
        """Stop etcd and delete the temporary directory (if we made it)."""
        self._terminate()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        _LIVE.discard(self)

    def __enter__(self) -> EtcdServer:
        try:
            return self.start()
        except BaseException:
            self.close()  # nothing left behind when it never came up
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EtcdServer({self.endpoint}, {state})"


class EtcdCluster:
    """``size`` etcd members on loopback forming one cluster (quorum ``size // 2 + 1``).

    Members can be killed and started again individually; ``endpoints`` lists them all, in
    the form ``EtcdStore.connect`` and ``--store etcd://`` take."""

    def __init__(self, size: int = 3, *, startup_timeout: float = 30.0) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._tmp = tempfile.mkdtemp(prefix="concord-etcd-cluster-")
        root = Path(self._tmp)
        self.members = [
            EtcdServer(
                data_dir=root / f"m{i}" / "data", name=f"m{i}", startup_timeout=startup_timeout
            )
            for i in range(size)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self) -> EtcdCluster:
        """Start every member (none is healthy before a quorum runs), then wait for each."""
        for m in self.members:
            if not m.running:
                m._spawn()
        for m in self.members:
            if not m._wait_healthy():
                self.close()
                raise EtcdError(f"etcd member {m.name} did not become healthy; see {m.log_path}")
        return self

    def member_at(self, endpoint: str) -> EtcdServer:
        return next(m for m in self.members if m.endpoint == endpoint)

    def close(self) -> None:
        for m in self.members:
            m.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.close()


def main() -> int:
    """Run one etcd in the foreground until SIGINT/SIGTERM; print its endpoint."""
    data_dir = sys.argv[1] if len(sys.argv) > 1 else None
    server = EtcdServer(data_dir=data_dir)
    with server:
        print(server.endpoint, flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while server.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
