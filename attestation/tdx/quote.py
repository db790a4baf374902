"""Strict parser of Intel TDX quotes, versions 4 and 5 (ECDSA-256-with-P-256, QE report cert data).

Layout (little-endian integers)::

    header (48)        version u16 | att key type u16 | TEE type u32 | QE SVN u16 | PCE SVN u16
                       | QE vendor id 16 | user data 20
    v5 only            body type u16 (2 = TDX 1.0, 3 = TDX 1.5) | body size u32
    TD report body     584 bytes (TDX 1.0) or 648 bytes (TDX 1.5: + TEE_TCB_SVN_2, MRSERVICETD)
    signature data     length u32 | ECDSA signature 64 (r||s, big-endian) | attestation key 64
                       (x||y) | cert data type u16 (6) | size u32 | QE report 384 | QE report
                       signature 64 | QE auth data size u16 | auth data | cert data type u16 (5)
                       | size u32 | PCK chain PEM (may end with NUL bytes)

The quote signature covers header (+ v5 body descriptor) + body: :attr:`TdxQuote.signed_bytes`.
Unsigned bytes after the declared signature data are ignored; inside the declared lengths every
byte must be accounted for. Every problem is a typed rejection naming the field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from attestation.errors import MalformedEvidence, SizeLimitExceeded, UnsupportedVersion
from attestation.tdx.pck import split_pem_certificates

MAX_QUOTE_SIZE = 64 * 1024
HEADER_SIZE = 48
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
QE_REPORT_SIZE = 384
ECDSA_SIG_SIZE = 64
ATTESTATION_KEY_SIZE = 64

SUPPORTED_VERSIONS = (4, 5)
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x81
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3
CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

TD_ATTRIBUTES_DEBUG = 1 << 0
TD_ATTRIBUTES_SEPT_VE_DISABLE = 1 << 28


class UnsupportedQuoteType(UnsupportedVersion):
    """A field names a variant this verifier does not accept (key, TEE, body, cert type)."""

    reason = "unsupported_quote_type"


class InvalidAttestationKey(MalformedEvidence):
    """The attestation public key is not a point on P-256."""

    reason = "attestation_key"


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int  # informational: the verified QE SVN comes from the signed QE report
    pce_svn: int  # informational: the verified PCE SVN comes from the PCK certificate
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdReportBody:
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn_2: bytes | None = None  # TDX 1.5 body only
    mr_service_td: bytes | None = None  # TDX 1.5 body only

    @property
    def td_attributes_int(self) -> int:
        return int.from_bytes(self.td_attributes, "little")

    @property
    def debug(self) -> bool:
        """TD_ATTRIBUTES.TUD.DEBUG (bit 0): the host can read and write the TD's memory."""
        return bool(self.td_attributes_int & TD_ATTRIBUTES_DEBUG)


@dataclass(frozen=True)
class QeReport:
    """The SGX report of the Quoting Enclave (384 bytes), signed by the PCK key."""

    raw: bytes
    cpu_svn: bytes
    miscselect: bytes
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes


@dataclass(frozen=True)
class TdxQuote:
    raw: bytes
    header: QuoteHeader
    body_type: int
    body: TdReportBody
    signed_bytes: bytes
    signature: bytes
    attestation_key: bytes
    attestation_public_key: ec.EllipticCurvePublicKey = field(compare=False, repr=False)
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    pck_chain_der: tuple[bytes, ...]
    trailing_bytes: int

    @property
    def version(self) -> int:
        return self.header.version


class _Reader:
    """Bounds-checked cursor; truncation names the field being read."""

    def __init__(self, data: bytes, start: int, end: int, where: str) -> None:
        self.data = data
        self.pos = start
        self.end = end
        self.where = where

    def take(self, n: int, name: str) -> bytes:
        if self.end - self.pos < n:
            raise MalformedEvidence(
                f"{self.where}.{name}: truncated (need {n} bytes at offset {self.pos}, "
                f"{self.end - self.pos} left)"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self, name: str) -> int:
        value: int = struct.unpack("<H", self.take(2, name))[0]
        return value

    def u32(self, name: str) -> int:
        value: int = struct.unpack("<I", self.take(4, name))[0]
        return value

    def sub(self, n: int, name: str) -> _Reader:
        start = self.pos
        self.take(n, name)
        return _Reader(self.data, start, start + n, f"{self.where}.{name}")

    def finish(self) -> None:
        if self.pos != self.end:
            raise MalformedEvidence(
                f"{self.where}: {self.end - self.pos} unexpected bytes after the last field"
            )


def _parse_body(r: _Reader, body_type: int) -> TdReportBody:
    tee_tcb_svn = r.take(16, "tee_tcb_svn")
    mr_seam = r.take(48, "mr_seam")
    mr_signer_seam = r.take(48, "mr_signer_seam")
    seam_attributes = r.take(8, "seam_attributes")
    td_attributes = r.take(8, "td_attributes")
    xfam = r.take(8, "xfam")
    mr_td = r.take(48, "mr_td")
    mr_config_id = r.take(48, "mr_config_id")
    mr_owner = r.take(48, "mr_owner")
    mr_owner_config = r.take(48, "mr_owner_config")
    rtmrs = (r.take(48, "rtmr0"), r.take(48, "rtmr1"), r.take(48, "rtmr2"), r.take(48, "rtmr3"))
    report_data = r.take(64, "report_data")
    tee_tcb_svn_2 = mr_service_td = None
    if body_type == BODY_TYPE_TD15:
        tee_tcb_svn_2 = r.take(16, "tee_tcb_svn_2")
        mr_service_td = r.take(48, "mr_service_td")
    return TdReportBody(
        tee_tcb_svn=tee_tcb_svn,
        mr_seam=mr_seam,
        mr_signer_seam=mr_signer_seam,
        seam_attributes=seam_attributes,
        td_attributes=td_attributes,
        xfam=xfam,
        mr_td=mr_td,
        mr_config_id=mr_config_id,
        mr_owner=mr_owner,
        mr_owner_config=mr_owner_config,
        rtmrs=rtmrs,
        report_data=report_data,
        tee_tcb_svn_2=tee_tcb_svn_2,
        mr_service_td=mr_service_td,
    )


def parse_qe_report(raw: bytes) -> QeReport:
    """Decode the 384-byte SGX report of the QE (offsets per the SGX REPORTBODY)."""
    if len(raw) != QE_REPORT_SIZE:
        raise MalformedEvidence(f"qe_report: must be {QE_REPORT_SIZE} bytes, got {len(raw)}")
    isv_prod_id, isv_svn = struct.unpack_from("<HH", raw, 256)
    return QeReport(
        raw=bytes(raw),
        cpu_svn=raw[0:16],
        miscselect=raw[16:20],
        attributes=raw[48:64],
        mr_enclave=raw[64:96],
        mr_signer=raw[128:160],
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        report_data=raw[320:384],
    )


def attestation_public_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    """Load the raw x||y attestation key; not on P-256 -> InvalidAttestationKey."""
    if len(raw) != ATTESTATION_KEY_SIZE:
        raise InvalidAttestationKey(f"attestation_key: must be 64 bytes, got {len(raw)}")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        raise InvalidAttestationKey("attestation_key: not a point on P-256") from None


def parse_quote(data: bytes) -> TdxQuote:
    """Parse a TDX quote v4/v5; raises only :class:`~attestation.errors.EvidenceRejected`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedEvidence("quote: expected bytes")
    data = bytes(data)
    if len(data) > MAX_QUOTE_SIZE:
        raise SizeLimitExceeded(f"quote: {len(data)} bytes, limit {MAX_QUOTE_SIZE}")
    r = _Reader(data, 0, len(data), "quote")

    hr = r.sub(HEADER_SIZE, "header")
    version = hr.u16("version")
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(f"quote.header.version: {version}, supported 4 and 5")
    att_key_type = hr.u16("att_key_type")
    if att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise UnsupportedQuoteType(
            f"quote.header.att_key_type: {att_key_type}, only 2 (ECDSA-256-with-P-256) is supported"
        )
    tee_type = hr.u32("tee_type")
    if tee_type != TEE_TYPE_TDX:
        raise UnsupportedQuoteType(f"quote.header.tee_type: {tee_type:#x}, expected 0x81 (TDX)")
    header = QuoteHeader(
        version=version,
        att_key_type=att_key_type,
        tee_type=tee_type,
        qe_svn=hr.u16("qe_svn"),
        pce_svn=hr.u16("pce_svn"),
        qe_vendor_id=hr.take(16, "qe_vendor_id"),
        user_data=hr.take(20, "user_data"),
    )
    hr.finish()

    body_type = BODY_TYPE_TD10
    body_size = TD10_BODY_SIZE
    if version == 5:
        body_type = r.u16("body_descriptor.type")
        body_size = r.u32("body_descriptor.size")
        expected = {BODY_TYPE_TD10: TD10_BODY_SIZE, BODY_TYPE_TD15: TD15_BODY_SIZE}.get(body_type)
        if expected is None:
            raise UnsupportedQuoteType(
                f"quote.body_descriptor.type: {body_type}, supported 2 (TDX 1.0) and 3 (TDX 1.5)"
            )
        if body_size != expected:
            raise MalformedEvidence(
                f"quote.body_descriptor.size: {body_size}, "
                f"body type {body_type} is {expected} bytes"
            )
    body = _parse_body(r.sub(body_size, "body"), body_type)
    signed_bytes = data[: r.pos]

    sig_len = r.u32("signature_data_len")
    sr = r.sub(sig_len, "signature_data")
    trailing = r.end - r.pos  # unsigned, ignored

    signature = sr.take(ECDSA_SIG_SIZE, "signature")
    att_key = sr.take(ATTESTATION_KEY_SIZE, "attestation_key")
    cert_type = sr.u16("certification_data.type")
    if cert_type != CERT_TYPE_QE_REPORT:
        raise UnsupportedQuoteType(
            f"quote.signature_data.certification_data.type: {cert_type}, expected 6 (QE report)"
        )
    cert_size = sr.u32("certification_data.size")
    cr = sr.sub(cert_size, "certification_data")
    sr.finish()

    qe_report = parse_qe_report(cr.take(QE_REPORT_SIZE, "qe_report"))
    qe_report_signature = cr.take(ECDSA_SIG_SIZE, "qe_report_signature")
    auth_size = cr.u16("qe_auth_data.size")
    qe_auth_data = cr.take(auth_size, "qe_auth_data")
    inner_type = cr.u16("pck_cert_data.type")
    if inner_type != CERT_TYPE_PCK_CHAIN:
        raise UnsupportedQuoteType(
            f"quote.certification_data.pck_cert_data.type: {inner_type}, expected 5 (PCK chain PEM)"
        )
    inner_size = cr.u32("pck_cert_data.size")
    pem = cr.take(inner_size, "pck_cert_data")
    cr.finish()

    ders = split_pem_certificates(pem, "quote.pck_cert_data")
    public_key = attestation_public_key(att_key)

    return TdxQuote(
        raw=data,
        header=header,
        body_type=body_type,
        body=body,
        signed_bytes=signed_bytes,
        signature=signature,
        attestation_key=att_key,
        attestation_public_key=public_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=pem.rstrip(b"\x00"),
        pck_chain_der=ders,
        trailing_bytes=trailing,
    )
