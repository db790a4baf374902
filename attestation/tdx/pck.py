"""PCK certificate chain and Intel SGX extensions.

The PCK (Provisioning Certification Key) certificate certifies the key that signs the QE report.
Its chain is PCK -> Intel SGX PCK Platform/Processor CA -> Intel SGX Root CA, all ECDSA P-256
with SHA-256. Trust comes from the *pinned* root in :class:`TrustAnchors`: a root certificate
carried in the quote is accepted only if it is byte-identical to the pinned one, and every
signature is checked against the pinned root's key, never against names.

The SGX extension (OID 1.2.840.113741.1.13.1) carries the platform's TCB (16 SGX component SVNs,
PCESVN, CPUSVN), PPID, PCE-ID, FMSPC, SGX type and, on multi-package platforms, the
PlatformInstanceID. It is decoded by a small strict DER reader written for this purpose: any
structural problem raises :class:`CertificateExtensionInvalid`.

Verified chains are cached (bounded) by SHA-256 over the pinned root and every chain DER; the
cache says "correctly signed", the validity window is re-checked against ``now`` on every hit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import SignatureAlgorithmOID

from attestation.anchors import TrustAnchors
from attestation.cache import BoundedCache, der_of
from attestation.errors import (
    CertificateExpired,
    CertificateExtensionInvalid,
    CertificateSignatureInvalid,
    ChainRejected,
    MalformedEvidence,
    MissingCertificate,
    SizeLimitExceeded,
    UntrustedRoot,
)

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
MAX_CHAIN_CERTS = 4
MAX_CERT_DER = 8 * 1024

SGX_TYPE_NAMES = {0: "Standard", 1: "Scalable", 2: "ScalableWithIntegrity"}


# --- a minimal strict DER reader -------------------------------------------------------------

_TAG_BOOLEAN = 0x01
_TAG_INTEGER = 0x02
_TAG_OCTET_STRING = 0x04
_TAG_OID = 0x06
_TAG_ENUMERATED = 0x0A
_TAG_SEQUENCE = 0x30


def oid_content(dotted: str) -> bytes:
    """DER content bytes of an OBJECT IDENTIFIER (used to compare OIDs byte-wise)."""
    arcs = [int(a) for a in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40):
        raise ValueError(f"bad OID {dotted!r}")
    out = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


def _ext_error(path: str, why: str) -> CertificateExtensionInvalid:
    return CertificateExtensionInvalid(f"SGX extension {path}: {why}")


def _read_tlv(data: bytes, pos: int, end: int, path: str) -> tuple[int, int, int]:
    """Read one TLV in ``data[pos:end]``; return (tag, content start, content end)."""
    if pos >= end:
        raise _ext_error(path, "truncated (missing tag)")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise _ext_error(path, "high tag numbers are not used here")
    pos += 1
    if pos >= end:
        raise _ext_error(path, "truncated (missing length)")
    first = data[pos]
    pos += 1
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 3:
            raise _ext_error(path, "unsupported length encoding")
        if pos + count > end:
            raise _ext_error(path, "truncated length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if data[pos] == 0 or length < 0x80:
            raise _ext_error(path, "length is not minimally encoded (not DER)")
        pos += count
    if pos + length > end:
        raise _ext_error(path, f"truncated: declares {length} bytes, {end - pos} left")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int, path: str) -> list[tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        tag, cstart, cend = _read_tlv(data, pos, end, path)
        out.append((tag, cstart, cend))
        pos = cend
    return out


def _der_uint(data: bytes, start: int, end: int, path: str, bits: int) -> int:
    if end == start:
        raise _ext_error(path, "empty INTEGER")
    if data[start] & 0x80:
        raise _ext_error(path, "negative INTEGER")
    if end - start > 1 and data[start] == 0 and not data[start + 1] & 0x80:
        raise _ext_error(path, "INTEGER is not minimally encoded")
    value = int.from_bytes(data[start:end], "big")
    if value >= 1 << bits:
        raise _ext_error(path, f"value {value} does not fit in {bits} bits")
    return value


# --- the SGX extension -----------------------------------------------------------------------


@dataclass(frozen=True)
class SgxTcb:
    """Platform TCB certified by the PCK: 16 component SVNs, PCESVN and the raw CPUSVN."""

    components: tuple[int, ...]
    pce_svn: int
    cpu_svn: bytes


@dataclass(frozen=True)
class PlatformConfiguration:
    dynamic_platform: bool | None = None
    cached_keys: bool | None = None
    smt_enabled: bool | None = None


@dataclass(frozen=True)
class SgxExtensions:
    ppid: bytes
    tcb: SgxTcb
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None = None
    configuration: PlatformConfiguration | None = None

    @property
    def platform_id(self) -> bytes:
        """Identifier matched by ``AllowedPIIDs``: PlatformInstanceID if present, else PPID."""
        return self.platform_instance_id if self.platform_instance_id is not None else self.ppid


_SGX = SGX_EXTENSION_OID
_OID_PPID = oid_content(f"{_SGX}.1")
_OID_TCB = oid_content(f"{_SGX}.2")
_OID_PCE_ID = oid_content(f"{_SGX}.3")
_OID_FMSPC = oid_content(f"{_SGX}.4")
_OID_SGX_TYPE = oid_content(f"{_SGX}.5")
_OID_PIID = oid_content(f"{_SGX}.6")
_OID_CONFIG = oid_content(f"{_SGX}.7")
_OID_TCB_COMP = {oid_content(f"{_SGX}.2.{i}"): i for i in range(1, 17)}
_OID_TCB_PCESVN = oid_content(f"{_SGX}.2.17")
_OID_TCB_CPUSVN = oid_content(f"{_SGX}.2.18")
_OID_CONFIG_ITEMS = {
    oid_content(f"{_SGX}.7.1"): "dynamic_platform",
    oid_content(f"{_SGX}.7.2"): "cached_keys",
    oid_content(f"{_SGX}.7.3"): "smt_enabled",
}


def _entries(data: bytes, start: int, end: int, path: str) -> dict[bytes, tuple[int, int, int]]:
    """Decode ``SEQUENCE OF SEQUENCE { OID, value }`` into {oid content: value TLV}."""
    out: dict[bytes, tuple[int, int, int]] = {}
    for i, (tag, cstart, cend) in enumerate(_children(data, start, end, path)):
        where = f"{path}[{i}]"
        if tag != _TAG_SEQUENCE:
            raise _ext_error(where, "entry is not a SEQUENCE")
        parts = _children(data, cstart, cend, where)
        if len(parts) != 2:
            raise _ext_error(where, f"entry has {len(parts)} elements, expected 2")
        (otag, ostart, oend), value = parts
        if otag != _TAG_OID or oend == ostart:
            raise _ext_error(where, "entry does not start with an OBJECT IDENTIFIER")
        oid = data[ostart:oend]
        if oid in out:
            raise _ext_error(where, "duplicate OID")
        out[oid] = value
    return out


def _octets(data: bytes, tlv: tuple[int, int, int], path: str, size: int) -> bytes:
    tag, start, end = tlv
    if tag != _TAG_OCTET_STRING:
        raise _ext_error(path, "expected an OCTET STRING")
    if end - start != size:
        raise _ext_error(path, f"must be {size} bytes, got {end - start}")
    return data[start:end]


def _require(
    entries: dict[bytes, tuple[int, int, int]], oid: bytes, path: str
) -> tuple[int, int, int]:
    try:
        return entries[oid]
    except KeyError:
        raise _ext_error(path, "missing") from None


def decode_sgx_extensions(der: bytes) -> SgxExtensions:
    """Decode the SGX extension's DER value; strict, raises only CertificateExtensionInvalid."""
    data = bytes(der)
    if len(data) > MAX_CERT_DER:
        raise _ext_error("value", "too large")
    tag, start, end = _read_tlv(data, 0, len(data), "value")
    if tag != _TAG_SEQUENCE:
        raise _ext_error("value", "not a SEQUENCE")
    if end != len(data):
        raise _ext_error("value", f"{len(data) - end} trailing bytes")
    top = _entries(data, start, end, "value")

    ppid = _octets(data, _require(top, _OID_PPID, "PPID"), "PPID", 16)
    pce_id = _octets(data, _require(top, _OID_PCE_ID, "PCE-ID"), "PCE-ID", 2)
    fmspc = _octets(data, _require(top, _OID_FMSPC, "FMSPC"), "FMSPC", 6)

    ttag, tstart, tend = _require(top, _OID_SGX_TYPE, "SGXType")
    if ttag != _TAG_ENUMERATED:
        raise _ext_error("SGXType", "expected an ENUMERATED")
    sgx_type = _der_uint(data, tstart, tend, "SGXType", 8)

    tcb_tag, tcb_start, tcb_end = _require(top, _OID_TCB, "TCB")
    if tcb_tag != _TAG_SEQUENCE:
        raise _ext_error("TCB", "not a SEQUENCE")
    tcb_entries = _entries(data, tcb_start, tcb_end, "TCB")
    comps = [0] * 16
    for oid, index in _OID_TCB_COMP.items():
        path = f"TCB.sgxtcbcomp{index:02d}svn"
        ctag, cstart, cend = _require(tcb_entries, oid, path)
        if ctag != _TAG_INTEGER:
            raise _ext_error(path, "expected an INTEGER")
        comps[index - 1] = _der_uint(data, cstart, cend, path, 8)
    ptag, pstart, pend = _require(tcb_entries, _OID_TCB_PCESVN, "TCB.pcesvn")
    if ptag != _TAG_INTEGER:
        raise _ext_error("TCB.pcesvn", "expected an INTEGER")
    pce_svn = _der_uint(data, pstart, pend, "TCB.pcesvn", 16)
    cpu_svn = _octets(data, _require(tcb_entries, _OID_TCB_CPUSVN, "TCB.cpusvn"), "TCB.cpusvn", 16)

    piid = None
    if _OID_PIID in top:
        piid = _octets(data, top[_OID_PIID], "PlatformInstanceID", 16)

    config = None
    if _OID_CONFIG in top:
        ctag, cstart, cend = top[_OID_CONFIG]
        if ctag != _TAG_SEQUENCE:
            raise _ext_error("Configuration", "not a SEQUENCE")
        values: dict[str, bool] = {}
        for oid, value in _entries(data, cstart, cend, "Configuration").items():
            name = _OID_CONFIG_ITEMS.get(oid)
            if name is None:
                continue
            btag, bstart, bend = value
            if btag != _TAG_BOOLEAN or bend - bstart != 1 or data[bstart] not in (0x00, 0xFF):
                raise _ext_error(f"Configuration.{name}", "expected a DER BOOLEAN")
            values[name] = data[bstart] == 0xFF
        config = PlatformConfiguration(**values)

    return SgxExtensions(
        ppid=ppid,
        tcb=SgxTcb(components=tuple(comps), pce_svn=pce_svn, cpu_svn=cpu_svn),
        pce_id=pce_id,
        fmspc=fmspc,
        sgx_type=sgx_type,
        platform_instance_id=piid,
        configuration=config,
    )


def sgx_extensions_of(cert: x509.Certificate) -> SgxExtensions:
    """The decoded SGX extension of a PCK certificate (missing -> CertificateExtensionInvalid)."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID))
    except x509.ExtensionNotFound:
        raise CertificateExtensionInvalid("PCK certificate has no SGX extension") from None
    except ValueError as exc:
        raise CertificateExtensionInvalid(f"PCK certificate extensions unreadable: {exc}") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise CertificateExtensionInvalid("SGX extension has an unexpected type")
    return decode_sgx_extensions(value.value)


# --- PEM -------------------------------------------------------------------------------------

_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]+?)-----END CERTIFICATE-----"
)


def split_pem_certificates(
    data: bytes, where: str, *, max_certs: int = MAX_CHAIN_CERTS
) -> tuple[bytes, ...]:
    """DER blobs of a PEM certificate bundle; trailing NUL bytes (as in real quotes) tolerated.

    Only whitespace may separate the blocks; anything else is MalformedEvidence.
    """
    text = bytes(data).rstrip(b"\x00")
    ders: list[bytes] = []
    pos = 0
    for match in _PEM_BLOCK.finditer(text):
        if text[pos : match.start()].strip():
            raise MalformedEvidence(f"{where}: unexpected bytes between PEM blocks")
        if len(ders) >= max_certs:
            raise SizeLimitExceeded(f"{where}: more than {max_certs} certificates")
        try:
            der = base64.b64decode(re.sub(rb"\s", b"", match.group(1)), validate=True)
        except (binascii.Error, ValueError):
            raise MalformedEvidence(
                f"{where}: certificate {len(ders)} is not valid base64"
            ) from None
        if not der or len(der) > MAX_CERT_DER:
            raise MalformedEvidence(f"{where}: certificate {len(ders)} has a bad size ({len(der)})")
        ders.append(der)
        pos = match.end()
    if text[pos:].strip():
        raise MalformedEvidence(f"{where}: unexpected bytes after the last PEM block")
    if not ders:
        raise MissingCertificate(f"{where}: no PEM certificate")
    return tuple(ders)


def pem_of(ders: Sequence[bytes]) -> bytes:
    out = bytearray()
    for der in ders:
        b64 = base64.encodebytes(der).replace(b"\n", b"")
        out += b"-----BEGIN CERTIFICATE-----\n"
        out += b"".join(b64[i : i + 64] + b"\n" for i in range(0, len(b64), 64))
        out += b"-----END CERTIFICATE-----\n"
    return bytes(out)


# --- chain verification ----------------------------------------------------------------------


def load_der_certificate(der: bytes, where: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise MalformedEvidence(f"{where}: not a DER X.509 certificate") from None


def check_signed_by(child: x509.Certificate, parent: x509.Certificate, where: str) -> None:
    """ECDSA-P256/SHA-256 signature of ``child`` by ``parent`` and issuer/subject name linkage."""
    if child.issuer != parent.subject:
        raise CertificateSignatureInvalid(f"{where}: issuer name is not the parent's subject")
    key = parent.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CertificateSignatureInvalid(f"{where}: issuer key is not ECDSA P-256")
    if child.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
        raise CertificateSignatureInvalid(f"{where}: signature algorithm is not ecdsa-with-SHA256")
    try:
        key.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CertificateSignatureInvalid(f"{where}: signature does not verify") from None


def is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    except ValueError:
        return False
    return bool(bc.ca)


def check_window(window: tuple[datetime, datetime], now: datetime, where: str) -> None:
    not_before, not_after = window
    if now < not_before:
        raise CertificateExpired(f"{where}: not valid before {not_before.isoformat()}")
    if now > not_after:
        raise CertificateExpired(f"{where}: expired at {not_after.isoformat()}")


def window_of(cert: x509.Certificate) -> tuple[datetime, datetime]:
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def check_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")


@dataclass(frozen=True)
class PckChain:
    """A PCK chain verified to the pinned root (signatures, names, CA flags, extensions)."""

    ders: tuple[bytes, ...]
    pck: x509.Certificate = field(compare=False, repr=False)
    issuer: x509.Certificate = field(compare=False, repr=False)
    public_key: ec.EllipticCurvePublicKey = field(compare=False, repr=False)
    extensions: SgxExtensions
    windows: tuple[tuple[str, tuple[datetime, datetime]], ...]

    @property
    def pck_serial(self) -> int:
        return self.pck.serial_number

    @property
    def issuer_serial(self) -> int:
        return self.issuer.serial_number

    def check_validity(self, now: datetime) -> None:
        for where, window in self.windows:
            check_window(window, now, where)


def _chain_key(root_der: bytes, ders: Sequence[bytes]) -> bytes:
    h = hashlib.sha256(b"concord/tdx/pck-chain/v1\0")
    for blob in (root_der, *ders):
        h.update(len(blob).to_bytes(4, "big"))
        h.update(blob)
    return b"tdx-pck:" + h.digest()


def _verify_pck_chain_uncached(
    ders: Sequence[bytes], anchors: TrustAnchors, root_der: bytes
) -> PckChain:
    if len(ders) < 2:
        raise MissingCertificate("pck_chain: need the PCK and its issuing CA")
    if len(ders) > 3:
        raise ChainRejected(f"pck_chain: {len(ders)} certificates, expected PCK, CA and root")
    if len(ders) == 3 and ders[2] != root_der:
        raise UntrustedRoot("pck_chain: root certificate is not the pinned Intel SGX root")
    root = anchors.intel_root
    pck = load_der_certificate(ders[0], "pck_chain[0] (PCK)")
    ca = load_der_certificate(ders[1], "pck_chain[1] (PCK CA)")
    try:
        check_signed_by(ca, root, "pck_chain[1] (PCK CA)")
    except CertificateSignatureInvalid as exc:
        # Not signed by the pinned root: it chains to something else.
        raise UntrustedRoot(exc.detail) from None
    if not is_ca(ca):
        raise ChainRejected("pck_chain[1] (PCK CA): not a CA certificate")
    check_signed_by(pck, ca, "pck_chain[0] (PCK)")
    if is_ca(pck):
        raise ChainRejected("pck_chain[0] (PCK): is a CA certificate, expected an end entity")
    key = pck.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ChainRejected("pck_chain[0] (PCK): key is not ECDSA P-256")
    extensions = sgx_extensions_of(pck)
    windows = (
        ("pck_chain[0] (PCK)", window_of(pck)),
        ("pck_chain[1] (PCK CA)", window_of(ca)),
        ("intel root", window_of(root)),
    )
    return PckChain(
        ders=tuple(ders),
        pck=pck,
        issuer=ca,
        public_key=key,
        extensions=extensions,
        windows=windows,
    )


def verify_pck_chain(
    ders: Sequence[bytes],
    anchors: TrustAnchors,
    now: datetime,
    cache: BoundedCache[bytes, object] | None = None,
) -> PckChain:
    """Verify PCK -> CA (-> root) against the pinned root at ``now``; cached by DER hash."""
    check_aware(now)
    root_der = der_of(anchors.intel_root)
    key = _chain_key(root_der, ders)
    chain: PckChain | None = None
    if cache is not None:
        hit = cache.get(key)
        if isinstance(hit, PckChain):
            chain = hit
    if chain is None:
        chain = _verify_pck_chain_uncached(ders, anchors, root_der)
        if cache is not None:
            cache.put(key, chain)
    chain.check_validity(now)
    return chain


def verify_signer_chain(
    ders: Sequence[bytes],
    anchors: TrustAnchors,
    now: datetime,
    where: str,
    cache: BoundedCache[bytes, object] | None = None,
) -> SignerChain:
    """Verify a collateral signing chain (TCB Signing cert [-> root]) to the pinned root."""
    check_aware(now)
    root_der = der_of(anchors.intel_root)
    key = b"tdx-signer:" + _chain_key(root_der, ders)
    chain: SignerChain | None = None
    if cache is not None:
        hit = cache.get(key)
        if isinstance(hit, SignerChain):
            chain = hit
    if chain is None:
        if not ders:
            raise MissingCertificate(f"{where}: empty issuer chain")
        if len(ders) > 2:
            raise ChainRejected(f"{where}: {len(ders)} certificates, expected signer and root")
        if len(ders) == 2 and ders[1] != root_der:
            raise UntrustedRoot(f"{where}: root certificate is not the pinned Intel SGX root")
        signer = load_der_certificate(ders[0], f"{where}[0]")
        try:
            check_signed_by(signer, anchors.intel_root, f"{where}[0]")
        except CertificateSignatureInvalid as exc:
            raise UntrustedRoot(exc.detail) from None
        if is_ca(signer):
            raise ChainRejected(f"{where}[0]: a CA certificate cannot sign collateral")
        pub = signer.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(
            pub.curve, ec.SECP256R1
        ):
            raise ChainRejected(f"{where}[0]: key is not ECDSA P-256")
        chain = SignerChain(
            ders=tuple(ders),
            cert=signer,
            public_key=pub,
            windows=(
                (f"{where}[0]", window_of(signer)),
                ("intel root", window_of(anchors.intel_root)),
            ),
        )
        if cache is not None:
            cache.put(key, chain)
    for name, window in chain.windows:
        check_window(window, now, name)
    return chain


@dataclass(frozen=True)
class SignerChain:
    """A collateral signer (Intel SGX TCB Signing) verified to the pinned root."""

    ders: tuple[bytes, ...]
    cert: x509.Certificate = field(compare=False, repr=False)
    public_key: ec.EllipticCurvePublicKey = field(compare=False, repr=False)
    windows: tuple[tuple[str, tuple[datetime, datetime]], ...]
