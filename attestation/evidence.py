"""The evidence envelope: one canonical CBOR map carrying a report or quote and what verifies it.

``{"v": 1, "tee": "snp"|"tdx", "report": bytes, "certs": [DER...], "crls": [DER...],
"collateral": {str: bytes}}``. ``certs`` (VCEK/VLEK first, then ASK/ASVK, ARK) and the rest are
optional.

Decoding is strict and bounded (DESIGN §13): :mod:`attestation.cbor_strict` reads only the CBOR
subset our encoder writes (canonical: shortest lengths, keys in canonical order, so no
duplicates), and every count and size is checked against the caps of the envelope's TEE type
(:data:`LIMITS`) from the item's header, before its contents are read. ``tee`` sorts before
every bulky field in canonical order, so the per-TEE caps apply to all of them.

Unknown keys (text, at the top level) are skipped so later versions can add fields, but only
when their values stay inside the same subset and caps (:data:`UNKNOWN_VALUES`); anything else
is refused, never silently tolerated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import cbor2

from attestation.cbor_strict import UINT, Reader, SkipLimits, UnexpectedType
from attestation.errors import MalformedEvidence, SizeLimitExceeded, UnsupportedVersion

ENVELOPE_VERSION = 1
TEE_TYPES = ("snp", "tdx")

SNP_REPORT_SIZE = 0x4A0
MAX_TDX_QUOTE = 16 * 1024
KIB = 1024


@dataclass(frozen=True)
class EnvelopeLimits:
    """Caps for the evidence of one TEE type; ``total`` bounds the whole encoded envelope."""

    report_min: int
    report_max: int
    certs: int
    cert_size: int
    crls: int
    crl_size: int
    collateral_items: int
    collateral_size: int  # keys and values together
    total: int


# SNP: a 1184-byte report, at most VCEK/VLEK + ASK/ASVK + ARK (about 1.5 KB each), an ARK CRL;
# no collateral. TDX: a quote of about 5 KB (PCK chain inside), TCB info / QE identity JSON with
# signatures, issuer chains and CRLs in `collateral`.
LIMITS: Mapping[str, EnvelopeLimits] = {
    "snp": EnvelopeLimits(
        report_min=SNP_REPORT_SIZE,
        report_max=SNP_REPORT_SIZE,
        certs=3,
        cert_size=8 * KIB,
        crls=2,
        crl_size=64 * KIB,
        collateral_items=0,
        collateral_size=0,
        total=192 * KIB,
    ),
    "tdx": EnvelopeLimits(
        report_min=1,
        report_max=MAX_TDX_QUOTE,
        certs=4,
        cert_size=8 * KIB,
        crls=2,
        crl_size=64 * KIB,
        collateral_items=16,
        collateral_size=256 * KIB,
        total=512 * KIB,
    ),
}
MAX_ENVELOPE = max(lim.total for lim in LIMITS.values())
MAX_TOP_LEVEL_KEYS = 16
MAX_KEY_SIZE = 64
UNKNOWN_VALUES = SkipLimits(depth=3, count=16, size=64 * KIB, key_size=MAX_KEY_SIZE)

# Raw input: the report/quote as its format sizes it, then at most this many unsigned bytes.
RAW_TRAILING_LIMIT = 4 * KIB

_BULKY = ("crls", "certs", "report", "collateral")


class RawInputSize(MalformedEvidence):
    """A raw report or quote shorter than its format, or with too many trailing bytes."""

    reason = "raw_size"


@dataclass(frozen=True)
class Evidence:
    tee: str
    report: bytes
    certs: tuple[bytes, ...] = ()
    crls: tuple[bytes, ...] = ()
    collateral: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self)

    def encode(self) -> bytes:
        body: dict[str, object] = {"v": ENVELOPE_VERSION, "tee": self.tee, "report": self.report}
        if self.certs:
            body["certs"] = list(self.certs)
        if self.crls:
            body["crls"] = list(self.crls)
        if self.collateral:
            body["collateral"] = dict(self.collateral)
        return cbor2.dumps(body, canonical=True)

    @classmethod
    def decode(cls, data: bytes) -> Evidence:
        """Strictly decode an envelope; raises only MalformedEvidence subclasses."""
        if len(data) > MAX_ENVELOPE:
            raise SizeLimitExceeded(f"envelope is {len(data)} bytes, limit {MAX_ENVELOPE}")
        return _Decoder(bytes(data)).run()


class _Decoder:
    """One pass over the top-level map; the per-TEE caps switch on once ``tee`` is read."""

    def __init__(self, data: bytes) -> None:
        self.r = Reader(data, "envelope")
        self.size = len(data)
        self.version = False
        self.tee: str | None = None
        self.report: bytes | None = None
        self.certs: tuple[bytes, ...] = ()
        self.crls: tuple[bytes, ...] = ()
        self.collateral: dict[str, bytes] = {}

    def run(self) -> Evidence:
        r = self.r
        for key in r.map("envelope", MAX_TOP_LEVEL_KEYS):
            if key == "v":
                self._version()
            elif key == "tee":
                self._tee()
            elif key in _BULKY:
                self._bulky(key, self._limits(key))
            else:
                r.skip(f"envelope[{key!r}]", UNKNOWN_VALUES)
        r.finish()
        if not self.version:
            raise UnsupportedVersion(f"envelope.v: version missing, want {ENVELOPE_VERSION}")
        if self.tee is None:
            raise MalformedEvidence(f"envelope.tee: missing, must be one of {', '.join(TEE_TYPES)}")
        if self.report is None:
            raise MalformedEvidence("envelope.report: missing")
        return Evidence(
            tee=self.tee,
            report=self.report,
            certs=self.certs,
            crls=self.crls,
            collateral=self.collateral,
        )

    def _version(self) -> None:
        head = self.r.head("envelope.v")
        if head.major != UINT:
            raise UnsupportedVersion(f"envelope.v: {head.kind}, want {ENVELOPE_VERSION}")
        if head.arg != ENVELOPE_VERSION:
            raise UnsupportedVersion(f"envelope.v: version {head.arg}, want {ENVELOPE_VERSION}")
        self.version = True

    def _tee(self) -> None:
        if not self.version:  # "v" sorts first, so it is missing (or the keys are unordered)
            raise UnsupportedVersion(
                f"envelope.v: version missing before envelope.tee (keys in canonical order), "
                f"want {ENVELOPE_VERSION}"
            )
        try:
            tee = self.r.text("envelope.tee", 8)
        except UnexpectedType as exc:
            raise UnexpectedType(
                f"envelope.tee: must be one of {', '.join(TEE_TYPES)} ({exc.detail})", exc.offset
            ) from None
        if tee not in LIMITS:
            raise MalformedEvidence(f"envelope.tee: must be one of {', '.join(TEE_TYPES)}")
        limits = LIMITS[tee]
        if self.size > limits.total:
            raise SizeLimitExceeded(
                f"envelope: {self.size} bytes, limit {limits.total} for {tee} evidence"
            )
        self.tee = tee
        self.r.note = f" for {tee} evidence"

    def _limits(self, key: str) -> EnvelopeLimits:
        if self.tee is None:  # "tee" sorts before every bulky field, so it is missing
            raise MalformedEvidence(
                f"envelope.tee: missing before envelope.{key} (keys in canonical order), "
                f"must be one of {', '.join(TEE_TYPES)}"
            )
        return LIMITS[self.tee]

    def _bulky(self, key: str, lim: EnvelopeLimits) -> None:
        r = self.r
        if key == "report":
            self.report = r.byte_string("envelope.report", lim.report_max)
        elif key == "certs":
            n = r.array("envelope.certs", lim.certs)
            self.certs = tuple(
                r.byte_string(f"envelope.certs[{i}]", lim.cert_size) for i in range(n)
            )
        elif key == "crls":
            n = r.array("envelope.crls", lim.crls)
            self.crls = tuple(r.byte_string(f"envelope.crls[{i}]", lim.crl_size) for i in range(n))
        else:
            total = 0
            for name in r.map("envelope.collateral", lim.collateral_items):
                value = r.byte_string(f"envelope.collateral[{name!r}]", lim.collateral_size)
                total += len(name.encode()) + len(value)
                if total > lim.collateral_size:
                    raise SizeLimitExceeded(
                        f"envelope.collateral: more than {lim.collateral_size} bytes, "
                        f"limit {lim.collateral_size} for {self.tee} evidence"
                    )
                self.collateral[name] = value


def _check(ev: Evidence) -> None:
    """The same caps for evidence built in memory (providers, tools) as for decoded evidence."""
    if ev.tee not in LIMITS:
        raise MalformedEvidence(f"envelope.tee: must be one of {', '.join(TEE_TYPES)}")
    lim = LIMITS[ev.tee]
    if ev.tee == "snp" and len(ev.report) != SNP_REPORT_SIZE:
        raise SizeLimitExceeded(
            f"envelope.report: SNP report is {len(ev.report)} bytes, want {SNP_REPORT_SIZE}"
        )
    if ev.tee == "tdx" and not lim.report_min <= len(ev.report) <= lim.report_max:
        raise SizeLimitExceeded(
            f"envelope.report: TDX quote is {len(ev.report)} bytes, "
            f"want {lim.report_min} to {lim.report_max}"
        )
    _bounded(ev.certs, lim.certs, lim.cert_size, "certs", ev.tee)
    _bounded(ev.crls, lim.crls, lim.crl_size, "crls", ev.tee)
    if len(ev.collateral) > lim.collateral_items:
        raise SizeLimitExceeded(
            f"envelope.collateral: {len(ev.collateral)} items, "
            f"limit {lim.collateral_items} for {ev.tee} evidence"
        )
    for key in ev.collateral:
        if not isinstance(key, str) or not key or len(key.encode()) > MAX_KEY_SIZE:
            raise MalformedEvidence(
                f"envelope.collateral: keys must be text of 1 to {MAX_KEY_SIZE} bytes"
            )
    total = sum(len(k.encode()) + len(v) for k, v in ev.collateral.items())
    if total > lim.collateral_size:
        raise SizeLimitExceeded(
            f"envelope.collateral: {total} bytes, limit {lim.collateral_size} for {ev.tee} evidence"
        )


def _bounded(items: tuple[bytes, ...], count: int, size: int, name: str, tee: str) -> None:
    if len(items) > count:
        raise SizeLimitExceeded(
            f"envelope.{name}: {len(items)} entries, limit {count} for {tee} evidence"
        )
    for i, item in enumerate(items):
        if len(item) > size:
            raise SizeLimitExceeded(
                f"envelope.{name}[{i}]: {len(item)} bytes, limit {size} for {tee} evidence"
            )


# --- raw input -------------------------------------------------------------------------------


def sniff(data: bytes) -> str:
    """Tell an envelope, a raw SNP report and a raw TDX quote apart: 'envelope', 'snp' or 'tdx'.

    Decided on the leading bytes only; sizes are judged by :meth:`Evidence.decode` and
    :func:`from_raw`, which say what size they found.
    """
    if data[:1] and 0xA0 <= data[0] <= 0xBF:
        return "envelope"
    if (
        len(data) >= 8
        and int.from_bytes(data[0:2], "little") in (4, 5)
        and data[2:4] == b"\x02\x00"
    ):
        return "tdx"
    if len(data) >= 4 and 2 <= int.from_bytes(data[0:4], "little") <= 5:
        return "snp"
    raise MalformedEvidence(
        f"input ({len(data)} bytes) is neither an evidence envelope, an SNP report nor a TDX quote"
    )


def from_raw(data: bytes, tee: str) -> Evidence:
    """Evidence from a raw report or quote, by one rule for both TEE types.

    The input is the report or quote at the length its format defines (SNP: 1184 bytes; TDX:
    header, body and the declared signature data), followed by at most
    :data:`RAW_TRAILING_LIMIT` unsigned trailing bytes, which are ignored. Shorter input or more
    trailing bytes is refused with the size found. An SNP envelope holds exactly the report, so
    its trailing bytes are dropped; a TDX quote keeps them (its parser reports and ignores them).
    """
    if tee == "snp":
        name, length = "SNP report", SNP_REPORT_SIZE
    elif tee == "tdx":
        name, length = "TDX quote", _tdx_declared_length(data)
    else:
        raise MalformedEvidence(f"raw input: TEE type must be one of {', '.join(TEE_TYPES)}")
    if len(data) < length:
        raise RawInputSize(f"raw {name}: {len(data)} bytes found, the {name} is {length} bytes")
    extra = len(data) - length
    if extra > RAW_TRAILING_LIMIT:
        raise RawInputSize(
            f"raw {name}: {len(data)} bytes found, that is {length} bytes of {name} and {extra} "
            f"trailing bytes, limit {RAW_TRAILING_LIMIT} trailing bytes"
        )
    return Evidence(tee=tee, report=data[:length] if tee == "snp" else bytes(data))


# TDX quote layout, only as far as needed to find where the signed quote ends.
_TDX_HEADER = 48
_TDX_BODY_V4 = 584
_TDX_BODY_DESCRIPTOR = 6  # v5: type u16, size u32


def _tdx_declared_length(data: bytes) -> int:
    """Header + body + 4 + signature data length; too short to tell is a size refusal too."""
    if int.from_bytes(data[0:2], "little") == 5:
        if len(data) < _TDX_HEADER + _TDX_BODY_DESCRIPTOR:
            raise RawInputSize(
                f"raw TDX quote: {len(data)} bytes found, too short for a v5 header and body "
                f"descriptor ({_TDX_HEADER + _TDX_BODY_DESCRIPTOR} bytes)"
            )
        body = int.from_bytes(data[_TDX_HEADER + 2 : _TDX_HEADER + 6], "little")
        start = _TDX_HEADER + _TDX_BODY_DESCRIPTOR + body
    else:
        start = _TDX_HEADER + _TDX_BODY_V4
    if len(data) < start + 4:
        raise RawInputSize(
            f"raw TDX quote: {len(data)} bytes found, the header and body alone are "
            f"{start + 4} bytes"
        )
    return start + 4 + int.from_bytes(data[start : start + 4], "little")
