"""Client operations over the attested channel (DESIGN §7, §11)."""

from __future__ import annotations

# Every operation first attests the coordinator over an AttestedChannel and only then sends
# anything; set/verify/recover pin the coordinator to the policy and reference values of the
# manifest the user holds, join to what the caller passes. Local input problems raise
# InvalidInput (the CLI's usage errors); everything the remote side refuses or fails to prove
# raises AttestationFailed, OperationRefused (gRPC refusals) or VerificationFailed.
import asyncio
import hashlib
import os
import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from attestation.anchors import TrustAnchors
from attestation.binding import mesh_cert_report_data
from attestation.errors import EvidenceRejected
from attestation.providers.base import EvidenceProvider, ProviderError
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.backoff import MONOTONIC, Backoff, Clock
from coordinator.client.channel import (
    AttestationFailed,
    AttestedChannel,
    CoordinatorPolicy,
    _der,
)
from coordinator.client.errors import RETRY_REASONS, TRANSPORT_CODES, reason_of, status_kind
from coordinator.core.authz import (
    deployment_id,
    public_spki,
    recover_message,
    rsa_pkcs1_der,
    set_manifest_message,
    sign_owner,
    sign_seedshare,
)
from coordinator.core.ca import CAError, leaf_claims
from coordinator.core.history import ZERO_HASH, HistoryError, SignedLatest, transition_hash
from coordinator.core.limits import NONCE_SIZE
from coordinator.core.manifest import Manifest, ManifestError
from coordinator.core.sealing import (
    PURPOSE_USER_RECOVER,
    PURPOSE_WORKLOAD_SECRET,
    HpkeSuite,
    PqPrivateKey,
    SealingError,
    SuiteOffer,
    UserRecoverySecret,
    UserRecoveryShare,
    check_answer,
    generate_keypair,
    generate_pq_keypair,
    open_sealed,
    open_sealed_pq,
    seal,
)
from coordinator.core.seedengine import (
    SeedEngine,
    SeedEngineError,
    SeedShareDocument,
)
from coordinator.core.threshold import SeedShare, ThresholdError
from coordinator.errors import ConcordError, Status

RPC_TIMEOUT = 30.0
KEY_TYPES = ("p256", "p384", "ed25519")


class InvalidInput(ConcordError, ValueError):
    """Local input is unusable (manifest, policy files, keys); nothing was sent."""

    reason = "invalid_input"
    status = Status.INVALID_ARGUMENT


class OperationRefused(ConcordError):
    """The coordinator refused the request: ``code`` is the gRPC status, ``reason`` the
    coordinator's stable reason (what callers decide on), ``details`` its message (for people).
    An old server sends no reason: ``reason`` is then this class's own."""

    reason = "operation_refused"

    def __init__(
        self, operation: str, code: grpc.StatusCode, details: str, reason: str | None = None
    ) -> None:
        super().__init__(f"{operation} refused: {code.name}: {details}")
        self.operation = operation
        self.code = code
        self.details = details
        self.status = status_kind(code)
        if reason is not None:
            self.reason = reason


class VerificationFailed(ConcordError):
    """A verified coordinator returned data that does not check out."""

    reason = "verification_failed"
    status = Status.PERMISSION_DENIED


class DeploymentMismatch(VerificationFailed):
    """The coordinator serves another deployment than the one pinned (``--deployment-id`` or
    ``--root-ca``): a rogue coordinator, or the wrong address. Nothing was sent or written."""

    reason = "deployment_mismatch"

    def __init__(self, expected: bytes, served: bytes) -> None:
        super().__init__(
            f"deployment mismatch: expected deployment ID {expected.hex()}, the coordinator "
            f"serves {served.hex() if served else '(none: not initialized)'}"
        )
        self.expected = expected
        self.served = served


def deployment_id_of(root_ca_pem: bytes) -> bytes:
    """The deployment ID a root CA certificate names (SHA-256 of its SPKI DER); b"" for none."""
    if not root_ca_pem:
        return b""
    try:
        cert = x509.load_pem_x509_certificate(root_ca_pem)
    except ValueError:
        raise VerificationFailed("root CA: not a PEM certificate") from None
    return deployment_id(public_spki(cert.public_key()))


def check_pin(pin: bytes | None, root_ca_pem: bytes) -> bytes:
    """The deployment ID served (from the attested root CA), refused unless it is ``pin``."""
    served = deployment_id_of(root_ca_pem)
    if pin is not None and served != pin:
        raise DeploymentMismatch(pin, served)
    return served


class NotReady(ConcordError):
    """The coordinator is reachable but cannot serve yet (retryable)."""

    reason = "not_ready"
    status = Status.UNAVAILABLE


def parse_manifest(manifest_raw: bytes) -> Manifest:
    try:
        return Manifest.parse(manifest_raw)
    except ManifestError as exc:
        raise InvalidInput(f"manifest: {exc}") from None


def manifest_policy(manifest: Manifest, anchors: TrustAnchors) -> CoordinatorPolicy:
    """What the manifest itself says a coordinator of this deployment must be."""
    return CoordinatorPolicy(anchors, manifest.reference_values, manifest.coordinator_policy_hash)


def _refused(operation: str, exc: grpc.aio.AioRpcError) -> OperationRefused:
    return OperationRefused(operation, exc.code(), exc.details() or "", reason_of(exc))


def _pem_der(pem: bytes, what: str) -> bytes:
    try:
        return _der(pem)
    except ValueError:
        raise VerificationFailed(f"{what}: not a PEM certificate") from None


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cert_fingerprint(pem: bytes) -> str:
    """SHA-256 over the DER certificate, lowercase hex (what `openssl x509 -fingerprint` shows)."""
    return _sha256_hex(_pem_der(pem, "certificate"))


# --- set -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetResult:
    root_ca_pem: bytes
    mesh_ca_pem: bytes
    transition_hash: bytes
    previous_transition_hash: bytes
    seed_share_document: bytes  # only on the first manifest, else b""
    deployment_id: bytes = b""

    @property
    def first(self) -> bool:
        return self.previous_transition_hash == ZERO_HASH


def _check_policies(manifest: Manifest, policies: Sequence[bytes]) -> list[bytes]:
    """Exactly the manifest's policies: none unknown, none missing (a verifier needs them all)."""
    given: dict[str, bytes] = {}
    for raw in policies:
        digest = _sha256_hex(raw)
        if digest not in manifest.policies:
            raise InvalidInput(f"policy {digest}: not referenced by the manifest")
        given.setdefault(digest, bytes(raw))
    missing = sorted(set(manifest.policies) - set(given))
    if missing:
        raise InvalidInput(
            f"policies: the manifest references {len(missing)} polic"
            f"{'y' if len(missing) == 1 else 'ies'} not given: {', '.join(missing)}"
        )
    return list(given.values())


async def set_manifest(
    address: str,
    manifest_raw: bytes,
    policies: Sequence[bytes],
    *,
    anchors: TrustAnchors,
    owner_key: Any = None,
    timeout: float = RPC_TIMEOUT,
    pin: bytes | None = None,
    previous_hash: bytes | None = None,
) -> SetResult:
    """Attest the coordinator against the manifest's own coordinator policy, then set it.

    On an initialised coordinator this is an update: the client first re-verifies the whole
    history (chain, signature, deployment ID) and only then signs the new transition, which
    names the deployment, with ``owner_key`` (a private key object). ``pin`` refuses another
    deployment; ``previous_hash`` refuses unless ``latest`` is exactly that (DESIGN §12).
    """
    manifest = parse_manifest(manifest_raw)
    blobs = _check_policies(manifest, policies)
    async with await AttestedChannel.connect(
        address, manifest_policy(manifest, anchors), timeout=timeout
    ) as chan:
        request = pb.SetManifestRequest(manifest=manifest_raw, policies=blobs)
        previous = ZERO_HASH
        served = check_pin(pin, bytes(chan.attestation.root_ca_pem))
        if not chan.initialized and previous_hash is not None and previous_hash != ZERO_HASH:
            raise VerificationFailed(
                f"set manifest: --previous {previous_hash.hex()} given, but the coordinator "
                "has no manifest yet"
            )
        if chan.initialized:
            if owner_key is None:
                raise InvalidInput(
                    "the coordinator already has a manifest: an update needs the owner key"
                )
            previous = bytes(chan.attestation.latest_transition_hash)
            if previous_hash is not None and previous_hash != previous:
                raise VerificationFailed(
                    f"set manifest: latest is {previous.hex()}, not --previous "
                    f"{previous_hash.hex()}"
                )
            await _verify_before_signing(chan, served, timeout)
            new_hash = transition_hash(manifest.digest, previous)
            try:
                signature = sign_owner(owner_key, set_manifest_message(served, new_hash))
            except Exception as exc:
                raise InvalidInput(f"owner key: {exc}") from None
            request.previous_transition_hash = previous
            request.owner_public_key = public_spki(owner_key)
            request.signature = signature
        expected = transition_hash(manifest.digest, previous)
        try:
            resp: pb.SetManifestResponse = await chan.user.SetManifest(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _refused("set manifest", exc) from None
        if resp.transition_hash != expected:
            raise VerificationFailed(
                "set manifest: the coordinator reports transition "
                f"{resp.transition_hash.hex()}, expected {expected.hex()}"
            )
        if chan.initialized and _pem_der(resp.root_ca_pem, "root CA") != _pem_der(
            chan.attestation.root_ca_pem, "attested root CA"
        ):
            raise VerificationFailed("set manifest: the root CA changed on an update")
        document = b""
        if previous == ZERO_HASH:
            document = bytes(resp.seed_share_document)
            _check_seed_share_document(document, manifest)
        return SetResult(
            root_ca_pem=bytes(resp.root_ca_pem),
            mesh_ca_pem=bytes(resp.mesh_ca_pem),
            transition_hash=bytes(resp.transition_hash),
            previous_transition_hash=previous,
            seed_share_document=document,
            deployment_id=deployment_id_of(bytes(resp.root_ca_pem)),
        )


async def _verify_before_signing(chan: AttestedChannel, served: bytes, timeout: float) -> None:
    """Clients verify before they sign (DESIGN §12): the whole served history must chain up to
    the attested latest under the history signing key, in the attested deployment."""
    try:
        resp: pb.GetManifestsResponse = await chan.user.GetManifests(
            pb.GetManifestsRequest(), timeout=timeout
        )
    except grpc.aio.AioRpcError as exc:
        raise _refused("get manifests", exc) from None
    if not resp.manifests:
        raise VerificationFailed("history: the coordinator returned no manifests")
    history = verify_history(resp, bytes(resp.manifests[-1]))
    _check_attested(history, chan)
    if bytes(resp.deployment_id) and bytes(resp.deployment_id) != served:
        raise VerificationFailed("history: the deployment ID differs from the attested root CA's")


def _check_seed_share_document(document: bytes, manifest: Manifest) -> None:
    try:
        doc = SeedShareDocument.from_json(document)
    except SeedEngineError as exc:
        raise VerificationFailed(f"seed-share document: {exc}") from None
    owners = tuple(der for der, _ in doc.shares)
    if owners != manifest.seedshare_owner_keys_der:
        raise VerificationFailed(
            "seed-share document: shares do not match the manifest's SeedshareOwnerPubKeys"
        )


# --- verify --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedHistory:
    manifests: tuple[bytes, ...]  # oldest first
    transitions: tuple[bytes, ...]  # transition hash after each manifest
    policies: dict[str, bytes]  # hex sha256 -> policy bytes
    root_ca_pem: bytes
    mesh_ca_pem: bytes
    latest_transition_hash: bytes
    history_signing_public_key: bytes

    @property
    def deployment_id(self) -> bytes:
        return deployment_id_of(self.root_ca_pem)


def verify_history(resp: pb.GetManifestsResponse, manifest_raw: bytes) -> VerifiedHistory:
    """Pure check of a GetManifests answer against the manifest the user holds."""
    manifests = [bytes(m) for m in resp.manifests]
    if not manifests:
        raise VerificationFailed("history: the coordinator returned no manifests")
    if manifests[-1] != manifest_raw:
        raise VerificationFailed(
            f"history: the latest manifest ({_sha256_hex(manifests[-1])}) is not the one given "
            f"({_sha256_hex(manifest_raw)})"
        )
    previous = ZERO_HASH
    transitions: list[bytes] = []
    referenced: set[str] = set()
    for i, raw in enumerate(manifests):
        try:
            parsed = Manifest.parse(raw)
        except ManifestError as exc:
            raise VerificationFailed(f"history: manifest {i} is invalid ({exc})") from None
        referenced.update(parsed.policies)
        previous = transition_hash(parsed.digest, previous)
        transitions.append(previous)
    if previous != resp.latest_transition_hash:
        raise VerificationFailed(
            "history: the manifests do not chain up to the latest transition "
            f"{bytes(resp.latest_transition_hash).hex()}"
        )
    try:
        key = serialization.load_der_public_key(resp.history_signing_public_key)
    except (ValueError, TypeError):
        raise VerificationFailed("history: signing public key is not SPKI DER") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationFailed("history: signing public key is not an EC key")
    try:
        SignedLatest(bytes(resp.latest_transition_hash), bytes(resp.latest_signature)).verify(key)
    except HistoryError as exc:
        raise VerificationFailed(f"history: latest signature: {exc}") from None
    policies: dict[str, bytes] = {}
    for raw in resp.policies:
        policies[_sha256_hex(raw)] = bytes(raw)
    missing = sorted(referenced - set(policies))
    if missing:
        raise VerificationFailed(f"history: policies missing: {', '.join(missing)}")
    extra = sorted(set(policies) - referenced)
    if extra:
        raise VerificationFailed(f"history: unreferenced policies returned: {', '.join(extra)}")
    return VerifiedHistory(
        manifests=tuple(manifests),
        transitions=tuple(transitions),
        policies=policies,
        root_ca_pem=bytes(resp.root_ca_pem),
        mesh_ca_pem=bytes(resp.mesh_ca_pem),
        latest_transition_hash=bytes(resp.latest_transition_hash),
        history_signing_public_key=bytes(resp.history_signing_public_key),
    )


async def fetch_and_verify_history(
    address: str,
    manifest_raw: bytes,
    *,
    anchors: TrustAnchors,
    timeout: float = RPC_TIMEOUT,
    pin: bytes | None = None,
) -> VerifiedHistory:
    """Attest against the manifest, fetch the history, and re-verify it end to end."""
    manifest = parse_manifest(manifest_raw)
    async with await AttestedChannel.connect(
        address, manifest_policy(manifest, anchors), timeout=timeout
    ) as chan:
        check_pin(pin, bytes(chan.attestation.root_ca_pem))
        try:
            resp: pb.GetManifestsResponse = await chan.user.GetManifests(
                pb.GetManifestsRequest(), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _refused("get manifests", exc) from None
        history = verify_history(resp, manifest_raw)
        _check_attested(history, chan)
        return history


def _check_attested(history: VerifiedHistory, chan: AttestedChannel) -> None:
    att = chan.attestation
    if history.latest_transition_hash != att.latest_transition_hash:
        raise VerificationFailed("history: latest transition differs from the attested one")
    if _pem_der(history.root_ca_pem, "root CA") != _pem_der(att.root_ca_pem, "root CA"):
        raise VerificationFailed("history: root CA differs from the attested one")
    if _pem_der(history.mesh_ca_pem, "mesh CA") != _pem_der(att.mesh_ca_pem, "mesh CA"):
        raise VerificationFailed("history: mesh CA differs from the attested one")


# --- recover -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecoverResult:
    """What the coordinator serves after the recovery, as checked by the client."""

    transition_hash: bytes
    deployment_id: bytes
    restored: bool
    """The store had no ``latest`` (deleted): the named transition was restored."""
    shares_received: int = 0
    shares_needed: int = 0
    """Threshold recovery (k > 1): shares the coordinator holds and needs; 0 for whole seeds."""

    @property
    def pending(self) -> bool:
        """The coordinator waits for more owners' shares; nothing was recovered yet."""
        return self.shares_received < self.shares_needed


def expected_from_history(
    resp: pb.GetHistoryResponse,
    manifest_raw: bytes,
    engine: SeedEngine | None,
    named: bytes | None = None,
) -> tuple[bytes, bool]:
    """The latest transition to name in a recovery, and whether ``latest`` will be (re)written.

    The store's chain as served must chain up and be signed by the history key of this seed.
    Without ``named`` it must end with the user's manifest; with ``named`` (``--latest``) the
    store's latest is that transition, or an ancestor of it the coordinator moves forward
    (the coordinator checks the descent), or absent (deleted: restored). With neither a
    ``latest`` nor ``named``, the manifest's first-generation transition is named.

    A threshold share holder has no seed (``engine`` None): the signature is checked by the
    coordinator once k shares made the seed, and the result by :func:`recover` afterwards."""
    if not resp.latest_transition_hash:
        return named or transition_hash(hashlib.sha256(manifest_raw).digest(), ZERO_HASH), True
    manifests = [bytes(m) for m in resp.manifests]
    previous = ZERO_HASH
    for raw in manifests:
        previous = transition_hash(hashlib.sha256(raw).digest(), previous)
    latest = bytes(resp.latest_transition_hash)
    if not manifests or previous != latest:
        raise VerificationFailed(
            f"recover: the store's manifests do not chain up to its latest {latest.hex()}"
        )
    try:
        if engine is not None:
            SignedLatest(latest, bytes(resp.latest_signature)).verify(
                engine.history_signing_key.public_key()
            )
    except HistoryError:
        raise VerificationFailed(
            f"recover: the store's latest {latest.hex()} is not signed with this seed "
            "(another deployment, or a tampered store)"
        ) from None
    if named is not None and named != latest:
        return named, True  # rolled back behind what the owner names: moved forward
    if manifests[-1] != manifest_raw:
        raise VerificationFailed(
            f"recover: the store's latest manifest is {_sha256_hex(manifests[-1])}, not the "
            f"one given ({_sha256_hex(manifest_raw)}); refusing to recover another history "
            "(if the store was rolled back, name the latest transition you set)"
        )
    return latest, False


async def recover(
    address: str,
    manifest_raw: bytes,
    seedshares_json: bytes,
    seedshare_key: rsa.RSAPrivateKey,
    *,
    anchors: TrustAnchors,
    force: bool = False,
    timeout: float = RPC_TIMEOUT,
    pin: bytes | None = None,
    expected_latest: bytes | None = None,
    seedshare_mlkem_key: mlkem.MLKEM768PrivateKey | None = None,
) -> RecoverResult:
    """Hand the seed (sealed to the attested coordinator) to a coordinator in recovery mode,
    naming the latest transition it recovers, then check what the coordinator serves.

    The expected transition comes from the store's chain, verified with the history key
    derived from the seed and required to end with the user's manifest; when the store has
    no ``latest`` (it was deleted) it is ``expected_latest``, or the manifest's first-generation
    transition.
    """
    manifest = parse_manifest(manifest_raw)
    if not isinstance(seedshare_key, rsa.RSAPrivateKey):
        raise InvalidInput("seed-share key: must be an RSA private key")
    owner = rsa_pkcs1_der(seedshare_key)
    if not manifest.is_seedshare_owner(owner):
        raise InvalidInput("seed-share key: not listed in the manifest's SeedshareOwnerPubKeys")
    try:
        doc = SeedShareDocument.from_json(seedshares_json)
    except SeedEngineError as exc:
        raise InvalidInput(f"seed shares: {exc}") from None
    if doc.share_for(owner) is None:
        raise InvalidInput("seed shares: no share for this seed-share key")
    if doc.threshold != manifest.seedshare_threshold:
        raise InvalidInput(
            f"seed shares: threshold {doc.threshold}, the manifest says "
            f"{manifest.seedshare_threshold}"
        )
    # Decrypt before connecting so a wrong key fails locally; the seed only leaves sealed.
    engine: SeedEngine | None = None
    payload: UserRecoverySecret | UserRecoveryShare
    try:
        plain = doc.open_for(seedshare_key, seedshare_mlkem_key)
        if doc.threshold > 1:
            part = SeedShare.decode(plain)
            payload = UserRecoveryShare(share=plain, salt=doc.salt)
            own_id = part.deployment_id
        else:
            payload = UserRecoverySecret(seed=plain, salt=doc.salt)
            engine = SeedEngine(payload.seed, payload.salt)
            own_id = deployment_id(public_spki(engine.root_ca_key))
    except (SeedEngineError, ThresholdError) as exc:
        raise InvalidInput(f"seed shares: {exc}") from None
    except ValueError:
        raise InvalidInput("seed shares: the decrypted seed has an invalid size") from None
    if pin is not None and pin != own_id:
        raise DeploymentMismatch(pin, own_id)
    policy = manifest_policy(manifest, anchors)
    async with await AttestedChannel.connect(address, policy, timeout=timeout) as chan:
        try:
            history: pb.GetHistoryResponse = await chan.user.GetHistory(
                pb.GetHistoryRequest(), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _refused("get history", exc) from None
        expected, restored = expected_from_history(history, manifest_raw, engine, expected_latest)
        sealed = seal(chan.attestation.hpke_public_key, PURPOSE_USER_RECOVER, payload.encode())
        nonce = os.urandom(NONCE_SIZE)
        request = pb.UserRecoverRequest(
            sealed_secret=sealed,
            seedshare_owner_public_key=owner,
            signature=sign_seedshare(seedshare_key, recover_message(nonce, sealed, expected)),
            nonce=nonce,
            force=force,
            expected_latest_transition_hash=expected,
        )
        try:
            answer: pb.UserRecoverResponse = await chan.user.Recover(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _refused("recover", exc) from None
    if answer.shares_received < answer.shares_needed:
        return RecoverResult(
            transition_hash=expected,
            deployment_id=own_id,
            restored=restored,
            shares_received=answer.shares_received,
            shares_needed=answer.shares_needed,
        )
    # Check what it serves now, on a fresh attestation (the state digest binds both).
    async with await AttestedChannel.connect(address, policy, timeout=timeout) as after:
        att = after.attestation
        if bytes(att.latest_transition_hash) != expected:
            raise VerificationFailed(
                f"recover: the coordinator now serves transition "
                f"{bytes(att.latest_transition_hash).hex()}, expected {expected.hex()}"
            )
        served = check_pin(own_id, bytes(att.root_ca_pem))
    return RecoverResult(
        transition_hash=expected,
        deployment_id=served,
        restored=restored,
        shares_received=answer.shares_received,
        shares_needed=answer.shares_needed,
    )


async def recover_each(
    addresses: Sequence[str],
    manifest_raw: bytes,
    seedshares_json: bytes,
    seedshare_key: rsa.RSAPrivateKey,
    **options: Any,
) -> RecoverResult:
    """:func:`recover` at each coordinator in turn until one has recovered.

    Each coordinator keeps its own partial threshold shares (in memory, never in the store),
    so an owner who submits to every coordinator of the deployment lets whichever collects k
    shares first complete; the others then recover from it as peers. Returns the completed
    result, else the most advanced pending one; a coordinator that refuses is skipped unless
    all do (then the last refusal is raised).
    """
    best: RecoverResult | None = None
    failure: Exception | None = None
    for address in addresses:
        try:
            result = await recover(address, manifest_raw, seedshares_json, seedshare_key, **options)
        except (OperationRefused, NotReady, grpc.aio.AioRpcError, OSError) as exc:
            failure = exc
            continue
        if not result.pending:
            return result
        if best is None or result.shares_received > best.shares_received:
            best = result
    if best is not None:
        return best
    assert failure is not None, "no coordinator address given"
    raise failure


# --- join ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JoinResult:
    out_dir: Path
    files: tuple[str, ...]
    cert_pem: bytes
    chain_pem: bytes
    mesh_ca_pem: bytes
    root_ca_pem: bytes
    has_workload_secret: bool
    attempts: int
    tee: str
    policy_hash: bytes


def retryable(exc: BaseException) -> str | None:
    """Why a join attempt may succeed later (coordinator not ready, restarting), or None.

    Decided by the coordinator's reason (:data:`RETRY_REASONS`) or a transport code, never by
    message text; the returned text is only shown to the user.
    """
    if isinstance(exc, NotReady):
        return str(exc)
    if isinstance(exc, OperationRefused):
        if exc.reason in RETRY_REASONS:
            return exc.details or exc.reason
        if exc.code in TRANSPORT_CODES:
            return f"coordinator unavailable ({exc.details})"
        return None
    if isinstance(exc, grpc.aio.AioRpcError):
        if reason_of(exc) in RETRY_REASONS:
            return exc.details() or "coordinator not ready"
        if exc.code() in TRANSPORT_CODES:
            return "coordinator unavailable"
        return None
    if isinstance(exc, ssl.SSLError):
        return None  # something answers, but not with a coordinator's TLS: a wrong port
    if isinstance(exc, (OSError, TimeoutError)):
        return f"coordinator unreachable ({type(exc).__name__})"
    return None


def new_leaf_key(key_type: str) -> Any:
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise InvalidInput(f"key type must be one of {', '.join(KEY_TYPES)}, got {key_type!r}")


def _issued_by(child: x509.Certificate, parent: x509.Certificate, what: str) -> None:
    try:
        child.verify_directly_issued_by(parent)
    except Exception:
        raise VerificationFailed(f"certificate chain: {what}") from None


def verify_issued_chain(
    chain_pem: bytes,
    mesh_ca_pem: bytes,
    root_ca_pem: bytes,
    leaf_spki: bytes,
    now: datetime | None = None,
) -> tuple[x509.Certificate, x509.Certificate]:
    """Leaf → intermediate → root, leaf → mesh CA, and the leaf certifies our key."""
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
        mesh_ca = x509.load_pem_x509_certificate(mesh_ca_pem)
        root = x509.load_pem_x509_certificate(root_ca_pem)
    except ValueError:
        raise VerificationFailed("certificate chain: not PEM certificates") from None
    if len(certs) != 2:
        raise VerificationFailed(
            f"certificate chain: want leaf and intermediate, got {len(certs)} certificates"
        )
    leaf, intermediate = certs
    if public_spki(leaf.public_key()) != leaf_spki:
        raise VerificationFailed("certificate chain: the leaf does not certify our key")
    _issued_by(leaf, mesh_ca, "the leaf is not signed by the mesh CA")
    _issued_by(leaf, intermediate, "the leaf is not signed by the intermediate")
    _issued_by(intermediate, root, "the intermediate is not signed by the root CA")
    _issued_by(root, root, "the root CA is not self-signed")
    if public_spki(intermediate.public_key()) != public_spki(mesh_ca.public_key()):
        raise VerificationFailed("certificate chain: the intermediate is not the mesh CA key")
    when = now or datetime.now(UTC)
    if not leaf.not_valid_before_utc <= when <= leaf.not_valid_after_utc:
        raise VerificationFailed("certificate chain: the leaf is not valid now")
    return leaf, intermediate


def mesh_bundle(resp: pb.NewMeshCertResponse) -> bytes:
    """What ``mesh-ca.pem`` holds: the coordinator's bundle (current mesh CA first, then the
    previous one within its grace, DESIGN §15) when it sends one that starts with the verified
    mesh CA, else the mesh CA alone (older coordinators)."""
    bundle = bytes(resp.mesh_ca_bundle_pem)
    current = bytes(resp.mesh_ca_pem)
    if bundle.startswith(current):
        try:
            x509.load_pem_x509_certificates(bundle)
        except ValueError:
            return current
        return bundle
    return current


def _pem_key(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomic write (temp file + fsync + rename) with exactly ``mode``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{random.getrandbits(32):08x}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    if not path.is_dir():
        raise InvalidInput(f"{path}: not a directory")
    return path


@dataclass(frozen=True)
class _Issued:
    leaf_key: Any
    hpke_private: X25519PrivateKey
    response: pb.NewMeshCertResponse
    leaf_spki: bytes
    attested_root_pem: bytes
    attested_mesh_pem: bytes
    pq_private: PqPrivateKey | None = None
    suite: HpkeSuite = HpkeSuite.X25519


async def join_token(chan: AttestedChannel) -> bytes:
    """The token for NewMeshCert: the one Attest carried (DESIGN §15), or, from a coordinator
    that does not send one yet, a Challenge call."""
    if chan.attestation.token:
        return bytes(chan.attestation.token)
    try:
        return bytes((await chan.attest.Challenge(pb.ChallengeRequest(), timeout=10.0)).token)
    except grpc.aio.AioRpcError as exc:
        raise _refused("challenge", exc) from None


async def _join_once(
    address: str,
    provider: EvidenceProvider,
    policy: CoordinatorPolicy,
    key_type: str,
    pin: bytes | None = None,
    require_pq: bool = False,
) -> _Issued:
    try:
        chan = await AttestedChannel.connect(address, policy, timeout=10.0)
    except grpc.aio.AioRpcError as exc:
        raise _refused("attest", exc) from None
    async with chan:
        if not chan.initialized:
            raise NotReady("not initialized")
        check_pin(pin, bytes(chan.attestation.root_ca_pem))  # before any evidence is sent
        token = await join_token(chan)
        leaf_key = new_leaf_key(key_type)
        leaf_spki = public_spki(leaf_key)
        hpke_private, hpke_public = generate_keypair()
        # Offer the hybrid post-quantum suite (and, unless required, classic X25519); the
        # offer is bound into the evidence, so a stripped offer fails on the coordinator.
        pq_private, pq_public = generate_pq_keypair()
        suites = (HpkeSuite.MLKEM768_X25519,) + (() if require_pq else (HpkeSuite.X25519,))
        offer = SuiteOffer(suites, pq_public)
        report_data = mesh_cert_report_data(leaf_spki, hpke_public, token, offer.binding())
        evidence = (await asyncio.to_thread(provider.evidence, report_data)).encode()
        request = pb.NewMeshCertRequest(
            evidence=evidence,
            leaf_public_key=leaf_spki,
            hpke_public_key=hpke_public,
            token=token,
            hpke_suites=[pb.HpkeSuite.Name(int(s)) for s in suites],
            pq_hpke_public_key=pq_public,
        )
        try:
            resp: pb.NewMeshCertResponse = await chan.mesh.NewMeshCert(request, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise _refused("join", exc) from None
        try:
            suite = check_answer(offer, resp.hpke_suite)
        except ConcordError as exc:
            raise VerificationFailed(f"join: {exc}") from None
        return _Issued(
            leaf_key,
            hpke_private,
            resp,
            leaf_spki,
            bytes(chan.attestation.root_ca_pem),
            bytes(chan.attestation.mesh_ca_pem),
            pq_private,
            suite,
        )


WaitCallback = Callable[[str, int, float], None]
JOIN_BACKOFF = Backoff(base=0.1, cap=2.0, jitter=0.25)
"""Between join attempts: 0.1 s doubling up to 2 s, ±25 % (many workloads start together)."""


async def join(
    address: str,
    provider: EvidenceProvider,
    *,
    policy: CoordinatorPolicy,
    out_dir: str | Path,
    key_type: str = "p256",
    timeout: float = 60.0,
    on_wait: WaitCallback | None = None,
    clock: Clock = MONOTONIC,
    pin: bytes | None = None,
    require_pq: bool = False,
) -> JoinResult:
    """Attest the coordinator, trade our evidence for a mesh certificate and secret, write them.

    The workload secret comes sealed with the hybrid post-quantum suite; ``require_pq`` stops
    offering classic X25519 at all (``join --require-pq``).

    Retries with jittered exponential back-off while the coordinator is unreachable, not
    initialised or in recovery mode, for at most ``timeout`` seconds; ``on_wait(reason,
    attempt, delay)`` reports each wait. Refusals and attestation failures are not retried.
    ``clock`` measures the timeout and does the waiting (tests pass a fake one).
    """
    new_leaf_key(key_type)  # reject a bad key type before any network traffic
    out = Path(out_dir)
    deadline = clock.now() + timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            issued = await _join_once(address, provider, policy, key_type, pin, require_pq)
            break
        except (AttestationFailed, EvidenceRejected, ProviderError):
            raise
        except Exception as exc:
            reason = retryable(exc)
            if reason is None:
                raise
            delay = JOIN_BACKOFF.delay(attempt)
            if clock.now() + delay > deadline:
                raise NotReady(
                    f"gave up after {attempt} attempt{'s' if attempt > 1 else ''} "
                    f"in {timeout:g}s: {reason}"
                ) from None
            if on_wait is not None:
                on_wait(reason, attempt, delay)
            await clock.sleep(delay)
    resp = issued.response
    leaf, _ = verify_issued_chain(
        resp.certificate_chain_pem, resp.mesh_ca_pem, resp.root_ca_pem, issued.leaf_spki
    )
    if _pem_der(resp.root_ca_pem, "root CA") != _pem_der(issued.attested_root_pem, "root CA"):
        raise VerificationFailed("join: the root CA differs from the attested one")
    if _pem_der(resp.mesh_ca_pem, "mesh CA") != _pem_der(issued.attested_mesh_pem, "mesh CA"):
        raise VerificationFailed("join: the mesh CA differs from the attested one")
    secret = b""
    if resp.sealed_workload_secret:
        try:
            if issued.suite is HpkeSuite.MLKEM768_X25519 and issued.pq_private is not None:
                secret = open_sealed_pq(
                    issued.pq_private, PURPOSE_WORKLOAD_SECRET, resp.sealed_workload_secret
                )
            else:
                secret = open_sealed(
                    issued.hpke_private, PURPOSE_WORKLOAD_SECRET, resp.sealed_workload_secret
                )
        except SealingError:
            raise VerificationFailed("join: the sealed workload secret cannot be opened") from None
    try:
        claims = leaf_claims(leaf)
    except CAError as exc:
        raise VerificationFailed(f"join: leaf claims: {exc}") from None
    if claims.workload_secret_id and not secret:
        raise VerificationFailed("join: the policy has a secret ID but no secret was sent")
    expected_policy = getattr(provider, "policy_hash", None)
    if isinstance(expected_policy, bytes) and claims.policy_hash != expected_policy:
        raise VerificationFailed("join: the leaf names another policy than ours")
    cert_pem = leaf.public_bytes(serialization.Encoding.PEM)
    ensure_dir(out)
    files = {
        "key.pem": (_pem_key(issued.leaf_key), 0o600),
        "cert.pem": (cert_pem, 0o644),
        "chain.pem": (bytes(resp.certificate_chain_pem), 0o644),
        "mesh-ca.pem": (mesh_bundle(resp), 0o644),
        "root-ca.pem": (bytes(resp.root_ca_pem), 0o644),
    }
    if secret:
        files["workload-secret"] = (secret, 0o600)
    for name, (data, mode) in files.items():
        write_file(out / name, data, mode)
    return JoinResult(
        out_dir=out,
        files=tuple(files),
        cert_pem=cert_pem,
        chain_pem=bytes(resp.certificate_chain_pem),
        mesh_ca_pem=bytes(resp.mesh_ca_pem),
        root_ca_pem=bytes(resp.root_ca_pem),
        has_workload_secret=bool(secret),
        attempts=attempt,
        tee=claims.tee,
        policy_hash=claims.policy_hash,
    )
