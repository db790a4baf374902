"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The shared test data sits beside the checkout (../shared); CI clones main next to it.
VECTORS = (REPO.parent / "shared" / "testdata" / "vectors").resolve()


@pytest.fixture(scope="session")
def vectors() -> Path:
    """Real vendor-signed evidence. Missing vectors are an error, never a skip."""
    if not (VECTORS / "README.md").is_file():
        pytest.fail(f"shared test vectors not found at {VECTORS}")
    return VECTORS
