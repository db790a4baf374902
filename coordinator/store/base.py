"""The Store protocol: the only thing the history needs from a key-value backend.

Keys are relative (``manifests/<hex>``, ``transitions/latest``, ``members/<id>``); a backend may
add its own prefix. Values are bytes. Content-addressed blobs are immutable, so callers may cache
them forever; only ``transitions/latest`` (and membership keys) ever change.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

KEY_RE = re.compile(r"[a-z0-9-]+/[a-z0-9-]+")


class StoreError(Exception):
    """Base class of store failures."""


class ConcurrentUpdate(StoreError):
    """compare_and_swap found a value other than the expected one."""


class KeyNotFound(StoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"key not found: {key}")
        self.key = key


class StoreUnavailable(StoreError):
    """The backend cannot be reached (maps to UNAVAILABLE at the API)."""


class StoreAccessDenied(StoreUnavailable):
    """The backend answered but refused our credentials or their permissions: retrying will not
    help, the configuration must change. Still UNAVAILABLE at the API (the caller's request was
    fine); the message says which."""


class StoreLocked(StoreError):
    """Another live process holds the store (file store directory lock)."""


class InvalidKey(StoreError, ValueError):
    pass


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

    async def compare_and_swap(self, key: str, old: bytes, new: bytes) -> None:
        """Set ``key`` to ``new`` if its value is ``old`` (a missing key equals ``b""``).

        Raises :class:`ConcurrentUpdate` on mismatch; the store is unchanged then.
        """
        ...

    def watch(self, key: str) -> AsyncIterator[bytes]:
        """New values of ``key`` as they are written (not the current one). Ends or raises on
        failure; restarting is the caller's business. The watch must already be listening when
        ``watch()`` returns (not lazily on first iteration): callers read the current value right
        after opening it and rely on not missing a write in between."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class MembershipStore(Store, Protocol):
    """A Store that also keeps lease-bound member keys (``members/<id>``, DESIGN §8)."""

    async def put_member(self, member_id: str, value: bytes, ttl: int) -> None:
        """Publish (or update) ``members/<member_id>`` bound to a lease of ``ttl`` seconds and
        keep it alive until :meth:`stop_member`."""
        ...

    async def stop_member(self, member_id: str, *, revoke: bool = True) -> None: ...

    async def list_members(self) -> dict[str, bytes]: ...

    def watch_members(self) -> AsyncIterator[dict[str, bytes]]:
        """The member set now, then again after every change."""
        ...
