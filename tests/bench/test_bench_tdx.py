"""Benchmark: verify_tdx on the real spr-v4 quote with the PCK chain already cached.

Run with ``pytest tests/bench/test_bench_tdx.py --benchmark-enable``; the suite runs it once with
``--benchmark-disable`` as a correctness test. Target: median < 2 ms.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attestation.anchors import production
from attestation.cache import BoundedCache
from attestation.reference import TdxReference
from attestation.tdx.quote import parse_quote
from attestation.tdx.verify import TdxVerified, verify_tdx

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def test_bench_verify_tdx_cached_chain(benchmark: Any, vectors: Path) -> None:
    raw = (vectors / "tdx" / "spr-v4.quote.bin").read_bytes()
    q = parse_quote(raw)
    anchors = production()
    refs = [TdxReference(mr_td=q.body.mr_td, rtmrs=q.body.rtmrs, xfam=q.body.xfam)]
    cache: BoundedCache[bytes, object] = BoundedCache(64)

    def run() -> TdxVerified:
        return verify_tdx(
            raw, anchors, refs, q.body.report_data, NOW, cache=cache, require_collateral=False
        )

    run()  # fill the chain cache
    misses = cache.misses
    result = benchmark(run)
    assert isinstance(result, TdxVerified)
    assert result.mr_td == q.body.mr_td and result.report_data == q.body.report_data
    assert result.fmspc.hex() == "50806f000000" and result.tcb_status is None
    assert cache.misses == misses and cache.hits >= 1  # every benchmarked call hit the cache
