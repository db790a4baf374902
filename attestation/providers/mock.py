"""The software TEE: byte-exact SNP reports and TDX quotes signed by a mock vendor hierarchy.

``init(DIR)`` writes a mock AMD hierarchy (``DIR/amd``), a mock Intel hierarchy (``DIR/intel``),
the mock platform's launch measurements (``DIR/mock.json``) and matching reference values
(``DIR/reference-values.json``). A :class:`MockProvider` then plays one CVM launched with a given
policy: its HOST_DATA / MRCONFIGID carries the policy hash, exactly as on real hardware. The
verifier runs the same code for mock and real evidence; only the trust anchors differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from attestation.evidence import Evidence
from attestation.mock.snp import MockAmd, create_mock_amd, load_mock_amd
from attestation.mock.tdx import MockIntel, create_mock_intel, load_mock_intel
from attestation.providers.base import ProviderError

MOCK_FILE = "mock.json"
REFERENCE_FILE = "reference-values.json"
COLLATERAL_LIFETIME = timedelta(hours=12)


def init(directory: str | Path, product: str = "Genoa") -> dict[str, Any]:
    """Create a mock TEE in ``directory``; returns its reference values (as written)."""
    base = Path(directory)
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    amd = create_mock_amd(base, product)
    create_mock_intel(base)
    info = {
        "snp_measurement": secrets.token_bytes(48).hex(),
        "tdx_mrtd": secrets.token_bytes(48).hex(),
        "product": product,
    }
    (base / MOCK_FILE).write_text(json.dumps(info, indent=2) + "\n")
    tcb = amd.tcb
    min_tcb: dict[str, int] = {
        "Bootloader": tcb.bootloader,
        "TEE": tcb.tee,
        "SNP": tcb.snp,
        "Microcode": tcb.microcode,
    }
    if tcb.fmc is not None:
        min_tcb["FMC"] = tcb.fmc
    refs = {
        "snp": [
            {
                "ProductName": product,
                "TrustedMeasurement": info["snp_measurement"],
                "MinimumTCB": min_tcb,
            }
        ],
        "tdx": [{"MrTd": info["tdx_mrtd"], "AcceptedTcbStatuses": ["UpToDate"]}],
    }
    (base / REFERENCE_FILE).write_text(json.dumps(refs, indent=2) + "\n")
    return refs


def load_info(directory: str | Path) -> dict[str, Any]:
    try:
        info: dict[str, Any] = json.loads((Path(directory) / MOCK_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ProviderError(f"mock TEE in {directory}: cannot read {MOCK_FILE} ({exc})") from None
    return info


class MockProvider:
    """One mock CVM: fixed launch measurement, HOST_DATA/MRCONFIGID = SHA-256(policy)."""

    def __init__(self, directory: str | Path, policy: bytes, *, tee: str = "snp") -> None:
        if tee not in ("snp", "tdx"):
            raise ProviderError(f"mock TEE type must be snp or tdx, got {tee!r}")
        self.directory = Path(directory)
        self._tee = tee
        self.policy_hash = hashlib.sha256(policy).digest()
        info = load_info(directory)
        self._amd: MockAmd | None = None
        self._intel: MockIntel | None = None
        try:
            if tee == "snp":
                self._amd = load_mock_amd(self.directory)
                self.measurement = bytes.fromhex(info["snp_measurement"])
            else:
                self._intel = load_mock_intel(self.directory)
                self.measurement = bytes.fromhex(info["tdx_mrtd"])
        except (OSError, KeyError, ValueError) as exc:
            raise ProviderError(f"mock TEE in {directory}: {exc}") from None
        self._collateral: tuple[datetime, dict[str, bytes]] | None = None
        self._lock = threading.Lock()

    @property
    def tee(self) -> str:
        return self._tee

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise ValueError("report data must be exactly 64 bytes")
        if self._amd is not None:
            report = self._amd.make_report(
                measurement=self.measurement, host_data=self.policy_hash, report_data=report_data
            )
            return Evidence(tee="snp", report=report, certs=self._amd.certs("vcek"))
        assert self._intel is not None
        quote = self._intel.make_quote(
            mr_td=self.measurement,
            mr_config_id=self.policy_hash + bytes(16),
            report_data=report_data,
        )
        return Evidence(tee="tdx", report=quote, collateral=self._fresh_collateral())

    def _fresh_collateral(self) -> dict[str, bytes]:
        """Mock TCB info / QE identity, re-issued well before they expire."""
        assert self._intel is not None
        now = datetime.now(UTC)
        with self._lock:
            if self._collateral is None or now - self._collateral[0] > COLLATERAL_LIFETIME / 2:
                self._collateral = (now, self._intel.make_collateral(now).to_cbor_map())
            return self._collateral[1]
