"""The issuance path: evidence in, mesh certificate (+ sealed workload secret) out.

One :class:`Issuer` per State, built when the State is installed and dropped with it, so the
per-request work is only what cannot be shared: verify one piece of evidence, sign one leaf, seal
one secret. CPU-heavy work runs in a small thread pool through :class:`BatchRunner`, which hands
each worker a batch of concurrent requests at once (one executor hop per batch, not per request);
OpenSSL releases the GIL while it verifies and signs, so throughput scales with cores. Nothing
here touches the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from attestation.binding import mesh_cert_report_data
from attestation.cache import BoundedCache
from attestation.verify import VerifiedEvidence, Verifier
from coordinator.core.ca import CA_NOT_AFTER, LEAF_BACKDATE
from coordinator.core.challenge import check_token
from coordinator.core.manifest import PolicyEntry
from coordinator.core.sealing import (
    PURPOSE_WORKLOAD_SECRET,
    HpkeSuite,
    SuiteOffer,
    seal_for,
)
from coordinator.core.state import State
from coordinator.errors import ConcordError, Status

T = TypeVar("T")
R = TypeVar("R")

MAX_SPKI = 2048
LEAF_REUSE = timedelta(hours=1)
"""How long a leaf issued for a key and its attested claims may be handed out again."""
_SHA384 = hashes.SHA384()


class IssuanceError(ConcordError):
    """Base of issuance refusals that are the caller's fault."""

    reason = "issuance_refused"
    status = Status.INVALID_ARGUMENT


class InvalidLeafKey(IssuanceError):
    """The leaf public key is not a usable SPKI of a supported algorithm."""

    reason = "invalid_leaf_key"


class PolicyNotInManifest(IssuanceError):
    """The attested workload runs a policy the manifest does not list."""

    reason = "policy_not_in_manifest"
    status = Status.PERMISSION_DENIED

    def __init__(self, policy_hash: bytes) -> None:
        super().__init__(f"policy {policy_hash.hex()} is not in the manifest")
        self.policy_hash = policy_hash


@dataclass(frozen=True)
class IssuedCertificate:
    chain_pem: bytes  # leaf then intermediate
    mesh_ca_pem: bytes
    root_ca_pem: bytes
    sealed_workload_secret: bytes
    tee: str


class BatchRunner(Generic[T, R]):
    """Run ``fn`` over concurrent submissions in worker threads, a batch per worker hop.

    Submissions made in the same event-loop turn are split into at most ``workers`` chunks;
    each chunk goes to a worker thread through one queue put, and comes back through one
    ``call_soon_threadsafe`` that settles every future of the chunk. That is all the event
    loop pays per batch (no concurrent.futures.Future chained to an asyncio one per hop).

    ``workers=0`` runs ``fn`` inline on the event loop instead. That is the least CPU per call
    (no GIL hand-offs between the loop and the workers) but no parallelism: the right choice
    when the cores are busy anyway, e.g. when the clients run on the same machine.
    """

    def __init__(
        self, fn: Callable[[T], R], workers: int | None = None, max_batch: int = 32
    ) -> None:
        if workers is not None and workers < 0:
            raise ValueError("workers must be >= 0 (0 runs inline on the event loop)")
        self._fn = fn
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._scheduled = False
        self._closed = False
        # Stop the workers if the runner is dropped without close().
        self._finalizer = weakref.finalize(self, _stop_workers, self._jobs, self._threads)

    async def submit(self, item: T) -> R:
        if self._closed:
            raise RuntimeError("BatchRunner is closed")
        if self.workers == 0:
            return self._fn(item)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, fut))
        if not self._scheduled:
            self._scheduled = True
            # Let every request that is already runnable join this batch before dispatching.
            loop.call_soon(self._dispatch, loop)
        return await fut

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        if not pending:
            return
        if self._closed:
            _cancel_chunk(pending)
            return
        if not self._threads:
            for i in range(self.workers):
                thread = threading.Thread(
                    target=_work, args=(self._jobs, self._fn), name=f"issuer-{i}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        size = max(1, min(self._max_batch, -(-len(pending) // self.workers)))
        for start in range(0, len(pending), size):
            self._jobs.put((loop, pending[start : start + size]))

    def close(self) -> None:
        """Stop the workers; queued (not yet started) submissions are cancelled."""
        self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                loop, chunk = job
                with contextlib.suppress(RuntimeError):  # loop already closed
                    loop.call_soon_threadsafe(_cancel_chunk, chunk)
        self._finalizer()


_STOP = object()


def _work(jobs: queue.SimpleQueue[Any], fn: Callable[[Any], Any]) -> None:
    """Worker thread: run chunks until told to stop; hand results back to the chunk's loop."""
    while True:
        job = jobs.get()
        if job is _STOP:
            return
        loop, chunk = job
        results: list[tuple[bool, Any]] = []
        for item, _ in chunk:
            try:
                results.append((True, fn(item)))
            except StopIteration as exc:  # asyncio futures refuse StopIteration
                results.append((False, RuntimeError(f"StopIteration: {exc}")))
            except BaseException as exc:  # delivered to the awaiting request
                results.append((False, exc))
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
            loop.call_soon_threadsafe(_settle_chunk, chunk, results)


def _stop_workers(jobs: queue.SimpleQueue[Any], threads: list[threading.Thread]) -> None:
    for _ in threads:
        jobs.put(_STOP)


def _settle_chunk(
    chunk: list[tuple[Any, asyncio.Future[Any]]], results: list[tuple[bool, Any]]
) -> None:
    for (_, fut), (ok, value) in zip(chunk, results, strict=True):
        if fut.done():  # cancelled by its caller meanwhile
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _cancel_chunk(chunk: list[tuple[Any, asyncio.Future[Any]]]) -> None:
    for _, fut in chunk:
        if not fut.done():
            fut.cancel()


@dataclass(frozen=True)
class IssueRequest:
    evidence: bytes
    leaf_spki: bytes
    hpke_public_key: bytes
    token: bytes
    now: datetime
    offer: SuiteOffer = field(default_factory=SuiteOffer)
    """The requester's HPKE suites; empty = classic, with unchanged report data."""
    suite: HpkeSuite = HpkeSuite.X25519
    """The suite chosen for the workload secret (the strongest both sides allow)."""


def load_leaf_key(spki: bytes) -> Any:
    """Accept the key types a mesh TLS stack can use; anything else is the caller's error."""
    if not spki or len(spki) > MAX_SPKI:
        raise InvalidLeafKey(f"leaf_public_key: must be 1..{MAX_SPKI} bytes of SPKI DER")
    try:
        key = serialization.load_der_public_key(spki)
    except (ValueError, TypeError):
        raise InvalidLeafKey("leaf_public_key: not a valid SPKI DER public key") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, (ec.SECP256R1, ec.SECP384R1)):
            raise InvalidLeafKey("leaf_public_key: EC keys must be P-256 or P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise InvalidLeafKey("leaf_public_key: RSA keys must have at least 2048 bits")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise InvalidLeafKey("leaf_public_key: unsupported key type")
    return key


class Issuer:
    """Everything NewMeshCert needs from one State, prepared once."""

    def __init__(
        self,
        state: State,
        verifier: Verifier,
        *,
        leaf_validity: timedelta = timedelta(days=365),
        cache_size: int = 4096,
    ) -> None:
        self.state = state
        self._verifier = verifier
        self._leaf_validity = leaf_validity
        # A renewal at half a short lifetime must get a new leaf, not a cached one.
        self._reuse = min(LEAF_REUSE, leaf_validity / 20)
        manifest = state.manifest
        self._references = manifest.reference_values
        self._policies: Mapping[bytes, PolicyEntry] = {
            bytes.fromhex(h): entry for h, entry in manifest.policies.items()
        }
        self._secrets: dict[str, bytes] = {
            entry.workload_secret_id: state.seed_engine.workload_secret(entry.workload_secret_id)
            for entry in manifest.policies.values()
            if entry.workload_secret_id
        }
        ca = state.ca
        self._intermediate_pem = ca.intermediate_pem
        self._mesh_ca_pem = ca.mesh_ca_pem
        self._root_ca_pem = ca.root_pem
        self._challenge_key = state.seed_engine.challenge_key
        self._transition = state.transition.hash
        # Repeated requests for the same key with the same attested claims may get the same
        # leaf back, but only while it is young: a cached leaf never outlives LEAF_REUSE.
        self._leaves: BoundedCache[tuple[bytes, ...], tuple[datetime, bytes]] = BoundedCache(
            cache_size
        )
        # Leaf builders with every request-independent field set (subject, SANs, claims), per
        # policy and attested platform; only key, serial and validity change per request.
        self._templates: BoundedCache[tuple[bytes, str, bytes, bytes], x509.CertificateBuilder] = (
            BoundedCache(256)
        )
        self._mesh_key = ca.mesh_key

    def issue(self, req: IssueRequest) -> IssuedCertificate:
        """Synchronous and thread-safe: runs inside the pool."""
        check_token(self._challenge_key, req.token, self._transition, req.now.timestamp())
        key = load_leaf_key(req.leaf_spki)
        expected = mesh_cert_report_data(
            req.leaf_spki, req.hpke_public_key, req.token, req.offer.binding()
        )
        verified = self._verifier.verify(req.evidence, self._references, expected, req.now)
        entry = self._policies.get(verified.policy_hash)
        if entry is None:
            raise PolicyNotInManifest(verified.policy_hash)
        cache_key = (
            req.leaf_spki,
            verified.policy_hash,
            verified.tee.encode(),
            verified.measurement,
            verified.tcb,
        )
        cached = self._leaves.get(cache_key)
        if cached is not None and timedelta(0) <= req.now - cached[0] < self._reuse:
            leaf_pem = cached[1]
        else:
            leaf_pem = self._sign_leaf(key, entry, verified, req.now).public_bytes(
                serialization.Encoding.PEM
            )
            self._leaves.put(cache_key, (req.now, leaf_pem))
        sealed = b""
        if entry.workload_secret_id:
            sealed = seal_for(
                req.suite,
                req.hpke_public_key,
                req.offer,
                PURPOSE_WORKLOAD_SECRET,
                self._secrets[entry.workload_secret_id],
            )
        return IssuedCertificate(
            chain_pem=leaf_pem + self._intermediate_pem,
            mesh_ca_pem=self._mesh_ca_pem,
            root_ca_pem=self._root_ca_pem,
            sealed_workload_secret=sealed,
            tee=verified.tee,
        )

    def _sign_leaf(
        self, key: Any, entry: PolicyEntry, verified: VerifiedEvidence, now: datetime
    ) -> x509.Certificate:
        """Sign a leaf from the prepared template of its claims.

        The first leaf for a (policy, TEE, measurement, TCB) goes through
        :meth:`CertificateAuthority.issue_leaf`, which validates every claim; the template is
        taken from that certificate, so later leaves carry byte-identical names and extensions
        and only the key, serial and validity window are set per request.
        """
        claims = (verified.policy_hash, verified.tee, verified.measurement, verified.tcb)
        template = self._templates.get(claims)
        if template is None:
            cert = self.state.ca.issue_leaf(
                key,
                sans=entry.sans,
                policy_hash=verified.policy_hash,
                tee=verified.tee,
                measurement=verified.measurement,
                tcb=verified.tcb,
                workload_secret_id=entry.workload_secret_id,
                validity=self._leaf_validity,
                now=now,
            )
            self._templates.put(claims, leaf_template(cert))
            return cert
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        now = now.replace(microsecond=0)
        return (
            template.public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - LEAF_BACKDATE)
            .not_valid_after(min(now + self._leaf_validity, CA_NOT_AFTER))
            .sign(self._mesh_key, _SHA384)
        )


def leaf_template(cert: x509.Certificate) -> x509.CertificateBuilder:
    """A builder with ``cert``'s issuer, subject and extensions (in order), nothing else."""
    builder = x509.CertificateBuilder().issuer_name(cert.issuer).subject_name(cert.subject)
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder
