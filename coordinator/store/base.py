"""The Store protocol: the only thing the history needs from a key-value backend.

Keys are relative (``manifests/<hex>``, ``transitions/latest``, ``members/<id>``); a backend may
add its own prefix. Values are bytes. Content-addressed blobs are immutable, so callers may cache
them forever; only ``transitions/latest`` (and membership keys) ever change.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from coordinator.errors import ConcordError, Status

KEY_RE = re.compile(r"[a-z0-9-]+/[a-z0-9-]+")

DELETED = b""
"""What :meth:`Store.watch` yields when the watched key is deleted (DESIGN §12: whoever can
write the store may delete a key). The empty value is what compare_and_swap already treats a
missing key as, so "deleted" and "set to ``b''``" are one state; our callers never store empty
values, so for them ``value == DELETED`` means the key is gone."""


class StoreError(ConcordError):
    """Base class of store failures. Callers are told only the class name: a backend's text
    may describe its internals."""

    reason = "store_error"
    status = Status.INTERNAL

    def public_message(self) -> str:
        return f"store error: {type(self).__name__}"


class ConcurrentUpdate(StoreError):
    """compare_and_swap found a value other than the expected one (the caller may retry on the
    new history)."""

    reason = "concurrent_update"
    status = Status.FAILED_PRECONDITION

    def public_message(self) -> str:
        detail = str(self).removeprefix("concurrent update: ") or "the history moved"
        return f"concurrent update: {detail}"


class KeyNotFound(StoreError):
    reason = "store_key_not_found"

    def __init__(self, key: str) -> None:
        super().__init__(f"key not found: {key}")
        self.key = key


class StoreUnavailable(StoreError):
    """The backend cannot be reached (maps to UNAVAILABLE at the API)."""

    reason = "store_unavailable"
    status = Status.UNAVAILABLE

    def public_message(self) -> str:
        return f"unavailable: {type(self).__name__}"


class StoreAccessDenied(StoreUnavailable):
    """The backend answered but refused our credentials or their permissions: retrying will not
    help, the configuration must change. Still UNAVAILABLE at the API (the caller's request was
    fine); the message says which."""

    reason = "store_access_denied"


class StoreLocked(StoreError):
    """Another live process holds the store (file store directory lock)."""

    reason = "store_locked"


class InvalidKey(StoreError, ValueError):
    """A store key outside the key grammar (a programming error, or a hostile key read back)."""

    reason = "invalid_store_key"


KIND_RE = re.compile(r"[a-z0-9-]+")


def check_kind(kind: str) -> str:
    """A key's first name (the part before the slash)."""
    if not KIND_RE.fullmatch(kind):
        raise InvalidKey(f"invalid store key kind {kind!r}: want [a-z0-9-]")
    return kind


def check_key(key: str) -> str:
    """Keys have exactly one slash and ``[a-z0-9-]`` names (DESIGN §5)."""
    if not KEY_RE.fullmatch(key):
        raise InvalidKey(f"invalid store key {key!r}: want '<name>/<name>' with [a-z0-9-]")
    return key


@runtime_checkable
class Store(Protocol):
    async def get(self, key: str) -> bytes:
        """Value of ``key``; raises :class:`KeyNotFound` when absent."""
        ...

    async def set(self, key: str, value: bytes) -> None: ...

    async def has(self, key: str) -> bool: ...

    async def has_any(self, kind: str) -> bool:
        """Whether any key ``<kind>/…`` exists (``kind`` is one key name, e.g. ``manifests``).
        Lets a coordinator tell a new store from one whose ``latest`` was deleted."""
        ...

    async def compare_and_swap(self, key: str, old: bytes, new: bytes) -> None:
        """Set ``key`` to ``new`` if its value is ``old`` (a missing key equals ``b""``).

        Raises :class:`ConcurrentUpdate` on mismatch; the store is unchanged then.
        """
        ...

    def watch(self, key: str) -> AsyncIterator[bytes]:
        """New values of ``key`` as they are written (not the current one), and :data:`DELETED`
        when the key is deleted. Ends or raises on failure; restarting is the caller's business.
        The watch must already be listening when ``watch()`` returns (not lazily on first
        iteration): callers read the current value right after opening it and rely on not
        missing a write in between."""
        ...

    async def close(self) -> None:
        """Idempotent. Afterwards every operation raises :class:`StoreUnavailable` and open
        watches end (normally or with StoreUnavailable); the data stays for the next opener."""
        ...


@runtime_checkable
class MembershipStore(Store, Protocol):
    """A Store that also keeps lease-bound member keys (``members/<id>``, DESIGN §8).

    Only stores shared by several coordinators need this; the file store serves exactly one
    coordinator (its directory lock) and is not a MembershipStore.
    """

    async def put_member(self, member_id: str, value: bytes, ttl: int) -> None:
        """Publish (or update) ``members/<member_id>`` bound to a lease of ``ttl`` seconds and
        keep it alive until :meth:`stop_member`."""
        ...

    async def stop_member(self, member_id: str, *, revoke: bool = True) -> None:
        """Stop keeping the key alive: ``revoke`` deletes it now (a clean leave), otherwise it
        disappears when its lease runs out (what a crash looks like to the others)."""
        ...

    async def list_members(self) -> dict[str, bytes]: ...

    def watch_members(self) -> AsyncIterator[dict[str, bytes]]:
        """The member set now, then again after every change."""
        ...
