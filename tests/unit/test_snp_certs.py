"""VCEK/VLEK extension decoding and the chain to the pinned ARK (real and mock certificates)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from attestation.anchors import AmdRoots, TrustAnchors
from attestation.cache import BoundedCache
from attestation.errors import (
    CertificateExpired,
    CertificateExtensionInvalid,
    CertificateRevoked,
    CertificateSignatureInvalid,
    CollateralExpired,
    MalformedEvidence,
    MissingCertificate,
    SizeLimitExceeded,
    UntrustedRoot,
)
from attestation.mock.snp import MockAmd, create_mock_amd, issue_certificate
from attestation.reference import SnpTcb
from attestation.snp import certs as c
from tests.unit.snp_helpers import (  # noqa: F401  (fixtures)
    NOW,
    mock_amd_anchors,
    production_fixture,
    snp_vectors_fixture,
)


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> MockAmd:
    return create_mock_amd(tmp_path_factory.mktemp("amd"), "Genoa")


@pytest.fixture(scope="module")
def mock_anchors(mock: MockAmd, production: TrustAnchors) -> TrustAnchors:
    return mock_amd_anchors(mock, production)


# --- extension decoding on real certificates -------------------------------------------------


def test_real_milan_vcek_extensions(snp: Path) -> None:
    _, info = c.decode_key_certificate((snp / "milan-v2.vcek.der").read_bytes())
    assert info.kind == "vcek"
    assert info.product_name == "Milan-B0" and info.product == "Milan"
    assert info.tcb == SnpTcb(bootloader=3, tee=0, snp=8, microcode=0x73)
    assert info.struct_version == 0
    assert info.hwid is not None and info.hwid.hex().startswith("d49554ec717f4e5b")
    assert len(info.hwid) == 64
    assert dict(info.reserved_spls) == {"spl_4": 0, "spl_5": 0, "spl_6": 0, "spl_7": 0}
    assert info.csp_id is None


def test_real_turin_vcek_extensions(snp: Path) -> None:
    _, info = c.decode_key_certificate((snp / "turin.vcek.der").read_bytes())
    assert info.product == "Turin" and info.product_name == "Turin"
    assert info.hwid == bytes.fromhex("1e550a8ee5cf9f4d")  # 8-byte Turin hwID
    assert info.tcb == SnpTcb(bootloader=0, tee=0, snp=0, microcode=9, fmc=0)
    assert info.struct_version == 1
    assert "spl_4" not in dict(info.reserved_spls)


def test_real_vlek_extensions(snp: Path) -> None:
    _, info = c.decode_key_certificate((snp / "vlek-v3.vlek.der").read_bytes())
    assert info.kind == "vlek" and info.product == "Milan" and info.product_name == "Milan"
    assert info.csp_id == "CN=cc-us-east-2.amazonaws.com"
    assert info.hwid is None
    assert info.tcb == SnpTcb(bootloader=4, tee=0, snp=0x18, microcode=0xD9)  # 02 02 00 d9


def test_tampered_new_hwid_is_der_octet_string(snp: Path) -> None:
    # The "new" KDS encoding wraps hwID in an OCTET STRING; decoding must accept both forms.
    _, info = c.decode_key_certificate((snp / "tampered-new.vcek.der").read_bytes())
    assert info.hwid == bytes(range(64))
    _, legacy = c.decode_key_certificate((snp / "tampered-legacy.vcek.der").read_bytes())
    assert legacy.hwid == bytes(range(64)) and legacy.tcb.microcode == 0xA9


@pytest.mark.parametrize("name", ["tampered-legacy", "tampered-new"])
def test_tampered_vceks_fail_the_chain(snp: Path, production: TrustAnchors, name: str) -> None:
    with pytest.raises(CertificateSignatureInvalid):
        c.verify_key_chain([(snp / f"{name}.vcek.der").read_bytes()], production, NOW)


@pytest.mark.parametrize(
    "name", ["milan-v2.vcek", "milan-v2-debug.vcek", "turin.vcek", "vlek-v3.vlek"]
)
def test_real_chains_verify(snp: Path, production: TrustAnchors, name: str) -> None:
    key = c.verify_key_chain([(snp / f"{name}.der").read_bytes()], production, NOW)
    assert key.product in ("Milan", "Turin")
    assert key.kind == name.split(".")[1]


# --- value decoders --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("020100", 0), ("02017f", 0x7F), ("020200d9", 0xD9), ("020200ff", 0xFF)],
)
def test_spl_values(value: str, expected: int) -> None:
    assert c.decode_spl(bytes.fromhex(value)) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "02",
        "0200",
        "020180",
        "02020005",
        "02020100",
        "0203000000",
        "040100",
        "02010000",
        "0281010a",
    ],
)
def test_spl_invalid(value: str) -> None:
    with pytest.raises(CertificateExtensionInvalid):
        c.decode_spl(bytes.fromhex(value))


def test_ia5_and_hwid_decoders() -> None:
    assert c.decode_ia5(b"\x16\x05Genoa", "productName") == "Genoa"
    for bad in (b"\x0c\x05Genoa", b"\x16\x06Genoa", b"\x16\x00", b"\x16\x02\x00\x01"):
        with pytest.raises(CertificateExtensionInvalid):
            c.decode_ia5(bad, "productName")
    long = "x" * 200
    assert c.decode_ia5(b"\x16\x81\xc8" + long.encode(), "cspID") == long
    with pytest.raises(CertificateExtensionInvalid):
        c.decode_ia5(b"\x16\x81\x05Genoa", "cspID")  # non-minimal length
    assert c.decode_hwid(bytes(range(8)), 8) == bytes(range(8))
    assert c.decode_hwid(b"\x04\x08" + bytes(range(8)), 8) == bytes(range(8))
    for bad in (bytes(63), bytes(65), b"\x04\x3f" + bytes(64), bytes(9)):
        with pytest.raises(CertificateExtensionInvalid):
            c.decode_hwid(bad, 64 if len(bad) > 9 else 8)


def _values(product: str = "Genoa", kind: str = "vcek") -> dict[str, bytes]:
    from attestation.mock.snp import MOCK_TCB, amd_extension_values

    return amd_extension_values(
        product, MOCK_TCB[product], kind=kind, hwid=bytes(c.HWID_SIZE[product])
    )


@pytest.mark.parametrize(
    ("change", "product", "kind"),
    [
        ("drop:" + c.OID_PRODUCT_NAME, "Genoa", "vcek"),
        ("drop:" + c.OID_BL_SPL, "Genoa", "vcek"),
        ("drop:" + c.OID_TEE_SPL, "Genoa", "vcek"),
        ("drop:" + c.OID_SNP_SPL, "Genoa", "vcek"),
        ("drop:" + c.OID_UCODE_SPL, "Genoa", "vcek"),
        ("drop:" + c.OID_FMC_SPL, "Turin", "vcek"),
        ("drop:" + c.OID_HWID, "Genoa", "vcek"),
        ("drop:" + c.OID_CSP_ID, "Genoa", "vlek"),
        ("add:" + c.OID_FMC_SPL, "Genoa", "vcek"),
        ("add:" + c.OID_CSP_ID, "Genoa", "vcek"),
        ("add:" + c.OID_HWID, "Genoa", "vlek"),
        ("product:Venice", "Genoa", "vcek"),
        ("hwid:8", "Genoa", "vcek"),
        ("hwid:64", "Turin", "vcek"),
        ("kind:ask", "Genoa", "vcek"),
    ],
)
def test_extension_requirements(change: str, product: str, kind: str) -> None:
    values = _values(product, kind)
    op, _, arg = change.partition(":")
    if op == "drop":
        values.pop(arg)
    elif op == "add":
        values[arg] = (
            bytes(64)
            if arg == c.OID_HWID
            else b"\x16\x01x"
            if arg == c.OID_CSP_ID
            else b"\x02\x01\x00"
        )
    elif op == "product":
        values[c.OID_PRODUCT_NAME] = b"\x16" + bytes([len(arg)]) + arg.encode()
    elif op == "hwid":
        values[c.OID_HWID] = bytes(int(arg))
    elif op == "kind":
        kind = arg
    with pytest.raises(CertificateExtensionInvalid):
        c.decode_extension_values(values, kind)


def test_not_a_certificate_or_leaf(mock: MockAmd) -> None:
    with pytest.raises(MalformedEvidence):
        c.decode_key_certificate(b"\x30\x03\x02\x01\x00")
    with pytest.raises(MalformedEvidence, match="SEV-VCEK"):
        c.decode_key_certificate(mock.ask_der)  # an ASK is not an endorsement key
    with pytest.raises(MalformedEvidence):
        c.decode_key_certificate(b"\x00" * (c.MAX_CERT_SIZE + 1))


# --- chain -----------------------------------------------------------------------------------


def test_mock_chain_and_cache(mock: MockAmd, mock_anchors: TrustAnchors) -> None:
    cache: BoundedCache[bytes, c.VerifiedKey] = BoundedCache(8)
    first = c.verify_key_chain([mock.vcek_der], mock_anchors, NOW, cache=cache)
    assert (cache.hits, cache.misses, len(cache)) == (0, 1, 1)
    second = c.verify_key_chain(
        [mock.vcek_der], mock_anchors, NOW, cache=cache, product_hint="Genoa"
    )
    assert second is first and cache.hits == 1
    # A hit still re-checks validity at `now`.
    with pytest.raises(CertificateExpired):
        c.verify_key_chain(
            [mock.vcek_der], mock_anchors, datetime(2051, 1, 1, tzinfo=UTC), cache=cache
        )
    # v2 reports give no product hint: every pinned product's ARK is tried.
    assert c.verify_key_chain([mock.vcek_der], mock_anchors, NOW, cache=cache) is first


def test_cache_is_keyed_by_the_ark(mock: MockAmd, tmp_path: Path, production: TrustAnchors) -> None:
    cache: BoundedCache[bytes, c.VerifiedKey] = BoundedCache(8)
    c.verify_key_chain(
        [mock.vcek_der],
        TrustAnchors("mock", {"Genoa": mock.roots()}, production.intel_root),
        NOW,
        cache=cache,
    )
    other = create_mock_amd(tmp_path, "Genoa")
    other_anchors = TrustAnchors("mock", {"Genoa": other.roots()}, production.intel_root)
    with pytest.raises(CertificateSignatureInvalid):
        c.verify_key_chain([mock.vcek_der], other_anchors, NOW, cache=cache)


def test_naive_now_is_utc(mock: MockAmd, mock_anchors: TrustAnchors) -> None:
    assert c.verify_key_chain([mock.vcek_der], mock_anchors, datetime(2025, 6, 1)).kind == "vcek"


def test_missing_too_many_and_non_bytes(mock: MockAmd, mock_anchors: TrustAnchors) -> None:
    with pytest.raises(SizeLimitExceeded):
        c.verify_key_chain([mock.vcek_der] * 9, mock_anchors, NOW)
    with pytest.raises(MissingCertificate):
        c.verify_key_chain([], mock_anchors, NOW)
    with pytest.raises(MalformedEvidence):
        c.verify_key_chain(["x"], mock_anchors, NOW)  # type: ignore[list-item]


def test_pinned_extras_accepted_and_leaf_extras_ignored(
    mock: MockAmd, mock_anchors: TrustAnchors
) -> None:
    c.verify_key_chain(mock.certs("vcek", chain=True), mock_anchors, NOW)
    c.verify_key_chain(mock.certs("vlek", chain=True), mock_anchors, NOW)
    c.verify_key_chain([mock.vcek_der, mock.vlek_der], mock_anchors, NOW)


def test_extra_garbage_certificate(mock: MockAmd, mock_anchors: TrustAnchors) -> None:
    with pytest.raises(MalformedEvidence, match=r"certs\[1\]"):
        c.verify_key_chain([mock.vcek_der, b"junk"], mock_anchors, NOW)


def test_intermediate_not_signed_by_ark(mock: MockAmd, production: TrustAnchors) -> None:
    stray = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fake_ask = issue_certificate(
        subject_cn="SEV-Genoa",
        issuer=mock.ark,
        issuer_key=stray,
        public_key=mock.ask_key.public_key(),
        ca=True,
    )
    roots = AmdRoots("Genoa", mock.ark, fake_ask, mock.asvk)
    with pytest.raises(CertificateSignatureInvalid, match="ASK"):
        c.verify_key_chain(
            [mock.vcek_der], TrustAnchors("mock", {"Genoa": roots}, production.intel_root), NOW
        )


def test_missing_asvk(mock: MockAmd, production: TrustAnchors) -> None:
    roots = AmdRoots("Genoa", mock.ark, mock.ask, None)
    with pytest.raises(UntrustedRoot, match="ASVK"):
        c.verify_key_chain(
            [mock.vlek_der], TrustAnchors("mock", {"Genoa": roots}, production.intel_root), NOW
        )


def test_leaf_issuer_name_must_be_the_pinned_intermediate(
    mock: MockAmd, mock_anchors: TrustAnchors
) -> None:
    # A VLEK-named leaf signed by the ASK: its issuer is SEV-Genoa, but VLEKs chain to the ASVK.
    der = mock.issue_leaf("vlek", issuer=mock.ask, issuer_key=mock.ask_key)
    with pytest.raises(UntrustedRoot, match=r"ASVK|SEV-VLEK"):
        c.verify_key_chain([der], mock_anchors, NOW)


def test_leaf_key_must_be_p384(mock: MockAmd, mock_anchors: TrustAnchors) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from attestation.mock.snp import amd_extension_values

    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_certificate(
        subject_cn="SEV-VCEK",
        issuer=mock.ask,
        issuer_key=mock.ask_key,
        public_key=key.public_key(),
        extensions=amd_extension_values("Genoa", mock.tcb, hwid=mock.chip_id),
    )
    with pytest.raises(MalformedEvidence, match="P-384"):
        c.verify_key_chain([cert.public_bytes(serialization.Encoding.DER)], mock_anchors, NOW)


def test_pss_parameters_are_fixed(mock: MockAmd, mock_anchors: TrustAnchors) -> None:
    # PSS with a 32-byte salt or SHA-256 is not AMD's scheme.
    for pad, alg in (
        (padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=32), hashes.SHA384()),
        (padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=48), hashes.SHA384()),
    ):
        der = mock.issue_leaf("vcek", rsa_padding=pad)
        with pytest.raises(CertificateSignatureInvalid):
            c.verify_key_chain([der], mock_anchors, NOW)
        del alg


# --- CRL -------------------------------------------------------------------------------------


def test_crl_not_revoked_passes(mock: MockAmd, mock_anchors: TrustAnchors) -> None:
    crl = mock.make_crl([12345])
    assert c.verify_key_chain([mock.vcek_der], mock_anchors, NOW, crls=[crl]).kind == "vcek"


@pytest.mark.parametrize("which", ["ask", "asvk"])
def test_crl_revokes_intermediate(mock: MockAmd, mock_anchors: TrustAnchors, which: str) -> None:
    serial = (mock.ask if which == "ask" else mock.asvk).serial_number
    crl = mock.make_crl([serial])
    leaf = mock.vcek_der if which == "ask" else mock.vlek_der
    cache: BoundedCache[bytes, c.VerifiedKey] = BoundedCache(4)
    c.verify_key_chain([leaf], mock_anchors, NOW, cache=cache)
    with pytest.raises(CertificateRevoked, match=which.upper()):
        c.verify_key_chain(
            [leaf], mock_anchors, NOW, crls=[crl], cache=cache
        )  # also on a cache hit
    other = mock.ask if which == "asvk" else mock.asvk
    c.verify_key_chain([leaf], mock_anchors, NOW, crls=[mock.make_crl([other.serial_number])])


def test_crl_signature_and_freshness(mock: MockAmd, mock_anchors: TrustAnchors) -> None:
    stray = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CertificateSignatureInvalid):
        c.verify_key_chain(
            [mock.vcek_der], mock_anchors, NOW, crls=[mock.make_crl(signer_key=stray)]
        )
    with pytest.raises(CertificateSignatureInvalid, match="RSASSA-PSS"):
        c.verify_key_chain(
            [mock.vcek_der], mock_anchors, NOW, crls=[mock.make_crl(rsa_padding=padding.PKCS1v15())]
        )
    stale = mock.make_crl(
        last_update=datetime(2024, 1, 1, tzinfo=UTC), next_update=datetime(2024, 2, 1, tzinfo=UTC)
    )
    with pytest.raises(CollateralExpired):
        c.verify_key_chain([mock.vcek_der], mock_anchors, NOW, crls=[stale])
    future = mock.make_crl(last_update=datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(CollateralExpired):
        c.verify_key_chain([mock.vcek_der], mock_anchors, NOW, crls=[future])
    with pytest.raises(MalformedEvidence):
        c.verify_key_chain([mock.vcek_der], mock_anchors, NOW, crls=[b"not a crl"])


def test_crl_of_another_ark_is_not_applicable(
    mock: MockAmd, mock_anchors: TrustAnchors, tmp_path: Path
) -> None:
    other = create_mock_amd(tmp_path, "Milan")
    crl = other.make_crl([mock.ask.serial_number])
    assert c.verify_key_chain([mock.vcek_der], mock_anchors, NOW, crls=[crl]).kind == "vcek"
