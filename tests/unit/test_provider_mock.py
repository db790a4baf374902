"""The software TEE: layout written by init, evidence that verifies only under its own anchors."""

from __future__ import annotations

import hashlib
import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation import anchors
from attestation.errors import ChainRejected, MeasurementMismatch, ReportDataMismatch
from attestation.evidence import Evidence
from attestation.providers import mock as mock_tee
from attestation.providers.base import ProviderError
from attestation.providers.mock import MockProvider
from attestation.reference import ReferenceValues, parse_reference_values
from attestation.snp.report import parse_report
from attestation.verify import Verifier

POLICY = b'{"workload": "web", "version": 3}'
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def mock_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("mock-tee") / "tee"
    mock_tee.init(base, "Milan")
    return base


def _refs(base: Path) -> ReferenceValues:
    return parse_reference_values(json.loads((base / mock_tee.REFERENCE_FILE).read_text()))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- init ------------------------------------------------------------------------------------


@pytest.mark.parametrize("product", ["Milan", "Genoa", "Turin"])
def test_init_writes_the_layout(tmp_path: Path, product: str) -> None:
    base = tmp_path / "tee"
    returned = mock_tee.init(base, product)
    assert _mode(base) == 0o700
    amd = {"product", "ark.pem", "ask.pem", "asvk.pem", "vcek.pem", "vlek.pem"}
    amd_keys = {f"{n}-key.pem" for n in ("ark", "ask", "asvk", "vcek", "vlek")}
    assert {p.name for p in (base / "amd").iterdir()} == amd | amd_keys
    assert (base / "amd" / "product").read_text().strip() == product
    for name in amd_keys:
        assert _mode(base / "amd" / name) == 0o600, name
    intel = {p.name for p in (base / "intel").iterdir()}
    assert {"root.pem", "pck-ca.pem", "pck.pem", "tcb-signing.pem", "qe.json"} <= intel
    intel_keys = {n for n in intel if n.endswith("-key.pem")}
    assert {"root-key.pem", "pck-key.pem", "attestation-key.pem"} <= intel_keys
    for name in intel_keys:
        assert _mode(base / "intel" / name) == 0o600, name

    info = json.loads((base / mock_tee.MOCK_FILE).read_text())
    assert info["product"] == product
    assert len(bytes.fromhex(info["snp_measurement"])) == 48
    assert len(bytes.fromhex(info["tdx_mrtd"])) == 48

    written = json.loads((base / mock_tee.REFERENCE_FILE).read_text())
    assert written == returned
    refs = parse_reference_values(written)
    (snp,) = refs.snp
    (tdx,) = refs.tdx
    assert snp.product == product
    assert snp.measurement.hex() == info["snp_measurement"]
    assert (snp.minimum_tcb.fmc is not None) == (product == "Turin")
    assert tdx.mr_td.hex() == info["tdx_mrtd"]
    assert tdx.accepted_tcb_statuses == ("UpToDate",)
    assert anchors.mock(base).amd[product].product == product


def test_two_inits_are_different_tees(tmp_path: Path) -> None:
    a = mock_tee.init(tmp_path / "a", "Genoa")
    b = mock_tee.init(tmp_path / "b", "Genoa")
    assert a["snp"][0]["TrustedMeasurement"] != b["snp"][0]["TrustedMeasurement"]
    assert anchors.mock(tmp_path / "a").intel_root != anchors.mock(tmp_path / "b").intel_root


# --- evidence --------------------------------------------------------------------------------


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_mock_evidence_verifies_under_mock_anchors(mock_dir: Path, tee: str) -> None:
    provider = MockProvider(mock_dir, POLICY, tee=tee)
    assert provider.tee == tee
    assert provider.policy_hash == hashlib.sha256(POLICY).digest()
    report_data = bytes(range(64))
    ev = provider.evidence(report_data)
    assert ev.tee == tee
    wire = ev.encode()
    assert Evidence.decode(wire) == ev
    res = Verifier(anchors.mock(mock_dir)).verify(wire, _refs(mock_dir), report_data, NOW)
    assert res.tee == tee
    assert res.policy_hash == hashlib.sha256(POLICY).digest()
    assert res.report_data == report_data
    assert res.measurement == provider.measurement
    assert res.reference_index == 0
    if tee == "snp":
        assert parse_report(ev.report).host_data == hashlib.sha256(POLICY).digest()
        assert res.detail.product == "Milan" and res.detail.signer == "vcek"
    else:
        assert res.detail.mr_config_id == hashlib.sha256(POLICY).digest() + bytes(16)
        assert res.detail.tcb_status == "UpToDate"


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_mock_evidence_wrong_report_data(mock_dir: Path, tee: str) -> None:
    ev = MockProvider(mock_dir, POLICY, tee=tee).evidence(bytes(64))
    with pytest.raises(ReportDataMismatch):
        Verifier(anchors.mock(mock_dir)).verify(ev, _refs(mock_dir), b"\x01" * 64, NOW)


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_mock_evidence_of_another_tee_fails_measurement(
    mock_dir: Path, tmp_path: Path, tee: str
) -> None:
    other = tmp_path / "other"
    mock_tee.init(other, "Milan")
    # same anchors (copy the roots and keys), different launch measurement
    for sub in ("amd", "intel"):
        for f in (mock_dir / sub).iterdir():
            (other / sub / f.name).write_bytes(f.read_bytes())
    ev = MockProvider(other, POLICY, tee=tee).evidence(bytes(64))
    with pytest.raises(MeasurementMismatch):
        Verifier(anchors.mock(mock_dir)).verify(ev, _refs(mock_dir), bytes(64), NOW)


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_mock_evidence_rejected_under_production_anchors(mock_dir: Path, tee: str) -> None:
    ev = MockProvider(mock_dir, POLICY, tee=tee).evidence(bytes(64))
    with pytest.raises(ChainRejected):
        Verifier(anchors.production()).verify(ev, _refs(mock_dir), bytes(64), NOW)


def test_real_snp_evidence_rejected_under_mock_anchors(mock_dir: Path, vectors: Path) -> None:
    report = (vectors / "snp" / "milan-v2.report.bin").read_bytes()
    vcek = (vectors / "snp" / "milan-v2.vcek.der").read_bytes()
    ev = Evidence(tee="snp", report=report, certs=(vcek,))
    refs = parse_reference_values(
        {
            "snp": [
                {
                    "ProductName": "Milan",
                    "TrustedMeasurement": parse_report(report).measurement.hex(),
                }
            ]
        }
    )
    at = datetime(2024, 6, 1, tzinfo=UTC)
    # sanity: the same evidence and references pass under production anchors
    assert Verifier(anchors.production()).verify(ev, refs, None, at).tee == "snp"
    with pytest.raises(ChainRejected):
        Verifier(anchors.mock(mock_dir)).verify(ev, refs, None, at)


def test_real_tdx_evidence_rejected_under_mock_anchors(mock_dir: Path, vectors: Path) -> None:
    from attestation.tdx.collateral_model import load_collateral_json
    from attestation.tdx.quote import parse_quote

    quote = (vectors / "tdx" / "uptodate-v4.quote.bin").read_bytes()
    collateral = load_collateral_json(vectors / "tdx" / "uptodate-v4.collateral.json")
    ev = Evidence(tee="tdx", report=quote, collateral=collateral.to_cbor_map())
    refs = parse_reference_values({"tdx": [{"MrTd": parse_quote(quote).body.mr_td.hex()}]})
    at = datetime(2025, 7, 1, tzinfo=UTC)
    assert Verifier(anchors.production()).verify(ev, refs, None, at).tee == "tdx"
    with pytest.raises(ChainRejected):
        Verifier(anchors.mock(mock_dir)).verify(ev, refs, None, at)


def test_tdx_collateral_is_reused(mock_dir: Path) -> None:
    provider = MockProvider(mock_dir, POLICY, tee="tdx")
    a = provider.evidence(bytes(64))
    b = provider.evidence(b"\x01" * 64)
    assert a.collateral == b.collateral
    assert a.report != b.report


# --- errors ----------------------------------------------------------------------------------


def test_unknown_tee(mock_dir: Path) -> None:
    with pytest.raises(ProviderError, match="snp or tdx"):
        MockProvider(mock_dir, POLICY, tee="sgx")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match=r"mock\.json"):
        MockProvider(tmp_path / "nothing", POLICY)


def test_directory_without_hierarchy(tmp_path: Path, mock_dir: Path) -> None:
    (tmp_path / mock_tee.MOCK_FILE).write_text((mock_dir / mock_tee.MOCK_FILE).read_text())
    with pytest.raises(ProviderError, match="mock TEE in"):
        MockProvider(tmp_path, POLICY, tee="snp")
    with pytest.raises(ProviderError, match="mock TEE in"):
        MockProvider(tmp_path, POLICY, tee="tdx")


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_report_data_must_be_64_bytes(mock_dir: Path, size: int) -> None:
    for tee in ("snp", "tdx"):
        with pytest.raises(ValueError, match="64 bytes"):
            MockProvider(mock_dir, POLICY, tee=tee).evidence(bytes(size))
