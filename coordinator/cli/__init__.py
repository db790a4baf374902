"""The ``concord`` command (DESIGN §11).

Exit codes: 0 success; 1 the operation was refused or could not be proven (gRPC refusal,
attestation failure, verification failure, coordinator unreachable); 2 usage errors (bad flags,
unreadable or unusable local files). Errors are one line ``concord: <reason>`` on stderr, never
a traceback (set ``CONCORD_DEBUG=1`` to get one). Commands that produce data take ``--json``.

One module per command group, each with ``register(sub)``; shared helpers are in
:mod:`coordinator.cli.common`, exit codes and error lines in :mod:`coordinator.cli.dispatch`.
Heavy imports (gRPC, the server, the client operations) stay inside the command functions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from coordinator.cli import (
    collateral,
    demo_command,
    evidence,
    join,
    keys,
    manifest,
    serve,
    user,
)
from coordinator.cli.common import PROG, CommandParser
from coordinator.cli.dispatch import dispatch

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Concord: attestation-aware coordinator for confidential computing.",
        epilog="Exit codes: 0 success, 1 refused or unverifiable, 2 usage error.",
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=CommandParser
    )
    for group in (serve, user, join, demo_command, evidence, keys, manifest, collateral):
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    return dispatch(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
