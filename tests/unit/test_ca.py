"""CA certificates (deterministic) and leaf issuance, checked with cryptography and openssl."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from coordinator.core.ca import (
    CA_NOT_AFTER,
    CA_NOT_BEFORE,
    INTERMEDIATE_CN,
    LEAF_BACKDATE,
    OID_MEASUREMENT,
    OID_POLICY_HASH,
    OID_TCB,
    OID_TEE_TYPE,
    OID_WORKLOAD_SECRET_ID,
    ROOT_CN,
    CAError,
    CertificateAuthority,
    LeafClaims,
    deterministic_serial,
    leaf_claims,
    new_mesh_key,
)
from coordinator.core.seedengine import SeedEngine

SEED = bytes.fromhex("ccebed634ddee7535cd593e1e200b19b780f3906d8782207fa09c59e87a07cb3")
SALT = bytes.fromhex("8c1b1225c5f6cb7eef6dbd8f77a1e1e149de031d6e3718e660a8b04c8e2b0037")
T1 = b"\x01" * 32
T2 = b"\x02" * 32
POLICY = bytes.fromhex("a1" * 32)
NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
SANS = ["web", "*", "10.0.0.1", "fd00::1", "spiffe://x/y"]


@pytest.fixture(scope="module")
def root_key() -> ec.EllipticCurvePrivateKey:
    return SeedEngine(SEED, SALT).root_ca_key


@pytest.fixture(scope="module")
def mesh_key() -> ec.EllipticCurvePrivateKey:
    return new_mesh_key()


@pytest.fixture(scope="module")
def ca(
    root_key: ec.EllipticCurvePrivateKey, mesh_key: ec.EllipticCurvePrivateKey
) -> CertificateAuthority:
    return CertificateAuthority(root_key, mesh_key, T1)


@pytest.fixture(scope="module")
def leaf_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def issue(ca: CertificateAuthority, key: object, **kw: object) -> x509.Certificate:
    args: dict[str, object] = dict(
        sans=SANS,
        policy_hash=POLICY,
        tee="snp",
        measurement=b"\x11" * 48,
        tcb=bytes.fromhex("0300000000000873"),
        workload_secret_id="web",
        now=NOW,
    )
    args.update(kw)
    return ca.issue_leaf(key, **args)  # type: ignore[arg-type]


def spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- CA certificates -------------------------------------------------------------------------


def test_ca_certificates_are_byte_identical(
    root_key: ec.EllipticCurvePrivateKey, mesh_key: ec.EllipticCurvePrivateKey
) -> None:
    a = CertificateAuthority(root_key, mesh_key, T1)
    # Re-derive the root key from the seed: a fresh coordinator has only the seed.
    b = CertificateAuthority(SeedEngine(SEED, SALT).root_ca_key, mesh_key, T1)
    assert a.root_pem == b.root_pem
    assert a.intermediate_pem == b.intermediate_pem
    assert a.mesh_ca_pem == b.mesh_ca_pem
    assert a.root_der == b.root_der == a.root_cert.public_bytes(serialization.Encoding.DER)


def test_different_transition_changes_mesh_and_intermediate_only(
    root_key: ec.EllipticCurvePrivateKey, mesh_key: ec.EllipticCurvePrivateKey
) -> None:
    a = CertificateAuthority(root_key, mesh_key, T1)
    b = CertificateAuthority(root_key, mesh_key, T2)
    assert a.root_pem == b.root_pem
    assert a.mesh_ca_cert.serial_number != b.mesh_ca_cert.serial_number
    assert a.intermediate_cert.serial_number != b.intermediate_cert.serial_number
    assert a.mesh_ca_pem != b.mesh_ca_pem


def test_serials(
    ca: CertificateAuthority,
    root_key: ec.EllipticCurvePrivateKey,
    mesh_key: ec.EllipticCurvePrivateKey,
) -> None:
    import hashlib

    root_spki = spki(root_key.public_key())
    expected_root = int.from_bytes(hashlib.sha256(root_spki).digest()[:16], "big") & ~(1 << 127)
    assert ca.root_cert.serial_number == expected_root
    mesh = hashlib.sha256(spki(mesh_key.public_key()) + T1).digest()[:16]
    expected_mesh = int.from_bytes(mesh, "big") & ~(1 << 127)
    assert ca.mesh_ca_cert.serial_number == expected_mesh
    assert ca.intermediate_cert.serial_number == expected_mesh
    assert deterministic_serial(b"x", b"y") > 0
    assert deterministic_serial(b"x", b"y").bit_length() <= 127


def _cn(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_ca_structure(
    ca: CertificateAuthority,
    root_key: ec.EllipticCurvePrivateKey,
    mesh_key: ec.EllipticCurvePrivateKey,
) -> None:
    root, inter, mesh = ca.root_cert, ca.intermediate_cert, ca.mesh_ca_cert
    assert _cn(root.subject) == _cn(root.issuer) == ROOT_CN
    assert _cn(mesh.subject) == _cn(mesh.issuer) == INTERMEDIATE_CN
    assert _cn(inter.subject) == INTERMEDIATE_CN and _cn(inter.issuer) == ROOT_CN
    assert spki(root.public_key()) == spki(root_key.public_key())  # type: ignore[arg-type]
    assert spki(mesh.public_key()) == spki(inter.public_key()) == spki(mesh_key.public_key())  # type: ignore[arg-type]
    for cert in (root, inter, mesh):
        assert cert.not_valid_before_utc == CA_NOT_BEFORE
        assert cert.not_valid_after_utc == CA_NOT_AFTER
        assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
        assert not ku.value.digital_signature
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = inter.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    # self-signatures and the root's signature over the intermediate
    mesh.verify_directly_issued_by(mesh)
    root.verify_directly_issued_by(root)
    inter.verify_directly_issued_by(root)
    # GeneralizedTime for 9999 (tag 0x18 followed by 15 bytes "99991231235959Z")
    assert b"\x18\x0f99991231235959Z" in ca.root_der


def test_rejects_bad_ca_inputs(
    root_key: ec.EllipticCurvePrivateKey, mesh_key: ec.EllipticCurvePrivateKey
) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CAError, match="root_key"):
        CertificateAuthority(p256, mesh_key, T1)
    with pytest.raises(CAError, match="mesh_key"):
        CertificateAuthority(root_key, p256, T1)
    with pytest.raises(CAError, match="transition_hash"):
        CertificateAuthority(root_key, mesh_key, T1[:31])
    with pytest.raises(CAError, match="mesh_key"):
        CertificateAuthority(root_key, rsa.generate_private_key(65537, 2048), T1)  # type: ignore[arg-type]


def test_ca_is_immutable(ca: CertificateAuthority) -> None:
    with pytest.raises(AttributeError):
        ca.mesh_key = new_mesh_key()
    assert "PRIVATE" not in repr(ca)


# --- leaf ------------------------------------------------------------------------------------


def test_leaf_contents(ca: CertificateAuthority, leaf_key: ec.EllipticCurvePrivateKey) -> None:
    leaf = issue(ca, leaf_key.public_key())
    assert leaf.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA384)
    assert spki(leaf.public_key()) == spki(leaf_key.public_key())  # type: ignore[arg-type]
    assert _cn(leaf.subject) == "web"
    assert leaf.issuer == ca.mesh_ca_cert.subject
    assert leaf.not_valid_before_utc == NOW - LEAF_BACKDATE
    assert leaf.not_valid_after_utc == NOW + timedelta(days=365)
    ext = leaf.extensions
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web", "*"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("fd00::1"),
    ]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://x/y"]
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not ext.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    mesh_ski = ca.mesh_ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == mesh_ski.value.digest
    for oid in (OID_TEE_TYPE, OID_MEASUREMENT, OID_POLICY_HASH, OID_TCB, OID_WORKLOAD_SECRET_ID):
        assert not ext.get_extension_for_oid(oid).critical
    leaf.verify_directly_issued_by(ca.mesh_ca_cert)
    leaf.verify_directly_issued_by(ca.intermediate_cert)


def test_leaf_claims(ca: CertificateAuthority, leaf_key: ec.EllipticCurvePrivateKey) -> None:
    leaf = issue(ca, leaf_key.public_key(), tee="tdx", tcb=b"\x07" * 16)
    assert leaf_claims(leaf) == LeafClaims(
        tee="tdx",
        measurement=b"\x11" * 48,
        policy_hash=POLICY,
        tcb=b"\x07" * 16,
        workload_secret_id="web",
    )
    raw = leaf.extensions.get_extension_for_oid(OID_POLICY_HASH).value
    assert isinstance(raw, x509.UnrecognizedExtension)
    assert raw.value == b"\x04\x20" + POLICY
    tee = leaf.extensions.get_extension_for_oid(OID_TEE_TYPE).value
    assert isinstance(tee, x509.UnrecognizedExtension)
    assert tee.value == b"\x0c\x03tdx"


def test_leaf_long_claim_uses_long_form_length(
    ca: CertificateAuthority, leaf_key: ec.EllipticCurvePrivateKey
) -> None:
    leaf = issue(ca, leaf_key.public_key(), measurement=b"\x22" * 300)
    raw = leaf.extensions.get_extension_for_oid(OID_MEASUREMENT).value
    assert isinstance(raw, x509.UnrecognizedExtension)
    assert raw.value[:4] == b"\x04\x82\x01\x2c"
    assert leaf_claims(leaf).measurement == b"\x22" * 300


def test_leaf_without_secret_id_or_dns(
    ca: CertificateAuthority, leaf_key: ec.EllipticCurvePrivateKey
) -> None:
    leaf = issue(ca, leaf_key.public_key(), sans=["10.1.2.3"], workload_secret_id="")
    assert _cn(leaf.subject) == "policy-" + POLICY.hex()[:16]
    assert leaf_claims(leaf).workload_secret_id == ""
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_oid(OID_WORKLOAD_SECRET_ID)
    leaf = issue(ca, leaf_key.public_key(), sans=[])
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_leaf_cn_skips_too_long_dns(
    ca: CertificateAuthority, leaf_key: ec.EllipticCurvePrivateKey
) -> None:
    long = "a" * 60 + ".example"
    leaf = issue(ca, leaf_key.public_key(), sans=[long, "short"])
    assert _cn(leaf.subject) == "short"


def test_leaf_serials_are_random(
    ca: CertificateAuthority, leaf_key: ec.EllipticCurvePrivateKey
) -> None:
    a = issue(ca, leaf_key.public_key())
    b = issue(ca, leaf_key.public_key())
    assert a.serial_number != b.serial_number


def test_leaf_other_key_types(ca: CertificateAuthority) -> None:
    for key in (
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
        rsa.generate_private_key(65537, 2048).public_key(),
    ):
        leaf = issue(ca, key)
        leaf.verify_directly_issued_by(ca.mesh_ca_cert)


def test_leaf_validity_and_naive_now(
    ca: CertificateAuthority, leaf_key: ec.EllipticCurvePrivateKey
) -> None:
    naive = datetime(2026, 6, 1, 12, 0, 0, 999)
    leaf = issue(ca, leaf_key.public_key(), now=naive, validity=timedelta(hours=2))
    assert leaf.not_valid_after_utc == NOW + timedelta(hours=2)
    leaf = ca.issue_leaf(
        leaf_key.public_key(),
        sans=["x"],
        policy_hash=POLICY,
        tee="snp",
        measurement=b"\x01",
        tcb=b"\x01",
        workload_secret_id="",
    )
    assert abs(leaf.not_valid_before_utc + LEAF_BACKDATE - datetime.now(UTC)) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"policy_hash": b"\x00" * 31}, "policy_hash"),
        ({"tee": "sgx"}, "tee"),
        ({"tee": ""}, "tee"),
        ({"measurement": b""}, "measurement"),
        ({"measurement": "11" * 48}, "measurement"),
        ({"tcb": b""}, "tcb"),
        ({"tcb": b"\x00" * 2000}, "tcb"),
        ({"sans": ["ok", "bad name"]}, r"sans\[1\]"),
        ({"sans": [""]}, r"sans\[0\]"),
        ({"sans": ["ok", 5]}, "sans: must be a sequence of strings"),
        ({"sans": "web"}, "sans: must be a sequence of strings"),
        ({"workload_secret_id": 5}, "workload_secret_id"),
        ({"workload_secret_id": "\ud800"}, "workload_secret_id"),
        ({"validity": timedelta(0)}, "validity"),
    ],
)
def test_leaf_rejects_bad_input(
    ca: CertificateAuthority,
    leaf_key: ec.EllipticCurvePrivateKey,
    kw: dict[str, object],
    field: str,
) -> None:
    with pytest.raises(CAError, match=field):
        issue(ca, leaf_key.public_key(), **kw)


def test_leaf_rejects_bad_keys(ca: CertificateAuthority) -> None:
    with pytest.raises(CAError, match="public_key"):
        issue(ca, b"not a key")
    with pytest.raises(CAError, match="public_key"):
        issue(ca, rsa.generate_private_key(65537, 1024).public_key())


def test_leaf_claims_rejects_foreign_certificate(ca: CertificateAuthority) -> None:
    with pytest.raises(CAError, match="lacks claim"):
        leaf_claims(ca.root_cert)


# --- chain verification ----------------------------------------------------------------------


def test_verify_with_cryptography(
    ca: CertificateAuthority, leaf_key: ec.EllipticCurvePrivateKey
) -> None:
    leaf = issue(ca, leaf_key.public_key())
    at = NOW + timedelta(days=1)
    # Trust this manifest: mesh CA alone.
    server = (
        PolicyBuilder()
        .store(Store([ca.mesh_ca_cert]))
        .time(at)
        .build_server_verifier(x509.DNSName("web"))
    )
    assert server.verify(leaf, []) is not None
    ip_server = (
        PolicyBuilder()
        .store(Store([ca.mesh_ca_cert]))
        .time(at)
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address("10.0.0.1")))
    )
    ip_server.verify(leaf, [])
    # Trust the deployment: root, with the intermediate supplied.
    client = PolicyBuilder().store(Store([ca.root_cert])).time(at).build_client_verifier()
    verified = client.verify(leaf, [ca.intermediate_cert])
    assert verified.chain[-1] == ca.root_cert
    # Without the intermediate the root does not reach the leaf.
    with pytest.raises(VerificationError):
        client.verify(leaf, [])
    # Another deployment's root does not verify it.
    other = CertificateAuthority(SeedEngine.generate().root_ca_key, ca.mesh_key, T1)
    stranger = PolicyBuilder().store(Store([other.root_cert])).time(at).build_client_verifier()
    with pytest.raises(VerificationError):
        stranger.verify(leaf, [ca.intermediate_cert])
    # Another manifest's mesh CA does not verify it.
    other_mesh = CertificateAuthority(SeedEngine(SEED, SALT).root_ca_key, new_mesh_key(), T1)
    wrong = PolicyBuilder().store(Store([other_mesh.mesh_ca_cert])).time(at).build_client_verifier()
    with pytest.raises(VerificationError):
        wrong.verify(leaf, [])
    # Expired leaf.
    late = PolicyBuilder().store(Store([ca.mesh_ca_cert])).time(NOW + timedelta(days=400))
    with pytest.raises(VerificationError):
        late.build_client_verifier().verify(leaf, [])


OPENSSL = shutil.which("openssl")


def _openssl_verify(*args: str) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None, "openssl binary is required for this test"
    return subprocess.run(
        [
            OPENSSL,
            "verify",
            "-x509_strict",
            "-attime",
            str(int((NOW + timedelta(days=1)).timestamp())),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_verify_with_openssl(
    ca: CertificateAuthority, leaf_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    leaf = issue(ca, leaf_key.public_key())
    files = {
        "leaf": leaf.public_bytes(serialization.Encoding.PEM),
        "root": ca.root_pem,
        "inter": ca.intermediate_pem,
        "mesh": ca.mesh_ca_pem,
        "chain": ca.chain_pem(leaf),
        "other": CertificateAuthority(SeedEngine.generate().root_ca_key, ca.mesh_key, T1).root_pem,
    }
    p = {}
    for name, data in files.items():
        p[name] = str(tmp_path / f"{name}.pem")
        (tmp_path / f"{name}.pem").write_bytes(data)

    for purpose in ("sslserver", "sslclient"):
        # mesh CA alone (self-signed trust anchor)
        r = _openssl_verify("-purpose", purpose, "-CAfile", p["mesh"], p["leaf"])
        assert r.returncode == 0, r.stdout + r.stderr
        # root with the intermediate as untrusted
        r = _openssl_verify(
            "-purpose", purpose, "-CAfile", p["root"], "-untrusted", p["inter"], p["leaf"]
        )
        assert r.returncode == 0, r.stdout + r.stderr
    # the intermediate alone as a trust anchor needs -partial_chain
    r = _openssl_verify("-partial_chain", "-CAfile", p["inter"], p["leaf"])
    assert r.returncode == 0, r.stdout + r.stderr
    r = _openssl_verify("-CAfile", p["inter"], p["leaf"])
    assert r.returncode != 0
    # root without intermediate, or a stranger's root: fail
    r = _openssl_verify("-CAfile", p["root"], p["leaf"])
    assert r.returncode != 0
    r = _openssl_verify("-CAfile", p["other"], "-untrusted", p["inter"], p["leaf"])
    assert r.returncode != 0
    # the CA certificates themselves are strict-valid
    r = _openssl_verify("-CAfile", p["root"], p["inter"])
    assert r.returncode == 0, r.stdout + r.stderr
    r = _openssl_verify("-CAfile", p["root"], p["root"])
    assert r.returncode == 0, r.stdout + r.stderr
    # chain_pem is leaf followed by intermediate
    r = _openssl_verify("-CAfile", p["root"], "-untrusted", p["chain"], p["leaf"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert files["chain"].startswith(files["leaf"]) and files["chain"].endswith(ca.intermediate_pem)
