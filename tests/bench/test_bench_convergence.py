"""Convergence of a three-coordinator deployment (DESIGN §8): after an update through one
coordinator, how long until the other two are fresh again on the new mesh CA.

Real etcd, real coordinator processes with the software TEE. Each of 30 updates goes through the
next coordinator in turn; the clock starts when SetManifest is acknowledged and stops when both
other coordinators report ready at the new generation (their /metrics, polled every 10 ms); then
each of them is attested and must serve exactly the new mesh CA.

The figures are reported (stdout, benchmark extra_info) against the targets p50 <= 300 ms and
p99 <= 1 s, which hold on an idle machine; they are never asserted, as a busy machine would fail
them at random. What is asserted is that every update converges, to exactly the new mesh CA.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.providers import mock
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.core.authz import public_spki, set_manifest_message, sign_owner
from coordinator.core.history import transition_hash
from tests.integration.cluster_helpers import (
    COORDINATOR_POLICY,
    LIVENESS_S,
    Cluster,
    attested,
    coordinator_policy,
    init_mock_tee,
    percentile,
    wait_status,
)
from tools.etcd_server import EtcdServer, find_etcd

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(180)]

UPDATES = 30
P50_TARGET = 0.3  # reported, not asserted
P99_TARGET = 1.0  # reported, not asserted
WEB_POLICY = b"concord bench policy: web\n"


@pytest.fixture(scope="module")
def etcd_endpoint() -> Iterator[str]:
    if find_etcd() is None:
        pytest.skip("etcd binary not installed")
    with EtcdServer() as server:
        yield server.endpoint


def manifest(mock_dir: Path, owner: ec.EllipticCurvePrivateKey, version: int) -> bytes:
    refs = json.loads((mock_dir / mock.REFERENCE_FILE).read_text())
    doc = {
        "Policies": {
            hashlib.sha256(COORDINATOR_POLICY).hexdigest(): {"Role": "coordinator"},
            hashlib.sha256(WEB_POLICY).hexdigest(): {"SANs": [f"web-{version}"]},
        },
        "ReferenceValues": refs,
        "WorkloadOwnerKeyDigests": [hashlib.sha256(public_spki(owner)).hexdigest()],
        "SeedshareOwnerPubKeys": [],
    }
    return json.dumps(doc).encode()


async def measure(cluster: Cluster, mock_dir: Path, updates: int) -> list[float]:
    """Convergence time (seconds) of each of ``updates`` updates."""
    nodes = cluster.nodes
    policy = coordinator_policy(mock_dir)
    owner = ec.generate_private_key(ec.SECP256R1())
    chans: list[Any] = [await attested(n.user, policy) for n in nodes]
    try:
        first = await chans[0].user.SetManifest(
            pb.SetManifestRequest(
                manifest=manifest(mock_dir, owner, 0), policies=[COORDINATOR_POLICY, WEB_POLICY]
            ),
            timeout=20,
        )
        await wait_status(nodes, ready=True, generation=1, timeout=LIVENESS_S)
        previous, samples = first.transition_hash, []
        deployment = first.deployment_id
        for i in range(1, updates + 1):
            via = i % len(nodes)
            raw = manifest(mock_dir, owner, i)
            new_hash = transition_hash(hashlib.sha256(raw).digest(), previous)
            resp = await chans[via].user.SetManifest(
                pb.SetManifestRequest(
                    manifest=raw,
                    policies=[WEB_POLICY],
                    previous_transition_hash=previous,
                    owner_public_key=public_spki(owner),
                    signature=sign_owner(owner, set_manifest_message(deployment, new_hash)),
                ),
                timeout=20,
            )
            acked = time.perf_counter()
            others = [n for j, n in enumerate(nodes) if j != via]
            await wait_status(others, ready=True, generation=i + 1, timeout=LIVENESS_S)
            samples.append(time.perf_counter() - acked)
            for node in others:  # fresh on exactly the new mesh CA
                chan = await attested(node.mesh, policy)
                await chan.close()
                assert chan.attestation.latest_transition_hash == resp.transition_hash
                assert chan.attestation.mesh_ca_pem == resp.mesh_ca_pem
                assert chan.attestation.root_ca_pem == first.root_ca_pem
            previous = resp.transition_hash
        return samples
    finally:
        for chan in chans:
            await chan.close()


def test_bench_convergence_after_update(benchmark: Any, etcd_endpoint: str, tmp_path: Path) -> None:
    mock_dir = init_mock_tee(tmp_path / "mock-tee")
    samples: list[float] = []
    with Cluster(etcd_endpoint, "bench", mock_dir, tmp_path / "cluster") as cluster:
        cluster.start(3)

        def run() -> None:
            samples.extend(asyncio.run(measure(cluster, mock_dir, UPDATES)))

        benchmark.pedantic(run, rounds=1, iterations=1)
    assert len(samples) == UPDATES
    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    met = p50 <= P50_TARGET and p99 <= P99_TARGET
    benchmark.extra_info.update(
        {
            "updates": UPDATES,
            "convergence_p50_ms": p50 * 1000,
            "convergence_p99_ms": p99 * 1000,
            "target_p50_ms": P50_TARGET * 1000,
            "target_p99_ms": P99_TARGET * 1000,
            "targets_met": met,
        }
    )
    print(
        f"\nconvergence over {UPDATES} updates: p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms, max {max(samples) * 1000:.0f} ms "
        f"(targets p50 {P50_TARGET * 1000:.0f} ms, p99 {P99_TARGET * 1000:.0f} ms: "
        f"{'met' if met else 'NOT met'})"
    )
