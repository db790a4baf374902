"""The Store contract (DESIGN §5, §12): what every backend must do, run on each of them.

Backend-specific behaviour (file modes and locking, etcd outages and fail-over, the fake's fault
hooks) is tested beside each backend in tests/unit and tests/integration.

Deletions: a watch reports that its key was deleted by yielding ``DELETED`` (``b""``, the value
compare_and_swap treats a missing key as). The Store API itself has no delete; deletions come
from whoever else can write the backend, which is why watchers must hear of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest

from coordinator.store.base import (
    DELETED,
    ConcurrentUpdate,
    InvalidKey,
    KeyNotFound,
    MembershipStore,
    Store,
    StoreUnavailable,
)
from tests.contract.conftest import Backend

pytestmark = pytest.mark.timeout(60)

KEY = "transitions/latest"
WAIT = 10.0  # generous: only ever a ceiling for something that should happen


async def next_value(it: AsyncIterator[bytes], timeout: float = WAIT) -> bytes:
    return await asyncio.wait_for(anext(it), timeout)


async def nothing_more(it: AsyncIterator[bytes]) -> None:
    """Nothing is queued on ``it`` (a short look: absence cannot be proven by waiting)."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(it), 0.1)


async def aclose(it: AsyncIterator[Any]) -> None:
    await it.aclose()  # type: ignore[attr-defined]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


# -- protocol ----------------------------------------------------------------------------------


async def test_is_a_store(backend: Backend, store: Store) -> None:
    assert isinstance(store, Store)
    assert isinstance(store, MembershipStore) == backend.membership


# -- get / set / has ---------------------------------------------------------------------------


async def test_get_set_has(store: Store) -> None:
    assert not await store.has("manifests/ab")
    with pytest.raises(KeyNotFound) as err:
        await store.get("manifests/ab")
    assert err.value.key == "manifests/ab"
    # An untyped caller may hand in a mutable buffer; the store must keep an immutable copy.
    await store.set("manifests/ab", cast(bytes, bytearray(b"one")))
    assert await store.has("manifests/ab")
    got = await store.get("manifests/ab")
    assert got == b"one" and type(got) is bytes
    await store.set("manifests/ab", b"\x00two\xff")
    assert await store.get("manifests/ab") == b"\x00two\xff"
    # a longer key sharing the prefix is another key
    assert not await store.has("manifests/abc")


async def test_has_any(store: Store) -> None:
    assert not await store.has_any("manifests")
    await store.set("transitions/latest", b"x")
    assert not await store.has_any("manifests")
    assert not await store.has_any("manifest")  # a prefix of a kind is another kind
    await store.set("manifests-x/ab", b"one")
    assert not await store.has_any("manifests")
    await store.set("manifests/ab", b"one")
    assert await store.has_any("manifests")
    assert await store.has_any("transitions")
    for bad in ("", "a/b", "A", "../x"):
        with pytest.raises(InvalidKey):
            await store.has_any(bad)


async def test_empty_value_roundtrip(store: Store) -> None:
    await store.set("members/a", b"")
    assert await store.has("members/a")
    assert await store.get("members/a") == b""


BAD_KEYS = [
    "",
    "a",
    "latest",
    "transitions/",
    "/latest",
    "a/",
    "/a",
    "a/b/c",
    "../x",
    "a/..",
    "A/b",
    "a/B",
    "a/b c",
    "a/b ",
    "a/b_c",
    "a_b/c",
    "a/.tmp-x",
    "a/.lock",
    ".lock/x",
    "a/b\n",
    "a\x00/b",
    "ä/b",
]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_invalid_keys_rejected_everywhere(store: Store, key: str) -> None:
    with pytest.raises(InvalidKey):
        await store.get(key)
    with pytest.raises(InvalidKey):
        await store.has(key)
    with pytest.raises(InvalidKey):
        await store.set(key, b"x")
    with pytest.raises(InvalidKey):
        await store.compare_and_swap(key, b"", b"x")
    with pytest.raises(InvalidKey):
        store.watch(key)  # at once, not on first iteration


# -- compare and swap --------------------------------------------------------------------------


async def test_cas_semantics(store: Store) -> None:
    with pytest.raises(ConcurrentUpdate):  # a missing key equals b"", not b"something"
        await store.compare_and_swap(KEY, b"something", b"a")
    assert not await store.has(KEY)
    await store.compare_and_swap(KEY, b"", b"v1")  # missing key equals the empty old value
    assert await store.get(KEY) == b"v1"
    with pytest.raises(ConcurrentUpdate):  # present now: b"" no longer matches
        await store.compare_and_swap(KEY, b"", b"v2")
    with pytest.raises(ConcurrentUpdate):
        await store.compare_and_swap(KEY, b"other", b"v2")
    assert await store.get(KEY) == b"v1"
    await store.compare_and_swap(KEY, b"v1", b"v2")
    assert await store.get(KEY) == b"v2"
    with pytest.raises(ConcurrentUpdate):  # a stale old value
        await store.compare_and_swap(KEY, b"v1", b"v3")
    assert await store.get(KEY) == b"v2"
    with pytest.raises(ConcurrentUpdate):
        await store.compare_and_swap("transitions/other", b"x", b"y")
    assert not await store.has("transitions/other")


async def test_cas_error_names_the_key_not_the_values(store: Store) -> None:
    await store.set(KEY, b"SECRET-CURRENT")
    with pytest.raises(ConcurrentUpdate) as info:
        await store.compare_and_swap(KEY, b"SECRET-OLD", b"SECRET-NEW")
    assert "SECRET" not in str(info.value)
    assert KEY in str(info.value)


@pytest.mark.parametrize("start", [b"", b"base"], ids=["missing", "present"])
async def test_concurrent_cas_exactly_one_wins(store: Store, start: bytes) -> None:
    if start:
        await store.set(KEY, start)
    results = await asyncio.gather(
        *(store.compare_and_swap(KEY, start, b"v%d" % i) for i in range(20)),
        return_exceptions=True,
    )
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1, results
    assert all(type(r) is ConcurrentUpdate for r in results if r is not None), results
    assert await store.get(KEY) == b"v%d" % winners[0]


async def test_cas_retry_loop_loses_no_update(store: Store) -> None:
    """Each task advances a counter by CAS-retrying: the chain of values is linear."""

    async def bump() -> None:
        while True:
            cur = await store.get("members/counter") if await store.has("members/counter") else b""
            try:
                await store.compare_and_swap("members/counter", cur, b"%d" % (int(cur or 0) + 1))
                return
            except ConcurrentUpdate:
                continue

    await asyncio.gather(*(bump() for _ in range(10)))
    assert await store.get("members/counter") == b"10"


# -- watch -------------------------------------------------------------------------------------


async def test_watch_is_registered_when_returned_and_sees_successive_values(store: Store) -> None:
    await store.set(KEY, b"before")
    w = store.watch(KEY)
    # Written after watch() returned but before the first iteration: must be delivered.
    await store.set(KEY, b"v1")
    await store.set("transitions/other", b"another key")
    await store.set("transitions/latestx", b"a key sharing the prefix")
    await store.compare_and_swap(KEY, b"v1", b"v2")
    with pytest.raises(ConcurrentUpdate):  # a failed CAS is not an update
        await store.compare_and_swap(KEY, b"v1", b"nope")
    await store.set(KEY, b"v3")
    assert [await next_value(w) for _ in range(3)] == [b"v1", b"v2", b"v3"]
    await nothing_more(w)
    await aclose(w)


async def test_watch_waits_for_a_later_write(store: Store) -> None:
    w = store.watch("members/x")
    pending = asyncio.ensure_future(next_value(w))
    await asyncio.sleep(0.05)
    assert not pending.done()
    await store.compare_and_swap("members/x", b"", b"joined")
    assert await pending == b"joined"
    await aclose(w)


async def test_several_watches_each_see_every_value(store: Store) -> None:
    w1, w2 = store.watch("a/b"), store.watch("a/b")
    expected = [b"%d" % i for i in range(5)]
    for value in expected:
        await store.set("a/b", value)
    assert [await next_value(w1) for _ in expected] == expected
    assert [await next_value(w2) for _ in expected] == expected
    await aclose(w1)
    await aclose(w2)


async def test_watch_aclose_stops_delivery(store: Store) -> None:
    w = store.watch("a/b")
    await store.set("a/b", b"1")
    assert await next_value(w) == b"1"
    await aclose(w)
    await store.set("a/b", b"2")
    with pytest.raises(StopAsyncIteration):
        await next_value(w)


async def test_watch_reports_deletion(backend: Backend, store: Store) -> None:
    await store.set(KEY, b"v1")
    w = store.watch(KEY)
    await backend.delete(KEY)
    assert await next_value(w) == DELETED
    assert not await store.has(KEY)
    # After a deletion the key is missing: CAS from b"" recreates it, and the watch goes on.
    await store.compare_and_swap(KEY, b"", b"v2")
    assert await next_value(w) == b"v2"
    await aclose(w)


async def test_deleting_another_key_is_not_reported(backend: Backend, store: Store) -> None:
    await store.set(KEY, b"v1")
    await store.set("transitions/other", b"x")
    w = store.watch(KEY)
    await backend.delete("transitions/other")
    await store.set(KEY, b"v2")
    assert await next_value(w) == b"v2"
    await aclose(w)


async def test_watch_after_reopen(backend: Backend, store: Store) -> None:
    """Close, reopen: the data is there and a new watch works (restarting is the caller's)."""
    await store.set(KEY, b"a")
    w = store.watch(KEY)
    await store.close()
    with pytest.raises((StopAsyncIteration, StoreUnavailable)):
        await next_value(w)
    again = await backend.open()
    assert await again.get(KEY) == b"a"
    w2 = again.watch(KEY)
    await again.set(KEY, b"b")
    assert await next_value(w2) == b"b"
    await aclose(w2)


# -- close -------------------------------------------------------------------------------------


async def test_close_ends_watches_and_operations(backend: Backend, store: Store) -> None:
    await store.set("a/b", b"x")
    w = store.watch("a/b")
    pending = asyncio.ensure_future(next_value(w))
    await asyncio.sleep(0.05)
    await store.close()
    with pytest.raises((StopAsyncIteration, StoreUnavailable)):
        await pending
    await store.close()  # idempotent
    ops: list[Callable[[], Awaitable[object]]] = [
        lambda: store.get("a/b"),
        lambda: store.has("a/b"),
        lambda: store.set("a/b", b"y"),
        lambda: store.compare_and_swap("a/b", b"x", b"y"),
    ]
    for op in ops:
        with pytest.raises(StoreUnavailable):
            await op()
    # Opening a watch on a closed store fails at once or on the first iteration.
    with pytest.raises(StoreUnavailable):
        await next_value(store.watch("a/b"))
    again = await backend.open()
    assert await again.get("a/b") == b"x"  # nothing written after close
