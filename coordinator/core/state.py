"""The coordinator's in-memory State and the Guard that changes it (DESIGN §6).

A :class:`State` is immutable apart from a one-way stale flag. The :class:`Guard` holds the
current State and replaces it only by compare-and-swap against the State the caller read, after
the store's ``latest`` pointer moved (update) or was verified (reset). Its watcher marks the
State stale as soon as another coordinator moves ``latest``; our own notifications, which may
arrive late, are recognised by the transition chain and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.backoff import Backoff
from coordinator.core.authz import deployment_id, public_spki
from coordinator.core.ca import CertificateAuthority, new_mesh_key
from coordinator.core.history import (
    ZERO_HASH,
    History,
    HistoryError,
    SignatureRejected,
    SignedLatest,
    Transition,
)
from coordinator.core.manifest import Manifest
from coordinator.core.rules import (
    Descends,
    LatestVerdict,
    NeedsLineage,
    Ours,
    Tamper,
    TamperKind,
    check_expected_latest,
    check_no_orphaned_history,
    classify_latest,
)
from coordinator.core.seedengine import SeedEngine
from coordinator.errors import ConcordError, Status
from coordinator.store.base import ConcurrentUpdate

__all__ = [
    "LINEAGE_LIMIT",
    "WATCH_BACKOFF",
    "Authorizer",
    "BackoffFn",
    "ConcurrentUpdate",
    "Guard",
    "InvalidPolicies",
    "NotDescendant",
    "NotInitialized",
    "RecoveryRejected",
    "Stale",
    "StaleFlag",
    "State",
    "StateError",
    "TamperEvent",
]

log = logging.getLogger("concord.state")

MeshKey = ec.EllipticCurvePrivateKey
Authorizer = Callable[[Manifest], Awaitable[tuple[SeedEngine, MeshKey | None]]]
"""Given the (unverified) latest manifest, return the seed engine and the mesh CA key to use.

A ``None`` mesh key means "mint a new one" (user recovery); a peer hands over its own.
"""
BackoffFn = Callable[[int], float]
"""Seconds to wait before restart attempt ``n`` (1-based) of a failed watch (a
:class:`~coordinator.backoff.Backoff` is one)."""
WATCH_BACKOFF = Backoff(base=0.1, cap=10.0, jitter=0.2)
"""The watcher's default: 0.1 s doubling up to 10 s, ±20 %."""
StaleCallback = Callable[["State | None"], object]
AUDIT_INTERVAL = 2.0
"""Seconds between re-reads of ``latest`` beside the watch: a store whose watch cannot see
every write (a file replaced behind the file store's back) is still judged within this."""
LINEAGE_LIMIT = 10_000
"""How far back the watcher walks from a new ``latest`` looking for its own transition."""


@dataclass(frozen=True)
class TamperEvent:
    """The store's ``latest`` was found tampered with while this State was held (DESIGN §12)."""

    kind: TamperKind
    held: bytes
    """The transition hash of the State this coordinator holds (and keeps serving)."""
    found: bytes | None
    """The transition hash the store's value names, if it names one."""
    repaired: bool
    """Whether this coordinator wrote its own signed ``latest`` back."""


TamperCallback = Callable[[TamperEvent], object]


@dataclass(frozen=True)
class RecoveryTarget:
    """The transition a user recovery names, and the store's ``latest`` it would replace."""

    transition: Transition
    manifest: Manifest
    raw: bytes
    """The store's raw ``latest`` as read (``b""`` when absent)."""
    found: SignedLatest | None
    """It decoded, or None (absent or unreadable)."""
    restore: bool
    """Whether ``latest`` must be (re)written: absent, unreadable or rolled back."""


class StateError(ConcordError):
    """Base class of Guard refusals (the store raises StoreError, the history HistoryError)."""

    reason = "state_error"
    status = Status.INTERNAL


class NotInitialized(StateError):
    """No manifest has been set yet (no state and no ``latest`` in the store)."""

    reason = "not_initialized"
    status = Status.FAILED_PRECONDITION

    def __init__(self, message: str = "not initialized") -> None:
        super().__init__(message)

    def public_message(self) -> str:
        return "not initialized"


class Stale(StateError):
    """The State is behind the store; ``state`` is that State, or None in recovery mode."""

    reason = "recovery_mode"
    status = Status.FAILED_PRECONDITION

    def __init__(self, state: State | None) -> None:
        super().__init__("recovery mode" if state is None else "state is stale: recovery mode")
        self.state = state

    def public_message(self) -> str:
        return "recovery mode"


class NotDescendant(StateError):
    """Recovery would install a ``latest`` that does not strictly descend from the State held:
    a rollback or a foreign chain, never adopted (DESIGN §12)."""

    reason = "latest_not_descendant"
    status = Status.FAILED_PRECONDITION


class RecoveryRejected(StateError):
    """The seed (or mesh key) handed to :meth:`Guard.reset_state` does not fit the history."""

    reason = "recovery_rejected"
    status = Status.PERMISSION_DENIED


class InvalidPolicies(StateError, ValueError):
    """Policies given with a manifest do not match their hashes or the manifest."""

    reason = "invalid_policies"
    status = Status.INVALID_ARGUMENT


class StaleFlag:
    """A flag that goes from unset to set once and never back."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def mark(self) -> bool:
        """Set the flag; returns True if this call changed it."""
        if self._set:
            return False
        self._set = True
        return True

    @property
    def is_set(self) -> bool:
        return self._set

    def __repr__(self) -> str:
        return f"StaleFlag({self._set})"


@dataclass(frozen=True, eq=False)
class State:
    """One manifest generation as this coordinator serves it. Compared by identity."""

    seed_engine: SeedEngine = field(repr=False)
    manifest: Manifest
    ca: CertificateAuthority = field(repr=False)
    latest: SignedLatest = field(repr=False)
    transition: Transition
    generation: int
    ancestors: frozenset[bytes] = field(repr=False)
    """Hashes of every earlier transition of this chain (not this State's own)."""
    stale_flag: StaleFlag = field(default_factory=StaleFlag)

    @property
    def stale(self) -> bool:
        return self.stale_flag.is_set

    @property
    def manifest_raw(self) -> bytes:
        return self.manifest.raw

    @property
    def transition_hash(self) -> bytes:
        return self.transition.hash

    @property
    def mesh_key(self) -> MeshKey:
        return self.ca.mesh_key

    @property
    def deployment_id(self) -> bytes:
        """SHA-256 of the root CA's SPKI DER (DESIGN §12): the same for every State of one
        deployment, whatever its generation or mesh key."""
        return deployment_id(public_spki(self.seed_engine.root_ca_key))

    def knows(self, transition_hash: bytes) -> bool:
        """Whether ``transition_hash`` is this State's transition or one of its ancestors."""
        return transition_hash == self.transition.hash or transition_hash in self.ancestors


def _policy_blobs(
    policies: Mapping[bytes, bytes] | Sequence[bytes], manifest: Manifest
) -> list[bytes]:
    """Policy bytes to store: each must hash to its key (mapping) and be in the manifest."""
    if isinstance(policies, bytes | bytearray | memoryview | str):
        raise InvalidPolicies("policies must be a mapping or a sequence of byte strings")
    blobs: list[bytes] = []
    if isinstance(policies, Mapping):
        for i, (digest, raw) in enumerate(policies.items()):
            raw = bytes(raw)
            if hashlib.sha256(raw).digest() != bytes(digest):
                raise InvalidPolicies(f"policies[{i}]: key is not the SHA-256 of the policy")
            blobs.append(raw)
    else:
        for raw in policies:
            if not isinstance(raw, bytes | bytearray | memoryview):
                raise InvalidPolicies("policies must be byte strings")
            blobs.append(bytes(raw))
    for i, raw in enumerate(blobs):
        hex_digest = hashlib.sha256(raw).hexdigest()
        if hex_digest not in manifest.policies:
            raise InvalidPolicies(f"policies[{i}]: {hex_digest} is not referenced by the manifest")
    return blobs


class Guard:
    """Holds the current State; every change is a compare-and-swap against a State read before.

    ``clock`` (monotonic seconds), ``sleep`` and ``backoff`` drive the watcher's restarts and
    can be replaced in tests. ``on_stale`` is called (synchronously, from the watcher) each
    time the current State becomes stale, or with None when a history appears while there is
    no State (recovery mode); :attr:`stale_event` is set at the same moments and cleared when
    a State is installed.
    """

    def __init__(
        self,
        history: History,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        backoff: BackoffFn = WATCH_BACKOFF,
        backoff_reset_after: float = 30.0,
        audit_interval: float | None = AUDIT_INTERVAL,
        on_stale: StaleCallback | None = None,
        on_tamper: TamperCallback | None = None,
    ) -> None:
        self.history = history
        self._clock = clock
        self._sleep = sleep
        self._backoff = backoff
        self._backoff_reset_after = backoff_reset_after
        self._audit_interval = audit_interval
        # The last raw ``latest`` judged, and one judgement at a time (watch and audit).
        self._last_raw: bytes | None = None
        self._handle_lock = asyncio.Lock()
        self._on_stale = on_stale
        self._on_tamper = on_tamper
        # Serialises moving ``latest`` (update) with writing it back after tampering (repair),
        # so a repair never writes a State that an update is replacing.
        self._latest_lock = asyncio.Lock()
        self.tamper_events: deque[TamperEvent] = deque(maxlen=1024)
        """The most recent tamper events (newest last), for probes and tests."""
        self._state: State | None = None
        # Transitions whose ``latest`` CAS is in flight here, and notifications for them that
        # arrived meanwhile (decided once the CAS outcome is known).
        self._pending: Counter[bytes] = Counter()
        self._deferred: set[bytes] = set()
        # Every ``latest`` the watcher processed, numbered, for wait_seen and for noticing a
        # move that was reported while an update or reset was waiting for the store's reply.
        self._obs_seq = 0
        self._obs_log: deque[tuple[int, bytes | None]] = deque(maxlen=1024)
        self._seen_pulse = asyncio.Event()
        # Hashes named by the values the watcher has finished handling (for wait_seen).
        self._handled: deque[bytes] = deque(maxlen=1024)
        self.stale_event = asyncio.Event()
        self.watch_ready = asyncio.Event()
        """Set while the watcher has a live watch (after its catch-up read)."""
        self.watch_restarts = 0
        # Swapped and set each time a State is installed or goes stale (MeshAPI.Watch fan-out).
        self._change_pulse = asyncio.Event()

    # -- reading ----------------------------------------------------------------------------

    def current(self) -> State | None:
        """The current State, stale or not, without touching the store (MeshAPI path)."""
        return self._state

    async def get_state(self) -> State:
        """The current fresh State; NotInitialized or Stale otherwise (DESIGN §6)."""
        state = self._state
        if state is None:
            raw = await self.history.get_latest_raw()
            state = self._state  # may have been installed while we read
            if state is None:
                if not raw:
                    raise NotInitialized()
                raise Stale(None)  # a latest, even an unreadable one: recovery mode
        if state.stale:
            raise Stale(state)
        return state

    # -- changing ---------------------------------------------------------------------------

    async def update_state(
        self,
        old: State | None,
        manifest_raw: bytes,
        policies: Mapping[bytes, bytes] | Sequence[bytes],
        *,
        seed_engine: SeedEngine | None = None,
        parsed: Manifest | None = None,
    ) -> State:
        """Append a manifest to the history and install the State for it.

        ``parsed`` is ``manifest_raw`` already parsed by the caller (off the event loop); it is
        used only when its bytes are exactly ``manifest_raw``.

        ``old`` is the State the caller read (None for the first manifest). For the first
        manifest a fresh seed engine is generated unless ``seed_engine`` is given. Raises
        ConcurrentUpdate when ``old`` is not current (locally or in the store), ManifestError
        for a bad manifest, InvalidPolicies for policies that do not belong to it.
        """
        if self._state is not old:
            raise ConcurrentUpdate("concurrent update: the state changed since it was read")
        if old is not None and old.stale:
            raise ConcurrentUpdate("concurrent update: another coordinator moved the history")
        if parsed is not None and parsed.raw == bytes(manifest_raw):
            manifest = parsed
        else:
            manifest = Manifest.parse(manifest_raw)
        blobs = _policy_blobs(policies, manifest)
        if old is None:
            await self._refuse_orphaned_history()
            engine = seed_engine if seed_engine is not None else SeedEngine.generate()
            previous, prev_latest, generation, ancestors = ZERO_HASH, None, 1, frozenset[bytes]()
        else:
            if seed_engine is not None and seed_engine is not old.seed_engine:
                raise ValueError("seed_engine may only be chosen for the first manifest")
            engine = old.seed_engine
            previous, prev_latest = old.transition.hash, old.latest
            generation = old.generation + 1
            ancestors = old.ancestors | {old.transition.hash}

        for blob in blobs:
            await self.history.put_policy(blob)
        manifest_hash = await self.history.put_manifest(manifest.raw)
        transition = Transition.create(manifest_hash, previous)
        await self.history.put_transition(transition)

        # Everything that can fail is built before the CAS: once ``latest`` moved, installing
        # must not fail, or the store would be ahead of every coordinator.
        latest = SignedLatest.sign(transition.hash, engine.history_signing_key)
        mesh_key = new_mesh_key()
        ca = CertificateAuthority(engine.root_ca_key, mesh_key, transition.hash)
        new = State(
            seed_engine=engine,
            manifest=manifest,
            ca=ca,
            latest=latest,
            transition=transition,
            generation=generation,
            ancestors=ancestors,
        )

        self._pending[transition.hash] += 1
        settled = False
        try:
            async with self._latest_lock:
                mark = self._obs_seq
                await self.history.set_latest(latest, prev_latest)
                # No await from here to the install: the watcher cannot interleave.
                return self._install_update(old, new, mark)
        except ConcurrentUpdate:
            self._settle(transition.hash)
            settled = True
            # Whatever beat us is judged now, not only when a watch reports it: a tampered
            # value (that no watch may ever report) is counted and repaired at once.
            with contextlib.suppress(Exception):
                await self.audit()
            raise
        finally:
            if not settled:
                self._settle(transition.hash)

    async def _refuse_orphaned_history(self) -> None:
        """No trust on first use over a history (DESIGN §12): a store with history blobs but no
        ``latest`` had it deleted. Another first manifest that just won is a concurrent update."""
        if not await self.history.has_history():
            return
        if await self.history.get_latest_raw():
            raise ConcurrentUpdate("concurrent update: a first manifest was set meanwhile")
        check_no_orphaned_history(True)

    def _install_update(self, old: State | None, new: State, mark: int) -> State:
        current = self._state
        if current is old:
            self._install(new)
            if self._moved_since(mark, new):
                # Another coordinator built on our transition before our CAS reply arrived.
                self._mark_stale(new)
            return new
        if current is not None and current.knows(new.transition.hash):
            return new  # a later local update already built on ours
        # Something else was installed meanwhile; the store is now at our transition, so the
        # installed State is behind it.
        self._mark_stale(current)
        raise ConcurrentUpdate("concurrent update: the state changed during the update")

    async def latest_manifest(self, latest: SignedLatest) -> tuple[Transition, Manifest]:
        """The transition ``latest`` points to and its manifest. Unverified: only a seed can
        check ``latest``; callers use this to decide who may supply one."""
        transition = await self.history.get_transition(latest.transition_hash)
        return transition, Manifest.parse(await self.history.get_manifest(transition.manifest_hash))

    async def recovery_target(self, expected: bytes) -> RecoveryTarget:
        """What a user recovery naming ``expected`` would install (DESIGN §12), unverified.

        The store's ``latest`` must be ``expected``; or be absent or unreadable while a history
        exists (deleted: restore it); or be a strict ancestor of ``expected`` (rolled back:
        move it forward). Anything else raises UnexpectedLatest naming both hashes."""
        raw = await self.history.get_latest_raw()
        found: SignedLatest | None = None
        if raw:
            with contextlib.suppress(HistoryError):
                found = SignedLatest.decode(raw)
        found_hash = found.transition_hash if found is not None else None
        if found is not None and found_hash == expected:
            transition, manifest = await self.latest_manifest(found)
            return RecoveryTarget(transition, manifest, raw, found, restore=False)
        if found is not None:
            assert found_hash is not None
            lineage = await self.history.lineage(expected, found_hash, LINEAGE_LIMIT)
            if found_hash not in lineage:
                check_expected_latest(expected, found_hash)
        elif not raw and not await self.history.has_history():
            raise NotInitialized()
        try:
            transition = await self.history.get_transition(expected)
        except HistoryError:
            check_expected_latest(expected, found_hash)  # names what is missing
            raise
        manifest = Manifest.parse(await self.history.get_manifest(transition.manifest_hash))
        return RecoveryTarget(transition, manifest, raw, found, restore=True)

    async def reset_state(
        self, old: State | None, authorizer: Authorizer, *, expected: bytes | None = None
    ) -> State:
        """Adopt the store's current ``latest`` with a seed from ``authorizer`` (recovery).

        ``expected`` (user recovery) names the latest transition the owner means: refused with
        UnexpectedLatest when the store's ``latest`` is another one. When the store holds a
        history but its ``latest`` was deleted, the named transition is restored: ``latest``
        is signed anew with the recovered seed (DESIGN §12, the only way back).

        Raises NotInitialized (empty history), RecoveryRejected (the seed does not sign
        ``latest``, or a bad mesh key; nothing changes), NotDescendant (``latest`` does not
        strictly descend from ``old``), ConcurrentUpdate (``latest`` moved meanwhile, or the
        local State is no longer ``old``).
        """
        if self._state is not old:
            raise ConcurrentUpdate("concurrent update: the state changed since it was read")
        mark = self._obs_seq
        restore: RecoveryTarget | None = None
        latest: SignedLatest | None
        if expected is not None:
            restore = await self.recovery_target(expected)
            transition, manifest = restore.transition, restore.manifest
            latest = None if restore.restore else restore.found
            if not restore.restore:
                restore = None
        else:
            latest = await self.history.get_latest()
            if latest is None:
                raise NotInitialized()
            transition, manifest = await self.latest_manifest(latest)
        chain = await self.history.walk(transition.hash)
        if old is not None and old.transition.hash not in {t.hash for t in chain[:-1]}:
            # Never hand over to (or ask for secrets about) a chain we do not extend.
            raise NotDescendant(
                f"the store's latest {transition.hash.hex()} does not descend from the held "
                f"transition {old.transition.hash.hex()}"
            )
        engine, mesh_key = await authorizer(manifest)
        if not isinstance(engine, SeedEngine):
            raise RecoveryRejected("authorizer returned no seed engine")
        if restore is not None and restore.found is not None:
            # Moving a rolled-back ``latest`` forward: only the deployment's own seed may.
            try:
                restore.found.verify(engine.history_signing_key.public_key())
            except SignatureRejected:
                raise RecoveryRejected("the seed does not sign the store's latest") from None
        if latest is None:
            latest = SignedLatest.sign(transition.hash, engine.history_signing_key)
        try:
            latest.verify(engine.history_signing_key.public_key())
        except SignatureRejected:
            raise RecoveryRejected("the seed does not sign the current history") from None
        if mesh_key is None:
            mesh_key = new_mesh_key()
        elif not isinstance(mesh_key, ec.EllipticCurvePrivateKey) or not isinstance(
            mesh_key.curve, ec.SECP384R1
        ):
            raise RecoveryRejected("mesh key must be a P-384 private key")
        new = State(
            seed_engine=engine,
            manifest=manifest,
            ca=CertificateAuthority(engine.root_ca_key, mesh_key, transition.hash),
            latest=latest,
            transition=transition,
            generation=len(chain),
            ancestors=frozenset(t.hash for t in chain[:-1]),
        )
        if restore is not None:
            async with self._latest_lock:
                if self._state is not old:
                    raise ConcurrentUpdate("concurrent update: the state changed during recovery")
                # Only over exactly the value judged (absent, unreadable or rolled back).
                await self.history.replace_latest_raw(restore.raw, latest)
                self._install(new)
            log.warning(
                "restored latest at transition %s (the store had %s)",
                transition.hash.hex(),
                restore.found.transition_hash.hex() if restore.found else "none",
            )
            return new
        if await self.history.get_latest() != latest or self._moved_since(mark, new):
            raise ConcurrentUpdate("concurrent update: the history moved during recovery")
        # No await from the re-read to the install.
        if self._state is not old:
            raise ConcurrentUpdate("concurrent update: the state changed during recovery")
        self._install(new)
        return new

    def change_signal(self) -> asyncio.Event:
        """An Event set at the next State install or staleness (DESIGN §15). Take it right after
        reading :meth:`current`, with no await in between, and no change is missed."""
        return self._change_pulse

    def _changed(self) -> None:
        pulse, self._change_pulse = self._change_pulse, asyncio.Event()
        pulse.set()

    def _install(self, new: State) -> None:
        self._state = new
        self.stale_event.clear()
        self._changed()
        log.info("state installed: generation %d", new.generation)

    # -- staleness --------------------------------------------------------------------------

    def _mark_stale(self, state: State | None) -> None:
        changed = state.stale_flag.mark() if state is not None else not self.stale_event.is_set()
        self.stale_event.set()
        if not changed:
            return
        self._changed()
        if state is None:
            log.warning("history present but no state: recovery mode")
        else:
            log.warning("state is stale: another coordinator moved the history")
        if self._on_stale is not None:
            try:
                self._on_stale(state)
            except Exception:
                log.exception("on_stale callback failed")

    def _observe(self, value: bytes) -> tuple[State | None, LatestVerdict | None]:
        """Record a raw ``latest`` seen in the store and judge it against the held State
        (synchronously, so an update waiting for its CAS reply sees the record). Only values
        correctly signed for the held State's deployment are logged as moves; tampered ones are
        logged as None, which never counts as a move."""
        state = self._state
        verdict: LatestVerdict | None = None
        logged: bytes | None = None
        if state is not None:
            verdict = classify_latest(
                state.transition.hash,
                state.ancestors,
                value,
                state.seed_engine.history_signing_key.public_key(),
            )
            if isinstance(verdict, Ours):
                logged = state.transition.hash
            elif isinstance(verdict, NeedsLineage):
                logged = verdict.latest.transition_hash
            elif isinstance(verdict, Tamper) and verdict.kind == "rollback":
                logged = verdict.found
        elif value:
            with contextlib.suppress(HistoryError):
                logged = SignedLatest.decode(value).transition_hash
        self._obs_seq += 1
        self._obs_log.append((self._obs_seq, logged))
        self._pulse()
        if logged is not None and self._pending[logged] > 0:
            self._deferred.add(logged)  # ours or not: the CAS outcome will tell
            return state, None
        if state is None and value:
            self._mark_stale(None)  # a history but no State: recovery mode
        return state, verdict

    def _pulse(self) -> None:
        pulse, self._seen_pulse = self._seen_pulse, asyncio.Event()
        pulse.set()

    async def _handle(self, value: bytes) -> None:
        """React to a raw ``latest`` from the store: ignore our own, mark stale for a strict
        descendant, and treat anything else as tampering (DESIGN §12)."""
        async with self._handle_lock:
            self._last_raw = value
            try:
                await self._judge_and_act(value)
            finally:
                self._handled.append(_named(value))
                self._pulse()

    async def audit(self) -> None:
        """Read ``latest`` now and judge it if it is not the value judged last (also run by the
        watcher every ``audit_interval``, and after a lost compare-and-swap)."""
        value = await self.history.get_latest_raw()
        if value != self._last_raw:
            await self._handle(value)

    async def _audit_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.audit()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watch reports store trouble; keep auditing
                log.debug("history audit failed: %s", type(exc).__name__)

    async def _judge_and_act(self, value: bytes) -> None:
        state, verdict = self._observe(value)
        for _ in range(4):  # the State may change while we walk the chain; judge again then
            if state is None or verdict is None or isinstance(verdict, Ours):
                return
            if isinstance(verdict, Tamper):
                await self._tamper(state, value, verdict)
                return
            if isinstance(verdict, Descends):
                if self._state is state:
                    self._mark_stale(state)
                return
            lineage = await self.history.lineage(
                verdict.latest.transition_hash, state.transition.hash, LINEAGE_LIMIT
            )
            if self._state is not state:
                state = self._state
                verdict = None if state is None else self._judge(state, value)
                continue
            verdict = self._judge(state, value, lineage)
        if state is not None and not state.knows(_named(value)):
            self._mark_stale(state)  # the State kept changing: be conservative

    @staticmethod
    def _judge(state: State, value: bytes, lineage: Sequence[bytes] | None = None) -> LatestVerdict:
        return classify_latest(
            state.transition.hash,
            state.ancestors,
            value,
            state.seed_engine.history_signing_key.public_key(),
            lineage,
        )

    async def _tamper(self, state: State, value: bytes, verdict: Tamper) -> None:
        """Count and log a tampered ``latest``, keep serving, and write our own back (only while
        our State is fresh: a stale coordinator would itself roll the store back)."""
        repaired = False
        async with self._latest_lock:
            if self._state is state and not state.stale:
                try:
                    await self.history.replace_latest_raw(value, state.latest)
                    repaired = True
                except ConcurrentUpdate:
                    pass  # moved again meanwhile: the watcher judges the new value
                except Exception as exc:  # the store's business; the next event retries
                    log.warning("store repair failed: %s", type(exc).__name__)
        event = TamperEvent(verdict.kind, state.transition.hash, verdict.found, repaired)
        log.error(
            "store tampering (%s): holding transition %s, store had %s; %s",
            event.kind,
            event.held.hex(),
            event.found.hex() if event.found is not None else "-",
            "wrote our latest back"
            if repaired
            else "not repaired here (stale state, or the store moved again)",
        )
        self.tamper_events.append(event)
        self._pulse()
        if self._on_tamper is not None:
            try:
                self._on_tamper(event)
            except Exception:
                log.exception("on_tamper callback failed")

    def _settle(self, transition_hash: bytes) -> None:
        """A CAS for ``transition_hash`` finished: decide notifications held back for it."""
        self._pending[transition_hash] -= 1
        if self._pending[transition_hash] > 0:
            return
        del self._pending[transition_hash]
        if transition_hash in self._deferred:
            self._deferred.discard(transition_hash)
            state = self._state
            if state is None or not state.knows(transition_hash):
                self._mark_stale(state)

    def _moved_since(self, mark: int, state: State) -> bool:
        """Whether the watcher reported, after observation ``mark``, a ``latest`` that is not
        in ``state``'s chain (a lost log counts as moved; tampered values never do)."""
        if self._obs_seq - mark > len(self._obs_log):
            return True
        return any(seq > mark and h is not None and not state.knows(h) for seq, h in self._obs_log)

    @property
    def handled(self) -> tuple[bytes, ...]:
        """Hashes named by the most recent values the watcher handled, oldest first (the zero
        hash for a value naming none)."""
        return tuple(self._handled)

    def seen(self, transition_hash: bytes) -> bool:
        """Whether the watcher recently finished handling a ``latest`` with this hash."""
        return transition_hash in self._handled

    async def wait_seen(self, transition_hash: bytes) -> None:
        """Wait until the watcher has processed a ``latest`` with this hash (tests, probes)."""
        await self.wait_until(lambda: self.seen(transition_hash))

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, checking after each value the watcher handles and
        each tamper event (tests, probes; bound it with a timeout)."""
        while not predicate():
            await self._seen_pulse.wait()

    # -- watcher ----------------------------------------------------------------------------

    async def watch_history(self) -> None:
        """Run forever: mark the State stale when ``latest`` moves elsewhere (cancel to stop).

        Each (re)start opens the watch and then reads ``latest`` once, so a move made while no
        watch was open is not missed. A failed or ended watch restarts after a back-off.
        """
        failures = 0
        while True:
            started = self._clock()
            try:
                await self._watch_once()
                reason = "watch ended"
            except asyncio.CancelledError:
                self.watch_ready.clear()
                raise
            except Exception as e:  # the store's business; we only restart
                reason = f"watch failed: {type(e).__name__}"
            self.watch_ready.clear()
            if self._clock() - started >= self._backoff_reset_after:
                failures = 0
            failures += 1
            delay = self._backoff(failures)
            self.watch_restarts += 1
            log.warning("history %s; restarting in %.2fs (attempt %d)", reason, delay, failures)
            await self._sleep(delay)

    async def _watch_once(self) -> None:
        watch = self.history.watch_latest_raw()
        auditor: asyncio.Task[None] | None = None
        try:
            await self._handle(await self.history.get_latest_raw())
            self.watch_ready.set()
            if self._audit_interval is not None:
                auditor = asyncio.create_task(self._audit_loop(self._audit_interval))
            while True:
                try:
                    value = await watch.__anext__()
                except StopAsyncIteration:
                    return
                # A deleted ``latest`` arrives as DELETED (b""): judged like any other value.
                await self._handle(bytes(value))
        finally:
            if auditor is not None:
                auditor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await auditor
            close = getattr(watch, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()


def _named(value: bytes) -> bytes:
    """The transition hash a raw ``latest`` names, or the zero hash when it names none."""
    try:
        return SignedLatest.decode(value).transition_hash
    except HistoryError:
        return ZERO_HASH
