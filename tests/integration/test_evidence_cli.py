"""``concord evidence inspect|verify`` and ``concord mock-tee``: real vectors, mock round trips.

Most cases run in-process through a small argparse harness (build a parser, call
``attestation.cli.register``, parse, call ``func``); the key ones also run as real
``python -m coordinator.cli`` subprocesses, so the wiring into the ``concord`` command is tested.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestation import cli
from attestation.evidence import Evidence
from attestation.snp.report import parse_report
from attestation.tdx.collateral_model import load_collateral_json
from attestation.tdx.quote import parse_quote

REPO = Path(__file__).resolve().parents[2]
UPTODATE_AT = "2025-07-01T00:00:00Z"  # collateral issued before, nextUpdate 2025-07-19
OUTDATED_AT = "2026-03-01T00:00:00Z"  # inside the outdated-v5 collateral's window


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.out)
        return obj


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> Result:
    """In-process: the same parser shape coordinator/cli builds, exit code as concord's."""
    parser = argparse.ArgumentParser(prog="concord")
    cli.register(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args([str(a) for a in argv])
        code = args.func(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def concord(*argv: str | Path) -> Result:
    """Out of process, through the real ``concord`` entry module."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *[str(a) for a in argv]],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def snp(vectors: Path, name: str) -> tuple[Path, Path]:
    key = "vlek" if name.startswith("vlek") else "vcek"
    return vectors / "snp" / f"{name}.report.bin", vectors / "snp" / f"{name}.{key}.der"


def tdx(vectors: Path, name: str) -> Path:
    return vectors / "tdx" / f"{name}.quote.bin"


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path


def snp_reference(report: Path, **extra: Any) -> dict[str, Any]:
    measurement = parse_report(report.read_bytes()).measurement.hex()
    return {"snp": [{"ProductName": "Milan", "TrustedMeasurement": measurement, **extra}]}


def assert_rejected(res: Result, reason: str) -> None:
    assert res.code == 1, res
    line = res.out.strip()
    assert "\n" not in line
    assert line.startswith(f"rejected: {reason}: "), line
    assert "Traceback" not in res.out + res.err


def assert_usage(res: Result, *fragments: str) -> None:
    assert res.code == 2, res
    assert res.out == ""
    assert "Traceback" not in res.err
    lines = [ln for ln in res.err.splitlines() if "error:" in ln]
    assert len(lines) == 1, res.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- evidence verify: real SNP vectors -------------------------------------------------------


def test_milan_v2_verifies(capsys: pytest.CaptureFixture[str], vectors: Path) -> None:
    report, vcek = snp(vectors, "milan-v2")
    res = run(capsys, "evidence", "verify", report, "--vcek", vcek, "--at", "2024-06-01", "--json")
    assert res.code == 0, res
    out = res.json()
    parsed = parse_report(report.read_bytes())
    assert out["tee"] == "snp" and out["verified"] is True
    assert out["policy_checked"] is False
    assert out["version"] == 2
    assert out["product"] == "Milan" and out["signer"] == "vcek"
    assert out["report_data"] == parsed.report_data.hex()
    assert out["measurement"] == parsed.measurement.hex()
    assert out["host_data"] == parsed.host_data.hex()
    assert out["chip_id"] == parsed.chip_id.hex()
    assert out["policy"] == 0x30000
    assert out["vmpl"] == 0
    assert out["reported_tcb"] == {
        "bootloader": 3,
        "tee": 0,
        "snp": 8,
        "microcode": 115,
        "raw": parsed.reported_tcb_raw.hex(),
    }


def test_milan_v2_human_output(capsys: pytest.CaptureFixture[str], vectors: Path) -> None:
    report, vcek = snp(vectors, "milan-v2")
    res = run(capsys, "evidence", "verify", report, "--vcek", vcek, "--at", "2024-06-01")
    assert res.code == 0
    assert "verified: True" in res.out
    assert "authenticity only" in res.out


def test_milan_v2_with_reference(
    capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path
) -> None:
    report, vcek = snp(vectors, "milan-v2")
    refs = write_json(tmp_path / "rv.json", snp_reference(report))
    res = run(
        capsys, "evidence", "verify", report, "--vcek", vcek, "--reference-values", refs, "--json"
    )
    assert res.code == 0, res
    assert res.json()["policy_checked"] is True and res.json()["reference_index"] == 0


def test_milan_v2_wrong_measurement(
    capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path
) -> None:
    report, vcek = snp(vectors, "milan-v2")
    refs = write_json(
        tmp_path / "rv.json",
        {"snp": [{"ProductName": "Milan", "TrustedMeasurement": "00" * 48}]},
    )
    res = run(capsys, "evidence", "verify", report, "--vcek", vcek, "--reference-values", refs)
    assert_rejected(res, "measurement")


def test_milan_v2_debug_rejected_by_reference(
    capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path
) -> None:
    report, vcek = snp(vectors, "milan-v2-debug")
    refs = write_json(tmp_path / "rv.json", snp_reference(report))  # Debug defaults to forbidden
    res = run(capsys, "evidence", "verify", report, "--vcek", vcek, "--reference-values", refs)
    assert_rejected(res, "debug")
    res = run(
        capsys, "evidence", "verify", report, "--vcek", vcek, "--reference-values", refs, "--json"
    )
    assert res.code == 1
    out = res.json()
    assert out == {
        "tee": "snp",
        "verified": False,
        "reason": "debug",
        "detail": out["detail"],
        # authentic evidence refused only by the reference: both verdicts, separately
        "authenticity": "verified",
        "reference_match": "rejected",
        "verdict": out["verdict"],
    }
    assert "DEBUG" in out["detail"]
    assert out["verdict"]["product"] == "Milan" and out["verdict"]["debug"] is True


def test_milan_v2_debug_allowed(
    capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path
) -> None:
    report, vcek = snp(vectors, "milan-v2-debug")
    refs = write_json(tmp_path / "rv.json", snp_reference(report, GuestPolicy={"Debug": True}))
    res = run(
        capsys, "evidence", "verify", report, "--vcek", vcek, "--reference-values", refs, "--json"
    )
    assert res.code == 0, res
    assert res.json()["policy"] == 0xB0000


def test_vlek_v3(capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path) -> None:
    report, vlek = snp(vectors, "vlek-v3")
    allow = write_json(
        tmp_path / "allow.json", snp_reference(report, AllowVLEK=True, AllowedVMPLs=[1])
    )
    res = run(
        capsys,
        *("evidence", "verify", report, "--vcek", vlek, "--at", "2025-06-01"),
        *("--reference-values", allow, "--json"),
    )
    assert res.code == 0, res
    out = res.json()
    assert out["signer"] == "vlek" and out["version"] == 3 and out["vmpl"] == 1
    # the VLEK expired on 2025-12-10
    res = run(
        capsys,
        *("evidence", "verify", report, "--vcek", vlek, "--at", "2026-11-25"),
        *("--reference-values", allow),
    )
    assert_rejected(res, "certificate_validity")
    # a reference without AllowVLEK refuses it
    deny = write_json(tmp_path / "deny.json", snp_reference(report, AllowedVMPLs=[1]))
    res = run(
        capsys,
        *("evidence", "verify", report, "--vcek", vlek, "--at", "2025-06-01"),
        *("--reference-values", deny),
    )
    assert_rejected(res, "vlek_not_allowed")


@pytest.mark.parametrize("name", ["tampered-legacy", "tampered-new"])
def test_tampered_vcek(capsys: pytest.CaptureFixture[str], vectors: Path, name: str) -> None:
    report, _ = snp(vectors, "milan-v2")
    res = run(
        capsys,
        *("evidence", "verify", report, "--vcek", vectors / "snp" / f"{name}.vcek.der"),
        *("--at", "2024-06-01", "--json"),
    )
    assert res.code == 1
    assert res.json()["verified"] is False
    assert res.json()["reason"] in ("certificate_signature", "untrusted_root", "chain")


def test_missing_vcek(capsys: pytest.CaptureFixture[str], vectors: Path) -> None:
    report, _ = snp(vectors, "milan-v2")
    assert_rejected(run(capsys, "evidence", "verify", report), "missing_certificate")


def test_vcek_as_pem_bundle_and_cert_chain(
    capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path
) -> None:
    report, vcek = snp(vectors, "milan-v2")
    with warnings.catch_warnings():  # AMD VCEKs have serial number 0
        warnings.simplefilter("ignore")
        cert = x509.load_der_x509_certificate(vcek.read_bytes())
    chain = (vectors / "anchors" / "amd_ask_ark_milan.pem").read_bytes()
    bundle = tmp_path / "vcek-bundle.pem"
    bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + chain)
    res = run(capsys, "evidence", "verify", report, "--vcek", bundle, "--at", "2024-06-01")
    assert res.code == 0, res
    pem = tmp_path / "vcek.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    res = run(
        capsys,
        *("evidence", "verify", report, "--vcek", pem),
        *("--cert-chain", vectors / "anchors" / "amd_ask_ark_milan.pem"),
    )
    assert res.code == 0, res


def test_snp_envelope(capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path) -> None:
    report, vcek = snp(vectors, "milan-v2")
    env = tmp_path / "ev.cbor"
    env.write_bytes(
        Evidence(tee="snp", report=report.read_bytes(), certs=(vcek.read_bytes(),)).encode()
    )
    res = run(capsys, "evidence", "verify", env, "--json", "--tee", "snp")
    assert res.code == 0, res
    assert res.json()["measurement"] == parse_report(report.read_bytes()).measurement.hex()


# --- evidence verify: real TDX vectors -------------------------------------------------------


@pytest.mark.parametrize("name", ["spr-v4", "sample-v5"])
def test_tdx_without_collateral(
    capsys: pytest.CaptureFixture[str], vectors: Path, name: str
) -> None:
    quote = tdx(vectors, name)
    res = run(capsys, "evidence", "verify", quote, "--json")
    assert res.code == 0, res
    out = res.json()
    q = parse_quote(quote.read_bytes())
    assert out["tee"] == "tdx" and out["verified"] is True
    assert out["version"] == q.header.version
    assert out["mrtd"] == q.body.mr_td.hex()
    assert out["mrconfigid"] == q.body.mr_config_id.hex()
    assert out["rtmrs"] == [m.hex() for m in q.body.rtmrs] and len(out["rtmrs"]) == 4
    assert out["td_attributes"] == int.from_bytes(q.body.td_attributes, "little")
    assert out["xfam"] == int.from_bytes(q.body.xfam, "little")
    assert out["tee_tcb_svn"] == q.body.tee_tcb_svn.hex()
    assert out["report_data"] == q.body.report_data.hex()
    assert out["tcb_status"] is None


def test_tdx_uptodate_with_collateral(capsys: pytest.CaptureFixture[str], vectors: Path) -> None:
    res = run(
        capsys,
        *("evidence", "verify", tdx(vectors, "uptodate-v4")),
        *("--collateral", vectors / "tdx" / "uptodate-v4.collateral.json"),
        *("--at", UPTODATE_AT, "--json"),
    )
    assert res.code == 0, res
    assert res.json()["tcb_status"] == "UpToDate"


def test_tdx_uptodate_collateral_stale_later(
    capsys: pytest.CaptureFixture[str], vectors: Path
) -> None:
    res = run(
        capsys,
        *("evidence", "verify", tdx(vectors, "uptodate-v4")),
        *("--collateral", vectors / "tdx" / "uptodate-v4.collateral.json"),
        *("--at", "2025-08-01"),
    )
    assert_rejected(res, "collateral_expired")


def test_tdx_outdated_with_collateral(capsys: pytest.CaptureFixture[str], vectors: Path) -> None:
    res = run(
        capsys,
        *("evidence", "verify", tdx(vectors, "outdated-v5")),
        *("--collateral", vectors / "tdx" / "outdated-v5.collateral.json"),
        *("--at", OUTDATED_AT, "--json"),
    )
    assert res.code == 1, res
    out = res.json()
    assert out["verified"] is False and out["reason"] == "tcb_status" and out["tee"] == "tdx"


def test_tdx_debug_rejected_by_reference(
    capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path
) -> None:
    quote = tdx(vectors, "debug-v4")
    mrtd = parse_quote(quote.read_bytes()).body.mr_td.hex()
    refs = write_json(tmp_path / "rv.json", {"tdx": [{"MrTd": mrtd}]})
    # crypto is valid: authenticity-only passes, and DEBUG is reported
    res = run(capsys, "evidence", "verify", quote, "--json")
    assert res.code == 0 and res.json()["debug"] is True
    # policy: with reference values, collateral is required first (fail closed) ...
    assert_rejected(
        run(capsys, "evidence", "verify", quote, "--reference-values", refs), "missing_collateral"
    )


def test_tdx_reference_with_collateral(
    capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path
) -> None:
    quote = tdx(vectors, "uptodate-v4")
    mrtd = parse_quote(quote.read_bytes()).body.mr_td.hex()
    collateral = vectors / "tdx" / "uptodate-v4.collateral.json"
    good = write_json(tmp_path / "good.json", {"tdx": [{"MrTd": mrtd}]})
    bad = write_json(tmp_path / "bad.json", {"tdx": [{"MrTd": "00" * 48}]})
    base = ("evidence", "verify", quote, "--collateral", collateral, "--at", UPTODATE_AT)
    res = run(capsys, *base, "--reference-values", good, "--json")
    assert res.code == 0 and res.json()["policy_checked"] is True
    assert_rejected(run(capsys, *base, "--reference-values", bad), "measurement")


def test_tdx_envelope_with_collateral(
    capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path
) -> None:
    collateral = load_collateral_json(vectors / "tdx" / "uptodate-v4.collateral.json")
    env = tmp_path / "ev.cbor"
    env.write_bytes(
        Evidence(
            tee="tdx",
            report=tdx(vectors, "uptodate-v4").read_bytes(),
            collateral=collateral.to_cbor_map(),
        ).encode()
    )
    res = run(capsys, "evidence", "verify", env, "--at", UPTODATE_AT, "--json")
    assert res.code == 0, res
    assert res.json()["tcb_status"] == "UpToDate"


def test_malformed_evidence_is_a_rejection(
    capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world")
    assert_rejected(run(capsys, "evidence", "verify", junk), "malformed")
    cut = tmp_path / "cut.bin"
    cut.write_bytes(tdx(vectors, "spr-v4").read_bytes()[:700])
    res = run(capsys, "evidence", "verify", cut, "--json")
    assert res.code == 1 and res.json()["reason"] == "raw_size"  # names the 700 bytes found
    assert "700 bytes found" in res.json()["detail"]
    flipped = bytearray(tdx(vectors, "spr-v4").read_bytes())
    flipped[200] ^= 1  # inside the signed body
    bad = tmp_path / "flipped.bin"
    bad.write_bytes(bytes(flipped))
    assert_rejected(run(capsys, "evidence", "verify", bad), "signature")


# --- inspect ---------------------------------------------------------------------------------


def test_inspect_snp(capsys: pytest.CaptureFixture[str], vectors: Path) -> None:
    report, _ = snp(vectors, "milan-v2-debug")
    res = run(capsys, "evidence", "inspect", report, "--json")
    assert res.code == 0, res
    out = res.json()
    parsed = parse_report(report.read_bytes())
    assert out["format"] == "raw snp" and out["tee"] == "snp"
    assert out["version"] == 2 and out["product"] is None
    assert out["policy"] == "0xb0000" and out["debug"] is True
    assert "Debug" in out["policy_flags"]
    assert out["platform_info"] == "0x1" and out["platform_flags"] == ["SMTEnabled"]
    assert out["measurement"] == parsed.measurement.hex()
    assert out["report_data"] == parsed.report_data.hex()
    assert out["chip_id"] == parsed.chip_id.hex()
    assert out["signer"] == "vcek"
    assert out["reported_tcb"]["microcode"] == 68


def test_inspect_snp_v3(capsys: pytest.CaptureFixture[str], vectors: Path) -> None:
    res = run(capsys, "evidence", "inspect", snp(vectors, "vlek-v3")[0], "--json")
    assert res.code == 0
    assert res.json()["product"] == "Milan" and res.json()["signer"] == "vlek"
    assert res.json()["cpuid"]["family"] == 0x19
    # platform_info in hex (0x27: SMT, TSME, ECC, AliasCheckComplete), text output too
    assert res.json()["platform_info"] == "0x27"
    text = run(capsys, "evidence", "inspect", snp(vectors, "vlek-v3")[0])
    assert "platform_info: 0x27" in text.out.splitlines()


@pytest.mark.parametrize("name", ["spr-v4", "sample-v5"])
def test_inspect_tdx(capsys: pytest.CaptureFixture[str], vectors: Path, name: str) -> None:
    quote = tdx(vectors, name)
    res = run(capsys, "evidence", "inspect", quote, "--json")
    assert res.code == 0, res
    out = res.json()
    q = parse_quote(quote.read_bytes())
    assert out["format"] == "raw tdx" and out["version"] == q.header.version
    assert out["mrtd"] == q.body.mr_td.hex()
    assert len(out["rtmrs"]) == 4
    assert out["trailing_bytes"] == q.trailing_bytes
    assert [c["sha256"] for c in out["pck_chain"]]
    assert "Intel SGX Root CA" in out["pck_chain"][-1]["subject"]
    if name == "spr-v4":
        assert out["trailing_bytes"] == 39


def test_inspect_envelope(
    capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path
) -> None:
    report, vcek = snp(vectors, "milan-v2")
    env = tmp_path / "ev.cbor"
    env.write_bytes(
        Evidence(tee="snp", report=report.read_bytes(), certs=(vcek.read_bytes(), b"junk")).encode()
    )
    res = run(capsys, "evidence", "inspect", env, "--json")
    assert res.code == 0, res
    out = res.json()
    assert out["format"] == "envelope" and out["tee"] == "snp"
    assert "SEV-VCEK" in out["certs"][0]["subject"]
    assert out["certs"][1]["error"] == "not a DER X.509 certificate"
    human = run(capsys, "evidence", "inspect", env)
    assert human.code == 0 and "format: envelope" in human.out


def test_inspect_malformed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\xa1\x61v")  # truncated CBOR map
    assert_rejected(run(capsys, "evidence", "inspect", junk), "cbor_truncated")


# --- usage errors ----------------------------------------------------------------------------


def test_usage_errors(capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path) -> None:
    report, vcek = snp(vectors, "milan-v2")
    quote = tdx(vectors, "spr-v4")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not json, not a cert")
    bad_rv = write_json(tmp_path / "bad.json", {"snp": [{"ProductName": "Milan"}]})
    v = ("evidence", "verify")
    assert_usage(run(capsys, *v, tmp_path / "missing.bin"), "no such file")
    assert_usage(run(capsys, *v, tmp_path), "is a directory")
    assert_usage(run(capsys, "evidence", "inspect", tmp_path / "missing"), "no such file")
    assert_usage(run(capsys, *v, report, "--at", "next tuesday"), "--at")
    assert_usage(run(capsys, *v, report, "--tee", "sgx"), "--tee")
    assert_usage(run(capsys, *v, report, "--trust-anchors", "system"), "--trust-anchors")
    assert_usage(
        run(capsys, *v, report, "--trust-anchors", f"mock:{tmp_path}/nope"), "--trust-anchors"
    )
    assert_usage(run(capsys, *v, report, "--reference-values", garbage), "not valid JSON")
    assert_usage(
        run(capsys, *v, report, "--reference-values", bad_rv),
        "ReferenceValues.snp[0].TrustedMeasurement",
    )
    assert_usage(run(capsys, *v, report, "--reference-values", tmp_path / "x"), "no such file")
    assert_usage(run(capsys, *v, report, "--vcek", garbage), "--vcek")
    assert_usage(run(capsys, *v, report, "--vcek", tmp_path / "nope.der"), "--vcek")
    assert_usage(run(capsys, *v, report, "--vcek", vcek, "--cert-chain", garbage), "--cert-chain")
    assert_usage(run(capsys, *v, report, "--tee", "tdx"), "--tee tdx")
    assert_usage(run(capsys, *v, quote, "--vcek", vcek), "SNP only")
    assert_usage(run(capsys, *v, report, "--vcek", vcek, "--collateral", garbage), "TDX")
    assert_usage(run(capsys, *v, quote, "--collateral", garbage), "--collateral")
    assert_usage(run(capsys, *v), "FILE")
    assert_usage(run(capsys, "evidence"), "COMMAND")
    assert_usage(run(capsys, "evidence", "frobnicate"), "frobnicate")


def test_oversized_input_is_a_size_rejection(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"\xa0" * (2 * 1024 * 1024))
    assert_rejected(run(capsys, "evidence", "verify", big), "size_limit")


# --- mock-tee --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mock_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cli-mock") / "tee"
    parser = argparse.ArgumentParser(prog="concord")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["mock-tee", "init", str(base), "--product", "Milan"])
    assert args.func(args) == 0
    return base


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_mock_round_trip_with_policy(
    capsys: pytest.CaptureFixture[str], mock_dir: Path, tmp_path: Path, tee: str
) -> None:
    import hashlib

    policy = tmp_path / "policy"
    policy.write_bytes(b"the workload policy")
    out = tmp_path / f"{tee}.cbor"
    rd = "ab" * 64
    res = run(
        capsys,
        *("mock-tee", "evidence", mock_dir, "--tee", tee, "--policy", policy),
        *("--report-data", rd, "-o", out),
    )
    assert res.code == 0, res
    assert Evidence.decode(out.read_bytes()).tee == tee
    res = run(
        capsys,
        *("evidence", "verify", out, "--trust-anchors", f"mock:{mock_dir}"),
        *("--reference-values", mock_dir / "reference-values.json", "--json"),
    )
    assert res.code == 0, res
    got = res.json()
    digest = hashlib.sha256(b"the workload policy").hexdigest()
    assert got["report_data"] == rd and got["policy_checked"] is True
    if tee == "snp":
        assert got["host_data"] == digest and got["product"] == "Milan"
    else:
        assert got["mrconfigid"] == digest + "00" * 16 and got["tcb_status"] == "UpToDate"
    # the same evidence is refused under the production roots
    res = run(capsys, "evidence", "verify", out, "--json")
    assert res.code == 1 and res.json()["reason"] in (
        "certificate_signature",
        "untrusted_root",
        "chain",
    )


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_mock_round_trip_with_host_data(
    capsys: pytest.CaptureFixture[str], mock_dir: Path, tmp_path: Path, tee: str
) -> None:
    out = tmp_path / "ev.cbor"
    host_data = "5a" * 32
    res = run(
        capsys, "mock-tee", "evidence", mock_dir, "--tee", tee, "--host-data", host_data, "-o", out
    )
    assert res.code == 0, res
    res = run(
        capsys,
        *("evidence", "verify", out, "--trust-anchors", f"mock:{mock_dir}", "--json"),
        *("--reference-values", mock_dir / "reference-values.json"),
    )
    assert res.code == 0, res
    got = res.json()
    assert got["report_data"] == "00" * 64
    assert (got["host_data"] if tee == "snp" else got["mrconfigid"][:64]) == host_data


def test_mock_tee_usage_errors(
    capsys: pytest.CaptureFixture[str], mock_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    ev = ("mock-tee", "evidence")
    assert_usage(run(capsys, "mock-tee", "init", mock_dir), "already holds a mock TEE")
    assert_usage(run(capsys, "mock-tee", "init", tmp_path / "x", "--product", "Naples"), "Naples")
    assert_usage(run(capsys, *ev, mock_dir, "--tee", "snp", "--host-data", "00" * 31, "-o", out))
    assert_usage(run(capsys, *ev, mock_dir, "--tee", "snp", "--host-data", "00" * 48, "-o", out))
    assert_usage(run(capsys, *ev, mock_dir, "--tee", "snp", "--report-data", "zz", "-o", out))
    assert_usage(run(capsys, *ev, mock_dir, "--tee", "snp"), "-o")
    assert_usage(
        run(
            capsys,
            *ev,
            mock_dir,
            "--tee",
            "snp",
            "--policy",
            out,
            "--host-data",
            "00" * 32,
            "-o",
            out,
        ),
        "not allowed with",
    )
    assert_usage(
        run(capsys, *ev, mock_dir, "--tee", "snp", "--policy", tmp_path / "nope", "-o", out)
    )
    assert_usage(run(capsys, *ev, tmp_path / "empty", "--tee", "tdx", "-o", out), "mock")
    assert not out.exists()


def test_mock_tee_init_force(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = tmp_path / "tee"
    assert run(capsys, "mock-tee", "init", base).code == 0
    first = (base / "mock.json").read_text()
    assert run(capsys, "mock-tee", "init", base).code == 2
    assert (base / "mock.json").read_text() == first
    assert run(capsys, "mock-tee", "init", base, "--force").code == 0
    assert (base / "mock.json").read_text() != first


# --- through the real `concord` command ------------------------------------------------------


def test_concord_subprocess_vectors(vectors: Path, tmp_path: Path) -> None:
    report, vcek = snp(vectors, "milan-v2")
    res = concord("evidence", "verify", report, "--vcek", vcek, "--at", "2024-06-01", "--json")
    assert res.code == 0, res
    assert res.json()["verified"] is True and res.json()["product"] == "Milan"

    debug, debug_vcek = snp(vectors, "milan-v2-debug")
    refs = write_json(tmp_path / "rv.json", snp_reference(debug))
    res = concord("evidence", "verify", debug, "--vcek", debug_vcek, "--reference-values", refs)
    assert_rejected(res, "debug")

    res = concord(
        *("evidence", "verify", tdx(vectors, "uptodate-v4")),
        *("--collateral", vectors / "tdx" / "uptodate-v4.collateral.json"),
        *("--at", UPTODATE_AT, "--json"),
    )
    assert res.code == 0, res
    assert res.json()["tcb_status"] == "UpToDate"

    res = concord(
        *("evidence", "verify", tdx(vectors, "outdated-v5")),
        *("--collateral", vectors / "tdx" / "outdated-v5.collateral.json"),
        *("--at", OUTDATED_AT),
    )
    assert_rejected(res, "tcb_status")

    res = concord("evidence", "inspect", tdx(vectors, "spr-v4"), "--json")
    assert res.code == 0 and res.json()["tee"] == "tdx"

    assert_usage(concord("evidence", "verify", tmp_path / "missing"), "no such file")
    assert_usage(concord("evidence", "verify", report, "--at", "soon"), "--at")


def test_concord_subprocess_mock_round_trip(tmp_path: Path) -> None:
    base = tmp_path / "tee"
    res = concord("mock-tee", "init", base, "--product", "Genoa")
    assert res.code == 0, res
    assert f"mock:{base}" in res.out
    out = tmp_path / "ev.cbor"
    res = concord("mock-tee", "evidence", base, "--tee", "snp", "--host-data", "11" * 32, "-o", out)
    assert res.code == 0, res
    res = concord(
        *("evidence", "verify", out, "--trust-anchors", f"mock:{base}"),
        *("--reference-values", base / "reference-values.json", "--json"),
    )
    assert res.code == 0, res
    assert res.json()["product"] == "Genoa" and res.json()["host_data"] == "11" * 32
    assert_rejected(concord("evidence", "verify", out), "certificate_signature")


# --- evidence seen in the wild ------------------------------------------------------------------


def test_verify_without_references_reports_authenticity_only(
    capsys: pytest.CaptureFixture[str], vectors: Path
) -> None:
    """No --reference-values: no reference the user never gave is listed or judged."""
    report, vcek = snp(vectors, "milan-v2")
    tee_flags: list[list[str]] = [[], ["--tee", "snp"]]
    for tee in tee_flags:
        res = run(capsys, "evidence", "verify", report, "--vcek", vcek, "--at", "2024-06-01", *tee)
        assert res.code == 0, res
        assert "authenticity: verified" in res.out
        assert "reference_match: not checked" in res.out
        assert "Genoa" not in res.out and "no_matching_reference" not in res.out


def test_authentic_but_refused_reports_both_verdicts(
    capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path
) -> None:
    report, vcek = snp(vectors, "milan-v2")
    refs = write_json(
        tmp_path / "rv.json",
        {"snp": [{"ProductName": "Milan", "TrustedMeasurement": "00" * 48}]},
    )
    res = run(
        capsys,
        *("evidence", "verify", report, "--vcek", vcek, "--at", "2024-06-01"),
        *("--reference-values", refs),
    )
    assert_rejected(res, "measurement")
    assert "authentic; refused by the reference values" in res.out
    # a broken chain is not "authentic"
    res = run(
        capsys,
        *("evidence", "verify", report, "--vcek", vectors / "snp" / "tampered-new.vcek.der"),
        *("--at", "2024-06-01", "--reference-values", refs),
    )
    assert res.code == 1 and "authentic;" not in res.out


def test_report_with_a_vcek_of_another_product(
    capsys: pytest.CaptureFixture[str], vectors: Path
) -> None:
    """A Milan/Genoa report paired with the real Turin VCEK: say so, not 'MBZ violation'."""
    report, _ = snp(vectors, "milan-v2")
    res = run(
        capsys,
        *("evidence", "verify", report, "--vcek", vectors / "snp" / "turin.vcek.der"),
        *("--at", "2025-06-01"),
    )
    assert_rejected(res, "certificate_product")
    assert "Turin" in res.out and "another product" in res.out
    assert "mbz" not in res.out.lower()
