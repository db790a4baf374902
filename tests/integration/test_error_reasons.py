"""Reasons on the wire over real gRPC/TLS (DESIGN §1, §7): every refusal carries
``google.rpc.ErrorInfo`` with its stable reason next to the unchanged code and message, and a
client's retries follow the reason: rewording every message changes nothing they decide."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Iterator
from pathlib import Path

import grpc
import pytest

from attestation.errors import EvidenceRejected
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client import operations
from coordinator.client.errors import reason_of
from coordinator.client.operations import OperationRefused, retryable
from coordinator.core.state import Stale, State
from coordinator.errors import ERROR_DOMAIN, ConcordError
from coordinator.service.server import CoordinatorServer
from tests.integration.service_helpers import (  # noqa: F401  (fixtures)
    DENIED,
    INVALID,
    PRECONDITION,
    ROGUE_POLICY,
    WEB_POLICY,
    Coordinators,
    Deployment,
    Keys,
    MockTee,
    connect,
    coordinators_fixture,
    deployed_fixture,
    expect_status,
    join_request,
    keys_fixture,
    manifest_bytes,
    manifest_dict,
    mock_tee_fixture,
    update_request,
)

pytestmark = pytest.mark.timeout(90)

REWORDED = "xyz"


def _all_errors() -> Iterator[type[ConcordError]]:
    todo: list[type[ConcordError]] = [ConcordError]
    while todo:
        cls = todo.pop()
        yield cls
        todo.extend(cls.__subclasses__())


def reword_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every message a coordinator can send becomes "xyz" (or ends in it, for evidence)."""
    for cls in _all_errors():
        monkeypatch.setattr(cls, "public_message", lambda self: REWORDED)
    monkeypatch.setattr(EvidenceRejected, "__str__", lambda self: REWORDED)


async def refusal(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


def error_info_domain(exc: grpc.aio.AioRpcError) -> str | None:
    from google.rpc import error_details_pb2, status_pb2

    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            assert status.code == exc.code().value[0]
            assert status.message == exc.details()
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.domain)
    return None


# --- the reason travels next to the code and message -------------------------------------------


async def test_refusals_carry_their_reason(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys, deployed: Deployment
) -> None:
    fresh = await coordinators.start()
    chan = await connect(fresh, "user", tee=mock_tee)
    try:
        exc = await expect_status(
            chan.attest.Challenge(pb.ChallengeRequest()), PRECONDITION, "not initialized"
        )
        assert reason_of(exc) == "not_initialized"
        assert error_info_domain(exc) == ERROR_DOMAIN
    finally:
        await chan.close()

    dep = deployed
    manifest = manifest_bytes(
        manifest_dict(mock_tee, owners=[keys.owner], seedshare=[keys.seedshare])
    )
    not_owner = update_request(manifest, [], dep.first.transition_hash, keys.other_owner)
    exc = await expect_status(dep.user.user.SetManifest(not_owner), DENIED, "workload owner")
    assert reason_of(exc) == "not_workload_owner"

    old = update_request(manifest, [], os.urandom(32), keys.owner)
    exc = await expect_status(dep.user.user.SetManifest(old), PRECONDITION, "concurrent update")
    assert reason_of(exc) == "concurrent_update"

    req = await join_request(dep.mesh, mock_tee.provider(WEB_POLICY))
    req.request.token = b"\x00" * 8
    exc = await expect_status(dep.mesh.mesh.NewMeshCert(req.request), INVALID, "token")
    assert reason_of(exc) == "token_malformed"

    req = await join_request(dep.mesh, mock_tee.provider(WEB_POLICY), report_data=os.urandom(64))
    exc = await expect_status(dep.mesh.mesh.NewMeshCert(req.request), DENIED, "evidence rejected")
    assert reason_of(exc) == "evidence_rejected"

    req = await join_request(dep.mesh, mock_tee.provider(ROGUE_POLICY))
    exc = await expect_status(dep.mesh.mesh.NewMeshCert(req.request), DENIED)
    assert reason_of(exc) == "policy_not_in_manifest"


# --- retries follow the reason, not the words ---------------------------------------------------


class FakeClock:
    """Time that only moves when join waits (no test waits for real)."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


def stale_for(server: CoordinatorServer, calls: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first ``calls`` MeshAPI calls find the State stale, as when another coordinator has
    just moved the history; the refusal is produced by the real servicer and status mapping."""
    coord = server.coord
    assert coord is not None
    real = coord.fresh_for_mesh
    left = [calls]

    async def fresh_for_mesh() -> State:
        if left[0] > 0:
            left[0] -= 1
            raise Stale(coord.guard.current())
        return await real()

    monkeypatch.setattr(coord, "fresh_for_mesh", fresh_for_mesh)


async def run_join(
    dep: Deployment, tee: MockTee, out: Path, policy: bytes
) -> tuple[operations.JoinResult | OperationRefused, list[str]]:
    waits: list[str] = []
    try:
        result: operations.JoinResult | OperationRefused = await operations.join(
            dep.server.addresses["mesh"],
            tee.provider(policy),
            policy=tee.coordinator_policy(),
            out_dir=out,
            timeout=600.0,
            on_wait=lambda why, attempt, delay: waits.append(why),
            clock=FakeClock(),
        )
    except OperationRefused as exc:
        result = exc
    return result, waits


@pytest.mark.parametrize("reworded", [False, True], ids=["as-is", "reworded"])
async def test_join_retries_by_reason_whatever_the_message(
    deployed: Deployment,
    mock_tee: MockTee,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reworded: bool,
) -> None:
    if reworded:
        reword_everything(monkeypatch)
    stale_for(deployed.server, 2, monkeypatch)
    result, waits = await run_join(deployed, mock_tee, tmp_path / "web", WEB_POLICY)
    assert isinstance(result, operations.JoinResult), result
    assert result.attempts == 3
    assert waits == ([REWORDED] * 2 if reworded else ["recovery mode"] * 2)

    # A final refusal stays final: one attempt, its reason on the exception.
    result, waits = await run_join(deployed, mock_tee, tmp_path / "rogue", ROGUE_POLICY)
    assert isinstance(result, OperationRefused)
    assert result.reason == "policy_not_in_manifest"
    assert (result.details == REWORDED) is reworded
    assert waits == []


async def test_rewording_keeps_every_decision_on_real_refusals(
    deployed: Deployment, mock_tee: MockTee, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's classification of real refusals is the same before and after every
    message of the coordinator is replaced."""
    dep = deployed

    def refused(exc: grpc.aio.AioRpcError) -> OperationRefused:
        return OperationRefused("join", exc.code(), exc.details() or "", reason_of(exc))

    async def refusals() -> list[OperationRefused]:
        out: list[OperationRefused] = []
        stale_for(dep.server, 1, monkeypatch)
        req = await join_request(dep.mesh, mock_tee.provider(WEB_POLICY))
        exc = await refusal(dep.mesh.mesh.NewMeshCert(req.request))  # stale: retry
        out.append(refused(exc))
        bad = await join_request(dep.mesh, mock_tee.provider(WEB_POLICY))
        bad.request.token = bad.request.token[:-1] + bytes([bad.request.token[-1] ^ 1])
        exc = await refusal(dep.mesh.mesh.NewMeshCert(bad.request))  # forged token: final
        out.append(refused(exc))
        rogue = await join_request(dep.mesh, mock_tee.provider(ROGUE_POLICY))
        exc = await refusal(dep.mesh.mesh.NewMeshCert(rogue.request))  # not admitted: final
        out.append(refused(exc))
        return out

    before = await refusals()
    reword_everything(monkeypatch)
    after = await refusals()
    assert [r.details for r in after] == [REWORDED] * len(after)
    assert [r.details for r in before] != [r.details for r in after]
    assert [(r.code, r.reason) for r in before] == [(r.code, r.reason) for r in after]
    assert [retryable(r) is not None for r in before] == [True, False, False]
    assert [retryable(r) is not None for r in after] == [True, False, False]
