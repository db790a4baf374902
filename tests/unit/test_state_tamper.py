"""The store is untrusted (DESIGN §12): the tamper rule, and what the Guard does about it.

Every attack here is a write an attacker with store access can make; none may change what a
coordinator holding a State serves, each is counted with its kind, and a fresh coordinator
writes its own signed ``latest`` back.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.core.history import LATEST_KEY, ZERO_HASH, History, SignedLatest, Transition
from coordinator.core.manifest import Manifest
from coordinator.core.rules import (
    TAMPER_KINDS,
    Descends,
    HistoryWithoutLatest,
    NeedsLineage,
    Ours,
    Tamper,
    UnexpectedLatest,
    check_no_orphaned_history,
    classify_latest,
)
from coordinator.core.seedengine import SeedEngine
from coordinator.core.state import (
    ConcurrentUpdate,
    Guard,
    NotDescendant,
    NotInitialized,
    RecoveryRejected,
    Stale,
    State,
    TamperEvent,
)
from tests.fakes.store import MemoryStore
from tests.unit.test_state import M1, M2, engine, manifest

TIMEOUT = 30.0  # liveness ceiling only
M3 = manifest("coord", "web", "cache")


def h(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


# --- the pure rule ---------------------------------------------------------------------------


KEY = engine(0).history_signing_key
OTHER = engine(1).history_signing_key
OWN, PARENT, CHILD, STRANGER = h("own"), h("parent"), h("child"), h("stranger")


def judge(value: bytes, lineage: list[bytes] | None = None) -> object:
    return classify_latest(OWN, {PARENT}, value, KEY.public_key(), lineage)


def signed(th: bytes, key: ec.EllipticCurvePrivateKey = KEY) -> bytes:
    return SignedLatest.sign(th, key).encode()


def test_classify_latest_kinds() -> None:
    assert judge(b"") == Tamper("deleted")
    assert judge(b"garbage") == Tamper("malformed")
    assert judge(OWN + b"\x30\x00") == Tamper("malformed")
    assert judge(signed(CHILD, OTHER)) == Tamper("bad_signature", CHILD)
    assert judge(signed(OWN, OTHER)) == Tamper("bad_signature", OWN)
    assert judge(signed(OWN)) == Ours()
    assert judge(signed(PARENT)) == Tamper("rollback", PARENT)
    assert judge(signed(ZERO_HASH)) == Tamper("rollback", ZERO_HASH)
    assert judge(signed(CHILD)) == NeedsLineage(SignedLatest.decode(signed(CHILD)))
    assert judge(signed(CHILD), [OWN, PARENT]) == Descends(SignedLatest.decode(signed(CHILD)))
    assert judge(signed(CHILD), [h("x"), OWN]) == Descends(SignedLatest.decode(signed(CHILD)))
    # a walk that stopped early or went down another branch never reaches our transition
    assert judge(signed(STRANGER), []) == Tamper("unknown_chain", STRANGER)
    assert judge(signed(STRANGER), [PARENT]) == Tamper("unknown_chain", STRANGER)
    assert {"rollback", "deleted", "bad_signature", "malformed", "unknown_chain"} == set(
        TAMPER_KINDS
    )


def test_orphaned_history_rule() -> None:
    check_no_orphaned_history(False)
    with pytest.raises(HistoryWithoutLatest) as e:
        check_no_orphaned_history(True)
    assert e.value.reason == "history_without_latest"
    assert "history without latest" in str(e.value)


# --- the Guard -------------------------------------------------------------------------------


@asynccontextmanager
async def watching(guards: list[Guard]) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(g.watch_history()) for g in guards]
    try:
        async with asyncio.timeout(TIMEOUT):
            for g in guards:
                await g.watch_ready.wait()
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def authorizer(
    state: State, asked: list[Manifest] | None = None
) -> Callable[[Manifest], Awaitable[tuple[SeedEngine, ec.EllipticCurvePrivateKey | None]]]:
    async def authorize(m: Manifest) -> tuple[SeedEngine, ec.EllipticCurvePrivateKey | None]:
        if asked is not None:
            asked.append(m)
        return state.seed_engine, state.mesh_key

    return authorize


async def until(g: Guard, predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        await g.wait_until(predicate)


class Pair:
    """Two coordinators on one store: ``a`` moved to s2, ``b`` still holds s1 (stale)."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.events: dict[str, list[TamperEvent]] = {"a": [], "b": []}
        self.a = Guard(History(self.store), on_tamper=self.events["a"].append)
        self.b = Guard(History(self.store.clone_view()), on_tamper=self.events["b"].append)

    async def setup(self) -> tuple[State, State, State]:
        s1 = await self.a.update_state(None, M1, [], seed_engine=engine(0))
        b1 = await self.b.reset_state(None, authorizer(s1))
        s2 = await self.a.update_state(s1, M2, [])
        return s1, b1, s2


async def repaired(g: Guard, store: MemoryStore, state: State) -> None:
    """Wait until ``g`` reported a repair and the store holds ``state``'s latest again."""
    await until(g, lambda: any(e.repaired for e in g.tamper_events))
    await until(g, lambda: g.handled[-1] == state.transition.hash)
    assert await store.get(LATEST_KEY) == state.latest.encode()


@pytest.mark.parametrize("attack", ["rollback", "deleted", "malformed", "bad_signature"])
async def test_fresh_coordinator_counts_keeps_serving_and_repairs(attack: str) -> None:
    p = Pair()
    s1, b1, s2 = await p.setup()
    async with watching([p.a, p.b]):
        await until(p.b, lambda: b1.stale)
        if attack == "rollback":
            await p.store.set(LATEST_KEY, s1.latest.encode())
        elif attack == "deleted":
            p.store.raw_delete(LATEST_KEY)
        elif attack == "malformed":
            await p.store.set(LATEST_KEY, b"\x00" * 40)
        else:
            await p.store.set(LATEST_KEY, signed(h("forged"), OTHER))
        await repaired(p.a, p.store, s2)
        assert await p.a.get_state() is s2 and not s2.stale
        event = p.events["a"][0]
        assert (event.kind, event.held, event.repaired) == (attack, s2.transition.hash, True)
        if attack == "rollback":
            assert event.found == s1.transition.hash
        # b is stale: it never repairs (that would roll the store back to s1) and is not
        # made fresh by a "latest" equal to its own transition.
        assert not any(e.repaired for e in p.events["b"])
        with pytest.raises(Stale):
            await p.b.get_state()


async def test_unknown_chain_with_a_valid_signature_is_tamper() -> None:
    """A fork signed with the deployment's key (an old coordinator's signature replayed on a
    sibling branch) neither descends from s2 nor is an ancestor."""
    p = Pair()
    s1, _, s2 = await p.setup()
    history = History(p.store.clone_view())
    fork = Transition.create(await history.put_manifest(M3), s1.transition.hash)
    await history.put_transition(fork)
    async with watching([p.a]):
        await p.store.set(
            LATEST_KEY, SignedLatest.sign(fork.hash, engine(0).history_signing_key).encode()
        )
        await repaired(p.a, p.store, s2)
    assert [(e.kind, e.found) for e in p.a.tamper_events] == [("unknown_chain", fork.hash)]
    assert await p.a.get_state() is s2


async def test_a_strict_descendant_still_makes_stale() -> None:
    p = Pair()
    _s1, b1, s2 = await p.setup()
    async with watching([p.b]):
        await until(p.b, lambda: b1.stale)
    assert p.events["b"] == [] and list(p.b.tamper_events) == []
    assert await p.store.get(LATEST_KEY) == s2.latest.encode()


async def test_stale_coordinator_counts_but_does_not_repair() -> None:
    p = Pair()
    _s1, b1, _s2 = await p.setup()
    async with watching([p.b]):
        await until(p.b, lambda: b1.stale)
        await p.store.set(LATEST_KEY, b"garbage!" * 8)
        await until(p.b, lambda: len(p.events["b"]) == 1)
    assert p.events["b"][0].kind == "malformed" and not p.events["b"][0].repaired
    assert await p.store.get(LATEST_KEY) == b"garbage!" * 8


async def test_reset_never_installs_a_rollback() -> None:
    """Peer recovery, re-keying and user recovery all go through reset_state: with the store
    rolled back to s1, a coordinator holding s2 refuses before asking anyone for secrets."""
    p = Pair()
    s1, _, s2 = await p.setup()
    await p.store.set(LATEST_KEY, s1.latest.encode())
    asked: list[Manifest] = []
    with pytest.raises(NotDescendant) as e:
        await p.a.reset_state(s2, authorizer(s1, asked))
    assert asked == [] and p.a.current() is s2
    assert e.value.reason == "latest_not_descendant"
    assert s1.transition.hash.hex() in str(e.value) and s2.transition.hash.hex() in str(e.value)


async def test_first_manifest_over_a_history_without_latest_is_refused() -> None:
    p = Pair()
    await p.setup()
    p.store.raw_delete(LATEST_KEY)
    fresh = Guard(History(p.store.clone_view()))
    with pytest.raises(HistoryWithoutLatest):
        await fresh.update_state(None, M3, [], seed_engine=engine(2))
    assert not await p.store.has(LATEST_KEY) and fresh.current() is None
    # a new, empty store still takes a first manifest
    empty = Guard(History(MemoryStore()))
    assert (await empty.update_state(None, M3, [], seed_engine=engine(2))).generation == 1


async def test_update_and_repair_do_not_interleave() -> None:
    """An update racing a tamper repair: the store ends at the update, never rolled back."""
    p = Pair()
    _, _, s2 = await p.setup()
    async with watching([p.a]):
        await p.store.set(LATEST_KEY, b"junk" * 10)
        try:
            s3 = await p.a.update_state(s2, M3, [])
        except ConcurrentUpdate:
            await repaired(p.a, p.store, s2)  # the CAS lost to the junk: repaired, retry
            s3 = await p.a.update_state(s2, M3, [])
        await until(p.a, lambda: p.a.seen(s3.transition.hash))
        assert await p.store.get(LATEST_KEY) == s3.latest.encode()
        assert await p.a.get_state() is s3


# --- user recovery names what it recovers -----------------------------------------------------


async def test_recovery_names_the_latest_it_recovers() -> None:
    p = Pair()
    s1, _, s2 = await p.setup()
    fresh = Guard(History(p.store.clone_view()))
    asked: list[Manifest] = []
    with pytest.raises(UnexpectedLatest) as e:
        await fresh.reset_state(None, authorizer(s2, asked), expected=s1.transition.hash)
    assert asked == [] and fresh.current() is None
    assert s1.transition.hash.hex() in str(e.value) and s2.transition.hash.hex() in str(e.value)
    r = await fresh.reset_state(None, authorizer(s2), expected=s2.transition.hash)
    assert r.transition == s2.transition and r.deployment_id == s2.deployment_id


async def test_recovery_restores_a_deleted_latest() -> None:
    p = Pair()
    _, _, s2 = await p.setup()
    p.store.raw_delete(LATEST_KEY)
    fresh = Guard(History(p.store.clone_view()))
    with pytest.raises(NotInitialized):
        await fresh.get_state()
    r = await fresh.reset_state(None, authorizer(s2), expected=s2.transition.hash)
    assert r.transition == s2.transition and r.generation == 2
    # deterministic signing: the restored latest is byte for byte the one deleted
    assert await p.store.get(LATEST_KEY) == s2.latest.encode()
    assert await fresh.get_state() is r


async def test_recovery_moves_a_rolled_back_latest_forward_only_with_the_seed() -> None:
    p = Pair()
    s1, _, s2 = await p.setup()
    await p.store.set(LATEST_KEY, s1.latest.encode())
    fresh = Guard(History(p.store.clone_view()))

    async def wrong_seed(m: Manifest) -> tuple[SeedEngine, ec.EllipticCurvePrivateKey | None]:
        return engine(5), None

    with pytest.raises(RecoveryRejected):
        await fresh.reset_state(None, wrong_seed, expected=s2.transition.hash)
    assert await p.store.get(LATEST_KEY) == s1.latest.encode() and fresh.current() is None
    r = await fresh.reset_state(None, authorizer(s2), expected=s2.transition.hash)
    assert r.transition == s2.transition
    assert await p.store.get(LATEST_KEY) == s2.latest.encode()
