"""One entry point for both TEEs: envelope in, typed result or typed rejection out.

Pure: no fetching, no clock of its own (``now`` is an argument), no global state except the
bounded caches a :class:`Verifier` owns (and :func:`attestation.cache.der_of`'s memo of root DER). The coordinator and the client both use it, and so does
``concord evidence verify``; mock and real evidence run the same code, only the anchors differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from attestation.anchors import TrustAnchors
from attestation.cache import BoundedCache
from attestation.collateral.cache import CollateralSource
from attestation.errors import MalformedEvidence, PolicyViolation
from attestation.evidence import Evidence
from attestation.reference import ReferenceValues, SnpReference, TdxReference
from attestation.snp.verify import verify_snp
from attestation.tdx.collateral_model import TdxCollateral
from attestation.tdx.verify import verify_tdx


class PolicyHashNotBound(PolicyViolation):
    """TDX: MRCONFIGID must be the 32-byte policy hash followed by 16 zero bytes."""

    reason = "policy_hash_binding"


@dataclass(frozen=True)
class VerifiedEvidence:
    """What the coordinator needs from verified evidence, the same for SNP and TDX."""

    tee: str
    report_data: bytes
    policy_hash: bytes  # SNP HOST_DATA, TDX MRCONFIGID[0:32]
    measurement: bytes  # SNP MEASUREMENT, TDX MRTD
    tcb: bytes  # SNP reported TCB (8 bytes) / TDX TEE_TCB_SVN (16 bytes), for certificate claims
    reference_index: int
    detail: Any  # SnpVerified or TdxVerified


class Verifier:
    """Holds the trust anchors and the verified-chain caches shared across requests."""

    def __init__(
        self,
        anchors: TrustAnchors,
        *,
        cache_size: int = 1024,
        collateral: CollateralSource | None = None,
        collateral_grace: timedelta = timedelta(0),
    ) -> None:
        """``collateral`` supplies what evidence lacks (a VCEK, TDX collateral), e.g. the
        ``--collateral-dir`` a collateral service keeps warm; ``collateral_grace`` extends
        ``nextUpdate`` by the same grace that service serves stale copies within."""
        self.anchors = anchors
        self.collateral = collateral
        self.collateral_grace = collateral_grace
        self.snp_cache: BoundedCache[Any, Any] = BoundedCache(cache_size)
        self.tdx_cache: BoundedCache[Any, Any] = BoundedCache(cache_size)

    def verify(
        self,
        evidence: Evidence | bytes,
        reference_values: ReferenceValues,
        expected_report_data: bytes | None,
        now: datetime,
    ) -> VerifiedEvidence:
        ev = evidence if isinstance(evidence, Evidence) else Evidence.decode(evidence)
        if ev.tee == "snp":
            return self._verify_snp(ev, reference_values.snp, expected_report_data, now)
        if ev.tee == "tdx":
            return self._verify_tdx(ev, reference_values.tdx, expected_report_data, now)
        raise MalformedEvidence(f"unknown TEE type {ev.tee!r}")

    def _verify_snp(
        self,
        ev: Evidence,
        refs: Sequence[SnpReference],
        report_data: bytes | None,
        now: datetime,
    ) -> VerifiedEvidence:
        certs: Sequence[bytes] = ev.certs
        if not certs and self.collateral is not None:
            certs = self.collateral.snp_certs(ev.report)
        res = verify_snp(
            ev.report,
            certs,
            self.anchors,
            refs,
            report_data,
            now,
            crls=ev.crls,
            cache=self.snp_cache,
        )
        return VerifiedEvidence(
            tee="snp",
            report_data=res.report_data,
            policy_hash=res.host_data,
            measurement=res.measurement,
            tcb=res.report.reported_tcb_raw,
            reference_index=res.reference_index,
            detail=res,
        )

    def _verify_tdx(
        self,
        ev: Evidence,
        refs: Sequence[TdxReference],
        report_data: bytes | None,
        now: datetime,
    ) -> VerifiedEvidence:
        collateral = TdxCollateral.from_cbor_map(dict(ev.collateral)) if ev.collateral else None
        if collateral is None and self.collateral is not None:
            collateral = self.collateral.tdx_collateral(ev.report)
        res = verify_tdx(
            ev.report,
            self.anchors,
            refs,
            report_data,
            now,
            collateral=collateral,
            cache=self.tdx_cache,
            collateral_grace=self.collateral_grace,
        )
        if res.mr_config_id[32:] != bytes(16):
            raise PolicyHashNotBound("MRCONFIGID[32:48] must be zero")
        return VerifiedEvidence(
            tee="tdx",
            report_data=res.report_data,
            policy_hash=res.mr_config_id[:32],
            measurement=res.mr_td,
            tcb=res.tee_tcb_svn,
            reference_index=res.reference_index,
            detail=res,
        )
