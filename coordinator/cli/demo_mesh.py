"""The mesh part of ``concord demo`` (DESIGN §15): two workloads whose agents keep their
credentials current, talking mutual TLS to each other the whole time.

Each workload runs a TLS server and a client that connects to the other workload again and
again (a new handshake every ``interval``), both sides requiring a certificate that chains to
the mesh CA bundle its own agent wrote. Each workload rebuilds its TLS contexts from its agent's
current credential set whenever the agent reports a change (the ``--on-change`` of
``concord join --watch``). The demo counts every connection attempt; any failure is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestation.providers.base import EvidenceProvider
from coordinator.backoff import Backoff
from coordinator.cli.files import CURRENT, CredentialDir
from coordinator.client.agent import Agent, AgentConfig, CredentialSet
from coordinator.client.channel import CoordinatorPolicy

PING = b"ping\n"
PONG = b"pong\n"
DEMO_BACKOFF = Backoff(base=0.1, cap=0.5, jitter=0.3)
"""Agents of the demo reconnect quickly: the restart is part of the show."""


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class MeshWorkload:
    """One workload: its agent, its TLS contexts (rebuilt on change), its server."""

    def __init__(
        self,
        name: str,
        out: Path,
        provider: EvidenceProvider,
        coordinator: str,
        policy: CoordinatorPolicy,
    ) -> None:
        self.name = name
        self.out = out
        self.reloads = 0
        self.server_ctx: ssl.SSLContext | None = None
        self.client_ctx: ssl.SSLContext | None = None
        self.agent = Agent(
            AgentConfig(
                addresses=(coordinator,),
                policy=policy,
                backoff=DEMO_BACKOFF,
                first_join_timeout=60,
                rpc_timeout=20,
                trust_settle=2.0,
            ),
            provider,
            CredentialDir(out),
            on_change=self.reload,
        )
        self._server: asyncio.Server | None = None
        self.port = 0

    async def reload(self, _creds: CredentialSet | None = None) -> None:
        """Rebuild both contexts from the current set, resolved once (never a mixed set)."""
        directory = (self.out / CURRENT).resolve()
        cert, key, bundle = directory / "cert.pem", directory / "key.pem", directory / "mesh-ca.pem"
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(cert, key)
        server.load_verify_locations(cafile=bundle)
        server.verify_mode = ssl.CERT_REQUIRED
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_cert_chain(cert, key)
        client.load_verify_locations(cafile=bundle)
        # The peer is identified by its mesh CA (the chain), not by a host name on loopback.
        client.check_hostname = False
        self.server_ctx, self.client_ctx = server, client
        self.reloads += 1

    async def serve(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            assert self.server_ctx is not None
            await asyncio.wait_for(writer.start_tls(self.server_ctx), 10)
            if await asyncio.wait_for(reader.readline(), 10) == PING:
                writer.write(PONG)
                await writer.drain()
        except Exception:
            pass  # the client side counts the failure
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def ping(self, port: int) -> None:
        """One connection to ``port``: TCP, a full mutual TLS handshake, ping, pong."""
        assert self.client_ctx is not None
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        try:
            await asyncio.wait_for(writer.start_tls(self.client_ctx), 10)
            writer.write(PING)
            await writer.drain()
            if await asyncio.wait_for(reader.readline(), 10) != PONG:
                raise ConnectionError("no pong")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)


class Mesh:
    """Two workloads pinging each other; :meth:`start` once both hold credentials."""

    def __init__(
        self,
        workdir: Path,
        providers: tuple[EvidenceProvider, EvidenceProvider],
        coordinator: str,
        policy: CoordinatorPolicy,
        interval: float = 0.1,
    ) -> None:
        self.a = MeshWorkload("a", workdir / "mesh-a", providers[0], coordinator, policy)
        self.b = MeshWorkload("b", workdir / "mesh-b", providers[1], coordinator, policy)
        self.interval = interval
        self.tally = Tally()
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def workloads(self) -> tuple[MeshWorkload, MeshWorkload]:
        return self.a, self.b

    async def start(self) -> None:
        for w in self.workloads:
            self._tasks.append(asyncio.create_task(w.agent.run(), name=f"agent-{w.name}"))
        await asyncio.wait_for(
            asyncio.gather(*(w.agent.wait_renewals(1) for w in self.workloads)), 60
        )
        for w in self.workloads:
            await w.serve()
        self._tasks.append(asyncio.create_task(self._pinging(), name="mesh-pings"))

    async def _pinging(self) -> None:
        while True:
            for src, dst in ((self.a, self.b), (self.b, self.a)):
                try:
                    await src.ping(dst.port)
                    self.tally.ok += 1
                except Exception as exc:
                    self.tally.failed += 1
                    if len(self.tally.errors) < 10:
                        self.tally.errors.append(f"{src.name}->{dst.name}: {exc}")
            await asyncio.sleep(self.interval)

    def agents_failed(self) -> str | None:
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return f"{task.get_name()}: {task.exception()}"
        return None

    async def wait(self, what: Callable[[], bool], timeout: float, label: str) -> None:
        async def poll() -> None:
            while not what():
                failed = self.agents_failed()
                if failed is not None:
                    raise RuntimeError(f"mesh: {failed}")
                await asyncio.sleep(0.05)

        try:
            await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            raise RuntimeError(f"mesh: timed out waiting for {label}") from None

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in self.workloads:
            await w.close()

    def report(self) -> dict[str, Any]:
        return {
            "connections_ok": self.tally.ok,
            "connections_failed": self.tally.failed,
            "errors": list(self.tally.errors),
            "renewals": {w.name: w.agent.status.renewals for w in self.workloads},
            "reloads": {w.name: w.reloads for w in self.workloads},
        }
