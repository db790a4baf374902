"""The abuse benchmark (``./hack/bench abuse``) itself: its corpus really is what it claims and
is refused by the strict decoder with typed errors, its arithmetic on known figures, and one
short real run against a ``concord serve`` process whose JSON shape is checked (not the figures:
they belong to the benchmark, not to a test on a shared machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from attestation.errors import MalformedEvidence
from attestation.evidence import Evidence
from coordinator.core.manifest import Manifest, ManifestLimitExceeded
from tools.bench.abuse import (
    EVIDENCE_ATTACKS,
    HASH_MODULUS,
    Phase,
    colliding_bignum_keys,
    san_manifest,
    summarise,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(EVIDENCE_ATTACKS))
def test_every_evidence_attack_fits_its_budget_and_is_a_typed_rejection(name: str) -> None:
    data = EVIDENCE_ATTACKS[name](64 * 1024)
    assert 32 * 1024 < len(data) <= 64 * 1024
    with pytest.raises(MalformedEvidence):
        Evidence.decode(data)


def test_the_colliding_keys_collide() -> None:
    cbor2 = pytest.importorskip("cbor2")
    decoded = cbor2.loads(colliding_bignum_keys(2000))
    assert len(decoded) > 50
    assert {hash(k) for k in decoded} == {0}
    assert all(k % HASH_MODULUS == 0 for k in decoded)


def test_the_san_manifest_is_refused_on_its_count() -> None:
    raw = san_manifest(80_000)
    assert len(raw) < 1 << 20  # inside the size limit: refused on the SAN count alone
    with pytest.raises(ManifestLimitExceeded, match="SANs"):
        Manifest.parse(raw)


def test_summary_ratios_subtract_the_idle_rate() -> None:
    idle = Phase("idle", "-", "", started=0.0, ended=10.0, cpu_s=1.0)  # 0.1 CPU-s per s
    legit = Phase("legit", "m", "", started=0.0, ended=2.0, cpu_s=1.2, requests=100)
    attack = Phase("attack", "m", "", started=5.0, ended=7.0, cpu_s=0.4, requests=100)
    samples = [(5.5, "readyz", 0.01, True), (6.0, "readyz", 0.03, True), (6.5, "attest", 0.2, True)]
    summary = summarise(idle, [legit, attack], samples)
    assert summary["legit_new_mesh_cert_cpu_s"] == pytest.approx(0.01)
    row = summary["attacks"][1]
    assert row["cpu_ratio_to_new_mesh_cert"] == pytest.approx(0.2)
    assert row["readyz_p99_s"] == pytest.approx(0.03)
    assert summary["targets"]["cpu_ratio_met"] is True


@pytest.mark.timeout(300)
def test_a_short_real_run_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "abuse.json"
    cmd = [
        sys.executable,
        "-m",
        "tools.bench.bench_main",
        "abuse",
        "--json",
        str(out),
        "--quick",
        "--duration",
        "0.3",
        "--legit",
        "8",
        "--streams",
        "8",
        "--timeout",
        "240",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "error" not in report
    summary = report["summary"]
    assert summary["legit_new_mesh_cert_cpu_s"] > 0
    names = [row["attack"] for row in summary["attacks"]]
    assert names[0] == "legit_new_mesh_cert"
    for expected in ("new_mesh_cert_cbor_colliding_bignum_keys", "flood_challenge", "held_streams"):
        assert expected in names
    for row in summary["attacks"]:
        for key in ("cpu_ratio_to_new_mesh_cert", "readyz_p50_s", "readyz_p99_s", "attest_p99_s"):
            assert key in row
    assert set(summary["targets"]) >= {"max_cpu_ratio", "max_readyz_p99_s", "legit_join_always_ok"}
