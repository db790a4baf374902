"""The ``concord`` command (DESIGN §11).

Exit codes: 0 success; 1 the operation was refused or could not be proven (gRPC refusal,
attestation failure, verification failure, coordinator unreachable); 2 usage errors (bad flags,
unreadable or unusable local files). Errors are one line ``concord: <reason>`` on stderr, never
a traceback (set ``CONCORD_DEBUG=1`` to get one). Commands that produce data take ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from attestation.anchors import AnchorError, TrustAnchors
from attestation.errors import EvidenceRejected
from attestation.providers.spec import TeeSpec, TeeSpecError, parse_tee_spec
from coordinator.store.spec import StoreKind, StoreSpec, StoreSpecError, parse_store_spec

PROG = "concord"
T = TypeVar("T")

# Defaults for a coordinator in a real CVM.
DEFAULT_STORE = "file:/var/lib/concord"
DEFAULT_TEE = "tsm"
DEFAULT_TRUST_ANCHORS = "production"


class UsageError(Exception):
    """Bad invocation or unusable local input: exit code 2."""


# --- small helpers -------------------------------------------------------------------------------


def _err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror or exc}") from None


def _existing_file(path: str | None, flag: str) -> str | None:
    if path is not None and not Path(path).is_file():
        raise UsageError(f"{flag} {path}: no such file")
    return path


def _anchors(spec: str) -> TrustAnchors:
    from attestation.anchors import from_spec

    try:
        return from_spec(spec)
    except AnchorError as exc:
        raise UsageError(str(exc)) from None


def _private_key(path: str, what: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    data = _read(path, what)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UsageError(f"{what} {path}: encrypted keys are not supported") from None
    except Exception:  # ValueError, UnsupportedAlgorithm: either way not a usable key
        raise UsageError(f"{what} {path}: not a PEM private key") from None


def _emit(args: argparse.Namespace, data: dict[str, Any], text: Sequence[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in text:
            print(line)
    sys.stdout.flush()


def _hash_arg(text: str | None, flag: str) -> bytes | None:
    """A 32-byte hash given as 64 hex characters (None when the flag is absent)."""
    if text is None:
        return None
    try:
        value = bytes.fromhex(text.strip().lower())
    except ValueError:
        value = b""
    if len(value) != 32:
        raise UsageError(f"{flag}: want 64 hex characters")
    return value


def _pin(args: argparse.Namespace) -> bytes | None:
    """The deployment ID pinned with --deployment-id HEX or --root-ca FILE (DESIGN §12)."""
    from coordinator.client.operations import VerificationFailed, deployment_id_of

    pin = _hash_arg(args.deployment_id, "--deployment-id")
    if args.root_ca is not None:
        try:
            from_file = deployment_id_of(_read(args.root_ca, "--root-ca"))
        except VerificationFailed:
            raise UsageError(f"--root-ca {args.root_ca}: not a PEM certificate") from None
        if pin is not None and pin != from_file:
            raise UsageError("--deployment-id and --root-ca name different deployments")
        pin = from_file
    return pin


def _add_pin(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--deployment-id",
        metavar="HEX",
        help="refuse a coordinator of another deployment (SHA-256 of the root CA's public key, "
        "as `concord set` and `verify` print it)",
    )
    p.add_argument(
        "--root-ca",
        metavar="FILE",
        help="refuse a coordinator whose root CA has another key than this root-ca.pem",
    )


def _fingerprint(pem: bytes) -> str:
    from coordinator.client.operations import cert_fingerprint

    return cert_fingerprint(pem)


def _out_dir(path: str) -> Path:
    from coordinator.client.operations import InvalidInput, ensure_dir

    try:
        return ensure_dir(Path(path))
    except (OSError, InvalidInput) as exc:
        raise UsageError(f"--out {path}: {getattr(exc, 'strerror', None) or exc}") from None


class NoAnswer(Exception):
    """The whole client operation ran out of ``--timeout``: exit 1 with a hint."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer within {seconds:g}s")
        self.seconds = seconds


def _run(coro: Coroutine[Any, Any, T], args: argparse.Namespace, *, grace: float = 0.0) -> T:
    """Run a client operation bounded by ``--timeout`` (plus ``grace``) as a whole, so a hung
    coordinator ends in one clear line however many round trips the operation makes."""

    async def bounded() -> T:
        try:
            return await asyncio.wait_for(coro, args.timeout + grace)
        except TimeoutError:
            raise NoAnswer(args.timeout) from None

    return asyncio.run(bounded())


# --- serve ---------------------------------------------------------------------------------------


def _store_spec(text: str) -> StoreSpec:
    try:
        return parse_store_spec(text)
    except StoreSpecError as exc:
        raise UsageError(str(exc)) from None


def _tee_spec(text: str) -> TeeSpec:
    try:
        return parse_tee_spec(text)
    except TeeSpecError as exc:
        raise UsageError(str(exc)) from None


def _etcd_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for flag, key in (("etcd_ca", "ca_cert"), ("etcd_cert", "cert_cert"), ("etcd_key", "cert_key")):
        value = getattr(args, flag)
        if value is not None:
            options[key] = _existing_file(value, "--" + flag.replace("_", "-"))
    if args.etcd_user is not None:
        options["user"] = args.etcd_user
    if args.etcd_password_file is not None:
        raw = _read(args.etcd_password_file, "--etcd-password-file")
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

    if _tee_spec(args.tee).is_mock and args.mock_policy is None:
        raise UsageError("--tee mock:DIR needs --mock-policy FILE (the policy the mock CVM runs)")
    _existing_file(args.mock_policy, "--mock-policy")
    _existing_file(args.tdx_collateral, "--tdx-collateral")
    _store_spec(args.store)  # fail early, as a usage error
    _anchors(args.trust_anchors)  # fail early, as a usage error
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
        limits=_rpc_limits(args),
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
        _err(str(exc))
        return 2
    except Exception as exc:
        if os.environ.get("CONCORD_DEBUG"):
            traceback.print_exc()
        _err(f"serve: {type(exc).__name__}: {exc}")
        return 1
    return 0


def _duration_seconds(text: str, flag: str) -> float:
    from coordinator.core.lifecycle import LifecycleError, parse_duration

    try:
        return parse_duration(text).total_seconds()
    except LifecycleError as exc:
        raise UsageError(f"{flag}: {exc}") from None


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
        type=_seconds,
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


def _rpc_limits(args: argparse.Namespace) -> Any:
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


# --- set / verify / recover ----------------------------------------------------------------------


# The empty manifest fields `concord set` refuses unless the flag accepting the consequence is given.
_FOOT_GUN_FLAGS = {
    "immutable": ("--allow-immutable", "allow_immutable"),
    "unrecoverable": ("--allow-unrecoverable", "allow_unrecoverable"),
}


def _refuse_foot_guns(manifest_raw: bytes, args: argparse.Namespace) -> bool:
    """Refuse (exit 2, nothing sent) a manifest whose empty fields freeze the deployment or make
    it unrecoverable, unless the user accepted that by flag; returns whether it has seed shares."""
    from coordinator.client.operations import parse_manifest
    from coordinator.core.manifest_edit import findings

    manifest = parse_manifest(manifest_raw)
    refused = [
        f"{f.field} is empty: {f.consequence} (add one with `concord manifest add-owner`, "
        f"or pass {_FOOT_GUN_FLAGS[f.name][0]} to accept that)"
        for f in findings(manifest)
        if f.name in _FOOT_GUN_FLAGS and not getattr(args, _FOOT_GUN_FLAGS[f.name][1])
    ]
    if refused:
        raise UsageError("manifest refused: " + "; ".join(refused))
    return bool(manifest.seedshare_owner_keys_der)


def cmd_set(args: argparse.Namespace) -> int:
    from coordinator.client.operations import set_manifest

    manifest = _read(args.manifest, "manifest")
    has_seed_shares = _refuse_foot_guns(manifest, args)
    policies = [_read(p, "policy") for p in args.policy or ()]
    owner_key = _private_key(args.owner_key, "--owner-key") if args.owner_key else None
    anchors = _anchors(args.trust_anchors)
    pin = _pin(args)
    previous = _hash_arg(args.previous, "--previous")
    out = _out_dir(args.out)
    result = _run(
        set_manifest(
            args.coordinator,
            manifest,
            policies,
            anchors=anchors,
            owner_key=owner_key,
            timeout=args.timeout,
            pin=pin,
            previous_hash=previous,
        ),
        args,
    )
    from coordinator.client.operations import write_file

    files = []
    if result.first and has_seed_shares:
        # The coordinator hands out the seed shares exactly once: save them before anything else.
        name = "seedshares.json"
        if (out / name).exists():
            name = f"seedshares-{result.transition_hash.hex()[:16]}.json"
            _err(f"warning: {out / 'seedshares.json'} exists, writing the new shares to {name}")
        try:
            write_file(out / name, result.seed_share_document, 0o600)
        except OSError as exc:
            _err(f"cannot write {out / name}: {exc.strerror}; the seed shares follow on stdout")
            sys.stdout.write(result.seed_share_document.decode("ascii") + "\n")
            return 1
        files.append(name)
    write_file(out / "root-ca.pem", result.root_ca_pem)
    write_file(out / "mesh-ca.pem", result.mesh_ca_pem)
    files += ["root-ca.pem", "mesh-ca.pem"]
    _emit(
        args,
        {
            "transition_hash": result.transition_hash.hex(),
            "previous_transition_hash": result.previous_transition_hash.hex(),
            "first": result.first,
            "deployment_id": result.deployment_id.hex(),
            "root_ca_sha256": _fingerprint(result.root_ca_pem),
            "mesh_ca_sha256": _fingerprint(result.mesh_ca_pem),
            "out": str(out),
            "files": files,
        },
        [
            f"manifest set ({'first manifest' if result.first else 'update'})",
            f"transition  {result.transition_hash.hex()}",
            f"deployment  {result.deployment_id.hex()}",
            f"root CA     sha256:{_fingerprint(result.root_ca_pem)}",
            f"mesh CA     sha256:{_fingerprint(result.mesh_ca_pem)}",
            f"wrote       {', '.join(str(out / f) for f in files)}",
            *(
                ["keep seedshares.json and the seed-share keys safe: they recover the deployment"]
                if result.first and has_seed_shares
                else []
            ),
            *(
                ["no seed-share owners: this deployment cannot be recovered by a user"]
                if result.first and not has_seed_shares
                else []
            ),
        ],
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from coordinator.client.operations import ensure_dir, fetch_and_verify_history, write_file

    manifest = _read(args.manifest, "manifest")
    anchors = _anchors(args.trust_anchors)
    out = _out_dir(args.out)
    history = _run(
        fetch_and_verify_history(
            args.coordinator, manifest, anchors=anchors, timeout=args.timeout, pin=_pin(args)
        ),
        args,
    )
    write_file(out / "root-ca.pem", history.root_ca_pem)
    write_file(out / "mesh-ca.pem", history.mesh_ca_pem)
    mdir = ensure_dir(out / "manifests", 0o755)
    pdir = ensure_dir(out / "policies", 0o755)
    import hashlib

    entries = []
    for i, (raw, transition) in enumerate(
        zip(history.manifests, history.transitions, strict=True), start=1
    ):
        digest = hashlib.sha256(raw).hexdigest()
        write_file(mdir / f"{i:04d}-{digest}.json", raw)
        entries.append({"index": i, "sha256": digest, "transition_hash": transition.hex()})
    for digest, raw in sorted(history.policies.items()):
        write_file(pdir / digest, raw)
    _emit(
        args,
        {
            "latest_transition_hash": history.latest_transition_hash.hex(),
            "deployment_id": history.deployment_id.hex(),
            "manifests": entries,
            "policies": sorted(history.policies),
            "root_ca_sha256": _fingerprint(history.root_ca_pem),
            "mesh_ca_sha256": _fingerprint(history.mesh_ca_pem),
            "out": str(out),
        },
        [
            f"verified: {len(entries)} manifest(s), latest is the given manifest",
            f"latest transition  {history.latest_transition_hash.hex()}",
            f"deployment         {history.deployment_id.hex()}",
            f"root CA            sha256:{_fingerprint(history.root_ca_pem)}",
            f"mesh CA            sha256:{_fingerprint(history.mesh_ca_pem)}",
            f"wrote              {out}/root-ca.pem, mesh-ca.pem, manifests/, policies/",
        ],
    )
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from coordinator.client.operations import recover_each

    manifest = _read(args.manifest, "manifest")
    seedshares = _read(args.seedshares, "--seedshares")
    key = _private_key(args.seedshare_key, "--seedshare-key")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UsageError(f"--seedshare-key {args.seedshare_key}: not an RSA private key")
    mlkem_key = None
    if args.seedshare_mlkem_key is not None:
        from cryptography.hazmat.primitives.asymmetric import mlkem

        mlkem_key = _private_key(args.seedshare_mlkem_key, "--seedshare-mlkem-key")
        if not isinstance(mlkem_key, mlkem.MLKEM768PrivateKey):
            raise UsageError(
                f"--seedshare-mlkem-key {args.seedshare_mlkem_key}: not an ML-KEM-768 key"
            )
    anchors = _anchors(args.trust_anchors)
    addresses = tuple(dict.fromkeys(args.coordinator))
    args.coordinator = addresses[0]  # the address hints name
    result = _run(
        recover_each(
            addresses,
            manifest,
            seedshares,
            key,
            anchors=anchors,
            force=args.force,
            timeout=args.timeout,
            pin=_pin(args),
            expected_latest=_hash_arg(args.latest, "--latest"),
            seedshare_mlkem_key=mlkem_key,
        ),
        args,
    )
    if result.pending:
        # Threshold recovery: this coordinator keeps the share (in memory) until k arrived.
        _emit(
            args,
            {
                "recovered": False,
                "shares_received": result.shares_received,
                "shares_needed": result.shares_needed,
                "transition_hash": result.transition_hash.hex(),
                "deployment_id": result.deployment_id.hex(),
            },
            [
                f"share accepted: {result.shares_received} of {result.shares_needed} "
                "(the other owners submit theirs to the same coordinator)",
                f"transition  {result.transition_hash.hex()}",
                f"deployment  {result.deployment_id.hex()}",
            ],
        )
        return 0
    _emit(
        args,
        {
            "recovered": True,
            "transition_hash": result.transition_hash.hex(),
            "deployment_id": result.deployment_id.hex(),
            "restored_latest": result.restored,
        },
        [
            "coordinator recovered"
            + (" (the store's deleted latest was restored)" if result.restored else ""),
            f"transition  {result.transition_hash.hex()}",
            f"deployment  {result.deployment_id.hex()}",
        ],
    )
    return 0


# --- join ----------------------------------------------------------------------------------------


def _join_policy(args: argparse.Namespace) -> Any:
    from attestation.reference import parse_reference_values
    from coordinator.client.channel import CoordinatorPolicy

    mock_dir = _tee_spec(args.tee).mock_dir
    anchors_spec = args.trust_anchors or (f"mock:{mock_dir}" if mock_dir else "production")
    refs_path = args.reference_values
    if refs_path is None:
        if mock_dir is None:
            raise UsageError("--tee tsm needs --reference-values FILE")
        refs_path = str(Path(mock_dir) / "reference-values.json")
    raw = _read(refs_path, "--reference-values")
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
        _err(
            "warning: --coordinator-policy-hash not given: any coordinator policy is accepted "
            "(the coordinator is not pinned to a deployment)"
        )
    return CoordinatorPolicy(_anchors(anchors_spec), refs, policy_hash)


def _join_provider(args: argparse.Namespace) -> Any:
    from attestation.providers.base import ProviderError

    mock_dir = _tee_spec(args.tee).mock_dir
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
    policy = _read(args.mock_policy, "--mock-policy")
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
    out = _out_dir(args.out)
    if args.watch:
        from coordinator.cli import watch

        return watch.main(
            addresses,
            policy,
            provider,
            out,
            key_type=args.key_type,
            pin=_pin(args),
            first_join_timeout=args.timeout,
            on_change=args.on_change,
            http_addr=args.http_addr,
            keep_previous_ca=_duration_seconds(args.keep_previous_ca, "--keep-previous-ca"),
        )
    tty = sys.stderr.isatty()

    def on_wait(reason: str, attempt: int, delay: float) -> None:
        if tty:
            _err(f"waiting for the coordinator ({reason}); attempt {attempt}, next in {delay:.1f}s")

    result = _run(
        join(
            args.coordinator,
            provider,
            policy=policy,
            out_dir=out,
            key_type=args.key_type,
            timeout=args.timeout,
            on_wait=on_wait,
            pin=_pin(args),
            require_pq=args.require_pq,
        ),
        args,
        # join retries within --timeout by itself; the outer bound only cuts an attempt that
        # hangs past it (a coordinator that accepts connections but never answers).
        grace=1.0,
    )
    _emit(
        args,
        {
            "out": str(out),
            "files": list(result.files),
            "tee": result.tee,
            "policy_hash": result.policy_hash.hex(),
            "workload_secret": result.has_workload_secret,
            "attempts": result.attempts,
            "cert_sha256": _fingerprint(result.cert_pem),
            "root_ca_sha256": _fingerprint(result.root_ca_pem),
            "mesh_ca_sha256": _fingerprint(result.mesh_ca_pem),
        },
        [
            f"joined ({result.tee}, policy {result.policy_hash.hex()[:16]}…)",
            f"wrote {', '.join(str(out / f) for f in result.files)}",
        ],
    )
    return 0


# --- demo ----------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # before gRPC loads: no core log lines
    from coordinator.cli import demo

    if args.workloads < 1 or args.workloads > 64:
        raise UsageError("--workloads: want 1..64")
    return demo.main(args)


# --- parser --------------------------------------------------------------------------------------


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _address_arg(default_port: int | None, *, bind: bool = False) -> Callable[[str], str]:
    """An argparse type: a checked ``HOST:PORT`` in canonical form (IPv6 bracketed); ``HOST``
    alone takes ``default_port``; binds also take port 0 (any free port)."""
    from coordinator.core.address import AddressError, parse_address

    def parse(text: str) -> str:
        try:
            return str(parse_address(text, default_port=default_port, allow_any_port=bind))
        except AddressError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "address"  # argparse names the type in its messages
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"want 0 < SECONDS <= 86400, got {text}")
    return value


def _add_common_client(
    p: argparse.ArgumentParser,
    *,
    user_port: bool = True,
    timeout: float = 30.0,
    several: bool = False,
) -> None:
    from coordinator.core.address import DEFAULT_MESH_PORT, DEFAULT_USER_PORT

    api, port = ("user", DEFAULT_USER_PORT) if user_port else ("mesh", DEFAULT_MESH_PORT)
    p.add_argument(
        "-c",
        "--coordinator",
        required=True,
        metavar="HOST[:PORT]",
        type=_address_arg(port),
        action="append" if several else "store",
        help=f"the coordinator's {api} API (port {port} when omitted; IPv6 as [ADDR]:PORT)"
        + (
            "; repeat for the other coordinators of the deployment"
            + ("" if user_port else " (--watch)")
            if several
            else ""
        ),
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=timeout,
        metavar="SECONDS",
        help="give up when the whole operation has not finished after this long",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(api=api)


def _add_anchors(p: argparse.ArgumentParser, default: str | None = DEFAULT_TRUST_ANCHORS) -> None:
    p.add_argument(
        "--trust-anchors",
        default=default,
        metavar="production|mock:DIR",
        help="roots the coordinator's evidence must chain to"
        + (f" (default {default})" if default else ""),
    )


def _add_tdx_collateral(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tdx-collateral",
        metavar="FILE",
        help="TDX only (--tee tsm): TCB info / QE identity / CRLs as JSON (dcap-qvl layout), "
        "attached to the evidence; verifiers require collateral for TDX",
    )


class _DefaultsHelp(argparse.HelpFormatter):
    """``--help`` shows every real default, so nobody has to read the source to learn what a
    coordinator binds or which store it opens; flags without one (None, off) say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is False
            or default is argparse.SUPPRESS
            or "default" in text
            or not action.option_strings
        ):
            return action.help
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class _CommandParser(argparse.ArgumentParser):
    """Every subcommand's parser (also those other modules register) gets :class:`_DefaultsHelp`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsHelp)
        super().__init__(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Concord: attestation-aware coordinator for confidential computing.",
        epilog="Exit codes: 0 success, 1 refused or unverifiable, 2 usage error.",
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser
    )

    # serve
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
    _add_tdx_collateral(p)
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
    _add_anchors(p)
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
        type=_address_arg(1313, bind=True),
        metavar="HOST[:PORT]",
        help=f"user API: set, verify, recover ({bind})",
    )
    p.add_argument(
        "--mesh-addr",
        default="127.0.0.1:7777",
        type=_address_arg(7777, bind=True),
        metavar="HOST[:PORT]",
        help="mesh API: join, peer recovery",
    )
    p.add_argument(
        "--http-addr",
        default="127.0.0.1:9102",
        type=_address_arg(9102, bind=True),
        metavar="HOST[:PORT]",
        help="plain HTTP: /healthz /readyz /startupz /metrics",
    )
    p.add_argument("--deployment", default="default", help="deployment name (etcd key prefix)")
    p.add_argument(
        "--peer",
        action="append",
        type=_address_arg(7777),
        metavar="HOST[:PORT]",
        help="static peer (its mesh API); repeat for more",
    )
    p.add_argument(
        "--advertise-mesh-addr",
        type=_address_arg(7777),
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

    # set
    p = sub.add_parser(
        "set",
        help="set or update the manifest",
        description="Verify the coordinator against MANIFEST's coordinator policy and reference "
        "values, then set MANIFEST. Writes root-ca.pem, mesh-ca.pem and, on the first manifest, "
        "seedshares.json to --out. An update needs --owner-key.",
    )
    _add_common_client(p)
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument(
        "--policy",
        action="extend",
        nargs="+",
        metavar="FILE",
        help="policy documents referenced by the manifest (all of them)",
    )
    p.add_argument("--owner-key", metavar="KEY.pem", help="workload owner key (updates)")
    p.add_argument(
        "--allow-immutable",
        action="store_true",
        help="accept a manifest without WorkloadOwnerKeyDigests: it can never be updated",
    )
    p.add_argument(
        "--allow-unrecoverable",
        action="store_true",
        help="accept a manifest without SeedshareOwnerPubKeys: once every coordinator has lost "
        "its state, the deployment can never be recovered",
    )
    _add_anchors(p)
    _add_pin(p)
    p.add_argument(
        "--previous",
        metavar="HASH",
        help="update only if the latest transition is exactly HASH (compare-and-swap)",
    )
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_set)

    # verify
    p = sub.add_parser(
        "verify",
        help="verify the coordinator and its manifest history",
        description="Attest the coordinator against MANIFEST, fetch the history, require the "
        "latest manifest to equal MANIFEST byte for byte, re-verify the chain and its signature. "
        "Writes root-ca.pem, mesh-ca.pem, manifests/ and policies/ to --out.",
    )
    _add_common_client(p)
    p.add_argument("manifest", metavar="MANIFEST")
    _add_anchors(p)
    _add_pin(p)
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_verify)

    # recover
    p = sub.add_parser(
        "recover",
        help="recover a coordinator with a seed share",
        description="Verify the coordinator against MANIFEST (the latest manifest you hold), "
        "then send it the seed (or, with a threshold, your share), sealed to its attested key. "
        "Repeat -c to submit to every coordinator of the deployment: each keeps its own partial "
        "shares, the first with k completes and the others recover from it.",
    )
    _add_common_client(p, several=True)
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--seedshares", required=True, metavar="FILE", help="seedshares.json")
    p.add_argument("--seedshare-key", required=True, metavar="KEY.pem", help="RSA private key")
    p.add_argument(
        "--seedshare-mlkem-key",
        metavar="KEY.pem",
        help="ML-KEM-768 private key (PKCS#8 PEM), when the manifest lists one for you in "
        "SeedshareOwnerMLKEMKeys: your share is wrapped for both keys",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="recover even while a ready peer exists (mints a new mesh key: splits the mesh)",
    )
    _add_anchors(p)
    _add_pin(p)
    p.add_argument(
        "--latest",
        metavar="HASH",
        help="the latest transition to recover when the store lost its latest (default: "
        "MANIFEST's first-generation transition); otherwise it must equal the store's",
    )
    p.set_defaults(func=cmd_recover)

    # join
    p = sub.add_parser(
        "join",
        help="attest a workload and fetch its certificate and secret",
        description="Attest the coordinator, send this CVM's evidence, and write key.pem (0600), "
        "cert.pem, chain.pem, mesh-ca.pem, root-ca.pem and workload-secret (0600, when the "
        "policy has a secret ID) to --out. Retries while the coordinator is not ready.",
    )
    _add_common_client(p, user_port=False, timeout=60.0, several=True)
    _add_pin(p)
    p.add_argument("--tee", default=DEFAULT_TEE, help=f"tsm or mock:DIR (default {DEFAULT_TEE})")
    p.add_argument("--mock-policy", metavar="FILE", help="policy this mock CVM runs")
    _add_tdx_collateral(p)
    p.add_argument(
        "--mock-tee-type", choices=("snp", "tdx"), default="snp", help="evidence the mock CVM makes"
    )
    _add_anchors(p, default=None)
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
        type=_address_arg(None, bind=True),
        metavar="HOST:PORT",
        help="serve /healthz /readyz /status /metrics here (ready, seconds to expiry, "
        "renewals, failures)",
    )
    p.set_defaults(func=cmd_join)

    # demo
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

    _register_attestation(sub)
    from coordinator.cli import collateral, keys, manifest

    keys.register(sub)
    manifest.register(sub)
    collateral.register(sub)
    return parser


def _register_attestation(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``evidence`` and ``mock-tee`` live with the attestation layer."""
    try:
        from attestation import cli as attestation_cli
    except ModuleNotFoundError as exc:
        if exc.name != "attestation.cli":
            raise
        return
    attestation_cli.register(sub)


# --- main ----------------------------------------------------------------------------------------


def _dispatch(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    from attestation.providers.base import ProviderError
    from coordinator.client.channel import AttestationFailed
    from coordinator.client.operations import (
        InvalidInput,
        NotReady,
        OperationRefused,
        VerificationFailed,
    )

    try:
        return func(args)
    except UsageError as exc:
        _err(str(exc))
        return 2
    except InvalidInput as exc:
        _err(str(exc))
        return 2
    except (AttestationFailed, EvidenceRejected) as exc:
        _err(f"coordinator attestation failed: {exc}{_anchors_hint(exc, args)}")
        return 1
    except OperationRefused as exc:
        _err(str(exc) + (_port_hint(exc.code, args) or _hint(exc.reason)))
        return 1
    except VerificationFailed as exc:
        _err(str(exc))
        return 1
    except NotReady as exc:
        _err(f"coordinator not ready: {exc}")
        return 1
    except ProviderError as exc:
        _err(f"evidence provider failed: {exc}")
        return 1
    except BrokenPipeError as exc:
        if _stdout_closed():  # `concord ... | head`: the reader is gone, as with `cat`
            _silence_stdout()
            return 141
        _err(_describe(exc, args))
        return 1
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except asyncio.CancelledError:
        _err("terminated")
        return 143
    except Exception as exc:
        if os.environ.get("CONCORD_DEBUG"):
            traceback.print_exc()
        _err(_describe(exc, args))
        return 1


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports POLLERR on it)."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# What the user can do about a refusal, by the coordinator's stable reason (never its wording).
_HINTS = {
    "not_initialized": "no manifest has been set yet: run `concord set` first",
    "recovery_mode": (
        "the coordinator is in recovery mode: a ready peer recovers it, "
        "or a seed-share owner runs `concord recover`"
    ),
    "concurrent_update": "the manifest history moved: run `concord verify`, then retry",
    "not_in_recovery_mode": "the coordinator serves a fresh state: nothing to recover",
    "ready_peer_exists": "a ready peer will recover it; `concord recover --force` overrides",
    "updates_disabled": "the current manifest has no WorkloadOwnerKeyDigests: it is final",
    "not_workload_owner": "sign with a key listed in the current WorkloadOwnerKeyDigests",
    "not_seedshare_owner": "use a key listed in the latest manifest's SeedshareOwnerPubKeys",
    "token_expired": "the challenge expired: retry",
    "token_wrong_transition": "the manifest changed meanwhile: retry",
}


def _hint(reason: str | None) -> str:
    hint = _HINTS.get(reason or "")
    return f" (hint: {hint})" if hint else ""


_API_PORTS = {"user": 1313, "mesh": 7777}


def _port_hint(code: Any, args: argparse.Namespace) -> str:
    """UNIMPLEMENTED from our own server means the right coordinator but the other API's port:
    both ports serve attestation, only one serves the method asked for."""
    import grpc

    if code is not grpc.StatusCode.UNIMPLEMENTED:
        return ""
    api = getattr(args, "api", "user")
    other = "mesh" if api == "user" else "user"
    port = _API_PORTS[api]
    return (
        f" (hint: {args.coordinator} looks like the coordinator's {other} API port; "
        f"`concord {args.command}` talks to its {api} API: port {port} by default, "
        f"the --{api}-addr of `concord serve`)"
    )


def _anchors_hint(exc: Exception, args: argparse.Namespace) -> str:
    """Evidence that does not chain to the production roots is often the software TEE's."""
    from attestation.errors import ChainRejected

    if not isinstance(exc, ChainRejected):
        return ""
    spec = getattr(args, "trust_anchors", None)
    if spec not in (None, DEFAULT_TRUST_ANCHORS):
        return ""
    return (
        " (hint: its evidence does not chain to the production AMD/Intel roots; if the "
        "coordinator runs the software TEE, pass --trust-anchors mock:DIR with the directory "
        "of `concord mock-tee init`)"
    )


def _transport_hint(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line for a coordinator that cannot be reached, answers in the wrong protocol, or
    does not answer at all (None: not a transport problem)."""
    import ssl

    target = getattr(args, "coordinator", None)
    where = f" at {target}" if target else ""
    api = getattr(args, "api", "user")
    port = _API_PORTS.get(api, 1313)
    if isinstance(exc, NoAnswer):
        return (
            f"no answer from the coordinator{where} within {exc.seconds:g}s (hint: it may be "
            "hung or overloaded: check its /healthz and log; --timeout SECONDS waits longer)"
        )
    if isinstance(exc, (ssl.SSLError, ConnectionResetError, asyncio.IncompleteReadError)):
        return (
            f"TLS handshake with{where or ' the coordinator'} failed "
            f"({type(exc).__name__}) (hint: not a coordinator gRPC port: the HTTP probe port "
            f"(default 9102) speaks plain HTTP; use the {api} API, port {port} by default)"
        )
    if isinstance(exc, ConnectionRefusedError):
        return (
            f"cannot reach the coordinator{where}: connection refused (hint: is it running? "
            f"`concord serve` prints its addresses in its first line; the {api} API listens on "
            f"port {port} by default, on loopback unless --{api}-addr says otherwise)"
        )
    return None


def _describe(exc: Exception, args: argparse.Namespace) -> str:
    import grpc

    from coordinator.client.errors import reason_of

    if isinstance(exc, grpc.aio.AioRpcError):
        hint = _port_hint(exc.code(), args) or _hint(reason_of(exc))
        return f"{exc.code().name}: {exc.details()}{hint}"
    transport = _transport_hint(exc, args)
    if transport is not None:
        return transport
    if isinstance(exc, (ConnectionError, TimeoutError)) or (
        isinstance(exc, OSError) and exc.filename is None
    ):
        target = getattr(args, "coordinator", None)
        where = f" at {target}" if target else ""
        return f"cannot reach the coordinator{where}: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, OSError):
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    return _dispatch(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
