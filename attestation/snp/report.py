"""Strict parser of the SEV-SNP ATTESTATION_REPORT (SEV-SNP firmware ABI, 0x4A0 bytes, v2..v5).

Every must-be-zero range and reserved bit is checked, so a report can only be read one way.
TCB_VERSION fields stay raw here (their layout depends on the product, see :mod:`tcb`); the
signature stays raw too (r and s are 72-byte little-endian integers) and is checked by
:mod:`verify`. The parser never raises anything but :class:`EvidenceRejected` subclasses.
"""

from __future__ import annotations

from dataclasses import dataclass

from attestation.errors import (
    MalformedEvidence,
    ReservedFieldNotZero,
    SizeLimitExceeded,
    UnsupportedVersion,
)
from attestation.snp.tcb import product_from_cpuid

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SIGNATURE_OFFSET = 0x2A0
ECDSA_COMPONENT_SIZE = 72  # r and s, little-endian, zero-extended
P384_SIZE = 48
MIN_VERSION = 2
MAX_VERSION = 5
SIG_ALGO_ECDSA_P384_SHA384 = 1

SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
SIGNING_KEY_NONE = 7

# Guest policy bits (ABI "Guest Policy"); names match attestation.reference.
POLICY_BITS = {
    "SMT": 16,
    "MigrateMA": 18,
    "Debug": 19,
    "SingleSocket": 20,
    "CXLAllow": 21,
    "MemAES256XTS": 22,
    "RAPLDis": 23,
    "CipherTextHiding": 24,
    "PageSwapDisable": 25,
}
POLICY_RESERVED_ONE_BIT = 17
POLICY_MAX_BIT = 25

# PLATFORM_INFO bits; names match attestation.reference.SNP_PLATFORM_BITS.
PLATFORM_BITS = {
    "SMTEnabled": 0,
    "TSMEEnabled": 1,
    "ECCEnabled": 2,
    "RAPLDisabled": 3,
    "CiphertextHidingEnabled": 4,
    "AliasCheckComplete": 5,
}
_PLATFORM_KNOWN_MASK = sum(1 << b for b in PLATFORM_BITS.values())


class UnsupportedSignatureAlgorithm(MalformedEvidence):
    reason = "unsupported_signature_algorithm"


@dataclass(frozen=True)
class GuestPolicy:
    """Decoded POLICY field: ABI minimum plus the named bits."""

    raw: int
    abi_minor: int
    abi_major: int
    flags: frozenset[str]

    def __getitem__(self, name: str) -> bool:
        if name not in POLICY_BITS:
            raise KeyError(name)
        return name in self.flags

    @property
    def debug(self) -> bool:
        return "Debug" in self.flags


@dataclass(frozen=True)
class PlatformInfo:
    """Decoded PLATFORM_INFO; ``unknown_bits`` holds bits this verifier has no name for."""

    raw: int
    flags: frozenset[str]
    unknown_bits: int

    @property
    def unknown_names(self) -> tuple[str, ...]:
        """``Bit<N>`` for each set bit without a name (the reference-value key for it)."""
        return tuple(f"Bit{n}" for n in range(64) if self.unknown_bits >> n & 1)


def decode_policy(raw: int) -> GuestPolicy:
    """Decode the 64-bit guest policy; bit 17 must be one and bits 26..63 zero."""
    if not raw & (1 << POLICY_RESERVED_ONE_BIT):
        raise ReservedFieldNotZero("policy (0x08): reserved bit 17 must be 1")
    high = raw >> (POLICY_MAX_BIT + 1)
    if high:
        bit = (high & -high).bit_length() + POLICY_MAX_BIT
        raise ReservedFieldNotZero(f"policy (0x08): reserved bit {bit} is set")
    return GuestPolicy(
        raw=raw,
        abi_minor=raw & 0xFF,
        abi_major=(raw >> 8) & 0xFF,
        flags=frozenset(n for n, b in POLICY_BITS.items() if raw & (1 << b)),
    )


def encode_policy(
    *, abi_major: int = 0, abi_minor: int = 0, flags: frozenset[str] | set[str] = frozenset()
) -> int:
    """Inverse of :func:`decode_policy` (used by the mock TEE and tests)."""
    value = (abi_minor & 0xFF) | (abi_major & 0xFF) << 8 | 1 << POLICY_RESERVED_ONE_BIT
    for name in flags:
        value |= 1 << POLICY_BITS[name]
    return value


def decode_platform_info(raw: int) -> PlatformInfo:
    return PlatformInfo(
        raw=raw,
        flags=frozenset(n for n, b in PLATFORM_BITS.items() if raw & (1 << b)),
        unknown_bits=raw & ~_PLATFORM_KNOWN_MASK,
    )


@dataclass(frozen=True)
class SnpReport:
    """A parsed attestation report. ``raw`` is the exact input; byte fields are copies."""

    raw: bytes
    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb_raw: bytes
    platform_info: PlatformInfo
    author_key_en: bool
    mask_chip_key: bool
    signing_key: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb_raw: bytes
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb_raw: bytes
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb_raw: bytes
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: bytes  # 72 bytes little-endian
    signature_s: bytes  # 72 bytes little-endian

    @property
    def signed_bytes(self) -> bytes:
        """The bytes the signature covers: [0, 0x2A0)."""
        return self.raw[:SIGNED_SIZE]

    @property
    def signer(self) -> str:
        """'vcek', 'vlek' or 'none' (SIGNING_KEY)."""
        if self.signing_key == SIGNING_KEY_VCEK:
            return "vcek"
        if self.signing_key == SIGNING_KEY_VLEK:
            return "vlek"
        return "none"

    @property
    def cpuid_product(self) -> str | None:
        """Product named by the CPUID fields (v3+), None for v2 reports."""
        if self.cpuid_fam_id is None or self.cpuid_mod_id is None:
            return None
        return product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)

    @property
    def chip_id_masked(self) -> bool:
        return not any(self.chip_id)


def _u32(data: bytes, off: int) -> int:
    return int.from_bytes(data[off : off + 4], "little")


def _u64(data: bytes, off: int) -> int:
    return int.from_bytes(data[off : off + 8], "little")


def _mbz(data: bytes, lo: int, hi: int, name: str) -> None:
    chunk = data[lo:hi]
    if any(chunk):
        first = lo + next(i for i, b in enumerate(chunk) if b)
        raise ReservedFieldNotZero(
            f"{name} [0x{lo:03x}, 0x{hi:03x}) must be zero; byte 0x{first:03x} is 0x{data[first]:02x}"
        )


def parse_report(data: bytes | bytearray | memoryview) -> SnpReport:
    """Parse and structurally validate one attestation report."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedEvidence("SNP report: expected bytes")
    data = bytes(data)
    if len(data) > REPORT_SIZE:
        raise SizeLimitExceeded(f"SNP report is {len(data)} bytes, must be exactly {REPORT_SIZE}")
    if len(data) < REPORT_SIZE:
        raise MalformedEvidence(f"SNP report is {len(data)} bytes, must be exactly {REPORT_SIZE}")

    version = _u32(data, 0x00)
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise UnsupportedVersion(
            f"SNP report version {version} (0x00); supported {MIN_VERSION}..{MAX_VERSION}"
        )
    sig_algo = _u32(data, 0x34)
    if sig_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise UnsupportedSignatureAlgorithm(
            f"signature_algo (0x34) is {sig_algo}; only 1 (ECDSA P-384 with SHA-384) is accepted"
        )
    policy = decode_policy(_u64(data, 0x08))

    vmpl = _u32(data, 0x30)
    if vmpl > 3 and vmpl != 0xFFFFFFFF:
        raise MalformedEvidence(
            f"vmpl (0x30) is {vmpl}; must be 0..3 (or 0xFFFFFFFF, host request)"
        )

    signer_info = _u32(data, 0x48)
    if signer_info >> 5:
        raise ReservedFieldNotZero(
            f"signer info (0x48): reserved bits 5..31 must be zero, got 0x{signer_info:08x}"
        )
    author_key_en = bool(signer_info & 1)
    mask_chip_key = bool(signer_info & 2)
    signing_key = (signer_info >> 2) & 7
    if signing_key not in (SIGNING_KEY_VCEK, SIGNING_KEY_VLEK, SIGNING_KEY_NONE):
        raise MalformedEvidence(f"signing_key (0x48 bits 2..4) value {signing_key} is reserved")
    if mask_chip_key and signing_key == SIGNING_KEY_VCEK:
        raise MalformedEvidence(
            "signer info (0x48): MASK_CHIP_KEY is set but SIGNING_KEY says VCEK"
        )
    _mbz(data, 0x4C, 0x50, "reserved after signer info")

    if version >= 3:
        fam, mod, step = data[0x188], data[0x189], data[0x18A]
        product_from_cpuid(fam, mod)  # unknown CPUID: reject early
        _mbz(data, 0x18B, 0x1A0, "reserved after CPUID")
        cpuid: tuple[int | None, int | None, int | None] = (fam, mod, step)
    else:
        _mbz(data, 0x188, 0x1A0, "reserved after reported_tcb (v2)")
        cpuid = (None, None, None)

    _mbz(data, 0x1EB, 0x1EC, "reserved after current_major")
    _mbz(data, 0x1EF, 0x1F0, "reserved after committed_major")
    if version >= 5:
        launch_mit: int | None = _u64(data, 0x1F8)
        current_mit: int | None = _u64(data, 0x200)
        _mbz(data, 0x208, SIGNED_SIZE, "reserved after current_mit_vector")
    else:
        launch_mit = current_mit = None
        _mbz(data, 0x1F8, SIGNED_SIZE, f"reserved after launch_tcb (v{version})")

    r_off = SIGNATURE_OFFSET
    s_off = SIGNATURE_OFFSET + ECDSA_COMPONENT_SIZE
    _mbz(data, r_off + P384_SIZE, r_off + ECDSA_COMPONENT_SIZE, "signature r high bytes")
    _mbz(data, s_off + P384_SIZE, s_off + ECDSA_COMPONENT_SIZE, "signature s high bytes")
    _mbz(data, s_off + ECDSA_COMPONENT_SIZE, REPORT_SIZE, "reserved signature area")

    return SnpReport(
        raw=data,
        version=version,
        guest_svn=_u32(data, 0x04),
        policy=policy,
        family_id=data[0x10:0x20],
        image_id=data[0x20:0x30],
        vmpl=vmpl,
        signature_algo=sig_algo,
        current_tcb_raw=data[0x38:0x40],
        platform_info=decode_platform_info(_u64(data, 0x40)),
        author_key_en=author_key_en,
        mask_chip_key=mask_chip_key,
        signing_key=signing_key,
        report_data=data[0x50:0x90],
        measurement=data[0x90:0xC0],
        host_data=data[0xC0:0xE0],
        id_key_digest=data[0xE0:0x110],
        author_key_digest=data[0x110:0x140],
        report_id=data[0x140:0x160],
        report_id_ma=data[0x160:0x180],
        reported_tcb_raw=data[0x180:0x188],
        cpuid_fam_id=cpuid[0],
        cpuid_mod_id=cpuid[1],
        cpuid_step=cpuid[2],
        chip_id=data[0x1A0:0x1E0],
        committed_tcb_raw=data[0x1E0:0x1E8],
        current_build=data[0x1E8],
        current_minor=data[0x1E9],
        current_major=data[0x1EA],
        committed_build=data[0x1EC],
        committed_minor=data[0x1ED],
        committed_major=data[0x1EE],
        launch_tcb_raw=data[0x1F0:0x1F8],
        launch_mit_vector=launch_mit,
        current_mit_vector=current_mit,
        signature_r=data[r_off : r_off + ECDSA_COMPONENT_SIZE],
        signature_s=data[s_off : s_off + ECDSA_COMPONENT_SIZE],
    )
