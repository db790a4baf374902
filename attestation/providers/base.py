"""What every evidence source offers: evidence over 64 bytes of report data."""

from __future__ import annotations

from typing import Protocol

from attestation.evidence import Evidence


class ProviderError(Exception):
    """The evidence source failed (device missing, kernel refused, concurrent use)."""


class EvidenceProvider(Protocol):
    @property
    def tee(self) -> str: ...

    def evidence(self, report_data: bytes) -> Evidence:
        """Fresh evidence binding ``report_data`` (exactly 64 bytes)."""
        ...
