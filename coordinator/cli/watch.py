"""``concord join --watch``: run the workload agent (:mod:`coordinator.client.agent`) with its
credential directory (:mod:`coordinator.cli.files`), ``--on-change`` hook and a small HTTP
endpoint (``--http-addr``): ``/healthz`` (the process runs), ``/readyz`` (200 while the current
leaf is valid and not in its last quarter), ``/status`` (JSON) and ``/metrics`` (Prometheus text:
ready, seconds to expiry, renewals, failures).

Exit codes: 0 on SIGTERM/SIGINT, 1 when the leaf expired without renewal or no first leaf came
within ``--timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attestation.providers.base import EvidenceProvider
from coordinator.cli.files import CredentialDir
from coordinator.client.agent import Agent, AgentConfig, CredentialSet
from coordinator.client.channel import CoordinatorPolicy
from coordinator.core.address import split_address
from coordinator.errors import ConcordError
from coordinator.http_probes import Handler, ProbeServer

log = logging.getLogger("concord.agent")

HOOK_TIMEOUT = 60.0
"""An ``--on-change`` command still running after this long is killed (and logged)."""


def on_change_hook(command: str, out: Path) -> Callable[[CredentialSet], Awaitable[None]]:
    """Run ``command`` through ``sh -c`` after each change, with ``CONCORD_CREDENTIALS`` set to
    the new set's directory and ``CONCORD_NOT_AFTER`` to the leaf's expiry (ISO 8601)."""

    async def run(creds: CredentialSet) -> None:
        current = (out / "current").resolve()
        env = dict(
            os.environ,
            CONCORD_CREDENTIALS=str(current),
            CONCORD_NOT_AFTER=creds.not_after.isoformat(),
        )
        proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", command, env=env)
        try:
            code = await asyncio.wait_for(proc.wait(), HOOK_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"--on-change did not finish within {HOOK_TIMEOUT:g}s") from None
        if code != 0:
            raise RuntimeError(f"--on-change exited with {code}")

    return run


def _metrics(agent: Agent, now: datetime) -> bytes:
    status = agent.current_status()
    lines = [
        "# HELP concord_agent_ready 1 while the agent holds a leaf that is not in its last quarter.",
        "# TYPE concord_agent_ready gauge",
        f"concord_agent_ready {int(status.ready)}",
        "# HELP concord_agent_seconds_to_expiry Seconds until the current leaf expires.",
        "# TYPE concord_agent_seconds_to_expiry gauge",
        f"concord_agent_seconds_to_expiry {status.seconds_to_expiry(now):.3f}",
        "# HELP concord_agent_renewals_total Leaves obtained (the first join included).",
        "# TYPE concord_agent_renewals_total counter",
        f"concord_agent_renewals_total {status.renewals}",
        "# HELP concord_agent_failures_total Failed attempts to reach or use a coordinator.",
        "# TYPE concord_agent_failures_total counter",
        f"concord_agent_failures_total {status.failures}",
    ]
    return ("\n".join(lines) + "\n").encode()


def status_document(agent: Agent, now: datetime) -> dict[str, Any]:
    status = agent.current_status()
    return {
        "ready": status.ready,
        "connected": status.connected,
        "not_after": status.not_after.isoformat() if status.not_after else None,
        "seconds_to_expiry": round(status.seconds_to_expiry(now), 3),
        "renewals": status.renewals,
        "failures": status.failures,
        "last_error": status.last_error,
        "state_digest": status.state_digest.hex(),
    }


def http_routes(agent: Agent) -> dict[str, Handler]:
    async def healthz() -> tuple[int, str, bytes]:
        return 200, "text/plain", b"ok\n"

    async def readyz() -> tuple[int, str, bytes]:
        if agent.current_status().ready:
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", b"not ready\n"

    async def status() -> tuple[int, str, bytes]:
        body = json.dumps(status_document(agent, datetime.now(UTC))).encode() + b"\n"
        return 200, "application/json", body

    async def metrics() -> tuple[int, str, bytes]:
        return 200, "text/plain; version=0.0.4", _metrics(agent, datetime.now(UTC))

    return {"/healthz": healthz, "/readyz": readyz, "/status": status, "/metrics": metrics}


async def run_agent(
    config: AgentConfig,
    provider: EvidenceProvider,
    out: Path,
    *,
    on_change: str | None,
    http_addr: str | None,
    announce: Callable[[dict[str, Any]], None],
) -> int:
    sink = CredentialDir(out)
    hook = on_change_hook(on_change, out) if on_change else None
    agent = Agent(config, provider, sink, on_change=hook)
    probes: ProbeServer | None = None
    if http_addr is not None:
        probes = ProbeServer(http_routes(agent))
        host, port = split_address(http_addr)
        bound = await probes.start(host, port)
        announce({"event": "agent_http", "http": f"{host}:{bound}"})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(agent.run(), name="agent")
    stopper = asyncio.create_task(stop.wait())
    first = asyncio.create_task(agent.wait_renewals(1))
    try:
        done, _ = await asyncio.wait({task, first}, return_when=asyncio.FIRST_COMPLETED)
        if first in done:
            announce({"event": "joined", "out": str(out), **status_document(agent, _now())})
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            exc = task.exception()
            if exc is None:
                return 0
            if isinstance(exc, ConcordError):
                print(f"concord: join --watch: {exc}", file=sys.stderr)
                return 1
            raise exc
        return 0
    finally:
        for pending in (task, stopper, first):
            pending.cancel()
        await asyncio.gather(task, stopper, first, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if probes is not None:
            await probes.stop()


def _now() -> datetime:
    return datetime.now(UTC)


def main(
    addresses: tuple[str, ...],
    policy: CoordinatorPolicy,
    provider: EvidenceProvider,
    out: Path,
    *,
    key_type: str,
    pin: bytes | None,
    first_join_timeout: float,
    on_change: str | None,
    http_addr: str | None,
    keep_previous_ca: float = 600.0,
) -> int:
    def announce(line: dict[str, Any]) -> None:
        print(json.dumps(line), flush=True)

    config = AgentConfig(
        addresses=addresses,
        policy=policy,
        key_type=key_type,
        pin=pin,
        first_join_timeout=first_join_timeout,
        keep_previous_ca=keep_previous_ca,
    )
    return asyncio.run(
        run_agent(
            config, provider, out, on_change=on_change, http_addr=http_addr, announce=announce
        )
    )
