"""Attestation service (on both ports): evidence bound to this process's TLS and HPKE keys, the
caller's nonce and the state digest; and stateless challenge tokens."""

from __future__ import annotations

from typing import Any

from attestation.binding import attest_report_data, state_digest
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc as pb_grpc
from coordinator.core.challenge import issue_token
from coordinator.core.limits import NONCE_SIZE
from coordinator.core.rules import require_size
from coordinator.service.context import Coordinator, rpc


class AttestationService(pb_grpc.AttestationServicer):
    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord

    @rpc()
    async def Attest(self, request: pb.AttestRequest, context: Any) -> pb.AttestResponse:
        nonce = require_size(request.nonce, NONCE_SIZE, "nonce")
        state = self.coord.guard.current()
        token = b""
        if state is None:
            digest = state_digest(None, None, None)
            latest = root_pem = mesh_pem = b""
        else:
            if not state.stale:
                # The token rides along, so a join is Attest + NewMeshCert (DESIGN §15).
                now = self.coord.clock().timestamp()
                token = issue_token(state.seed_engine.challenge_key, state.transition.hash, now)
            ca = state.ca
            digest = state_digest(
                state.transition.hash, ca.root_der, ca.mesh_ca_der, self.coord.deployment
            )
            latest, root_pem, mesh_pem = state.transition.hash, ca.root_pem, ca.mesh_ca_pem
        report_data = attest_report_data(self.coord.tls_spki, self.coord.hpke_public, nonce, digest)
        evidence = await self.coord.evidence(report_data)
        return pb.AttestResponse(
            evidence=evidence,
            hpke_public_key=self.coord.hpke_public,
            state_digest=digest,
            latest_transition_hash=latest,
            root_ca_pem=root_pem,
            mesh_ca_pem=mesh_pem,
            deployment=self.coord.deployment,
            token=token,
        )

    @rpc()
    async def Challenge(self, request: pb.ChallengeRequest, context: Any) -> pb.ChallengeResponse:
        state = await self.coord.guard.get_state()
        now = self.coord.clock().timestamp()
        token = issue_token(state.seed_engine.challenge_key, state.transition.hash, now)
        return pb.ChallengeResponse(token=token)
