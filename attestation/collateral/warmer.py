"""Keep the collateral directory warm for the evidence a server actually sees.

:class:`WarmingDir` is the :class:`CollateralDir` a verifier reads; every lookup also tells the
:class:`Warmer` which report or quote needed collateral. The warmer (one asyncio task of the
server) fills the directory for them at once and then every ``interval`` seconds, so a VCEK is
fetched the first time a chip shows up and TDX collateral is refreshed before ``nextUpdate``.
Verification never waits for the network: a miss is refused now and succeeds once fetched.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry

from attestation.anchors import TrustAnchors
from attestation.collateral.cache import CollateralDir
from attestation.collateral.fetch import Upstream
from attestation.collateral.kds import KdsClient
from attestation.collateral.metrics import CollateralMetrics
from attestation.collateral.pcs import PcsClient
from attestation.collateral.service import CollateralService
from attestation.collateral.upstreams import AMD_KDS, INTEL_PCS
from attestation.errors import EvidenceRejected
from attestation.evidence import Evidence
from attestation.tdx.collateral_model import TdxCollateral

log = logging.getLogger("concord.collateral")


def parse_collateral_urls(values: Sequence[str]) -> tuple[str, str]:
    """``kds=URL`` / ``pcs=URL`` / ``URL`` (a proxy serving both) / ``default`` -> (kds, pcs)."""
    kds, pcs = AMD_KDS, INTEL_PCS
    for value in values:
        name, sep, url = value.partition("=")
        if not sep:
            if value != "default":
                kds = pcs = value
            continue
        if name not in ("kds", "pcs") or not url.startswith(("http://", "https://")):
            raise ValueError(f"--collateral-url {value!r}: expected kds=URL, pcs=URL or URL")
        if name == "kds":
            kds = url
        else:
            pcs = url
    for url in (kds, pcs):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--collateral-url {url!r}: not an http(s) URL")
    return kds, pcs


class Warmer:
    """Remembers (bounded) which evidence needed collateral and fills the directory for it."""

    def __init__(
        self,
        make_service: Callable[[httpx.AsyncClient], CollateralService],
        *,
        interval: float = 3600.0,
        max_tracked: int = 256,
        timeout: float = 10.0,
    ) -> None:
        self.make_service = make_service
        self.interval = interval
        self.max_tracked = max_tracked
        self.timeout = timeout
        self._tracked: OrderedDict[bytes, Evidence] = OrderedDict()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.rounds = 0

    def note(self, tee: str, report: bytes) -> None:
        """Called from verification (any thread): remember ``report`` and wake the task."""
        key = hashlib.sha256(tee.encode() + b"\0" + report).digest()
        with self._lock:
            if key in self._tracked:
                self._tracked.move_to_end(key)
                return
            self._tracked[key] = Evidence(tee=tee, report=report)
            while len(self._tracked) > self.max_tracked:
                self._tracked.popitem(last=False)
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            loop.call_soon_threadsafe(wake.set)

    def tracked(self) -> list[Evidence]:
        with self._lock:
            return list(self._tracked.values())

    async def run_once(self, service: CollateralService) -> None:
        for ev in self.tracked():
            try:
                await service.fill(ev)
            except EvidenceRejected as exc:
                log.warning("collateral for %s evidence not available: %s", ev.tee, exc)
        self.rounds += 1

    async def run(self) -> None:
        """Until cancelled: a round on every new piece of evidence and every ``interval``."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout)) as client:
            service = self.make_service(client)
            while True:
                self._wake.clear()
                await self.run_once(service)
                try:
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                except TimeoutError:
                    pass


class WarmingDir(CollateralDir):
    """A collateral directory that tells the warmer about every lookup."""

    def __init__(self, root: str | Path, warmer: Warmer) -> None:
        super().__init__(root)
        self.warmer = warmer

    def snp_certs(self, report: bytes) -> tuple[bytes, ...]:
        self.warmer.note("snp", report)
        return super().snp_certs(report)

    def tdx_collateral(self, quote: bytes) -> TdxCollateral | None:
        self.warmer.note("tdx", quote)
        return super().tdx_collateral(quote)


def build_warmer(
    directory: str | Path,
    urls: Sequence[str],
    anchors: TrustAnchors,
    *,
    registry: CollectorRegistry | None = None,
    interval: float = 3600.0,
) -> tuple[Warmer, WarmingDir]:
    """The server's warmer and the directory its verifier reads (URLs as for ``serve``)."""
    kds_url, pcs_url = parse_collateral_urls(urls)
    metrics = CollateralMetrics(registry) if registry is not None else None
    store = CollateralDir(directory)

    def make(client: httpx.AsyncClient) -> CollateralService:
        upstream = Upstream(client, metrics=metrics)
        return CollateralService(
            store,
            kds=KdsClient(upstream, anchors, kds_url),
            pcs=PcsClient(upstream, anchors, pcs_url),
            metrics=metrics,
        )

    warmer = Warmer(make, interval=interval)
    return warmer, WarmingDir(directory, warmer)
