"""What to look up for a piece of evidence: the cache keys of its VCEK or TDX collateral.

Keys are derived from the (not yet verified) report or quote; a wrong key only finds nothing or
finds collateral that verification then refuses, so no trust is placed in them here.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from attestation.collateral.errors import ChipIdMasked, VlekNotFetchable
from attestation.errors import CertificateExtensionInvalid, MalformedEvidence
from attestation.reference import SnpTcb
from attestation.snp.certs import HWID_SIZE
from attestation.snp.report import parse_report
from attestation.snp.tcb import decode_tcb
from attestation.tdx.pck import sgx_extensions_of
from attestation.tdx.quote import parse_quote

# The PCK CRL is per issuing CA; its common name ends in one of these (Intel's, and the mock's).
PCK_CAS = {"SGX PCK Platform CA": "platform", "SGX PCK Processor CA": "processor"}
_SAFE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,160}$")


@dataclass(frozen=True)
class VcekKey:
    """A VCEK is fixed by product line, chip (hwID) and the reported TCB it was derived for."""

    product: str
    hwid: bytes
    reported_tcb: bytes  # the 8 raw REPORTED_TCB bytes (layout-independent key)

    @property
    def tcb(self) -> SnpTcb:
        return decode_tcb(self.reported_tcb, self.product, "reported_tcb")

    @property
    def name(self) -> str:
        return f"{self.product.lower()}-{self.hwid.hex()}-{self.reported_tcb.hex()}"


@dataclass(frozen=True)
class TdxKey:
    """TDX collateral is per FMSPC (TCB info) and per PCK CA (PCK CRL); QE identity is global."""

    fmspc: bytes
    ca: str  # "platform" | "processor"

    @property
    def name(self) -> str:
        return f"{self.fmspc.hex()}-{self.ca}"


def safe_name(name: str) -> str:
    """File names come from keys only; refuse anything that could leave the directory."""
    if not _SAFE.match(name):
        raise ValueError(f"unsafe cache key {name!r}")
    return name


def vcek_keys(report: bytes) -> tuple[VcekKey, ...]:
    """Candidate VCEK keys of a raw SNP report (two for v2 reports: Milan or Genoa)."""
    parsed = parse_report(report)
    if parsed.signer == "vlek":
        raise VlekNotFetchable(
            "the report is signed by a VLEK: AMD KDS does not publish VLEKs (they are issued to "
            "the cloud provider); the evidence must carry the VLEK certificate"
        )
    if parsed.chip_id_masked:
        raise ChipIdMasked(
            "the report masks its chip ID (MASK_CHIP_ID): KDS cannot be asked for its VCEK"
        )
    products = (parsed.cpuid_product,) if parsed.cpuid_product else ("Milan", "Genoa")
    keys = []
    for product in products:
        hwid = parsed.chip_id[: HWID_SIZE[product]]
        if not any(hwid):
            raise MalformedEvidence("the report's chip ID is all zero: no VCEK can match it")
        key = VcekKey(product=product, hwid=hwid, reported_tcb=parsed.reported_tcb_raw)
        key.tcb  # noqa: B018 - reject a TCB that does not fit the product layout now
        keys.append(key)
    return tuple(keys)


def tdx_key(quote: bytes) -> TdxKey:
    """FMSPC and PCK CA of a quote's PCK certificate (the chain is verified later)."""
    q = parse_quote(quote)
    if not q.pck_chain_der:
        raise MalformedEvidence("quote carries no PCK certificate chain")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pck = x509.load_der_x509_certificate(q.pck_chain_der[0])
        except ValueError:
            raise MalformedEvidence("PCK certificate is not DER X.509") from None
    issuer = pck.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer_cn = str(issuer[0].value) if issuer else ""
    for suffix, ca in PCK_CAS.items():
        if issuer_cn.endswith(suffix):
            return TdxKey(fmspc=sgx_extensions_of(pck).fmspc, ca=ca)
    raise CertificateExtensionInvalid(f"PCK issuer {issuer_cn!r} is not an SGX PCK CA")
