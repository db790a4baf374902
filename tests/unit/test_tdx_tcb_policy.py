"""TDX TCB policy operators ask for: OutOfDate grace, advisory IDs, the TD relaunch advisory.

Mock collateral (attestation.mock.tdx) publishes, for its FMSPC, an UpToDate level (tcbDate
2024-03-13) above an OutOfDate one (INTEL-SA-MOCK-2); quotes are made just below or at it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from attestation.errors import InvalidReferenceValues, TcbStatusRejected
from attestation.mock.tdx import DEFAULT_TEE_TCB_SVN, MockIntel, create_mock_intel
from attestation.reference import TdxReference, parse_tdx_reference
from attestation.tdx.policy import AdvisoryDenied
from attestation.tdx.verify import TdxVerified, authenticate_tdx, verify_tdx

PUBLISHED = datetime(2024, 3, 13, tzinfo=UTC)  # tcbDate of the mock's UpToDate level
MR_TD = b"\x5a" * 48
BEHIND = bytes(
    [DEFAULT_TEE_TCB_SVN[0], DEFAULT_TEE_TCB_SVN[1], DEFAULT_TEE_TCB_SVN[2] - 1]
) + bytes(13)


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> MockIntel:
    return create_mock_intel(tmp_path_factory.mktemp("intel"), now=datetime(2024, 1, 1, tzinfo=UTC))


def _ref(**extra: object) -> TdxReference:
    return parse_tdx_reference({"MrTd": MR_TD.hex(), **extra}, "ref")


def _verify(mock: MockIntel, now: datetime, ref: TdxReference, **quote_kw: Any) -> TdxVerified:
    quote = mock.make_quote(mr_td=MR_TD, report_data=bytes(64), **quote_kw)
    return verify_tdx(
        quote,
        mock.trust_anchors(),
        [ref],
        None,
        now,
        collateral=mock.make_collateral(now),
    )


def test_out_of_date_evaluation_names_when_and_why(mock: MockIntel) -> None:
    now = datetime(2024, 4, 1, tzinfo=UTC)
    quote = mock.make_quote(mr_td=MR_TD, report_data=bytes(64), tee_tcb_svn=BEHIND)
    auth = authenticate_tdx(quote, mock.trust_anchors(), now, collateral=mock.make_collateral(now))
    assert auth.evaluation is not None
    assert auth.tcb_status == "OutOfDate"
    assert auth.evaluation.out_of_date_since == PUBLISHED
    assert "INTEL-SA-MOCK-2" in auth.advisory_ids
    assert not auth.evaluation.relaunch_advised


def test_out_of_date_refused_without_grace(mock: MockIntel) -> None:
    with pytest.raises(TcbStatusRejected, match="OutOfDate"):
        _verify(mock, datetime(2024, 4, 1, tzinfo=UTC), _ref(), tee_tcb_svn=BEHIND)


def test_out_of_date_grace_admits_then_expires(mock: MockIntel) -> None:
    ref = _ref(OutOfDateGraceDays=30)
    inside = PUBLISHED + timedelta(days=29)
    res = _verify(mock, inside, ref, tee_tcb_svn=BEHIND)
    assert res.tcb_status == "OutOfDate" and "INTEL-SA-MOCK-2" in res.advisory_ids
    with pytest.raises(TcbStatusRejected, match="grace period of 30 days ended"):
        _verify(mock, PUBLISHED + timedelta(days=31), ref, tee_tcb_svn=BEHIND)
    # the grace never admits a status whose base the reference does not accept
    no_base = _ref(OutOfDateGraceDays=30, AcceptedTcbStatuses=["SWHardeningNeeded"])
    with pytest.raises(TcbStatusRejected):
        _verify(mock, inside, no_base, tee_tcb_svn=BEHIND)


def test_module_out_of_date_uses_the_module_level_date(mock: MockIntel) -> None:
    module_behind = bytes([DEFAULT_TEE_TCB_SVN[0] - 1]) + DEFAULT_TEE_TCB_SVN[1:]
    now = datetime(2024, 4, 1, tzinfo=UTC)
    quote = mock.make_quote(mr_td=MR_TD, report_data=bytes(64), tee_tcb_svn=module_behind)
    auth = authenticate_tdx(quote, mock.trust_anchors(), now, collateral=mock.make_collateral(now))
    assert auth.evaluation is not None and auth.evaluation.module_status == "OutOfDate"
    assert auth.tcb_status == "OutOfDate"
    assert auth.evaluation.out_of_date_since == PUBLISHED
    assert "INTEL-SA-MOCK-1" in auth.advisory_ids


def test_denied_advisory_refuses_an_accepted_status(mock: MockIntel) -> None:
    now = datetime(2024, 4, 1, tzinfo=UTC)
    accepting = {"AcceptedTcbStatuses": ["UpToDate", "OutOfDate"]}
    res = _verify(mock, now, _ref(**accepting), tee_tcb_svn=BEHIND)
    assert res.tcb_status == "OutOfDate"
    with pytest.raises(AdvisoryDenied, match="INTEL-SA-MOCK-2") as info:
        _verify(
            mock,
            now,
            _ref(**accepting, DeniedAdvisoryIDs=["intel-sa-mock-2"]),
            tee_tcb_svn=BEHIND,
        )
    assert info.value.reason == "advisory_denied"
    _verify(mock, now, _ref(**accepting, DeniedAdvisoryIDs=["INTEL-SA-00000"]), tee_tcb_svn=BEHIND)


def test_relaunch_advised_when_the_loaded_module_is_current(mock: MockIntel) -> None:
    now = datetime(2024, 4, 1, tzinfo=UTC)
    kw: dict[str, Any] = {"version": 5, "tee_tcb_svn": BEHIND, "tee_tcb_svn_2": DEFAULT_TEE_TCB_SVN}
    quote = mock.make_quote(mr_td=MR_TD, report_data=bytes(64), **kw)
    auth = authenticate_tdx(quote, mock.trust_anchors(), now, collateral=mock.make_collateral(now))
    assert auth.tcb_status == "TDRelaunchAdvised"
    assert auth.evaluation is not None and auth.evaluation.relaunch_advised
    with pytest.raises(TcbStatusRejected, match="TDRelaunchAdvised"):
        _verify(mock, now, _ref(), **kw)
    res = _verify(mock, now, _ref(AcceptedTcbStatuses=["UpToDate", "TDRelaunchAdvised"]), **kw)
    assert res.tcb_status == "TDRelaunchAdvised"


def test_no_relaunch_advice_when_the_loaded_module_is_behind_too(mock: MockIntel) -> None:
    now = datetime(2024, 4, 1, tzinfo=UTC)
    quote = mock.make_quote(
        mr_td=MR_TD, report_data=bytes(64), version=5, tee_tcb_svn=BEHIND, tee_tcb_svn_2=BEHIND
    )
    auth = authenticate_tdx(quote, mock.trust_anchors(), now, collateral=mock.make_collateral(now))
    assert auth.tcb_status == "OutOfDate"


@pytest.mark.parametrize(
    "bad",
    [{"OutOfDateGraceDays": -1}, {"OutOfDateGraceDays": "30"}, {"DeniedAdvisoryIDs": [""]}],
)
def test_reference_parsing(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidReferenceValues):
        _ref(**bad)
