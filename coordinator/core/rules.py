"""The domain decisions of the user and mesh APIs as pure functions of values (DESIGN §1, §7).

Each rule either returns or raises a typed :class:`~coordinator.errors.ConcordError` carrying
a stable ``reason``, so it is tested without sockets and the servicers only decode a request,
call a rule (and the state guard), and encode the answer. Nothing here does I/O: what a rule
needs from the store or the network (the current manifest, whether a ready peer exists, the
verified policy hash of a requester) is looked up by the caller and passed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from coordinator.core.authz import (
    recover_message,
    set_manifest_message,
    spki_digest,
    verify_owner,
    verify_seedshare,
)
from coordinator.core.history import ZERO_HASH, transition_hash
from coordinator.core.manifest import ROLE_COORDINATOR, Manifest
from coordinator.errors import ConcordError, Status
from coordinator.store.base import ConcurrentUpdate

__all__ = [
    "CoordinatorNotAdmitted",
    "CoordinatorPolicyNotInManifest",
    "FieldSizeInvalid",
    "NotCoordinatorRole",
    "NotInRecoveryMode",
    "NotSeedshareOwner",
    "NotWorkloadOwner",
    "PolicyDocumentMissing",
    "ReadyPeerExists",
    "SeedshareOwnersChanged",
    "UpdateRequest",
    "UpdatesDisabled",
    "authorise_peer_recovery",
    "authorise_update",
    "authorise_user_recovery",
    "check_first_manifest",
    "check_no_ready_peer",
    "check_recovery_manifest",
    "missing_policies",
    "require_admits_coordinator",
    "require_recovery_mode",
    "require_size",
]


# --- errors ------------------------------------------------------------------------------------


class FieldSizeInvalid(ConcordError, ValueError):
    """A fixed-size request field (nonce, public key) has another length."""

    reason = "invalid_field_size"
    status = Status.INVALID_ARGUMENT


class PolicyDocumentMissing(ConcordError):
    """The manifest references a policy whose document is neither sent nor stored."""

    reason = "policy_document_missing"
    status = Status.INVALID_ARGUMENT

    def __init__(self, policy_hex: str) -> None:
        super().__init__(f"policies: missing the policy document of Policies.{policy_hex}")
        self.policy_hex = policy_hex


class CoordinatorNotAdmitted(ConcordError):
    """A first manifest whose reference values reject this coordinator's own evidence."""

    reason = "coordinator_not_admitted"
    status = Status.INVALID_ARGUMENT


class CoordinatorPolicyNotInManifest(ConcordError):
    """A first manifest whose coordinator policy is not the one this coordinator runs."""

    reason = "coordinator_policy_not_in_manifest"
    status = Status.INVALID_ARGUMENT


class UpdatesDisabled(ConcordError):
    """The current manifest has no workload owners: it can never be replaced."""

    reason = "updates_disabled"
    status = Status.PERMISSION_DENIED


class NotWorkloadOwner(ConcordError):
    """The key offered for an update is not a workload owner of the current manifest."""

    reason = "not_workload_owner"
    status = Status.PERMISSION_DENIED


class SeedshareOwnersChanged(ConcordError):
    """An update may not change who can recover the seed."""

    reason = "seedshare_owners_changed"
    status = Status.INVALID_ARGUMENT


class NotInRecoveryMode(ConcordError):
    """User recovery of a coordinator whose state is fresh (nothing to recover)."""

    reason = "not_in_recovery_mode"
    status = Status.FAILED_PRECONDITION


class NotSeedshareOwner(ConcordError):
    """The recovering key is not a seed-share owner of the latest manifest."""

    reason = "not_seedshare_owner"
    status = Status.PERMISSION_DENIED


class ReadyPeerExists(ConcordError):
    """A ready peer will recover this coordinator; a user recovery would split the deployment
    (it mints a new mesh key), so it needs ``force``."""

    reason = "ready_peer_exists"
    status = Status.FAILED_PRECONDITION


class NotCoordinatorRole(ConcordError):
    """Peer recovery requested by a workload whose policy is not the coordinator's."""

    reason = "not_coordinator_role"
    status = Status.PERMISSION_DENIED


# --- shared ------------------------------------------------------------------------------------


def require_size(value: bytes, size: int, field_name: str) -> bytes:
    """``value`` when it has exactly ``size`` bytes."""
    if len(value) != size:
        raise FieldSizeInvalid(f"{field_name}: must be {size} bytes, got {len(value)}")
    return value


def missing_policies(manifest: Manifest, given: Iterable[bytes]) -> list[str]:
    """The policy hashes (hex) the manifest references but ``given`` lacks; the caller looks
    them up in the store and raises :class:`PolicyDocumentMissing` for the first one absent."""
    sent = {hashlib.sha256(raw).hexdigest() for raw in given}
    return [h for h in manifest.policies if h not in sent]


# --- SetManifest -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateRequest:
    """What a SetManifest caller asserts: the new manifest, the transition it builds on, and
    the owner key with its signature over the new transition."""

    manifest: Manifest
    previous_transition_hash: bytes
    owner_public_key: bytes
    signature: bytes


def check_first_manifest(previous_transition_hash: bytes) -> None:
    """A first manifest (no history) may only claim to build on nothing."""
    if previous_transition_hash not in (b"", ZERO_HASH):
        raise ConcurrentUpdate("there is no history yet, previous_transition_hash must be empty")


def require_admits_coordinator(manifest: Manifest, own_policy_hash: bytes) -> None:
    """A first manifest must name this coordinator's own policy as its coordinator policy, or no
    client could attest it and no peer recover from it (the caller has already verified this
    coordinator's evidence against the manifest's reference values)."""
    if own_policy_hash != manifest.coordinator_policy_hash:
        raise CoordinatorPolicyNotInManifest(
            f"Policies: this coordinator runs policy {own_policy_hash.hex()}, which is not "
            "the manifest's coordinator policy"
        )


def authorise_update(current: Manifest, current_hash: bytes, request: UpdateRequest) -> None:
    """Whether ``request`` may replace ``current`` (at transition ``current_hash``).

    The owner must be listed in the *current* manifest (an update cannot authorise itself), the
    caller's view of the history must be the latest (client-side compare-and-swap), seed-share
    owners stay, and the signature covers the exact transition that will be written.
    """
    if not current.owner_key_digests:
        raise UpdatesDisabled(
            "manifest updates are disabled: the current manifest has no WorkloadOwnerKeyDigests"
        )
    owner = request.owner_public_key
    if not owner or spki_digest(owner) not in current.owner_key_digests:
        raise NotWorkloadOwner("owner_public_key: not a workload owner of the current manifest")
    if request.previous_transition_hash != current_hash:
        raise ConcurrentUpdate("previous_transition_hash is not the latest transition")
    new = request.manifest
    if set(new.seedshare_owner_keys_der) != set(current.seedshare_owner_keys_der):
        raise SeedshareOwnersChanged("SeedshareOwnerPubKeys: seed-share owners may not change")
    new_hash = transition_hash(new.digest, current_hash)
    verify_owner(owner, request.signature, set_manifest_message(new_hash))


# --- UserAPI.Recover ---------------------------------------------------------------------------


def require_recovery_mode(stale: bool) -> None:
    """User recovery only serves a coordinator that is stale or in recovery mode."""
    if not stale:
        raise NotInRecoveryMode("not in recovery mode: the state is fresh")


def authorise_user_recovery(
    latest: Manifest, owner_pkcs1: bytes, signature: bytes, nonce: bytes, sealed_secret: bytes
) -> None:
    """The key must be a seed-share owner of the (unverified) latest manifest and have signed
    this nonce and this sealed secret. Checked before anything else is looked up."""
    if not latest.is_seedshare_owner(owner_pkcs1):
        raise NotSeedshareOwner(
            "seedshare_owner_public_key: not a seed-share owner of the latest manifest"
        )
    verify_seedshare(owner_pkcs1, signature, recover_message(nonce, sealed_secret))


def check_no_ready_peer(force: bool, ready_peer_exists: bool) -> None:
    """Refuse while a ready peer exists unless the owner forces it."""
    if ready_peer_exists and not force:
        raise ReadyPeerExists(
            "a ready peer coordinator exists: it will recover this one; use force to override"
        )


def check_recovery_manifest(expected_digest: bytes, found_digest: bytes) -> None:
    """The manifest a recovery installs is the one it was authorised for."""
    if found_digest != expected_digest:
        raise ConcurrentUpdate("the history moved")


# --- MeshAPI.Recover ---------------------------------------------------------------------------


def authorise_peer_recovery(manifest: Manifest, requester_policy_hash: bytes) -> None:
    """Only a workload running the manifest's coordinator policy receives the secrets (its
    evidence, token and binding are verified by the caller before)."""
    entry = manifest.policy(requester_policy_hash)
    if entry is None or entry.role != ROLE_COORDINATOR:
        raise NotCoordinatorRole(
            "peer recovery: the requester's policy does not have role coordinator"
        )
