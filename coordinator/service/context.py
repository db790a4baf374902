"""What every servicer shares: the process context and the ``rpc`` decorator, which turns any
error into its status through :mod:`coordinator.service.status` (DESIGN §7), so a refusal reads
the same whichever API raised it."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from attestation.errors import EvidenceRejected
from attestation.providers.base import EvidenceProvider
from attestation.verify import VerifiedEvidence, Verifier
from coordinator.core.issuance import BatchRunner, Issuer
from coordinator.core.lifecycle import DEFAULT_LEAF_LIFETIME
from coordinator.core.manifest import Manifest
from coordinator.core.state import Guard, Stale, State
from coordinator.service.metrics import Metrics
from coordinator.service.status import rpc_status_of, wire_status

log = logging.getLogger("concord.rpc")

R = TypeVar("R")

CPU_WORKERS = min(4, os.cpu_count() or 1)
"""Threads of the CPU pool: parsing, verification, sealing outside the event loop. Small and
bounded, so a flood of expensive requests queues here instead of starving the loop."""


def cpu_pool(workers: int = CPU_WORKERS) -> ThreadPoolExecutor:
    """The one executor for CPU-heavy work of a request (DESIGN §13)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="concord-cpu")


@dataclass
class Coordinator:
    """Process-wide context of one coordinator: state guard, evidence, keys, metrics."""

    guard: Guard
    verifier: Verifier
    provider: EvidenceProvider
    tls_spki: bytes
    hpke_private: X25519PrivateKey
    metrics: Metrics
    runner: BatchRunner[Any, Any]
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ready_peer_exists: Callable[[], Awaitable[bool]] | None = None
    deployment: str = ""
    """The configured deployment name, attested and bound into peer recovery (DESIGN §12)."""
    leaf_lifetime: timedelta = DEFAULT_LEAF_LIFETIME
    """Validity of the leaves NewMeshCert issues (``--leaf-lifetime``, DESIGN §15)."""
    require_pq: bool = False
    """``--require-pq``: refuse requesters that offer no post-quantum HPKE suite."""
    cpu: ThreadPoolExecutor = field(default_factory=cpu_pool, repr=False)
    _issuer: Issuer | None = field(default=None, repr=False)

    async def offload(self, fn: Callable[..., R], /, *args: Any) -> R:
        """Run CPU-heavy ``fn(*args)`` (parsing of large inputs, verification, sealing) in the
        CPU pool: the event loop keeps serving probes and ``Attest`` meanwhile (DESIGN §13)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.cpu, functools.partial(fn, *args))

    def close(self) -> None:
        """Stop the CPU pool (queued work is dropped) and the issuance runner."""
        self.cpu.shutdown(wait=False, cancel_futures=True)
        self.runner.close()

    @functools.cached_property
    def hpke_public(self) -> bytes:
        """Raw X25519 public key, derived once (every Attest binds and returns it)."""
        return self.hpke_private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def issuer_for(self, state: State) -> Issuer:
        """The Issuer of ``state``, built once and dropped when another State replaces it."""
        issuer = self._issuer
        if issuer is None or issuer.state is not state:
            issuer = Issuer(state, self.verifier, leaf_validity=self.leaf_lifetime)
            self._issuer = issuer
        return issuer

    async def fresh_for_mesh(self) -> State:
        """MeshAPI: a new call needs a fresh State; a running one finishes on the State it has.

        The hot path reads only memory. Without a State the store decides between "not
        initialized" (no history) and "recovery mode" (a history this process cannot serve yet).
        """
        state = self.guard.current()
        if state is None:
            return await self.guard.get_state()
        if state.stale:
            raise Stale(state)
        return state

    async def evidence(self, report_data: bytes) -> bytes:
        ev = await asyncio.to_thread(self.provider.evidence, report_data)
        return ev.encode()

    async def own_evidence_under(self, manifest: Manifest) -> VerifiedEvidence:
        """This coordinator's own fresh evidence verified against ``manifest``'s reference
        values (raises EvidenceRejected): whether it can serve as a coordinator of it, together
        with a check of ``policy_hash`` against ``manifest.coordinator_policy_hash``."""
        report_data = os.urandom(64)
        evidence = await self.evidence(report_data)
        return await self.offload(
            self.verifier.verify, evidence, manifest.reference_values, report_data, self.clock()
        )

    def record_rejection(self, exc: EvidenceRejected) -> None:
        self.metrics.attestation_failures.labels(exc.reason).inc()


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def rpc(coord_attr: str = "coord") -> Callable[[F], F]:
    """Wrap a servicer method: time it, count rejections, and turn typed errors into statuses."""

    def decorate(fn: F) -> F:
        name = fn.__name__

        @functools.wraps(fn)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            coord: Coordinator = getattr(self, coord_attr)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await fn(self, request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                status = wire_status(exc)
                code = status.code
                if isinstance(exc, EvidenceRejected):
                    coord.record_rejection(exc)
                if code == grpc.StatusCode.INTERNAL:
                    log.error("%s failed: %s", name, type(exc).__name__, exc_info=exc)
                else:
                    log.info("%s refused: %s %s %s", name, code.name, status.reason, status.message)
                await context.abort_with_status(rpc_status_of(status))
            finally:
                coord.metrics.requests.labels(name, code.name).observe(
                    time.perf_counter() - started
                )

        return wrapper  # type: ignore[return-value]

    return decorate
