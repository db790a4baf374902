"""State and Guard: updates, resets, staleness, the watcher, and the multi-coordinator race."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import FrozenInstanceError
from functools import cache
from typing import cast

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.core.history import LATEST_KEY, ZERO_HASH, History
from coordinator.core.manifest import Manifest, ManifestError
from coordinator.core.rules import HistoryWithoutLatest
from coordinator.core.seedengine import SeedEngine
from coordinator.core.state import (
    ConcurrentUpdate,
    Guard,
    InvalidPolicies,
    NotDescendant,
    NotInitialized,
    RecoveryRejected,
    Stale,
    StaleFlag,
    State,
)
from coordinator.store.base import StoreUnavailable
from tests.fakes.store import MemoryStore

# A deadline for liveness (the event happens at all), generous so a busy machine cannot fail
# it; nothing here is a latency claim.
TIMEOUT = 30.0


def policy(name: str) -> bytes:
    return f"policy:{name}".encode()


def manifest(*names: str) -> bytes:
    """A valid manifest whose first policy is the coordinator's; one policy per name."""
    policies = {
        hashlib.sha256(policy(n)).hexdigest(): {
            "SANs": ["coordinator" if i == 0 else n],
            "WorkloadSecretID": "" if i == 0 else n,
            "Role": "coordinator" if i == 0 else "",
        }
        for i, n in enumerate(names)
    }
    doc = {
        "Policies": policies,
        "ReferenceValues": {"snp": [], "tdx": []},
        "WorkloadOwnerKeyDigests": [],
        "SeedshareOwnerPubKeys": [],
    }
    return json.dumps(doc).encode()


M1 = manifest("coord", "web")
M2 = manifest("coord", "web", "db")


@cache
def engine(i: int) -> SeedEngine:
    """Seed engines are deterministic from seed and salt: derive them once per test run."""
    return SeedEngine(
        hashlib.sha512(b"seed %d" % i).digest(), hashlib.sha256(b"salt %d" % i).digest()
    )


def authorizer_for(
    state: State, seen: list[Manifest] | None = None
) -> Callable[[Manifest], Awaitable[tuple[SeedEngine, ec.EllipticCurvePrivateKey | None]]]:
    async def authorize(m: Manifest) -> tuple[SeedEngine, ec.EllipticCurvePrivateKey | None]:
        if seen is not None:
            seen.append(m)
        return state.seed_engine, state.mesh_key

    return authorize


@asynccontextmanager
async def watching(guards: Sequence[Guard]) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run every guard's watcher; wait until each has a live watch; cancel on exit."""
    tasks = [asyncio.create_task(g.watch_history()) for g in guards]
    try:
        async with asyncio.timeout(TIMEOUT):
            for g in guards:
                await g.watch_ready.wait()
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            assert isinstance(r, asyncio.CancelledError), f"watcher died: {r!r}"


async def all_seen(guards: Sequence[Guard], transition_hash: bytes) -> None:
    async with asyncio.timeout(TIMEOUT):
        for g in guards:
            await g.wait_seen(transition_hash)


# --- basics ---------------------------------------------------------------------------------


def test_stale_flag_is_one_way() -> None:
    f = StaleFlag()
    before = f.is_set
    first, second = f.mark(), f.mark()
    # One tuple, not one assert per read: a type checker would narrow f.is_set across them.
    assert (before, first, second, f.is_set) == (False, True, False, True)
    with pytest.raises(AttributeError):
        f.is_set = False  # type: ignore[misc]


async def test_not_initialized_then_first_update() -> None:
    store = MemoryStore()
    g = Guard(History(store))
    assert g.current() is None
    with pytest.raises(NotInitialized):
        await g.get_state()
    s = await g.update_state(None, M1, [policy("coord"), policy("web")], seed_engine=engine(0))
    assert await g.get_state() is s
    assert g.current() is s
    assert s.generation == 1 and s.ancestors == frozenset()
    assert s.transition.previous == ZERO_HASH
    assert s.manifest_raw == M1 and s.manifest.digest == hashlib.sha256(M1).digest()
    assert s.latest.transition_hash == s.transition.hash == s.transition_hash
    s.latest.verify(engine(0).history_signing_key.public_key())
    assert s.ca.transition_hash == s.transition.hash
    assert isinstance(s.mesh_key.curve, ec.SECP384R1)
    with pytest.raises(FrozenInstanceError):
        s.generation = 5  # type: ignore[misc]
    # Everything is in the store, content-addressed.
    h = History(store)
    assert await h.get_manifest(s.manifest.digest) == M1
    assert await h.get_policy(hashlib.sha256(policy("web")).digest()) == policy("web")
    assert await h.get_latest() == s.latest
    assert await h.walk(s.transition.hash) == [s.transition]


async def test_first_update_generates_a_seed() -> None:
    g = Guard(History(MemoryStore()))
    s = await g.update_state(None, M1, [])
    assert len(s.seed_engine.seed) == 64 and len(s.seed_engine.salt) == 32
    s.latest.verify(s.seed_engine.history_signing_key.public_key())


async def test_generation_counts_and_ancestors() -> None:
    store = MemoryStore()
    g = Guard(History(store))
    states = [await g.update_state(None, M1, [], seed_engine=engine(0))]
    for i in range(4):
        states.append(
            await g.update_state(
                states[-1], M2 if i % 2 == 0 else M1, [policy("db")] if i % 2 == 0 else []
            )
        )
    assert [s.generation for s in states] == [1, 2, 3, 4, 5]
    last = states[-1]
    assert last.ancestors == frozenset(s.transition.hash for s in states[:-1])
    assert all(last.knows(s.transition.hash) for s in states)
    assert not states[0].knows(last.transition.hash)
    for a, b in itertools.pairwise(states):
        assert b.transition.previous == a.transition.hash
        assert b.seed_engine is a.seed_engine
        assert b.mesh_key is not a.mesh_key  # a new random mesh key per manifest
        assert b.ca.root_der == a.ca.root_der  # the root follows the seed
    # A recovered coordinator counts the same generation and ancestors.
    other = Guard(History(store.clone_view()))
    r = await other.reset_state(None, authorizer_for(last))
    assert r.generation == 5 and r.ancestors == last.ancestors
    assert r.transition == last.transition


async def test_update_refusals_store_nothing() -> None:
    store = MemoryStore()
    g = Guard(History(store))
    with pytest.raises(ManifestError):
        await g.update_state(None, b"null", [])
    with pytest.raises(InvalidPolicies, match="not referenced"):
        await g.update_state(None, M1, [policy("db")])
    with pytest.raises(InvalidPolicies, match="SHA-256"):
        await g.update_state(None, M1, {hashlib.sha256(b"x").digest(): policy("web")})
    with pytest.raises(InvalidPolicies):
        # A caller that ignores the annotation: one policy's bytes instead of a list of them.
        await g.update_state(None, M1, cast(Sequence[bytes], policy("web")))
    assert store.op_counts["set"] == 0 and store.op_counts["compare_and_swap"] == 0
    with pytest.raises(NotInitialized):
        await g.get_state()
    # A mapping with correct keys is fine.
    s = await g.update_state(
        None, M1, {hashlib.sha256(policy("web")).digest(): policy("web")}, seed_engine=engine(0)
    )
    with pytest.raises(ValueError, match="first manifest"):
        await g.update_state(s, M2, [], seed_engine=engine(1))
    assert g.current() is s


async def test_update_with_outdated_old_is_concurrent() -> None:
    g = Guard(History(MemoryStore()))
    s1 = await g.update_state(None, M1, [], seed_engine=engine(0))
    s2 = await g.update_state(s1, M2, [])
    for old in (None, s1):
        with pytest.raises(ConcurrentUpdate):
            await g.update_state(old, M1, [])
    assert g.current() is s2
    assert await g.get_state() is s2


async def test_first_update_with_history_present_is_concurrent() -> None:
    store = MemoryStore()
    await Guard(History(store)).update_state(None, M1, [], seed_engine=engine(0))
    late = Guard(History(store.clone_view()))
    with pytest.raises(Stale) as e:
        await late.get_state()
    assert e.value.state is None
    with pytest.raises(ConcurrentUpdate):
        await late.update_state(None, M2, [], seed_engine=engine(1))
    assert late.current() is None


async def test_stale_state_cannot_be_updated() -> None:
    store = MemoryStore()
    a = Guard(History(store))
    b = Guard(History(store.clone_view()))
    s = await a.update_state(None, M1, [], seed_engine=engine(0))
    await b.reset_state(None, authorizer_for(s))
    async with watching([a]):
        s2 = await b.update_state(b.current(), M2, [])
        await all_seen([a], s2.transition.hash)
    assert s.stale
    with pytest.raises(Stale) as e:
        await a.get_state()
    assert e.value.state is s
    with pytest.raises(ConcurrentUpdate):
        await a.update_state(s, M2, [])
    assert await History(store).get_latest() == s2.latest


# --- reset ----------------------------------------------------------------------------------


async def test_reset_on_empty_history() -> None:
    g = Guard(History(MemoryStore()))
    called: list[Manifest] = []

    async def authorize(m: Manifest) -> tuple[SeedEngine, None]:
        called.append(m)
        return engine(0), None

    with pytest.raises(NotInitialized):
        await g.reset_state(None, authorize)
    assert called == []


async def test_reset_with_wrong_seed_is_rejected_and_changes_nothing() -> None:
    store = MemoryStore()
    a = Guard(History(store))
    s = await a.update_state(None, M1, [], seed_engine=engine(0))
    b = Guard(History(store.clone_view()))

    async def wrong(m: Manifest) -> tuple[SeedEngine, ec.EllipticCurvePrivateKey]:
        return engine(1), s.mesh_key

    with pytest.raises(RecoveryRejected):
        await b.reset_state(None, wrong)
    assert b.current() is None
    with pytest.raises(Stale):
        await b.get_state()

    # A stale State stays exactly as it was.
    s2 = await a.update_state(s, M2, [])
    c = Guard(History(store.clone_view()))
    async with watching([c]):
        old = await c.reset_state(None, authorizer_for(s2))
        s3 = await a.update_state(s2, M1, [])
        await all_seen([c], s3.transition.hash)
    assert old.stale
    with pytest.raises(RecoveryRejected):
        await c.reset_state(old, wrong)
    assert c.current() is old and old.stale

    # A bad mesh key is refused too.
    async def bad_mesh(m: Manifest) -> tuple[SeedEngine, ec.EllipticCurvePrivateKey]:
        return engine(0), ec.generate_private_key(ec.SECP256R1())

    with pytest.raises(RecoveryRejected, match="P-384"):
        await c.reset_state(old, bad_mesh)
    assert c.current() is old


async def test_reset_gets_the_latest_manifest_and_matching_cas() -> None:
    store = MemoryStore()
    a = Guard(History(store))
    s1 = await a.update_state(None, M1, [], seed_engine=engine(0))
    s2 = await a.update_state(s1, M2, [])
    b = Guard(History(store.clone_view()))
    seen: list[Manifest] = []
    r = await b.reset_state(None, authorizer_for(s2, seen))
    assert [m.raw for m in seen] == [M2]
    assert await b.get_state() is r
    assert r.generation == 2
    # Byte-identical CA certificates on every fresh coordinator of the deployment.
    assert r.ca.root_der == s2.ca.root_der
    assert r.ca.mesh_ca_der == s2.ca.mesh_ca_der
    assert r.ca.intermediate_der == s2.ca.intermediate_der


async def test_reset_without_mesh_key_mints_one() -> None:
    store = MemoryStore()
    s = await Guard(History(store)).update_state(None, M1, [], seed_engine=engine(0))
    b = Guard(History(store.clone_view()))

    async def user(m: Manifest) -> tuple[SeedEngine, None]:
        return engine(0), None

    r = await b.reset_state(None, user)
    assert r.ca.root_der == s.ca.root_der
    assert r.ca.mesh_ca_der != s.ca.mesh_ca_der


async def test_reset_when_latest_moves_meanwhile() -> None:
    store = MemoryStore()
    a = Guard(History(store))
    s1 = await a.update_state(None, M1, [], seed_engine=engine(0))
    b = Guard(History(store.clone_view()))

    async def moving(m: Manifest) -> tuple[SeedEngine, ec.EllipticCurvePrivateKey]:
        await a.update_state(s1, M2, [])  # latest moves after b read it
        return s1.seed_engine, s1.mesh_key

    with pytest.raises(ConcurrentUpdate):
        await b.reset_state(None, moving)
    assert b.current() is None


async def test_reset_with_outdated_old() -> None:
    store = MemoryStore()
    a = Guard(History(store))
    s1 = await a.update_state(None, M1, [], seed_engine=engine(0))
    b = Guard(History(store.clone_view()))
    r = await b.reset_state(None, authorizer_for(s1))
    with pytest.raises(ConcurrentUpdate):
        await b.reset_state(None, authorizer_for(s1))

    # Re-adopting the transition it already holds is no descent: refused before any secret.
    asked: list[Manifest] = []
    with pytest.raises(NotDescendant):
        await b.reset_state(r, authorizer_for(s1, asked))
    assert asked == [] and b.current() is r

    # The local State changes while the authorizer runs: the reset must not install.
    s2 = await a.update_state(s1, M2, [])

    async def slow(m: Manifest) -> tuple[SeedEngine, ec.EllipticCurvePrivateKey]:
        await b.reset_state(r, authorizer_for(s2))
        return s2.seed_engine, s2.mesh_key

    with pytest.raises(ConcurrentUpdate):
        await b.reset_state(r, slow)
    assert b.current() is not r


# --- watcher --------------------------------------------------------------------------------


class GatedStore:
    """Delegates to a MemoryStore view but holds watch values until ``gate`` opens."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.gate = asyncio.Event()

    async def get(self, key: str) -> bytes:
        return await self.inner.get(key)

    async def set(self, key: str, value: bytes) -> None:
        await self.inner.set(key, value)

    async def has(self, key: str) -> bool:
        return await self.inner.has(key)

    async def has_any(self, kind: str) -> bool:
        return await self.inner.has_any(kind)

    async def compare_and_swap(self, key: str, old: bytes, new: bytes) -> None:
        await self.inner.compare_and_swap(key, old, new)

    def watch(self, key: str) -> AsyncIterator[bytes]:
        inner = self.inner.watch(key)  # registered now

        async def gated() -> AsyncIterator[bytes]:
            async for value in inner:
                await self.gate.wait()
                yield value

        return gated()

    async def close(self) -> None:
        await self.inner.close()


async def test_late_notifications_never_mark_stale() -> None:
    store = MemoryStore()
    gated = GatedStore(store)
    calls: list[State | None] = []
    g = Guard(History(gated), on_stale=calls.append)
    async with watching([g]):
        s1 = await g.update_state(None, M1, [], seed_engine=engine(0))
        s2 = await g.update_state(s1, M2, [])
        assert not g.seen(s1.transition.hash)  # nothing delivered yet
        gated.gate.set()
        await all_seen([g], s1.transition.hash)
        await all_seen([g], s2.transition.hash)
        assert not s1.stale and not s2.stale
        assert await g.get_state() is s2
        assert calls == [] and not g.stale_event.is_set()

        # Control: a move by someone else is noticed.
        other = Guard(History(store.clone_view()))
        await other.reset_state(None, authorizer_for(s2))
        s3 = await other.update_state(other.current(), M1, [])
        await all_seen([g], s3.transition.hash)
        assert s2.stale and calls == [s2] and g.stale_event.is_set()
        with pytest.raises(Stale):
            await g.get_state()


async def test_notification_during_own_lost_cas_marks_stale() -> None:
    """Another coordinator commits the very same transition while our CAS is in flight."""
    store = MemoryStore()
    a = Guard(History(store))
    s1 = await a.update_state(None, M1, [], seed_engine=engine(0))
    view = store.clone_view()
    b = Guard(History(view))
    await b.reset_state(None, authorizer_for(s1))
    async with watching([b]):
        won: list[State] = []

        async def a_commits_first(key: str) -> None:
            if key == LATEST_KEY and not won:
                won.append(await a.update_state(s1, M2, []))
                await b.wait_seen(won[0].transition.hash)  # delivered while b's CAS pending

        view.before("compare_and_swap", a_commits_first)
        mine = b.current()
        with pytest.raises(ConcurrentUpdate):
            await b.update_state(mine, M2, [])
        assert b.seen(won[0].transition.hash)
        assert mine is not None and mine.stale  # same transition hash, but not ours
        with pytest.raises(Stale):
            await b.get_state()


async def test_move_reported_before_our_cas_reply_marks_new_state_stale() -> None:
    """Our CAS took effect; before its reply arrives another coordinator builds on it."""
    store = MemoryStore()
    view = store.clone_view()
    calls: list[State | None] = []
    a = Guard(History(view), on_stale=calls.append)
    s1 = await a.update_state(None, M1, [], seed_engine=engine(0))
    b = Guard(History(store.clone_view()))
    async with watching([a]):
        later: list[State] = []

        async def b_builds_on_it(key: str) -> None:
            if key == LATEST_KEY and not later:

                async def user(m: Manifest) -> tuple[SeedEngine, None]:
                    return engine(0), None

                await b.reset_state(None, user)
                later.append(await b.update_state(b.current(), M1, []))
                await a.wait_seen(later[0].transition.hash)

        view.after("compare_and_swap", b_builds_on_it)
        new = await a.update_state(s1, M2, [])
        assert later[0].transition.previous == new.transition.hash
        assert a.current() is new and new.generation == 2
        # The watcher saw the move while s1 was current, then ours was installed behind it.
        assert new.stale and s1.stale and calls == [s1, new]
        with pytest.raises(Stale) as e:
            await a.get_state()
        assert e.value.state is new


async def test_move_reported_during_reset_reread_is_concurrent() -> None:
    """The re-read of ``latest`` returns the old value, but the watcher already saw a move."""
    store = MemoryStore()
    a = Guard(History(store))
    s1 = await a.update_state(None, M1, [], seed_engine=engine(0))
    view = store.clone_view()
    b = Guard(History(view))
    async with watching([b]):
        reads: list[int] = []

        async def move_after_second_read(key: str) -> None:
            if key != LATEST_KEY:
                return
            reads.append(1)
            if len(reads) == 2:  # reset_state's re-read has its (now old) value
                s2 = await a.update_state(s1, M2, [])
                await b.wait_seen(s2.transition.hash)

        view.after("get", move_after_second_read)
        with pytest.raises(ConcurrentUpdate):
            await b.reset_state(None, authorizer_for(s1))
        assert len(reads) == 2
        assert b.current() is None


async def test_watcher_restarts_with_backoff() -> None:
    store = MemoryStore()
    view = store.clone_view()
    now = [100.0]
    delays: list[float] = []
    sleeping = asyncio.Event()
    wake = asyncio.Event()

    async def fake_sleep(d: float) -> None:
        delays.append(d)
        sleeping.set()
        await wake.wait()
        wake.clear()

    g = Guard(
        History(view),
        clock=lambda: now[0],
        sleep=fake_sleep,
        backoff=lambda n: float(n),
        backoff_reset_after=10.0,
    )
    s = await g.update_state(None, M1, [], seed_engine=engine(0))
    view.fail_next_watch(StoreUnavailable("down"))
    view.fail_next_watch(StoreUnavailable("down"))
    task = asyncio.create_task(g.watch_history())
    try:
        for expected in ([1.0], [1.0, 2.0]):
            async with asyncio.timeout(TIMEOUT):
                await sleeping.wait()
            sleeping.clear()
            assert delays == expected and not g.watch_ready.is_set()
            wake.set()
        async with asyncio.timeout(TIMEOUT):
            await g.watch_ready.wait()
        assert g.watch_restarts == 2

        # A watch that breaks right away keeps backing off further...
        assert view.break_watches() == 1
        async with asyncio.timeout(TIMEOUT):
            await sleeping.wait()
        sleeping.clear()
        assert delays == [1.0, 2.0, 3.0]

        # ...and a move made while no watch was open is caught by the catch-up read.
        other = Guard(History(store.clone_view()))
        await other.reset_state(None, authorizer_for(s))
        s2 = await other.update_state(other.current(), M2, [])
        assert not s.stale
        wake.set()
        await all_seen([g], s2.transition.hash)
        assert s.stale and g.stale_event.is_set()

        # After a watch that lived long enough, the back-off starts over.
        async with asyncio.timeout(TIMEOUT):
            await g.watch_ready.wait()
        now[0] += 60.0
        view.break_watches()
        async with asyncio.timeout(TIMEOUT):
            await sleeping.wait()
        assert delays[-1] == 1.0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert view.active_watches == 0


async def test_malformed_latest_is_tamper_not_stale_and_bad_callback_is_contained() -> None:
    store = MemoryStore()

    def explode(event: object) -> None:
        raise RuntimeError("callback bug")

    g = Guard(History(store), on_tamper=explode)
    s = await g.update_state(None, M1, [], seed_engine=engine(0))
    async with watching([g]):
        await store.set(LATEST_KEY, b"not a signed latest")
        async with asyncio.timeout(TIMEOUT):
            await g.wait_until(lambda: len(g.tamper_events) == 1)
            await g.wait_until(lambda: g.handled[-1] == s.transition.hash)  # repair heard back
        assert [e.kind for e in g.tamper_events] == ["malformed"]
        assert not s.stale and await g.get_state() is s
        assert await store.get(LATEST_KEY) == s.latest.encode()
        assert g.watch_ready.is_set()  # the watcher kept running


async def test_recovery_mode_at_start_triggers_on_stale() -> None:
    store = MemoryStore()
    s = await Guard(History(store)).update_state(None, M1, [], seed_engine=engine(0))
    calls: list[State | None] = []
    g = Guard(History(store.clone_view()), on_stale=calls.append)
    async with watching([g]):
        assert calls == [None] and g.stale_event.is_set()
        r = await g.reset_state(None, authorizer_for(s))
        assert not g.stale_event.is_set()
        assert await g.get_state() is r


# --- the race -------------------------------------------------------------------------------

ACTIVE = 10
ROUNDS = 50


async def race_round(rnd: int) -> None:
    # Seeded per round: a different but reproducible interleaving each round.
    store = MemoryStore(interleave=random.Random(rnd))
    calls: list[list[State | None]] = [[] for _ in range(ACTIVE + 1)]
    everyone = [Guard(History(store.clone_view()), on_stale=c.append) for c in calls]
    active = everyone[:ACTIVE]  # everyone[ACTIVE] is the passive one
    stale_calls = {id(g): c for g, c in zip(everyone, calls, strict=True)}

    async with watching(everyone):
        for g in everyone:
            with pytest.raises(NotInitialized):
                await g.get_state()

        # 10 concurrent first manifests: exactly one wins.
        results = await asyncio.gather(
            *(
                g.update_state(None, M1, [policy("web")], seed_engine=engine(i))
                for i, g in enumerate(active)
            ),
            return_exceptions=True,
        )
        winners = [i for i, r in enumerate(results) if isinstance(r, State)]
        assert len(winners) == 1, results
        # A loser that looks after the winner stored its blobs but before its CAS sees a
        # history without latest: refused as well, never trusted on first use.
        assert all(
            type(r) in (ConcurrentUpdate, HistoryWithoutLatest)
            for r in results
            if not isinstance(r, State)
        )
        w = winners[0]
        first = results[w]
        assert isinstance(first, State)
        await all_seen(everyone, first.transition.hash)
        for i, g in enumerate(everyone):
            if i == w:
                assert await g.get_state() is first and not g.stale_event.is_set()
            else:
                with pytest.raises(Stale) as e:
                    await g.get_state()
                assert e.value.state is None
                assert g.stale_event.is_set() and stale_calls[id(g)] == [None]

        # Everyone else recovers with the winner's seed and mesh key.
        for i, g in enumerate(everyone):
            if i != w:
                r = await g.reset_state(None, authorizer_for(first))
                assert r.generation == 1 and r.transition == first.transition
                assert r.ca.mesh_ca_der == first.ca.mesh_ca_der
        for g in everyone:
            assert not (await g.get_state()).stale

        # 10 concurrent updates: exactly one wins, the other 10 of 11 end stale. Even rounds
        # all propose the same manifest (so every loser computes the winner's transition).
        def second(i: int) -> bytes:
            return M2 if rnd % 2 == 0 else manifest("coord", "web", f"db{i}")

        olds = [g.current() for g in active]
        results = await asyncio.gather(
            *(g.update_state(olds[i], second(i), []) for i, g in enumerate(active)),
            return_exceptions=True,
        )
        winners = [i for i, r in enumerate(results) if isinstance(r, State)]
        assert len(winners) == 1, results
        assert all(type(r) is ConcurrentUpdate for r in results if not isinstance(r, State))
        w2 = winners[0]
        new = results[w2]
        assert isinstance(new, State) and new.generation == 2
        await all_seen(everyone, new.transition.hash)
        stale = [g for g in everyone if g.current() is not None and g.current().stale]  # type: ignore[union-attr]
        assert len(stale) == ACTIVE
        assert active[w2] not in stale and await active[w2].get_state() is new
        for g in stale:
            with pytest.raises(Stale) as e:
                await g.get_state()
            assert e.value.state is g.current()
            assert stale_calls[id(g)][-1] is g.current()
        assert stale_calls[id(active[w2])] == ([None] if w2 != w else [])


async def test_race_many_guards_one_store() -> None:
    for rnd in range(ROUNDS):
        await race_round(rnd)
