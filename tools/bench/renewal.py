"""Renewal storm benchmark (``./hack/bench renewal``, DESIGN §15).

One coordinator process (``concord serve``, software TEE, file store in a temporary directory).

1. **Complete joins, both ways, same run**: attest the coordinator on a new connection, then get
   a certificate, either with today's three RPCs (Attest, Challenge, NewMeshCert) or with the
   token Attest now carries (Attest, NewMeshCert). Rounds alternate the order; the coordinator's
   CPU per join (from /proc/<pid>/stat) is the issuance baseline of this run.
2. **The storm**: ``--agents`` agents (the real :class:`coordinator.client.agent.Agent`, in
   ``--processes`` processes, files kept in memory) join and watch; then one manifest update.
   Reported: seconds from the update until every agent holds a leaf under the new mesh CA
   (and the distribution), the coordinator's CPU per renewal against the baseline, and how the
   ±10 % jitter spreads the agents' next timer renewals.

Every process started here is stopped at the end, also on errors, signals and ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client.channel import AttestedChannel, CoordinatorPolicy

TARGET_CONVERGENCE_S = 10.0
TARGET_TWO_RPC_RATIO = 0.85
UPDATE_POLICY = b"renewal bench: a policy the update adds\n"


class RenewalBenchError(Exception):
    """The benchmark could not run to the end."""


# --- the agent processes ----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerConfig:
    first_index: int
    count: int
    mesh_addr: str
    mock_dir: str
    reference_json: dict[str, Any]
    coordinator_policy_hash: bytes
    workload_policy: bytes
    join_timeout: float


class _QueueSink:
    """Keeps nothing on disk: reports each publication (agent, time, transition) to the parent."""

    def __init__(self, index: int, messages: Any) -> None:
        self.index = index
        self.messages = messages

    def publish(self, creds: Any) -> None:
        self.messages.put(("renewed", self.index, time.monotonic(), creds.latest_transition_hash))


def agent_worker(cfg: WorkerConfig, messages: Any, stop: Any) -> None:
    """Entry of one agent process: run ``cfg.count`` agents until ``stop`` is set."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    asyncio.run(_agents(cfg, messages, stop))


async def _agents(cfg: WorkerConfig, messages: Any, stop: Any) -> None:
    from attestation import anchors as trust
    from attestation.providers.mock import MockProvider
    from attestation.reference import parse_reference_values
    from coordinator.backoff import Backoff
    from coordinator.client.agent import Agent, AgentConfig

    policy = CoordinatorPolicy(
        trust.mock(Path(cfg.mock_dir)),
        parse_reference_values(cfg.reference_json),
        cfg.coordinator_policy_hash,
    )
    provider = MockProvider(Path(cfg.mock_dir), cfg.workload_policy)
    config = AgentConfig(
        addresses=(cfg.mesh_addr,),
        policy=policy,
        backoff=Backoff(base=0.2, cap=5.0, jitter=0.5),
        first_join_timeout=cfg.join_timeout,
        rpc_timeout=60.0,
    )
    agents = [
        Agent(config, provider, _QueueSink(cfg.first_index + i, messages)) for i in range(cfg.count)
    ]
    tasks = []
    for agent in agents:  # a staggered start: a thousand TLS handshakes at once help nobody
        tasks.append(asyncio.create_task(agent.run()))
        await asyncio.sleep(0.005)
    while not await asyncio.to_thread(stop.wait, 0.5):
        if any(t.done() for t in tasks):
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
            if failed:
                messages.put(("failed", cfg.first_index, repr(failed[0].exception())))
                break
    now = time.monotonic()
    for i, agent in enumerate(agents):
        due = agent.renew_at
        messages.put(("schedule", cfg.first_index + i, None if due is None else due - now))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    messages.put(("done", cfg.first_index, None, None))


# --- complete joins, both ways ----------------------------------------------------------------


async def _complete_join(mesh: str, policy: CoordinatorPolicy, provider: Any, rpcs: int) -> None:
    from attestation.binding import mesh_cert_report_data
    from coordinator.core.authz import public_spki
    from coordinator.core.sealing import generate_keypair

    chan = await AttestedChannel.connect(mesh, policy, timeout=60)
    async with chan:
        if rpcs == 3:
            token = bytes((await chan.attest.Challenge(pb.ChallengeRequest(), timeout=60)).token)
        else:
            token = bytes(chan.attestation.token)
            if not token:
                raise RenewalBenchError("Attest carried no token")
        leaf = ec.generate_private_key(ec.SECP256R1())
        spki = public_spki(leaf)
        _, hpke_public = generate_keypair()
        evidence = (
            await asyncio.to_thread(
                provider.evidence, mesh_cert_report_data(spki, hpke_public, token)
            )
        ).encode()
        await chan.mesh.NewMeshCert(
            pb.NewMeshCertRequest(
                evidence=evidence, leaf_public_key=spki, hpke_public_key=hpke_public, token=token
            ),
            timeout=60,
        )


async def _join_batch(
    mesh: str, policy: CoordinatorPolicy, provider: Any, rpcs: int, n: int, concurrency: int
) -> None:
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await _complete_join(mesh, policy, provider, rpcs)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def join_comparison(
    pid: int,
    mesh: str,
    policy: CoordinatorPolicy,
    provider: Any,
    *,
    joins: int,
    rounds: int,
    concurrency: int,
) -> dict[str, Any]:
    from tools.bench.harness import proc_cpu_seconds

    per: dict[int, list[float]] = {2: [], 3: []}
    asyncio.run(_join_batch(mesh, policy, provider, 2, max(4, joins // 10), concurrency))  # warm
    for r in range(rounds):
        for rpcs in (3, 2) if r % 2 == 0 else (2, 3):
            before = proc_cpu_seconds(pid)
            asyncio.run(_join_batch(mesh, policy, provider, rpcs, joins, concurrency))
            per[rpcs].append((proc_cpu_seconds(pid) - before) / joins)
    three, two = statistics.median(per[3]), statistics.median(per[2])
    return {
        "joins_per_round": joins,
        "rounds": rounds,
        "concurrency": concurrency,
        "three_rpc_server_cpu_ms_per_join": round(three * 1000, 3),
        "two_rpc_server_cpu_ms_per_join": round(two * 1000, 3),
        "rounds_ms": {
            "three_rpc": [round(x * 1000, 3) for x in per[3]],
            "two_rpc": [round(x * 1000, 3) for x in per[2]],
        },
        "two_over_three": round(two / three, 3) if three else None,
        "target_two_over_three_at_most": TARGET_TWO_RPC_RATIO,
    }


# --- the storm --------------------------------------------------------------------------------


def _drain(messages: Any, timeout: float) -> tuple[Any, ...] | None:
    try:
        msg: tuple[Any, ...] = messages.get(timeout=timeout)
        return msg
    except queue.Empty:
        return None


def _wait_for(
    messages: Any,
    procs: list[Any],
    done: Any,
    deadline: float,
    on_message: Any,
    what: str,
) -> None:
    while not done():
        if time.monotonic() > deadline:
            raise RenewalBenchError(f"timed out waiting for {what}")
        msg = _drain(messages, 0.5)
        if msg is not None:
            if msg[0] == "failed":
                raise RenewalBenchError(f"agent process failed: {msg[2]}")
            on_message(msg)
        for p in procs:
            if p.exitcode not in (None, 0):
                raise RenewalBenchError(f"agent process {p.name} died ({p.exitcode})")


def percentiles(values: list[float]) -> dict[str, float]:
    s = sorted(values)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))], 3)

    return {"min": q(0), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": q(1)}


def jitter_spread(delays: list[float]) -> dict[str, Any]:
    """How the agents' next timer renewals are spread (seconds from now)."""
    buckets = Counter(int(d) for d in delays)
    return {
        "next_renewal_s": percentiles(delays),
        "spread_s": round(max(delays) - min(delays), 3),
        "peak_renewals_per_s": max(buckets.values()),
        "mean_renewals_per_s_over_spread": round(
            len(delays) / max(1.0, max(delays) - min(delays)), 1
        ),
        "without_jitter_peak_per_s": len(delays),
    }


def storm(a: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from attestation.providers.mock import MockProvider
    from coordinator.core.authz import public_spki, set_manifest_message, sign_owner
    from coordinator.core.history import transition_hash
    from tools.bench.bench_main import Children, start_server
    from tools.bench.harness import create_deployment, proc_cpu_seconds

    deadline = time.monotonic() + a.timeout
    dep = create_deployment(workdir / "mock")
    owner = ec.generate_private_key(ec.SECP256R1())
    doc = json.loads(dep.manifest)
    doc["WorkloadOwnerKeyDigests"] = [hashlib.sha256(public_spki(owner)).hexdigest()]
    manifest = json.dumps(doc, indent=2).encode()
    doc["Policies"][hashlib.sha256(UPDATE_POLICY).hexdigest()] = {"SANs": ["new"]}
    updated = json.dumps(doc, indent=2).encode()
    policy = CoordinatorPolicy(dep.anchors(), dep.reference_values(), dep.coordinator_policy_hash)
    children = Children()
    ctx = mp.get_context("spawn")
    procs: list[Any] = []
    stop = ctx.Event()
    messages = ctx.Queue()
    report: dict[str, Any] = {}
    try:
        server, info = start_server(
            children,
            dep,
            workdir,
            a.issuer_workers,
            extra_args=[
                "--leaf-lifetime",
                a.leaf_lifetime,
                "--max-watchers",
                str(a.agents + 64),
                "--max-concurrent-rpcs",
                "4096",
                "--max-streams-per-connection",
                "64",
            ],
        )
        pid = server.pid
        assert pid is not None

        async def first() -> pb.SetManifestResponse:
            async with await AttestedChannel.connect(info["user"], policy) as chan:
                resp: pb.SetManifestResponse = await chan.user.SetManifest(
                    pb.SetManifestRequest(manifest=manifest, policies=dep.policies), timeout=60
                )
                return resp

        set1 = asyncio.run(first())
        provider = MockProvider(dep.mock_dir, dep.workload_policy)
        report["join"] = join_comparison(
            pid,
            info["mesh"],
            policy,
            provider,
            joins=a.joins,
            rounds=a.rounds,
            concurrency=a.join_concurrency,
        )

        per = [
            a.agents // a.processes + (1 if i < a.agents % a.processes else 0)
            for i in range(a.processes)
        ]
        first_index = 0
        cpu_before_join = proc_cpu_seconds(pid)
        started = time.monotonic()
        for n in per:
            cfg = WorkerConfig(
                first_index,
                n,
                info["mesh"],
                str(dep.mock_dir),
                dep.reference_json,
                dep.coordinator_policy_hash,
                dep.workload_policy,
                join_timeout=a.timeout,
            )
            p = ctx.Process(target=agent_worker, args=(cfg, messages, stop), daemon=True)
            p.start()
            procs.append(p)
            first_index += n
        holding: dict[int, bytes] = {}
        renewed_at: dict[int, float] = {}
        target = {"hash": bytes(set1.transition_hash), "since": 0.0}

        def on_message(msg: tuple[Any, ...]) -> None:
            if msg[0] == "renewed":
                holding[msg[1]] = msg[3]
                if msg[3] == target["hash"] and msg[1] not in renewed_at:
                    renewed_at[msg[1]] = msg[2]

        _wait_for(
            messages,
            procs,
            lambda: len(renewed_at) >= a.agents,
            deadline,
            on_message,
            "every agent's first leaf",
        )
        joined_s = time.monotonic() - started
        join_cpu = proc_cpu_seconds(pid) - cpu_before_join
        time.sleep(1.0)  # let the last streams settle before measuring
        renewed_at.clear()
        new_hash = transition_hash(hashlib.sha256(updated).digest(), bytes(set1.transition_hash))
        target["hash"] = new_hash

        async def update() -> None:
            request = pb.SetManifestRequest(
                manifest=updated,
                policies=[*dep.policies, UPDATE_POLICY],
                previous_transition_hash=set1.transition_hash,
                owner_public_key=public_spki(owner),
                signature=sign_owner(
                    owner, set_manifest_message(bytes(set1.deployment_id), new_hash)
                ),
            )
            async with await AttestedChannel.connect(info["user"], policy) as chan:
                await chan.user.SetManifest(request, timeout=60)

        cpu0 = proc_cpu_seconds(pid)
        t0 = time.monotonic()
        asyncio.run(update())
        _wait_for(
            messages,
            procs,
            lambda: len(renewed_at) >= a.agents,
            deadline,
            on_message,
            "every agent under the new mesh CA",
        )
        cpu1 = proc_cpu_seconds(pid)
        latencies = [t - t0 for t in renewed_at.values()]
        converged = max(latencies)
        per_renewal = (cpu1 - cpu0) / a.agents
        baseline = report["join"]["three_rpc_server_cpu_ms_per_join"] / 1000
        stop.set()
        schedules: list[float] = []
        finished = 0

        def on_final(msg: tuple[Any, ...]) -> None:
            nonlocal finished
            if msg[0] == "schedule" and msg[2] is not None:
                schedules.append(float(msg[2]))
            elif msg[0] == "done":
                finished += 1

        _wait_for(
            messages, procs, lambda: finished >= len(procs), deadline, on_final, "agent reports"
        )
        report["storm"] = {
            "agents": a.agents,
            "processes": a.processes,
            "leaf_lifetime": a.leaf_lifetime,
            "initial_join_s": round(joined_s, 3),
            "initial_join_server_cpu_ms_per_agent": round(join_cpu / a.agents * 1000, 3),
            "update_to_all_renewed_s": round(converged, 3),
            "renewal_latency_s": percentiles(latencies),
            "target_all_renewed_within_s": TARGET_CONVERGENCE_S,
            "met_target": converged <= TARGET_CONVERGENCE_S,
            "server_cpu_s_during_storm": round(cpu1 - cpu0, 3),
            "server_cpu_ms_per_renewal": round(per_renewal * 1000, 3),
            "renewal_over_three_rpc_join": round(per_renewal / baseline, 3) if baseline else None,
        }
        report["jitter"] = jitter_spread(schedules) if schedules else {}
        return report
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
        children.stop_all()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, required=True, help="write every figure here")
    p.add_argument("--agents", type=int, default=1000, help="watching agents (default 1000)")
    p.add_argument("--processes", type=int, default=4, help="agent processes (default 4)")
    p.add_argument(
        "--leaf-lifetime", default="1h", help="the coordinator's --leaf-lifetime (default 1h)"
    )
    p.add_argument("--joins", type=int, default=100, help="complete joins per mode and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the join comparison")
    p.add_argument("--join-concurrency", type=int, default=8)
    p.add_argument("--issuer-workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900.0, help="hard limit for the whole run")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")


def renewal(a: argparse.Namespace) -> int:
    if a.agents < 1 or a.processes < 1 or a.joins < 1 or a.rounds < 1:
        print("hack/bench renewal: counts must be positive", file=sys.stderr)
        return 2
    a.processes = min(a.processes, a.agents)
    workdir = Path(tempfile.mkdtemp(prefix="concord-renewal-"))
    report: dict[str, Any] = {
        "meta": {
            "started": datetime.now(UTC).isoformat(),
            "argv": sys.argv,
            "cpu_count": os.cpu_count(),
        }
    }
    timer = threading.Timer(a.timeout + 60, lambda: os._exit(3))  # last resort
    timer.daemon = True
    timer.start()
    try:
        report.update(storm(a, workdir))
    except RenewalBenchError as exc:
        print(f"hack/bench renewal: {exc}", file=sys.stderr)
        return 1
    finally:
        timer.cancel()
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    a.json.write_text(json.dumps(report, indent=2) + "\n")
    storm_ = report["storm"]
    join = report["join"]
    print(
        f"{storm_['agents']} agents: all under the new mesh CA {storm_['update_to_all_renewed_s']}"
        f" s after the update (target {TARGET_CONVERGENCE_S:g} s); server CPU per renewal "
        f"{storm_['server_cpu_ms_per_renewal']} ms vs {join['three_rpc_server_cpu_ms_per_join']} "
        f"ms per 3-RPC join; 2-RPC/3-RPC join CPU {join['two_over_three']} "
        f"(target <= {TARGET_TWO_RPC_RATIO})"
    )
    with contextlib.suppress(KeyError):
        print(f"jitter: next renewals spread over {report['jitter']['spread_s']} s")
    return 0
