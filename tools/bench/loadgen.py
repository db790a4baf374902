"""A load process of the end-to-end issuance benchmark: full join flows against one coordinator.

Each flow is what a workload does to join: ``Attestation.Challenge`` for a fresh token, a fresh
leaf key and HPKE key, evidence from the mock TEE binding exactly those (made per flow: the
token is new each time, so nothing can be generated ahead), then ``MeshAPI.NewMeshCert``. All of
that client CPU runs on the same machine as the coordinator, and the harness says so.

The process attests the coordinator once (one pinned, attested channel per process, as a
long-lived workload agent would) and then runs ``tasks`` concurrent flow loops. It is driven
through multiprocessing primitives: it reports ready, waits for ``go``, counts completed flows
in its slot of ``counts`` and stops at ``stop`` (or when its parent disappears).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import anchors as trust
from attestation.binding import mesh_cert_report_data
from attestation.providers.mock import MockProvider
from attestation.reference import parse_reference_values
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client.channel import AttestedChannel, CoordinatorPolicy
from coordinator.core.sealing import PURPOSE_WORKLOAD_SECRET, generate_keypair, open_sealed

RPC_TIMEOUT = 30.0
DRAIN_TIMEOUT = 10.0


@dataclass(frozen=True)
class LoadConfig:
    index: int
    tasks: int
    mesh_addr: str
    server_cert_der: bytes
    mock_dir: str
    reference_json: dict[str, Any]
    coordinator_policy_hash: bytes
    workload_policy: bytes
    collect_latencies: bool = True
    check: bool = True  # False against the gRPC floor server, whose answers are canned
    cpus: tuple[int, ...] = ()  # pin this process (and the threads it makes) to these CPUs


@dataclass
class LoadResult:
    index: int
    flows: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    # (monotonic completion time, flow latency s, NewMeshCert latency s) per completed flow
    records: list[tuple[float, float, float]] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    checked: bool = False
    failure: str = ""


class _Flows:
    def __init__(self, cfg: LoadConfig, chan: AttestedChannel, counts: Any, stop: Any) -> None:
        self.cfg = cfg
        self.chan = chan
        self.counts = counts
        self.stop_event = stop
        self.stopping = False
        self.provider = MockProvider(cfg.mock_dir, cfg.workload_policy, tee="snp")
        self.result = LoadResult(index=cfg.index)

    async def one(self, check: bool) -> tuple[float, float]:
        started = time.monotonic()
        challenge = await self.chan.attest.Challenge(pb.ChallengeRequest(), timeout=RPC_TIMEOUT)
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        spki = leaf_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        hpke_private, hpke_public = generate_keypair()
        report_data = mesh_cert_report_data(spki, hpke_public, challenge.token)
        evidence = self.provider.evidence(report_data).encode()
        sent = time.monotonic()
        resp = await self.chan.mesh.NewMeshCert(
            pb.NewMeshCertRequest(
                evidence=evidence,
                leaf_public_key=spki,
                hpke_public_key=hpke_public,
                token=challenge.token,
            ),
            timeout=RPC_TIMEOUT,
        )
        done = time.monotonic()
        if not resp.certificate_chain_pem or not resp.sealed_workload_secret:
            raise AssertionError("NewMeshCert returned no certificate or no sealed secret")
        if check:
            leaf = x509.load_pem_x509_certificates(resp.certificate_chain_pem)[0]
            if leaf.public_key() != leaf_key.public_key():
                raise AssertionError("issued certificate is not for the attested key")
            secret = open_sealed(hpke_private, PURPOSE_WORKLOAD_SECRET, resp.sealed_workload_secret)
            if len(secret) < 32:
                raise AssertionError("workload secret is shorter than 32 bytes")
            self.result.checked = True
        return done - started, done - sent

    async def loop(self, first: bool) -> None:
        check = first
        while not self.stopping:
            try:
                flow_s, rpc_s = await self.one(check)
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                self.result.errors[code] = self.result.errors.get(code, 0) + 1
                await asyncio.sleep(0.01)
                continue
            check = False
            self.result.flows += 1
            self.counts[self.cfg.index] += 1
            if self.cfg.collect_latencies:
                self.result.records.append((time.monotonic(), flow_s, rpc_s))

    async def watch_stop(self, parent: int) -> None:
        while not self.stop_event.is_set() and os.getppid() == parent:
            await asyncio.sleep(0.01)
        self.stopping = True


async def _wait(event: Any, parent: int, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while not event.is_set():
        if os.getppid() != parent or time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def _main(cfg: LoadConfig, counts: Any, go: Any, stop: Any, queue: Any) -> LoadResult:
    parent = os.getppid()
    policy = CoordinatorPolicy(
        trust.mock(cfg.mock_dir),
        parse_reference_values(cfg.reference_json),
        cfg.coordinator_policy_hash,
    )
    chan = await AttestedChannel.connect(
        cfg.mesh_addr, policy, pinned_certificate=cfg.server_cert_der
    )
    try:
        flows = _Flows(cfg, chan, counts, stop)
        queue.put(("ready", cfg.index))
        if not await _wait(go, parent, 120.0):
            flows.result.failure = "never started"
            return flows.result
        cpu0, wall0 = time.process_time(), time.monotonic()
        watcher = asyncio.create_task(flows.watch_stop(parent))
        loops = [asyncio.create_task(flows.loop(cfg.check and i == 0)) for i in range(cfg.tasks)]
        await watcher
        _done, pending = await asyncio.wait(loops, timeout=DRAIN_TIMEOUT)
        for task in pending:
            task.cancel()
        for task in loops:
            if task.done() and not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                flows.result.failure = f"{type(exc).__name__}: {exc}"
        flows.result.cpu_s = time.process_time() - cpu0
        flows.result.wall_s = time.monotonic() - wall0
        return flows.result
    finally:
        await chan.close()


def run(cfg: LoadConfig, counts: Any, go: Any, stop: Any, queue: Any) -> None:
    """Process entry point: reports ("done", result) or ("failed", index, message), then exits
    once the message is flushed, or at once if the harness is gone (nobody would read it)."""
    parent = os.getppid()
    if cfg.cpus:
        os.sched_setaffinity(0, cfg.cpus)
    msg: tuple[Any, ...]
    try:
        msg = ("done", asyncio.run(_main(cfg, counts, go, stop, queue)))
    except BaseException as exc:
        msg = ("failed", cfg.index, f"{type(exc).__name__}: {exc}")
    if os.getppid() != parent:
        queue.cancel_join_thread()
        return
    queue.put(msg)
    queue.close()
    flusher = threading.Thread(target=queue.join_thread, daemon=True)
    flusher.start()
    while flusher.is_alive():
        if os.getppid() != parent:
            queue.cancel_join_thread()
            return
        flusher.join(0.2)
