"""A real three-member etcd cluster (DESIGN §8 in production shape): the store fails over when
the member it talks to dies, refuses cleanly without a quorum and comes back with it, and
coordinators on the cluster keep converging after an update made while a member is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.store.base import ConcurrentUpdate, StoreUnavailable
from coordinator.store.etcd import EtcdStore
from tests.integration.cluster_helpers import (
    LIVENESS_S,
    attested,
    attested_state,
    manifest_v,
    running_cluster,
    wait_status,
)
from tests.integration.service_helpers import (  # noqa: F401  (fixtures)
    COORDINATOR_POLICY,
    DB_POLICY,
    WEB_POLICY,
    Keys,
    MockTee,
    join,
    keys_fixture,
    mock_tee_fixture,
    set_first_manifest,
    update_request,
)
from tools.etcd_server import EtcdCluster, find_etcd

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]

POLICIES = [COORDINATOR_POLICY, WEB_POLICY, DB_POLICY]


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """Three fresh members per test: tests kill members."""
    if find_etcd() is None:
        pytest.skip("etcd binary not installed")
    with EtcdCluster(3) as cluster:
        yield cluster
    assert not any(m.running for m in cluster.members)


async def _eventually_set(store: EtcdStore, key: str, value: bytes, timeout: float) -> float:
    """Write until it succeeds; returns the seconds that took."""
    started = time.monotonic()
    while True:
        try:
            await store.set(key, value)
            return time.monotonic() - started
        except StoreUnavailable:
            if time.monotonic() - started > timeout:
                raise
            await asyncio.sleep(0.1)


async def test_store_fails_over_when_its_member_dies(
    etcd_cluster: EtcdCluster, deployment: str
) -> None:
    store = await EtcdStore.connect(etcd_cluster.endpoints, deployment, timeout=2.0)
    try:
        await store.set("test/key", b"v1")
        it = store.watch("test/key")
        pending = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.2)  # let the watch stream open on the current member
        used = store.current_endpoint
        etcd_cluster.member_at(used).kill()

        # Idempotent operations move on to a live member by themselves.
        await store.set("test/key", b"v2")
        assert store.current_endpoint != used
        assert await store.get("test/key") == b"v2"
        # A compare-and-swap (one attempt, never retried blindly) works on the new member.
        await store.compare_and_swap("test/key", b"v2", b"v3")
        with pytest.raises(ConcurrentUpdate):
            await store.compare_and_swap("test/key", b"v2", b"v4")

        # The watch re-opened elsewhere and still sees every write, in order.
        seen = [await asyncio.wait_for(pending, 10)]
        while seen[-1] != b"v3":
            seen.append(await asyncio.wait_for(anext(it), 10))
        assert seen == [b"v2", b"v3"]
        await it.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_no_quorum_is_unavailable_and_quorum_brings_it_back(
    etcd_cluster: EtcdCluster, deployment: str
) -> None:
    store = await EtcdStore.connect(etcd_cluster.endpoints, deployment, timeout=1.0)
    try:
        await store.set("test/key", b"before")
        down = etcd_cluster.members[:2]
        for member in down:
            member.kill()
        with pytest.raises(StoreUnavailable, match="etcd unavailable"):
            await store.set("test/key", b"during")
        for member in down:
            member.start()
        await _eventually_set(store, "test/key", b"after", timeout=20)
        assert await store.get("test/key") == b"after"
    finally:
        await store.close()


async def test_coordinators_converge_across_a_dead_member(
    etcd_cluster: EtcdCluster, deployment: str, mock_tee: MockTee, keys: Keys, tmp_path: Path
) -> None:
    """Two coordinators on all three endpoints: the member they both started on dies, an update
    goes through one, the other follows it, and workloads join at both with the new mesh CA."""
    endpoints = ",".join(etcd_cluster.endpoints)
    with running_cluster(endpoints, deployment, mock_tee.directory, tmp_path / "c") as cluster:
        nodes = cluster.start(2)
        chan = await attested(nodes[0].user, mock_tee.coordinator_policy())
        try:
            first = await set_first_manifest(chan, manifest_v(mock_tee, keys, "1"), POLICIES)
            await wait_status(nodes, ready=True, generation=1, timeout=LIVENESS_S)

            etcd_cluster.members[0].kill()  # the first endpoint: where both started

            update = update_request(
                manifest_v(mock_tee, keys, "2"), [WEB_POLICY], first.transition_hash, keys.owner
            )
            resp = await chan.user.SetManifest(update, timeout=20)
        finally:
            await chan.close()
        await wait_status(nodes, ready=True, generation=2, timeout=LIVENESS_S)
        for node in nodes:
            latest, root, mesh = await attested_state(node.mesh, mock_tee)
            assert (latest, root, mesh) == (
                resp.transition_hash,
                first.root_ca_pem,
                resp.mesh_ca_pem,
            )
            mesh_chan = await attested(node.mesh, mock_tee.coordinator_policy())
            try:
                joined = await join(mesh_chan, mock_tee.provider(WEB_POLICY))
            finally:
                await mesh_chan.close()
            assert joined.response.mesh_ca_pem == resp.mesh_ca_pem
