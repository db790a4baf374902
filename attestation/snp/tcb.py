"""TCB_VERSION decoding and product identification for SEV-SNP.

The 8-byte TCB_VERSION has two layouts. Milan and Genoa: bootloader byte 0, TEE byte 1, bytes
2..5 reserved, SNP byte 6, microcode byte 7. Turin: FMC byte 0, bootloader byte 1, TEE byte 2,
SNP byte 3, bytes 4..6 reserved, microcode byte 7. Decoding with the wrong layout silently
compares the wrong SVNs, so every decode names the product explicitly.

The product comes from the CPUID family/model of report versions 3 and later; version 2 reports
carry no CPUID, so the product then comes from the (chain-verified) VCEK/VLEK product name.
"""

from __future__ import annotations

from attestation.errors import MalformedEvidence, ReservedFieldNotZero
from attestation.reference import SNP_PRODUCTS, SnpTcb

TCB_SIZE = 8

# component name -> byte index, per layout
_LEGACY_LAYOUT = {"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7}
_LEGACY_RESERVED = (2, 3, 4, 5)
_TURIN_LAYOUT = {"fmc": 0, "bootloader": 1, "tee": 2, "snp": 3, "microcode": 7}
_TURIN_RESERVED = (4, 5, 6)


class UnknownProduct(MalformedEvidence):
    """The CPUID or certificate names no SEV-SNP product this verifier knows."""

    reason = "unknown_product"


def _check_product(product: str) -> None:
    if product not in SNP_PRODUCTS:
        raise UnknownProduct(f"unknown SEV-SNP product {product!r}")


def is_turin_layout(product: str) -> bool:
    _check_product(product)
    return product == "Turin"


def product_from_cpuid(family: int, model: int) -> str:
    """Map the report's CPUID family/model (combined extended values) to a product line."""
    if family == 0x19:
        if model <= 0x0F:
            return "Milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return "Genoa"
    elif family == 0x1A and model <= 0x11:
        return "Turin"
    raise UnknownProduct(
        f"CPUID family 0x{family:02x} model 0x{model:02x} is not a known SEV-SNP product"
    )


def decode_tcb(raw: bytes, product: str, field: str = "tcb") -> SnpTcb:
    """Decode an 8-byte little-endian TCB_VERSION with the product's layout (reserved bytes MBZ)."""
    if len(raw) != TCB_SIZE:
        raise MalformedEvidence(f"{field}: TCB_VERSION must be {TCB_SIZE} bytes, got {len(raw)}")
    turin = is_turin_layout(product)
    reserved = _TURIN_RESERVED if turin else _LEGACY_RESERVED
    for i in reserved:
        if raw[i]:
            raise ReservedFieldNotZero(
                f"{field}: reserved byte {i} is 0x{raw[i]:02x} ({product} TCB layout)"
            )
    layout = _TURIN_LAYOUT if turin else _LEGACY_LAYOUT
    return SnpTcb(
        bootloader=raw[layout["bootloader"]],
        tee=raw[layout["tee"]],
        snp=raw[layout["snp"]],
        microcode=raw[layout["microcode"]],
        fmc=raw[layout["fmc"]] if turin else None,
    )


def encode_tcb(tcb: SnpTcb, product: str) -> bytes:
    """Inverse of :func:`decode_tcb` (used by the mock TEE)."""
    turin = is_turin_layout(product)
    if turin != (tcb.fmc is not None):
        raise ValueError(f"{product}: FMC SVN {'required' if turin else 'not allowed'}")
    out = bytearray(TCB_SIZE)
    layout = _TURIN_LAYOUT if turin else _LEGACY_LAYOUT
    for name, index in layout.items():
        value = getattr(tcb, name)
        if not 0 <= value <= 0xFF:
            raise ValueError(f"TCB component {name} must fit in a byte")
        out[index] = value
    return bytes(out)


def tcb_components(product: str) -> tuple[str, ...]:
    """The SVN components a product's TCB carries, in comparison order."""
    base = ("bootloader", "tee", "snp", "microcode")
    return ("fmc", *base) if is_turin_layout(product) else base
