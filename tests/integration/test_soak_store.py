"""The store soak (tools/soak_store.py) runs end to end: a few steps, every check enforced."""

from __future__ import annotations

import pytest

from tools.etcd_server import find_etcd
from tools.soak_store import main

pytestmark = pytest.mark.timeout(300)


def test_soak_a_few_steps(capsys: pytest.CaptureFixture[str]) -> None:
    if find_etcd() is None:
        pytest.skip("etcd binary not installed")
    assert main(["--steps", "8", "--seed", "7", "--coordinators", "2"]) == 0
    out = capsys.readouterr().out
    assert '"steps": 8' in out
