"""Whom a coordinator recovers from, and when a user may recover it (DESIGN §7, §8).

A membership key is only a hint: a peer must attest as a coordinator of the manifest that the
store's ``latest`` points to and serve exactly that ``latest``; a requester must run the
manifest's coordinator policy. A user recovery mints a new mesh key, so it is refused while a
verifiably ready peer exists, unless forced; a crashed peer's lingering key does not count.

In-process coordinators here have their recovery loop switched off (the patch does not reach
the subprocess coordinators), so every recovery is the test's explicit call.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from coordinator.client.channel import CoordinatorPolicyMismatch
from coordinator.cluster.recovery import Member, PeerRecovery, PeerRecoveryFailed
from coordinator.core.state import NotInitialized
from coordinator.service.server import CoordinatorServer, ServerConfig
from coordinator.store.etcd import EtcdStore
from tests.integration.cluster_helpers import (
    LIVENESS_S,
    Cluster,
    attested,
    attested_state,
    running_cluster,
    wait_status,
)
from tests.integration.service_helpers import (  # noqa: F401  (fixtures)
    COORDINATOR_POLICY,
    DB_POLICY,
    PRECONDITION,
    ROGUE_POLICY,
    WEB_POLICY,
    Keys,
    MockTee,
    expect_status,
    keys_fixture,
    manifest_bytes,
    manifest_dict,
    mock_tee_fixture,
    open_seed_share,
    set_first_manifest,
    user_recover_request,
)
from tools.etcd_server import EtcdServer, free_port

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(90)]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


class InProcess:
    """In-process coordinators on the cluster's deployment; every one stopped at teardown."""

    def __init__(self, cluster: Cluster, tee: MockTee, workdir: Path) -> None:
        self.cluster = cluster
        self.tee = tee
        self.workdir = workdir
        self.running: list[CoordinatorServer] = []

    async def start(self, node_id: str, policy: bytes = COORDINATOR_POLICY) -> CoordinatorServer:
        policy_file = self.workdir / f"policy-{node_id}"
        policy_file.write_bytes(policy)
        server = CoordinatorServer(
            ServerConfig(
                store=f"etcd://{self.cluster.etcd_endpoint}",
                deployment=self.cluster.deployment,
                tee=f"mock:{self.tee.directory}",
                mock_policy=policy_file,
                trust_anchors=f"mock:{self.tee.directory}",
                user_addr="127.0.0.1:0",
                mesh_addr="127.0.0.1:0",
                http_addr="127.0.0.1:0",
                node_id=node_id,
                issuer_workers=1,
            )
        )
        await server.start()
        self.running.append(server)
        return server

    async def stop(self, server: CoordinatorServer) -> None:
        self.running.remove(server)
        stopping = asyncio.ensure_future(server.stop(grace=0))
        done, _ = await asyncio.wait([stopping], timeout=20)
        if not done:  # say where it hangs rather than wait for the test timeout
            for task in asyncio.all_tasks():
                try:
                    task.print_stack(limit=8, file=sys.stdout)
                except Exception:  # frames of compiled code have no line numbers
                    print(task, file=sys.stdout)
            raise AssertionError(f"coordinator {server.config.node_id} did not stop in 20 s")
        stopping.result()


@pytest.fixture
async def inprocess(
    cluster: Cluster, mock_tee: MockTee, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[InProcess]:
    """In-process coordinators whose recovery loop never recovers anything."""

    async def no_peer_recovery(self: PeerRecovery) -> bool:
        return False

    monkeypatch.setattr(PeerRecovery, "recover_once", no_peer_recovery)
    factory = InProcess(cluster, mock_tee, tmp_path)
    try:
        yield factory
    finally:
        for server in list(factory.running):
            await factory.stop(server)


def recovery_of(server: CoordinatorServer) -> PeerRecovery:
    recovery = server._recovery  # the server's PeerRecovery (etcd store: always present)
    assert isinstance(recovery, PeerRecovery)
    return recovery


def manifest_for(
    tee: MockTee, keys: Keys, coordinator: bytes = COORDINATOR_POLICY, san: str = "web"
) -> bytes:
    return manifest_bytes(
        manifest_dict(
            tee,
            workloads={WEB_POLICY: {"SANs": [san]}, DB_POLICY: {}},
            owners=[keys.owner],
            seedshare=[keys.seedshare],
            coordinator=coordinator,
        )
    )


async def test_peer_recovery_only_from_an_attested_coordinator_at_latest(
    cluster: Cluster,
    mock_tee: MockTee,
    keys: Keys,
    inprocess: InProcess,
    etcd: EtcdServer,
    deployment: str,
    workdir: Path,
) -> None:
    nodes = cluster.start(1)
    x = await inprocess.start("x")
    with pytest.raises(NotInitialized):  # nothing to recover before the first manifest
        await recovery_of(x).recover_from(nodes[0].mesh)
    chan = await attested(nodes[0].user, mock_tee.coordinator_policy())
    first = await set_first_manifest(
        chan, manifest_for(mock_tee, keys), [COORDINATOR_POLICY, WEB_POLICY, DB_POLICY]
    )
    await chan.close()

    # Fresh coordinators of other deployments: one runs another coordinator policy; one runs
    # the right policy but serves another history; one serves a history with the very same
    # transition hash (identical first manifest) under another seed.
    with contextlib.ExitStack() as stack:
        others = []
        for name, policy, sans in (
            ("r1", ROGUE_POLICY, "web"),
            ("r2", COORDINATOR_POLICY, "web-elsewhere"),
            ("r3", COORDINATOR_POLICY, "web"),
        ):
            c = stack.enter_context(
                running_cluster(
                    etcd.endpoint,
                    f"{deployment}-{name}",
                    mock_tee.directory,
                    workdir / name,
                    policy=policy,
                )
            )
            others.append((c.add(), policy, sans))
        for node, _, _ in others:
            node.spawn()
        for node, policy, sans in others:
            node.wait_serving()
            c = await attested(node.user, mock_tee.coordinator_policy(policy))
            await set_first_manifest(
                c, manifest_for(mock_tee, keys, policy, sans), [policy, WEB_POLICY, DB_POLICY]
            )
            await c.close()
        (rogue_policy, _, _), (other_history, _, _), (same_hash, _, _) = others
        assert (await attested_state(same_hash.mesh, mock_tee))[0] == first.transition_hash

        recovery = recovery_of(x)
        with pytest.raises(CoordinatorPolicyMismatch):
            await recovery.recover_from(rogue_policy.mesh)
        with pytest.raises(PeerRecoveryFailed, match="latest"):
            await recovery.recover_from(other_history.mesh)
        # Same transition hash, another deployment: refused on the attested deployment name
        # before anything is asked (DESIGN §12; the seed check would refuse it next).
        with pytest.raises(PeerRecoveryFailed, match="deployment"):
            await recovery.recover_from(same_hash.mesh)
        with pytest.raises(ConnectionRefusedError):
            await recovery.recover_from(f"127.0.0.1:{free_port()}")
        assert not x.is_ready() and x.guard is not None and x.guard.current() is None

    # A requester that is not a coordinator of the manifest gets nothing from a ready peer.
    web = await inprocess.start("web", policy=WEB_POLICY)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await recovery_of(web).recover_from(nodes[0].mesh)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "role coordinator" in (refused.value.details() or "")
    assert not web.is_ready()

    # The real peer: x now serves exactly its state.
    await recovery_of(x).recover_from(nodes[0].mesh)
    assert x.is_ready()
    assert await attested_state(x.addresses["mesh"], mock_tee) == (
        first.transition_hash,
        first.root_ca_pem,
        first.mesh_ca_pem,
    )


async def test_user_recovery_refused_while_a_ready_peer_exists_unless_forced(
    cluster: Cluster,
    mock_tee: MockTee,
    keys: Keys,
    store: EtcdStore,
    inprocess: InProcess,
) -> None:
    nodes = cluster.start(1)
    chan0 = await attested(nodes[0].user, mock_tee.coordinator_policy())
    first = await set_first_manifest(
        chan0, manifest_for(mock_tee, keys), [COORDINATOR_POLICY, WEB_POLICY, DB_POLICY]
    )
    await chan0.close()
    seed, salt = open_seed_share(first.seed_share_document, keys.seedshare)
    policy = mock_tee.coordinator_policy()

    x = await inprocess.start("x")
    assert not x.is_ready()
    chan = await attested(x.addresses["user"], policy)
    # A crashed coordinator's membership key (ready, at latest, nobody listening).
    ghost = Member("ghost", f"127.0.0.1:{free_port()}", True, first.transition_hash)
    await store.put_member("ghost", ghost.encode(), 5)

    # nodes[0] is ready and attests at the store's latest: refused without force.
    await expect_status(
        chan.user.Recover(await user_recover_request(chan, seed, salt, keys.seedshare)),
        PRECONDITION,
        "ready peer",
    )
    assert not x.is_ready()

    # Forced: recovered, with a mesh key of its own (the split that force warns about).
    y = await inprocess.start("y")
    ychan = await attested(y.addresses["user"], policy)
    await ychan.user.Recover(
        await user_recover_request(ychan, seed, salt, keys.seedshare, force=True)
    )
    await ychan.close()
    assert y.is_ready()
    latest, root, mesh = await attested_state(nodes[0].mesh, mock_tee)
    assert await attested_state(y.addresses["mesh"], mock_tee) != (latest, root, mesh)
    y_latest, y_root, y_mesh = await attested_state(y.addresses["mesh"], mock_tee)
    assert (y_latest, y_root) == (latest, root) and y_mesh != mesh
    await inprocess.stop(y)

    # Once the ready peer crashed, its lingering membership key (like the ghost's) does not
    # count: every candidate is attested before it blocks a user recovery.
    nodes[0].kill()
    lingering = Member.decode("c0", (await store.list_members())["c0"])
    assert lingering is not None and lingering.ready
    await chan.user.Recover(await user_recover_request(chan, seed, salt, keys.seedshare))
    await chan.close()
    assert x.is_ready()

    # The crashed coordinator comes back and recovers from x, unattended.
    await asyncio.to_thread(nodes[0].start)
    await wait_status(nodes, ready=True, generation=1, timeout=LIVENESS_S)
    assert await attested_state(nodes[0].mesh, mock_tee) == await attested_state(
        x.addresses["mesh"], mock_tee
    )
