"""From a typed error to what the caller receives (DESIGN §1, §7): a gRPC code, a message, and
``google.rpc.ErrorInfo`` with the stable reason in the status details.

The code comes from data on the error (``ConcordError.status`` through one table), never from
the order of isinstance checks. The attestation layer knows nothing of the coordinator, so its
errors are adapted here. Anything else is INTERNAL "internal error": the caller learns nothing
of it, the server logs it with its traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from attestation.binding import BindingError
from attestation.errors import EvidenceRejected, MalformedEvidence
from attestation.providers.base import ProviderError
from coordinator.errors import ERROR_DOMAIN, ConcordError, Status

__all__ = [
    "CODES",
    "REASON_EVIDENCE_MALFORMED",
    "REASON_EVIDENCE_REJECTED",
    "REASON_INTERNAL",
    "REASON_INVALID_BINDING_INPUT",
    "REASON_PROVIDER_UNAVAILABLE",
    "WireStatus",
    "rpc_status_of",
    "wire_status",
]

CODES: Mapping[Status, grpc.StatusCode] = MappingProxyType(
    {
        Status.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
        Status.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
        Status.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
        Status.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
        Status.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
        Status.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
        Status.INTERNAL: grpc.StatusCode.INTERNAL,
    }
)
"""The one table from our status kinds to gRPC codes."""

REASON_EVIDENCE_MALFORMED = "evidence_malformed"
REASON_EVIDENCE_REJECTED = "evidence_rejected"
REASON_PROVIDER_UNAVAILABLE = "evidence_provider_unavailable"
REASON_INVALID_BINDING_INPUT = "invalid_binding_input"
REASON_INTERNAL = ConcordError.reason
EVIDENCE_REASON_KEY = "evidence_reason"
"""ErrorInfo metadata key holding the attestation layer's own reason (e.g. ``tcb_status``)."""


@dataclass(frozen=True)
class WireStatus:
    """What one failed call answers: code and message as before, plus the reason."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: Mapping[str, str] = field(default_factory=dict)


def wire_status(exc: BaseException) -> WireStatus:
    """The status a caller receives for ``exc``; never contains a secret."""
    if isinstance(exc, ConcordError):
        return WireStatus(CODES[exc.status], exc.public_message(), exc.reason)
    if isinstance(exc, EvidenceRejected):
        malformed = isinstance(exc, MalformedEvidence)
        return WireStatus(
            grpc.StatusCode.INVALID_ARGUMENT if malformed else grpc.StatusCode.PERMISSION_DENIED,
            f"evidence rejected: {exc}",
            REASON_EVIDENCE_MALFORMED if malformed else REASON_EVIDENCE_REJECTED,
            {EVIDENCE_REASON_KEY: exc.reason},
        )
    if isinstance(exc, BindingError):
        return WireStatus(grpc.StatusCode.INVALID_ARGUMENT, str(exc), REASON_INVALID_BINDING_INPUT)
    if isinstance(exc, ProviderError):
        return WireStatus(
            grpc.StatusCode.UNAVAILABLE,
            f"unavailable: {type(exc).__name__}",
            REASON_PROVIDER_UNAVAILABLE,
        )
    return WireStatus(grpc.StatusCode.INTERNAL, "internal error", REASON_INTERNAL)


def rpc_status_of(status: WireStatus) -> grpc.Status:
    """``status`` as a gRPC status whose details carry ``google.rpc.ErrorInfo``; code and
    message are the same as without details, so clients that ignore them see no change."""
    info = error_details_pb2.ErrorInfo(
        reason=status.reason, domain=ERROR_DOMAIN, metadata=dict(status.metadata)
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    proto = status_pb2.Status(code=status.code.value[0], message=status.message, details=[detail])
    return rpc_status.to_status(proto)
