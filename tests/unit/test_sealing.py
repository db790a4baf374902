"""HPKE sealed boxes and recovery payload codecs (coordinator/core/sealing.py, DESIGN.md §7)."""

from __future__ import annotations

import hashlib
import hmac

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core import sealing
from coordinator.core.sealing import (
    InvalidPublicKey,
    PayloadError,
    PayloadFieldInvalid,
    PayloadKeysMismatch,
    PayloadMalformed,
    PeerSecrets,
    SealingError,
    UnknownPurpose,
    UserRecoverySecret,
    generate_keypair,
    open_sealed,
    seal,
)

PURPOSES = sorted(sealing.PURPOSES)
MSG = b"top secret workload material"


@pytest.fixture(scope="module")
def keypair() -> tuple[X25519PrivateKey, bytes]:
    return generate_keypair()


@pytest.fixture(scope="module")
def mesh_key_der() -> bytes:
    key = ec.generate_private_key(ec.SECP384R1())
    return key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())


# --- an independent RFC 9180 base-mode opener ------------------------------------------------
# DHKEM(X25519, HKDF-SHA256)=0x0020, HKDF-SHA256=0x0001, AES-256-GCM=0x0002. Written from the
# RFC's key schedule to prove the suite and the meaning of info, not just self-consistency.

_KEM_ID = b"KEM" + (0x0020).to_bytes(2, "big")
_HPKE_ID = b"HPKE" + b"".join(i.to_bytes(2, "big") for i in (0x0020, 0x0001, 0x0002))


def _extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or bytes(32), b"HPKE-v1" + suite + label + ikm, hashlib.sha256).digest()


def _expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    assert length <= 32
    labeled = length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info
    return hmac.new(prk, labeled + b"\x01", hashlib.sha256).digest()[:length]


def _rfc9180_open(sk: X25519PrivateKey, box: bytes, info: bytes) -> bytes:
    enc, ct = box[:32], box[32:]
    dh = sk.exchange(X25519PublicKey.from_public_bytes(enc))
    pk_r = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    eae_prk = _extract(_KEM_ID, b"", b"eae_prk", dh)
    shared = _expand(_KEM_ID, eae_prk, b"shared_secret", enc + pk_r, 32)
    context = (
        b"\x00"
        + _extract(_HPKE_ID, b"", b"psk_id_hash", b"")
        + _extract(_HPKE_ID, b"", b"info_hash", info)
    )
    secret = _extract(_HPKE_ID, shared, b"secret", b"")
    key = _expand(_HPKE_ID, secret, b"key", context, 32)
    nonce = _expand(_HPKE_ID, secret, b"base_nonce", context, 12)
    return AESGCM(key).decrypt(nonce, ct, b"")


def test_box_is_rfc9180_with_design_suite_and_info(
    keypair: tuple[X25519PrivateKey, bytes],
) -> None:
    sk, pk = keypair
    box = seal(pk, "workload-secret", MSG)
    assert _rfc9180_open(sk, box, b"concord/v1/workload-secret") == MSG


# --- round trips -----------------------------------------------------------------------------


def test_generate_keypair() -> None:
    sk, pk = generate_keypair()
    assert isinstance(sk, X25519PrivateKey)
    assert len(pk) == 32
    assert pk == sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert generate_keypair()[1] != pk


@pytest.mark.parametrize("purpose", PURPOSES)
@pytest.mark.parametrize("plaintext", [b"", b"x", MSG, b"\x00" * sealing.MAX_PLAINTEXT_SIZE])
def test_round_trip(
    keypair: tuple[X25519PrivateKey, bytes], purpose: str, plaintext: bytes
) -> None:
    sk, pk = keypair
    box = seal(pk, purpose, plaintext)
    assert len(box) == sealing.ENC_SIZE + len(plaintext) + sealing.TAG_SIZE
    assert open_sealed(sk, purpose, box) == plaintext


def test_sealing_is_randomised(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    _, pk = keypair
    assert seal(pk, "workload-secret", MSG) != seal(pk, "workload-secret", MSG)


# --- opening failures ------------------------------------------------------------------------


def test_wrong_key(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    _, pk = keypair
    other, _ = generate_keypair()
    with pytest.raises(SealingError):
        open_sealed(other, "workload-secret", seal(pk, "workload-secret", MSG))


@pytest.mark.parametrize("sealed_for", PURPOSES)
@pytest.mark.parametrize("opened_as", PURPOSES)
def test_domain_separation(
    keypair: tuple[X25519PrivateKey, bytes], sealed_for: str, opened_as: str
) -> None:
    sk, pk = keypair
    box = seal(pk, sealed_for, MSG)
    if sealed_for == opened_as:
        assert open_sealed(sk, opened_as, box) == MSG
    else:
        with pytest.raises(SealingError):
            open_sealed(sk, opened_as, box)


def test_every_tampered_byte_rejected(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    sk, pk = keypair
    box = seal(pk, "peer-recover", b"short")
    for i in range(len(box)):
        bad = bytearray(box)
        bad[i] ^= 0x01
        with pytest.raises(SealingError):
            open_sealed(sk, "peer-recover", bytes(bad))


def test_every_truncation_rejected(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    sk, pk = keypair
    box = seal(pk, "peer-recover", b"short")
    for n in range(len(box)):
        with pytest.raises(SealingError):
            open_sealed(sk, "peer-recover", box[:n])


def test_appended_byte_rejected(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    sk, pk = keypair
    with pytest.raises(SealingError):
        open_sealed(sk, "peer-recover", seal(pk, "peer-recover", MSG) + b"\x00")


def test_oversized_box_rejected_before_decrypting(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    sk, _ = keypair
    with pytest.raises(SealingError, match="too long"):
        open_sealed(sk, "workload-secret", b"\x00" * (sealing.MAX_SEALED_SIZE + 1))


def test_error_message_reveals_nothing(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    sk, pk = keypair
    box = seal(pk, "workload-secret", MSG)
    with pytest.raises(SealingError) as exc:
        open_sealed(sk, "user-recover", box)
    assert str(exc.value) == "sealed box cannot be opened"
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_non_bytes_box_rejected(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    sk, _ = keypair
    with pytest.raises(SealingError):
        open_sealed(sk, "workload-secret", "text")  # type: ignore[arg-type]


# --- sealing failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "purpose", ["", "attest", "mesh-cert", "Workload-Secret", "peer-recover\x00"]
)
def test_unknown_purpose(keypair: tuple[X25519PrivateKey, bytes], purpose: str) -> None:
    sk, pk = keypair
    with pytest.raises(UnknownPurpose):
        seal(pk, purpose, MSG)
    with pytest.raises(UnknownPurpose):
        open_sealed(sk, purpose, seal(pk, "workload-secret", MSG))


@pytest.mark.parametrize(
    "public", [b"", b"\x01" * 31, b"\x01" * 33, bytes(32), b"\x01" + bytes(31)]
)
def test_invalid_public_key(public: bytes) -> None:
    """Wrong lengths and low-order points (all-zero shared secret) are refused."""
    with pytest.raises(InvalidPublicKey):
        seal(public, "workload-secret", MSG)


def test_public_key_must_be_raw_bytes(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    sk, _ = keypair
    with pytest.raises(InvalidPublicKey):
        seal(sk.public_key(), "workload-secret", MSG)  # type: ignore[arg-type]


def test_plaintext_too_large(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    _, pk = keypair
    with pytest.raises(SealingError):
        seal(pk, "workload-secret", b"\x00" * (sealing.MAX_PLAINTEXT_SIZE + 1))
    with pytest.raises(TypeError):
        seal(pk, "workload-secret", "text")  # type: ignore[arg-type]


# --- PeerSecrets -----------------------------------------------------------------------------


def _peer(mesh_key_der: bytes, **overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "seed": b"\x11" * 64,
        "salt": b"\x22" * 32,
        "mesh_ca_key": mesh_key_der,
        "latest_transition_hash": b"\x33" * 32,
        "manifest_hash": b"\x44" * 32,
    }
    fields.update(overrides)
    return fields


def test_peer_secrets_round_trip(mesh_key_der: bytes) -> None:
    value = PeerSecrets(**_peer(mesh_key_der))  # type: ignore[arg-type]
    data = value.encode()
    assert PeerSecrets.decode(data) == value
    assert value.encode() == data  # deterministic
    assert cbor2.loads(data) == _peer(mesh_key_der)


def test_peer_secrets_sealed_round_trip(
    keypair: tuple[X25519PrivateKey, bytes], mesh_key_der: bytes
) -> None:
    sk, pk = keypair
    value = PeerSecrets(**_peer(mesh_key_der))  # type: ignore[arg-type]
    box = seal(pk, "peer-recover", value.encode())
    assert PeerSecrets.decode(open_sealed(sk, "peer-recover", box)) == value


def test_peer_secrets_accepts_32_byte_seed(mesh_key_der: bytes) -> None:
    value = PeerSecrets(**_peer(mesh_key_der, seed=b"\x01" * 32))  # type: ignore[arg-type]
    assert PeerSecrets.decode(value.encode()) == value


def test_peer_secrets_repr_hides_secrets(mesh_key_der: bytes) -> None:
    value = PeerSecrets(**_peer(mesh_key_der, seed=bytes(range(64))))  # type: ignore[arg-type]
    for text in (repr(value), str(value), f"{value}"):
        assert bytes(range(64)).hex() not in text
        assert repr(bytes(range(64))) not in text
        assert (b"\x22" * 32).hex() not in text and repr(b"\x22" * 32) not in text
        assert mesh_key_der.hex()[:32] not in text
        assert "redacted" in text
        assert (b"\x33" * 32).hex() in text  # public hashes are useful in logs


@pytest.mark.parametrize("key", sorted(PeerSecrets.KEYS))
def test_peer_secrets_missing_key(mesh_key_der: bytes, key: str) -> None:
    fields = _peer(mesh_key_der)
    del fields[key]
    with pytest.raises(PayloadKeysMismatch, match=key):
        PeerSecrets.decode(cbor2.dumps(fields, canonical=True))


def test_peer_secrets_extra_key(mesh_key_der: bytes) -> None:
    fields = _peer(mesh_key_der, extra=b"")
    with pytest.raises(PayloadKeysMismatch):
        PeerSecrets.decode(cbor2.dumps(fields, canonical=True))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", b"\x11" * 31),
        ("seed", b"\x11" * 65),
        ("seed", "text"),
        ("salt", b"\x22" * 31),
        ("salt", b"\x22" * 33),
        ("salt", 7),
        ("mesh_ca_key", b""),
        ("mesh_ca_key", b"not a key"),
        ("mesh_ca_key", b"\x30" * 2000),
        ("latest_transition_hash", b"\x33" * 31),
        ("latest_transition_hash", None),
        ("manifest_hash", b"\x44" * 33),
        ("manifest_hash", [b"\x44" * 32]),
    ],
)
def test_peer_secrets_bad_field(mesh_key_der: bytes, field: str, value: object) -> None:
    data = cbor2.dumps(_peer(mesh_key_der, **{field: value}), canonical=True)
    with pytest.raises(PayloadFieldInvalid) as exc:
        PeerSecrets.decode(data)
    assert exc.value.field == field


def test_peer_secrets_rejects_non_p384_key() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        Encoding.DER, PrivateFormat.PKCS8, NoEncryption()
    )
    x25519 = X25519PrivateKey.generate().private_bytes(
        Encoding.DER, PrivateFormat.PKCS8, NoEncryption()
    )
    for der in (p256, x25519):
        with pytest.raises(PayloadFieldInvalid) as exc:
            PeerSecrets(**_peer(der))  # type: ignore[arg-type]
        assert exc.value.field == "mesh_ca_key"


def test_peer_secrets_non_canonical_rejected(mesh_key_der: bytes) -> None:
    fields = _peer(mesh_key_der)
    reordered = dict(reversed(list(fields.items())))
    data = cbor2.dumps(reordered)  # insertion order, not canonical order
    assert data != cbor2.dumps(fields, canonical=True)
    with pytest.raises(PayloadMalformed):
        PeerSecrets.decode(data)


def test_peer_secrets_trailing_bytes_rejected(mesh_key_der: bytes) -> None:
    data = PeerSecrets(**_peer(mesh_key_der)).encode()  # type: ignore[arg-type]
    with pytest.raises(PayloadMalformed):
        PeerSecrets.decode(data + b"\x00")


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff", b"\x80", cbor2.dumps([b"seed"]), cbor2.dumps(b"x"), cbor2.dumps({1: b"x"})],
)
def test_peer_secrets_not_a_map(data: bytes) -> None:
    with pytest.raises(PayloadMalformed):
        PeerSecrets.decode(data)


def test_peer_secrets_oversized_rejected() -> None:
    with pytest.raises(PayloadMalformed):
        PeerSecrets.decode(b"\xa0" + b"\x00" * sealing.MAX_PAYLOAD_SIZE)


# --- UserRecoverySecret ----------------------------------------------------------------------


def test_user_secret_round_trip(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    sk, pk = keypair
    value = UserRecoverySecret(seed=b"\x01" * 64, salt=b"\x02" * 32)
    box = seal(pk, "user-recover", value.encode())
    assert UserRecoverySecret.decode(open_sealed(sk, "user-recover", box)) == value
    assert cbor2.loads(value.encode()) == {"seed": b"\x01" * 64, "salt": b"\x02" * 32}


def test_user_secret_repr_hides_secrets() -> None:
    value = UserRecoverySecret(seed=bytes(range(64)), salt=bytes(range(100, 132)))
    text = repr(value)
    assert bytes(range(64)).hex() not in text and repr(bytes(range(64))) not in text
    assert bytes(range(100, 132)).hex() not in text
    assert "redacted" in text


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"seed": b"\x01" * 64}, PayloadKeysMismatch),
        ({"salt": b"\x02" * 32}, PayloadKeysMismatch),
        ({"seed": b"\x01" * 64, "salt": b"\x02" * 32, "force": True}, PayloadKeysMismatch),
        ({"seed": b"\x01" * 16, "salt": b"\x02" * 32}, PayloadFieldInvalid),
        ({"seed": b"\x01" * 64, "salt": b"\x02" * 28}, PayloadFieldInvalid),
        ({"seed": "01" * 64, "salt": b"\x02" * 32}, PayloadFieldInvalid),
    ],
)
def test_user_secret_decode_rejects(fields: dict[str, object], error: type[PayloadError]) -> None:
    with pytest.raises(error):
        UserRecoverySecret.decode(cbor2.dumps(fields, canonical=True))


def test_user_secret_duplicate_key_rejected() -> None:
    # map(3) {"salt": .., "seed": .., "seed": ..}: a decoder keeps one; we refuse the ambiguity.
    salt, seed = b"\x02" * 32, b"\x01" * 64
    data = (
        b"\xa3"
        + cbor2.dumps("salt")
        + cbor2.dumps(salt)
        + cbor2.dumps("seed")
        + cbor2.dumps(seed)
        + cbor2.dumps("seed")
        + cbor2.dumps(b"\x03" * 64)
    )
    with pytest.raises(PayloadMalformed):
        UserRecoverySecret.decode(data)


def test_user_secret_indefinite_length_rejected() -> None:
    seed = b"\x01" * 64
    indefinite_seed = b"\x5f" + cbor2.dumps(seed[:32]) + cbor2.dumps(seed[32:]) + b"\xff"
    data = (
        b"\xa2" + cbor2.dumps("salt") + cbor2.dumps(b"\x02" * 32) + cbor2.dumps("seed")
    ) + indefinite_seed
    with pytest.raises(PayloadMalformed):
        UserRecoverySecret.decode(data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_decoders_fail_typed_on_garbage(data: bytes) -> None:
    for cls in (UserRecoverySecret, PeerSecrets):
        try:
            cls.decode(data)
        except PayloadError:
            pass


@settings(max_examples=150, deadline=None)
@given(
    fields=st.dictionaries(
        st.sampled_from(["seed", "salt", "extra", "Seed"]),
        st.one_of(st.binary(max_size=70), st.integers(), st.text(max_size=5), st.none()),
        max_size=4,
    )
)
def test_user_secret_decoder_structured_fuzz(fields: dict[str, object]) -> None:
    data = cbor2.dumps(fields, canonical=True)
    try:
        value = UserRecoverySecret.decode(data)
    except PayloadError:
        return
    assert set(fields) == {"seed", "salt"}
    assert value.encode() == data
