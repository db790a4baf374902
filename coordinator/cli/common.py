"""What every ``concord`` command group shares: usage errors, reading local files, trust
anchors, printing (``--json``), argument types and the common client options."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from attestation.anchors import AnchorError, TrustAnchors
from attestation.providers.spec import TeeSpec, TeeSpecError, parse_tee_spec

PROG = "concord"
T = TypeVar("T")

# Defaults for a coordinator in a real CVM.
DEFAULT_STORE = "file:/var/lib/concord"
DEFAULT_TEE = "tsm"
DEFAULT_TRUST_ANCHORS = "production"


class UsageError(Exception):
    """Bad invocation or unusable local input: exit code 2."""


def err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror or exc}") from None


def existing_file(path: str | None, flag: str) -> str | None:
    if path is not None and not Path(path).is_file():
        raise UsageError(f"{flag} {path}: no such file")
    return path


def load_anchors(spec: str) -> TrustAnchors:
    from attestation.anchors import from_spec

    try:
        return from_spec(spec)
    except AnchorError as exc:
        raise UsageError(str(exc)) from None


def load_private_key(path: str, what: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    data = read(path, what)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UsageError(f"{what} {path}: encrypted keys are not supported") from None
    except Exception:  # ValueError, UnsupportedAlgorithm: either way not a usable key
        raise UsageError(f"{what} {path}: not a PEM private key") from None


def emit(args: argparse.Namespace, data: dict[str, Any], text: Sequence[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in text:
            print(line)
    sys.stdout.flush()


def hash_arg(text: str | None, flag: str) -> bytes | None:
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


def pinned_deployment(args: argparse.Namespace) -> bytes | None:
    """The deployment ID pinned with --deployment-id HEX or --root-ca FILE (DESIGN §12)."""
    from coordinator.client.operations import VerificationFailed, deployment_id_of

    pin = hash_arg(args.deployment_id, "--deployment-id")
    if args.root_ca is not None:
        try:
            from_file = deployment_id_of(read(args.root_ca, "--root-ca"))
        except VerificationFailed:
            raise UsageError(f"--root-ca {args.root_ca}: not a PEM certificate") from None
        if pin is not None and pin != from_file:
            raise UsageError("--deployment-id and --root-ca name different deployments")
        pin = from_file
    return pin


def add_pin(p: argparse.ArgumentParser) -> None:
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


def fingerprint(pem: bytes) -> str:
    from coordinator.client.operations import cert_fingerprint

    return cert_fingerprint(pem)


def make_out_dir(path: str) -> Path:
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


def run_bounded(coro: Coroutine[Any, Any, T], args: argparse.Namespace, *, grace: float = 0.0) -> T:
    """Run a client operation bounded by ``--timeout`` (plus ``grace``) as a whole, so a hung
    coordinator ends in one clear line however many round trips the operation makes."""

    async def bounded() -> T:
        try:
            return await asyncio.wait_for(coro, args.timeout + grace)
        except TimeoutError:
            raise NoAnswer(args.timeout) from None

    return asyncio.run(bounded())


def tee_spec(text: str) -> TeeSpec:
    try:
        return parse_tee_spec(text)
    except TeeSpecError as exc:
        raise UsageError(str(exc)) from None


def address_arg(default_port: int | None, *, bind: bool = False) -> Callable[[str], str]:
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


def seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"want 0 < SECONDS <= 86400, got {text}")
    return value


def add_common_client(
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
        type=address_arg(port),
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
        type=seconds_arg,
        default=timeout,
        metavar="SECONDS",
        help="give up when the whole operation has not finished after this long",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(api=api)


def add_anchors(p: argparse.ArgumentParser, default: str | None = DEFAULT_TRUST_ANCHORS) -> None:
    p.add_argument(
        "--trust-anchors",
        default=default,
        metavar="production|mock:DIR",
        help="roots the coordinator's evidence must chain to"
        + (f" (default {default})" if default else ""),
    )


def add_tdx_collateral(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tdx-collateral",
        metavar="FILE",
        help="TDX only (--tee tsm): TCB info / QE identity / CRLs as JSON (dcap-qvl layout), "
        "attached to the evidence; verifiers require collateral for TDX",
    )


class DefaultsHelp(argparse.HelpFormatter):
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


class CommandParser(argparse.ArgumentParser):
    """Every subcommand's parser (also those other modules register) gets :class:`DefaultsHelp`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelp)
        super().__init__(**kwargs)
