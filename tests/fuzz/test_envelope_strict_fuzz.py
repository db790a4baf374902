"""Fuzzing the strict envelope decoder with hostile CBOR.

Generated with cbor2 (so it is well-formed CBOR, just outside our subset or caps): nested maps
and arrays, tags, bignums, floats, simple values, negative integers, duplicate-looking keys and
both key orders, around the envelope's own keys so the schema checks are reached too. Only
MalformedEvidence subclasses may escape, and whatever the decoder accepts must be exactly what
a general CBOR decoder reads from the same bytes, in canonical form.

The number of examples comes from the active hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.errors import MalformedEvidence
from attestation.evidence import SNP_REPORT_SIZE, Evidence

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_SNP = (2).to_bytes(4, "little") + bytes(SNP_REPORT_SIZE - 4)
_TDX = b"\x04\x00\x02\x00\x81\x00\x00\x00" + bytes(40)
_KEYS = ["v", "tee", "report", "certs", "crls", "collateral", "x", "zz"]


def _accepted_or_typed(data: bytes) -> Evidence | None:
    try:
        ev = Evidence.decode(data)
    except MalformedEvidence as exc:
        assert exc.reason and exc.detail  # typed, with a stable reason and a message
        return None
    # accepted input is canonical CBOR that a general decoder reads the same way
    assert cbor2.dumps(cbor2.loads(data), canonical=True) == data
    body = cbor2.loads(data)
    assert body["v"] == 1 and body["tee"] == ev.tee and body["report"] == ev.report
    assert tuple(body.get("certs", ())) == ev.certs
    assert tuple(body.get("crls", ())) == ev.crls
    assert dict(body.get("collateral", {})) == dict(ev.collateral)
    assert Evidence.decode(ev.encode()) == ev
    return ev


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 80), max_value=1 << 80),  # beyond 64 bits: bignum tags
    st.floats(),
    st.text(max_size=6),
    st.binary(max_size=24),
    st.sampled_from(["snp", "tdx", _SNP, _TDX, b"", 1, 0]),
    st.builds(cbor2.CBORTag, st.sampled_from([0, 2, 3, 24, 55799]), st.binary(max_size=8)),
)
_keys = st.one_of(
    st.sampled_from(_KEYS),
    st.text(max_size=4),
    st.integers(-(1 << 70), 1 << 70),
    st.binary(max_size=3),
)
_trees = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=20),
        st.dictionaries(_keys, inner, max_size=20),
    ),
    max_leaves=40,
)
_good = {
    "v": st.just(1),
    "tee": st.sampled_from(["snp", "tdx"]),
    "report": st.sampled_from([_SNP, _TDX]),
    "certs": st.lists(st.binary(max_size=8), max_size=5),
    "crls": st.lists(st.binary(max_size=8), max_size=3),
    "collateral": st.dictionaries(st.text(min_size=1, max_size=4), st.binary(max_size=8)),
}


@st.composite
def _hostile_envelopes(draw: st.DrawFn) -> bytes:
    body: dict[Any, Any] = {}
    for key, good in _good.items():
        if key in ("certs", "crls", "collateral") and draw(st.booleans()):
            continue
        body[key] = draw(good if draw(st.integers(0, 3)) else _trees)
    for _ in range(draw(st.integers(0, 3))):
        body[draw(_keys)] = draw(_trees)
    return cbor2.dumps(body, canonical=draw(st.integers(0, 3)) > 0)


@settings(FUZZ)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data: bytes) -> None:
    _accepted_or_typed(data)


@settings(FUZZ)
@given(_trees)
def test_arbitrary_cbor_values(value: object) -> None:
    _accepted_or_typed(cbor2.dumps(value))


@settings(FUZZ)
@given(_hostile_envelopes())
def test_hostile_envelopes(data: bytes) -> None:
    _accepted_or_typed(data)


@settings(FUZZ)
@given(_hostile_envelopes(), st.integers(0, 4096), st.binary(min_size=1, max_size=4))
def test_spliced_hostile_bytes(data: bytes, at: int, splice: bytes) -> None:
    """Raw heads (indefinite, reserved, non-shortest, break) spliced into valid CBOR."""
    at %= len(data) + 1
    _accepted_or_typed(data[:at] + splice + data[at:])
