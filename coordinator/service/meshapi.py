"""MeshAPI: workloads trade evidence for a mesh certificate (and their sealed secret); attested
peer coordinators of the same manifest trade evidence for the deployment's secrets."""

from __future__ import annotations

import time
from typing import Any

from cryptography.hazmat.primitives import serialization

from attestation.binding import peer_recover_report_data
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc as pb_grpc
from coordinator.core.challenge import check_token
from coordinator.core.issuance import IssuedCertificate, Issuer, IssueRequest
from coordinator.core.rules import authorise_peer_recovery, require_size
from coordinator.core.sealing import PUBLIC_KEY_SIZE, PURPOSE_PEER_RECOVER, PeerSecrets, seal
from coordinator.service.context import Coordinator, rpc


def _issue(job: tuple[Issuer, IssueRequest]) -> IssuedCertificate:
    issuer, request = job
    return issuer.issue(request)


class MeshService(pb_grpc.MeshAPIServicer):
    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord

    @rpc()
    async def NewMeshCert(
        self, request: pb.NewMeshCertRequest, context: Any
    ) -> pb.NewMeshCertResponse:
        state = await self.coord.fresh_for_mesh()
        require_size(request.hpke_public_key, PUBLIC_KEY_SIZE, "hpke_public_key")
        issuer = self.coord.issuer_for(state)
        started = time.perf_counter()
        job = IssueRequest(
            evidence=request.evidence,
            leaf_spki=request.leaf_public_key,
            hpke_public_key=request.hpke_public_key,
            token=request.token,
            now=self.coord.clock(),
        )
        issued: IssuedCertificate = await self.coord.runner.submit((issuer, job))
        self.coord.metrics.issuance.observe(time.perf_counter() - started)
        self.coord.metrics.certificates.labels(issued.tee).inc()
        return pb.NewMeshCertResponse(
            certificate_chain_pem=issued.chain_pem,
            mesh_ca_pem=issued.mesh_ca_pem,
            root_ca_pem=issued.root_ca_pem,
            sealed_workload_secret=issued.sealed_workload_secret,
        )

    @rpc()
    async def Recover(self, request: pb.MeshRecoverRequest, context: Any) -> pb.MeshRecoverResponse:
        state = await self.coord.fresh_for_mesh()
        hpke_pub = require_size(request.hpke_public_key, PUBLIC_KEY_SIZE, "hpke_public_key")
        now = self.coord.clock()
        check_token(
            state.seed_engine.challenge_key, request.token, state.transition.hash, now.timestamp()
        )
        expected = peer_recover_report_data(hpke_pub, request.token)
        verified = self.coord.verifier.verify(
            request.evidence, state.manifest.reference_values, expected, now
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
        sealed = seal(hpke_pub, PURPOSE_PEER_RECOVER, secrets.encode())
        return pb.MeshRecoverResponse(sealed_secrets=sealed)
