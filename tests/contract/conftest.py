"""The backends the Store contract runs against. A new backend is one more :class:`Backend`
factory in ``BACKENDS``; every test in this directory then runs on it too.

A :class:`Backend` opens handles on one test's data (a fresh data set per test) and can delete a
key behind the stores' backs, the way someone with write access to etcd or the store directory
could (DESIGN §12).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator.store.base import Store
from tests.fakes.store import MemoryStore
from tools.etcd_server import EtcdServer, find_etcd

# Member TTLs of the contract: the shortest each backend honours, and how long that really is.
MEMORY_TTL_UNIT = 0.5  # seconds per TTL second in the fake


@dataclass(frozen=True)
class Backend:
    """One store backend under test, bound to one test's data."""

    name: str
    open: Callable[[], Awaitable[Store]]
    """A new handle on the same data (the previous one may have to be closed first: file)."""
    delete: Callable[[str], Awaitable[None]]
    """Delete a key directly in the backend, not through a Store handle."""
    membership: bool
    """Whether handles are MembershipStores (then the membership contract applies)."""
    member_ttl: int = 1
    """The member TTL the membership tests use."""
    lease_seconds: float = 1.0
    """Roughly how long ``member_ttl`` lasts in real time."""
    concurrent_handles: bool = True
    """Whether two handles may be open at once (the file store is locked to one)."""


BackendFactory = Callable[[Path], AbstractAsyncContextManager[Backend]]


@asynccontextmanager
async def memory_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    root = MemoryStore(ttl_unit=MEMORY_TTL_UNIT)

    async def open_() -> Store:
        return root.clone_view()

    async def delete(key: str) -> None:
        root.raw_delete(key)

    yield Backend("memory", open_, delete, membership=True, lease_seconds=MEMORY_TTL_UNIT)


@asynccontextmanager
async def file_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    from coordinator.store.file import FileStore

    directory = tmp_path / "store"

    async def open_() -> Store:
        # A short poll so a deleted key file is noticed quickly.
        return FileStore.open(directory, poll_interval=0.02)

    async def delete(key: str) -> None:
        os.unlink(directory / key)

    yield Backend("file", open_, delete, membership=False, concurrent_handles=False)


def _etcd_backend(server: EtcdServer) -> BackendFactory:
    @asynccontextmanager
    async def factory(tmp_path: Path) -> AsyncIterator[Backend]:
        import etcd3

        from coordinator.store.etcd import EtcdStore

        deployment = f"c-{uuid.uuid4().hex[:12]}"
        host, port = server.endpoint.rsplit(":", 1)
        raw: Any = etcd3.client(host=host, port=int(port), timeout=5)

        async def open_() -> Store:
            return await EtcdStore.connect([server.endpoint], deployment)

        async def delete(key: str) -> None:
            await asyncio.to_thread(raw.delete, f"/concord/{deployment}/{key}")

        try:
            # The test etcd's minimum lease is 1 s (its short election timeout).
            yield Backend("etcd", open_, delete, membership=True, lease_seconds=1.0)
        finally:
            raw.close()

    return factory


@pytest.fixture(scope="session")
def contract_etcd() -> Iterator[EtcdServer]:
    """One etcd for the whole contract run (each test gets its own deployment prefix)."""
    if find_etcd() is None:
        pytest.skip("etcd binary not installed")
    with EtcdServer() as server:
        yield server
    assert not server.running


BACKENDS = [
    pytest.param("memory"),
    pytest.param("file"),
    pytest.param("etcd", marks=pytest.mark.etcd),
]
MEMBERSHIP_BACKENDS = [p for p in BACKENDS if p.values[0] in ("memory", "etcd")]
"""The backends whose handles are MembershipStores (test_is_a_store keeps this list honest)."""


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Every backend in turn, with fresh data; every handle it opened is closed afterwards."""
    async with _backend(request, tmp_path) as b:
        yield b


@pytest.fixture(params=MEMBERSHIP_BACKENDS)
async def membership_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Backend]:
    """Every MembershipStore backend in turn, like :func:`backend`."""
    async with _backend(request, tmp_path) as b:
        assert b.membership
        yield b


@asynccontextmanager
async def _backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    name: str = request.param
    factory: BackendFactory
    if name == "memory":
        factory = memory_backend
    elif name == "file":
        factory = file_backend
    else:
        server: EtcdServer = request.getfixturevalue("contract_etcd")
        server.resume()
        server.start()
        factory = _etcd_backend(server)
    opened: list[Store] = []
    async with factory(tmp_path) as inner:

        async def tracked_open() -> Store:
            store = await inner.open()
            opened.append(store)
            return store

        yield dataclasses.replace(inner, open=tracked_open)
        for store in opened:
            await store.close()


@pytest.fixture
async def store(backend: Backend) -> Store:
    """A handle on the test's data (closed by ``backend``)."""
    return await backend.open()
