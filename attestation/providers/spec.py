"""The one parser of ``--tee`` values: ``tsm`` (the kernel's configfs-tsm) or ``mock:DIR`` (the
software TEE whose vendor hierarchies live in DIR).

``concord serve``, ``concord join`` and the server configuration all go through
:func:`parse_tee_spec`, so a value accepted in one place is accepted everywhere, and a bad one
fails before any device or directory is touched, with a message naming what is wrong. Pure: no
I/O, no provider imports.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MOCK_PREFIX", "TSM", "TeeKind", "TeeSpec", "TeeSpecError", "parse_tee_spec"]

TSM = "tsm"
MOCK_PREFIX = "mock:"
_USAGE = "want 'tsm' or 'mock:DIR'"


class TeeSpecError(ValueError):
    """A ``--tee`` value that names no evidence source; the message says which part is wrong."""

    reason = "invalid_tee_spec"


class TeeKind(enum.Enum):
    TSM = "tsm"
    MOCK = "mock"


@dataclass(frozen=True)
class TeeSpec:
    """A parsed ``--tee``: ``mock_dir`` is set exactly for the software TEE."""

    kind: TeeKind
    mock_dir: Path | None = None

    @property
    def is_mock(self) -> bool:
        return self.kind is TeeKind.MOCK

    def __str__(self) -> str:
        return TSM if self.mock_dir is None else f"{MOCK_PREFIX}{self.mock_dir}"


def parse_tee_spec(text: str) -> TeeSpec:
    """Parse a ``--tee`` value; raises :class:`TeeSpecError` naming the problem.

    Exact spelling only (no case folding, no trimmed spaces): a typo must not select another
    evidence source than the one the operator meant.
    """
    if not isinstance(text, str):
        raise TeeSpecError(f"--tee: {_USAGE}, got {text!r}")
    if text == TSM:
        return TeeSpec(TeeKind.TSM)
    if text.startswith(MOCK_PREFIX):
        directory = text[len(MOCK_PREFIX) :]
        if not directory:
            raise TeeSpecError(f"--tee {text!r}: mock:DIR needs a directory after 'mock:'")
        if "\x00" in directory:
            raise TeeSpecError(f"--tee {text!r}: the directory contains a NUL byte")
        return TeeSpec(TeeKind.MOCK, Path(directory))
    raise TeeSpecError(f"--tee must be 'tsm' or 'mock:DIR', got {text!r}")
