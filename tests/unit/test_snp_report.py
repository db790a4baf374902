"""SEV-SNP report parser and TCB decoding: real vectors field by field, and every strictness rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from attestation.errors import (
    MalformedEvidence,
    ReservedFieldNotZero,
    SizeLimitExceeded,
    UnsupportedVersion,
)
from attestation.reference import SnpTcb
from attestation.snp.report import (
    REPORT_SIZE,
    SIGNED_SIZE,
    UnsupportedSignatureAlgorithm,
    decode_platform_info,
    decode_policy,
    encode_policy,
    parse_report,
)
from attestation.snp.tcb import (
    UnknownProduct,
    decode_tcb,
    encode_tcb,
    product_from_cpuid,
    tcb_components,
)


@pytest.fixture(scope="module")
def milan(vectors: Path) -> bytes:
    return (vectors / "snp" / "milan-v2.report.bin").read_bytes()


@pytest.fixture(scope="module")
def vlek_v3(vectors: Path) -> bytes:
    return (vectors / "snp" / "vlek-v3.report.bin").read_bytes()


def _set(raw: bytes, off: int, value: bytes) -> bytes:
    out = bytearray(raw)
    out[off : off + len(value)] = value
    return bytes(out)


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


# --- real vectors ----------------------------------------------------------------------------


def test_milan_v2_fields(milan: bytes) -> None:
    r = parse_report(milan)
    assert r.raw == milan
    assert r.signed_bytes == milan[:SIGNED_SIZE] and len(r.signed_bytes) == 0x2A0
    assert r.version == 2
    assert r.guest_svn == 0
    assert r.policy.raw == 0x30000
    assert r.policy.flags == frozenset({"SMT"})
    assert (r.policy.abi_major, r.policy.abi_minor) == (0, 0)
    assert r.vmpl == 0
    assert r.signature_algo == 1
    assert r.signer == "vcek" and not r.mask_chip_key and not r.author_key_en
    assert r.platform_info.flags == frozenset({"SMTEnabled"}) and r.platform_info.unknown_bits == 0
    assert r.measurement.hex().startswith("7a1e5c266c0108db")
    assert r.report_data.hex().startswith("d447b55d197491bf")
    assert r.host_data == bytes(32)
    assert r.report_id_ma == b"\xff" * 32
    assert r.cpuid_fam_id is None and r.cpuid_product is None
    assert r.chip_id.hex().startswith("d49554ec717f4e5b")
    assert r.reported_tcb_raw == bytes.fromhex("0300000000000873")
    assert r.committed_tcb_raw == r.current_tcb_raw == r.launch_tcb_raw == r.reported_tcb_raw
    assert (r.current_major, r.current_minor, r.current_build) == (1, 0x34, 4)
    assert (r.committed_major, r.committed_minor, r.committed_build) == (1, 0x34, 4)
    assert r.launch_mit_vector is None and r.current_mit_vector is None
    assert len(r.signature_r) == len(r.signature_s) == 72
    assert r.signature_r[48:] == bytes(24)
    assert decode_tcb(r.reported_tcb_raw, "Milan") == SnpTcb(3, 0, 8, 0x73)


def test_vlek_v3_fields(vlek_v3: bytes) -> None:
    r = parse_report(vlek_v3)
    assert r.version == 3
    assert r.signer == "vlek"
    assert r.vmpl == 1
    assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == (0x19, 0x01, 0x01)
    assert r.cpuid_product == "Milan"
    assert r.platform_info.flags == {
        "SMTEnabled",
        "TSMEEnabled",
        "ECCEnabled",
        "AliasCheckComplete",
    }
    assert r.chip_id_masked
    assert decode_tcb(r.reported_tcb_raw, "Milan") == SnpTcb(4, 0, 0x18, 0xD9)
    assert decode_tcb(r.current_tcb_raw, "Milan").microcode == 0xDC


def test_debug_vector_policy(vectors: Path) -> None:
    r = parse_report((vectors / "snp" / "milan-v2-debug.report.bin").read_bytes())
    assert r.policy.raw == 0xB0000
    assert r.policy.debug and r.policy["Debug"] and r.policy["SMT"]
    assert not r.policy["MigrateMA"]


def test_accepts_bytearray_and_memoryview(milan: bytes) -> None:
    assert parse_report(bytearray(milan)).raw == milan
    assert parse_report(memoryview(milan)).raw == milan


def test_version_5_reads_mitigation_vectors(milan: bytes) -> None:
    raw = _set(_set(milan, 0, _u32(5)), 0x188, bytes([0x1A, 0x02, 0x00]))
    raw = _set(raw, 0x1F8, (7).to_bytes(8, "little") + (9).to_bytes(8, "little"))
    r = parse_report(raw)
    assert (r.launch_mit_vector, r.current_mit_vector) == (7, 9)
    assert r.cpuid_product == "Turin"


# --- strictness ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "error"),
    [
        (0, MalformedEvidence),
        (REPORT_SIZE - 1, MalformedEvidence),
        (REPORT_SIZE + 1, SizeLimitExceeded),
    ],
    ids=["empty", "truncated", "oversized"],
)
def test_size_must_be_exact(milan: bytes, size: int, error: type[Exception]) -> None:
    data = (milan + b"\x00")[:size]
    with pytest.raises(error) as info:
        parse_report(data)
    assert type(info.value) is error


def test_not_bytes_is_malformed() -> None:
    with pytest.raises(MalformedEvidence):
        parse_report("x" * REPORT_SIZE)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [0, 1, 6, 0xFFFFFFFF], ids=["v0", "v1", "v6", "vmax"])
def test_unsupported_versions(milan: bytes, version: int) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        parse_report(_set(milan, 0, _u32(version)))
    assert "0x00" in str(info.value)


@pytest.mark.parametrize("algo", [0, 2, 0x100])
def test_signature_algorithm_must_be_ecdsa_p384(milan: bytes, algo: int) -> None:
    with pytest.raises(UnsupportedSignatureAlgorithm):
        parse_report(_set(milan, 0x34, _u32(algo)))


@pytest.mark.parametrize(
    ("offset", "name"),
    [
        (0x4C, "signer info"),
        (0x4F, "signer info"),
        (0x188, "reported_tcb (v2)"),
        (0x19F, "reported_tcb (v2)"),
        (0x1EB, "current_major"),
        (0x1EF, "committed_major"),
        (0x1F8, "launch_tcb"),
        (0x250, "launch_tcb"),
        (0x29F, "launch_tcb"),
        (0x2A0 + 48, "signature r"),
        (0x2A0 + 71, "signature r"),
        (0x2E8 + 48, "signature s"),
        (0x330, "reserved signature"),
        (0x49F, "reserved signature"),
    ],
    ids=lambda v: hex(v) if isinstance(v, int) else None,
)
def test_mbz_ranges(milan: bytes, offset: int, name: str) -> None:
    with pytest.raises(ReservedFieldNotZero) as info:
        parse_report(_set(milan, offset, b"\x01"))
    assert f"0x{offset:03x}" in str(info.value)
    assert name in str(info.value)


def test_v3_cpuid_reserved_tail_is_mbz(vlek_v3: bytes) -> None:
    with pytest.raises(ReservedFieldNotZero, match="CPUID"):
        parse_report(_set(vlek_v3, 0x18B, b"\x01"))


def test_v5_reserved_after_mitigation_vectors(vlek_v3: bytes) -> None:
    v5 = _set(vlek_v3, 0, _u32(5))
    assert parse_report(_set(v5, 0x1F8, b"\x01")).launch_mit_vector == 1
    with pytest.raises(ReservedFieldNotZero, match="0x208"):
        parse_report(_set(v5, 0x208, b"\x01"))


def test_v3_unknown_cpuid_rejected(vlek_v3: bytes) -> None:
    with pytest.raises(UnknownProduct):
        parse_report(_set(vlek_v3, 0x188, bytes([0x17, 0x31])))


def test_policy_reserved_bit_17_must_be_one(milan: bytes) -> None:
    with pytest.raises(ReservedFieldNotZero, match="bit 17"):
        parse_report(_set(milan, 0x08, (0x10000).to_bytes(8, "little")))


@pytest.mark.parametrize("bit", [26, 40, 63])
def test_policy_high_bits_mbz(milan: bytes, bit: int) -> None:
    with pytest.raises(ReservedFieldNotZero, match=f"bit {bit}"):
        parse_report(_set(milan, 0x08, (0x30000 | 1 << bit).to_bytes(8, "little")))


def test_signer_info_reserved_bits(milan: bytes) -> None:
    with pytest.raises(ReservedFieldNotZero, match="0x48"):
        parse_report(_set(milan, 0x48, _u32(1 << 5)))


@pytest.mark.parametrize("key", [2, 3, 6])
def test_signing_key_reserved_values(milan: bytes, key: int) -> None:
    with pytest.raises(MalformedEvidence, match="reserved"):
        parse_report(_set(milan, 0x48, _u32(key << 2)))


def test_signing_key_none_parses(milan: bytes) -> None:
    assert parse_report(_set(milan, 0x48, _u32(7 << 2))).signer == "none"


def test_mask_chip_key_with_vcek_is_contradictory(milan: bytes) -> None:
    with pytest.raises(MalformedEvidence, match="MASK_CHIP_KEY"):
        parse_report(_set(milan, 0x48, _u32(2)))
    assert parse_report(_set(milan, 0x48, _u32(2 | 1 << 2))).mask_chip_key


@pytest.mark.parametrize(
    ("vmpl", "ok"), [(3, True), (4, False), (0xFFFFFFFE, False), (0xFFFFFFFF, True)]
)
def test_vmpl_range(milan: bytes, vmpl: int, ok: bool) -> None:
    raw = _set(milan, 0x30, _u32(vmpl))
    if ok:
        assert parse_report(raw).vmpl == vmpl
    else:
        with pytest.raises(MalformedEvidence, match="vmpl"):
            parse_report(raw)


def test_policy_roundtrip_all_bits() -> None:
    names = {
        "SMT",
        "MigrateMA",
        "Debug",
        "SingleSocket",
        "CXLAllow",
        "MemAES256XTS",
        "RAPLDis",
        "CipherTextHiding",
        "PageSwapDisable",
    }
    for name in names:
        p = decode_policy(encode_policy(abi_major=1, abi_minor=55, flags={name}))
        assert p.flags == {name} and (p.abi_major, p.abi_minor) == (1, 55)
    assert decode_policy(encode_policy(flags=names)).flags == names
    assert decode_policy(0x3FF0000 | 0x20000).flags == names


def test_platform_info_bits() -> None:
    p = decode_platform_info(0x3F)
    assert p.flags == {
        "SMTEnabled",
        "TSMEEnabled",
        "ECCEnabled",
        "RAPLDisabled",
        "CiphertextHidingEnabled",
        "AliasCheckComplete",
    }
    assert p.unknown_bits == 0
    assert decode_platform_info(1 << 7 | 1).unknown_bits == 1 << 7


# --- TCB -------------------------------------------------------------------------------------


def test_tcb_layouts() -> None:
    raw = bytes([1, 2, 0, 0, 0, 0, 3, 4])
    assert decode_tcb(raw, "Milan") == SnpTcb(bootloader=1, tee=2, snp=3, microcode=4)
    assert decode_tcb(raw, "Genoa") == SnpTcb(bootloader=1, tee=2, snp=3, microcode=4)
    turin = bytes([5, 1, 2, 3, 0, 0, 0, 4])
    assert decode_tcb(turin, "Turin") == SnpTcb(bootloader=1, tee=2, snp=3, microcode=4, fmc=5)
    for product, tcb in (("Milan", SnpTcb(1, 2, 3, 4)), ("Turin", SnpTcb(1, 2, 3, 4, 5))):
        assert decode_tcb(encode_tcb(tcb, product), product) == tcb
    assert tcb_components("Turin")[0] == "fmc" and "fmc" not in tcb_components("Genoa")


@pytest.mark.parametrize(
    ("product", "index"), [("Milan", 2), ("Genoa", 5), ("Turin", 4), ("Turin", 6)]
)
def test_tcb_reserved_bytes(product: str, index: int) -> None:
    raw = bytearray(8)
    raw[index] = 1
    with pytest.raises(ReservedFieldNotZero, match=f"reserved byte {index}"):
        decode_tcb(bytes(raw), product, "reported_tcb")


def test_turin_bytes_under_milan_layout_hit_reserved() -> None:
    # A Turin TCB (SNP SVN at byte 3) read with the Milan layout lands in a reserved byte.
    with pytest.raises(ReservedFieldNotZero):
        decode_tcb(bytes([5, 1, 2, 3, 0, 0, 0, 4]), "Milan")


def test_tcb_wrong_size_and_product() -> None:
    with pytest.raises(MalformedEvidence):
        decode_tcb(bytes(7), "Milan")
    with pytest.raises(UnknownProduct):
        decode_tcb(bytes(8), "Venice")
    with pytest.raises(ValueError):
        encode_tcb(SnpTcb(1, 2, 3, 4), "Turin")


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x01, "Milan"),
        (0x19, 0x00, "Milan"),
        (0x19, 0x11, "Genoa"),
        (0x19, 0xA0, "Genoa"),
        (0x1A, 0x02, "Turin"),
        (0x1A, 0x11, "Turin"),
    ],
)
def test_product_from_cpuid(family: int, model: int, product: str) -> None:
    assert product_from_cpuid(family, model) == product


@pytest.mark.parametrize(("family", "model"), [(0x17, 0x31), (0x19, 0x21), (0x1A, 0x12), (0, 0)])
def test_unknown_cpuid(family: int, model: int) -> None:
    with pytest.raises(UnknownProduct):
        product_from_cpuid(family, model)
