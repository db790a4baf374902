"""``concord serve`` hardens its own process at start (DESIGN §13): no core file can be written,
not even by raising the soft limit again (the hard limit is 0 too)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from attestation.providers import mock
from coordinator.cli.demo import CoordinatorProcess, serve_args


def core_limits(pid: int) -> tuple[str, str]:
    """Soft and hard "Max core file size" of a process, as /proc shows them."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            soft, hard = line[len("Max core file size") :].split()[:2]
            return soft, hard
    raise AssertionError(f"no core limit line in /proc/{pid}/limits")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/limits")
def test_serve_runs_without_core_dumps(tmp_path: Path) -> None:
    mock.init(tmp_path / "mock")
    policy = tmp_path / "coordinator.policy"
    policy.write_bytes(b"concord test policy: hardening\n")
    proc = CoordinatorProcess(
        serve_args(tmp_path, tmp_path / "mock", policy, tmp_path / "store"),
        tmp_path / "coordinator.log",
    )
    try:
        proc.start()
        assert core_limits(proc.pid) == ("0", "0"), proc.log_tail()
    finally:
        code = proc.stop()
    assert code == 0, proc.log_tail()
