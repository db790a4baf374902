"""Keeps the collateral directory warm for the evidence it is shown.

For every TDX item (TCB info per FMSPC, QE identity, PCK CRL per CA, root CRL):

* fresh (``now`` before ``nextUpdate - refresh_margin``): served from the directory, no request;
* due: fetched again; a good answer replaces the entry;
* due and the fetch fails: the cached copy is served *stale* while ``now <= nextUpdate + grace``;
  past that (or with nothing cached) :class:`CollateralUnavailable` names the upstream reason.

A VCEK never changes, so it is fetched once per (product, chip, TCB) and kept. Fetches verify
what they receive (kds.py, pcs.py) before anything is written. The verifier gets the same
``grace`` for ``nextUpdate``, so what is served here is what verification accepts.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from attestation.collateral.cache import (
    QE_IDENTITY_NAME,
    ROOT_CRL_NAME,
    CacheEntry,
    CollateralDir,
    collateral_from_entries,
)
from attestation.collateral.errors import (
    CacheEntryInvalid,
    CollateralUnavailable,
    UpstreamNotFound,
)
from attestation.collateral.kds import KdsClient
from attestation.collateral.keys import TdxKey, VcekKey, tdx_key, vcek_keys
from attestation.collateral.metrics import CollateralMetrics
from attestation.collateral.pcs import PcsClient
from attestation.errors import EvidenceRejected
from attestation.evidence import Evidence
from attestation.tdx.collateral_model import TdxCollateral

WallClock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Filled:
    """What :meth:`CollateralService.fill` did for one piece of evidence."""

    tee: str
    key: str
    detail: str


class CollateralService:
    def __init__(
        self,
        store: CollateralDir,
        *,
        kds: KdsClient | None = None,
        pcs: PcsClient | None = None,
        refresh_margin: timedelta = timedelta(days=1),
        grace: timedelta = timedelta(0),
        clock: WallClock = _utcnow,
        metrics: CollateralMetrics | None = None,
    ) -> None:
        if grace < timedelta(0) or refresh_margin < timedelta(0):
            raise ValueError("grace and refresh margin must not be negative")
        self.store = store
        self.kds = kds
        self.pcs = pcs
        self.refresh_margin = refresh_margin
        self.grace = grace
        self.clock = clock
        self.metrics = metrics

    # --- one item -----------------------------------------------------------------------------

    def _cached(self, kind: str, name: str) -> CacheEntry | None:
        try:
            return self.store.read(kind, name)
        except CacheEntryInvalid:
            return None  # refetched; a bad file is replaced, never trusted

    def _observe(self, entry: CacheEntry, now: datetime) -> None:
        if self.metrics is not None:
            to_next = (
                None if entry.next_update is None else (entry.next_update - now).total_seconds()
            )
            self.metrics.entry(
                entry.kind, entry.name, (now - entry.fetched_at).total_seconds(), to_next
            )

    def _hit(self, entry: CacheEntry, now: datetime, freshness: str) -> CacheEntry:
        if self.metrics is not None:
            self.metrics.hit(entry.kind, freshness)
        self._observe(entry, now)
        return entry

    async def _item(
        self, kind: str, name: str, fetch: Callable[[datetime], Awaitable[CacheEntry]]
    ) -> CacheEntry:
        now = self.clock()
        cached = self._cached(kind, name)
        if cached is not None and (
            cached.next_update is None or now < cached.next_update - self.refresh_margin
        ):
            return self._hit(cached, now, "fresh")
        try:
            entry = await fetch(now)
        except EvidenceRejected as exc:
            if cached is not None and cached.next_update is not None:
                if now <= cached.next_update + self.grace:
                    return self._hit(cached, now, "stale")
                raise CollateralUnavailable(
                    f"{kind}/{name}: upstream failed ({exc.reason}: {exc.detail}) and the cached "
                    f"copy is past nextUpdate {cached.next_update.isoformat()} + grace "
                    f"{self.grace}"
                ) from exc
            raise CollateralUnavailable(
                f"{kind}/{name}: upstream failed ({exc.reason}: {exc.detail}) and nothing is cached"
            ) from exc
        self.store.write(entry)
        self._observe(entry, now)
        return entry

    # --- per TEE ------------------------------------------------------------------------------

    async def vcek(self, keys: Sequence[VcekKey]) -> bytes:
        """The VCEK of the first key KDS knows (v2 reports try Milan, then Genoa)."""
        if self.kds is None:
            raise CollateralUnavailable("no KDS configured for fetching VCEKs")
        kds = self.kds
        last: CollateralUnavailable | None = None
        for key in keys:
            try:
                entry = await self._item("vcek", key.name, functools.partial(kds.fetch_vcek, key))
            except CollateralUnavailable as exc:
                last = exc
                if isinstance(exc.__cause__, UpstreamNotFound):
                    continue
                raise
            return entry.body
        assert last is not None
        raise last

    async def tdx(self, key: TdxKey) -> TdxCollateral:
        if self.pcs is None:
            raise CollateralUnavailable("no PCS/PCCS configured for fetching TDX collateral")
        pcs = self.pcs
        tcb = await self._item(
            "tcbinfo", key.fmspc.hex(), lambda now: pcs.fetch_tcb_info(key.fmspc, now)
        )
        qe = await self._item("qeidentity", QE_IDENTITY_NAME, pcs.fetch_qe_identity)
        pck_crl = await self._item("pckcrl", key.ca, lambda now: pcs.fetch_pck_crl(key.ca, now))
        root_crl = await self._item("rootcrl", ROOT_CRL_NAME, pcs.fetch_root_crl)
        return collateral_from_entries(tcb, qe, pck_crl, root_crl)

    async def fill(self, evidence: Evidence) -> Filled:
        """Make sure the directory holds what verifying ``evidence`` needs from vendors."""
        if evidence.tee == "snp":
            if evidence.certs:
                return Filled("snp", "-", "the evidence carries its certificates")
            keys = vcek_keys(evidence.report)
            await self.vcek(keys)
            return Filled("snp", " or ".join(k.name for k in keys), "VCEK cached")
        if evidence.tee == "tdx":
            key = tdx_key(evidence.report)
            await self.tdx(key)
            return Filled("tdx", key.name, "TCB info, QE identity and CRLs cached")
        raise EvidenceRejected(f"unknown TEE {evidence.tee!r}")
