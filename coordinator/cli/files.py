"""Credential sets on disk for ``concord join --watch`` (DESIGN §15): readers never see a mix.

Layout of ``--out DIR``::

    DIR/set-7/            one complete set: key.pem cert.pem chain.pem mesh-ca.pem root-ca.pem
                          [workload-secret]; written, fsynced, then never modified
    DIR/current -> set-7  switched with one rename(2) of a new symlink over the old one
    DIR/key.pem -> current/key.pem   (and one such link per file, for tools that want fixed paths)

A reader that must not mix files of two sets resolves ``DIR/current`` once (realpath) and reads
every file from that directory; the previous set is kept until the next switch, so a reader
that resolved it just before a switch can finish. Older sets are removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from coordinator.client.agent import CredentialSet
from coordinator.errors import ConcordError

__all__ = ["CURRENT", "FILES", "CredentialDir", "OutputDirError"]

CURRENT = "current"
FILES = ("key.pem", "cert.pem", "chain.pem", "mesh-ca.pem", "root-ca.pem", "workload-secret")
_SET = re.compile(r"^set-(\d+)$")


class OutputDirError(ConcordError):
    """``--out`` cannot hold credential sets (not a directory, or a file where a link goes)."""

    reason = "output_dir_unusable"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_link(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` with one rename (a new link, then rename over the old)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    if link.exists() and not link.is_symlink():
        tmp.unlink()
        raise OutputDirError(f"{link}: a regular file is in the way of the credential link")
    os.replace(tmp, link)


class CredentialDir:
    """A :class:`~coordinator.client.agent.CredentialSink` writing the layout above."""

    def __init__(self, root: Path, *, keep: int = 2) -> None:
        self.root = root
        self.keep = max(2, keep)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not root.is_dir():
            raise OutputDirError(f"{root}: not a directory")

    def _sets(self) -> list[int]:
        numbers = []
        for entry in self.root.iterdir():
            match = _SET.match(entry.name)
            if match and entry.is_dir() and not entry.is_symlink():
                numbers.append(int(match.group(1)))
        return sorted(numbers)

    def current(self) -> Path | None:
        """The directory of the current set (resolved once), or None before the first."""
        link = self.root / CURRENT
        return link.resolve() if link.is_symlink() and link.exists() else None

    def publish(self, creds: CredentialSet) -> None:
        """Write ``creds`` as a new set and switch ``current`` to it in one rename."""
        sets = self._sets()
        number = (sets[-1] + 1) if sets else 1
        name = f"set-{number}"
        staging = self.root / f".{name}.tmp"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(mode=0o700)
        try:
            for filename, (data, mode) in creds.files().items():
                _write(staging / filename, data, mode)
            _fsync_dir(staging)
            os.rename(staging, self.root / name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _replace_link(self.root / CURRENT, name)
        for filename in FILES:
            link = self.root / filename
            if filename in creds.files():
                if not (link.is_symlink() and os.readlink(link) == f"{CURRENT}/{filename}"):
                    _replace_link(link, f"{CURRENT}/{filename}")
            elif link.is_symlink():
                link.unlink()  # the policy lost its secret: no dangling link
        _fsync_dir(self.root)
        for old in sets[: max(0, len(sets) + 1 - self.keep)]:
            shutil.rmtree(self.root / f"set-{old}", ignore_errors=True)
