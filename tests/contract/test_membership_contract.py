"""The MembershipStore contract (DESIGN §8): lease-bound ``members/<id>`` keys, on every backend
that is a MembershipStore (test_store_contract checks which ones claim to be)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from coordinator.store.base import MembershipStore
from tests.contract.conftest import Backend

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0


@pytest.fixture
def backend(membership_backend: Backend) -> Backend:
    return membership_backend


@pytest.fixture
async def members(backend: Backend) -> tuple[MembershipStore, MembershipStore]:
    """Two handles on one test's data: ``a`` publishes, ``b`` observes."""
    a, b = await backend.open(), await backend.open()
    assert isinstance(a, MembershipStore) and isinstance(b, MembershipStore)
    return a, b


async def next_set(it: AsyncIterator[dict[str, bytes]]) -> dict[str, bytes]:
    return await asyncio.wait_for(anext(it), WAIT)


async def gone(store: MembershipStore, member_id: str) -> float:
    """Poll until ``member_id`` is no longer listed; returns how long that took."""
    start = time.monotonic()
    while member_id in await store.list_members():
        assert time.monotonic() - start < WAIT, f"{member_id} never expired"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_publish_update_list_and_revoke_on_close(
    members: tuple[MembershipStore, MembershipStore],
) -> None:
    a, b = members
    assert await b.list_members() == {}
    await a.put_member("coord-1", b"10.0.0.1:7777 ready", ttl=10)
    assert await b.list_members() == {"coord-1": b"10.0.0.1:7777 ready"}
    await a.put_member("coord-1", b"10.0.0.1:7777 stale", ttl=10)
    assert await b.list_members() == {"coord-1": b"10.0.0.1:7777 stale"}
    await a.close()  # a clean shutdown revokes: gone at once, not after the TTL
    assert await b.list_members() == {}


async def test_stop_member_with_revoke_deletes_at_once(
    members: tuple[MembershipStore, MembershipStore],
) -> None:
    a, b = members
    await a.put_member("m1", b"x", ttl=10)
    await a.put_member("m2", b"y", ttl=10)
    await a.stop_member("m1")
    assert await b.list_members() == {"m2": b"y"}
    await a.stop_member("never-published")  # nothing to stop: no error


async def test_member_expires_after_the_lease_when_no_longer_refreshed(
    backend: Backend, members: tuple[MembershipStore, MembershipStore]
) -> None:
    a, b = members
    ttl = backend.member_ttl
    await a.put_member("m1", b"addr", ttl=ttl)
    await asyncio.sleep(backend.lease_seconds * 1.5)  # past the TTL: the keep-alive holds it
    assert await b.list_members() == {"m1": b"addr"}
    await a.stop_member("m1", revoke=False)  # as if the process died
    assert await b.list_members() == {"m1": b"addr"}  # still there until the lease runs out
    await gone(b, "m1")


async def test_republishing_after_stop_keeps_the_member(
    backend: Backend, members: tuple[MembershipStore, MembershipStore]
) -> None:
    a, b = members
    await a.put_member("m1", b"old", ttl=backend.member_ttl)
    await a.stop_member("m1", revoke=False)
    await a.put_member("m1", b"new", ttl=backend.member_ttl)  # e.g. a restart within the TTL
    await asyncio.sleep(backend.lease_seconds * 1.5)
    assert await b.list_members() == {"m1": b"new"}


async def test_watch_members(members: tuple[MembershipStore, MembershipStore]) -> None:
    a, b = members
    it = b.watch_members()
    assert await next_set(it) == {}  # the set now
    await a.put_member("m1", b"x", ttl=10)
    assert await next_set(it) == {"m1": b"x"}
    await a.put_member("m2", b"y", ttl=10)
    assert await next_set(it) == {"m1": b"x", "m2": b"y"}
    await a.put_member("m2", b"y2", ttl=10)
    assert await next_set(it) == {"m1": b"x", "m2": b"y2"}
    await a.stop_member("m1")
    assert await next_set(it) == {"m2": b"y2"}
    await it.aclose()  # type: ignore[attr-defined]


async def test_watch_members_sees_an_expiry(
    backend: Backend, members: tuple[MembershipStore, MembershipStore]
) -> None:
    a, b = members
    await a.put_member("m1", b"x", ttl=backend.member_ttl)
    it = b.watch_members()
    assert await next_set(it) == {"m1": b"x"}
    await a.stop_member("m1", revoke=False)
    assert await next_set(it) == {}
    await it.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("member_id", "ttl"), [("M1", 5), ("a/b", 5), ("", 5), ("m", 0), ("m", 3601), ("m", True)]
)
async def test_bad_member_rejected(
    members: tuple[MembershipStore, MembershipStore], member_id: str, ttl: int
) -> None:
    a, _ = members
    with pytest.raises(ValueError):
        await a.put_member(member_id, b"x", ttl)
    assert await a.list_members() == {}
