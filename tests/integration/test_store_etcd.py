"""EtcdStore against a real etcd: configuration, prefixes, multi-client races, watch recovery,
outages, lease re-registration. The semantics every backend shares (including membership) are
in tests/contract."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import etcd3
import pytest

from coordinator.store.base import (
    DELETED,
    ConcurrentUpdate,
    Store,
    StoreUnavailable,
)
from coordinator.store.etcd import (
    EtcdStore,
    InvalidDeployment,
    InvalidEndpoint,
    StoreConfigError,
)
from tools.etcd_server import EtcdServer, find_etcd, free_port

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(60)]

T = TypeVar("T")
PRIME = b"prime"
# Deadlines for liveness ("it gives up instead of hanging"), far above any configured store
# timeout so a busy machine cannot fail them; never a performance claim.
LIVENESS_S = 30.0
StoreFactory = Callable[..., Awaitable[EtcdStore]]


# -- helpers ---------------------------------------------------------------------------------


class Proxy:
    """A loopback TCP proxy the test can cut (drop every connection, refuse new ones)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.is_cut = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def cut(self) -> None:
        self.is_cut = True
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.is_cut = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def primed_watch(store: EtcdStore, key: str, writer: Store | None = None) -> Any:
    """A watch known to be live: write PRIME until the iterator yields it."""
    it = store.watch(key)
    task = asyncio.ensure_future(anext(it))
    deadline = time.monotonic() + 10
    while not task.done():
        assert time.monotonic() < deadline, "watch never delivered"
        await (writer or store).set(key, PRIME)
        await asyncio.wait({task}, timeout=0.05)
    assert task.result() == PRIME
    # The watch replays writes made since watch() was called: drain the other PRIMEs up to a
    # marker so the caller starts with nothing queued (the marker restores the key to PRIME).
    await (writer or store).set(key, PRIME + b"-marker")
    while await asyncio.wait_for(anext(it), 10) != PRIME + b"-marker":
        pass
    return it


async def next_value(it: Any, timeout: float = 10.0) -> bytes:
    """The next watched value that is not a leftover PRIME."""
    while True:
        value: bytes = await asyncio.wait_for(anext(it), timeout)
        if value != PRIME:
            return value


async def retry(fn: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
    """Run ``fn`` until the store is reachable again (after a restart)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await fn()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> float:
    """Poll until ``check`` is true; returns the time it took."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < timeout, "condition never became true"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def raw_client(server: EtcdServer) -> Any:
    host, port = server.endpoint.rsplit(":", 1)
    return etcd3.client(host=host, port=int(port), timeout=5)


def etcd_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("concord-etcd") or "consume_request_iterator" in t.name
    ]


@pytest.fixture
async def make_store(etcd: EtcdServer, deployment: str) -> AsyncIterator[StoreFactory]:
    """Connect stores (default: this test's deployment, 5 s timeout); all closed afterwards."""
    stores: list[EtcdStore] = []

    async def make(
        endpoints: list[str] | None = None, dep: str | None = None, timeout: float = 5.0
    ) -> EtcdStore:
        store = await EtcdStore.connect(
            endpoints or [etcd.endpoint], dep or deployment, timeout=timeout
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> EtcdStore:
    return await make_store()


@pytest.fixture
async def proxy(etcd: EtcdServer) -> AsyncIterator[Proxy]:
    p = await Proxy(etcd.client_port).start()
    yield p
    await p.close()


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "Prod", "a/b", "a_b", "x" * 64, "é"])
async def test_bad_deployment_rejected(etcd: EtcdServer, bad: str) -> None:
    with pytest.raises(InvalidDeployment, match="deployment"):
        await EtcdStore.connect([etcd.endpoint], bad)


@pytest.mark.parametrize("bad", [[], ["localhost"], ["http://h:2379"], ["h:0"], ["h:99999"]])
async def test_bad_endpoint_rejected(bad: list[str]) -> None:
    with pytest.raises(InvalidEndpoint):
        await EtcdStore.connect(bad, "d")


async def test_endpoint_string_instead_of_list_rejected(etcd: EtcdServer) -> None:
    with pytest.raises(InvalidEndpoint, match="sequence"):
        await EtcdStore.connect(etcd.endpoint, "d")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"user": "u", "password": "p"}, "without TLS"),
        ({"user": "u"}, "user and password"),
        ({"cert_key": "k.pem", "cert_cert": "c.pem"}, "needs ca_cert"),
        ({"ca_cert": "ca.pem", "cert_key": "k.pem"}, "cert_key and cert_cert"),
        ({"ca_cert": "/nonexistent/ca.pem"}, "ca_cert: cannot read"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": math.nan}, "timeout"),
    ],
)
async def test_bad_security_config_rejected(
    etcd: EtcdServer, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(StoreConfigError, match=field):
        await EtcdStore.connect([etcd.endpoint], "d", **kwargs)


async def test_connect_to_nothing_is_unavailable(deployment: str) -> None:
    async with asyncio.timeout(LIVENESS_S):  # gives up, never hangs
        with pytest.raises(StoreUnavailable):
            await EtcdStore.connect([f"127.0.0.1:{free_port()}"], deployment, timeout=0.5)


# -- basic operations ------------------------------------------------------------------------


async def test_keys_live_under_deployment_prefix(
    etcd: EtcdServer, store: EtcdStore, deployment: str
) -> None:
    await store.set("transitions/latest", b"v")
    raw = raw_client(etcd)
    try:
        value, _ = raw.get(f"/concord/{deployment}/transitions/latest")
        assert value == b"v"
    finally:
        raw.close()


async def test_deployments_are_isolated(make_store: StoreFactory) -> None:
    a = await make_store(dep="iso-a")
    b = await make_store(dep="iso-b")
    await a.set("x/k", b"a")
    assert not await b.has("x/k")
    await b.compare_and_swap("x/k", b"", b"b")  # absent in b even though present in a
    assert await a.get("x/k") == b"a"
    assert await b.get("x/k") == b"b"
    watch_b = await primed_watch(b, "x/k")
    await a.set("x/k", b"a2")
    await b.set("x/k", b"b2")
    assert await next_value(watch_b) == b"b2"
    await watch_b.aclose()


# -- compare and swap ------------------------------------------------------------------------


async def test_concurrent_cas_exactly_one_wins(make_store: StoreFactory) -> None:
    stores = await asyncio.gather(*(make_store() for _ in range(20)))
    key = "transitions/latest"
    current = b""
    for round_ in range(2):
        results = await asyncio.gather(
            *(
                s.compare_and_swap(key, current, b"r%d-%d" % (round_, i))
                for i, s in enumerate(stores)
            ),
            return_exceptions=True,
        )
        winners = [i for i, r in enumerate(results) if r is None]
        assert len(winners) == 1, results
        losers = [r for r in results if r is not None]
        assert all(type(r) is ConcurrentUpdate for r in losers), losers
        current = b"r%d-%d" % (round_, winners[0])
        assert await stores[0].get(key) == current


# -- watch -----------------------------------------------------------------------------------


async def test_watch_delivers_updates_in_order(make_store: StoreFactory) -> None:
    watcher, writer = await make_store(), await make_store()
    it = await primed_watch(watcher, "transitions/latest", writer)
    values = [b"v%d" % i for i in range(10)]
    for v in values:
        await writer.set("transitions/latest", v)
    assert [await next_value(it) for _ in values] == values
    await it.aclose()


async def test_watch_resumes_after_restart(
    etcd: EtcdServer, make_store: StoreFactory, proxy: Proxy
) -> None:
    watcher = await make_store([proxy.endpoint])
    writer = await make_store()
    it = await primed_watch(watcher, "transitions/latest", writer)
    pending = asyncio.ensure_future(next_value(it, timeout=20))
    proxy.cut()  # keeps the watcher away until the writes below are done
    etcd.stop()
    etcd.start()
    await retry(lambda: writer.set("transitions/latest", b"after-1"))
    await writer.set("transitions/latest", b"after-2")
    assert not pending.done()
    proxy.restore()
    assert await pending == b"after-1"
    assert await next_value(it) == b"after-2"
    await writer.set("transitions/latest", b"after-3")
    assert await next_value(it) == b"after-3"
    await it.aclose()


async def test_watch_survives_restart_without_proxy(
    etcd: EtcdServer, make_store: StoreFactory
) -> None:
    watcher, writer = await make_store(), await make_store()
    it = await primed_watch(watcher, "transitions/latest", writer)
    pending = asyncio.ensure_future(next_value(it, timeout=20))
    etcd.stop()
    await asyncio.sleep(0.2)
    etcd.start()
    await retry(lambda: writer.set("transitions/latest", b"after-1"))
    assert await pending == b"after-1"
    await it.aclose()


async def test_watch_recovers_from_compaction(
    etcd: EtcdServer, make_store: StoreFactory, proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    key = "transitions/latest"
    watcher = await make_store([proxy.endpoint])
    writer = await make_store()
    raw = raw_client(etcd)
    caplog.set_level(logging.INFO, logger="coordinator.store.etcd")
    try:
        it = await primed_watch(watcher, key, writer)

        # Behind: the watcher is cut off while the key moves twice and history is compacted.
        proxy.cut()
        await writer.set(key, b"lost")
        await writer.set(key, b"current")
        raw.compact(raw.get_response("/").header.revision, physical=True)
        proxy.restore()
        assert await next_value(it) == b"current"  # the current value, "lost" is gone

        # Behind again, but the value ends where the watcher last saw it: nothing to report.
        proxy.cut()
        await writer.set(key, b"flicker")
        await writer.set(key, b"current")
        raw.compact(raw.get_response("/").header.revision, physical=True)
        proxy.restore()
        await writer.set(key, b"next")
        assert await next_value(it) == b"next"
        await it.aclose()
    finally:
        raw.close()
    compactions = [r for r in caplog.records if "compacted" in r.getMessage()]
    assert len(compactions) == 2


async def test_deletion_missed_during_compaction_is_reported(
    etcd: EtcdServer, make_store: StoreFactory, proxy: Proxy, deployment: str
) -> None:
    key = "transitions/latest"
    watcher = await make_store([proxy.endpoint])
    writer = await make_store()
    raw = raw_client(etcd)
    try:
        it = await primed_watch(watcher, key, writer)
        proxy.cut()
        raw.delete(f"/concord/{deployment}/{key}")
        # Compact past the delete (a tombstone at exactly the compaction revision would be
        # dropped without a compaction error: etcd's own limit, see the store's docs).
        await writer.set("x/later", b"moves the revision on")
        raw.compact(raw.get_response("/").header.revision, physical=True)
        proxy.restore()
        assert await next_value(it) == DELETED  # the delete event is gone, the absence is not
        await writer.set(key, b"back")
        assert await next_value(it) == b"back"
        await it.aclose()
    finally:
        raw.close()


async def test_watch_fails_over_to_next_endpoint(
    etcd: EtcdServer, make_store: StoreFactory, proxy: Proxy
) -> None:
    watcher = await make_store([proxy.endpoint, etcd.endpoint])
    writer = await make_store()
    assert watcher.current_endpoint == proxy.endpoint
    it = await primed_watch(watcher, "transitions/latest", writer)
    proxy.cut()  # for good: the first endpoint is gone
    await writer.set("transitions/latest", b"v1")
    assert await next_value(it) == b"v1"
    assert watcher.current_endpoint == etcd.endpoint
    assert await watcher.get("transitions/latest") == b"v1"
    await it.aclose()


async def test_calls_fail_over_to_next_endpoint(etcd: EtcdServer, make_store: StoreFactory) -> None:
    dead = f"127.0.0.1:{free_port()}"
    store = await make_store([dead, etcd.endpoint], timeout=1.0)
    await store.set("x/k", b"v")
    assert await store.get("x/k") == b"v"
    assert store.current_endpoint == etcd.endpoint
    assert store.endpoints == [dead, etcd.endpoint]


async def test_closing_or_cancelling_watch_leaves_no_threads(make_store: StoreFactory) -> None:
    store = await make_store()
    it = await primed_watch(store, "x/k")
    assert any(t.name == "concord-etcd-watch" for t in threading.enumerate())
    await it.aclose()

    it2 = await primed_watch(store, "x/k")
    task = asyncio.ensure_future(anext(it2))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    it3 = await primed_watch(store, "x/k")
    pending = asyncio.ensure_future(anext(it3))
    await store.close()  # ends the remaining watch
    with pytest.raises(StoreUnavailable, match="closed"):
        await pending
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.get("x/k")

    async def no_threads() -> bool:
        return not etcd_threads()

    await eventually(no_threads, timeout=5)


# -- outages ---------------------------------------------------------------------------------


async def test_calls_unavailable_when_etcd_down(etcd: EtcdServer, make_store: StoreFactory) -> None:
    store = await make_store(timeout=1.0)
    await store.set("x/k", b"v")
    etcd.stop()
    ops: list[Callable[[], Awaitable[object]]] = [
        lambda: store.get("x/k"),
        lambda: store.set("x/k", b"w"),
        lambda: store.has("x/k"),
        lambda: store.compare_and_swap("x/k", b"v", b"w"),
        lambda: store.list_members(),
        store.ping,
    ]
    for op in ops:
        async with asyncio.timeout(LIVENESS_S):  # gives up, never hangs
            with pytest.raises(StoreUnavailable, match="etcd unavailable"):
                await op()
    etcd.start()
    assert await retry(lambda: store.get("x/k")) == b"v"


async def test_calls_time_out_when_etcd_hangs(etcd: EtcdServer, make_store: StoreFactory) -> None:
    store = await make_store(timeout=1.0)
    await store.set("x/k", b"v")
    etcd.pause()
    try:
        for op in (lambda: store.get("x/k"), lambda: store.compare_and_swap("x/k", b"v", b"w")):
            start = time.monotonic()
            async with asyncio.timeout(LIVENESS_S):  # gives up, never hangs
                with pytest.raises(StoreUnavailable):
                    await op()
            # It waited for its 1 s timeout rather than failing at once (a lower bound only:
            # a slow machine can make it later, never earlier).
            assert time.monotonic() - start > 0.8
    finally:
        etcd.resume()
    assert await retry(lambda: store.get("x/k")) in (b"v", b"w")


@pytest.mark.parametrize("outage", ["stop", "pause"])
async def test_watch_raises_unavailable_when_etcd_unreachable(
    etcd: EtcdServer, make_store: StoreFactory, outage: str
) -> None:
    watcher = await make_store(timeout=1.0)
    it = await primed_watch(watcher, "transitions/latest")
    pending = asyncio.ensure_future(next_value(it, timeout=LIVENESS_S))
    await asyncio.sleep(0.1)
    start = time.monotonic()
    etcd.stop() if outage == "stop" else etcd.pause()
    try:
        with pytest.raises(StoreUnavailable):
            await pending
        elapsed = time.monotonic() - start
        assert elapsed > 0.9, elapsed  # noticed through its 1 s timeout, not at once
    finally:
        etcd.resume()
        etcd.start()
    # The caller restarts the watch once etcd is back.
    it2 = await retry(lambda: primed_watch(watcher, "transitions/latest"))
    await watcher.set("transitions/latest", b"again")
    assert await next_value(it2) == b"again"
    await it2.aclose()


# -- membership ------------------------------------------------------------------------------


async def test_member_reregisters_after_lease_lost(
    etcd: EtcdServer, make_store: StoreFactory, deployment: str
) -> None:
    store = await make_store()
    await store.put_member("m1", b"addr", ttl=2)
    raw = raw_client(etcd)
    try:
        _, meta = raw.get(f"/concord/{deployment}/members/m1")
        raw.revoke_lease(meta.lease_id)  # what an expiry during a long outage looks like
        assert await store.list_members() == {}

        async def back() -> bool:
            return await store.list_members() == {"m1": b"addr"}

        await eventually(back, timeout=5)
        _, meta2 = raw.get(f"/concord/{deployment}/members/m1")
        assert meta2.lease_id not in (0, meta.lease_id)
    finally:
        raw.close()


@pytest.mark.parametrize(
    ("member_id", "ttl"), [("M1", 5), ("a/b", 5), ("", 5), ("m", 0), ("m", 3601), ("m", True)]
)
async def test_bad_member_rejected(store: EtcdStore, member_id: str, ttl: int) -> None:
    with pytest.raises(StoreConfigError):
        await store.put_member(member_id, b"x", ttl)
    assert await store.list_members() == {}


# -- the etcd helper itself ------------------------------------------------------------------


def _port_free(port: int) -> bool:
    """Nobody listens on ``port`` (TIME_WAIT leftovers of closed connections don't count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_etcd_server_stops_its_process() -> None:
    assert find_etcd() is not None
    server = EtcdServer()
    with server:
        pid = server.pid
        assert pid is not None and _pid_alive(pid)
        assert server.healthy()
        server.pause()  # a paused process must still be stoppable
    assert not server.running
    assert not _pid_alive(pid)
    assert _port_free(server.client_port)
    assert not server.workdir.exists()
