"""Fixtures shared by the whole suite, and the hypothesis profiles.

Profiles (chosen by the environment variable ``CONCORD_FUZZ``, default ``default``):

- ``default``: what every test run uses. Bounded (a couple of hundred examples per property) so
  the suite stays quick, and without a per-example deadline: a busy machine must not fail a
  property on time.
- ``soak``: ``hack/fuzz`` runs tests/fuzz with it, 20,000 examples per property.

Tests state no example counts of their own above the default one; the profile decides.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

FUZZ_PROFILE_ENV = "CONCORD_FUZZ"
DEFAULT_EXAMPLES = 200
SOAK_EXAMPLES = 20_000

settings.register_profile(
    "default",
    max_examples=DEFAULT_EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the checkout; a failure prints its reproduction blob
    print_blob=True,
)
settings.register_profile("soak", settings.get_profile("default"), max_examples=SOAK_EXAMPLES)
settings.load_profile(os.environ.get(FUZZ_PROFILE_ENV) or "default")

REPO = Path(__file__).resolve().parents[1]
# The shared test data sits beside the checkout (../shared); CI clones main next to it.
VECTORS = (REPO.parent / "shared" / "testdata" / "vectors").resolve()


@pytest.fixture(scope="session")
def vectors() -> Path:
    """Real vendor-signed evidence. Missing vectors are an error, never a skip."""
    if not (VECTORS / "README.md").is_file():
        pytest.fail(f"shared test vectors not found at {VECTORS}")
    return VECTORS
