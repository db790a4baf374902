"""Seed engine: one secret seed + salt deterministically yield every long-lived secret (DESIGN §3).

Every coordinator holding the same seed and salt derives the same root CA key, history signing
key, challenge MAC key and workload secrets, so a deployment survives restarts and can be
recovered from a seed share. Derivations (``hkdf`` = HKDF-SHA256, salt = the salt, output length
= length of the input secret, info = the ASCII label)::

    pod_state_seed      = hkdf(seed, "POD STATE SECRET")
    workload_secret(w)  = hkdf(pod_state_seed, "WORKLOAD SECRET ID: " + w)   (w UTF-8, non-empty)
    root_ca_key         = detkeygen_p384(hkdf(seed, "ROOT CA SEED"))
    history_signing_key = detkeygen_p384(hkdf(seed, "TRANSACTION SIGNING SECRET"))
    challenge_key       = hkdf(seed, "CONCORD CHALLENGE KEY")[:32]

Seed shares are RSA-OAEP(SHA-256, MGF1-SHA-256, label "seedshare") encryptions of the seed, one
per seed-share owner. The seed-share document (JSON, returned by the first SetManifest)::

    {"Salt": "<hex 32 bytes>",
     "SeedShares": [{"PublicKey": "<hex PKCS#1 RSAPublicKey DER>", "EncryptedSeed": "<hex>"}]}

Hex is lowercase. Seeds are 32..64 bytes (generated seeds are 64): the upper bound keeps a
seed inside one OAEP block of a 2048-bit key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, padding, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from attestation.jsonstrict import DuplicateKey, reject_duplicates
from coordinator.errors import ConcordError, Status

SEED_SIZE = 64
MIN_SEED_SIZE = 32
MAX_SEED_SIZE = 64
SALT_SIZE = 32
CHALLENGE_KEY_SIZE = 32
SEEDSHARE_LABEL = b"seedshare"
MAX_SEEDSHARE_DOCUMENT = 1 << 20

LABEL_POD_STATE = "POD STATE SECRET"
LABEL_WORKLOAD = "WORKLOAD SECRET ID: "
LABEL_ROOT_CA = "ROOT CA SEED"
LABEL_SIGNING = "TRANSACTION SIGNING SECRET"
LABEL_CHALLENGE = "CONCORD CHALLENGE KEY"

DETKEYGEN_PERSONALIZATION = b"det ECDSA key gen P-384"
P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    16,
)
_WORKLOAD_CACHE_LIMIT = 4096


class SeedEngineError(ConcordError, ValueError):
    """Bad seed material, secret ID or seed share. Messages never contain secret bytes.

    INTERNAL at the API: requests are validated before they reach the seed engine."""

    reason = "invalid_seed_material"
    status = Status.INTERNAL


def _hkdf(secret: bytes, salt: bytes, info: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=len(secret), salt=salt, info=info.encode("utf-8")
    ).derive(secret)


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def detkeygen_p384(s: bytes) -> ec.EllipticCurvePrivateKey:
    """Derive a P-384 key from ``s`` with HMAC-DRBG(SHA-256), as DESIGN §3 specifies.

    The scalar is the first 48 DRBG output bytes, big-endian, and must lie in [1, n-1]: there is
    no retry, so every implementation agrees (the chance of failure is about 2^-190).
    """
    if not isinstance(s, bytes | bytearray):
        raise SeedEngineError("detkeygen input must be bytes")
    s = bytes(s)
    pers = DETKEYGEN_PERSONALIZATION
    k = b"\x00" * 32
    v = b"\x01" * 32
    k = _hmac(k, v + b"\x00" + s + pers)
    v = _hmac(k, v)
    k = _hmac(k, v + b"\x01" + s + pers)
    v = _hmac(k, v)
    out = b""
    while len(out) < 48:
        v = _hmac(k, v)
        out += v
    d = int.from_bytes(out[:48], "big")
    if not 1 <= d < P384_ORDER:
        raise SeedEngineError("derived P-384 scalar out of range")
    return ec.derive_private_key(d, ec.SECP384R1())


class SeedEngine:
    """Immutable holder of seed and salt with every derived secret computed once."""

    __slots__ = (
        "_challenge_key",
        "_history_signing_key",
        "_lock",
        "_pod_state_seed",
        "_root_ca_key",
        "_salt",
        "_seed",
        "_workload_cache",
    )

    _seed: bytes
    _salt: bytes
    _pod_state_seed: bytes
    _root_ca_key: ec.EllipticCurvePrivateKey
    _history_signing_key: ec.EllipticCurvePrivateKey
    _challenge_key: bytes
    _workload_cache: dict[str, bytes]
    _lock: threading.Lock

    def __init__(self, seed: bytes, salt: bytes) -> None:
        if not isinstance(seed, bytes | bytearray) or not isinstance(salt, bytes | bytearray):
            raise SeedEngineError("seed and salt must be bytes")
        if not MIN_SEED_SIZE <= len(seed) <= MAX_SEED_SIZE:
            raise SeedEngineError(
                f"seed must be {MIN_SEED_SIZE}..{MAX_SEED_SIZE} bytes, got {len(seed)}"
            )
        if len(salt) != SALT_SIZE:
            raise SeedEngineError(f"salt must be {SALT_SIZE} bytes, got {len(salt)}")
        seed, salt = bytes(seed), bytes(salt)
        sa = object.__setattr__
        sa(self, "_seed", seed)
        sa(self, "_salt", salt)
        sa(self, "_pod_state_seed", _hkdf(seed, salt, LABEL_POD_STATE))
        sa(self, "_root_ca_key", detkeygen_p384(_hkdf(seed, salt, LABEL_ROOT_CA)))
        sa(self, "_history_signing_key", detkeygen_p384(_hkdf(seed, salt, LABEL_SIGNING)))
        sa(self, "_challenge_key", _hkdf(seed, salt, LABEL_CHALLENGE)[:CHALLENGE_KEY_SIZE])
        sa(self, "_workload_cache", {})
        sa(self, "_lock", threading.Lock())

    @classmethod
    def generate(cls) -> SeedEngine:
        """A fresh engine: 64-byte random seed, 32-byte random salt."""
        return cls(secrets.token_bytes(SEED_SIZE), secrets.token_bytes(SALT_SIZE))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("SeedEngine is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("SeedEngine is immutable")

    def __repr__(self) -> str:
        return "SeedEngine(<secret>)"

    def __reduce__(self) -> Any:
        raise TypeError("SeedEngine must not be pickled")

    @property
    def seed(self) -> bytes:
        return self._seed

    @property
    def salt(self) -> bytes:
        return self._salt

    @property
    def pod_state_seed(self) -> bytes:
        return self._pod_state_seed

    @property
    def root_ca_key(self) -> ec.EllipticCurvePrivateKey:
        return self._root_ca_key

    @property
    def history_signing_key(self) -> ec.EllipticCurvePrivateKey:
        return self._history_signing_key

    @property
    def challenge_key(self) -> bytes:
        return self._challenge_key

    def workload_secret(self, secret_id: str) -> bytes:
        """The secret for a manifest ``WorkloadSecretID`` (non-empty string)."""
        if not isinstance(secret_id, str):
            raise SeedEngineError("workload secret ID must be a string")
        if not secret_id:
            raise SeedEngineError("workload secret ID must not be empty")
        cached = self._workload_cache.get(secret_id)
        if cached is not None:
            return cached
        try:
            secret = _hkdf(self._pod_state_seed, self._salt, LABEL_WORKLOAD + secret_id)
        except UnicodeEncodeError:
            raise SeedEngineError("workload secret ID is not valid Unicode") from None
        with self._lock:
            if len(self._workload_cache) < _WORKLOAD_CACHE_LIMIT:
                self._workload_cache[secret_id] = secret
        return secret


# --- seed shares -----------------------------------------------------------------------------


def _oaep() -> padding.OAEP:
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()),
        algorithm=hashes.SHA256(),
        label=SEEDSHARE_LABEL,
    )


def encrypt_seed_share(seed: bytes, owner: rsa.RSAPublicKey) -> bytes:
    """RSA-OAEP(SHA-256, MGF1-SHA-256, label "seedshare") of ``seed`` to one owner."""
    if not isinstance(owner, rsa.RSAPublicKey):
        raise SeedEngineError("seed-share owner key must be an RSA public key")
    try:
        return owner.encrypt(bytes(seed), _oaep())
    except ValueError:
        raise SeedEngineError("seed does not fit the owner's RSA key") from None


def decrypt_seed_share(share: bytes, key: rsa.RSAPrivateKey) -> bytes:
    """Inverse of :func:`encrypt_seed_share`; a wrong key or tampered share → SeedEngineError."""
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SeedEngineError("seed-share key must be an RSA private key")
    try:
        return key.decrypt(bytes(share), _oaep())
    except ValueError:
        raise SeedEngineError("seed share does not decrypt with this key") from None


SEEDSHARE_MLKEM_INFO = b"concord/v1/seed-share"
_MLKEM_SUITE = hpke.Suite(hpke.KEM.MLKEM768, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _mlkem_seal(public_raw: bytes, plaintext: bytes) -> bytes:
    """HPKE (ML-KEM-768, HKDF-SHA256, AES-256-GCM) to an owner's raw ML-KEM-768 key."""
    try:
        public = mlkem.MLKEM768PublicKey.from_public_bytes(public_raw)
    except ValueError:
        raise SeedEngineError("not an ML-KEM-768 public key") from None
    return _MLKEM_SUITE.encrypt(plaintext, public, info=SEEDSHARE_MLKEM_INFO)


def _mlkem_open(key: mlkem.MLKEM768PrivateKey, box: bytes) -> bytes:
    if not isinstance(key, mlkem.MLKEM768PrivateKey):
        raise SeedEngineError("the ML-KEM key must be an ML-KEM-768 private key")
    try:
        return _MLKEM_SUITE.decrypt(box, key, info=SEEDSHARE_MLKEM_INFO)
    except (InvalidTag, ValueError):
        raise SeedEngineError("the ML-KEM half of the share does not open with this key") from None


def _pkcs1(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)


_HEX = re.compile(r"(?:[0-9a-f]{2})+")


def _doc_hex(value: Any, path: str) -> bytes:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise SeedEngineError(f"{path}: must be non-empty lowercase hex")
    return bytes.fromhex(value)


@dataclass(frozen=True)
class SeedShareDocument:
    """Salt plus one encrypted seed share per owner: (owner PKCS#1 DER, RSA-OAEP ciphertext).

    With ``threshold`` 1 each ciphertext holds the whole seed and the JSON is exactly what it
    always was; above 1 it holds a :class:`coordinator.core.threshold.SeedShare` and the JSON
    carries ``"Threshold": k``.
    """

    salt: bytes
    shares: tuple[tuple[bytes, bytes], ...]
    threshold: int = 1
    mlkem_sealed: tuple[tuple[bytes, bytes], ...] = ()
    """(owner PKCS#1 DER, ML-KEM box) for owners with an ML-KEM key: their plaintext is
    RSA-OAEP pad XOR ML-KEM box, so opening it takes both keys (either may fall)."""

    @classmethod
    def create(
        cls,
        engine: SeedEngine,
        owners: Sequence[rsa.RSAPublicKey],
        threshold: int = 1,
        deployment_id: bytes = b"",
        mlkem_keys: Mapping[bytes, bytes] | None = None,
    ) -> SeedShareDocument:
        """Encrypt ``engine``'s seed (k = 1) or one Shamir share of it (k > 1) to every owner,
        in the given (manifest) order; owners in ``mlkem_keys`` (PKCS#1 DER → raw ML-KEM-768
        public key) get it wrapped post-quantum as well."""
        if threshold <= 1:
            plains = [engine.seed] * len(owners)
        else:
            from coordinator.core.threshold import split_seed

            parts = split_seed(engine.seed, threshold, len(owners), deployment_id)
            plains = [p.encode() for p in parts]
        shares: list[tuple[bytes, bytes]] = []
        sealed: list[tuple[bytes, bytes]] = []
        for owner, plain in zip(owners, plains, strict=True):
            der = _pkcs1(owner)
            mlkem_public = (mlkem_keys or {}).get(der)
            if mlkem_public is None:
                shares.append((der, encrypt_seed_share(plain, owner)))
                continue
            pad = secrets.token_bytes(len(plain))
            shares.append((der, encrypt_seed_share(pad, owner)))
            sealed.append((der, _mlkem_seal(mlkem_public, _xor(plain, pad))))
        return cls(
            salt=engine.salt,
            shares=tuple(shares),
            threshold=max(threshold, 1),
            mlkem_sealed=tuple(sealed),
        )

    def open_for(
        self, key: rsa.RSAPrivateKey, mlkem_key: mlkem.MLKEM768PrivateKey | None = None
    ) -> bytes:
        """What this document holds for the owner of ``key``: the seed (threshold 1) or its
        threshold share. An ML-KEM-wrapped share needs ``mlkem_key`` too."""
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SeedEngineError("seed-share key must be an RSA private key")
        der = _pkcs1(key.public_key())
        share = self.share_for(der)
        if share is None:
            raise SeedEngineError("no share for this seed-share key")
        boxed = dict(self.mlkem_sealed).get(der)
        if boxed is None:
            return decrypt_seed_share(share, key)
        if mlkem_key is None:
            raise SeedEngineError("this share is wrapped for ML-KEM too: the ML-KEM key is needed")
        pad = decrypt_seed_share(share, key)
        masked = _mlkem_open(mlkem_key, boxed)
        if len(masked) != len(pad):
            raise SeedEngineError("the two halves of the share do not fit together")
        return _xor(masked, pad)

    def share_for(self, owner_pkcs1_der: bytes) -> bytes | None:
        """The encrypted seed for one owner, or None."""
        for der, share in self.shares:
            if der == owner_pkcs1_der:
                return share
        return None

    def _item(self, der: bytes, share: bytes) -> dict[str, str]:
        item = {"PublicKey": der.hex(), "EncryptedSeed": share.hex()}
        boxed = dict(self.mlkem_sealed).get(der)
        if boxed is not None:
            item["MLKEMSealedSeed"] = boxed.hex()
        return item

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "Salt": self.salt.hex(),
            "SeedShares": [self._item(der, share) for der, share in self.shares],
        }
        if self.threshold > 1:
            doc["Threshold"] = self.threshold
        return json.dumps(doc, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_json(cls, data: bytes) -> SeedShareDocument:
        """Strict inverse of :meth:`to_json`; bad input → SeedEngineError naming the field."""
        if len(data) > MAX_SEEDSHARE_DOCUMENT:
            raise SeedEngineError("seed-share document too large")
        try:
            doc = json.loads(bytes(data).decode("utf-8"), object_pairs_hook=reject_duplicates)
        except DuplicateKey as exc:
            raise SeedEngineError(str(exc)) from None
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise SeedEngineError("seed-share document is not valid JSON") from None
        if not isinstance(doc, dict):
            raise SeedEngineError("seed-share document must be a JSON object")
        if set(doc) - {"Threshold"} != {"Salt", "SeedShares"}:
            raise SeedEngineError(
                "seed-share document needs exactly Salt and SeedShares (and Threshold)"
            )
        threshold = doc.get("Threshold", 1)
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int)
            or not 1 <= threshold <= 255
            or ("Threshold" in doc and threshold < 2)
        ):
            raise SeedEngineError("Threshold: must be an integer 2..255 when present")
        boxes: list[tuple[bytes, bytes]] = []
        salt = _doc_hex(doc["Salt"], "Salt")
        if len(salt) != SALT_SIZE:
            raise SeedEngineError(f"Salt: must be {SALT_SIZE} bytes, got {len(salt)}")
        items = doc["SeedShares"]
        if not isinstance(items, list):
            raise SeedEngineError("SeedShares: must be a JSON array")
        shares: list[tuple[bytes, bytes]] = []
        for i, item in enumerate(items):
            path = f"SeedShares[{i}]"
            if not isinstance(item, dict) or set(item) - {"MLKEMSealedSeed"} != {
                "PublicKey",
                "EncryptedSeed",
            }:
                raise SeedEngineError(
                    f"{path}: needs exactly PublicKey and EncryptedSeed (and MLKEMSealedSeed)"
                )
            if "MLKEMSealedSeed" in item:
                boxes.append(
                    (
                        _doc_hex(item["PublicKey"], f"{path}.PublicKey"),
                        _doc_hex(item["MLKEMSealedSeed"], f"{path}.MLKEMSealedSeed"),
                    )
                )
            shares.append(
                (
                    _doc_hex(item["PublicKey"], f"{path}.PublicKey"),
                    _doc_hex(item["EncryptedSeed"], f"{path}.EncryptedSeed"),
                )
            )
        return cls(salt=salt, shares=tuple(shares), threshold=threshold, mlkem_sealed=tuple(boxes))

    def __repr__(self) -> str:
        return f"SeedShareDocument({len(self.shares)} shares, threshold {self.threshold})"
