"""Reference values for SEV-SNP: does a verified report satisfy one of the SnpReference entries?

Runs only after the signature, the chain and the report↔key binding hold, so every field read
here is authentic. Each entry is checked completely in a fixed order and the first violation is
its reason; the first entry with no violation admits the report. With exactly one entry its
specific violation is raised, with several a :class:`NoMatchingReference` names each reason.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from attestation.errors import (
    DebugForbidden,
    MeasurementMismatch,
    NoMatchingReference,
    PolicyViolation,
    TcbTooLow,
)
from attestation.reference import (
    SNP_POLICY_PERMISSIVE,
    SNP_POLICY_RESTRICTIVE,
    SnpReference,
    SnpTcb,
)
from attestation.snp.report import SnpReport
from attestation.snp.tcb import decode_tcb


class ProductMismatch(PolicyViolation):
    reason = "product"


class GuestPolicyViolation(PolicyViolation):
    """A permissive guest policy bit above the allowed maximum, or a required bit missing."""

    reason = "guest_policy"


class AbiVersionTooLow(PolicyViolation):
    reason = "abi_version"


class PlatformInfoViolation(PolicyViolation):
    reason = "platform_info"


class VmplNotAllowed(PolicyViolation):
    reason = "vmpl"


class ChipIdNotAllowed(PolicyViolation):
    reason = "chip_id"


class VlekNotAllowed(PolicyViolation):
    reason = "vlek_not_allowed"


@dataclass(frozen=True)
class ReportTcbs:
    """The four TCB fields of a report, decoded with the product's layout."""

    current: SnpTcb
    reported: SnpTcb
    committed: SnpTcb
    launch: SnpTcb

    @classmethod
    def decode(cls, report: SnpReport, product: str) -> ReportTcbs:
        return cls(
            current=decode_tcb(report.current_tcb_raw, product, "current_tcb (0x38)"),
            reported=decode_tcb(report.reported_tcb_raw, product, "reported_tcb (0x180)"),
            committed=decode_tcb(report.committed_tcb_raw, product, "committed_tcb (0x1E0)"),
            launch=decode_tcb(report.launch_tcb_raw, product, "launch_tcb (0x1F0)"),
        )


@dataclass(frozen=True)
class SnpFacts:
    """Authenticated facts the references are checked against."""

    report: SnpReport
    product: str
    signer: str  # "vcek" | "vlek"
    chip_id: bytes  # 64 bytes; all zero when unknown (masked chip ID under a VLEK)
    tcbs: ReportTcbs


def _tcb_at_least(tcb: SnpTcb, minimum: SnpTcb, field: str) -> None:
    low = tcb.at_least(minimum)
    if low:
        name = low[0]
        have = getattr(tcb, name)
        raise TcbTooLow(
            f"{field}.{name} is {have if have is not None else 'absent'}, "
            f"minimum {getattr(minimum, name)}"
        )


def check_reference(facts: SnpFacts, ref: SnpReference) -> None:
    """Raise the first :class:`PolicyViolation` of ``facts`` against ``ref``."""
    report = facts.report
    if ref.product != facts.product:
        raise ProductMismatch(f"evidence is from {facts.product}, reference wants {ref.product}")
    if not hmac.compare_digest(report.measurement, ref.measurement):
        raise MeasurementMismatch(f"measurement {report.measurement.hex()} is not the trusted one")
    gp = ref.guest_policy
    flags = report.policy.flags
    if "Debug" in flags and "Debug" not in gp.allowed:
        raise DebugForbidden("guest policy allows DEBUG; the reference forbids it")
    for name in SNP_POLICY_PERMISSIVE:
        if name in flags and name not in gp.allowed:
            raise GuestPolicyViolation(f"guest policy bit {name} is set; the reference forbids it")
    for name in SNP_POLICY_RESTRICTIVE:
        if name in gp.required and name not in flags:
            raise GuestPolicyViolation(
                f"guest policy bit {name} is clear; the reference requires it"
            )
    have_abi = (report.policy.abi_major, report.policy.abi_minor)
    if have_abi < (gp.abi_major, gp.abi_minor):
        raise AbiVersionTooLow(
            f"guest policy ABI {have_abi[0]}.{have_abi[1]} is below the minimum "
            f"{gp.abi_major}.{gp.abi_minor}"
        )
    platform = report.platform_info
    # Bits without a name appear on newer firmware (e.g. bit 6 on Turin); only a reference that
    # names them forbids them, so evidence from current platforms is not refused by default.
    denied = platform.unknown_bits & ref.platform_unknown_forbidden
    if denied:
        names = ", ".join(f"Bit{n}" for n in range(64) if denied >> n & 1)
        raise PlatformInfoViolation(f"platform_info {names} set; the reference forbids it")
    forbidden = sorted(platform.flags - ref.platform_allowed)
    if forbidden:
        raise PlatformInfoViolation(
            f"platform_info {', '.join(forbidden)} set; the reference forbids it"
        )
    if report.vmpl not in ref.allowed_vmpls:
        raise VmplNotAllowed(f"VMPL {report.vmpl} is not in {list(ref.allowed_vmpls)}")
    if facts.signer == "vlek" and not ref.allow_vlek:
        raise VlekNotAllowed("report is signed by a VLEK; the reference does not allow VLEK")
    _tcb_at_least(facts.tcbs.reported, ref.minimum_tcb, "reported_tcb")
    _tcb_at_least(facts.tcbs.committed, ref.minimum_tcb, "committed_tcb")
    _tcb_at_least(facts.tcbs.current, ref.minimum_tcb, "current_tcb")
    if ref.minimum_launch_tcb is not None:
        _tcb_at_least(facts.tcbs.launch, ref.minimum_launch_tcb, "launch_tcb")
    if ref.allowed_chip_ids and not any(
        hmac.compare_digest(facts.chip_id, c) for c in ref.allowed_chip_ids
    ):
        raise ChipIdNotAllowed(f"chip ID {facts.chip_id.hex()[:16]}… is not in the allow list")


def evaluate(facts: SnpFacts, references: Sequence[SnpReference]) -> int:
    """Index of the first reference admitting ``facts``; else the typed violation."""
    if not references:
        raise NoMatchingReference("no SEV-SNP reference values are configured")
    reasons: list[PolicyViolation] = []
    for index, ref in enumerate(references):
        try:
            check_reference(facts, ref)
        except PolicyViolation as exc:
            reasons.append(exc)
            continue
        return index
    if len(reasons) == 1:
        raise reasons[0]
    raise NoMatchingReference(
        "; ".join(f"snp[{i}] {exc.reason}: {exc.detail}" for i, exc in enumerate(reasons))
    )
