"""Sealing cost of the hybrid post-quantum HPKE suite (ML-KEM-768 + X25519) against classic
X25519, measured in the same run (DESIGN §7).

Under ``--benchmark-disable`` (the default) each case runs once as a correctness test; with
``--benchmark-enable --benchmark-group-by=group`` pytest-benchmark reports the figures side by
side. No duration is asserted: the figures belong to the benchmark, not to a shared machine.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from coordinator.core.sealing import (
    PURPOSE_WORKLOAD_SECRET,
    generate_keypair,
    generate_pq_keypair,
    open_sealed,
    open_sealed_pq,
    seal,
    seal_pq,
)

SECRET = bytes(32)  # a workload secret is 32 bytes
PEER_SECRETS = bytes(400)  # about the size of the peer-recovery payload

_X_PRIVATE, _X_PUBLIC = generate_keypair()
_PQ_PRIVATE, _PQ_PUBLIC = generate_pq_keypair()

SEALERS: dict[str, Callable[[bytes], bytes]] = {
    "x25519": lambda data: seal(_X_PUBLIC, PURPOSE_WORKLOAD_SECRET, data),
    "mlkem768-x25519": lambda data: seal_pq(_PQ_PUBLIC, PURPOSE_WORKLOAD_SECRET, data),
}
OPENERS: dict[str, Callable[[bytes], bytes]] = {
    "x25519": lambda box: open_sealed(_X_PRIVATE, PURPOSE_WORKLOAD_SECRET, box),
    "mlkem768-x25519": lambda box: open_sealed_pq(_PQ_PRIVATE, PURPOSE_WORKLOAD_SECRET, box),
}


@pytest.mark.benchmark(group="hpke-seal-32B")
@pytest.mark.parametrize("suite", sorted(SEALERS))
def test_seal_workload_secret(benchmark: BenchmarkFixture, suite: str) -> None:
    """What NewMeshCert pays per issued secret (the coordinator side)."""
    box = benchmark(SEALERS[suite], SECRET)
    assert OPENERS[suite](box) == SECRET


@pytest.mark.benchmark(group="hpke-seal-400B")
@pytest.mark.parametrize("suite", sorted(SEALERS))
def test_seal_peer_secrets(benchmark: BenchmarkFixture, suite: str) -> None:
    box = benchmark(SEALERS[suite], PEER_SECRETS)
    assert OPENERS[suite](box) == PEER_SECRETS


@pytest.mark.benchmark(group="hpke-open-32B")
@pytest.mark.parametrize("suite", sorted(OPENERS))
def test_open_workload_secret(benchmark: BenchmarkFixture, suite: str) -> None:
    """What a joining workload pays once."""
    box = SEALERS[suite](SECRET)
    assert benchmark(OPENERS[suite], box) == SECRET


@pytest.mark.benchmark(group="hpke-keygen")
@pytest.mark.parametrize("suite", ["x25519", "mlkem768-x25519"])
def test_keypair(benchmark: BenchmarkFixture, suite: str) -> None:
    """A fresh key pair per join or peer recovery (the requester side)."""
    make = generate_keypair if suite == "x25519" else generate_pq_keypair
    _, public = benchmark(make)
    assert len(public) == (32 if suite == "x25519" else 1216)
