"""AMD KDS: the VCEK for a chip at a reported TCB (VLEKs are never published by KDS).

``GET {base}/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`` answers the DER
certificate; Turin adds ``fmcSPL`` and its hwid is the first 8 bytes of the chip ID. A fetched
certificate is cached only after it chains to the pinned ARK/ASK and its extensions name exactly
the product, chip and TCB that were asked for, so a wrong answer can never be cached.
"""

from __future__ import annotations

from datetime import datetime

from attestation.anchors import TrustAnchors
from attestation.collateral.cache import CacheEntry
from attestation.collateral.errors import UpstreamResponseInvalid
from attestation.collateral.fetch import Upstream
from attestation.collateral.keys import VcekKey
from attestation.collateral.upstreams import AMD_KDS
from attestation.errors import EvidenceRejected
from attestation.snp.certs import verify_key_chain
from attestation.snp.tcb import tcb_components


def vcek_path(key: VcekKey) -> str:
    """The KDS path and query of a VCEK (SPLs as two-digit decimals, as AMD documents)."""
    tcb = key.tcb
    query = []
    if tcb.fmc is not None:
        query.append(f"fmcSPL={tcb.fmc:02d}")
    query += [
        f"blSPL={tcb.bootloader:02d}",
        f"teeSPL={tcb.tee:02d}",
        f"snpSPL={tcb.snp:02d}",
        f"ucodeSPL={tcb.microcode:02d}",
    ]
    return f"/vcek/v1/{key.product}/{key.hwid.hex()}?{'&'.join(query)}"


class KdsClient:
    def __init__(self, upstream: Upstream, anchors: TrustAnchors, base_url: str = AMD_KDS) -> None:
        self.upstream = upstream
        self.anchors = anchors
        self.base_url = base_url.rstrip("/")

    def url(self, key: VcekKey) -> str:
        return self.base_url + vcek_path(key)

    async def fetch_vcek(self, key: VcekKey, now: datetime) -> CacheEntry:
        url = self.url(key)
        response = await self.upstream.get(url, "vcek")
        check_vcek(response.body, key, self.anchors, now, url)
        return CacheEntry(
            kind="vcek",
            name=key.name,
            body=response.body,
            fetched_at=now,
            next_update=None,
            source=url,
        )


def check_vcek(der: bytes, key: VcekKey, anchors: TrustAnchors, now: datetime, url: str) -> None:
    """The body is a VCEK chaining to the pinned roots, for exactly this product/chip/TCB."""
    try:
        verified = verify_key_chain([der], anchors, now, product_hint=key.product)
    except EvidenceRejected as exc:
        raise UpstreamResponseInvalid(f"{url}: not a valid VCEK ({exc})") from None
    info = verified.info
    tcb = key.tcb
    wrong = [
        name
        for name in tcb_components(key.product)
        if getattr(info.tcb, name) != getattr(tcb, name)
    ]
    if info.kind != "vcek" or info.product != key.product or info.hwid != key.hwid or wrong:
        raise UpstreamResponseInvalid(
            f"{url}: the certificate is not the VCEK asked for (kind {info.kind}, product "
            f"{info.product}, TCB differs in {wrong or 'nothing'})"
        )
