"""Integration fixtures: a real etcd per test module, a fresh deployment name per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.etcd_server import EtcdServer, find_etcd


@pytest.fixture(scope="module")
def etcd_server() -> Iterator[EtcdServer]:
    """One etcd for the module, stopped (and its data removed) afterwards.

    Skips only when the binary is truly absent; a server that fails to start is an error.
    Tests may stop/start/pause it; it is running again at the start of every test.
    """
    if find_etcd() is None:
        pytest.skip("etcd binary not installed")
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
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
