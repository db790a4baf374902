"""UserAPI: the workload owner sets and reads the manifest history; a seed-share owner recovers
a coordinator that has no usable state."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization

from attestation.cache import BoundedCache
from attestation.errors import EvidenceRejected
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc as pb_grpc
from coordinator.core.authz import (
    recover_message,
    set_manifest_message,
    spki_digest,
    verify_owner,
    verify_seedshare,
)
from coordinator.core.history import ZERO_HASH, MissingBlob, transition_hash
from coordinator.core.limits import NONCE_SIZE
from coordinator.core.manifest import Manifest
from coordinator.core.sealing import PURPOSE_USER_RECOVER, UserRecoverySecret, open_sealed
from coordinator.core.seedengine import SeedEngine, SeedShareDocument
from coordinator.core.state import NotInitialized, Stale, State
from coordinator.service.context import Coordinator, Refused, require_size, rpc

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
            if request.previous_transition_hash not in (b"", ZERO_HASH):
                raise Refused(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "concurrent update: there is no history yet, previous_transition_hash must be empty",
                )
            await self._require_policies(manifest, request.policies)
            await self._require_admits_self(manifest)
            new = await self.coord.guard.update_state(
                None, request.manifest, list(request.policies)
            )
            doc = SeedShareDocument.create(new.seed_engine, manifest.seedshare_owner_keys)
            return _set_response(new, doc.to_json())
        self._authorise_update(state, manifest, request)
        await self._require_policies(manifest, request.policies)
        new = await self.coord.guard.update_state(state, request.manifest, list(request.policies))
        return _set_response(new, b"")

    async def _require_policies(self, manifest: Manifest, policies: Sequence[bytes]) -> None:
        """Every policy the manifest references is sent now or already stored, so GetManifests
        can always hand a verifier the complete history (unreferenced ones are refused later)."""
        given = {hashlib.sha256(raw).hexdigest() for raw in policies}
        history = self.coord.guard.history
        for hex_digest in manifest.policies:
            if hex_digest in given:
                continue
            try:
                await history.get_policy(bytes.fromhex(hex_digest))
            except MissingBlob:
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"policies: missing the policy document of Policies.{hex_digest}",
                ) from None

    async def _require_admits_self(self, manifest: Manifest) -> None:
        """A first manifest that does not admit this very coordinator would leave a deployment
        no client can attest and no peer can recover from: refuse it before anything is stored."""
        try:
            verified = await self.coord.own_evidence_under(manifest)
        except EvidenceRejected as exc:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"ReferenceValues: do not admit this coordinator ({exc})",
            ) from None
        if verified.policy_hash != manifest.coordinator_policy_hash:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Policies: this coordinator runs policy {verified.policy_hash.hex()}, which is not "
                "the manifest's coordinator policy",
            )

    @staticmethod
    def _authorise_update(state: State, manifest: Manifest, request: pb.SetManifestRequest) -> None:
        current = state.manifest
        if not current.owner_key_digests:
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                "manifest updates are disabled: the current manifest has no WorkloadOwnerKeyDigests",
            )
        if (
            not request.owner_public_key
            or spki_digest(request.owner_public_key) not in current.owner_key_digests
        ):
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                "owner_public_key: not a workload owner of the current manifest",
            )
        if request.previous_transition_hash != state.transition.hash:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                "concurrent update: previous_transition_hash is not the latest transition",
            )
        if set(manifest.seedshare_owner_keys_der) != set(current.seedshare_owner_keys_der):
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "SeedshareOwnerPubKeys: seed-share owners may not change",
            )
        new_hash = transition_hash(manifest.digest, state.transition.hash)
        verify_owner(request.owner_public_key, request.signature, set_manifest_message(new_hash))

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
        try:
            await self.coord.guard.get_state()
        except Stale as stale:
            old = stale.state
        else:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION, "not in recovery mode: the state is fresh"
            )
        latest = await self.coord.guard.history.get_latest()
        if latest is None:
            raise NotInitialized()
        _, manifest = await self.coord.guard.latest_manifest(latest)
        owner = request.seedshare_owner_public_key
        if not manifest.is_seedshare_owner(owner):
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                "seedshare_owner_public_key: not a seed-share owner of the latest manifest",
            )
        verify_seedshare(owner, request.signature, recover_message(nonce, request.sealed_secret))
        peers = self.coord.ready_peer_exists
        if not request.force and peers is not None and await peers():
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                "a ready peer coordinator exists: it will recover this one; use force to override",
            )
        secret = UserRecoverySecret.decode(
            open_sealed(self.coord.hpke_private, PURPOSE_USER_RECOVER, request.sealed_secret)
        )
        engine = SeedEngine(secret.seed, secret.salt)

        async def authorize(m: Manifest) -> tuple[SeedEngine, None]:
            if m.digest != manifest.digest:
                raise Refused(
                    grpc.StatusCode.FAILED_PRECONDITION, "concurrent update: the history moved"
                )
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
