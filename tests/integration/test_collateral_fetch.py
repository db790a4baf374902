"""Collateral fetching against a fake KDS and a fake PCS on loopback serving real responses.

The fake vendors (tests/fakes/vendor.py) answer under the real API paths and headers with the
vendor-signed vectors; staged failures (429 + Retry-After, 404, 500, a hang, a truncated body, a
broken signature) must end in verified collateral or a typed, fail-closed refusal, and the
number of upstream requests must stay bounded. Back-off waits go through a fake clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from attestation import anchors as anchors_mod
from attestation.collateral.cache import CollateralDir
from attestation.collateral.errors import (
    CollateralUnavailable,
    UpstreamFailed,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamTruncated,
)
from attestation.collateral.fetch import ExponentialRetry, Upstream
from attestation.collateral.kds import KdsClient
from attestation.collateral.keys import vcek_keys
from attestation.collateral.metrics import CollateralMetrics
from attestation.collateral.pcs import PcsClient
from attestation.errors import CollateralExpired, EvidenceRejected
from attestation.evidence import Evidence
from attestation.reference import ReferenceValues, SnpReference, TdxReference
from attestation.snp.report import parse_report
from attestation.tdx.collateral_model import CollateralSignatureInvalid
from attestation.tdx.quote import parse_quote
from attestation.tdx.verify import MissingCollateral
from attestation.verify import Verifier
from tests.fakes.vendor import FakeVendor, Reply, pcs_bodies, running_vendor, serve_kds, serve_pcs

SNP_AT = datetime(2024, 6, 1, tzinfo=UTC)
TDX_AT = datetime(2025, 7, 1, tzinfo=UTC)  # collateral issued 2025-06-19, nextUpdate 2025-07-19
TDX_NEXT_UPDATE = datetime(2025, 7, 19, 10, 0, 35, tzinfo=UTC)  # earliest: the PCK CRL
ATTEMPTS = 3


@dataclass
class FakeTime:
    """Monotonic clock and sleep for the back-off: sleeping only advances a number."""

    t: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


@dataclass
class Wall:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    vendor: FakeVendor
    upstream: Upstream
    store: CollateralDir
    time: FakeTime
    wall: Wall
    registry: CollectorRegistry
    anchors: anchors_mod.TrustAnchors
    vectors: Path

    def service(self, grace: timedelta = timedelta(0)) -> CollateralService:
        metrics = self.upstream.metrics
        return CollateralService(
            self.store,
            kds=KdsClient(self.upstream, self.anchors, self.vendor.url),
            pcs=PcsClient(self.upstream, self.anchors, self.vendor.url),
            clock=self.wall,
            grace=grace,
            metrics=metrics,
        )

    def snp_report(self) -> bytes:
        return (self.vectors / "snp" / "milan-v2.report.bin").read_bytes()

    def tdx_quote(self) -> bytes:
        return (self.vectors / "tdx" / "uptodate-v4.quote.bin").read_bytes()

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


from attestation.collateral.service import CollateralService  # noqa: E402


@pytest.fixture(scope="module")
def production() -> anchors_mod.TrustAnchors:
    return anchors_mod.production()


@pytest.fixture
def vendor() -> Iterator[FakeVendor]:
    with running_vendor() as v:
        yield v


@pytest.fixture
async def world(
    vendor: FakeVendor, tmp_path: Path, vectors: Path, production: anchors_mod.TrustAnchors
) -> AsyncIterator[World]:
    fake = FakeTime()
    registry = CollectorRegistry()
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.5)) as client:
        upstream = Upstream(
            client,
            retry=ExponentialRetry(base=1.0, cap=8.0, max_attempts=ATTEMPTS),
            sleep=fake.sleep,
            clock=fake.monotonic,
            metrics=CollateralMetrics(registry),
            deadline=5.0,
            max_retry_after=60.0,
        )
        yield World(
            vendor,
            upstream,
            CollateralDir(tmp_path / "collateral"),
            fake,
            Wall(SNP_AT),
            registry,
            production,
            vectors,
        )


def snp_refs(report: bytes) -> ReferenceValues:
    m = parse_report(report).measurement
    return ReferenceValues(snp=(SnpReference(product="Milan", measurement=m),))


def tdx_refs(quote: bytes) -> ReferenceValues:
    return ReferenceValues(tdx=(TdxReference(mr_td=parse_quote(quote).body.mr_td),))


def verify_snp_from_dir(w: World) -> None:
    report = w.snp_report()
    verifier = Verifier(w.anchors, collateral=w.store)
    res = verifier.verify(Evidence(tee="snp", report=report), snp_refs(report), None, SNP_AT)
    assert res.tee == "snp" and res.detail.product == "Milan"


# --- AMD KDS ----------------------------------------------------------------------------------


async def test_vcek_fetched_once_then_served_from_the_directory(world: World) -> None:
    target = serve_kds(world.vendor, world.vectors)
    with pytest.raises(EvidenceRejected) as info:  # nothing cached yet: fail closed
        verify_snp_from_dir(world)
    assert info.value.reason == "missing_certificate"
    svc = world.service()
    for _ in range(3):
        await svc.fill(Evidence(tee="snp", report=world.snp_report()))
    assert world.vendor.log == [target]  # one request; the VCEK never changes
    verify_snp_from_dir(world)
    assert world.metric("concord_collateral_fetches_total", kind="vcek", result="ok") == 1
    assert world.metric("concord_collateral_cache_hits_total", kind="vcek", freshness="fresh") == 2


async def test_kds_429_retry_after_is_honoured(world: World) -> None:
    target = serve_kds(world.vendor, world.vectors)
    world.vendor.script(target, Reply(429, b"slow down", {"Retry-After": "12"}))
    await world.service().fill(Evidence(tee="snp", report=world.snp_report()))
    assert world.vendor.count("/vcek/") == 2
    assert world.time.sleeps and world.time.sleeps[0] >= 12  # waited as asked, then once more
    verify_snp_from_dir(world)


async def test_kds_429_beyond_the_cap_fails_fast_and_leaves_kds_alone(world: World) -> None:
    target = serve_kds(world.vendor, world.vectors)
    world.vendor.script(target, Reply(429, b"", {"Retry-After": "3600"}))
    svc = world.service()
    for _ in range(3):
        with pytest.raises(CollateralUnavailable) as info:
            await svc.fill(Evidence(tee="snp", report=world.snp_report()))
        assert isinstance(info.value.__cause__, UpstreamRateLimited)
    assert world.vendor.count() == 1  # asked once, then respected Retry-After
    assert world.time.sleeps == []
    with pytest.raises(EvidenceRejected) as rej:
        verify_snp_from_dir(world)
    assert rej.value.reason == "missing_certificate"


async def test_kds_404_is_final_and_remembered(world: World) -> None:
    # Nothing routed: KDS knows neither a Milan nor a Genoa VCEK for this chip/TCB.
    svc = world.service()
    for _ in range(2):
        with pytest.raises(CollateralUnavailable) as info:
            await svc.fill(Evidence(tee="snp", report=world.snp_report()))
        assert isinstance(info.value.__cause__, UpstreamNotFound)
    # v2 report: Milan then Genoa asked once each, never retried, never repeated
    assert sorted(t.split("/")[3] for t in world.vendor.log) == ["Genoa", "Milan"]


@pytest.mark.parametrize("failures", [1, 2])
async def test_kds_500_retried_with_backoff(world: World, failures: int) -> None:
    target = serve_kds(world.vendor, world.vectors)
    world.vendor.script(target, *[Reply(500, b"oops")] * failures)
    await world.service().fill(Evidence(tee="snp", report=world.snp_report()))
    assert world.vendor.count() == failures + 1
    assert len(world.time.sleeps) == failures
    verify_snp_from_dir(world)


async def test_kds_outage_bounded_and_fail_closed(world: World) -> None:
    target = serve_kds(world.vendor, world.vectors)
    world.vendor.script(target, *[Reply(503, b"down")] * 10)
    with pytest.raises(CollateralUnavailable) as info:
        await world.service().fill(Evidence(tee="snp", report=world.snp_report()))
    assert isinstance(info.value.__cause__, UpstreamFailed)
    assert world.vendor.count() == ATTEMPTS
    assert (
        world.metric("concord_collateral_fetches_total", kind="vcek", result="upstream_failed")
        == ATTEMPTS
    )


async def test_kds_hang_times_out_bounded(world: World) -> None:
    target = serve_kds(world.vendor, world.vectors)
    world.vendor.script(target, *[Reply(mode="hang")] * ATTEMPTS)
    with pytest.raises(CollateralUnavailable) as info:
        await world.service().fill(Evidence(tee="snp", report=world.snp_report()))
    assert isinstance(info.value.__cause__, UpstreamTimeout)
    assert world.vendor.count() == ATTEMPTS


async def test_kds_hang_then_answer(world: World) -> None:
    target = serve_kds(world.vendor, world.vectors)
    world.vendor.script(target, Reply(mode="hang"))
    await world.service().fill(Evidence(tee="snp", report=world.snp_report()))
    assert world.vendor.count() == 2
    verify_snp_from_dir(world)


async def test_kds_truncated_body_retried_never_cached(world: World) -> None:
    target = serve_kds(world.vendor, world.vectors)
    vcek = (world.vectors / "snp" / "milan-v2.vcek.der").read_bytes()
    world.vendor.script(target, *[Reply(200, vcek, mode="truncate")] * ATTEMPTS)
    with pytest.raises(CollateralUnavailable) as info:
        await world.service().fill(Evidence(tee="snp", report=world.snp_report()))
    assert isinstance(info.value.__cause__, UpstreamTruncated)
    assert world.vendor.count() == ATTEMPTS
    assert not (world.store.root / "vcek").exists() or not any(
        (world.store.root / "vcek").iterdir()
    )
    await world.service().fill(Evidence(tee="snp", report=world.snp_report()))  # now whole
    verify_snp_from_dir(world)


async def test_kds_wrong_certificate_is_not_cached(world: World) -> None:
    target = serve_kds(world.vendor, world.vectors)
    other = (world.vectors / "snp" / "milan-v2-debug.vcek.der").read_bytes()  # another chip
    world.vendor.route(target, Reply(200, other))
    with pytest.raises(CollateralUnavailable) as info:
        await world.service().fill(Evidence(tee="snp", report=world.snp_report()))
    assert info.value.__cause__ is not None
    assert info.value.__cause__.reason == "upstream_response_invalid"  # type: ignore[attr-defined]
    assert world.vendor.count() == 1  # not retried: asking again gives the same wrong answer


async def test_single_flight_for_concurrent_requests(world: World) -> None:
    serve_kds(world.vendor, world.vectors)
    svc = world.service()
    ev = Evidence(tee="snp", report=world.snp_report())
    await asyncio.gather(*(svc.fill(ev) for _ in range(8)))
    assert world.vendor.count() == 1


def test_vlek_is_never_fetchable(vectors: Path) -> None:
    report = (vectors / "snp" / "vlek-v3.report.bin").read_bytes()
    with pytest.raises(EvidenceRejected) as info:
        vcek_keys(report)
    assert info.value.reason in ("vlek_not_fetchable", "chip_id_masked")
    assert "VLEK" in info.value.detail or "MASK_CHIP_ID" in info.value.detail


# --- Intel PCS --------------------------------------------------------------------------------


def verify_tdx_from_dir(w: World, at: datetime, grace: timedelta = timedelta(0)) -> str | None:
    quote = w.tdx_quote()
    verifier = Verifier(w.anchors, collateral=w.store, collateral_grace=grace)
    res = verifier.verify(Evidence(tee="tdx", report=quote), tdx_refs(quote), None, at)
    status: str | None = res.detail.tcb_status
    return status


async def test_pcs_collateral_fetched_and_verified(world: World) -> None:
    targets = serve_pcs(world.vendor, world.vectors)
    world.wall.now = TDX_AT
    with pytest.raises(MissingCollateral):
        verify_tdx_from_dir(world, TDX_AT)
    await world.service().fill(Evidence(tee="tdx", report=world.tdx_quote()))
    assert sorted(world.vendor.log) == sorted(
        [targets.tcb, targets.qe, targets.pck_crl, targets.root_crl]
    )
    assert verify_tdx_from_dir(world, TDX_AT) == "UpToDate"
    await world.service().fill(Evidence(tee="tdx", report=world.tdx_quote()))
    assert world.vendor.count() == 4  # fresh: nothing asked again
    age = world.metric("concord_collateral_next_update_seconds", kind="tcbinfo", key="b0c06f000000")
    assert age > 0


async def test_pcs_broken_signature_fails_closed(world: World) -> None:
    targets = serve_pcs(world.vendor, world.vectors)
    good = pcs_bodies(world.vectors)[targets.tcb]
    obj = json.loads(good.body)
    sig = obj["signature"]
    broken = good.body.replace(sig.encode(), (("0" if sig[0] != "0" else "1") + sig[1:]).encode())
    world.vendor.route(targets.tcb, Reply(200, broken, good.headers))
    world.wall.now = TDX_AT
    with pytest.raises(CollateralUnavailable) as info:
        await world.service().fill(Evidence(tee="tdx", report=world.tdx_quote()))
    assert isinstance(info.value.__cause__, CollateralSignatureInvalid)
    assert info.value.__cause__.reason == "collateral_signature"
    assert world.vendor.count(targets.tcb) == 1  # a bad signature is not retried
    with pytest.raises(MissingCollateral):  # nothing was cached: verification fails closed
        verify_tdx_from_dir(world, TDX_AT)


async def test_pcs_missing_issuer_chain_header_refused(world: World) -> None:
    targets = serve_pcs(world.vendor, world.vectors)
    good = pcs_bodies(world.vectors)[targets.qe]
    world.vendor.route(targets.qe, Reply(200, good.body, {}))
    world.wall.now = TDX_AT
    with pytest.raises(CollateralUnavailable) as info:
        await world.service().fill(Evidence(tee="tdx", report=world.tdx_quote()))
    assert "sgx-enclave-identity-issuer-chain" in str(info.value.__cause__)


async def test_pcs_stale_while_revalidate_then_fail_closed(world: World) -> None:
    targets = serve_pcs(world.vendor, world.vectors)
    world.wall.now = TDX_AT
    await world.service().fill(Evidence(tee="tdx", report=world.tdx_quote()))
    assert world.vendor.count() == 4
    for target in (targets.tcb, targets.qe, targets.pck_crl, targets.root_crl):
        world.vendor.route(target, Reply(500, b"outage"))

    # Inside the refresh margin (a day before nextUpdate): refresh fails, stale copy is served.
    world.wall.now = TDX_NEXT_UPDATE - timedelta(hours=2)
    world.time.t += 3600  # spacing of identical requests has elapsed
    svc = world.service(grace=timedelta(days=2))
    await svc.fill(Evidence(tee="tdx", report=world.tdx_quote()))
    assert (
        world.metric("concord_collateral_cache_hits_total", kind="tcbinfo", freshness="stale") == 1
    )
    asked = world.vendor.count()
    assert asked <= 4 + 3 * ATTEMPTS  # each due item tried at most ATTEMPTS times

    # Past nextUpdate, within the grace: still served, and verification with the same grace agrees.
    world.wall.now = TDX_NEXT_UPDATE + timedelta(days=1)
    world.time.t += 3600
    await svc.fill(Evidence(tee="tdx", report=world.tdx_quote()))
    assert verify_tdx_from_dir(world, world.wall.now, grace=timedelta(days=2)) == "UpToDate"
    with pytest.raises(CollateralExpired):  # no grace: stale collateral is refused
        verify_tdx_from_dir(world, world.wall.now)

    # Past nextUpdate + grace: fail closed with a typed reason.
    world.wall.now = TDX_NEXT_UPDATE + timedelta(days=3)
    world.time.t += 3600
    with pytest.raises(CollateralUnavailable) as info:
        await svc.fill(Evidence(tee="tdx", report=world.tdx_quote()))
    assert "past nextUpdate" in info.value.detail
    with pytest.raises(CollateralExpired):
        verify_tdx_from_dir(world, world.wall.now, grace=timedelta(days=2))


async def test_pcs_refreshes_before_next_update(world: World) -> None:
    targets = serve_pcs(world.vendor, world.vectors)
    world.wall.now = TDX_AT
    svc = world.service()
    await svc.fill(Evidence(tee="tdx", report=world.tdx_quote()))
    world.wall.now = TDX_NEXT_UPDATE - timedelta(hours=12)  # inside the default 1-day margin
    world.time.t += 3600
    await svc.fill(Evidence(tee="tdx", report=world.tdx_quote()))
    assert world.vendor.count(targets.pck_crl) == 2  # refreshed (the CRL is due first)


# --- keeping the directory warm (serve --collateral-url) ---------------------------------------


async def test_warmer_fetches_what_verification_missed(
    vendor: FakeVendor, tmp_path: Path, vectors: Path, production: anchors_mod.TrustAnchors
) -> None:
    from attestation.collateral.warmer import build_warmer

    serve_kds(vendor, vectors)
    registry = CollectorRegistry()
    warmer, source = build_warmer(
        tmp_path / "warm", [f"kds={vendor.url}", f"pcs={vendor.url}"], production, registry=registry
    )
    report = (vectors / "snp" / "milan-v2.report.bin").read_bytes()
    verifier = Verifier(production, collateral=source)
    ev = Evidence(tee="snp", report=report)
    with pytest.raises(EvidenceRejected) as info:  # a miss is refused now, never waited for
        verifier.verify(ev, snp_refs(report), None, SNP_AT)
    assert info.value.reason == "missing_certificate"
    task = asyncio.create_task(warmer.run())
    try:
        async with asyncio.timeout(60):
            while warmer.rounds < 1:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    verifier.verify(ev, snp_refs(report), None, SNP_AT)
    assert vendor.count("/vcek/") == 1
    assert (
        registry.get_sample_value(
            "concord_collateral_fetches_total", {"kind": "vcek", "result": "ok"}
        )
        == 1
    )
