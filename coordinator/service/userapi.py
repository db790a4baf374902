"""UserAPI: the workload owner sets and reads the manifest history; a seed-share owner recovers
a coordinator that has no usable state."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization

from attestation.cache import BoundedCache
from attestation.errors import EvidenceRejected
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc as pb_grpc
from coordinator.core.authz import deployment_id, public_spki
from coordinator.core.history import HistoryError, MissingBlob
from coordinator.core.limits import NONCE_SIZE
from coordinator.core.manifest import Manifest, require_manifest_size
from coordinator.core.rules import (
    CoordinatorNotAdmitted,
    PolicyDocumentMissing,
    UpdateRequest,
    authorise_update,
    authorise_user_recovery,
    check_first_manifest,
    check_no_ready_peer,
    check_recovery_manifest,
    check_update_manifest,
    missing_policies,
    require_admits_coordinator,
    require_recovery_mode,
    require_size,
)
from coordinator.core.sealing import (
    PURPOSE_USER_RECOVER,
    UserRecoveryShare,
    decode_user_recovery,
    open_sealed,
)
from coordinator.core.seedengine import SeedEngine, SeedShareDocument
from coordinator.core.state import NotInitialized, RecoveryRejected, Stale, State
from coordinator.core.threshold import SeedShare, ShareCollector, ShareSetReset, ThresholdError
from coordinator.service.context import Coordinator, rpc

HASH_SIZE = 32


class UserService(pb_grpc.UserAPIServicer):
    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self._manifests_cache: tuple[State, pb.GetManifestsResponse] | None = None
        # Policy hashes per manifest digest: manifests are immutable, so a history walk after an
        # update parses only the manifests it has not seen before.
        self._policy_hashes: BoundedCache[bytes, tuple[str, ...]] = BoundedCache(100_000)
        # Partial threshold shares: this process's memory only, sealed, with a deadline.
        self.shares = ShareCollector(clock=coord.clock)

    async def _state_or_none(self) -> State | None:
        try:
            return await self.coord.guard.get_state()
        except NotInitialized:
            return None

    @rpc()
    async def SetManifest(
        self, request: pb.SetManifestRequest, context: Any
    ) -> pb.SetManifestResponse:
        # Cheap checks first (DESIGN §13): the size was bounded before the request was decoded,
        # an update is authorised from the raw bytes, and only then is the manifest parsed, off
        # the event loop.
        raw = request.manifest
        require_manifest_size(raw)
        state = await self._state_or_none()
        if state is None:
            check_first_manifest(request.previous_transition_hash)
            manifest = await self.coord.offload(Manifest.parse, raw)
            await self._require_policies(manifest, request.policies)
            await self._require_admits_self(manifest)
            new = await self.coord.guard.update_state(
                None, raw, list(request.policies), parsed=manifest
            )
            doc = await self.coord.offload(
                SeedShareDocument.create,
                new.seed_engine,
                manifest.seedshare_owner_keys,
                manifest.seedshare_threshold,
                new.deployment_id,
                manifest.seedshare_owner_mlkem_keys,
            )
            return _set_response(new, doc.to_json())
        authorise_update(
            state.manifest,
            state.transition.hash,
            UpdateRequest(
                manifest_raw=raw,
                previous_transition_hash=request.previous_transition_hash,
                owner_public_key=request.owner_public_key,
                signature=request.signature,
            ),
            state.deployment_id,
        )
        manifest = await self.coord.offload(Manifest.parse, raw)
        check_update_manifest(state.manifest, manifest)
        await self._require_policies(manifest, request.policies)
        new = await self.coord.guard.update_state(
            state, raw, list(request.policies), parsed=manifest
        )
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
                hashes = await self.coord.offload(_policy_hashes_of, raw)
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
            deployment_id=state.deployment_id,
        )
        self._manifests_cache = (state, response)
        return response

    @rpc()
    async def GetHistory(
        self, request: pb.GetHistoryRequest, context: Any
    ) -> pb.GetHistoryResponse:
        """The store's chain as it is (unverified): a seed-share owner checks it with the key
        derived from the seed before naming its latest in a recovery."""
        history = self.coord.guard.history
        try:
            latest = await history.get_latest()
        except HistoryError:
            latest = None  # unreadable: to the owner it is as good as deleted
        if latest is None:
            return pb.GetHistoryResponse()
        chain = await history.walk(latest.transition_hash)
        return pb.GetHistoryResponse(
            manifests=[await history.get_manifest(t.manifest_hash) for t in chain],
            latest_transition_hash=latest.transition_hash,
            latest_signature=latest.signature,
        )

    @rpc()
    async def Recover(self, request: pb.UserRecoverRequest, context: Any) -> pb.UserRecoverResponse:
        nonce = require_size(request.nonce, NONCE_SIZE, "nonce")
        expected = require_size(
            request.expected_latest_transition_hash, HASH_SIZE, "expected_latest_transition_hash"
        )
        guard = self.coord.guard
        old: State | None = None
        try:
            await guard.get_state()
        except Stale as stale:
            old, is_stale = stale.state, True
        except NotInitialized:
            if not await guard.history.has_history():
                raise
            is_stale = True  # a history whose latest was deleted: only a named recovery helps
        else:
            is_stale = False
        if not is_stale:
            self.shares.reset()  # recovered meanwhile (say, from a peer): partial shares go
        require_recovery_mode(is_stale)
        # The store's latest, or the transition the owner names when the store lost it or was
        # rolled back behind it (unverified: the seed decides below).
        manifest = (await guard.recovery_target(expected)).manifest
        authorise_user_recovery(
            manifest,
            request.seedshare_owner_public_key,
            request.signature,
            nonce,
            request.sealed_secret,
            expected,
        )
        peers = self.coord.ready_peer_exists
        if not request.force and peers is not None:
            check_no_ready_peer(request.force, await peers())
        secret = decode_user_recovery(
            open_sealed(self.coord.hpke_private, PURPOSE_USER_RECOVER, request.sealed_secret)
        )
        progress = None
        if isinstance(secret, UserRecoveryShare):
            if manifest.seedshare_threshold < 2:
                raise ThresholdError("this deployment recovers from whole seeds (threshold 1)")
            owners = manifest.seedshare_owner_keys_der
            progress = self.shares.add(
                SeedShare.decode(secret.share),
                signer_index=owners.index(bytes(request.seedshare_owner_public_key)) + 1,
                expected=expected,
                threshold=manifest.seedshare_threshold,
                known_deployment_id=old.deployment_id if old is not None else None,
            )
            log = logging.getLogger("concord.user")
            if progress.dropped:
                log.warning(
                    "dropped partial recovery shares",
                    extra={"event": "recovery_shares_dropped", "count": progress.dropped},
                )
            if progress.seed is None:
                log.info(
                    "recovery share accepted",
                    extra={
                        "event": "recovery_share",
                        "received": progress.received,
                        "needed": progress.needed,
                    },
                )
                return _share_response(progress.received, progress.needed, progress.dropped)
            engine = SeedEngine(progress.seed, secret.salt)
            if deployment_id(public_spki(engine.root_ca_key)) != progress.deployment_id:
                # One of the k shares was wrong: the seed is not the deployment's.
                raise ShareSetReset(
                    f"the {progress.needed} shares do not reconstruct this deployment's seed; "
                    "the partial set was dropped, every owner must submit again"
                )
        else:
            engine = SeedEngine(secret.seed, secret.salt)

        async def authorize(m: Manifest) -> tuple[SeedEngine, None]:
            check_recovery_manifest(manifest.digest, m.digest)
            return engine, None

        try:
            await guard.reset_state(old, authorize, expected=expected)
        except RecoveryRejected:
            if progress is None:
                raise
            # The k shares did not make the seed that signs this history: one was wrong. The
            # set is already empty; every owner submits again.
            raise ShareSetReset(
                f"the {progress.needed} shares do not reconstruct this deployment's seed; "
                "the partial set was dropped, every owner must submit again"
            ) from None
        self.coord.metrics.recoveries.labels("user").inc()
        logging.getLogger("concord.user").info(
            "recovered by a seed-share owner",
            extra={"event": "recovered", "source": "user", "forced": request.force},
        )
        if progress is not None:
            return _share_response(progress.received, progress.needed, progress.dropped)
        return pb.UserRecoverResponse()


def _share_response(received: int, needed: int, dropped: int) -> pb.UserRecoverResponse:
    return pb.UserRecoverResponse(
        shares_received=received, shares_needed=needed, shares_dropped=dropped
    )


def _policy_hashes_of(raw: bytes) -> tuple[str, ...]:
    return tuple(Manifest.parse(raw).policies)


def _set_response(state: State, seed_shares: bytes) -> pb.SetManifestResponse:
    return pb.SetManifestResponse(
        root_ca_pem=state.ca.root_pem,
        mesh_ca_pem=state.ca.mesh_ca_pem,
        transition_hash=state.transition.hash,
        seed_share_document=seed_shares,
        deployment_id=state.deployment_id,
    )
