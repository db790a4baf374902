"""Several coordinator processes on one etcd (DESIGN §8): a manifest set through one reaches the
others by peer recovery (how fast is measured by tests/bench), with byte-identical CAs; workloads join through any of
them; updates through another coordinator move everyone to the new mesh CA; concurrent updates
keep the history one linear chain."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from cryptography import x509

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.core.history import ZERO_HASH
from coordinator.core.sealing import PURPOSE_WORKLOAD_SECRET, open_sealed
from tests.integration.cluster_helpers import (
    LIVENESS_S,
    Cluster,
    CoordinatorProcess,
    attested,
    check_history,
    gauges,
    manifest_v,
    readyz,
    wait_status,
)
from tests.integration.service_helpers import (  # noqa: F401  (fixtures)
    COORDINATOR_POLICY,
    DB_POLICY,
    ROGUE_POLICY,
    WEB_POLICY,
    Keys,
    MockTee,
    expect_status,
    join,
    join_request,
    keys_fixture,
    mock_tee_fixture,
    pem_der,
    set_first_manifest,
    update_request,
)

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]

POLICIES = [COORDINATOR_POLICY, WEB_POLICY, DB_POLICY]


async def attest_all(nodes: list[CoordinatorProcess], tee: MockTee) -> list[pb.AttestResponse]:
    """Attest every coordinator on its user and its mesh port."""
    out = []
    for node in nodes:
        for address in (node.user, node.mesh):
            chan = await attested(address, tee.coordinator_policy())
            out.append(chan.attestation)
            await chan.close()
    return out


async def test_manifest_set_on_one_reaches_all_and_workloads_join_anywhere(
    cluster: Cluster, mock_tee: MockTee, keys: Keys
) -> None:
    nodes = cluster.start(3)
    assert [await readyz(n) for n in nodes] == [503, 503, 503]  # uninitialised
    for att in await attest_all(nodes, mock_tee):
        assert att.latest_transition_hash == b"" and att.mesh_ca_pem == b""

    chan = await attested(nodes[0].user, mock_tee.coordinator_policy())
    resp = await set_first_manifest(chan, manifest_v(mock_tee, keys, "1"), POLICIES)
    acked = time.perf_counter()
    await chan.close()

    while [await readyz(n) for n in nodes] != [200, 200, 200]:
        assert time.perf_counter() - acked < LIVENESS_S, f"peers not ready within {LIVENESS_S}s"
        await asyncio.sleep(0.01)
    print(f"peers ready {(time.perf_counter() - acked) * 1000:.0f} ms after the first manifest")

    # Byte-identical root and mesh CA everywhere (the mesh key came over peer recovery).
    for att in await attest_all(nodes, mock_tee):
        assert att.latest_transition_hash == resp.transition_hash
        assert att.root_ca_pem == resp.root_ca_pem
        assert att.mesh_ca_pem == resp.mesh_ca_pem
    for node in nodes[1:]:
        g = await gauges(node)
        assert g['concord_recoveries_total{source="peer"}'] == 1.0
    assert (await gauges(nodes[0]))['concord_recoveries_total{source="peer"}'] == 0.0

    # A workload joins through each coordinator: same chain of trust, same workload secret.
    provider = mock_tee.provider(WEB_POLICY)
    mesh_ca = x509.load_pem_x509_certificate(resp.mesh_ca_pem)
    secrets = set()
    for node in nodes:
        mesh = await attested(node.mesh, mock_tee.coordinator_policy())
        joined = await join(mesh, provider)
        leaf, intermediate = joined.chain
        leaf.verify_directly_issued_by(mesh_ca)
        assert pem_der(joined.response.mesh_ca_pem) == pem_der(resp.mesh_ca_pem)
        assert pem_der(joined.response.root_ca_pem) == pem_der(resp.root_ca_pem)
        intermediate.verify_directly_issued_by(x509.load_pem_x509_certificate(resp.root_ca_pem))
        secrets.add(
            open_sealed(
                joined.hpke_private, PURPOSE_WORKLOAD_SECRET, joined.response.sealed_workload_secret
            )
        )
        # A recovered coordinator enforces the manifest like the one that set it.
        rogue = await join_request(mesh, mock_tee.provider(ROGUE_POLICY))
        await expect_status(
            mesh.mesh.NewMeshCert(rogue.request, timeout=10), grpc.StatusCode.PERMISSION_DENIED
        )
        await mesh.close()
    assert len(secrets) == 1


async def test_update_through_another_coordinator_moves_all_to_the_new_mesh_ca(
    cluster: Cluster, mock_tee: MockTee, keys: Keys
) -> None:
    nodes = cluster.start(3)
    policy = mock_tee.coordinator_policy()
    chans = [await attested(n.user, policy) for n in nodes]
    first = await set_first_manifest(chans[0], manifest_v(mock_tee, keys, "0"), POLICIES)
    await wait_status(nodes, ready=True, generation=1, timeout=LIVENESS_S)
    previous, mesh_cas = first.transition_hash, {first.mesh_ca_pem}
    took: list[float] = []
    made = [1, 0, 0]
    for i in range(1, 7):
        via = 1 + i % 2  # alternate between the second and the third coordinator
        manifest = manifest_v(mock_tee, keys, str(i))
        resp = await chans[via].user.SetManifest(
            update_request(manifest, [WEB_POLICY], previous, keys.owner), timeout=10
        )
        made[via] += 1
        times = await wait_status(nodes, ready=True, generation=i + 1, timeout=LIVENESS_S)
        took.append(max(times.values()))
        for att in await attest_all(nodes, mock_tee):
            assert att.latest_transition_hash == resp.transition_hash
            assert att.root_ca_pem == first.root_ca_pem
            assert att.mesh_ca_pem == resp.mesh_ca_pem
        assert resp.mesh_ca_pem not in mesh_cas  # a new mesh key per manifest
        mesh_cas.add(resp.mesh_ca_pem)
        previous = resp.transition_hash
    # Every coordinator went stale and recovered from a peer once per update it did not make.
    for node, own in zip(nodes, made, strict=True):
        g = await gauges(node)
        assert g.get('concord_recoveries_total{source="peer"}', 0.0) == 7 - own, node.node_id
    print(f"convergence after update: max {max(took) * 1000:.0f} ms over {len(took)} updates")
    for chan in chans:
        await chan.close()


async def test_concurrent_updates_keep_one_linear_history(
    cluster: Cluster, mock_tee: MockTee, keys: Keys
) -> None:
    """20 rounds of three coordinators racing to append: exactly one wins each round, the
    history is the chain of the winners and nothing else, and everyone converges."""
    nodes = cluster.start(3)
    policy = mock_tee.coordinator_policy()
    chans = [await attested(n.user, policy) for n in nodes]
    first_manifest = manifest_v(mock_tee, keys, "first")
    first = await set_first_manifest(chans[0], first_manifest, POLICIES)
    await wait_status(nodes, ready=True, generation=1, timeout=LIVENESS_S)
    expected, previous = [first_manifest], first.transition_hash
    converge: list[float] = []
    for round_ in range(20):
        manifests = [manifest_v(mock_tee, keys, f"r{round_}-c{i}") for i in range(3)]
        requests = [update_request(m, [WEB_POLICY], previous, keys.owner) for m in manifests]
        results: list[Any] = await asyncio.gather(
            *(c.user.SetManifest(r, timeout=20) for c, r in zip(chans, requests, strict=True)),
            return_exceptions=True,
        )
        winners = [i for i, r in enumerate(results) if isinstance(r, pb.SetManifestResponse)]
        assert len(winners) == 1, f"round {round_}: {results!r}"
        for i, r in enumerate(results):
            if i in winners:
                continue
            assert isinstance(r, grpc.aio.AioRpcError), f"round {round_}: {r!r}"
            assert r.code() == grpc.StatusCode.FAILED_PRECONDITION, r.details()
            assert any(s in (r.details() or "") for s in ("concurrent update", "recovery mode"))
        win = results[winners[0]]
        expected.append(manifests[winners[0]])
        previous = win.transition_hash
        times = await wait_status(nodes, ready=True, generation=round_ + 2, timeout=LIVENESS_S)
        converge.append(max(times.values()))

    histories = [await c.user.GetManifests(pb.GetManifestsRequest(), timeout=10) for c in chans]
    for h in histories:
        chain = check_history(h)
        assert list(h.manifests) == expected
        assert chain[-1] == previous and chain[0] != ZERO_HASH
        assert h == histories[0]
    print(f"convergence after racing rounds: max {max(converge) * 1000:.0f} ms")
    for chan in chans:
        await chan.close()
