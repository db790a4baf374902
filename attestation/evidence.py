"""The evidence envelope: one canonical CBOR map carrying a report or quote and what verifies it.

``{"v": 1, "tee": "snp"|"tdx", "report": bytes, "certs": [DER...], "crls": [DER...],
"collateral": {str: bytes}}``. ``certs`` (VCEK/VLEK first, then ASK/ASVK, ARK) and the rest are
optional. Unknown keys are ignored so later versions can add fields; every size is bounded and
checked before anything is parsed.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field

import cbor2

from attestation.errors import MalformedEvidence, SizeLimitExceeded, UnsupportedVersion

ENVELOPE_VERSION = 1
TEE_TYPES = ("snp", "tdx")

SNP_REPORT_SIZE = 0x4A0
MAX_TDX_QUOTE = 64 * 1024
MAX_ENVELOPE = 1024 * 1024
MAX_CERTS = 8
MAX_CERT_SIZE = 16 * 1024
MAX_CRLS = 4
MAX_CRL_SIZE = 512 * 1024
MAX_COLLATERAL_ITEMS = 16
MAX_COLLATERAL = 256 * 1024


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
        if len(data) > MAX_ENVELOPE:
            raise SizeLimitExceeded(f"envelope is {len(data)} bytes, limit {MAX_ENVELOPE}")
        stream = io.BytesIO(data)
        try:
            body = cbor2.CBORDecoder(stream).decode()
        except Exception:
            raise MalformedEvidence("envelope: not valid CBOR") from None
        if stream.tell() != len(data):
            raise MalformedEvidence("envelope: trailing bytes after the CBOR item")
        if not isinstance(body, dict):
            raise MalformedEvidence("envelope: not a CBOR map")
        version = body.get("v")
        # type check first: CBOR true and 1.0 compare equal to 1 in Python
        if type(version) is not int or version != ENVELOPE_VERSION:
            if version is None:
                shown = "missing"
            elif type(version) is not int:
                shown = f"of type {type(version).__name__}"
            else:  # a CBOR bignum may be too long for str()
                shown = str(version) if abs(version) < 1 << 32 else "out of range"
            raise UnsupportedVersion(f"envelope: version {shown}, want {ENVELOPE_VERSION}")
        tee = body.get("tee")
        if tee not in TEE_TYPES:
            raise MalformedEvidence(f"envelope.tee: must be one of {', '.join(TEE_TYPES)}")
        report = body.get("report")
        if not isinstance(report, bytes):
            raise MalformedEvidence("envelope.report: missing or not a byte string")
        return cls(
            tee=tee,
            report=report,
            certs=_byte_list(body.get("certs", []), "certs"),
            crls=_byte_list(body.get("crls", []), "crls"),
            collateral=_byte_map(body.get("collateral", {}), "collateral"),
        )


def _byte_list(value: object, name: str) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        raise MalformedEvidence(f"envelope.{name}: must be an array of byte strings")
    return tuple(value)


def _byte_map(value: object, name: str) -> dict[str, bytes]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, bytes) for k, v in value.items()
    ):
        raise MalformedEvidence(f"envelope.{name}: must map text keys to byte strings")
    return dict(value)


def _check(ev: Evidence) -> None:
    if ev.tee not in TEE_TYPES:
        raise MalformedEvidence(f"envelope.tee: must be one of {', '.join(TEE_TYPES)}")
    if ev.tee == "snp" and len(ev.report) != SNP_REPORT_SIZE:
        raise SizeLimitExceeded(
            f"envelope.report: SNP report is {len(ev.report)} bytes, want {SNP_REPORT_SIZE}"
        )
    if ev.tee == "tdx" and len(ev.report) > MAX_TDX_QUOTE:
        raise SizeLimitExceeded(
            f"envelope.report: TDX quote is {len(ev.report)} bytes, limit {MAX_TDX_QUOTE}"
        )
    _bounded(ev.certs, MAX_CERTS, MAX_CERT_SIZE, "certs")
    _bounded(ev.crls, MAX_CRLS, MAX_CRL_SIZE, "crls")
    if len(ev.collateral) > MAX_COLLATERAL_ITEMS:
        raise SizeLimitExceeded(
            f"envelope.collateral: {len(ev.collateral)} items, limit {MAX_COLLATERAL_ITEMS}"
        )
    total = sum(len(k) + len(v) for k, v in ev.collateral.items())
    if total > MAX_COLLATERAL:
        raise SizeLimitExceeded(f"envelope.collateral: {total} bytes, limit {MAX_COLLATERAL}")


def _bounded(items: tuple[bytes, ...], count: int, size: int, name: str) -> None:
    if len(items) > count:
        raise SizeLimitExceeded(f"envelope.{name}: {len(items)} entries, limit {count}")
    for i, item in enumerate(items):
        if len(item) > size:
            raise SizeLimitExceeded(f"envelope.{name}[{i}]: {len(item)} bytes, limit {size}")


def sniff(data: bytes) -> str:
    """Tell an envelope, a raw SNP report and a raw TDX quote apart: 'envelope', 'snp' or 'tdx'."""
    if data[:1] and 0xA0 <= data[0] <= 0xBF:
        return "envelope"
    if (
        len(data) >= 8
        and int.from_bytes(data[0:2], "little") in (4, 5)
        and data[2:4] == b"\x02\x00"
    ):
        return "tdx"
    if len(data) == SNP_REPORT_SIZE and 2 <= int.from_bytes(data[0:4], "little") <= 5:
        return "snp"
    raise MalformedEvidence("input is neither an evidence envelope, an SNP report nor a TDX quote")
