"""UserAPI.GetManifests on a 1,000-manifest history held in a MemoryStore.

Three ways to answer, measured in the same test:

- naive walk: the same servicer over a History with no blob cache (every transition, manifest
  and policy read from the store and re-hashed) - the baseline;
- cached-blob walk: the first call after a State change (no per-State response yet) on a
  UserService whose History blob cache and per-manifest policy hashes are warm;
- per-State response: repeated calls on one UserService and one State (what a client polling
  GetManifests sees).

Every answer must be the whole history, oldest first, with its policies and signed ``latest``.
The same three are measured on a 10-manifest history: the guards are ratios between the two
(cost grows sub-quadratically) and between the three ways (caches pay off); the absolute
figures are reported (benchmark extra_info, stdout), never asserted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from cryptography.hazmat.primitives import serialization

from attestation.providers.mock import MockProvider
from attestation.verify import Verifier
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.core.history import BlobCache, History, SignedLatest, Transition
from coordinator.core.issuance import BatchRunner
from coordinator.core.manifest import Manifest
from coordinator.core.sealing import generate_keypair
from coordinator.core.seedengine import SeedEngine
from coordinator.core.state import Guard, State
from coordinator.service.context import Coordinator
from coordinator.service.metrics import Metrics
from coordinator.service.userapi import UserService
from tests.fakes.store import MemoryStore
from tools.bench.harness import (
    COORDINATOR_POLICY,
    WORKLOAD_POLICY,
    BenchDeployment,
    create_deployment,
    percentile,
)

HISTORY_LENGTH = 1000
SMALL_LENGTH = 10  # the baseline the 1,000-manifest figures are compared with, in the same run


class FakeContext:
    """What the @rpc wrapper needs of a grpc.aio context: abort() never returns."""

    async def abort(self, code: Any, message: str) -> NoReturn:
        raise AssertionError(f"GetManifests aborted: {code} {message}")


def history_manifest(dep: BenchDeployment, i: int) -> bytes:
    """The i-th manifest of the history: the bench manifest with one SAN that changes."""
    doc = json.loads(dep.manifest)
    for entry in doc["Policies"].values():
        if entry.get("WorkloadSecretID"):
            entry["SANs"] = [*entry["SANs"], f"rev-{i}.bench.svc"]
    return json.dumps(doc, indent=2).encode()


class Deployment:
    def __init__(self, dep: BenchDeployment, store: MemoryStore, engine: SeedEngine) -> None:
        self.dep = dep
        self.store = store
        self.engine = engine
        self.manifests: list[bytes] = []
        self.latest: SignedLatest | None = None

    async def build(self, n: int) -> None:
        """Write n manifests as one linear chain straight through the History API."""
        history = History(self.store)
        for policy in (COORDINATOR_POLICY, WORKLOAD_POLICY):
            await history.put_policy(policy)
        previous = bytes(32)
        for i in range(n):
            raw = history_manifest(self.dep, i)
            digest = await history.put_manifest(raw)
            transition = Transition.create(digest, previous)
            await history.put_transition(transition)
            previous = transition.hash
            self.manifests.append(raw)
        self.latest = SignedLatest.sign(previous, self.engine.history_signing_key)
        await history.set_latest(self.latest, None)

    async def service(self, history: History) -> tuple[UserService, State, BatchRunner[Any, Any]]:
        """A UserService over ``history`` with the State recovered from the store."""
        guard = Guard(history)

        async def authorize(m: Manifest) -> tuple[SeedEngine, None]:
            return self.engine, None

        state = await guard.reset_state(None, authorize)
        runner: BatchRunner[Any, Any] = BatchRunner(lambda x: x, workers=1)
        hpke_private, _ = generate_keypair()
        coord = Coordinator(
            guard=guard,
            verifier=Verifier(self.dep.anchors()),
            provider=MockProvider(self.dep.mock_dir, COORDINATOR_POLICY),
            tls_spki=b"bench",
            hpke_private=hpke_private,
            metrics=Metrics(),
            runner=runner,
        )
        return UserService(coord), state, runner


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    dep = create_deployment(Path(tmp_path_factory.mktemp("mock-tee")))
    d = Deployment(dep, MemoryStore(), SeedEngine.generate())
    asyncio.run(d.build(HISTORY_LENGTH))
    return d


@pytest.fixture(scope="module")
def small_deployment(deployment: Deployment) -> Deployment:
    """The same deployment with a short history: the baseline for the scaling check."""
    d = Deployment(deployment.dep, MemoryStore(), deployment.engine)
    asyncio.run(d.build(SMALL_LENGTH))
    return d


def check_response(d: Deployment, state: State, resp: pb.GetManifestsResponse) -> None:
    assert list(resp.manifests) == d.manifests  # exact bytes, oldest first
    assert sorted(resp.policies) == sorted([COORDINATOR_POLICY, WORKLOAD_POLICY])
    assert d.latest is not None
    assert resp.latest_transition_hash == d.latest.transition_hash == state.transition.hash
    assert resp.latest_signature == d.latest.signature
    assert resp.root_ca_pem == state.ca.root_pem and resp.mesh_ca_pem == state.ca.mesh_ca_pem
    signing = serialization.load_der_public_key(resp.history_signing_public_key)
    SignedLatest(resp.latest_transition_hash, resp.latest_signature).verify(signing)  # type: ignore[arg-type]
    # The chain re-verifies offline: each manifest hash links to the next transition.
    previous = bytes(32)
    for raw in resp.manifests:
        previous = Transition.create(hashlib.sha256(raw).digest(), previous).hash
    assert previous == resp.latest_transition_hash


def timed(
    calls: int, make: Callable[[], Awaitable[pb.GetManifestsResponse]]
) -> tuple[list[float], pb.GetManifestsResponse]:
    """Wall seconds of ``calls`` GetManifests answers and the last answer."""
    times: list[float] = []
    resp: pb.GetManifestsResponse | None = None

    async def run() -> None:
        nonlocal resp
        for _ in range(calls):
            coro = make()
            started = time.perf_counter()
            resp = await coro
            times.append(time.perf_counter() - started)

    asyncio.run(run())
    assert resp is not None
    return times, resp


@dataclass(frozen=True)
class Timings:
    """Wall seconds per call of the three ways to answer, for one history length."""

    naive_walk: list[float]
    cached_blob_walk: list[float]
    per_state_response: list[float]

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "min_ms": min(times) * 1e3,
                "p50_ms": percentile(times, 50) * 1e3,
                "p99_ms": percentile(times, 99) * 1e3,
                "calls": len(times),
            }
            for name, times in (
                ("naive_walk", self.naive_walk),
                ("cached_blob_walk", self.cached_blob_walk),
                ("per_state_response", self.per_state_response),
            )
        }


def measure(d: Deployment, calls: int, hits: int) -> tuple[Timings, UserService]:
    """Time the three ways to answer over ``d``; every answer is checked for correctness."""
    request, ctx = pb.GetManifestsRequest(), FakeContext()
    runners: list[BatchRunner[Any, Any]] = []
    try:
        # Naive: no blob cache at all, every read goes to the store and is re-hashed.
        cold = History(d.store, cache=BlobCache(max_entries=0))
        naive_svc, naive_state, r = asyncio.run(d.service(cold))
        runners.append(r)
        naive_times, resp = timed(
            calls, lambda: UserService(naive_svc.coord).GetManifests(request, ctx)
        )
        check_response(d, naive_state, resp)

        # First call after a State change: one UserService over one History whose blob cache
        # the first walk filled; the per-State response is dropped before every call, as an
        # update or a recovery drops it (the per-manifest policy hashes survive, manifests being
        # immutable).
        warm = History(d.store)
        svc, state, r = asyncio.run(d.service(warm))
        runners.append(r)

        def after_state_change() -> Awaitable[pb.GetManifestsResponse]:
            svc._manifests_cache = None
            return svc.GetManifests(request, ctx)

        walk_times, resp = timed(calls + 1, after_state_change)
        walk_times = walk_times[1:]  # the very first call also fills the caches
        check_response(d, state, resp)
        assert len(warm.cache) >= 2 * len(d.manifests)

        # Per-State response: one UserService, repeated calls.
        hit_times, hit = timed(hits, lambda: svc.GetManifests(request, ctx))
        check_response(d, state, hit)
    finally:
        for r in runners:
            r.close()
    return Timings(naive_times, walk_times, hit_times), svc


def test_get_manifests_1000(
    benchmark: Any, deployment: Deployment, small_deployment: Deployment
) -> None:
    """Correct answers at both lengths, and a cost that grows like the history, not faster.

    No absolute figure is asserted (a busy machine makes any of them fail at random): the
    figures go to the benchmark output, and the guards are ratios between measurements of the
    same run. Each ratio uses the fastest of several calls, which a busy machine can only make
    slower, never faster; the margins are wide enough that only a change of algorithm trips them.
    """
    calls = 5 if benchmark.disabled else 15
    hits = 20 if benchmark.disabled else 200
    large, svc = measure(deployment, calls, hits)
    small, _ = measure(small_deployment, calls, hits)

    results = {"large": large.summary(), "small": small.summary()}
    benchmark.extra_info.update(
        {"history_length": HISTORY_LENGTH, "small_history_length": SMALL_LENGTH, **results}
    )
    print(
        f"\nGetManifests, {HISTORY_LENGTH} manifests: "
        + ", ".join(f"{k} p50 {v['p50_ms']:.2f} ms" for k, v in results["large"].items())
        + f"; {SMALL_LENGTH} manifests: "
        + ", ".join(f"{k} p50 {v['p50_ms']:.2f} ms" for k, v in results["small"].items())
    )

    # Sub-quadratic: 100 times the history may cost up to 2,500 times as much. Linear measures
    # a few hundred here (allocation and collection grow too), quadratic would be ~10,000.
    growth = (HISTORY_LENGTH / SMALL_LENGTH) ** 2 / 4
    for name in ("naive_walk", "cached_blob_walk"):
        ratio = min(getattr(large, name)) / min(getattr(small, name))
        assert ratio <= growth, (name, ratio, results)
    # The caches must pay for themselves against re-reading and re-hashing everything.
    assert min(large.cached_blob_walk) <= min(large.naive_walk), results
    # A repeated call on one State rebuilds nothing: cheaper than any walk of the history.
    assert min(large.per_state_response) <= min(large.cached_blob_walk), results

    request, ctx = pb.GetManifestsRequest(), FakeContext()

    def after_change() -> None:
        svc._manifests_cache = None
        asyncio.run(svc.GetManifests(request, ctx))

    benchmark.pedantic(after_change, rounds=calls, iterations=1)


def test_get_manifests_after_state_change_refreshes(deployment: Deployment) -> None:
    """The per-State response is never served for another State."""
    d = Deployment(deployment.dep, MemoryStore(), deployment.engine)  # own store: it changes
    asyncio.run(d.build(HISTORY_LENGTH))
    svc, state, runner = asyncio.run(d.service(History(d.store)))
    try:
        request, ctx = pb.GetManifestsRequest(), FakeContext()

        async def flow() -> tuple[pb.GetManifestsResponse, pb.GetManifestsResponse, State]:
            first = await svc.GetManifests(request, ctx)
            guard = svc.coord.guard
            raw = history_manifest(d.dep, HISTORY_LENGTH)
            new = await guard.update_state(state, raw, [COORDINATOR_POLICY, WORKLOAD_POLICY])
            second = await svc.GetManifests(request, ctx)
            return first, second, new

        first, second, new = asyncio.run(flow())
    finally:
        runner.close()
    assert len(first.manifests) == HISTORY_LENGTH
    assert len(second.manifests) == HISTORY_LENGTH + 1
    assert second.latest_transition_hash == new.transition.hash
    assert second.manifests[-1] == history_manifest(d.dep, HISTORY_LENGTH)
