"""Certificate lifecycle (DESIGN §15), pure: when a leaf is renewed, and which mesh CAs to trust.

Leaves are short-lived so that a leaked key or a workload that lost its attested state stops
being trusted on its own, and so that every workload follows the deployment without a restart.
A leaf is renewed at half of what was left of it when it arrived, spread by ±10 %: workloads
that joined together do not all come back at the same second. After a manifest update the mesh
CA certificate changes; for a grace period the bundle workloads trust holds the previous one
too, so a connection between a peer that already renewed and one that has not yet keeps working.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from coordinator.errors import ConcordError

__all__ = [
    "DEFAULT_LEAF_LIFETIME",
    "DEFAULT_MESH_CA_GRACE",
    "RENEW_FRACTION",
    "RENEW_JITTER",
    "LifecycleError",
    "MeshCaRotation",
    "check_leaf_lifetime",
    "parse_duration",
    "renewal_delay",
    "renewal_window",
]

DEFAULT_LEAF_LIFETIME = timedelta(hours=24)
"""Leaf lifetime of ``concord serve`` unless ``--leaf-lifetime`` says otherwise.

A day, not a year: a leaf of a workload that is gone (or whose key leaked) stops being trusted
within a day without any revocation list, while the coordinators may be unreachable for about
half a day (renewal starts at half the lifetime) before a workload's leaf runs out. The renewal
load is small: N workloads renew about N times a day, plus once after each update."""

MIN_LEAF_LIFETIME = timedelta(seconds=5)
"""A floor against typos; leaves of seconds are for demos and tests (``concord demo`` uses a
few seconds so that renewals happen while one watches), production wants hours."""

DEFAULT_MESH_CA_GRACE = timedelta(minutes=10)
"""How long the previous mesh CA stays in the bundle after an update (``--mesh-ca-grace``).

Long enough for every agent to renew after an update (they are told at once; a few seconds
for a thousand of them) and reload its TLS peers; 0 makes the switch strict."""

RENEW_FRACTION = 0.5
"""Renew when this fraction of the leaf's remaining lifetime (as received) has passed."""

RENEW_JITTER = 0.1
"""±fraction of the renewal delay, drawn uniformly per leaf."""

Rand = Callable[[], float]


class LifecycleError(ConcordError, ValueError):
    """A leaf lifetime or grace that cannot work (a configuration error, found at start)."""

    reason = "invalid_lifecycle"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``24h`` or ``7d`` (non-negative) as a timedelta."""
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _UNITS else "s"
    number = raw[:-1] if raw[-1:] in _UNITS else raw
    try:
        value = float(number)
    except ValueError:
        raise LifecycleError(f"not a duration: {text!r} (want e.g. 90, 15m, 24h, 7d)") from None
    if not (math.isfinite(value) and 0 <= value * _UNITS[unit] <= 10 * 365 * 86400):
        raise LifecycleError(f"duration out of range: {text!r}")
    return timedelta(seconds=value * _UNITS[unit])


def check_leaf_lifetime(lifetime: timedelta) -> timedelta:
    """``lifetime`` if a coordinator can issue leaves of it, LifecycleError otherwise."""
    if lifetime < MIN_LEAF_LIFETIME:
        raise LifecycleError(
            f"leaf lifetime must be at least {int(MIN_LEAF_LIFETIME.total_seconds())} s, "
            f"got {lifetime.total_seconds():g} s"
        )
    return lifetime


def renewal_window(remaining: float) -> tuple[float, float]:
    """The earliest and latest :func:`renewal_delay` for a leaf with ``remaining`` seconds."""
    nominal = max(0.0, remaining) * RENEW_FRACTION
    return nominal * (1 - RENEW_JITTER), nominal * (1 + RENEW_JITTER)


def renewal_delay(remaining: float, rand: Rand = random.random) -> float:
    """Seconds from receiving a leaf to renewing it: half of ``remaining`` (its seconds left
    when it arrived), ±10 % by ``rand()`` (a uniform sample in [0, 1]). Measured from arrival,
    not from notBefore, because leaves are back-dated for clock skew."""
    if not math.isfinite(remaining):
        raise LifecycleError(f"remaining lifetime must be finite, got {remaining!r}")
    low, high = renewal_window(remaining)
    sample = min(1.0, max(0.0, rand()))
    return low + (high - low) * sample


@dataclass(frozen=True)
class MeshCaRotation:
    """The current mesh CA and the one it replaced, with when (seconds on any one clock).

    A coordinator keeps one of these in memory; a restarted coordinator starts with no previous
    CA (the grace is a courtesy for connections across the switch, not a guarantee).
    """

    current_pem: bytes = b""
    previous_pem: bytes = b""
    replaced_at: float = 0.0

    def advance(self, mesh_ca_pem: bytes, now: float) -> MeshCaRotation:
        """The rotation after the mesh CA became ``mesh_ca_pem`` at ``now`` (self if unchanged)."""
        if mesh_ca_pem == self.current_pem:
            return self
        return MeshCaRotation(mesh_ca_pem, self.current_pem, now)

    def in_grace(self, now: float, grace: float) -> bool:
        """Whether the previous mesh CA is still to be trusted at ``now``."""
        return bool(self.previous_pem) and 0 <= now - self.replaced_at < grace

    def bundle(self, now: float, grace: float) -> bytes:
        """PEM to trust for mesh peers: the current CA, then the previous one within ``grace``."""
        if self.in_grace(now, grace):
            return _with_newline(self.current_pem) + self.previous_pem
        return self.current_pem

    def grace_ends(self, grace: float) -> float | None:
        """When the bundle drops the previous CA (None when it holds only the current one)."""
        if not self.previous_pem or grace <= 0:
            return None
        return self.replaced_at + grace


def _with_newline(pem: bytes) -> bytes:
    return pem if pem.endswith(b"\n") else pem + b"\n"
