"""``concord serve``: run a coordinator (DESIGN §11); the flags become a ServerConfig."""

from __future__ import annotations

import argparse
import asyncio
import os
import traceback
from pathlib import Path
from typing import Any

from coordinator.cli.common import (
    DEFAULT_STORE,
    DEFAULT_TEE,
    UsageError,
    add_anchors,
    add_tdx_collateral,
    address_arg,
    err,
    existing_file,
    load_anchors,
    read,
    seconds_arg,
    tee_spec,
)
from coordinator.store.spec import StoreKind, StoreSpec, StoreSpecError, parse_store_spec


def _store_spec(text: str) -> StoreSpec:
    try:
        return parse_store_spec(text)
    except StoreSpecError as exc:
        raise UsageError(str(exc)) from None


def _etcd_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for flag, key in (("etcd_ca", "ca_cert"), ("etcd_cert", "cert_cert"), ("etcd_key", "cert_key")):
        value = getattr(args, flag)
        if value is not None:
            options[key] = existing_file(value, "--" + flag.replace("_", "-"))
    if args.etcd_user is not None:
        options["user"] = args.etcd_user
    if args.etcd_password_file is not None:
        raw = read(args.etcd_password_file, "--etcd-password-file")
        options["password"] = raw.decode("utf-8", "strict").rstrip("\r\n")
    if ("user" in options) != ("password" in options):
        raise UsageError("--etcd-user and --etcd-password-file: give both or neither")
    if options and _store_spec(args.store).kind is not StoreKind.ETCD:
        raise UsageError("--etcd-* flags need --store etcd://HOST:PORT[,...]")
    return options


def _collateral_dir(path: str | None) -> Path | None:
    if path is None:
        return None
    if not Path(path).is_dir():
        raise UsageError(f"--collateral-dir {path}: not a directory")
    return Path(path)


def _collateral_urls(args: argparse.Namespace) -> tuple[str, ...]:
    urls = tuple(args.collateral_url or ())
    if not urls:
        return ()
    if args.collateral_dir is None:
        raise UsageError("--collateral-url needs --collateral-dir DIR (where the cache lives)")
    from attestation.collateral.warmer import parse_collateral_urls

    try:
        parse_collateral_urls(urls)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return urls


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    """Request limits (DESIGN §13); the defaults suit a coordinator on a public port. (No
    import of the service here: gRPC must not load before ``cmd_serve`` quiets it.)"""
    methods = (
        "SetManifest, GetManifests, UserAPI/Recover, NewMeshCert, MeshAPI/Recover, Attest, "
        "Challenge"
    )
    g = p.add_argument_group("request limits")
    g.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=512,
        metavar="N",
        help="calls in progress per port; more are refused with RESOURCE_EXHAUSTED (default 512)",
    )
    g.add_argument(
        "--max-concurrent",
        action="append",
        metavar="METHOD=N",
        help="calls of one method in progress at once, process-wide; repeat for more. METHOD: "
        f"{methods} (defaults: SetManifest=4 GetManifests=16 UserAPI/Recover=4 "
        "MeshAPI/Recover=8 NewMeshCert=256)",
    )
    g.add_argument(
        "--max-streams-per-connection",
        type=int,
        default=64,
        metavar="N",
        help="concurrent HTTP/2 streams one connection may open (default 64)",
    )
    g.add_argument(
        "--handshake-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a TLS handshake not finished by then is dropped (default 10)",
    )
    g.add_argument(
        "--idle-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="a connection without a call for this long is closed (default 300)",
    )
    g.add_argument(
        "--max-connection-age",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="connections are closed after this long, calls in progress get 30 s (default 3600)",
    )
    g.add_argument(
        "--keepalive-time",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="ping a quiet connection after this long to find dead peers (default 60); "
        "clients may ping at most every 10 s",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    # gRPC core prints its own non-JSON lines (e.g. "E1201 ... add_port.cc") unless told not to
    # before it is imported; our errors say the same in one line. GRPC_VERBOSITY=error restores them.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from coordinator.service.server import (
        ServerConfig,
        StartupError,
        preflight,
        serve,
        setup_logging,
    )

    if tee_spec(args.tee).is_mock and args.mock_policy is None:
        raise UsageError("--tee mock:DIR needs --mock-policy FILE (the policy the mock CVM runs)")
    existing_file(args.mock_policy, "--mock-policy")
    existing_file(args.tdx_collateral, "--tdx-collateral")
    _store_spec(args.store)  # fail early, as a usage error
    load_anchors(args.trust_anchors)  # fail early, as a usage error
    config = ServerConfig(
        store=args.store,
        tee=args.tee,
        mock_policy=Path(args.mock_policy) if args.mock_policy else None,
        mock_tee_type=args.mock_tee_type,
        tdx_collateral=Path(args.tdx_collateral) if args.tdx_collateral else None,
        collateral_dir=_collateral_dir(args.collateral_dir),
        collateral_urls=_collateral_urls(args),
        trust_anchors=args.trust_anchors,
        user_addr=args.user_addr,
        mesh_addr=args.mesh_addr,
        http_addr=args.http_addr,
        deployment=args.deployment,
        peers=tuple(args.peer or ()),
        advertise_mesh_addr=args.advertise_mesh_addr,
        node_id=args.node_id,
        etcd_options=_etcd_options(args),
        issuer_workers=args.issuer_workers,
        limits=rpc_limits(args),
        lifecycle=_lifecycle(args),
        require_pq=args.require_pq,
    )
    try:
        preflight(config)  # ports in use, foreign addresses, --tee tsm outside a CVM: exit 2
    except StartupError as exc:
        raise UsageError(str(exc)) from None
    setup_logging(args.log_level)
    try:
        asyncio.run(serve(config))
    except KeyboardInterrupt:
        return 0
    except StartupError as exc:  # lost a race for a port between the check and the bind
        err(str(exc))
        return 2
    except Exception as exc:
        if os.environ.get("CONCORD_DEBUG"):
            traceback.print_exc()
        err(f"serve: {type(exc).__name__}: {exc}")
        return 1
    return 0


def _lifecycle(args: argparse.Namespace) -> Any:
    """Leaf lifetime, mesh CA grace and Watch limits (DESIGN §15), checked as usage errors."""
    from coordinator.core.lifecycle import LifecycleError, check_leaf_lifetime, parse_duration
    from coordinator.service.feed import LifecycleConfig

    try:
        lifetime = check_leaf_lifetime(parse_duration(args.leaf_lifetime))
        grace = parse_duration(args.mesh_ca_grace)
    except LifecycleError as exc:
        raise UsageError(str(exc)) from None
    if args.max_watchers < 1:
        raise UsageError("--max-watchers: want at least 1")
    return LifecycleConfig(
        leaf_lifetime=lifetime,
        mesh_ca_grace=grace,
        heartbeat=args.watch_heartbeat,
        max_watchers=args.max_watchers,
    )


def _add_lifecycle_flags(p: argparse.ArgumentParser) -> None:
    """Certificate lifecycle (DESIGN §15). No service import here, as for the limits."""
    g = p.add_argument_group("certificate lifecycle")
    g.add_argument(
        "--leaf-lifetime",
        default="24h",
        metavar="DURATION",
        help="validity of issued leaves, e.g. 1h, 24h, 7d (default 24h: a leaf of a vanished "
        "workload stops being trusted within a day, and workloads survive a coordinator outage "
        "of about half a day since agents renew at half the lifetime)",
    )
    g.add_argument(
        "--mesh-ca-grace",
        default="10m",
        metavar="DURATION",
        help="after an update, mesh-ca.pem bundles keep the previous mesh CA this long so "
        "connections across the switch keep working; 0 = strict (default 10m)",
    )
    g.add_argument(
        "--watch-heartbeat",
        type=seconds_arg,
        default=15.0,
        metavar="SECONDS",
        help="heartbeat interval of MeshAPI.Watch streams (default 15)",
    )
    g.add_argument(
        "--max-watchers",
        type=int,
        default=4096,
        metavar="N",
        help="concurrent MeshAPI.Watch streams (joined agents); more are refused (default 4096)",
    )


def rpc_limits(args: argparse.Namespace) -> Any:
    """The request limits of DESIGN §13 from the serve flags (a bad value is a usage error)."""
    from coordinator.service.limits import DEFAULT_METHOD_CONCURRENCY, RpcLimits, method_limits

    try:
        return RpcLimits(
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            method_concurrency=method_limits(args.max_concurrent or (), DEFAULT_METHOD_CONCURRENCY),
            max_streams_per_connection=args.max_streams_per_connection,
            handshake_timeout_s=args.handshake_timeout,
            idle_timeout_s=args.idle_timeout,
            max_connection_age_s=args.max_connection_age,
            keepalive_time_s=args.keepalive_time,
        )
    except ValueError as exc:
        raise UsageError(f"serve: {exc}") from None


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``concord serve``."""
    p = sub.add_parser(
        "serve",
        help="run a coordinator",
        description="Run a coordinator until SIGTERM/SIGINT. Prints one JSON line "
        '{"event":"serving",...} with the bound addresses once listening (port 0 = any free).',
    )
    p.add_argument(
        "--store",
        default=DEFAULT_STORE,
        help="file:DIR or etcd://HOST:PORT[,...]",
    )
    p.add_argument("--tee", default=DEFAULT_TEE, help=f"tsm or mock:DIR (default {DEFAULT_TEE})")
    p.add_argument("--mock-policy", metavar="FILE", help="policy the mock CVM runs (--tee mock)")
    add_tdx_collateral(p)
    p.add_argument(
        "--collateral-dir",
        metavar="DIR",
        help="vendor collateral directory (concord collateral fetch): VCEKs and TDX collateral "
        "that evidence (incoming, and this CVM's own) does not carry",
    )
    p.add_argument(
        "--collateral-url",
        action="append",
        metavar="[kds=|pcs=]URL",
        help="keep --collateral-dir warm for the evidence seen, from AMD KDS (kds=URL), Intel "
        "PCS or a PCCS (pcs=URL), a proxy serving both (URL) or the vendors ('default')",
    )
    p.add_argument(
        "--mock-tee-type", choices=("snp", "tdx"), default="snp", help="evidence the mock CVM makes"
    )
    add_anchors(p)
    p.add_argument(
        "--require-pq",
        action="store_true",
        help="refuse workloads and peers that offer no post-quantum HPKE suite "
        "(ML-KEM-768 + X25519) for their sealed secrets",
    )
    bind = "0.0.0.0 or [::] for every interface; port 0 = any free port"
    p.add_argument(
        "--user-addr",
        default="127.0.0.1:1313",
        type=address_arg(1313, bind=True),
        metavar="HOST[:PORT]",
        help=f"user API: set, verify, recover ({bind})",
    )
    p.add_argument(
        "--mesh-addr",
        default="127.0.0.1:7777",
        type=address_arg(7777, bind=True),
        metavar="HOST[:PORT]",
        help="mesh API: join, peer recovery",
    )
    p.add_argument(
        "--http-addr",
        default="127.0.0.1:9102",
        type=address_arg(9102, bind=True),
        metavar="HOST[:PORT]",
        help="plain HTTP: /healthz /readyz /startupz /metrics",
    )
    p.add_argument("--deployment", default="default", help="deployment name (etcd key prefix)")
    p.add_argument(
        "--peer",
        action="append",
        type=address_arg(7777),
        metavar="HOST[:PORT]",
        help="static peer (its mesh API); repeat for more",
    )
    p.add_argument(
        "--advertise-mesh-addr",
        type=address_arg(7777),
        metavar="HOST[:PORT]",
        help="mesh address peers reach this coordinator at (default: the bound --mesh-addr)",
    )
    p.add_argument("--node-id", help="member ID (default random)")
    p.add_argument(
        "--issuer-workers",
        type=_non_negative_int,
        help="issuance threads (default CPU count; 0 issues inline on the event loop)",
    )
    _add_limit_flags(p)
    _add_lifecycle_flags(p)
    p.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="JSON log lines on stderr at this level and above",
    )
    p.add_argument("--etcd-ca", metavar="FILE", help="CA bundle: enables TLS to etcd")
    p.add_argument("--etcd-cert", metavar="FILE", help="client certificate for etcd")
    p.add_argument("--etcd-key", metavar="FILE", help="client key for etcd")
    p.add_argument("--etcd-user", help="etcd user (needs TLS)")
    p.add_argument("--etcd-password-file", metavar="FILE", help="file holding the etcd password")
    p.set_defaults(func=cmd_serve)
