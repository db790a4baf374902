"""Shared pieces of the benchmarks: a mock deployment, fresh NewMeshCert requests, the primitive
baseline, CPU/RSS readers and small statistics.

Used by the in-process benchmarks (tests/bench/test_bench_*.py) and by the end-to-end harness
(``./hack/bench``, tools/bench/bench_main.py). Nothing here starts a process or opens a socket.

The *primitive baseline* is the work a NewMeshCert cannot avoid: one evidence verification with
the VCEK chain already cached (``Verifier.verify``) plus one leaf certificate signature
(``CertificateAuthority.issue_leaf``). Efficiency of a path = baseline CPU / CPU the path spends
per certificate; 1.0 means the path adds nothing on top of the two primitives.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from attestation import anchors as trust
from attestation.binding import mesh_cert_report_data
from attestation.providers import mock
from attestation.providers.mock import MockProvider
from attestation.reference import ReferenceValues, parse_reference_values
from attestation.verify import Verifier
from coordinator.core.challenge import issue_token
from coordinator.core.history import History
from coordinator.core.issuance import IssueRequest
from coordinator.core.sealing import generate_keypair
from coordinator.core.state import Guard, State
from coordinator.store import open_store

COORDINATOR_POLICY = b"concord-bench: coordinator policy\n"
WORKLOAD_POLICY = b"concord-bench: workload policy\n"
WORKLOAD_SANS = ("web", "web.bench.svc", "10.0.0.1", "spiffe://bench/web")
WORKLOAD_SECRET_ID = "web"


@dataclass(frozen=True)
class BenchDeployment:
    """A mock TEE directory plus a manifest admitting one coordinator and one workload policy."""

    mock_dir: Path
    reference_json: dict[str, Any]
    coordinator_policy: bytes
    workload_policy: bytes
    manifest: bytes

    @property
    def policies(self) -> list[bytes]:
        return [self.coordinator_policy, self.workload_policy]

    @property
    def coordinator_policy_hash(self) -> bytes:
        return hashlib.sha256(self.coordinator_policy).digest()

    @property
    def workload_policy_hash(self) -> bytes:
        return hashlib.sha256(self.workload_policy).digest()

    def reference_values(self) -> ReferenceValues:
        return parse_reference_values(self.reference_json)

    def anchors(self) -> trust.TrustAnchors:
        return trust.mock(self.mock_dir)


def bench_manifest(reference_json: dict[str, Any], extra_policies: int = 0) -> bytes:
    """The manifest bytes; ``extra_policies`` adds padding entries (bigger manifests)."""
    policies: dict[str, dict[str, Any]] = {
        hashlib.sha256(COORDINATOR_POLICY).hexdigest(): {
            "SANs": ["coordinator"],
            "Role": "coordinator",
        },
        hashlib.sha256(WORKLOAD_POLICY).hexdigest(): {
            "SANs": list(WORKLOAD_SANS),
            "WorkloadSecretID": WORKLOAD_SECRET_ID,
        },
    }
    for i in range(extra_policies):
        policies[hashlib.sha256(b"padding %d" % i).hexdigest()] = {"SANs": [f"svc-{i}"]}
    doc = {"Policies": policies, "ReferenceValues": reference_json}
    return json.dumps(doc, indent=2).encode()


def create_deployment(directory: Path) -> BenchDeployment:
    """Initialise a mock TEE in ``directory`` and the matching manifest."""
    refs = mock.init(directory)
    return BenchDeployment(
        mock_dir=Path(directory),
        reference_json=refs,
        coordinator_policy=COORDINATOR_POLICY,
        workload_policy=WORKLOAD_POLICY,
        manifest=bench_manifest(refs),
    )


async def build_state(dep: BenchDeployment) -> State:
    """A fresh State for the deployment's manifest (set once on a throwaway file store: only the
    State, which is pure, is measured afterwards)."""
    with tempfile.TemporaryDirectory(prefix="concord-bench-state-") as tmp:
        store = await open_store(f"file:{tmp}", "bench")
        try:
            guard = Guard(History(store))
            return await guard.update_state(None, dep.manifest, dep.policies)
        finally:
            await store.close()


@dataclass(frozen=True)
class PreparedRequest:
    """One NewMeshCert as a workload would send it, plus what a checker needs."""

    request: IssueRequest
    leaf_public_key: ec.EllipticCurvePublicKey
    report_data: bytes
    hpke_private: X25519PrivateKey


class RequestFactory:
    """Fresh requests: new leaf key, new HPKE key, new token, evidence made for exactly them."""

    def __init__(self, dep: BenchDeployment, state: State, tee: str = "snp") -> None:
        self._provider = MockProvider(dep.mock_dir, dep.workload_policy, tee=tee)
        self._key = state.seed_engine.challenge_key
        self._transition = state.transition.hash

    def make(
        self, now: datetime | None = None, leaf: ec.EllipticCurvePublicKey | None = None
    ) -> PreparedRequest:
        """A request at ``now``; for ``leaf`` (a fresh key unless given)."""
        now = now or datetime.now(UTC)
        leaf = leaf or ec.generate_private_key(ec.SECP256R1()).public_key()
        spki = leaf.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        hpke_private, hpke_public = generate_keypair()
        token = issue_token(self._key, self._transition, now.timestamp())
        report_data = mesh_cert_report_data(spki, hpke_public, token)
        evidence = self._provider.evidence(report_data).encode()
        return PreparedRequest(
            request=IssueRequest(
                evidence=evidence,
                leaf_spki=spki,
                hpke_public_key=hpke_public,
                token=token,
                now=now,
            ),
            leaf_public_key=leaf,
            report_data=report_data,
            hpke_private=hpke_private,
        )

    def batch(self, n: int) -> list[PreparedRequest]:
        return [self.make() for _ in range(n)]


def primitive_baseline_one(state: State, verifier: Verifier, prepared: PreparedRequest) -> Any:
    """The unavoidable work of one NewMeshCert: verify (chain cached) and sign one leaf."""
    req = prepared.request
    verified = verifier.verify(
        req.evidence, state.manifest.reference_values, prepared.report_data, req.now
    )
    entry = state.manifest.policy(verified.policy_hash)
    assert entry is not None, "bench evidence carries a policy the manifest does not list"
    return state.ca.issue_leaf(
        prepared.leaf_public_key,
        sans=entry.sans,
        policy_hash=verified.policy_hash,
        tee=verified.tee,
        measurement=verified.measurement,
        tcb=verified.tcb,
        workload_secret_id=entry.workload_secret_id,
        now=req.now,
    )


def cpu_per_call(
    fn: Callable[[PreparedRequest], object], items: Sequence[PreparedRequest]
) -> float:
    """Process CPU seconds per call of ``fn`` over ``items`` (single thread)."""
    start = time.process_time()
    for item in items:
        fn(item)
    return (time.process_time() - start) / max(1, len(items))


@dataclass(frozen=True)
class Efficiency:
    """CPU per certificate of a path against the primitive baseline, measured interleaved."""

    baseline_s: float
    path_s: float
    rounds: int
    per_round: int
    ratios: tuple[float, ...]

    @property
    def efficiency(self) -> float:
        return self.baseline_s / self.path_s if self.path_s > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "baseline_cpu_s": self.baseline_s,
            "path_cpu_s": self.path_s,
            "efficiency": self.efficiency,
            "rounds": self.rounds,
            "per_round": self.per_round,
            "round_ratios": list(self.ratios),
        }


def compare_cpu(
    baseline: Callable[[PreparedRequest], object],
    path: Callable[[PreparedRequest], object],
    factory: RequestFactory,
    *,
    rounds: int,
    per_round: int,
) -> Efficiency:
    """Alternate blocks of baseline and path calls (fresh requests each), medians per call.

    Interleaving and medians keep a noisy, shared machine from biasing one side: a burst of
    outside load lands on one block, not on a whole side.
    """
    base_times: list[float] = []
    path_times: list[float] = []
    for r in range(rounds):
        a = factory.batch(per_round)
        b = factory.batch(per_round)
        if r % 2:
            path_times.append(cpu_per_call(path, b))
            base_times.append(cpu_per_call(baseline, a))
        else:
            base_times.append(cpu_per_call(baseline, a))
            path_times.append(cpu_per_call(path, b))
    ratios = tuple(bt / pt for bt, pt in zip(base_times, path_times, strict=True) if pt > 0)
    return Efficiency(
        baseline_s=statistics.median(base_times),
        path_s=statistics.median(path_times),
        rounds=rounds,
        per_round=per_round,
        ratios=ratios,
    )


# --- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --- /proc readers -----------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime field 14, stime field 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """utime + stime per thread of ``pid``: {tid: (thread name, seconds)}."""
    out: dict[int, tuple[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii", errors="replace") as f:
                raw = f.read()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / _CLK_TCK)
    return out


def thread_groups(
    pid: int, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds between two snapshots, grouped: the main (event loop) thread, threads named
    by gRPC's C core, and the other Python threads (issuer workers and the gRPC poller)."""
    groups: dict[str, float] = {}
    for tid, (name, seconds) in after.items():
        spent = seconds - before.get(tid, (name, 0.0))[1]
        if tid == pid:
            group = "main_event_loop"
        elif name.startswith(("event_engine", "grpc", "lifeguard")):
            group = "grpc_core_threads"
        else:
            group = "other_python_threads"
        groups[group] = groups.get(group, 0.0) + spent
    return groups


def proc_status_kb(pid: int | str, name: str) -> int:
    """A ``kB`` line of /proc/<pid>/status (VmRSS, VmHWM, ...); pid may be "self"."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise KeyError(name)


def system_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return (total - idle) / _CLK_TCK, total / _CLK_TCK
