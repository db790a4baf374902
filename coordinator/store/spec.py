"""The one parser of ``--store`` specs (DESIGN §11): ``file:DIR`` or ``etcd://HOST:PORT[,...]``.

The CLI, the server and the tools all go through :func:`parse_store_spec`, so a spec accepted
in one place is accepted everywhere and a bad one fails before anything is opened, with an
error naming what is wrong. Pure: no I/O, no store imports.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from coordinator.errors import Status
from coordinator.store.base import StoreError

__all__ = ["FILE_PREFIX", "StoreKind", "StoreSpec", "StoreSpecError", "parse_store_spec"]

FILE_PREFIX = "file:"
ETCD_PREFIX = "etcd://"
_USAGE = "want file:DIR or etcd://HOST:PORT[,HOST:PORT...]"


class StoreSpecError(StoreError, ValueError):
    """A ``--store`` value that names no usable store; the message says which part is wrong."""

    reason = "invalid_store_spec"
    status = Status.INVALID_ARGUMENT


class StoreKind(enum.Enum):
    FILE = "file"
    ETCD = "etcd"


@dataclass(frozen=True)
class StoreSpec:
    """A parsed ``--store``: ``directory`` for file, ``endpoints`` (``host:port``) for etcd."""

    kind: StoreKind
    directory: str | None = None
    endpoints: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.kind is StoreKind.FILE:
            return f"{FILE_PREFIX}{self.directory}"
        return ETCD_PREFIX + ",".join(self.endpoints)


def _endpoint(text: str, spec: str) -> str:
    """``host:port`` with a numeric port in range; the etcd store validates the host."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or "/" in text or not port.isdigit() or not 0 < int(port) < 65536:
        raise StoreSpecError(f"--store {spec!r}: endpoint {text!r} is not HOST:PORT")
    return text


def parse_store_spec(text: str) -> StoreSpec:
    """Parse a ``--store`` value; raises :class:`StoreSpecError` naming the problem."""
    if not isinstance(text, str):
        raise StoreSpecError(f"--store: {_USAGE}, got {text!r}")
    if text.startswith(FILE_PREFIX):
        directory = text[len(FILE_PREFIX) :]
        if not directory:
            raise StoreSpecError(f"--store {text!r}: the file store needs a directory")
        if "\0" in directory:
            raise StoreSpecError(f"--store {text!r}: the directory contains a NUL byte")
        return StoreSpec(StoreKind.FILE, directory=directory)
    if text.startswith(ETCD_PREFIX):
        parts = text[len(ETCD_PREFIX) :].split(",")
        if parts == [""]:
            raise StoreSpecError(f"--store {text!r}: etcd needs at least one HOST:PORT")
        if "" in parts:
            raise StoreSpecError(f"--store {text!r}: empty endpoint in the list")
        endpoints = tuple(_endpoint(p, text) for p in parts)
        if len(set(endpoints)) != len(endpoints):
            raise StoreSpecError(f"--store {text!r}: duplicate endpoint")
        return StoreSpec(StoreKind.ETCD, endpoints=endpoints)
    raise StoreSpecError(f"--store: {_USAGE}, got {text!r}")
