"""HPKE sealed boxes for every secret that leaves a coordinator (DESIGN.md §7).

Suites: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, base mode, single shot (RFC 9180),
and the hybrid post-quantum ML-KEM-768 + X25519 KEM with the same KDF and AEAD, negotiated per
request (:class:`SuiteOffer`): the requester states what it accepts, the strongest wins.
``info`` = b"concord/v1/" + purpose, so a box sealed for one purpose (say a workload secret) never
opens as another (say peer recovery secrets). A sealed box is ``enc (32 bytes) ‖ ciphertext``.

Also the plaintext codecs of the recovery payloads: canonical CBOR maps with exactly the expected
keys, checked strictly on decode (types, lengths, canonical encoding, no trailing bytes).

Opening failures raise :class:`SealingError` without saying why: the reason (wrong key, wrong
purpose, tampering) is not something a remote party should learn from us.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Final, TypeAlias

import cbor2
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec, mlkem
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_private_key,
)

from coordinator.errors import ConcordError, Status

DOMAIN: Final = b"concord/v1/"

PURPOSE_WORKLOAD_SECRET: Final = "workload-secret"
PURPOSE_PEER_RECOVER: Final = "peer-recover"
PURPOSE_USER_RECOVER: Final = "user-recover"
PURPOSES: Final = frozenset({PURPOSE_WORKLOAD_SECRET, PURPOSE_PEER_RECOVER, PURPOSE_USER_RECOVER})

PUBLIC_KEY_SIZE: Final = 32  # raw X25519
ENC_SIZE: Final = 32  # DHKEM(X25519) encapsulated key
TAG_SIZE: Final = 16  # AES-256-GCM
MAX_PLAINTEXT_SIZE: Final = 64 * 1024
MAX_SEALED_SIZE: Final = ENC_SIZE + MAX_PLAINTEXT_SIZE + TAG_SIZE

_SUITE: Final = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


class SealingError(ConcordError):
    """A box cannot be sealed or opened. Never carries detail about the contents."""

    reason = "sealed_box_unusable"
    status = Status.INVALID_ARGUMENT

    def public_message(self) -> str:
        return "sealed box cannot be opened by this coordinator"


class InvalidPublicKey(SealingError, ValueError):
    """The recipient key is not a usable raw X25519 public key."""

    reason = "invalid_hpke_public_key"


class UnknownPurpose(ConcordError, ValueError):
    """The purpose is not one of :data:`PURPOSES` (a programming error)."""

    reason = "unknown_sealing_purpose"
    status = Status.INTERNAL

    def __init__(self, purpose: object) -> None:
        super().__init__(f"unknown sealing purpose {purpose!r}")


def generate_keypair() -> tuple[X25519PrivateKey, bytes]:
    """A fresh HPKE key pair: the private key object and the raw 32-byte public key."""
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def seal(recipient_public: bytes, purpose: str, plaintext: bytes) -> bytes:
    """Seal ``plaintext`` to a raw X25519 public key; returns ``enc ‖ ciphertext``."""
    info = _info(purpose)
    if not isinstance(plaintext, bytes):
        raise TypeError("plaintext must be bytes")
    if len(plaintext) > MAX_PLAINTEXT_SIZE:
        raise SealingError(f"plaintext longer than {MAX_PLAINTEXT_SIZE} bytes")
    if not isinstance(recipient_public, bytes) or len(recipient_public) != PUBLIC_KEY_SIZE:
        raise InvalidPublicKey(f"recipient public key must be {PUBLIC_KEY_SIZE} raw bytes")
    public = X25519PublicKey.from_public_bytes(recipient_public)
    try:
        return _SUITE.encrypt(plaintext, public, info=info)
    except ValueError:
        # Low-order points give an all-zero shared secret, which X25519 refuses.
        raise InvalidPublicKey("recipient public key is not usable") from None


def open_sealed(private_key: X25519PrivateKey, purpose: str, sealed: bytes) -> bytes:
    """Open a box made by :func:`seal` with the same purpose; else :class:`SealingError`."""
    info = _info(purpose)
    if not isinstance(sealed, bytes):
        raise SealingError("sealed box must be bytes")
    if len(sealed) < ENC_SIZE + TAG_SIZE:
        raise SealingError("sealed box too short")
    if len(sealed) > MAX_SEALED_SIZE:
        raise SealingError("sealed box too long")
    try:
        return _SUITE.decrypt(sealed, private_key, info=info)
    except (InvalidTag, ValueError):
        raise SealingError("sealed box cannot be opened") from None


def _info(purpose: str) -> bytes:
    if not isinstance(purpose, str) or purpose not in PURPOSES:
        raise UnknownPurpose(purpose)
    return DOMAIN + purpose.encode("ascii")


# --- payload codecs --------------------------------------------------------------------------

SEED_MIN_SIZE: Final = 32
SEED_MAX_SIZE: Final = 64
SALT_SIZE: Final = 32
HASH_SIZE: Final = 32
MAX_KEY_DER_SIZE: Final = 1024
MAX_PAYLOAD_SIZE: Final = 4096


class PayloadError(ConcordError, ValueError):
    """A recovery payload is malformed; ``field`` names the offending part, never its value."""

    reason = "invalid_payload"
    status = Status.INVALID_ARGUMENT

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why


class PayloadMalformed(PayloadError):
    """Not a canonical CBOR map of byte strings (or too large)."""

    reason = "payload_malformed"


class PayloadKeysMismatch(PayloadError):
    """Keys missing or unexpected keys present."""

    reason = "payload_keys_mismatch"


class PayloadFieldInvalid(PayloadError):
    """A field has the wrong type, length or content."""

    reason = "payload_field_invalid"


def _require_bytes(field: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, bytes):
        raise PayloadFieldInvalid(field, f"must be bytes, not {type(value).__name__}")
    if not lo <= len(value) <= hi:
        want = f"{lo}" if lo == hi else f"{lo}..{hi}"
        raise PayloadFieldInvalid(field, f"must be {want} bytes, got {len(value)}")


def _require_p384_key(field: str, der: bytes) -> None:
    try:
        key = load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PayloadFieldInvalid(field, "not a DER private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise PayloadFieldInvalid(field, "must be a P-384 private key")


def _redacted(value: bytes) -> str:
    return f"<{len(value)} bytes redacted>"


def _decode_map(data: bytes, keys: frozenset[str]) -> Mapping[str, Any]:
    """Decode a canonical CBOR map with exactly ``keys``; values are checked by the caller."""
    if not isinstance(data, bytes):
        raise PayloadMalformed("payload", "must be bytes")
    if len(data) > MAX_PAYLOAD_SIZE:
        raise PayloadMalformed("payload", f"longer than {MAX_PAYLOAD_SIZE} bytes")
    try:
        obj = cbor2.loads(data)
    except Exception:  # cbor2 raises several types on garbage; none may escape untyped
        raise PayloadMalformed("payload", "not valid CBOR") from None
    if not isinstance(obj, dict):
        raise PayloadMalformed("payload", "must be a CBOR map")
    if not all(isinstance(k, str) for k in obj):
        raise PayloadMalformed("payload", "map keys must be text strings")
    missing = sorted(keys - obj.keys())
    if missing:
        raise PayloadKeysMismatch("payload", f"missing keys {missing}")
    extra = len(obj.keys() - keys)
    if extra:
        raise PayloadKeysMismatch("payload", f"{extra} unexpected key(s)")
    return obj


def _require_canonical(data: bytes, encoded: bytes) -> None:
    """Reject trailing bytes, duplicate keys, indefinite lengths and non-canonical forms."""
    if data != encoded:
        raise PayloadMalformed("payload", "not canonical CBOR")


@dataclass(frozen=True, repr=False)
class PeerSecrets:
    """What a ready coordinator hands (sealed, "peer-recover") to an attested stale peer."""

    seed: bytes
    salt: bytes
    mesh_ca_key: bytes  # PKCS#8 DER, P-384
    latest_transition_hash: bytes
    manifest_hash: bytes

    KEYS: ClassVar[frozenset[str]] = frozenset(
        {"seed", "salt", "mesh_ca_key", "latest_transition_hash", "manifest_hash"}
    )

    def __post_init__(self) -> None:
        _require_bytes("seed", self.seed, SEED_MIN_SIZE, SEED_MAX_SIZE)
        _require_bytes("salt", self.salt, SALT_SIZE, SALT_SIZE)
        _require_bytes("mesh_ca_key", self.mesh_ca_key, 1, MAX_KEY_DER_SIZE)
        _require_bytes("latest_transition_hash", self.latest_transition_hash, HASH_SIZE, HASH_SIZE)
        _require_bytes("manifest_hash", self.manifest_hash, HASH_SIZE, HASH_SIZE)
        _require_p384_key("mesh_ca_key", self.mesh_ca_key)

    def encode(self) -> bytes:
        return cbor2.dumps(
            {
                "seed": self.seed,
                "salt": self.salt,
                "mesh_ca_key": self.mesh_ca_key,
                "latest_transition_hash": self.latest_transition_hash,
                "manifest_hash": self.manifest_hash,
            },
            canonical=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> PeerSecrets:
        obj = _decode_map(data, cls.KEYS)
        value = cls(
            seed=obj["seed"],
            salt=obj["salt"],
            mesh_ca_key=obj["mesh_ca_key"],
            latest_transition_hash=obj["latest_transition_hash"],
            manifest_hash=obj["manifest_hash"],
        )
        _require_canonical(data, value.encode())
        return value

    def __repr__(self) -> str:
        return (
            f"PeerSecrets(seed={_redacted(self.seed)}, salt={_redacted(self.salt)}, "
            f"mesh_ca_key={_redacted(self.mesh_ca_key)}, "
            f"latest_transition_hash={self.latest_transition_hash.hex()}, "
            f"manifest_hash={self.manifest_hash.hex()})"
        )


@dataclass(frozen=True, repr=False)
class UserRecoverySecret:
    """What a seed-share owner sends (sealed, "user-recover") to a coordinator in recovery."""

    seed: bytes
    salt: bytes

    KEYS: ClassVar[frozenset[str]] = frozenset({"seed", "salt"})

    def __post_init__(self) -> None:
        _require_bytes("seed", self.seed, SEED_MIN_SIZE, SEED_MAX_SIZE)
        _require_bytes("salt", self.salt, SALT_SIZE, SALT_SIZE)

    def encode(self) -> bytes:
        return cbor2.dumps({"seed": self.seed, "salt": self.salt}, canonical=True)

    @classmethod
    def decode(cls, data: bytes) -> UserRecoverySecret:
        obj = _decode_map(data, cls.KEYS)
        value = cls(seed=obj["seed"], salt=obj["salt"])
        _require_canonical(data, value.encode())
        return value

    def __repr__(self) -> str:
        return f"UserRecoverySecret(seed={_redacted(self.seed)}, salt={_redacted(self.salt)})"


THRESHOLD_SHARE_SIZE: Final = 98  # coordinator.core.threshold.SHARE_SIZE


@dataclass(frozen=True, repr=False)
class UserRecoveryShare:
    """One owner's threshold share (sealed, "user-recover") for a k-of-n recovery."""

    share: bytes
    salt: bytes

    KEYS: ClassVar[frozenset[str]] = frozenset({"share", "salt"})

    def __post_init__(self) -> None:
        _require_bytes("share", self.share, THRESHOLD_SHARE_SIZE, THRESHOLD_SHARE_SIZE)
        _require_bytes("salt", self.salt, SALT_SIZE, SALT_SIZE)

    def encode(self) -> bytes:
        return cbor2.dumps({"share": self.share, "salt": self.salt}, canonical=True)

    @classmethod
    def decode(cls, data: bytes) -> UserRecoveryShare:
        obj = _decode_map(data, cls.KEYS)
        value = cls(share=obj["share"], salt=obj["salt"])
        _require_canonical(data, value.encode())
        return value

    def __repr__(self) -> str:
        return f"UserRecoveryShare(share={_redacted(self.share)}, salt={_redacted(self.salt)})"


def decode_user_recovery(data: bytes) -> UserRecoverySecret | UserRecoveryShare:
    """A whole seed (threshold 1) or one threshold share, told apart by the map's keys."""
    try:
        return UserRecoverySecret.decode(data)
    except PayloadKeysMismatch:
        return UserRecoveryShare.decode(data)


# --- suites: classic X25519 and hybrid post-quantum ------------------------------------------


class HpkeSuite(IntEnum):
    """The HPKE suites Concord speaks; values equal the wire enum ``concord.v1.HpkeSuite``.

    Higher is stronger. Both use HKDF-SHA256 and AES-256-GCM; the hybrid KEM (ML-KEM-768 +
    X25519) stays secure while either half holds, so a box recorded today survives X25519
    falling to a quantum computer.
    """

    X25519 = 1
    MLKEM768_X25519 = 2


# RFC 9180 suite identifiers (KEM id ‖ KDF id ‖ AEAD id): what report data binds.
SUITE_IDS: Final[Mapping[HpkeSuite, bytes]] = {
    HpkeSuite.X25519: bytes.fromhex("002000010002"),
    HpkeSuite.MLKEM768_X25519: bytes.fromhex("647a00010002"),
}
MLKEM768_PUBLIC_KEY_SIZE: Final = 1184
PQ_PUBLIC_KEY_SIZE: Final = MLKEM768_PUBLIC_KEY_SIZE + PUBLIC_KEY_SIZE  # ML-KEM pk ‖ X25519 pk
PQ_ENC_SIZE: Final = hpke.KEM.MLKEM768_X25519.enc_length()

_PQ_SUITE: Final = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)

PqPrivateKey: TypeAlias = hpke.MLKEM768X25519PrivateKey


class PostQuantumRequired(ConcordError):
    """The peer offered only classic suites and this side was told to refuse them."""

    reason = "pq_suite_required"
    status = Status.FAILED_PRECONDITION


class SuiteDowngrade(ConcordError):
    """The coordinator answered with a weaker suite than the strongest one offered."""

    reason = "hpke_suite_downgrade"
    status = Status.PERMISSION_DENIED


def generate_pq_keypair() -> tuple[hpke.MLKEM768X25519PrivateKey, bytes]:
    """A fresh hybrid key pair; the public half is ML-KEM-768 pk (1184) ‖ raw X25519 pk (32)."""
    mlkem_key = mlkem.MLKEM768PrivateKey.generate()
    x_key = X25519PrivateKey.generate()
    public = mlkem_key.public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw
    ) + x_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hpke.MLKEM768X25519PrivateKey(mlkem_key, x_key), public


def _pq_public(raw: bytes) -> hpke.MLKEM768X25519PublicKey:
    if not isinstance(raw, bytes) or len(raw) != PQ_PUBLIC_KEY_SIZE:
        raise InvalidPublicKey(f"hybrid public key must be {PQ_PUBLIC_KEY_SIZE} bytes")
    try:
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_PUBLIC_KEY_SIZE]),
            X25519PublicKey.from_public_bytes(raw[MLKEM768_PUBLIC_KEY_SIZE:]),
        )
    except ValueError:
        raise InvalidPublicKey("hybrid public key is not usable") from None


def seal_pq(recipient_public: bytes, purpose: str, plaintext: bytes) -> bytes:
    """Seal to a hybrid public key (see :func:`generate_pq_keypair`); ``enc (1120) ‖ ct``."""
    info = _info(purpose)
    if not isinstance(plaintext, bytes):
        raise TypeError("plaintext must be bytes")
    if len(plaintext) > MAX_PLAINTEXT_SIZE:
        raise SealingError(f"plaintext longer than {MAX_PLAINTEXT_SIZE} bytes")
    public = _pq_public(recipient_public)
    try:
        return _PQ_SUITE.encrypt(plaintext, public, info=info)
    except ValueError:
        raise InvalidPublicKey("recipient public key is not usable") from None


def open_sealed_pq(
    private_key: hpke.MLKEM768X25519PrivateKey, purpose: str, sealed: bytes
) -> bytes:
    """Open a box made by :func:`seal_pq` with the same purpose; else :class:`SealingError`."""
    info = _info(purpose)
    if not isinstance(sealed, bytes):
        raise SealingError("sealed box must be bytes")
    if not PQ_ENC_SIZE + TAG_SIZE <= len(sealed) <= PQ_ENC_SIZE + MAX_PLAINTEXT_SIZE + TAG_SIZE:
        raise SealingError("sealed box has an impossible length")
    try:
        return _PQ_SUITE.decrypt(sealed, private_key, info=info)
    except (InvalidTag, ValueError):
        raise SealingError("sealed box cannot be opened") from None


@dataclass(frozen=True)
class SuiteOffer:
    """What a requester states: the suites it accepts and, for the hybrid one, its key.

    An empty offer is a client from before negotiation: classic X25519 with the request's
    ``hpke_public_key``, and nothing extra in the report data (its bytes stay unchanged).
    """

    suites: tuple[HpkeSuite, ...] = ()
    pq_public_key: bytes = b""

    @classmethod
    def from_wire(cls, suites: Iterable[int], pq_public_key: bytes) -> SuiteOffer:
        """Keep the suites we know (order kept, duplicates dropped); unknown numbers are a
        newer client's business and are ignored rather than refused."""
        known: list[HpkeSuite] = []
        for value in suites:
            if value in HpkeSuite._value2member_map_ and HpkeSuite(value) not in known:
                known.append(HpkeSuite(value))
        if pq_public_key and HpkeSuite.MLKEM768_X25519 not in known:
            raise InvalidPublicKey("a hybrid public key was sent without offering its suite")
        if HpkeSuite.MLKEM768_X25519 in known:
            _pq_public(pq_public_key)
        return cls(tuple(known), pq_public_key)

    @property
    def offers_pq(self) -> bool:
        return HpkeSuite.MLKEM768_X25519 in self.suites

    def binding(self) -> tuple[bytes, bytes] | None:
        """The extra report-data fields (offered suite ids, hybrid key), or None for a classic
        offer. Binding the whole offer is what makes stripping the hybrid suite detectable."""
        if not self.suites:
            return None
        if self.suites == (HpkeSuite.X25519,):
            return None
        return b"".join(SUITE_IDS[s] for s in self.suites), self.pq_public_key

    def choose(self, *, require_pq: bool) -> HpkeSuite:
        """The strongest suite both sides allow; classic refused under ``require_pq``."""
        if self.offers_pq:
            return HpkeSuite.MLKEM768_X25519
        if require_pq:
            raise PostQuantumRequired("the requester offered no post-quantum HPKE suite")
        return HpkeSuite.X25519


def seal_for(
    suite: HpkeSuite, x25519_public: bytes, offer: SuiteOffer, purpose: str, plaintext: bytes
) -> bytes:
    """Seal with the chosen suite to the matching key of the request."""
    if suite is HpkeSuite.MLKEM768_X25519:
        return seal_pq(offer.pq_public_key, purpose, plaintext)
    return seal(x25519_public, purpose, plaintext)


def check_answer(offer: SuiteOffer, answered: int) -> HpkeSuite:
    """Client side: the coordinator must answer with the strongest suite offered."""
    wanted = max(offer.suites, default=HpkeSuite.X25519)
    got = HpkeSuite.X25519 if answered == 0 else answered
    if got != wanted:
        raise SuiteDowngrade(f"asked for HPKE suite {wanted.name}, got {got!r}")
    return wanted
