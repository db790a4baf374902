"""SEV-SNP evidence verification: report + VCEK/VLEK in, SnpVerified or one typed rejection out.

Order (each step relies on the previous one): strict parse → VCEK/VLEK chain to the pinned ARK →
binding of the report to the key (product, signer kind, TCB SVNs, chip ID) → ECDSA P-384 SHA-384
signature over bytes [0, 0x2A0) with little-endian r and s → report data → reference values.
Pure: ``now`` is an argument and the only state is the optional chain cache.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.anchors import TrustAnchors
from attestation.cache import BoundedCache
from attestation.errors import BindingMismatch, ReportDataMismatch, SignatureInvalid
from attestation.reference import SnpReference, SnpTcb
from attestation.snp.certs import VerifiedKey, verify_key_chain
from attestation.snp.policy import ReportTcbs, SnpFacts, evaluate
from attestation.snp.report import SnpReport, parse_report
from attestation.snp.tcb import tcb_components

CHIP_ID_SIZE = 64
_ECDSA_SHA384 = ec.ECDSA(hashes.SHA384())


@dataclass(frozen=True)
class SnpVerified:
    report: SnpReport
    product: str
    signer: str  # "vcek" | "vlek"
    reference_index: int
    tcb: SnpTcb  # reported TCB
    measurement: bytes
    host_data: bytes
    report_data: bytes
    chip_id: bytes  # 64 bytes: report CHIP_ID, or the VCEK hwID when the report masks it


def _bind(report: SnpReport, key: VerifiedKey, tcbs: ReportTcbs) -> bytes:
    """Check the report against the key's certificate; return the effective chip ID."""
    info = key.info
    cpuid_product = report.cpuid_product
    if cpuid_product is not None and cpuid_product != info.product:
        raise BindingMismatch(
            f"product: report CPUID says {cpuid_product}, {info.kind.upper()} is for {info.product}"
        )
    if report.signer != info.kind:
        raise BindingMismatch(
            f"signing_key: report says {report.signer.upper()}, certs[0] is a {info.kind.upper()}"
        )
    for name in tcb_components(info.product):
        have, want = getattr(tcbs.reported, name), getattr(info.tcb, name)
        if have != want:
            raise BindingMismatch(
                f"reported_tcb.{name}: report {have}, {info.kind.upper()} SPL {want}"
            )
    for name, value in info.reserved_spls:
        if value != 0:
            raise BindingMismatch(f"{name}: {info.kind.upper()} has {value}, report has 0")
    chip_id = report.chip_id
    if info.kind == "vcek":
        assert info.hwid is not None  # decode guarantees it for a VCEK
        hwid = info.hwid.ljust(CHIP_ID_SIZE, b"\x00")
        if report.chip_id_masked:
            chip_id = hwid  # MASK_CHIP_ID: the VCEK itself identifies the chip
        elif not hmac.compare_digest(chip_id, hwid):
            raise BindingMismatch(
                f"chip_id: report chip ID does not match the VCEK hwID ({len(info.hwid)} bytes)"
            )
    return chip_id


def _check_signature(report: SnpReport, key: VerifiedKey) -> None:
    r = int.from_bytes(report.signature_r, "little")
    s = int.from_bytes(report.signature_s, "little")
    try:
        key.public_key.verify(encode_dss_signature(r, s), report.signed_bytes, _ECDSA_SHA384)
    except (InvalidSignature, ValueError):
        raise SignatureInvalid(
            f"report signature does not verify under the {key.kind.upper()}"
        ) from None


def verify_snp(
    report: bytes,
    certs: Sequence[bytes],
    anchors: TrustAnchors,
    references: Sequence[SnpReference],
    expected_report_data: bytes | None,
    now: datetime,
    *,
    crls: Sequence[bytes] = (),
    cache: BoundedCache[bytes, VerifiedKey] | None = None,
) -> SnpVerified:
    """Verify one SEV-SNP report; ``certs[0]`` is the VCEK or VLEK DER (ASK/ARK optional)."""
    if expected_report_data is not None and len(expected_report_data) != 64:
        raise ValueError("expected_report_data must be exactly 64 bytes")
    parsed = parse_report(report)
    if parsed.signer == "none":
        raise SignatureInvalid("report is not signed (SIGNING_KEY = none)")
    key = verify_key_chain(
        certs, anchors, now, product_hint=parsed.cpuid_product, crls=crls, cache=cache
    )
    product = key.product
    tcbs = ReportTcbs.decode(parsed, product)
    chip_id = _bind(parsed, key, tcbs)
    _check_signature(parsed, key)
    if expected_report_data is not None and not hmac.compare_digest(
        parsed.report_data, expected_report_data
    ):
        raise ReportDataMismatch("report_data does not match the expected value")
    index = evaluate(
        SnpFacts(report=parsed, product=product, signer=key.kind, chip_id=chip_id, tcbs=tcbs),
        references,
    )
    return SnpVerified(
        report=parsed,
        product=product,
        signer=key.kind,
        reference_index=index,
        tcb=tcbs.reported,
        measurement=parsed.measurement,
        host_data=parsed.host_data,
        report_data=parsed.report_data,
        chip_id=chip_id,
    )
