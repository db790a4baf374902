"""Fixtures and small async helpers for the service tests (DESIGN §7) over real gRPC/TLS.

Every coordinator runs in-process on 127.0.0.1 with ephemeral ports and a mock TEE. The mock TEE
is created once per session. Test modules import the fixtures they use from here as
``*_fixture`` (pytest registers them under their ``name``, so test parameters do not shadow
the imports).

What the helpers model is exactly what a real client does: attest the coordinator first
(:class:`coordinator.client.channel.AttestedChannel`), then drive the raw gRPC stubs, signing with
:mod:`coordinator.core.authz`, sealing with :mod:`coordinator.core.sealing`, and producing workload
evidence with :class:`attestation.providers.mock.MockProvider` over report data from
:mod:`attestation.binding`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from attestation import anchors as trust
from attestation.binding import mesh_cert_report_data, peer_recover_report_data
from attestation.providers import mock as mock_tee_mod
from attestation.providers.mock import MockProvider
from attestation.reference import ReferenceValues, parse_reference_values
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client.channel import AttestedChannel, CoordinatorPolicy, fetch_certificate
from coordinator.core.authz import (
    public_spki,
    recover_message,
    rsa_pkcs1_der,
    set_manifest_message,
    sign_owner,
    sign_seedshare,
)
from coordinator.core.history import transition_hash
from coordinator.core.sealing import (
    PURPOSE_USER_RECOVER,
    UserRecoverySecret,
    generate_keypair,
    seal,
)
from coordinator.core.seedengine import SeedShareDocument, decrypt_seed_share
from coordinator.core.tlsid import SERVER_NAME
from coordinator.service.feed import LifecycleConfig
from coordinator.service.limits import RpcLimits
from coordinator.service.server import CoordinatorServer, ServerConfig

COORDINATOR_POLICY = b"concord test policy: coordinator\n"
WEB_POLICY = b"concord test policy: web frontend\n"
DB_POLICY = b"concord test policy: database (no secret, no SANs)\n"
ROGUE_POLICY = b"concord test policy: not in any manifest\n"

WEB_ENTRY: dict[str, Any] = {
    "SANs": ["web", "web.default.svc", "10.0.0.1", "spiffe://concord.test/web"],
    "WorkloadSecretID": "web",
}
DB_ENTRY: dict[str, Any] = {}
ALL_POLICIES = (COORDINATOR_POLICY, WEB_POLICY, DB_POLICY)

LATEST_KEY = "transitions/latest"

# The status codes the refusal tests expect most often.
DENIED = grpc.StatusCode.PERMISSION_DENIED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --- the mock TEE and keys (session scoped: key generation is slow) --------------------------


@dataclass(frozen=True)
class MockTee:
    """One mock TEE directory, its trust anchors and the reference values it matches."""

    directory: Path
    references: dict[str, Any]  # the JSON written to reference-values.json
    anchors: trust.TrustAnchors
    reference_values: ReferenceValues

    def provider(self, policy: bytes, tee: str = "snp") -> MockProvider:
        """A mock CVM launched with ``policy`` (HOST_DATA / MRCONFIGID = its SHA-256)."""
        return MockProvider(self.directory, policy, tee=tee)

    def coordinator_policy(self, policy: bytes = COORDINATOR_POLICY) -> CoordinatorPolicy:
        return CoordinatorPolicy(self.anchors, self.reference_values, sha256(policy))


@pytest.fixture(scope="session", name="mock_tee")
def mock_tee_fixture(tmp_path_factory: pytest.TempPathFactory) -> MockTee:
    directory = tmp_path_factory.mktemp("mock-tee")
    mock_tee_mod.init(directory)
    references = json.loads((directory / mock_tee_mod.REFERENCE_FILE).read_text())
    return MockTee(
        directory=directory,
        references=references,
        anchors=trust.mock(directory),
        reference_values=parse_reference_values(references, "ReferenceValues"),
    )


@dataclass(frozen=True)
class Keys:
    """Workload owner keys (EC P-256) and seed-share owner keys (RSA-2048)."""

    owner: ec.EllipticCurvePrivateKey
    other_owner: ec.EllipticCurvePrivateKey
    seedshare: rsa.RSAPrivateKey
    other_seedshare: rsa.RSAPrivateKey


@pytest.fixture(scope="session", name="keys")
def keys_fixture() -> Keys:
    return Keys(
        owner=ec.generate_private_key(ec.SECP256R1()),
        other_owner=ec.generate_private_key(ec.SECP256R1()),
        seedshare=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        other_seedshare=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


# --- manifests ----------------------------------------------------------------------------------


def manifest_dict(
    tee: MockTee,
    *,
    workloads: Mapping[bytes, Mapping[str, Any]] | None = None,
    owners: Sequence[ec.EllipticCurvePrivateKey] = (),
    seedshare: Sequence[rsa.RSAPrivateKey] = (),
    coordinator: bytes = COORDINATOR_POLICY,
    references: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A manifest admitting the coordinator policy and ``workloads`` (policy → entry)."""
    if workloads is None:
        workloads = {WEB_POLICY: WEB_ENTRY, DB_POLICY: DB_ENTRY}
    policies: dict[str, Any] = {sha256(coordinator).hex(): {"Role": "coordinator"}}
    for policy, entry in workloads.items():
        policies[sha256(policy).hex()] = dict(entry)
    return {
        "Policies": policies,
        "ReferenceValues": dict(references if references is not None else tee.references),
        "WorkloadOwnerKeyDigests": [sha256(public_spki(k)).hex() for k in owners],
        "SeedshareOwnerPubKeys": [rsa_pkcs1_der(k).hex() for k in seedshare],
    }


def manifest_bytes(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, indent=1).encode()


# --- coordinators -------------------------------------------------------------------------------


class Coordinators:
    """Starts in-process coordinators and stops every one of them at teardown."""

    def __init__(self, tee: MockTee, base: Path) -> None:
        self.tee = tee
        self.base = base
        self.running: list[CoordinatorServer] = []
        self._count = 0

    def new_store(self) -> str:
        self._count += 1
        return f"file:{self.base / f'store-{self._count}'}"

    async def start(
        self,
        store: str | None = None,
        *,
        policy: bytes = COORDINATOR_POLICY,
        tee_type: str = "snp",
        etcd_options: Mapping[str, Any] | None = None,
        deployment: str = "default",
        limits: RpcLimits | None = None,
        lifecycle: LifecycleConfig | None = None,
        require_pq: bool = False,
    ) -> CoordinatorServer:
        self._count += 1
        policy_file = self.base / f"coordinator-policy-{self._count}"
        policy_file.write_bytes(policy)
        server = CoordinatorServer(
            ServerConfig(
                store=store or self.new_store(),
                tee=f"mock:{self.tee.directory}",
                mock_policy=policy_file,
                mock_tee_type=tee_type,
                trust_anchors=f"mock:{self.tee.directory}",
                user_addr="127.0.0.1:0",
                mesh_addr="127.0.0.1:0",
                http_addr="127.0.0.1:0",
                issuer_workers=2,
                etcd_options=dict(etcd_options or {}),
                deployment=deployment,
                limits=limits or RpcLimits(),
                lifecycle=lifecycle or LifecycleConfig(),
                require_pq=require_pq,
            )
        )
        await server.start()
        self.running.append(server)
        return server

    async def stop(self, server: CoordinatorServer) -> None:
        self.running.remove(server)
        await server.stop(grace=0)

    async def close(self) -> None:
        for server in list(reversed(self.running)):
            await self.stop(server)


@pytest.fixture(name="coordinators")
async def coordinators_fixture(mock_tee: MockTee, tmp_path: Path) -> AsyncIterator[Coordinators]:
    factory = Coordinators(mock_tee, tmp_path)
    try:
        yield factory
    finally:
        await factory.close()


async def server_certificate(address: str) -> bytes:
    """The DER certificate a coordinator presents (unverified: attestation decides)."""
    return await fetch_certificate(address)


async def connect(
    server: CoordinatorServer,
    port: str = "user",
    *,
    policy: CoordinatorPolicy | None = None,
    tee: MockTee | None = None,
) -> AttestedChannel:
    """An attested channel to ``server``'s user or mesh port, exactly as a client opens it."""
    if policy is None:
        assert tee is not None, "give the expected coordinator policy or the mock TEE"
        policy = tee.coordinator_policy()
    return await AttestedChannel.connect(server.addresses[port], policy, timeout=10)


async def raw_channel(server: CoordinatorServer, port: str = "user", **options: Any) -> Any:
    """A gRPC channel pinned to the server's certificate without attesting and without the
    client's message-size limits (for probing the server's own limits)."""
    address = server.addresses[port]
    der = await server_certificate(address)
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    opts = [("grpc.ssl_target_name_override", SERVER_NAME), *options.items()]
    return grpc.aio.secure_channel(
        address, grpc.ssl_channel_credentials(root_certificates=pem), options=opts
    )


# --- requests -----------------------------------------------------------------------------------


async def expect_status(
    call: Awaitable[Any], code: grpc.StatusCode, *fragments: str
) -> grpc.aio.AioRpcError:
    """Await ``call``; it must fail with ``code`` and a message containing every fragment."""
    try:
        result = await call
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == code, f"expected {code.name}, got {exc.code().name}: {exc.details()}"
        for fragment in fragments:
            assert fragment in (exc.details() or ""), (
                f"{fragment!r} not in status message {exc.details()!r}"
            )
        return exc
    raise AssertionError(f"expected {code.name}, the call succeeded: {result!r}")


DEPLOYMENT_OF: dict[bytes, bytes] = {}
"""Transition hash -> deployment ID, as the helpers saw them (update signatures name the
deployment, DESIGN §12; the helpers look it up from the transition an update builds on)."""


def remember_deployment(resp: pb.SetManifestResponse) -> None:
    DEPLOYMENT_OF[bytes(resp.transition_hash)] = bytes(resp.deployment_id)


async def set_first_manifest(
    chan: AttestedChannel, manifest: bytes, policies: Sequence[bytes]
) -> pb.SetManifestResponse:
    resp: pb.SetManifestResponse = await chan.user.SetManifest(
        pb.SetManifestRequest(manifest=manifest, policies=list(policies)), timeout=20
    )
    remember_deployment(resp)
    return resp


def update_request(
    manifest: bytes,
    policies: Sequence[bytes],
    previous: bytes,
    owner: ec.EllipticCurvePrivateKey | None,
    *,
    sign_with: ec.EllipticCurvePrivateKey | None = None,
    deployment: bytes | None = None,
) -> pb.SetManifestRequest:
    """A signed update of the manifest history from ``previous``, in ``deployment`` (by default
    the one the helpers saw ``previous`` in; all zeros when unknown)."""
    # A malformed ``previous`` (refusal tests) still gets a well-formed signature over something.
    new_hash = transition_hash(sha256(manifest), previous if len(previous) == 32 else bytes(32))
    if deployment is None:
        deployment = DEPLOYMENT_OF.get(bytes(previous), bytes(32))
    DEPLOYMENT_OF[new_hash] = deployment  # the newest: equal hashes recur across deployments
    signer = sign_with or owner
    return pb.SetManifestRequest(
        manifest=manifest,
        policies=list(policies),
        previous_transition_hash=previous,
        owner_public_key=public_spki(owner) if owner is not None else b"",
        signature=sign_owner(signer, set_manifest_message(deployment, new_hash)) if signer else b"",
    )


@dataclass
class Joined:
    response: pb.NewMeshCertResponse
    leaf_key: ec.EllipticCurvePrivateKey
    hpke_private: X25519PrivateKey
    token: bytes

    @property
    def chain(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self.response.certificate_chain_pem)


@dataclass
class JoinRequest:
    """What a workload sends; built by :func:`join_request`, tampered with by refusal tests."""

    request: pb.NewMeshCertRequest
    leaf_key: ec.EllipticCurvePrivateKey
    hpke_private: X25519PrivateKey
    token: bytes = field(repr=False)


async def challenge(chan: AttestedChannel) -> bytes:
    resp = await chan.attest.Challenge(pb.ChallengeRequest(), timeout=10)
    return bytes(resp.token)


async def join_request(
    chan: AttestedChannel,
    provider: MockProvider,
    *,
    token: bytes | None = None,
    report_data: bytes | None = None,
) -> JoinRequest:
    """Challenge → evidence over the mesh-cert binding → the NewMeshCert request."""
    if token is None:
        token = await challenge(chan)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_spki = public_spki(leaf_key)
    hpke_private, hpke_public = generate_keypair()
    if report_data is None:
        report_data = mesh_cert_report_data(leaf_spki, hpke_public, token)
    evidence = (await asyncio.to_thread(provider.evidence, report_data)).encode()
    request = pb.NewMeshCertRequest(
        evidence=evidence, leaf_public_key=leaf_spki, hpke_public_key=hpke_public, token=token
    )
    return JoinRequest(request, leaf_key, hpke_private, token)


async def join(chan: AttestedChannel, provider: MockProvider) -> Joined:
    """The workload side of DESIGN §7: Challenge → evidence → NewMeshCert."""
    req = await join_request(chan, provider)
    resp = await chan.mesh.NewMeshCert(req.request, timeout=20)
    return Joined(resp, req.leaf_key, req.hpke_private, req.token)


async def peer_recover_request(
    chan: AttestedChannel, provider: MockProvider, *, deployment: str | None = None
) -> tuple[pb.MeshRecoverRequest, X25519PrivateKey]:
    """A peer-recovery request whose evidence binds ``deployment`` (default: the one the
    coordinator attested, as a requester of the same deployment would)."""
    token = await challenge(chan)
    private, public = generate_keypair()
    name = chan.attestation.deployment if deployment is None else deployment
    report_data = peer_recover_report_data(public, token, name)
    evidence = (await asyncio.to_thread(provider.evidence, report_data)).encode()
    return pb.MeshRecoverRequest(evidence=evidence, hpke_public_key=public, token=token), private


async def user_recover_request(
    chan: AttestedChannel,
    seed: bytes,
    salt: bytes,
    owner: rsa.RSAPrivateKey,
    *,
    force: bool = False,
    expected: bytes | None = None,
) -> pb.UserRecoverRequest:
    """Seed and salt sealed to the attested coordinator's HPKE key, signed by a share owner,
    naming ``expected`` (default: the store's latest, as GetHistory reports it)."""
    if expected is None:
        history = await chan.user.GetHistory(pb.GetHistoryRequest(), timeout=20)
        expected = bytes(history.latest_transition_hash) or bytes(32)
    sealed = seal(
        chan.attestation.hpke_public_key,
        PURPOSE_USER_RECOVER,
        UserRecoverySecret(seed=seed, salt=salt).encode(),
    )
    nonce = os.urandom(32)
    return pb.UserRecoverRequest(
        sealed_secret=sealed,
        seedshare_owner_public_key=rsa_pkcs1_der(owner),
        signature=sign_seedshare(owner, recover_message(nonce, sealed, expected)),
        nonce=nonce,
        force=force,
        expected_latest_transition_hash=expected,
    )


def open_seed_share(document: bytes, owner: rsa.RSAPrivateKey) -> tuple[bytes, bytes]:
    """(seed, salt) from a seed-share document, as the seed-share owner would."""
    doc = SeedShareDocument.from_json(document)
    share = doc.share_for(rsa_pkcs1_der(owner))
    assert share is not None, "no share for this owner"
    return decrypt_seed_share(share, owner), doc.salt


# --- observing a coordinator --------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What a refusal must leave untouched: the store's ``latest`` and the issued counter."""

    latest: bytes | None
    issued: float
    transition: bytes | None


async def snapshot(server: CoordinatorServer) -> Snapshot:
    assert server.store is not None and server.guard is not None
    latest = await server.store.get(LATEST_KEY) if await server.store.has(LATEST_KEY) else None
    state = server.guard.current()
    return Snapshot(
        latest=bytes(latest) if latest is not None else None,
        issued=issued_count(server),
        transition=state.transition.hash if state is not None else None,
    )


def issued_count(server: CoordinatorServer) -> float:
    total = 0.0
    for tee in ("snp", "tdx"):
        value = server.metrics.registry.get_sample_value(
            "concord_certificates_issued_total", {"tee": tee}
        )
        total += value or 0.0
    return total


async def http_get(address: str, path: str) -> tuple[int, bytes]:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem_der(pem: bytes) -> bytes:
    return der(x509.load_pem_x509_certificate(pem))


@dataclass
class Deployment:
    """A coordinator after its first manifest, with attested user and mesh channels."""

    server: CoordinatorServer
    user: AttestedChannel
    mesh: AttestedChannel
    manifest: bytes
    first: pb.SetManifestResponse
    seed: bytes = field(repr=False)
    salt: bytes = field(repr=False)

    @property
    def secrets_hex(self) -> list[str]:
        """Secret values that must never appear in a status message or a log record."""
        from coordinator.core.seedengine import SeedEngine

        engine = SeedEngine(self.seed, self.salt)
        return [self.seed.hex(), engine.pod_state_seed.hex(), engine.workload_secret("web").hex()]

    async def close(self) -> None:
        await self.user.close()
        await self.mesh.close()


async def deploy(
    coordinators: Coordinators,
    tee: MockTee,
    keys: Keys,
    *,
    store: str | None = None,
    owners: Sequence[ec.EllipticCurvePrivateKey] | None = None,
    etcd_options: Mapping[str, Any] | None = None,
    deployment: str = "default",
) -> Deployment:
    server = await coordinators.start(store, etcd_options=etcd_options, deployment=deployment)
    user = await connect(server, "user", tee=tee)
    manifest = manifest_bytes(
        manifest_dict(
            tee, owners=[keys.owner] if owners is None else owners, seedshare=[keys.seedshare]
        )
    )
    first = await set_first_manifest(user, manifest, ALL_POLICIES)
    seed, salt = open_seed_share(first.seed_share_document, keys.seedshare)
    mesh = await connect(server, "mesh", tee=tee)
    return Deployment(server, user, mesh, manifest, first, seed, salt)


@pytest.fixture(name="deployed")
async def deployed_fixture(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys
) -> AsyncIterator[Deployment]:
    dep = await deploy(coordinators, mock_tee, keys)
    try:
        yield dep
    finally:
        await dep.close()


async def observe(dep: Deployment) -> tuple[Snapshot, bytes]:
    """The store's ``latest``, the installed transition, the issued counter and the whole
    manifest history as served: what every refusal must leave exactly as it was."""
    resp = await dep.user.user.GetManifests(pb.GetManifestsRequest(), timeout=10)
    return await snapshot(dep.server), resp.SerializeToString(deterministic=True)


def attestation_failures(server: CoordinatorServer) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in server.metrics.registry.collect():
        if metric.name != "concord_attestation_failures":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["reason"]] = sample.value
    return out
