"""End-to-end issuance benchmark (``./hack/bench issuance``).

Starts a coordinator process (``concord serve`` with the software TEE, file store in a
temporary directory), sets a manifest over the attested user API, then for each issuer pool size
and each concurrency drives full join flows (Challenge + evidence + NewMeshCert over gRPC/TLS)
from separate load processes (tools/bench/loadgen.py) and reports throughput, flow latency and
the coordinator's CPU per issued certificate, read from /proc/<pid>/stat around a fixed
measurement window. In the same run it measures the primitive baseline in process
(tools/bench/harness.py): ``efficiency = baseline CPU / server CPU per certificate``.

Everything is bounded in time (``--timeout``) and every process this harness starts is stopped
at the end, also on errors and signals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import queue
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attestation.verify import Verifier
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client.channel import AttestedChannel, CoordinatorPolicy, fetch_certificate
from coordinator.core.issuance import BatchRunner, IssuedCertificate, Issuer, IssueRequest
from coordinator.supervisor import Supervised, SupervisorError
from tools.bench import abuse as abuse_mod
from tools.bench import loadgen
from tools.bench import renewal as renewal_mod
from tools.bench.harness import (
    BenchDeployment,
    PreparedRequest,
    RequestFactory,
    build_state,
    compare_cpu,
    create_deployment,
    percentile,
    primitive_baseline_one,
    proc_cpu_seconds,
    proc_status_kb,
    proc_thread_cpu,
    system_cpu_seconds,
    thread_groups,
)

E2E_EFFICIENCY_TARGET = 0.6
POOL_RATIO_TARGET = 1.6
ISSUER_EFFICIENCY_TARGET = 0.85


class BenchError(Exception):
    """The benchmark could not run (server did not start, a load process failed, ...)."""


class Deadline(BaseException):
    """The overall --timeout elapsed."""


# --- process bookkeeping -------------------------------------------------------------------


class Children:
    """Every process this harness started, stopped on exit whatever happens."""

    def __init__(self) -> None:
        self.servers: list[Supervised] = []
        self.loaders: list[Any] = []

    def stop_server(self, server: Supervised, grace: float = 10.0) -> None:
        """SIGTERM, SIGKILL after ``grace``, then whatever is left of its process group."""
        server.stop(grace)
        if server in self.servers:
            self.servers.remove(server)

    def stop_loaders(self, grace: float = 5.0) -> None:
        deadline = time.monotonic() + grace
        for p in self.loaders:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.loaders:
            if p.is_alive():
                p.terminate()
        for p in self.loaders:
            p.join(2)
            if p.is_alive():
                p.kill()
                p.join(2)
        self.loaders.clear()

    def stop_all(self) -> None:
        self.stop_loaders(grace=1.0)
        for proc in list(self.servers):
            self.stop_server(proc, grace=5.0)


# --- the coordinator process ------------------------------------------------------------------


SERVER_MODULE = "coordinator.cli"
SERVER_START_TIMEOUT = 60.0
FLOOR_MODULE = "tools.bench.rpc_floor"


def start_server(
    children: Children,
    dep: BenchDeployment,
    workdir: Path,
    workers: int,
    module: str = SERVER_MODULE,
    cpus: Sequence[int] | None = None,
    extra_args: Sequence[str] = (),
) -> tuple[Supervised, dict[str, Any]]:
    """Start a coordinator process (``cpus``: pin it, and every thread it makes, to those). It
    gets SIGTERM if the harness dies, even by SIGKILL (Linux)."""
    store = workdir / f"store-{workers}w-{time.monotonic_ns()}"
    store.mkdir()
    policy_file = workdir / "coordinator-policy"
    policy_file.write_bytes(dep.coordinator_policy)
    cmd = [
        sys.executable,
        "-m",
        module,
        "serve",
        "--store",
        f"file:{store}",
        "--tee",
        f"mock:{dep.mock_dir}",
        "--mock-policy",
        str(policy_file),
        "--mock-tee-type",
        "snp",
        "--trust-anchors",
        f"mock:{dep.mock_dir}",
        "--user-addr",
        "127.0.0.1:0",
        "--mesh-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--deployment",
        "bench",
        "--issuer-workers",
        str(workers),
        *extra_args,
    ]
    server = Supervised(
        cmd,
        workdir / f"server-{workers}w.log",
        cwd=_repo_root(),
        die_with_parent=True,
        cpus=cpus,
        name=f"coordinator ({workers} workers)",
    )
    children.servers.append(server)
    try:
        info = server.start_ready(
            SERVER_START_TIMEOUT, accept=lambda i: i.get("event") == "serving"
        )
    except SupervisorError as exc:
        children.stop_server(server)
        raise BenchError(f"coordinator did not report its addresses: {exc}") from None
    return server, info


def coordinator_policy(dep: BenchDeployment) -> CoordinatorPolicy:
    return CoordinatorPolicy(dep.anchors(), dep.reference_values(), dep.coordinator_policy_hash)


async def set_manifest(dep: BenchDeployment, user_addr: str) -> bytes:
    chan = await AttestedChannel.connect(user_addr, coordinator_policy(dep))
    try:
        resp = await chan.user.SetManifest(
            pb.SetManifestRequest(manifest=dep.manifest, policies=dep.policies), timeout=30
        )
    finally:
        await chan.close()
    return bytes(resp.transition_hash)


# --- one measured load point ------------------------------------------------------------------


def _next_message(q: Any, procs: Sequence[Any], timeout: float) -> tuple[Any, ...]:
    """The next message of a load process; BenchError if none comes or one of them died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg: tuple[Any, ...] = q.get(timeout=0.5)
            return msg
        except queue.Empty:
            pass
        for p in procs:
            if p.exitcode not in (None, 0):
                raise BenchError(f"load process {p.name} died with exit code {p.exitcode}")
        if time.monotonic() > deadline:
            raise BenchError(f"no word from the load processes for {timeout:.0f} s")


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_load(
    children: Children,
    dep: BenchDeployment,
    server: Supervised,
    mesh_addr: str,
    *,
    concurrency: int,
    clients: int,
    warmup: float,
    duration: float | None,
    until_certs: int | None = None,
    rss_every: float = 1.0,
    collect_latencies: bool = True,
    time_limit: float = 600.0,
    check: bool = True,
    cpus: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run ``concurrency`` flow loops over ``clients`` processes; measure a window.

    With ``duration`` the window is [warm-up end, + duration]; with ``until_certs`` it runs
    from the warm-up end until that many certificates were issued (RSS mode, sampled).
    """
    ctx = mp.get_context("spawn")
    nproc = max(1, min(clients, concurrency))
    counts = ctx.Array("q", nproc, lock=False)
    go, stop = ctx.Event(), ctx.Event()
    messages = ctx.Queue()
    procs: list[Any] = []
    cert = asyncio.run(fetch_certificate(mesh_addr))
    for i, tasks in enumerate(_split(concurrency, nproc)):
        cfg = loadgen.LoadConfig(
            index=i,
            tasks=tasks,
            mesh_addr=mesh_addr,
            server_cert_der=cert,
            mock_dir=str(dep.mock_dir),
            reference_json=dep.reference_json,
            coordinator_policy_hash=dep.coordinator_policy_hash,
            workload_policy=dep.workload_policy,
            collect_latencies=collect_latencies,
            check=check,
            cpus=tuple(cpus or ()),
        )
        p = ctx.Process(target=loadgen.run, args=(cfg, counts, go, stop, messages), daemon=True)
        p.start()
        children.loaders.append(p)
        procs.append(p)
    try:
        ready = 0
        while ready < nproc:
            msg = _next_message(messages, procs, 90)
            if msg[0] == "failed":
                raise BenchError(f"load process {msg[1]} failed: {msg[2]}")
            ready += msg[0] == "ready"
        go.set()
        time.sleep(warmup)
        pid = server.pid
        assert pid is not None
        threads0 = proc_thread_cpu(pid)
        t0, cpu0, n0 = time.monotonic(), proc_cpu_seconds(pid), sum(counts)
        sys0 = system_cpu_seconds()
        samples: list[dict[str, Any]] = []
        if until_certs is not None:
            next_sample = t0
            while sum(counts) - n0 < until_certs:
                if not server.running:
                    raise BenchError("coordinator exited during the run")
                if time.monotonic() - t0 > time_limit:
                    break
                if time.monotonic() >= next_sample:
                    samples.append(
                        {
                            "t_s": round(time.monotonic() - t0, 3),
                            "certs": sum(counts) - n0,
                            "rss_kb": proc_status_kb(pid, "VmRSS"),
                            "hwm_kb": proc_status_kb(pid, "VmHWM"),
                        }
                    )
                    next_sample += rss_every
                time.sleep(0.05)
        else:
            assert duration is not None
            time.sleep(duration)
        t1, cpu1, n1 = time.monotonic(), proc_cpu_seconds(pid), sum(counts)
        server_cpus = sorted(os.sched_getaffinity(pid))
        threads = thread_groups(pid, threads0, proc_thread_cpu(pid))
        sys1 = system_cpu_seconds()
        rss_kb, hwm_kb = proc_status_kb(pid, "VmRSS"), proc_status_kb(pid, "VmHWM")
        if samples:
            samples.append(
                {"t_s": round(t1 - t0, 3), "certs": n1 - n0, "rss_kb": rss_kb, "hwm_kb": hwm_kb}
            )
        stop.set()
        results: list[loadgen.LoadResult] = []
        while len(results) < nproc:
            msg = _next_message(messages, procs, 60)
            if msg[0] == "failed":
                raise BenchError(f"load process {msg[1]} failed: {msg[2]}")
            if msg[0] == "done":
                results.append(msg[1])
    finally:
        stop.set()
        children.stop_loaders()
    for r in results:
        if r.failure:
            raise BenchError(f"load process {r.index}: {r.failure}")
        if check and r.flows and not r.checked:
            raise BenchError(f"load process {r.index}: no issued certificate was checked")
    certs = n1 - n0
    window = t1 - t0
    flows = [rec for r in results for rec in r.records if t0 <= rec[0] <= t1]
    errors: dict[str, int] = {}
    for r in results:
        for code, n in r.errors.items():
            errors[code] = errors.get(code, 0) + n
    server_cpu = cpu1 - cpu0
    client_cpu = sum(r.cpu_s for r in results)
    client_flows = sum(r.flows for r in results)
    busy = sys1[0] - sys0[0]
    out: dict[str, Any] = {
        "concurrency": concurrency,
        "load_processes": nproc,
        "window_s": window,
        "certs": certs,
        "errors": errors,
        "throughput_certs_per_s": certs / window if window > 0 else 0.0,
        "latency_p50_ms": percentile([f[1] for f in flows], 50) * 1e3,
        "latency_p99_ms": percentile([f[1] for f in flows], 99) * 1e3,
        "newmeshcert_p50_ms": percentile([f[2] for f in flows], 50) * 1e3,
        "newmeshcert_p99_ms": percentile([f[2] for f in flows], 99) * 1e3,
        "server_cpu_s": server_cpu,
        "server_cpu_per_cert_s": server_cpu / certs if certs else float("nan"),
        "server_cores_used": server_cpu / window if window > 0 else 0.0,
        "server_cpu_per_cert_by_thread_s": {
            k: v / certs if certs else float("nan") for k, v in sorted(threads.items())
        },
        "client_cpu_per_flow_s": client_cpu / client_flows if client_flows else float("nan"),
        "machine_busy_cores": busy / window if window > 0 else 0.0,
        "server_rss_kb": rss_kb,
        "server_cpus": server_cpus,
        "server_hwm_kb": hwm_kb,
    }
    if samples:
        out["rss_samples"] = samples
    return out


def sweep_point(
    children: Children,
    dep: BenchDeployment,
    proc: Supervised,
    info: dict[str, Any],
    concurrency: int,
    a: argparse.Namespace,
    *,
    check: bool = True,
) -> dict[str, Any]:
    """One timed point of a sweep: the command line's clients, warm-up and duration."""
    return run_load(
        children,
        dep,
        proc,
        info["mesh"],
        concurrency=concurrency,
        clients=a.clients,
        warmup=a.warmup,
        duration=a.duration,
        check=check,
        cpus=a.load_cpus,
    )


def sweep(
    children: Children, dep: BenchDeployment, workdir: Path, a: argparse.Namespace
) -> list[dict[str, Any]]:
    """Every (repeat, concurrency, workers) point. One server per pool size, all started first;
    the pool sizes alternate within each concurrency so that drifting outside load on a shared
    machine hits them alike."""
    servers: dict[int, tuple[Supervised, dict[str, Any]]] = {}
    runs: list[dict[str, Any]] = []
    try:
        for workers in a.workers:
            servers[workers] = start_server(children, dep, workdir, workers, cpus=a.server_cpus)
            asyncio.run(set_manifest(dep, servers[workers][1]["user"]))
        step = 0
        for repeat in range(a.repeat):
            for c in a.concurrency:
                order = a.workers if step % 2 == 0 else a.workers[::-1]
                step += 1
                for workers in order:
                    proc, info = servers[workers]
                    print(f"repeat={repeat} workers={workers} concurrency={c} ...", flush=True)
                    run = sweep_point(children, dep, proc, info, c, a)
                    run["workers"] = workers
                    run["repeat"] = repeat
                    runs.append(run)
    finally:
        for proc, _ in servers.values():
            children.stop_server(proc)
    return runs


def rpc_floor(
    children: Children, dep: BenchDeployment, workdir: Path, a: argparse.Namespace
) -> list[dict[str, Any]]:
    """The same load against the floor server (tools/bench/rpc_floor.py): server CPU per join
    flow for gRPC, TLS and the servicers alone, at each concurrency of the sweep."""
    proc, info = start_server(children, dep, workdir, 0, module=FLOOR_MODULE, cpus=a.server_cpus)
    runs: list[dict[str, Any]] = []
    try:
        asyncio.run(set_manifest(dep, info["user"]))
        for c in a.concurrency:
            print(f"gRPC floor: concurrency={c} ...", flush=True)
            runs.append(sweep_point(children, dep, proc, info, c, a, check=False))
    finally:
        children.stop_server(proc)
    return runs


def point_medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (workers, concurrency): the median over repeats of each figure."""
    keys = sorted({(r["workers"], r["concurrency"]) for r in runs})
    out: list[dict[str, Any]] = []
    for workers, c in keys:
        rows = [r for r in runs if r["workers"] == workers and r["concurrency"] == c]
        merged: dict[str, Any] = {"workers": workers, "concurrency": c, "repeats": len(rows)}
        for k, v in rows[0].items():
            if k in merged or k == "repeat":
                continue
            if isinstance(v, int | float) and not isinstance(v, bool):
                merged[k] = statistics.median(r[k] for r in rows)
            elif k == "errors":
                merged[k] = {
                    code: sum(r["errors"].get(code, 0) for r in rows)
                    for code in {c for r in rows for c in r["errors"]}
                }
            elif isinstance(v, dict):
                merged[k] = {sub: statistics.median(r[k].get(sub, 0.0) for r in rows) for sub in v}
        out.append(merged)
    return out


# --- in-process parts -------------------------------------------------------------------------


def inprocess_figures(dep: BenchDeployment, rounds: int, per_round: int) -> dict[str, Any]:
    """Primitive baseline and Issuer efficiency (interleaved), raw crypto, BatchRunner 1 vs 2."""
    state = asyncio.run(build_state(dep))
    verifier = Verifier(dep.anchors())
    issuer = Issuer(state, verifier)
    factory = RequestFactory(dep, state)
    for p in factory.batch(5):
        primitive_baseline_one(state, verifier, p)
        issuer.issue(p.request)
    eff = compare_cpu(
        lambda p: primitive_baseline_one(state, verifier, p),
        lambda p: issuer.issue(p.request),
        factory,
        rounds=rounds,
        per_round=per_round,
    )
    return {
        "primitive_baseline_cpu_s": eff.baseline_s,
        "issuer_cpu_s": eff.path_s,
        "issuer_efficiency": eff.efficiency,
        "issuer_efficiency_target": ISSUER_EFFICIENCY_TARGET,
        "measurement": eff.as_dict(),
        "raw_crypto": raw_crypto_figures(),
        "batch_runner": batch_runner_figures(issuer, factory, 400),
    }


def raw_crypto_figures(n: int = 400) -> dict[str, float]:
    """Bare OpenSSL cost of the two signatures involved (P-384 verify + P-384 sign)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    data = os.urandom(672)
    alg = ec.ECDSA(hashes.SHA384())
    sig = key.sign(data, alg)
    pub = key.public_key()
    t = time.process_time()
    for _ in range(n):
        pub.verify(sig, data, alg)
    verify = (time.process_time() - t) / n
    t = time.process_time()
    for _ in range(n):
        key.sign(data, alg)
    sign = (time.process_time() - t) / n
    return {
        "ecdsa_p384_verify_cpu_s": verify,
        "ecdsa_p384_sign_cpu_s": sign,
        "sum_cpu_s": verify + sign,
    }


def batch_runner_figures(issuer: Issuer, factory: RequestFactory, n: int) -> dict[str, Any]:
    """Wall throughput of BatchRunner(Issuer.issue) with 1 and 2 workers, requests made ahead
    (in process, no gRPC): how the issuing core itself scales with threads."""
    out: dict[str, Any] = {"requests": n}
    for workers in (1, 2, 1, 2):
        prepared: list[PreparedRequest] = factory.batch(n)
        runner: BatchRunner[IssueRequest, IssuedCertificate] = BatchRunner(
            issuer.issue, workers=workers
        )

        async def drive(
            runner: BatchRunner[IssueRequest, IssuedCertificate] = runner,
            prepared: list[PreparedRequest] = prepared,
        ) -> list[IssuedCertificate]:
            return await asyncio.gather(*(runner.submit(p.request) for p in prepared))

        try:
            started, cpu0 = time.perf_counter(), time.process_time()
            issued = asyncio.run(drive())
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
        finally:
            runner.close()
        if len(issued) != n:
            raise BenchError("BatchRunner lost requests")
        key = f"workers_{workers}"
        best = out.get(key, {}).get("throughput_per_s", 0.0)
        if n / wall > best:
            out[key] = {"throughput_per_s": n / wall, "cores_used": cpu / wall}
    out["ratio_2_to_1"] = (
        out["workers_2"]["throughput_per_s"] / out["workers_1"]["throughput_per_s"]
    )
    return out


# --- report -----------------------------------------------------------------------------------


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    baseline = report["inprocess"]["primitive_baseline_cpu_s"]
    for run in report["runs"]:
        run["efficiency"] = baseline / run["server_cpu_per_cert_s"] if run["certs"] else 0.0
    report["points"] = point_medians(report["runs"])
    summary: dict[str, Any] = {"baseline_cpu_s": baseline}
    runs = report["points"]
    if runs:
        best = max(runs, key=lambda r: r["throughput_certs_per_s"])
        best_eff = max(runs, key=lambda r: r["efficiency"])
        summary["best_throughput"] = {
            k: best[k]
            for k in (
                "workers",
                "concurrency",
                "throughput_certs_per_s",
                "efficiency",
                "latency_p50_ms",
                "latency_p99_ms",
            )
        }
        summary["best_efficiency"] = {
            k: best_eff[k]
            for k in ("workers", "concurrency", "efficiency", "throughput_certs_per_s")
        }
        summary["e2e_efficiency_target"] = E2E_EFFICIENCY_TARGET
        by = {(r["workers"], r["concurrency"]): r for r in runs}
        ratios = {
            str(c): by[(2, c)]["throughput_certs_per_s"] / by[(1, c)]["throughput_certs_per_s"]
            for (w, c) in by
            if w == 1 and (2, c) in by and by[(1, c)]["throughput_certs_per_s"] > 0
        }
        if ratios:
            best1 = max(r["throughput_certs_per_s"] for r in runs if r["workers"] == 1)
            best2 = max(r["throughput_certs_per_s"] for r in runs if r["workers"] == 2)
            summary["pool_ratio_2_to_1"] = {
                "per_concurrency": ratios,
                "best_vs_best": best2 / best1 if best1 else float("nan"),
                "target": POOL_RATIO_TARGET,
            }
        summary.update(ceilings(report, best_eff, by))
    summary["inprocess_issuer_efficiency"] = report["inprocess"]["issuer_efficiency"]
    summary["inprocess_batch_runner_ratio_2_to_1"] = report["inprocess"]["batch_runner"][
        "ratio_2_to_1"
    ]
    if "rss" in report:
        summary["rss"] = {k: v for k, v in report["rss"].items() if k != "rss_samples"}
    return summary


def ceilings(
    report: dict[str, Any],
    best_eff: dict[str, Any],
    by: dict[tuple[int, int], dict[str, Any]],
) -> dict[str, Any]:
    """What this machine allows at best, from figures of the same run.

    - Efficiency: no server can spend less per certificate than the gRPC floor (same load, no
      issuing) plus the in-process issuer, so ``baseline / (floor + issuer)`` bounds it.
    - Pool 2 vs 1: the load shares the cores, so 2 workers can at most reach
      ``cores / (server + client CPU per flow)``; divided by the 1-worker throughput that
      bounds the ratio whatever the server does with its threads.
    """
    out: dict[str, Any] = {}
    floor = {r["concurrency"]: r for r in report.get("rpc_floor", [])}
    issuer = report["inprocess"]["issuer_cpu_s"]
    baseline = report["inprocess"]["primitive_baseline_cpu_s"]
    at = floor.get(best_eff["concurrency"])
    if at is not None and at["certs"]:
        out["rpc_floor_cpu_per_flow_s"] = at["server_cpu_per_cert_s"]
        out["efficiency_ceiling"] = {
            "concurrency": best_eff["concurrency"],
            "value": baseline / (at["server_cpu_per_cert_s"] + issuer),
            "server_cpu_per_cert_above_floor_s": best_eff["server_cpu_per_cert_s"]
            - at["server_cpu_per_cert_s"],
        }
    shared = report["meta"].get("shared_cpus")
    if shared is None:  # server and load pinned apart: the load takes nothing from the server
        return out
    cores = shared
    ratios = {}
    for (w, c), two in by.items():
        one = by.get((1, c))
        if w != 2 or one is None or not one["throughput_certs_per_s"] or not two["certs"]:
            continue
        per_flow = two["server_cpu_per_cert_s"] + two["client_cpu_per_flow_s"]
        ratios[str(c)] = cores / per_flow / one["throughput_certs_per_s"]
    if ratios:
        # Judged where 2 workers peak (what best_vs_best compares); at low concurrency the
        # bound is loose because the flows, not the cores, are the limit.
        at_best = max(
            (two for (w, c), two in by.items() if w == 2 and str(c) in ratios),
            key=lambda r: r["throughput_certs_per_s"],
        )
        out["pool_ratio_ceiling"] = {
            "per_concurrency": ratios,
            "at_best_2_worker_point": ratios[str(at_best["concurrency"])],
        }
    return out


def rss_summary(run: dict[str, Any], wanted: int) -> dict[str, Any]:
    samples = run.get("rss_samples", [])
    out = dict(run)
    out["certs_wanted"] = wanted
    if samples:
        # After warm-up: the first sample with at least 10 % of the certificates.
        ref = next((s for s in samples if s["certs"] >= run["certs"] * 0.1), samples[0])
        last = samples[-1]
        out["rss_at_10pct_kb"] = ref["rss_kb"]
        out["rss_end_kb"] = last["rss_kb"]
        out["rss_growth_after_10pct_kb"] = last["rss_kb"] - ref["rss_kb"]
        out["peak_rss_kb"] = max(s["hwm_kb"] for s in samples)
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    runs = report["points"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for workers in sorted({r["workers"] for r in runs}):
        rows = sorted((r for r in runs if r["workers"] == workers), key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in rows]
        label = (
            "inline issuing" if workers == 0 else f"{workers} issuer thread{'s' * (workers > 1)}"
        )
        ax1.plot(xs, [r["throughput_certs_per_s"] for r in rows], marker="o", label=label)
        ax2.plot(xs, [r["efficiency"] for r in rows], marker="o", label=label)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent join flows")
        ax.grid(True, alpha=0.3)
    ax1.set_ylabel("certificates / s")
    ax1.set_title("NewMeshCert throughput (full join flows)")
    ax2.axhline(E2E_EFFICIENCY_TARGET, color="grey", linestyle="--", label="target 0.6")
    ceiling = report.get("summary", {}).get("efficiency_ceiling")
    if ceiling:
        ax2.axhline(
            ceiling["value"],
            color="black",
            linestyle=":",
            label=f"ceiling: gRPC floor + issuer ({ceiling['value']:.2f})",
        )
    ax2.set_ylabel("baseline CPU / server CPU per cert")
    ax2.set_title("Server efficiency")
    ax1.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.set_xticks(sorted({r["concurrency"] for r in runs}))
        ax.get_xaxis().set_major_formatter(ScalarFormatter())
    ax1.legend()
    ax2.legend()
    fig.suptitle(
        f"concord issuance, {os.cpu_count()} cores shared by server and load "
        f"(baseline {report['inprocess']['primitive_baseline_cpu_s'] * 1e3:.3f} ms CPU)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(report: dict[str, Any]) -> None:
    ip = report["inprocess"]
    print(
        f"primitive baseline {ip['primitive_baseline_cpu_s'] * 1e3:.3f} ms CPU; in-process "
        f"issuer {ip['issuer_cpu_s'] * 1e3:.3f} ms -> efficiency {ip['issuer_efficiency']:.3f}; "
        f"BatchRunner 2/1 workers {ip['batch_runner']['ratio_2_to_1']:.2f}"
    )
    if report.get("points"):
        print(f"per point: median over {report['points'][0]['repeats']} repeat(s)")
        print(
            f"{'workers':>7} {'conc':>5} {'certs/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'srv ms/cert':>11} {'(loop':>6} {'grpc':>5} {'other)':>6} {'eff':>5} "
            f"{'srv cores':>9} {'cli ms/flow':>11} {'busy':>5} err"
        )
    for r in report.get("points", []):
        by = r.get("server_cpu_per_cert_by_thread_s", {})
        print(
            f"{r['workers']:>7} {r['concurrency']:>5} {r['throughput_certs_per_s']:>8.1f} "
            f"{r['latency_p50_ms']:>7.2f} {r['latency_p99_ms']:>7.2f} "
            f"{r['server_cpu_per_cert_s'] * 1e3:>11.3f} "
            f"{by.get('main_event_loop', 0) * 1e3:>6.3f} {by.get('grpc_core_threads', 0) * 1e3:>5.3f} "
            f"{by.get('other_python_threads', 0) * 1e3:>6.3f} {r['efficiency']:>5.2f} "
            f"{r['server_cores_used']:>9.2f} {r['client_cpu_per_flow_s'] * 1e3:>11.3f} "
            f"{r['machine_busy_cores']:>5.2f} {sum(r['errors'].values())}"
        )
    s = report["summary"]
    if "pool_ratio_2_to_1" in s:
        pr = s["pool_ratio_2_to_1"]
        print(
            f"pool 2/1 workers throughput: best-vs-best {pr['best_vs_best']:.2f}, per "
            f"concurrency {json.dumps({k: round(v, 2) for k, v in pr['per_concurrency'].items()})}"
        )
    if "efficiency_ceiling" in s:
        ec = s["efficiency_ceiling"]
        print(
            f"gRPC floor (no issuing) at concurrency {ec['concurrency']}: "
            f"{s['rpc_floor_cpu_per_flow_s'] * 1e3:.3f} ms server CPU per flow -> efficiency "
            f"ceiling {ec['value']:.2f}; the best point spends "
            f"{ec['server_cpu_per_cert_above_floor_s'] * 1e3:.3f} ms above the floor"
        )
    if "pool_ratio_ceiling" in s:
        pc = s["pool_ratio_ceiling"]
        print(
            "pool 2/1 ceiling with the load on the same cores: "
            f"{pc['at_best_2_worker_point']:.2f} where 2 workers peak; per concurrency "
            f"{json.dumps({k: round(v, 2) for k, v in pc['per_concurrency'].items()})}"
        )
    if "rss" in s:
        r = s["rss"]
        print(
            f"RSS: {r['certs']} certs in {r['window_s']:.0f} s; RSS at 10% {r.get('rss_at_10pct_kb')}"
            f" kB, at end {r.get('rss_end_kb')} kB, peak {r.get('peak_rss_kb')} kB"
        )


# --- command line -----------------------------------------------------------------------------


def _int_list(text: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or any(v < minimum for v in values):
        raise argparse.ArgumentTypeError(f"values must be {minimum} or more")
    return values


def _pool_list(text: str) -> list[int]:
    return _int_list(text, minimum=0)


def _cpu_list(text: str) -> list[int]:
    """``0,2-3`` style CPU numbers, each one this process may run on."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPUs like 0,2-3, got {text!r}") from None
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        raise argparse.ArgumentTypeError(f"CPUs {sorted(cpus)} not within {sorted(allowed)}")
    return sorted(cpus)


def _shared_cpus(server: list[int] | None, load: list[int] | None) -> int | None:
    """How many cores the server and the load compete for; None when pinned apart."""
    every = os.sched_getaffinity(0)
    server_set, load_set = set(server or every), set(load or every)
    if not server_set & load_set:
        return None
    return len(server_set | load_set)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="hack/bench", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("issuance", help="end-to-end NewMeshCert benchmark")
    p.add_argument("--json", type=Path, required=True, help="write every figure here")
    p.add_argument("--png", type=Path, help="plot throughput and efficiency vs concurrency")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per point")
    p.add_argument("--concurrency", type=_int_list, default=[1, 4, 16, 64])
    p.add_argument(
        "--workers",
        type=_pool_list,
        default=[0, 1, 2],
        help="issuer pool sizes (0: inline on the event loop)",
    )
    p.add_argument("--clients", type=int, default=2, help="load processes (at most)")
    p.add_argument("--repeat", type=int, default=1, help="repeat the sweep; medians reported")
    p.add_argument(
        "--rss-certs",
        type=int,
        default=0,
        help="after the sweep, issue this many certificates and sample server RSS",
    )
    p.add_argument(
        "--rss-concurrency",
        type=int,
        default=0,
        help="concurrency of the RSS run (default: best of the sweep)",
    )
    p.add_argument(
        "--rss-time-limit",
        type=float,
        default=900.0,
        help="stop the RSS run after this many seconds even if short of --rss-certs",
    )
    p.add_argument("--rss-only", action="store_true", help="skip the sweep, only the RSS run")
    p.add_argument("--no-floor", action="store_true", help="skip the gRPC floor run (no issuing)")
    p.add_argument(
        "--server-cpus",
        type=_cpu_list,
        help="pin the coordinator to these CPUs (e.g. 0-1); with --load-cpus apart, the load "
        "no longer competes with it",
    )
    p.add_argument("--load-cpus", type=_cpu_list, help="pin the load processes to these CPUs")
    p.add_argument("--baseline-rounds", type=int, default=15)
    p.add_argument("--timeout", type=float, default=1800.0, help="hard limit for the whole run")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    abuse_parser = sub.add_parser(
        "abuse", help="hostile clients: CPU per request and probe latency under attack"
    )
    abuse_mod.add_arguments(abuse_parser)
    renewal_parser = sub.add_parser(
        "renewal", help="renewal storm: N watching agents, one update, CPU per renewal"
    )
    renewal_mod.add_arguments(renewal_parser)
    a = ap.parse_args(argv)
    if a.command == "renewal":
        return a
    if a.command == "abuse":
        if a.duration <= 0 or a.streams < 1:
            ap.error("--duration must be > 0 and --streams >= 1")
        return a
    if a.duration <= 0 or a.warmup < 0 or a.clients < 1 or a.repeat < 1:
        ap.error("--duration must be > 0, --warmup >= 0, --clients and --repeat >= 1")
    if a.rss_only and a.rss_certs <= 0:
        ap.error("--rss-only needs --rss-certs N")
    return a


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        raise Deadline(f"benchmark exceeded --timeout {seconds:.0f} s")

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old_alarm = signal.signal(signal.SIGALRM, fire)
    old_term = signal.signal(signal.SIGTERM, interrupted)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGTERM, old_term)


def issuance(a: argparse.Namespace) -> int:
    children = Children()
    workdir = Path(tempfile.mkdtemp(prefix="concord-bench-"))
    report: dict[str, Any] = {
        "meta": {
            "started": datetime.now(UTC).isoformat(),
            "argv": sys.argv,
            "cpu_count": os.cpu_count(),
            "server_cpus": a.server_cpus,
            "load_cpus": a.load_cpus,
            "shared_cpus": _shared_cpus(a.server_cpus, a.load_cpus),
            "python": platform.python_version(),
            "cryptography": _version("cryptography"),
            "grpcio": _version("grpcio"),
            "loadavg_start": _loadavg(),
            "duration_s": a.duration,
            "warmup_s": a.warmup,
            "clients": a.clients,
            "notes": [
                "Load processes run on the same cores as the coordinator; each flow makes a fresh "
                "leaf key, HPKE key and mock evidence for a fresh token (client CPU, reported as "
                "client_cpu_per_flow_s).",
                "Each load process attests the coordinator once and reuses that channel.",
                "machine_busy_cores counts every process on the machine, including unrelated "
                "load from other users.",
            ],
        },
        "runs": [],
    }
    try:
        with deadline(a.timeout):
            dep = create_deployment(workdir / "mock-tee")
            print("measuring the primitive baseline in process ...", flush=True)
            report["inprocess"] = inprocess_figures(dep, a.baseline_rounds, 50)
            if not a.rss_only:
                report["runs"] = sweep(children, dep, workdir, a)
                if not a.no_floor:
                    report["rpc_floor"] = rpc_floor(children, dep, workdir, a)
            report["summary"] = summarise(report)
            if a.rss_certs > 0:
                workers = max(a.workers)
                conc = a.rss_concurrency or report["summary"].get("best_throughput", {}).get(
                    "concurrency", 16
                )
                print(
                    f"RSS run: {a.rss_certs} certificates, workers={workers} "
                    f"concurrency={conc} ...",
                    flush=True,
                )
                proc, info = start_server(children, dep, workdir, workers, cpus=a.server_cpus)
                try:
                    asyncio.run(set_manifest(dep, info["user"]))
                    run = run_load(
                        children,
                        dep,
                        proc,
                        info["mesh"],
                        concurrency=conc,
                        clients=a.clients,
                        warmup=a.warmup,
                        duration=None,
                        until_certs=a.rss_certs,
                        collect_latencies=False,
                        time_limit=a.rss_time_limit,
                        cpus=a.load_cpus,
                    )
                    run["workers"] = workers
                    report["rss"] = rss_summary(run, a.rss_certs)
                finally:
                    children.stop_server(proc)
                report["summary"] = summarise(report)
    except (BenchError, Deadline, KeyboardInterrupt) as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        print(f"benchmark failed: {report['error']}", file=sys.stderr)
    finally:
        children.stop_all()
        close_report(report, a.json, workdir, keep=a.keep)
    if "error" in report:
        return 1
    if a.png is not None and report["runs"]:
        plot(report, a.png)
    print_table(report)
    print(f"wrote {a.json}" + (f" and {a.png}" if a.png else ""))
    return 0


def close_report(report: dict[str, Any], path: Path, workdir: Path, *, keep: bool) -> None:
    """Stamp the end of a run, write its JSON report and remove (or keep) its work directory:
    the one ending of every benchmark, also when it failed."""
    report["meta"]["loadavg_end"] = _loadavg()
    report["meta"]["finished"] = datetime.now(UTC).isoformat()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    if keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)


def _loadavg() -> list[float]:
    with open("/proc/loadavg", encoding="ascii") as f:
        return [float(x) for x in f.read().split()[:3]]


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(list(sys.argv[1:] if argv is None else argv))
    if a.command == "issuance":
        return issuance(a)
    if a.command == "abuse":
        return abuse_mod.abuse(a)
    if a.command == "renewal":
        return renewal_mod.renewal(a)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
