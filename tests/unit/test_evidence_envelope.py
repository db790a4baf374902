"""The CBOR evidence envelope: round trip, the strict bounded decoder, per-TEE caps and typed
refusals; sniff() and the one rule for raw reports and quotes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import cbor2
import pytest

from attestation import cbor_strict as cs
from attestation import cli
from attestation import evidence as ev_mod
from attestation.errors import (
    EvidenceRejected,
    MalformedEvidence,
    SizeLimitExceeded,
    UnsupportedVersion,
)
from attestation.evidence import LIMITS, Evidence, RawInputSize, from_raw, sniff

SNP = bytes([2, 0, 0, 0]) + bytes(ev_mod.SNP_REPORT_SIZE - 4)  # version 2, right size
TDX = bytes([4, 0, 2, 0, 0x81, 0, 0, 0]) + bytes(100)
SNP_LIM = LIMITS["snp"]
TDX_LIM = LIMITS["tdx"]
_DROP = object()  # leave the field out


def _env(**fields: Any) -> bytes:
    body: dict[str, Any] = {"v": 1, "tee": "snp", "report": SNP}
    body.update(fields)
    return cbor2.dumps({k: v for k, v in body.items() if v is not _DROP}, canonical=True)


def _head(major: int, arg: int) -> bytes:
    """A shortest-form CBOR head, for hand-built hostile input."""
    if arg < 24:
        return bytes([major << 5 | arg])
    for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if arg < 1 << (8 * width):
            return bytes([major << 5 | info]) + arg.to_bytes(width, "big")
    raise ValueError(arg)


def _text(s: str) -> bytes:
    raw = s.encode()
    return _head(3, len(raw)) + raw


def _refused(raw: bytes, cls: type[EvidenceRejected], match: str | None = None) -> EvidenceRejected:
    with pytest.raises(cls, match=match) as info:
        Evidence.decode(raw)
    return info.value


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


def test_encoding_is_canonical_and_byte_exact() -> None:
    ev = Evidence(tee="tdx", report=TDX, certs=(b"a",), collateral={"zz": b"1", "a": b"2"})
    raw = ev.encode()
    assert raw == ev.encode()
    assert raw == cbor2.dumps(cbor2.loads(raw), canonical=True)
    # canonical map order: shorter keys first, then bytewise
    keys = list(cbor2.loads(raw).keys())
    assert keys == ["v", "tee", "certs", "report", "collateral"]
    assert list(cbor2.loads(raw)["collateral"].keys()) == ["a", "zz"]
    # the strict decoder takes exactly what the encoder writes, and gives it back byte for byte
    assert Evidence.decode(raw).encode() == raw


def test_real_vectors_round_trip_byte_exact(vectors: Path) -> None:
    from attestation.tdx.collateral_model import load_collateral_json

    report = (vectors / "snp" / "milan-v2.report.bin").read_bytes()
    vcek = (vectors / "snp" / "milan-v2.vcek.der").read_bytes()
    quote = (vectors / "tdx" / "uptodate-v4.quote.bin").read_bytes()
    collateral = load_collateral_json(vectors / "tdx" / "uptodate-v4.collateral.json")
    for ev in (
        Evidence(tee="snp", report=report, certs=(vcek,)),
        Evidence(tee="tdx", report=quote, collateral=collateral.to_cbor_map()),
    ):
        raw = ev.encode()
        assert Evidence.decode(raw) == ev and Evidence.decode(raw).encode() == raw


def test_unknown_text_keys_within_the_subset_are_skipped() -> None:
    raw = _env(future={"anything": [1, 2, 3]}, x=b"ignored", **{"7": 7, "zzz": "text"})
    ev = Evidence.decode(raw)
    assert ev == Evidence(tee="snp", report=SNP)
    assert "future" not in cbor2.loads(ev.encode())


@pytest.mark.parametrize(
    ("value", "cls"),
    [
        (1.5, cs.ForbiddenCborItem),
        ([None], cs.ForbiddenCborItem),
        ({"a": -1}, cs.ForbiddenCborItem),
        ({"a": {"b": {"c": {"d": 1}}}}, cs.CborLimitExceeded),  # too deep
        (list(range(17)), cs.CborLimitExceeded),
        (bytes(ev_mod.UNKNOWN_VALUES.size + 1), cs.CborLimitExceeded),
        ({1: b"x"}, cs.UnexpectedType),  # nested map keys are text too
    ],
)
def test_unknown_keys_outside_the_subset_or_caps_are_refused(
    value: object, cls: type[EvidenceRejected]
) -> None:
    _refused(_env(future=value), cls, r"envelope\['future'\]")


def test_integer_map_keys_are_refused() -> None:
    err = _refused(
        cbor2.dumps({"v": 1, "tee": "snp", "report": SNP, 1: b"x"}, canonical=True),
        cs.UnexpectedType,
        "an unsigned integer, want a text string",
    )
    assert err.reason == "cbor_unexpected_type"


# --- refusals of the CBOR subset --------------------------------------------------------------


def test_tag_is_refused() -> None:
    raw = _env(report=cbor2.CBORTag(24, SNP))
    err = _refused(raw, cs.ForbiddenCborItem, r"envelope\.report: a tag")
    assert err.reason == "cbor_forbidden_item"


def test_bignum_key_is_refused_at_its_first_byte() -> None:
    raw = cbor2.dumps({1 << 80: 0})
    err = _refused(raw, cs.ForbiddenCborItem, "a tag")
    assert isinstance(err, cs.CborRejected) and err.offset == 1


@pytest.mark.parametrize("value", [1.0, 1.5, float("nan"), True, False, None, cbor2.undefined])
def test_floats_and_simple_values_are_refused(value: object) -> None:
    err = _refused(_env(extra=value), cs.ForbiddenCborItem, "a float or simple value")
    assert err.reason == "cbor_forbidden_item"


def test_negative_integer_is_refused() -> None:
    _refused(_env(v=-1), cs.ForbiddenCborItem, r"envelope\.v: a negative integer")


@pytest.mark.parametrize(
    "raw",
    [
        b"\xbf" + _text("v") + b"\x01\xff",  # indefinite map
        b"\xa3"
        + _text("v")
        + b"\x01"
        + _text("tee")
        + _text("snp")
        + _text("report")
        + b"\x5f"
        + _head(2, 1184)
        + SNP
        + b"\xff",  # indefinite byte string
        b"\xa3" + _text("v") + b"\x01" + _text("tee") + b"\x7f" + _text("snp") + b"\xff",
    ],
    ids=["map", "bytes", "text"],
)
def test_indefinite_lengths_are_refused(raw: bytes) -> None:
    err = _refused(raw, cs.IndefiniteLength, "indefinite-length")
    assert err.reason == "cbor_indefinite_length"


@pytest.mark.parametrize(
    "raw",
    [
        b"\xb8\x03" + _env()[1:],  # map count 3 in two bytes
        b"\xa3\x78\x01v" + _env()[3:],  # key "v" with a one-byte length field
        b"\xa3" + _text("v") + b"\x18\x01" + _env()[3:][1:],  # v = 1 in two bytes
    ],
    ids=["map-count", "key-length", "uint"],
)
def test_non_shortest_encodings_are_refused(raw: bytes) -> None:
    err = _refused(raw, cs.NonCanonicalCbor, "not the shortest form")
    assert err.reason == "cbor_non_canonical"


def test_duplicate_key_is_refused() -> None:
    raw = b"\xa4" + _text("v") + b"\x01" + _text("v") + b"\x01" + _env()[1 + 3 :]
    err = _refused(raw, cs.DuplicateKey, "duplicate key 'v'")
    assert err.reason == "cbor_duplicate_key"


def test_duplicate_collateral_key_is_refused() -> None:
    body = _env(tee="tdx", report=TDX)
    raw = (
        b"\xa4"
        + body[1:]
        + _text("collateral")
        + b"\xa2"
        + _text("k")
        + _head(2, 1)
        + b"a"
        + _text("k")
        + _head(2, 1)
        + b"b"
    )
    _refused(raw, cs.DuplicateKey, r"envelope\.collateral: duplicate key 'k'")


def test_key_order_must_be_canonical() -> None:
    loose = cbor2.dumps({"v": 1, "tee": "snp", "report": SNP, "zzz": 1, "x": 1})
    err = _refused(loose, cs.NonCanonicalCbor, "key 'zzz' out of canonical order")
    assert err.reason == "cbor_non_canonical"
    # a bulky field before "tee" can only mean the keys are unordered (or tee is missing)
    _refused(cbor2.dumps({"report": SNP, "tee": "snp", "v": 1}), MalformedEvidence, "canonical")


@pytest.mark.parametrize("raw", [b"", b"\xa1", b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff", b"\xa1a"])
def test_truncated_input(raw: bytes) -> None:
    _refused(raw, MalformedEvidence)


def test_invalid_utf8_key_is_refused() -> None:
    _refused(b"\xa1\x61\xff\x00", cs.CborRejected, "not valid UTF-8")


def test_reserved_additional_information_is_refused() -> None:
    _refused(b"\xbc", cs.CborRejected, "reserved additional information")


@pytest.mark.parametrize(
    "raw",
    [cbor2.dumps([1, "snp"]), cbor2.dumps("envelope"), cbor2.dumps(1), cbor2.dumps(SNP)],
    ids=["array", "text", "int", "bytes"],
)
def test_non_map_is_refused(raw: bytes) -> None:
    _refused(raw, cs.UnexpectedType, "want a map")


def test_trailing_bytes_are_refused() -> None:
    err = _refused(_env() + b"\x00", cs.TrailingBytes, "1 trailing bytes")
    assert err.reason == "cbor_trailing_bytes"


# --- schema: version, tee, report, optional fields ---------------------------------------------


@pytest.mark.parametrize(
    ("version", "shown"),
    [(2, "version 2"), (0, "version 0"), (1 << 40, f"version {1 << 40}"), ("1", "a text string")],
)
def test_wrong_version(version: object, shown: str) -> None:
    _refused(_env(v=version), UnsupportedVersion, shown)


def test_missing_version() -> None:
    _refused(_env(v=_DROP), UnsupportedVersion, "version missing")


@pytest.mark.parametrize("tee", ["sev", "SNP", "", 1, b"snp", _DROP, "x" * 9])
def test_wrong_tee(tee: object) -> None:
    _refused(_env(tee=tee), MalformedEvidence, r"envelope\.tee")


def test_wrong_tee_in_constructor() -> None:
    with pytest.raises(MalformedEvidence, match=r"envelope\.tee"):
        Evidence(tee="sgx", report=SNP)


@pytest.mark.parametrize("report", ["text", 5, [SNP], _DROP])
def test_report_not_bytes(report: object) -> None:
    _refused(_env(report=report), MalformedEvidence, r"envelope\.report")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("certs", b"der"),
        ("certs", ["text"]),
        ("certs", [b"ok", 1]),
        ("certs", {"a": b"b"}),
        ("crls", "x"),
        ("crls", [5]),
        ("collateral", [b"x"]),
        ("collateral", {1: b"x"}),
        ("collateral", {"k": "text"}),
    ],
)
def test_typed_errors_for_bad_optional_fields(field: str, value: object) -> None:
    tee = "tdx" if field == "collateral" else "snp"
    report = TDX if tee == "tdx" else SNP
    err = _refused(_env(tee=tee, report=report, **{field: value}), cs.UnexpectedType)
    assert f"envelope.{field}" in str(err)


# --- caps per TEE type --------------------------------------------------------------------------


def test_envelope_size_limit() -> None:
    _refused(b"\xa0" + bytes(ev_mod.MAX_ENVELOPE), SizeLimitExceeded, "envelope is")


def test_total_size_per_tee_is_checked_when_tee_is_read() -> None:
    pad = cbor2.dumps({"zz": bytes(40 * 1024)})[1:]  # an unknown key sorting after "tee"
    raw = (
        b"\xa8"
        + _env()[1:]
        + b"".join(_text(f"z{i:02}") + _head(2, 40 * 1024) + bytes(40 * 1024) for i in range(5))
    )
    assert len(pad) and SNP_LIM.total < len(raw) <= TDX_LIM.total
    err = _refused(raw, SizeLimitExceeded, f"limit {SNP_LIM.total} for snp evidence")
    assert err.reason == "size_limit"


@pytest.mark.parametrize("size", [ev_mod.SNP_REPORT_SIZE - 1, ev_mod.SNP_REPORT_SIZE + 1, 0])
def test_snp_report_must_be_exact(size: int) -> None:
    _refused(_env(report=bytes(size)), SizeLimitExceeded, r"envelope\.report")


def test_tdx_quote_limit() -> None:
    assert Evidence(tee="tdx", report=bytes(TDX_LIM.report_max)).report
    err = _refused(
        _env(tee="tdx", report=bytes(TDX_LIM.report_max + 1)),
        SizeLimitExceeded,
        rf"envelope\.report: {TDX_LIM.report_max + 1} bytes, limit {TDX_LIM.report_max} for tdx",
    )
    assert isinstance(err, cs.CborLimitExceeded) and err.offset < 32  # from the header alone


@pytest.mark.parametrize(("tee", "report"), [("snp", SNP), ("tdx", TDX)])
def test_cert_count_limit_per_tee(tee: str, report: bytes) -> None:
    n = LIMITS[tee].certs
    ok = [b"c"] * n
    assert len(Evidence.decode(_env(tee=tee, report=report, certs=ok)).certs) == n
    _refused(
        _env(tee=tee, report=report, certs=[*ok, b"c"]),
        SizeLimitExceeded,
        rf"envelope\.certs: {n + 1} entries, limit {n} for {tee} evidence",
    )
    with pytest.raises(SizeLimitExceeded):
        Evidence(tee=tee, report=report, certs=(b"c",) * (n + 1))


def test_snp_takes_at_most_three_certificates() -> None:
    assert SNP_LIM.certs == 3  # VCEK/VLEK, ASK/ASVK, ARK


def test_cert_size_limit() -> None:
    assert Evidence.decode(_env(certs=[bytes(SNP_LIM.cert_size)])).certs
    _refused(_env(certs=[b"x", bytes(SNP_LIM.cert_size + 1)]), SizeLimitExceeded, r"certs\[1\]")


def test_crl_count_and_size_limits() -> None:
    assert len(Evidence.decode(_env(crls=[b"c"] * SNP_LIM.crls)).crls) == SNP_LIM.crls
    _refused(_env(crls=[b"c"] * (SNP_LIM.crls + 1)), SizeLimitExceeded, r"envelope\.crls: ")
    assert Evidence.decode(_env(crls=[bytes(SNP_LIM.crl_size)])).crls
    _refused(_env(crls=[bytes(SNP_LIM.crl_size + 1)]), SizeLimitExceeded, r"envelope\.crls\[0\]")


def test_snp_takes_no_collateral() -> None:
    assert Evidence.decode(_env(collateral={})) == Evidence(tee="snp", report=SNP)
    _refused(_env(collateral={"k": b"v"}), SizeLimitExceeded, "limit 0 for snp evidence")


def test_collateral_item_limit() -> None:
    items = {f"k{i:02}": b"v" for i in range(TDX_LIM.collateral_items)}
    ev = Evidence.decode(_env(tee="tdx", report=TDX, collateral=items))
    assert len(ev.collateral) == TDX_LIM.collateral_items
    items["one-more"] = b"v"
    _refused(_env(tee="tdx", report=TDX, collateral=items), SizeLimitExceeded, "map of 17 entries")


def test_collateral_total_size_limit() -> None:
    half = TDX_LIM.collateral_size // 2
    assert Evidence(tee="tdx", report=TDX, collateral={"a": bytes(half - 1), "b": bytes(half - 1)})
    _refused(
        _env(tee="tdx", report=TDX, collateral={"a": bytes(half), "b": bytes(half)}),
        SizeLimitExceeded,
        r"envelope\.collateral: more than",
    )


def test_depth_limit_applies_to_unknown_values() -> None:
    ok: object = b"x"
    for _ in range(ev_mod.UNKNOWN_VALUES.depth - 1):
        ok = [ok]
    assert Evidence.decode(_env(extra=ok)) == Evidence(tee="snp", report=SNP)
    err = _refused(_env(extra=[ok]), cs.CborLimitExceeded, "nested deeper than")
    assert err.reason == "size_limit"


def test_top_level_key_count_limit() -> None:
    many = {f"x{i:02}": 0 for i in range(ev_mod.MAX_TOP_LEVEL_KEYS)}
    _refused(_env(**many), SizeLimitExceeded, "map of 19 entries, limit 16")


def _colliding_bignum_map(n: int) -> bytes:
    """A CBOR map of ``n`` bignum keys that all collide in Python's int hash."""
    modulus = (1 << 61) - 1  # hash(k) == k % modulus for Python ints
    keys = [b"\xc2" + _head(2, 10) + (i * modulus + 7).to_bytes(10, "big") for i in range(n)]
    assert len({hash(int.from_bytes(k[2:], "big")) for k in keys[:100]}) == 1
    return _head(5, n) + b"\x00".join(keys) + b"\x00"


def test_hash_colliding_bignum_map_is_refused_after_a_bounded_prefix() -> None:
    """The reported attack: 80,000 hash-colliding bignum keys. Refused on its size, and the same
    map within the size cap is refused from its header (offset 0), before any key is read."""
    raw = _colliding_bignum_map(80_000)
    err = _refused(raw, SizeLimitExceeded, f"envelope is {len(raw)} bytes")
    assert err.reason == "size_limit"
    with pytest.raises(cs.CborLimitExceeded, match="map of 80000 entries") as info:
        cs.Reader(raw, "envelope").map("envelope", ev_mod.MAX_TOP_LEVEL_KEYS)
    assert info.value.offset == 0

    smaller = _colliding_bignum_map(30_000)
    assert len(smaller) <= ev_mod.MAX_ENVELOPE  # so the whole-size check is not what stops it
    err = _refused(smaller, cs.CborLimitExceeded, "map of 30000 entries, limit 16")
    assert err.reason == "size_limit"
    assert isinstance(err, cs.CborLimitExceeded) and err.offset == 0
    # a map whose count passes: the first key (a tag) stops it, still at a tiny prefix
    err = _refused(_colliding_bignum_map(3), cs.ForbiddenCborItem, "a tag")
    assert isinstance(err, cs.CborRejected) and err.offset == 1


def test_limits_apply_to_the_constructor_too() -> None:
    with pytest.raises(SizeLimitExceeded):
        Evidence(tee="snp", report=SNP, certs=(b"c",) * 9)
    with pytest.raises(MalformedEvidence, match="keys must be text"):
        Evidence(tee="tdx", report=TDX, collateral={"": b"x"})


def test_every_error_is_a_malformed_evidence_with_a_reason() -> None:
    for raw in (b"", cbor2.dumps([]), _env(v=3), _env(certs=[b"c"] * 99), _env(x=1.0)):
        with pytest.raises(MalformedEvidence) as info:
            Evidence.decode(raw)
        assert info.value.reason and info.value.reason.replace("_", "").isalpha()


# --- sniff -----------------------------------------------------------------------------------


def test_sniff_envelope() -> None:
    assert sniff(_env()) == "envelope"
    assert sniff(b"\xa0") == "envelope"  # decided on the first byte; decode() judges the rest


@pytest.mark.parametrize("version", [4, 5])
def test_sniff_tdx(version: int) -> None:
    assert sniff(bytes([version, 0, 2, 0]) + bytes(4)) == "tdx"


@pytest.mark.parametrize("version", [2, 3, 4, 5])
def test_sniff_snp_by_header_not_size(version: int) -> None:
    assert sniff(version.to_bytes(4, "little") + bytes(ev_mod.SNP_REPORT_SIZE - 4)) == "snp"
    assert sniff(version.to_bytes(4, "little") + bytes(ev_mod.SNP_REPORT_SIZE + 16)) == "snp"
    assert sniff(version.to_bytes(4, "little")) == "snp"  # from_raw() then names the size


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
        b"-----BEGIN CERTIFICATE-----",
    ],
)
def test_sniff_rejects_and_states_the_size(data: bytes) -> None:
    with pytest.raises(MalformedEvidence, match=rf"input \({len(data)} bytes\) is neither"):
        sniff(data)


def test_sniff_real_vectors(vectors: Path) -> None:
    for name in ("milan-v2", "milan-v2-debug", "vlek-v3"):
        assert sniff((vectors / "snp" / f"{name}.report.bin").read_bytes()) == "snp"
    for name in ("spr-v4", "sample-v5", "debug-v4", "uptodate-v4", "outdated-v5"):
        assert sniff((vectors / "tdx" / f"{name}.quote.bin").read_bytes()) == "tdx"
    report = (vectors / "snp" / "milan-v2.report.bin").read_bytes()
    assert sniff(Evidence(tee="snp", report=report).encode()) == "envelope"


# --- one rule for raw input ------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="concord")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    code = args.func(args)
    return code, capsys.readouterr().out


def test_raw_rule_is_the_same_for_snp_and_tdx(vectors: Path) -> None:
    report = (vectors / "snp" / "milan-v2.report.bin").read_bytes()
    quote = (vectors / "tdx" / "sample-v5.quote.bin").read_bytes()
    for tee, raw in (("snp", report), ("tdx", quote)):
        assert from_raw(raw, tee).tee == tee
        assert from_raw(raw + bytes(ev_mod.RAW_TRAILING_LIMIT), tee)
        with pytest.raises(RawInputSize, match=rf"{len(raw) - 1} bytes found") as short:
            from_raw(raw[:-1], tee)
        assert short.value.reason == "raw_size"
        too_many = raw + bytes(ev_mod.RAW_TRAILING_LIMIT + 1)
        with pytest.raises(RawInputSize, match=rf"{len(too_many)} bytes found") as long:
            from_raw(too_many, tee)
        assert f"{ev_mod.RAW_TRAILING_LIMIT + 1} trailing bytes" in str(long.value)


def test_raw_snp_report_keeps_exactly_the_report(vectors: Path) -> None:
    report = (vectors / "snp" / "milan-v2.report.bin").read_bytes()
    assert from_raw(report + b"\xee" * 20, "snp").report == report


def test_raw_tdx_quote_keeps_its_unsigned_trailing_bytes(vectors: Path) -> None:
    quote = (vectors / "tdx" / "spr-v4.quote.bin").read_bytes()  # 39 trailing bytes already
    assert from_raw(quote, "tdx").report == quote
    assert from_raw(quote[:-39], "tdx").report == quote[:-39]
    with pytest.raises(RawInputSize, match="bytes found"):
        from_raw(quote[:-40], "tdx")


@pytest.mark.parametrize(
    "data", [bytes([5, 0, 2, 0]) + bytes(10), bytes([4, 0, 2, 0]) + bytes(600)]
)
def test_raw_tdx_too_short_for_its_header_names_the_size(data: bytes) -> None:
    with pytest.raises(RawInputSize, match=rf"{len(data)} bytes found"):
        from_raw(data, "tdx")


def test_raw_snp_report_with_20_trailing_bytes_verifies(
    capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path
) -> None:
    """The issue's case: a 1184-byte report stored with 20 trailing bytes."""
    padded = tmp_path / "report.bin"
    padded.write_bytes((vectors / "snp" / "milan-v2.report.bin").read_bytes() + bytes(20))
    vcek = vectors / "snp" / "milan-v2.vcek.der"
    code, out = _cli(capsys, "evidence", "verify", padded, "--vcek", vcek, "--at", "2024-06-01")
    assert code == 0, out
    padded.write_bytes(padded.read_bytes() + bytes(ev_mod.RAW_TRAILING_LIMIT))
    code, out = _cli(capsys, "evidence", "verify", padded, "--vcek", vcek, "--at", "2024-06-01")
    assert code == 1
    size = ev_mod.SNP_REPORT_SIZE + 20 + ev_mod.RAW_TRAILING_LIMIT
    assert out.startswith(f"rejected: raw_size: raw SNP report: {size} bytes found"), out
