"""One parser for every address the CLI and the server take (issue: ``-c 127.0.0.1`` refused,
``--user-addr 127.0.0.1:99999`` bound a random port, ``--user-addr localhost`` a ValueError)."""

from __future__ import annotations

import pytest

from coordinator.core.address import Address, AddressError, parse_address, split_address
from coordinator.errors import ConcordError, Status


@pytest.mark.parametrize(
    ("text", "default", "want"),
    [
        ("127.0.0.1:1313", None, Address("127.0.0.1", 1313)),
        ("127.0.0.1", 1313, Address("127.0.0.1", 1313)),
        ("localhost", 7777, Address("localhost", 7777)),
        ("coordinator.example.:443", None, Address("coordinator.example.", 443)),
        ("[::1]:1313", None, Address("::1", 1313)),
        ("[::1]", 1313, Address("::1", 1313)),
        ("  10.0.0.1:65535 ", None, Address("10.0.0.1", 65535)),
    ],
)
def test_accepted(text: str, default: int | None, want: Address) -> None:
    assert parse_address(text, default_port=default) == want


def test_canonical_text_brackets_ipv6() -> None:
    assert str(parse_address("[fe80::1]", default_port=1313)) == "[fe80::1]:1313"
    assert str(parse_address("127.0.0.1", default_port=1313)) == "127.0.0.1:1313"


@pytest.mark.parametrize(
    ("text", "default", "words"),
    [
        ("127.0.0.1:99999", None, "out of range"),
        ("127.0.0.1:0", None, "out of range"),
        ("127.0.0.1", None, "missing port"),
        ("::1:1313", 1313, "need brackets"),
        ("[::1", None, "unclosed"),
        ("[not-v6]:1", None, "not an IPv6"),
        ("[::1]x", None, "unexpected"),
        (":1313", None, "missing host"),
        ("host:port", None, "not a number"),
        ("bad_host!:1", None, "neither an IP address nor a host name"),
        ("-leading.dash:1", None, "neither"),
        ("", 1313, "empty"),
        ("127.0.0.1:١٣", None, "not a number"),  # non-ASCII digits are not a port
    ],
)
def test_refused_with_the_reason(text: str, default: int | None, words: str) -> None:
    with pytest.raises(AddressError, match=words) as info:
        parse_address(text, "--flag", default_port=default)
    assert str(info.value).startswith("--flag: ")
    assert info.value.reason == "invalid_address"
    assert info.value.status is Status.INVALID_ARGUMENT
    assert isinstance(info.value, ConcordError) and isinstance(info.value, ValueError)


def test_port_zero_only_for_binds() -> None:
    assert parse_address("127.0.0.1:0", allow_any_port=True).port == 0
    assert split_address("[::1]:0") == ("::1", 0)
    with pytest.raises(AddressError):
        split_address("127.0.0.1:65536")
