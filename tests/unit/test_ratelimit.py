"""Repeated complaints are rate-limited per key (issue: "peer … not usable for recovery" six
times a second)."""

from __future__ import annotations

from coordinator.core.ratelimit import RepeatLimiter


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


def test_one_per_interval_per_key_with_the_count_held_back() -> None:
    clock = FakeClock()
    limiter = RepeatLimiter(30.0, clock=clock)
    assert limiter.allow("a") == 0
    assert [limiter.allow("a") for _ in range(6)] == [None] * 6
    assert limiter.allow("b") == 0  # another key is not held back by "a"
    clock.t += 29.9
    assert limiter.allow("a") is None
    clock.t += 0.2
    assert limiter.allow("a") == 7  # the reminder says how many were dropped
    assert limiter.allow("a") is None


def test_reset_logs_the_next_one_at_once() -> None:
    clock = FakeClock()
    limiter = RepeatLimiter(30.0, clock=clock)
    assert limiter.allow("a") == 0
    limiter.reset("a")
    assert limiter.allow("a") == 0


def test_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = RepeatLimiter(30.0, clock=clock, max_keys=3)
    for key in "abcd":
        assert limiter.allow(key) == 0
    assert limiter.allow("a") == 0  # forgotten (oldest), so logged again
    assert limiter.allow("d") is None
