"""TDX quote verification: a pure function from bytes, anchors, references and time to a verdict.

Order: parse -> PCK chain to the pinned root -> QE report signature by the PCK -> QE binding
(QE report_data = SHA-256(attestation key || QE auth data) || 32 zero bytes) -> quote signature
by the attestation key over header+body -> collateral (when given) -> report_data -> reference
values. Every failure is one typed :class:`attestation.errors.EvidenceRejected`. Nothing is
fetched; collateral comes from the caller (evidence envelope or a cache filled elsewhere).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.anchors import TrustAnchors
from attestation.cache import BoundedCache
from attestation.errors import (
    BindingMismatch,
    CollateralRejected,
    ReportDataMismatch,
    SignatureInvalid,
)
from attestation.reference import TdxReference
from attestation.tdx.collateral_model import TdxCollateral
from attestation.tdx.collateral_verify import verify_collateral
from attestation.tdx.pck import PckChain, check_aware, verify_pck_chain
from attestation.tdx.policy import TdxClaims, match_references
from attestation.tdx.quote import (
    INTEL_QE_VENDOR_ID,
    TdxQuote,
    UnsupportedQuoteType,
    parse_quote,
)
from attestation.tdx.tcb import TcbEvaluation, evaluate_tcb


class MissingCollateral(CollateralRejected):
    """No collateral was given although the caller requires a verified TCB status."""

    reason = "missing_collateral"


@dataclass(frozen=True)
class TdxVerified:
    quote: TdxQuote
    reference_index: int
    mr_td: bytes
    mr_config_id: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    td_attributes: bytes
    xfam: bytes
    tee_tcb_svn: bytes
    report_data: bytes
    tcb_status: str | None  # None: no collateral, status unknown
    fmspc: bytes
    pce_svn: int
    qe_svn: int
    advisory_ids: tuple[str, ...] = ()


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def _ecdsa_verify(key: ec.EllipticCurvePublicKey, sig: bytes, data: bytes) -> bool:
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"))
    try:
        key.verify(der, data, _ECDSA_SHA256)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class TdxAuthentic:
    """A quote whose PCK chain, QE binding, signatures and collateral verified; not yet judged."""

    quote: TdxQuote
    pck: PckChain
    evaluation: TcbEvaluation | None  # None: no collateral, TCB status unknown

    @property
    def tcb_status(self) -> str | None:
        return None if self.evaluation is None else self.evaluation.status

    @property
    def advisory_ids(self) -> tuple[str, ...]:
        return () if self.evaluation is None else self.evaluation.advisory_ids

    @property
    def claims(self) -> TdxClaims:
        q = self.quote
        return TdxClaims(
            body=q.body,
            qe_svn=q.qe_report.isv_svn,
            pck=self.pck.extensions,
            tcb_status=self.tcb_status,
            evaluation=self.evaluation,
        )


def authenticate_tdx(
    quote: bytes,
    anchors: TrustAnchors,
    now: datetime,
    *,
    collateral: TdxCollateral | None = None,
    cache: BoundedCache[bytes, object] | None = None,
    require_collateral: bool = True,
    collateral_grace: timedelta = timedelta(0),
) -> TdxAuthentic:
    """Authenticity and TCB evaluation only (no references, no report data)."""
    check_aware(now)
    q = parse_quote(quote)
    if q.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        # Only Intel's quoting enclave is anchored here (its identity is what the QE identity
        # collateral describes); a quote from another QE is refused before any signature work.
        raise UnsupportedQuoteType(
            f"quote.header.qe_vendor_id: {q.header.qe_vendor_id.hex()}, expected Intel's QE "
            f"{INTEL_QE_VENDOR_ID.hex()}"
        )
    pck = verify_pck_chain(q.pck_chain_der, anchors, now, cache)

    if not _ecdsa_verify(pck.public_key, q.qe_report_signature, q.qe_report.raw):
        raise SignatureInvalid("qe_report_signature: QE report is not signed by the PCK key")

    expected_binding = hashlib.sha256(q.attestation_key + q.qe_auth_data).digest() + bytes(32)
    if not hmac.compare_digest(q.qe_report.report_data, expected_binding):
        raise BindingMismatch(
            "qe_report.report_data is not SHA-256(attestation key || QE auth data) || 0^32"
        )

    if not _ecdsa_verify(q.attestation_public_key, q.signature, q.signed_bytes):
        raise SignatureInvalid(
            "quote signature: header and body are not signed by the attestation key"
        )

    evaluation: TcbEvaluation | None = None
    if collateral is not None:
        verified = verify_collateral(collateral, anchors, now, cache, collateral_grace)
        verified.check_revocation(pck)
        evaluation = evaluate_tcb(verified, q.body, q.qe_report, pck.extensions)
    elif require_collateral:
        raise MissingCollateral("no TDX collateral: the TCB status cannot be established")
    return TdxAuthentic(quote=q, pck=pck, evaluation=evaluation)


def verify_tdx(
    quote: bytes,
    anchors: TrustAnchors,
    references: Sequence[TdxReference],
    expected_report_data: bytes | None,
    now: datetime,
    *,
    collateral: TdxCollateral | None = None,
    cache: BoundedCache[bytes, object] | None = None,
    require_collateral: bool = True,
    collateral_grace: timedelta = timedelta(0),
) -> TdxVerified:
    """Verify a TDX quote; return what it proves or raise the typed reason it is refused.

    ``require_collateral`` (default True, fail closed): without collateral the TCB status is
    unknown and the quote is refused with :class:`MissingCollateral`. Passing False accepts a
    quote without collateral only for references that accept "UpToDate" (see policy.py).
    """
    check_aware(now)
    if expected_report_data is not None and len(expected_report_data) != 64:
        raise ValueError("expected_report_data must be 64 bytes")
    auth = authenticate_tdx(
        quote,
        anchors,
        now,
        collateral=collateral,
        cache=cache,
        require_collateral=require_collateral,
        collateral_grace=collateral_grace,
    )
    q = auth.quote
    if expected_report_data is not None and not hmac.compare_digest(
        q.body.report_data, expected_report_data
    ):
        raise ReportDataMismatch("report_data does not match the expected value")

    index = match_references(auth.claims, references, now)
    pck = auth.pck
    return TdxVerified(
        quote=q,
        reference_index=index,
        mr_td=q.body.mr_td,
        mr_config_id=q.body.mr_config_id,
        rtmrs=q.body.rtmrs,
        td_attributes=q.body.td_attributes,
        xfam=q.body.xfam,
        tee_tcb_svn=q.body.tee_tcb_svn,
        report_data=q.body.report_data,
        tcb_status=auth.tcb_status,
        fmspc=pck.extensions.fmspc,
        pce_svn=pck.extensions.tcb.pce_svn,
        qe_svn=q.qe_report.isv_svn,
        advisory_ids=auth.advisory_ids,
    )
