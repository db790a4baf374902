"""Typed rejections of the attestation layer.

Every verification step raises exactly one subclass of :class:`EvidenceRejected`. The class is
the machine-readable reason (``reason`` is a stable snake_case name used in metrics, JSON output
and API status messages); the message is the human detail. Messages never contain secrets.
"""

from __future__ import annotations


class EvidenceRejected(Exception):
    """Base class of every typed rejection."""

    reason = "rejected"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


# --- input shape -----------------------------------------------------------------------------


class MalformedEvidence(EvidenceRejected):
    """The bytes are not a well-formed report, quote, envelope or certificate."""

    reason = "malformed"


class SizeLimitExceeded(MalformedEvidence):
    reason = "size_limit"


class UnsupportedVersion(MalformedEvidence):
    reason = "unsupported_version"


class ReservedFieldNotZero(MalformedEvidence):
    """A must-be-zero (MBZ) field or reserved bit is set."""

    reason = "mbz_violation"


# --- trust chain -----------------------------------------------------------------------------


class ChainRejected(EvidenceRejected):
    """A certificate chain does not lead to a pinned trust anchor."""

    reason = "chain"


class UntrustedRoot(ChainRejected):
    reason = "untrusted_root"


class CertificateSignatureInvalid(ChainRejected):
    reason = "certificate_signature"


class CertificateExpired(ChainRejected):
    """Outside the validity window at the verification time (expired or not yet valid)."""

    reason = "certificate_validity"


class CertificateRevoked(ChainRejected):
    reason = "revoked"


class CertificateExtensionInvalid(ChainRejected):
    reason = "certificate_extension"


class MissingCertificate(ChainRejected):
    reason = "missing_certificate"


# --- signatures and bindings -----------------------------------------------------------------


class SignatureInvalid(EvidenceRejected):
    """The report/quote (or QE report) signature does not verify."""

    reason = "signature"


class BindingMismatch(EvidenceRejected):
    """Two signed things that must agree do not (report vs VCEK, QE report vs attestation key)."""

    reason = "binding"


class ReportDataMismatch(EvidenceRejected):
    reason = "report_data"


# --- collateral ------------------------------------------------------------------------------


class CollateralRejected(EvidenceRejected):
    reason = "collateral"


class CollateralExpired(CollateralRejected):
    reason = "collateral_expired"


class TcbStatusRejected(EvidenceRejected):
    reason = "tcb_status"


# --- reference values ------------------------------------------------------------------------


class PolicyViolation(EvidenceRejected):
    """Cryptographically valid evidence that the reference values do not admit."""

    reason = "policy"


class MeasurementMismatch(PolicyViolation):
    reason = "measurement"


class DebugForbidden(PolicyViolation):
    reason = "debug"


class TcbTooLow(PolicyViolation):
    reason = "tcb_too_low"


class NoMatchingReference(PolicyViolation):
    """No reference entry of the evidence's TEE type admits it; detail names each entry's reason."""

    reason = "no_matching_reference"


class InvalidReferenceValues(ValueError):
    """Reference values (manifest or file) are malformed. Not a rejection of evidence."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why
