"""The CBOR evidence envelope: round trip, canonical form, bounds and typed errors; sniff()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import pytest

from attestation import evidence as ev_mod
from attestation.errors import (
    EvidenceRejected,
    MalformedEvidence,
    SizeLimitExceeded,
    UnsupportedVersion,
)
from attestation.evidence import Evidence, sniff

SNP = bytes([2, 0, 0, 0]) + bytes(ev_mod.SNP_REPORT_SIZE - 4)  # version 2, right size
TDX = bytes([4, 0, 2, 0, 0x81, 0, 0, 0]) + bytes(100)
_DROP = object()  # leave the field out


def _env(**fields: Any) -> bytes:
    body: dict[str, Any] = {"v": 1, "tee": "snp", "report": SNP}
    body.update(fields)
    return cbor2.dumps({k: v for k, v in body.items() if v is not _DROP}, canonical=True)


# --- round trip and canonical encoding --------------------------------------------------------


def test_round_trip_full() -> None:
    ev = Evidence(
        tee="tdx",
        report=TDX,
        certs=(b"leaf", b"ca"),
        crls=(b"crl",),
        collateral={"tcb_info": b"{}", "qe_identity": b"[]"},
    )
    back = Evidence.decode(ev.encode())
    assert back == ev
    assert back.certs == (b"leaf", b"ca") and isinstance(back.certs, tuple)
    assert dict(back.collateral) == {"tcb_info": b"{}", "qe_identity": b"[]"}


def test_round_trip_minimal_omits_empty_fields() -> None:
    ev = Evidence(tee="snp", report=SNP)
    raw = ev.encode()
    assert cbor2.loads(raw) == {"v": 1, "tee": "snp", "report": SNP}
    assert Evidence.decode(raw) == ev


def test_encoding_is_canonical_and_deterministic() -> None:
    ev = Evidence(tee="snp", report=SNP, certs=(b"a",), collateral={"zz": b"1", "a": b"2"})
    raw = ev.encode()
    assert raw == ev.encode()
    assert raw == cbor2.dumps(cbor2.loads(raw), canonical=True)
    # canonical map order: shorter keys first, then bytewise
    keys = list(cbor2.loads(raw).keys())
    assert keys == ["v", "tee", "certs", "report", "collateral"]
    assert list(cbor2.loads(raw)["collateral"].keys()) == ["a", "zz"]


def test_non_canonical_input_decodes_and_re_encodes_canonically() -> None:
    body = {"report": SNP, "certs": [b"x"], "tee": "snp", "v": 1}
    loose = cbor2.dumps(body)  # insertion order, not canonical
    canonical = cbor2.dumps(body, canonical=True)
    assert loose != canonical
    ev = Evidence.decode(loose)
    assert ev.encode() == canonical


def test_unknown_keys_are_ignored() -> None:
    raw = _env(future={"anything": [1, 2, 3]}, x=b"ignored", **{"7": 7})
    ev = Evidence.decode(raw)
    assert ev == Evidence(tee="snp", report=SNP)
    assert "future" not in cbor2.loads(ev.encode())


def test_integer_map_keys_are_ignored() -> None:
    raw = cbor2.dumps({"v": 1, "tee": "snp", "report": SNP, 1: b"x"})
    assert Evidence.decode(raw).report == SNP


# --- shape errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        cbor2.dumps([1, "snp"]),
        cbor2.dumps("envelope"),
        cbor2.dumps(1),
        cbor2.dumps(None),
        cbor2.dumps(SNP),
    ],
    ids=["array", "text", "int", "null", "bytes"],
)
def test_non_map_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedEvidence, match="not a CBOR map"):
        Evidence.decode(raw)


@pytest.mark.parametrize("raw", [b"", b"\xa1", b"\xff", b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff"])
def test_invalid_cbor_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedEvidence, match="not valid CBOR"):
        Evidence.decode(raw)


def test_trailing_bytes_are_malformed() -> None:
    with pytest.raises(MalformedEvidence, match="trailing bytes"):
        Evidence.decode(_env() + b"\x00")


@pytest.mark.parametrize(
    ("version", "shown"),
    [
        (2, "version 2"),
        (0, "version 0"),
        (-1, "version -1"),
        ("1", "of type str"),
        (1.0, "of type float"),
        (True, "of type bool"),
        (_DROP, "missing"),
        (1 << 80, "out of range"),
    ],
)
def test_wrong_version(version: object, shown: str) -> None:
    with pytest.raises(UnsupportedVersion, match=shown):
        Evidence.decode(_env(v=version))


@pytest.mark.parametrize("tee", ["sev", "SNP", "", 1, None, b"snp", _DROP])
def test_wrong_tee(tee: object) -> None:
    with pytest.raises(MalformedEvidence, match=r"envelope\.tee") as info:
        Evidence.decode(_env(tee=tee))
    assert type(info.value) is MalformedEvidence


def test_wrong_tee_in_constructor() -> None:
    with pytest.raises(MalformedEvidence, match=r"envelope\.tee"):
        Evidence(tee="sgx", report=SNP)


@pytest.mark.parametrize("report", ["text", 5, [SNP], _DROP])
def test_report_not_bytes(report: object) -> None:
    with pytest.raises(MalformedEvidence, match=r"envelope\.report"):
        Evidence.decode(_env(report=report))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("certs", b"der"),
        ("certs", ["text"]),
        ("certs", [b"ok", 1]),
        ("certs", {"a": b"b"}),
        ("crls", "x"),
        ("crls", [None]),
        ("collateral", [b"x"]),
        ("collateral", {1: b"x"}),
        ("collateral", {"k": "text"}),
    ],
)
def test_typed_errors_for_bad_optional_fields(field: str, value: object) -> None:
    with pytest.raises(MalformedEvidence, match=rf"envelope\.{field}") as info:
        Evidence.decode(_env(**{field: value}))
    assert type(info.value) is MalformedEvidence


# --- size limits -----------------------------------------------------------------------------


def test_envelope_size_limit() -> None:
    with pytest.raises(SizeLimitExceeded, match="envelope is"):
        Evidence.decode(b"\xa0" + bytes(ev_mod.MAX_ENVELOPE))


@pytest.mark.parametrize("size", [ev_mod.SNP_REPORT_SIZE - 1, ev_mod.SNP_REPORT_SIZE + 1, 0])
def test_snp_report_must_be_exact(size: int) -> None:
    with pytest.raises(SizeLimitExceeded, match="SNP report"):
        Evidence.decode(_env(report=bytes(size)))


def test_tdx_quote_limit() -> None:
    assert Evidence(tee="tdx", report=bytes(ev_mod.MAX_TDX_QUOTE)).report
    with pytest.raises(SizeLimitExceeded, match="TDX quote"):
        Evidence.decode(_env(tee="tdx", report=bytes(ev_mod.MAX_TDX_QUOTE + 1)))


def test_cert_count_limit() -> None:
    ok = [b"c"] * ev_mod.MAX_CERTS
    assert len(Evidence.decode(_env(certs=ok)).certs) == ev_mod.MAX_CERTS
    with pytest.raises(SizeLimitExceeded, match=r"envelope\.certs: 9 entries"):
        Evidence.decode(_env(certs=[*ok, b"c"]))


def test_cert_size_limit() -> None:
    assert Evidence.decode(_env(certs=[bytes(ev_mod.MAX_CERT_SIZE)])).certs
    with pytest.raises(SizeLimitExceeded, match=r"envelope\.certs\[1\]"):
        Evidence.decode(_env(certs=[b"x", bytes(ev_mod.MAX_CERT_SIZE + 1)]))


def test_crl_count_limit() -> None:
    with pytest.raises(SizeLimitExceeded, match=r"envelope\.crls: 5 entries"):
        Evidence.decode(_env(crls=[b"c"] * (ev_mod.MAX_CRLS + 1)))
    assert len(Evidence.decode(_env(crls=[b"c"] * ev_mod.MAX_CRLS)).crls) == ev_mod.MAX_CRLS


def test_crl_size_limit() -> None:
    with pytest.raises(SizeLimitExceeded, match=r"envelope\.crls\[0\]"):
        Evidence.decode(_env(crls=[bytes(ev_mod.MAX_CRL_SIZE + 1)]))
    assert Evidence.decode(_env(crls=[bytes(ev_mod.MAX_CRL_SIZE)])).crls


def test_collateral_item_limit() -> None:
    items = {f"k{i}": b"v" for i in range(ev_mod.MAX_COLLATERAL_ITEMS)}
    assert len(Evidence.decode(_env(collateral=items)).collateral) == ev_mod.MAX_COLLATERAL_ITEMS
    items["one-more"] = b"v"
    with pytest.raises(SizeLimitExceeded, match="17 items"):
        Evidence.decode(_env(collateral=items))


def test_collateral_total_size_limit() -> None:
    half = ev_mod.MAX_COLLATERAL // 2
    assert Evidence(tee="tdx", report=TDX, collateral={"a": bytes(half - 1), "b": bytes(half - 1)})
    with pytest.raises(SizeLimitExceeded, match=r"envelope\.collateral: \d+ bytes"):
        Evidence.decode(
            _env(tee="tdx", report=TDX, collateral={"a": bytes(half), "b": bytes(half)})
        )


def test_limits_apply_to_the_constructor_too() -> None:
    with pytest.raises(SizeLimitExceeded):
        Evidence(tee="snp", report=SNP, certs=(b"c",) * 9)


def test_every_error_is_an_evidence_rejection() -> None:
    for raw in (b"", cbor2.dumps([]), _env(v=3), _env(certs=[b"c"] * 99)):
        with pytest.raises(EvidenceRejected):
            Evidence.decode(raw)


# --- sniff -----------------------------------------------------------------------------------


def test_sniff_envelope() -> None:
    assert sniff(_env()) == "envelope"
    assert sniff(b"\xa0") == "envelope"  # decided on the first byte; decode() judges the rest


@pytest.mark.parametrize("version", [4, 5])
def test_sniff_tdx(version: int) -> None:
    assert sniff(bytes([version, 0, 2, 0]) + bytes(4)) == "tdx"


@pytest.mark.parametrize("version", [2, 3, 4, 5])
def test_sniff_snp(version: int) -> None:
    assert sniff(version.to_bytes(4, "little") + bytes(ev_mod.SNP_REPORT_SIZE - 4)) == "snp"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80",  # CBOR array
        bytes([4, 0, 3, 0]) + bytes(4),  # TDX header with another attestation key type
        bytes([3, 0, 2, 0]) + bytes(4),  # quote version 3
        bytes([4, 0, 2, 0]),  # too short for a quote header
        (1).to_bytes(4, "little") + bytes(ev_mod.SNP_REPORT_SIZE - 4),  # SNP version 1
        (6).to_bytes(4, "little") + bytes(ev_mod.SNP_REPORT_SIZE - 4),  # SNP version 6
        (2).to_bytes(4, "little") + bytes(ev_mod.SNP_REPORT_SIZE - 5),  # one byte short
        b"-----BEGIN CERTIFICATE-----",
    ],
)
def test_sniff_rejects(data: bytes) -> None:
    with pytest.raises(MalformedEvidence, match="neither"):
        sniff(data)


def test_sniff_real_vectors(vectors: Path) -> None:
    for name in ("milan-v2", "milan-v2-debug", "vlek-v3"):
        assert sniff((vectors / "snp" / f"{name}.report.bin").read_bytes()) == "snp"
    for name in ("spr-v4", "sample-v5", "debug-v4", "uptodate-v4", "outdated-v5"):
        assert sniff((vectors / "tdx" / f"{name}.quote.bin").read_bytes()) == "tdx"
    report = (vectors / "snp" / "milan-v2.report.bin").read_bytes()
    assert sniff(Evidence(tee="snp", report=report).encode()) == "envelope"
