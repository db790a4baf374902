"""Client-side helpers for tests and benchmarks of a local multi-coordinator deployment.

The deployment itself (:class:`Cluster`, the coordinator processes, ``hack/cluster``) lives in
``tools/cluster.py``; it is re-exported here so that test modules import one place. No pytest
imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools.cluster import (
    COORDINATOR_POLICY,
    SERVE_TIMEOUT,
    Addresses,
    Cluster,
    ClusterError,
    CoordinatorProcess,
    init_mock_tee,
    running_cluster,
)

if TYPE_CHECKING:
    from tests.integration.service_helpers import Keys, MockTee

__all__ = [
    "COORDINATOR_POLICY",
    "LIVENESS_S",
    "SERVE_TIMEOUT",
    "Addresses",
    "Cluster",
    "ClusterError",
    "CoordinatorProcess",
    "attested",
    "attested_state",
    "check_history",
    "coordinator_policy",
    "gauges",
    "http_get",
    "init_mock_tee",
    "manifest_v",
    "percentile",
    "readyz",
    "running_cluster",
    "status",
    "wait_status",
]

# A deadline for liveness ("the cluster gets there at all"), far above what it takes on an idle
# machine so a busy one cannot fail it. How fast the cluster converges is measured and reported
# by tests/bench and tools/bench, never asserted here.
LIVENESS_S = 30.0


# --- observing coordinators from a client ------------------------------------------------------


async def http_get(address: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.transport.abort()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def readyz(node: CoordinatorProcess) -> int:
    status, _ = await http_get(node.http, "/readyz")
    return status


_GAUGE = re.compile(rb"^(concord_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$", re.M)


async def gauges(node: CoordinatorProcess) -> dict[str, float]:
    """The coordinator's metrics as ``name{labels}`` -> value."""
    _, body = await http_get(node.http, "/metrics")
    return {
        (m.group(1) + (m.group(2) or b"")).decode(): float(m.group(3))
        for m in _GAUGE.finditer(body)
    }


async def status(node: CoordinatorProcess) -> tuple[bool, int]:
    """(ready, manifest generation) from the coordinator's own metrics."""
    g = await gauges(node)
    return g.get('concord_state{state="ready"}') == 1.0, int(
        g.get("concord_manifest_generation", 0)
    )


async def wait_status(
    nodes: Sequence[CoordinatorProcess],
    *,
    ready: bool,
    generation: int | None = None,
    timeout: float,
    interval: float = 0.01,
) -> dict[str, float]:
    """Wait until every node reports ``ready`` (at ``generation``); returns the seconds each
    one took. Raises TimeoutError naming the nodes that did not get there."""
    started = time.perf_counter()
    pending = {n.node_id: n for n in nodes}
    took: dict[str, float] = {}
    while True:
        for node_id, node in list(pending.items()):
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                is_ready, gen = await status(node)
                if is_ready == ready and (generation is None or gen == generation):
                    took[node_id] = time.perf_counter() - started
                    del pending[node_id]
        if not pending:
            return took
        if time.perf_counter() - started > timeout:
            raise TimeoutError(
                f"not {'ready' if ready else 'unready'} (generation {generation}) "
                f"after {timeout}s: {sorted(pending)}"
            )
        await asyncio.sleep(interval)


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


# --- clients of a cluster (tests and benchmarks) ----------------------------------------------


def coordinator_policy(mock_dir: Path, policy: bytes = COORDINATOR_POLICY) -> Any:
    """What a client expects of these coordinators: the mock anchors, the mock reference values
    and the coordinator policy hash."""
    from attestation import anchors
    from attestation.providers import mock
    from attestation.reference import parse_reference_values
    from coordinator.client.channel import CoordinatorPolicy

    refs = json.loads((Path(mock_dir) / mock.REFERENCE_FILE).read_text())
    return CoordinatorPolicy(
        anchors.mock(mock_dir),
        parse_reference_values(refs, "ReferenceValues"),
        hashlib.sha256(policy).digest(),
    )


async def attested(address: str, policy: Any, timeout: float = 10.0) -> Any:
    """An attested channel (coordinator.client.channel.AttestedChannel) to ``address``."""
    from coordinator.client.channel import AttestedChannel

    return await AttestedChannel.connect(address, policy, timeout=timeout)


def check_history(resp: Any) -> list[bytes]:
    """Re-verify a GetManifests answer offline: the manifests chain linearly (from the zero
    hash) up to the signed ``latest``. Returns the transition hash after each manifest."""
    from cryptography.hazmat.primitives import serialization

    from coordinator.core.history import ZERO_HASH, SignedLatest, transition_hash

    previous = ZERO_HASH
    chain: list[bytes] = []
    for raw in resp.manifests:
        previous = transition_hash(hashlib.sha256(raw).digest(), previous)
        chain.append(previous)
    if not chain or previous != resp.latest_transition_hash:
        raise AssertionError("the manifests do not chain up to the latest transition")
    key = serialization.load_der_public_key(resp.history_signing_public_key)
    SignedLatest(bytes(resp.latest_transition_hash), bytes(resp.latest_signature)).verify(
        key  # type: ignore[arg-type]
    )
    return chain


def manifest_v(tee: MockTee, keys: Keys, version: str) -> bytes:
    """A manifest that differs from every other version only in the web workload's SANs."""
    from tests.integration.service_helpers import (
        DB_POLICY,
        WEB_ENTRY,
        WEB_POLICY,
        manifest_bytes,
        manifest_dict,
    )

    entry = dict(WEB_ENTRY, SANs=[f"web-{version}", "web.default.svc"])
    return manifest_bytes(
        manifest_dict(
            tee,
            workloads={WEB_POLICY: entry, DB_POLICY: {}},
            owners=[keys.owner],
            seedshare=[keys.seedshare],
        )
    )


async def attested_state(address: str, tee: MockTee) -> tuple[bytes, bytes, bytes]:
    """(latest transition, root CA PEM, mesh CA PEM) as the coordinator at ``address`` attests
    them."""
    chan = await attested(address, tee.coordinator_policy())
    await chan.close()
    att = chan.attestation
    return att.latest_transition_hash, att.root_ca_pem, att.mesh_ca_pem
