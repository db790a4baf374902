"""The renewal storm benchmark (``./hack/bench renewal``): pure helpers on known figures, and one
tiny real run whose JSON shape is checked (not its figures: they belong to the benchmark, not to
a test on a shared machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.bench.renewal import jitter_spread, percentiles

REPO = Path(__file__).resolve().parents[2]


def test_percentiles_and_spread() -> None:
    assert percentiles([3.0, 1.0, 2.0]) == {"min": 1, "p50": 2, "p90": 3, "p99": 3, "max": 3}
    spread = jitter_spread([10.0, 10.5, 11.2, 19.9])
    assert spread["spread_s"] == pytest.approx(9.9)
    assert spread["peak_renewals_per_s"] == 2  # 10.0 and 10.5 share a second
    assert spread["without_jitter_peak_per_s"] == 4


@pytest.mark.timeout(240)
def test_a_tiny_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "renewal.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "tools.bench.bench_main", "renewal", "--json", str(out),
            "--agents", "6", "--processes", "2", "--joins", "3", "--rounds", "1",
            "--join-concurrency", "2", "--timeout", "180",
        ],
        capture_output=True, text=True, timeout=230, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    join = report["join"]
    for key in ("three_rpc_server_cpu_ms_per_join", "two_rpc_server_cpu_ms_per_join"):
        assert join[key] >= 0
    assert set(join["rounds_ms"]) == {"three_rpc", "two_rpc"}
    storm = report["storm"]
    assert storm["agents"] == 6 and storm["processes"] == 2
    assert storm["update_to_all_renewed_s"] > 0
    assert set(storm["renewal_latency_s"]) == {"min", "p50", "p90", "p99", "max"}
    for key in ("server_cpu_ms_per_renewal", "initial_join_s", "met_target"):
        assert key in storm
    assert report["jitter"]["without_jitter_peak_per_s"] == 6
    assert report["jitter"]["spread_s"] >= 0
    assert "agents: all under the new mesh CA" in proc.stdout
