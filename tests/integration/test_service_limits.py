"""The request limits of DESIGN §13 over real gRPC/TLS: per-method message sizes (refused
before decoding), concurrent calls per method and per server (RESOURCE_EXHAUSTED with reason
``too_many_requests``), and CPU-heavy work (parsing, verification, sealing) off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest

from attestation.evidence import Evidence
from attestation.providers.base import EvidenceProvider
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc as pb_grpc
from coordinator.client.errors import reason_of
from coordinator.core.manifest import Manifest
from coordinator.service.limits import ATTEST, RpcLimits
from coordinator.service.server import CoordinatorServer
from tests.integration.service_helpers import (  # noqa: F401  (fixtures)
    COORDINATOR_POLICY,
    INVALID,
    Coordinators,
    Deployment,
    Keys,
    MockTee,
    coordinators_fixture,
    deployed_fixture,
    expect_status,
    keys_fixture,
    manifest_bytes,
    manifest_dict,
    mock_tee_fixture,
    peer_recover_request,
    raw_channel,
    sha256,
    update_request,
)

pytestmark = pytest.mark.timeout(90)

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


class BlockingProvider:
    """Evidence that waits for the test: holds an ``Attest`` call in progress."""

    def __init__(self, inner: EvidenceProvider) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    @property
    def tee(self) -> str:
        return self.inner.tee

    def evidence(self, report_data: bytes) -> Evidence:
        self.entered.set()
        self.release.wait(30)
        return self.inner.evidence(report_data)


def block_attest(server: CoordinatorServer) -> BlockingProvider:
    assert server.coord is not None
    blocking = BlockingProvider(server.coord.provider)
    server.coord.provider = blocking
    return blocking


async def attest(channel: Any) -> pb.AttestResponse:
    resp: pb.AttestResponse = await pb_grpc.AttestationStub(channel).Attest(
        pb.AttestRequest(nonce=b"n" * 32), timeout=30
    )
    return resp


async def not_throttled(call: Awaitable[Any]) -> None:
    """The call got past the limits (it may still be refused on its merits: no manifest yet)."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        assert reason_of(exc) not in ("too_many_requests", "message_too_large"), exc.details()


async def test_a_request_over_its_method_limit_is_refused_before_decoding(
    coordinators: Coordinators,
) -> None:
    server = await coordinators.start()
    async with await raw_channel(server) as channel:
        stub = pb_grpc.AttestationStub(channel)
        # 5 KiB is far below the transport cap but above Attest's own limit: refused on size,
        # never decoded (a decoded one would be refused for its nonce length instead).
        exc = await expect_status(
            stub.Attest(pb.AttestRequest(nonce=b"n" * 5000)), INVALID, "limit of 4096 bytes"
        )
        assert reason_of(exc) == "message_too_large"
        exc = await expect_status(stub.Attest(pb.AttestRequest(nonce=b"n" * 31)), INVALID)
        assert reason_of(exc) == "invalid_field_size"


async def test_calls_over_a_method_limit_are_refused_until_one_finishes(
    coordinators: Coordinators,
) -> None:
    server = await coordinators.start(limits=RpcLimits(method_concurrency={ATTEST: 1}))
    blocking = block_attest(server)
    async with await raw_channel(server) as channel:
        held = asyncio.create_task(attest(channel))
        assert await asyncio.to_thread(blocking.entered.wait, 30)
        exc = await expect_status(attest(channel), EXHAUSTED, "Attestation/Attest", "1 at once")
        assert reason_of(exc) == "too_many_requests"
        # Another method is not limited by Attest's gate.
        await not_throttled(pb_grpc.AttestationStub(channel).Challenge(pb.ChallengeRequest()))
        blocking.release.set()
        assert (await held).evidence
        assert (await attest(channel)).evidence  # the gate was released


async def test_calls_over_the_server_limit_are_refused_on_that_server_only(
    coordinators: Coordinators,
) -> None:
    server = await coordinators.start(limits=RpcLimits(max_concurrent_rpcs=1))
    blocking = block_attest(server)
    async with (
        await raw_channel(server, "user") as user,
        await raw_channel(server, "mesh") as mesh,
    ):
        held = asyncio.create_task(attest(user))
        assert await asyncio.to_thread(blocking.entered.wait, 30)
        exc = await expect_status(
            pb_grpc.AttestationStub(user).Challenge(pb.ChallengeRequest(), timeout=10),
            EXHAUSTED,
            "user server",
        )
        assert reason_of(exc) == "too_many_requests"
        # The mesh port has its own budget.
        await not_throttled(pb_grpc.AttestationStub(mesh).Challenge(pb.ChallengeRequest()))
        blocking.release.set()
        assert (await held).evidence


@pytest.fixture(name="thread_log")
def thread_log_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Thread ids of every Manifest.parse while the test runs."""
    seen: list[int] = []
    original: Callable[[bytes], Manifest] = Manifest.parse

    def parse(cls: type[Manifest], data: bytes) -> Manifest:
        seen.append(threading.get_ident())
        return original(data)

    monkeypatch.setattr(Manifest, "parse", classmethod(parse))
    yield seen


async def test_manifest_parsing_verification_and_sealing_run_off_the_event_loop(
    deployed: Deployment,
    keys: Keys,
    mock_tee: MockTee,
    thread_log: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop_thread = threading.get_ident()
    coord = deployed.server.coord
    assert coord is not None
    doc = json.loads(deployed.manifest)
    doc["Policies"][sha256(b"another workload").hex()] = {"SANs": ["other"]}
    new = manifest_bytes(doc)
    request = update_request(new, [b"another workload"], deployed.first.transition_hash, keys.owner)
    await deployed.user.user.SetManifest(request, timeout=20)
    assert thread_log, "the update was not parsed at all?"
    assert loop_thread not in thread_log

    verify_threads: list[int] = []
    verify = coord.verifier.verify

    def recording_verify(*args: Any) -> Any:
        verify_threads.append(threading.get_ident())
        return verify(*args)

    monkeypatch.setattr(coord.verifier, "verify", recording_verify)
    req, _ = await peer_recover_request(deployed.mesh, mock_tee.provider(COORDINATOR_POLICY))
    resp = await deployed.mesh.mesh.Recover(req, timeout=20)
    assert resp.sealed_secrets
    assert verify_threads and loop_thread not in verify_threads
