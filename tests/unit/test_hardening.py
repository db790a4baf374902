"""Process hardening (no core dumps, not dumpable) and the hardened systemd unit."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coordinator.service import hardening

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "concord.service"

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="procfs and prctl")

# The child hardens itself, reports PR_GET_DUMPABLE, then waits so the parent can read its
# /proc/<pid>/limits from outside.
_CHILD = textwrap.dedent(
    """
    import sys
    from coordinator.service.hardening import dumpable, harden_process
    before = dumpable()
    result = harden_process()
    print(before, dumpable(), result.core_limit_zero, result.not_dumpable, flush=True)
    sys.stdin.read()
    """
)


def core_limits(pid: int) -> tuple[str, str]:
    """Soft and hard "Max core file size" of a process, as /proc shows them."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            soft, hard = line[len("Max core file size") :].split()[:2]
            return soft, hard
    raise AssertionError(f"no core limit line in /proc/{pid}/limits")


@linux_only
def test_hardened_process_has_no_core_limit_and_is_not_dumpable() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None and child.stdin is not None
            before, after, core_ok, dump_ok = child.stdout.readline().split()
            assert (before, after) == ("1", "0")  # it was dumpable, now it is not
            assert core_ok == dump_ok == "True"
            assert core_limits(child.pid) == ("0", "0")  # hard limit too: no way back
        finally:
            if child.stdin is not None:
                child.stdin.close()
            child.wait(timeout=60)
    assert child.returncode == 0


def test_missing_mechanisms_degrade_to_logged_warnings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import resource

    def refuse(*_: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    monkeypatch.setattr(hardening, "_prctl", lambda: None)
    with caplog.at_level(logging.WARNING, logger=hardening.__name__):
        result = hardening.harden_process()
    assert not result.core_limit_zero and not result.not_dumpable
    assert len(result.warnings) == 2
    logged = [r.getMessage() for r in caplog.records]
    assert any("RLIMIT_CORE" in m for m in logged)
    assert any("dumpable" in m for m in logged)


def test_not_linux_is_a_warning_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    warnings: list[str] = []
    assert hardening._not_dumpable(warnings) is False
    assert warnings == ["PR_SET_DUMPABLE is Linux only (platform darwin)"]
    assert hardening.dumpable() is None


# --- the systemd unit ---------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections → directive → values (a directive may repeat); comments and continuations."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


REQUIRED = {
    "LimitCORE": "0",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "StateDirectory": "concord",
    "StateDirectoryMode": "0700",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
}


@pytest.mark.parametrize(("directive", "value"), sorted(REQUIRED.items()))
def test_unit_sets(service: dict[str, list[str]], directive: str, value: str) -> None:
    assert service.get(directive) == [value], f"{directive}={value} missing from {UNIT}"


def test_unit_restricts_address_families(service: dict[str, list[str]]) -> None:
    (families,) = service["RestrictAddressFamilies"]
    assert sorted(families.split()) == ["AF_INET", "AF_INET6", "AF_UNIX"]


def test_unit_runs_under_a_named_user(service: dict[str, list[str]]) -> None:
    assert service.get("DynamicUser") == ["yes"] or len(service.get("User", [])) == 1


def test_unit_leaves_only_the_tsm_reports_writable(service: dict[str, list[str]]) -> None:
    paths = " ".join(service.get("ReadWritePaths", [])).split()
    assert paths == ["/sys/kernel/config/tsm/report"]
    (exec_start,) = service["ExecStart"]
    assert "--store file:/var/lib/concord " in exec_start  # the StateDirectory


def test_unit_explains_what_it_leaves_out() -> None:
    text = UNIT.read_text()
    assert "MemoryDenyWriteExecute" not in parse_unit(text)["Service"]
    comments = "\n".join(ln for ln in text.splitlines() if ln.lstrip().startswith("#"))
    assert "MemoryDenyWriteExecute" in comments and "cffi" in comments


def test_parse_unit_sees_a_removed_directive() -> None:
    text = UNIT.read_text().replace("LimitCORE=0\n", "")
    assert "LimitCORE" not in parse_unit(text)["Service"]
