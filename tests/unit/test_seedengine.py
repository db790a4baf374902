"""Seed engine: DESIGN §3 vectors, validation, immutability, seed shares."""

from __future__ import annotations

import json
import pickle

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core.seedengine import (
    P384_ORDER,
    SeedEngine,
    SeedEngineError,
    SeedShareDocument,
    decrypt_seed_share,
    detkeygen_p384,
    encrypt_seed_share,
)

SEED1 = bytes.fromhex("ccebed634ddee7535cd593e1e200b19b780f3906d8782207fa09c59e87a07cb3")
SALT1 = bytes.fromhex("8c1b1225c5f6cb7eef6dbd8f77a1e1e149de031d6e3718e660a8b04c8e2b0037")
SEED2 = bytes.fromhex("9c7f285a46704602f8b6d9d4a89193579a979f144a9d8733fddd4f2bbcecd77f")
SALT2 = bytes.fromhex("6227b2cae740349beaff040af74aa1566ac330e9b54ce0e58f8d5ee47281745a")


@pytest.fixture(scope="module")
def owner_keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(65537, 2048) for _ in range(2)]


def scalar(key: ec.EllipticCurvePrivateKey) -> int:
    return key.private_numbers().private_value


# --- DESIGN §3 vectors -----------------------------------------------------------------------


def test_vector_pod_state_seed() -> None:
    e = SeedEngine(SEED1, SALT1)
    assert e.pod_state_seed.hex() == (
        "e8d42dc81aea4b0d0749b75004f3bb2ad35fd827e05727ac19c31e106ddc2a1f"
    )


def test_vector_root_scalar() -> None:
    e = SeedEngine(SEED1, SALT1)
    assert isinstance(e.root_ca_key.curve, ec.SECP384R1)
    assert scalar(e.root_ca_key) == int(
        "b17a061a04d93454c9530d247b336a9112a5209da0d0199929484cba350d2515"
        "9f2ead15d2d1334d6c908dad63ce7ee4",
        16,
    )


def test_vector_signing_scalar() -> None:
    e = SeedEngine(SEED1, SALT1)
    assert isinstance(e.history_signing_key.curve, ec.SECP384R1)
    assert scalar(e.history_signing_key) == int(
        "5a58b771eef6bd6d2967b933ef3474e71bea849fd2b900f431dafe843d267b0b"
        "08875a95f4e442c6863663090c7c8576",
        16,
    )


@pytest.mark.parametrize(
    ("secret_id", "expected"),
    [
        ("workload-1", "87668b2d30e7538b5643e42bcc0f1a7b532833f47fcd1293f779d9f2abf9e708"),
        ("12345", "c5dfeb23e39da9807d6260e6825d8367b47052fcb6bb4c79624fc5936921a0d0"),
    ],
)
def test_vector_workload_secret(secret_id: str, expected: str) -> None:
    e = SeedEngine(SEED2, SALT2)
    assert e.workload_secret(secret_id).hex() == expected
    assert e.workload_secret(secret_id).hex() == expected  # cached path


def test_empty_workload_secret_id_rejected() -> None:
    with pytest.raises(SeedEngineError):
        SeedEngine(SEED2, SALT2).workload_secret("")


def test_non_string_workload_secret_id_rejected() -> None:
    with pytest.raises(SeedEngineError):
        SeedEngine(SEED2, SALT2).workload_secret(b"x")  # type: ignore[arg-type]


def test_surrogate_workload_secret_id_rejected() -> None:
    with pytest.raises(SeedEngineError):
        SeedEngine(SEED2, SALT2).workload_secret("\ud800")


def test_salt_28_bytes_rejected() -> None:
    with pytest.raises(SeedEngineError, match="salt must be 32 bytes, got 28"):
        SeedEngine(SEED1, SALT1[:28])


def test_short_seed_rejected() -> None:
    with pytest.raises(SeedEngineError, match="got 31"):
        SeedEngine(SEED1[:31], SALT1)


def test_long_seed_rejected() -> None:
    with pytest.raises(SeedEngineError, match="got 65"):
        SeedEngine(b"\x01" * 65, SALT1)


def test_non_bytes_rejected() -> None:
    with pytest.raises(SeedEngineError):
        SeedEngine(SEED1.hex(), SALT1)  # type: ignore[arg-type]


# --- behaviour -------------------------------------------------------------------------------


def test_challenge_key_and_distinct_derivations() -> None:
    e = SeedEngine(SEED1, SALT1)
    assert len(e.challenge_key) == 32
    values = {e.challenge_key, e.pod_state_seed, e.workload_secret("a"), e.workload_secret("b")}
    assert len(values) == 4
    assert scalar(e.root_ca_key) != scalar(e.history_signing_key)


def test_salt_changes_everything() -> None:
    a = SeedEngine(SEED1, SALT1)
    b = SeedEngine(SEED1, SALT2)
    assert a.pod_state_seed != b.pod_state_seed
    assert scalar(a.root_ca_key) != scalar(b.root_ca_key)
    assert a.challenge_key != b.challenge_key


def test_generate() -> None:
    a, b = SeedEngine.generate(), SeedEngine.generate()
    assert len(a.seed) == 64 and len(a.salt) == 32
    assert a.seed != b.seed and a.salt != b.salt
    assert len(a.pod_state_seed) == 64
    assert len(a.workload_secret("x")) == 64
    again = SeedEngine(a.seed, a.salt)
    assert scalar(again.root_ca_key) == scalar(a.root_ca_key)


def test_keys_are_cached() -> None:
    e = SeedEngine(SEED1, SALT1)
    assert e.root_ca_key is e.root_ca_key
    assert e.history_signing_key is e.history_signing_key


def test_immutable_and_no_leak() -> None:
    e = SeedEngine(SEED1, SALT1)
    with pytest.raises(AttributeError):
        e.foo = 1
    with pytest.raises(AttributeError):
        e._seed = b"x" * 32
    with pytest.raises(AttributeError):
        e.seed = b"x" * 32  # type: ignore[misc]
    text = repr(e) + str(e)
    for secret in (SEED1, SALT1, e.pod_state_seed, e.challenge_key):
        assert secret.hex() not in text
        assert secret.hex()[:8] not in text
    with pytest.raises(TypeError):
        pickle.dumps(e)


def test_signing_key_signs() -> None:
    e = SeedEngine(SEED1, SALT1)
    sig = e.history_signing_key.sign(b"data", ec.ECDSA(hashes.SHA256()))
    e.history_signing_key.public_key().verify(sig, b"data", ec.ECDSA(hashes.SHA256()))


def test_detkeygen_is_deterministic_and_in_range() -> None:
    a = detkeygen_p384(b"x" * 32)
    b = detkeygen_p384(b"x" * 32)
    c = detkeygen_p384(b"y" * 32)
    assert scalar(a) == scalar(b) != scalar(c)
    assert 1 <= scalar(a) < P384_ORDER


def test_detkeygen_rejects_non_bytes() -> None:
    with pytest.raises(SeedEngineError):
        detkeygen_p384("x")  # type: ignore[arg-type]


def test_detkeygen_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    import coordinator.core.seedengine as se

    monkeypatch.setattr(se, "_hmac", lambda k, d: b"\xff" * 32)
    with pytest.raises(SeedEngineError, match="out of range"):
        se.detkeygen_p384(b"x" * 32)


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=64), st.binary(min_size=32, max_size=32))
def test_any_valid_seed_is_accepted(seed: bytes, salt: bytes) -> None:
    e = SeedEngine(seed, salt)
    assert len(e.pod_state_seed) == len(seed)
    assert len(e.challenge_key) == 32


# --- seed shares -----------------------------------------------------------------------------


def test_oaep_round_trip(owner_keys: list[rsa.RSAPrivateKey]) -> None:
    seed = SeedEngine.generate().seed
    share = encrypt_seed_share(seed, owner_keys[0].public_key())
    assert len(share) == 256
    assert decrypt_seed_share(share, owner_keys[0]) == seed
    assert encrypt_seed_share(seed, owner_keys[0].public_key()) != share  # randomised


def test_oaep_wrong_key(owner_keys: list[rsa.RSAPrivateKey]) -> None:
    share = encrypt_seed_share(b"s" * 64, owner_keys[0].public_key())
    with pytest.raises(SeedEngineError, match="does not decrypt"):
        decrypt_seed_share(share, owner_keys[1])


def test_oaep_tampered(owner_keys: list[rsa.RSAPrivateKey]) -> None:
    share = bytearray(encrypt_seed_share(b"s" * 64, owner_keys[0].public_key()))
    share[10] ^= 1
    with pytest.raises(SeedEngineError):
        decrypt_seed_share(bytes(share), owner_keys[0])


def test_oaep_uses_seedshare_label(owner_keys: list[rsa.RSAPrivateKey]) -> None:
    from cryptography.hazmat.primitives.asymmetric import padding

    share = encrypt_seed_share(b"s" * 64, owner_keys[0].public_key())
    plain = owner_keys[0].decrypt(
        share,
        padding.OAEP(
            mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"seedshare"
        ),
    )
    assert plain == b"s" * 64
    with pytest.raises(ValueError):
        owner_keys[0].decrypt(
            share,
            padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
        )


def test_encrypt_rejects_non_rsa() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(SeedEngineError):
        encrypt_seed_share(b"s" * 64, key)  # type: ignore[arg-type]


def test_document_round_trip(owner_keys: list[rsa.RSAPrivateKey]) -> None:
    engine = SeedEngine.generate()
    doc = SeedShareDocument.create(engine, [k.public_key() for k in owner_keys])
    data = doc.to_json()
    parsed = json.loads(data)
    assert set(parsed) == {"Salt", "SeedShares"}
    assert parsed["Salt"] == engine.salt.hex()
    assert [set(s) for s in parsed["SeedShares"]] == [{"PublicKey", "EncryptedSeed"}] * 2
    back = SeedShareDocument.from_json(data)
    assert back == doc
    for key in owner_keys:
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.PKCS1
        )
        share = back.share_for(der)
        assert share is not None
        assert decrypt_seed_share(share, key) == engine.seed
    assert back.share_for(b"nope") is None
    assert engine.seed.hex() not in repr(doc)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"null",
        b"[]",
        b'{"Salt": "00"}',
        b'{"Salt": "' + b"00" * 32 + b'", "SeedShares": [], "X": 1}',
        b'{"Salt": "' + b"00" * 31 + b'", "SeedShares": []}',
        b'{"Salt": "' + b"AA" * 32 + b'", "SeedShares": []}',
        b'{"Salt": "' + b"00" * 32 + b'", "SeedShares": {}}',
        b'{"Salt": "' + b"00" * 32 + b'", "SeedShares": [{"PublicKey": "00"}]}',
        b'{"Salt": "'
        + b"00" * 32
        + b'", "SeedShares": [{"PublicKey": "", "EncryptedSeed": "00"}]}',
        b'{"Salt": "' + b"00" * 32 + b'", "SeedShares": [{"PublicKey": 1, "EncryptedSeed": "00"}]}',
        b'{"Salt": "' + b"00" * 32 + b'", "Salt": "' + b"00" * 32 + b'", "SeedShares": []}',
        b"\xff",
    ],
)
def test_document_rejects(data: bytes) -> None:
    with pytest.raises(SeedEngineError):
        SeedShareDocument.from_json(data)
