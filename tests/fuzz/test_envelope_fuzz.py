"""Fuzzing Evidence.decode: only typed rejections (EvidenceRejected subclasses) may escape.

Arbitrary bytes, arbitrary CBOR values built around the envelope keys (so the field checks, not
only the CBOR reader, are exercised), and byte mutations of valid envelopes. Every successful
decode must re-encode to a decodable, equal envelope. The number of examples comes from the
active hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.errors import EvidenceRejected
from attestation.evidence import SNP_REPORT_SIZE, Evidence

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_SNP = (2).to_bytes(4, "little") + bytes(SNP_REPORT_SIZE - 4)
_VALID = [
    Evidence(tee="snp", report=_SNP).encode(),
    Evidence(tee="snp", report=_SNP, certs=(b"vcek", b"ask", b"ark"), crls=(b"crl",)).encode(),
    Evidence(tee="tdx", report=b"\x04\x00\x02\x00" + bytes(60), collateral={"k": b"v"}).encode(),
]


def _check(data: bytes) -> None:
    try:
        ev = Evidence.decode(data)
    except EvidenceRejected:
        return
    assert Evidence.decode(ev.encode()) == ev


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(),
    st.text(max_size=6),
    st.binary(max_size=24),
    st.sampled_from(["snp", "tdx", _SNP, b"", 1, True, 1.0]),
)
# One level of nesting is enough to reach every type check; deeper trees only cost time.
_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=10),
    st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 9)), _scalars, max_size=4),
)
# Per field: a well-formed value most of the time (so later checks are reached), else anything.
_good_values = {
    "v": st.just(1),
    "tee": st.sampled_from(["snp", "tdx"]),
    "report": st.sampled_from([_SNP, b"\x04\x00\x02\x00" + bytes(8)]),
    "certs": st.lists(st.binary(max_size=8), max_size=10),
    "crls": st.lists(st.binary(max_size=8), max_size=6),
    "collateral": st.dictionaries(st.text(max_size=4), st.binary(max_size=8), max_size=18),
}


@st.composite
def _envelopes(draw: st.DrawFn) -> bytes:
    body: dict[Any, Any] = {}
    for key, good in _good_values.items():
        if key in ("certs", "crls", "collateral") and draw(st.booleans()):
            continue
        body[key] = draw(good if draw(st.integers(0, 5)) else _values)
    if draw(st.booleans()):
        body[draw(st.text(max_size=4))] = draw(_values)
    return cbor2.dumps(body, canonical=draw(st.booleans()))


@settings(FUZZ)
@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(data)


@settings(FUZZ)
@given(_envelopes())
def test_structured_envelopes(data: bytes) -> None:
    _check(data)


@settings(FUZZ)
@given(st.sampled_from(_VALID), st.binary(min_size=3, max_size=18), st.integers(-8, 8))
def test_mutated_envelopes(base: bytes, edits: bytes, cut: int) -> None:
    data = bytearray(base)
    for i in range(0, len(edits) - 2, 3):  # each 3 bytes: position (16 bits), new value
        data[int.from_bytes(edits[i : i + 2], "little") % len(data)] = edits[i + 2]
    if cut < 0:
        data = data[:cut]
    elif cut > 0:
        data += bytes(cut)
    _check(bytes(data))
