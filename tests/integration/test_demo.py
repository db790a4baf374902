"""``concord demo`` as a user runs it: a subprocess that starts (and must stop) its own
coordinator process. The issued certificates are checked with ``openssl verify``."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
HEX64 = re.compile(r"[0-9a-f]{64}")

pytestmark = pytest.mark.timeout(180)


def demo(*args: str | Path, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "demo", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=REPO,
    )


def openssl_verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl binary not found")
    return subprocess.run(
        [openssl, "verify", *map(str, args)], capture_output=True, text=True, timeout=30
    )


def fingerprint(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def store_unlocked(store: Path) -> bool:
    fd = os.open(store / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_demo_json_report_and_certificates(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = demo("--workloads", "3", "--json", "--keep", work)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)  # only the JSON on stdout

    assert report["ok"] is True
    assert report["workloads"] == 3
    assert report["tee_types"] == {"snp": 2, "tdx": 1}
    assert report["certificates_issued"] == 6
    assert report["checks"] == {
        "root_ca_unchanged": True,
        "mesh_ca_changed_on_update": True,
        "recovery_mode_after_restart": True,
        "ready_after_recovery": True,
        "history_verified": True,
        "workload_secrets_stable": True,
        "update_applied": True,
        "rejoined_under_recovered_mesh_ca": True,
        "mesh_no_failed_connection": True,
        "mesh_agents_renewed": True,
    }
    # Two workloads kept talking mutual TLS through the update, the restart and the recovery
    # (a new mesh key), and their agents renewed by the clock too (DESIGN §15).
    mesh_run = report["mesh"]
    assert mesh_run["connections_failed"] == 0 and mesh_run["errors"] == []
    assert mesh_run["connections_ok"] > 0
    assert all(n >= 5 for n in mesh_run["renewals"].values())
    assert all(n >= mesh_run["renewals"][w] for w, n in mesh_run["reloads"].items())
    first, second = report["transitions"]
    assert HEX64.fullmatch(first) and HEX64.fullmatch(second) and first != second
    mesh = report["mesh_ca_sha256"]
    assert mesh["initial"] != mesh["after_update"]
    assert mesh["after_recovery"] != mesh["after_update"]  # a user recovery mints a new mesh key
    timings = report["timings_ms"]
    for step in (
        "start",
        "set_manifest",
        "join",
        "verify",
        "update_manifest",
        "restart",
        "recover",
        "rejoin",
        "total",
    ):
        assert timings[step] > 0, step
    assert timings["total"] >= timings["join"] + timings["restart"]

    # The process it started is gone: its file store lock is free.
    assert store_unlocked(work / "store")

    assert fingerprint(work / "set-1" / "mesh-ca.pem") == mesh["initial"]
    assert fingerprint(work / "set-2" / "mesh-ca.pem") == mesh["after_update"]
    for step in ("set-1", "set-2"):
        assert fingerprint(work / step / "root-ca.pem") == report["root_ca_sha256"]
    for i in range(3):
        wl = work / "workloads" / f"workload-{i}"
        assert fingerprint(wl / "root-ca.pem") == report["root_ca_sha256"]
        assert fingerprint(wl / "mesh-ca.pem") == mesh["after_recovery"]
        # Trust this manifest: the mesh CA alone.
        ok = openssl_verify("-partial_chain", "-CAfile", wl / "mesh-ca.pem", wl / "cert.pem")
        assert ok.returncode == 0 and "cert.pem: OK" in ok.stdout, ok.stdout + ok.stderr
        # Trust the deployment: intermediate (from chain.pem) up to the root.
        ok = openssl_verify(
            "-CAfile", wl / "root-ca.pem", "-untrusted", wl / "chain.pem", wl / "cert.pem"
        )
        assert ok.returncode == 0 and "cert.pem: OK" in ok.stdout, ok.stdout + ok.stderr
        # Negative: the root alone does not vouch for a leaf (the intermediate is needed).
        bad = openssl_verify("-CAfile", wl / "root-ca.pem", wl / "cert.pem")
        assert bad.returncode != 0
        # Negative: the mesh CAs of earlier states (first manifest, update) do not sign them.
        for step in ("set-1", "set-2"):
            old = openssl_verify(
                "-partial_chain", "-CAfile", work / step / "mesh-ca.pem", wl / "cert.pem"
            )
            assert old.returncode != 0, step


def test_demo_human_output(tmp_path: Path) -> None:
    proc = demo("--workloads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "concord demo: all checks passed" in proc.stdout
    assert "1 (1 SNP, 0 TDX), 2 certificates issued" in proc.stdout


def test_demo_bad_usage() -> None:
    proc = demo("--workloads", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "concord: --workloads: want 1..64"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_demo_stops_its_coordinator_when_interrupted(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C, SIGTERM and even SIGKILL of the demo leave no coordinator process behind."""
    work = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "demo", "--workloads", "1", "--keep", str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        pid = None
        for line in proc.stdout:
            m = re.search(r"coordinator pid (\d+)", line)
            if m:
                pid = int(m.group(1))
                break
        assert pid is not None, proc.stderr.read() if proc.stderr else ""
        assert not store_unlocked(work / "store")  # the coordinator holds its store
        proc.send_signal(sig)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode in (1, 130, 143), proc.returncode
    deadline = time.monotonic() + 20
    while not store_unlocked(work / "store"):
        assert time.monotonic() < deadline, f"coordinator {pid} still holds the store"
        time.sleep(0.1)
