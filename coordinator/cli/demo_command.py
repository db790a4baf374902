"""``concord demo``: the parser and the entry; the runner (heavy imports) is
:mod:`coordinator.cli.demo`, loaded only when the command runs."""

from __future__ import annotations

import argparse
import os

from coordinator.cli.common import UsageError


def cmd_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # before gRPC loads: no core log lines
    from coordinator.cli.demo import main as demo_main

    if args.workloads < 1 or args.workloads > 64:
        raise UsageError("--workloads: want 1..64")
    return demo_main(args)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``concord demo``."""
    p = sub.add_parser(
        "demo",
        help="run the whole flow locally with the software TEE",
        description="Start a coordinator process with the mock TEE, set a manifest, join "
        "workloads, verify, update, restart, recover and join again; print a report.",
    )
    p.add_argument("--workloads", type=int, default=3, metavar="N")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: temp dir)")
    p.set_defaults(func=cmd_demo)
