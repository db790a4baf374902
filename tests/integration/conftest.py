"""Integration fixtures: a real etcd per test module, a fresh deployment name per test, and
for the cluster tests a coordinator cluster and the test's own store view of that deployment."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from coordinator.store.etcd import EtcdStore
from tests.integration.cluster_helpers import Cluster, running_cluster
from tools.etcd_server import EtcdServer, find_etcd

if TYPE_CHECKING:
    from tests.integration.service_helpers import MockTee


@pytest.fixture(scope="module")
def etcd_server() -> Iterator[EtcdServer]:
    """One etcd for the module, stopped (and its data removed) afterwards.

    Skips only when the binary is truly absent; a server that fails to start is an error.
    Tests may stop/start/pause it; it is running again at the start of every test.
    """
    if find_etcd() is None:
        pytest.skip("etcd binary not installed")
    with EtcdServer() as server:
        yield server
    assert not server.running


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> Iterator[EtcdServer]:
    """The module's etcd, guaranteed up and unpaused for this test (an outage test may have
    left it stopped when it failed)."""
    etcd_server.resume()
    etcd_server.start()
    yield etcd_server
    etcd_server.resume()
    etcd_server.start()


@pytest.fixture
def deployment() -> str:
    """A deployment name no other test uses, so tests sharing one etcd never collide."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def cluster(
    etcd: EtcdServer, deployment: str, mock_tee: MockTee, tmp_path: Path
) -> Iterator[Cluster]:
    """Coordinator slots on the test's deployment (none started yet), stopped at teardown.

    ``mock_tee`` comes from the test module (imported there from service_helpers)."""
    with running_cluster(etcd.endpoint, deployment, mock_tee.directory, tmp_path / "c") as c:
        yield c


@pytest.fixture
async def store(etcd: EtcdServer, deployment: str) -> AsyncIterator[EtcdStore]:
    """The test's own view of the deployment's keys (modules with their own ``store`` override
    this one)."""
    s = await EtcdStore.connect([etcd.endpoint], deployment)
    try:
        yield s
    finally:
        await s.close()
