"""Acceptance: `concord collateral fetch` on a "connected" machine, then offline verification.

The fake KDS / PCS (tests/fakes/vendor.py) serve the real vendor responses on loopback. The
fetch runs as a real ``concord`` process; verification then reads only the directory: a raw SNP
report that carries no certificates and a TDX quote whose envelope carries no collateral.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from attestation.evidence import Evidence
from attestation.tdx.quote import parse_quote
from tests.fakes.vendor import FakeVendor, Reply, running_vendor, serve_kds, serve_pcs

REPO = Path(__file__).resolve().parents[2]
AT = "2025-07-01T00:00:00Z"  # inside the VCEK's and the TDX collateral's validity


def concord(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *[str(a) for a in argv]],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


@pytest.fixture
def vendor(vectors: Path) -> Iterator[FakeVendor]:
    with running_vendor() as v:
        serve_kds(v, vectors)
        serve_pcs(v, vectors)
        yield v


@pytest.fixture
def inputs(vectors: Path, tmp_path: Path) -> dict[str, Path]:
    quote = (vectors / "tdx" / "uptodate-v4.quote.bin").read_bytes()
    envelope = tmp_path / "tdx-no-collateral.cbor"
    envelope.write_bytes(Evidence(tee="tdx", report=quote).encode())
    return {
        "snp": vectors / "snp" / "milan-v2.report.bin",
        "tdx": vectors / "tdx" / "uptodate-v4.quote.bin",
        "envelope": envelope,
    }


def fetch(vendor: FakeVendor, out: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return concord(
        *("collateral", "fetch", "--out", out, "--at", AT, "--json"),
        *("--kds-url", vendor.url, "--pcs-url", vendor.url),
        *files,
    )


def verify(*argv: str | Path) -> tuple[int, dict[str, Any]]:
    import contextlib
    import io

    from attestation.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["evidence", "verify", *[str(a) for a in argv], "--at", AT, "--json"])
    return code, json.loads(buf.getvalue())


def test_fetch_then_verify_offline(
    vendor: FakeVendor, inputs: dict[str, Path], tmp_path: Path, vectors: Path
) -> None:
    out = tmp_path / "collateral"
    # Before: neither verifies without collateral.
    code, res = verify(inputs["snp"])
    assert code == 1 and res["reason"] == "missing_certificate"

    proc = fetch(vendor, out, inputs["snp"], inputs["tdx"], inputs["envelope"])
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads(proc.stdout)
    assert report["failed"] == 0 and [r["tee"] for r in report["results"]] == ["snp", "tdx", "tdx"]
    assert vendor.count("/vcek/") == 1  # the second TDX input was served from the directory
    assert vendor.count("/tdx/certification/v4/tcb") == 1

    code, res = verify(inputs["snp"], "--collateral-dir", out)
    assert code == 0, res
    assert res["authenticity"] == "verified" and res["product"] == "Milan"

    mr_td = parse_quote(inputs["tdx"].read_bytes()).body.mr_td.hex()
    refs = tmp_path / "rv.json"
    refs.write_text(json.dumps({"tdx": [{"MrTd": mr_td}]}))
    for quote in (inputs["tdx"], inputs["envelope"]):
        code, res = verify(quote, "--collateral-dir", out, "--reference-values", refs)
        assert code == 0, res
        assert res["tcb_status"] == "UpToDate" and res["reference_match"] == "tdx[0]"

    # Without the directory the same reference refuses the quote: no collateral, fail closed.
    code, res = verify(inputs["envelope"], "--reference-values", refs)
    assert code == 1 and res["reason"] == "missing_collateral"


def test_fetch_reports_failures_and_exits_1(
    vendor: FakeVendor, inputs: dict[str, Path], tmp_path: Path, vectors: Path
) -> None:
    json_body = json.loads((vectors / "tdx" / "uptodate-v4.collateral.json").read_text())[
        "tcb_info"
    ]
    fmspc = json.loads(json_body)["fmspc"].lower()
    vendor.route(f"/tdx/certification/v4/tcb?fmspc={fmspc}", Reply(404, b"no such FMSPC"))
    proc = fetch(vendor, tmp_path / "c", inputs["snp"], inputs["tdx"])
    assert proc.returncode == 1
    results = json.loads(proc.stdout)["results"]
    assert results[0]["tee"] == "snp"
    assert results[1]["reason"] == "collateral_unavailable"
    assert "upstream_not_found" in results[1]["detail"]
    assert vendor.count("/tdx/certification/v4/tcb") == 1  # a 404 is not retried


def test_fetch_usage_errors(tmp_path: Path) -> None:
    proc = concord("collateral", "fetch", "--out", tmp_path / "c", tmp_path / "missing.bin")
    assert proc.returncode == 2 and "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr
