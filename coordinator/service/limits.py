"""Request limits of the gRPC servers (DESIGN §13): every request costs bounded CPU and memory.

Three mechanisms, all explicit and listed by ``concord serve --help``:

- **Message size per method**, checked on the raw bytes before protobuf decodes them (a
  ``Challenge`` is a few bytes; only ``SetManifest`` may approach the transport cap); refused
  with INVALID_ARGUMENT and reason ``message_too_large``, naming the limit.
- **Concurrent RPCs** per server (port) and, process-wide, per expensive method. A call over a
  limit is refused at once with RESOURCE_EXHAUSTED and reason ``too_many_requests`` (no
  queueing: a queue would only move the flood into memory; clients back off and retry).
- **Transport policy** as gRPC core options: HTTP/2 streams per connection, TLS handshake
  timeout, idle and maximum connection age, keepalive and the ping policy.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import grpc

from attestation.evidence import MAX_ENVELOPE
from coordinator.core.limits import MAX_MESSAGE
from coordinator.errors import ConcordError, Status
from coordinator.service.status import rpc_status_of, wire_status

__all__ = [
    "DEFAULT_MESSAGE_SIZES",
    "DEFAULT_METHOD_CONCURRENCY",
    "METHODS",
    "LimitInterceptor",
    "MessageTooLarge",
    "RpcLimits",
    "TooManyRequests",
    "method_limits",
]

log = logging.getLogger("concord.limits")

KIB = 1024

SET_MANIFEST = "/concord.v1.UserAPI/SetManifest"
GET_MANIFESTS = "/concord.v1.UserAPI/GetManifests"
USER_RECOVER = "/concord.v1.UserAPI/Recover"
GET_HISTORY = "/concord.v1.UserAPI/GetHistory"
NEW_MESH_CERT = "/concord.v1.MeshAPI/NewMeshCert"
MESH_RECOVER = "/concord.v1.MeshAPI/Recover"
ATTEST = "/concord.v1.Attestation/Attest"
CHALLENGE = "/concord.v1.Attestation/Challenge"

_EVIDENCE_REQUEST = MAX_ENVELOPE + 16 * KIB  # envelope + keys, token and protobuf framing

DEFAULT_MESSAGE_SIZES: Mapping[str, int] = MappingProxyType(
    {
        SET_MANIFEST: MAX_MESSAGE,
        GET_MANIFESTS: 4 * KIB,
        GET_HISTORY: 4 * KIB,
        USER_RECOVER: 64 * KIB,
        NEW_MESH_CERT: _EVIDENCE_REQUEST,
        MESH_RECOVER: _EVIDENCE_REQUEST,
        ATTEST: 4 * KIB,
        CHALLENGE: 4 * KIB,
    }
)
"""Largest request (bytes, serialised) per method; any other method gets ``MAX_MESSAGE``."""

DEFAULT_METHOD_CONCURRENCY: Mapping[str, int] = MappingProxyType(
    {
        SET_MANIFEST: 4,
        GET_MANIFESTS: 16,
        GET_HISTORY: 4,
        USER_RECOVER: 4,
        MESH_RECOVER: 8,
        NEW_MESH_CERT: 256,
    }
)
"""Calls of an expensive method in progress at once, process-wide. NewMeshCert is the hot path
(batched in the issuance workers), so its cap is high; the rest are rare administrative calls."""


class TooManyRequests(ConcordError):
    """A concurrency limit is reached; the caller may retry after a back-off."""

    reason = "too_many_requests"
    status = Status.RESOURCE_EXHAUSTED


class MessageTooLarge(ConcordError):
    """A request larger than its method's limit, refused before it is decoded. Not retryable,
    so INVALID_ARGUMENT like every other size limit of ours (DESIGN §13); only requests above
    the transport cap get gRPC core's own RESOURCE_EXHAUSTED."""

    reason = "message_too_large"
    status = Status.INVALID_ARGUMENT


@dataclass(frozen=True)
class RpcLimits:
    """Every limit of the gRPC servers; the defaults are what ``concord serve`` uses."""

    max_concurrent_rpcs: int = 512
    """Calls in progress per server (the user port and the mesh port count separately)."""
    method_concurrency: Mapping[str, int] = field(
        default_factory=lambda: DEFAULT_METHOD_CONCURRENCY
    )
    message_sizes: Mapping[str, int] = field(default_factory=lambda: DEFAULT_MESSAGE_SIZES)
    max_streams_per_connection: int = 64
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    """A connection without a call for this long is closed (GOAWAY)."""
    max_connection_age_s: float = 3600.0
    connection_age_grace_s: float = 30.0
    """After its maximum age a connection finishes its calls within this grace, then closes."""
    keepalive_time_s: float = 60.0
    """The server pings an idle-looking connection after this long, to find dead peers."""
    keepalive_timeout_s: float = 20.0
    min_client_ping_interval_s: float = 10.0
    """Clients pinging more often than this are sent GOAWAY after two strikes."""

    def __post_init__(self) -> None:
        numbers = {
            "max_concurrent_rpcs": self.max_concurrent_rpcs,
            "max_streams_per_connection": self.max_streams_per_connection,
            "handshake_timeout_s": self.handshake_timeout_s,
            "idle_timeout_s": self.idle_timeout_s,
            "max_connection_age_s": self.max_connection_age_s,
            "keepalive_time_s": self.keepalive_time_s,
            "keepalive_timeout_s": self.keepalive_timeout_s,
        }
        checks = [
            *numbers.items(),
            *((f"concurrency of {m}", n) for m, n in self.method_concurrency.items()),
            *((f"message size of {m}", n) for m, n in self.message_sizes.items()),
        ]
        for name, value in checks:
            if not value > 0:
                raise ValueError(f"{name}: must be positive, got {value}")

    def message_size(self, method: str) -> int:
        return min(self.message_sizes.get(method, MAX_MESSAGE), MAX_MESSAGE)

    def grpc_options(self) -> list[tuple[str, int]]:
        """The transport policy as gRPC core server options."""
        ms = _ms
        return [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            ("grpc.server_handshake_timeout_ms", ms(self.handshake_timeout_s)),
            ("grpc.max_connection_idle_ms", ms(self.idle_timeout_s)),
            ("grpc.max_connection_age_ms", ms(self.max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", ms(self.connection_age_grace_s)),
            ("grpc.keepalive_time_ms", ms(self.keepalive_time_s)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout_s)),
            ("grpc.keepalive_permit_without_calls", 0),
            (
                "grpc.http2.min_recv_ping_interval_without_data_ms",
                ms(self.min_client_ping_interval_s),
            ),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.max_metadata_size", 16 * KIB),
        ]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class Gate:
    """A non-blocking counter of calls in progress (single event loop: no lock needed)."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.active = 0

    def enter(self) -> None:
        if self.active >= self.limit:
            raise TooManyRequests(
                f"too many concurrent requests: {self.name} is limited to {self.limit} "
                "at once; retry after a back-off"
            )
        self.active += 1

    def leave(self) -> None:
        self.active -= 1


class MethodGates:
    """The process-wide per-method gates, shared by every server of the process."""

    def __init__(self, limits: RpcLimits) -> None:
        self._gates = {
            method: Gate(method.lstrip("/").removeprefix("concord.v1."), limit)
            for method, limit in limits.method_concurrency.items()
        }

    def get(self, method: str) -> Gate | None:
        return self._gates.get(method)


@dataclass(frozen=True)
class _Oversized:
    """Stands in for a request its size kept from being decoded."""

    size: int


Behaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class LimitInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Applies :class:`RpcLimits` to one server: size before decoding, then concurrency, then the
    servicer. Refusals carry ``google.rpc.ErrorInfo`` like every other refusal."""

    def __init__(self, limits: RpcLimits, methods: MethodGates, server_name: str) -> None:
        self._limits = limits
        self._methods = methods
        self._server = Gate(f"the {server_name} server", limits.max_concurrent_rpcs)

    @property
    def active(self) -> int:
        return self._server.active

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # every method of ours is unary; leave anything else alone
        method: str = handler_call_details.method
        limit = self._limits.message_size(method)
        decode = handler.request_deserializer
        inner: Behaviour = handler.unary_unary
        method_gate = self._methods.get(method)
        server_gate = self._server

        def bounded_decode(data: bytes) -> Any:
            if len(data) > limit:
                return _Oversized(len(data))
            return decode(data) if decode is not None else data

        async def behaviour(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                if isinstance(request, _Oversized):
                    raise MessageTooLarge(
                        f"request of {request.size} bytes exceeds the limit of {limit} bytes "
                        f"for {method.lstrip('/')}"
                    )
                server_gate.enter()
            except ConcordError as exc:
                await _refuse(method, exc, context)
                raise
            try:
                if method_gate is not None:
                    try:
                        method_gate.enter()
                    except ConcordError as exc:
                        await _refuse(method, exc, context)
                        raise
                try:
                    return await inner(request, context)
                finally:
                    if method_gate is not None:
                        method_gate.leave()
            finally:
                server_gate.leave()

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=bounded_decode,
            response_serializer=handler.response_serializer,
        )


async def _refuse(
    method: str, exc: ConcordError, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    """Answer the refusal (this raises, ending the call); logged at debug level only: a flood
    of refusals must not turn into a flood of log lines."""
    log.debug("%s refused: %s", method, exc.reason)
    await context.abort_with_status(rpc_status_of(wire_status(exc)))


METHODS: Mapping[str, str] = MappingProxyType(
    {
        "SetManifest": SET_MANIFEST,
        "GetManifests": GET_MANIFESTS,
        "GetHistory": GET_HISTORY,
        "UserAPI/Recover": USER_RECOVER,
        "NewMeshCert": NEW_MESH_CERT,
        "MeshAPI/Recover": MESH_RECOVER,
        "Attest": ATTEST,
        "Challenge": CHALLENGE,
    }
)
"""The names ``--max-concurrent METHOD=N`` accepts."""


def method_limits(items: Sequence[str], base: Mapping[str, int]) -> dict[str, int]:
    """``base`` with each ``METHOD=N`` of ``items`` applied (ValueError naming a bad one)."""
    out = dict(base)
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in METHODS:
            raise ValueError(f"{item!r}: want METHOD=N with METHOD one of {', '.join(METHODS)}")
        try:
            limit = int(value)
        except ValueError:
            raise ValueError(f"{item!r}: N must be a positive integer") from None
        if limit <= 0:
            raise ValueError(f"{item!r}: N must be a positive integer")
        out[METHODS[name]] = limit
    return out
