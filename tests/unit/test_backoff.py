"""The one back-off policy and its clock: shape, jitter bounds, bad parameters, and a retry loop
(``join``) that gives up in fake time without sleeping for real."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any, cast

import pytest

from coordinator.backoff import MONOTONIC, Backoff, BackoffError, Clock, MonotonicClock
from coordinator.client.channel import CoordinatorPolicy
from coordinator.client.operations import JOIN_BACKOFF, NotReady, join
from coordinator.cluster.recovery import RETRY_BACKOFF
from coordinator.core.state import WATCH_BACKOFF
from coordinator.errors import ConcordError
from coordinator.service.server import WATCH_BACKOFF as SERVER_WATCH_BACKOFF


class FakeClock:
    """A clock that only moves when something sleeps on it; records every wait."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)  # still a scheduling point, like the real one


def test_default_watch_backoff_grows_and_is_capped() -> None:
    # What the Guard's watcher used before the policy was shared (kept from test_state).
    assert 0.08 <= WATCH_BACKOFF(1) <= 0.12
    assert 0.16 <= WATCH_BACKOFF(2) <= 0.24
    assert 8.0 <= WATCH_BACKOFF(50) <= 12.0


def test_delay_is_exponential_then_capped_without_jitter() -> None:
    b = Backoff(base=0.1, cap=1.0, factor=2.0, jitter=0.0)
    assert [b.delay(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert b.delay(0) == b.delay(-5) == pytest.approx(0.1)  # "attempt 0" is the first


@pytest.mark.parametrize("attempt", [1, 3, 10, 1025, 10**9])
def test_jitter_spans_exactly_the_bounds(attempt: int) -> None:
    b = Backoff(base=0.05, cap=2.0, jitter=0.5)
    low, high = b.bounds(attempt)
    assert b.delay(attempt, rand=lambda: 0.0) == pytest.approx(low)
    assert b.delay(attempt, rand=lambda: 1.0) == pytest.approx(high)
    assert b.delay(attempt, rand=lambda: 0.5) == pytest.approx(b.nominal(attempt))
    assert low == pytest.approx(b.nominal(attempt) * 0.5)
    # A misbehaving random source cannot push the delay outside the bounds.
    assert b.delay(attempt, rand=lambda: 7.0) == pytest.approx(high)
    assert b.delay(attempt, rand=lambda: -3.0) == pytest.approx(low)


def test_huge_attempts_and_factors_stay_finite() -> None:
    b = Backoff(base=1e-3, cap=30.0, factor=1000.0, jitter=0.1)
    assert b.nominal(10**12) == 30.0
    flat = Backoff(base=0.5, cap=0.5, factor=1.0, jitter=0.0)
    assert flat.delay(10**12) == 0.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": 0.0, "cap": 1.0},
        {"base": -1.0, "cap": 1.0},
        {"base": float("nan"), "cap": 1.0},
        {"base": 1.0, "cap": 0.5},
        {"base": 1.0, "cap": float("inf")},
        {"base": 0.1, "cap": 1.0, "factor": 0.5},
        {"base": 0.1, "cap": 1.0, "jitter": 1.0},
        {"base": 0.1, "cap": 1.0, "jitter": -0.1},
    ],
)
def test_impossible_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(BackoffError) as err:
        Backoff(**kwargs)
    assert isinstance(err.value, ConcordError) and err.value.reason == "invalid_backoff"


def test_policy_is_a_frozen_value() -> None:
    b = Backoff(base=0.1, cap=1.0)
    with pytest.raises(AttributeError):
        b.base = 1.0  # type: ignore[misc]
    assert b == Backoff(base=0.1, cap=1.0, factor=2.0, jitter=0.2)


def test_the_projects_policies() -> None:
    """Each retry loop keeps the shape it had before the policy was shared."""
    assert SERVER_WATCH_BACKOFF.bounds(1) == pytest.approx((0.08, 0.12))
    assert SERVER_WATCH_BACKOFF.bounds(50) == pytest.approx((0.8, 1.2))
    assert RETRY_BACKOFF.bounds(1) == pytest.approx((0.025, 0.075))
    assert RETRY_BACKOFF.nominal(100) == 2.0
    assert JOIN_BACKOFF.bounds(1) == pytest.approx((0.075, 0.125))
    assert JOIN_BACKOFF.nominal(100) == 2.0


def test_clocks_satisfy_the_protocol() -> None:
    assert isinstance(MONOTONIC, Clock) and isinstance(MonotonicClock(), Clock)
    assert isinstance(FakeClock(), Clock)


async def test_real_clock_moves_forward() -> None:
    before = MONOTONIC.now()
    await MONOTONIC.sleep(0)
    await MONOTONIC.sleep(-1)  # a negative wait is no wait, not an error
    assert MONOTONIC.now() >= before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_join_backs_off_in_fake_time_and_gives_up(tmp_path: Path) -> None:
    """Nobody listens: each attempt is refused at once, the waits follow JOIN_BACKOFF and the
    loop stops at the timeout measured on the injected clock (no real sleeping)."""
    clock = FakeClock()
    waits: list[tuple[str, int, float]] = []
    policy = cast(CoordinatorPolicy, object())  # never used: nothing answers
    with pytest.raises(NotReady, match="gave up after"):
        await join(
            f"127.0.0.1:{_closed_port()}",
            cast(Any, object()),
            policy=policy,
            out_dir=tmp_path / "out",
            timeout=5.0,
            on_wait=lambda reason, attempt, delay: waits.append((reason, attempt, delay)),
            clock=clock,
        )
    assert clock.sleeps and clock.sleeps == [w[2] for w in waits]
    for attempt, delay in enumerate(clock.sleeps, start=1):
        low, high = JOIN_BACKOFF.bounds(attempt)
        assert low <= delay <= high
    assert sum(clock.sleeps) <= 5.0
    assert clock.t - 1000.0 == pytest.approx(sum(clock.sleeps))
    assert all("unreachable" in w[0] for w in waits)
    assert not (tmp_path / "out").exists()
