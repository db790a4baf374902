"""``concord evidence`` and ``concord mock-tee``: their parsers and commands live with the
attestation layer (:mod:`attestation.cli`); this registers them when that module is present."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``evidence`` and ``mock-tee`` (nothing when :mod:`attestation.cli` is absent)."""
    try:
        from attestation import cli as attestation_cli
    except ModuleNotFoundError as exc:
        if exc.name != "attestation.cli":
            raise
        return
    attestation_cli.register(sub)
