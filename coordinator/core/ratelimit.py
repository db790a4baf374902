"""Rate-limited repeats: a condition that persists (a peer that stays unusable, a store that stays
away) is worth one log line when it starts and a reminder now and then, not one per retry."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from coordinator.backoff import MONOTONIC, Clock

__all__ = ["RepeatLimiter"]


class RepeatLimiter:
    """Lets one event per key through per ``interval`` seconds and counts the ones held back.

    ``allow(key)`` returns None to suppress, or the number suppressed since the last one let
    through (0 the first time), which the caller logs with it. At most ``max_keys`` keys are
    remembered (the least recently let through are forgotten), so unbounded keys cannot grow
    memory; a forgotten key is simply logged again.
    """

    def __init__(self, interval: float, *, clock: Clock = MONOTONIC, max_keys: int = 1024) -> None:
        self.interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._last: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def allow(self, key: Hashable) -> int | None:
        now = self._clock.now()
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.interval:
            self._last[key] = (entry[0], entry[1] + 1)
            return None
        suppressed = entry[1] if entry is not None else 0
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > self._max_keys:
            self._last.popitem(last=False)
        return suppressed

    def reset(self, key: Hashable) -> None:
        """Forget ``key`` (the condition ended): its next occurrence is logged at once."""
        self._last.pop(key, None)
