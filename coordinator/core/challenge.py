"""Stateless challenge tokens (DESIGN.md §7).

A token is ``canonical CBOR [expiry (int unix seconds), latest transition hash (32), random (16)]
‖ HMAC-SHA256(challenge MAC key, cbor)[:16]``. The MAC key is derived from the deployment seed, so
every fresh coordinator of the deployment accepts the tokens of every other one without shared
state. The token is bound into the evidence of NewMeshCert / MeshAPI.Recover, which makes the
evidence fresh (expiry) and ties it to the manifest it was requested under (transition hash).

Check order: size and shape → MAC (constant time, before the body is parsed) → body → expiry →
transition. Errors carry a stable ``reason``; :class:`TokenWrongTransition` means the caller must
re-challenge (FAILED_PRECONDITION at the API), the others are INVALID_ARGUMENT / PERMISSION_DENIED
as the servicer decides.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from typing import Final

import cbor2

from coordinator.errors import ConcordError, Status

KEY_SIZE: Final = 32
TRANSITION_HASH_SIZE: Final = 32
RANDOM_SIZE: Final = 16
MAC_SIZE: Final = 16
DEFAULT_LIFETIME: Final = 60.0
MAX_LIFETIME: Final = 3600.0
# array(3) + uint64 + bstr(32) + bstr(16) = 1 + 9 + 34 + 17 = 61 body bytes, plus the MAC.
MAX_BODY_SIZE: Final = 61
MAX_TOKEN_SIZE: Final = MAX_BODY_SIZE + MAC_SIZE
_MAX_EXPIRY: Final = 2**64 - 1


class TokenError(ConcordError):
    """Base class of token rejections. Messages never contain key material."""

    reason = "token_rejected"
    status = Status.PERMISSION_DENIED

    def public_message(self) -> str:
        return "token: not issued by this deployment"


class TokenMalformed(TokenError):
    """Wrong size or structure."""

    reason = "token_malformed"
    status = Status.INVALID_ARGUMENT

    def public_message(self) -> str:
        return f"token: {self}"


class TokenInvalidMac(TokenError):
    """Not issued with this deployment's challenge key (or altered)."""

    reason = "token_invalid"


class TokenExpired(TokenError):
    """Past its expiry: the caller must ask for a new challenge."""

    reason = "token_expired"
    status = Status.FAILED_PRECONDITION

    def public_message(self) -> str:
        return "challenge token expired: re-challenge"


class TokenWrongTransition(TokenError):
    """Issued under another manifest transition: the caller must ask for a new challenge."""

    reason = "token_wrong_transition"
    status = Status.FAILED_PRECONDITION

    def public_message(self) -> str:
        return "challenge token is for another transition: re-challenge"


def issue_token(
    key: bytes, latest_transition_hash: bytes, now: float, lifetime: float = DEFAULT_LIFETIME
) -> bytes:
    """A fresh token valid until ``floor(now + lifetime)`` for the given transition."""
    _check_key(key)
    _check_hash(latest_transition_hash)
    if not (isinstance(lifetime, int | float) and 0 < lifetime <= MAX_LIFETIME):
        raise ValueError(f"lifetime must be in (0, {MAX_LIFETIME}] seconds")
    if not (isinstance(now, int | float) and math.isfinite(now) and now >= 0):
        raise ValueError("now must be a finite, non-negative unix time")
    expiry = math.floor(now + lifetime)
    body = cbor2.dumps([expiry, latest_transition_hash, os.urandom(RANDOM_SIZE)], canonical=True)
    return body + _mac(key, body)


def check_token(key: bytes, token: bytes, latest_transition_hash: bytes, now: float) -> None:
    """Accept a token issued for ``latest_transition_hash`` and not yet expired at ``now``.

    A token is valid while ``now < expiry``.
    """
    _check_key(key)
    _check_hash(latest_transition_hash)
    if not isinstance(token, bytes):
        raise TokenMalformed("token must be bytes")
    if not MAC_SIZE < len(token) <= MAX_TOKEN_SIZE:
        raise TokenMalformed(f"token must be {MAC_SIZE + 1}..{MAX_TOKEN_SIZE} bytes")
    body, tag = token[:-MAC_SIZE], token[-MAC_SIZE:]
    if not hmac.compare_digest(tag, _mac(key, body)):
        raise TokenInvalidMac("token MAC does not verify")
    expiry, bound_hash = _parse_body(body)
    if now >= expiry:
        raise TokenExpired("token expired")
    if not hmac.compare_digest(bound_hash, latest_transition_hash):
        raise TokenWrongTransition("token was issued for another manifest transition")


def _parse_body(body: bytes) -> tuple[int, bytes]:
    """Strictly parse an authenticated body (defence in depth: we only ever issue canonical ones)."""
    try:
        obj = cbor2.loads(body)
    except Exception:
        raise TokenMalformed("token body is not CBOR") from None
    if not (isinstance(obj, list) and len(obj) == 3):
        raise TokenMalformed("token body must be a 3-element array")
    expiry, bound_hash, nonce = obj
    if type(expiry) is not int or not 0 <= expiry <= _MAX_EXPIRY:
        raise TokenMalformed("token expiry must be an unsigned integer")
    if not (isinstance(bound_hash, bytes) and len(bound_hash) == TRANSITION_HASH_SIZE):
        raise TokenMalformed(f"token transition hash must be {TRANSITION_HASH_SIZE} bytes")
    if not (isinstance(nonce, bytes) and len(nonce) == RANDOM_SIZE):
        raise TokenMalformed(f"token random part must be {RANDOM_SIZE} bytes")
    if cbor2.dumps([expiry, bound_hash, nonce], canonical=True) != body:
        raise TokenMalformed("token body is not canonical CBOR")
    return expiry, bound_hash


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()[:MAC_SIZE]


def _check_key(key: bytes) -> None:
    if not (isinstance(key, bytes) and len(key) == KEY_SIZE):
        raise ValueError(f"challenge key must be {KEY_SIZE} bytes")


def _check_hash(value: bytes) -> None:
    if not (isinstance(value, bytes) and len(value) == TRANSITION_HASH_SIZE):
        raise ValueError(f"latest transition hash must be {TRANSITION_HASH_SIZE} bytes")
