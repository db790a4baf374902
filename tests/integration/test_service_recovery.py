"""Recovery mode and user recovery over real gRPC/TLS (DESIGN §6, §7), and the client side of
the attested channel refusing a coordinator whose TLS key is not the attested one."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from attestation.errors import ReportDataMismatch
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client.channel import AttestedChannel, CoordinatorPolicyMismatch
from coordinator.core.authz import public_spki, recover_message, sign_seedshare
from coordinator.core.sealing import PURPOSE_WORKLOAD_SECRET, open_sealed, seal
from coordinator.service.server import CoordinatorServer
from tests.integration.service_helpers import (  # noqa: F401  (fixtures)
    DENIED,
    INVALID,
    PRECONDITION,
    WEB_POLICY,
    Coordinators,
    Keys,
    MockTee,
    connect,
    coordinators_fixture,
    deploy,
    expect_status,
    http_get,
    join,
    join_request,
    keys_fixture,
    manifest_bytes,
    manifest_dict,
    mock_tee_fixture,
    peer_recover_request,
    server_certificate,
    snapshot,
    update_request,
    user_recover_request,
)

pytestmark = pytest.mark.timeout(60)


async def _still_in_recovery(server: CoordinatorServer, tee: MockTee) -> None:
    user = await connect(server, "user", tee=tee)
    await expect_status(
        user.user.GetManifests(pb.GetManifestsRequest()), PRECONDITION, "recovery mode"
    )
    await user.close()
    assert server.guard is not None and server.guard.current() is None
    assert (await http_get(server.addresses["http"], "/readyz"))[0] == 503


async def test_user_recover_outside_recovery_mode(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys
) -> None:
    fresh = await coordinators.start()
    user = await connect(fresh, "user", tee=mock_tee)
    request = await user_recover_request(user, os.urandom(64), os.urandom(32), keys.seedshare)
    await expect_status(user.user.Recover(request), PRECONDITION, "not initialized")
    assert (await snapshot(fresh)).latest is None
    await user.close()

    dep = await deploy(coordinators, mock_tee, keys)
    before = await snapshot(dep.server)
    # Even the right seed is refused while the state is fresh: recovery is not a back door.
    request = await user_recover_request(dep.user, dep.seed, dep.salt, keys.seedshare, force=True)
    exc = await expect_status(dep.user.user.Recover(request), PRECONDITION, "not in recovery mode")
    assert dep.seed.hex() not in (exc.details() or "")
    assert await snapshot(dep.server) == before
    assert dep.server.guard is not None
    state = dep.server.guard.current()
    assert state is not None and state.transition.hash == dep.first.transition_hash
    await dep.close()


async def test_restart_recovery_mode_and_user_recovery(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = coordinators.new_store()
    dep = await deploy(coordinators, mock_tee, keys, store=store)
    web = await join(dep.mesh, mock_tee.provider(WEB_POLICY))
    secret = open_sealed(
        web.hpke_private, PURPOSE_WORKLOAD_SECRET, web.response.sealed_workload_secret
    )
    pending = await join_request(dep.mesh, mock_tee.provider(WEB_POLICY))  # valid until stop
    await dep.close()
    await coordinators.stop(dep.server)

    # -- a new process on the same store: recovery mode ----------------------------------------
    server = await coordinators.start(store)
    assert server.guard is not None
    await asyncio.wait_for(server.guard.stale_event.wait(), 10)
    user = await connect(server, "user", tee=mock_tee)
    mesh = await connect(server, "mesh", tee=mock_tee)
    # It has no State to attest to yet.
    assert user.attestation.latest_transition_hash == b""
    assert user.attestation.root_ca_pem == b""
    for call in (
        user.user.GetManifests(pb.GetManifestsRequest()),
        user.user.SetManifest(pb.SetManifestRequest(manifest=dep.manifest)),
        user.user.SetManifest(
            update_request(dep.manifest, [], dep.first.transition_hash, keys.owner)
        ),
        user.attest.Challenge(pb.ChallengeRequest()),
        mesh.attest.Challenge(pb.ChallengeRequest()),
        mesh.mesh.NewMeshCert(pending.request),
        mesh.mesh.Recover(pb.MeshRecoverRequest()),
    ):
        await expect_status(call, PRECONDITION, "recovery mode")
    assert (await http_get(server.addresses["http"], "/readyz"))[0] == 503
    _, metrics = await http_get(server.addresses["http"], "/metrics")
    assert b'concord_state{state="stale"} 1.0' in metrics
    before = await snapshot(server)
    assert before.latest is not None and before.latest[:32] == dep.first.transition_hash

    # -- refused recoveries change nothing -------------------------------------------------------
    messages: list[str] = []

    async def refused(request: pb.UserRecoverRequest, code: grpc.StatusCode, fragment: str) -> None:
        exc = await expect_status(user.user.Recover(request), code, fragment)
        messages.append(exc.details() or "")
        assert await snapshot(server) == before
        await _still_in_recovery(server, mock_tee)

    await refused(
        await user_recover_request(user, os.urandom(64), dep.salt, keys.seedshare), DENIED, "seed"
    )
    await refused(
        await user_recover_request(user, dep.seed, os.urandom(32), keys.seedshare), DENIED, "seed"
    )
    await refused(
        await user_recover_request(user, dep.seed, dep.salt, keys.other_seedshare),
        DENIED,
        "not a seed-share owner",
    )
    forged = await user_recover_request(user, dep.seed, dep.salt, keys.seedshare)
    forged.signature = sign_seedshare(
        keys.other_seedshare,
        recover_message(forged.nonce, forged.sealed_secret, forged.expected_latest_transition_hash),
    )
    await refused(forged, DENIED, "signature")
    replayed = await user_recover_request(user, dep.seed, dep.salt, keys.seedshare)
    replayed.nonce = os.urandom(32)  # the signature covers the nonce
    await refused(replayed, DENIED, "signature")
    # Sealed to another HPKE key (say, the old process's) and properly signed.
    misdirected = await user_recover_request(user, dep.seed, dep.salt, keys.seedshare)
    misdirected.sealed_secret = seal(dep.user.attestation.hpke_public_key, "user-recover", b"\xa0")
    misdirected.signature = sign_seedshare(
        keys.seedshare,
        recover_message(
            misdirected.nonce,
            misdirected.sealed_secret,
            misdirected.expected_latest_transition_hash,
        ),
    )
    await refused(misdirected, INVALID, "sealed box")
    short_nonce = await user_recover_request(user, dep.seed, dep.salt, keys.seedshare)
    short_nonce.nonce = b"\x00" * 31
    await refused(short_nonce, INVALID, "nonce")
    for message in messages:
        assert dep.seed.hex() not in message and secret.hex() not in message

    # -- the right seed: ready again, same root, new mesh CA -----------------------------------
    await user.user.Recover(await user_recover_request(user, dep.seed, dep.salt, keys.seedshare))
    assert (await http_get(server.addresses["http"], "/readyz"))[0] == 200
    history = await user.user.GetManifests(pb.GetManifestsRequest())
    assert list(history.manifests) == [dep.manifest]
    assert history.latest_transition_hash == dep.first.transition_hash
    assert history.root_ca_pem == dep.first.root_ca_pem
    assert history.mesh_ca_pem != dep.first.mesh_ca_pem
    assert await snapshot(server) == before.__class__(
        latest=before.latest, issued=0.0, transition=dep.first.transition_hash
    )
    assert (
        server.metrics.registry.get_sample_value("concord_recoveries_total", {"source": "user"})
        == 1.0
    )
    await expect_status(
        user.user.Recover(await user_recover_request(user, dep.seed, dep.salt, keys.seedshare)),
        PRECONDITION,
        "not in recovery mode",
    )

    # Workloads join again: same secret, leaf chains to the same root through the new mesh CA.
    mesh2 = await connect(server, "mesh", tee=mock_tee)
    assert mesh2.attestation.root_ca_pem == dep.first.root_ca_pem
    web2 = await join(mesh2, mock_tee.provider(WEB_POLICY))
    assert (
        open_sealed(
            web2.hpke_private, PURPOSE_WORKLOAD_SECRET, web2.response.sealed_workload_secret
        )
        == secret
    )
    leaf, intermediate = web2.chain
    root = x509.load_pem_x509_certificate(dep.first.root_ca_pem)
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(datetime.now(UTC))
        .build_server_verifier(x509.DNSName("web"))
    )
    verifier.verify(leaf, [intermediate])
    # The old process's leaf still verifies against the root too (the deployment's anchor).
    verifier.verify(web.chain[0], [web.chain[1]])
    # The pending request of the old process carries a token of the same deployment and
    # transition: it is accepted by the recovered process.
    resp = await mesh2.mesh.NewMeshCert(pending.request)
    assert resp.root_ca_pem == dep.first.root_ca_pem

    # And the owner can update again; the root survives that too.
    m2 = manifest_bytes(
        manifest_dict(
            mock_tee,
            owners=[keys.owner],
            seedshare=[keys.seedshare],
            workloads={WEB_POLICY: {"SANs": ["web2"], "WorkloadSecretID": "web"}},
        )
    )
    updated = await user.user.SetManifest(
        update_request(m2, [], dep.first.transition_hash, keys.owner)
    )
    assert updated.root_ca_pem == dep.first.root_ca_pem
    assert updated.mesh_ca_pem != history.mesh_ca_pem
    for chan in (user, mesh, mesh2):
        await chan.close()
    assert any("state installed" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        text = record.getMessage()
        assert dep.seed.hex() not in text and secret.hex() not in text


async def test_meshapi_recover_in_recovery_mode_is_refused(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys
) -> None:
    """A coordinator without State never serves secrets, even to a proper coordinator."""
    store = coordinators.new_store()
    dep = await deploy(coordinators, mock_tee, keys, store=store)
    from tests.integration.service_helpers import COORDINATOR_POLICY

    request, _ = await peer_recover_request(dep.mesh, mock_tee.provider(COORDINATOR_POLICY))
    await dep.close()
    await coordinators.stop(dep.server)
    server = await coordinators.start(store)
    mesh = await connect(server, "mesh", tee=mock_tee)
    await expect_status(mesh.mesh.Recover(request), PRECONDITION, "recovery mode")
    await mesh.close()


# --- the attested channel (client side) ------------------------------------------------------


def _self_signed_der() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "concord-coordinator")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("concord-coordinator")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


async def test_pinned_certificate_must_be_the_servers(
    coordinators: Coordinators, mock_tee: MockTee
) -> None:
    a = await coordinators.start()
    b = await coordinators.start()
    policy = mock_tee.coordinator_policy()
    cert_b = await server_certificate(b.addresses["user"])
    for pinned in (cert_b, _self_signed_der()):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await AttestedChannel.connect(
                a.addresses["user"], policy, pinned_certificate=pinned, timeout=5
            )
        # The TLS handshake fails before anything is sent: the server is not the pinned one.
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # The matching pin works.
    cert_a = await server_certificate(a.addresses["user"])
    chan = await AttestedChannel.connect(a.addresses["user"], policy, pinned_certificate=cert_a)
    await chan.close()


async def test_attestation_must_bind_the_tls_key(
    coordinators: Coordinators, mock_tee: MockTee
) -> None:
    """A coordinator whose evidence binds another TLS key (a relay in the middle) is refused."""
    server = await coordinators.start()
    assert server.coord is not None
    real_spki = server.coord.tls_spki
    server.coord.tls_spki = public_spki(ec.generate_private_key(ec.SECP256R1()))
    try:
        with pytest.raises(ReportDataMismatch):
            await connect(server, "user", tee=mock_tee)
    finally:
        server.coord.tls_spki = real_spki
    chan = await connect(server, "user", tee=mock_tee)
    await chan.close()


async def test_attestation_must_show_the_expected_policy(
    coordinators: Coordinators, mock_tee: MockTee
) -> None:
    server = await coordinators.start(policy=b"some other coordinator policy")
    with pytest.raises(CoordinatorPolicyMismatch):
        await connect(server, "user", tee=mock_tee)
