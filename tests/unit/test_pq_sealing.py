"""Hybrid post-quantum sealing and suite negotiation (DESIGN §7): boxes, offers, the binding of
the offer into report data (so stripping it is detected) and the classic bytes left alone."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cbor2
import pytest

from attestation.binding import mesh_cert_report_data, peer_recover_report_data
from coordinator import cli
from coordinator.core.sealing import (
    PQ_ENC_SIZE,
    PQ_PUBLIC_KEY_SIZE,
    PURPOSE_PEER_RECOVER,
    PURPOSE_WORKLOAD_SECRET,
    SUITE_IDS,
    HpkeSuite,
    InvalidPublicKey,
    PostQuantumRequired,
    PqPrivateKey,
    SealingError,
    SuiteDowngrade,
    SuiteOffer,
    check_answer,
    generate_keypair,
    generate_pq_keypair,
    open_sealed,
    open_sealed_pq,
    seal_for,
    seal_pq,
)

HPKE = bytes(range(32))

# Pinned before negotiation existed: a client that offers no suite (or only X25519) must keep
# producing exactly these report-data bytes, so old workloads and old coordinators interoperate.
CLASSIC_MESH_CERT = bytes.fromhex(
    "5f66c49a3598caaa7dea9e08c27afb2c7ef793531566955a8ce788d2ba548e6c"
    "26b4536f6824e975608e7ae1de9a8c0c7295908990178b63c5c85d86e803c764"
)
CLASSIC_PEER_RECOVER_DEFAULT = bytes.fromhex(
    "382fad5f2d44e878bb5c24a94e21f97bc2287649b6e06851532d169b1ada517c"
    "5bb70f810572a55d4f1131ffcf7d7e4bd0358cb57230ff049292fd2521ae0f84"
)


def _formula(purpose: str, fields: list[bytes]) -> bytes:
    encoded = cbor2.dumps(fields, canonical=True)
    return hashlib.sha512(b"concord/v1/" + purpose.encode() + b"\x00" + encoded).digest()


@pytest.fixture(scope="module", name="pq")
def pq_fixture() -> tuple[PqPrivateKey, bytes]:
    return generate_pq_keypair()


def test_pq_box_round_trip_and_sizes(pq: tuple[PqPrivateKey, bytes]) -> None:
    private, public = pq
    assert len(public) == PQ_PUBLIC_KEY_SIZE
    box = seal_pq(public, PURPOSE_WORKLOAD_SECRET, b"secret")
    assert len(box) == PQ_ENC_SIZE + len(b"secret") + 16
    assert open_sealed_pq(private, PURPOSE_WORKLOAD_SECRET, box) == b"secret"


def test_pq_box_refuses_other_purpose_tampering_and_the_classic_opener(
    pq: tuple[PqPrivateKey, bytes],
) -> None:
    private, public = pq
    box = seal_pq(public, PURPOSE_WORKLOAD_SECRET, b"secret")
    with pytest.raises(SealingError):
        open_sealed_pq(private, PURPOSE_PEER_RECOVER, box)
    tampered = box[:-1] + bytes([box[-1] ^ 1])
    with pytest.raises(SealingError):
        open_sealed_pq(private, PURPOSE_WORKLOAD_SECRET, tampered)
    with pytest.raises(SealingError):
        open_sealed_pq(private, PURPOSE_WORKLOAD_SECRET, box[:100])
    x_private, _ = generate_keypair()
    with pytest.raises(SealingError):
        open_sealed(x_private, PURPOSE_WORKLOAD_SECRET, box)


@pytest.mark.parametrize("size", [0, 32, PQ_PUBLIC_KEY_SIZE - 1, PQ_PUBLIC_KEY_SIZE + 1])
def test_pq_public_key_of_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(InvalidPublicKey) as err:
        seal_pq(bytes(size), PURPOSE_WORKLOAD_SECRET, b"x")
    assert err.value.reason == "invalid_hpke_public_key"


def test_offer_from_wire_keeps_known_suites_in_order(pq: tuple[PqPrivateKey, bytes]) -> None:
    _, public = pq
    offer = SuiteOffer.from_wire([2, 99, 1, 2], public)
    assert offer.suites == (HpkeSuite.MLKEM768_X25519, HpkeSuite.X25519)
    assert offer.offers_pq
    assert SuiteOffer.from_wire([], b"") == SuiteOffer()


def test_offer_needs_its_key_and_a_key_needs_its_offer(pq: tuple[PqPrivateKey, bytes]) -> None:
    _, public = pq
    with pytest.raises(InvalidPublicKey):
        SuiteOffer.from_wire([HpkeSuite.MLKEM768_X25519], b"")
    with pytest.raises(InvalidPublicKey):
        SuiteOffer.from_wire([HpkeSuite.X25519], public)
    with pytest.raises(InvalidPublicKey):
        SuiteOffer.from_wire([HpkeSuite.MLKEM768_X25519], bytes(PQ_PUBLIC_KEY_SIZE - 1))


def test_choice_is_the_strongest_both_allow(pq: tuple[PqPrivateKey, bytes]) -> None:
    _, public = pq
    both = SuiteOffer((HpkeSuite.X25519, HpkeSuite.MLKEM768_X25519), public)
    assert both.choose(require_pq=False) is HpkeSuite.MLKEM768_X25519
    assert both.choose(require_pq=True) is HpkeSuite.MLKEM768_X25519
    assert SuiteOffer().choose(require_pq=False) is HpkeSuite.X25519
    classic = SuiteOffer((HpkeSuite.X25519,))
    with pytest.raises(PostQuantumRequired) as err:
        classic.choose(require_pq=True)
    assert err.value.reason == "pq_suite_required"
    with pytest.raises(PostQuantumRequired):
        SuiteOffer().choose(require_pq=True)


def test_seal_for_uses_the_chosen_suites_key(pq: tuple[PqPrivateKey, bytes]) -> None:
    pq_private, pq_public = pq
    x_private, x_public = generate_keypair()
    offer = SuiteOffer((HpkeSuite.MLKEM768_X25519,), pq_public)
    box = seal_for(HpkeSuite.MLKEM768_X25519, x_public, offer, PURPOSE_WORKLOAD_SECRET, b"s")
    assert open_sealed_pq(pq_private, PURPOSE_WORKLOAD_SECRET, box) == b"s"
    box = seal_for(HpkeSuite.X25519, x_public, SuiteOffer(), PURPOSE_WORKLOAD_SECRET, b"s")
    assert open_sealed(x_private, PURPOSE_WORKLOAD_SECRET, box) == b"s"


def test_client_detects_a_weaker_answer(pq: tuple[PqPrivateKey, bytes]) -> None:
    _, public = pq
    offer = SuiteOffer((HpkeSuite.MLKEM768_X25519, HpkeSuite.X25519), public)
    assert check_answer(offer, HpkeSuite.MLKEM768_X25519) is HpkeSuite.MLKEM768_X25519
    for weaker in (0, HpkeSuite.X25519):
        with pytest.raises(SuiteDowngrade) as err:
            check_answer(offer, weaker)
        assert err.value.reason == "hpke_suite_downgrade"
    assert check_answer(SuiteOffer(), 0) is HpkeSuite.X25519
    with pytest.raises(SuiteDowngrade):
        check_answer(SuiteOffer(), HpkeSuite.MLKEM768_X25519)


def test_classic_report_data_bytes_are_unchanged() -> None:
    assert mesh_cert_report_data(b"spki", HPKE, b"token") == CLASSIC_MESH_CERT
    assert (
        mesh_cert_report_data(b"spki", HPKE, b"token", SuiteOffer().binding()) == CLASSIC_MESH_CERT
    )
    only_classic = SuiteOffer((HpkeSuite.X25519,)).binding()
    assert mesh_cert_report_data(b"spki", HPKE, b"token", only_classic) == CLASSIC_MESH_CERT
    assert _formula("mesh-cert", [b"spki", HPKE, b"token"]) == CLASSIC_MESH_CERT
    assert peer_recover_report_data(HPKE, b"token", "default") == CLASSIC_PEER_RECOVER_DEFAULT
    assert _formula("peer-recover", [HPKE, b"token", b"default"]) == CLASSIC_PEER_RECOVER_DEFAULT


def test_pq_offer_is_bound_so_stripping_it_changes_the_report_data(
    pq: tuple[PqPrivateKey, bytes],
) -> None:
    _, public = pq
    offer = SuiteOffer((HpkeSuite.MLKEM768_X25519, HpkeSuite.X25519), public)
    bound = mesh_cert_report_data(b"spki", HPKE, b"token", offer.binding())
    ids = SUITE_IDS[HpkeSuite.MLKEM768_X25519] + SUITE_IDS[HpkeSuite.X25519]
    assert bound == _formula("mesh-cert", [b"spki", HPKE, b"token", ids, public])
    # What a coordinator recomputes when a man in the middle strips the offer, or keeps only
    # the classic suite: neither matches the evidence the workload produced.
    assert bound != mesh_cert_report_data(b"spki", HPKE, b"token")
    only_pq = SuiteOffer((HpkeSuite.MLKEM768_X25519,), public).binding()
    assert bound != mesh_cert_report_data(b"spki", HPKE, b"token", only_pq)
    _, other = generate_pq_keypair()
    swapped = SuiteOffer(offer.suites, other).binding()
    assert bound != mesh_cert_report_data(b"spki", HPKE, b"token", swapped)


def test_peer_recover_pq_binding_keeps_a_slot_for_the_deployment(
    pq: tuple[PqPrivateKey, bytes],
) -> None:
    _, public = pq
    binding = SuiteOffer((HpkeSuite.MLKEM768_X25519,), public).binding()
    assert binding is not None
    with_name = peer_recover_report_data(HPKE, b"token", "default", binding)
    without = peer_recover_report_data(HPKE, b"token", "", binding)
    assert with_name == _formula("peer-recover", [HPKE, b"token", b"default", *binding])
    assert without == _formula("peer-recover", [HPKE, b"token", b"", *binding])
    assert with_name != peer_recover_report_data(HPKE, b"token", "default")


def test_require_pq_flags_on_serve_and_join(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["serve", "--require-pq"]).require_pq is True
    assert parser.parse_args(["serve"]).require_pq is False
    args = parser.parse_args(["join", "-c", "127.0.0.1", "--out", "o", "--require-pq"])
    assert args.require_pq is True
    argv = ["join", "-c", "127.0.0.1", "--out", str(tmp_path), "--watch", "--require-pq"]
    assert cli.main(argv) == 2
    assert "--require-pq" in capsys.readouterr().err
