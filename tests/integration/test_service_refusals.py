"""Every refusal of DESIGN §7 over real gRPC/TLS: the exact status code, a message naming the
reason, and nothing changed (history, installed State, issued counter); no secret in any
message."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.core.sealing import PURPOSE_PEER_RECOVER, PeerSecrets, open_sealed
from tests.integration.service_helpers import (  # noqa: F401  (fixtures)
    ALL_POLICIES,
    COORDINATOR_POLICY,
    DB_POLICY,
    DENIED,
    INVALID,
    PRECONDITION,
    ROGUE_POLICY,
    WEB_POLICY,
    Coordinators,
    Deployment,
    Keys,
    MockTee,
    attestation_failures,
    connect,
    coordinators_fixture,
    deployed_fixture,
    expect_status,
    join,
    join_request,
    keys_fixture,
    manifest_bytes,
    manifest_dict,
    mock_tee_fixture,
    observe,
    peer_recover_request,
    raw_channel,
    set_first_manifest,
    sha256,
    snapshot,
    update_request,
)

pytestmark = pytest.mark.timeout(60)


class Refusals:
    """Collects status messages so a test can check that none of them carries a secret."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.messages: list[str] = []

    async def expect(self, call: object, code: grpc.StatusCode, *fragments: str) -> str:
        exc = await expect_status(call, code, *fragments)  # type: ignore[arg-type]
        message = exc.details() or ""
        self.messages.append(message)
        return message

    def check_no_secrets(self) -> None:
        for message in self.messages:
            for secret in self.dep.secrets_hex:
                assert secret not in message


@pytest.fixture
async def refusals(deployed: Deployment) -> AsyncIterator[Refusals]:
    r = Refusals(deployed)
    yield r
    r.check_no_secrets()


# --- MeshAPI.NewMeshCert -----------------------------------------------------------------------


async def test_policy_not_in_manifest(
    deployed: Deployment, refusals: Refusals, mock_tee: MockTee
) -> None:
    before = await observe(deployed)
    await refusals.expect(
        join(deployed.mesh, mock_tee.provider(ROGUE_POLICY)),
        DENIED,
        sha256(ROGUE_POLICY).hex(),
        "not in the manifest",
    )
    assert await observe(deployed) == before


async def test_wrong_measurement(
    deployed: Deployment, refusals: Refusals, mock_tee: MockTee
) -> None:
    provider = mock_tee.provider(WEB_POLICY)
    provider.measurement = os.urandom(48)  # a CVM launched with another image
    before = await observe(deployed)
    failures = attestation_failures(deployed.server)
    await refusals.expect(join(deployed.mesh, provider), DENIED, "evidence rejected")
    assert await observe(deployed) == before
    after = attestation_failures(deployed.server)
    assert sum(after.values()) == sum(failures.values()) + 1


async def test_wrong_measurement_tdx(
    deployed: Deployment, refusals: Refusals, mock_tee: MockTee
) -> None:
    provider = mock_tee.provider(WEB_POLICY, "tdx")
    provider.measurement = os.urandom(48)
    before = await observe(deployed)
    await refusals.expect(join(deployed.mesh, provider), DENIED, "evidence rejected")
    assert await observe(deployed) == before


async def test_evidence_bound_to_other_report_data(
    deployed: Deployment, refusals: Refusals, mock_tee: MockTee
) -> None:
    provider = mock_tee.provider(WEB_POLICY)
    before = await observe(deployed)
    # Evidence over arbitrary report data.
    req = await join_request(deployed.mesh, provider, report_data=os.urandom(64))
    await refusals.expect(deployed.mesh.mesh.NewMeshCert(req.request), DENIED, "evidence rejected")
    # Valid evidence, but the leaf key is swapped for the attacker's.
    req = await join_request(deployed.mesh, provider)
    attacker = ec.generate_private_key(ec.SECP256R1())
    from coordinator.core.authz import public_spki

    req.request.leaf_public_key = public_spki(attacker)
    await refusals.expect(deployed.mesh.mesh.NewMeshCert(req.request), DENIED, "evidence rejected")
    # Valid evidence, but the secret would be sealed to the attacker's HPKE key.
    req = await join_request(deployed.mesh, provider)
    req.request.hpke_public_key = os.urandom(32)
    await refusals.expect(deployed.mesh.mesh.NewMeshCert(req.request), DENIED, "evidence rejected")
    # Evidence for peer recovery replayed as mesh-cert evidence.
    recover, _ = await peer_recover_request(deployed.mesh, provider)
    req = await join_request(deployed.mesh, provider, token=recover.token)
    req.request.evidence = recover.evidence
    await refusals.expect(deployed.mesh.mesh.NewMeshCert(req.request), DENIED, "evidence rejected")
    assert await observe(deployed) == before


async def test_token_expired(deployed: Deployment, refusals: Refusals, mock_tee: MockTee) -> None:
    coord = deployed.server.coord
    assert coord is not None
    req = await join_request(deployed.mesh, mock_tee.provider(WEB_POLICY))
    real_clock = coord.clock
    before = await observe(deployed)
    coord.clock = lambda: real_clock() + timedelta(seconds=61)
    try:
        await refusals.expect(
            deployed.mesh.mesh.NewMeshCert(req.request), PRECONDITION, "expired", "re-challenge"
        )
        assert await snapshot(deployed.server) == before[0]
    finally:
        coord.clock = real_clock
    # Just inside its lifetime the same request is accepted.
    coord.clock = lambda: real_clock() + timedelta(seconds=55)
    try:
        resp = await deployed.mesh.mesh.NewMeshCert(req.request)
    finally:
        coord.clock = real_clock
    assert resp.certificate_chain_pem
    assert await observe(deployed) != before


async def test_token_tampered_or_foreign(
    deployed: Deployment,
    refusals: Refusals,
    mock_tee: MockTee,
    coordinators: Coordinators,
    keys: Keys,
) -> None:
    provider = mock_tee.provider(WEB_POLICY)
    before = await observe(deployed)
    token = bytearray(await _token(deployed))
    token[-1] ^= 1
    req = await join_request(deployed.mesh, provider, token=bytes(token))
    await refusals.expect(
        deployed.mesh.mesh.NewMeshCert(req.request), DENIED, "not issued by this deployment"
    )
    req.request.token = b""
    await refusals.expect(deployed.mesh.mesh.NewMeshCert(req.request), INVALID, "token")
    # A token of another deployment (other seed) with evidence bound to it.
    other = await coordinators.start()
    other_user = await connect(other, "user", tee=mock_tee)
    await set_first_manifest(other_user, deployed.manifest, ALL_POLICIES)
    foreign = (await other_user.attest.Challenge(pb.ChallengeRequest())).token
    await other_user.close()
    req = await join_request(deployed.mesh, provider, token=foreign)
    await refusals.expect(
        deployed.mesh.mesh.NewMeshCert(req.request), DENIED, "not issued by this deployment"
    )
    assert await observe(deployed) == before


async def _token(dep: Deployment) -> bytes:
    return bytes((await dep.mesh.attest.Challenge(pb.ChallengeRequest())).token)


async def test_token_from_another_transition(
    deployed: Deployment, refusals: Refusals, mock_tee: MockTee, keys: Keys
) -> None:
    req = await join_request(deployed.mesh, mock_tee.provider(WEB_POLICY))
    m2 = manifest_bytes(
        manifest_dict(
            mock_tee,
            owners=[keys.owner],
            seedshare=[keys.seedshare],
            workloads={WEB_POLICY: {"SANs": ["web-v2"], "WorkloadSecretID": "web"}},
        )
    )
    await deployed.user.user.SetManifest(
        update_request(m2, [], deployed.first.transition_hash, keys.owner)
    )
    before = await observe(deployed)
    await refusals.expect(
        deployed.mesh.mesh.NewMeshCert(req.request), PRECONDITION, "another transition"
    )
    assert await observe(deployed) == before
    # Re-challenging works.
    joined = await join(deployed.mesh, mock_tee.provider(WEB_POLICY))
    assert joined.chain[0].subject.rfc4514_string() == "CN=web-v2"


async def test_malformed_mesh_requests(
    deployed: Deployment, refusals: Refusals, mock_tee: MockTee
) -> None:
    before = await observe(deployed)
    req = await join_request(deployed.mesh, mock_tee.provider(WEB_POLICY))
    bad = pb.NewMeshCertRequest()
    bad.CopyFrom(req.request)
    bad.hpke_public_key = b"\x01" * 31
    await refusals.expect(deployed.mesh.mesh.NewMeshCert(bad), INVALID, "hpke_public_key")
    bad.CopyFrom(req.request)
    bad.leaf_public_key = b"not a key"
    await refusals.expect(deployed.mesh.mesh.NewMeshCert(bad), INVALID, "leaf_public_key")
    bad.CopyFrom(req.request)
    bad.evidence = b"\xa0"  # an empty CBOR map
    await refusals.expect(deployed.mesh.mesh.NewMeshCert(bad), INVALID, "evidence rejected")
    # Evidence above the envelope's size limit is refused before it is parsed.
    bad.evidence = b"\x00" * (1024 * 1024 + 1)
    await refusals.expect(deployed.mesh.mesh.NewMeshCert(bad), INVALID, "limit")
    assert await observe(deployed) == before


# --- MeshAPI.Recover ---------------------------------------------------------------------------


async def test_peer_recover_needs_coordinator_role(
    deployed: Deployment, refusals: Refusals, mock_tee: MockTee
) -> None:
    before = await observe(deployed)
    for policy in (WEB_POLICY, DB_POLICY):
        req, _ = await peer_recover_request(deployed.mesh, mock_tee.provider(policy))
        await refusals.expect(deployed.mesh.mesh.Recover(req), DENIED, "role coordinator")
    req, _ = await peer_recover_request(deployed.mesh, mock_tee.provider(ROGUE_POLICY))
    await refusals.expect(deployed.mesh.mesh.Recover(req), DENIED)
    # Mesh-cert evidence does not pass as peer-recovery evidence, even from a coordinator.
    join_req = await join_request(deployed.mesh, mock_tee.provider(COORDINATOR_POLICY))
    req, _ = await peer_recover_request(deployed.mesh, mock_tee.provider(COORDINATOR_POLICY))
    req.evidence = join_req.request.evidence
    req.token = join_req.token
    await refusals.expect(deployed.mesh.mesh.Recover(req), DENIED, "evidence rejected")
    assert await observe(deployed) == before
    # The coordinator policy itself is served, sealed to its key only.
    req, private = await peer_recover_request(deployed.mesh, mock_tee.provider(COORDINATOR_POLICY))
    resp = await deployed.mesh.mesh.Recover(req)
    secrets = PeerSecrets.decode(open_sealed(private, PURPOSE_PEER_RECOVER, resp.sealed_secrets))
    assert secrets.seed == deployed.seed and secrets.salt == deployed.salt
    assert secrets.latest_transition_hash == deployed.first.transition_hash
    assert secrets.manifest_hash == sha256(deployed.manifest)


# --- Attestation -------------------------------------------------------------------------------


async def test_attest_nonce_size(deployed: Deployment, refusals: Refusals) -> None:
    for chan in (deployed.user, deployed.mesh):
        for size in (0, 31, 33):
            await refusals.expect(
                chan.attest.Attest(pb.AttestRequest(nonce=b"\x00" * size)), INVALID, "nonce"
            )


async def test_challenge_before_first_manifest(
    coordinators: Coordinators, mock_tee: MockTee
) -> None:
    server = await coordinators.start()
    for port in ("user", "mesh"):
        chan = await connect(server, port, tee=mock_tee)
        await expect_status(
            chan.attest.Challenge(pb.ChallengeRequest()), PRECONDITION, "not initialized"
        )
        await chan.close()
    mesh = await connect(server, "mesh", tee=mock_tee)
    # Without a seed there is no token; a made-up one is refused as "not initialized" first.
    await expect_status(
        mesh.mesh.NewMeshCert(pb.NewMeshCertRequest(token=b"x" * 40)),
        PRECONDITION,
        "not initialized",
    )
    await expect_status(mesh.mesh.Recover(pb.MeshRecoverRequest()), PRECONDITION, "not initialized")
    await mesh.close()
    user = await connect(server, "user", tee=mock_tee)
    await expect_status(
        user.user.GetManifests(pb.GetManifestsRequest()), PRECONDITION, "not initialized"
    )
    await user.close()
    assert (await snapshot(server)).latest is None


# --- UserAPI.SetManifest -----------------------------------------------------------------------


def _m2(tee: MockTee, keys: Keys, **kwargs: object) -> bytes:
    doc = manifest_dict(tee, owners=[keys.owner], seedshare=[keys.seedshare], **kwargs)  # type: ignore[arg-type]
    doc["Policies"][sha256(WEB_POLICY).hex()]["SANs"] = ["web-updated"]
    return manifest_bytes(doc)


async def test_update_authorisation(
    deployed: Deployment, refusals: Refusals, mock_tee: MockTee, keys: Keys
) -> None:
    m2 = _m2(mock_tee, keys)
    prev = deployed.first.transition_hash
    user = deployed.user.user
    before = await observe(deployed)
    # No owner key at all (as a second "first" manifest would be sent): TOFU happens once.
    await refusals.expect(
        user.SetManifest(pb.SetManifestRequest(manifest=m2)), DENIED, "owner_public_key"
    )
    await refusals.expect(
        user.SetManifest(update_request(m2, [], prev, None)), DENIED, "owner_public_key"
    )
    # A key that is not a workload owner, signing correctly with itself.
    await refusals.expect(
        user.SetManifest(update_request(m2, [], prev, keys.other_owner)), DENIED, "owner"
    )
    # The owner's public key, but the signature is someone else's.
    await refusals.expect(
        user.SetManifest(update_request(m2, [], prev, keys.owner, sign_with=keys.other_owner)),
        DENIED,
        "signature",
    )
    # The owner's signature over another manifest.
    signed_other = update_request(_m2(mock_tee, keys, coordinator=b"x"), [], prev, keys.owner)
    replay = update_request(m2, [], prev, keys.owner)
    replay.signature = signed_other.signature
    await refusals.expect(user.SetManifest(replay), DENIED, "signature")
    assert await observe(deployed) == before
    # And the real owner succeeds.
    resp = await user.SetManifest(update_request(m2, [], prev, keys.owner))
    assert resp.root_ca_pem == deployed.first.root_ca_pem


async def test_update_wrong_previous_transition(
    deployed: Deployment, refusals: Refusals, mock_tee: MockTee, keys: Keys
) -> None:
    m2 = _m2(mock_tee, keys)
    before = await observe(deployed)
    for previous in (os.urandom(32), bytes(32), b""):
        await refusals.expect(
            deployed.user.user.SetManifest(update_request(m2, [], previous, keys.owner)),
            PRECONDITION,
            "concurrent update",
        )
    assert await observe(deployed) == before
    # A client that lost the race (someone else updated first) is refused the same way.
    await deployed.user.user.SetManifest(
        update_request(m2, [], deployed.first.transition_hash, keys.owner)
    )
    after = await observe(deployed)
    m3 = _m2(mock_tee, keys, workloads={WEB_POLICY: {}})
    await refusals.expect(
        deployed.user.user.SetManifest(
            update_request(m3, [], deployed.first.transition_hash, keys.owner)
        ),
        PRECONDITION,
        "concurrent update",
    )
    assert await observe(deployed) == after


async def test_update_cannot_change_seedshare_owners(
    deployed: Deployment, refusals: Refusals, mock_tee: MockTee, keys: Keys
) -> None:
    prev = deployed.first.transition_hash
    before = await observe(deployed)
    for seedshare in ([], [keys.other_seedshare], [keys.seedshare, keys.other_seedshare]):
        m2 = manifest_bytes(manifest_dict(mock_tee, owners=[keys.owner], seedshare=seedshare))
        await refusals.expect(
            deployed.user.user.SetManifest(update_request(m2, [], prev, keys.owner)),
            INVALID,
            "SeedshareOwnerPubKeys",
        )
    assert await observe(deployed) == before


async def test_updates_disabled(coordinators: Coordinators, mock_tee: MockTee, keys: Keys) -> None:
    from tests.integration.service_helpers import deploy

    dep = await deploy(coordinators, mock_tee, keys, owners=[])
    refusals = Refusals(dep)
    before = await observe(dep)
    m2 = manifest_bytes(manifest_dict(mock_tee, owners=[keys.owner], seedshare=[keys.seedshare]))
    for owner in (keys.owner, None):
        await refusals.expect(
            dep.user.user.SetManifest(update_request(m2, [], dep.first.transition_hash, owner)),
            DENIED,
            "updates are disabled",
        )
    assert await observe(dep) == before
    refusals.check_no_secrets()
    await dep.close()


def _malformed(tee: MockTee, k: Keys) -> list[tuple[bytes, str]]:
    """(manifest bytes, expected field path in the message)."""
    good = manifest_dict(tee, owners=[k.owner], seedshare=[k.seedshare])
    web = sha256(WEB_POLICY).hex()
    cases: list[tuple[bytes, str]] = [
        (b"null", "$"),
        (b"[]", "$"),
        (b"{not json", "$"),
        (b"", "$"),
    ]

    def variant(path: str, change: object) -> None:
        doc = json.loads(json.dumps(good))
        change(doc)  # type: ignore[operator]
        cases.append((manifest_bytes(doc), path))

    variant("Extra", lambda d: d.update(Extra=1))
    variant("Policies", lambda d: d.pop("Policies"))
    variant(f"Policies.{web.upper()[:8]}", lambda d: d["Policies"].update({web.upper(): {}}))
    variant(f"Policies.{web}.SANs[1]", lambda d: d["Policies"][web].update(SANs=["ok", 5]))
    variant(
        f"Policies.{sha256(DB_POLICY).hex()}.Role",
        lambda d: d["Policies"].update({sha256(DB_POLICY).hex(): {"Role": "coordinator"}}),
    )
    variant("WorkloadOwnerKeyDigests[0]", lambda d: d.update(WorkloadOwnerKeyDigests=["zz"]))
    variant("SeedshareOwnerPubKeys[0]", lambda d: d.update(SeedshareOwnerPubKeys=["00ff"]))
    variant("ReferenceValues", lambda d: d.update(ReferenceValues=[]))
    return cases


async def test_malformed_manifest_uninitialised(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys
) -> None:
    server = await coordinators.start()
    user = await connect(server, "user", tee=mock_tee)
    for raw, path in _malformed(mock_tee, keys):
        exc = await expect_status(
            set_first_manifest(user, raw, [COORDINATOR_POLICY]), INVALID, path
        )
        assert (exc.details() or "").startswith(path[:4]), exc.details()
    # A valid manifest with a policy it does not reference.
    good = manifest_bytes(manifest_dict(mock_tee))
    await expect_status(
        set_first_manifest(user, good, [ROGUE_POLICY, *ALL_POLICIES]), INVALID, "policies[0]"
    )
    # A first manifest must not claim a previous transition.
    await expect_status(
        user.user.SetManifest(
            pb.SetManifestRequest(manifest=good, previous_transition_hash=os.urandom(32))
        ),
        PRECONDITION,
        "concurrent update",
    )
    assert (await snapshot(server)).latest is None
    await expect_status(
        user.user.GetManifests(pb.GetManifestsRequest()), PRECONDITION, "not initialized"
    )
    assert server.store is not None
    assert await server.store.has("transitions/latest") is False
    await user.close()


async def test_malformed_manifest_update(
    deployed: Deployment, refusals: Refusals, mock_tee: MockTee, keys: Keys
) -> None:
    before = await observe(deployed)
    prev = deployed.first.transition_hash
    for raw, path in _malformed(mock_tee, keys):
        await refusals.expect(
            deployed.user.user.SetManifest(update_request(raw, [], prev, keys.owner)),
            INVALID,
            path,
        )
    assert await observe(deployed) == before


# --- message size ------------------------------------------------------------------------------


async def test_oversized_messages(
    deployed: Deployment, refusals: Refusals, mock_tee: MockTee
) -> None:
    before = await observe(deployed)
    huge = b"x" * (4 * 1024 * 1024 + 1)
    # The client refuses to send it...
    await refusals.expect(
        deployed.user.user.SetManifest(pb.SetManifestRequest(manifest=huge)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    # ...and the server refuses to receive it from a client without that limit.
    chan = await raw_channel(deployed.server, "mesh", **{"grpc.max_send_message_length": -1})
    from coordinator.api.v1 import concord_pb2_grpc as pb_grpc

    stub = pb_grpc.MeshAPIStub(chan)
    await refusals.expect(
        stub.NewMeshCert(pb.NewMeshCertRequest(evidence=huge), timeout=20),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    user_chan = await raw_channel(deployed.server, "user", **{"grpc.max_send_message_length": -1})
    user_stub = pb_grpc.UserAPIStub(user_chan)
    await refusals.expect(
        user_stub.SetManifest(pb.SetManifestRequest(manifest=huge), timeout=20),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    await chan.close()
    await user_chan.close()
    assert await observe(deployed) == before


async def test_policy_documents_required(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys
) -> None:
    """Every referenced policy is sent or already stored, so the history stays verifiable."""
    server = await coordinators.start()
    user = await connect(server, "user", tee=mock_tee)
    manifest = manifest_bytes(manifest_dict(mock_tee, owners=[keys.owner]))
    await expect_status(
        set_first_manifest(user, manifest, [COORDINATOR_POLICY, WEB_POLICY]),
        INVALID,
        f"Policies.{sha256(DB_POLICY).hex()}",
    )
    assert (await snapshot(server)).latest is None
    first = await set_first_manifest(user, manifest, ALL_POLICIES)
    # An update adding a new policy must bring its document; known ones may be left out.
    new_policy = b"concord test policy: new workload\n"
    m2 = manifest_bytes(
        manifest_dict(
            mock_tee,
            owners=[keys.owner],
            workloads={WEB_POLICY: {}, DB_POLICY: {}, new_policy: {}},
        )
    )
    before = await snapshot(server)
    await expect_status(
        user.user.SetManifest(update_request(m2, [], first.transition_hash, keys.owner)),
        INVALID,
        f"Policies.{sha256(new_policy).hex()}",
    )
    assert await snapshot(server) == before
    await user.user.SetManifest(update_request(m2, [new_policy], first.transition_hash, keys.owner))
    history = await user.user.GetManifests(pb.GetManifestsRequest())
    assert sorted(history.policies) == sorted([*ALL_POLICIES, new_policy])
    await user.close()


async def test_concurrent_first_manifests(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys
) -> None:
    """Two owners race for trust on first use: exactly one wins, the other is told so."""
    server = await coordinators.start()
    chans = [await connect(server, "user", tee=mock_tee) for _ in range(2)]
    manifests = [
        manifest_bytes(manifest_dict(mock_tee, owners=[k], seedshare=[keys.seedshare]))
        for k in (keys.owner, keys.other_owner)
    ]
    results = await asyncio.gather(
        *(set_first_manifest(c, m, ALL_POLICIES) for c, m in zip(chans, manifests, strict=True)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, pb.SetManifestResponse)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert losers[0].code() in (PRECONDITION, DENIED), losers[0]
    history = await chans[0].user.GetManifests(pb.GetManifestsRequest())
    assert len(history.manifests) == 1
    assert history.latest_transition_hash == winners[0].transition_hash
    for chan in chans:
        await chan.close()
