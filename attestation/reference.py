"""Reference values: what a workload owner admits, parsed strictly from the manifest JSON.

The manifest (``ReferenceValues``) and ``concord evidence verify --reference-values`` share this
model. Parsing errors name the JSON path and the reason (:class:`InvalidReferenceValues`).
Optional fields left out are *not checked*; every field that is given is enforced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from attestation.errors import InvalidReferenceValues

SNP_PRODUCTS = ("Milan", "Genoa", "Turin")
TDX_TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "TDRelaunchAdvised",
    "TDRelaunchAdvisedConfigurationNeeded",
    "Revoked",
)

# Guest policy bits that *relax* security: the reference gives the maximum allowed.
SNP_POLICY_PERMISSIVE = ("SMT", "MigrateMA", "Debug", "CXLAllow")
# Guest policy bits that *tighten* security: the reference may require them.
SNP_POLICY_RESTRICTIVE = (
    "SingleSocket",
    "MemAES256XTS",
    "RAPLDis",
    "CipherTextHiding",
    "PageSwapDisable",
)
# Platform info bits: the reference gives the maximum allowed (default: all allowed).
SNP_PLATFORM_BITS = (
    "SMTEnabled",
    "TSMEEnabled",
    "ECCEnabled",
    "RAPLDisabled",
    "CiphertextHidingEnabled",
    "AliasCheckComplete",
)

# Mask of the PLATFORM_INFO bits above that have no name; "Bit<N>" keys address them.
SNP_PLATFORM_UNNAMED_MASK = ((1 << 64) - 1) & ~((1 << len(SNP_PLATFORM_BITS)) - 1)
_UNNAMED_PLATFORM_KEYS = (
    "UnknownBits",
    *(f"Bit{n}" for n in range(64) if SNP_PLATFORM_UNNAMED_MASK >> n & 1),
)


@dataclass(frozen=True)
class SnpTcb:
    """Security version numbers of one TCB; ``fmc`` exists on Turin only."""

    bootloader: int = 0
    tee: int = 0
    snp: int = 0
    microcode: int = 0
    fmc: int | None = None

    def at_least(self, minimum: SnpTcb) -> list[str]:
        """Names of the components below ``minimum`` (empty list: satisfied)."""
        low = [
            name
            for name in ("bootloader", "tee", "snp", "microcode")
            if getattr(self, name) < getattr(minimum, name)
        ]
        if minimum.fmc is not None and (self.fmc is None or self.fmc < minimum.fmc):
            low.append("fmc")
        return low


@dataclass(frozen=True)
class SnpGuestPolicy:
    abi_major: int = 0
    abi_minor: int = 0
    allowed: frozenset[str] = frozenset({"SMT"})
    required: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SnpReference:
    product: str
    measurement: bytes
    minimum_tcb: SnpTcb = SnpTcb()
    minimum_launch_tcb: SnpTcb | None = None
    guest_policy: SnpGuestPolicy = SnpGuestPolicy()
    platform_allowed: frozenset[str] = frozenset(SNP_PLATFORM_BITS)
    # PLATFORM_INFO bits without a name (reserved today, set by newer firmware in the wild) are
    # admitted unless listed here: "PlatformInfo": {"Bit6": false} or {"UnknownBits": false}.
    platform_unknown_forbidden: int = 0
    allowed_chip_ids: tuple[bytes, ...] = ()
    allow_vlek: bool = False
    allowed_vmpls: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class TdxReference:
    mr_td: bytes
    mr_seam: bytes | None = None
    rtmrs: tuple[bytes | None, ...] = (None, None, None, None)
    xfam: bytes | None = None
    td_attributes: bytes | None = None
    minimum_tee_tcb_svn: bytes | None = None
    minimum_qe_svn: int | None = None
    minimum_pce_svn: int | None = None
    allowed_piids: tuple[bytes, ...] = ()
    accepted_tcb_statuses: tuple[str, ...] = ("UpToDate",)
    # OutOfDate (OutOfDateConfigurationNeeded) is also accepted, when UpToDate
    # (ConfigurationNeeded) is, for this long after Intel published the newer TCB level.
    out_of_date_grace: timedelta | None = None
    denied_advisory_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReferenceValues:
    snp: tuple[SnpReference, ...] = ()
    tdx: tuple[TdxReference, ...] = ()

    def for_tee(self, tee: str) -> tuple[SnpReference, ...] | tuple[TdxReference, ...]:
        return self.snp if tee == "snp" else self.tdx


# --- parsing ---------------------------------------------------------------------------------

_HEX_DIGITS = frozenset("0123456789abcdef")


def _obj(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise InvalidReferenceValues(path, "must be a JSON object")
    return value


def _known(obj: Mapping[str, Any], path: str, allowed: Sequence[str]) -> None:
    for key in obj:
        if key not in allowed:
            raise InvalidReferenceValues(f"{path}.{key}", "unknown field")


def _hex(value: Any, path: str, size: int) -> bytes:
    if not isinstance(value, str):
        raise InvalidReferenceValues(path, "must be a hex string")
    if value != value.lower():
        raise InvalidReferenceValues(path, "hex must be lowercase")
    # bytes.fromhex alone would also accept whitespace between bytes ("ab cd")
    if not set(value) <= _HEX_DIGITS or len(value) % 2:
        raise InvalidReferenceValues(path, "not valid hex")
    raw = bytes.fromhex(value)
    if len(raw) != size:
        raise InvalidReferenceValues(path, f"must be {size} bytes, got {len(raw)}")
    return raw


def _uint(value: Any, path: str, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidReferenceValues(path, "must be an integer")
    if not 0 <= value < (1 << bits):
        raise InvalidReferenceValues(path, f"must be in [0, {(1 << bits) - 1}]")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidReferenceValues(path, "must be true or false")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidReferenceValues(path, "must be a JSON array")
    return value


def _tcb(value: Any, path: str, product: str) -> SnpTcb:
    obj = _obj(value, path)
    _known(obj, path, ("Bootloader", "TEE", "SNP", "Microcode", "FMC"))
    if "FMC" in obj and product != "Turin":
        raise InvalidReferenceValues(f"{path}.FMC", "only Turin has an FMC SVN")
    return SnpTcb(
        bootloader=_uint(obj.get("Bootloader", 0), f"{path}.Bootloader", 8),
        tee=_uint(obj.get("TEE", 0), f"{path}.TEE", 8),
        snp=_uint(obj.get("SNP", 0), f"{path}.SNP", 8),
        microcode=_uint(obj.get("Microcode", 0), f"{path}.Microcode", 8),
        fmc=_uint(obj["FMC"], f"{path}.FMC", 8) if "FMC" in obj else None,
    )


def _guest_policy(value: Any, path: str) -> SnpGuestPolicy:
    obj = _obj(value, path)
    names = ("ABIMajor", "ABIMinor", *SNP_POLICY_PERMISSIVE, *SNP_POLICY_RESTRICTIVE)
    _known(obj, path, names)
    allowed = {n for n in SNP_POLICY_PERMISSIVE if _bool(obj.get(n, n == "SMT"), f"{path}.{n}")}
    required = {n for n in SNP_POLICY_RESTRICTIVE if _bool(obj.get(n, False), f"{path}.{n}")}
    return SnpGuestPolicy(
        abi_major=_uint(obj.get("ABIMajor", 0), f"{path}.ABIMajor", 8),
        abi_minor=_uint(obj.get("ABIMinor", 0), f"{path}.ABIMinor", 8),
        allowed=frozenset(allowed),
        required=frozenset(required),
    )


def parse_snp_reference(value: Any, path: str) -> SnpReference:
    obj = _obj(value, path)
    _known(
        obj,
        path,
        (
            "ProductName",
            "TrustedMeasurement",
            "MinimumTCB",
            "MinimumLaunchTCB",
            "GuestPolicy",
            "PlatformInfo",
            "AllowedChipIDs",
            "AllowVLEK",
            "AllowedVMPLs",
        ),
    )
    product = obj.get("ProductName")
    if product not in SNP_PRODUCTS:
        raise InvalidReferenceValues(
            f"{path}.ProductName", f"must be one of {', '.join(SNP_PRODUCTS)}"
        )
    if "TrustedMeasurement" not in obj:
        raise InvalidReferenceValues(f"{path}.TrustedMeasurement", "required")
    platform_allowed = frozenset(SNP_PLATFORM_BITS)
    platform_unknown_forbidden = 0
    if "PlatformInfo" in obj:
        pobj = _obj(obj["PlatformInfo"], f"{path}.PlatformInfo")
        _known(pobj, f"{path}.PlatformInfo", (*SNP_PLATFORM_BITS, *_UNNAMED_PLATFORM_KEYS))
        platform_allowed = frozenset(
            n for n in SNP_PLATFORM_BITS if _bool(pobj.get(n, True), f"{path}.PlatformInfo.{n}")
        )
        for key, value in pobj.items():
            if key in SNP_PLATFORM_BITS or _bool(value, f"{path}.PlatformInfo.{key}"):
                continue
            if key == "UnknownBits":
                platform_unknown_forbidden |= SNP_PLATFORM_UNNAMED_MASK
            else:
                platform_unknown_forbidden |= 1 << int(key[3:])
    vmpls = tuple(
        _uint(v, f"{path}.AllowedVMPLs[{i}]", 2)
        for i, v in enumerate(_list(obj.get("AllowedVMPLs", [0]), f"{path}.AllowedVMPLs"))
    )
    if not vmpls:
        raise InvalidReferenceValues(f"{path}.AllowedVMPLs", "must not be empty")
    return SnpReference(
        product=product,
        measurement=_hex(obj["TrustedMeasurement"], f"{path}.TrustedMeasurement", 48),
        minimum_tcb=_tcb(obj.get("MinimumTCB", {}), f"{path}.MinimumTCB", product),
        minimum_launch_tcb=(
            _tcb(obj["MinimumLaunchTCB"], f"{path}.MinimumLaunchTCB", product)
            if "MinimumLaunchTCB" in obj
            else None
        ),
        guest_policy=_guest_policy(obj.get("GuestPolicy", {}), f"{path}.GuestPolicy"),
        platform_allowed=platform_allowed,
        platform_unknown_forbidden=platform_unknown_forbidden,
        allowed_chip_ids=tuple(
            _hex(c, f"{path}.AllowedChipIDs[{i}]", 64)
            for i, c in enumerate(_list(obj.get("AllowedChipIDs", []), f"{path}.AllowedChipIDs"))
        ),
        allow_vlek=_bool(obj.get("AllowVLEK", False), f"{path}.AllowVLEK"),
        allowed_vmpls=vmpls,
    )


def parse_tdx_reference(value: Any, path: str) -> TdxReference:
    obj = _obj(value, path)
    _known(
        obj,
        path,
        (
            "MrTd",
            "MrSeam",
            "Rtmrs",
            "Xfam",
            "TdAttributes",
            "MinimumTeeTcbSvn",
            "MinimumQeSvn",
            "MinimumPceSvn",
            "AllowedPIIDs",
            "AcceptedTcbStatuses",
            "OutOfDateGraceDays",
            "DeniedAdvisoryIDs",
        ),
    )
    if "MrTd" not in obj:
        raise InvalidReferenceValues(f"{path}.MrTd", "required")
    rtmrs: tuple[bytes | None, ...] = (None, None, None, None)
    if "Rtmrs" in obj:
        items = _list(obj["Rtmrs"], f"{path}.Rtmrs")
        if len(items) != 4:
            raise InvalidReferenceValues(f"{path}.Rtmrs", "must have exactly 4 entries (null: any)")
        rtmrs = tuple(
            None if v is None else _hex(v, f"{path}.Rtmrs[{i}]", 48) for i, v in enumerate(items)
        )
    statuses = tuple(
        _list(obj.get("AcceptedTcbStatuses", ["UpToDate"]), f"{path}.AcceptedTcbStatuses")
    )
    for i, s in enumerate(statuses):
        if s not in TDX_TCB_STATUSES:
            raise InvalidReferenceValues(
                f"{path}.AcceptedTcbStatuses[{i}]", f"unknown TCB status {s!r}"
            )
    if not statuses:
        raise InvalidReferenceValues(f"{path}.AcceptedTcbStatuses", "must not be empty")
    grace = (
        timedelta(days=_uint(obj["OutOfDateGraceDays"], f"{path}.OutOfDateGraceDays", 16))
        if "OutOfDateGraceDays" in obj
        else None
    )
    denied: list[str] = []
    for i, a in enumerate(_list(obj.get("DeniedAdvisoryIDs", []), f"{path}.DeniedAdvisoryIDs")):
        if not isinstance(a, str) or not a:
            raise InvalidReferenceValues(
                f"{path}.DeniedAdvisoryIDs[{i}]", "must be an advisory ID such as INTEL-SA-00837"
            )
        denied.append(a.upper())
    return TdxReference(
        mr_td=_hex(obj["MrTd"], f"{path}.MrTd", 48),
        mr_seam=_hex(obj["MrSeam"], f"{path}.MrSeam", 48) if "MrSeam" in obj else None,
        rtmrs=rtmrs,
        xfam=_hex(obj["Xfam"], f"{path}.Xfam", 8) if "Xfam" in obj else None,
        td_attributes=_hex(obj["TdAttributes"], f"{path}.TdAttributes", 8)
        if "TdAttributes" in obj
        else None,
        minimum_tee_tcb_svn=(
            _hex(obj["MinimumTeeTcbSvn"], f"{path}.MinimumTeeTcbSvn", 16)
            if "MinimumTeeTcbSvn" in obj
            else None
        ),
        minimum_qe_svn=_uint(obj["MinimumQeSvn"], f"{path}.MinimumQeSvn", 16)
        if "MinimumQeSvn" in obj
        else None,
        minimum_pce_svn=_uint(obj["MinimumPceSvn"], f"{path}.MinimumPceSvn", 16)
        if "MinimumPceSvn" in obj
        else None,
        allowed_piids=tuple(
            _hex(p, f"{path}.AllowedPIIDs[{i}]", 16)
            for i, p in enumerate(_list(obj.get("AllowedPIIDs", []), f"{path}.AllowedPIIDs"))
        ),
        accepted_tcb_statuses=statuses,
        out_of_date_grace=grace,
        denied_advisory_ids=tuple(denied),
    )


def parse_reference_values(value: Any, path: str = "ReferenceValues") -> ReferenceValues:
    """Parse the ``ReferenceValues`` object ``{"snp": [...], "tdx": [...]}``."""
    obj = _obj(value, path)
    _known(obj, path, ("snp", "tdx"))
    return ReferenceValues(
        snp=tuple(
            parse_snp_reference(v, f"{path}.snp[{i}]")
            for i, v in enumerate(_list(obj.get("snp", []), f"{path}.snp"))
        ),
        tdx=tuple(
            parse_tdx_reference(v, f"{path}.tdx[{i}]")
            for i, v in enumerate(_list(obj.get("tdx", []), f"{path}.tdx"))
        ),
    )
