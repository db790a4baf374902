"""Fuzzing the SEV-SNP parsers: only typed rejections (EvidenceRejected) may ever escape.

The report parser on arbitrary bytes, on arbitrary 1184-byte inputs with a plausible header,
and on mutations of the real reports; the AMD extension decoder on arbitrary values, on
mutations of the real extension values, and on mutated real VCEK/VLEK DER. The number of
examples comes from the active hypothesis profile (tests/conftest.py; ``hack/fuzz`` soaks).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.errors import EvidenceRejected
from attestation.snp import certs as c
from attestation.snp.report import REPORT_SIZE, parse_report

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_OIDS = list(c.EXTENSION_NAMES)


@pytest.fixture(scope="module")
def reports(vectors: Path) -> list[bytes]:
    names = ["milan-v2.report.bin", "milan-v2-debug.report.bin", "vlek-v3.report.bin"]
    out = [(vectors / "snp" / n).read_bytes() for n in names]
    assert all(parse_report(r).raw == r for r in out)  # mutations start from valid reports
    return out


@pytest.fixture(scope="module")
def key_certs(vectors: Path) -> list[bytes]:
    names = ["milan-v2.vcek.der", "vlek-v3.vlek.der", "turin.vcek.der", "tampered-new.vcek.der"]
    return [(vectors / "snp" / n).read_bytes() for n in names]


@pytest.fixture(scope="module")
def real_values(key_certs: list[bytes]) -> list[tuple[str, dict[str, bytes]]]:
    out = []
    for der in key_certs:
        cert = c.load_certificate(der, "vector")
        values = {
            e.oid.dotted_string: e.value.value
            for e in cert.extensions
            if e.oid.dotted_string in _OIDS and isinstance(e.value, x509.UnrecognizedExtension)
        }
        assert values
        out.append((c.leaf_kind(cert), values))
    return out


def _parse(data: bytes) -> None:
    try:
        parse_report(data)
    except EvidenceRejected:
        pass


# --- report parser --------------------------------------------------------------------------


@settings(FUZZ)
@given(st.binary(max_size=REPORT_SIZE + 64))
def test_report_arbitrary_bytes(data: bytes) -> None:
    _parse(data)


@settings(FUZZ)
@given(
    version=st.integers(min_value=0, max_value=7),
    body=st.binary(min_size=REPORT_SIZE - 12, max_size=REPORT_SIZE - 12),
    policy=st.sampled_from([0x30000, 0xB0000, 0x3FF0000, 0x10000, 1 << 63 | 0x30000]),
)
def test_report_arbitrary_with_header(version: int, body: bytes, policy: int) -> None:
    raw = bytearray(
        version.to_bytes(4, "little") + body[:4] + policy.to_bytes(8, "little") + body[4:]
    )
    raw[0x34:0x38] = (1).to_bytes(4, "little")
    assert len(raw) == REPORT_SIZE
    _parse(bytes(raw))


_MUTATION = st.tuples(st.integers(min_value=0, max_value=REPORT_SIZE - 1), st.integers(0, 255))


@settings(FUZZ)
@given(
    index=st.integers(min_value=0, max_value=2),
    mutations=st.lists(_MUTATION, min_size=1, max_size=6),
    version=st.one_of(st.none(), st.integers(min_value=2, max_value=5)),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=REPORT_SIZE + 8)),
)
def test_report_mutations_of_real(
    reports: list[bytes],
    index: int,
    mutations: list[tuple[int, int]],
    version: int | None,
    cut: int | None,
) -> None:
    raw = bytearray(reports[index])
    for off, value in mutations:
        raw[off] = value
    if version is not None:
        raw[0:4] = version.to_bytes(4, "little")
    data = bytes(raw)
    if cut is not None:
        data = (data + bytes(8))[:cut]
    _parse(data)


# --- extension decoder ----------------------------------------------------------------------


def _decode(values: dict[str, bytes], kind: str) -> None:
    try:
        c.decode_extension_values(values, kind)
    except EvidenceRejected:
        pass


@settings(FUZZ)
@given(
    values=st.dictionaries(st.sampled_from(_OIDS), st.binary(max_size=80), max_size=len(_OIDS)),
    kind=st.sampled_from(["vcek", "vlek", "ask"]),
)
def test_extensions_arbitrary(values: dict[str, bytes], kind: str) -> None:
    _decode(values, kind)


@settings(FUZZ)
@given(
    index=st.integers(min_value=0, max_value=3),
    oid=st.sampled_from(_OIDS),
    value=st.one_of(
        st.binary(max_size=70),
        st.tuples(st.integers(0, 0x7F), st.binary(max_size=8)).map(
            lambda t: bytes([0x02, t[0]]) + t[1]
        ),
        st.tuples(st.integers(0, 0xFF), st.binary(max_size=8)).map(
            lambda t: bytes([0x16, t[0]]) + t[1]
        ),
        st.tuples(st.integers(0, 0xFF), st.binary(max_size=66)).map(
            lambda t: bytes([0x04, t[0]]) + t[1]
        ),
    ),
    drop=st.booleans(),
)
def test_extensions_mutations_of_real(
    real_values: list[tuple[str, dict[str, bytes]]], index: int, oid: str, value: bytes, drop: bool
) -> None:
    kind, real = real_values[index]
    values = dict(real)
    if drop:
        values.pop(oid, None)
    else:
        values[oid] = value
    _decode(values, kind)


@settings(FUZZ)
@given(
    index=st.integers(min_value=0, max_value=3),
    mutations=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4
    ),
)
def test_key_certificate_mutated_der(
    key_certs: list[bytes], index: int, mutations: list[tuple[int, int]]
) -> None:
    der = bytearray(key_certs[index])
    for off, value in mutations:
        der[off % len(der)] = value
    try:
        c.decode_key_certificate(bytes(der))
    except EvidenceRejected:
        pass
