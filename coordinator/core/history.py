"""Content-addressed manifest history over a Store, with a signed ``latest`` pointer (DESIGN §5).

Blobs (manifests, policies, transitions) live under ``<kind>/<lowercase hex sha256>`` and are
re-hashed on every read from the store, so a store can lose data but never forge it. Only
``transitions/latest`` changes; it carries an ECDSA signature by the history signing key, and is
moved by compare-and-swap so the transition chain stays linear.

Verified blobs are immutable, so they are cached in process without expiry (bounded by count
and bytes, least recently used dropped first).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from coordinator.errors import ConcordError, Status
from coordinator.store.base import KeyNotFound, Store

__all__ = [
    "HASH_SIZE",
    "LATEST_KEY",
    "ZERO_HASH",
    "BlobCache",
    "ChainError",
    "HashMismatch",
    "History",
    "HistoryError",
    "MalformedBlob",
    "MissingBlob",
    "SignatureRejected",
    "SignedLatest",
    "Transition",
    "transition_bytes",
    "transition_hash",
]

HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)
LATEST_KEY = "transitions/latest"
MANIFESTS = "manifests"
POLICIES = "policies"
TRANSITIONS = "transitions"

# A DER ECDSA P-384 signature is at most 104 bytes; allow room for larger curves, no more.
MAX_SIGNATURE_SIZE = 160
DEFAULT_MAX_CHAIN = 100_000

_SIGN_ALG = ec.ECDSA(utils.Prehashed(hashes.SHA256()), deterministic_signing=True)
_VERIFY_ALG = ec.ECDSA(utils.Prehashed(hashes.SHA256()))


class HistoryError(ConcordError):
    """Base class of history failures (the store itself raises StoreError). Callers are told
    only the class name: the store is untrusted and its content is not theirs to see."""

    reason = "history_error"
    status = Status.INTERNAL

    def public_message(self) -> str:
        return f"store error: {type(self).__name__}"


class HashMismatch(HistoryError):
    """A blob read from the store does not hash to its address."""

    reason = "history_hash_mismatch"


class MissingBlob(HistoryError):
    """A blob the history refers to is not in the store."""

    reason = "history_blob_missing"

    def __init__(self, key: str) -> None:
        super().__init__(f"history blob missing from the store: {key}")
        self.key = key


class MalformedBlob(HistoryError, ValueError):
    """A transition or ``latest`` value has the wrong structure."""

    reason = "history_blob_malformed"


class SignatureRejected(HistoryError):
    """``latest`` is not signed by the expected history signing key."""

    reason = "history_signature_rejected"


class ChainError(HistoryError):
    """The transition chain loops or is longer than allowed."""

    reason = "history_chain_invalid"


def _check_hash(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise MalformedBlob(f"{what}: must be bytes")
    value = bytes(value)
    if len(value) != HASH_SIZE:
        raise MalformedBlob(f"{what}: must be {HASH_SIZE} bytes, got {len(value)}")
    return value


def transition_bytes(manifest_hash: bytes, previous: bytes) -> bytes:
    """The 64-byte transition: manifest hash ‖ previous transition hash (zeros for the first)."""
    return _check_hash(manifest_hash, "manifest hash") + _check_hash(previous, "previous")


def transition_hash(manifest_hash: bytes, previous: bytes) -> bytes:
    """Address of a transition: SHA-256 of its 64 bytes."""
    return hashlib.sha256(transition_bytes(manifest_hash, previous)).digest()


@dataclass(frozen=True)
class Transition:
    """One step of the history; ``hash`` is checked against the other two fields."""

    manifest_hash: bytes
    previous: bytes
    hash: bytes

    def __post_init__(self) -> None:
        _check_hash(self.hash, "transition hash")
        if transition_hash(self.manifest_hash, self.previous) != self.hash:
            raise HashMismatch("transition hash does not match its contents")

    @classmethod
    def create(cls, manifest_hash: bytes, previous: bytes = ZERO_HASH) -> Transition:
        return cls(bytes(manifest_hash), bytes(previous), transition_hash(manifest_hash, previous))

    @classmethod
    def decode(cls, data: bytes) -> Transition:
        if len(data) != 2 * HASH_SIZE:
            raise MalformedBlob(f"transition must be {2 * HASH_SIZE} bytes, got {len(data)}")
        data = bytes(data)
        return cls.create(data[:HASH_SIZE], data[HASH_SIZE:])

    def encode(self) -> bytes:
        return self.manifest_hash + self.previous

    def __repr__(self) -> str:
        return (
            f"Transition(hash={self.hash.hex()[:16]}…, manifest={self.manifest_hash.hex()[:16]}…,"
            f" previous={self.previous.hex()[:16]}…)"
        )

    @property
    def is_first(self) -> bool:
        """Whether this transition starts the chain (previous is the all-zero root)."""
        return self.previous == ZERO_HASH


@dataclass(frozen=True)
class SignedLatest:
    """The ``latest`` pointer: transition hash and a DER ECDSA signature over it.

    The encoding (hash ‖ DER) round-trips exactly: :meth:`decode` accepts only canonical DER,
    so ``decode(x).encode() == x`` and CAS against an encoded value is sound.
    """

    transition_hash: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_hash(self.transition_hash, "latest transition hash")
        if not 8 <= len(self.signature) <= MAX_SIGNATURE_SIZE:
            raise MalformedBlob("latest signature has an impossible length")
        try:
            r, s = utils.decode_dss_signature(self.signature)
        except ValueError:
            raise MalformedBlob("latest signature is not DER ECDSA") from None
        if r <= 0 or s <= 0 or utils.encode_dss_signature(r, s) != self.signature:
            raise MalformedBlob("latest signature is not canonical DER ECDSA")

    @classmethod
    def sign(cls, transition_hash: bytes, key: ec.EllipticCurvePrivateKey) -> SignedLatest:
        """Sign the raw 32-byte transition hash as a prehashed SHA-256 digest."""
        digest = _check_hash(transition_hash, "latest transition hash")
        return cls(digest, key.sign(digest, _SIGN_ALG))

    def verify(self, public_key: ec.EllipticCurvePublicKey) -> None:
        """Raise :class:`SignatureRejected` unless ``public_key`` signed this pointer."""
        try:
            public_key.verify(self.signature, self.transition_hash, _VERIFY_ALG)
        except InvalidSignature:
            raise SignatureRejected(
                "latest is not signed by the history signing key of this seed"
            ) from None

    def encode(self) -> bytes:
        return self.transition_hash + self.signature

    def __repr__(self) -> str:
        return f"SignedLatest({self.transition_hash.hex()[:16]}…)"

    @classmethod
    def decode(cls, data: bytes) -> SignedLatest:
        data = bytes(data)
        if len(data) <= HASH_SIZE:
            raise MalformedBlob(f"latest is too short ({len(data)} bytes)")
        return cls(data[:HASH_SIZE], data[HASH_SIZE:])


class BlobCache:
    """Verified immutable blobs by store key, least recently used dropped past the bounds."""

    def __init__(self, max_entries: int = 100_000, max_bytes: int = 256 << 20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(old)
        self._items[key] = value
        self._bytes += len(value)
        while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self._bytes -= len(dropped)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size_bytes(self) -> int:
        return self._bytes


def _blob_key(kind: str, digest: bytes) -> str:
    return f"{kind}/{_check_hash(digest, f'{kind} address').hex()}"


class History:
    """The manifest history of one deployment on one Store."""

    def __init__(
        self,
        store: Store,
        *,
        cache: BlobCache | None = None,
        max_chain: int = DEFAULT_MAX_CHAIN,
    ) -> None:
        self.store = store
        self.cache = cache if cache is not None else BlobCache()
        self.max_chain = max_chain

    # -- blobs -------------------------------------------------------------------------------

    async def _put_blob(self, kind: str, value: bytes) -> bytes:
        value = bytes(value)
        digest = hashlib.sha256(value).digest()
        key = _blob_key(kind, digest)
        if key not in self.cache:
            await self.store.set(key, value)
            self.cache.put(key, value)
        return digest

    async def _get_blob(self, kind: str, digest: bytes) -> bytes:
        key = _blob_key(kind, digest)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        try:
            value = await self.store.get(key)
        except KeyNotFound:
            raise MissingBlob(key) from None
        if hashlib.sha256(value).digest() != digest:
            raise HashMismatch(f"store value at {key} does not hash to its address")
        value = bytes(value)
        self.cache.put(key, value)
        return value

    async def put_manifest(self, raw: bytes) -> bytes:
        """Store the exact manifest bytes; returns their SHA-256."""
        return await self._put_blob(MANIFESTS, raw)

    async def get_manifest(self, digest: bytes) -> bytes:
        return await self._get_blob(MANIFESTS, digest)

    async def put_policy(self, raw: bytes) -> bytes:
        return await self._put_blob(POLICIES, raw)

    async def get_policy(self, digest: bytes) -> bytes:
        return await self._get_blob(POLICIES, digest)

    async def put_transition(self, transition: Transition) -> bytes:
        """Store a transition; returns its hash (its address)."""
        digest = await self._put_blob(TRANSITIONS, transition.encode())
        if digest != transition.hash:  # pragma: no cover - Transition checks this on creation
            raise HashMismatch("transition hash does not match its contents")
        return digest

    async def get_transition(self, digest: bytes) -> Transition:
        if _check_hash(digest, "transition address") == ZERO_HASH:
            raise MissingBlob(_blob_key(TRANSITIONS, digest))
        return Transition.decode(await self._get_blob(TRANSITIONS, digest))

    # -- latest ------------------------------------------------------------------------------

    async def get_latest(self) -> SignedLatest | None:
        """The current ``latest`` pointer, **unverified**; None before the first manifest."""
        try:
            value = await self.store.get(LATEST_KEY)
        except KeyNotFound:
            return None
        if not value:
            return None
        return SignedLatest.decode(value)

    async def get_latest_raw(self) -> bytes:
        """The stored ``latest`` bytes as they are (``b""`` when absent), for judging them."""
        try:
            return bytes(await self.store.get(LATEST_KEY))
        except KeyNotFound:
            return b""

    async def has_history(self) -> bool:
        """Whether any manifest or transition blob is stored (with or without ``latest``)."""
        return await self.store.has_any(MANIFESTS) or await self.store.has_any(TRANSITIONS)

    async def replace_latest_raw(self, bad: bytes, new: SignedLatest) -> None:
        """Write ``new`` over exactly the value ``bad`` (``b""``: absent); ConcurrentUpdate if the
        store holds anything else by now (self-repair after tampering)."""
        await self.store.compare_and_swap(LATEST_KEY, bad, new.encode())

    async def set_latest(self, new: SignedLatest, old: SignedLatest | None) -> None:
        """Move ``latest`` from ``old`` (None: absent) to ``new``; ConcurrentUpdate if it moved."""
        await self.store.compare_and_swap(
            LATEST_KEY, old.encode() if old is not None else b"", new.encode()
        )

    @staticmethod
    def verify_latest(latest: SignedLatest, public_key: ec.EllipticCurvePublicKey) -> None:
        latest.verify(public_key)

    def watch_latest(self) -> AsyncIterator[SignedLatest]:
        """New ``latest`` values as they are written. The store watch is opened by this call
        (not lazily on first iteration), so nothing written after it returns is missed.
        A malformed value ends the iterator with :class:`MalformedBlob`."""
        return _LatestWatch(self.store.watch(LATEST_KEY))

    def watch_latest_raw(self) -> AsyncIterator[bytes]:
        """Raw new ``latest`` values (``DELETED`` on deletion), opened by this call."""
        return self.store.watch(LATEST_KEY)

    # -- chain -------------------------------------------------------------------------------

    async def lineage(self, from_hash: bytes, stop: bytes, limit: int) -> list[bytes]:
        """Transition hashes before ``from_hash``, newest first, walking back until ``stop`` (which
        is included), the all-zero root, a blob that is missing or bad, or ``limit`` steps.
        Never raises for what the store holds: a short answer just lacks ``stop``."""
        found: list[bytes] = []
        current = _check_hash(from_hash, "transition hash")
        seen = {current}
        while len(found) < limit:
            try:
                transition = await self.get_transition(current)
            except HistoryError:
                break
            current = transition.previous
            if current == ZERO_HASH or current in seen:
                break
            seen.add(current)
            found.append(current)
            if current == stop:
                break
        return found

    async def walk(self, from_hash: bytes) -> list[Transition]:
        """The chain ending at ``from_hash``, oldest first, back to the all-zero root."""
        chain: list[Transition] = []
        seen: set[bytes] = set()
        current = _check_hash(from_hash, "transition hash")
        while current != ZERO_HASH:
            if current in seen:
                raise ChainError("transition chain contains a cycle")
            if len(chain) >= self.max_chain:
                raise ChainError(f"transition chain longer than {self.max_chain}")
            seen.add(current)
            transition = await self.get_transition(current)
            if transition.hash != current:
                raise HashMismatch("transition read for a hash has another hash")
            chain.append(transition)
            current = transition.previous
        chain.reverse()
        return chain


class _LatestWatch(AsyncIterator[SignedLatest]):
    def __init__(self, inner: AsyncIterator[bytes]) -> None:
        self._inner = inner

    def __aiter__(self) -> _LatestWatch:
        return self

    async def __anext__(self) -> SignedLatest:
        value = await self._inner.__anext__()
        return SignedLatest.decode(value)

    async def aclose(self) -> None:
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()
