"""Pure certificate lifecycle (DESIGN §15): renewal timing, durations, the mesh CA rotation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.core.lifecycle import (
    LifecycleError,
    MeshCaRotation,
    check_leaf_lifetime,
    parse_duration,
    renewal_delay,
    renewal_window,
)

A = b"-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n"
B = b"-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n"
C = b"-----BEGIN CERTIFICATE-----\nC\n-----END CERTIFICATE-----"  # no trailing newline


def test_renewal_at_half_the_remaining_lifetime_plus_minus_ten_percent() -> None:
    assert renewal_delay(3600, lambda: 0.5) == pytest.approx(1800)
    assert renewal_delay(3600, lambda: 0.0) == pytest.approx(1620)
    assert renewal_delay(3600, lambda: 1.0) == pytest.approx(1980)
    assert renewal_window(3600) == pytest.approx((1620, 1980))
    assert renewal_delay(-5, lambda: 0.7) == 0.0  # already expired: renew now
    with pytest.raises(LifecycleError):
        renewal_delay(float("nan"))


@given(st.floats(0, 10 * 365 * 86400), st.floats(-1, 2))
def test_renewal_always_inside_its_window(remaining: float, sample: float) -> None:
    low, high = renewal_window(remaining)
    assert low <= renewal_delay(remaining, lambda: sample) <= high
    assert high < remaining or remaining == 0


def test_jitter_spreads_renewals() -> None:
    import random

    rng = random.Random(7)
    delays = [renewal_delay(1000, rng.random) for _ in range(1000)]
    assert 450 <= min(delays) < 460 and 540 < max(delays) <= 550


def test_parse_duration() -> None:
    assert parse_duration("90") == timedelta(seconds=90)
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration(" 24H ") == timedelta(hours=24)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("0") == timedelta(0)
    for bad in ("", "h", "-1m", "1w", "inf", "nan", "99999d"):
        with pytest.raises(LifecycleError) as exc:
            parse_duration(bad)
        assert exc.value.reason == "invalid_lifecycle"


def test_leaf_lifetime_has_a_floor() -> None:
    assert check_leaf_lifetime(timedelta(hours=1)) == timedelta(hours=1)
    with pytest.raises(LifecycleError):
        check_leaf_lifetime(timedelta(seconds=4))


def test_rotation_keeps_the_previous_ca_for_the_grace() -> None:
    r = MeshCaRotation().advance(A, 10.0)
    assert r.bundle(10.0, 60) == A and r.grace_ends(60) is None
    assert r.advance(A, 20.0) is r  # unchanged CA: nothing rotates
    r2 = r.advance(B, 100.0)
    assert r2.bundle(100.0, 60) == B + A
    assert r2.bundle(159.9, 60) == B + A
    assert r2.bundle(160.0, 60) == B
    assert r2.bundle(100.0, 0) == B  # strict
    assert r2.grace_ends(60) == 160.0 and r2.grace_ends(0) is None
    r3 = r2.advance(C, 120.0)
    assert r3.previous_pem == B  # only the one before: A is gone
    assert r3.bundle(120.0, 60) == C + b"\n" + B
    assert r3.bundle(90.0, 60) == C  # a clock before the switch: no grace
