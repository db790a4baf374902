"""``concord join``: attest a workload and fetch its credentials, once or (``--watch``) as a
long-running agent. Loads nothing of the server side (a test checks it)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from coordinator.cli.common import (
    DEFAULT_TEE,
    UsageError,
    add_anchors,
    add_common_client,
    add_pin,
    add_tdx_collateral,
    address_arg,
    emit,
    err,
    fingerprint,
    load_anchors,
    make_out_dir,
    pinned_deployment,
    read,
    run_bounded,
    tee_spec,
)


def _join_policy(args: argparse.Namespace) -> Any:
    from attestation.reference import parse_reference_values
    from coordinator.client.channel import CoordinatorPolicy

    mock_dir = tee_spec(args.tee).mock_dir
    anchors_spec = args.trust_anchors or (f"mock:{mock_dir}" if mock_dir else "production")
    refs_path = args.reference_values
    if refs_path is None:
        if mock_dir is None:
            raise UsageError("--tee tsm needs --reference-values FILE")
        refs_path = str(Path(mock_dir) / "reference-values.json")
    raw = read(refs_path, "--reference-values")
    try:
        refs = parse_reference_values(json.loads(raw))
    except ValueError as exc:
        raise UsageError(f"--reference-values {refs_path}: {exc}") from None
    policy_hash: bytes | None = None
    if args.coordinator_policy_hash is not None:
        text = args.coordinator_policy_hash.strip().lower()
        try:
            policy_hash = bytes.fromhex(text)
        except ValueError:
            policy_hash = b""
        if len(policy_hash) != 32:
            raise UsageError("--coordinator-policy-hash: want 64 hex characters")
    else:
        err(
            "warning: --coordinator-policy-hash not given: any coordinator policy is accepted "
            "(the coordinator is not pinned to a deployment)"
        )
    return CoordinatorPolicy(load_anchors(anchors_spec), refs, policy_hash)


def _join_provider(args: argparse.Namespace) -> Any:
    from attestation.providers.base import ProviderError

    mock_dir = tee_spec(args.tee).mock_dir
    if mock_dir is None:
        from attestation.providers.tsm import TsmProvider
        from attestation.tdx.collateral_model import load_collateral_json

        try:
            collateral = (
                load_collateral_json(Path(args.tdx_collateral)).to_cbor_map()
                if args.tdx_collateral
                else None
            )
            return TsmProvider(tdx_collateral=collateral)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--tdx-collateral: {exc}") from None
    from attestation.providers.mock import MockProvider

    if args.mock_policy is None:
        raise UsageError("--tee mock:DIR needs --mock-policy FILE (the policy the CVM runs)")
    policy = read(args.mock_policy, "--mock-policy")
    try:
        return MockProvider(mock_dir, policy, tee=args.mock_tee_type)
    except ProviderError as exc:
        raise UsageError(str(exc)) from None


def cmd_join(args: argparse.Namespace) -> int:
    from coordinator.client.operations import join

    addresses = tuple(dict.fromkeys(args.coordinator))
    args.coordinator = addresses[0]  # one address for the one-shot join and the hints
    if not args.watch and (len(addresses) > 1 or args.on_change or args.http_addr):
        raise UsageError("several -c, --on-change and --http-addr need --watch")
    if args.watch and args.require_pq:
        raise UsageError("--require-pq is not supported with --watch yet")
    provider = _join_provider(args)
    policy = _join_policy(args)
    out = make_out_dir(args.out)
    if args.watch:
        from coordinator.cli.watch import main as watch_main

        return watch_main(
            addresses,
            policy,
            provider,
            out,
            key_type=args.key_type,
            pin=pinned_deployment(args),
            first_join_timeout=args.timeout,
            on_change=args.on_change,
            http_addr=args.http_addr,
            keep_previous_ca=_duration_seconds(args.keep_previous_ca, "--keep-previous-ca"),
        )
    tty = sys.stderr.isatty()

    def on_wait(reason: str, attempt: int, delay: float) -> None:
        if tty:
            err(f"waiting for the coordinator ({reason}); attempt {attempt}, next in {delay:.1f}s")

    result = run_bounded(
        join(
            args.coordinator,
            provider,
            policy=policy,
            out_dir=out,
            key_type=args.key_type,
            timeout=args.timeout,
            on_wait=on_wait,
            pin=pinned_deployment(args),
            require_pq=args.require_pq,
        ),
        args,
        # join retries within --timeout by itself; the outer bound only cuts an attempt that
        # hangs past it (a coordinator that accepts connections but never answers).
        grace=1.0,
    )
    emit(
        args,
        {
            "out": str(out),
            "files": list(result.files),
            "tee": result.tee,
            "policy_hash": result.policy_hash.hex(),
            "workload_secret": result.has_workload_secret,
            "attempts": result.attempts,
            "cert_sha256": fingerprint(result.cert_pem),
            "root_ca_sha256": fingerprint(result.root_ca_pem),
            "mesh_ca_sha256": fingerprint(result.mesh_ca_pem),
        },
        [
            f"joined ({result.tee}, policy {result.policy_hash.hex()[:16]}…)",
            f"wrote {', '.join(str(out / f) for f in result.files)}",
        ],
    )
    return 0


def _duration_seconds(text: str, flag: str) -> float:
    from coordinator.core.lifecycle import LifecycleError, parse_duration

    try:
        return parse_duration(text).total_seconds()
    except LifecycleError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``concord join``."""
    p = sub.add_parser(
        "join",
        help="attest a workload and fetch its certificate and secret",
        description="Attest the coordinator, send this CVM's evidence, and write key.pem (0600), "
        "cert.pem, chain.pem, mesh-ca.pem, root-ca.pem and workload-secret (0600, when the "
        "policy has a secret ID) to --out. Retries while the coordinator is not ready.",
    )
    add_common_client(p, user_port=False, timeout=60.0, several=True)
    add_pin(p)
    p.add_argument("--tee", default=DEFAULT_TEE, help=f"tsm or mock:DIR (default {DEFAULT_TEE})")
    p.add_argument("--mock-policy", metavar="FILE", help="policy this mock CVM runs")
    add_tdx_collateral(p)
    p.add_argument(
        "--mock-tee-type", choices=("snp", "tdx"), default="snp", help="evidence the mock CVM makes"
    )
    add_anchors(p, default=None)
    p.add_argument(
        "--coordinator-policy-hash",
        metavar="HEX",
        help="pin the coordinator's policy (SHA-256); without it any policy is accepted",
    )
    p.add_argument(
        "--reference-values",
        metavar="FILE",
        help="coordinator reference values JSON (default with mock:DIR: DIR/reference-values.json)",
    )
    p.add_argument("--key-type", default="p256", choices=("p256", "p384", "ed25519"))
    p.add_argument(
        "--require-pq",
        action="store_true",
        help="offer only the post-quantum HPKE suite (ML-KEM-768 + X25519) for the workload "
        "secret and refuse any other answer",
    )
    p.add_argument("--out", required=True, metavar="DIR")
    g = p.add_argument_group(
        "long-running agent (--watch)",
        "Keep the credentials current: renew at half the leaf lifetime (±10 %) and after every "
        "update or recovery, re-attesting the coordinator on every reconnect. Each set is "
        "written to DIR/set-N and DIR/current is switched to it in one rename (DIR/key.pem etc. "
        "link through current/). Exits 1 only when the leaf expired without renewal, or when no "
        "first leaf came within --timeout.",
    )
    g.add_argument("--watch", action="store_true", help="keep running and renewing")
    g.add_argument(
        "--keep-previous-ca",
        default="10m",
        metavar="DURATION",
        help="keep the previous mesh CA in mesh-ca.pem this long when the coordinator no longer "
        "sends it (after a restart or a user recovery); 0 = exactly the coordinator's bundle",
    )
    g.add_argument(
        "--on-change",
        metavar="CMD",
        help="run CMD (sh -c) after each new set; CONCORD_CREDENTIALS names its directory",
    )
    g.add_argument(
        "--http-addr",
        type=address_arg(None, bind=True),
        metavar="HOST:PORT",
        help="serve /healthz /readyz /status /metrics here (ready, seconds to expiry, "
        "renewals, failures)",
    )
    p.set_defaults(func=cmd_join)
