"""``hack/cluster`` (``python -m tools.cluster``) survives a coordinator's death, reports it,
keeps the logs, and restarts the coordinator on request (issue 15: it tore everything down when
one node died and deleted the log it had just pointed to)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.etcd_server import find_etcd

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
PATIENCE = 90.0

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(find_etcd() is None, reason="etcd binary not installed"),
]


class Running:
    """The hack/cluster process with its stdout read line by line in a thread."""

    def __init__(self, workdir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.cluster", "-n", "2", "--workdir", str(workdir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ENV,
            cwd=REPO,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}; saw {self.seen}") from None
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    cluster = Running(tmp_path / "work")
    try:
        yield cluster
    finally:
        cluster.close()


def test_a_dead_coordinator_is_reported_restarted_and_its_log_kept(
    running: Running, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    running.expect(r"^watch failover")
    running.expect(r"readyz")
    running.expect(r"Ctrl-C")

    running.send("status")
    c1 = running.expect(r"^c1\s+running\s+pid (\d+).*log (\S+)")
    pid, log = int(c1.group(1)), Path(c1.group(2))
    os.kill(pid, signal.SIGKILL)  # a crash nobody asked for

    running.expect(r"^c1 exited; the others keep serving\. log: " + re.escape(str(log)))
    running.send("status")
    running.expect(r"^c0\s+running")
    running.expect(r"^c1\s+stopped")
    assert running.proc.poll() is None

    # From another shell: the control FIFO of the running cluster.
    other = subprocess.run(
        [sys.executable, "-m", "tools.cluster", "--restart", "c1", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=60, env=ENV, cwd=REPO,
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    running.expect(r"^c1 serving again: user 127\.0\.0\.1:\d+")
    running.send("status")
    running.expect(r"^c0\s+running")
    running.expect(r"^c1\s+running")

    running.send("restart nobody")
    running.expect(r"no coordinator 'nobody' \(known: c0, c1\)")
    running.send("quit")
    assert running.close() == 0
    assert log.is_file() and log.stat().st_size > 0  # the log it pointed to is still there
    assert log.read_text().count("coordinator serving") == 2  # both runs appended to it
    assert not (workdir / "control").exists()


def test_restart_without_a_running_cluster_says_so(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.cluster", "--restart", "c1", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=ENV, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"no hack/cluster is running in {tmp_path}" in proc.stderr
