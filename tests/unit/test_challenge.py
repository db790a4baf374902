"""Stateless challenge tokens (coordinator/core/challenge.py, DESIGN.md §7)."""

from __future__ import annotations

import hashlib
import hmac

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core import challenge
from coordinator.core.challenge import (
    TokenError,
    TokenExpired,
    TokenInvalidMac,
    TokenMalformed,
    TokenWrongTransition,
    check_token,
    issue_token,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
LATEST = hashlib.sha256(b"transition-1").digest()
NEXT = hashlib.sha256(b"transition-2").digest()
NOW = 1_700_000_000.25


def _forge(body: bytes, key: bytes = KEY) -> bytes:
    """A token with a valid MAC over an arbitrary body (only the key holder can do this)."""
    return body + hmac.new(key, body, hashlib.sha256).digest()[:16]


# --- format ----------------------------------------------------------------------------------


def test_token_format() -> None:
    token = issue_token(KEY, LATEST, NOW)
    body, tag = token[:-16], token[-16:]
    expiry, bound, nonce = cbor2.loads(body)
    assert expiry == 1_700_000_060
    assert type(expiry) is int
    assert bound == LATEST
    assert isinstance(nonce, bytes) and len(nonce) == 16
    assert body == cbor2.dumps([expiry, bound, nonce], canonical=True)
    assert tag == hmac.new(KEY, body, hashlib.sha256).digest()[:16]
    assert len(token) == 73  # 5-byte uint for today's timestamps


def test_tokens_are_unique() -> None:
    assert issue_token(KEY, LATEST, NOW) != issue_token(KEY, LATEST, NOW)


def test_custom_lifetime() -> None:
    token = issue_token(KEY, LATEST, 100.0, lifetime=5)
    assert cbor2.loads(token[:-16])[0] == 105
    check_token(KEY, token, LATEST, 104.999)
    with pytest.raises(TokenExpired):
        check_token(KEY, token, LATEST, 105.0)


def test_largest_expiry_fits_the_size_bound() -> None:
    token = issue_token(KEY, LATEST, float(2**40))
    assert len(token) == challenge.MAX_TOKEN_SIZE
    check_token(KEY, token, LATEST, float(2**40))


# --- acceptance and each rejection -----------------------------------------------------------


def test_valid_token_accepted() -> None:
    token = issue_token(KEY, LATEST, NOW)
    check_token(KEY, token, LATEST, NOW)
    check_token(KEY, token, LATEST, NOW + 59.7)  # expiry 1_700_000_060, now < expiry


def test_expired() -> None:
    token = issue_token(KEY, LATEST, NOW)
    for late in (1_700_000_060.0, NOW + 60, NOW + 3600):
        with pytest.raises(TokenExpired):
            check_token(KEY, token, LATEST, late)


def test_wrong_transition() -> None:
    token = issue_token(KEY, LATEST, NOW)
    with pytest.raises(TokenWrongTransition):
        check_token(KEY, token, NEXT, NOW)


def test_expiry_checked_before_transition() -> None:
    token = issue_token(KEY, LATEST, NOW)
    with pytest.raises(TokenExpired):
        check_token(KEY, token, NEXT, NOW + 120)


def test_wrong_key() -> None:
    token = issue_token(KEY, LATEST, NOW)
    with pytest.raises(TokenInvalidMac):
        check_token(OTHER_KEY, token, LATEST, NOW)


def test_every_flipped_byte_rejected() -> None:
    token = issue_token(KEY, LATEST, NOW)
    for i in range(len(token)):
        bad = bytearray(token)
        bad[i] ^= 0x80
        with pytest.raises(TokenInvalidMac):
            check_token(KEY, bytes(bad), LATEST, NOW)


def test_truncations_rejected() -> None:
    token = issue_token(KEY, LATEST, NOW)
    for n in range(len(token)):
        expected = TokenMalformed if n <= 16 else TokenInvalidMac
        with pytest.raises(expected):
            check_token(KEY, token[:n], LATEST, NOW)


def test_oversized_rejected_before_mac() -> None:
    body = b"\x00" * (challenge.MAX_BODY_SIZE + 1)
    with pytest.raises(TokenMalformed):
        check_token(KEY, _forge(body), LATEST, NOW)


def test_non_bytes_rejected() -> None:
    token = issue_token(KEY, LATEST, NOW)
    with pytest.raises(TokenMalformed):
        check_token(KEY, token.hex(), LATEST, NOW)  # type: ignore[arg-type]
    with pytest.raises(TokenMalformed):
        check_token(KEY, bytearray(token), LATEST, NOW)  # type: ignore[arg-type]


def test_mac_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("coordinator.core.challenge.hmac.compare_digest", spy)
    token = issue_token(KEY, LATEST, NOW)
    check_token(KEY, token, LATEST, NOW)
    assert (token[-16:], hmac.new(KEY, token[:-16], hashlib.sha256).digest()[:16]) in calls


# --- authenticated but malformed bodies (defence in depth) -----------------------------------


def _canon(obj: object) -> bytes:
    return cbor2.dumps(obj, canonical=True)


@pytest.mark.parametrize(
    "body",
    [
        b"\xff",
        _canon([1_700_000_060, LATEST]),
        _canon([1_700_000_060, LATEST, b"\x00" * 16, b""]),
        _canon({"expiry": 1_700_000_060}),
        _canon([True, LATEST, b"\x00" * 16]),
        _canon([-1, LATEST, b"\x00" * 16]),
        _canon([1_700_000_060.0, LATEST, b"\x00" * 16]),
        _canon([1_700_000_060, LATEST[:31], b"\x00" * 16]),
        _canon([1_700_000_060, LATEST.hex()[:32], b"\x00" * 16]),
        _canon([1_700_000_060, LATEST, b"\x00" * 15]),
        _canon([1_700_000_060, LATEST, b"\x00" * 16])[:-1],
        # Non-canonical: expiry as a 9-byte uint although it fits in 5.
        b"\x83\x1b" + (1_700_000_060).to_bytes(8, "big") + _canon(LATEST) + _canon(b"\x00" * 16),
    ],
)
def test_authenticated_malformed_body(body: bytes) -> None:
    with pytest.raises(TokenMalformed):
        check_token(KEY, _forge(body), LATEST, NOW)


def test_forged_with_other_key_is_invalid_mac_not_malformed() -> None:
    body = _canon([1_700_000_060, LATEST, b"\x00" * 16])
    check_token(KEY, _forge(body), LATEST, NOW)
    with pytest.raises(TokenInvalidMac):
        check_token(KEY, _forge(body, OTHER_KEY), LATEST, NOW)


@settings(max_examples=200, deadline=None)
@given(token=st.binary(max_size=100))
def test_random_bytes_never_accepted(token: bytes) -> None:
    with pytest.raises((TokenMalformed, TokenInvalidMac)):
        check_token(KEY, token, LATEST, NOW)


# --- errors and argument validation ----------------------------------------------------------


def test_error_hierarchy_and_reasons() -> None:
    classes = (TokenMalformed, TokenInvalidMac, TokenExpired, TokenWrongTransition)
    assert all(issubclass(c, TokenError) for c in classes)
    assert len({c.reason for c in classes}) == len(classes)


def test_error_messages_hold_no_key_material() -> None:
    token = issue_token(KEY, LATEST, NOW)
    with pytest.raises(TokenError) as exc:
        check_token(OTHER_KEY, token, LATEST, NOW)
    text = str(exc.value)
    assert KEY.hex() not in text and OTHER_KEY.hex() not in text and token.hex() not in text


@pytest.mark.parametrize(
    ("key", "latest", "now", "lifetime"),
    [
        (KEY[:31], LATEST, NOW, 60),
        (KEY + b"\x00", LATEST, NOW, 60),
        (KEY, LATEST[:31], NOW, 60),
        (KEY, LATEST, NOW, 0),
        (KEY, LATEST, NOW, -1),
        (KEY, LATEST, NOW, challenge.MAX_LIFETIME + 1),
        (KEY, LATEST, float("nan"), 60),
        (KEY, LATEST, -5.0, 60),
    ],
)
def test_issue_validates_arguments(key: bytes, latest: bytes, now: float, lifetime: float) -> None:
    with pytest.raises(ValueError):
        issue_token(key, latest, now, lifetime)


def test_check_validates_own_arguments() -> None:
    token = issue_token(KEY, LATEST, NOW)
    with pytest.raises(ValueError):
        check_token(KEY[:16], token, LATEST, NOW)
    with pytest.raises(ValueError):
        check_token(KEY, token, LATEST[:16], NOW)
