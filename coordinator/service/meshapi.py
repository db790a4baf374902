"""MeshAPI: workloads trade evidence for a mesh certificate (and their sealed secret); attested
peer coordinators of the same manifest trade evidence for the deployment's secrets."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from cryptography.hazmat.primitives import serialization

from attestation.binding import peer_recover_report_data
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc as pb_grpc
from coordinator.core.challenge import check_token, issue_token
from coordinator.core.issuance import IssuedCertificate, Issuer, IssueRequest
from coordinator.core.rules import authorise_peer_recovery, require_size
from coordinator.core.sealing import (
    PUBLIC_KEY_SIZE,
    PURPOSE_PEER_RECOVER,
    HpkeSuite,
    PeerSecrets,
    SuiteOffer,
    seal_for,
)
from coordinator.errors import ConcordError
from coordinator.service.context import Coordinator, rpc
from coordinator.service.feed import Snapshot, StateFeed, TooManyWatchers
from coordinator.service.status import rpc_status_of, wire_status

log = logging.getLogger("concord.mesh")


def _issue(job: tuple[Issuer, IssueRequest]) -> IssuedCertificate:
    issuer, request = job
    return issuer.issue(request)


class MeshService(pb_grpc.MeshAPIServicer):
    def __init__(self, coord: Coordinator, feed: StateFeed | None = None) -> None:
        self.coord = coord
        self.feed = feed or StateFeed(coord.guard, coord.deployment)

    @rpc()
    async def NewMeshCert(
        self, request: pb.NewMeshCertRequest, context: Any
    ) -> pb.NewMeshCertResponse:
        state = await self.coord.fresh_for_mesh()
        require_size(request.hpke_public_key, PUBLIC_KEY_SIZE, "hpke_public_key")
        offer = SuiteOffer.from_wire(request.hpke_suites, request.pq_hpke_public_key)
        suite = offer.choose(require_pq=self.coord.require_pq)
        issuer = self.coord.issuer_for(state)
        started = time.perf_counter()
        job = IssueRequest(
            evidence=request.evidence,
            leaf_spki=request.leaf_public_key,
            hpke_public_key=request.hpke_public_key,
            token=request.token,
            now=self.coord.clock(),
            offer=offer,
            suite=suite,
        )
        issued: IssuedCertificate = await self.coord.runner.submit((issuer, job))
        self.coord.metrics.issuance.observe(time.perf_counter() - started)
        self.coord.metrics.certificates.labels(issued.tee).inc()
        log.info(
            "mesh certificate issued",
            extra={
                "event": "certificate_issued",
                "tee": issued.tee,
                "transition": state.transition.hash,
            },
        )
        return pb.NewMeshCertResponse(
            certificate_chain_pem=issued.chain_pem,
            mesh_ca_pem=issued.mesh_ca_pem,
            root_ca_pem=issued.root_ca_pem,
            sealed_workload_secret=issued.sealed_workload_secret,
            mesh_ca_bundle_pem=self._bundle(issued.mesh_ca_pem),
            leaf_lifetime_seconds=self._lifetime_seconds,
            hpke_suite=_wire_suite(suite),
        )

    @property
    def _lifetime_seconds(self) -> int:
        return int(self.feed.config.leaf_lifetime.total_seconds())

    def _bundle(self, mesh_ca_pem: bytes) -> bytes:
        """The feed's bundle when it starts with this leaf's mesh CA (else just that CA: the
        feed has not caught up with a State installed a moment ago)."""
        bundle = self.feed.bundle()
        return bundle if bundle.startswith(mesh_ca_pem) else mesh_ca_pem

    def _event(self, snap: Snapshot, *, heartbeat: bool) -> pb.WatchEvent:
        token = b""
        if snap.ready and snap.state is not None and not snap.state.stale:
            now = self.coord.clock().timestamp()
            token = issue_token(
                snap.state.seed_engine.challenge_key, snap.state.transition.hash, now
            )
        return pb.WatchEvent(
            heartbeat=heartbeat,
            ready=bool(token),
            state_digest=snap.state_digest,
            latest_transition_hash=snap.latest_transition_hash,
            root_ca_pem=snap.root_ca_pem,
            mesh_ca_pem=snap.mesh_ca_pem,
            mesh_ca_bundle_pem=snap.mesh_ca_bundle_pem,
            token=token,
            leaf_lifetime_seconds=self._lifetime_seconds,
        )

    async def Watch(self, request: pb.WatchRequest, context: Any) -> AsyncIterator[pb.WatchEvent]:
        """The current snapshot at once, then one event per change and a heartbeat (with a fresh
        token) whenever the stream was quiet for the heartbeat interval. Bounded by the feed's
        gate: over the limit the call fails with RESOURCE_EXHAUSTED ``too_many_watchers``."""
        feed = self.feed
        if feed.closed:
            return
        try:
            feed.gate.enter()
        except ConcordError as exc:
            refusal = TooManyWatchers(str(exc))
            await context.abort_with_status(rpc_status_of(wire_status(refusal)))
            return
        try:
            snap = feed.snapshot()
            yield self._event(snap, heartbeat=False)
            while True:
                try:
                    snap = await asyncio.wait_for(
                        feed.wait_after(snap.version), feed.config.heartbeat
                    )
                    if feed.closed:
                        return  # shutting down: the stream ends cleanly
                    yield self._event(snap, heartbeat=False)
                except TimeoutError:
                    yield self._event(feed.snapshot(), heartbeat=True)
        finally:
            feed.gate.leave()

    @rpc()
    async def Recover(self, request: pb.MeshRecoverRequest, context: Any) -> pb.MeshRecoverResponse:
        state = await self.coord.fresh_for_mesh()
        hpke_pub = require_size(request.hpke_public_key, PUBLIC_KEY_SIZE, "hpke_public_key")
        offer = SuiteOffer.from_wire(request.hpke_suites, request.pq_hpke_public_key)
        suite = offer.choose(require_pq=self.coord.require_pq)
        now = self.coord.clock()
        check_token(
            state.seed_engine.challenge_key, request.token, state.transition.hash, now.timestamp()
        )
        # The requester's deployment name is bound too: one configured for another deployment
        # fails here, before any secret is sealed (DESIGN §12).
        expected = peer_recover_report_data(
            hpke_pub, request.token, self.coord.deployment, offer.binding()
        )
        # Size and token are checked; decoding and verifying the evidence is the expensive part
        # and runs in the CPU pool (DESIGN §13), as does sealing below.
        verified = await self.coord.offload(
            self.coord.verifier.verify,
            request.evidence,
            state.manifest.reference_values,
            expected,
            now,
        )
        authorise_peer_recovery(state.manifest, verified.policy_hash)
        secrets = PeerSecrets(
            seed=state.seed_engine.seed,
            salt=state.seed_engine.salt,
            mesh_ca_key=state.ca.mesh_key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            latest_transition_hash=state.transition.hash,
            manifest_hash=state.transition.manifest_hash,
        )
        sealed = await self.coord.offload(
            seal_for, suite, hpke_pub, offer, PURPOSE_PEER_RECOVER, secrets.encode()
        )
        return pb.MeshRecoverResponse(sealed_secrets=sealed, hpke_suite=_wire_suite(suite))


def _wire_suite(suite: HpkeSuite) -> pb.HpkeSuite:
    """Classic answers leave the field unset, so their bytes are what they always were."""
    if suite is HpkeSuite.X25519:
        return pb.HPKE_SUITE_UNSPECIFIED
    return pb.HPKE_SUITE_MLKEM768_X25519
