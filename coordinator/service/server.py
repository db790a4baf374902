"""Process wiring: store, guard and watcher, evidence provider, the two gRPC ports (TLS with an
ephemeral identity), probes and metrics, peer recovery, graceful shutdown."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import sys
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from attestation import anchors as trust
from attestation.collateral.cache import CollateralDir
from attestation.providers.base import EvidenceProvider
from attestation.providers.spec import parse_tee_spec
from attestation.verify import Verifier
from coordinator.api.v1 import concord_pb2_grpc as pb_grpc
from coordinator.backoff import Backoff
from coordinator.cluster.recovery import ClusterDeps, PeerRecovery
from coordinator.core.address import parse_address, split_address
from coordinator.core.history import History
from coordinator.core.issuance import BatchRunner
from coordinator.core.limits import MAX_MESSAGE
from coordinator.core.sealing import generate_keypair
from coordinator.core.state import Guard, State
from coordinator.core.tlsid import TlsIdentity
from coordinator.errors import ConcordError, Status
from coordinator.http_probes import ProbeServer
from coordinator.service.attestapi import AttestationService
from coordinator.service.context import Coordinator
from coordinator.service.feed import LifecycleConfig, StateFeed
from coordinator.service.limits import LimitInterceptor, MethodGates, RpcLimits
from coordinator.service.meshapi import MeshService, _issue
from coordinator.service.metrics import Metrics
from coordinator.service.userapi import UserService
from coordinator.store import open_store
from coordinator.store.base import Store

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from attestation.collateral.warmer import Warmer

log = logging.getLogger("concord.server")

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.so_reuseport", 0),
]
"""Base options; :meth:`RpcLimits.grpc_options` adds the transport policy (DESIGN §13)."""


@dataclass(frozen=True)
class ServerConfig:
    store: str = "file:concord-data"
    tee: str = "tsm"  # "tsm" or "mock:DIR"
    mock_policy: Path | None = None
    mock_tee_type: str = "snp"
    tdx_collateral: Path | None = None
    collateral_dir: Path | None = None  # collateral directory (concord collateral fetch)
    collateral_urls: tuple[str, ...] = ()  # keep collateral_dir warm from these (kds=/pcs=URL)
    trust_anchors: str = "production"
    # Loopback unless told otherwise: a coordinator is reachable from other hosts only when the
    # operator names the interface (e.g. ``--user-addr 0.0.0.0:1313``).
    user_addr: str = "127.0.0.1:1313"
    mesh_addr: str = "127.0.0.1:7777"
    http_addr: str = "127.0.0.1:9102"
    deployment: str = "default"
    peers: tuple[str, ...] = ()
    advertise_mesh_addr: str | None = None
    node_id: str | None = None
    etcd_options: dict[str, Any] = field(default_factory=dict)
    issuer_workers: int | None = None
    limits: RpcLimits = field(default_factory=RpcLimits)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    require_pq: bool = False  # refuse requesters offering no post-quantum HPKE suite


def load_tdx_collateral(path: Path | None) -> dict[str, bytes] | None:
    """Collateral file in the dcap-qvl JSON layout, attached to TDX evidence from configfs-tsm."""
    if path is None:
        return None
    from attestation.tdx.collateral_model import load_collateral_json

    return load_collateral_json(path).to_cbor_map()


def collateral_source(config: ServerConfig) -> CollateralDir | None:
    """The collateral directory: fills in a VCEK / TDX collateral evidence does not carry."""
    if config.collateral_dir is None:
        return None
    return CollateralDir(config.collateral_dir)


def collateral_for(
    config: ServerConfig, anchors: trust.TrustAnchors, registry: CollectorRegistry
) -> tuple[CollateralDir | None, Warmer | None]:
    """The directory the verifier reads and, with ``collateral_urls``, the task keeping it warm."""
    if config.collateral_dir is None or not config.collateral_urls:
        return collateral_source(config), None
    from attestation.collateral.warmer import build_warmer

    warmer, source = build_warmer(
        config.collateral_dir, config.collateral_urls, anchors, registry=registry
    )
    return source, warmer


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


STORE_PROBE_TIMEOUT = 2.0
"""Bound of the store read behind /healthz and /readyz (a kubelet probe times out at 1-10 s)."""


class StartupError(ConcordError):
    """The configuration cannot work on this host; found before anything is started."""

    reason = "startup_refused"
    status = Status.FAILED_PRECONDITION


class AddressInUse(StartupError):
    """Another process listens on an address this coordinator should bind."""

    reason = "address_in_use"


class AddressUnavailable(StartupError):
    """An address cannot be bound here (not a local interface, no permission, no such host)."""

    reason = "address_unavailable"


class TeeUnavailable(StartupError):
    """``--tee tsm`` on a host without configfs-tsm: every attestation would fail later."""

    reason = "tee_unavailable"


_BIND_FLAGS = (
    ("user_addr", "--user-addr"),
    ("mesh_addr", "--mesh-addr"),
    ("http_addr", "--http-addr"),
)


def check_bindable(address: str, flag: str) -> None:
    """Bind (and release) ``address`` the way the servers will, so a port in use or a foreign
    interface is one clear error at start instead of gRPC core's log line and a RuntimeError.
    Port 0 (any free port) always binds. A race with another process remains possible; the
    servers then fail with their own error."""
    parsed = parse_address(address, flag, allow_any_port=True)
    if parsed.port == 0:
        return
    try:
        infos = socket.getaddrinfo(
            parsed.host, parsed.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise AddressUnavailable(
            f"{flag} {address}: cannot resolve {parsed.host!r}: {exc.strerror}"
        ) from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUse(
                    f"{flag} {address}: address already in use (another coordinator running? "
                    f"pick another port, or port 0 for any free one)"
                ) from None
            raise AddressUnavailable(f"{flag} {address}: cannot bind: {exc.strerror}") from None


def check_tee(config: ServerConfig, tsm_root: Path | None = None) -> None:
    """``--tee tsm`` needs configfs-tsm; refuse at start, naming the path and the way out."""
    spec = parse_tee_spec(config.tee)
    if spec.mock_dir is not None:
        return
    from attestation.providers.tsm import DEFAULT_ROOT

    root = tsm_root or DEFAULT_ROOT
    if not root.is_dir():
        raise TeeUnavailable(
            f"--tee tsm: {root} does not exist (not a confidential VM, a kernel without "
            "CONFIG_TSM_REPORTS, or configfs not mounted at /sys/kernel/config); outside a CVM "
            "use the software TEE: concord mock-tee init DIR, then --tee mock:DIR --mock-policy FILE"
        )


def preflight(config: ServerConfig, *, tsm_root: Path | None = None) -> None:
    """Every start-up check that needs no store and no secret: addresses, binds, the TEE."""
    for attr, flag in _BIND_FLAGS:
        check_bindable(getattr(config, attr), flag)
    check_tee(config, tsm_root)


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
        self.user_service: UserService | None = None
        """The UserAPI servicer (holds the partial threshold shares of a recovery)."""
        self.addresses: dict[str, str] = {}
        self._grpc: list[grpc.aio.Server] = []
        self._probes: ProbeServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._started = False
        self._recovery: PeerRecovery | None = None
        self.feed: StateFeed | None = None

    async def start(self) -> None:
        cfg = self.config
        preflight(cfg)
        anchors = trust.from_spec(cfg.trust_anchors)
        provider = build_provider(cfg)
        self.store = await open_store(cfg.store, cfg.deployment, **cfg.etcd_options)
        history = History(self.store)
        self.guard = Guard(
            history,
            on_stale=self._on_stale,
            on_tamper=lambda event: self.metrics.store_tamper.labels(event.kind).inc(),
            backoff=WATCH_BACKOFF,
        )
        tls = TlsIdentity.generate()
        hpke_private, _ = generate_keypair()
        runner: BatchRunner[Any, Any] = BatchRunner(_issue, workers=cfg.issuer_workers)
        collateral, warmer = collateral_for(cfg, anchors, self.metrics.registry)
        if warmer is not None:
            self._tasks.append(asyncio.create_task(warmer.run(), name="collateral-warmer"))
        self.coord = Coordinator(
            guard=self.guard,
            verifier=Verifier(anchors, collateral=collateral),
            provider=provider,
            tls_spki=tls.spki_der,
            hpke_private=hpke_private,
            metrics=self.metrics,
            runner=runner,
            deployment=cfg.deployment,
            leaf_lifetime=cfg.lifecycle.leaf_lifetime,
            require_pq=cfg.require_pq,
        )
        # Every Watch stream follows this one feed, which follows the Guard (DESIGN §15).
        self.feed = StateFeed(self.guard, cfg.deployment, cfg.lifecycle)
        self._tasks.append(asyncio.create_task(self.feed.run(), name="state-feed"))
        creds = grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)])
        attest = AttestationService(self.coord)
        options = [*GRPC_OPTIONS, *cfg.limits.grpc_options()]
        methods = MethodGates(cfg.limits)
        for name, addr in (("user", cfg.user_addr), ("mesh", cfg.mesh_addr)):
            server = grpc.aio.server(
                options=options,
                interceptors=[LimitInterceptor(cfg.limits, methods, name)],
            )
            pb_grpc.add_AttestationServicer_to_server(attest, server)
            if name == "user":
                self.user_service = UserService(self.coord)
                pb_grpc.add_UserAPIServicer_to_server(self.user_service, server)
            else:
                pb_grpc.add_MeshAPIServicer_to_server(MeshService(self.coord, self.feed), server)
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
                on_recovery=self._on_recovery,
                deployment=cfg.deployment,
            )
        )
        if self._recovery is not None:
            self.coord.ready_peer_exists = self._recovery.ready_peer_exists
            self._tasks.extend(await self._recovery.start())
        self._started = True
        log.info("coordinator serving", extra={"event": "serving", **self.addresses})

    def _on_recovery(self, source: str) -> None:
        self.metrics.recoveries.labels(source).inc()

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

    async def _store_problem(self) -> str | None:
        """Why the store cannot be read right now (one bounded read), or None."""
        try:
            assert self.store is not None
            await asyncio.wait_for(self.store.has("transitions/latest"), STORE_PROBE_TIMEOUT)
        except Exception as exc:
            return f"store unreachable: {type(exc).__name__}"
        return None

    async def _healthz(self) -> tuple[int, str, bytes]:
        problem = await self._store_problem()
        if problem is not None:
            return 503, "text/plain", f"{problem}\n".encode()
        return 200, "text/plain", b"ok\n"

    async def _orphaned_history(self) -> bool:
        """History blobs but no ``latest``: someone deleted it (DESIGN §12)."""
        assert self.guard is not None
        history = self.guard.history
        try:
            return not await history.get_latest_raw() and await history.has_history()
        except Exception:
            return False  # the store's health is /healthz's business

    async def _readyz(self) -> tuple[int, str, bytes]:
        """200 only while this coordinator can *know* its state is fresh: it has a state that is
        not stale, its history watch is open, and the store answers now. A coordinator that
        cannot see the store cannot tell whether a peer moved ``latest``, so it is not ready."""
        if not self.is_ready():
            stale = self.guard is not None and self.guard.stale_event.is_set()
            why = "stale state (recovering)" if stale else "no state (no manifest set yet)"
            if not stale and self.guard is not None and await self._orphaned_history():
                why = "store holds a history without latest (tampered; recover as the owner)"
            return 503, "text/plain", f"not ready: {why}\n".encode()
        if self.guard is None or not self.guard.watch_ready.is_set():
            return 503, "text/plain", b"not ready: history watch down (store unreachable?)\n"
        problem = await self._store_problem()
        if problem is not None:
            return 503, "text/plain", f"not ready: {problem}\n".encode()
        return 200, "text/plain", b"ready\n"

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
        if self.feed is not None:
            self.feed.close()  # Watch streams end now, not after the grace
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
            self.coord.close()
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


# What every LogRecord carries; anything else on a record came from ``extra=`` and is data.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_ENTRY_KEYS = ("time", "level", "logger", "msg", "error")


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, and every ``extra=`` field as a key
    of its own (bytes as hex), so log pipelines filter on fields instead of parsing messages."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                entry[key if key not in _ENTRY_KEYS else f"field_{key}"] = _json_value(value)
        return json.dumps(entry)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python warnings become JSON lines too


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
