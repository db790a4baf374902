"""PCK chain and SGX extension decoding (attestation/tdx/pck.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestation.anchors import TrustAnchors
from attestation.cache import BoundedCache
from attestation.errors import (
    CertificateExpired,
    CertificateExtensionInvalid,
    CertificateSignatureInvalid,
    ChainRejected,
    MalformedEvidence,
    MissingCertificate,
    UntrustedRoot,
)
from attestation.mock.tdx import MockIntel, create_mock_intel, encode_sgx_extensions
from attestation.tdx.pck import (
    SGX_EXTENSION_OID,
    decode_sgx_extensions,
    oid_content,
    pem_of,
    sgx_extensions_of,
    split_pem_certificates,
    verify_pck_chain,
)
from attestation.tdx.quote import parse_quote
from tests.unit.tdx_helpers import (  # noqa: F401  (fixtures)
    NOW,
    anchors_fixture,
    mock_intel_fixture,
)


def _chain(vectors: Path, name: str) -> tuple[bytes, ...]:
    return parse_quote((vectors / "tdx" / f"{name}.quote.bin").read_bytes()).pck_chain_der


def _ext_value(cert_der: bytes) -> bytes:
    cert = x509.load_der_x509_certificate(cert_der)
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID)).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    return ext.value


def test_oid_content() -> None:
    assert oid_content("1.2.840.113741.1.13.1") == bytes.fromhex("2a864886f84d010d01")
    with pytest.raises(ValueError):
        oid_content("3.1")


def test_uptodate_extension_values(vectors: Path) -> None:
    """Values cross-checked with dcap-qvl's parse_pck_extension_from_pem on the same vector."""
    ext = decode_sgx_extensions(_ext_value(_chain(vectors, "uptodate-v4")[0]))
    assert ext.ppid.hex() == "811dca2a26b952e85bb6448b097ba4fd"
    assert ext.tcb.cpu_svn.hex() == "03030202040100050000000000000000"
    assert ext.tcb.components == (3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
    assert ext.tcb.pce_svn == 11
    assert ext.pce_id == bytes(2)
    assert ext.fmspc.hex() == "b0c06f000000"
    assert ext.sgx_type == 1
    assert ext.platform_instance_id is not None
    assert ext.platform_instance_id.hex() == "07828474603e7019dc930775ffe8cdd2"
    assert ext.platform_id == ext.platform_instance_id
    assert ext.configuration is not None and ext.configuration.dynamic_platform is True


@pytest.mark.parametrize("name", ["spr-v4", "sample-v5", "debug-v4", "outdated-v5"])
def test_all_vector_extensions_decode(vectors: Path, name: str) -> None:
    ext = decode_sgx_extensions(_ext_value(_chain(vectors, name)[0]))
    assert len(ext.ppid) == 16 and len(ext.fmspc) == 6
    assert bytes(ext.tcb.components) == ext.tcb.cpu_svn


def test_mock_encoding_round_trips(mock: MockIntel) -> None:
    ext = sgx_extensions_of(mock.pck)
    assert decode_sgx_extensions(encode_sgx_extensions(ext)) == ext
    # Without the optional PIID / configuration the platform id falls back to the PPID.
    from dataclasses import replace

    bare = replace(ext, platform_instance_id=None, configuration=None)
    decoded = decode_sgx_extensions(encode_sgx_extensions(bare))
    assert decoded == bare and decoded.platform_id == ext.ppid


def _mutations(value: bytes) -> list[tuple[str, bytes]]:
    return [
        ("empty", b""),
        ("not a sequence", b"\x04" + value[1:]),
        ("trailing byte", value + b"\x00"),
        ("truncated", value[:-1]),
        ("length overflow", value[:1] + b"\x84\xff\xff\xff\xff" + value[2:]),
        ("indefinite length", b"\x30\x80" + value[2:]),
    ]


def test_extension_structural_rejections(vectors: Path) -> None:
    value = _ext_value(_chain(vectors, "spr-v4")[0])
    for name, bad in _mutations(value):
        with pytest.raises(CertificateExtensionInvalid):
            decode_sgx_extensions(bad)
        assert name


def test_extension_field_rejections(mock: MockIntel) -> None:
    from dataclasses import replace

    good = sgx_extensions_of(mock.pck)
    # A wrong-sized FMSPC, PPID or CPUSVN is refused.
    for bad in (
        replace(good, fmspc=b"\x00" * 5),
        replace(good, ppid=b"\x00" * 15),
        replace(good, tcb=replace(good.tcb, cpu_svn=b"\x00" * 17)),
        replace(good, pce_id=b"\x00"),
    ):
        with pytest.raises(CertificateExtensionInvalid):
            decode_sgx_extensions(encode_sgx_extensions(bad))
    # An SVN above 255 does not fit a TCB component; PCESVN above 65535 neither.
    with pytest.raises(CertificateExtensionInvalid, match="sgxtcbcomp01svn"):
        decode_sgx_extensions(
            encode_sgx_extensions(
                replace(good, tcb=replace(good.tcb, components=(256, *good.tcb.components[1:])))
            )
        )
    with pytest.raises(CertificateExtensionInvalid, match="pcesvn"):
        decode_sgx_extensions(
            encode_sgx_extensions(replace(good, tcb=replace(good.tcb, pce_svn=70000)))
        )
    # Missing FMSPC entry: remove it from the encoding by re-encoding a version with a
    # different OID arc in its place.
    value = encode_sgx_extensions(good)
    fmspc_oid = oid_content(f"{SGX_EXTENSION_OID}.4")
    mangled = value.replace(fmspc_oid, oid_content(f"{SGX_EXTENSION_OID}.9"), 1)
    with pytest.raises(CertificateExtensionInvalid, match="FMSPC: missing"):
        decode_sgx_extensions(mangled)
    # Duplicate entries are refused.
    ppid_oid = oid_content(f"{SGX_EXTENSION_OID}.1")
    dup = value.replace(fmspc_oid, ppid_oid, 1)
    with pytest.raises(CertificateExtensionInvalid, match="duplicate"):
        decode_sgx_extensions(dup)


def test_non_minimal_integer_rejected(mock: MockIntel) -> None:
    value = encode_sgx_extensions(sgx_extensions_of(mock.pck))
    pcesvn = bytes.fromhex("0201") + bytes([sgx_extensions_of(mock.pck).tcb.pce_svn])
    assert pcesvn in value
    # Re-encode PCESVN as a 2-byte INTEGER with a leading zero (not DER); fix up lengths.
    from attestation.mock.tdx import _entry, _int, _tlv  # test-only use of the encoder

    ext = sgx_extensions_of(mock.pck)
    base = SGX_EXTENSION_OID
    tcb = b"".join(_entry(f"{base}.2.{i + 1}", _int(s)) for i, s in enumerate(ext.tcb.components))
    tcb += _entry(f"{base}.2.17", _tlv(0x02, b"\x00" + bytes([ext.tcb.pce_svn])))
    tcb += _entry(f"{base}.2.18", _tlv(0x04, ext.tcb.cpu_svn))
    bad = _tlv(
        0x30,
        _entry(f"{base}.1", _tlv(0x04, ext.ppid))
        + _entry(f"{base}.2", _tlv(0x30, tcb))
        + _entry(f"{base}.3", _tlv(0x04, ext.pce_id))
        + _entry(f"{base}.4", _tlv(0x04, ext.fmspc))
        + _entry(f"{base}.5", _tlv(0x0A, b"\x01")),
    )
    with pytest.raises(CertificateExtensionInvalid, match="minimally"):
        decode_sgx_extensions(bad)


def test_pem_split_tolerates_nul_and_whitespace(mock: MockIntel) -> None:
    pem = mock.pck_chain_pem()
    ders = split_pem_certificates(pem + b"\x00\x00", "x")
    assert len(ders) == 3
    assert split_pem_certificates(b"\n" + pem.replace(b"\n", b"\r\n") + b"\n\x00", "x") == ders
    assert pem_of(ders) == pem
    with pytest.raises(MalformedEvidence, match="after the last PEM block"):
        split_pem_certificates(pem + b"junk", "x")
    with pytest.raises(MalformedEvidence, match="between PEM blocks"):
        split_pem_certificates(b"junk" + pem, "x")
    with pytest.raises(MissingCertificate):
        split_pem_certificates(b"\x00\x00", "x")


# --- chain -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["spr-v4", "sample-v5", "debug-v4", "outdated-v5"])
def test_real_chains_verify(vectors: Path, anchors: TrustAnchors, name: str) -> None:
    chain = verify_pck_chain(_chain(vectors, name), anchors, NOW)
    assert chain.extensions.fmspc
    assert chain.issuer.subject.rfc4514_string().endswith("CN=Intel SGX PCK Platform CA")


def test_chain_without_root_cert_still_pins(vectors: Path, anchors: TrustAnchors) -> None:
    ders = _chain(vectors, "spr-v4")
    assert verify_pck_chain(ders[:2], anchors, NOW).ders == ders[:2]
    with pytest.raises(MissingCertificate):
        verify_pck_chain(ders[:1], anchors, NOW)
    with pytest.raises(ChainRejected):
        verify_pck_chain((*ders, ders[2]), anchors, NOW)


def test_expired_and_not_yet_valid(vectors: Path, anchors: TrustAnchors) -> None:
    spr = _chain(vectors, "spr-v4")  # PCK valid 2022-09-20 .. 2029-09-20
    with pytest.raises(CertificateExpired, match=r"PCK\).*expired"):
        verify_pck_chain(spr, anchors, datetime(2029, 9, 21, tzinfo=UTC))
    sample = _chain(vectors, "sample-v5")  # PCK valid from 2026-01-27
    with pytest.raises(CertificateExpired, match="not valid before"):
        verify_pck_chain(sample, anchors, datetime(2026, 1, 1, tzinfo=UTC))


def test_naive_now_is_a_caller_error(vectors: Path, anchors: TrustAnchors) -> None:
    with pytest.raises(ValueError):
        verify_pck_chain(_chain(vectors, "spr-v4"), anchors, datetime(2026, 3, 1))


def test_mock_and_real_chains_cross_rejected(
    vectors: Path, anchors: TrustAnchors, mock: MockIntel
) -> None:
    mock_ders = split_pem_certificates(mock.pck_chain_pem(), "mock")
    assert verify_pck_chain(mock_ders, mock.trust_anchors(), NOW).extensions.fmspc == bytes.fromhex(
        "c0c06f000000"
    )
    with pytest.raises(UntrustedRoot):
        verify_pck_chain(mock_ders, anchors, NOW)
    with pytest.raises(UntrustedRoot):
        verify_pck_chain(mock_ders[:2], anchors, NOW)
    with pytest.raises(UntrustedRoot):
        verify_pck_chain(_chain(vectors, "spr-v4"), mock.trust_anchors(), NOW)


def test_same_names_different_root_is_untrusted(tmp_path: Path, anchors: TrustAnchors) -> None:
    fake = create_mock_intel(tmp_path, now=NOW, names="intel")
    assert fake.root.subject == anchors.intel_root.subject  # identical names
    ders = split_pem_certificates(fake.pck_chain_pem(), "fake")
    with pytest.raises(UntrustedRoot):
        verify_pck_chain(ders, anchors, NOW)
    # Even with the genuine root certificate substituted at the end of the chain.
    genuine_root = anchors.intel_root.public_bytes(serialization.Encoding.DER)
    with pytest.raises(UntrustedRoot):
        verify_pck_chain((ders[0], ders[1], genuine_root), anchors, NOW)


def test_pck_not_signed_by_its_ca(vectors: Path, anchors: TrustAnchors) -> None:
    spr = _chain(vectors, "spr-v4")
    other_pck = _chain(vectors, "uptodate-v4")[0]
    # Same issuer name, different certificate: signature must still verify (it does, same CA).
    assert verify_pck_chain((other_pck, spr[1], spr[2]), anchors, NOW)
    # Swap: the PCK presented as the CA.
    with pytest.raises(ChainRejected):
        verify_pck_chain((spr[1], spr[0], spr[2]), anchors, NOW)


def test_pck_signature_tampered(vectors: Path, anchors: TrustAnchors) -> None:
    pck = bytearray(_chain(vectors, "spr-v4")[0])
    pck[-5] ^= 0x01  # inside the signature value
    spr = _chain(vectors, "spr-v4")
    with pytest.raises((CertificateSignatureInvalid, MalformedEvidence)):
        verify_pck_chain((bytes(pck), spr[1], spr[2]), anchors, NOW)


def test_garbage_der_is_malformed(vectors: Path, anchors: TrustAnchors) -> None:
    spr = _chain(vectors, "spr-v4")
    with pytest.raises(MalformedEvidence):
        verify_pck_chain((b"\x30\x03\x02\x01\x00", spr[1], spr[2]), anchors, NOW)


def test_cache_hit_rechecks_validity(vectors: Path, anchors: TrustAnchors) -> None:
    cache: BoundedCache[bytes, object] = BoundedCache(8)
    ders = _chain(vectors, "spr-v4")
    first = verify_pck_chain(ders, anchors, NOW, cache)
    assert cache.misses == 1 and len(cache) == 1
    assert verify_pck_chain(ders, anchors, NOW + timedelta(days=1), cache) is first
    assert cache.hits == 1
    with pytest.raises(CertificateExpired):
        verify_pck_chain(ders, anchors, datetime(2030, 1, 1, tzinfo=UTC), cache)
    assert cache.hits == 2


def test_cache_is_keyed_by_anchor(vectors: Path, anchors: TrustAnchors, mock: MockIntel) -> None:
    cache: BoundedCache[bytes, object] = BoundedCache(8)
    ders = _chain(vectors, "spr-v4")
    verify_pck_chain(ders, anchors, NOW, cache)
    with pytest.raises(UntrustedRoot):
        verify_pck_chain(ders, mock.trust_anchors(), NOW, cache)
