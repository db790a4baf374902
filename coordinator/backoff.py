"""Jittered exponential back-off and the clock it waits on: the one retry policy of the project.

Every retry loop (history watch, member watch, peer recovery, ``concord join``) computes its
waits here, so the shape is the same everywhere and can be tested without sleeping: the
randomness is a parameter of :meth:`Backoff.delay` and the waiting goes through a :class:`Clock`,
which tests replace with a fake one that only advances a number.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from coordinator.errors import ConcordError

__all__ = ["MONOTONIC", "Backoff", "BackoffError", "Clock", "MonotonicClock"]

Rand = Callable[[], float]
"""A uniform sample in [0, 1] (``random.random``; tests pass a constant)."""


class BackoffError(ConcordError, ValueError):
    """A back-off policy with impossible parameters (a programming error, raised at import)."""

    reason = "invalid_backoff"


@dataclass(frozen=True)
class Backoff:
    """Wait ``base * factor ** (attempt - 1)`` seconds, at most ``cap``, spread by ``±jitter``.

    The jitter is a fraction of the un-jittered delay: with ``jitter=0.2`` a delay of 1 s becomes
    a uniform 0.8..1.2 s, so processes that failed together do not retry together. An instance
    is also a ``Callable[[int], float]`` (``policy(attempt)``) for code that takes one.
    """

    base: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (self.base > 0 and math.isfinite(self.base)):
            raise BackoffError(f"back-off base must be a positive number, got {self.base!r}")
        if not (self.cap >= self.base and math.isfinite(self.cap)):
            raise BackoffError(f"back-off cap must be at least the base, got {self.cap!r}")
        if not (self.factor >= 1 and math.isfinite(self.factor)):
            raise BackoffError(f"back-off factor must be at least 1, got {self.factor!r}")
        if not 0 <= self.jitter < 1:
            raise BackoffError(f"back-off jitter must be in [0, 1), got {self.jitter!r}")

    def nominal(self, attempt: int) -> float:
        """The un-jittered delay before retry ``attempt`` (1-based; 0 and below count as 1)."""
        exponent = max(0, attempt - 1)
        if self.factor > 1:
            # Past this exponent the cap applies anyway; bounding it keeps the power finite.
            exponent = min(exponent, math.ceil(math.log(self.cap / self.base, self.factor)) + 1)
        else:
            exponent = 0
        return min(self.cap, self.base * self.factor**exponent)

    def delay(self, attempt: int, rand: Rand = random.random) -> float:
        """Seconds to wait before retry ``attempt`` (1-based), jittered with ``rand()``."""
        sample = min(1.0, max(0.0, rand()))
        return self.nominal(attempt) * (1.0 + self.jitter * (2.0 * sample - 1.0))

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The smallest and largest :meth:`delay` for ``attempt``."""
        nominal = self.nominal(attempt)
        return nominal * (1.0 - self.jitter), nominal * (1.0 + self.jitter)

    def __call__(self, attempt: int) -> float:
        return self.delay(attempt)


@runtime_checkable
class Clock(Protocol):
    """Monotonic time and a way to wait on it; injected so that tests never sleep for real."""

    def now(self) -> float:
        """Monotonic seconds (only differences mean anything)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (cancellable)."""
        ...


class MonotonicClock:
    """The real clock: :func:`time.monotonic` and :func:`asyncio.sleep`."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


MONOTONIC: Clock = MonotonicClock()
