"""Negotiated hybrid post-quantum sealing over real gRPC/TLS (DESIGN §7): the workload secret
and the peer-recovery secrets travel under ML-KEM-768 + X25519 when offered, a stripped offer is
caught by the evidence binding, ``--require-pq`` refuses classic requesters, and a classic
request gets exactly the answer it always got."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from attestation.binding import mesh_cert_report_data, peer_recover_report_data
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client.channel import AttestedChannel
from coordinator.client.operations import join as client_join
from coordinator.core.authz import public_spki
from coordinator.core.sealing import (
    PURPOSE_PEER_RECOVER,
    PURPOSE_WORKLOAD_SECRET,
    HpkeSuite,
    PeerSecrets,
    PqPrivateKey,
    SuiteOffer,
    generate_keypair,
    generate_pq_keypair,
    open_sealed,
    open_sealed_pq,
)
from coordinator.core.seedengine import SeedEngine
from tests.integration.service_helpers import (  # noqa: F401  (fixtures)
    COORDINATOR_POLICY,
    DENIED,
    PRECONDITION,
    WEB_POLICY,
    Coordinators,
    Keys,
    MockTee,
    challenge,
    coordinators_fixture,
    deploy,
    expect_status,
    join,
    keys_fixture,
    mock_tee_fixture,
)

pytestmark = pytest.mark.timeout(90)

PQ = pb.HPKE_SUITE_MLKEM768_X25519


async def _pq_join_request(
    mesh: AttestedChannel, tee: MockTee, suites: list[int]
) -> tuple[pb.NewMeshCertRequest, X25519PrivateKey, PqPrivateKey]:
    """A NewMeshCert request offering ``suites`` (hybrid key always sent), bound honestly."""
    token = await challenge(mesh)
    leaf = ec.generate_private_key(ec.SECP256R1())
    spki = public_spki(leaf)
    x_private, x_public = generate_keypair()
    pq_private, pq_public = generate_pq_keypair()
    offer = SuiteOffer(tuple(HpkeSuite(s) for s in suites), pq_public)
    report = mesh_cert_report_data(spki, x_public, token, offer.binding())
    evidence = (await asyncio.to_thread(tee.provider(WEB_POLICY).evidence, report)).encode()
    request = pb.NewMeshCertRequest(
        evidence=evidence,
        leaf_public_key=spki,
        hpke_public_key=x_public,
        token=token,
        hpke_suites=[pb.HpkeSuite.Name(s) for s in suites],
        pq_hpke_public_key=pq_public,
    )
    return request, x_private, pq_private


async def test_workload_secret_travels_post_quantum_when_offered(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys
) -> None:
    dep = await deploy(coordinators, mock_tee, keys)
    try:
        expected = SeedEngine(dep.seed, dep.salt).workload_secret("web")
        request, _, pq_private = await _pq_join_request(dep.mesh, mock_tee, [PQ, 1])
        resp = await dep.mesh.mesh.NewMeshCert(request, timeout=20)
        assert resp.hpke_suite == PQ
        assert open_sealed_pq(pq_private, PURPOSE_WORKLOAD_SECRET, resp.sealed_workload_secret) == (
            expected
        )
        # A classic client (no offer) gets the classic box and no suite field at all.
        classic = await join(dep.mesh, mock_tee.provider(WEB_POLICY))
        assert "hpke_suite" not in {f.name for f, _ in classic.response.ListFields()}
        box = classic.response.sealed_workload_secret
        assert open_sealed(classic.hpke_private, PURPOSE_WORKLOAD_SECRET, box) == expected
    finally:
        await dep.close()


async def test_stripping_the_pq_offer_is_detected(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys
) -> None:
    """A man in the middle removes the hybrid suite so the secret would be sealed classically:
    the coordinator recomputes report data without the offer and the evidence no longer
    matches."""
    dep = await deploy(coordinators, mock_tee, keys)
    try:
        request, _, _ = await _pq_join_request(dep.mesh, mock_tee, [PQ, 1])
        stripped = pb.NewMeshCertRequest()
        stripped.CopyFrom(request)
        del stripped.hpke_suites[:]
        stripped.pq_hpke_public_key = b""
        await expect_status(dep.mesh.mesh.NewMeshCert(stripped), DENIED)
        classic_only = pb.NewMeshCertRequest()
        classic_only.CopyFrom(stripped)
        classic_only.hpke_suites.append(pb.HPKE_SUITE_X25519)
        await expect_status(dep.mesh.mesh.NewMeshCert(classic_only), DENIED)
        # The untouched request still works (the token is stateless).
        resp = await dep.mesh.mesh.NewMeshCert(request, timeout=20)
        assert resp.hpke_suite == PQ
    finally:
        await dep.close()


async def test_require_pq_refuses_classic_workloads_and_peers(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys, tmp_path: Path
) -> None:
    dep = await deploy(coordinators, mock_tee, keys)
    try:
        assert dep.server.coord is not None
        dep.server.coord.require_pq = True  # as `serve --require-pq` configures it
        await expect_status(
            join(dep.mesh, mock_tee.provider(WEB_POLICY)), PRECONDITION, "post-quantum"
        )
        token = await challenge(dep.mesh)
        _, public = generate_keypair()
        report = peer_recover_report_data(public, token, dep.mesh.attestation.deployment)
        provider = mock_tee.provider(COORDINATOR_POLICY)
        evidence = (await asyncio.to_thread(provider.evidence, report)).encode()
        classic_peer = pb.MeshRecoverRequest(evidence=evidence, hpke_public_key=public, token=token)
        await expect_status(dep.mesh.mesh.Recover(classic_peer), PRECONDITION, "post-quantum")
        # The client library offers the hybrid suite, so it joins; with require_pq it offers
        # nothing else.
        result = await client_join(
            dep.server.addresses["mesh"],
            mock_tee.provider(WEB_POLICY),
            policy=mock_tee.coordinator_policy(),
            out_dir=tmp_path / "join",
            timeout=20,
            require_pq=True,
        )
        assert result.has_workload_secret
        secret = (tmp_path / "join" / "workload-secret").read_bytes()
        assert secret == SeedEngine(dep.seed, dep.salt).workload_secret("web")
    finally:
        await dep.close()


async def test_peer_recovery_secrets_travel_post_quantum(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys
) -> None:
    dep = await deploy(coordinators, mock_tee, keys)
    try:
        deployment = dep.mesh.attestation.deployment
        provider = mock_tee.provider(COORDINATOR_POLICY)
        token = await challenge(dep.mesh)
        _, public = generate_keypair()
        pq_private, pq_public = generate_pq_keypair()
        offer = SuiteOffer((HpkeSuite.MLKEM768_X25519,), pq_public)
        report = peer_recover_report_data(public, token, deployment, offer.binding())
        evidence = (await asyncio.to_thread(provider.evidence, report)).encode()
        request = pb.MeshRecoverRequest(
            evidence=evidence,
            hpke_public_key=public,
            token=token,
            hpke_suites=[PQ],
            pq_hpke_public_key=pq_public,
        )
        resp = await dep.mesh.mesh.Recover(request, timeout=20)
        assert resp.hpke_suite == PQ
        secrets = PeerSecrets.decode(
            open_sealed_pq(pq_private, PURPOSE_PEER_RECOVER, resp.sealed_secrets)
        )
        assert secrets.seed == dep.seed
        stripped = pb.MeshRecoverRequest(evidence=evidence, hpke_public_key=public, token=token)
        await expect_status(dep.mesh.mesh.Recover(stripped), DENIED)
    finally:
        await dep.close()
