"""VCEK/VLEK certificates: AMD extension decoding and chain verification to the pinned ARK.

The AMD KDS extensions (OID arc 1.3.6.1.4.1.3704.1) carry the key's product and the TCB SVNs it
was derived for; the verifier binds them to the report. Every AMD certificate signature is
RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt; anything else (PKCS#1 v1.5 included)
is rejected. The roots and intermediates come from :class:`TrustAnchors`; certificates shipped in
the evidence are never trusted on their own. Verified chains are cached (keyed by the leaf DER and
the ARK DER); a hit still re-checks validity at ``now`` and the CRLs.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from attestation.anchors import AmdRoots, TrustAnchors
from attestation.cache import BoundedCache, der_of
from attestation.errors import (
    CertificateExpired,
    CertificateExtensionInvalid,
    CertificateRevoked,
    CertificateSignatureInvalid,
    CollateralExpired,
    MalformedEvidence,
    MissingCertificate,
    SizeLimitExceeded,
    UntrustedRoot,
)
from attestation.reference import SNP_PRODUCTS, SnpTcb

OID_ARC = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = f"{OID_ARC}.1"
OID_PRODUCT_NAME = f"{OID_ARC}.2"
OID_BL_SPL = f"{OID_ARC}.3.1"
OID_TEE_SPL = f"{OID_ARC}.3.2"
OID_SNP_SPL = f"{OID_ARC}.3.3"
OID_SPL_4 = f"{OID_ARC}.3.4"
OID_SPL_5 = f"{OID_ARC}.3.5"
OID_SPL_6 = f"{OID_ARC}.3.6"
OID_SPL_7 = f"{OID_ARC}.3.7"
OID_UCODE_SPL = f"{OID_ARC}.3.8"
OID_FMC_SPL = f"{OID_ARC}.3.9"
OID_HWID = f"{OID_ARC}.4"
OID_CSP_ID = f"{OID_ARC}.5"

EXTENSION_NAMES = {
    OID_STRUCT_VERSION: "structVersion",
    OID_PRODUCT_NAME: "productName",
    OID_BL_SPL: "blSPL",
    OID_TEE_SPL: "teeSPL",
    OID_SNP_SPL: "snpSPL",
    OID_SPL_4: "spl_4",
    OID_SPL_5: "spl_5",
    OID_SPL_6: "spl_6",
    OID_SPL_7: "spl_7",
    OID_UCODE_SPL: "ucodeSPL",
    OID_FMC_SPL: "fmcSPL",
    OID_HWID: "hwID",
    OID_CSP_ID: "cspID",
}
RESERVED_SPL_OIDS = (OID_SPL_4, OID_SPL_5, OID_SPL_6, OID_SPL_7)

HWID_SIZE = {"Milan": 64, "Genoa": 64, "Turin": 8}
LEAF_SUBJECTS = {"SEV-VCEK": "vcek", "SEV-VLEK": "vlek"}
MAX_CERT_SIZE = 16 * 1024
MAX_CERTS = 8

PSS_SHA384 = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


# --- extension values ------------------------------------------------------------------------


def _der_length(value: bytes, pos: int, name: str) -> tuple[int, int]:
    """Definite DER length at ``pos``: (length, position after it). Minimal encodings only."""
    if pos >= len(value):
        raise CertificateExtensionInvalid(f"{name}: truncated DER length")
    first = value[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count == 0 or count > 2 or pos + 1 + count > len(value):
        raise CertificateExtensionInvalid(f"{name}: unsupported DER length encoding")
    length = int.from_bytes(value[pos + 1 : pos + 1 + count], "big")
    if length < 0x80 or (count == 2 and length < 0x100):
        raise CertificateExtensionInvalid(f"{name}: non-minimal DER length")
    return length, pos + 1 + count


def _der_tlv(value: bytes, tag: int, name: str) -> bytes:
    """The content of a single DER TLV with ``tag`` spanning all of ``value``."""
    if not value or value[0] != tag:
        raise CertificateExtensionInvalid(f"{name}: expected DER tag 0x{tag:02x}")
    length, pos = _der_length(value, 1, name)
    if pos + length != len(value):
        raise CertificateExtensionInvalid(f"{name}: DER length does not match the extension size")
    return value[pos:]


def decode_spl(value: bytes, name: str = "SPL") -> int:
    """A DER INTEGER in 0..255 (``02 01 xx`` or ``02 02 00 xx`` for xx >= 0x80)."""
    content = _der_tlv(value, 0x02, name)
    if not content or len(content) > 2:
        raise CertificateExtensionInvalid(f"{name}: INTEGER must be 1 or 2 bytes")
    if content[0] & 0x80:
        raise CertificateExtensionInvalid(f"{name}: negative INTEGER")
    if len(content) == 2 and (content[0] != 0 or content[1] < 0x80):
        raise CertificateExtensionInvalid(f"{name}: non-minimal or out-of-range INTEGER")
    return content[-1]


def decode_ia5(value: bytes, name: str) -> str:
    content = _der_tlv(value, 0x16, name)
    if not content or any(b < 0x20 or b > 0x7E for b in content):
        raise CertificateExtensionInvalid(f"{name}: IA5String must be non-empty printable ASCII")
    return content.decode("ascii")


def decode_hwid(value: bytes, size: int) -> bytes:
    """hwID is the raw chip ID (legacy) or a DER OCTET STRING wrapping it (newer KDS)."""
    if len(value) == size:
        return bytes(value)
    if len(value) == size + 2 and value[0] == 0x04 and value[1] == size:
        return bytes(value[2:])
    raise CertificateExtensionInvalid(
        f"hwID: {len(value)} bytes is neither a raw {size}-byte chip ID nor an OCTET STRING of it"
    )


@dataclass(frozen=True)
class AmdKeyInfo:
    """What a VCEK/VLEK certificate says about the key: product, TCB, chip or CSP identity."""

    kind: str  # "vcek" | "vlek"
    product_name: str  # as in the certificate, e.g. "Milan-B0"
    product: str  # product line: Milan, Genoa, Turin
    tcb: SnpTcb
    reserved_spls: tuple[tuple[str, int], ...]  # spl_4..spl_7 when present (bytes AMD reserves)
    struct_version: int | None = None
    hwid: bytes | None = None
    csp_id: str | None = None


def decode_extension_values(values: Mapping[str, bytes], kind: str) -> AmdKeyInfo:
    """Decode the AMD extensions (OID dotted string -> raw extnValue) of a VCEK or VLEK."""
    if kind not in ("vcek", "vlek"):
        raise CertificateExtensionInvalid(f"unknown endorsement key kind {kind!r}")

    def need(oid: str) -> bytes:
        if oid not in values:
            raise CertificateExtensionInvalid(
                f"{kind.upper()} lacks the {EXTENSION_NAMES[oid]} extension ({oid})"
            )
        return values[oid]

    product_name = decode_ia5(need(OID_PRODUCT_NAME), "productName")
    product = product_name.split("-", 1)[0]
    if product not in SNP_PRODUCTS:
        raise CertificateExtensionInvalid(f"productName {product_name!r} names no known product")
    turin = product == "Turin"
    if turin:
        fmc: int | None = decode_spl(need(OID_FMC_SPL), "fmcSPL")
    else:
        if OID_FMC_SPL in values:
            raise CertificateExtensionInvalid(f"fmcSPL present on a {product} key")
        fmc = None
    tcb = SnpTcb(
        bootloader=decode_spl(need(OID_BL_SPL), "blSPL"),
        tee=decode_spl(need(OID_TEE_SPL), "teeSPL"),
        snp=decode_spl(need(OID_SNP_SPL), "snpSPL"),
        microcode=decode_spl(need(OID_UCODE_SPL), "ucodeSPL"),
        fmc=fmc,
    )
    reserved = tuple(
        (EXTENSION_NAMES[oid], decode_spl(values[oid], EXTENSION_NAMES[oid]))
        for oid in RESERVED_SPL_OIDS
        if oid in values
    )
    struct_version = (
        decode_spl(values[OID_STRUCT_VERSION], "structVersion")
        if OID_STRUCT_VERSION in values
        else None
    )
    hwid: bytes | None = None
    csp_id: str | None = None
    if kind == "vcek":
        if OID_CSP_ID in values:
            raise CertificateExtensionInvalid("VCEK carries a cspID extension")
        hwid = decode_hwid(need(OID_HWID), HWID_SIZE[product])
    else:
        if OID_HWID in values:
            raise CertificateExtensionInvalid("VLEK carries a hwID extension")
        csp_id = decode_ia5(need(OID_CSP_ID), "cspID")
    return AmdKeyInfo(
        kind=kind,
        product_name=product_name,
        product=product,
        tcb=tcb,
        reserved_spls=reserved,
        struct_version=struct_version,
        hwid=hwid,
        csp_id=csp_id,
    )


# --- certificate parsing ---------------------------------------------------------------------


def load_certificate(der: bytes, what: str) -> x509.Certificate:
    """Parse one DER certificate; AMD VCEKs use serial 0, which cryptography warns about."""
    if not isinstance(der, bytes | bytearray):
        raise MalformedEvidence(f"{what}: expected DER bytes")
    if len(der) > MAX_CERT_SIZE:
        raise MalformedEvidence(f"{what}: {len(der)} bytes, limit {MAX_CERT_SIZE}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cert = x509.load_der_x509_certificate(bytes(der))
        # cryptography parses some fields lazily: touch them now so malformed DER fails here.
        _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc)
        _ = (cert.signature_algorithm_oid, cert.signature, cert.tbs_certificate_bytes)
    except Exception:
        raise MalformedEvidence(f"{what}: not a DER X.509 certificate") from None
    return cert


def _common_name(name: x509.Name) -> str | None:
    try:
        attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    except Exception:
        return None
    if len(attrs) != 1 or not isinstance(attrs[0].value, str):
        return None
    return attrs[0].value


def leaf_kind(cert: x509.Certificate, what: str = "certs[0]") -> str:
    """'vcek' or 'vlek' from the subject CN (SEV-VCEK / SEV-VLEK)."""
    kind = LEAF_SUBJECTS.get(_common_name(cert.subject) or "")
    if kind is None:
        raise MalformedEvidence(f"{what}: subject is neither SEV-VCEK nor SEV-VLEK")
    return kind


def decode_amd_extensions(cert: x509.Certificate, kind: str) -> AmdKeyInfo:
    values: dict[str, bytes] = {}
    try:
        extensions = list(cert.extensions)
    except Exception:
        raise CertificateExtensionInvalid("certificate extensions are malformed") from None
    for ext in extensions:
        oid = ext.oid.dotted_string
        if oid in EXTENSION_NAMES:
            if not isinstance(ext.value, x509.UnrecognizedExtension):
                raise CertificateExtensionInvalid(f"{EXTENSION_NAMES[oid]}: unexpected type")
            values[oid] = ext.value.value
    return decode_extension_values(values, kind)


def decode_key_certificate(
    der: bytes, what: str = "certs[0]"
) -> tuple[x509.Certificate, AmdKeyInfo]:
    """Parse a VCEK/VLEK DER and decode its AMD extensions (no signature check)."""
    cert = load_certificate(der, what)
    kind = leaf_kind(cert, what)
    return cert, decode_amd_extensions(cert, kind)


# --- chain verification ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Window:
    name: str
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class VerifiedKey:
    """A VCEK/VLEK proven to chain to a pinned ARK (signatures only; validity is per call)."""

    info: AmdKeyInfo
    public_key: ec.EllipticCurvePublicKey
    roots: AmdRoots
    windows: tuple[_Window, ...]
    # (name, issuer, serial) of chain certificates a CRL issued by the ARK may list
    crl_targets: tuple[tuple[str, x509.Name, int], ...]

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def product(self) -> str:
        return self.info.product


def verify_pss_signature(
    signature: bytes,
    data: bytes,
    algorithm_oid: x509.ObjectIdentifier,
    issuer: x509.Certificate,
    what: str,
) -> None:
    """RSASSA-PSS SHA-384 / MGF1-SHA-384 / salt 48 by ``issuer``; PKCS#1 v1.5 is rejected."""
    if algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        raise CertificateSignatureInvalid(
            f"{what}: signature algorithm {algorithm_oid.dotted_string} is not RSASSA-PSS"
        )
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise CertificateSignatureInvalid(f"{what}: issuer key is not RSA")
    try:
        key.verify(signature, data, PSS_SHA384, hashes.SHA384())
    except InvalidSignature:
        raise CertificateSignatureInvalid(
            f"{what}: RSA-PSS SHA-384 signature does not verify under {_describe(issuer)}"
        ) from None


def _describe(cert: x509.Certificate) -> str:
    return _common_name(cert.subject) or "the issuer"


def _verify_cert_signature(child: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    if child.issuer != issuer.subject:
        raise UntrustedRoot(
            f"{what}: issued by {_common_name(child.issuer)!r}, not by the pinned {_describe(issuer)}"
        )
    try:
        sig_oid = child.signature_algorithm_oid
        signature = child.signature
        tbs = child.tbs_certificate_bytes
    except Exception:
        raise MalformedEvidence(f"{what}: malformed signature fields") from None
    verify_pss_signature(signature, tbs, sig_oid, issuer, what)


def _window(cert: x509.Certificate, name: str) -> _Window:
    return _Window(name, cert.not_valid_before_utc, cert.not_valid_after_utc)


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now


def _check_validity(windows: Sequence[_Window], now: datetime) -> None:
    for w in windows:
        if now < w.not_before:
            raise CertificateExpired(f"{w.name}: not valid before {w.not_before.isoformat()}")
        if now > w.not_after:
            raise CertificateExpired(f"{w.name}: expired at {w.not_after.isoformat()}")


def _check_extras(extras: Sequence[bytes], roots: AmdRoots) -> None:
    """Evidence-supplied ASK/ASVK/ARK must be the pinned ones; other extras are ignored."""
    pinned = [c for c in (roots.ark, roots.ask, roots.asvk) if c is not None]
    pinned_der = {der_of(c) for c in pinned}
    for i, der in enumerate(extras, start=1):
        if bytes(der) in pinned_der:
            continue
        cert = load_certificate(der, f"certs[{i}]")
        for p in pinned:
            if cert.subject == p.subject:
                raise UntrustedRoot(
                    f"certs[{i}]: {_describe(p)} differs from the pinned {_describe(p)}"
                )


def _check_crls(crls: Sequence[bytes], key: VerifiedKey, now: datetime) -> None:
    ark = key.roots.ark
    for i, der in enumerate(crls):
        what = f"crls[{i}]"
        try:
            crl = x509.load_der_x509_crl(bytes(der))
            issuer = crl.issuer
            signed = (crl.signature, crl.tbs_certlist_bytes, crl.signature_algorithm_oid)
        except Exception:
            raise MalformedEvidence(f"{what}: not a DER X.509 CRL") from None
        if issuer != ark.subject:
            continue  # a CRL of another product's ARK says nothing about this chain
        verify_pss_signature(*signed, ark, what)
        try:
            last_update, next_update = crl.last_update_utc, crl.next_update_utc
            revoked = [
                (name, serial)
                for name, cert_issuer, serial in key.crl_targets
                if cert_issuer == issuer
                and crl.get_revoked_certificate_by_serial_number(serial) is not None
            ]
        except Exception:
            raise MalformedEvidence(f"{what}: malformed CRL fields") from None
        if last_update > now:
            raise CollateralExpired(f"{what}: issued in the future ({last_update.isoformat()})")
        if next_update is not None and next_update < now:
            raise CollateralExpired(f"{what}: stale, next update was due {next_update.isoformat()}")
        if revoked:
            name, serial = revoked[0]
            raise CertificateRevoked(f"{name}: serial {serial:x} is revoked by {what}")


def _cache_key(leaf_der: bytes, ark: x509.Certificate) -> bytes:
    return hashlib.sha256(bytes(leaf_der) + der_of(ark)).digest()


def _verify_uncached(
    leaf_der: bytes, extras: Sequence[bytes], anchors: TrustAnchors
) -> VerifiedKey:
    leaf, info = decode_key_certificate(leaf_der)
    roots = anchors.amd.get(info.product)
    if roots is None:
        raise UntrustedRoot(f"no pinned {info.product} ARK in the {anchors.kind} trust anchors")
    intermediate = roots.ask if info.kind == "vcek" else roots.asvk
    label = "ASK" if info.kind == "vcek" else "ASVK"
    if intermediate is None:
        raise UntrustedRoot(f"no pinned {info.product} {label} in the {anchors.kind} trust anchors")
    _check_extras(extras, roots)  # a foreign root in the evidence is named as such
    name = info.kind.upper()
    _verify_cert_signature(leaf, intermediate, name)
    _verify_cert_signature(intermediate, roots.ark, label)
    _verify_cert_signature(roots.ark, roots.ark, "ARK")
    try:
        public_key = leaf.public_key()
    except Exception:
        raise MalformedEvidence(f"{name}: unsupported or malformed public key") from None
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP384R1
    ):
        raise MalformedEvidence(f"{name}: public key is not EC P-384")
    return VerifiedKey(
        info=info,
        public_key=public_key,
        roots=roots,
        windows=(_window(leaf, name), _window(intermediate, label), _window(roots.ark, "ARK")),
        crl_targets=(
            (label, intermediate.issuer, intermediate.serial_number),
            ("ARK", roots.ark.issuer, roots.ark.serial_number),
        ),
    )


def verify_key_chain(
    certs: Sequence[bytes],
    anchors: TrustAnchors,
    now: datetime,
    *,
    product_hint: str | None = None,
    crls: Sequence[bytes] = (),
    cache: BoundedCache[bytes, VerifiedKey] | None = None,
) -> VerifiedKey:
    """Verify ``certs[0]`` (VCEK or VLEK) up to the pinned ARK of its product at ``now``."""
    if not certs:
        raise MissingCertificate("no VCEK/VLEK certificate in the evidence")
    if len(certs) > MAX_CERTS:
        raise SizeLimitExceeded(f"{len(certs)} certificates, limit {MAX_CERTS}")
    leaf_der = certs[0]
    if not isinstance(leaf_der, bytes | bytearray):
        raise MalformedEvidence("certs[0]: expected DER bytes")
    now = _utc(now)
    key: VerifiedKey | None = None
    cache_key: bytes | None = None
    if cache is not None:
        # The product hint (report CPUID) names the likely ARK; else try each pinned product.
        order = [product_hint] if product_hint in anchors.amd else []
        order += [p for p in anchors.amd if p != product_hint]
        for product in order:
            candidate = cache.get(_cache_key(leaf_der, anchors.amd[product].ark))
            if candidate is not None:
                key = candidate
                break
    if key is None:
        key = _verify_uncached(bytes(leaf_der), certs[1:], anchors)
        cache_key = _cache_key(leaf_der, key.roots.ark)
    else:
        _check_extras(certs[1:], key.roots)
    _check_validity(key.windows, now)
    if crls:
        _check_crls(crls, key, now)
    if cache is not None and cache_key is not None:
        cache.put(cache_key, key)
    return key


__all__ = [
    "AmdKeyInfo",
    "VerifiedKey",
    "decode_amd_extensions",
    "decode_extension_values",
    "decode_hwid",
    "decode_ia5",
    "decode_key_certificate",
    "decode_spl",
    "verify_key_chain",
    "verify_pss_signature",
]
