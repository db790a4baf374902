"""The service of DESIGN §7 end to end over real gRPC/TLS: first manifest (TOFU) with seed shares,
attested workloads joining, the certificate chain, the manifest history and a signed update;
probes and metrics; and no secret in any log record."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.core.ca import INTERMEDIATE_CN, ROOT_CN, leaf_claims
from coordinator.core.history import ZERO_HASH, transition_hash
from coordinator.core.sealing import PURPOSE_WORKLOAD_SECRET, open_sealed
from coordinator.core.seedengine import SeedEngine
from tests.integration.service_helpers import (  # noqa: F401  (fixtures)
    ALL_POLICIES,
    COORDINATOR_POLICY,
    DB_POLICY,
    WEB_ENTRY,
    WEB_POLICY,
    Coordinators,
    Joined,
    Keys,
    MockTee,
    connect,
    coordinators_fixture,
    der,
    expect_status,
    http_get,
    issued_count,
    join,
    keys_fixture,
    manifest_bytes,
    manifest_dict,
    mock_tee_fixture,
    open_seed_share,
    pem_der,
    set_first_manifest,
    sha256,
    update_request,
)

pytestmark = pytest.mark.timeout(60)


def _verify_server(
    leaf: x509.Certificate,
    roots: list[x509.Certificate],
    intermediates: list[x509.Certificate],
    name: str = "web",
) -> list[x509.Certificate]:
    verifier = (
        PolicyBuilder()
        .store(Store(roots))
        .time(datetime.now(UTC))
        .build_server_verifier(x509.DNSName(name))
    )
    return verifier.verify(leaf, intermediates)


def _openssl_verify(tmp: Path, leaf: bytes, ca: bytes, untrusted: bytes | None = None) -> None:
    tmp.mkdir(exist_ok=True)
    (tmp / "leaf.pem").write_bytes(leaf)
    (tmp / "ca.pem").write_bytes(ca)
    cmd = ["openssl", "verify", "-x509_strict", "-purpose", "sslserver", "-CAfile", "ca.pem"]
    if untrusted is not None:
        (tmp / "untrusted.pem").write_bytes(untrusted)
        cmd += ["-untrusted", "untrusted.pem"]
    done = subprocess.run(
        [*cmd, "leaf.pem"], cwd=tmp, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, f"openssl verify failed: {done.stdout}{done.stderr}"
    assert "leaf.pem: OK" in done.stdout


def _openssl_rejects(tmp: Path, leaf: bytes, ca: bytes, untrusted: bytes | None = None) -> None:
    try:
        _openssl_verify(tmp, leaf, ca, untrusted)
    except AssertionError as exc:
        assert "openssl verify failed" in str(exc)
        return
    raise AssertionError("openssl verified a chain it must reject")


def _sans(cert: x509.Certificate) -> list[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    out: list[str] = []
    for name in names:
        value = name.value
        out.append(str(value) if isinstance(value, ipaddress.IPv4Address) else value)
    return out


def _check_history(resp: pb.GetManifestsResponse, manifests: list[bytes]) -> None:
    """Re-verify the manifest chain offline, as a client would."""
    assert list(resp.manifests) == manifests
    previous = ZERO_HASH
    for raw in resp.manifests:
        previous = transition_hash(sha256(raw), previous)
    assert resp.latest_transition_hash == previous
    key = serialization.load_der_public_key(resp.history_signing_public_key)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(
        resp.latest_signature, resp.latest_transition_hash, ec.ECDSA(Prehashed(hashes.SHA256()))
    )


def _check_leaf(
    joined: Joined,
    tee: MockTee,
    *,
    policy: bytes,
    mesh_ca_pem: bytes,
    root_ca_pem: bytes,
    tee_type: str = "snp",
) -> x509.Certificate:
    leaf, intermediate = joined.chain
    resp = joined.response
    assert resp.mesh_ca_pem == mesh_ca_pem
    assert resp.root_ca_pem == root_ca_pem
    mesh_ca = x509.load_pem_x509_certificate(mesh_ca_pem)
    root = x509.load_pem_x509_certificate(root_ca_pem)
    # The subject key is the attested key the workload asked for.
    assert leaf.public_key() == joined.leaf_key.public_key()
    assert intermediate.subject == mesh_ca.subject
    assert intermediate.public_key() == mesh_ca.public_key()
    assert intermediate.issuer == root.subject
    assert leaf.signature_hash_algorithm is not None
    assert leaf.signature_hash_algorithm.name == "sha384"
    # Trust this manifest (mesh CA alone) or trust the deployment (intermediate → root).
    chain = _verify_server(leaf, [mesh_ca], [])
    assert chain[-1] == mesh_ca
    chain = _verify_server(leaf, [root], [intermediate])
    assert [der(c) for c in chain] == [der(leaf), der(intermediate), der(root)]
    claims = leaf_claims(leaf)
    provider = tee.provider(policy, tee_type)
    assert claims.tee == tee_type
    assert claims.policy_hash == sha256(policy)
    assert claims.measurement == provider.measurement
    assert claims.tcb
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = mesh_ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    return leaf


async def test_full_flow(
    coordinators: Coordinators,
    mock_tee: MockTee,
    keys: Keys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await coordinators.start()
    errors: list[str] = []

    # -- uninitialised: probes and refusals --------------------------------------------------
    assert await http_get(server.addresses["http"], "/healthz") == (200, b"ok\n")
    status, _ = await http_get(server.addresses["http"], "/readyz")
    assert status == 503
    status, body = await http_get(server.addresses["http"], "/metrics")
    assert status == 200
    assert b'concord_state{state="uninitialized"} 1.0' in body

    user = await connect(server, "user", tee=mock_tee)
    mesh = await connect(server, "mesh", tee=mock_tee)
    assert not user.initialized
    assert user.attestation.state_digest == bytes(32)
    assert user.attestation.root_ca_pem == b""
    exc = await expect_status(
        user.attest.Challenge(pb.ChallengeRequest()),
        grpc.StatusCode.FAILED_PRECONDITION,
        "not initialized",
    )
    errors.append(exc.details() or "")

    # -- first manifest: trust on first use, seed shares -------------------------------------
    m1 = manifest_bytes(manifest_dict(mock_tee, owners=[keys.owner], seedshare=[keys.seedshare]))
    policies = [COORDINATOR_POLICY, WEB_POLICY, DB_POLICY]
    first = await set_first_manifest(user, m1, policies)
    assert first.transition_hash == transition_hash(sha256(m1), ZERO_HASH)
    seed, salt = open_seed_share(first.seed_share_document, keys.seedshare)
    assert len(seed) == 64 and len(salt) == 32
    engine = SeedEngine(seed, salt)
    root = x509.load_pem_x509_certificate(first.root_ca_pem)
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == ROOT_CN
    assert root.public_key() == engine.root_ca_key.public_key()
    mesh_ca_1 = x509.load_pem_x509_certificate(first.mesh_ca_pem)
    cn = mesh_ca_1.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == INTERMEDIATE_CN
    assert (await http_get(server.addresses["http"], "/readyz"))[0] == 200

    # -- a workload joins ---------------------------------------------------------------------
    issued_before = issued_count(server)
    web = await join(mesh, mock_tee.provider(WEB_POLICY))
    leaf = _check_leaf(
        web,
        mock_tee,
        policy=WEB_POLICY,
        mesh_ca_pem=first.mesh_ca_pem,
        root_ca_pem=first.root_ca_pem,
    )
    assert _sans(leaf) == WEB_ENTRY["SANs"]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web"
    assert leaf_claims(leaf).workload_secret_id == "web"
    secret = open_sealed(
        web.hpke_private, PURPOSE_WORKLOAD_SECRET, web.response.sealed_workload_secret
    )
    assert secret == engine.workload_secret("web")
    assert issued_count(server) == issued_before + 1
    # Any X.509 stack accepts the chain: openssl, against the mesh CA and via the root.
    leaf_pem = leaf.public_bytes(serialization.Encoding.PEM)
    intermediate_pem = web.chain[1].public_bytes(serialization.Encoding.PEM)
    _openssl_verify(tmp_path / "mesh", leaf_pem, first.mesh_ca_pem)
    _openssl_verify(tmp_path / "root", leaf_pem, first.root_ca_pem, intermediate_pem)
    _openssl_rejects(tmp_path / "no-intermediate", leaf_pem, first.root_ca_pem)

    # A policy without secret ID and without SANs: no sealed secret, CN from the policy hash.
    db = await join(mesh, mock_tee.provider(DB_POLICY))
    db_leaf = db.chain[0]
    assert db.response.sealed_workload_secret == b""
    cn = db_leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "policy-" + sha256(DB_POLICY).hex()[:16]
    with pytest.raises(x509.ExtensionNotFound):
        db_leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert leaf_claims(db_leaf).workload_secret_id == ""
    assert issued_count(server) == issued_before + 2

    # -- history ------------------------------------------------------------------------------
    history = await user.user.GetManifests(pb.GetManifestsRequest())
    _check_history(history, [m1])
    assert sorted(history.policies) == sorted(policies)
    assert history.root_ca_pem == first.root_ca_pem
    assert history.mesh_ca_pem == first.mesh_ca_pem

    # -- signed update: root stays, mesh CA changes -------------------------------------------
    doc = manifest_dict(mock_tee, owners=[keys.owner], seedshare=[keys.seedshare])
    del doc["Policies"][sha256(DB_POLICY).hex()]
    m2 = manifest_bytes(doc)
    updated = await user.user.SetManifest(update_request(m2, [], first.transition_hash, keys.owner))
    assert updated.transition_hash == transition_hash(sha256(m2), first.transition_hash)
    assert updated.seed_share_document == b""
    assert updated.root_ca_pem == first.root_ca_pem
    assert updated.mesh_ca_pem != first.mesh_ca_pem
    history = await user.user.GetManifests(pb.GetManifestsRequest())
    _check_history(history, [m1, m2])
    assert sorted(history.policies) == sorted(policies)

    # The channel attested before the update still works; a fresh attestation shows the new
    # state digest with the same root.
    user2 = await connect(server, "user", tee=mock_tee)
    assert user2.attestation.latest_transition_hash == updated.transition_hash
    assert user2.attestation.root_ca_pem == first.root_ca_pem
    assert user2.attestation.mesh_ca_pem == updated.mesh_ca_pem
    await user2.close()

    web2 = await join(mesh, mock_tee.provider(WEB_POLICY))
    leaf2 = _check_leaf(
        web2,
        mock_tee,
        policy=WEB_POLICY,
        mesh_ca_pem=updated.mesh_ca_pem,
        root_ca_pem=first.root_ca_pem,
    )
    with pytest.raises(VerificationError):
        _verify_server(leaf2, [mesh_ca_1], [])  # the old manifest's mesh CA does not vouch
    with pytest.raises(VerificationError):
        _verify_server(leaf, [x509.load_pem_x509_certificate(updated.mesh_ca_pem)], [])
    secret2 = open_sealed(
        web2.hpke_private, PURPOSE_WORKLOAD_SECRET, web2.response.sealed_workload_secret
    )
    assert secret2 == secret  # workload secrets derive from the seed, not the manifest

    # DB was dropped from the manifest: refused now.
    exc = await expect_status(
        join(mesh, mock_tee.provider(DB_POLICY)), grpc.StatusCode.PERMISSION_DENIED, "not in"
    )
    errors.append(exc.details() or "")

    # -- metrics ------------------------------------------------------------------------------
    status, body = await http_get(server.addresses["http"], "/metrics")
    assert status == 200
    text = body.decode()
    assert 'concord_state{state="ready"} 1.0' in text
    assert 'concord_state{state="uninitialized"} 0.0' in text
    assert "concord_manifest_generation 2.0" in text
    assert 'concord_certificates_issued_total{tee="snp"} 3.0' in text
    assert "concord_attestation_failures_total" in text

    await user.close()
    await mesh.close()

    # -- no secret anywhere in logs or status messages -----------------------------------------
    secrets_hex = [seed.hex(), secret.hex(), engine.pod_state_seed.hex()]
    key_der = engine.root_ca_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert caplog.records, "the flow logged nothing: the log check would prove nothing"
    logged = [r.getMessage() for r in caplog.records] + [caplog.text]
    for text in logged:
        for s in secrets_hex:
            assert s not in text and s.upper() not in text
        assert key_der.hex() not in text
    for message in errors:
        for s in secrets_hex:
            assert s not in message


@pytest.mark.parametrize(
    ("coordinator_tee", "tee_type"), [("snp", "snp"), ("tdx", "tdx"), ("snp", "tdx")]
)
async def test_workload_tee_types(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys, coordinator_tee: str, tee_type: str
) -> None:
    """SNP and TDX workloads (and coordinators) run the same path; the leaf says which TEE."""
    server = await coordinators.start(tee_type=coordinator_tee)
    user = await connect(server, "user", tee=mock_tee)
    assert user.verified.tee == coordinator_tee
    first = await set_first_manifest(
        user,
        manifest_bytes(manifest_dict(mock_tee, seedshare=[keys.seedshare])),
        ALL_POLICIES,
    )
    seed, salt = open_seed_share(first.seed_share_document, keys.seedshare)
    mesh = await connect(server, "mesh", tee=mock_tee)
    joined = await join(mesh, mock_tee.provider(WEB_POLICY, tee_type))
    _check_leaf(
        joined,
        mock_tee,
        policy=WEB_POLICY,
        mesh_ca_pem=first.mesh_ca_pem,
        root_ca_pem=first.root_ca_pem,
        tee_type=tee_type,
    )
    secret = open_sealed(
        joined.hpke_private, PURPOSE_WORKLOAD_SECRET, joined.response.sealed_workload_secret
    )
    assert secret == SeedEngine(seed, salt).workload_secret("web")
    assert (
        server.metrics.registry.get_sample_value(
            "concord_certificates_issued_total", {"tee": tee_type}
        )
        == 1.0
    )
    await user.close()
    await mesh.close()


async def test_two_deployments_do_not_trust_each_other(
    coordinators: Coordinators, mock_tee: MockTee, tmp_path: Path
) -> None:
    """Same manifest on two separate stores: independent seeds, roots and mesh CAs."""
    manifest = manifest_bytes(manifest_dict(mock_tee))
    policies = ALL_POLICIES
    results = []
    for _ in range(2):
        server = await coordinators.start()
        user = await connect(server, "user", tee=mock_tee)
        first = await set_first_manifest(user, manifest, policies)
        mesh = await connect(server, "mesh", tee=mock_tee)
        joined = await join(mesh, mock_tee.provider(WEB_POLICY))
        results.append((first, joined))
        await user.close()
        await mesh.close()
    (a, leaf_a), (b, leaf_b) = results
    assert a.transition_hash == b.transition_hash  # same manifest, same first transition
    assert pem_der(a.root_ca_pem) != pem_der(b.root_ca_pem)
    assert a.root_ca_pem != b.root_ca_pem
    assert a.mesh_ca_pem != b.mesh_ca_pem
    secret_a = open_sealed(
        leaf_a.hpke_private, PURPOSE_WORKLOAD_SECRET, leaf_a.response.sealed_workload_secret
    )
    secret_b = open_sealed(
        leaf_b.hpke_private, PURPOSE_WORKLOAD_SECRET, leaf_b.response.sealed_workload_secret
    )
    assert secret_a != secret_b
    root_a = x509.load_pem_x509_certificate(a.root_ca_pem)
    root_b = x509.load_pem_x509_certificate(b.root_ca_pem)
    leaf, intermediate = leaf_a.chain
    _verify_server(leaf, [root_a], [intermediate])
    with pytest.raises(VerificationError):
        _verify_server(leaf, [root_b], [intermediate])
    with pytest.raises(VerificationError):
        _verify_server(leaf, [root_b], [leaf_b.chain[1]])
    with pytest.raises(VerificationError):
        _verify_server(leaf, [x509.load_pem_x509_certificate(b.mesh_ca_pem)], [])
    leaf_pem = leaf.public_bytes(serialization.Encoding.PEM)
    _openssl_rejects(
        tmp_path / "cross",
        leaf_pem,
        b.root_ca_pem,
        leaf_b.chain[1].public_bytes(serialization.Encoding.PEM),
    )


async def test_probes_and_metrics(coordinators: Coordinators, mock_tee: MockTee) -> None:
    server = await coordinators.start()
    http = server.addresses["http"]
    assert await http_get(http, "/healthz") == (200, b"ok\n")
    assert await http_get(http, "/startupz") == (200, b"started\n")
    assert (await http_get(http, "/readyz"))[0] == 503
    assert (await http_get(http, "/nope"))[0] == 404
    user = await connect(server, "user", tee=mock_tee)
    await set_first_manifest(user, manifest_bytes(manifest_dict(mock_tee)), ALL_POLICIES)
    assert await http_get(http, "/readyz") == (200, b"ready\n")
    mesh = await connect(server, "mesh", tee=mock_tee)
    before = issued_count(server)
    await join(mesh, mock_tee.provider(WEB_POLICY))
    status, body = await http_get(http, "/metrics")
    text = body.decode()
    assert status == 200
    assert 'concord_state{state="ready"} 1.0' in text
    assert "concord_manifest_generation 1.0" in text
    assert f'concord_certificates_issued_total{{tee="snp"}} {before + 1}' in text
    assert "concord_issuance_seconds_count 1.0" in text
    assert 'concord_request_seconds_count{code="OK",method="NewMeshCert"} 1.0' in text
    # A rejected workload is counted by reason.
    await expect_status(join(mesh, mock_tee.provider(b"rogue")), grpc.StatusCode.PERMISSION_DENIED)
    _, body = await http_get(http, "/metrics")
    assert f'concord_certificates_issued_total{{tee="snp"}} {before + 1}' in body.decode()
    await user.close()
    await mesh.close()


async def test_concurrent_joins(coordinators: Coordinators, mock_tee: MockTee) -> None:
    """A burst of workloads is served in batches; every one gets its own valid leaf."""
    server = await coordinators.start()
    user = await connect(server, "user", tee=mock_tee)
    first = await set_first_manifest(user, manifest_bytes(manifest_dict(mock_tee)), ALL_POLICIES)
    mesh = await connect(server, "mesh", tee=mock_tee)
    providers = [mock_tee.provider(WEB_POLICY), mock_tee.provider(DB_POLICY, "tdx")]
    results = await asyncio.gather(*(join(mesh, providers[i % 2]) for i in range(16)))
    mesh_ca = x509.load_pem_x509_certificate(first.mesh_ca_pem)
    keys_seen = set()
    for i, joined in enumerate(results):
        leaf = joined.chain[0]
        assert leaf.public_key() == joined.leaf_key.public_key()
        keys_seen.add(der(leaf))
        name = "web" if i % 2 == 0 else "policy-" + sha256(DB_POLICY).hex()[:16]
        if i % 2 == 0:
            _verify_server(leaf, [mesh_ca], [], name)
        else:
            assert leaf_claims(leaf).tee == "tdx"
            leaf.verify_directly_issued_by(mesh_ca)
    assert len(keys_seen) == 16
    assert issued_count(server) == 16
    await user.close()
    await mesh.close()
