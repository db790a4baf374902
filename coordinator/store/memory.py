"""In-process Store for tests and single-process use.

Several coordinators in one test share data through *views* (:meth:`MemoryStore.clone_view`):
each view has its own closed/unavailable state and its own watches, so a test can cut one
coordinator off the store while the others keep going. Fault injection hooks let tests break
watches and operations deterministically.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

from coordinator.store.base import (
    ConcurrentUpdate,
    KeyNotFound,
    StoreUnavailable,
    check_key,
)

__all__ = ["MemoryStore", "MemoryWatch"]


class _End:
    """Queue sentinel: the watch ends normally (store view closed)."""


class _Fail:
    """Queue sentinel: the watch ends with ``exc``."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_Item = bytes | _End | _Fail
Hook = Callable[[str], Awaitable[None]]
_HOOKABLE = ("get", "set", "has", "compare_and_swap")


class _Backend:
    """The data shared by all views of one MemoryStore."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.watches: dict[str, set[MemoryWatch]] = {}

    def publish(self, key: str, value: bytes) -> None:
        for w in tuple(self.watches.get(key, ())):
            w._push(value)


class MemoryWatch(AsyncIterator[bytes]):
    """One watch on one key. Registered when created (not on first iteration), so no write
    made after :meth:`MemoryStore.watch` returned can be missed."""

    def __init__(self, view: MemoryStore, key: str, fail: BaseException | None) -> None:
        self._view = view
        self.key = key
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._done = False
        if fail is not None:
            self._queue.put_nowait(_Fail(fail))
        else:
            view._backend.watches.setdefault(key, set()).add(self)
            view._watches.add(self)

    def _push(self, item: _Item) -> None:
        if not self._done:
            self._queue.put_nowait(item)

    def _unregister(self) -> None:
        self._done = True
        per_key = self._view._backend.watches.get(self.key)
        if per_key is not None:
            per_key.discard(self)
            if not per_key:
                del self._view._backend.watches[self.key]
        self._view._watches.discard(self)

    def __aiter__(self) -> MemoryWatch:
        return self

    async def __anext__(self) -> bytes:
        if self._done and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, bytes):
            return item
        self._unregister()
        # Drop whatever is still queued: the watch is over.
        while not self._queue.empty():
            self._queue.get_nowait()
        if isinstance(item, _Fail):
            raise item.exc
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop watching; pending values are dropped."""
        self._unregister()
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_End())


class MemoryStore:
    """A dict behind the Store protocol, with views and fault injection.

    ``yield_each_op`` makes every operation pass through the event loop once before acting,
    so concurrent tasks interleave as they would against a real store. ``interleave`` (a seeded
    ``random.Random``) adds 0..3 further passes before each operation and after each write
    (the reply's latency: watchers may hear of a write before its writer does), so tests
    explore many interleavings while staying reproducible.
    """

    def __init__(
        self, *, yield_each_op: bool = True, interleave: random.Random | None = None
    ) -> None:
        self._backend = _Backend()
        self._yield = yield_each_op
        self._interleave = interleave
        self._watches: set[MemoryWatch] = set()
        self._closed = False
        self._unavailable: BaseException | None = None
        self._fail_watch: list[BaseException] = []
        self._before: dict[str, Hook] = {}
        self._after: dict[str, Hook] = {}
        self.op_counts: Counter[str] = Counter()
        """How often each operation was called on this view (for cache tests)."""

    def clone_view(self) -> MemoryStore:
        """A new view on the same data (own watches, own faults, own counters)."""
        view = MemoryStore(yield_each_op=self._yield, interleave=self._interleave)
        view._backend = self._backend
        return view

    # -- fault injection ---------------------------------------------------------------------

    def fail_next_watch(self, exc: BaseException | None = None) -> None:
        """The next :meth:`watch` on this view fails with ``exc`` on its first iteration."""
        self._fail_watch.append(exc if exc is not None else StoreUnavailable("injected"))

    def break_watches(self, exc: BaseException | None = None) -> int:
        """End every active watch of this view with ``exc`` (default StoreUnavailable).

        Returns how many watches were broken.
        """
        err = exc if exc is not None else StoreUnavailable("watch broken (injected)")
        broken = tuple(self._watches)
        for w in broken:
            w._push(_Fail(err))
            w._unregister()
        return len(broken)

    def before(self, op: str, hook: Hook | None) -> None:
        """Await ``hook(key)`` at the start of every ``op`` on this view (None removes it).

        ``op`` is one of get, set, has, compare_and_swap. Lets a test pause an operation at a
        chosen point, or make it raise.
        """
        self._set_hook(self._before, op, hook)

    def after(self, op: str, hook: Hook | None) -> None:
        """Await ``hook(key)`` after ``op`` took effect, before it returns (reply latency).

        A failed operation (KeyNotFound, ConcurrentUpdate) raises without running the hook.
        """
        self._set_hook(self._after, op, hook)

    @staticmethod
    def _set_hook(table: dict[str, Hook], op: str, hook: Hook | None) -> None:
        if op not in _HOOKABLE:
            raise ValueError(f"unknown store operation {op!r}")
        if hook is None:
            table.pop(op, None)
        else:
            table[op] = hook

    def set_unavailable(self, exc: BaseException | None = None) -> None:
        """Make every operation of this view raise ``exc`` until :meth:`set_available`."""
        self._unavailable = exc if exc is not None else StoreUnavailable("store unavailable")

    def set_available(self) -> None:
        self._unavailable = None

    @property
    def active_watches(self) -> int:
        return len(self._watches)

    def raw_set(self, key: str, value: bytes) -> None:
        """Write without checks, notifications or faults (tamper with the store in tests)."""
        self._backend.data[key] = bytes(value)

    # -- Store protocol ------------------------------------------------------------------------

    async def _enter(self, op: str, key: str) -> None:
        check_key(key)
        self.op_counts[op] += 1
        hook = self._before.get(op)
        if hook is not None:
            await hook(key)
        if self._yield:
            await asyncio.sleep(0)
        await self._jitter()
        if self._closed:
            raise StoreUnavailable("memory store view is closed")
        if self._unavailable is not None:
            raise self._unavailable

    async def _jitter(self) -> None:
        if self._interleave is not None:
            for _ in range(self._interleave.randint(0, 3)):
                await asyncio.sleep(0)

    async def _leave(self, op: str, key: str) -> None:
        await self._jitter()
        hook = self._after.get(op)
        if hook is not None:
            await hook(key)

    async def get(self, key: str) -> bytes:
        await self._enter("get", key)
        try:
            value = self._backend.data[key]
        except KeyError:
            raise KeyNotFound(key) from None
        await self._leave("get", key)
        return value

    async def set(self, key: str, value: bytes) -> None:
        await self._enter("set", key)
        value = bytes(value)
        self._backend.data[key] = value
        self._backend.publish(key, value)
        await self._leave("set", key)

    async def has(self, key: str) -> bool:
        await self._enter("has", key)
        found = key in self._backend.data
        await self._leave("has", key)
        return found

    async def compare_and_swap(self, key: str, old: bytes, new: bytes) -> None:
        await self._enter("compare_and_swap", key)
        current = self._backend.data.get(key, b"")
        if current != bytes(old):
            raise ConcurrentUpdate(f"compare-and-swap on {key} lost: value changed")
        new = bytes(new)
        self._backend.data[key] = new
        self._backend.publish(key, new)
        await self._leave("compare_and_swap", key)

    def watch(self, key: str) -> MemoryWatch:
        check_key(key)
        self.op_counts["watch"] += 1
        if self._closed:
            return MemoryWatch(self, key, StoreUnavailable("memory store view is closed"))
        if self._unavailable is not None:
            return MemoryWatch(self, key, self._unavailable)
        fail = self._fail_watch.pop(0) if self._fail_watch else None
        return MemoryWatch(self, key, fail)

    async def close(self) -> None:
        """Close this view: later operations raise StoreUnavailable, its watches end."""
        self._closed = True
        for w in tuple(self._watches):
            w._push(_End())
            w._unregister()
