"""``HOST:PORT`` addresses as users type them and servers bind them."""

from __future__ import annotations


def split_address(address: str, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts may be bracketed) into host and port; ValueError otherwise."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{what} must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)
