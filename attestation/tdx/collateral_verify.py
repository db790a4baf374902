"""Signature and chain verification of TDX collateral, then its time window and revocation.

Intel signs the raw JSON text of the ``tcbInfo`` / ``enclaveIdentity`` value (ECDSA P-256,
SHA-256, signature as hex r||s) with the Intel SGX TCB Signing key, whose certificate chains to
the pinned Intel SGX Root CA. Verified collateral is cached by content; the time-dependent
checks (certificate windows, ``nextUpdate``) are redone on every use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.anchors import TrustAnchors
from attestation.cache import BoundedCache, der_of
from attestation.errors import CertificateRevoked, CollateralExpired, CollateralRejected
from attestation.tdx.collateral_model import (
    CollateralMismatch,
    CollateralSignatureInvalid,
    TdxCollateral,
)
from attestation.tdx.collateral_parse import (
    QeIdentity,
    TcbInfo,
    _load_crl,
    parse_qe_identity,
    parse_tcb_info,
)
from attestation.tdx.pck import (
    PckChain,
    SignerChain,
    check_aware,
    check_window,
    split_pem_certificates,
    verify_signer_chain,
)

_NO_GRACE = timedelta(0)


def _verify_json_signature(
    key: ec.EllipticCurvePublicKey, raw: bytes, sig: bytes, where: str
) -> None:
    if len(sig) != 64:
        raise CollateralSignatureInvalid(f"{where}: signature must be 64 bytes (r||s)")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, raw, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CollateralSignatureInvalid(
            f"{where}: signature does not verify over the raw JSON"
        ) from None


def _check_crl_signed(
    crl: x509.CertificateRevocationList, issuer: x509.Certificate, where: str
) -> None:
    if crl.issuer != issuer.subject:
        raise CollateralMismatch(
            f"{where}: issued by {crl.issuer.rfc4514_string()}, "
            f"expected {issuer.subject.rfc4514_string()}"
        )
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CollateralSignatureInvalid(f"{where}: issuer key is not ECDSA")
    try:
        valid = crl.is_signature_valid(key)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise CollateralSignatureInvalid(f"{where}: signature does not verify")


def _check_crl_window(
    crl: x509.CertificateRevocationList, now: datetime, where: str, grace: timedelta = _NO_GRACE
) -> None:
    next_update = crl.next_update_utc
    if next_update is None:
        raise CollateralRejected(f"{where}: has no nextUpdate")
    if now < crl.last_update_utc:
        raise CollateralExpired(f"{where}: not valid before {crl.last_update_utc.isoformat()}")
    if now > next_update + grace:
        raise CollateralExpired(f"{where}: stale since {next_update.isoformat()}")


def _check_dates(
    issue: datetime, next_update: datetime, now: datetime, where: str, grace: timedelta = _NO_GRACE
) -> None:
    if now < issue:
        raise CollateralExpired(f"{where}: issued in the future ({issue.isoformat()})")
    if now > next_update + grace:
        raise CollateralExpired(f"{where}: stale since nextUpdate {next_update.isoformat()}")


@dataclass(frozen=True)
class VerifiedCollateral:
    """Collateral whose signatures and chains verified; time-dependent checks redone per use."""

    tcb_info: TcbInfo
    qe_identity: QeIdentity
    tcb_signer: SignerChain = field(repr=False)
    qe_signer: SignerChain = field(repr=False)
    root_crl: x509.CertificateRevocationList | None = field(default=None, compare=False, repr=False)
    pck_crl: x509.CertificateRevocationList | None = field(default=None, compare=False, repr=False)

    def check_time(self, now: datetime, grace: timedelta = _NO_GRACE) -> None:
        """Inside every issue/nextUpdate window; ``grace`` extends nextUpdate (stale cache use)."""
        tcb, qe = self.tcb_info, self.qe_identity
        _check_dates(tcb.issue_date, tcb.next_update, now, "tcb_info", grace)
        _check_dates(qe.issue_date, qe.next_update, now, "qe_identity", grace)
        if self.root_crl is not None:
            _check_crl_window(self.root_crl, now, "root_ca_crl", grace)
        if self.pck_crl is not None:
            _check_crl_window(self.pck_crl, now, "pck_crl", grace)

    def check_revocation(self, pck: PckChain) -> None:
        """PCK CA and TCB signers against the root CRL; PCK against the PCK CRL (if present)."""
        if self.root_crl is not None:
            for name, serial in (
                ("PCK CA", pck.issuer_serial),
                ("TCB signing certificate", self.tcb_signer.cert.serial_number),
                ("QE identity signing certificate", self.qe_signer.cert.serial_number),
            ):
                if self.root_crl.get_revoked_certificate_by_serial_number(serial) is not None:
                    raise CertificateRevoked(
                        f"{name} (serial {serial:x}) is revoked by the root CA CRL"
                    )
        if self.pck_crl is not None:
            _check_crl_signed(self.pck_crl, pck.issuer, "pck_crl")
            if self.pck_crl.get_revoked_certificate_by_serial_number(pck.pck_serial) is not None:
                raise CertificateRevoked(
                    f"PCK certificate (serial {pck.pck_serial:x}) is revoked by the PCK CRL"
                )


def _signer_chain(
    pem: bytes,
    anchors: TrustAnchors,
    now: datetime,
    where: str,
    cache: BoundedCache[bytes, object] | None,
) -> SignerChain:
    ders = split_pem_certificates(pem, where)
    return verify_signer_chain(ders, anchors, now, where, cache)


def verify_collateral(
    collateral: TdxCollateral,
    anchors: TrustAnchors,
    now: datetime,
    cache: BoundedCache[bytes, object] | None = None,
    grace: timedelta = _NO_GRACE,
) -> VerifiedCollateral:
    """Chains to the pinned root, signatures over the raw JSON, CRL signatures, then dates."""
    check_aware(now)
    key = (
        b"tdx-collateral:"
        + hashlib.sha256(der_of(anchors.intel_root) + collateral.digest()).digest()
    )
    verified: VerifiedCollateral | None = None
    if cache is not None:
        hit = cache.get(key)
        if isinstance(hit, VerifiedCollateral):
            verified = hit
    if verified is None:
        tcb_signer = _signer_chain(
            collateral.tcb_info_issuer_chain, anchors, now, "tcb_info_issuer_chain", cache
        )
        _verify_json_signature(
            tcb_signer.public_key, collateral.tcb_info, collateral.tcb_info_signature, "tcb_info"
        )
        qe_signer = _signer_chain(
            collateral.qe_identity_issuer_chain, anchors, now, "qe_identity_issuer_chain", cache
        )
        _verify_json_signature(
            qe_signer.public_key,
            collateral.qe_identity,
            collateral.qe_identity_signature,
            "qe_identity",
        )
        tcb_info = parse_tcb_info(collateral.tcb_info)
        qe_identity = parse_qe_identity(collateral.qe_identity)
        root_crl = pck_crl = None
        if collateral.root_ca_crl is not None:
            root_crl = _load_crl(collateral.root_ca_crl, "root_ca_crl")
            _check_crl_signed(root_crl, anchors.intel_root, "root_ca_crl")
        if collateral.pck_crl is not None:
            # Its signature is checked against the PCK's issuer when the PCK is known.
            pck_crl = _load_crl(collateral.pck_crl, "pck_crl")
        verified = VerifiedCollateral(
            tcb_info=tcb_info,
            qe_identity=qe_identity,
            tcb_signer=tcb_signer,
            qe_signer=qe_signer,
            root_crl=root_crl,
            pck_crl=pck_crl,
        )
        if cache is not None:
            cache.put(key, verified)
    else:
        for chain in (verified.tcb_signer, verified.qe_signer):
            for name, window in chain.windows:
                check_window(window, now, name)
    verified.check_time(now, grace)
    return verified
