"""Reading the coordinator's reason from a failed call (DESIGN §1, §7).

The server sends ``google.rpc.ErrorInfo(reason, domain="concord.v1")`` inside the
``google.rpc.Status`` in the trailing metadata. Clients decide by that reason, never by the
message text, which is for people and may be reworded. A status without our ErrorInfo (an older
server, or one the transport made up) has no reason: callers then fall back to the gRPC code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from coordinator.errors import ERROR_DOMAIN, Status

__all__ = ["DETAILS_KEY", "RETRY_REASONS", "TRANSPORT_CODES", "reason_of", "status_kind"]

DETAILS_KEY = "grpc-status-details-bin"
"""The trailing metadata key gRPC uses for the serialised ``google.rpc.Status``."""

RETRY_REASONS = frozenset(
    {
        "not_initialized",
        "recovery_mode",
        "token_expired",
        "token_wrong_transition",
        "concurrent_update",
        "too_many_requests",
    }
)
"""Refusals that a later attempt may not meet: the coordinator is starting, recovering or at a
concurrency limit, or the history moved under the caller's challenge or request."""

TRANSPORT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Codes that mean "not reached / not answered in time", with or without a reason."""

_KINDS: Mapping[grpc.StatusCode, Status] = MappingProxyType(
    {
        grpc.StatusCode.INVALID_ARGUMENT: Status.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION: Status.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED: Status.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED: Status.RESOURCE_EXHAUSTED,
        grpc.StatusCode.NOT_FOUND: Status.NOT_FOUND,
        grpc.StatusCode.UNAVAILABLE: Status.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED: Status.UNAVAILABLE,
    }
)


def status_kind(code: grpc.StatusCode) -> Status:
    """Our status kind for a gRPC code (INTERNAL for the codes we never send)."""
    return _KINDS.get(code, Status.INTERNAL)


def reason_of(exc: grpc.aio.AioRpcError | grpc.RpcError) -> str | None:
    """The coordinator's stable reason for a failed call, or None when it sent none."""
    try:
        trailing = exc.trailing_metadata()
    except Exception:  # a sync RpcError that is not a Call has no metadata
        return None
    return reason_in(trailing or ())


def reason_in(trailing: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The ``concord.v1`` ErrorInfo reason in trailing metadata; None when absent or garbled
    (a reason only ever relaxes what the caller does after a refusal, so unknown means none)."""
    for key, value in trailing:
        if key != DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Is(info.DESCRIPTOR) and detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return str(info.reason) or None
        return None
    return None
