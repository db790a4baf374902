"""An attacker with write access to the store (DESIGN §12), on the file store and on a real etcd.

Each test plays one attack of the threat model with the attacker writing the backend directly
(files in the store directory, keys in etcd), never through a coordinator. Every test shows that
nothing is adopted, that the tamper counter and the error log fire, that a fresh coordinator
repairs the store, and that the legitimate owner keeps working.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client.operations import (
    DeploymentMismatch,
    VerificationFailed,
    check_pin,
    deployment_id_of,
    join,
    recover,
)
from coordinator.cluster.recovery import Member
from coordinator.core.history import SignedLatest
from coordinator.service.server import CoordinatorServer
from tests.integration.service_helpers import (
    ALL_POLICIES,
    DB_POLICY,
    DENIED,
    LATEST_KEY,
    PRECONDITION,
    WEB_ENTRY,
    WEB_POLICY,
    Coordinators,
    Deployment,
    Keys,
    MockTee,
    connect,
    coordinators_fixture,  # noqa: F401
    deploy,
    expect_status,
    http_get,
    keys_fixture,  # noqa: F401
    manifest_bytes,
    manifest_dict,
    mock_tee_fixture,  # noqa: F401
    set_first_manifest,
    update_request,
    user_recover_request,
)
from tests.integration.service_helpers import join as join_mesh
from tools.etcd_server import EtcdServer

pytestmark = pytest.mark.timeout(180)

LIVENESS = 30.0  # a ceiling for something that must happen; never a latency claim


# --- the attacker ----------------------------------------------------------------------------


class Attacker:
    """Raw access to one deployment's keys, bypassing every coordinator."""

    async def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    async def put(self, key: str, value: bytes) -> None:
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        raise NotImplementedError


class FileAttacker(Attacker):
    def __init__(self, root: Path) -> None:
        self.root = root

    async def get(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.exists() else None

    async def put(self, key: str, value: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-attacker-{uuid.uuid4().hex}")
        tmp.write_bytes(value)
        os.replace(tmp, path)

    async def delete(self, key: str) -> None:
        (self.root / key).unlink()


class EtcdAttacker(Attacker):
    def __init__(self, raw: Any, deployment: str) -> None:
        self.raw = raw
        self.prefix = f"/concord/{deployment}/"

    async def get(self, key: str) -> bytes | None:
        value, _ = await asyncio.to_thread(self.raw.get, self.prefix + key)
        return None if value is None else bytes(value)

    async def put(self, key: str, value: bytes) -> None:
        await asyncio.to_thread(self.raw.put, self.prefix + key, value)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.raw.delete, self.prefix + key)

    async def items(self) -> dict[str, bytes]:
        found = await asyncio.to_thread(lambda: list(self.raw.get_prefix(self.prefix)))
        return {meta.key.decode()[len(self.prefix) :]: bytes(v) for v, meta in found}


@dataclass
class Backend:
    """Where a deployment lives and how the attacker reaches it."""

    kind: str
    store: str
    deployment: str
    attacker: Attacker
    shared: bool  # several coordinators may use it at once (etcd)

    def sibling(self, name: str, tmp: Path, raw: Any) -> Backend:
        """Another deployment on the same backend (etcd: same server, another prefix)."""
        if self.kind == "file":
            root = tmp / f"store-{name}"
            return Backend("file", f"file:{root}", name, FileAttacker(root), False)
        return Backend("etcd", self.store, name, EtcdAttacker(raw, name), True)


@pytest.fixture(scope="module")
def etcd_server() -> Iterator[EtcdServer]:
    from tools.etcd_server import find_etcd

    if find_etcd() is None:
        pytest.skip("etcd binary not installed")
    with EtcdServer() as server:
        yield server


@pytest.fixture(params=["file", "etcd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    name = f"h-{uuid.uuid4().hex[:10]}"
    if request.param == "file":
        root = tmp_path / "store"
        yield Backend("file", f"file:{root}", name, FileAttacker(root), False)
        return
    import etcd3

    server: EtcdServer = request.getfixturevalue("etcd_server")
    host, port = server.endpoint.rsplit(":", 1)
    raw = etcd3.client(host=host, port=int(port), timeout=5)
    try:
        yield Backend("etcd", f"etcd://{server.endpoint}", name, EtcdAttacker(raw, name), True)
    finally:
        raw.close()


# --- helpers ---------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + LIVENESS
    while not await check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.05)


def tamper(server: CoordinatorServer, kind: str) -> float:
    value = server.metrics.registry.get_sample_value("concord_store_tamper_total", {"kind": kind})
    assert value is not None, f"tamper kind {kind} not exported"
    return value


async def tampered(server: CoordinatorServer, kind: str, at_least: float = 1) -> None:
    async def check() -> bool:
        return tamper(server, kind) >= at_least

    await eventually(check, f"tamper {kind} counted")


async def store_holds(backend: Backend, value: bytes) -> None:
    async def check() -> bool:
        return await backend.attacker.get(LATEST_KEY) == value

    await eventually(check, "the store holds the expected latest")


def m2_of(tee: MockTee, keys: Keys) -> bytes:
    """The update: the database policy is removed."""
    doc = manifest_dict(
        tee, workloads={WEB_POLICY: WEB_ENTRY}, owners=[keys.owner], seedshare=[keys.seedshare]
    )
    return manifest_bytes(doc)


@dataclass
class Updated:
    dep: Deployment
    m1_latest: bytes
    m2_latest: bytes
    m2: bytes
    m2_transition: bytes


async def deploy_and_update(
    coordinators: Coordinators, tee: MockTee, keys: Keys, backend: Backend
) -> Updated:
    dep = await deploy(coordinators, tee, keys, store=backend.store, deployment=backend.deployment)
    m1_latest = await backend.attacker.get(LATEST_KEY)
    assert m1_latest is not None
    m2 = m2_of(tee, keys)
    resp = await dep.user.user.SetManifest(
        update_request(m2, [], dep.first.transition_hash, keys.owner), timeout=20
    )
    m2_latest = await backend.attacker.get(LATEST_KEY)
    assert m2_latest is not None and m2_latest != m1_latest
    return Updated(dep, m1_latest, m2_latest, m2, bytes(resp.transition_hash))


async def serves(dep: Deployment, transition: bytes, tee: MockTee) -> None:
    """A fresh attestation of the coordinator names ``transition``; GetManifests agrees."""
    chan = await connect(dep.server, "user", tee=tee)
    try:
        assert chan.attestation.latest_transition_hash == transition
        resp = await chan.user.GetManifests(pb.GetManifestsRequest(), timeout=20)
        assert resp.latest_transition_hash == transition
    finally:
        await chan.close()


async def owner_keeps_working(up: Updated, keys: Keys, tee: MockTee) -> None:
    """The legitimate owner can still update on top of the repaired history."""
    m3 = manifest_bytes(
        manifest_dict(
            tee,
            workloads={WEB_POLICY: {**WEB_ENTRY, "SANs": ["web-v3"]}},
            owners=[keys.owner],
            seedshare=[keys.seedshare],
        )
    )
    resp = await up.dep.user.user.SetManifest(
        update_request(m3, [], up.m2_transition, keys.owner), timeout=20
    )
    await serves(up.dep, bytes(resp.transition_hash), tee)


# --- attacks on a running coordinator --------------------------------------------------------


async def test_rollback_is_counted_refused_and_repaired(
    coordinators: Coordinators,
    mock_tee: MockTee,
    keys: Keys,
    backend: Backend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="concord.state")
    up = await deploy_and_update(coordinators, mock_tee, keys, backend)
    server = up.dep.server
    assert all(
        tamper(server, k) == 0
        for k in ("rollback", "deleted", "bad_signature", "malformed", "unknown_chain")
    )
    await backend.attacker.put(LATEST_KEY, up.m1_latest)  # an old, validly signed latest
    await tampered(server, "rollback")
    await store_holds(backend, up.m2_latest)  # written back
    await serves(up.dep, up.m2_transition, mock_tee)
    # the workload policy the update removed stays out
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await join_mesh(up.dep.mesh, mock_tee.provider(DB_POLICY))
    assert refused.value.code() == DENIED
    logged = [r.getMessage() for r in caplog.records if "tampering" in r.getMessage()]
    assert any(up.m2_transition.hex() in m and "rollback" in m for m in logged)
    await owner_keeps_working(up, keys, mock_tee)
    await up.dep.close()


@pytest.mark.parametrize("attack", ["deleted", "malformed", "bad_signature"])
async def test_deleted_garbage_and_forged_latest_are_repaired(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys, backend: Backend, attack: str
) -> None:
    up = await deploy_and_update(coordinators, mock_tee, keys, backend)
    if attack == "deleted":
        await backend.attacker.delete(LATEST_KEY)
    elif attack == "malformed":
        await backend.attacker.put(LATEST_KEY, b"\x00garbage")
    else:
        forged = SignedLatest.sign(up.m2_transition, ec.generate_private_key(ec.SECP384R1()))
        await backend.attacker.put(LATEST_KEY, forged.encode())
    await tampered(up.dep.server, attack)
    await store_holds(backend, up.m2_latest)
    await serves(up.dep, up.m2_transition, mock_tee)
    await owner_keeps_working(up, keys, mock_tee)
    await up.dep.close()


async def test_two_coordinators_both_refuse_a_rollback(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys, backend: Backend
) -> None:
    if not backend.shared:
        pytest.skip("the file store serves exactly one coordinator")
    up = await deploy_and_update(coordinators, mock_tee, keys, backend)
    second = await coordinators.start(backend.store, deployment=backend.deployment)

    async def second_ready() -> bool:
        return second.is_ready()

    await eventually(second_ready, "the second coordinator recovered from the first")
    await backend.attacker.put(LATEST_KEY, up.m1_latest)
    await tampered(up.dep.server, "rollback")
    await tampered(second, "rollback")
    await store_holds(backend, up.m2_latest)
    for server in (up.dep.server, second):
        state = server.guard.current() if server.guard else None
        assert state is not None and state.transition.hash == up.m2_transition
        assert server.is_ready()
    await owner_keeps_working(up, keys, mock_tee)
    await up.dep.close()


# --- attacks while a coordinator restarts ----------------------------------------------------


@pytest.mark.parametrize("attack", ["delete", "garbage"])
async def test_deleted_latest_is_no_trust_on_first_use(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys, backend: Backend, attack: str
) -> None:
    """The take-over: delete (or garble) ``latest`` and wait for a restart. The restarted
    coordinator refuses the attacker's first manifest; the owner's recovery naming m2 restores
    it."""
    up = await deploy_and_update(coordinators, mock_tee, keys, backend)
    root = up.dep.first.root_ca_pem
    await up.dep.close()
    await coordinators.stop(up.dep.server)
    if attack == "delete":
        await backend.attacker.delete(LATEST_KEY)
    else:
        await backend.attacker.put(LATEST_KEY, b"\x01" * 90)

    server = await coordinators.start(backend.store, deployment=backend.deployment)
    status, body = await http_get(server.addresses["http"], "/readyz")
    assert status == 503
    assert (b"history without latest" if attack == "delete" else b"recovering") in body
    user = await connect(server, "user", tee=mock_tee)
    rogue_owner = ec.generate_private_key(ec.SECP256R1())
    attacker_manifest = manifest_bytes(manifest_dict(mock_tee, owners=[rogue_owner]))
    before = await backend.attacker.get(LATEST_KEY)
    await expect_status(
        set_first_manifest(user, attacker_manifest, ALL_POLICIES),
        PRECONDITION,
        "store holds a history without latest" if attack == "delete" else "recovery mode",
    )
    assert await backend.attacker.get(LATEST_KEY) == before

    seed, salt = up.dep.seed, up.dep.salt
    request = await user_recover_request(
        user, seed, salt, keys.seedshare, expected=up.m2_transition
    )
    await user.user.Recover(request, timeout=20)
    await store_holds(backend, up.m2_latest)  # deterministic signature: the very same bytes
    state = server.guard.current() if server.guard else None
    assert state is not None and state.transition.hash == up.m2_transition
    fresh = await connect(server, "user", tee=mock_tee)
    assert fresh.attestation.root_ca_pem == root  # the same deployment, not a new one
    await fresh.close()
    await user.close()


async def test_rollback_before_restart_recover_names_the_manifest(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys, backend: Backend
) -> None:
    """Rollback while no coordinator runs: recovering with m2 is refused (the store's chain
    ends at m1), and recovering naming m2's transition moves ``latest`` forward again."""
    up = await deploy_and_update(coordinators, mock_tee, keys, backend)
    shares = up.dep.first.seed_share_document
    await up.dep.close()
    await coordinators.stop(up.dep.server)
    await backend.attacker.put(LATEST_KEY, up.m1_latest)

    server = await coordinators.start(backend.store, deployment=backend.deployment)
    address = server.addresses["user"]
    with pytest.raises(VerificationFailed, match="not the one given"):
        await recover(address, up.m2, shares, keys.seedshare, anchors=mock_tee.anchors, timeout=20)
    assert server.guard is not None and server.guard.current() is None
    assert await backend.attacker.get(LATEST_KEY) == up.m1_latest
    pin = deployment_id_of(up.dep.first.root_ca_pem)
    result = await recover(
        address,
        up.m2,
        shares,
        keys.seedshare,
        anchors=mock_tee.anchors,
        timeout=20,
        pin=pin,
        expected_latest=up.m2_transition,
    )
    assert result.transition_hash == up.m2_transition and result.deployment_id == pin
    assert result.restored
    await store_holds(backend, up.m2_latest)


async def test_user_recovery_for_another_history_is_refused(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys, backend: Backend
) -> None:
    up = await deploy_and_update(coordinators, mock_tee, keys, backend)
    await up.dep.close()
    await coordinators.stop(up.dep.server)
    server = await coordinators.start(backend.store, deployment=backend.deployment)
    user = await connect(server, "user", tee=mock_tee)
    first = up.dep.first.transition_hash
    request = await user_recover_request(
        user, up.dep.seed, up.dep.salt, keys.seedshare, expected=first
    )
    exc = await expect_status(user.user.Recover(request, timeout=20), PRECONDITION)
    assert first.hex() in (exc.details() or "") and up.m2_transition.hex() in (exc.details() or "")
    assert server.guard is not None and server.guard.current() is None
    await user.close()


# --- deployments do not mix ------------------------------------------------------------------


async def test_update_signed_for_one_deployment_is_worthless_in_another(
    coordinators: Coordinators,
    mock_tee: MockTee,
    keys: Keys,
    backend: Backend,
    tmp_path: Path,
) -> None:
    """Replay: two deployments from the same first manifest share the transition hashes; the
    owner's signature names the deployment ID, so it does not carry over."""
    d1 = await deploy(
        coordinators, mock_tee, keys, store=backend.store, deployment=backend.deployment
    )
    other = backend.sibling(
        f"{backend.deployment}-b", tmp_path, getattr(backend.attacker, "raw", None)
    )
    d2 = await deploy(coordinators, mock_tee, keys, store=other.store, deployment=other.deployment)
    assert d1.first.transition_hash == d2.first.transition_hash
    assert d1.first.deployment_id != d2.first.deployment_id
    signed_for_d1 = update_request(
        m2_of(mock_tee, keys), [], d1.first.transition_hash, keys.owner,
        deployment=bytes(d1.first.deployment_id),
    )  # fmt: skip
    await expect_status(d2.user.user.SetManifest(signed_for_d1, timeout=20), DENIED, "signature")
    await d1.user.user.SetManifest(signed_for_d1, timeout=20)
    await d1.close()
    await d2.close()


async def test_rogue_coordinator_is_refused_by_a_pinned_join(
    coordinators: Coordinators,
    mock_tee: MockTee,
    keys: Keys,
    backend: Backend,
    tmp_path: Path,
) -> None:
    """A genuine coordinator image with an empty store and the attacker's manifest attests
    fine; only the deployment pin tells it apart. Nothing is sent, nothing written."""
    real = await deploy(
        coordinators, mock_tee, keys, store=backend.store, deployment=backend.deployment
    )
    other = backend.sibling(
        f"{backend.deployment}-rogue", tmp_path, getattr(backend.attacker, "raw", None)
    )
    rogue = await deploy(
        coordinators, mock_tee, keys, store=other.store, deployment=other.deployment
    )
    pin = deployment_id_of(real.first.root_ca_pem)
    out = tmp_path / "join"
    with pytest.raises(DeploymentMismatch) as mismatch:
        await join(
            rogue.server.addresses["mesh"],
            mock_tee.provider(WEB_POLICY),
            policy=mock_tee.coordinator_policy(),
            out_dir=out,
            timeout=20,
            pin=pin,
        )
    assert pin.hex() in str(mismatch.value)
    assert deployment_id_of(rogue.first.root_ca_pem).hex() in str(mismatch.value)
    assert not (out / "key.pem").exists()
    result = await join(
        real.server.addresses["mesh"],
        mock_tee.provider(WEB_POLICY),
        policy=mock_tee.coordinator_policy(),
        out_dir=out,
        timeout=20,
        pin=pin,
    )
    assert check_pin(pin, result.root_ca_pem) == pin
    await real.close()
    await rogue.close()


async def test_copied_deployment_is_never_adopted(
    coordinators: Coordinators,
    mock_tee: MockTee,
    keys: Keys,
    backend: Backend,
    tmp_path: Path,
) -> None:
    """Cross-deployment copy on one etcd: d1's keys copied into d2's prefix plus a fake member
    record pointing at d1's coordinator. d2's restarted coordinator never recovers from d1."""
    if not backend.shared:
        pytest.skip("needs two deployments on one shared store")
    assert isinstance(backend.attacker, EtcdAttacker)
    d1 = await deploy(
        coordinators, mock_tee, keys, store=backend.store, deployment=backend.deployment
    )
    other = backend.sibling(f"{backend.deployment}-b", tmp_path, backend.attacker.raw)
    d2 = await deploy(coordinators, mock_tee, keys, store=other.store, deployment=other.deployment)
    await d2.close()
    await coordinators.stop(d2.server)
    assert isinstance(other.attacker, EtcdAttacker)
    for key, value in (await backend.attacker.items()).items():
        if not key.startswith("members/"):
            await other.attacker.put(key, value)
    fake = Member("fake", d1.server.addresses["mesh"], True, d1.first.transition_hash)
    await other.attacker.put("members/fake", fake.encode())

    server = await coordinators.start(other.store, deployment=other.deployment)
    recovery = server._recovery
    assert recovery is not None

    async def tried() -> bool:
        return recovery.attempts >= 2

    await eventually(tried, "d2's coordinator tried to recover")
    assert server.guard is not None and server.guard.current() is None and not server.is_ready()
    chan = await connect(server, "user", tee=mock_tee)
    assert chan.attestation.root_ca_pem == b""  # serves nothing of d1
    await chan.close()
    # and d1's coordinator handed nothing to a requester of another deployment
    assert d1.server.is_ready()
    await d1.close()
