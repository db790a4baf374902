"""UserAPI: the workload owner sets and reads the manifest history; a seed-share owner recovers
a coordinator that has no usable state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization

from attestation.cache import BoundedCache
from attestation.errors import EvidenceRejected
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc as pb_grpc
from coordinator.core.history import MissingBlob
from coordinator.core.limits import NONCE_SIZE
from coordinator.core.manifest import Manifest
from coordinator.core.rules import (
    CoordinatorNotAdmitted,
    PolicyDocumentMissing,
    UpdateRequest,
    authorise_update,
    authorise_user_recovery,
    check_first_manifest,
    check_no_ready_peer,
    check_recovery_manifest,
    missing_policies,
    require_admits_coordinator,
    require_recovery_mode,
    require_size,
)
from coordinator.core.sealing import PURPOSE_USER_RECOVER, UserRecoverySecret, open_sealed
from coordinator.core.seedengine import SeedEngine, SeedShareDocument
from coordinator.core.state import NotInitialized, Stale, State
from coordinator.service.context import Coordinator, rpc

HASH_SIZE = 32


class UserService(pb_grpc.UserAPIServicer):
    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self._manifests_cache: tuple[State, pb.GetManifestsResponse] | None = None
        # Policy hashes per manifest digest: manifests are immutable, so a history walk after an
        # update parses only the manifests it has not seen before.
        self._policy_hashes: BoundedCache[bytes, tuple[str, ...]] = BoundedCache(100_000)

    async def _state_or_none(self) -> State | None:
        try:
            return await self.coord.guard.get_state()
        except NotInitialized:
            return None

    @rpc()
    async def SetManifest(
        self, request: pb.SetManifestRequest, context: Any
    ) -> pb.SetManifestResponse:
        manifest = Manifest.parse(request.manifest)
        state = await self._state_or_none()
        if state is None:
            check_first_manifest(request.previous_transition_hash)
            await self._require_policies(manifest, request.policies)
            await self._require_admits_self(manifest)
            new = await self.coord.guard.update_state(
                None, request.manifest, list(request.policies)
            )
            doc = SeedShareDocument.create(new.seed_engine, manifest.seedshare_owner_keys)
            return _set_response(new, doc.to_json())
        authorise_update(
            state.manifest,
            state.transition.hash,
            UpdateRequest(
                manifest=manifest,
                previous_transition_hash=request.previous_transition_hash,
                owner_public_key=request.owner_public_key,
                signature=request.signature,
            ),
        )
        await self._require_policies(manifest, request.policies)
        new = await self.coord.guard.update_state(state, request.manifest, list(request.policies))
        return _set_response(new, b"")

    async def _require_policies(self, manifest: Manifest, policies: Sequence[bytes]) -> None:
        """Every policy the manifest references is sent now or already stored, so GetManifests
        can always hand a verifier the complete history (unreferenced ones are refused later)."""
        history = self.coord.guard.history
        for hex_digest in missing_policies(manifest, policies):
            try:
                await history.get_policy(bytes.fromhex(hex_digest))
            except MissingBlob:
                raise PolicyDocumentMissing(hex_digest) from None

    async def _require_admits_self(self, manifest: Manifest) -> None:
        """A first manifest that does not admit this very coordinator would leave a deployment
        no client can attest and no peer can recover from: refuse it before anything is stored."""
        try:
            verified = await self.coord.own_evidence_under(manifest)
        except EvidenceRejected as exc:
            raise CoordinatorNotAdmitted(
                f"ReferenceValues: do not admit this coordinator ({exc})"
            ) from None
        require_admits_coordinator(manifest, verified.policy_hash)

    @rpc()
    async def GetManifests(
        self, request: pb.GetManifestsRequest, context: Any
    ) -> pb.GetManifestsResponse:
        state = await self.coord.guard.get_state()
        cached = self._manifests_cache
        if cached is not None and cached[0] is state:
            return cached[1]
        history = self.coord.guard.history
        chain = await history.walk(state.transition.hash)
        manifests = [await history.get_manifest(t.manifest_hash) for t in chain]
        policy_hashes: dict[str, None] = {}
        for transition, raw in zip(chain, manifests, strict=True):
            hashes = self._policy_hashes.get(transition.manifest_hash)
            if hashes is None:
                hashes = tuple(Manifest.parse(raw).policies)
                self._policy_hashes.put(transition.manifest_hash, hashes)
            for h in hashes:
                policy_hashes.setdefault(h, None)
        policies = [await history.get_policy(bytes.fromhex(h)) for h in policy_hashes]
        signing_pub = state.seed_engine.history_signing_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        response = pb.GetManifestsResponse(
            manifests=manifests,
            policies=policies,
            root_ca_pem=state.ca.root_pem,
            mesh_ca_pem=state.ca.mesh_ca_pem,
            latest_transition_hash=state.transition.hash,
            latest_signature=state.latest.signature,
            history_signing_public_key=signing_pub,
        )
        self._manifests_cache = (state, response)
        return response

    @rpc()
    async def Recover(self, request: pb.UserRecoverRequest, context: Any) -> pb.UserRecoverResponse:
        nonce = require_size(request.nonce, NONCE_SIZE, "nonce")
        old: State | None = None
        try:
            await self.coord.guard.get_state()
        except Stale as stale:
            old, is_stale = stale.state, True
        else:
            is_stale = False
        require_recovery_mode(is_stale)
        latest = await self.coord.guard.history.get_latest()
        if latest is None:
            raise NotInitialized()
        _, manifest = await self.coord.guard.latest_manifest(latest)
        authorise_user_recovery(
            manifest,
            request.seedshare_owner_public_key,
            request.signature,
            nonce,
            request.sealed_secret,
        )
        peers = self.coord.ready_peer_exists
        if not request.force and peers is not None:
            check_no_ready_peer(request.force, await peers())
        secret = UserRecoverySecret.decode(
            open_sealed(self.coord.hpke_private, PURPOSE_USER_RECOVER, request.sealed_secret)
        )
        engine = SeedEngine(secret.seed, secret.salt)

        async def authorize(m: Manifest) -> tuple[SeedEngine, None]:
            check_recovery_manifest(manifest.digest, m.digest)
            return engine, None

        await self.coord.guard.reset_state(old, authorize)
        self.coord.metrics.recoveries.labels("user").inc()
        return pb.UserRecoverResponse()


def _set_response(state: State, seed_shares: bytes) -> pb.SetManifestResponse:
    return pb.SetManifestResponse(
        root_ca_pem=state.ca.root_pem,
        mesh_ca_pem=state.ca.mesh_ca_pem,
        transition_hash=state.transition.hash,
        seed_share_document=seed_shares,
    )
