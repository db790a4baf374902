"""verify_tdx end to end: every real vector as its README says, and a negative matrix."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.anchors import TrustAnchors, production
from attestation.cache import BoundedCache
from attestation.errors import (
    BindingMismatch,
    CertificateExpired,
    CertificateRevoked,
    CollateralExpired,
    DebugForbidden,
    EvidenceRejected,
    MalformedEvidence,
    MissingCertificate,
    ReportDataMismatch,
    SignatureInvalid,
    SizeLimitExceeded,
    TcbStatusRejected,
    UnsupportedVersion,
    UntrustedRoot,
)
from attestation.mock.tdx import MockIntel, create_mock_intel
from attestation.reference import TdxReference
from attestation.tdx.collateral_model import (
    CollateralMismatch,
    CollateralSignatureInvalid,
    QeIdentityMismatch,
    TdxCollateral,
    TdxModuleMismatch,
    load_collateral_json,
)
from attestation.tdx.quote import InvalidAttestationKey, UnsupportedQuoteType, parse_quote
from attestation.tdx.verify import MissingCollateral, TdxVerified, verify_tdx
from tests.unit.tdx_helpers import (  # noqa: F401  (fixtures)
    NOW,
    SEPT_VE,
    UPTODATE_NOW,
    anchors_fixture,
    mock_intel_fixture,
    quote_bytes,
)

MR_TD = bytes(range(48))
REPORT_DATA = bytes(range(64, 128))


def _ref_for(raw: bytes, **kw: Any) -> TdxReference:
    return TdxReference(mr_td=parse_quote(raw).body.mr_td, **kw)


# --- the real vectors ------------------------------------------------------------------------


def test_spr_v4_valid_trailing_ignored(vectors: Path, anchors: TrustAnchors) -> None:
    raw = quote_bytes(vectors, "spr-v4")
    q = parse_quote(raw)
    v = verify_tdx(raw, anchors, [_ref_for(raw)], q.body.report_data, NOW, require_collateral=False)
    assert isinstance(v, TdxVerified)
    assert v.tcb_status is None and v.reference_index == 0
    assert v.fmspc.hex() == "50806f000000" and v.pce_svn == 11 and v.qe_svn == 4
    assert v.mr_td == q.body.mr_td and v.rtmrs == q.body.rtmrs and v.xfam == q.body.xfam
    assert v.quote.trailing_bytes == 39
    # Changing the unsigned trailing bytes changes nothing.
    other = raw[:-39] + b"different trailer"
    assert (
        verify_tdx(other, anchors, [_ref_for(raw)], None, NOW, require_collateral=False).mr_td
        == v.mr_td
    )


def test_sample_v5_valid(vectors: Path, anchors: TrustAnchors) -> None:
    raw = quote_bytes(vectors, "sample-v5")
    v = verify_tdx(raw, anchors, [_ref_for(raw)], None, NOW, require_collateral=False)
    assert v.quote.body_type == 3 and v.tcb_status is None


def test_debug_v4_crypto_valid_policy_rejects(vectors: Path, anchors: TrustAnchors) -> None:
    raw = quote_bytes(vectors, "debug-v4")
    with pytest.raises(DebugForbidden):
        verify_tdx(raw, anchors, [_ref_for(raw)], None, NOW, require_collateral=False)
    # Crypto is valid: a reference that explicitly admits these TD attributes accepts it.
    q = parse_quote(raw)
    v = verify_tdx(
        raw,
        anchors,
        [_ref_for(raw, td_attributes=q.body.td_attributes)],
        None,
        NOW,
        require_collateral=False,
    )
    assert v.td_attributes[0] & 1


def test_uptodate_v4_with_collateral(vectors: Path, anchors: TrustAnchors) -> None:
    raw = quote_bytes(vectors, "uptodate-v4")
    col = load_collateral_json(vectors / "tdx" / "uptodate-v4.collateral.json")
    v = verify_tdx(raw, anchors, [_ref_for(raw)], None, UPTODATE_NOW, collateral=col)
    assert v.tcb_status == "UpToDate" and v.advisory_ids == ()
    assert v.fmspc.hex() == "b0c06f000000" and v.qe_svn == 6
    # Stale after 2025-07-19.
    with pytest.raises(CollateralExpired):
        verify_tdx(
            raw, anchors, [_ref_for(raw)], None, datetime(2025, 7, 20, tzinfo=UTC), collateral=col
        )


def test_outdated_v5_crypto_valid_but_no_tcb_level(vectors: Path, anchors: TrustAnchors) -> None:
    raw = quote_bytes(vectors, "outdated-v5")
    col = load_collateral_json(vectors / "tdx" / "outdated-v5.collateral.json")
    # Crypto is valid (no collateral, caller accepting the unknown status):
    assert verify_tdx(raw, anchors, [_ref_for(raw)], None, NOW, require_collateral=False)
    with pytest.raises(TcbStatusRejected, match="no TCB level matches") as exc:
        verify_tdx(
            raw,
            anchors,
            [_ref_for(raw, accepted_tcb_statuses=("UpToDate", "OutOfDate", "Revoked"))],
            None,
            NOW,
            collateral=col,
        )
    assert type(exc.value) is TcbStatusRejected


def test_collateral_is_required_by_default(vectors: Path, anchors: TrustAnchors) -> None:
    raw = quote_bytes(vectors, "spr-v4")
    with pytest.raises(MissingCollateral):
        verify_tdx(raw, anchors, [_ref_for(raw)], None, NOW)


def test_cross_anchor_rejection(vectors: Path, anchors: TrustAnchors, mock: MockIntel) -> None:
    raw = quote_bytes(vectors, "spr-v4")
    with pytest.raises(UntrustedRoot):
        verify_tdx(raw, mock.trust_anchors(), [_ref_for(raw)], None, NOW, require_collateral=False)
    mq = mock.make_quote(mr_td=MR_TD, report_data=REPORT_DATA)
    with pytest.raises(UntrustedRoot):
        verify_tdx(
            mq, anchors, [TdxReference(mr_td=MR_TD)], REPORT_DATA, NOW, require_collateral=False
        )


def test_mock_v4_and_v5_valid(mock: MockIntel) -> None:
    col = mock.make_collateral(NOW)
    for version, body_type in ((4, 2), (5, 3), (5, 2)):
        mq = mock.make_quote(
            mr_td=MR_TD, report_data=REPORT_DATA, version=version, body_type=body_type
        )
        v = verify_tdx(
            mq, mock.trust_anchors(), [TdxReference(mr_td=MR_TD)], REPORT_DATA, NOW, collateral=col
        )
        assert v.tcb_status == "UpToDate" and v.quote.body_type == body_type


def test_cache_is_used(vectors: Path, anchors: TrustAnchors) -> None:
    cache: BoundedCache[bytes, object] = BoundedCache(8)
    raw = quote_bytes(vectors, "uptodate-v4")
    col = load_collateral_json(vectors / "tdx" / "uptodate-v4.collateral.json")
    for _ in range(3):
        verify_tdx(raw, anchors, [_ref_for(raw)], None, UPTODATE_NOW, collateral=col, cache=cache)
    assert cache.hits >= 4


def test_bad_arguments_are_caller_errors(vectors: Path, anchors: TrustAnchors) -> None:
    raw = quote_bytes(vectors, "spr-v4")
    with pytest.raises(ValueError):
        verify_tdx(raw, anchors, [_ref_for(raw)], b"short", NOW, require_collateral=False)
    with pytest.raises(ValueError):
        verify_tdx(
            raw, anchors, [_ref_for(raw)], None, datetime(2026, 3, 1), require_collateral=False
        )


# --- negative matrix -------------------------------------------------------------------------
# v4 offsets: header 0..48, body 48..632, sig data length 632, signature r 636, s 668,
# attestation key 700, cert data type 764 / size 766, QE report 770, QE report signature 1154,
# auth data size 1218, auth data 1220 (32 bytes), PCK cert data type 1252, size 1254, PEM 1258.
BODY = 48
BODY_FIELDS = {
    "tee_tcb_svn": 0, "mr_seam": 16, "mr_signer_seam": 64, "seam_attributes": 112,
    "td_attributes": 120, "xfam": 128, "mr_td": 136, "mr_config_id": 184, "mr_owner": 232,
    "mr_owner_config": 280, "rtmr0": 328, "rtmr1": 376, "rtmr2": 424, "rtmr3": 472,
    "report_data": 520,
}  # fmt: skip


def _flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    buf = bytearray(data)
    buf[offset] ^= 1 << bit
    return bytes(buf)


def _flip_at(offset: int, bit: int = 0) -> Callable[[bytes], bytes]:
    return lambda q: _flip(q, offset, bit)


def _put(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


@dataclass
class Ctx:
    """What a negative case may vary; defaults are a valid verification."""

    quote: bytes
    anchors: TrustAnchors
    ref: TdxReference
    report_data: bytes | None
    now: datetime
    collateral: TdxCollateral | None = None
    require_collateral: bool = False


Case = tuple[str, str, Callable[[Ctx, MockIntel, Path], Ctx], type[EvidenceRejected]]


def _q(f: Callable[[bytes], bytes]) -> Callable[[Ctx, MockIntel, Path], Ctx]:
    return lambda c, m, t: replace(c, quote=f(c.quote))


def _with_tcb(mutate: Callable[[dict[str, Any]], None]) -> Callable[[Ctx, MockIntel, Path], Ctx]:
    def apply(c: Ctx, m: MockIntel, t: Path) -> Ctx:
        tcb = m.tcb_info_dict(NOW)
        mutate(tcb)
        return replace(c, collateral=m.make_collateral(NOW, tcb_info=tcb), require_collateral=True)

    return apply


def _with_qe(mutate: Callable[[dict[str, Any]], None]) -> Callable[[Ctx, MockIntel, Path], Ctx]:
    def apply(c: Ctx, m: MockIntel, t: Path) -> Ctx:
        qe = m.qe_identity_dict(NOW)
        mutate(qe)
        return replace(
            c, collateral=m.make_collateral(NOW, qe_identity=qe), require_collateral=True
        )

    return apply


def _requote(**kw: Any) -> Callable[[Ctx, MockIntel, Path], Ctx]:
    def apply(c: Ctx, m: MockIntel, t: Path) -> Ctx:
        args: dict[str, Any] = {"td_attributes": SEPT_VE, **kw}
        return replace(c, quote=m.make_quote(mr_td=MR_TD, report_data=REPORT_DATA, **args))

    return apply


def _other_key_point() -> bytes:
    pub = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    return pub.x.to_bytes(32, "big") + pub.y.to_bytes(32, "big")


def _set_bytes(offset: int, value: bytes) -> Callable[[bytes], bytes]:
    return lambda q: q[:offset] + value + q[offset + len(value) :]


def _foreign_chain(c: Ctx, m: MockIntel, t: Path) -> Ctx:
    fake = create_mock_intel(t / "fake", now=NOW, names="intel")
    return replace(
        c, quote=fake.make_quote(mr_td=MR_TD, report_data=REPORT_DATA, td_attributes=SEPT_VE)
    )


def _fake_signer(c: Ctx, m: MockIntel, t: Path) -> Ctx:
    other = create_mock_intel(t / "other", now=NOW)
    assert c.collateral is not None
    forged = other.make_collateral(NOW)
    return replace(
        c,
        collateral=replace(
            c.collateral,
            tcb_info_signature=forged.tcb_info_signature,
            tcb_info_issuer_chain=forged.tcb_info_issuer_chain,
        ),
    )


def _tamper_collateral(field: str) -> Callable[[Ctx, MockIntel, Path], Ctx]:
    def apply(c: Ctx, m: MockIntel, t: Path) -> Ctx:
        assert c.collateral is not None
        value = getattr(c.collateral, field).replace(b'"version":', b'"version" :', 1)
        return replace(c, collateral=replace(c.collateral, **{field: value}))

    return apply


CASES: list[Case] = [
    # header
    ("real", "header user_data bit", _q(lambda q: _flip(q, 30)), SignatureInvalid),
    ("real", "header qe_vendor_id bit", _q(lambda q: _flip(q, 13)), UnsupportedQuoteType),
    (
        "mock",
        "qe_vendor_id not Intel (signed)",
        _requote(qe_vendor_id=bytes(16)),
        UnsupportedQuoteType,
    ),
    ("mock", "header user_data bit", _q(lambda q: _flip(q, 47, 7)), SignatureInvalid),
    ("real", "version 3", _q(lambda q: _put(q, 0, "<H", 3)), UnsupportedVersion),
    ("real", "version 6", _q(lambda q: _put(q, 0, "<H", 6)), UnsupportedVersion),
    ("mock", "version 3", _q(lambda q: _put(q, 0, "<H", 3)), UnsupportedVersion),
    ("real", "att key type 3", _q(lambda q: _put(q, 2, "<H", 3)), UnsupportedQuoteType),
    ("real", "tee type 0", _q(lambda q: _put(q, 4, "<I", 0)), UnsupportedQuoteType),
    ("mock", "tee type 0 (SGX)", _q(lambda q: _put(q, 4, "<I", 0)), UnsupportedQuoteType),
    ("real", "cert data type 5", _q(lambda q: _put(q, 764, "<H", 5)), UnsupportedQuoteType),
    ("mock", "cert data type 7", _q(lambda q: _put(q, 764, "<H", 7)), UnsupportedQuoteType),
    # every measured body field, on real and mock quotes
    *[
        ("real", f"body {n} bit", _q(_flip_at(BODY + o + 5)), SignatureInvalid)
        for n, o in BODY_FIELDS.items()
    ],
    *[
        ("mock", f"body {n} bit", _q(_flip_at(BODY + o, 7)), SignatureInvalid)
        for n, o in BODY_FIELDS.items()
    ],
    # QE report, its signature, the quote signature
    ("real", "QE report mrenclave bit", _q(lambda q: _flip(q, 770 + 64)), SignatureInvalid),
    ("real", "QE report isvsvn bit", _q(lambda q: _flip(q, 770 + 258)), SignatureInvalid),
    ("mock", "QE report report_data bit", _q(lambda q: _flip(q, 770 + 320)), SignatureInvalid),
    ("real", "QE report signature r bit", _q(lambda q: _flip(q, 1154 + 10)), SignatureInvalid),
    ("real", "QE report signature s bit", _q(lambda q: _flip(q, 1154 + 40)), SignatureInvalid),
    ("real", "quote signature r bit", _q(lambda q: _flip(q, 636)), SignatureInvalid),
    ("real", "quote signature s bit", _q(lambda q: _flip(q, 668 + 31)), SignatureInvalid),
    ("mock", "quote signature r zero", _q(_set_bytes(636, bytes(32))), SignatureInvalid),
    ("mock", "quote signature s bit", _q(lambda q: _flip(q, 699)), SignatureInvalid),
    # QE binding and the attestation key
    ("real", "QE auth data changed", _q(lambda q: _flip(q, 1220 + 3)), BindingMismatch),
    ("mock", "QE auth data changed", _q(lambda q: _flip(q, 1220)), BindingMismatch),
    (
        "real",
        "attestation key replaced",
        _q(lambda q: _set_bytes(700, _other_key_point())(q)),
        BindingMismatch,
    ),
    (
        "real",
        "attestation key off curve",
        _q(_set_bytes(700, (5).to_bytes(32, "big") * 2)),
        InvalidAttestationKey,
    ),
    ("mock", "attestation key off curve", _q(lambda q: _flip(q, 763)), InvalidAttestationKey),
    # structure
    ("real", "truncated in header", _q(lambda q: q[:20]), MalformedEvidence),
    ("real", "truncated in body", _q(lambda q: q[:400]), MalformedEvidence),
    ("real", "truncated at signature length", _q(lambda q: q[:634]), MalformedEvidence),
    ("real", "truncated in QE report", _q(lambda q: q[:900]), MalformedEvidence),
    ("mock", "truncated in PEM", _q(lambda q: q[:-200]), MalformedEvidence),
    ("real", "oversize", _q(lambda q: q + bytes(70_000)), SizeLimitExceeded),
    (
        "real",
        "PCK chain without certificates",
        _q(lambda q: q[:1258] + bytes(len(q) - 1258 - 39) + q[-39:]),
        MissingCertificate,
    ),
    # chain
    (
        "real",
        "PCK expired",
        lambda c, m, t: replace(c, now=datetime(2029, 9, 21, tzinfo=UTC)),
        CertificateExpired,
    ),
    (
        "real5",
        "PCK not yet valid",
        lambda c, m, t: replace(c, now=datetime(2026, 1, 1, tzinfo=UTC)),
        CertificateExpired,
    ),
    (
        "real",
        "under mock anchors",
        lambda c, m, t: replace(c, anchors=m.trust_anchors()),
        UntrustedRoot,
    ),
    (
        "mock",
        "under production anchors",
        lambda c, m, t: replace(c, anchors=production()),
        UntrustedRoot,
    ),
    ("mock", "same names, other root", _foreign_chain, UntrustedRoot),
    (
        "mock",
        "PCK expired",
        lambda c, m, t: replace(c, now=NOW + timedelta(days=365 * 8)),
        CertificateExpired,
    ),
    # collateral
    (
        "mockc",
        "revoked PCK",
        lambda c, m, t: replace(c, collateral=m.make_collateral(NOW, revoked_pck=True)),
        CertificateRevoked,
    ),
    (
        "mockc",
        "stale collateral",
        lambda c, m, t: replace(c, now=NOW + timedelta(days=31)),
        CollateralExpired,
    ),
    (
        "mockc",
        "collateral issued in the future",
        lambda c, m, t: replace(c, collateral=m.make_collateral(NOW + timedelta(days=2))),
        CollateralExpired,
    ),
    (
        "uptodate",
        "stale real collateral",
        lambda c, m, t: replace(c, now=datetime(2025, 7, 20, tzinfo=UTC)),
        CollateralExpired,
    ),
    (
        "uptodate",
        "tampered TCB info byte",
        _tamper_collateral("tcb_info"),
        CollateralSignatureInvalid,
    ),
    (
        "uptodate",
        "tampered QE identity byte",
        _tamper_collateral("qe_identity"),
        CollateralSignatureInvalid,
    ),
    ("mockc", "tampered TCB info byte", _tamper_collateral("tcb_info"), CollateralSignatureInvalid),
    ("uptodate", "TCB info signed under another root", _fake_signer, UntrustedRoot),
    (
        "mockc",
        "wrong FMSPC",
        _with_tcb(lambda t: t.update(fmspc="00906ED50000")),
        CollateralMismatch,
    ),
    ("mockc", "wrong PCE-ID", _with_tcb(lambda t: t.update(pceId="0100")), CollateralMismatch),
    (
        "mockc",
        "no TCB level matches",
        _with_tcb(
            lambda t: t.update(
                tcbLevels=[{**t["tcbLevels"][0], "tcb": {**t["tcbLevels"][0]["tcb"], "pcesvn": 99}}]
            )
        ),
        TcbStatusRejected,
    ),
    (
        "mockc",
        "TDX module MRSIGNER",
        _with_tcb(lambda t: t["tdxModuleIdentities"][0].update(mrsigner="11" * 48)),
        TdxModuleMismatch,
    ),
    ("mockc", "QE MRSIGNER", _with_qe(lambda q: q.update(mrsigner="22" * 32)), QeIdentityMismatch),
    ("mockc", "QE ISVPRODID", _with_qe(lambda q: q.update(isvprodid=1)), QeIdentityMismatch),
    (
        "mockc",
        "platform OutOfDate not accepted",
        _with_tcb(lambda t: t["tcbLevels"][0].update(tcbStatus="OutOfDate")),
        TcbStatusRejected,
    ),
    ("mockc", "QE OutOfDate converges", _requote(qe_svn=1), TcbStatusRejected),
    (
        "mock",
        "collateral required",
        lambda c, m, t: replace(c, require_collateral=True),
        MissingCollateral,
    ),
    # report data and policy
    (
        "mock",
        "report data mismatch",
        lambda c, m, t: replace(c, report_data=bytes(64)),
        ReportDataMismatch,
    ),
    (
        "real",
        "report data mismatch",
        lambda c, m, t: replace(c, report_data=bytes(64)),
        ReportDataMismatch,
    ),
    ("mock", "debug TD", _requote(td_attributes=b"\x01" + bytes(7)), DebugForbidden),
]


def _base(kind: str, vectors: Path, mock: MockIntel) -> Ctx:
    if kind in ("real", "real5"):
        raw = quote_bytes(vectors, "spr-v4" if kind == "real" else "sample-v5")
        return Ctx(raw, production(), _ref_for(raw), parse_quote(raw).body.report_data, NOW)
    if kind == "uptodate":
        raw = quote_bytes(vectors, "uptodate-v4")
        real = load_collateral_json(vectors / "tdx" / "uptodate-v4.collateral.json")
        return Ctx(raw, production(), _ref_for(raw), None, UPTODATE_NOW, real, True)
    raw = mock.make_quote(mr_td=MR_TD, report_data=REPORT_DATA, td_attributes=SEPT_VE)
    col = mock.make_collateral(NOW) if kind == "mockc" else None
    return Ctx(
        raw, mock.trust_anchors(), TdxReference(mr_td=MR_TD), REPORT_DATA, NOW, col, kind == "mockc"
    )


def _run(c: Ctx) -> TdxVerified:
    return verify_tdx(
        c.quote, c.anchors, [c.ref], c.report_data, c.now,
        collateral=c.collateral, require_collateral=c.require_collateral,
    )  # fmt: skip


def test_matrix_is_large_enough() -> None:
    assert len({(k, n) for k, n, _, _ in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("kind", ["real", "real5", "uptodate", "mock", "mockc"])
def test_matrix_baselines_are_valid(kind: str, vectors: Path, mock: MockIntel) -> None:
    assert _run(_base(kind, vectors, mock))


@pytest.mark.parametrize(
    ("kind", "name", "mutate", "error"), CASES, ids=[f"{k}:{n}" for k, n, _, _ in CASES]
)
def test_negative_matrix(
    kind: str,
    name: str,
    mutate: Callable[[Ctx, MockIntel, Path], Ctx],
    error: type[EvidenceRejected],
    vectors: Path,
    mock: MockIntel,
    tmp_path: Path,
) -> None:
    ctx = mutate(_base(kind, vectors, mock), mock, tmp_path)
    with pytest.raises(EvidenceRejected) as exc:
        _run(ctx)
    assert type(exc.value) is error, f"{name}: got {type(exc.value).__name__}: {exc.value}"
