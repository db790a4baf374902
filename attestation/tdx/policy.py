"""TDX reference values: which cryptographically valid quotes a workload owner admits.

References are tried in order and the first that admits the evidence wins. With a single
reference its specific violation is raised; with several, :class:`NoMatchingReference` lists
each entry's reason. Fields left out of a reference are not checked.

Decisions worth knowing:

* DEBUG (TD_ATTRIBUTES bit 0) is refused unless the reference's ``TdAttributes`` is given and
  has that bit (and then TD_ATTRIBUTES must equal it exactly anyway).
* ``AllowedPIIDs`` is matched against the PCK certificate's PlatformInstanceID when the PCK has
  one (multi-package platforms, PCK Platform CA), else against its PPID: one Intel-certified
  16-byte platform identifier per platform.
* ``OutOfDateGraceDays`` admits OutOfDate (OutOfDateConfigurationNeeded) while UpToDate
  (ConfigurationNeeded) is accepted, until that many days after the tcbDate of the newest level
  the platform does not reach (when Intel published the fix); past it, fail closed.
* ``DeniedAdvisoryIDs`` refuses a quote whose TCB evaluation lists any of those advisories.
* ``AcceptedTcbStatuses`` is enforced against the status computed from verified collateral.
  Without collateral the status is unknown: the check is skipped only if the reference accepts
  "UpToDate" *and* the caller explicitly passed ``require_collateral=False`` to the verifier
  (otherwise the verifier already refused the quote with ``MissingCollateral``); a reference that
  does not accept "UpToDate" then refuses, because an unknown status cannot be shown acceptable.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from attestation.errors import (
    DebugForbidden,
    MeasurementMismatch,
    NoMatchingReference,
    PolicyViolation,
    TcbStatusRejected,
    TcbTooLow,
)
from attestation.reference import TdxReference
from attestation.tdx.pck import SgxExtensions
from attestation.tdx.quote import TD_ATTRIBUTES_DEBUG, TdReportBody
from attestation.tdx.tcb import TcbEvaluation


class AdvisoryDenied(PolicyViolation):
    """The TCB evaluation lists an advisory ID the reference denies."""

    reason = "advisory_denied"


class PlatformNotAllowed(PolicyViolation):
    """The platform's PIID (or PPID) is not in the reference's allow list."""

    reason = "platform_not_allowed"


@dataclass(frozen=True)
class TdxClaims:
    """What policy is judged on: signed body, QE SVN, PCK extension, collateral status."""

    body: TdReportBody
    qe_svn: int
    pck: SgxExtensions
    tcb_status: str | None  # None: no collateral was verified
    evaluation: TcbEvaluation | None = None


def _eq(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


_GRACE_BASE = {"OutOfDate": "UpToDate", "OutOfDateConfigurationNeeded": "ConfigurationNeeded"}


def _within_grace(claims: TdxClaims, ref: TdxReference, now: datetime | None) -> bool:
    """OutOfDate admitted by ``OutOfDateGraceDays``; a rejection names the end of the grace."""
    status = claims.tcb_status
    evaluation = claims.evaluation
    if (
        ref.out_of_date_grace is None
        or status not in _GRACE_BASE
        or _GRACE_BASE[status] not in ref.accepted_tcb_statuses
        or evaluation is None
        or evaluation.out_of_date_since is None
        or now is None
    ):
        return False
    ends = evaluation.out_of_date_since + ref.out_of_date_grace
    if now > ends:
        raise TcbStatusRejected(
            f"TCB status {status} since {evaluation.out_of_date_since.isoformat()}: the grace "
            f"period of {ref.out_of_date_grace.days} days ended {ends.isoformat()}"
        )
    return True


def check_reference(claims: TdxClaims, ref: TdxReference, now: datetime | None = None) -> None:
    """Raise the first violation of ``ref`` by ``claims``; return None when admitted."""
    body = claims.body
    if body.debug:
        allowed = ref.td_attributes is not None and bool(
            int.from_bytes(ref.td_attributes, "little") & TD_ATTRIBUTES_DEBUG
        )
        if not allowed:
            raise DebugForbidden("TD_ATTRIBUTES.DEBUG is set and the reference does not allow it")
    if not _eq(body.mr_td, ref.mr_td):
        raise MeasurementMismatch(f"MRTD {body.mr_td.hex()} is not the reference MrTd")
    if ref.mr_seam is not None and not _eq(body.mr_seam, ref.mr_seam):
        raise MeasurementMismatch(f"MRSEAM {body.mr_seam.hex()} is not the reference MrSeam")
    for i, want in enumerate(ref.rtmrs):
        if want is not None and not _eq(body.rtmrs[i], want):
            raise MeasurementMismatch(
                f"RTMR{i} {body.rtmrs[i].hex()} is not the reference Rtmrs[{i}]"
            )
    if ref.xfam is not None and not _eq(body.xfam, ref.xfam):
        raise MeasurementMismatch(f"XFAM {body.xfam.hex()} is not the reference Xfam")
    if ref.td_attributes is not None and not _eq(body.td_attributes, ref.td_attributes):
        raise MeasurementMismatch(
            f"TD_ATTRIBUTES {body.td_attributes.hex()} is not the reference TdAttributes"
        )
    if ref.minimum_tee_tcb_svn is not None:
        low = [i for i in range(16) if body.tee_tcb_svn[i] < ref.minimum_tee_tcb_svn[i]]
        if low:
            raise TcbTooLow(
                f"TEE_TCB_SVN {body.tee_tcb_svn.hex()} is below MinimumTeeTcbSvn "
                f"{ref.minimum_tee_tcb_svn.hex()} at component(s) {low}"
            )
    if ref.minimum_qe_svn is not None and claims.qe_svn < ref.minimum_qe_svn:
        raise TcbTooLow(f"QE ISVSVN {claims.qe_svn} is below MinimumQeSvn {ref.minimum_qe_svn}")
    if ref.minimum_pce_svn is not None and claims.pck.tcb.pce_svn < ref.minimum_pce_svn:
        raise TcbTooLow(
            f"PCE SVN {claims.pck.tcb.pce_svn} is below MinimumPceSvn {ref.minimum_pce_svn}"
        )
    if ref.allowed_piids:
        platform_id = claims.pck.platform_id
        if not any(_eq(platform_id, p) for p in ref.allowed_piids):
            kind = "PIID" if claims.pck.platform_instance_id is not None else "PPID"
            raise PlatformNotAllowed(f"platform {kind} {platform_id.hex()} is not in AllowedPIIDs")
    if claims.tcb_status is None:
        if "UpToDate" not in ref.accepted_tcb_statuses:
            raise TcbStatusRejected(
                "TCB status unknown (no collateral) and the reference does not accept UpToDate"
            )
    elif claims.tcb_status not in ref.accepted_tcb_statuses and not _within_grace(claims, ref, now):
        raise TcbStatusRejected(
            f"TCB status {claims.tcb_status} is not in AcceptedTcbStatuses "
            f"{list(ref.accepted_tcb_statuses)}"
        )
    if ref.denied_advisory_ids and claims.evaluation is not None:
        denied = [a for a in claims.evaluation.advisory_ids if a.upper() in ref.denied_advisory_ids]
        if denied:
            raise AdvisoryDenied(f"TCB evaluation lists denied advisories {', '.join(denied)}")


def match_references(
    claims: TdxClaims, references: Sequence[TdxReference], now: datetime | None = None
) -> int:
    """Index of the first admitting reference; typed violation otherwise."""
    if not references:
        raise NoMatchingReference("no TDX reference values are configured")
    if len(references) == 1:
        check_reference(claims, references[0], now)
        return 0
    reasons = []
    for i, ref in enumerate(references):
        try:
            check_reference(claims, ref, now)
        except (PolicyViolation, TcbStatusRejected) as exc:
            reasons.append(f"tdx[{i}]: {exc}")
            continue
        return i
    raise NoMatchingReference("; ".join(reasons))
