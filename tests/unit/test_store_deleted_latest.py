"""A deleted ``latest`` reaches the Guard watcher as the store's DELETED marker (DESIGN §12).

What the coordinator should then do (count tampering, repair) is the watcher's business; this
only pins that the marker is not a valid latest and does not break the watch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from coordinator.core.history import LATEST_KEY, History, MalformedBlob, SignedLatest
from coordinator.core.seedengine import SeedEngine
from coordinator.core.state import Guard
from coordinator.store.base import DELETED
from tests.fakes.store import MemoryStore

WAIT = 5.0
POLICY = b"policy:coord"
MANIFEST = json.dumps(
    {
        "Policies": {
            hashlib.sha256(POLICY).hexdigest(): {
                "SANs": ["coordinator"],
                "WorkloadSecretID": "",
                "Role": "coordinator",
            }
        },
        "ReferenceValues": {"snp": [], "tdx": []},
        "WorkloadOwnerKeyDigests": [],
        "SeedshareOwnerPubKeys": [],
    }
).encode()


def test_deleted_is_not_a_valid_latest() -> None:
    with pytest.raises(MalformedBlob):
        SignedLatest.decode(DELETED)


async def test_guard_watcher_survives_a_deleted_latest() -> None:
    store = MemoryStore()
    guard = Guard(History(store.clone_view()))
    engine = SeedEngine(hashlib.sha512(b"seed").digest(), hashlib.sha256(b"salt").digest())
    state = await guard.update_state(None, MANIFEST, [POLICY], seed_engine=engine)
    task = asyncio.create_task(guard.watch_history())
    try:
        async with asyncio.timeout(WAIT):
            await guard.watch_ready.wait()
        store.raw_delete(LATEST_KEY)
        # Put it back: the watcher hears of it only if the deletion did not end its watch.
        await store.set(LATEST_KEY, state.latest.encode())
        async with asyncio.timeout(WAIT):
            await guard.wait_seen(state.transition.hash)
        assert not task.done()
        assert guard.watch_restarts == 0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
