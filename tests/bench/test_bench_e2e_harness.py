"""The end-to-end issuance harness (``./hack/bench issuance``) itself: its arithmetic on known
figures, and one short real run (coordinator process, load processes, gRPC floor server)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tools.bench.bench_main import _cpu_list, ceilings, summarise

REPO = Path(__file__).resolve().parents[2]


def _point(workers: int, conc: int, tput: float, srv: float, cli: float) -> dict[str, Any]:
    return {
        "workers": workers,
        "concurrency": conc,
        "certs": int(tput * 4),
        "errors": {},
        "throughput_certs_per_s": tput,
        "latency_p50_ms": 1.0,
        "latency_p99_ms": 2.0,
        "server_cpu_per_cert_s": srv,
        "client_cpu_per_flow_s": cli,
    }


def _report() -> dict[str, Any]:
    return {
        "meta": {"cpu_count": 2, "shared_cpus": 2},
        "inprocess": {
            "primitive_baseline_cpu_s": 0.0006,
            "issuer_cpu_s": 0.0007,
            "issuer_efficiency": 0.6 / 0.7,
            "batch_runner": {"ratio_2_to_1": 1.5},
        },
        "runs": [
            _point(1, 16, 500.0, 0.0015, 0.001),
            _point(2, 16, 700.0, 0.0012, 0.0008),
        ],
        "rpc_floor": [_point(0, 16, 2000.0, 0.0003, 0.0005)],
    }


def test_summary_efficiency_ratio_and_ceilings() -> None:
    report = _report()
    s = summarise(report)
    assert s["best_efficiency"]["workers"] == 2
    assert s["best_efficiency"]["efficiency"] == pytest.approx(0.6 / 1.2)
    assert s["pool_ratio_2_to_1"]["best_vs_best"] == pytest.approx(700 / 500)
    # floor 0.3 ms + in-process issuer 0.7 ms: no server can beat baseline / 1.0 ms
    assert s["rpc_floor_cpu_per_flow_s"] == pytest.approx(0.0003)
    assert s["efficiency_ceiling"]["value"] == pytest.approx(0.6)
    assert s["efficiency_ceiling"]["server_cpu_per_cert_above_floor_s"] == pytest.approx(0.0009)
    # 2 cores / (1.2 + 0.8 ms per flow) = 1000 flows/s at most, over 500 with one worker
    assert s["pool_ratio_ceiling"]["per_concurrency"]["16"] == pytest.approx(2.0)
    assert s["pool_ratio_ceiling"]["at_best_2_worker_point"] == pytest.approx(2.0)


def test_pool_ceiling_is_judged_where_two_workers_peak() -> None:
    report = _report()
    report["runs"] += [_point(1, 1, 300.0, 0.0015, 0.001), _point(2, 1, 310.0, 0.0015, 0.001)]
    s = summarise(report)
    # at concurrency 1: 2 / 2.5 ms = 800/s over 300/s; the peak (16) gives 2.0
    assert s["pool_ratio_ceiling"]["per_concurrency"]["1"] == pytest.approx(800 / 300)
    assert s["pool_ratio_ceiling"]["at_best_2_worker_point"] == pytest.approx(2.0)


def test_no_pool_ceiling_when_the_load_is_pinned_apart() -> None:
    report = _report()
    report["meta"]["shared_cpus"] = None
    s = summarise(report)
    assert "pool_ratio_ceiling" not in s
    assert s["efficiency_ceiling"]["value"] == pytest.approx(0.6)  # still measured


def test_ceilings_need_matching_figures() -> None:
    """No floor at the best point's concurrency, no 1-worker point: no ceiling is made up."""
    report = _report()
    report["rpc_floor"] = [_point(0, 64, 2000.0, 0.0003, 0.0005)]
    best = report["runs"][1]
    by = {(2, 16): best}
    assert ceilings(report, best, by) == {}


def test_short_real_run(tmp_path: Path) -> None:
    """A real, short run: every point issues certificates, the floor run answers, the JSON
    holds the figures the note quotes, and the harness exits 0."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.bench.bench_main",
            "issuance",
            "--json",
            str(out),
            "--duration",
            "0.6",
            "--warmup",
            "0.3",
            "--concurrency",
            "4",
            "--workers",
            "1,2",
            "--clients",
            "1",
            "--baseline-rounds",
            "1",
            "--timeout",
            "100",
            "--server-cpus",
            "0",
            "--load-cpus",
            ",".join(map(str, sorted(os.sched_getaffinity(0)))),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert "error" not in report
    assert {(r["workers"], r["concurrency"]) for r in report["runs"]} == {(1, 4), (2, 4)}
    assert report["meta"]["server_cpus"] == [0]
    assert report["meta"]["shared_cpus"] == len(os.sched_getaffinity(0))
    for run in report["runs"]:
        assert run["server_cpus"] == [0]  # read off the running coordinator
        assert run["certs"] > 0 and not run["errors"]
        assert run["server_cpu_per_cert_s"] > report["inprocess"]["primitive_baseline_cpu_s"] / 2
        assert 0 < run["efficiency"] < 2
    floor = report["rpc_floor"][0]
    assert floor["certs"] > 0 and not floor["errors"]
    # The floor does no issuing, so it must cost less per flow than any real point.
    assert floor["server_cpu_per_cert_s"] < min(r["server_cpu_per_cert_s"] for r in report["runs"])
    summary = report["summary"]
    assert 0 < summary["efficiency_ceiling"]["value"] < 2
    assert summary["pool_ratio_ceiling"]["per_concurrency"].keys() == {"4"}
    assert "gRPC floor (no issuing)" in proc.stdout


def test_cpu_lists_are_parsed_and_checked() -> None:
    every = sorted(os.sched_getaffinity(0))
    assert _cpu_list(f"{every[0]}-{every[-1]}") == every
    for bad in ("", "x", "1-a", "4096"):
        with pytest.raises(argparse.ArgumentTypeError):
            _cpu_list(bad)
