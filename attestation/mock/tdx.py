"""Mock Intel hierarchy and byte-exact TDX quotes for a software TEE.

``create_mock_intel(DIR)`` writes a complete mock Intel PKI under ``DIR/intel/``::

    root.pem  root-key.pem            mock "Intel SGX Root CA" (loaded by anchors.mock(DIR))
    pck-ca.pem  pck-ca-key.pem        mock PCK Platform CA
    pck.pem  pck-key.pem              mock PCK certificate with real-shaped SGX extensions
    tcb-signing.pem  tcb-signing-key.pem   signs mock TCB info / QE identity
    attestation-key.pem               the QE's attestation key (signs quotes)
    qe.json                           the mock QE's identity (MRSIGNER, ISVPRODID, ISVSVN, ...)

Keys are written 0600. Quotes produced by :meth:`MockIntel.make_quote` have exactly the layout
of real ones (QE report signed by the PCK key, QE binding, quote signed by the attestation key),
so the verifier runs the same code for mock and real evidence. The mock root is a fresh key:
mock evidence fails under production anchors and real evidence under mock anchors.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attestation.anchors import TrustAnchors
from attestation.tdx.collateral_model import TdxCollateral
from attestation.tdx.pck import (
    SGX_EXTENSION_OID,
    PlatformConfiguration,
    SgxExtensions,
    SgxTcb,
    oid_content,
    sgx_extensions_of,
)
from attestation.tdx.quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    BODY_TYPE_TD10,
    BODY_TYPE_TD15,
    CERT_TYPE_PCK_CHAIN,
    CERT_TYPE_QE_REPORT,
    INTEL_QE_VENDOR_ID,
    TD10_BODY_SIZE,
    TD15_BODY_SIZE,
    TEE_TYPE_TDX,
)

DEFAULT_XFAM = bytes.fromhex("e702060000000000")
DEFAULT_TEE_TCB_SVN = bytes.fromhex("05010300000000000000000000000000")
DEFAULT_MR_SEAM = hashlib.sha384(b"concord mock TDX module").digest()
DEFAULT_QE_AUTH_DATA = hashlib.sha256(b"concord mock QE auth data").digest()
MOCK_FMSPC = bytes.fromhex("c0c06f000000")
MOCK_PCE_ID = bytes(2)
MOCK_TCB_COMPONENTS = (4, 4, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
MOCK_PCE_SVN = 13
QE_ATTRIBUTES = bytes.fromhex("1500000000000000e700000000000000")
QE_ATTRIBUTES_MASK = bytes.fromhex("fbffffffffffffff0000000000000000")

_KEY_FILES = (
    "root-key.pem",
    "pck-ca-key.pem",
    "pck-key.pem",
    "tcb-signing-key.pem",
    "attestation-key.pem",
)


# --- DER encoding of the SGX extension -------------------------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _int(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return _tlv(0x02, raw)


def _entry(oid: str, value: bytes) -> bytes:
    return _tlv(0x30, _tlv(0x06, oid_content(oid)) + value)


def encode_sgx_extensions(ext: SgxExtensions) -> bytes:
    """DER value of the SGX extension in Intel's layout (OIDs 1.2.840.113741.1.13.1.x)."""
    base = SGX_EXTENSION_OID
    tcb = b"".join(
        _entry(f"{base}.2.{i + 1}", _int(svn)) for i, svn in enumerate(ext.tcb.components)
    )
    tcb += _entry(f"{base}.2.17", _int(ext.tcb.pce_svn))
    tcb += _entry(f"{base}.2.18", _tlv(0x04, ext.tcb.cpu_svn))
    items = [
        _entry(f"{base}.1", _tlv(0x04, ext.ppid)),
        _entry(f"{base}.2", _tlv(0x30, tcb)),
        _entry(f"{base}.3", _tlv(0x04, ext.pce_id)),
        _entry(f"{base}.4", _tlv(0x04, ext.fmspc)),
        _entry(f"{base}.5", _tlv(0x0A, bytes([ext.sgx_type]))),
    ]
    if ext.platform_instance_id is not None:
        items.append(_entry(f"{base}.6", _tlv(0x04, ext.platform_instance_id)))
    if ext.configuration is not None:
        conf = b""
        for i, value in enumerate(
            (
                ext.configuration.dynamic_platform,
                ext.configuration.cached_keys,
                ext.configuration.smt_enabled,
            )
        ):
            if value is not None:
                conf += _entry(f"{base}.7.{i + 1}", _tlv(0x01, b"\xff" if value else b"\x00"))
        items.append(_entry(f"{base}.7", _tlv(0x30, conf)))
    return _tlv(0x30, b"".join(items))


# --- helpers ---------------------------------------------------------------------------------


def _raw_sig(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


def _name(cn: str, style: str) -> x509.Name:
    if style == "intel":
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel Corporation"),
                x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
                x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            ]
        )
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"Concord Mock {cn}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Concord mock TEE (not Intel)"),
        ]
    )


def _cert(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signing_key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePublicKey,
    not_before: datetime,
    not_after: datetime,
    *,
    ca: bool,
    path_length: int | None = None,
    extra: list[x509.ExtensionType] | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=not ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False
        )
    )
    for ext in extra or []:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if secret:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(path, 0o600)
    else:
        path.write_bytes(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _iso(d: datetime) -> str:
    return d.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _isv_level(svn: int, date: str, status: str, *advisories: str) -> dict[str, Any]:
    level: dict[str, Any] = {
        "tcb": {"isvsvn": svn},
        "tcbDate": f"{date}T00:00:00Z",
        "tcbStatus": status,
    }
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


def _masked(value: bytes, mask: bytes) -> bytes:
    return bytes(v & m for v, m in zip(value, mask, strict=True))


def _svn_list(svns: bytes | tuple[int, ...]) -> list[dict[str, int]]:
    return [{"svn": int(v)} for v in svns]


# --- the mock hierarchy ----------------------------------------------------------------------


@dataclass(frozen=True)
class MockQe:
    mr_signer: bytes
    mr_enclave: bytes
    isv_prod_id: int = 2
    isv_svn: int = 8
    attributes: bytes = QE_ATTRIBUTES
    miscselect: bytes = bytes(4)


@dataclass(frozen=True)
class MockIntel:
    directory: Path
    root: x509.Certificate = field(repr=False)
    root_key: ec.EllipticCurvePrivateKey = field(repr=False)
    pck_ca: x509.Certificate = field(repr=False)
    pck_ca_key: ec.EllipticCurvePrivateKey = field(repr=False)
    pck: x509.Certificate = field(repr=False)
    pck_key: ec.EllipticCurvePrivateKey = field(repr=False)
    tcb_signing: x509.Certificate = field(repr=False)
    tcb_signing_key: ec.EllipticCurvePrivateKey = field(repr=False)
    attestation_key: ec.EllipticCurvePrivateKey = field(repr=False)
    qe: MockQe

    @cached_property
    def extensions(self) -> SgxExtensions:
        return sgx_extensions_of(self.pck)

    def trust_anchors(self) -> TrustAnchors:
        """Anchors holding only the mock Intel root (tests; servers use anchors.mock(DIR))."""
        return TrustAnchors(kind="mock", amd={}, intel_root=self.root)

    def pck_chain_pem(self) -> bytes:
        return b"".join(_cert_pem(c) for c in (self.pck, self.pck_ca, self.root))

    # -- quotes --

    def make_quote(
        self,
        *,
        mr_td: bytes,
        mr_config_id: bytes = bytes(48),
        report_data: bytes,
        td_attributes: bytes = bytes(8),
        xfam: bytes = DEFAULT_XFAM,
        rtmrs: tuple[bytes, bytes, bytes, bytes] = (bytes(48), bytes(48), bytes(48), bytes(48)),
        version: int = 4,
        **overrides: Any,
    ) -> bytes:
        """A valid TDX quote v4/v5 (v5 body type 3 unless ``body_type=2``) with these values.

        Overrides: tee_tcb_svn, mr_seam, mr_signer_seam, seam_attributes, mr_owner,
        mr_owner_config, tee_tcb_svn_2, mr_service_td, body_type, qe_svn, qe_auth_data,
        user_data, qe_vendor_id, trailing (unsigned bytes appended).
        """
        allowed = {
            "tee_tcb_svn", "mr_seam", "mr_signer_seam", "seam_attributes", "mr_owner",
            "mr_owner_config", "tee_tcb_svn_2", "mr_service_td", "body_type", "qe_svn",
            "qe_auth_data", "user_data", "qe_vendor_id", "trailing",
        }  # fmt: skip
        unknown = set(overrides) - allowed
        if unknown:
            raise TypeError(f"make_quote: unknown override(s) {sorted(unknown)}")
        if version not in (4, 5):
            raise ValueError("version must be 4 or 5")
        o = overrides

        def sized(name: str, value: bytes, size: int) -> bytes:
            if not isinstance(value, bytes) or len(value) != size:
                raise ValueError(f"{name} must be {size} bytes")
            return value

        if len(rtmrs) != 4:
            raise ValueError("rtmrs must have 4 entries")
        body_type = int(o.get("body_type", BODY_TYPE_TD15 if version == 5 else BODY_TYPE_TD10))
        if version == 4 and body_type != BODY_TYPE_TD10:
            raise ValueError("a v4 quote carries a TDX 1.0 body")
        if body_type not in (BODY_TYPE_TD10, BODY_TYPE_TD15):
            raise ValueError("body_type must be 2 or 3")
        body = b"".join(
            (
                sized("tee_tcb_svn", o.get("tee_tcb_svn", DEFAULT_TEE_TCB_SVN), 16),
                sized("mr_seam", o.get("mr_seam", DEFAULT_MR_SEAM), 48),
                sized("mr_signer_seam", o.get("mr_signer_seam", bytes(48)), 48),
                sized("seam_attributes", o.get("seam_attributes", bytes(8)), 8),
                sized("td_attributes", td_attributes, 8),
                sized("xfam", xfam, 8),
                sized("mr_td", mr_td, 48),
                sized("mr_config_id", mr_config_id, 48),
                sized("mr_owner", o.get("mr_owner", bytes(48)), 48),
                sized("mr_owner_config", o.get("mr_owner_config", bytes(48)), 48),
                *(sized(f"rtmrs[{i}]", r, 48) for i, r in enumerate(rtmrs)),
                sized("report_data", report_data, 64),
            )
        )
        if body_type == BODY_TYPE_TD15:
            body += sized("tee_tcb_svn_2", o.get("tee_tcb_svn_2", bytes(16)), 16)
            body += sized("mr_service_td", o.get("mr_service_td", bytes(48)), 48)
        assert len(body) == (TD15_BODY_SIZE if body_type == BODY_TYPE_TD15 else TD10_BODY_SIZE)

        ext = self.extensions
        header = struct.pack("<HHIHH", version, ATT_KEY_TYPE_ECDSA_P256, TEE_TYPE_TDX, 0, 0)
        header += sized("qe_vendor_id", o.get("qe_vendor_id", INTEL_QE_VENDOR_ID), 16)
        header += sized("user_data", o.get("user_data", bytes(20)), 20)
        if version == 5:
            header += struct.pack("<HI", body_type, len(body))
        signed = header + body

        att_pub = _raw_point(self.attestation_key.public_key())
        auth = o.get("qe_auth_data", DEFAULT_QE_AUTH_DATA)
        if not isinstance(auth, bytes) or len(auth) > 0xFFFF:
            raise ValueError("qe_auth_data must be bytes (< 64 KiB)")
        qe_svn = int(o.get("qe_svn", self.qe.isv_svn))
        qe_report = b"".join(
            (
                ext.tcb.cpu_svn,
                self.qe.miscselect,
                bytes(28),
                self.qe.attributes,
                self.qe.mr_enclave,
                bytes(32),
                self.qe.mr_signer,
                bytes(96),
                struct.pack("<HH", self.qe.isv_prod_id, qe_svn),
                bytes(60),
                hashlib.sha256(att_pub + auth).digest() + bytes(32),
            )
        )
        assert len(qe_report) == 384
        pem = self.pck_chain_pem() + b"\x00"
        cert_data = (
            qe_report
            + _raw_sig(self.pck_key, qe_report)
            + struct.pack("<H", len(auth))
            + auth
            + struct.pack("<HI", CERT_TYPE_PCK_CHAIN, len(pem))
            + pem
        )
        sig_data = (
            _raw_sig(self.attestation_key, signed)
            + att_pub
            + struct.pack("<HI", CERT_TYPE_QE_REPORT, len(cert_data))
            + cert_data
        )
        trailing = o.get("trailing", b"")
        return signed + struct.pack("<I", len(sig_data)) + sig_data + bytes(trailing)

    # -- collateral --

    def tcb_info_dict(
        self, now: datetime, *, validity: timedelta = timedelta(days=30)
    ) -> dict[str, Any]:
        """Mock TCB info for this platform: UpToDate at the defaults, then OutOfDate."""
        ext = self.extensions
        return {
            "id": "TDX",
            "version": 3,
            "issueDate": _iso(now - timedelta(days=1)),
            "nextUpdate": _iso(now + validity),
            "fmspc": ext.fmspc.hex().upper(),
            "pceId": ext.pce_id.hex().upper(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
            "tdxModule": {
                "mrsigner": bytes(48).hex().upper(),
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
            },
            "tdxModuleIdentities": [
                {
                    "id": f"TDX_{DEFAULT_TEE_TCB_SVN[1]:02X}",
                    "mrsigner": bytes(48).hex().upper(),
                    "attributes": "0000000000000000",
                    "attributesMask": "FFFFFFFFFFFFFFFF",
                    "tcbLevels": [
                        _isv_level(DEFAULT_TEE_TCB_SVN[0], "2024-03-13", "UpToDate"),
                        _isv_level(0, "2023-08-09", "OutOfDate", "INTEL-SA-MOCK-1"),
                    ],
                }
            ],
            "tcbLevels": [
                {
                    "tcb": {
                        "sgxtcbcomponents": _svn_list(ext.tcb.components),
                        "pcesvn": ext.tcb.pce_svn,
                        "tdxtcbcomponents": _svn_list(DEFAULT_TEE_TCB_SVN),
                    },
                    "tcbDate": "2024-03-13T00:00:00Z",
                    "tcbStatus": "UpToDate",
                },
                {
                    "tcb": {
                        "sgxtcbcomponents": _svn_list(bytes(16)),
                        "pcesvn": 0,
                        "tdxtcbcomponents": _svn_list(bytes(16)),
                    },
                    "tcbDate": "2018-01-04T00:00:00Z",
                    "tcbStatus": "OutOfDate",
                    "advisoryIDs": ["INTEL-SA-MOCK-2"],
                },
            ],
        }  # fmt: skip

    def qe_identity_dict(
        self, now: datetime, *, validity: timedelta = timedelta(days=30)
    ) -> dict[str, Any]:
        return {
            "id": "TD_QE",
            "version": 2,
            "issueDate": _iso(now - timedelta(days=1)),
            "nextUpdate": _iso(now + validity),
            "tcbEvaluationDataNumber": 17,
            "miscselect": self.qe.miscselect.hex().upper(),
            "miscselectMask": "FFFFFFFF",
            "attributes": _masked(self.qe.attributes, QE_ATTRIBUTES_MASK).hex().upper(),
            "attributesMask": QE_ATTRIBUTES_MASK.hex().upper(),
            "mrsigner": self.qe.mr_signer.hex().upper(),
            "isvprodid": self.qe.isv_prod_id,
            "tcbLevels": [
                _isv_level(self.qe.isv_svn, "2024-03-13", "UpToDate"),
                _isv_level(0, "2021-11-10", "OutOfDate", "INTEL-SA-MOCK-3"),
            ],
        }

    def sign_json(self, value: dict[str, Any] | bytes) -> tuple[bytes, bytes]:
        """Raw JSON bytes (compact if a dict) and their r||s signature by the TCB signer."""
        raw = (
            value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()
        )
        return raw, _raw_sig(self.tcb_signing_key, raw)

    def make_crl(
        self,
        issuer: str,
        now: datetime,
        *,
        revoked: tuple[int, ...] = (),
        validity: timedelta = timedelta(days=30),
    ) -> bytes:
        """DER CRL by the mock root (``issuer="root"``) or PCK CA (``"pck-ca"``)."""
        cert, key = (
            (self.root, self.root_key) if issuer == "root" else (self.pck_ca, self.pck_ca_key)
        )
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(cert.subject)
            .last_update(now - timedelta(days=1))
            .next_update(now + validity)
            .add_extension(x509.CRLNumber(1), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
            )
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - timedelta(days=1))
                .build()
            )
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def make_collateral(
        self,
        now: datetime,
        *,
        tcb_info: dict[str, Any] | bytes | None = None,
        qe_identity: dict[str, Any] | bytes | None = None,
        revoked_pck: bool = False,
        validity: timedelta = timedelta(days=30),
    ) -> TdxCollateral:
        """Signed mock collateral (UpToDate for default quotes) with both CRLs."""
        tcb_raw, tcb_sig = self.sign_json(
            tcb_info if tcb_info is not None else self.tcb_info_dict(now, validity=validity)
        )
        qe_raw, qe_sig = self.sign_json(
            qe_identity
            if qe_identity is not None
            else self.qe_identity_dict(now, validity=validity)
        )
        signer_chain = _cert_pem(self.tcb_signing) + _cert_pem(self.root)
        return TdxCollateral(
            tcb_info=tcb_raw,
            tcb_info_signature=tcb_sig,
            tcb_info_issuer_chain=signer_chain,
            qe_identity=qe_raw,
            qe_identity_signature=qe_sig,
            qe_identity_issuer_chain=signer_chain,
            pck_crl=self.make_crl(
                "pck-ca",
                now,
                revoked=(self.pck.serial_number,) if revoked_pck else (),
                validity=validity,
            ),
            root_ca_crl=self.make_crl("root", now, validity=validity),
            pck_crl_issuer_chain=_cert_pem(self.pck_ca) + _cert_pem(self.root),
        )


def create_mock_intel(
    directory: str | Path,
    *,
    now: datetime | None = None,
    names: str = "mock",
    qe_isv_svn: int = 8,
) -> MockIntel:
    """Generate a fresh mock Intel hierarchy into ``directory/intel`` and return it.

    ``names="intel"`` gives every certificate Intel's exact subject names (to show that trust
    comes from the pinned root, never from names); the default marks them as Concord mocks.
    """
    if names not in ("mock", "intel"):
        raise ValueError("names must be 'mock' or 'intel'")
    base = Path(directory)
    start = (now or datetime.now(UTC)) - timedelta(days=1)
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in _KEY_FILES}
    root_key = keys["root-key.pem"]
    ca_key = keys["pck-ca-key.pem"]
    root_name = _name("Intel SGX Root CA" if names == "intel" else "SGX Root CA", names)
    ca_name = _name(
        "Intel SGX PCK Platform CA" if names == "intel" else "SGX PCK Platform CA", names
    )
    root = _cert(root_name, root_name, root_key.public_key(), root_key, root_key.public_key(),
                 start, start + timedelta(days=365 * 30), ca=True, path_length=1)  # fmt: skip
    pck_ca = _cert(ca_name, root_name, ca_key.public_key(), root_key, root_key.public_key(),
                   start, start + timedelta(days=365 * 15), ca=True, path_length=0)  # fmt: skip
    ext = SgxExtensions(
        ppid=os.urandom(16),
        tcb=_mock_tcb(),
        pce_id=MOCK_PCE_ID,
        fmspc=MOCK_FMSPC,
        sgx_type=1,
        platform_instance_id=os.urandom(16),
        configuration=_mock_config(),
    )
    sgx = x509.UnrecognizedExtension(
        x509.ObjectIdentifier(SGX_EXTENSION_OID), encode_sgx_extensions(ext)
    )
    pck_name = _name(
        "Intel SGX PCK Certificate" if names == "intel" else "SGX PCK Certificate", names
    )
    pck = _cert(pck_name, ca_name, keys["pck-key.pem"].public_key(), ca_key, ca_key.public_key(),
                start, start + timedelta(days=365 * 7), ca=False, extra=[sgx])  # fmt: skip
    signer_name = _name("Intel SGX TCB Signing" if names == "intel" else "SGX TCB Signing", names)
    signer_key = keys["tcb-signing-key.pem"].public_key()
    tcb_signing = _cert(signer_name, root_name, signer_key, root_key, root_key.public_key(),
                        start, start + timedelta(days=365 * 7), ca=False)  # fmt: skip
    qe = MockQe(
        mr_signer=hashlib.sha256(b"concord mock TD QE signer").digest(),
        mr_enclave=hashlib.sha256(b"concord mock TD QE").digest(),
        isv_svn=qe_isv_svn,
    )
    intel = base / "intel"
    intel.mkdir(parents=True, exist_ok=True)
    for name, key in keys.items():
        _write(intel / name, _key_pem(key), secret=True)
    for name, cert in (
        ("root.pem", root),
        ("pck-ca.pem", pck_ca),
        ("pck.pem", pck),
        ("tcb-signing.pem", tcb_signing),
    ):
        _write(intel / name, _cert_pem(cert))
    _write(
        intel / "qe.json",
        json.dumps(
            {
                "mrsigner": qe.mr_signer.hex(),
                "mrenclave": qe.mr_enclave.hex(),
                "isvprodid": qe.isv_prod_id,
                "isvsvn": qe.isv_svn,
                "attributes": qe.attributes.hex(),
                "miscselect": qe.miscselect.hex(),
            },
            indent=2,
        ).encode(),
    )
    return load_mock_intel(base)


def _mock_tcb() -> SgxTcb:
    return SgxTcb(
        components=MOCK_TCB_COMPONENTS, pce_svn=MOCK_PCE_SVN, cpu_svn=bytes(MOCK_TCB_COMPONENTS)
    )


def _mock_config() -> PlatformConfiguration:
    return PlatformConfiguration(dynamic_platform=True, cached_keys=True, smt_enabled=True)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not an EC private key")
    return key


def load_mock_intel(directory: str | Path) -> MockIntel:
    """Load a hierarchy written by :func:`create_mock_intel` (I/O edge)."""
    base = Path(directory)
    intel = base / "intel"

    def cert(name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((intel / name).read_bytes())

    qe_obj = json.loads((intel / "qe.json").read_text())
    qe = MockQe(
        mr_signer=bytes.fromhex(qe_obj["mrsigner"]),
        mr_enclave=bytes.fromhex(qe_obj["mrenclave"]),
        isv_prod_id=int(qe_obj["isvprodid"]),
        isv_svn=int(qe_obj["isvsvn"]),
        attributes=bytes.fromhex(qe_obj["attributes"]),
        miscselect=bytes.fromhex(qe_obj["miscselect"]),
    )
    return MockIntel(
        directory=base,
        root=cert("root.pem"),
        root_key=_load_key(intel / "root-key.pem"),
        pck_ca=cert("pck-ca.pem"),
        pck_ca_key=_load_key(intel / "pck-ca-key.pem"),
        pck=cert("pck.pem"),
        pck_key=_load_key(intel / "pck-key.pem"),
        tcb_signing=cert("tcb-signing.pem"),
        tcb_signing_key=_load_key(intel / "tcb-signing-key.pem"),
        attestation_key=_load_key(intel / "attestation-key.pem"),
        qe=qe,
    )


__all__ = [
    "DEFAULT_TEE_TCB_SVN",
    "DEFAULT_XFAM",
    "MockIntel",
    "MockQe",
    "create_mock_intel",
    "encode_sgx_extensions",
    "load_mock_intel",
]
