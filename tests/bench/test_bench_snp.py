"""verify_snp on a real Milan report with the VCEK chain cached (target: median < 2 ms)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attestation import anchors
from attestation.cache import BoundedCache
from attestation.reference import SnpReference, SnpTcb
from attestation.snp.report import parse_report
from attestation.snp.verify import SnpVerified, verify_snp

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def test_bench_verify_snp_cached_chain(benchmark: Any, vectors: Path) -> None:
    report = (vectors / "snp" / "milan-v2.report.bin").read_bytes()
    vcek = (vectors / "snp" / "milan-v2.vcek.der").read_bytes()
    parsed = parse_report(report)
    production = anchors.production()
    refs = [
        SnpReference(
            product="Milan",
            measurement=parsed.measurement,
            minimum_tcb=SnpTcb(bootloader=3, tee=0, snp=8, microcode=0x73),
            allowed_chip_ids=(parsed.chip_id,),
        )
    ]
    cache: BoundedCache[Any, Any] = BoundedCache(16)
    verify_snp(report, [vcek], production, refs, parsed.report_data, NOW, cache=cache)  # warm
    assert len(cache) == 1
    misses = cache.misses  # a v2 report has no CPUID: the first lookup tries every pinned ARK

    def run() -> SnpVerified:
        return verify_snp(report, [vcek], production, refs, parsed.report_data, NOW, cache=cache)

    result = benchmark(run)
    assert isinstance(result, SnpVerified)
    assert (result.product, result.signer, result.reference_index) == ("Milan", "vcek", 0)
    assert result.measurement == parsed.measurement and result.chip_id == parsed.chip_id
    assert cache.misses == misses and cache.hits >= 1  # every timed call hit the chain cache
