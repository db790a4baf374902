"""DESIGN §15 on the wire: Attest carries a token (join = Attest + NewMeshCert), MeshAPI.Watch
pushes the state, the mesh CA bundle and a fresh token when subscribed and on every change with
heartbeats in between, leaves live ``--leaf-lifetime``, and Watch streams are bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography import x509

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client.errors import reason_of
from coordinator.service.feed import LifecycleConfig
from tests.integration.service_helpers import (  # noqa: F401  (fixtures)
    ALL_POLICIES,
    WEB_POLICY,
    Coordinators,
    Keys,
    MockTee,
    connect,
    coordinators_fixture,
    join_request,
    keys_fixture,
    manifest_bytes,
    manifest_dict,
    mock_tee_fixture,
    set_first_manifest,
    update_request,
)

pytestmark = pytest.mark.timeout(60)


async def _next(events: AsyncIterator[pb.WatchEvent], *, skip_heartbeats: bool = True) -> Any:
    while True:
        event = await asyncio.wait_for(events.__anext__(), 20)
        if not (skip_heartbeats and event.heartbeat):
            return event


async def _deploy(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys, lifecycle: LifecycleConfig
) -> Any:
    server = await coordinators.start(lifecycle=lifecycle)
    user = await connect(server, tee=mock_tee)
    manifest = manifest_bytes(manifest_dict(mock_tee, owners=[keys.owner]))
    first = await set_first_manifest(user, manifest, ALL_POLICIES)
    return server, user, first


async def test_attest_token_joins_in_two_rpcs(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys
) -> None:
    server = await coordinators.start(lifecycle=LifecycleConfig(leaf_lifetime=timedelta(hours=2)))
    mesh = await connect(server, "mesh", tee=mock_tee)
    assert mesh.attestation.token == b""  # uninitialised: nothing to bind a token to
    await mesh.close()
    user = await connect(server, tee=mock_tee)
    manifest = manifest_bytes(manifest_dict(mock_tee, owners=[keys.owner]))
    await set_first_manifest(user, manifest, ALL_POLICIES)
    async with await connect(server, "mesh", tee=mock_tee) as mesh:
        token = bytes(mesh.attestation.token)
        assert token
        req = await join_request(mesh, mock_tee.provider(WEB_POLICY), token=token)
        resp = await mesh.mesh.NewMeshCert(req.request, timeout=20)
        leaf = x509.load_pem_x509_certificates(resp.certificate_chain_pem)[0]
        left = leaf.not_valid_after_utc - datetime.now(UTC)
        assert timedelta(hours=1) < left <= timedelta(hours=2)
        assert resp.leaf_lifetime_seconds == 7200
        assert resp.mesh_ca_bundle_pem.startswith(resp.mesh_ca_pem)
        # An old client's three RPCs still work.
        old = await join_request(mesh, mock_tee.provider(WEB_POLICY))
        await mesh.mesh.NewMeshCert(old.request, timeout=20)
    await user.close()


async def test_watch_pushes_updates_with_a_bundle_and_a_token(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys
) -> None:
    config = LifecycleConfig(heartbeat=0.2, mesh_ca_grace=timedelta(minutes=5))
    server, user, first = await _deploy(coordinators, mock_tee, keys, config)
    async with await connect(server, "mesh", tee=mock_tee) as mesh:
        call = mesh.mesh.Watch(pb.WatchRequest())
        events = call.__aiter__()
        event = await _next(events)
        assert event.ready and event.token and not event.heartbeat
        assert event.state_digest == mesh.attestation.state_digest
        assert event.mesh_ca_bundle_pem == event.mesh_ca_pem
        beat = await _next(events, skip_heartbeats=False)
        assert beat.heartbeat and beat.ready and beat.token
        assert beat.state_digest == event.state_digest

        updated = manifest_bytes(
            manifest_dict(mock_tee, owners=[keys.owner], workloads={WEB_POLICY: {}})
        )
        request = update_request(updated, ALL_POLICIES[:2], first.transition_hash, keys.owner)
        resp = await user.user.SetManifest(request, timeout=20)
        changed = await _next(events)
        assert changed.latest_transition_hash == resp.transition_hash
        assert changed.state_digest != event.state_digest
        bundle = x509.load_pem_x509_certificates(changed.mesh_ca_bundle_pem)
        assert [c.serial_number for c in bundle] == [
            x509.load_pem_x509_certificate(changed.mesh_ca_pem).serial_number,
            x509.load_pem_x509_certificate(event.mesh_ca_pem).serial_number,
        ]
        # The pushed token is good for NewMeshCert on the new transition.
        req = await join_request(mesh, mock_tee.provider(WEB_POLICY), token=changed.token)
        issued = await mesh.mesh.NewMeshCert(req.request, timeout=20)
        assert issued.mesh_ca_bundle_pem == changed.mesh_ca_bundle_pem
        call.cancel()
    await user.close()


async def test_strict_grace_and_bounded_watchers(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys
) -> None:
    config = LifecycleConfig(mesh_ca_grace=timedelta(0), max_watchers=1)
    server, user, first = await _deploy(coordinators, mock_tee, keys, config)
    async with await connect(server, "mesh", tee=mock_tee) as mesh:
        call = mesh.mesh.Watch(pb.WatchRequest())
        events = call.__aiter__()
        await _next(events)
        second = mesh.mesh.Watch(pb.WatchRequest())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await second.read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason_of(refused.value) == "too_many_watchers"

        updated = manifest_bytes(
            manifest_dict(mock_tee, owners=[keys.owner], workloads={WEB_POLICY: {}})
        )
        request = update_request(updated, ALL_POLICIES[:2], first.transition_hash, keys.owner)
        await user.user.SetManifest(request, timeout=20)
        changed = await _next(events)
        assert changed.mesh_ca_bundle_pem == changed.mesh_ca_pem  # grace 0: strict switch
        call.cancel()
        await asyncio.sleep(0.1)
        # The slot is free again once the first stream ended.
        for _ in range(50):
            if server.feed is not None and server.feed.gate.active == 0:
                break
            await asyncio.sleep(0.05)
        third = mesh.mesh.Watch(pb.WatchRequest())
        assert (await third.read()).ready
        third.cancel()
    await user.close()


async def test_the_bundle_drops_the_previous_ca_when_the_grace_ends(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys
) -> None:
    config = LifecycleConfig(heartbeat=5.0, mesh_ca_grace=timedelta(seconds=1))
    server, user, first = await _deploy(coordinators, mock_tee, keys, config)
    async with await connect(server, "mesh", tee=mock_tee) as mesh:
        call = mesh.mesh.Watch(pb.WatchRequest())
        events = call.__aiter__()
        await _next(events)
        updated = manifest_bytes(
            manifest_dict(mock_tee, owners=[keys.owner], workloads={WEB_POLICY: {}})
        )
        request = update_request(updated, ALL_POLICIES[:2], first.transition_hash, keys.owner)
        await user.user.SetManifest(request, timeout=20)
        changed = await _next(events)
        assert len(x509.load_pem_x509_certificates(changed.mesh_ca_bundle_pem)) == 2
        # Without any other change, the feed publishes again when the grace is over.
        ended = await _next(events)
        assert ended.state_digest == changed.state_digest
        assert ended.mesh_ca_bundle_pem == ended.mesh_ca_pem == changed.mesh_ca_pem
        call.cancel()
    await user.close()


async def test_shutdown_ends_watch_streams_cleanly(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys
) -> None:
    """A stopping coordinator ends its Watch streams itself (status OK) instead of holding its
    shutdown grace and then cancelling them: agents move on at once."""
    server, user, _ = await _deploy(coordinators, mock_tee, keys, LifecycleConfig(heartbeat=60))
    await user.close()
    async with await connect(server, "mesh", tee=mock_tee) as mesh:
        call = mesh.mesh.Watch(pb.WatchRequest())
        events = call.__aiter__()
        await _next(events)
        coordinators.running.remove(server)
        stopping = asyncio.create_task(server.stop(grace=30))
        with pytest.raises(StopAsyncIteration):
            await _next(events)
        assert await call.code() == grpc.StatusCode.OK
        await asyncio.wait_for(stopping, 25)
