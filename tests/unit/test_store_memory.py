"""MemoryStore: the Store protocol, shared views, and fault injection."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.store.base import (
    ConcurrentUpdate,
    InvalidKey,
    KeyNotFound,
    Store,
    StoreUnavailable,
)
from coordinator.store.memory import MemoryStore

KEY = "transitions/latest"


async def next_value(it: object, timeout: float = 1.0) -> bytes:
    async with asyncio.timeout(timeout):
        return await it.__anext__()  # type: ignore[attr-defined,no-any-return]


def test_is_a_store() -> None:
    assert isinstance(MemoryStore(), Store)


async def test_get_set_has() -> None:
    s = MemoryStore()
    with pytest.raises(KeyNotFound) as e:
        await s.get("manifests/abc")
    assert e.value.key == "manifests/abc"
    assert not await s.has("manifests/abc")
    await s.set("manifests/abc", bytearray(b"v1"))
    got = await s.get("manifests/abc")
    assert got == b"v1" and type(got) is bytes
    assert await s.has("manifests/abc")
    await s.set("manifests/abc", b"v2")
    assert await s.get("manifests/abc") == b"v2"


@pytest.mark.parametrize("key", ["", "a", "a/b/c", "A/b", "a/b_c", "/a", "a/", "a/b ", "ä/b"])
async def test_invalid_keys(key: str) -> None:
    s = MemoryStore()
    with pytest.raises(InvalidKey):
        await s.get(key)
    with pytest.raises(InvalidKey):
        await s.set(key, b"x")
    with pytest.raises(InvalidKey):
        await s.has(key)
    with pytest.raises(InvalidKey):
        await s.compare_and_swap(key, b"", b"x")
    with pytest.raises(InvalidKey):
        s.watch(key)


async def test_compare_and_swap() -> None:
    s = MemoryStore()
    # A missing key equals the empty old value.
    with pytest.raises(ConcurrentUpdate):
        await s.compare_and_swap(KEY, b"something", b"a")
    assert not await s.has(KEY)
    await s.compare_and_swap(KEY, b"", b"a")
    assert await s.get(KEY) == b"a"
    with pytest.raises(ConcurrentUpdate):
        await s.compare_and_swap(KEY, b"", b"b")
    with pytest.raises(ConcurrentUpdate):
        await s.compare_and_swap(KEY, b"x", b"b")
    assert await s.get(KEY) == b"a"
    await s.compare_and_swap(KEY, b"a", b"b")
    assert await s.get(KEY) == b"b"


async def test_concurrent_cas_exactly_one_wins() -> None:
    s = MemoryStore()
    results = await asyncio.gather(
        *(s.compare_and_swap(KEY, b"", bytes([i])) for i in range(20)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 1
    assert all(r is None or type(r) is ConcurrentUpdate for r in results)


async def test_watch_sees_only_later_values_and_registers_on_call() -> None:
    s = MemoryStore()
    await s.set(KEY, b"before")
    w = s.watch(KEY)
    # Written before the first iteration, but after watch() returned: must be delivered.
    await s.set(KEY, b"v1")
    await s.set("manifests/other", b"ignored")
    await s.compare_and_swap(KEY, b"v1", b"v2")
    assert await next_value(w) == b"v1"
    assert await next_value(w) == b"v2"
    with pytest.raises(TimeoutError):
        await next_value(w, timeout=0.05)
    await w.aclose()
    assert s.active_watches == 0
    with pytest.raises(StopAsyncIteration):
        await next_value(w)


async def test_failed_cas_does_not_notify() -> None:
    s = MemoryStore()
    w = s.watch(KEY)
    with pytest.raises(ConcurrentUpdate):
        await s.compare_and_swap(KEY, b"x", b"y")
    await s.set(KEY, b"z")
    assert await next_value(w) == b"z"


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
