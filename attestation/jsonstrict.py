"""Strict JSON objects: the one ``object_pairs_hook`` that refuses duplicate keys.

Python's ``json`` keeps the last of two equal keys, so ``{"a": 1, "a": 2}`` would read as
``{"a": 2}`` here and possibly as ``{"a": 1}`` in another parser: two readers of one signed or
hashed document could disagree on what it says. Every JSON document that carries trust
(manifests, seed-share documents, TDX collateral) is parsed with :func:`reject_duplicates`.
It lives in ``attestation`` (which depends on nothing of the coordinator) so both packages use
the same hook.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DuplicateKey", "reject_duplicates"]


class DuplicateKey(ValueError):
    """A JSON object names the same key twice. A ``ValueError``, like every ``json`` error, so
    callers that map parse errors keep working; ``key`` is the (untrusted) repeated key."""

    reason = "duplicate_key"

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key[:64]!r}")
        self.key = key


def reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for :func:`json.loads`: a dict, or :class:`DuplicateKey`."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out
