"""The fake MemoryStore (tests/fakes/store.py): shared views, fault injection, tampering.

The Store and MembershipStore semantics it shares with the real backends are in tests/contract.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from coordinator.store.base import DELETED, StoreUnavailable
from tests.fakes.store import MemoryStore

KEY = "transitions/latest"


async def next_value(it: AsyncIterator[bytes], timeout: float = 30.0) -> bytes:
    """The next value; ``timeout`` is a liveness deadline (or, tiny, a check that none comes)."""
    async with asyncio.timeout(timeout):
        return await anext(it)


async def test_aclose_unregisters_the_watch() -> None:
    s = MemoryStore()
    w = s.watch(KEY)
    assert s.active_watches == 1
    await w.aclose()
    assert s.active_watches == 0
    with pytest.raises(StopAsyncIteration):
        await next_value(w)


async def test_views_share_data_and_notifications() -> None:
    a = MemoryStore()
    b = a.clone_view()
    wa, wb = a.watch(KEY), b.watch(KEY)
    await b.set(KEY, b"from-b")
    assert await a.get(KEY) == b"from-b"
    assert await next_value(wa) == b"from-b"
    assert await next_value(wb) == b"from-b"
    assert a.op_counts["set"] == 0 and b.op_counts["set"] == 1


async def test_independent_stores_do_not_share() -> None:
    a, b = MemoryStore(), MemoryStore()
    await a.set(KEY, b"x")
    assert not await b.has(KEY)


async def test_fail_next_watch() -> None:
    s = MemoryStore()
    s.fail_next_watch(StoreUnavailable("boom"))
    w = s.watch(KEY)
    await s.set(KEY, b"v")
    with pytest.raises(StoreUnavailable, match="boom"):
        await next_value(w)
    with pytest.raises(StopAsyncIteration):
        await next_value(w)
    w2 = s.watch(KEY)  # only the next watch fails
    await s.set(KEY, b"v2")
    assert await next_value(w2) == b"v2"


async def test_break_watches_delivers_queued_then_raises_only_on_that_view() -> None:
    a = MemoryStore()
    b = a.clone_view()
    wa, wb = a.watch(KEY), b.watch(KEY)
    await a.set(KEY, b"v1")
    assert a.break_watches() == 1
    assert a.active_watches == 0 and b.active_watches == 1
    await a.set(KEY, b"v2")
    assert await next_value(wa) == b"v1"
    with pytest.raises(StoreUnavailable):
        await next_value(wa)
    assert await next_value(wb) == b"v1"
    assert await next_value(wb) == b"v2"


async def test_break_watches_custom_error_wakes_a_waiting_reader() -> None:
    s = MemoryStore()
    w = s.watch(KEY)
    reader = asyncio.create_task(next_value(w))
    await asyncio.sleep(0)
    s.break_watches(ConnectionResetError("cut"))
    with pytest.raises(ConnectionResetError):
        await reader


async def test_unavailable() -> None:
    s = MemoryStore()
    await s.set(KEY, b"v")
    s.set_unavailable()
    with pytest.raises(StoreUnavailable):
        await s.get(KEY)
    with pytest.raises(StoreUnavailable):
        await s.set(KEY, b"x")
    with pytest.raises(StoreUnavailable):
        await s.compare_and_swap(KEY, b"v", b"x")
    with pytest.raises(StoreUnavailable):
        await next_value(s.watch(KEY))
    s.set_available()
    assert await s.get(KEY) == b"v"


async def test_close_ends_watches_and_ops() -> None:
    a = MemoryStore()
    b = a.clone_view()
    w = a.watch(KEY)
    await a.close()
    with pytest.raises(StopAsyncIteration):
        await next_value(w)
    with pytest.raises(StoreUnavailable):
        await a.get(KEY)
    with pytest.raises(StoreUnavailable):
        await next_value(a.watch(KEY))
    await b.set(KEY, b"still works")
    assert await b.get(KEY) == b"still works"


async def test_before_hook_runs_and_can_fail() -> None:
    s = MemoryStore()
    seen: list[str] = []

    async def hook(key: str) -> None:
        seen.append(key)

    async def fail(key: str) -> None:
        raise StoreUnavailable("injected")

    s.before("set", hook)
    await s.set(KEY, b"v")
    assert seen == [KEY]
    s.before("get", fail)
    with pytest.raises(StoreUnavailable):
        await s.get(KEY)
    s.before("get", None)
    assert await s.get(KEY) == b"v"
    with pytest.raises(ValueError):
        s.before("watch", hook)


async def test_raw_set_bypasses_notifications() -> None:
    s = MemoryStore()
    w = s.watch(KEY)
    s.raw_set(KEY, b"tampered")
    assert await s.get(KEY) == b"tampered"
    with pytest.raises(TimeoutError):
        await next_value(w, timeout=0.05)


async def test_raw_delete_notifies_every_view() -> None:
    a = MemoryStore()
    b = a.clone_view()
    await a.set(KEY, b"v")
    await a.set("transitions/other", b"o")
    wa, wb = a.watch(KEY), b.watch(KEY)
    b.set_unavailable()  # tampering bypasses faults: it is not an operation of a view
    a.raw_delete(KEY)
    a.raw_delete("manifests/never-there")  # absent: no event, no error
    assert await next_value(wa) == DELETED
    assert await next_value(wb) == DELETED
    assert not await a.has(KEY)
    assert await a.get("transitions/other") == b"o"


async def test_member_expiry_follows_ttl_unit() -> None:
    s = MemoryStore(ttl_unit=0.2)
    other = s.clone_view()
    await s.put_member("m1", b"x", ttl=1)
    await s.stop_member("m1", revoke=False)
    assert await other.list_members() == {"m1": b"x"}
    async with asyncio.timeout(5):
        while await other.list_members():
            await asyncio.sleep(0.01)
    assert s.op_counts["put_member"] == 1
