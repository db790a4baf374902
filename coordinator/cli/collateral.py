"""``concord collateral fetch``: fill a collateral directory for air-gapped verification.

Argument parsing and printing only; fetching, checking and caching are
:mod:`attestation.collateral`'s. The directory is what ``concord evidence verify
--collateral-dir`` and ``concord serve --collateral-dir`` read.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from coordinator.cli.common import UsageError, emit


def cmd_fetch(args: argparse.Namespace) -> int:
    from attestation import cli as evidence_cli
    from attestation.collateral.fetch import ExponentialRetry
    from attestation.collateral.tool import FetchOptions, fetch_into
    from attestation.errors import EvidenceRejected

    try:
        anchors = evidence_cli.load_anchors(args.trust_anchors)
        inputs = []
        for name in args.evidence:
            inputs.append((name, evidence_cli.to_evidence(evidence_cli.read_evidence(name), None)))
    except evidence_cli.UsageError as exc:
        raise UsageError(str(exc)) from None
    except EvidenceRejected as exc:
        raise UsageError(f"cannot read the evidence: {exc}") from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    options = FetchOptions(
        kds_url=args.kds_url,
        pcs_url=args.pcs_url,
        root_crl_url=args.root_crl_url,
        timeout=args.timeout,
        retry=ExponentialRetry(max_attempts=args.attempts),
        grace=timedelta(0),
        now=args.at,
    )
    outcomes = asyncio.run(fetch_into(out, inputs, anchors, options))
    results: list[dict[str, Any]] = []
    lines = []
    for o in outcomes:
        if o.filled is not None:
            results.append({"evidence": o.name, "tee": o.filled.tee, "key": o.filled.key})
            lines.append(f"ok {o.name}: {o.filled.tee} {o.filled.key}: {o.filled.detail}")
        else:
            assert o.error is not None
            results.append({"evidence": o.name, "reason": o.error.reason, "detail": o.error.detail})
            lines.append(f"failed {o.name}: {o.error.reason}: {o.error.detail}")
    failed = sum(1 for o in outcomes if o.error is not None)
    emit(args, {"out": str(out), "results": results, "failed": failed}, lines)
    return 1 if failed else 0


def register(sub: Any) -> None:
    from attestation.cli import parse_time
    from attestation.collateral.upstreams import AMD_KDS, INTEL_PCS

    group = sub.add_parser("collateral", help="fetch vendor collateral for offline verification")
    group_sub = group.add_subparsers(dest="collateral_command", metavar="COMMAND", required=True)
    p = group_sub.add_parser(
        "fetch",
        help="fetch the VCEK / TDX collateral of evidence files into a directory",
        description="For each EVIDENCE file (envelope, raw SNP report or raw TDX quote), fetch "
        "what verifying it needs from AMD KDS (the VCEK) or Intel PCS / a PCCS (TCB info, QE "
        "identity, PCK and root CRLs), check it against the pinned roots and write it to --out. "
        "Use the directory with `concord evidence verify --collateral-dir` or `concord serve "
        "--collateral-dir` on a machine without network access. Exit 1 if any file failed.",
    )
    p.add_argument("evidence", nargs="+", metavar="EVIDENCE")
    p.add_argument("--out", required=True, metavar="DIR", help="collateral directory")
    p.add_argument("--kds-url", default=AMD_KDS, metavar="URL", help=f"AMD KDS ({AMD_KDS})")
    p.add_argument(
        "--pcs-url", default=INTEL_PCS, metavar="URL", help=f"Intel PCS or a PCCS ({INTEL_PCS})"
    )
    p.add_argument(
        "--root-crl-url",
        metavar="URL",
        help="Intel SGX root CA CRL (default: Intel's, or the PCCS rootcacrl endpoint)",
    )
    p.add_argument(
        "--trust-anchors",
        default="production",
        metavar="production|mock:DIR",
        help="roots fetched collateral must chain to (default: production)",
    )
    p.add_argument(
        "--at",
        type=parse_time,
        metavar="ISO-8601",
        help="check validity as of this time (default: now)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request (10)")
    p.add_argument(
        "--attempts", type=int, default=3, choices=range(1, 6), metavar="N", help="requests (3)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_fetch)
