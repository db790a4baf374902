"""Shared by the SNP unit tests: the pinned instant, the production anchors and the real SNP
vector directory as module-scoped fixtures, and anchors trusting one mock AMD hierarchy.

Test modules import the fixtures as ``*_fixture`` (pytest registers them under their ``name``);
being module-scoped, each importing module still gets its own instance.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation import anchors as anchors_mod
from attestation.anchors import TrustAnchors
from attestation.mock.snp import MockAmd

NOW = datetime(2025, 6, 1, tzinfo=UTC)
"""The verification time of the SNP tests."""


@pytest.fixture(scope="module", name="production")
def production_fixture() -> TrustAnchors:
    return anchors_mod.production()


@pytest.fixture(scope="module", name="snp")
def snp_vectors_fixture(vectors: Path) -> Path:
    return vectors / "snp"


def mock_amd_anchors(mock: MockAmd, production: TrustAnchors) -> TrustAnchors:
    """Anchors pinning ``mock``'s roots for its product (and the production Intel root)."""
    return TrustAnchors("mock", {mock.product: mock.roots()}, production.intel_root)
