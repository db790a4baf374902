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
from attestation.snp.tcb import is_turin_layout, tcb_components

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


class CertificateProductMismatch(BindingMismatch):
    """The VCEK/VLEK is for another product line than the report (e.g. a Turin VCEK for Genoa)."""

    reason = "certificate_product"


def _check_product(report: SnpReport, key: VerifiedKey) -> None:
    """Name a wrong-product certificate before its TCB layout misreads the report.

    Version 2 reports carry no CPUID; they come from Milan/Genoa firmware only (Turin firmware
    writes version 3 and later), so a Turin key for a version 2 report is a wrong pairing too.
    """
    info = key.info
    cpuid_product = report.cpuid_product
    if cpuid_product is not None:
        if cpuid_product != info.product:
            raise CertificateProductMismatch(
                f"the {info.kind.upper()} is for {info.product} ({info.product_name}) but the "
                f"report is from {cpuid_product} (CPUID): the certificate is for another product"
            )
    elif is_turin_layout(info.product):
        raise CertificateProductMismatch(
            f"the {info.kind.upper()} is for {info.product} ({info.product_name}) but the report "
            f"is version {report.version} (Milan or Genoa firmware): the certificate is for "
            "another product"
        )


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


@dataclass(frozen=True)
class SnpAuthentic:
    """A report whose chain, binding and signature verified: authentic, not yet judged."""

    report: SnpReport
    product: str
    signer: str  # "vcek" | "vlek"
    tcbs: ReportTcbs
    chip_id: bytes

    @property
    def facts(self) -> SnpFacts:
        return SnpFacts(
            report=self.report,
            product=self.product,
            signer=self.signer,
            chip_id=self.chip_id,
            tcbs=self.tcbs,
        )


def authenticate_snp(
    report: bytes,
    certs: Sequence[bytes],
    anchors: TrustAnchors,
    now: datetime,
    *,
    crls: Sequence[bytes] = (),
    cache: BoundedCache[bytes, VerifiedKey] | None = None,
) -> SnpAuthentic:
    """Authenticity only: parse, chain, product/TCB/chip binding, signature. No references."""
    parsed = parse_report(report)
    if parsed.signer == "none":
        raise SignatureInvalid("report is not signed (SIGNING_KEY = none)")
    key = verify_key_chain(
        certs, anchors, now, product_hint=parsed.cpuid_product, crls=crls, cache=cache
    )
    _check_product(parsed, key)
    product = key.product
    tcbs = ReportTcbs.decode(parsed, product)
    chip_id = _bind(parsed, key, tcbs)
    _check_signature(parsed, key)
    return SnpAuthentic(report=parsed, product=product, signer=key.kind, tcbs=tcbs, chip_id=chip_id)


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
    auth = authenticate_snp(report, certs, anchors, now, crls=crls, cache=cache)
    parsed = auth.report
    if expected_report_data is not None and not hmac.compare_digest(
        parsed.report_data, expected_report_data
    ):
        raise ReportDataMismatch("report_data does not match the expected value")
    index = evaluate(auth.facts, references)
    return SnpVerified(
        report=parsed,
        product=auth.product,
        signer=auth.signer,
        reference_index=index,
        tcb=auth.tcbs.reported,
        measurement=parsed.measurement,
        host_data=parsed.host_data,
        report_data=parsed.report_data,
        chip_id=auth.chip_id,
    )
