"""Running a parsed command: exit codes and the one-line error description with a hint
(DESIGN §11). Exit codes: 0 success; 1 refused or unprovable; 2 usage error; 130/143 interrupted
or terminated; 141 stdout closed by its reader."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from attestation.errors import EvidenceRejected
from coordinator.cli.common import DEFAULT_TRUST_ANCHORS, NoAnswer, UsageError, err


def dispatch(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
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
        err(str(exc))
        return 2
    except InvalidInput as exc:
        err(str(exc))
        return 2
    except (AttestationFailed, EvidenceRejected) as exc:
        err(f"coordinator attestation failed: {exc}{_anchors_hint(exc, args)}")
        return 1
    except OperationRefused as exc:
        err(str(exc) + (_port_hint(exc.code, args) or _hint(exc.reason)))
        return 1
    except VerificationFailed as exc:
        err(str(exc))
        return 1
    except NotReady as exc:
        err(f"coordinator not ready: {exc}")
        return 1
    except ProviderError as exc:
        err(f"evidence provider failed: {exc}")
        return 1
    except BrokenPipeError as exc:
        if _stdout_closed():  # `concord ... | head`: the reader is gone, as with `cat`
            _silence_stdout()
            return 141
        err(_describe(exc, args))
        return 1
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    except asyncio.CancelledError:
        err("terminated")
        return 143
    except Exception as exc:
        if os.environ.get("CONCORD_DEBUG"):
            traceback.print_exc()
        err(_describe(exc, args))
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
