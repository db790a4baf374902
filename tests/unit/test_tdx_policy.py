"""TDX reference-value policy (attestation/tdx/policy.py): fields, first match, no collateral."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from attestation.anchors import TrustAnchors
from attestation.errors import (
    DebugForbidden,
    MeasurementMismatch,
    NoMatchingReference,
    PolicyViolation,
    TcbStatusRejected,
    TcbTooLow,
)
from attestation.mock.tdx import MockIntel
from attestation.reference import TdxReference, parse_tdx_reference
from attestation.tdx.pck import verify_pck_chain
from attestation.tdx.policy import PlatformNotAllowed, TdxClaims, check_reference, match_references
from attestation.tdx.quote import TdxQuote, parse_quote
from attestation.tdx.verify import verify_tdx
from tests.unit.tdx_helpers import (  # noqa: F401  (fixtures)
    NOW,
    anchors_fixture,
    mock_intel_fixture,
)


@pytest.fixture(scope="module")
def spr(vectors: Path) -> bytes:
    return (vectors / "tdx" / "spr-v4.quote.bin").read_bytes()


@pytest.fixture(scope="module")
def q(spr: bytes) -> TdxQuote:
    return parse_quote(spr)


@pytest.fixture(scope="module")
def claims(q: TdxQuote, anchors: TrustAnchors) -> TdxClaims:
    pck = verify_pck_chain(q.pck_chain_der, anchors, NOW)
    return TdxClaims(body=q.body, qe_svn=q.qe_report.isv_svn, pck=pck.extensions, tcb_status=None)


def _bump(b: bytes, i: int = 0) -> bytes:
    buf = bytearray(b)
    buf[i] ^= 0xFF
    return bytes(buf)


def _exact(q: TdxQuote, claims: TdxClaims) -> TdxReference:
    """A reference giving every field, all satisfied by spr-v4."""
    assert claims.pck.platform_instance_id is not None
    return TdxReference(
        mr_td=q.body.mr_td,
        mr_seam=q.body.mr_seam,
        rtmrs=q.body.rtmrs,
        xfam=q.body.xfam,
        td_attributes=q.body.td_attributes,
        minimum_tee_tcb_svn=q.body.tee_tcb_svn,
        minimum_qe_svn=q.qe_report.isv_svn,
        minimum_pce_svn=claims.pck.tcb.pce_svn,
        allowed_piids=(b"\x00" * 16, claims.pck.platform_instance_id),
        accepted_tcb_statuses=("UpToDate",),
    )


def test_every_field_satisfied(
    q: TdxQuote, claims: TdxClaims, spr: bytes, anchors: TrustAnchors
) -> None:
    ref = _exact(q, claims)
    check_reference(claims, ref)
    assert verify_tdx(spr, anchors, [ref], None, NOW, require_collateral=False).reference_index == 0


def _violations(
    q: TdxQuote, claims: TdxClaims
) -> list[tuple[str, dict[str, Any], type[PolicyViolation] | type[TcbStatusRejected]]]:
    ref = _exact(q, claims)
    svn = bytearray(q.body.tee_tcb_svn)
    svn[2] += 1
    return [
        ("MrTd", {"mr_td": _bump(ref.mr_td)}, MeasurementMismatch),
        ("MrSeam", {"mr_seam": _bump(q.body.mr_seam, 47)}, MeasurementMismatch),
        *[
            (
                f"Rtmrs[{i}]",
                {"rtmrs": tuple(_bump(r) if j == i else r for j, r in enumerate(q.body.rtmrs))},
                MeasurementMismatch,
            )
            for i in range(4)
        ],
        ("Xfam", {"xfam": _bump(q.body.xfam, 7)}, MeasurementMismatch),
        ("TdAttributes", {"td_attributes": _bump(q.body.td_attributes, 7)}, MeasurementMismatch),
        ("MinimumTeeTcbSvn", {"minimum_tee_tcb_svn": bytes(svn)}, TcbTooLow),
        ("MinimumQeSvn", {"minimum_qe_svn": q.qe_report.isv_svn + 1}, TcbTooLow),
        ("MinimumPceSvn", {"minimum_pce_svn": claims.pck.tcb.pce_svn + 1}, TcbTooLow),
        ("AllowedPIIDs", {"allowed_piids": (claims.pck.ppid,)}, PlatformNotAllowed),
        ("AcceptedTcbStatuses", {"accepted_tcb_statuses": ("OutOfDate",)}, TcbStatusRejected),
    ]


def test_every_field_violated(
    q: TdxQuote, claims: TdxClaims, spr: bytes, anchors: TrustAnchors
) -> None:
    cases = _violations(q, claims)
    assert len(cases) == 13
    for name, change, error in cases:
        ref = replace(_exact(q, claims), **change)
        with pytest.raises((PolicyViolation, TcbStatusRejected)) as exc:
            check_reference(claims, ref)
        assert type(exc.value) is error, name
        # The same through the full verifier.
        with pytest.raises((PolicyViolation, TcbStatusRejected)) as exc:
            verify_tdx(spr, anchors, [ref], None, NOW, require_collateral=False)
        assert type(exc.value) is error, name


def test_tee_tcb_svn_is_component_wise(q: TdxQuote, claims: TdxClaims) -> None:
    # Greater in an earlier byte does not compensate for a lower later byte.
    svn = bytearray(q.body.tee_tcb_svn)
    svn[0] = 0
    svn[5] = 1
    with pytest.raises(TcbTooLow, match=r"component\(s\) \[5\]"):
        check_reference(claims, replace(_exact(q, claims), minimum_tee_tcb_svn=bytes(svn)))
    check_reference(claims, replace(_exact(q, claims), minimum_tee_tcb_svn=bytes(16)))


def test_debug_rules(vectors: Path, anchors: TrustAnchors) -> None:
    raw = (vectors / "tdx" / "debug-v4.quote.bin").read_bytes()
    dq = parse_quote(raw)
    pck = verify_pck_chain(dq.pck_chain_der, anchors, NOW)
    claims = TdxClaims(
        body=dq.body, qe_svn=dq.qe_report.isv_svn, pck=pck.extensions, tcb_status=None
    )
    with pytest.raises(DebugForbidden):
        check_reference(claims, TdxReference(mr_td=dq.body.mr_td))
    # DEBUG checked before anything else: even a wrong MRTD reports the debug refusal.
    with pytest.raises(DebugForbidden):
        check_reference(claims, TdxReference(mr_td=bytes(48)))
    # A reference listing DEBUG but differing elsewhere in TD_ATTRIBUTES: exact match applies.
    other = bytearray(dq.body.td_attributes)
    other[3] ^= 0x40
    with pytest.raises(MeasurementMismatch, match="TD_ATTRIBUTES"):
        check_reference(claims, TdxReference(mr_td=dq.body.mr_td, td_attributes=bytes(other)))
    check_reference(claims, TdxReference(mr_td=dq.body.mr_td, td_attributes=dq.body.td_attributes))


def test_platform_id_falls_back_to_ppid(q: TdxQuote, claims: TdxClaims) -> None:
    no_piid = replace(claims, pck=replace(claims.pck, platform_instance_id=None))
    check_reference(no_piid, TdxReference(mr_td=q.body.mr_td, allowed_piids=(claims.pck.ppid,)))
    assert claims.pck.platform_instance_id is not None
    with pytest.raises(PlatformNotAllowed, match="PPID"):
        check_reference(
            no_piid,
            TdxReference(mr_td=q.body.mr_td, allowed_piids=(claims.pck.platform_instance_id,)),
        )


def test_tcb_status_with_and_without_collateral(q: TdxQuote, claims: TdxClaims) -> None:
    ref = TdxReference(mr_td=q.body.mr_td, accepted_tcb_statuses=("UpToDate", "SWHardeningNeeded"))
    check_reference(replace(claims, tcb_status="SWHardeningNeeded"), ref)
    with pytest.raises(TcbStatusRejected, match="OutOfDate"):
        check_reference(replace(claims, tcb_status="OutOfDate"), ref)
    # No collateral (status None): admitted only when UpToDate is accepted.
    check_reference(claims, ref)
    with pytest.raises(TcbStatusRejected, match="unknown"):
        check_reference(
            claims, TdxReference(mr_td=q.body.mr_td, accepted_tcb_statuses=("OutOfDate",))
        )


def test_first_match_wins_and_reasons_listed(q: TdxQuote, claims: TdxClaims) -> None:
    good = TdxReference(mr_td=q.body.mr_td)
    bad_td = TdxReference(mr_td=bytes(48))
    bad_svn = TdxReference(mr_td=q.body.mr_td, minimum_qe_svn=99)
    assert match_references(claims, [bad_td, good, good]) == 1
    assert match_references(claims, [good, bad_td]) == 0
    with pytest.raises(NoMatchingReference) as exc:
        match_references(claims, [bad_td, bad_svn])
    assert "tdx[0]: measurement" in str(exc.value) and "tdx[1]: tcb_too_low" in str(exc.value)
    with pytest.raises(MeasurementMismatch):  # a single reference raises its own violation
        match_references(claims, [bad_td])
    with pytest.raises(NoMatchingReference, match="no TDX reference"):
        match_references(claims, [])


def test_manifest_reference_round_trip(q: TdxQuote, claims: TdxClaims) -> None:
    assert claims.pck.platform_instance_id is not None
    ref = parse_tdx_reference(
        {
            "MrTd": q.body.mr_td.hex(),
            "Rtmrs": [None, q.body.rtmrs[1].hex(), None, None],
            "Xfam": q.body.xfam.hex(),
            "MinimumTeeTcbSvn": q.body.tee_tcb_svn.hex(),
            "AllowedPIIDs": [claims.pck.platform_instance_id.hex()],
            "AcceptedTcbStatuses": ["UpToDate"],
        },
        "tdx[0]",
    )
    check_reference(claims, ref)


def test_status_from_collateral_enforced(mock: MockIntel) -> None:
    mr_td = b"\x42" * 48
    tcb = mock.tcb_info_dict(NOW)
    tcb["tcbLevels"][0]["tcbStatus"] = "SWHardeningNeeded"
    col = mock.make_collateral(NOW, tcb_info=tcb)
    quote = mock.make_quote(mr_td=mr_td, report_data=bytes(64))
    with pytest.raises(TcbStatusRejected, match="SWHardeningNeeded"):
        verify_tdx(
            quote, mock.trust_anchors(), [TdxReference(mr_td=mr_td)], None, NOW, collateral=col
        )
    ok = TdxReference(mr_td=mr_td, accepted_tcb_statuses=("UpToDate", "SWHardeningNeeded"))
    v = verify_tdx(
        quote, mock.trust_anchors(), [TdxReference(mr_td=mr_td), ok], None, NOW, collateral=col
    )
    assert v.reference_index == 1 and v.tcb_status == "SWHardeningNeeded"
