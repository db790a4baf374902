"""The hypothesis profiles of tests/conftest.py keep the normal suite bounded.

A test that names its own, larger example count would silently make every run slower (and the
soak profile pointless for it); a per-example deadline would make a busy machine fail a property
on time. Both are checked here, the first statically over every test module.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from hypothesis import settings

TESTS = Path(__file__).resolve().parents[1]


def _literal_max_examples(path: Path) -> list[tuple[int, int]]:
    """(line, count) of every ``max_examples=<int literal>`` keyword in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (node.value.lineno, node.value.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.keyword)
        and node.arg == "max_examples"
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, int)
    ]


def test_profiles_are_registered() -> None:
    default, soak = settings.get_profile("default"), settings.get_profile("soak")
    assert default.max_examples <= 500  # bounded: a few hundred at most
    assert soak.max_examples >= 10_000
    for profile in (default, soak):
        assert profile.deadline is None
        assert profile.database is None


@pytest.mark.skipif(
    os.environ.get("CONCORD_FUZZ", "default") not in ("", "default"),
    reason="checks the profile of a normal run",
)
def test_normal_run_uses_the_bounded_profile() -> None:
    active = settings.default
    assert active is not None
    assert active.max_examples == settings.get_profile("default").max_examples
    assert active.deadline is None


def test_no_test_raises_the_example_count_above_the_profile() -> None:
    bound = settings.get_profile("default").max_examples
    offenders = [
        f"{path.relative_to(TESTS)}:{line}: max_examples={count}"
        for path in sorted(TESTS.rglob("*.py"))
        for line, count in _literal_max_examples(path)
        if count > bound
    ]
    assert offenders == [], f"example counts above the default profile ({bound}): {offenders}"


def test_the_scan_sees_an_override(tmp_path: Path) -> None:
    """The scan above can fail: it finds a literal override where there is one."""
    sample = tmp_path / "test_sample.py"
    sample.write_text("@settings(max_examples=9000)\ndef test_x() -> None: ...\n")
    assert _literal_max_examples(sample) == [(1, 9000)]
