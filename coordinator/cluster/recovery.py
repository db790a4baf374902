"""Peer discovery and event-driven peer recovery (DESIGN §8).

As soon as the watcher marks the State stale (or at start with a history but no State), pick a
ready peer, verify it over the attested channel as a coordinator of the manifest that the store's
``latest`` points to and as serving exactly that ``latest``, ask it for the secrets (sealed to a
fresh HPKE key bound into our own evidence) and reset the State with them. Failed attempts are
retried with jittered exponential back-off; a periodic sweep catches anything an event missed.

Membership: with a store that has lease-bound member keys (etcd), each coordinator publishes
``members/<node id>`` = JSON ``{"mesh_addr", "ready", "transition"}`` and rewrites it whenever its
readiness or transition changes; a crashed coordinator's key disappears with its lease. Peers
come from these keys, preferring those that say they serve the store's ``latest``, then from the
static ``--peer`` list. A member key is only a hint: nothing is trusted before attestation.

Orphaned transitions: the mesh key of a transition exists only in the memory of the coordinator
that made it until a peer copies it (tens of milliseconds). If that coordinator dies in between,
no peer can serve ``latest``. A stale coordinator that still holds the deployment seed (it signs
``latest``) then re-keys the transition itself, like a user recovery with a new mesh key, but
only when it is safe: no other live member has been ready for longer than a membership lease
(so the maker is dead, not slow), the latest manifest admits this coordinator, and it won the
``rekey/<transition>`` compare-and-swap (one re-keying coordinator per transition; a claim whose
holder is no longer a member can be taken over). The others then recover from it as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.anchors import TrustAnchors
from attestation.binding import peer_recover_report_data
from attestation.errors import EvidenceRejected
from attestation.verify import VerifiedEvidence
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.backoff import Backoff
from coordinator.client.channel import AttestationFailed, AttestedChannel, CoordinatorPolicy
from coordinator.client.errors import reason_of
from coordinator.core.history import HistoryError, SignedLatest
from coordinator.core.manifest import Manifest
from coordinator.core.ratelimit import RepeatLimiter
from coordinator.core.sealing import (
    PURPOSE_PEER_RECOVER,
    HpkeSuite,
    PeerSecrets,
    SuiteOffer,
    check_answer,
    generate_keypair,
    generate_pq_keypair,
    open_sealed_pq,
)
from coordinator.core.seedengine import SeedEngine
from coordinator.core.state import (
    ConcurrentUpdate,
    Guard,
    NotDescendant,
    NotInitialized,
    RecoveryRejected,
)
from coordinator.errors import ConcordError, Status
from coordinator.store.base import MembershipStore, Store

__all__ = [
    "RETRY_BACKOFF",
    "ClusterDeps",
    "Member",
    "PeerRecovery",
    "PeerRecoveryFailed",
    "order_candidates",
]

log = logging.getLogger("concord.recovery")

MEMBER_TTL = 5
"""Seconds a crashed coordinator's membership key outlives it."""
SWEEP_INTERVAL = 5.0
PUBLISH_INTERVAL = 0.01
"""How often readiness is compared with what was published (in memory; writes only changes)."""
PUBLISH_RETRY = 1.0
PEER_LOG_INTERVAL = 30.0
"""The same complaint about the same peer is logged at most this often (retries run every few
hundred milliseconds while a peer stays unusable); the line carries how many were held back."""
RETRY_BACKOFF = Backoff(base=0.05, cap=2.0, jitter=0.5)
"""Between failed recovery attempts and member-watch restarts: 50 ms doubling up to 2 s, spread
±50 % so that coordinators that failed together do not retry together."""
PEER_TIMEOUT = 5.0
"""Bound on each step of talking to one peer (connect, attest, challenge, recover)."""
MEMBER_WAIT = 0.25
"""How long to wait for a member to announce the store's ``latest`` before trying the others."""
PROBE_TIMEOUT = 2.0
"""Bound on attesting one peer when deciding whether a ready peer exists (user recovery)."""
ORPHAN_GRACE = MEMBER_TTL + 1.0
"""How long no live member may be ready before a seed holder re-keys an orphaned ``latest``."""


class PeerRecoveryFailed(ConcordError):
    """This peer cannot be used for recovery (not at ``latest``, or its secrets do not fit)."""

    reason = "peer_recovery_failed"
    status = Status.UNAVAILABLE


@dataclass(frozen=True)
class Member:
    """One membership key: where a coordinator's mesh API is and what it says it serves."""

    node_id: str
    mesh_addr: str
    ready: bool
    transition: bytes | None = None

    def encode(self) -> bytes:
        return json.dumps(
            {
                "mesh_addr": self.mesh_addr,
                "ready": self.ready,
                "transition": self.transition.hex() if self.transition else "",
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, node_id: str, raw: bytes) -> Member | None:
        """None for a value that is not a membership record (ignored, never trusted)."""
        try:
            info = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(info, dict):
            return None
        addr, ready, transition = info.get("mesh_addr"), info.get("ready"), info.get("transition")
        if not isinstance(addr, str) or not addr or not isinstance(ready, bool):
            return None
        digest: bytes | None = None
        if isinstance(transition, str) and transition:
            try:
                digest = bytes.fromhex(transition)
            except ValueError:
                return None
        return cls(node_id, addr, ready, digest)


def order_candidates(
    members: dict[str, bytes],
    self_id: str,
    latest: bytes | None,
    static_peers: tuple[str, ...] = (),
    *,
    exclude: tuple[str, ...] = (),
    shuffle: Callable[[list[str]], None] = random.shuffle,
) -> tuple[list[str], bool]:
    """Mesh addresses to try: ready members at ``latest`` first, then other ready members (each
    group shuffled to spread the load), then static peers; never an address in ``exclude`` (our
    own). Also whether any member is at ``latest``."""
    at_latest: list[str] = []
    others: list[str] = []
    for node_id, raw in members.items():
        if node_id == self_id:
            continue
        member = Member.decode(node_id, raw)
        if member is None or not member.ready:
            continue
        if latest is not None and member.transition == latest:
            at_latest.append(member.mesh_addr)
        else:
            others.append(member.mesh_addr)
    shuffle(at_latest)
    shuffle(others)
    ordered: list[str] = []
    for addr in (*at_latest, *others, *static_peers):
        if addr not in ordered and addr not in exclude:
            ordered.append(addr)
    return ordered, bool(at_latest)


@dataclass(frozen=True)
class ClusterDeps:
    """What peer recovery needs of its coordinator process, injected by the server (the cluster
    layer never imports the server)."""

    node_id: str
    static_peers: tuple[str, ...]
    store: Store
    guard: Guard
    anchors: TrustAnchors
    addresses: Mapping[str, str]
    """The server's bound addresses (``mesh`` is read when membership starts)."""
    advertise_mesh_addr: str | None
    is_ready: Callable[[], bool]
    evidence: Callable[[bytes], Awaitable[bytes]]
    """This coordinator's evidence (envelope bytes) for 64 bytes of report data."""
    own_evidence_under: Callable[[Manifest], Awaitable[VerifiedEvidence]]
    on_recovery: Callable[[str], None]
    """Counts a recovery by source (``peer``, ``rekey``)."""
    deployment: str = ""
    """The deployment name this coordinator is configured for: bound into its peer-recovery
    evidence, and a peer attesting another one is never recovered from (DESIGN §12)."""


class PeerRecovery:
    """The recovery loop, the membership publisher and the member watcher of one coordinator."""

    def __init__(self, deps: ClusterDeps) -> None:
        self.deps = deps
        self.anchors = deps.anchors
        self.members: MembershipStore | None = (
            deps.store if isinstance(deps.store, MembershipStore) else None
        )
        self.membership = self.members is not None
        self.node_id = deps.node_id or uuid.uuid4().hex[:12]
        self.static_peers = deps.static_peers
        self._wake = asyncio.Event()
        self._members_pulse = asyncio.Event()
        self._published: tuple[bool, bytes | None] | None = None
        self._publish_lock = asyncio.Lock()
        self.attempts = 0
        self.recoveries = 0
        self.rekeys = 0
        self._idle_logged = False
        self._orphaned: tuple[bytes, float] | None = None
        self._repeats = RepeatLimiter(PEER_LOG_INTERVAL)

    def _peer_log(self, level: int, peer: str, problem: str, detail: str) -> None:
        """Log a peer's ``problem`` once per :data:`PEER_LOG_INTERVAL` (fields, not prose)."""
        suppressed = self._repeats.allow((peer, problem))
        if suppressed is None:
            return
        log.log(
            level,
            "peer %s for recovery",
            problem.replace("_", " "),
            extra={"peer": peer, "problem": problem, "detail": detail, "suppressed": suppressed},
        )

    @classmethod
    def create(cls, deps: ClusterDeps) -> PeerRecovery | None:
        """None for a lone coordinator (no shared membership store, no static peers)."""
        if not isinstance(deps.store, MembershipStore) and not deps.static_peers:
            return None
        return cls(deps)

    @property
    def mesh_address(self) -> str:
        return self.deps.advertise_mesh_addr or self.deps.addresses["mesh"]

    @property
    def _own(self) -> tuple[str, ...]:
        return (self.mesh_address, self.deps.addresses.get("mesh", ""))

    async def start(self) -> list[asyncio.Task[Any]]:
        tasks = [asyncio.create_task(self._recovery_loop(), name="peer-recovery")]
        if self.membership:
            host = self.mesh_address.rpartition(":")[0].strip("[]")
            if host in ("0.0.0.0", "::", ""):
                log.warning(
                    "advertising mesh address %s to peers: set --advertise-mesh-addr",
                    self.mesh_address,
                )
            try:
                await self._publish_if_changed()
            except Exception as exc:  # the publisher loop retries
                log.warning("membership registration failed: %s", type(exc).__name__)
            tasks.append(asyncio.create_task(self._membership_loop(), name="membership"))
            tasks.append(asyncio.create_task(self._members_watch_loop(), name="members-watch"))
        self._wake.set()  # a history may already exist: try at once
        return tasks

    async def stop(self) -> None:
        """Leave the membership now (a clean shutdown; a crash leaves it to the lease)."""
        if self.members is not None:
            with contextlib.suppress(Exception):
                await self.members.stop_member(self.node_id)

    def trigger(self) -> None:
        """Called by the watcher (state went stale): recover as soon as possible."""
        self._wake.set()

    # -- membership -------------------------------------------------------------------------

    def _own_status(self) -> tuple[bool, bytes | None]:
        state = self.deps.guard.current()
        if state is None:
            return False, None
        return not state.stale, state.transition.hash

    async def _publish_if_changed(self) -> None:
        async with self._publish_lock:
            status = self._own_status()
            if status == self._published:
                return
            ready, transition = status
            member = Member(self.node_id, self.mesh_address, ready, transition)
            assert self.members is not None
            await self.members.put_member(self.node_id, member.encode(), MEMBER_TTL)
            self._published = status

    async def _membership_loop(self) -> None:
        """Keep our readiness and transition published (only changes are written)."""
        while True:
            try:
                await self._publish_if_changed()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("membership update failed: %s", type(exc).__name__)
                await asyncio.sleep(PUBLISH_RETRY)
                continue
            await asyncio.sleep(PUBLISH_INTERVAL)

    async def _members_watch_loop(self) -> None:
        """Wake the recovery loop when a peer announces readiness while we are not ready (e.g.
        the first coordinator a seed-share owner recovered); restart the watch on failure."""
        members_store = self.members
        if members_store is None:
            return
        failures = 0
        while True:
            known: dict[str, Member | None] = {}
            try:
                async for members in members_store.watch_members():
                    failures = 0
                    current = {k: Member.decode(k, v) for k, v in members.items()}
                    changed = any(
                        m is not None and m.ready and known.get(k) != m
                        for k, m in current.items()
                        if k != self.node_id
                    )
                    known = current
                    pulse, self._members_pulse = self._members_pulse, asyncio.Event()
                    pulse.set()
                    if changed and not self.deps.is_ready():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                level = logging.INFO if failures == 0 else logging.DEBUG
                log.log(level, "member watch failed: %s; restarting", type(exc).__name__)
            failures += 1
            await asyncio.sleep(RETRY_BACKOFF.delay(failures))

    async def _list_members(self) -> dict[str, bytes]:
        if not self.membership:
            return {}
        assert self.members is not None
        members = await self.members.list_members()
        return members

    async def _candidates(self, latest: bytes) -> list[str]:
        """Peers to try for ``latest``; waits briefly for a member to announce it (a peer that
        just moved ``latest`` publishes its new transition a moment after the CAS)."""
        pulse = self._members_pulse
        ordered, found = order_candidates(
            await self._list_members(), self.node_id, latest, self.static_peers, exclude=self._own
        )
        if found or not self.membership:
            return ordered
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pulse.wait(), MEMBER_WAIT)
            ordered, _ = order_candidates(
                await self._list_members(),
                self.node_id,
                latest,
                self.static_peers,
                exclude=self._own,
            )
        return ordered

    async def ready_peer_exists(self) -> bool:
        """Whether another coordinator verifiably serves the store's ``latest`` right now.

        Membership keys of crashed coordinators outlive them by their lease, so each candidate
        is attested (coordinator policy of the latest manifest, attested transition equal to
        ``latest``) before it counts. UserAPI refuses a non-forced user recovery when this is
        true: a user recovery mints a new mesh key and would split the deployment.
        """
        guard = self.deps.guard
        try:
            latest = await guard.history.get_latest()
        except HistoryError:
            return False  # an unreadable latest: no peer can be serving it
        if latest is None:
            return False
        policy = self._policy_of(await self._manifest_for(latest))
        ordered, _ = order_candidates(
            await self._list_members(),
            self.node_id,
            latest.transition_hash,
            self.static_peers,
            exclude=self._own,
        )
        for peer in ordered:
            try:
                async with await AttestedChannel.connect(
                    peer, policy, timeout=PROBE_TIMEOUT
                ) as chan:
                    att = chan.attestation
                    if (
                        att.latest_transition_hash == latest.transition_hash
                        and att.deployment == self.deps.deployment
                    ):
                        return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("peer %s is not a ready peer: %s", peer, type(exc).__name__)
        return False

    # -- recovery ---------------------------------------------------------------------------

    async def _recovery_loop(self) -> None:
        attempt = 0
        while True:
            timeout = SWEEP_INTERVAL if attempt == 0 else RETRY_BACKOFF.delay(attempt)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self.deps.is_ready():
                attempt = 0
                continue
            try:
                outcome = await self.recover_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("peer recovery attempt failed: %s", type(exc).__name__)
                outcome = False
            if outcome is None or outcome:
                attempt = 0  # recovered, or nothing to recover (no history yet)
                if outcome and self.membership:
                    with contextlib.suppress(Exception):
                        await self._publish_if_changed()  # tell peers at once
            else:
                attempt += 1

    async def recover_once(self) -> bool | None:
        """One pass over the known peers: True when recovered, False when no peer could be
        used, None when the store has no history (nothing to recover)."""
        guard = self.deps.guard
        latest = await guard.history.get_latest()
        if latest is None:
            return None
        held = guard.current()
        if held is not None and held.knows(latest.transition_hash):
            # Our own transition or an ancestor: a rollback (DESIGN §12). Nothing to adopt; the
            # watcher counted it and a fresh coordinator writes its own latest back.
            return False
        self.attempts += 1
        candidates = await self._candidates(latest.transition_hash)
        if not candidates:
            if await self._rekey_if_orphaned(latest):
                return True
            if not self._idle_logged:
                log.warning(
                    "no ready peer to recover from; waiting for one "
                    "(or for a seed-share owner's recovery)"
                )
                self._idle_logged = True
            return False
        self._idle_logged = False
        for peer in candidates:
            try:
                await self._recover_from(peer, latest)
            except asyncio.CancelledError:
                raise
            except (AttestationFailed, EvidenceRejected, RecoveryRejected) as exc:
                self._peer_log(logging.WARNING, peer, "not_trusted", str(exc))
            except PeerRecoveryFailed as exc:
                self._peer_log(logging.INFO, peer, "not_usable", str(exc))
            except ConcurrentUpdate:
                log.info("the history moved while recovering; retrying", extra={"peer": peer})
                return False
            except NotDescendant as exc:
                log.error("refusing to recover: %s", exc)
                return False
            except grpc.aio.AioRpcError as exc:
                # Logged by reason: the peer's message is for people and may be reworded.
                reason = reason_of(exc) or exc.code().name.lower()
                self._peer_log(logging.INFO, peer, "refused", reason)
            except Exception as exc:
                self._peer_log(logging.INFO, peer, "unavailable", type(exc).__name__)
            else:
                for problem in ("not_trusted", "not_usable", "refused", "unavailable"):
                    self._repeats.reset((peer, problem))
                log.info(
                    "recovered from peer %s",
                    peer,
                    extra={
                        "event": "recovered",
                        "source": "peer",
                        "peer": peer,
                        "transition": latest.transition_hash.hex(),
                    },
                )
                self.recoveries += 1
                self.deps.on_recovery("peer")
                return True
        return await self._rekey_if_orphaned(latest)

    async def _rekey_if_orphaned(self, latest: SignedLatest) -> bool:
        """Re-key ``latest`` with our own seed when its maker died before handing its mesh key
        to anyone (see the module docstring for when this is safe). True when we did."""
        guard = self.deps.guard
        old = guard.current()
        if not self.membership or old is None:
            return False  # no seed here, or no membership to tell a dead maker from a slow one
        members = {
            k: m
            for k, v in (await self._list_members()).items()
            if k != self.node_id and (m := Member.decode(k, v)) is not None
        }
        now = asyncio.get_running_loop().time()
        if any(m.ready for m in members.values()):
            self._orphaned = None
            return False
        if self._orphaned is None or self._orphaned[0] != latest.transition_hash:
            self._orphaned = (latest.transition_hash, now)
            return False
        if now - self._orphaned[1] < ORPHAN_GRACE:
            return False
        try:
            latest.verify(old.seed_engine.history_signing_key.public_key())
        except Exception:
            return False  # another seed: only its owners can help
        manifest = await self._manifest_for(latest)
        if not await self._admitted_by(manifest):
            log.warning("orphaned transition: the latest manifest does not admit this coordinator")
            return False
        claim = f"rekey/{latest.transition_hash.hex()}"
        store = self.deps.store
        try:
            holder = await store.get(claim) if await store.has(claim) else b""
            if holder and holder.decode(errors="replace") in members:
                return False  # a live member is re-keying it: recover from it afterwards
            await store.compare_and_swap(claim, holder, self.node_id.encode())
        except ConcurrentUpdate:
            return False

        async def authorize(m: Manifest) -> tuple[SeedEngine, None]:
            if m.digest != manifest.digest:
                raise ConcurrentUpdate("the history moved during re-keying")
            return old.seed_engine, None

        await guard.reset_state(old, authorize)
        self.rekeys += 1
        self.deps.on_recovery("rekey")
        log.warning(
            "re-keyed orphaned transition %s: its mesh key was lost with the coordinator that "
            "made it; new mesh CA issued",
            latest.transition_hash.hex()[:16],
        )
        return True

    async def _admitted_by(self, manifest: Manifest) -> bool:
        try:
            verified = await self.deps.own_evidence_under(manifest)
        except EvidenceRejected:
            return False
        return verified.policy_hash == manifest.coordinator_policy_hash

    async def recover_from(self, peer: str) -> None:
        """Recover from one given peer (mesh address) now, whatever the loop is doing.

        Raises NotInitialized (no history), AttestationFailed / EvidenceRejected (not an
        attested coordinator of the latest manifest), PeerRecoveryFailed (it does not serve
        the store's ``latest``, or its secrets do not fit it), ConcurrentUpdate (the history
        moved meanwhile), RecoveryRejected (the seed does not sign ``latest``), or the
        transport's error when the peer cannot be reached.
        """
        guard = self.deps.guard
        latest = await guard.history.get_latest()
        if latest is None:
            raise NotInitialized()
        await self._recover_from(peer, latest)
        self.recoveries += 1
        self.deps.on_recovery("peer")

    def _policy_of(self, manifest: Manifest) -> CoordinatorPolicy:
        """What a coordinator of ``manifest`` must attest to (peers and requesters alike)."""
        return CoordinatorPolicy(
            self.anchors, manifest.reference_values, manifest.coordinator_policy_hash
        )

    async def _manifest_for(self, latest: SignedLatest) -> Manifest:
        guard = self.deps.guard
        _, manifest = await guard.latest_manifest(latest)
        return manifest

    async def _recover_from(self, peer: str, latest: SignedLatest) -> None:
        guard = self.deps.guard
        old = guard.current()
        latest_hash = latest.transition_hash
        manifest = await self._manifest_for(latest)
        policy = self._policy_of(manifest)
        async with await AttestedChannel.connect(peer, policy, timeout=PEER_TIMEOUT) as chan:
            if chan.attestation.latest_transition_hash != latest_hash:
                raise PeerRecoveryFailed("peer does not serve the store's latest transition")
            if chan.attestation.deployment != self.deps.deployment:
                # Attested (bound into the state digest): a coordinator of another deployment
                # whose keys were copied into our store is never adopted (DESIGN §12).
                raise PeerRecoveryFailed(
                    f"peer serves deployment {chan.attestation.deployment!r}, "
                    f"not {self.deps.deployment!r}"
                )
            token = (await chan.attest.Challenge(pb.ChallengeRequest(), timeout=PEER_TIMEOUT)).token
            # Between coordinators the secrets always travel under the hybrid post-quantum
            # suite; the offer is bound into the evidence, so no one can strip it.
            _, public = generate_keypair()
            pq_private, pq_public = generate_pq_keypair()
            offer = SuiteOffer((HpkeSuite.MLKEM768_X25519,), pq_public)
            evidence = await self.deps.evidence(
                peer_recover_report_data(public, token, self.deps.deployment, offer.binding())
            )
            resp = await chan.mesh.Recover(
                pb.MeshRecoverRequest(
                    evidence=evidence,
                    hpke_public_key=public,
                    token=token,
                    hpke_suites=[pb.HPKE_SUITE_MLKEM768_X25519],
                    pq_hpke_public_key=pq_public,
                ),
                timeout=PEER_TIMEOUT,
            )
        try:
            check_answer(offer, resp.hpke_suite)
        except ConcordError as exc:
            raise PeerRecoveryFailed(str(exc)) from None
        secrets = PeerSecrets.decode(
            open_sealed_pq(pq_private, PURPOSE_PEER_RECOVER, resp.sealed_secrets)
        )
        if (
            secrets.latest_transition_hash != latest_hash
            or secrets.manifest_hash != manifest.digest
        ):
            raise PeerRecoveryFailed("peer secrets are for another transition or manifest")
        mesh_key = serialization.load_der_private_key(secrets.mesh_ca_key, password=None)
        if not isinstance(mesh_key, ec.EllipticCurvePrivateKey):
            raise PeerRecoveryFailed("peer sent a mesh key that is not an EC key")
        engine = SeedEngine(secrets.seed, secrets.salt)

        async def authorize(m: Manifest) -> tuple[SeedEngine, ec.EllipticCurvePrivateKey]:
            # reset_state read ``latest`` before calling us and re-reads it afterwards; the
            # chain is linear, so if ``latest`` is the peer's transition now and unchanged
            # then, reset_state adopts exactly the transition this mesh key belongs to.
            if m.digest != secrets.manifest_hash:
                raise ConcurrentUpdate("the history moved during peer recovery")
            now = await guard.history.get_latest()
            if now is None or now.transition_hash != secrets.latest_transition_hash:
                raise ConcurrentUpdate("the history moved during peer recovery")
            return engine, mesh_key

        await guard.reset_state(old, authorize)
