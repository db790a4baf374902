"""The process supervisor with small Python children: ready line, log, stop, escalation, process
group, and a child that dies with its parent. Every child started here is stopped here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.supervisor import ChildExited, ChildNotReady, Supervised, SupervisorError

REPO = Path(__file__).resolve().parents[2]
WAIT = 30.0  # generous bound for "eventually" on a busy machine; never an expected duration


def child(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


SERVER = """
    import json, os, signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("starting up", flush=True)
    print(json.dumps({"event": "other"}), flush=True)
    print(json.dumps({"event": "serving", "pid": os.getpid()}), flush=True)
    print("after ready", flush=True)
    sys.stderr.write("to stderr\\n")
    while True:
        time.sleep(0.05)
"""


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "child.log"


@pytest.fixture
def supervised(log: Path) -> Iterator[Supervised]:
    s = Supervised(child(SERVER), log, name="server", stop_timeout=WAIT)
    try:
        yield s
    finally:
        s.stop()


def test_ready_line_log_and_clean_stop(supervised: Supervised, log: Path) -> None:
    info = supervised.start_ready(WAIT, accept=lambda i: i.get("event") == "serving")
    assert info["event"] == "serving" and info["pid"] == supervised.pid
    assert supervised.running and supervised.ready == info
    assert supervised.wait_ready(WAIT) is info  # already ready: same answer
    deadline = time.monotonic() + WAIT
    while "to stderr" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert supervised.stop() == 0
    assert not supervised.running
    text = log.read_text()
    # Lines before the ready line, what came after it and stderr all end up in the log.
    for line in ("starting up", '"event": "other"', "after ready", "to stderr"):
        assert line in text
    assert '"event": "serving"' not in text
    assert supervised.stop() == 0  # idempotent


def test_restart_appends_to_the_log(supervised: Supervised, log: Path) -> None:
    first = supervised.start_ready(WAIT, accept=lambda i: "pid" in i)
    with pytest.raises(SupervisorError, match="already running"):
        supervised.start()
    supervised.stop()
    second = supervised.start_ready(WAIT, accept=lambda i: "pid" in i)
    assert first["pid"] != second["pid"] and supervised.starts == 2
    supervised.stop()
    assert log.read_text().count("starting up") == 2


def test_exit_before_ready_reports_code_and_log_tail(log: Path) -> None:
    s = Supervised(child("import sys; sys.stderr.write('boom: bad flag\\n'); sys.exit(3)"), log)
    with pytest.raises(ChildExited) as err:
        s.start_ready(WAIT)
    assert err.value.returncode == 3 and err.value.reason == "child_exited"
    assert "boom: bad flag" in str(err.value) and "code 3" in str(err.value)
    assert not s.running


def test_no_ready_line_times_out_and_stops_the_child(log: Path) -> None:
    s = Supervised(child("import time\nprint('not json', flush=True)\ntime.sleep(600)"), log)
    with pytest.raises(ChildNotReady, match="not ready within"):
        s.start_ready(0.5)
    assert not s.running
    assert "not json" in log.read_text()


def test_sigterm_ignored_escalates_to_sigkill(log: Path) -> None:
    code = """
        import json, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(json.dumps({"ready": True}), flush=True)
        time.sleep(600)
    """
    with Supervised(child(code), log, stop_timeout=0.3) as s:
        s.start_ready(WAIT)
        assert s.stop() == -signal.SIGKILL
    assert not s.running


def test_kill_and_a_paused_child_still_stops(log: Path) -> None:
    s = Supervised(child(SERVER), log, stop_timeout=WAIT)
    try:
        s.start_ready(WAIT, accept=lambda i: "pid" in i)
        s.signal(signal.SIGSTOP)
        assert s.stop() == 0  # continued, then it handled SIGTERM
        s.start_ready(WAIT, accept=lambda i: "pid" in i)
        assert s.kill() == -signal.SIGKILL
        with pytest.raises(SupervisorError, match="not running"):
            s.signal(signal.SIGSTOP)
    finally:
        s.stop()


def test_stop_clears_the_process_group(log: Path) -> None:
    """A helper the child started (same process group) does not outlive the child."""
    code = """
        import json, signal, subprocess, sys, time
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print(json.dumps({"helper": helper.pid}), flush=True)
        time.sleep(600)
    """
    with Supervised(child(code), log, stop_timeout=WAIT) as s:
        helper = int(s.start_ready(WAIT)["helper"])
        assert alive(helper)
    assert wait_gone(helper)


def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    """The parent is SIGKILLed (no cleanup runs): PR_SET_PDEATHSIG still stops its child."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    parent_code = f"""
        import json, sys, time
        from coordinator.supervisor import Supervised
        s = Supervised(
            [sys.executable, "-c", {textwrap.dedent(SERVER)!r}],
            {str(tmp_path / "c.log")!r},
            die_with_parent=True,
        )
        info = s.start_ready(30, accept=lambda i: "pid" in i)
        print(json.dumps({{"child": info["pid"]}}), flush=True)
        time.sleep(600)
    """
    parent = subprocess.Popen(
        child(parent_code),
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    grandchild = None
    try:
        assert parent.stdout is not None
        grandchild = int(json.loads(parent.stdout.readline())["child"])
        assert alive(grandchild)
        parent.kill()
        parent.wait()
        assert wait_gone(grandchild)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        if grandchild is not None and alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_never_started() -> None:
    s = Supervised(["true"], "/nonexistent/log")
    assert s.stop() is None and s.pid is None and not s.running
    with pytest.raises(SupervisorError, match="not started"):
        s.wait_ready(1)
    assert s.log_tail() == ""
