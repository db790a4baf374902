"""Prometheus metrics of one coordinator process, on a registry of its own (not the global one),
so several coordinators in one test process never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from attestation.errors import EvidenceRejected
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.core.rules import TAMPER_KINDS

STATES = ("uninitialized", "ready", "stale")
TEES = ("snp", "tdx")
RECOVERY_SOURCES = ("peer", "user", "rekey")


def rejection_reasons() -> tuple[str, ...]:
    """Every reason the attestation layer can reject evidence with (its class tree)."""
    import attestation.verify  # noqa: F401  (defines the verifiers' rejection classes)

    seen: set[str] = set()
    todo: list[type[EvidenceRejected]] = [EvidenceRejected]
    while todo:
        cls = todo.pop()
        seen.add(cls.reason)
        todo.extend(cls.__subclasses__())
    return tuple(sorted(seen))


def rpc_methods() -> tuple[str, ...]:
    """The method names the request histogram is labelled with (all services of the API)."""
    return tuple(
        sorted({m.name for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods})
    )


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
        self.store_tamper = Counter(
            "concord_store_tamper",
            "Tampered 'latest' values seen in the store (DESIGN §12), by kind",
            ["kind"],
            registry=r,
        )
        for kind in TAMPER_KINDS:
            self.store_tamper.labels(kind)  # every kind exported at 0 from the start
        self.set_state("uninitialized")
        self._initialise_labels()

    def _initialise_labels(self) -> None:
        """Create every known label combination at 0, so a dashboard or an alert on
        ``rate(...)`` sees the series from the start instead of after the first event."""
        for tee in TEES:
            self.certificates.labels(tee)
        for reason in rejection_reasons():
            self.attestation_failures.labels(reason)
        for source in RECOVERY_SOURCES:
            self.recoveries.labels(source)
        for method in rpc_methods():
            self.requests.labels(method, "OK")

    def set_state(self, state: str) -> None:
        for s in STATES:
            self.state.labels(s).set(1 if s == state else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
