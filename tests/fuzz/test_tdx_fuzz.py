"""Fuzzing the TDX quote parser and the PCK SGX-extension decoder.

Property: on arbitrary or mutated input they return or raise an
:class:`attestation.errors.EvidenceRejected` subclass, nothing else (no IndexError, struct.error,
ValueError, UnicodeError, RecursionError...). Seeds are the real vectors and mock quotes;
mutations are byte flips, overwrites of the length/type fields, truncations and splices.
The number of examples comes from the active hypothesis profile (tests/conftest.py;
``hack/fuzz`` soaks).
"""

from __future__ import annotations

import random
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.errors import EvidenceRejected
from attestation.mock.tdx import create_mock_intel
from attestation.tdx.pck import SGX_EXTENSION_OID, decode_sgx_extensions
from attestation.tdx.quote import parse_quote

NAMES = ("spr-v4", "sample-v5", "debug-v4", "uptodate-v4", "outdated-v5")


# No deadline, no example database written into the checkout; the count is the profile's.
FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))


# Offsets of the length / type fields of a v4 quote that steer the parser (v5 shifts by 6).
V4_FIELDS = [
    (0, "<H"),
    (2, "<H"),
    (4, "<I"),
    (632, "<I"),
    (764, "<H"),
    (766, "<I"),
    (1218, "<H"),
    (1252, "<H"),
    (1254, "<I"),
]


def _ext(cert_der: bytes) -> bytes:
    cert = x509.load_der_x509_certificate(cert_der)
    value = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID)).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


@pytest.fixture(scope="module")
def seeds(vectors: Path, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    quotes = [(vectors / "tdx" / f"{n}.quote.bin").read_bytes() for n in NAMES]
    m = create_mock_intel(tmp_path_factory.mktemp("tdx-fuzz"), now=datetime(2026, 3, 1, tzinfo=UTC))
    quotes.append(m.make_quote(mr_td=bytes(48), report_data=bytes(64), version=5))
    quotes.append(m.make_quote(mr_td=bytes(48), report_data=bytes(64), version=5, body_type=2))
    return quotes


@pytest.fixture(scope="module")
def ext_seeds(seeds: list[bytes]) -> list[bytes]:
    return [_ext(parse_quote(q).pck_chain_der[0]) for q in seeds]


def _parse_ok(data: bytes) -> None:
    try:
        parse_quote(data)
    except EvidenceRejected:
        pass


def _decode_ok(data: bytes) -> None:
    try:
        decode_sgx_extensions(data)
    except EvidenceRejected:
        pass


def _mutate(seed: bytes, rng_seed: int, weights: tuple[int, ...] = (1, 1, 1, 1, 1, 1)) -> bytes:
    """1-6 random mutations driven by one drawn integer (cheap to generate, reproducible)."""
    rng = random.Random(rng_seed)
    buf = bytearray(seed)
    for _ in range(rng.randint(1, 6)):
        if not buf:
            break
        kind = rng.choices(range(6), weights)[0]
        pos = rng.randrange(len(buf))
        value = rng.randrange(1 << 16)
        if kind == 0:  # flip a bit
            buf[pos] ^= 1 << (value % 8)
        elif kind == 1:  # overwrite a byte
            buf[pos] = value % 256
        elif kind == 2:  # truncate
            del buf[pos:]
        elif kind == 3:  # delete a run
            del buf[pos : pos + value % 64]
        elif kind == 4:  # insert a run
            buf[pos:pos] = bytes([value % 256]) * (value % 37 + 1)
        else:  # duplicate a slice
            buf[pos:pos] = buf[pos : pos + value % 200]
    return bytes(buf)


SEEDS = st.integers(0, (1 << 64) - 1)
EDGE_VALUES = [
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    0x7F,
    0x80,
    0x81,
    0xFF,
    0x100,
    0x1000,
    0xFFFF,
    0x10000,
    0xFFFFFFFF,
]


# --- quote parser ---------------------------------------------------------------------------------


@settings(FUZZ)
@given(st.binary(max_size=1_500))
def test_quote_parser_arbitrary_bytes(data: bytes) -> None:
    _parse_ok(data)


@settings(FUZZ)
@given(st.integers(0, len(NAMES) + 1), SEEDS)
def test_quote_parser_mutated(seeds: list[bytes], index: int, rng_seed: int) -> None:
    _parse_ok(_mutate(seeds[index], rng_seed))


@settings(FUZZ)
@given(st.integers(0, len(NAMES) + 1), SEEDS)
def test_quote_parser_length_fields(seeds: list[bytes], index: int, rng_seed: int) -> None:
    """Overwrite the fields that steer parsing (version, types, lengths) with edge values."""
    rng = random.Random(rng_seed)
    seed = seeds[index]
    shift = 6 if seed[0] == 5 else 0
    buf = bytearray(seed)
    for _ in range(rng.randint(1, 3)):
        offset, fmt = rng.choice(V4_FIELDS)
        at = offset + (shift if offset >= 48 else 0)
        size = struct.calcsize(fmt)
        value = rng.choice([*EDGE_VALUES, rng.randrange(1 << (8 * size))])
        struct.pack_into(fmt, buf, at, value & ((1 << (8 * size)) - 1))
    if rng.random() < 0.5:
        del buf[rng.randrange(48, len(buf)) :]
    _parse_ok(bytes(buf))


# --- SGX extension decoder ------------------------------------------------------------------------


@settings(FUZZ)
@given(st.binary(max_size=600))
def test_extension_decoder_arbitrary_bytes(data: bytes) -> None:
    _decode_ok(data)


@settings(FUZZ)
@given(st.integers(0, len(NAMES) + 1), SEEDS)
def test_extension_decoder_mutated(ext_seeds: list[bytes], index: int, rng_seed: int) -> None:
    # Mostly in-place edits: inserting or deleting bytes mostly breaks only the outer length.
    _decode_ok(_mutate(ext_seeds[index], rng_seed, (6, 6, 1, 1, 1, 1)))


_TAGS = [0x01, 0x02, 0x04, 0x06, 0x0A, 0x30, 0x1F, 0xA0, 0x05]


def _random_der(rng: random.Random, depth: int = 0) -> bytes:
    """A random, mostly well-formed DER tree (so the decoder gets past the outer layers)."""
    if depth < 4 and rng.random() < 0.5:
        tag = 0x30
        body = b"".join(_random_der(rng, depth + 1) for _ in range(rng.randint(0, 4)))
    else:
        tag = rng.choice(_TAGS)
        body = rng.randbytes(rng.randint(0, 20))
    n = len(body)
    length = (
        bytes([n])
        if n < 0x80
        else bytes([0x81, n])
        if n < 256
        else bytes([0x82]) + n.to_bytes(2, "big")
    )
    return bytes([tag]) + length + body


@settings(FUZZ)
@given(SEEDS)
def test_extension_decoder_random_der_trees(rng_seed: int) -> None:
    _decode_ok(_random_der(random.Random(rng_seed)))
