"""Faults in a multi-coordinator deployment (DESIGN §6, §8): coordinators killed with SIGKILL in
the middle of update loops, an etcd outage, and every coordinator lost at once (recovery mode
until a seed-share owner recovers one)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from typing import Any

import grpc
import pytest
from cryptography import x509

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.cluster.recovery import ORPHAN_GRACE
from coordinator.core.history import LATEST_KEY, transition_hash
from coordinator.store.etcd import EtcdStore
from tests.integration.cluster_helpers import (
    LIVENESS_S,
    Cluster,
    CoordinatorProcess,
    attested,
    attested_state,
    check_history,
    gauges,
    http_get,
    manifest_v,
    readyz,
    wait_status,
)
from tests.integration.service_helpers import (  # noqa: F401  (fixtures)
    COORDINATOR_POLICY,
    DB_POLICY,
    PRECONDITION,
    WEB_POLICY,
    Keys,
    MockTee,
    expect_status,
    join,
    keys_fixture,
    mock_tee_fixture,
    open_seed_share,
    set_first_manifest,
    update_request,
    user_recover_request,
)
from tools.etcd_server import EtcdServer

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(150)]

POLICIES = [COORDINATOR_POLICY, WEB_POLICY, DB_POLICY]
# Statuses after which an update's outcome is unknown (the coordinator died or the call was
# cut): it may or may not be in the history. Every other refusal must have changed nothing.
UNKNOWN_OUTCOME = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,
}


async def recoveries(node: CoordinatorProcess, source: str) -> int:
    """This process's recoveries of one kind (counters restart with the process)."""
    values = await gauges(node)
    return int(values.get(f'concord_recoveries_total{{source="{source}"}}', 0))


async def first_manifest(
    nodes: list[CoordinatorProcess], tee: MockTee, keys: Keys
) -> pb.SetManifestResponse:
    chan = await attested(nodes[0].user, tee.coordinator_policy())
    try:
        resp = await set_first_manifest(chan, manifest_v(tee, keys, "0"), POLICIES)
    finally:
        await chan.close()
    await wait_status(nodes, ready=True, generation=1, timeout=LIVENESS_S)
    return resp


async def test_sigkill_during_update_loops_loses_nothing_and_recovers_unattended(
    cluster: Cluster, mock_tee: MockTee, keys: Keys, store: EtcdStore
) -> None:
    """An owner's SetManifest loop through random coordinators; 20 times a coordinator is
    killed (SIGKILL) and restarted: every other time at a random moment, otherwise a few ms
    into a SetManifest it is serving. The history stays one signed chain holding every
    acknowledged update and no refused one, and every restarted coordinator recovers with no
    human action: from a peer, or, when the victim took the only copy of a new mesh key with
    it, after a surviving seed holder re-keyed the orphaned transition.
    """
    nodes = cluster.start(3)
    first = await first_manifest(nodes, mock_tee, keys)
    policy = mock_tee.coordinator_policy()
    acked: list[bytes] = []
    unknown: set[bytes] = set()
    refused: set[bytes] = set()
    stop = asyncio.Event()
    call_started = asyncio.Event()
    target = [nodes[0]]  # the coordinator the writer's current call goes to
    channels: dict[tuple[str, int], Any] = {}

    async def channel(node: CoordinatorProcess) -> Any:
        key = (node.node_id, node.starts)
        if key not in channels:
            channels[key] = await attested(node.user, policy, timeout=5)
        return channels[key]

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            live = [node for node in nodes if node.addresses is not None]
            node = random.choice(live)
            try:
                chan = await channel(node)
            except Exception:  # killed or restarting: try another one
                await asyncio.sleep(0.02)
                continue
            previous = (await store.get(LATEST_KEY))[:32]
            manifest = manifest_v(mock_tee, keys, f"k{n}")
            n += 1
            expected = transition_hash(hashlib.sha256(manifest).digest(), previous)
            target[0] = node
            call_started.set()
            try:
                resp = await chan.user.SetManifest(
                    update_request(manifest, [WEB_POLICY], previous, keys.owner), timeout=10
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() in UNKNOWN_OUTCOME:
                    unknown.add(expected)
                else:
                    assert exc.code() == PRECONDITION, exc.details()
                    refused.add(expected)
                await asyncio.sleep(0.05)
                continue
            assert resp.transition_hash == expected
            acked.append(expected)
            await asyncio.sleep(random.uniform(0.1, 0.3))  # an owner's loop, not a flood

    async def restarted_recovers(victim: CoordinatorProcess) -> float:
        """Seconds until the restarted ``victim`` is ready again, with no human action. When
        the victim had just moved ``latest`` and died before any peer copied the new mesh key,
        a surviving seed holder re-keys the orphaned transition after the membership grace
        (recovery.ORPHAN_GRACE) and the rest recover from it."""
        started = time.monotonic()
        while time.monotonic() - started < ORPHAN_GRACE + LIVENESS_S:
            if await readyz(victim) == 200:
                return time.monotonic() - started
            await asyncio.sleep(0.02)
        raise AssertionError(f"{victim.node_id} did not recover without a seed-share owner")

    writing = asyncio.create_task(writer())
    recover_times: list[float] = []
    try:
        for k in range(20):
            if k % 2:
                # Cut a SetManifest: before, during or after its compare-and-swap.
                call_started.clear()
                await asyncio.wait_for(call_started.wait(), 10)
                await asyncio.sleep(random.uniform(0, 0.03))
                victim = target[0]
            else:
                await asyncio.sleep(random.uniform(0.05, 0.5))
                victim = random.choice(nodes)
            victim.kill()
            await asyncio.to_thread(victim.start)
            recover_times.append(await restarted_recovers(victim))
            await wait_status(nodes, ready=True, timeout=ORPHAN_GRACE + LIVENESS_S)
            assert not writing.done(), writing.exception()
    finally:
        stop.set()
        await writing
        for chan in channels.values():
            await chan.close()

    latest = (await store.get(LATEST_KEY))[:32]
    histories = []
    for node in nodes:
        chan = await attested(node.user, policy)
        for _ in range(500):  # converge on the store's latest
            with contextlib.suppress(grpc.aio.AioRpcError):
                resp = await chan.user.GetManifests(pb.GetManifestsRequest(), timeout=10)
                if resp.latest_transition_hash == latest:
                    break
            await asyncio.sleep(0.02)
        await chan.close()
        assert resp.latest_transition_hash == latest, node.node_id
        histories.append(resp)
    chain = check_history(histories[0])
    assert all(h == histories[0] for h in histories)
    assert chain[0] == first.transition_hash
    assert len(acked) >= 15, "the update loop made too little progress to mean anything"
    assert set(acked) <= set(chain), "an acknowledged update is missing"
    assert [t for t in chain if t in set(acked)] == acked, "acknowledged updates out of order"
    assert set(chain[1:]) <= set(acked) | unknown, "an update nobody made is in the history"
    assert not set(chain) & refused, "a refused update is in the history"
    states = {await attested_state(node.mesh, mock_tee) for node in nodes}
    assert len(states) == 1 and next(iter(states))[0] == latest
    rekeys = sum([await recoveries(node, "rekey") for node in nodes])
    print(
        f"{len(acked)} acknowledged, {len(unknown)} unknown, {len(refused)} refused updates; "
        f"history {len(chain)}; all {len(recover_times)} restarts recovered unattended "
        f"(max {max(recover_times):.2f}s); {rekeys} orphaned transitions re-keyed"
    )


async def test_etcd_outage_unavailable_then_watchers_resume(
    cluster: Cluster, mock_tee: MockTee, keys: Keys, etcd: EtcdServer
) -> None:
    nodes = cluster.start(3)
    first = await first_manifest(nodes, mock_tee, keys)
    policy = mock_tee.coordinator_policy()
    users = [await attested(n.user, policy) for n in nodes]
    meshes = [await attested(n.mesh, policy) for n in nodes]
    provider = mock_tee.provider(WEB_POLICY)
    mesh_ca = x509.load_pem_x509_certificate(first.mesh_ca_pem)

    await asyncio.to_thread(etcd.stop)
    stopped = time.monotonic()
    probes = 0
    try:
        # At least 10 s of outage and at least 3 probes, however slow each probe is.
        while time.monotonic() - stopped < 10 or probes < 3:
            i = probes % 3
            # The user API cannot reach the store: UNAVAILABLE, never INTERNAL.
            request = update_request(
                manifest_v(mock_tee, keys, f"outage-{probes}"),
                [WEB_POLICY],
                first.transition_hash,
                keys.owner,
            )
            await expect_status(
                users[i].user.SetManifest(request, timeout=20), grpc.StatusCode.UNAVAILABLE
            )
            try:
                got = await users[i].user.GetManifests(pb.GetManifestsRequest(), timeout=20)
                assert got.latest_transition_hash == first.transition_hash
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
            # The mesh API keeps issuing on the fresh state.
            joined = await join(meshes[i], provider)
            joined.chain[0].verify_directly_issued_by(mesh_ca)
            status, _ = await http_get(nodes[i].http, "/healthz")
            assert status == 503
            probes += 1
            await asyncio.sleep(0.5)
    finally:
        await asyncio.to_thread(etcd.start)
    assert probes >= 3

    # After the outage: an update through one coordinator reaches the others.
    manifest = manifest_v(mock_tee, keys, "after")
    request = update_request(manifest, [WEB_POLICY], first.transition_hash, keys.owner)
    deadline = time.monotonic() + LIVENESS_S
    while True:
        try:
            resp = await users[2].user.SetManifest(request, timeout=10)
            break
        except grpc.aio.AioRpcError as exc:  # the store client reconnects with a back-off
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
            assert time.monotonic() < deadline, "etcd back, but updates still unavailable"
            await asyncio.sleep(0.1)
    acked = time.monotonic()
    # The history watches restart after etcd's return (in about a second on an idle machine).
    took = await wait_status(nodes, ready=True, generation=2, timeout=LIVENESS_S)
    print(f"after the outage: update {acked - stopped:.1f}s after the stop, peers fresh in {took}")
    for node in nodes:
        latest, root, mesh = await attested_state(node.mesh, mock_tee)
        assert (latest, root, mesh) == (resp.transition_hash, first.root_ca_pem, resp.mesh_ca_pem)
        status, _ = await http_get(node.http, "/healthz")
        assert status == 200
    for chan in users + meshes:
        await chan.close()


async def test_all_coordinators_lost_recovery_mode_until_a_seed_share_owner_recovers_one(
    cluster: Cluster, mock_tee: MockTee, keys: Keys
) -> None:
    nodes = cluster.start(3)
    first = await first_manifest(nodes, mock_tee, keys)
    seed, salt = open_seed_share(first.seed_share_document, keys.seedshare)
    for node in nodes:
        node.kill()
    for node in nodes:
        node.spawn()
    for node in nodes:
        await asyncio.to_thread(node.wait_serving)

    # Recovery mode everywhere, and it stays that way: no peer can help.
    policy = mock_tee.coordinator_policy()
    chans = [await attested(n.user, policy) for n in nodes]
    for _ in range(10):
        assert [await readyz(n) for n in nodes] == [503, 503, 503]
        await asyncio.sleep(0.1)
    for chan in chans:
        await expect_status(
            chan.user.GetManifests(pb.GetManifestsRequest(), timeout=10),
            PRECONDITION,
            "recovery mode",
        )
    # A wrong seed is refused and changes nothing.
    await expect_status(
        chans[0].user.Recover(
            await user_recover_request(chans[0], bytes(64), salt, keys.seedshare)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert await readyz(nodes[0]) == 503

    # The seed-share owner recovers one coordinator; the others recover from it.
    await chans[1].user.Recover(await user_recover_request(chans[1], seed, salt, keys.seedshare))
    recovered = time.monotonic()
    assert await readyz(nodes[1]) == 200
    took = await wait_status(nodes, ready=True, generation=1, timeout=LIVENESS_S)
    print(f"peers recovered {time.monotonic() - recovered:.2f}s after the user recovery: {took}")
    states = {await attested_state(node.mesh, mock_tee) for node in nodes}
    assert len(states) == 1
    latest, root, mesh = next(iter(states))
    assert (latest, root) == (first.transition_hash, first.root_ca_pem)
    assert mesh != first.mesh_ca_pem  # a user recovery mints a new mesh key

    # The recovered deployment takes updates again, and everyone follows.
    resp = await chans[2].user.SetManifest(
        update_request(manifest_v(mock_tee, keys, "1"), [WEB_POLICY], latest, keys.owner),
        timeout=10,
    )
    await wait_status(nodes, ready=True, generation=2, timeout=LIVENESS_S)
    for node in nodes:
        assert await attested_state(node.mesh, mock_tee) == (
            resp.transition_hash,
            root,
            resp.mesh_ca_pem,
        )
    for chan in chans:
        await chan.close()
