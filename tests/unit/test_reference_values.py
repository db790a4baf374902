"""Reference values: strict parsing of every field; errors name the JSON path and the reason."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from attestation.errors import InvalidReferenceValues
from attestation.reference import (
    SNP_PLATFORM_BITS,
    ReferenceValues,
    SnpGuestPolicy,
    SnpReference,
    SnpTcb,
    TdxReference,
    parse_reference_values,
)

M48 = "ab" * 48
M48B = "cd" * 48
CHIP = "11" * 64
PIID = "22" * 16

FULL_SNP: dict[str, Any] = {
    "ProductName": "Turin",
    "TrustedMeasurement": M48,
    "MinimumTCB": {"Bootloader": 1, "TEE": 2, "SNP": 3, "Microcode": 4, "FMC": 5},
    "MinimumLaunchTCB": {"Bootloader": 6, "TEE": 7, "SNP": 8, "Microcode": 9},
    "GuestPolicy": {
        "ABIMajor": 1,
        "ABIMinor": 55,
        "SMT": False,
        "MigrateMA": True,
        "Debug": True,
        "CXLAllow": False,
        "SingleSocket": True,
        "MemAES256XTS": True,
        "RAPLDis": False,
        "CipherTextHiding": True,
        "PageSwapDisable": False,
    },
    "PlatformInfo": {"SMTEnabled": False, "ECCEnabled": True},
    "AllowedChipIDs": [CHIP, "33" * 64],
    "AllowVLEK": True,
    "AllowedVMPLs": [0, 3],
}

FULL_TDX: dict[str, Any] = {
    "MrTd": M48,
    "MrSeam": M48B,
    "Rtmrs": [M48, None, M48B, None],
    "Xfam": "e702060000000000",
    "TdAttributes": "0000001000000000",
    "MinimumTeeTcbSvn": "03000400000000000000000000000000",
    "MinimumQeSvn": 8,
    "MinimumPceSvn": 11,
    "AllowedPIIDs": [PIID],
    "AcceptedTcbStatuses": ["UpToDate", "SWHardeningNeeded"],
}


def test_every_snp_field() -> None:
    rv = parse_reference_values({"snp": [FULL_SNP]})
    assert rv.tdx == ()
    (ref,) = rv.snp
    assert ref == SnpReference(
        product="Turin",
        measurement=bytes.fromhex(M48),
        minimum_tcb=SnpTcb(bootloader=1, tee=2, snp=3, microcode=4, fmc=5),
        minimum_launch_tcb=SnpTcb(bootloader=6, tee=7, snp=8, microcode=9),
        guest_policy=SnpGuestPolicy(
            abi_major=1,
            abi_minor=55,
            allowed=frozenset({"MigrateMA", "Debug"}),
            required=frozenset({"SingleSocket", "MemAES256XTS", "CipherTextHiding"}),
        ),
        platform_allowed=frozenset(SNP_PLATFORM_BITS) - {"SMTEnabled"},
        allowed_chip_ids=(bytes.fromhex(CHIP), bytes.fromhex("33" * 64)),
        allow_vlek=True,
        allowed_vmpls=(0, 3),
    )


def test_snp_defaults() -> None:
    (ref,) = parse_reference_values(
        {"snp": [{"ProductName": "Milan", "TrustedMeasurement": M48}]}
    ).snp
    assert ref.minimum_tcb == SnpTcb()
    assert ref.minimum_launch_tcb is None
    assert ref.guest_policy == SnpGuestPolicy()  # SMT allowed, Debug forbidden
    assert "Debug" not in ref.guest_policy.allowed
    assert ref.platform_allowed == frozenset(SNP_PLATFORM_BITS)
    assert ref.allowed_chip_ids == ()
    assert ref.allow_vlek is False
    assert ref.allowed_vmpls == (0,)


def test_every_tdx_field() -> None:
    (ref,) = parse_reference_values({"tdx": [FULL_TDX]}).tdx
    assert ref == TdxReference(
        mr_td=bytes.fromhex(M48),
        mr_seam=bytes.fromhex(M48B),
        rtmrs=(bytes.fromhex(M48), None, bytes.fromhex(M48B), None),
        xfam=bytes.fromhex("e702060000000000"),
        td_attributes=bytes.fromhex("0000001000000000"),
        minimum_tee_tcb_svn=bytes.fromhex("03000400000000000000000000000000"),
        minimum_qe_svn=8,
        minimum_pce_svn=11,
        allowed_piids=(bytes.fromhex(PIID),),
        accepted_tcb_statuses=("UpToDate", "SWHardeningNeeded"),
    )


def test_tdx_defaults() -> None:
    (ref,) = parse_reference_values({"tdx": [{"MrTd": M48}]}).tdx
    assert ref == TdxReference(mr_td=bytes.fromhex(M48))
    assert ref.accepted_tcb_statuses == ("UpToDate",)
    assert ref.rtmrs == (None, None, None, None)


def test_empty_and_both() -> None:
    assert parse_reference_values({}) == ReferenceValues()
    rv = parse_reference_values({"snp": [FULL_SNP, FULL_SNP], "tdx": [FULL_TDX]})
    assert len(rv.snp) == 2 and len(rv.tdx) == 1
    assert rv.for_tee("snp") == rv.snp and rv.for_tee("tdx") == rv.tdx


def test_parse_does_not_mutate_input() -> None:
    doc = {"snp": [copy.deepcopy(FULL_SNP)], "tdx": [copy.deepcopy(FULL_TDX)]}
    before = copy.deepcopy(doc)
    parse_reference_values(doc)
    assert doc == before


def _snp(**change: Any) -> dict[str, Any]:
    ref = {"ProductName": "Milan", "TrustedMeasurement": M48}
    ref.update(change)
    return {"snp": [ref]}


def _tdx(**change: Any) -> dict[str, Any]:
    ref: dict[str, Any] = {"MrTd": M48}
    ref.update(change)
    return {"tdx": [{"MrTd": M48}, ref]}


NEGATIVE: list[tuple[Any, str, str]] = [
    # top level
    (None, "ReferenceValues", "must be a JSON object"),
    ([], "ReferenceValues", "must be a JSON object"),
    ({"sgx": []}, "ReferenceValues.sgx", "unknown field"),
    ({"snp": {}}, "ReferenceValues.snp", "must be a JSON array"),
    ({"tdx": "x"}, "ReferenceValues.tdx", "must be a JSON array"),
    ({"snp": [1]}, "ReferenceValues.snp[0]", "must be a JSON object"),
    # SNP
    (_snp(Foo=1), "ReferenceValues.snp[0].Foo", "unknown field"),
    (_snp(ProductName="Naples"), "ReferenceValues.snp[0].ProductName", "must be one of"),
    (_snp(ProductName=None), "ReferenceValues.snp[0].ProductName", "must be one of"),
    ({"snp": [{"ProductName": "Milan"}]}, "ReferenceValues.snp[0].TrustedMeasurement", "required"),
    (_snp(TrustedMeasurement="ab" * 47), "ReferenceValues.snp[0].TrustedMeasurement", "48 bytes"),
    (_snp(TrustedMeasurement="AB" * 48), "ReferenceValues.snp[0].TrustedMeasurement", "lowercase"),
    (_snp(TrustedMeasurement="zz" * 48), "ReferenceValues.snp[0].TrustedMeasurement", "not valid"),
    (
        _snp(TrustedMeasurement=" ".join(["ab"] * 48)),
        "ReferenceValues.snp[0].TrustedMeasurement",
        "not valid hex",
    ),
    (_snp(TrustedMeasurement="ab" * 48 + "a"), "ReferenceValues.snp[0].TrustedMeasurement", "hex"),
    (_snp(TrustedMeasurement=5), "ReferenceValues.snp[0].TrustedMeasurement", "hex string"),
    (_snp(MinimumTCB=[]), "ReferenceValues.snp[0].MinimumTCB", "must be a JSON object"),
    (_snp(MinimumTCB={"SNP": 256}), "ReferenceValues.snp[0].MinimumTCB.SNP", "[0, 255]"),
    (_snp(MinimumTCB={"TEE": -1}), "ReferenceValues.snp[0].MinimumTCB.TEE", "[0, 255]"),
    (
        _snp(MinimumTCB={"Bootloader": True}),
        "ReferenceValues.snp[0].MinimumTCB.Bootloader",
        "integer",
    ),
    (_snp(MinimumTCB={"Microcode": 1.0}), "ReferenceValues.snp[0].MinimumTCB.Microcode", "integer"),
    (_snp(MinimumTCB={"FMC": 1}), "ReferenceValues.snp[0].MinimumTCB.FMC", "only Turin"),
    (_snp(MinimumTCB={"UCode": 1}), "ReferenceValues.snp[0].MinimumTCB.UCode", "unknown field"),
    (_snp(MinimumLaunchTCB={"SNP": "1"}), "ReferenceValues.snp[0].MinimumLaunchTCB.SNP", "integer"),
    (_snp(GuestPolicy={"Debug": 1}), "ReferenceValues.snp[0].GuestPolicy.Debug", "true or false"),
    (
        _snp(GuestPolicy={"ABIMajor": 300}),
        "ReferenceValues.snp[0].GuestPolicy.ABIMajor",
        "[0, 255]",
    ),
    (_snp(GuestPolicy={"NoSMT": True}), "ReferenceValues.snp[0].GuestPolicy.NoSMT", "unknown"),
    (_snp(GuestPolicy="Debug"), "ReferenceValues.snp[0].GuestPolicy", "must be a JSON object"),
    (_snp(PlatformInfo={"TSME": True}), "ReferenceValues.snp[0].PlatformInfo.TSME", "unknown"),
    (
        _snp(PlatformInfo={"ECCEnabled": "yes"}),
        "ReferenceValues.snp[0].PlatformInfo.ECCEnabled",
        "true or false",
    ),
    (_snp(AllowedChipIDs=CHIP), "ReferenceValues.snp[0].AllowedChipIDs", "JSON array"),
    (_snp(AllowedChipIDs=[CHIP, "11"]), "ReferenceValues.snp[0].AllowedChipIDs[1]", "64 bytes"),
    (_snp(AllowVLEK="true"), "ReferenceValues.snp[0].AllowVLEK", "true or false"),
    (_snp(AllowedVMPLs=[]), "ReferenceValues.snp[0].AllowedVMPLs", "must not be empty"),
    (_snp(AllowedVMPLs=[0, 4]), "ReferenceValues.snp[0].AllowedVMPLs[1]", "[0, 3]"),
    (_snp(AllowedVMPLs=0), "ReferenceValues.snp[0].AllowedVMPLs", "JSON array"),
    # TDX (second entry, so the index in the path matters)
    ({"tdx": [{"MrTd": M48}, {}]}, "ReferenceValues.tdx[1].MrTd", "required"),
    (_tdx(MrTd="ab" * 32), "ReferenceValues.tdx[1].MrTd", "48 bytes"),
    (_tdx(MrSeam=None), "ReferenceValues.tdx[1].MrSeam", "hex string"),
    (_tdx(Rtmrs=[M48] * 3), "ReferenceValues.tdx[1].Rtmrs", "exactly 4"),
    (_tdx(Rtmrs=[None, None, "00", None]), "ReferenceValues.tdx[1].Rtmrs[2]", "48 bytes"),
    (_tdx(Rtmrs={"0": M48}), "ReferenceValues.tdx[1].Rtmrs", "JSON array"),
    (_tdx(Xfam="e7020600"), "ReferenceValues.tdx[1].Xfam", "8 bytes"),
    (_tdx(TdAttributes="0X00000000000000"), "ReferenceValues.tdx[1].TdAttributes", "lowercase"),
    (_tdx(MinimumTeeTcbSvn="00" * 15), "ReferenceValues.tdx[1].MinimumTeeTcbSvn", "16 bytes"),
    (_tdx(MinimumQeSvn=65536), "ReferenceValues.tdx[1].MinimumQeSvn", "[0, 65535]"),
    (_tdx(MinimumPceSvn="11"), "ReferenceValues.tdx[1].MinimumPceSvn", "integer"),
    (_tdx(AllowedPIIDs=[PIID, "22" * 15]), "ReferenceValues.tdx[1].AllowedPIIDs[1]", "16 bytes"),
    (_tdx(AcceptedTcbStatuses=[]), "ReferenceValues.tdx[1].AcceptedTcbStatuses", "not be empty"),
    (
        _tdx(AcceptedTcbStatuses=["UpToDate", "uptodate"]),
        "ReferenceValues.tdx[1].AcceptedTcbStatuses[1]",
        "unknown TCB status",
    ),
    (
        _tdx(AcceptedTcbStatuses="UpToDate"),
        "ReferenceValues.tdx[1].AcceptedTcbStatuses",
        "JSON array",
    ),
    (_tdx(MrOwner=M48), "ReferenceValues.tdx[1].MrOwner", "unknown field"),
]


@pytest.mark.parametrize(("doc", "path", "why"), NEGATIVE, ids=[p for _, p, _ in NEGATIVE])
def test_invalid_reference_values(doc: Any, path: str, why: str) -> None:
    with pytest.raises(InvalidReferenceValues) as info:
        parse_reference_values(doc)
    assert info.value.path == path
    assert why in info.value.why
    assert str(info.value) == f"{path}: {info.value.why}"


def test_negative_case_count() -> None:
    assert len(NEGATIVE) >= 20


def test_custom_root_path() -> None:
    with pytest.raises(InvalidReferenceValues) as info:
        parse_reference_values({"snp": [{}]}, "manifest.ReferenceValues")
    assert info.value.path == "manifest.ReferenceValues.snp[0].ProductName"


def test_invalid_reference_values_is_not_an_evidence_rejection() -> None:
    from attestation.errors import EvidenceRejected

    assert issubclass(InvalidReferenceValues, ValueError)
    assert not issubclass(InvalidReferenceValues, EvidenceRejected)
