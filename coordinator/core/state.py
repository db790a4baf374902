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

from coordinator.core.backoff import Backoff
from coordinator.core.ca import CertificateAuthority, new_mesh_key
from coordinator.core.history import (
    ZERO_HASH,
    History,
    MalformedBlob,
    SignatureRejected,
    SignedLatest,
    Transition,
)
from coordinator.core.manifest import Manifest
from coordinator.core.seedengine import SeedEngine
from coordinator.errors import ConcordError, Status
from coordinator.store.base import ConcurrentUpdate

__all__ = [
    "WATCH_BACKOFF",
    "Authorizer",
    "BackoffFn",
    "ConcurrentUpdate",
    "Guard",
    "InvalidPolicies",
    "NotInitialized",
    "RecoveryRejected",
    "Stale",
    "StaleFlag",
    "State",
    "StateError",
]

log = logging.getLogger("concord.state")

MeshKey = ec.EllipticCurvePrivateKey
Authorizer = Callable[[Manifest], Awaitable[tuple[SeedEngine, MeshKey | None]]]
"""Given the (unverified) latest manifest, return the seed engine and the mesh CA key to use.

A ``None`` mesh key means "mint a new one" (user recovery); a peer hands over its own.
"""
BackoffFn = Callable[[int], float]
"""Seconds to wait before restart attempt ``n`` (1-based) of a failed watch (a
:class:`~coordinator.core.backoff.Backoff` is one)."""
WATCH_BACKOFF = Backoff(base=0.1, cap=10.0, jitter=0.2)
"""The watcher's default: 0.1 s doubling up to 10 s, ±20 %."""
StaleCallback = Callable[["State | None"], object]


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
        on_stale: StaleCallback | None = None,
    ) -> None:
        self.history = history
        self._clock = clock
        self._sleep = sleep
        self._backoff = backoff
        self._backoff_reset_after = backoff_reset_after
        self._on_stale = on_stale
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
        self.stale_event = asyncio.Event()
        self.watch_ready = asyncio.Event()
        """Set while the watcher has a live watch (after its catch-up read)."""
        self.watch_restarts = 0

    # -- reading ----------------------------------------------------------------------------

    def current(self) -> State | None:
        """The current State, stale or not, without touching the store (MeshAPI path)."""
        return self._state

    async def get_state(self) -> State:
        """The current fresh State; NotInitialized or Stale otherwise (DESIGN §6)."""
        state = self._state
        if state is None:
            latest = await self.history.get_latest()
            state = self._state  # may have been installed while we read
            if state is None:
                if latest is None:
                    raise NotInitialized()
                raise Stale(None)
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
    ) -> State:
        """Append a manifest to the history and install the State for it.

        ``old`` is the State the caller read (None for the first manifest). For the first
        manifest a fresh seed engine is generated unless ``seed_engine`` is given. Raises
        ConcurrentUpdate when ``old`` is not current (locally or in the store), ManifestError
        for a bad manifest, InvalidPolicies for policies that do not belong to it.
        """
        if self._state is not old:
            raise ConcurrentUpdate("concurrent update: the state changed since it was read")
        if old is not None and old.stale:
            raise ConcurrentUpdate("concurrent update: another coordinator moved the history")
        manifest = Manifest.parse(manifest_raw)
        blobs = _policy_blobs(policies, manifest)
        if old is None:
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
        try:
            mark = self._obs_seq
            await self.history.set_latest(latest, prev_latest)
            # No await from here to the install: the watcher cannot interleave.
            return self._install_update(old, new, mark)
        finally:
            self._settle(transition.hash)

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

    async def reset_state(self, old: State | None, authorizer: Authorizer) -> State:
        """Adopt the store's current ``latest`` with a seed from ``authorizer`` (recovery).

        Raises NotInitialized (empty history), RecoveryRejected (the seed does not sign
        ``latest``, or a bad mesh key; nothing changes), ConcurrentUpdate (``latest`` moved
        meanwhile, or the local State is no longer ``old``).
        """
        if self._state is not old:
            raise ConcurrentUpdate("concurrent update: the state changed since it was read")
        mark = self._obs_seq
        latest = await self.history.get_latest()
        if latest is None:
            raise NotInitialized()
        transition, manifest = await self.latest_manifest(latest)
        engine, mesh_key = await authorizer(manifest)
        if not isinstance(engine, SeedEngine):
            raise RecoveryRejected("authorizer returned no seed engine")
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
        chain = await self.history.walk(transition.hash)
        new = State(
            seed_engine=engine,
            manifest=manifest,
            ca=CertificateAuthority(engine.root_ca_key, mesh_key, transition.hash),
            latest=latest,
            transition=transition,
            generation=len(chain),
            ancestors=frozenset(t.hash for t in chain[:-1]),
        )
        if await self.history.get_latest() != latest or self._moved_since(mark, new):
            raise ConcurrentUpdate("concurrent update: the history moved during recovery")
        # No await from the re-read to the install.
        if self._state is not old:
            raise ConcurrentUpdate("concurrent update: the state changed during recovery")
        self._install(new)
        return new

    def _install(self, new: State) -> None:
        self._state = new
        self.stale_event.clear()
        log.info("state installed: generation %d", new.generation)

    # -- staleness --------------------------------------------------------------------------

    def _mark_stale(self, state: State | None) -> None:
        changed = state.stale_flag.mark() if state is not None else not self.stale_event.is_set()
        self.stale_event.set()
        if not changed:
            return
        if state is None:
            log.warning("history present but no state: recovery mode")
        else:
            log.warning("state is stale: another coordinator moved the history")
        if self._on_stale is not None:
            try:
                self._on_stale(state)
            except Exception:
                log.exception("on_stale callback failed")

    def _observe(self, transition_hash: bytes | None) -> None:
        """React to a ``latest`` seen in the store (None: a value we cannot parse)."""
        self._obs_seq += 1
        self._obs_log.append((self._obs_seq, transition_hash))
        pulse, self._seen_pulse = self._seen_pulse, asyncio.Event()
        pulse.set()
        if transition_hash is not None and self._pending[transition_hash] > 0:
            self._deferred.add(transition_hash)  # ours or not: the CAS outcome will tell
            return
        state = self._state
        if state is not None and transition_hash is not None and state.knows(transition_hash):
            return  # our own (late) notification
        self._mark_stale(state)

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
        in ``state``'s chain (a lost log counts as moved)."""
        if self._obs_seq - mark > len(self._obs_log):
            return True
        return any(seq > mark and (h is None or not state.knows(h)) for seq, h in self._obs_log)

    def seen(self, transition_hash: bytes) -> bool:
        """Whether the watcher recently processed a ``latest`` with this hash."""
        return any(h == transition_hash for _, h in self._obs_log)

    async def wait_seen(self, transition_hash: bytes) -> None:
        """Wait until the watcher has processed a ``latest`` with this hash (tests, probes)."""
        while not self.seen(transition_hash):
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
        watch = self.history.watch_latest()
        try:
            try:
                latest = await self.history.get_latest()
            except MalformedBlob:
                self._observe(None)
            else:
                if latest is not None:
                    self._observe(latest.transition_hash)
            self.watch_ready.set()
            while True:
                try:
                    latest = await watch.__anext__()
                except StopAsyncIteration:
                    return
                except MalformedBlob:
                    # Also a deleted ``latest``: the store yields DELETED (b""), which does not
                    # decode. Either way it is not a valid latest, and the watch goes on.
                    self._observe(None)
                    continue
                self._observe(latest.transition_hash)
        finally:
            close = getattr(watch, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
