"""Every error of ours has a stable reason and a status kind as data (DESIGN §1); the service
maps them through one table and sends the reason as ``google.rpc.ErrorInfo``; the client reads
it back and decides retries by it, whatever the message says."""

from __future__ import annotations

import importlib
import pkgutil
import re

import grpc
import pytest

import coordinator
from attestation.binding import BindingError
from attestation.errors import EvidenceRejected, MalformedEvidence, ReportDataMismatch
from attestation.providers.base import ProviderError
from coordinator.client.errors import DETAILS_KEY, RETRY_REASONS, reason_in, status_kind
from coordinator.client.operations import OperationRefused, retryable
from coordinator.core.challenge import TokenExpired, TokenMalformed
from coordinator.core.rules import NotWorkloadOwner
from coordinator.core.state import NotInitialized, Stale
from coordinator.errors import ERROR_DOMAIN, ConcordError, Status
from coordinator.service.status import CODES, rpc_status_of, wire_status
from coordinator.store.base import ConcurrentUpdate, StoreError, StoreUnavailable

SNAKE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")

# Classes that deliberately share their parent's reason (same meaning, another Python type).
SAME_MEANING: frozenset[str] = frozenset()


def _import_everything() -> None:
    for info in pkgutil.walk_packages(coordinator.__path__, "coordinator."):
        if not info.name.endswith(".__main__"):  # running it is not importing it
            importlib.import_module(info.name)


def all_errors() -> list[type[ConcordError]]:
    _import_everything()
    seen: list[type[ConcordError]] = []
    todo: list[type[ConcordError]] = [ConcordError]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return [c for c in seen if c.__module__.startswith("coordinator.")]


def bare(cls: type[ConcordError]) -> ConcordError:
    """An instance without running its constructor (constructors differ; the data does not)."""
    return cls.__new__(cls)


def test_the_walk_finds_the_error_families() -> None:
    names = {c.__name__ for c in all_errors()}
    # One of each layer: a regression that detaches a family from the root fails here.
    assert {"StoreError", "HistoryError", "StateError", "TokenError", "ManifestError"} <= names
    assert {"NotWorkloadOwner", "OperationRefused", "AttestationFailed"} <= names
    assert len(names) > 40


@pytest.mark.parametrize("cls", all_errors(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_error_declares_a_snake_case_reason_and_a_status(cls: type[ConcordError]) -> None:
    qualname = f"{cls.__module__}.{cls.__name__}"
    assert "reason" in vars(cls) or qualname in SAME_MEANING, f"{qualname} inherits its reason"
    assert SNAKE.fullmatch(cls.reason), cls.reason
    assert isinstance(cls.status, Status)
    assert cls.status in CODES


def test_reasons_are_unique() -> None:
    owners: dict[str, str] = {}
    for cls in all_errors():
        if "reason" not in vars(cls):
            continue
        name = f"{cls.__module__}.{cls.__name__}"
        assert cls.reason not in owners, f"{name} reuses {cls.reason!r} of {owners[cls.reason]}"
        owners[cls.reason] = name


def test_the_table_covers_every_status_kind() -> None:
    assert set(CODES) == set(Status)
    assert len(set(CODES.values())) == len(Status)


@pytest.mark.parametrize("cls", all_errors(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_wire_status_comes_from_the_data(cls: type[ConcordError]) -> None:
    err = bare(cls)
    status = wire_status(err)
    assert status.reason == cls.reason
    assert status.code == CODES[err.status]
    if err.status is Status.INTERNAL and not isinstance(err, StoreError):
        assert status.message in ("internal error", f"store error: {cls.__name__}")


def test_messages_kept_as_before() -> None:
    """The exact texts old clients and the refusal tests read."""
    assert wire_status(NotInitialized("whatever")).message == "not initialized"
    assert wire_status(Stale(None)).message == "recovery mode"
    assert wire_status(ConcurrentUpdate("x moved")).message == "concurrent update: x moved"
    assert wire_status(ConcurrentUpdate()).message == "concurrent update: the history moved"
    assert wire_status(TokenExpired("t")).message == "challenge token expired: re-challenge"
    assert wire_status(TokenMalformed("too short")).message == "token: too short"
    unavailable = wire_status(StoreUnavailable("etcd at 10.0.0.1:2379 down"))
    assert (unavailable.code, unavailable.message) == (
        grpc.StatusCode.UNAVAILABLE,
        "unavailable: StoreUnavailable",
    )
    assert wire_status(StoreError("/concord/x: bad")).message == "store error: StoreError"


def test_attestation_errors_are_adapted() -> None:
    malformed = wire_status(MalformedEvidence("short"))
    assert (malformed.code, malformed.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "evidence_malformed",
    )
    rejected = wire_status(ReportDataMismatch("differs"))
    assert (rejected.code, rejected.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "evidence_rejected",
    )
    assert rejected.metadata == {"evidence_reason": ReportDataMismatch.reason}
    assert rejected.message == f"evidence rejected: {ReportDataMismatch('differs')}"
    assert wire_status(EvidenceRejected("x")).code == grpc.StatusCode.PERMISSION_DENIED
    provider = wire_status(ProviderError("/dev/tsm gone"))
    assert (provider.code, provider.message) == (
        grpc.StatusCode.UNAVAILABLE,
        "unavailable: ProviderError",
    )
    binding = wire_status(BindingError("nonce", "must be 32 bytes"))
    assert (binding.code, binding.message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "nonce: must be 32 bytes",
    )


def test_unknown_errors_say_nothing() -> None:
    status = wire_status(RuntimeError("seed=00112233"))
    assert (status.code, status.message, status.reason) == (
        grpc.StatusCode.INTERNAL,
        "internal error",
        "internal",
    )
    assert "0011" not in wire_status(KeyError("seed=00112233")).message


def _trailing(exc: BaseException) -> list[tuple[str, str | bytes]]:
    return list(rpc_status_of(wire_status(exc)).trailing_metadata)


def test_reason_round_trips_through_the_status_details() -> None:
    status = rpc_status_of(wire_status(NotWorkloadOwner("owner_public_key: no")))
    assert status.code == grpc.StatusCode.PERMISSION_DENIED
    assert status.details == "owner_public_key: no"
    assert reason_in(status.trailing_metadata) == "not_workload_owner"
    assert reason_in(_trailing(ReportDataMismatch("x"))) == "evidence_rejected"


def test_reason_absent_or_garbled_or_foreign_is_none() -> None:
    assert reason_in([]) is None
    assert reason_in([("other-bin", b"\x00")]) is None
    assert reason_in([(DETAILS_KEY, b"\xff\xff\xff")]) is None
    foreign = [
        (key, value.replace(ERROR_DOMAIN.encode(), b"example.v9"))
        if isinstance(value, bytes)
        else (key, value)
        for key, value in _trailing(Stale(None))
    ]
    assert reason_in(foreign) is None


def test_status_kind_reverses_the_table() -> None:
    for kind, code in CODES.items():
        assert status_kind(code) is kind
    assert status_kind(grpc.StatusCode.DEADLINE_EXCEEDED) is Status.UNAVAILABLE
    assert status_kind(grpc.StatusCode.UNKNOWN) is Status.INTERNAL


# --- retries by reason, whatever the words -----------------------------------------------------


def _refusal(exc: ConcordError, message: str | None = None) -> OperationRefused:
    status = wire_status(exc)
    trailing = list(rpc_status_of(status).trailing_metadata)
    return OperationRefused("join", status.code, message or status.message, reason_in(trailing))


DECISIONS: list[tuple[ConcordError, bool]] = [
    (NotInitialized(), True),
    (Stale(None), True),
    (ConcurrentUpdate("moved"), True),
    (TokenExpired("t"), True),
    (bare(NotWorkloadOwner), False),
    (TokenMalformed("short"), False),
    (StoreUnavailable("down"), True),  # by its UNAVAILABLE code
    (StoreError("bad"), False),
]


@pytest.mark.parametrize("message", [None, "xyz", "not initialized", "recovery mode"])
def test_retry_decisions_ignore_the_message(message: str | None) -> None:
    decisions = [retryable(_refusal(exc, message)) is not None for exc, _ in DECISIONS]
    assert decisions == [retry for _, retry in DECISIONS]


def test_a_refusal_without_a_reason_is_not_retried_on_its_words() -> None:
    old_server = OperationRefused("join", grpc.StatusCode.FAILED_PRECONDITION, "recovery mode")
    assert old_server.reason == "operation_refused"
    assert retryable(old_server) is None


def test_retry_reasons_are_reasons_of_ours() -> None:
    declared = {c.reason for c in all_errors()}
    assert declared >= RETRY_REASONS
