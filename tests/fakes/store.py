"""An in-process Store and MembershipStore for tests, with fault injection.

Not part of the package: production serves ``file:`` or ``etcd://`` only. It passes the same
contract suite (tests/contract) as the real backends, so tests built on it exercise the
semantics the coordinator really gets.

Several coordinators in one test share data through *views* (:meth:`MemoryStore.clone_view`):
each view has its own closed/unavailable state, its own watches and its own member keep-alives,
so a test can cut one coordinator off the store while the others keep going. Fault injection
hooks let tests break watches and operations deterministically, and :meth:`MemoryStore.raw_set`
/ :meth:`MemoryStore.raw_delete` tamper with the data the way someone with store access could.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from coordinator.store.base import (
    DELETED,
    ConcurrentUpdate,
    KeyNotFound,
    StoreUnavailable,
    check_key,
    check_kind,
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
MEMBERS = "members/"
MAX_TTL = 3600


class _Backend:
    """The data shared by all views of one MemoryStore."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.watches: dict[str, set[MemoryWatch]] = {}
        # Member keys whose owner stopped refreshing: removed when the timer fires.
        self.expiry: dict[str, asyncio.TimerHandle] = {}
        # One queue per live watch_members(): poked on every change of a member key.
        self.member_listeners: set[asyncio.Queue[_End | None]] = set()

    def publish(self, key: str, value: bytes) -> None:
        for w in tuple(self.watches.get(key, ())):
            w._push(value)
        if key.startswith(MEMBERS):
            for q in tuple(self.member_listeners):
                q.put_nowait(None)

    def write(self, key: str, value: bytes) -> None:
        self.data[key] = value
        self.publish(key, value)

    def delete(self, key: str) -> None:
        """Remove ``key``; its watches see DELETED (nothing happens if it is absent, as in etcd)."""
        timer = self.expiry.pop(key, None)
        if timer is not None:
            timer.cancel()
        if self.data.pop(key, None) is not None:
            self.publish(key, DELETED)


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
        self,
        *,
        yield_each_op: bool = True,
        interleave: random.Random | None = None,
        ttl_unit: float = 1.0,
    ) -> None:
        """``ttl_unit``: real seconds per second of a member TTL (tests of expiry shrink it)."""
        self._backend = _Backend()
        self._yield = yield_each_op
        self._interleave = interleave
        self._ttl_unit = ttl_unit
        self._members: dict[str, int] = {}  # member id -> ttl, while this view keeps it alive
        self._member_queues: set[asyncio.Queue[_End | None]] = set()
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
        view = MemoryStore(
            yield_each_op=self._yield, interleave=self._interleave, ttl_unit=self._ttl_unit
        )
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

    def raw_delete(self, key: str) -> None:
        """Delete ``key`` behind every coordinator's back, bypassing faults; watches see
        DELETED, as they would for a deletion made directly in etcd."""
        self._backend.delete(check_key(key))

    # -- Store protocol ------------------------------------------------------------------------

    async def _enter(self, op: str, key: str) -> None:
        check_key(key)
        self.op_counts[op] += 1
        hook = self._before.get(op)
        if hook is not None:
            await hook(key)
        await self._pass()

    async def _pass(self) -> None:
        """Yield to the loop as configured, then fail if this view is closed or cut off."""
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
        self._backend.write(key, bytes(value))
        await self._leave("set", key)

    async def has(self, key: str) -> bool:
        await self._enter("has", key)
        found = key in self._backend.data
        await self._leave("has", key)
        return found

    async def has_any(self, kind: str) -> bool:
        check_kind(kind)
        await self._enter("has", f"{kind}/any")
        found = any(k.startswith(kind + "/") for k in self._backend.data)
        await self._leave("has", f"{kind}/any")
        return found

    async def compare_and_swap(self, key: str, old: bytes, new: bytes) -> None:
        await self._enter("compare_and_swap", key)
        current = self._backend.data.get(key, b"")
        if current != bytes(old):
            raise ConcurrentUpdate(f"compare-and-swap on {key} lost: value changed")
        self._backend.write(key, bytes(new))
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
        """Close this view: its members are revoked (as etcd's close does), later operations
        raise StoreUnavailable, its watches end."""
        for member_id in tuple(self._members):
            del self._members[member_id]
            self._backend.delete(MEMBERS + member_id)
        self._closed = True
        for w in tuple(self._watches):
            w._push(_End())
            w._unregister()
        for q in tuple(self._member_queues):
            q.put_nowait(_End())

    # -- MembershipStore protocol --------------------------------------------------------------

    @staticmethod
    def _member_key(member_id: str) -> str:
        return check_key(MEMBERS + member_id)

    async def put_member(self, member_id: str, value: bytes, ttl: int) -> None:
        """Publish ``members/<member_id>``; it lives while this view keeps it (until
        :meth:`stop_member` or :meth:`close`), then ``ttl * ttl_unit`` seconds more."""
        key = self._member_key(member_id)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
            raise ValueError(f"ttl {ttl!r}: want whole seconds in 1..{MAX_TTL}")
        self.op_counts["put_member"] += 1
        await self._pass()
        timer = self._backend.expiry.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._members[member_id] = ttl
        self._backend.write(key, bytes(value))

    async def stop_member(self, member_id: str, *, revoke: bool = True) -> None:
        key = self._member_key(member_id)
        ttl = self._members.pop(member_id, None)
        if ttl is None:
            return
        await self._pass()
        if revoke:
            self._backend.delete(key)
            return
        loop = asyncio.get_running_loop()
        self._backend.expiry[key] = loop.call_later(ttl * self._ttl_unit, self._backend.delete, key)

    def _members_now(self) -> dict[str, bytes]:
        return {
            k[len(MEMBERS) :]: v for k, v in self._backend.data.items() if k.startswith(MEMBERS)
        }

    async def list_members(self) -> dict[str, bytes]:
        self.op_counts["list_members"] += 1
        await self._pass()
        return self._members_now()

    async def watch_members(self) -> AsyncGenerator[dict[str, bytes], None]:
        """The member set now, then after every change; StoreUnavailable when the view closes."""
        self.op_counts["watch_members"] += 1
        await self._pass()
        queue: asyncio.Queue[_End | None] = asyncio.Queue()
        self._backend.member_listeners.add(queue)
        self._member_queues.add(queue)
        try:
            members = self._members_now()
            yield dict(members)
            while True:
                if isinstance(await queue.get(), _End):
                    raise StoreUnavailable("memory store view is closed")
                current = self._members_now()
                if current != members:
                    members = current
                    yield dict(members)
        finally:
            self._backend.member_listeners.discard(queue)
            self._member_queues.discard(queue)
