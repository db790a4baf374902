"""The domain decisions of the user and mesh APIs as pure functions of values (DESIGN §1, §7).

Each rule either returns or raises a typed :class:`~coordinator.errors.ConcordError` carrying
a stable ``reason``, so it is tested without sockets and the servicers only decode a request,
call a rule (and the state guard), and encode the answer. Nothing here does I/O: what a rule
needs from the store or the network (the current manifest, whether a ready peer exists, the
verified policy hash of a requester) is looked up by the caller and passed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass
from typing import Final, Literal

from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.core.authz import (
    recover_message,
    set_manifest_message,
    spki_digest,
    verify_owner,
    verify_seedshare,
)
from coordinator.core.history import (
    ZERO_HASH,
    HistoryError,
    SignatureRejected,
    SignedLatest,
    transition_hash,
)
from coordinator.core.manifest import ROLE_COORDINATOR, Manifest
from coordinator.errors import ConcordError, Status
from coordinator.store.base import ConcurrentUpdate

__all__ = [
    "TAMPER_KINDS",
    "CoordinatorNotAdmitted",
    "CoordinatorPolicyNotInManifest",
    "Descends",
    "FieldSizeInvalid",
    "HistoryWithoutLatest",
    "LatestVerdict",
    "NeedsLineage",
    "NotCoordinatorRole",
    "NotInRecoveryMode",
    "NotSeedshareOwner",
    "NotWorkloadOwner",
    "Ours",
    "PolicyDocumentMissing",
    "ReadyPeerExists",
    "SeedshareOwnersChanged",
    "Tamper",
    "TamperKind",
    "UnexpectedLatest",
    "UpdateRequest",
    "UpdatesDisabled",
    "authorise_peer_recovery",
    "authorise_update",
    "authorise_user_recovery",
    "check_expected_latest",
    "check_first_manifest",
    "check_no_orphaned_history",
    "check_no_ready_peer",
    "check_recovery_manifest",
    "check_update_manifest",
    "classify_latest",
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
    """What a SetManifest caller asserts: the new manifest *as sent* (not parsed: the owner's
    signature is checked before an unauthenticated document costs any parsing), the transition
    it builds on, and the owner key with its signature over the new transition."""

    manifest_raw: bytes
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


def authorise_update(
    current: Manifest, current_hash: bytes, request: UpdateRequest, deployment_id: bytes
) -> None:
    """Whether ``request`` may replace ``current`` (at transition ``current_hash``), decided
    from the raw bytes alone (DESIGN §13: cheap checks first).

    The owner must be listed in the *current* manifest (an update cannot authorise itself), the
    caller's view of the history must be the latest (client-side compare-and-swap), and the
    signature covers this deployment's ID and the exact transition that will be written: its
    hash needs only
    sha256(raw manifest) and ``current_hash``. Once this passed, the caller parses the new
    manifest and applies :func:`check_update_manifest`.
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
    new_hash = transition_hash(hashlib.sha256(request.manifest_raw).digest(), current_hash)
    verify_owner(owner, request.signature, set_manifest_message(deployment_id, new_hash))


def check_update_manifest(current: Manifest, new: Manifest) -> None:
    """What an authorised update may not change, checked once its manifest is parsed: who can
    recover the seed."""
    if set(new.seedshare_owner_keys_der) != set(current.seedshare_owner_keys_der):
        raise SeedshareOwnersChanged("SeedshareOwnerPubKeys: seed-share owners may not change")
    if dict(new.seedshare_owner_mlkem_keys) != dict(current.seedshare_owner_mlkem_keys):
        raise SeedshareOwnersChanged("SeedshareOwnerMLKEMKeys: the owners' keys may not change")
    if new.seedshare_threshold != current.seedshare_threshold:
        raise SeedshareOwnersChanged("SeedshareThreshold: the threshold may not change")
    if new.seedshare_threshold > 1 and (
        new.seedshare_owner_keys_der != current.seedshare_owner_keys_der
    ):
        # Threshold shares carry the owner's position as their Shamir index.
        raise SeedshareOwnersChanged("SeedshareOwnerPubKeys: the order may not change (k > 1)")


# --- UserAPI.Recover ---------------------------------------------------------------------------


def require_recovery_mode(stale: bool) -> None:
    """User recovery only serves a coordinator that is stale or in recovery mode."""
    if not stale:
        raise NotInRecoveryMode("not in recovery mode: the state is fresh")


def authorise_user_recovery(
    latest: Manifest,
    owner_pkcs1: bytes,
    signature: bytes,
    nonce: bytes,
    sealed_secret: bytes,
    expected_latest: bytes,
) -> None:
    """The key must be a seed-share owner of the (unverified) latest manifest and have signed
    this nonce, this sealed secret and the history it expects. Checked before anything else is
    looked up."""
    if not latest.is_seedshare_owner(owner_pkcs1):
        raise NotSeedshareOwner(
            "seedshare_owner_public_key: not a seed-share owner of the latest manifest"
        )
    verify_seedshare(owner_pkcs1, signature, recover_message(nonce, sealed_secret, expected_latest))


class UnexpectedLatest(ConcordError):
    """A user recovery names another history than the store's ``latest``: the store may have
    been rolled back, or the owner holds an old manifest. Nothing is recovered."""

    reason = "unexpected_latest"
    status = Status.FAILED_PRECONDITION


def check_expected_latest(expected: bytes, found: bytes | None) -> None:
    """The store's ``latest`` (None: absent) must be the one the recovering owner named."""
    if found != expected:
        raise UnexpectedLatest(
            "the store's latest transition is "
            f"{found.hex() if found is not None else '(none)'}, the recovery expected "
            f"{expected.hex()}"
        )


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


# --- the store's ``latest`` against the State we hold (DESIGN §12) -----------------------------

TamperKind = Literal["rollback", "deleted", "bad_signature", "malformed", "unknown_chain"]
TAMPER_KINDS: Final[tuple[TamperKind, ...]] = (
    "rollback",
    "deleted",
    "bad_signature",
    "malformed",
    "unknown_chain",
)


@dataclass(frozen=True)
class Ours:
    """The store's ``latest`` is the State's own transition (a late notification, or a repair)."""


@dataclass(frozen=True)
class Descends:
    """A correctly signed ``latest`` that strictly descends from the held transition: the only
    verdict that may make a State stale."""

    latest: SignedLatest


@dataclass(frozen=True)
class NeedsLineage:
    """Correctly signed but neither ours nor an ancestor: the caller must walk its chain back
    (bounded) and ask again with the hashes it found."""

    latest: SignedLatest


@dataclass(frozen=True)
class Tamper:
    """The store's ``latest`` is something no honest coordinator of this deployment wrote on top
    of our State. ``found`` is the transition hash it names, when it names one."""

    kind: TamperKind
    found: bytes | None = None


LatestVerdict = Ours | Descends | NeedsLineage | Tamper


def classify_latest(
    own: bytes,
    ancestors: Set[bytes],
    value: bytes,
    signing_key: ec.EllipticCurvePublicKey,
    lineage: Sequence[bytes] | None = None,
) -> LatestVerdict:
    """Judge a raw ``latest`` value read from the (untrusted) store.

    ``own`` is the held State's transition hash, ``ancestors`` every earlier one, and
    ``signing_key`` the deployment's history signing key. ``lineage``, when given, is the list of
    transition hashes the caller walked back from the candidate (excluding it, newest first);
    a walk that stopped early (missing blob, bound, a fork) simply lacks ``own``. Only a
    signed value whose lineage reaches ``own`` descends; everything else is a tamper kind.
    """
    if not value:
        return Tamper("deleted")
    try:
        latest = SignedLatest.decode(value)
    except HistoryError:
        return Tamper("malformed")
    found = latest.transition_hash
    try:
        latest.verify(signing_key)
    except SignatureRejected:
        return Tamper("bad_signature", found)
    if found == own:
        return Ours()
    if found in ancestors or found == ZERO_HASH:
        return Tamper("rollback", found)
    if lineage is None:
        return NeedsLineage(latest)
    if own in lineage:
        return Descends(latest)
    return Tamper("unknown_chain", found)


class HistoryWithoutLatest(ConcordError):
    """The store holds history blobs but no ``latest``: it was tampered with, it is not new.
    Trust on first use would hand the deployment to whoever deleted ``latest``."""

    reason = "history_without_latest"
    status = Status.FAILED_PRECONDITION

    def __init__(self) -> None:
        super().__init__("store holds a history without latest")


def check_no_orphaned_history(history_present: bool) -> None:
    """A first manifest is accepted only on a store with no history at all (DESIGN §12)."""
    if history_present:
        raise HistoryWithoutLatest()
