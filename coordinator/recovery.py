"""Peer discovery and event-driven peer recovery (DESIGN §8).

As soon as the watcher marks the State stale (or at start with a history but no State), pick a
ready peer, verify it over the attested channel as a coordinator of the manifest that the store's
``latest`` points to, ask it for the secrets (sealed to a fresh HPKE key, bound into our own
evidence) and reset the State with them. Retries use jittered exponential back-off; a periodic
sweep catches anything an event missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.anchors import TrustAnchors
from attestation.binding import peer_recover_report_data
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client import AttestationFailed, AttestedChannel, CoordinatorPolicy
from coordinator.manifest import Manifest
from coordinator.sealing import PURPOSE_PEER_RECOVER, PeerSecrets, generate_keypair, open_sealed
from coordinator.seedengine import SeedEngine
from coordinator.state import RecoveryRejected

if TYPE_CHECKING:
    from coordinator.server import CoordinatorServer

log = logging.getLogger("concord.recovery")

MEMBER_TTL = 5
SWEEP_INTERVAL = 5.0
BACKOFF_BASE = 0.05
BACKOFF_MAX = 2.0


class PeerRecoveryFailed(Exception):
    pass


class PeerRecovery:
    def __init__(
        self, server: CoordinatorServer, anchors: TrustAnchors, *, membership: bool
    ) -> None:
        self.server = server
        self.anchors = anchors
        self.membership = membership
        self.node_id = server.config.node_id or uuid.uuid4().hex[:12]
        self.static_peers = tuple(server.config.peers)
        self._wake = asyncio.Event()
        self._published: bool | None = None
        self._members: dict[str, dict[str, Any]] = {}

    @classmethod
    def create(cls, server: CoordinatorServer, anchors: TrustAnchors) -> PeerRecovery | None:
        """None for a lone coordinator (no shared membership store, no static peers)."""
        membership = hasattr(server.store, "put_member")
        if not membership and not server.config.peers:
            return None
        return cls(server, anchors, membership=membership)

    @property
    def mesh_address(self) -> str:
        return self.server.config.advertise_mesh_addr or self.server.addresses["mesh"]

    async def start(self) -> list[asyncio.Task[Any]]:
        tasks = [asyncio.create_task(self._recovery_loop(), name="peer-recovery")]
        if self.membership:
            await self._publish()
            tasks.append(asyncio.create_task(self._membership_loop(), name="membership"))
        self._wake.set()  # a history may already exist: try at once
        return tasks

    async def stop(self) -> None:
        if self.membership:
            with contextlib.suppress(Exception):
                await self.server.store.stop_member(self.node_id)  # type: ignore[union-attr]

    def trigger(self) -> None:
        self._wake.set()

    # -- membership -------------------------------------------------------------------------

    async def _publish(self) -> None:
        ready = self.server.is_ready()
        value = json.dumps({"mesh_addr": self.mesh_address, "ready": ready}).encode()
        await self.server.store.put_member(self.node_id, value, MEMBER_TTL)  # type: ignore[union-attr]
        self._published = ready

    async def _membership_loop(self) -> None:
        """Keep our readiness published (cheap: only changes are written)."""
        while True:
            try:
                if self.server.is_ready() != self._published:
                    await self._publish()
            except Exception as exc:
                log.warning("membership update failed: %s", type(exc).__name__)
            await asyncio.sleep(0.05)

    async def _peers(self) -> list[str]:
        peers: list[str] = []
        if self.membership:
            members = await self.server.store.list_members()  # type: ignore[union-attr]
            for member_id, raw in members.items():
                if member_id == self.node_id:
                    continue
                try:
                    info = json.loads(raw)
                except ValueError:
                    continue
                if info.get("ready") and isinstance(info.get("mesh_addr"), str):
                    peers.append(info["mesh_addr"])
        random.shuffle(peers)
        return peers + [p for p in self.static_peers if p not in peers]

    async def ready_peer_exists(self) -> bool:
        if not self.membership:
            return False
        try:
            return bool([p for p in await self._peers() if p not in self.static_peers])
        except Exception:
            return False

    # -- recovery ---------------------------------------------------------------------------

    async def _recovery_loop(self) -> None:
        attempt = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SWEEP_INTERVAL)
            self._wake.clear()
            if self.server.is_ready():
                attempt = 0
                continue
            try:
                if await self.recover_once():
                    attempt = 0
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("peer recovery attempt failed: %s: %s", type(exc).__name__, exc)
            attempt += 1
            delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(attempt, 10)) * random.uniform(
                0.5, 1.0
            )
            await asyncio.sleep(delay)
            self._wake.set()

    async def recover_once(self) -> bool:
        """One pass over the known peers; True when the State is fresh afterwards."""
        guard = self.server.guard
        assert guard is not None
        latest = await guard.history.get_latest()
        if latest is None:
            return False  # uninitialised: nothing to recover
        for peer in await self._peers():
            try:
                await self._recover_from(peer, latest.transition_hash)
                log.info("recovered from peer %s", peer)
                self.server.metrics.recoveries.labels("peer").inc()
                return True
            except (AttestationFailed, PeerRecoveryFailed, RecoveryRejected) as exc:
                log.warning("peer %s refused for recovery: %s", peer, exc)
            except Exception as exc:
                log.info("peer %s unavailable for recovery: %s", peer, type(exc).__name__)
        return False

    async def _recover_from(self, peer: str, latest_hash: bytes) -> None:
        server = self.server
        guard, coord = server.guard, server.coord
        assert guard is not None and coord is not None
        old = guard.current()
        transition = await guard.history.get_transition(latest_hash)
        manifest = Manifest.parse(await guard.history.get_manifest(transition.manifest_hash))
        policy = CoordinatorPolicy(
            self.anchors, manifest.reference_values, manifest.coordinator_policy_hash
        )
        async with await AttestedChannel.connect(peer, policy) as chan:
            if chan.attestation.latest_transition_hash != latest_hash:
                raise PeerRecoveryFailed("peer is not at the store's latest transition")
            token = (await chan.attest.Challenge(pb.ChallengeRequest(), timeout=10)).token
            private, public = generate_keypair()
            evidence = await coord.evidence(peer_recover_report_data(public, token))
            resp = await chan.mesh.Recover(
                pb.MeshRecoverRequest(evidence=evidence, hpke_public_key=public, token=token),
                timeout=10,
            )
        secrets = PeerSecrets.decode(
            open_sealed(private, PURPOSE_PEER_RECOVER, resp.sealed_secrets)
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
            if m.digest != secrets.manifest_hash:
                raise RecoveryRejected("the history moved during peer recovery")
            return engine, mesh_key

        await guard.reset_state(old, authorize)
