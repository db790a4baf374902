"""SEV-SNP evidence as seen in the wild: reserved PLATFORM_INFO bits, wrong-product VCEKs.

Built on the real Milan vector (authentic report + VCEK under the production anchors); where a
field must differ, the authenticated facts are changed after verification (policy is the code
under test) or a byte-exact mock report is signed for the whole path.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.anchors import TrustAnchors
from attestation.errors import BindingMismatch
from attestation.mock.snp import MockAmd, create_mock_amd
from attestation.reference import parse_snp_reference
from attestation.snp.policy import PlatformInfoViolation, SnpFacts, check_reference
from attestation.snp.report import decode_platform_info, parse_report
from attestation.snp.verify import CertificateProductMismatch, authenticate_snp, verify_snp
from tests.unit.snp_helpers import (  # noqa: F401  (fixtures)
    mock_amd_anchors,
    production_fixture,
    snp_vectors_fixture,
)

AT = datetime(2024, 6, 1, tzinfo=UTC)
TURIN_PLATFORM_INFO = 0x67  # seen on a genuine Turin report: SMT, TSME, ECC, bit 5 and bit 6


@pytest.fixture(scope="module")
def milan_facts(snp: Path, production: TrustAnchors) -> SnpFacts:
    report = (snp / "milan-v2.report.bin").read_bytes()
    vcek = (snp / "milan-v2.vcek.der").read_bytes()
    return authenticate_snp(report, [vcek], production, AT).facts


def _with_platform_info(facts: SnpFacts, raw: int) -> SnpFacts:
    report = replace(facts.report, platform_info=decode_platform_info(raw))
    return replace(facts, report=report)


def _reference(facts: SnpFacts, **extra: object) -> object:
    return parse_snp_reference(
        {
            "ProductName": "Milan",
            "TrustedMeasurement": facts.report.measurement.hex(),
            "AllowedVMPLs": [facts.report.vmpl],
            **extra,
        },
        "ref",
    )


def test_reserved_platform_bit_admitted_by_default(milan_facts: SnpFacts) -> None:
    facts = _with_platform_info(milan_facts, TURIN_PLATFORM_INFO)
    assert facts.report.platform_info.unknown_names == ("Bit6",)
    check_reference(facts, _reference(facts))  # type: ignore[arg-type]


@pytest.mark.parametrize("forbid", [{"Bit6": False}, {"UnknownBits": False}])
def test_reserved_platform_bit_refused_when_the_reference_forbids_it(
    milan_facts: SnpFacts, forbid: dict[str, bool]
) -> None:
    facts = _with_platform_info(milan_facts, TURIN_PLATFORM_INFO)
    ref = _reference(facts, PlatformInfo=forbid)
    with pytest.raises(PlatformInfoViolation, match="Bit6"):
        check_reference(facts, ref)  # type: ignore[arg-type]
    # a reference forbidding another unnamed bit does not refuse bit 6
    check_reference(facts, _reference(facts, PlatformInfo={"Bit7": False}))  # type: ignore[arg-type]


def test_unnamed_bit_keys_validated() -> None:
    from attestation.errors import InvalidReferenceValues

    for bad in ({"Bit0": False}, {"Bit64": False}, {"Bits6": False}):
        with pytest.raises(InvalidReferenceValues):
            parse_snp_reference(
                {"ProductName": "Milan", "TrustedMeasurement": "00" * 48, "PlatformInfo": bad},
                "ref",
            )


def test_signed_turin_report_with_bit6_verifies(
    tmp_path_factory: pytest.TempPathFactory, production: TrustAnchors
) -> None:
    turin: MockAmd = create_mock_amd(tmp_path_factory.mktemp("turin"), "Turin")
    measurement, host, rd = b"\x11" * 48, b"\x22" * 32, b"\x33" * 64
    report = turin.make_report(
        measurement=measurement,
        host_data=host,
        report_data=rd,
        platform_info=TURIN_PLATFORM_INFO,
    )
    ref = parse_snp_reference(
        {"ProductName": "Turin", "TrustedMeasurement": measurement.hex()}, "r"
    )
    anchors = mock_amd_anchors(turin, production)
    res = verify_snp(report, turin.certs("vcek"), anchors, [ref], rd, datetime.now(UTC))
    assert res.report.platform_info.raw == TURIN_PLATFORM_INFO


def test_real_turin_vcek_for_a_milan_report(snp: Path, production: TrustAnchors) -> None:
    report = (snp / "milan-v2.report.bin").read_bytes()
    turin_vcek = (snp / "turin.vcek.der").read_bytes()
    with pytest.raises(CertificateProductMismatch) as info:
        authenticate_snp(report, [turin_vcek], production, datetime(2025, 6, 1, tzinfo=UTC))
    assert isinstance(info.value, BindingMismatch)
    assert info.value.reason == "certificate_product"
    assert "Turin" in info.value.detail and "another product" in info.value.detail


def test_v3_report_cpuid_names_the_other_product(
    tmp_path_factory: pytest.TempPathFactory, production: TrustAnchors
) -> None:
    """A Genoa report (CPUID) with a Turin VCEK: the CPUID and the certificate disagree."""
    genoa = create_mock_amd(tmp_path_factory.mktemp("genoa"), "Genoa")
    turin = create_mock_amd(tmp_path_factory.mktemp("turin2"), "Turin")
    report = genoa.make_report(measurement=bytes(48), host_data=bytes(32), report_data=bytes(64))
    assert parse_report(report).cpuid_product == "Genoa"
    anchors = mock_amd_anchors(turin, production)
    with pytest.raises(CertificateProductMismatch, match="report is from Genoa"):
        authenticate_snp(report, turin.certs("vcek"), anchors, datetime.now(UTC))
