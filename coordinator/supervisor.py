"""Child processes that are always stopped: the one supervisor of the project.

``concord demo``, the cluster and benchmark tools and the integration tests all start servers
(coordinators, etcd) as child processes. They share the same needs, met here once:

* the child's stderr (and, once it is ready, its stdout) goes to a log file, whose tail goes
  into error messages;
* readiness is one JSON object line on the child's stdout (e.g. ``{"event": "serving", ...}``),
  read with a timeout, and a child that exits first is reported with its exit code and log tail;
* the child runs in its own session (a Ctrl-C in the terminal reaches the parent only, which
  then stops it in order) and, with ``die_with_parent`` on Linux, gets SIGTERM when the thread
  that started it dies (``PR_SET_PDEATHSIG``), so a killed parent leaves nothing behind. Only
  for children started from a thread that outlives them (the main thread): a worker thread of
  ``asyncio.to_thread`` may exit while its children should still run;
* stop is SIGTERM, then SIGKILL after a timeout, then SIGKILL to whatever is left of the
  child's process group; every stop reaps the child.

This module imports nothing else from the package, so tools and tests can use it freely.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "ChildExited",
    "ChildNotReady",
    "Supervised",
    "SupervisorError",
    "python_env",
    "stop_process",
]

ReadyCheck = Callable[[dict[str, Any]], bool]

_PR_SET_PDEATHSIG = 1


class SupervisorError(RuntimeError):
    """A supervised child could not be started or did not become ready."""

    reason = "child_failed"


class ChildNotReady(SupervisorError):
    """No ready line within the timeout (the child was stopped)."""

    reason = "child_not_ready"


class ChildExited(SupervisorError):
    """The child exited before it printed its ready line."""

    reason = "child_exited"

    def __init__(self, message: str, returncode: int | None) -> None:
        super().__init__(message)
        self.returncode = returncode


def python_env(
    *paths: str | os.PathLike[str], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """An environment for a Python child: ``paths`` first on PYTHONPATH, unbuffered output."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (*map(str, paths), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _child_setup(die_with_parent: bool, cpus: tuple[int, ...]) -> Callable[[], None] | None:
    """What the child does between fork and exec (Linux only; elsewhere nothing).

    Everything is resolved here, in the parent: between fork and exec the child of a threaded
    parent (gRPC runs threads) must not import or load anything, since a lock another thread held
    at fork time (the import lock, the loader's, malloc's) is never released in the child.
    """
    if not sys.platform.startswith("linux") or (not die_with_parent and not cpus):
        return None
    prctl: Callable[..., int] | None = None
    if die_with_parent:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    sigterm = int(signal.SIGTERM)

    def setup() -> None:  # pragma: no cover - runs in the child
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def stop_process(
    proc: subprocess.Popen[bytes], timeout: float, *, group: bool = False, kill_after: float = 5.0
) -> int:
    """SIGTERM ``proc``, SIGKILL it if it is still there after ``timeout`` seconds, reap it.

    With ``group`` (the child leads its own session), SIGKILL whatever is left of its process
    group afterwards: helpers it started must not outlive it. A stopped (SIGSTOP) child is
    continued first so that it can act on the SIGTERM. Returns the exit code.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(kill_after)
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return int(proc.returncode)


class Supervised:
    """One child process: :meth:`start`, :meth:`wait_ready`, :meth:`stop`; a context manager.

    ``start``/``stop`` may be repeated (a restart keeps the log file, appending to it). With
    ``die_with_parent``, start it from a thread that outlives it (usually the main thread): on
    Linux the child is bound to the lifetime of the thread that forked it.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        die_with_parent: bool = False,
        cpus: Sequence[int] | None = None,
        stop_timeout: float = 10.0,
        name: str | None = None,
        ready_line: bool = True,
    ) -> None:
        self.argv = tuple(argv)
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.die_with_parent = die_with_parent
        self.cpus = tuple(cpus or ())
        self.stop_timeout = stop_timeout
        self.name = name or Path(self.argv[0]).name
        self.ready_line = ready_line
        """False: the child announces nothing on stdout (stdout goes to the log too) and the
        caller decides readiness itself (e.g. a health check)."""
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] | None = None
        self.starts = 0
        self._buffer = b""
        self._drain: threading.Thread | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Supervised:
        """Start the child and return at once (:meth:`wait_ready` waits for its ready line)."""
        if self.running:
            raise SupervisorError(f"{self.name} is already running (pid {self.pid})")
        self._close_pipes()
        self.ready = None
        self._buffer = b""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.ready_line else log,
                stderr=log,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_child_setup(self.die_with_parent, self.cpus),
            )
        self.starts += 1
        return self

    def wait_ready(self, timeout: float, accept: ReadyCheck | None = None) -> dict[str, Any]:
        """The first JSON-object line on stdout that ``accept`` takes (default: any object).

        Other lines go to the log. Raises :class:`ChildExited` if the child exits first and
        :class:`ChildNotReady` after ``timeout`` seconds (the child is then stopped).
        """
        proc = self.proc
        if not self.ready_line:
            raise SupervisorError(f"{self.name} prints no ready line")
        if proc is None or proc.stdout is None:
            raise SupervisorError(f"{self.name} was not started")
        if self.ready is not None:
            return self.ready
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                info = _json_object(raw)
                if info is not None and (accept is None or accept(info)):
                    self.ready = info
                    self._start_drain()
                    return info
                self._log_bytes(raw + b"\n")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise ChildNotReady(
                    f"{self.name} was not ready within {timeout:g}s; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            readable, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if not readable:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
                self._log_bytes(self._buffer)
                self._buffer = b""
                raise ChildExited(
                    f"{self.name} exited with code {proc.returncode} before it was ready; "
                    f"log {self.log_path}:\n{self.log_tail()}",
                    proc.returncode,
                )
            self._buffer += chunk

    def start_ready(self, timeout: float, accept: ReadyCheck | None = None) -> dict[str, Any]:
        """:meth:`start` then :meth:`wait_ready`; the child is stopped if it never gets ready."""
        self.start()
        try:
            return self.wait_ready(timeout, accept)
        except BaseException:
            self.stop()
            raise

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the running child (e.g. SIGSTOP to simulate a hung server)."""
        if self.proc is None or self.proc.poll() is not None:
            raise SupervisorError(f"{self.name} is not running")
        self.proc.send_signal(signum)

    def terminate(self) -> None:
        """SIGTERM without waiting (then :meth:`stop` to reap it)."""
        if self.running and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
                self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> int | None:
        """SIGKILL at once (a crash, no graceful shutdown); returns the exit code."""
        if self.running and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
        return self.stop()

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait up to ``timeout`` (default ``stop_timeout``), SIGKILL; reap; close
        the pipes. Returns the exit code (None: never started). Safe to call repeatedly."""
        proc = self.proc
        if proc is None:
            return None
        code = stop_process(proc, self.stop_timeout if timeout is None else timeout, group=True)
        self._close_pipes()
        return code

    # -- log ---------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _log_bytes(self, data: bytes) -> None:
        if data:
            with contextlib.suppress(OSError), open(self.log_path, "ab") as log:
                log.write(data)

    def _start_drain(self) -> None:
        """After the ready line, copy the rest of stdout into the log (a full pipe would block
        the child)."""
        assert self.proc is not None and self.proc.stdout is not None
        rest, self._buffer = self._buffer, b""
        self._log_bytes(rest)
        self._drain = threading.Thread(
            target=_copy, args=(self.proc.stdout, self.log_path), daemon=True
        )
        self._drain.start()

    def _close_pipes(self) -> None:
        proc = self.proc
        if self._drain is not None:
            self._drain.join(2.0)
            self._drain = None
        if proc is not None and proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()

    # -- context manager ---------------------------------------------------------------------

    def __enter__(self) -> Supervised:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"Supervised({self.name}, {state})"


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _copy(stream: IO[bytes], path: Path) -> None:
    fd = stream.fileno()
    with contextlib.suppress(OSError, ValueError), open(path, "ab") as log:
        while chunk := os.read(fd, 65536):
            log.write(chunk)
            log.flush()
