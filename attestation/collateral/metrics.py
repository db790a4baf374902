"""Prometheus metrics of the collateral service, registered on a registry the caller passes in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class CollateralMetrics:
    """Fetches by result, cache hits by freshness, entry age and time to ``nextUpdate``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.fetches = Counter(
            "concord_collateral_fetches_total",
            "Upstream collateral requests by kind and result.",
            ("kind", "result"),
            registry=registry,
        )
        self.hits = Counter(
            "concord_collateral_cache_hits_total",
            "Collateral served from the cache, by kind and freshness (fresh, stale).",
            ("kind", "freshness"),
            registry=registry,
        )
        self.age = Gauge(
            "concord_collateral_age_seconds",
            "Seconds since the cached collateral was fetched.",
            ("kind", "key"),
            registry=registry,
        )
        self.to_next_update = Gauge(
            "concord_collateral_next_update_seconds",
            "Seconds until the cached collateral's nextUpdate (negative: past it).",
            ("kind", "key"),
            registry=registry,
        )

    def fetch(self, kind: str, result: str) -> None:
        self.fetches.labels(kind, result).inc()

    def hit(self, kind: str, freshness: str) -> None:
        self.hits.labels(kind, freshness).inc()

    def entry(self, kind: str, key: str, age: float, to_next_update: float | None) -> None:
        self.age.labels(kind, key).set(age)
        if to_next_update is not None:
            self.to_next_update.labels(kind, key).set(to_next_update)
