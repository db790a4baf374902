"""Process hardening at start: the coordinator's secrets must not leave through a core dump.

The process holds the root and mesh CA keys, the seed and workload secrets. A core file (or a
debugger attached by another process of the same user) would copy them out of the CVM's memory.
:func:`harden_process` sets RLIMIT_CORE to 0 (soft and hard, so the process cannot raise it back)
and clears the dumpable flag (PR_SET_DUMPABLE 0), which also stops ptrace attach by processes
without CAP_SYS_PTRACE and makes /proc/<pid>/mem unreadable to them. Where a mechanism does
not exist (not Linux, no libc) it logs a warning and carries on: the systemd unit
(deploy/concord.service) sets LimitCORE=0 as a second line.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


@dataclass(frozen=True)
class Hardening:
    """What :func:`harden_process` achieved; ``warnings`` says why a step was skipped."""

    core_limit_zero: bool
    not_dumpable: bool
    warnings: tuple[str, ...] = ()


def harden_process() -> Hardening:
    """No core dumps, not dumpable. Idempotent; never raises (it logs what it could not do)."""
    warnings: list[str] = []
    core = _no_core_dumps(warnings)
    dumpable = _not_dumpable(warnings)
    for message in warnings:
        log.warning("process hardening: %s", message)
    return Hardening(core_limit_zero=core, not_dumpable=dumpable, warnings=tuple(warnings))


def _no_core_dumps(warnings: list[str]) -> bool:
    try:
        import resource
    except ImportError:  # not a POSIX system
        warnings.append("no resource module, core dumps not disabled")
        return False
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as exc:
        warnings.append(f"setrlimit(RLIMIT_CORE, 0) failed: {exc}")
        return False
    return resource.getrlimit(resource.RLIMIT_CORE) == (0, 0)


def _prctl() -> Callable[..., int] | None:
    """libc's prctl(2), or None where there is none (not Linux, no libc, a libc without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


def _not_dumpable(warnings: list[str]) -> bool:
    if not sys.platform.startswith("linux"):
        warnings.append(f"PR_SET_DUMPABLE is Linux only (platform {sys.platform})")
        return False
    prctl = _prctl()
    if prctl is None:
        warnings.append("libc prctl not found, process stays dumpable")
        return False
    if prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        warnings.append(f"prctl(PR_SET_DUMPABLE, 0) failed: errno {ctypes.get_errno()}")
        return False
    return dumpable() == 0


def dumpable() -> int | None:
    """PR_GET_DUMPABLE of this process (0 = not dumpable); None where it cannot be asked."""
    prctl = _prctl()
    if prctl is None:
        return None
    value = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
    return int(value) if value >= 0 else None
