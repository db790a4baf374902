"""Shared by the TDX unit tests: the pinned instants, the production anchors and a mock Intel
hierarchy as module-scoped fixtures, and reading a real quote vector.

Test modules import the fixtures as ``*_fixture`` (pytest registers them under their ``name``);
being module-scoped, each importing module still gets its own instance.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.anchors import TrustAnchors, production
from attestation.mock.tdx import MockIntel, create_mock_intel

NOW = datetime(2026, 3, 1, tzinfo=UTC)
"""The verification time of most TDX tests (the mock hierarchy is issued at it)."""
UPTODATE_NOW = datetime(2025, 7, 1, tzinfo=UTC)
"""A time at which the ``uptodate-v4`` vector verifies with its own collateral (UpToDate)."""
SEPT_VE = bytes.fromhex("0000001000000000")
"""TD attributes with only SEPT_VE_DISABLE (bit 28) set."""


@pytest.fixture(scope="module", name="anchors")
def anchors_fixture() -> TrustAnchors:
    return production()


@pytest.fixture(scope="module", name="mock")
def mock_intel_fixture(tmp_path_factory: pytest.TempPathFactory) -> MockIntel:
    return create_mock_intel(tmp_path_factory.mktemp("mock-intel"), now=NOW)


def quote_bytes(vectors: Path, name: str) -> bytes:
    """The raw quote of the real vector ``name`` (``tdx/<name>.quote.bin``)."""
    return (vectors / "tdx" / f"{name}.quote.bin").read_bytes()
