"""TDX quote parser (attestation/tdx/quote.py): layout, strictness, typed rejections."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from attestation.errors import (
    MalformedEvidence,
    MissingCertificate,
    SizeLimitExceeded,
    UnsupportedVersion,
)
from attestation.tdx.quote import (
    INTEL_QE_VENDOR_ID,
    MAX_QUOTE_SIZE,
    InvalidAttestationKey,
    UnsupportedQuoteType,
    parse_quote,
)
from tests.unit.tdx_helpers import quote_bytes

# v4 offsets (header 48, body 584, then signature data)
SIG_LEN_AT = 632
SIG_AT = 636
ATT_KEY_AT = 700
CERT_TYPE_AT = 764
QE_REPORT_AT = 770
AUTH_SIZE_AT = 770 + 384 + 64
INNER_TYPE_AT = AUTH_SIZE_AT + 2 + 32


def _set(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


def test_spr_v4_fields_and_trailing_bytes(vectors: Path) -> None:
    raw = quote_bytes(vectors, "spr-v4")
    q = parse_quote(raw)
    assert q.version == 4 and q.body_type == 2
    assert q.header.att_key_type == 2 and q.header.tee_type == 0x81
    assert q.header.qe_vendor_id == INTEL_QE_VENDOR_ID
    assert q.trailing_bytes == 39
    assert q.signed_bytes == raw[:632]
    assert q.body.tee_tcb_svn.hex() == "03000400000000000000000000000000"
    assert q.body.td_attributes.hex() == "0000004000000000"
    assert not q.body.debug
    assert q.body.tee_tcb_svn_2 is None and q.body.mr_service_td is None
    assert len(q.pck_chain_der) == 3
    assert q.qe_report.isv_prod_id == 2 and q.qe_report.isv_svn == 4
    assert len(q.qe_auth_data) == 32
    # The trailing bytes are unsigned: dropping or changing them changes nothing parsed.
    assert parse_quote(raw[:-39]).body == q.body
    assert parse_quote(raw[:-39] + b"\xff" * 100).signature == q.signature


def test_sample_v5_td15_body_and_nul_terminated_pem(vectors: Path) -> None:
    raw = quote_bytes(vectors, "sample-v5")
    q = parse_quote(raw)
    assert q.version == 5 and q.body_type == 3
    assert q.body.tee_tcb_svn_2 is not None and len(q.body.tee_tcb_svn_2) == 16
    assert q.body.mr_service_td is not None and len(q.body.mr_service_td) == 48
    assert q.signed_bytes == raw[: 48 + 6 + 648]
    assert raw.rstrip(b"\x00") != raw  # the PEM really ends with NUL
    assert not q.pck_chain_pem.endswith(b"\x00")
    assert len(q.pck_chain_der) == 3


def test_debug_vector_parses_with_debug_bit(vectors: Path) -> None:
    q = parse_quote(quote_bytes(vectors, "debug-v4"))
    assert q.body.debug


@pytest.mark.parametrize("name", ["uptodate-v4", "outdated-v5"])
def test_collateral_vectors_parse(vectors: Path, name: str) -> None:
    q = parse_quote(quote_bytes(vectors, name))
    assert q.body.tee_tcb_svn[1] == 1


def test_body_field_offsets(vectors: Path) -> None:
    raw = bytearray(quote_bytes(vectors, "spr-v4"))
    fields = {
        "tee_tcb_svn": (0, 16), "mr_seam": (16, 48), "mr_signer_seam": (64, 48),
        "seam_attributes": (112, 8), "td_attributes": (120, 8), "xfam": (128, 8),
        "mr_td": (136, 48), "mr_config_id": (184, 48), "mr_owner": (232, 48),
        "mr_owner_config": (280, 48), "report_data": (520, 64),
    }  # fmt: skip
    for i, (off, size) in enumerate(fields.values()):
        raw[48 + off : 48 + off + size] = bytes([i + 1]) * size
    for r in range(4):
        raw[48 + 328 + 48 * r : 48 + 376 + 48 * r] = bytes([0xA0 + r]) * 48
    body = parse_quote(bytes(raw)).body
    for i, (name, (_, size)) in enumerate(fields.items()):
        assert getattr(body, name) == bytes([i + 1]) * size, name
    assert body.rtmrs == tuple(bytes([0xA0 + r]) * 48 for r in range(4))


@pytest.mark.parametrize("version", [0, 1, 3, 6, 0xFFFF])
def test_unsupported_versions(vectors: Path, version: int) -> None:
    with pytest.raises(UnsupportedVersion) as exc:
        parse_quote(_set(quote_bytes(vectors, "spr-v4"), 0, "<H", version))
    assert type(exc.value) is UnsupportedVersion
    assert "version" in str(exc.value)


def test_att_key_type_3_rejected(vectors: Path) -> None:
    with pytest.raises(UnsupportedQuoteType, match="att_key_type"):
        parse_quote(_set(quote_bytes(vectors, "spr-v4"), 2, "<H", 3))


@pytest.mark.parametrize("tee", [0, 0x80, 0x82])
def test_tee_type_rejected(vectors: Path, tee: int) -> None:
    with pytest.raises(UnsupportedQuoteType, match="tee_type"):
        parse_quote(_set(quote_bytes(vectors, "spr-v4"), 4, "<I", tee))


@pytest.mark.parametrize("cert_type", [1, 2, 3, 4, 5, 7])
def test_certification_data_type_not_6_rejected(vectors: Path, cert_type: int) -> None:
    with pytest.raises(UnsupportedQuoteType, match=r"certification_data\.type"):
        parse_quote(_set(quote_bytes(vectors, "spr-v4"), CERT_TYPE_AT, "<H", cert_type))


def test_inner_certification_type_not_5_rejected(vectors: Path) -> None:
    with pytest.raises(UnsupportedQuoteType, match=r"pck_cert_data\.type"):
        parse_quote(_set(quote_bytes(vectors, "spr-v4"), INNER_TYPE_AT, "<H", 3))


@pytest.mark.parametrize("body_type", [0, 1, 4, 9])
def test_v5_unknown_body_type(vectors: Path, body_type: int) -> None:
    with pytest.raises(UnsupportedQuoteType, match=r"body_descriptor\.type"):
        parse_quote(_set(quote_bytes(vectors, "sample-v5"), 48, "<H", body_type))


@pytest.mark.parametrize("size", [0, 584, 647, 649, 0xFFFFFFFF])
def test_v5_body_size_must_match_type(vectors: Path, size: int) -> None:
    with pytest.raises(MalformedEvidence, match=r"body_descriptor\.size") as exc:
        parse_quote(_set(quote_bytes(vectors, "sample-v5"), 50, "<I", size))
    assert type(exc.value) is MalformedEvidence


@pytest.mark.parametrize(
    ("cut", "field"),
    [
        (0, "header"),
        (10, "header"),
        (47, "header"),
        (48, "body"),
        (300, "body"),
        (631, "body"),
        (633, "signature_data_len"),
        (640, "signature_data"),
        (1000, "signature_data"),
        (4000, "signature_data"),
    ],
)
def test_truncation_names_the_field(vectors: Path, cut: int, field: str) -> None:
    raw = quote_bytes(vectors, "spr-v4")[:cut]
    with pytest.raises(MalformedEvidence, match=field) as exc:
        parse_quote(raw)
    assert type(exc.value) is MalformedEvidence
    assert "truncated" in str(exc.value)


def test_truncation_inside_declared_lengths(vectors: Path) -> None:
    raw = quote_bytes(vectors, "spr-v4")
    sig_len = struct.unpack_from("<I", raw, SIG_LEN_AT)[0]
    # Shrink the declared signature data: the certification data then overruns it.
    with pytest.raises(MalformedEvidence, match=r"signature_data\.certification_data: truncated"):
        parse_quote(_set(raw, SIG_LEN_AT, "<I", sig_len - 10))
    # Shrink the QE auth data size: the rest is misread and must fail, never silently pass.
    with pytest.raises(MalformedEvidence):
        parse_quote(_set(raw, AUTH_SIZE_AT, "<H", 31))
    # Grow the inner size beyond the outer certification data.
    with pytest.raises(MalformedEvidence, match="pck_cert_data: truncated"):
        parse_quote(_set(raw, INNER_TYPE_AT + 2, "<I", 10_000))


def test_bytes_inside_declared_length_must_be_accounted(vectors: Path) -> None:
    raw = quote_bytes(vectors, "spr-v4")
    sig_len = struct.unpack_from("<I", raw, SIG_LEN_AT)[0]
    # Declare 4 more signature-data bytes (taken from the unsigned trailer): unexplained bytes.
    with pytest.raises(MalformedEvidence, match="unexpected bytes"):
        parse_quote(_set(raw, SIG_LEN_AT, "<I", sig_len + 4))


def test_oversize_rejected(vectors: Path) -> None:
    raw = quote_bytes(vectors, "spr-v4")
    with pytest.raises(SizeLimitExceeded):
        parse_quote(raw + bytes(MAX_QUOTE_SIZE))
    # At the limit the trailing bytes are still tolerated.
    assert (
        parse_quote(raw + bytes(MAX_QUOTE_SIZE - len(raw))).trailing_bytes
        == MAX_QUOTE_SIZE - 632 - 4 - 4299
    )


def test_attestation_key_off_curve(vectors: Path) -> None:
    raw = bytearray(quote_bytes(vectors, "spr-v4"))
    raw[ATT_KEY_AT : ATT_KEY_AT + 64] = (1).to_bytes(32, "big") + (1).to_bytes(32, "big")
    with pytest.raises(InvalidAttestationKey, match="not a point on P-256"):
        parse_quote(bytes(raw))


def test_pem_garbage_and_empty(vectors: Path) -> None:
    raw = quote_bytes(vectors, "spr-v4")
    pem_at = INNER_TYPE_AT + 6
    bad = bytearray(raw)
    bad[pem_at + 30] = ord("!")  # inside the first base64 body
    with pytest.raises(MalformedEvidence, match="pck_cert_data"):
        parse_quote(bytes(bad))
    bad = bytearray(raw)
    bad[pem_at : pem_at + 5] = b"XXXXX"  # breaks the first BEGIN line
    with pytest.raises(MalformedEvidence, match="pck_cert_data"):
        parse_quote(bytes(bad))
    # A PEM area of only NUL bytes holds no certificate.
    inner_size = struct.unpack_from("<I", raw, INNER_TYPE_AT + 2)[0]
    nul = bytearray(raw)
    nul[pem_at : pem_at + inner_size] = bytes(inner_size)
    with pytest.raises(MissingCertificate):
        parse_quote(bytes(nul))


def test_non_bytes_input_rejected() -> None:
    with pytest.raises(MalformedEvidence):
        parse_quote("not bytes")  # type: ignore[arg-type]


def test_v5_with_td10_body(vectors: Path) -> None:
    """A v5 quote may carry a TDX 1.0 body (type 2, 584 bytes): rebuild one from spr-v4."""
    raw = quote_bytes(vectors, "spr-v4")
    v5 = _set(raw[:48], 0, "<H", 5) + struct.pack("<HI", 2, 584) + raw[48:]
    q = parse_quote(v5)
    assert q.version == 5 and q.body_type == 2 and q.body == parse_quote(raw).body
    assert q.signed_bytes == v5[: 48 + 6 + 584]
