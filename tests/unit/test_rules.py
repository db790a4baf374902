"""The domain rules of the user and mesh APIs, without sockets: each refusal path raises its
typed error with its stable reason and status, and the accepted paths return."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from coordinator.core import rules
from coordinator.core.authz import (
    SignatureError,
    public_spki,
    recover_message,
    rsa_pkcs1_der,
    set_manifest_message,
    sign_owner,
    sign_seedshare,
)
from coordinator.core.history import ZERO_HASH, transition_hash
from coordinator.core.manifest import Manifest
from coordinator.errors import ConcordError, Status
from coordinator.store.base import ConcurrentUpdate

COORD_POLICY = b"rules test: coordinator"
WEB_POLICY = b"rules test: web"
CURRENT_HASH = hashlib.sha256(b"current transition").digest()
DEPLOYMENT = hashlib.sha256(b"root CA SPKI of this deployment").digest()
EXPECTED = hashlib.sha256(b"the latest transition the owner recovers").digest()


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@pytest.fixture(scope="module")
def owner() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def stranger() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def seed_owners() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(65537, 2048) for _ in range(2)]


def make_manifest(
    owners: list[ec.EllipticCurvePrivateKey],
    seed_owners: list[rsa.RSAPrivateKey],
    *,
    extra: str = "",
) -> Manifest:
    doc: dict[str, Any] = {
        "Policies": {
            sha(COORD_POLICY).hex(): {"Role": "coordinator"},
            sha(WEB_POLICY).hex(): {"SANs": ["web"], "WorkloadSecretID": "web" + extra},
        },
        "ReferenceValues": {"snp": [], "tdx": []},
        "WorkloadOwnerKeyDigests": [sha(public_spki(k)).hex() for k in owners],
        "SeedshareOwnerPubKeys": [rsa_pkcs1_der(k.public_key()).hex() for k in seed_owners],
    }
    return Manifest.parse(json.dumps(doc).encode())


def signed_update(
    key: ec.EllipticCurvePrivateKey, new: Manifest, previous: bytes = CURRENT_HASH
) -> rules.UpdateRequest:
    signature = sign_owner(
        key, set_manifest_message(DEPLOYMENT, transition_hash(new.digest, previous))
    )
    return rules.UpdateRequest(new.raw, previous, public_spki(key), signature)


def refused(err: ConcordError, reason: str, status: Status) -> None:
    assert err.reason == reason
    assert err.status is status


# --- shared ----------------------------------------------------------------------------------


def test_require_size() -> None:
    assert rules.require_size(b"x" * 32, 32, "nonce") == b"x" * 32
    with pytest.raises(rules.FieldSizeInvalid) as exc:
        rules.require_size(b"x" * 31, 32, "nonce")
    refused(exc.value, "invalid_field_size", Status.INVALID_ARGUMENT)
    assert str(exc.value) == "nonce: must be 32 bytes, got 31"


def test_missing_policies_lists_only_unsent_ones(
    owner: ec.EllipticCurvePrivateKey, seed_owners: list[rsa.RSAPrivateKey]
) -> None:
    m = make_manifest([owner], seed_owners)
    assert set(rules.missing_policies(m, [])) == {sha(COORD_POLICY).hex(), sha(WEB_POLICY).hex()}
    assert rules.missing_policies(m, [WEB_POLICY, b"unrelated"]) == [sha(COORD_POLICY).hex()]
    assert rules.missing_policies(m, [WEB_POLICY, COORD_POLICY]) == []
    err = rules.PolicyDocumentMissing("ab" * 32)
    assert (err.reason, err.status) == ("policy_document_missing", Status.INVALID_ARGUMENT)


# --- first manifest --------------------------------------------------------------------------


def test_first_manifest_builds_on_nothing() -> None:
    rules.check_first_manifest(b"")
    rules.check_first_manifest(ZERO_HASH)
    with pytest.raises(ConcurrentUpdate) as exc:
        rules.check_first_manifest(CURRENT_HASH)
    refused(exc.value, "concurrent_update", Status.FAILED_PRECONDITION)


def test_first_manifest_must_name_this_coordinator(
    owner: ec.EllipticCurvePrivateKey, seed_owners: list[rsa.RSAPrivateKey]
) -> None:
    m = make_manifest([owner], seed_owners)
    rules.require_admits_coordinator(m, sha(COORD_POLICY))
    with pytest.raises(rules.CoordinatorPolicyNotInManifest) as exc:
        rules.require_admits_coordinator(m, sha(WEB_POLICY))
    refused(exc.value, "coordinator_policy_not_in_manifest", Status.INVALID_ARGUMENT)


# --- update ----------------------------------------------------------------------------------


def test_update_by_an_owner_is_accepted(
    owner: ec.EllipticCurvePrivateKey, seed_owners: list[rsa.RSAPrivateKey]
) -> None:
    current = make_manifest([owner], seed_owners)
    new = make_manifest([owner], seed_owners, extra="-v2")
    rules.authorise_update(current, CURRENT_HASH, signed_update(owner, new), DEPLOYMENT)
    rules.check_update_manifest(current, new)


def test_update_disabled_without_owners(
    owner: ec.EllipticCurvePrivateKey, seed_owners: list[rsa.RSAPrivateKey]
) -> None:
    current = make_manifest([], seed_owners)
    new = make_manifest([owner], seed_owners)
    with pytest.raises(rules.UpdatesDisabled) as exc:
        rules.authorise_update(current, CURRENT_HASH, signed_update(owner, new), DEPLOYMENT)
    refused(exc.value, "updates_disabled", Status.PERMISSION_DENIED)


def test_update_owner_is_checked_against_the_current_manifest(
    owner: ec.EllipticCurvePrivateKey,
    stranger: ec.EllipticCurvePrivateKey,
    seed_owners: list[rsa.RSAPrivateKey],
) -> None:
    current = make_manifest([owner], seed_owners)
    # The new manifest lists the stranger: an update cannot authorise itself.
    new = make_manifest([owner, stranger], seed_owners)
    with pytest.raises(rules.NotWorkloadOwner) as exc:
        rules.authorise_update(current, CURRENT_HASH, signed_update(stranger, new), DEPLOYMENT)
    refused(exc.value, "not_workload_owner", Status.PERMISSION_DENIED)
    empty_key = rules.UpdateRequest(new.raw, CURRENT_HASH, b"", b"")
    with pytest.raises(rules.NotWorkloadOwner):
        rules.authorise_update(current, CURRENT_HASH, empty_key, DEPLOYMENT)


def test_update_on_an_old_transition_is_concurrent(
    owner: ec.EllipticCurvePrivateKey, seed_owners: list[rsa.RSAPrivateKey]
) -> None:
    current = make_manifest([owner], seed_owners)
    new = make_manifest([owner], seed_owners, extra="-v2")
    stale_view = signed_update(owner, new, previous=sha(b"an older transition"))
    with pytest.raises(ConcurrentUpdate) as exc:
        rules.authorise_update(current, CURRENT_HASH, stale_view, DEPLOYMENT)
    refused(exc.value, "concurrent_update", Status.FAILED_PRECONDITION)
    assert exc.value.public_message().startswith("concurrent update: ")


def test_update_may_not_change_seedshare_owners(
    owner: ec.EllipticCurvePrivateKey, seed_owners: list[rsa.RSAPrivateKey]
) -> None:
    current = make_manifest([owner], seed_owners)
    new = make_manifest([owner], seed_owners[:1])
    rules.authorise_update(current, CURRENT_HASH, signed_update(owner, new), DEPLOYMENT)
    with pytest.raises(rules.SeedshareOwnersChanged) as exc:
        rules.check_update_manifest(current, new)
    refused(exc.value, "seedshare_owners_changed", Status.INVALID_ARGUMENT)


def test_update_signature_must_cover_the_new_transition(
    owner: ec.EllipticCurvePrivateKey, seed_owners: list[rsa.RSAPrivateKey]
) -> None:
    current = make_manifest([owner], seed_owners)
    new = make_manifest([owner], seed_owners, extra="-v2")
    other = make_manifest([owner], seed_owners, extra="-v3")
    signed_for_other = signed_update(owner, other)
    request = rules.UpdateRequest(
        new.raw, CURRENT_HASH, signed_for_other.owner_public_key, signed_for_other.signature
    )
    with pytest.raises(SignatureError) as exc:
        rules.authorise_update(current, CURRENT_HASH, request, DEPLOYMENT)
    refused(exc.value, "signature_invalid", Status.PERMISSION_DENIED)


# --- user recovery ---------------------------------------------------------------------------


def test_user_recovery_only_in_recovery_mode() -> None:
    rules.require_recovery_mode(True)
    with pytest.raises(rules.NotInRecoveryMode) as exc:
        rules.require_recovery_mode(False)
    refused(exc.value, "not_in_recovery_mode", Status.FAILED_PRECONDITION)


def test_user_recovery_by_a_seedshare_owner(
    owner: ec.EllipticCurvePrivateKey, seed_owners: list[rsa.RSAPrivateKey]
) -> None:
    latest = make_manifest([owner], seed_owners[:1])
    nonce, sealed = os.urandom(32), os.urandom(80)
    key = seed_owners[0]
    signature = sign_seedshare(key, recover_message(nonce, sealed, EXPECTED))
    pkcs1 = rsa_pkcs1_der(key.public_key())
    rules.authorise_user_recovery(latest, pkcs1, signature, nonce, sealed, EXPECTED)

    with pytest.raises(SignatureError) as bad_sig:
        rules.authorise_user_recovery(latest, pkcs1, signature, os.urandom(32), sealed, EXPECTED)
    refused(bad_sig.value, "signature_invalid", Status.PERMISSION_DENIED)

    outsider = seed_owners[1]
    with pytest.raises(rules.NotSeedshareOwner) as exc:
        rules.authorise_user_recovery(
            latest,
            rsa_pkcs1_der(outsider.public_key()),
            sign_seedshare(outsider, recover_message(nonce, sealed, EXPECTED)),
            nonce,
            sealed,
            EXPECTED,
        )
    refused(exc.value, "not_seedshare_owner", Status.PERMISSION_DENIED)


def test_user_recovery_yields_to_a_ready_peer_unless_forced() -> None:
    rules.check_no_ready_peer(force=False, ready_peer_exists=False)
    rules.check_no_ready_peer(force=True, ready_peer_exists=True)
    with pytest.raises(rules.ReadyPeerExists) as exc:
        rules.check_no_ready_peer(force=False, ready_peer_exists=True)
    refused(exc.value, "ready_peer_exists", Status.FAILED_PRECONDITION)


def test_user_recovery_installs_only_the_authorised_manifest() -> None:
    rules.check_recovery_manifest(sha(b"m"), sha(b"m"))
    with pytest.raises(ConcurrentUpdate) as exc:
        rules.check_recovery_manifest(sha(b"m"), sha(b"another"))
    refused(exc.value, "concurrent_update", Status.FAILED_PRECONDITION)


# --- peer recovery ---------------------------------------------------------------------------


def test_peer_recovery_needs_role_coordinator(
    owner: ec.EllipticCurvePrivateKey, seed_owners: list[rsa.RSAPrivateKey]
) -> None:
    m = make_manifest([owner], seed_owners)
    rules.authorise_peer_recovery(m, sha(COORD_POLICY))
    for requester in (sha(WEB_POLICY), sha(b"not in the manifest")):
        with pytest.raises(rules.NotCoordinatorRole) as exc:
            rules.authorise_peer_recovery(m, requester)
        refused(exc.value, "not_coordinator_role", Status.PERMISSION_DENIED)


def test_rule_errors_do_not_leak_key_material(
    owner: ec.EllipticCurvePrivateKey, seed_owners: list[rsa.RSAPrivateKey]
) -> None:
    current = make_manifest([owner], seed_owners)
    new = make_manifest([owner], seed_owners[:1])
    with pytest.raises(ConcordError) as exc:
        rules.check_update_manifest(current, new)
    der = owner.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert der.hex() not in exc.value.public_message()


def test_update_is_authorised_from_raw_bytes_before_any_parsing(
    owner: ec.EllipticCurvePrivateKey,
    stranger: ec.EllipticCurvePrivateKey,
    seed_owners: list[rsa.RSAPrivateKey],
) -> None:
    """DESIGN §13: the signature covers sha256(raw), so a stranger's document is refused
    without being parsed, even when it is not a manifest at all; an owner's is accepted."""
    current = make_manifest([owner], seed_owners)
    garbage = b"[" * 100_000
    signature = sign_owner(
        stranger, set_manifest_message(DEPLOYMENT, transition_hash(sha(garbage), CURRENT_HASH))
    )
    with pytest.raises(rules.NotWorkloadOwner):
        rules.authorise_update(
            current,
            CURRENT_HASH,
            rules.UpdateRequest(garbage, CURRENT_HASH, public_spki(stranger), signature),
            DEPLOYMENT,
        )
    forged = rules.UpdateRequest(garbage, CURRENT_HASH, public_spki(owner), signature)
    with pytest.raises(SignatureError):
        rules.authorise_update(current, CURRENT_HASH, forged, DEPLOYMENT)
    owner_signature = sign_owner(
        owner, set_manifest_message(DEPLOYMENT, transition_hash(sha(garbage), CURRENT_HASH))
    )
    rules.authorise_update(
        current,
        CURRENT_HASH,
        rules.UpdateRequest(garbage, CURRENT_HASH, public_spki(owner), owner_signature),
        DEPLOYMENT,
    )


# --- DESIGN §12: signatures name the deployment and the history --------------------------------


def test_update_signed_for_another_deployment_is_refused(
    owner: ec.EllipticCurvePrivateKey, seed_owners: list[rsa.RSAPrivateKey]
) -> None:
    """Two deployments started from the same first manifest share transition hashes: only the
    deployment ID in the signed message tells them apart."""
    current = make_manifest([owner], seed_owners)
    new = make_manifest([owner], seed_owners, extra="-v2")
    request = signed_update(owner, new)
    rules.authorise_update(current, CURRENT_HASH, request, DEPLOYMENT)
    with pytest.raises(SignatureError):
        rules.authorise_update(current, CURRENT_HASH, request, sha(b"another deployment"))


def test_recovery_signed_for_another_history_is_refused(
    owner: ec.EllipticCurvePrivateKey, seed_owners: list[rsa.RSAPrivateKey]
) -> None:
    latest = make_manifest([owner], seed_owners[:1])
    nonce, sealed = os.urandom(32), os.urandom(80)
    key = seed_owners[0]
    pkcs1 = rsa_pkcs1_der(key.public_key())
    signature = sign_seedshare(key, recover_message(nonce, sealed, EXPECTED))
    with pytest.raises(SignatureError):
        rules.authorise_user_recovery(latest, pkcs1, signature, nonce, sealed, CURRENT_HASH)


def test_expected_latest_names_both() -> None:
    rules.check_expected_latest(EXPECTED, EXPECTED)
    with pytest.raises(rules.UnexpectedLatest) as exc:
        rules.check_expected_latest(EXPECTED, CURRENT_HASH)
    refused(exc.value, "unexpected_latest", Status.FAILED_PRECONDITION)
    assert EXPECTED.hex() in str(exc.value) and CURRENT_HASH.hex() in str(exc.value)
    with pytest.raises(rules.UnexpectedLatest) as none:
        rules.check_expected_latest(EXPECTED, None)
    assert "(none)" in str(none.value)
