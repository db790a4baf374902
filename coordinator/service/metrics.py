"""Prometheus metrics of one coordinator process, on a registry of its own (not the global one),
so several coordinators in one test process never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STATES = ("uninitialized", "ready", "stale")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.state = Gauge(
            "concord_state", "1 for the coordinator's current state", ["state"], registry=r
        )
        self.generation = Gauge(
            "concord_manifest_generation", "Length of the manifest history", registry=r
        )
        self.certificates = Counter(
            "concord_certificates_issued", "Mesh certificates issued", ["tee"], registry=r
        )
        self.attestation_failures = Counter(
            "concord_attestation_failures", "Evidence rejected, by reason", ["reason"], registry=r
        )
        self.recoveries = Counter(
            "concord_recoveries", "Successful state recoveries", ["source"], registry=r
        )
        self.requests = Histogram(
            "concord_request_seconds",
            "gRPC request latency",
            ["method", "code"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.issuance = Histogram(
            "concord_issuance_seconds",
            "Time to verify evidence and sign one mesh certificate",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=r,
        )
        self.set_state("uninitialized")

    def set_state(self, state: str) -> None:
        for s in STATES:
            self.state.labels(s).set(1 if s == state else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
