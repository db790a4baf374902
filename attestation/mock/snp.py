"""Software SEV-SNP: a mock AMD hierarchy and byte-exact signed attestation reports.

``create_mock_amd(DIR)`` writes ``DIR/amd/``: ``product``, ``ark.pem``, ``ask.pem``, ``asvk.pem``
(the names :func:`attestation.anchors.mock` loads), ``vcek.pem``/``vcek-key.pem``,
``vlek.pem``/``vlek-key.pem`` and the mock root/intermediate keys (``*-key.pem``, mode 0600) so a
later process can issue more certificates. The hierarchy mirrors AMD's: ARK (self-signed) → ASK
and ASVK → VCEK / VLEK, all RSA-PSS SHA-384 with 48-byte salt, VCEK/VLEK EC P-384 carrying the
real KDS extensions. Reports run through exactly the same verifier as real ones; only the trust
anchors differ, and the mock ARK is never a production root.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attestation.anchors import AmdRoots
from attestation.reference import SNP_PRODUCTS, SnpTcb
from attestation.snp import certs as c
from attestation.snp.report import (
    ECDSA_COMPONENT_SIZE,
    REPORT_SIZE,
    SIGNATURE_OFFSET,
    SIGNED_SIZE,
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
)
from attestation.snp.tcb import encode_tcb

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
NOT_BEFORE = datetime(2020, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2049, 12, 31, tzinfo=UTC)
MOCK_CSP_ID = "CN=mock-csp.concord.invalid"

# CPUID family, model, stepping written into v3+ mock reports.
MOCK_CPUID = {"Milan": (0x19, 0x01, 0x01), "Genoa": (0x19, 0x11, 0x01), "Turin": (0x1A, 0x02, 0x00)}
MOCK_TCB = {
    "Milan": SnpTcb(bootloader=4, tee=0, snp=24, microcode=219),
    "Genoa": SnpTcb(bootloader=9, tee=0, snp=23, microcode=72),
    "Turin": SnpTcb(bootloader=1, tee=1, snp=3, microcode=9, fmc=1),
}
MOCK_PRODUCT_NAME = {"Milan": "Milan-B0", "Genoa": "Genoa-B1", "Turin": "Turin"}
MOCK_FIRMWARE = (0x15, 0x37, 1)  # build, minor, major

_TCB_FIELDS = {
    "current_tcb": 0x38,
    "reported_tcb": 0x180,
    "committed_tcb": 0x1E0,
    "launch_tcb": 0x1F0,
}
_BYTES_FIELDS = {
    "family_id": (0x10, 16),
    "image_id": (0x20, 16),
    "id_key_digest": (0xE0, 48),
    "author_key_digest": (0x110, 48),
    "report_id": (0x140, 32),
    "report_id_ma": (0x160, 32),
    "chip_id": (0x1A0, 64),
}
_INT_FIELDS = {  # name: (offset, size)
    "guest_svn": (0x04, 4),
    "signature_algo": (0x34, 4),
    "platform_info": (0x40, 8),
    "signer_info": (0x48, 4),
    "cpuid_fam_id": (0x188, 1),
    "cpuid_mod_id": (0x189, 1),
    "cpuid_step": (0x18A, 1),
    "current_build": (0x1E8, 1),
    "current_minor": (0x1E9, 1),
    "current_major": (0x1EA, 1),
    "committed_build": (0x1EC, 1),
    "committed_minor": (0x1ED, 1),
    "committed_major": (0x1EE, 1),
    "launch_mit_vector": (0x1F8, 8),
    "current_mit_vector": (0x200, 8),
}
_FLAG_FIELDS = {"author_key_en": 0, "mask_chip_key": 1}


def _amd_name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _der_int(value: int) -> bytes:
    body = value.to_bytes(1, "big")
    if value >= 0x80:
        body = b"\x00" + body
    return bytes([0x02, len(body)]) + body


def _der_ia5(text: str) -> bytes:
    raw = text.encode("ascii")
    if len(raw) >= 0x80:
        raise ValueError("mock IA5String too long")
    return bytes([0x16, len(raw)]) + raw


def amd_extension_values(
    product: str,
    tcb: SnpTcb,
    *,
    kind: str = "vcek",
    hwid: bytes | None = None,
    csp_id: str | None = MOCK_CSP_ID,
    product_name: str | None = None,
) -> dict[str, bytes]:
    """The KDS extensions (OID -> extnValue) of a VCEK/VLEK, encoded like AMD does."""
    values = {
        c.OID_STRUCT_VERSION: _der_int(1 if product == "Turin" else 0),
        c.OID_PRODUCT_NAME: _der_ia5(product_name or MOCK_PRODUCT_NAME[product]),
        c.OID_BL_SPL: _der_int(tcb.bootloader),
        c.OID_TEE_SPL: _der_int(tcb.tee),
        c.OID_SNP_SPL: _der_int(tcb.snp),
        c.OID_SPL_5: _der_int(0),
        c.OID_SPL_6: _der_int(0),
        c.OID_SPL_7: _der_int(0),
        c.OID_UCODE_SPL: _der_int(tcb.microcode),
    }
    if product == "Turin":
        values[c.OID_FMC_SPL] = _der_int(tcb.fmc or 0)
    else:
        values[c.OID_SPL_4] = _der_int(0)
    if kind == "vcek" and hwid is not None:
        values[c.OID_HWID] = hwid
    if kind == "vlek" and csp_id is not None:
        values[c.OID_CSP_ID] = _der_ia5(csp_id)
    return values


def issue_certificate(
    *,
    subject_cn: str,
    issuer: x509.Certificate | None,
    issuer_key: rsa.RSAPrivateKey,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    extensions: Mapping[str, bytes] = {},
    not_before: datetime = NOT_BEFORE,
    not_after: datetime = NOT_AFTER,
    issuer_cn: str | None = None,
    rsa_padding: padding.PSS | padding.PKCS1v15 = PSS,
    ca: bool = False,
) -> x509.Certificate:
    """One AMD-style certificate (RSA-PSS SHA-384 by default); tests vary the arguments."""
    issuer_name = issuer.subject if issuer is not None else _amd_name(issuer_cn or subject_cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_amd_name(subject_cn))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    for oid, value in extensions.items():
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA384(), rsa_padding=rsa_padding)


def sign_report(raw: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Return ``raw`` with a fresh ECDSA P-384 SHA-384 signature over [0, 0x2A0) (LE r, s)."""
    if len(raw) != REPORT_SIZE:
        raise ValueError(f"report must be {REPORT_SIZE} bytes")
    r, s = decode_dss_signature(key.sign(raw[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384())))
    out = bytearray(raw)
    out[SIGNATURE_OFFSET:REPORT_SIZE] = bytes(REPORT_SIZE - SIGNATURE_OFFSET)
    out[SIGNATURE_OFFSET : SIGNATURE_OFFSET + ECDSA_COMPONENT_SIZE] = r.to_bytes(
        ECDSA_COMPONENT_SIZE, "little"
    )
    s_off = SIGNATURE_OFFSET + ECDSA_COMPONENT_SIZE
    out[s_off : s_off + ECDSA_COMPONENT_SIZE] = s.to_bytes(ECDSA_COMPONENT_SIZE, "little")
    return bytes(out)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    if private:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(path, 0o600)
    else:
        path.write_bytes(data)


@dataclass(frozen=True)
class MockAmd:
    """A mock AMD hierarchy for one product, with the keys to sign reports."""

    directory: Path
    product: str
    ark: x509.Certificate
    ask: x509.Certificate
    asvk: x509.Certificate
    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    asvk_key: rsa.RSAPrivateKey
    vcek: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey
    vlek: x509.Certificate
    vlek_key: ec.EllipticCurvePrivateKey
    chip_id: bytes  # 64 bytes as in reports (Turin: 8-byte hwID, zero-padded)
    tcb: SnpTcb

    @property
    def vcek_der(self) -> bytes:
        return self.vcek.public_bytes(serialization.Encoding.DER)

    @property
    def vlek_der(self) -> bytes:
        return self.vlek.public_bytes(serialization.Encoding.DER)

    @property
    def ark_der(self) -> bytes:
        return self.ark.public_bytes(serialization.Encoding.DER)

    @property
    def ask_der(self) -> bytes:
        return self.ask.public_bytes(serialization.Encoding.DER)

    @property
    def asvk_der(self) -> bytes:
        return self.asvk.public_bytes(serialization.Encoding.DER)

    def roots(self) -> AmdRoots:
        return AmdRoots(product=self.product, ark=self.ark, ask=self.ask, asvk=self.asvk)

    def certs(self, signer: str = "vcek", *, chain: bool = False) -> tuple[bytes, ...]:
        """The ``certs`` list of an evidence envelope for ``signer``."""
        leaf = self.vcek_der if signer == "vcek" else self.vlek_der
        if not chain:
            return (leaf,)
        return (leaf, self.ask_der if signer == "vcek" else self.asvk_der, self.ark_der)

    def make_report(
        self,
        *,
        measurement: bytes,
        host_data: bytes,
        report_data: bytes,
        policy: int = 0x30000,
        vmpl: int = 0,
        version: int = 3,
        signer: str = "vcek",
        **overrides: Any,
    ) -> bytes:
        """A signed 1184-byte report; ``overrides`` set any other field by its SnpReport name."""
        if signer not in ("vcek", "vlek"):
            raise ValueError("signer must be 'vcek' or 'vlek'")
        for name, value, size in (
            ("measurement", measurement, 48),
            ("host_data", host_data, 32),
            ("report_data", report_data, 64),
        ):
            if len(value) != size:
                raise ValueError(f"{name} must be {size} bytes")
        raw = bytearray(REPORT_SIZE)

        def put_int(off: int, size: int, value: int) -> None:
            raw[off : off + size] = int(value).to_bytes(size, "little")

        put_int(0x00, 4, version)
        put_int(0x08, 8, policy)
        put_int(0x30, 4, vmpl)
        put_int(0x34, 4, 1)
        put_int(0x40, 8, 0x1)  # SMTEnabled
        put_int(0x48, 4, (SIGNING_KEY_VCEK if signer == "vcek" else SIGNING_KEY_VLEK) << 2)
        raw[0x50:0x90] = report_data
        raw[0x90:0xC0] = measurement
        raw[0xC0:0xE0] = host_data
        raw[0x140:0x160] = secrets.token_bytes(32)
        raw[0x160:0x180] = b"\xff" * 32
        tcb = encode_tcb(self.tcb, self.product)
        for off in _TCB_FIELDS.values():
            raw[off : off + 8] = tcb
        if version >= 3:
            raw[0x188:0x18B] = bytes(MOCK_CPUID[self.product])
        if signer == "vcek":
            raw[0x1A0:0x1E0] = self.chip_id
        build, minor, major = MOCK_FIRMWARE
        raw[0x1E8:0x1EB] = bytes((build, minor, major))
        raw[0x1EC:0x1EF] = bytes((build, minor, major))

        for name, value in overrides.items():
            if name in _TCB_FIELDS:
                off = _TCB_FIELDS[name]
                raw[off : off + 8] = (
                    encode_tcb(value, self.product) if isinstance(value, SnpTcb) else bytes(value)
                )
            elif name in _BYTES_FIELDS:
                off, size = _BYTES_FIELDS[name]
                if len(value) != size:
                    raise ValueError(f"{name} must be {size} bytes")
                raw[off : off + size] = value
            elif name in _INT_FIELDS:
                put_int(*_INT_FIELDS[name], value)
            elif name in _FLAG_FIELDS:
                bit = 1 << _FLAG_FIELDS[name]
                current = int.from_bytes(raw[0x48:0x4C], "little")
                put_int(0x48, 4, (current | bit) if value else (current & ~bit))
            else:
                raise TypeError(f"make_report: unknown field override {name!r}")
        return sign_report(bytes(raw), self.vcek_key if signer == "vcek" else self.vlek_key)

    def sign(self, raw: bytes, signer: str = "vcek") -> bytes:
        """Re-sign a (modified) report with the mock VCEK or VLEK."""
        return sign_report(raw, self.vcek_key if signer == "vcek" else self.vlek_key)

    def issue_leaf(
        self,
        kind: str = "vcek",
        *,
        tcb: SnpTcb | None = None,
        hwid: bytes | None = None,
        csp_id: str | None = MOCK_CSP_ID,
        omit: Iterable[str] = (),
        extra: Mapping[str, bytes] = {},
        key: ec.EllipticCurvePrivateKey | None = None,
        not_before: datetime = NOT_BEFORE,
        not_after: datetime = NOT_AFTER,
        issuer: x509.Certificate | None = None,
        issuer_key: rsa.RSAPrivateKey | None = None,
        rsa_padding: padding.PSS | padding.PKCS1v15 = PSS,
        product_name: str | None = None,
    ) -> bytes:
        """A VCEK/VLEK DER variant (tests): same key by default, any field changed."""
        values = amd_extension_values(
            self.product,
            tcb or self.tcb,
            kind=kind,
            hwid=hwid if hwid is not None else self._hwid(),
            csp_id=csp_id,
            product_name=product_name,
        )
        for oid in omit:
            values.pop(oid, None)
        values.update(extra)
        if key is None:
            key = self.vcek_key if kind == "vcek" else self.vlek_key
        if issuer is None:
            issuer = self.ask if kind == "vcek" else self.asvk
            issuer_key = self.ask_key if kind == "vcek" else self.asvk_key
        assert issuer_key is not None
        cert = issue_certificate(
            subject_cn="SEV-VCEK" if kind == "vcek" else "SEV-VLEK",
            issuer=issuer,
            issuer_key=issuer_key,
            public_key=key.public_key(),
            extensions=values,
            not_before=not_before,
            not_after=not_after,
            rsa_padding=rsa_padding,
        )
        return cert.public_bytes(serialization.Encoding.DER)

    def make_crl(
        self,
        revoked_serials: Iterable[int] = (),
        *,
        last_update: datetime = NOT_BEFORE,
        next_update: datetime = NOT_AFTER,
        signer_key: rsa.RSAPrivateKey | None = None,
        rsa_padding: padding.PSS | padding.PKCS1v15 = PSS,
    ) -> bytes:
        """A DER CRL issued by the mock ARK (RSA-PSS SHA-384)."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ark.subject)
            .last_update(last_update)
            .next_update(next_update)
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(last_update)
                .build()
            )
        crl = builder.sign(signer_key or self.ark_key, hashes.SHA384(), rsa_padding=rsa_padding)
        return crl.public_bytes(serialization.Encoding.DER)

    def _hwid(self) -> bytes:
        return self.chip_id[: c.HWID_SIZE[self.product]]


def _chip_id(product: str) -> bytes:
    size = c.HWID_SIZE[product]
    return secrets.token_bytes(size).ljust(64, b"\x00")


def create_mock_amd(directory: Path, product: str = "Genoa") -> MockAmd:
    """Generate a fresh mock AMD hierarchy into ``directory/amd`` and return it."""
    if product not in SNP_PRODUCTS:
        raise ValueError(f"product must be one of {', '.join(SNP_PRODUCTS)}")
    base = Path(directory) / "amd"
    base.mkdir(parents=True, exist_ok=True)
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    asvk_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    vlek_key = ec.generate_private_key(ec.SECP384R1())
    ark = issue_certificate(
        subject_cn=f"ARK-{product}",
        issuer=None,
        issuer_key=ark_key,
        public_key=ark_key.public_key(),
        ca=True,
    )
    ask = issue_certificate(
        subject_cn=f"SEV-{product}",
        issuer=ark,
        issuer_key=ark_key,
        public_key=ask_key.public_key(),
        ca=True,
    )
    asvk = issue_certificate(
        subject_cn=f"SEV-VLEK-{product}",
        issuer=ark,
        issuer_key=ark_key,
        public_key=asvk_key.public_key(),
        ca=True,
    )
    chip_id = _chip_id(product)
    tcb = MOCK_TCB[product]
    vcek = issue_certificate(
        subject_cn="SEV-VCEK",
        issuer=ask,
        issuer_key=ask_key,
        public_key=vcek_key.public_key(),
        extensions=amd_extension_values(
            product, tcb, kind="vcek", hwid=chip_id[: c.HWID_SIZE[product]]
        ),
    )
    vlek = issue_certificate(
        subject_cn="SEV-VLEK",
        issuer=asvk,
        issuer_key=asvk_key,
        public_key=vlek_key.public_key(),
        extensions=amd_extension_values(product, tcb, kind="vlek"),
    )
    (base / "product").write_text(product + "\n")
    for name, cert in (("ark", ark), ("ask", ask), ("asvk", asvk), ("vcek", vcek), ("vlek", vlek)):
        _write(base / f"{name}.pem", _pem(cert))
    for name, key in (
        ("ark", ark_key),
        ("ask", ask_key),
        ("asvk", asvk_key),
        ("vcek", vcek_key),
        ("vlek", vlek_key),
    ):
        _write(base / f"{name}-key.pem", _key_pem(key), private=True)
    return MockAmd(
        directory=Path(directory),
        product=product,
        ark=ark,
        ask=ask,
        asvk=asvk,
        ark_key=ark_key,
        ask_key=ask_key,
        asvk_key=asvk_key,
        vcek=vcek,
        vcek_key=vcek_key,
        vlek=vlek,
        vlek_key=vlek_key,
        chip_id=chip_id,
        tcb=tcb,
    )


def load_mock_amd(directory: Path) -> MockAmd:
    """Load a hierarchy written by :func:`create_mock_amd` (chip ID and TCB from the VCEK)."""
    base = Path(directory) / "amd"
    product = (base / "product").read_text().strip()
    if product not in SNP_PRODUCTS:
        raise ValueError(f"{base / 'product'}: unknown product {product!r}")

    def cert(name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((base / f"{name}.pem").read_bytes())

    def key(name: str) -> Any:
        return serialization.load_pem_private_key(
            (base / f"{name}-key.pem").read_bytes(), password=None
        )

    vcek = cert("vcek")
    info = c.decode_amd_extensions(vcek, "vcek")
    assert info.hwid is not None
    return MockAmd(
        directory=Path(directory),
        product=product,
        ark=cert("ark"),
        ask=cert("ask"),
        asvk=cert("asvk"),
        ark_key=key("ark"),
        ask_key=key("ask"),
        asvk_key=key("asvk"),
        vcek=vcek,
        vcek_key=key("vcek"),
        vlek=cert("vlek"),
        vlek_key=key("vlek"),
        chip_id=info.hwid.ljust(64, b"\x00"),
        tcb=info.tcb,
    )
