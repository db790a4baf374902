"""Differential tests against an independent implementation: dcap-qvl (Phala, Rust, via Python).

dcap-qvl's ``verify_with_root_ca(quote, collateral, root_der, now)`` lets us pass the mock root,
so the comparison covers real vectors (production root) and mock quotes with mock collateral.

Agreement is on the verdict and, when both accept, on the TCB status. Known, deliberate
differences, aligned here by the reference we pass:
* dcap-qvl always refuses a "Revoked" status; we report it and let AcceptedTcbStatuses decide,
  so our reference accepts every status except "Revoked".
* dcap-qvl refuses DEBUG TDs and TDs without SEPT_VE_DISABLE by itself; we refuse DEBUG by
  policy (DebugForbidden) and leave SEPT_VE_DISABLE to TdAttributes, so mock quotes set it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dcap_qvl
import pytest
from cryptography.hazmat.primitives import serialization

from attestation.anchors import TrustAnchors, production
from attestation.errors import EvidenceRejected
from attestation.mock.tdx import DEFAULT_TEE_TCB_SVN, MockIntel
from attestation.reference import TDX_TCB_STATUSES, TdxReference
from attestation.tdx.collateral_model import TdxCollateral, load_collateral_json
from attestation.tdx.pck import verify_pck_chain
from attestation.tdx.quote import parse_quote
from attestation.tdx.verify import verify_tdx
from tests.unit.tdx_helpers import (  # noqa: F401  (fixtures)
    NOW,
    SEPT_VE,
    mock_intel_fixture,
)

ACCEPT = tuple(s for s in TDX_TCB_STATUSES if s != "Revoked")
# Statuses a published TCB level can carry (TDRelaunchAdvised* only result from evaluation).
LEVEL_STATUSES = tuple(s for s in ACCEPT if not s.startswith("TDRelaunch"))
BEHIND = bytes(
    [DEFAULT_TEE_TCB_SVN[0], DEFAULT_TEE_TCB_SVN[1], DEFAULT_TEE_TCB_SVN[2] - 1]
) + bytes(13)
MR_TD = b"\x5a" * 48


def _ours(
    quote: bytes, anchors: TrustAnchors, col: TdxCollateral, now: datetime
) -> tuple[bool, str]:
    mr_td = parse_quote(quote).body.mr_td
    try:
        v = verify_tdx(
            quote,
            anchors,
            [TdxReference(mr_td=mr_td, accepted_tcb_statuses=ACCEPT)],
            None,
            now,
            collateral=col,
        )
    except EvidenceRejected as exc:
        return False, exc.reason
    assert v.tcb_status is not None
    return True, v.tcb_status


def _theirs(quote: bytes, root_der: bytes, col: TdxCollateral, now: datetime) -> tuple[bool, str]:
    collateral = dcap_qvl.QuoteCollateralV3.from_json(col.to_dcap_qvl_json())
    try:
        report = dcap_qvl.verify_with_root_ca(quote, collateral, root_der, int(now.timestamp()))
    except ValueError as exc:
        return False, str(exc)
    return True, report.status


def _agree(
    quote: bytes, anchors: TrustAnchors, col: TdxCollateral, now: datetime
) -> tuple[bool, str]:
    ours = _ours(quote, anchors, col, now)
    theirs = _theirs(quote, anchors.intel_root.public_bytes(serialization.Encoding.DER), col, now)
    assert ours[0] == theirs[0], f"verdicts differ: ours {ours}, dcap-qvl {theirs}"
    if ours[0]:
        assert ours[1] == theirs[1], f"statuses differ: ours {ours}, dcap-qvl {theirs}"
    return ours


# --- real vectors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "now", "expected"),
    [
        ("uptodate-v4", datetime(2025, 7, 1, tzinfo=UTC), (True, "UpToDate")),
        ("uptodate-v4", datetime(2025, 7, 19, tzinfo=UTC), (True, "UpToDate")),
        ("uptodate-v4", datetime(2025, 7, 20, tzinfo=UTC), (False, "collateral_expired")),
        ("outdated-v5", NOW, (False, "tcb_status")),
        ("outdated-v5", datetime(2026, 3, 21, tzinfo=UTC), (False, "collateral_expired")),
    ],
)
def test_real_vectors_agree(
    vectors: Path, name: str, now: datetime, expected: tuple[bool, str]
) -> None:
    quote = (vectors / "tdx" / f"{name}.quote.bin").read_bytes()
    col = load_collateral_json(vectors / "tdx" / f"{name}.collateral.json")
    assert _agree(quote, production(), col, now) == expected


@pytest.mark.parametrize("field", ["tcb_info", "qe_identity"])
def test_real_tampered_collateral_agree(vectors: Path, field: str) -> None:
    quote = (vectors / "tdx" / "uptodate-v4.quote.bin").read_bytes()
    col = load_collateral_json(vectors / "tdx" / "uptodate-v4.collateral.json")
    tampered = replace(
        col, **{field: getattr(col, field).replace(b'"version":', b'"version" :', 1)}
    )
    assert _agree(quote, production(), tampered, datetime(2025, 7, 1, tzinfo=UTC)) == (
        False,
        "collateral_signature",
    )


def test_real_quote_tampered_agree(vectors: Path) -> None:
    quote = bytearray((vectors / "tdx" / "uptodate-v4.quote.bin").read_bytes())
    quote[48 + 136] ^= 1  # MRTD
    col = load_collateral_json(vectors / "tdx" / "uptodate-v4.collateral.json")
    assert _agree(bytes(quote), production(), col, datetime(2025, 7, 1, tzinfo=UTC)) == (
        False,
        "signature",
    )


@pytest.mark.parametrize("name", ["spr-v4", "sample-v5", "debug-v4", "uptodate-v4", "outdated-v5"])
def test_parsers_agree_on_real_vectors(vectors: Path, name: str) -> None:
    raw = (vectors / "tdx" / f"{name}.quote.bin").read_bytes()
    ours = parse_quote(raw)
    theirs = dcap_qvl.parse_quote(raw)
    assert theirs.header.version == ours.version and theirs.header.tee_type == ours.header.tee_type
    assert bytes(theirs.header.qe_vendor_id) == ours.header.qe_vendor_id
    r = theirs.report
    b = ours.body
    assert (bytes(r.mr_td), bytes(r.mr_seam), bytes(r.td_attributes), bytes(r.xfam)) == (
        b.mr_td,
        b.mr_seam,
        b.td_attributes,
        b.xfam,
    )
    assert (bytes(r.rt_mr0), bytes(r.rt_mr3), bytes(r.report_data)) == (
        b.rtmrs[0],
        b.rtmrs[3],
        b.report_data,
    )
    assert bytes(r.tee_tcb_svn) == b.tee_tcb_svn and bytes(r.mr_config_id) == b.mr_config_id
    if b.tee_tcb_svn_2 is not None:
        assert (
            bytes(r.tee_tcb_svn2) == b.tee_tcb_svn_2 and bytes(r.mr_service_td) == b.mr_service_td
        )
    ext = theirs.pck_extension()
    mine = verify_pck_chain(
        ours.pck_chain_der, production(), datetime(2026, 3, 1, tzinfo=UTC)
    ).extensions
    assert bytes(ext.ppid) == mine.ppid and bytes(ext.fmspc) == mine.fmspc
    assert bytes(ext.cpu_svn) == mine.tcb.cpu_svn and ext.pce_svn == mine.tcb.pce_svn
    assert bytes(ext.pce_id) == mine.pce_id and ext.sgx_type == mine.sgx_type
    assert ext.platform_instance_id == mine.platform_instance_id


# --- mock quotes with mock collateral and the mock root ---------------------------------------


def _tcb(status: str | None = None, **top: Any) -> Callable[[MockIntel], dict[str, Any]]:
    def make(m: MockIntel) -> dict[str, Any]:
        t: dict[str, Any] = json.loads(json.dumps(m.tcb_info_dict(NOW)))
        if status is not None:
            t["tcbLevels"][0]["tcbStatus"] = status
        t.update(top)
        return t

    return make


def _no_level(m: MockIntel) -> dict[str, Any]:
    t = m.tcb_info_dict(NOW)
    level = json.loads(json.dumps(t["tcbLevels"][0]))
    level["tcb"]["pcesvn"] = 99
    t["tcbLevels"] = [level]
    return t


def _qe(**changes: Any) -> Callable[[MockIntel], dict[str, Any]]:
    def make(m: MockIntel) -> dict[str, Any]:
        q = m.qe_identity_dict(NOW)
        q.update(changes)
        return q

    return make


MOCK_CASES: list[tuple[str, dict[str, Any], dict[str, Any], tuple[bool, str] | None]] = [
    ("default v4", {}, {}, (True, "UpToDate")),
    ("default v5", {"version": 5}, {}, (True, "UpToDate")),
    ("v5 TDX 1.0 body", {"version": 5, "body_type": 2}, {}, (True, "UpToDate")),
    ("QE svn low", {"qe_svn": 1}, {}, (True, "OutOfDate")),
    (
        "module svn low",
        {"tee_tcb_svn": bytes.fromhex("04010300000000000000000000000000")},
        {},
        (True, "OutOfDate"),
    ),
    (
        "module version 0",
        {"tee_tcb_svn": bytes.fromhex("05000300000000000000000000000000")},
        {},
        (True, "OutOfDate"),
    ),
    *[(f"platform {s}", {}, {"tcb": _tcb(s)}, (True, s)) for s in LEVEL_STATUSES],
    # TDX 1.5: the TD was launched on an older module than the one loaded now (TEE_TCB_SVN_2)
    (
        "relaunch advised",
        {"version": 5, "tee_tcb_svn": BEHIND, "tee_tcb_svn_2": DEFAULT_TEE_TCB_SVN},
        {},
        (True, "TDRelaunchAdvised"),
    ),
    (
        "no relaunch advice",
        {"version": 5, "tee_tcb_svn": BEHIND, "tee_tcb_svn_2": BEHIND},
        {},
        (True, "OutOfDate"),
    ),
    (
        "platform Configuration + QE low",
        {"qe_svn": 1},
        {"tcb": _tcb("ConfigurationNeeded")},
        (True, "OutOfDateConfigurationNeeded"),
    ),
    (
        "platform SWHardening + QE low",
        {"qe_svn": 1},
        {"tcb": _tcb("SWHardeningNeeded")},
        (True, "OutOfDate"),
    ),
    ("platform Revoked", {}, {"tcb": _tcb("Revoked")}, (False, "tcb_status")),
    ("no TCB level", {}, {"tcb": _no_level}, (False, "tcb_status")),
    ("wrong FMSPC", {}, {"tcb": _tcb(fmspc="00906ED50000")}, (False, "collateral_mismatch")),
    ("QE MRSIGNER", {}, {"qe": _qe(mrsigner="00" * 32)}, (False, "qe_identity_mismatch")),
    ("QE ISVPRODID", {}, {"qe": _qe(isvprodid=9)}, (False, "qe_identity_mismatch")),
    ("revoked PCK", {}, {"revoked_pck": True}, (False, "revoked")),
    ("stale collateral", {}, {"at": NOW - timedelta(days=40)}, (False, "collateral_expired")),
    ("debug TD", {"td_attributes": bytes.fromhex("0100001000000000")}, {}, (False, "debug")),
]


@pytest.mark.parametrize(
    ("name", "quote_kw", "col_kw", "expected"), MOCK_CASES, ids=[c[0] for c in MOCK_CASES]
)
def test_mock_agree(
    mock: MockIntel,
    name: str,
    quote_kw: dict[str, Any],
    col_kw: dict[str, Any],
    expected: tuple[bool, str] | None,
) -> None:
    kw = {"td_attributes": SEPT_VE, **quote_kw}
    quote = mock.make_quote(mr_td=MR_TD, report_data=bytes(64), **kw)
    col = mock.make_collateral(
        col_kw.get("at", NOW),
        tcb_info=col_kw["tcb"](mock) if "tcb" in col_kw else None,
        qe_identity=col_kw["qe"](mock) if "qe" in col_kw else None,
        revoked_pck=col_kw.get("revoked_pck", False),
    )
    assert _agree(quote, mock.trust_anchors(), col, NOW) == expected


def test_mock_evidence_fails_in_dcap_qvl_under_intel_root(mock: MockIntel) -> None:
    """Cross-check of the anchor separation with the oracle's own production root."""
    quote = mock.make_quote(mr_td=MR_TD, report_data=bytes(64), td_attributes=SEPT_VE)
    col = dcap_qvl.QuoteCollateralV3.from_json(mock.make_collateral(NOW).to_dcap_qvl_json())
    with pytest.raises(ValueError):
        dcap_qvl.verify(quote, col, int(NOW.timestamp()))
