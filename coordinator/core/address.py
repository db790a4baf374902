"""``HOST:PORT`` addresses as users type them and servers bind them.

One parser for every address the CLI and the server configuration accept, so a typo is refused
at start-up with the same words everywhere instead of surfacing later as a gRPC or socket error.
Pure: nothing is resolved here (a hostname is checked for shape only; the socket layer resolves
it when it is used).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from coordinator.errors import ConcordError, Status

__all__ = [
    "DEFAULT_HTTP_PORT",
    "DEFAULT_MESH_PORT",
    "DEFAULT_USER_PORT",
    "Address",
    "AddressError",
    "parse_address",
    "split_address",
]

DEFAULT_USER_PORT = 1313
"""User API (set, verify, recover)."""
DEFAULT_MESH_PORT = 7777
"""Mesh API (join, peer recovery)."""
DEFAULT_HTTP_PORT = 9102
"""Probes and metrics (plain HTTP, not gRPC)."""

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class AddressError(ConcordError, ValueError):
    """An address is not ``HOST:PORT`` (or ``HOST`` where a default port applies)."""

    reason = "invalid_address"
    status = Status.INVALID_ARGUMENT


@dataclass(frozen=True)
class Address:
    """A parsed address; ``host`` never carries IPv6 brackets, :meth:`__str__` adds them."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _check_host(host: str, what: str, text: str) -> None:
    if not host:
        raise AddressError(f"{what}: missing host in {text!r} (want HOST:PORT)")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise AddressError(f"{what}: {host!r} is neither an IP address nor a host name")


def parse_address(
    text: str,
    what: str = "address",
    *,
    default_port: int | None = None,
    allow_any_port: bool = False,
) -> Address:
    """Parse ``HOST:PORT``, ``[V6]:PORT``, or (with ``default_port``) ``HOST`` / ``[V6]``.

    Ports are 1..65535; ``allow_any_port`` also admits 0 (a bind to any free port). An IPv6
    literal needs brackets when a port follows, so ``::1:1313`` is refused rather than guessed.
    Raises :class:`AddressError` naming ``what`` (e.g. the flag) and the reason.
    """
    text = text.strip()
    if not text:
        raise AddressError(f"{what}: empty address (want HOST:PORT)")
    port_text: str | None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise AddressError(f"{what}: unclosed '[' in {text!r}")
        host, rest = text[1:close], text[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(f"{what}: [{host}] is not an IPv6 address") from None
        if rest == "":
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise AddressError(f"{what}: unexpected {rest!r} after [{host}] (want [V6]:PORT)")
    elif text.count(":") > 1:
        raise AddressError(
            f"{what}: IPv6 literals need brackets, e.g. [::1]:{default_port or 1313}; got {text!r}"
        )
    else:
        host, sep, after = text.partition(":")
        port_text = after if sep else None
        _check_host(host, what, text)
    if port_text is None:
        if default_port is None:
            raise AddressError(f"{what}: missing port in {text!r} (want HOST:PORT)")
        return Address(host, default_port)
    if not port_text.isascii() or not port_text.isdigit():
        raise AddressError(f"{what}: port {port_text!r} is not a number (want HOST:PORT)")
    port = int(port_text)
    low = 0 if allow_any_port else 1
    if not low <= port <= 65535:
        raise AddressError(f"{what}: port {port} out of range ({low}..65535)")
    return Address(host, port)


def split_address(address: str, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` into host (brackets removed) and port; :class:`AddressError` otherwise.

    Kept for callers that bind or dial (port 0 allowed: the caller decides what it means)."""
    parsed = parse_address(address, what, allow_any_port=True)
    return parsed.host, parsed.port
