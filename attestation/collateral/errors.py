"""Typed failures of fetching and caching collateral (each class is a stable ``reason``)."""

from __future__ import annotations

from attestation.errors import CollateralRejected


class CollateralUnavailable(CollateralRejected):
    """No usable collateral: nothing cached, or the cached copy is past ``nextUpdate`` + grace."""

    reason = "collateral_unavailable"


class VlekNotFetchable(CollateralRejected):
    """A VLEK is issued to a cloud provider, not published by AMD KDS: it must be in the evidence."""

    reason = "vlek_not_fetchable"


class ChipIdMasked(CollateralRejected):
    """MASK_CHIP_ID hides the chip ID that KDS needs to find the VCEK."""

    reason = "chip_id_masked"


class CacheEntryInvalid(CollateralRejected):
    """A file in the collateral directory is unreadable or malformed (never trusted as is)."""

    reason = "collateral_cache_invalid"


class UpstreamError(CollateralRejected):
    """Fetching from KDS / PCS / PCCS failed; ``retryable`` says whether another try may help."""

    reason = "upstream"
    retryable = True


class UpstreamNotFound(UpstreamError):
    reason = "upstream_not_found"
    retryable = False


class UpstreamRateLimited(UpstreamError):
    reason = "upstream_rate_limited"

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError):
    reason = "upstream_timeout"


class UpstreamTruncated(UpstreamError):
    reason = "upstream_truncated"


class UpstreamFailed(UpstreamError):
    """5xx, a connection failure, or an unexpected status."""

    reason = "upstream_failed"


class UpstreamRejected(UpstreamError):
    """A 4xx other than 404/429: asking again will not help."""

    reason = "upstream_rejected"
    retryable = False


class UpstreamResponseInvalid(UpstreamError):
    """A 200 whose body or headers are not what the API promises (oversized, wrong type)."""

    reason = "upstream_response_invalid"
    retryable = False
