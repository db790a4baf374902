"""An orphaned transition: ``latest`` moved by a coordinator that died before any peer copied
its new mesh key (DESIGN §8 invariants; coordinator/cluster/recovery.py). Simulated deterministically by
writing a correctly signed transition straight into the store, so no coordinator holds its
State. A surviving seed holder re-keys it, but only once no other member is ready."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from coordinator.cluster.recovery import ORPHAN_GRACE, PeerRecovery
from coordinator.core.history import History, SignedLatest, Transition
from coordinator.service.server import CoordinatorServer, ServerConfig
from coordinator.store.etcd import EtcdStore
from tests.integration.cluster_helpers import LIVENESS_S, attested, manifest_v
from tests.integration.service_helpers import (  # noqa: F401  (fixtures)
    COORDINATOR_POLICY,
    DB_POLICY,
    WEB_POLICY,
    Keys,
    MockTee,
    keys_fixture,
    mock_tee_fixture,
    set_first_manifest,
)
from tools.etcd_server import EtcdServer

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(90)]


@pytest.fixture
async def pair(
    etcd: EtcdServer, deployment: str, mock_tee: MockTee, tmp_path: Path
) -> AsyncIterator[tuple[CoordinatorServer, CoordinatorServer]]:
    policy = tmp_path / "coordinator-policy"
    policy.write_bytes(COORDINATOR_POLICY)
    servers = [
        CoordinatorServer(
            ServerConfig(
                store=f"etcd://{etcd.endpoint}",
                deployment=deployment,
                tee=f"mock:{mock_tee.directory}",
                mock_policy=policy,
                trust_anchors=f"mock:{mock_tee.directory}",
                user_addr="127.0.0.1:0",
                mesh_addr="127.0.0.1:0",
                http_addr="127.0.0.1:0",
                node_id=f"r{i}",
                issuer_workers=1,
            )
        )
        for i in range(2)
    ]
    try:
        for server in servers:
            await server.start()
        yield servers[0], servers[1]
    finally:
        for server in servers:
            await server.stop(grace=0)


def recovery(server: CoordinatorServer) -> PeerRecovery:
    assert isinstance(server._recovery, PeerRecovery)
    return server._recovery


async def until(check: Callable[[], bool], timeout: float) -> float:
    """Poll ``check``; ``timeout`` is a liveness deadline. Returns the seconds it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_orphaned_transition_is_rekeyed_once_no_member_is_ready(
    pair: tuple[CoordinatorServer, CoordinatorServer],
    mock_tee: MockTee,
    keys: Keys,
    etcd: EtcdServer,
    deployment: str,
) -> None:
    a, b = pair
    chan = await attested(a.addresses["user"], mock_tee.coordinator_policy())
    first = await set_first_manifest(
        chan, manifest_v(mock_tee, keys, "0"), [COORDINATOR_POLICY, WEB_POLICY, DB_POLICY]
    )
    await chan.close()
    await until(lambda: a.is_ready() and b.is_ready(), 10)
    state = a.guard.current()  # type: ignore[union-attr]
    assert state is not None

    # A maker that signed and published the next transition, then died with its mesh key.
    store = await EtcdStore.connect([etcd.endpoint], deployment)
    try:
        history = History(store)
        digest = await history.put_manifest(manifest_v(mock_tee, keys, "1"))
        orphan = Transition.create(digest, first.transition_hash)
        await history.put_transition(orphan)
        await history.set_latest(
            SignedLatest.sign(orphan.hash, state.seed_engine.history_signing_key), state.latest
        )
        # Another member still claims to be ready (say, the maker not yet timed out): nobody
        # may re-key, whatever the wait.
        await store.put_member(
            "maker", b'{"mesh_addr": "127.0.0.1:9", "ready": true, "transition": ""}', 30
        )
        await until(lambda: not a.is_ready() and not b.is_ready(), LIVENESS_S)
        await asyncio.sleep(ORPHAN_GRACE + 1.5)
        assert not a.is_ready() and not b.is_ready()
        assert recovery(a).rekeys == recovery(b).rekeys == 0

        # The maker's membership is gone: one seed holder re-keys, the other recovers from it.
        await store.stop_member("maker")
        took = await until(lambda: a.is_ready() and b.is_ready(), ORPHAN_GRACE + LIVENESS_S)
    finally:
        await store.close()
    assert recovery(a).rekeys + recovery(b).rekeys == 1
    sa, sb = a.guard.current(), b.guard.current()  # type: ignore[union-attr]
    assert sa is not None and sb is not None
    assert sa.transition.hash == sb.transition.hash == orphan.hash
    assert sa.ca.mesh_ca_pem == sb.ca.mesh_ca_pem != state.ca.mesh_ca_pem
    assert sa.ca.root_pem == sb.ca.root_pem == state.ca.root_pem
    print(f"orphaned transition re-keyed and shared in {took:.2f} s")
