"""``concord collateral fetch``: fill a directory for air-gapped verification (library side).

Runs on a connected machine: for every evidence file, fetch what its verification needs from
AMD KDS / Intel PCS (or a PCCS) through :class:`CollateralService`, verified before it is written.
The directory is then copied next to ``concord evidence verify --collateral-dir`` or
``concord serve --collateral-dir``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from attestation.anchors import TrustAnchors
from attestation.collateral.cache import CollateralDir
from attestation.collateral.fetch import ExponentialRetry, RetryPolicy, Sleep, Upstream
from attestation.collateral.kds import KdsClient
from attestation.collateral.pcs import PcsClient
from attestation.collateral.service import CollateralService, Filled
from attestation.collateral.upstreams import AMD_KDS, INTEL_PCS
from attestation.errors import EvidenceRejected
from attestation.evidence import Evidence


@dataclass(frozen=True)
class FetchOptions:
    kds_url: str = AMD_KDS
    pcs_url: str = INTEL_PCS
    root_crl_url: str | None = None
    timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=ExponentialRetry)
    min_interval: float = 10.0
    grace: timedelta = timedelta(0)
    now: datetime | None = None  # validate as of this time (default: the wall clock)


@dataclass(frozen=True)
class FetchOutcome:
    name: str
    filled: Filled | None = None
    error: EvidenceRejected | None = None


async def fetch_into(
    out: Path,
    evidence: Sequence[tuple[str, Evidence]],
    anchors: TrustAnchors,
    options: FetchOptions | None = None,
    *,
    sleep: Sleep | None = None,
) -> list[FetchOutcome]:
    """Fetch the collateral of each ``(name, evidence)`` into ``out``; one outcome per input."""
    options = options or FetchOptions()
    at = options.now

    def clock() -> datetime:
        return at if at is not None else datetime.now(UTC)

    timeout = httpx.Timeout(options.timeout)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        upstream = Upstream(
            client,
            retry=options.retry,
            min_interval=options.min_interval,
            deadline=options.timeout * 3,
        )
        if sleep is not None:
            upstream.sleep = sleep
        service = CollateralService(
            CollateralDir(out),
            kds=KdsClient(upstream, anchors, options.kds_url),
            pcs=PcsClient(upstream, anchors, options.pcs_url, options.root_crl_url),
            grace=options.grace,
            clock=clock,
        )
        outcomes = []
        for name, ev in evidence:
            try:
                outcomes.append(FetchOutcome(name, filled=await service.fill(ev)))
            except EvidenceRejected as exc:
                outcomes.append(FetchOutcome(name, error=exc))
        return outcomes
