"""The root of every error of ours (DESIGN §1): a stable machine-readable ``reason`` and the
kind of status it maps to, both as data on the class, so the service maps errors by data (not by
the order of an isinstance ladder) and clients decide by reason, never by message text.

This module sits at the bottom of the layers: store, core, client and service all import it, and
it imports nothing of ours and no gRPC.
"""

from __future__ import annotations

import enum

__all__ = ["ERROR_DOMAIN", "ConcordError", "Status"]

ERROR_DOMAIN = "concord.v1"
"""The ``google.rpc.ErrorInfo.domain`` of our reasons: a client reads a reason only from it."""


class Status(enum.Enum):
    """The status kinds the API distinguishes; the service maps each to one gRPC code."""

    INVALID_ARGUMENT = "invalid_argument"
    FAILED_PRECONDITION = "failed_precondition"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class ConcordError(Exception):
    """Base of every typed error of the coordinator.

    Subclasses set ``reason`` (stable snake_case, sent on the wire) and ``status``. The message
    (``str(exc)``) is for people and may change; it never contains a secret.
    """

    reason: str = "internal"
    status: Status = Status.INTERNAL

    def public_message(self) -> str:
        """What a remote caller is told. INTERNAL errors say nothing (their text may describe
        our internals); a class whose text needs a fixed or shortened wording overrides this."""
        if self.status is Status.INTERNAL:
            return "internal error"
        return str(self)
