"""Threshold user recovery on etcd with two coordinators (DESIGN §3, §8, §12): k of n owners
submit their shares one by one to a coordinator in recovery mode; k-1 recover nothing; the k-th
recovers it and the other coordinator follows by peer recovery; shares of another deployment,
for another latest, or wrong ones are refused; a restart loses exactly the partial set."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client.operations import OperationRefused, RecoverResult, recover, recover_each
from coordinator.core.authz import recover_message, rsa_pkcs1_der, sign_seedshare
from coordinator.core.sealing import PURPOSE_USER_RECOVER, UserRecoveryShare, seal
from coordinator.core.seedengine import SeedShareDocument, decrypt_seed_share
from coordinator.core.threshold import SeedShare
from coordinator.service.server import CoordinatorServer
from tests.integration.service_helpers import (  # noqa: F401  (fixtures)
    ALL_POLICIES,
    PRECONDITION,
    Coordinators,
    MockTee,
    connect,
    coordinators_fixture,
    expect_status,
    manifest_bytes,
    manifest_dict,
    mock_tee_fixture,
    set_first_manifest,
)
from tools.etcd_server import EtcdServer

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(180)]

LIVENESS = 60.0  # an upper bound for "eventually", never an expectation of speed


@pytest.fixture(scope="module", name="owner_keys")
def owner_keys_fixture() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(5)]


@dataclass
class ThresholdDeployment:
    manifest: bytes
    document: bytes
    transition: bytes
    store: str
    deployment: str


async def _first_manifest(
    coordinators: Coordinators,
    tee: MockTee,
    owners: Sequence[rsa.RSAPrivateKey],
    k: int,
    store: str,
    deployment: str,
) -> ThresholdDeployment:
    """Set the first manifest on a coordinator that then goes away (its history stays)."""
    doc = manifest_dict(tee, seedshare=owners)
    doc["SeedshareThreshold"] = k
    manifest = manifest_bytes(doc)
    server = await coordinators.start(store, deployment=deployment)
    user = await connect(server, "user", tee=tee)
    first = await set_first_manifest(user, manifest, ALL_POLICIES)
    await user.close()
    await coordinators.stop(server)
    return ThresholdDeployment(
        manifest, bytes(first.seed_share_document), bytes(first.transition_hash), store, deployment
    )


async def _in_recovery(coordinators: Coordinators, dep: ThresholdDeployment) -> CoordinatorServer:
    server = await coordinators.start(dep.store, deployment=dep.deployment)
    assert server.guard is not None
    await asyncio.wait_for(server.guard.stale_event.wait(), LIVENESS)
    return server


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + LIVENESS
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {LIVENESS}s: {what}")
        await asyncio.sleep(0.1)


async def _submit(
    server: CoordinatorServer, tee: MockTee, dep: ThresholdDeployment, owner: rsa.RSAPrivateKey
) -> RecoverResult:
    return await recover(
        server.addresses["user"], dep.manifest, dep.document, owner, anchors=tee.anchors, timeout=20
    )


def _pending(server: CoordinatorServer) -> int:
    assert server.user_service is not None
    return server.user_service.shares.pending


def _recovered(server: CoordinatorServer, dep: ThresholdDeployment) -> bool:
    assert server.guard is not None
    state = server.guard.current()
    return state is not None and state.transition.hash == dep.transition


@pytest.mark.parametrize(("k", "n"), [(1, 1), (2, 3), (3, 5)])
async def test_k_of_n_owners_recover_one_by_one_on_etcd(
    coordinators: Coordinators,
    mock_tee: MockTee,
    owner_keys: list[rsa.RSAPrivateKey],
    etcd: EtcdServer,
    deployment: str,
    k: int,
    n: int,
) -> None:
    store = f"etcd://{etcd.endpoint}"
    owners = owner_keys[:n]
    dep = await _first_manifest(coordinators, mock_tee, owners, k, store, deployment)
    a = await _in_recovery(coordinators, dep)
    b = await _in_recovery(coordinators, dep)
    # Any k of the n: the last k owners, one by one, to coordinator a.
    submitters = owners[n - k :]
    for i, owner in enumerate(submitters[:-1], start=1):
        result = await _submit(a, mock_tee, dep, owner)
        assert result.pending and (result.shares_received, result.shares_needed) == (i, k)
        assert not _recovered(a, dep) and not _recovered(b, dep)  # k-1 recover nothing
    result = await _submit(a, mock_tee, dep, submitters[-1])
    assert not result.pending and result.transition_hash == dep.transition
    assert _recovered(a, dep) and _pending(a) == 0
    # The other coordinator needs no share: it recovers from its attested peer.
    await _eventually(lambda: _async(_recovered(b, dep)), "peer recovery of the second")


async def _async(value: bool) -> bool:
    return value


async def test_refusals_and_a_restart_mid_way(
    coordinators: Coordinators,
    mock_tee: MockTee,
    owner_keys: list[rsa.RSAPrivateKey],
    etcd: EtcdServer,
    deployment: str,
) -> None:
    store = f"etcd://{etcd.endpoint}"
    owners = owner_keys[:3]
    dep = await _first_manifest(coordinators, mock_tee, owners, 2, store, deployment)
    # The same owners and the same manifest bytes in another deployment: same transition hash,
    # so only the deployment ID inside the share tells the shares apart.
    other = await _first_manifest(
        coordinators, mock_tee, owners, 2, coordinators.new_store(), "other"
    )
    assert other.transition == dep.transition
    a = await _in_recovery(coordinators, dep)
    b = await _in_recovery(coordinators, dep)

    first = await _submit(a, mock_tee, dep, owners[0])
    assert (first.shares_received, first.shares_needed) == (1, 2)

    # A share of the other deployment is refused; the set keeps its share.
    with pytest.raises(OperationRefused) as refused:
        await _submit(a, mock_tee, other, owners[1])
    assert refused.value.reason == "recovery_share_other_deployment"
    assert _pending(a) == 1 and not _recovered(a, dep)

    # A share naming another latest is refused before it reaches the set.
    user = await connect(a, "user", policy=None, tee=mock_tee)
    bogus = await _raw_share_request(user, dep, owners[1], expected=os.urandom(32))
    await expect_status(user.user.Recover(bogus), PRECONDITION)
    assert _pending(a) == 1

    # A wrong share completes the set with a seed that is not the deployment's: reset.
    wrong = await _raw_share_request(user, dep, owners[1], tamper=True)
    exc = await expect_status(user.user.Recover(wrong), PRECONDITION, "every owner must submit")
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _pending(a) == 0 and not _recovered(a, dep)
    await user.close()

    # b keeps its own set; a restart of a loses a's partial set and nothing else.
    assert (await _submit(b, mock_tee, dep, owners[2])).shares_received == 1
    assert (await _submit(a, mock_tee, dep, owners[0])).shares_received == 1
    await coordinators.stop(a)
    a2 = await _in_recovery(coordinators, dep)
    assert _pending(a2) == 0 and _pending(b) == 1
    result = await _submit(a2, mock_tee, dep, owners[1])
    assert (result.shares_received, result.shares_needed) == (1, 2)
    # b completes with a second owner; a2 follows by peer recovery.
    done = await _submit(b, mock_tee, dep, owners[0])
    assert not done.pending and _recovered(b, dep)
    await _eventually(lambda: _async(_recovered(a2, dep)), "peer recovery after the restart")


async def _raw_share_request(
    user: object,
    dep: ThresholdDeployment,
    owner: rsa.RSAPrivateKey,
    *,
    expected: bytes | None = None,
    tamper: bool = False,
) -> pb.UserRecoverRequest:
    """What `concord recover` sends, built by hand so a test can bend one part of it."""
    from coordinator.client.channel import AttestedChannel

    assert isinstance(user, AttestedChannel)
    doc = SeedShareDocument.from_json(dep.document)
    encrypted = doc.share_for(rsa_pkcs1_der(owner))
    assert encrypted is not None
    share = SeedShare.decode(decrypt_seed_share(encrypted, owner))
    if tamper:
        share = SeedShare(share.index, share.deployment_id, bytes(x ^ 1 for x in share.points))
    payload = UserRecoveryShare(share=share.encode(), salt=doc.salt).encode()
    sealed = seal(user.attestation.hpke_public_key, PURPOSE_USER_RECOVER, payload)
    nonce = os.urandom(32)
    name = dep.transition if expected is None else expected
    return pb.UserRecoverRequest(
        sealed_secret=sealed,
        seedshare_owner_public_key=rsa_pkcs1_der(owner),
        signature=sign_seedshare(owner, recover_message(nonce, sealed, name)),
        nonce=nonce,
        expected_latest_transition_hash=name,
    )


async def test_owners_submitting_to_every_coordinator_recover_at_either(
    coordinators: Coordinators,
    mock_tee: MockTee,
    owner_keys: list[rsa.RSAPrivateKey],
    etcd: EtcdServer,
    deployment: str,
) -> None:
    """No owner needs to know where the others went: each submits to all coordinators (in its
    own order); whichever holds k first completes, the rest follow as peers."""
    store = f"etcd://{etcd.endpoint}"
    owners = owner_keys[:3]
    dep = await _first_manifest(coordinators, mock_tee, owners, 2, store, deployment)
    a = await _in_recovery(coordinators, dep)
    b = await _in_recovery(coordinators, dep)
    everyone = [b.addresses["user"], a.addresses["user"]]
    first = await recover_each(
        everyone, dep.manifest, dep.document, owners[2], anchors=mock_tee.anchors, timeout=20
    )
    assert first.pending and _pending(a) == 1 and _pending(b) == 1
    done = await recover_each(
        list(reversed(everyone)),
        dep.manifest,
        dep.document,
        owners[0],
        anchors=mock_tee.anchors,
        timeout=20,
    )
    assert not done.pending and _recovered(a, dep)
    await _eventually(lambda: _async(_recovered(b, dep)), "peer recovery of the other")
    # b still held owner 3's partial share; the first call after it recovered drops it.
    assert _pending(b) == 1
    with pytest.raises(OperationRefused) as late:
        await _submit(b, mock_tee, dep, owners[1])
    assert late.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert _pending(b) == 0


async def test_an_owner_with_an_mlkem_key_recovers_with_both_keys(
    coordinators: Coordinators,
    mock_tee: MockTee,
    owner_keys: list[rsa.RSAPrivateKey],
    etcd: EtcdServer,
    deployment: str,
) -> None:
    from cryptography.hazmat.primitives.asymmetric import mlkem
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from coordinator.client.operations import InvalidInput

    store = f"etcd://{etcd.endpoint}"
    owners = owner_keys[:2]
    pq_key = mlkem.MLKEM768PrivateKey.generate()
    raw = pq_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    doc = manifest_dict(mock_tee, seedshare=owners)
    doc["SeedshareThreshold"] = 2
    doc["SeedshareOwnerMLKEMKeys"] = {rsa_pkcs1_der(owners[0]).hex(): raw.hex()}
    manifest = manifest_bytes(doc)
    first_server = await coordinators.start(store, deployment=deployment)
    user = await connect(first_server, "user", tee=mock_tee)
    first = await set_first_manifest(user, manifest, ALL_POLICIES)
    await user.close()
    await coordinators.stop(first_server)
    dep = ThresholdDeployment(
        manifest, bytes(first.seed_share_document), bytes(first.transition_hash), store, deployment
    )
    a = await _in_recovery(coordinators, dep)
    with pytest.raises(InvalidInput, match="ML-KEM"):
        await _submit(a, mock_tee, dep, owners[0])  # the RSA key alone opens nothing
    assert _pending(a) == 0
    result = await recover(
        a.addresses["user"],
        dep.manifest,
        dep.document,
        owners[0],
        anchors=mock_tee.anchors,
        timeout=20,
        seedshare_mlkem_key=pq_key,
    )
    assert result.pending
    assert not (await _submit(a, mock_tee, dep, owners[1])).pending
    assert _recovered(a, dep)
