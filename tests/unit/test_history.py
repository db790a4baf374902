"""History: transition format, signed latest, content addressing, walk, watch."""

from __future__ import annotations

import asyncio
import hashlib
import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, utils

from coordinator.core.history import (
    LATEST_KEY,
    ZERO_HASH,
    BlobCache,
    ChainError,
    HashMismatch,
    History,
    MalformedBlob,
    MissingBlob,
    SignatureRejected,
    SignedLatest,
    Transition,
    transition_bytes,
    transition_hash,
)
from coordinator.store.base import ConcurrentUpdate
from tests.fakes.store import MemoryStore


def sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


# --- transitions ----------------------------------------------------------------------------


def test_transition_vector() -> None:
    got = transition_hash(sha(b"hello"), sha(b"world"))
    assert got.hex() == "7305db9b2abccd706c256db3d97e5ff48d677cfe4d3a5904afb7da0e3950e1e2"
    assert transition_bytes(sha(b"hello"), sha(b"world")) == sha(b"hello") + sha(b"world")
    t = Transition.create(sha(b"hello"), sha(b"world"))
    assert t.hash == got and len(t.encode()) == 64
    assert Transition.decode(t.encode()) == t
    assert not t.is_first and Transition.create(sha(b"hello")).is_first


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33)])
def test_transition_rejects_wrong_lengths(bad: bytes) -> None:
    with pytest.raises(MalformedBlob, match="manifest hash"):
        transition_bytes(bad, ZERO_HASH)
    with pytest.raises(MalformedBlob, match="previous"):
        transition_bytes(ZERO_HASH, bad)


@pytest.mark.parametrize("size", [0, 63, 65, 128])
def test_transition_decode_rejects_wrong_size(size: int) -> None:
    with pytest.raises(MalformedBlob):
        Transition.decode(bytes(size))


def test_transition_with_inconsistent_hash_is_rejected() -> None:
    with pytest.raises(HashMismatch):
        Transition(sha(b"m"), ZERO_HASH, sha(b"not the hash"))


# --- signed latest --------------------------------------------------------------------------


def test_latest_round_trip(key: ec.EllipticCurvePrivateKey) -> None:
    h = sha(b"transition")
    latest = SignedLatest.sign(h, key)
    latest.verify(key.public_key())
    History.verify_latest(latest, key.public_key())
    encoded = latest.encode()
    assert encoded[:32] == h
    assert SignedLatest.decode(encoded) == latest
    assert SignedLatest.decode(encoded).encode() == encoded
    # Signed over the raw hash as a prehashed SHA-256 digest.
    from cryptography.hazmat.primitives import hashes

    key.public_key().verify(latest.signature, h, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    # Deterministic signatures: the same seed yields byte-identical latest values.
    assert SignedLatest.sign(h, key) == latest


def flip_r(signature: bytes) -> bytes:
    r, s = utils.decode_dss_signature(signature)
    return utils.encode_dss_signature(r ^ 1, s)


def test_tampered_latest_signature_is_rejected(key: ec.EllipticCurvePrivateKey) -> None:
    latest = SignedLatest.sign(sha(b"t"), key)
    tampered = SignedLatest(latest.transition_hash, flip_r(latest.signature))
    with pytest.raises(SignatureRejected):
        tampered.verify(key.public_key())
    other_hash = SignedLatest(sha(b"other"), latest.signature)
    with pytest.raises(SignatureRejected):
        other_hash.verify(key.public_key())
    other_key = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(SignatureRejected):
        History.verify_latest(latest, other_key.public_key())


def test_malformed_latest_is_rejected(key: ec.EllipticCurvePrivateKey) -> None:
    latest = SignedLatest.sign(sha(b"t"), key)
    enc = latest.encode()
    for bad in (b"", enc[:32], enc[:31], enc + b"\x00", enc[:-1], enc[:32] + b"\x30" * 20):
        with pytest.raises(MalformedBlob):
            SignedLatest.decode(bad)
    # Non-canonical DER (long-form length) must not round-trip into a different encoding.
    sig = latest.signature
    long_form = b"\x30\x81" + sig[1:]
    with pytest.raises(MalformedBlob):
        SignedLatest(latest.transition_hash, long_form)
    with pytest.raises(MalformedBlob):
        SignedLatest(bytes(31), sig)


# --- blobs ----------------------------------------------------------------------------------


async def test_blobs_are_content_addressed() -> None:
    store = MemoryStore()
    h = History(store)
    digest = await h.put_manifest(b'{"exact": "bytes"}')
    assert digest == sha(b'{"exact": "bytes"}')
    assert await store.get(f"manifests/{digest.hex()}") == b'{"exact": "bytes"}'
    assert await h.get_manifest(digest) == b'{"exact": "bytes"}'
    p = await h.put_policy(b"policy")
    assert await History(store).get_policy(p) == b"policy"
    t = Transition.create(digest)
    assert await h.put_transition(t) == t.hash
    assert await History(store).get_transition(t.hash) == t


async def test_tampered_blob_in_store_is_detected() -> None:
    store = MemoryStore()
    digest = await History(store).put_manifest(b"good")
    store.raw_set(f"manifests/{digest.hex()}", b"evil")
    fresh = History(store)
    with pytest.raises(HashMismatch):
        await fresh.get_manifest(digest)
    # Not cached after a failed check.
    with pytest.raises(HashMismatch):
        await fresh.get_manifest(digest)

    t = Transition.create(digest)
    await History(store).put_transition(t)
    other = Transition.create(sha(b"other"))
    store.raw_set(f"transitions/{t.hash.hex()}", other.encode())
    with pytest.raises(HashMismatch):
        await History(store).get_transition(t.hash)
    store.raw_set(f"policies/{sha(b'p').hex()}", b"q")
    with pytest.raises(HashMismatch):
        await History(store).get_policy(sha(b"p"))


async def test_missing_blob() -> None:
    h = History(MemoryStore())
    with pytest.raises(MissingBlob) as e:
        await h.get_manifest(sha(b"nope"))
    assert e.value.key == f"manifests/{sha(b'nope').hex()}"
    with pytest.raises(MissingBlob):
        await h.get_transition(sha(b"nope"))
    with pytest.raises(MissingBlob):
        await h.get_transition(ZERO_HASH)
    with pytest.raises(MalformedBlob):
        await h.get_manifest(b"short")


async def test_verified_blobs_are_cached() -> None:
    store = MemoryStore()
    digest = await History(store).put_manifest(b"m")
    h = History(store)
    assert await h.get_manifest(digest) == b"m"
    assert await h.get_manifest(digest) == b"m"
    assert store.op_counts["get"] == 1
    # Once verified, a later tamper in the store cannot change what this process serves.
    store.raw_set(f"manifests/{digest.hex()}", b"evil")
    assert await h.get_manifest(digest) == b"m"
    # A put of an already cached blob does not write again.
    sets = store.op_counts["set"]
    await h.put_manifest(b"m")
    assert store.op_counts["set"] == sets


def test_blob_cache_bounds() -> None:
    c = BlobCache(max_entries=3, max_bytes=10)
    for k in "abc":
        c.put(k, b"xx")
    assert c.get("a") == b"xx"  # a is now most recently used
    c.put("d", b"xx")
    assert "b" not in c and "a" in c and len(c) == 3
    c.put("e", b"xxxxxx")  # 2+2+2+6 = 12 > 10: evict least recently used
    assert c.size_bytes <= 10 and "e" in c
    c.put("huge", b"x" * 11)
    assert "huge" not in c


# --- latest ---------------------------------------------------------------------------------


async def test_latest_cas(key: ec.EllipticCurvePrivateKey) -> None:
    store = MemoryStore()
    h = History(store)
    assert await h.get_latest() is None
    l1 = SignedLatest.sign(sha(b"1"), key)
    l2 = SignedLatest.sign(sha(b"2"), key)
    await h.set_latest(l1, None)
    assert await h.get_latest() == l1
    with pytest.raises(ConcurrentUpdate):
        await h.set_latest(l2, None)
    with pytest.raises(ConcurrentUpdate):
        await h.set_latest(l2, l2)
    assert await h.get_latest() == l1
    await h.set_latest(l2, l1)
    assert await h.get_latest() == l2
    store.raw_set(LATEST_KEY, b"garbage")
    with pytest.raises(MalformedBlob):
        await h.get_latest()


async def test_watch_latest(key: ec.EllipticCurvePrivateKey) -> None:
    store = MemoryStore()
    h = History(store)
    w = h.watch_latest()
    l1 = SignedLatest.sign(sha(b"1"), key)
    await h.set_latest(l1, None)
    await store.set(LATEST_KEY, b"garbage")
    l2 = SignedLatest.sign(sha(b"2"), key)
    await store.set(LATEST_KEY, l2.encode())
    async with asyncio.timeout(30):  # liveness only: the values are already written
        assert await w.__anext__() == l1
        with pytest.raises(MalformedBlob):
            await w.__anext__()
        assert await w.__anext__() == l2
    await w.aclose()  # type: ignore[attr-defined]
    assert store.active_watches == 0


# --- walk -----------------------------------------------------------------------------------


async def make_chain(h: History, n: int) -> list[Transition]:
    chain: list[Transition] = []
    prev = ZERO_HASH
    for i in range(n):
        t = Transition.create(await h.put_manifest(f"m{i}".encode()), prev)
        await h.put_transition(t)
        chain.append(t)
        prev = t.hash
    return chain


async def test_walk_back_to_zero_root() -> None:
    store = MemoryStore()
    chain = await make_chain(History(store), 5)
    h = History(store)
    walked = await h.walk(chain[-1].hash)
    assert walked == chain
    assert walked[0].previous == ZERO_HASH
    assert all(b.previous == a.hash for a, b in itertools.pairwise(walked))
    assert await h.walk(chain[2].hash) == chain[:3]
    assert await h.walk(ZERO_HASH) == []


async def test_walk_missing_link() -> None:
    store = MemoryStore()
    chain = await make_chain(History(store), 3)
    store._backend.data.pop(f"transitions/{chain[0].hash.hex()}")
    with pytest.raises(MissingBlob):
        await History(store).walk(chain[-1].hash)


async def test_walk_too_long() -> None:
    store = MemoryStore()
    chain = await make_chain(History(store), 4)
    with pytest.raises(ChainError):
        await History(store, max_chain=3).walk(chain[-1].hash)
    assert len(await History(store, max_chain=4).walk(chain[-1].hash)) == 4


async def test_walk_detects_cycles() -> None:
    """A cycle needs a SHA-256 collision; exercise the guard with a forged transition source."""
    a, b = sha(b"a"), sha(b"b")

    def forged(h: bytes, prev: bytes) -> Transition:
        t = object.__new__(Transition)
        object.__setattr__(t, "manifest_hash", sha(b"m"))
        object.__setattr__(t, "previous", prev)
        object.__setattr__(t, "hash", h)
        return t

    class Cyclic(History):
        async def get_transition(self, digest: bytes) -> Transition:
            return forged(digest, b if digest == a else a)

    with pytest.raises(ChainError, match="cycle"):
        await Cyclic(MemoryStore()).walk(a)

    class Lying(History):
        async def get_transition(self, digest: bytes) -> Transition:
            return forged(b, ZERO_HASH)

    with pytest.raises(HashMismatch):
        await Lying(MemoryStore()).walk(a)
