"""Process wiring: store, guard and watcher, evidence provider, the two gRPC ports (TLS with an
ephemeral identity), probes and metrics, peer recovery, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from attestation import anchors as trust
from attestation.collateral.cache import CollateralDir
from attestation.providers.base import EvidenceProvider
from attestation.providers.spec import parse_tee_spec
from attestation.verify import Verifier
from coordinator.api.v1 import concord_pb2_grpc as pb_grpc
from coordinator.cluster.recovery import ClusterDeps, PeerRecovery
from coordinator.core.address import split_address
from coordinator.core.backoff import Backoff
from coordinator.core.history import History
from coordinator.core.issuance import BatchRunner
from coordinator.core.limits import MAX_MESSAGE
from coordinator.core.sealing import generate_keypair
from coordinator.core.state import Guard, State
from coordinator.core.tlsid import TlsIdentity
from coordinator.service.attestapi import AttestationService
from coordinator.service.context import Coordinator
from coordinator.service.meshapi import MeshService, _issue
from coordinator.service.metrics import Metrics
from coordinator.service.probes import ProbeServer
from coordinator.service.userapi import UserService
from coordinator.store import open_store
from coordinator.store.base import Store

log = logging.getLogger("concord.server")

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.so_reuseport", 0),
]


@dataclass(frozen=True)
class ServerConfig:
    store: str = "file:concord-data"
    tee: str = "tsm"  # "tsm" or "mock:DIR"
    mock_policy: Path | None = None
    mock_tee_type: str = "snp"
    tdx_collateral: Path | None = None
    collateral_dir: Path | None = None  # collateral directory (concord collateral fetch)
    trust_anchors: str = "production"
    user_addr: str = "0.0.0.0:1313"
    mesh_addr: str = "0.0.0.0:7777"
    http_addr: str = "0.0.0.0:9102"
    deployment: str = "default"
    peers: tuple[str, ...] = ()
    advertise_mesh_addr: str | None = None
    node_id: str | None = None
    etcd_options: dict[str, Any] = field(default_factory=dict)
    issuer_workers: int | None = None


def load_tdx_collateral(path: Path | None) -> dict[str, bytes] | None:
    """Collateral file in the dcap-qvl JSON layout, attached to TDX evidence from configfs-tsm."""
    if path is None:
        return None
    from attestation.tdx.collateral import load_collateral_json

    return load_collateral_json(path).to_cbor_map()


def collateral_source(config: ServerConfig) -> CollateralDir | None:
    """The collateral directory: fills in a VCEK / TDX collateral evidence does not carry."""
    if config.collateral_dir is None:
        return None
    return CollateralDir(config.collateral_dir)


def build_provider(config: ServerConfig) -> EvidenceProvider:
    """The evidence source ``config.tee`` names (TeeSpecError, a ValueError, if none)."""
    spec = parse_tee_spec(config.tee)
    if spec.mock_dir is None:
        from attestation.providers.tsm import TsmProvider

        return TsmProvider(
            tdx_collateral=load_tdx_collateral(config.tdx_collateral),
            collateral=collateral_source(config),
        )
    from attestation.providers.mock import MockProvider

    if config.mock_policy is None:
        raise ValueError("--tee mock:DIR needs --mock-policy FILE (the policy the mock CVM runs)")
    return MockProvider(spec.mock_dir, config.mock_policy.read_bytes(), tee=config.mock_tee_type)


WATCH_BACKOFF = Backoff(base=0.1, cap=1.0, jitter=0.2)
"""Restart a failed history watch within about a second (jittered): until it is back, a move of
``latest`` by a peer goes unnoticed, and a restart is one cheap read."""


class CoordinatorServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.store: Store | None = None
        self.guard: Guard | None = None
        self.coord: Coordinator | None = None
        self.addresses: dict[str, str] = {}
        self._grpc: list[grpc.aio.Server] = []
        self._probes: ProbeServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._started = False
        self._recovery: PeerRecovery | None = None

    async def start(self) -> None:
        cfg = self.config
        anchors = trust.from_spec(cfg.trust_anchors)
        provider = build_provider(cfg)
        self.store = await open_store(cfg.store, cfg.deployment, **cfg.etcd_options)
        history = History(self.store)
        self.guard = Guard(history, on_stale=self._on_stale, backoff=WATCH_BACKOFF)
        tls = TlsIdentity.generate()
        hpke_private, _ = generate_keypair()
        runner: BatchRunner[Any, Any] = BatchRunner(_issue, workers=cfg.issuer_workers)
        self.coord = Coordinator(
            guard=self.guard,
            verifier=Verifier(anchors, collateral=collateral_source(cfg)),
            provider=provider,
            tls_spki=tls.spki_der,
            hpke_private=hpke_private,
            metrics=self.metrics,
            runner=runner,
        )
        creds = grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)])
        attest = AttestationService(self.coord)
        for name, addr in (("user", cfg.user_addr), ("mesh", cfg.mesh_addr)):
            server = grpc.aio.server(options=GRPC_OPTIONS)
            pb_grpc.add_AttestationServicer_to_server(attest, server)
            if name == "user":
                pb_grpc.add_UserAPIServicer_to_server(UserService(self.coord), server)
            else:
                pb_grpc.add_MeshAPIServicer_to_server(MeshService(self.coord), server)
            host, _ = split_address(addr)
            port = server.add_secure_port(addr, creds)
            if port == 0:
                raise OSError(f"cannot listen on {addr}")
            await server.start()
            self._grpc.append(server)
            self.addresses[name] = _join_addr(host, port)
        self._probes = ProbeServer(
            {
                "/healthz": self._healthz,
                "/readyz": self._readyz,
                "/startupz": self._startupz,
                "/metrics": self._metrics,
            }
        )
        host, port = split_address(cfg.http_addr)
        self.addresses["http"] = _join_addr(host, await self._probes.start(host, port))
        self._tasks.append(asyncio.create_task(self.guard.watch_history(), name="watch-history"))
        coord = self.coord
        self._recovery = PeerRecovery.create(
            ClusterDeps(
                node_id=cfg.node_id or "",
                static_peers=tuple(cfg.peers),
                store=self.store,
                guard=self.guard,
                anchors=anchors,
                addresses=self.addresses,
                advertise_mesh_addr=cfg.advertise_mesh_addr,
                is_ready=self.is_ready,
                evidence=coord.evidence,
                own_evidence_under=coord.own_evidence_under,
                on_recovery=lambda source: self.metrics.recoveries.labels(source).inc(),
            )
        )
        if self._recovery is not None:
            self.coord.ready_peer_exists = self._recovery.ready_peer_exists
            self._tasks.extend(await self._recovery.start())
        self._started = True
        log.info("coordinator serving %s", json.dumps(self.addresses))

    def _on_stale(self, state: State | None) -> None:
        self.metrics.set_state("stale")
        if self._recovery is not None:
            self._recovery.trigger()

    def refresh_metrics(self) -> None:
        state = self.guard.current() if self.guard else None
        if state is None:
            stale = self.guard is not None and self.guard.stale_event.is_set()
            self.metrics.set_state("stale" if stale else "uninitialized")
            self.metrics.generation.set(0)
            return
        self.metrics.set_state("stale" if state.stale else "ready")
        self.metrics.generation.set(state.generation)

    def is_ready(self) -> bool:
        state = self.guard.current() if self.guard else None
        return state is not None and not state.stale

    async def _healthz(self) -> tuple[int, str, bytes]:
        try:
            assert self.store is not None
            await asyncio.wait_for(self.store.has("transitions/latest"), 2)
        except Exception as exc:
            return 503, "text/plain", f"store unreachable: {type(exc).__name__}\n".encode()
        return 200, "text/plain", b"ok\n"

    async def _readyz(self) -> tuple[int, str, bytes]:
        if self.is_ready():
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", b"not ready\n"

    async def _startupz(self) -> tuple[int, str, bytes]:
        return (
            (200, "text/plain", b"started\n")
            if self._started
            else (503, "text/plain", b"starting\n")
        )

    async def _metrics(self) -> tuple[int, str, bytes]:
        self.refresh_metrics()
        return 200, "text/plain; version=0.0.4", self.metrics.render()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop serving first, then background work, membership, probes and the store. Every
        step is bounded: a stuck dependency must not keep the process from exiting."""
        stops = [s.stop(grace) for s in self._grpc]
        await _bounded("gRPC servers", asyncio.gather(*stops, return_exceptions=True), grace + 5)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await _bounded("background tasks", asyncio.wait(self._tasks), 5)
        if self._recovery is not None:
            await _bounded("membership", self._recovery.stop(), 5)
        if self._probes is not None:
            await _bounded("probes", self._probes.stop(), 3)
        if self.coord is not None:
            self.coord.runner.close()
        if self.store is not None:
            await _bounded("store", self.store.close(), 10)


def _join_addr(host: str, port: int) -> str:
    """HOST:PORT with IPv6 literals bracketed, as every client of these addresses parses them."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _bounded(what: str, step: Awaitable[Any], timeout: float) -> None:
    try:
        await asyncio.wait_for(step, timeout)
    except TimeoutError:
        log.error("shutdown: %s did not stop within %.0f s; going on", what, timeout)
    except Exception as exc:
        log.warning("shutdown: %s failed: %s", what, type(exc).__name__)


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
        return json.dumps(entry)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


async def serve(config: ServerConfig, *, ready_line: bool = True) -> None:
    """Run until SIGTERM/SIGINT; prints one JSON line with the bound addresses once serving."""
    import signal

    from coordinator.service.hardening import harden_process

    harden_process()  # before any secret exists: no core dumps, not dumpable
    server = CoordinatorServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        if ready_line:
            print(
                json.dumps({"event": "serving", "pid": os.getpid(), **server.addresses}), flush=True
            )
        await stop.wait()
        log.info("shutting down")
    finally:
        await server.stop()
