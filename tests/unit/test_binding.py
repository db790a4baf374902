"""Report-data derivation (attestation/binding.py, DESIGN.md §7).

How the pinned vectors were made: computed once with this module and cross-checked
independently with a hand-written CBOR encoder (``_cbor_bytes_array`` below) hashed by
``openssl dgst -sha512``. They must never change: report data is what deployed clients and
workloads compute, so a change here is a wire-format break.
Inputs: TLS/leaf SPKI = bytes(range(91)), HPKE key = 0x22 * 32, nonce = 0x33 * 32,
state digest = 32 zero bytes, token = 0x44 * 77.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import binding
from attestation.binding import (
    BindingError,
    UnknownPurpose,
    attest_report_data,
    mesh_cert_report_data,
    peer_recover_report_data,
    report_data,
    state_digest,
)

SPKI = bytes(range(91))
HPKE = b"\x22" * 32
NONCE = b"\x33" * 32
TOKEN = b"\x44" * 77
ZERO = bytes(32)

ATTEST_VECTOR = (
    "e4620602f30642777a42c91470dec29360bc5cf9429fa9c420034885147c82e4"
    "ee7163330f2a3aa1587ad186da8a0dee0573b8978878b290fbd40a3696e38770"
)
MESH_CERT_VECTOR = (
    "b2392e24685984bebf1c74885b763b27dc171140741e53883a57e70ee87690e4"
    "6d734dd977225db6c3343f8c3682797f2fb1f8b4cb784a4e24a7bd28313d31b1"
)
PEER_RECOVER_VECTOR = (
    "46e501b40d545659f51aededa0a1fecc571fd4e94d4e0cb55d3587014084307"
    "872923f82724a458b90261da39d37a63370d97e3f5a36bdf617f6555964918e54"
)
EMPTY_ATTEST_VECTOR = (
    "096bda095577107479ec81cf83b6f22ade0e562cefb5ca30ad84d4e411fa34d4"
    "d80f19231c96ae7e7c415b59014de3ab5062717a6f353c7071710ad22d3215c0"
)
# state_digest(sha256(b"latest"), b"root-der", b"mesh-der")
STATE_DIGEST_VECTOR = "6c9d234f384cdc13ae3ae9e3e9fec84ece9fb0f638d1ef7eb8e06e92eb10d33d"


def _cbor_bytes_array(items: list[bytes]) -> bytes:
    """Independent minimal CBOR encoder (array of byte strings, definite lengths)."""

    def head(major: int, n: int) -> bytes:
        if n < 24:
            return bytes([major << 5 | n])
        if n < 0x100:
            return bytes([major << 5 | 24, n])
        if n < 0x10000:
            return bytes([major << 5 | 25]) + n.to_bytes(2, "big")
        return bytes([major << 5 | 26]) + n.to_bytes(4, "big")

    return head(4, len(items)) + b"".join(head(2, len(i)) + i for i in items)


# --- pinned vectors --------------------------------------------------------------------------


def test_attest_vector() -> None:
    assert attest_report_data(SPKI, HPKE, NONCE, ZERO).hex() == ATTEST_VECTOR


def test_mesh_cert_vector() -> None:
    assert mesh_cert_report_data(SPKI, HPKE, TOKEN).hex() == MESH_CERT_VECTOR


def test_peer_recover_vector() -> None:
    assert peer_recover_report_data(HPKE, TOKEN).hex() == PEER_RECOVER_VECTOR


def test_empty_field_list_vector() -> None:
    assert report_data("attest", []).hex() == EMPTY_ATTEST_VECTOR


def test_state_digest_vector() -> None:
    latest = hashlib.sha256(b"latest").digest()
    got = state_digest(latest, b"root-der", b"mesh-der")
    assert got.hex() == STATE_DIGEST_VECTOR
    expected = hashlib.sha256(
        latest + hashlib.sha256(b"root-der").digest() + hashlib.sha256(b"mesh-der").digest()
    ).digest()
    assert got == expected


def test_helpers_equal_generic_function() -> None:
    assert attest_report_data(SPKI, HPKE, NONCE, ZERO) == report_data(
        binding.PURPOSE_ATTEST, [SPKI, HPKE, NONCE, ZERO]
    )
    assert mesh_cert_report_data(SPKI, HPKE, TOKEN) == report_data(
        binding.PURPOSE_MESH_CERT, [SPKI, HPKE, TOKEN]
    )
    assert peer_recover_report_data(HPKE, TOKEN) == report_data(
        binding.PURPOSE_PEER_RECOVER, [HPKE, TOKEN]
    )


@settings(max_examples=60, deadline=None)
@given(
    purpose=st.sampled_from(sorted(binding.PURPOSES)),
    fields=st.lists(st.binary(max_size=300), max_size=6),
)
def test_matches_independent_encoding(purpose: str, fields: list[bytes]) -> None:
    msg = b"concord/v1/" + purpose.encode() + b"\x00" + _cbor_bytes_array(fields)
    got = report_data(purpose, fields)
    assert len(got) == 64
    assert got == hashlib.sha512(msg).digest()


# --- domain separation and ordering ----------------------------------------------------------


def test_domain_separation() -> None:
    fields = [HPKE, TOKEN]
    results = {report_data(p, fields) for p in binding.PURPOSES}
    assert len(results) == len(binding.PURPOSES)


def test_field_order_sensitive() -> None:
    assert report_data("attest", [HPKE, TOKEN]) != report_data("attest", [TOKEN, HPKE])
    assert attest_report_data(SPKI, HPKE, NONCE, ZERO) != attest_report_data(
        SPKI, NONCE, HPKE, ZERO
    )


def test_field_boundaries_matter() -> None:
    """Length-prefixing: moving bytes across a field boundary changes the result."""
    assert report_data("attest", [b"ab", b"c"]) != report_data("attest", [b"a", b"bc"])
    assert report_data("attest", [b"abc"]) != report_data("attest", [b"abc", b""])


def test_each_attest_input_is_bound() -> None:
    base = attest_report_data(SPKI, HPKE, NONCE, ZERO)
    assert attest_report_data(SPKI + b"\x00", HPKE, NONCE, ZERO) != base
    assert attest_report_data(SPKI, b"\x23" * 32, NONCE, ZERO) != base
    assert attest_report_data(SPKI, HPKE, b"\x34" * 32, ZERO) != base
    assert attest_report_data(SPKI, HPKE, NONCE, b"\x01" * 32) != base


# --- rejections ------------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["", "Attest", "attest ", "set-manifest", "workload-secret"])
def test_unknown_purpose_rejected(purpose: str) -> None:
    with pytest.raises(UnknownPurpose) as exc:
        report_data(purpose, [])
    assert exc.value.field == "purpose"


def test_non_str_purpose_rejected() -> None:
    with pytest.raises(UnknownPurpose):
        report_data(b"attest", [])  # type: ignore[arg-type]


def test_non_bytes_field_rejected() -> None:
    with pytest.raises(BindingError) as exc:
        report_data("attest", [b"ok", "text"])  # type: ignore[list-item]
    assert exc.value.field == "fields[1]"
    with pytest.raises(BindingError):
        report_data("attest", [bytearray(b"x")])  # type: ignore[list-item]


def test_single_bytes_instead_of_list_rejected() -> None:
    with pytest.raises(BindingError) as exc:
        report_data("attest", b"abc")  # type: ignore[arg-type]
    assert exc.value.field == "fields"


def test_oversized_field_rejected() -> None:
    with pytest.raises(BindingError) as exc:
        report_data("attest", [b"\x00" * (binding.MAX_FIELD_SIZE + 1)])
    assert exc.value.field == "fields[0]"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((b"", HPKE, NONCE, ZERO), "tls_spki"),
        ((SPKI, HPKE[:31], NONCE, ZERO), "hpke_pub"),
        ((SPKI, HPKE, NONCE[:16], ZERO), "nonce"),
        ((SPKI, HPKE, NONCE, ZERO + b"\x00"), "state_digest"),
        ((SPKI, HPKE, "nonce", ZERO), "nonce"),
    ],
)
def test_attest_helper_validates(args: tuple[bytes, bytes, bytes, bytes], field: str) -> None:
    with pytest.raises(BindingError) as exc:
        attest_report_data(*args)
    assert exc.value.field == field


def test_mesh_and_peer_helpers_validate() -> None:
    with pytest.raises(BindingError) as exc:
        mesh_cert_report_data(b"", HPKE, TOKEN)
    assert exc.value.field == "leaf_spki"
    with pytest.raises(BindingError) as exc:
        mesh_cert_report_data(SPKI, HPKE, b"")
    assert exc.value.field == "token"
    with pytest.raises(BindingError) as exc:
        peer_recover_report_data(b"\x22" * 33, TOKEN)
    assert exc.value.field == "hpke_pub"
    with pytest.raises(BindingError) as exc:
        peer_recover_report_data(HPKE, b"")
    assert exc.value.field == "token"


def test_state_digest_uninitialised() -> None:
    assert state_digest(None, None, None) == bytes(32)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((None, b"root", b"mesh"), "latest_transition_hash"),
        ((ZERO, None, b"mesh"), "root_ca_der"),
        ((ZERO, b"root", None), "mesh_ca_der"),
        ((b"\x01" * 31, b"root", b"mesh"), "latest_transition_hash"),
        ((ZERO, b"", b"mesh"), "root_ca_der"),
        ((ZERO, b"root", b""), "mesh_ca_der"),
        ((ZERO, "root", b"mesh"), "root_ca_der"),
    ],
)
def test_state_digest_rejects_partial_or_bad_state(
    args: tuple[bytes | None, bytes | None, bytes | None], field: str
) -> None:
    with pytest.raises(BindingError) as exc:
        state_digest(*args)
    assert exc.value.field == field


def test_state_digest_distinguishes_roots_and_meshes() -> None:
    latest = b"\x05" * 32
    assert state_digest(latest, b"a", b"b") != state_digest(latest, b"b", b"a")
    assert state_digest(latest, b"a", b"b") != state_digest(b"\x06" * 32, b"a", b"b")
