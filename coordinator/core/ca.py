"""Root, intermediate and mesh CA certificates, and leaf (mesh) certificate issuance (DESIGN §4).

CA certificates are deterministic so that every fresh coordinator of a deployment serves the
same bytes and a client can compare them across peers:

- serial: first 16 bytes of SHA-256(subject key SPKI DER [‖ transition hash for the mesh CA and
  the intermediate]) with the top bit cleared, so the DER INTEGER is positive and at most 16
  bytes long (RFC 5280 §4.1.2.2 allows up to 20 octets);
- validity: ``CA_NOT_BEFORE`` 2024-01-01T00:00:00Z to ``CA_NOT_AFTER`` 9999-12-31T23:59:59Z,
  the RFC 5280 §4.1.2.5 "no well-defined expiration" value (encoded as GeneralizedTime; the
  lifetime of a CA is bounded by its manifest, not by a clock);
- signatures: ECDSA P-384 with SHA-384, deterministic nonces (RFC 6979).

Root: CN ``system:coordinator:root``, self-signed by the root key (derived from the seed).
Mesh CA: CN ``system:coordinator:intermediate``, self-signed by the mesh key (random per
manifest). Intermediate: same subject and key as the mesh CA, issued by the root. A leaf verifies
against the mesh CA alone or via intermediate → root.

Leaf claims live in non-critical extensions under the project's OID arc ``CONCORD_ARC``, a
UUID-derived arc under ``2.25`` (ITU-T X.667: usable without registration)::

    CONCORD_ARC = 2.25.192262831667884418186649764139127283956
    ARC.1.1  TEE type             UTF8String    "snp" | "tdx"
    ARC.1.2  measurement          OCTET STRING  SNP MEASUREMENT / TDX MRTD (48 bytes)
    ARC.1.3  policy hash          OCTET STRING  32 bytes (SNP HOST_DATA / TDX MRCONFIGID[0:32])
    ARC.1.4  TCB                  OCTET STRING  SNP reported TCB / TDX TEE_TCB_SVN, as reported
    ARC.1.5  workload secret ID   UTF8String    present only when the policy has one

Leaf details: CN = first DNS SAN that fits in 64 characters, else ``policy-`` + the first 16 hex
characters of the policy hash; not_before = now - ``LEAF_BACKDATE`` (clock skew between
coordinator and workloads), not_after = now + validity; random 159-bit serial.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.core.manifest import classify_san
from coordinator.errors import ConcordError, Status

ROOT_CN = "system:coordinator:root"
INTERMEDIATE_CN = "system:coordinator:intermediate"
CA_NOT_BEFORE = datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC)
CA_NOT_AFTER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
LEAF_VALIDITY = timedelta(days=365)
LEAF_BACKDATE = timedelta(hours=1)
TEE_TYPES = ("snp", "tdx")

CONCORD_ARC = "2.25.192262831667884418186649764139127283956"
OID_TEE_TYPE = x509.ObjectIdentifier(CONCORD_ARC + ".1.1")
OID_MEASUREMENT = x509.ObjectIdentifier(CONCORD_ARC + ".1.2")
OID_POLICY_HASH = x509.ObjectIdentifier(CONCORD_ARC + ".1.3")
OID_TCB = x509.ObjectIdentifier(CONCORD_ARC + ".1.4")
OID_WORKLOAD_SECRET_ID = x509.ObjectIdentifier(CONCORD_ARC + ".1.5")

_MAX_CN = 64
_MAX_CLAIM = 1024
_TAG_OCTET_STRING = 0x04
_TAG_UTF8_STRING = 0x0C

LeafPublicKey = (
    ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


class CAError(ConcordError, ValueError):
    """Bad CA key material or leaf request (names the field and the reason). INTERNAL at the
    API: issuance validates the caller's leaf key before it reaches the CA."""

    reason = "ca_error"
    status = Status.INTERNAL


# --- small DER helpers -----------------------------------------------------------------------


def _der(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    else:
        body = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(body)]) + body
    return bytes([tag]) + length + value


def _der_value(tag: int, data: bytes) -> bytes:
    """Inverse of :func:`_der` for one complete TLV (strict: minimal length, no trailing data)."""
    if len(data) < 2 or data[0] != tag:
        raise CAError("claim extension has the wrong DER tag")
    first = data[1]
    if first < 0x80:
        n, start = first, 2
    else:
        size = first & 0x7F
        if size == 0 or size > 4 or len(data) < 2 + size or data[2] == 0:
            raise CAError("claim extension has a bad DER length")
        n, start = int.from_bytes(data[2 : 2 + size], "big"), 2 + size
        if n < 0x80:
            raise CAError("claim extension has a non-minimal DER length")
    if len(data) != start + n:
        raise CAError("claim extension has a bad DER length")
    return data[start:]


def _claim(oid: x509.ObjectIdentifier, tag: int, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(oid, _der(tag, value))


@dataclass(frozen=True)
class LeafClaims:
    """The attestation claims a leaf certificate carries."""

    tee: str
    measurement: bytes
    policy_hash: bytes
    tcb: bytes
    workload_secret_id: str


def leaf_claims(cert: x509.Certificate) -> LeafClaims:
    """Decode the claim extensions of a leaf issued by :meth:`CertificateAuthority.issue_leaf`."""

    def raw(oid: x509.ObjectIdentifier, tag: int, required: bool = True) -> bytes | None:
        try:
            ext = cert.extensions.get_extension_for_oid(oid)
        except x509.ExtensionNotFound:
            if required:
                raise CAError(f"certificate lacks claim extension {oid.dotted_string}") from None
            return None
        value = ext.value
        if not isinstance(value, x509.UnrecognizedExtension):
            raise CAError(f"claim extension {oid.dotted_string} has an unexpected type")
        return _der_value(tag, value.value)

    def text(b: bytes | None) -> str:
        try:
            return (b or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise CAError("claim extension is not valid UTF-8") from None

    return LeafClaims(
        tee=text(raw(OID_TEE_TYPE, _TAG_UTF8_STRING)),
        measurement=raw(OID_MEASUREMENT, _TAG_OCTET_STRING) or b"",
        policy_hash=raw(OID_POLICY_HASH, _TAG_OCTET_STRING) or b"",
        tcb=raw(OID_TCB, _TAG_OCTET_STRING) or b"",
        workload_secret_id=text(raw(OID_WORKLOAD_SECRET_ID, _TAG_UTF8_STRING, required=False)),
    )


# --- names and SANs --------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _san_plan(sans: tuple[str, ...]) -> tuple[tuple[x509.GeneralName, ...], str | None]:
    """GeneralNames for a manifest SAN list plus the first DNS name usable as CN (cached)."""
    names: list[x509.GeneralName] = []
    first_dns: str | None = None
    for i, san in enumerate(sans):
        try:
            kind, value = classify_san(san)
        except ValueError as e:
            raise CAError(f"sans[{i}]: {e}") from None
        if kind == "ip":
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        elif kind == "uri":
            names.append(x509.UniformResourceIdentifier(value))
        else:
            names.append(x509.DNSName(value))
            if first_dns is None and len(value) <= _MAX_CN:
                first_dns = value
    return tuple(names), first_dns


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def deterministic_serial(spki_der: bytes, transition_hash: bytes = b"") -> int:
    """First 16 bytes of SHA-256(SPKI ‖ transition), top bit cleared (positive INTEGER)."""
    head = bytearray(hashlib.sha256(spki_der + transition_hash).digest()[:16])
    head[0] &= 0x7F
    # A zero serial is invalid; probability 2^-127, handled so the function is total.
    return int.from_bytes(head, "big") or 1


def _check_p384(key: object, field: str) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise CAError(f"{field}: must be an EC P-384 private key")
    return key


def new_mesh_key() -> ec.EllipticCurvePrivateKey:
    """A fresh random mesh CA key (never derived from the seed)."""
    return ec.generate_private_key(ec.SECP384R1())


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePublicKey,
    serial: int,
    path_length: int | None,
    issuer_ski: x509.SubjectKeyIdentifier | None,
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(serial)
        .not_valid_before(CA_NOT_BEFORE)
        .not_valid_after(CA_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
    )
    if issuer_ski is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
    return builder


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_EKU = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)
_LEAF_BASIC = x509.BasicConstraints(ca=False, path_length=None)


class CertificateAuthority:
    """The CA certificates of one State, plus the prebuilt pieces for fast leaf issuance."""

    __slots__ = (
        "_template",
        "intermediate_cert",
        "intermediate_der",
        "intermediate_pem",
        "mesh_ca_cert",
        "mesh_ca_der",
        "mesh_ca_pem",
        "mesh_key",
        "root_cert",
        "root_der",
        "root_pem",
        "transition_hash",
    )

    def __init__(
        self,
        root_key: ec.EllipticCurvePrivateKey,
        mesh_key: ec.EllipticCurvePrivateKey,
        transition_hash: bytes,
    ) -> None:
        _check_p384(root_key, "root_key")
        _check_p384(mesh_key, "mesh_key")
        if not isinstance(transition_hash, bytes | bytearray) or len(transition_hash) != 32:
            raise CAError("transition_hash: must be 32 bytes")
        transition_hash = bytes(transition_hash)
        root_pub = root_key.public_key()
        mesh_pub = mesh_key.public_key()
        root_name = _name(ROOT_CN)
        mesh_name = _name(INTERMEDIATE_CN)
        root_ski = x509.SubjectKeyIdentifier.from_public_key(root_pub)
        mesh_ski = x509.SubjectKeyIdentifier.from_public_key(mesh_pub)
        mesh_serial = deterministic_serial(_spki(mesh_pub), transition_hash)

        root = _ca_builder(
            root_name, root_name, root_pub, deterministic_serial(_spki(root_pub)), None, None
        ).sign(root_key, hashes.SHA384(), ecdsa_deterministic=True)
        mesh_ca = _ca_builder(mesh_name, mesh_name, mesh_pub, mesh_serial, 0, None).sign(
            mesh_key, hashes.SHA384(), ecdsa_deterministic=True
        )
        intermediate = _ca_builder(mesh_name, root_name, mesh_pub, mesh_serial, 0, root_ski).sign(
            root_key, hashes.SHA384(), ecdsa_deterministic=True
        )

        sa = object.__setattr__
        sa(self, "transition_hash", transition_hash)
        sa(self, "mesh_key", mesh_key)
        sa(self, "root_cert", root)
        sa(self, "mesh_ca_cert", mesh_ca)
        sa(self, "intermediate_cert", intermediate)
        sa(self, "root_der", root.public_bytes(serialization.Encoding.DER))
        sa(self, "mesh_ca_der", mesh_ca.public_bytes(serialization.Encoding.DER))
        sa(self, "intermediate_der", intermediate.public_bytes(serialization.Encoding.DER))
        sa(self, "root_pem", _pem(root))
        sa(self, "mesh_ca_pem", _pem(mesh_ca))
        sa(self, "intermediate_pem", _pem(intermediate))
        # Leaf template: everything that does not depend on the request (builders are immutable).
        sa(
            self,
            "_template",
            x509.CertificateBuilder()
            .issuer_name(mesh_name)
            .add_extension(_LEAF_BASIC, critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(_LEAF_EKU, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(mesh_ski),
                critical=False,
            ),
        )

    root_cert: x509.Certificate
    intermediate_cert: x509.Certificate
    mesh_ca_cert: x509.Certificate
    root_der: bytes
    intermediate_der: bytes
    mesh_ca_der: bytes
    root_pem: bytes
    intermediate_pem: bytes
    mesh_ca_pem: bytes
    mesh_key: ec.EllipticCurvePrivateKey
    transition_hash: bytes
    _template: x509.CertificateBuilder

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("CertificateAuthority is immutable")

    def __repr__(self) -> str:
        return f"CertificateAuthority(transition={self.transition_hash.hex()[:16]}…)"

    def chain_pem(self, leaf: x509.Certificate) -> bytes:
        """Leaf followed by the intermediate, PEM (what a workload serves)."""
        return _pem(leaf) + self.intermediate_pem

    def issue_leaf(
        self,
        public_key: LeafPublicKey,
        *,
        sans: Sequence[str],
        policy_hash: bytes,
        tee: str,
        measurement: bytes,
        tcb: bytes,
        workload_secret_id: str,
        validity: timedelta = LEAF_VALIDITY,
        now: datetime | None = None,
    ) -> x509.Certificate:
        """Issue a mesh certificate for an attested workload key, signed by the mesh key."""
        if not isinstance(public_key, LeafPublicKey):
            raise CAError("public_key: must be an EC, RSA, Ed25519 or Ed448 public key")
        if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < 2048:
            raise CAError("public_key: RSA keys must have at least 2048 bits")
        if len(policy_hash) != 32:
            raise CAError("policy_hash: must be 32 bytes")
        if tee not in TEE_TYPES:
            raise CAError(f"tee: must be one of {', '.join(TEE_TYPES)}")
        for field, value in (("measurement", measurement), ("tcb", tcb)):
            if not isinstance(value, bytes | bytearray) or not 0 < len(value) <= _MAX_CLAIM:
                raise CAError(f"{field}: must be 1..{_MAX_CLAIM} bytes")
        if not isinstance(workload_secret_id, str):
            raise CAError("workload_secret_id: must be a string")
        if validity <= timedelta(0):
            raise CAError("validity: must be positive")
        if isinstance(sans, str) or not all(isinstance(s, str) for s in sans):
            raise CAError("sans: must be a sequence of strings")
        names, first_dns = _san_plan(tuple(sans))
        if now is None:
            now = datetime.now(UTC)
        elif now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        now = now.replace(microsecond=0)
        cn = first_dns or f"policy-{bytes(policy_hash).hex()[:16]}"

        builder = (
            self._template.subject_name(_name(cn))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - LEAF_BACKDATE)
            .not_valid_after(min(now + validity, CA_NOT_AFTER))
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = (
            builder.add_extension(
                _claim(OID_TEE_TYPE, _TAG_UTF8_STRING, tee.encode()), critical=False
            )
            .add_extension(
                _claim(OID_MEASUREMENT, _TAG_OCTET_STRING, bytes(measurement)), critical=False
            )
            .add_extension(
                _claim(OID_POLICY_HASH, _TAG_OCTET_STRING, bytes(policy_hash)), critical=False
            )
            .add_extension(_claim(OID_TCB, _TAG_OCTET_STRING, bytes(tcb)), critical=False)
        )
        if workload_secret_id:
            try:
                encoded = workload_secret_id.encode("utf-8")
            except UnicodeEncodeError:
                raise CAError("workload_secret_id: not valid Unicode") from None
            builder = builder.add_extension(
                _claim(OID_WORKLOAD_SECRET_ID, _TAG_UTF8_STRING, encoded), critical=False
            )
        return builder.sign(self.mesh_key, hashes.SHA384())
