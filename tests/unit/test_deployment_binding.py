"""Deployments do not mix (DESIGN §12): the configured deployment name is part of the attested
state digest and of the peer-recovery report data; without a name both keep their old form."""

from __future__ import annotations

import hashlib

import pytest

from attestation.binding import (
    PURPOSE_PEER_RECOVER,
    BindingError,
    peer_recover_report_data,
    report_data,
    state_digest,
)

LATEST = hashlib.sha256(b"latest").digest()
HPKE = b"\x11" * 32
TOKEN = b"token"


def test_state_digest_binds_the_deployment_name() -> None:
    plain = state_digest(LATEST, b"root", b"mesh")
    a = state_digest(LATEST, b"root", b"mesh", "a")
    b = state_digest(LATEST, b"root", b"mesh", "b")
    assert len({plain, a, b}) == 3
    assert plain == state_digest(LATEST, b"root", b"mesh", "")
    expected = hashlib.sha256(
        LATEST
        + hashlib.sha256(b"root").digest()
        + hashlib.sha256(b"mesh").digest()
        + hashlib.sha256(b"a").digest()
    ).digest()
    assert a == expected
    # uninitialised stays all zero whatever the name
    assert state_digest(None, None, None, "a") == bytes(32)


def test_peer_recover_binds_the_deployment_name() -> None:
    a = peer_recover_report_data(HPKE, TOKEN, "a")
    assert a != peer_recover_report_data(HPKE, TOKEN, "b")
    assert a == report_data(PURPOSE_PEER_RECOVER, [HPKE, TOKEN, b"a"])
    assert peer_recover_report_data(HPKE, TOKEN) == report_data(PURPOSE_PEER_RECOVER, [HPKE, TOKEN])


def test_deployment_name_is_bounded() -> None:
    with pytest.raises(BindingError):
        peer_recover_report_data(HPKE, TOKEN, "x" * 300)
    with pytest.raises(BindingError):
        state_digest(LATEST, b"root", b"mesh", b"a")  # type: ignore[arg-type]
