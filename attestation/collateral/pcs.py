"""Intel PCS v4 (or a PCCS with the same API): TDX TCB info, QE identity, PCK CRL, root CRL.

Paths and headers (issuer chains are URL-encoded PEM in the response headers):

* ``GET {base}/tdx/certification/v4/tcb?fmspc={fmspc}`` -> ``{"tcbInfo": .., "signature": ..}``,
  header ``TCB-Info-Issuer-Chain``;
* ``GET {base}/tdx/certification/v4/qe/identity`` -> ``{"enclaveIdentity": .., "signature": ..}``,
  header ``SGX-Enclave-Identity-Issuer-Chain``;
* ``GET {base}/sgx/certification/v4/pckcrl?ca=platform|processor&encoding=der`` -> the CRL,
  header ``SGX-PCK-CRL-Issuer-Chain``;
* the root CA CRL: Intel publishes it at ``ROOT_CRL_URL``; a PCCS serves
  ``{base}/sgx/certification/v4/rootcacrl``.

Every response is verified against the pinned Intel SGX root before it is cached (signature over
the raw JSON bytes, CRL signatures, ``nextUpdate`` not past), so a broken or forged answer fails
closed with its typed reason and never replaces a good cached copy.
"""

from __future__ import annotations

import binascii
from datetime import datetime
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from attestation.anchors import TrustAnchors
from attestation.collateral.cache import QE_IDENTITY_NAME, ROOT_CRL_NAME, CacheEntry
from attestation.collateral.errors import UpstreamResponseInvalid
from attestation.collateral.fetch import Response, Upstream
from attestation.collateral.upstreams import INTEL_PCS
from attestation.errors import CollateralExpired, CollateralRejected
from attestation.tdx.collateral_model import CollateralMismatch, extract_signed_json
from attestation.tdx.collateral_parse import _load_crl, parse_qe_identity, parse_tcb_info
from attestation.tdx.collateral_verify import _check_crl_signed, _verify_json_signature
from attestation.tdx.pck import (
    check_signed_by,
    load_der_certificate,
    split_pem_certificates,
    verify_signer_chain,
)

ROOT_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
TCB_INFO_CHAIN_HEADER = "tcb-info-issuer-chain"
QE_IDENTITY_CHAIN_HEADER = "sgx-enclave-identity-issuer-chain"
PCK_CRL_CHAIN_HEADER = "sgx-pck-crl-issuer-chain"
PCK_CAS = ("platform", "processor")


def _chain(response: Response, header: str) -> bytes:
    value = response.headers.get(header)
    if not value:
        raise UpstreamResponseInvalid(f"{response.url}: no {header} header")
    return unquote(value).encode()


def crl_der(body: bytes, where: str) -> bytes:
    """A CRL as DER whether served as DER, PEM or hex text (PCCS variants differ)."""
    text = body.strip()
    if text.startswith(b"-----BEGIN X509 CRL-----"):
        try:
            return x509.load_pem_x509_crl(text).public_bytes(Encoding.DER)
        except ValueError:
            raise UpstreamResponseInvalid(f"{where}: not a PEM CRL") from None
    if text[:1] != b"\x30":
        try:
            return binascii.unhexlify(text)
        except (binascii.Error, ValueError):
            raise UpstreamResponseInvalid(f"{where}: neither DER, PEM nor hex") from None
    return body


def _check_not_expired(issue: datetime, next_update: datetime, now: datetime, where: str) -> None:
    if now > next_update:
        raise CollateralExpired(f"{where}: served already stale (nextUpdate {next_update})")
    if now < issue:
        raise CollateralExpired(f"{where}: issued in the future ({issue})")


class PcsClient:
    def __init__(
        self,
        upstream: Upstream,
        anchors: TrustAnchors,
        base_url: str = INTEL_PCS,
        root_crl_url: str | None = None,
    ) -> None:
        self.upstream = upstream
        self.anchors = anchors
        self.base_url = base_url.rstrip("/")
        if root_crl_url is None:
            root_crl_url = (
                ROOT_CRL_URL
                if self.base_url == INTEL_PCS
                else f"{self.base_url}/sgx/certification/v4/rootcacrl"
            )
        self.root_crl_url = root_crl_url

    def tcb_info_url(self, fmspc: bytes) -> str:
        return f"{self.base_url}/tdx/certification/v4/tcb?fmspc={fmspc.hex()}"

    def qe_identity_url(self) -> str:
        return f"{self.base_url}/tdx/certification/v4/qe/identity"

    def pck_crl_url(self, ca: str) -> str:
        if ca not in PCK_CAS:
            raise ValueError(f"unknown PCK CA {ca!r}")
        return f"{self.base_url}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"

    async def fetch_tcb_info(self, fmspc: bytes, now: datetime) -> CacheEntry:
        url = self.tcb_info_url(fmspc)
        response = await self.upstream.get(url, "tcbinfo")
        chain = _chain(response, TCB_INFO_CHAIN_HEADER)
        raw, sig = extract_signed_json(response.body, "tcbInfo")
        signer = verify_signer_chain(
            split_pem_certificates(chain, "tcb_info_issuer_chain"),
            self.anchors,
            now,
            "tcb_info_issuer_chain",
        )
        _verify_json_signature(signer.public_key, raw, sig, "tcb_info")
        info = parse_tcb_info(raw)
        if info.fmspc != fmspc:
            raise CollateralMismatch(f"tcb_info for FMSPC {info.fmspc.hex()}, asked {fmspc.hex()}")
        _check_not_expired(info.issue_date, info.next_update, now, "tcb_info")
        return CacheEntry(
            kind="tcbinfo",
            name=fmspc.hex(),
            body=response.body,
            fetched_at=now,
            next_update=info.next_update,
            issuer_chain=chain,
            source=url,
        )

    async def fetch_qe_identity(self, now: datetime) -> CacheEntry:
        url = self.qe_identity_url()
        response = await self.upstream.get(url, "qeidentity")
        chain = _chain(response, QE_IDENTITY_CHAIN_HEADER)
        raw, sig = extract_signed_json(response.body, "enclaveIdentity")
        signer = verify_signer_chain(
            split_pem_certificates(chain, "qe_identity_issuer_chain"),
            self.anchors,
            now,
            "qe_identity_issuer_chain",
        )
        _verify_json_signature(signer.public_key, raw, sig, "qe_identity")
        identity = parse_qe_identity(raw)
        _check_not_expired(identity.issue_date, identity.next_update, now, "qe_identity")
        return CacheEntry(
            kind="qeidentity",
            name=QE_IDENTITY_NAME,
            body=response.body,
            fetched_at=now,
            next_update=identity.next_update,
            issuer_chain=chain,
            source=url,
        )

    async def fetch_pck_crl(self, ca: str, now: datetime) -> CacheEntry:
        url = self.pck_crl_url(ca)
        response = await self.upstream.get(url, "pckcrl")
        chain = _chain(response, PCK_CRL_CHAIN_HEADER)
        der = crl_der(response.body, url)
        crl = _load_crl(der, "pck_crl")
        ders = split_pem_certificates(chain, "pck_crl_issuer_chain")
        issuer = load_der_certificate(ders[0], "pck_crl_issuer_chain[0]")
        check_signed_by(issuer, self.anchors.intel_root, "pck_crl_issuer_chain[0]")
        _check_crl_signed(crl, issuer, "pck_crl")
        return self._crl_entry("pckcrl", ca, der, crl, chain, url, now)

    async def fetch_root_crl(self, now: datetime) -> CacheEntry:
        url = self.root_crl_url
        response = await self.upstream.get(url, "rootcrl")
        der = crl_der(response.body, url)
        crl = _load_crl(der, "root_ca_crl")
        _check_crl_signed(crl, self.anchors.intel_root, "root_ca_crl")
        return self._crl_entry("rootcrl", ROOT_CRL_NAME, der, crl, None, url, now)

    @staticmethod
    def _crl_entry(
        kind: str,
        name: str,
        der: bytes,
        crl: x509.CertificateRevocationList,
        chain: bytes | None,
        url: str,
        now: datetime,
    ) -> CacheEntry:
        next_update = crl.next_update_utc
        if next_update is None:
            raise CollateralRejected(f"{kind}: CRL has no nextUpdate")
        _check_not_expired(crl.last_update_utc, next_update, now, kind)
        return CacheEntry(
            kind=kind,
            name=name,
            body=der,
            fetched_at=now,
            next_update=next_update,
            issuer_chain=chain,
            source=url,
        )
