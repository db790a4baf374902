"""Threshold seed shares (DESIGN §3): Shamir k-of-n per 16-byte block, the share format, the
seed-share document (k = 1 byte-compatible), the manifest field and the partial-share
collector (bindings, deadline, resets)."""

from __future__ import annotations

import itertools
import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from coordinator.core.authz import rsa_pkcs1_der
from coordinator.core.manifest import Manifest, ManifestError
from coordinator.core.rules import SeedshareOwnersChanged, check_update_manifest
from coordinator.core.sealing import (
    PayloadError,
    UserRecoverySecret,
    UserRecoveryShare,
    decode_user_recovery,
)
from coordinator.core.seedengine import (
    SeedEngine,
    SeedEngineError,
    SeedShareDocument,
    decrypt_seed_share,
)
from coordinator.core.threshold import (
    SHARE_SIZE,
    SeedShare,
    ShareCollector,
    ShareIndexMismatch,
    ShareOfOtherDeployment,
    ThresholdError,
    combine_shares,
    split_seed,
)

DEP = bytes(range(32))
OTHER_DEP = bytes(32)
LATEST = b"\x11" * 32
OTHER_LATEST = b"\x22" * 32


@pytest.mark.parametrize(("k", "n"), [(2, 2), (2, 3), (3, 5)])
def test_any_k_shares_recover_and_k_minus_1_recover_nothing(k: int, n: int) -> None:
    seed = os.urandom(64)
    shares = split_seed(seed, k, n, DEP)
    assert [s.index for s in shares] == list(range(1, n + 1))
    for subset in itertools.combinations(shares, k):
        assert combine_shares(list(subset)) == seed
    for subset in itertools.combinations(shares, k - 1):
        if subset:
            # Fewer points than the degree allows: a value, but not the seed, in no block.
            wrong = combine_shares(list(subset))
            assert all(wrong[i : i + 16] != seed[i : i + 16] for i in range(0, 64, 16))


def test_a_wrong_share_gives_another_seed_not_an_error() -> None:
    seed = os.urandom(64)
    a, b, _ = split_seed(seed, 2, 3, DEP)
    bad = SeedShare(b.index, DEP, bytes(x ^ 1 for x in b.points))
    assert combine_shares([a, bad]) != seed


def test_split_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ThresholdError):
        split_seed(os.urandom(64), 1, 3, DEP)
    with pytest.raises(ThresholdError):
        split_seed(os.urandom(64), 4, 3, DEP)
    with pytest.raises(ThresholdError):
        split_seed(os.urandom(32), 2, 3, DEP)
    with pytest.raises(ThresholdError):
        combine_shares([])


def test_share_codec_is_strict() -> None:
    share = split_seed(os.urandom(64), 2, 2, DEP)[0]
    raw = share.encode()
    assert len(raw) == SHARE_SIZE
    assert SeedShare.decode(raw) == share
    assert share.points.hex() not in repr(share)
    for bad in (raw[:-1], raw + b"\x00", b"\x02" + raw[1:], raw[:1] + b"\x00" + raw[2:]):
        with pytest.raises(ThresholdError):
            SeedShare.decode(bad)


@pytest.fixture(scope="module", name="owners")
def owners_fixture() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


def test_document_with_threshold_one_is_what_it_always_was(
    owners: list[rsa.RSAPrivateKey],
) -> None:
    engine = SeedEngine(os.urandom(64), os.urandom(32))
    doc = SeedShareDocument.create(engine, [o.public_key() for o in owners[:2]])
    parsed = json.loads(doc.to_json())
    assert set(parsed) == {"Salt", "SeedShares"}
    assert decrypt_seed_share(doc.shares[0][1], owners[0]) == engine.seed
    assert SeedShareDocument.from_json(doc.to_json()) == doc


def test_document_with_threshold_carries_shares(owners: list[rsa.RSAPrivateKey]) -> None:
    engine = SeedEngine(os.urandom(64), os.urandom(32))
    doc = SeedShareDocument.create(engine, [o.public_key() for o in owners], 2, DEP)
    assert json.loads(doc.to_json())["Threshold"] == 2
    again = SeedShareDocument.from_json(doc.to_json())
    assert again == doc and again.threshold == 2
    parts = [
        SeedShare.decode(decrypt_seed_share(s, o))
        for (_, s), o in zip(doc.shares, owners, strict=True)
    ]
    assert [p.index for p in parts] == [1, 2, 3]
    assert all(p.deployment_id == DEP for p in parts)
    assert combine_shares(parts[1:]) == engine.seed
    for bad in (1, 0, True, "2", 256):
        data: dict[str, Any] = json.loads(doc.to_json())
        data["Threshold"] = bad
        with pytest.raises(Exception, match="Threshold"):
            SeedShareDocument.from_json(json.dumps(data).encode())


def _manifest(
    owners: list[rsa.RSAPrivateKey],
    threshold: object = None,
    extra: dict[str, Any] | None = None,
) -> Manifest:
    doc: dict[str, Any] = {
        "Policies": {"ab" * 32: {"Role": "coordinator"}},
        "ReferenceValues": {},
        "SeedshareOwnerPubKeys": [rsa_pkcs1_der(o).hex() for o in owners],
    }
    if threshold is not None:
        doc["SeedshareThreshold"] = threshold
    doc.update(extra or {})
    return Manifest.parse(json.dumps(doc).encode())


def test_manifest_threshold_defaults_to_one_and_is_bounded(
    owners: list[rsa.RSAPrivateKey],
) -> None:
    assert _manifest(owners).seedshare_threshold == 1
    assert _manifest(owners, 3).seedshare_threshold == 3
    assert _manifest([], 1).seedshare_threshold == 1
    for bad in (0, -1, 4, True, 2.0, "2"):
        with pytest.raises(ManifestError) as err:
            _manifest(owners, bad)
        assert err.value.path == "SeedshareThreshold"


def test_an_update_keeps_threshold_and_owner_order(owners: list[rsa.RSAPrivateKey]) -> None:
    current = _manifest(owners, 2)
    check_update_manifest(current, _manifest(owners, 2))
    with pytest.raises(SeedshareOwnersChanged, match="threshold"):
        check_update_manifest(current, _manifest(owners, 3))
    with pytest.raises(SeedshareOwnersChanged, match="order"):
        check_update_manifest(current, _manifest(list(reversed(owners)), 2))
    # k = 1: the order never mattered and still does not.
    check_update_manifest(_manifest(owners), _manifest(list(reversed(owners))))


def test_recovery_payloads_are_told_apart() -> None:
    whole = UserRecoverySecret(seed=os.urandom(64), salt=os.urandom(32))
    part = UserRecoveryShare(share=os.urandom(SHARE_SIZE), salt=os.urandom(32))
    assert decode_user_recovery(whole.encode()) == whole
    assert decode_user_recovery(part.encode()) == part
    with pytest.raises(PayloadError):
        decode_user_recovery(b"\xa1\x61x\x40")


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_collector_completes_at_k_and_forgets(owners: list[rsa.RSAPrivateKey]) -> None:
    seed = os.urandom(64)
    shares = split_seed(seed, 3, 5, DEP)
    c = ShareCollector(clock=FakeClock())
    for i, share in enumerate(shares[:2], start=1):
        p = c.add(share, signer_index=share.index, expected=LATEST, threshold=3)
        assert (p.received, p.needed, p.seed) == (i, 3, None)
    # The same owner again replaces its share; it does not count twice.
    p = c.add(shares[1], signer_index=2, expected=LATEST, threshold=3)
    assert p.received == 2 and p.seed is None
    done = c.add(shares[4], signer_index=5, expected=LATEST, threshold=3)
    assert done.seed == seed and done.deployment_id == DEP
    assert c.pending == 0


def test_collector_refusals_keep_the_set() -> None:
    shares = split_seed(os.urandom(64), 2, 3, DEP)
    foreign = split_seed(os.urandom(64), 2, 3, OTHER_DEP)
    c = ShareCollector(clock=FakeClock())
    c.add(shares[0], signer_index=1, expected=LATEST, threshold=2)
    with pytest.raises(ShareIndexMismatch):
        c.add(shares[1], signer_index=3, expected=LATEST, threshold=2)
    with pytest.raises(ShareOfOtherDeployment):
        c.add(foreign[1], signer_index=2, expected=LATEST, threshold=2)
    with pytest.raises(ShareOfOtherDeployment):
        c.add(
            shares[1], signer_index=2, expected=LATEST, threshold=2, known_deployment_id=OTHER_DEP
        )
    assert c.pending == 1


def test_collector_drops_a_set_for_another_latest_and_after_the_deadline() -> None:
    clock = FakeClock()
    shares = split_seed(os.urandom(64), 3, 3, DEP)
    c = ShareCollector(deadline=timedelta(minutes=10), clock=clock)
    c.add(shares[0], signer_index=1, expected=LATEST, threshold=3)
    c.add(shares[1], signer_index=2, expected=LATEST, threshold=3)
    p = c.add(shares[2], signer_index=3, expected=OTHER_LATEST, threshold=3)
    assert (p.received, p.dropped, p.seed) == (1, 2, None)
    clock.now += timedelta(minutes=11)
    assert c.pending == 0
    p = c.add(shares[0], signer_index=1, expected=OTHER_LATEST, threshold=3)
    assert (p.received, p.dropped) == (1, 0)
    assert c.reset() == 1 and c.pending == 0


def test_collector_keeps_no_share_in_the_clear() -> None:
    share = split_seed(os.urandom(64), 2, 2, DEP)[0]
    c = ShareCollector(clock=FakeClock())
    c.add(share, signer_index=1, expected=LATEST, threshold=2)
    held = c._set
    assert held is not None
    assert all(share.points not in box for box in held.sealed.values())


# --- post-quantum wrapping of shares (ML-KEM-768 next to RSA-OAEP) ------------------------------


@pytest.fixture(scope="module", name="mlkem_key")
def mlkem_key_fixture() -> mlkem.MLKEM768PrivateKey:
    return mlkem.MLKEM768PrivateKey.generate()


def _raw(key: mlkem.MLKEM768PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.mark.parametrize("k", [1, 2])
def test_mlkem_wrapped_share_needs_both_keys(
    owners: list[rsa.RSAPrivateKey], mlkem_key: mlkem.MLKEM768PrivateKey, k: int
) -> None:
    engine = SeedEngine(os.urandom(64), os.urandom(32))
    wrapped = rsa_pkcs1_der(owners[0])
    doc = SeedShareDocument.create(
        engine, [o.public_key() for o in owners], k, DEP, {wrapped: _raw(mlkem_key)}
    )
    again = SeedShareDocument.from_json(doc.to_json())
    assert again == doc
    items = json.loads(doc.to_json())["SeedShares"]
    assert "MLKEMSealedSeed" in items[0] and "MLKEMSealedSeed" not in items[1]
    plain = again.open_for(owners[0], mlkem_key)
    # The RSA half alone is a random pad, not the share.
    assert decrypt_seed_share(doc.shares[0][1], owners[0]) != plain
    if k == 1:
        assert plain == engine.seed
    else:
        others = SeedShare.decode(again.open_for(owners[1]))
        assert combine_shares([SeedShare.decode(plain), others]) == engine.seed
    with pytest.raises(SeedEngineError, match="ML-KEM key is needed"):
        again.open_for(owners[0])
    with pytest.raises(SeedEngineError, match="does not open"):
        again.open_for(owners[0], mlkem.MLKEM768PrivateKey.generate())


def test_manifest_mlkem_keys_name_listed_owners(
    owners: list[rsa.RSAPrivateKey], mlkem_key: mlkem.MLKEM768PrivateKey
) -> None:
    owner_hex = rsa_pkcs1_der(owners[0]).hex()
    good = _manifest(owners, extra={"SeedshareOwnerMLKEMKeys": {owner_hex: _raw(mlkem_key).hex()}})
    assert dict(good.seedshare_owner_mlkem_keys) == {rsa_pkcs1_der(owners[0]): _raw(mlkem_key)}
    assert dict(_manifest(owners).seedshare_owner_mlkem_keys) == {}
    bads: list[object] = [
        {"ab" * 300: _raw(mlkem_key).hex()},  # not a listed owner
        {owner_hex: "00" * 32},  # wrong size
        {owner_hex: 7},
        [],
    ]
    for bad in bads:
        with pytest.raises(ManifestError) as err:
            _manifest(owners, extra={"SeedshareOwnerMLKEMKeys": bad})
        assert err.value.path.startswith("SeedshareOwnerMLKEMKeys")
    with pytest.raises(SeedshareOwnersChanged, match="MLKEM"):
        check_update_manifest(good, _manifest(owners))
