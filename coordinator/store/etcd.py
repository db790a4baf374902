"""Store on etcd (DESIGN §8): several coordinators share one history.

Keys live under ``/concord/<deployment>/<key>``. python3-etcd3 is a blocking gRPC client, so
every call runs in this store's own small thread pool with a per-RPC deadline (``timeout``),
and every failure to reach etcd becomes :class:`StoreUnavailable`. With several endpoints the
store talks to one at a time, in the given order, and moves on to the next on connection errors.

``compare_and_swap`` is one etcd transaction (absent key: ``create_revision == 0``; otherwise
``value == old``). ``watch`` runs one etcd Watch stream per iterator in its own thread, feeding
an asyncio queue; it resumes from the last seen revision after stream errors, recovers from
compaction by reading the current value, and raises StoreUnavailable once etcd has been
unreachable for longer than ``timeout``. (The stream is driven directly through the etcd3
package's generated stubs: its ``Watcher`` helper loses stream errors in 0.13.0, which would
leave a watch hanging forever after an outage.)

Membership (DESIGN §8): ``put_member`` keeps ``members/<id>`` bound to a lease that a background
task refreshes; if the process dies the key disappears after the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, TypeVar

import etcd3
import etcd3.exceptions
import grpc
from etcd3 import etcdrpc

from coordinator.backoff import Backoff
from coordinator.store.base import (
    DELETED,
    ConcurrentUpdate,
    KeyNotFound,
    StoreAccessDenied,
    StoreError,
    StoreUnavailable,
    check_key,
    check_kind,
)

__all__ = [
    "DEPLOYMENT_RE",
    "EtcdStore",
    "InvalidDeployment",
    "InvalidEndpoint",
    "StoreConfigError",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEPLOYMENT_RE = re.compile(r"^[a-z0-9-]{1,63}$")
_MEMBER_ID_RE = re.compile(r"^[a-z0-9-]+$")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])$")

# Event types of mvccpb.Event.
_PUT = 0
_DELETE = 1

_WATCH_RETRY = Backoff(base=0.05, cap=0.5, factor=2.0, jitter=0.2)
"""Between attempts to re-open a failed watch stream, within the store timeout."""
_MAX_TTL = 3600

# Reconnect quickly after an etcd restart (gRPC's default back-off grows to two minutes) and
# notice a silent peer on long-lived watch streams. etcd refuses pings more often than every 5 s.
_GRPC_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
]

_ETCD_ERRORS: tuple[type[BaseException], ...] = (etcd3.exceptions.Etcd3Exception, grpc.RpcError)


class StoreConfigError(StoreError, ValueError):
    """The store was configured wrongly (names the parameter and why)."""

    reason = "invalid_store_config"


class InvalidDeployment(StoreConfigError):
    reason = "invalid_deployment"


class InvalidEndpoint(StoreConfigError):
    reason = "invalid_store_endpoint"


def _status(exc: BaseException) -> tuple[grpc.StatusCode | None, str] | None:
    """(code, details) of a gRPC error; None for anything else."""
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        details = exc.details() if hasattr(exc, "details") else ""
        return exc.code(), details or ""
    return None


def _describe(exc: BaseException) -> str:
    """A short reason for logs and errors: the gRPC code and etcd's message, never values."""
    status = _status(exc)
    if status is None:
        return str(exc) or type(exc).__name__
    code, details = status
    name = code.name if code is not None else "UNKNOWN"
    return f"{name}: {details}" if details else name


def _has_code(exc: BaseException, code: grpc.StatusCode) -> bool:
    status = _status(exc)
    return status is not None and status[0] == code


def _is_auth_error(exc: BaseException) -> bool:
    return _has_code(exc, grpc.StatusCode.UNAUTHENTICATED)


def _is_not_found(exc: BaseException) -> bool:
    return _has_code(exc, grpc.StatusCode.NOT_FOUND)


def _is_denied(exc: BaseException) -> bool:
    """Credentials or permissions refused. etcd reports a wrong password on Authenticate as
    INVALID_ARGUMENT "authentication failed"."""
    status = _status(exc)
    if status is None:
        return False
    code, details = status
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return True
    return code == grpc.StatusCode.INVALID_ARGUMENT and "authentication failed" in details


def _parse_endpoint(text: str) -> tuple[str, int]:
    if not isinstance(text, str):
        raise InvalidEndpoint(f"endpoint {text!r}: want a 'host:port' string")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not _HOST_RE.match(host) or not port.isdigit():
        raise InvalidEndpoint(f"endpoint {text!r}: want 'host:port' (no scheme, no path)")
    number = int(port)
    if not 0 < number < 65536:
        raise InvalidEndpoint(f"endpoint {text!r}: port out of range")
    return host, number


def _read_file(param: str, path: str | PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise StoreConfigError(f"{param}: cannot read {str(path)!r}: {exc.strerror}") from None


def _prefix_end(prefix: bytes) -> bytes:
    """etcd range end covering every key that starts with ``prefix``."""
    b = bytearray(prefix)
    for i in reversed(range(len(b))):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"


class _Conn:
    """One endpoint and its python3-etcd3 client, built lazily (authentication is an RPC)."""

    def __init__(
        self,
        host: str,
        port: int,
        creds: grpc.ChannelCredentials | None,
        timeout: float,
        user: str | None,
        password: str | None,
    ) -> None:
        self.label = f"{host}:{port}"
        self._host = host
        self._port = port
        self._creds = creds
        self._timeout = timeout
        self._user = user
        self._password = password
        self._lock = threading.Lock()
        self._client: Any = None

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                # time_retry=0: the library never marks the endpoint failed; failover is ours.
                ep = etcd3.Endpoint(
                    self._host,
                    self._port,
                    secure=self._creds is not None,
                    creds=self._creds,
                    time_retry=0,
                    opts=_GRPC_OPTIONS,
                )
                try:
                    self._client = etcd3.MultiEndpointEtcd3Client(
                        endpoints=[ep],
                        timeout=self._timeout,
                        user=self._user,
                        password=self._password,
                    )
                except BaseException:
                    ep.close()
                    raise
            return self._client

    def reset(self) -> None:
        """Drop the client (e.g. an expired auth token): the next call authenticates again."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def close(self) -> None:
        self.reset()


class _StreamFailed:
    def __init__(self, reason: str) -> None:
        self.reason = reason


_CLOSED = object()


class _Stream:
    """One etcd Watch RPC, driven by its own thread; responses go to an asyncio queue."""

    def __init__(
        self,
        conn: _Conn,
        key: bytes,
        range_end: bytes | None,
        start_revision: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.conn = conn
        self.created = False
        self.started_at = time.monotonic()
        self._loop = loop
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        create = etcdrpc.WatchCreateRequest(
            key=key, range_end=range_end or b"", start_revision=start_revision
        )
        self._request = etcdrpc.WatchRequest(create_request=create)
        self._thread = threading.Thread(target=self._run, name="concord-etcd-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _requests(self) -> Iterator[Any]:
        yield self._request
        self._stop.wait()  # keep the stream open until stop(); then half-close

    def _run(self) -> None:
        try:
            client = self.conn.client()
            stub = etcdrpc.WatchStub(client.channel)
            call = stub.Watch(
                self._requests(),
                credentials=client.call_credentials,
                metadata=client.metadata,
            )
            with self._lock:
                self._call = call
                stopped = self._stop.is_set()
            if stopped:
                call.cancel()
            for response in call:
                self._emit(response)
            self._emit(_StreamFailed("watch stream ended"))
        except _ETCD_ERRORS as exc:
            if _is_auth_error(exc):
                self.conn.reset()
            if not self._stop.is_set():
                self._emit(_StreamFailed(_describe(exc)))
        except Exception as exc:  # e.g. the channel was closed under us
            self._emit(_StreamFailed(type(exc).__name__))
        finally:
            self._stop.set()

    def _emit(self, item: object) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: nobody listens any more
            self._loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    def close_queue(self) -> None:
        """Wake the consumer: the store is closing."""
        self.queue.put_nowait(_CLOSED)

    async def join(self) -> None:
        deadline = time.monotonic() + 5.0
        while self._thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


class _RevisionWatch:
    """Events of a key or range from ``next_rev`` on, across stream failures and restarts."""

    def __init__(
        self,
        store: EtcdStore,
        key: bytes,
        range_end: bytes | None,
        start_revision: int,
        label: str,
    ) -> None:
        self.next_rev = start_revision
        self._store = store
        self._key = key
        self._range_end = range_end
        self._label = label
        self._stream: _Stream | None = None
        self._fail_since: float | None = None
        self._attempt = 0
        self._suspect: int | None = None
        self._closed = False

    async def next(self) -> list[Any] | None:
        """The next non-empty batch of events, or None after compaction: the caller then
        re-reads the current state and calls :meth:`reset`."""
        store = self._store
        while True:
            if self._closed or store.closed:
                raise StoreUnavailable("etcd store closed")
            stream = self._stream
            if stream is None:
                stream = self._stream = store._open_stream(
                    self._key, self._range_end, self.next_rev
                )
            try:
                item = await asyncio.wait_for(stream.queue.get(), store._probe_interval)
            except TimeoutError:
                await self._idle(stream)
                continue
            if item is _CLOSED:
                raise StoreUnavailable("etcd store closed")
            if isinstance(item, _StreamFailed):
                await self._failed(item.reason)
                continue
            response: Any = item
            if response.compact_revision:
                log.info("etcd watch on %s: revision %d compacted", self._label, self.next_rev)
                await self._drop_stream()
                return None
            if response.canceled:
                await self._failed(f"watch canceled: {response.cancel_reason or 'no reason'}")
                continue
            if response.created:
                stream.created = True
                self._fail_since = None
                self._attempt = 0
            if response.events:
                last = max(ev.kv.mod_revision for ev in response.events)
                self.next_rev = max(self.next_rev, last + 1)
                return list(response.events)

    async def reset(self, start_revision: int) -> None:
        await self._drop_stream()
        self.next_rev = start_revision
        self._suspect = None

    async def _idle(self, stream: _Stream) -> None:
        """Nothing arrived for a while: check that etcd is there and the stream not stuck."""
        store = self._store
        now = time.monotonic()
        if not stream.created:
            if now - stream.started_at >= store.timeout:
                self._fail_since = min(self._fail_since or stream.started_at, stream.started_at)
                await self._failed("watch not established in time")
            return
        started = time.monotonic()
        try:
            latest = await store._max_mod_revision(self._key, self._range_end)
        except StoreUnavailable as exc:
            if self._fail_since is None:
                self._fail_since = started
            if time.monotonic() - self._fail_since >= store.timeout:
                await self._drop_stream()
                raise StoreUnavailable(f"etcd unreachable while watching {self._label}: {exc}")
            return
        self._fail_since = None
        if self._suspect is not None and self.next_rev <= self._suspect:
            # A write seen one idle period ago has still not come through: restart the stream.
            log.warning("etcd watch on %s stalled; restarting it", self._label)
            await self._drop_stream()
            self._suspect = None
            return
        self._suspect = latest if latest >= self.next_rev else None

    async def _failed(self, reason: str) -> None:
        stream = self._stream
        await self._drop_stream()
        if stream is not None:
            self._store._failover(stream.conn)
        now = time.monotonic()
        if self._fail_since is None:
            self._fail_since = now
        elapsed = now - self._fail_since
        if elapsed >= self._store.timeout:
            raise StoreUnavailable(
                f"etcd watch on {self._label} failing for {elapsed:.1f}s: {reason}"
            )
        log.debug("etcd watch on %s: %s; retrying", self._label, reason)
        self._attempt += 1
        await asyncio.sleep(min(_WATCH_RETRY.delay(self._attempt), self._store.timeout - elapsed))

    async def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.stop()
            await stream.join()

    def shutdown(self) -> None:
        """Called by the store's close(): stop the stream and wake the consumer."""
        self._closed = True
        stream = self._stream
        if stream is not None:
            stream.stop()
            stream.close_queue()

    async def aclose(self) -> None:
        self._closed = True
        await self._drop_stream()


@dataclass
class _Member:
    key: str
    value: bytes
    ttl: int
    lease_id: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None


class EtcdStore:
    """:class:`coordinator.store.base.Store` on etcd, plus lease-bound membership keys."""

    def __init__(self, conns: Sequence[_Conn], deployment: str, timeout: float) -> None:
        """Use :meth:`connect`."""
        self.deployment = deployment
        self.timeout = timeout
        self.prefix = f"/concord/{deployment}/"
        self.closed = False
        self._conns = list(conns)
        self._current = 0
        self._lock = threading.Lock()
        self._probe_interval = max(0.05, min(timeout, 10.0) / 2)
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="concord-etcd")
        self._watches: set[_RevisionWatch] = set()
        self._members: dict[str, _Member] = {}
        # Highest etcd revision any read of ours has seen; a watch opened now starts right after
        # it, so a write landing between ``watch()`` and the caller's next read is never missed.
        self._revision_seen: int | None = None

    @classmethod
    async def connect(
        cls,
        endpoints: Sequence[str],
        deployment: str,
        *,
        timeout: float = 5.0,
        ca_cert: str | PathLike[str] | None = None,
        cert_key: str | PathLike[str] | None = None,
        cert_cert: str | PathLike[str] | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> EtcdStore:
        """Validate the configuration and check that one endpoint answers.

        ``endpoints`` are ``host:port``; TLS is on when ``ca_cert`` is given (plus a client
        certificate with ``cert_key`` and ``cert_cert``). ``timeout`` bounds every RPC attempt
        and how long a watch tolerates an unreachable etcd.
        """
        if not isinstance(deployment, str) or not DEPLOYMENT_RE.match(deployment):
            raise InvalidDeployment(f"deployment {deployment!r}: want 1-63 characters of [a-z0-9-]")
        if isinstance(endpoints, str | bytes) or not endpoints:
            raise InvalidEndpoint("endpoints: want a non-empty sequence of 'host:port'")
        parsed = [_parse_endpoint(e) for e in endpoints]
        if len(set(parsed)) != len(parsed):
            raise InvalidEndpoint("endpoints: duplicate endpoint")
        if not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0:
            raise StoreConfigError(f"timeout {timeout!r}: want a positive number of seconds")
        if (cert_key is None) != (cert_cert is None):
            raise StoreConfigError("cert_key and cert_cert: give both or neither")
        if cert_key is not None and ca_cert is None:
            raise StoreConfigError("cert_key/cert_cert: a client certificate needs ca_cert (TLS)")
        if (user is None) != (password is None):
            raise StoreConfigError("user and password: give both or neither")
        if user is not None and ca_cert is None:
            raise StoreConfigError("user/password: refusing to send credentials without TLS")
        creds: grpc.ChannelCredentials | None = None
        if ca_cert is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read_file("ca_cert", ca_cert),
                private_key=_read_file("cert_key", cert_key) if cert_key is not None else None,
                certificate_chain=(
                    _read_file("cert_cert", cert_cert) if cert_cert is not None else None
                ),
            )
        conns = [_Conn(h, p, creds, float(timeout), user, password) for h, p in parsed]
        store = cls(conns, deployment, float(timeout))
        try:
            await store.ping()
        except BaseException:
            await store.close()
            raise
        return store

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        return [c.label for c in self._conns]

    @property
    def current_endpoint(self) -> str:
        """The endpoint the next call goes to first."""
        return self._conns[self._current].label

    def _full(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _failover(self, conn: _Conn) -> None:
        """``conn`` failed: if it is the current endpoint, the next one in order becomes it."""
        with self._lock:
            if self._conns[self._current] is conn:
                self._current = (self._current + 1) % len(self._conns)

    def _call_sync(self, op: Callable[[Any], T], idempotent: bool) -> T:
        with self._lock:
            start = self._current
        n = len(self._conns)
        reason = "no attempt"
        denied = False
        for i in range(n if idempotent else 1):
            conn = self._conns[(start + i) % n]
            for reauth in (False, True):
                try:
                    result = op(conn.client())
                except _ETCD_ERRORS as exc:
                    reason = f"{conn.label}: {_describe(exc)}"
                    denied = _is_denied(exc)
                    if _is_auth_error(exc) and not reauth:
                        # An expired token was refused before anything ran: log in again.
                        conn.reset()
                        continue
                    self._failover(conn)
                    break
                with self._lock:
                    self._current = (start + i) % n
                return result
        if denied:
            raise StoreAccessDenied(f"etcd refused access ({reason})")
        raise StoreUnavailable(f"etcd unavailable ({reason})")

    async def _call(self, op: Callable[[Any], T], *, idempotent: bool = True) -> T:
        if self.closed:
            raise StoreUnavailable("etcd store closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call_sync, op, idempotent)

    def _open_stream(self, key: bytes, range_end: bytes | None, start_revision: int) -> _Stream:
        with self._lock:
            conn = self._conns[self._current]
        stream = _Stream(conn, key, range_end, start_revision, asyncio.get_running_loop())
        stream.start()
        return stream

    async def _max_mod_revision(self, key: bytes, range_end: bytes | None) -> int:
        def op(c: Any) -> int:
            r = c.get_response(
                key,
                range_end=range_end,
                sort_order="descend" if range_end else None,
                sort_target="mod",
                limit=1,
                keys_only=True,
            )
            return int(r.kvs[0].mod_revision) if r.kvs else 0

        return await self._call(op)

    # -- Store -------------------------------------------------------------------------------

    def _saw(self, response: Any) -> Any:
        revision = int(response.header.revision)
        if self._revision_seen is None or revision > self._revision_seen:
            self._revision_seen = revision
        return response

    async def ping(self) -> None:
        """A linearizable read: raises StoreUnavailable unless etcd has a working quorum."""
        probe = self.prefix + "ping"
        self._saw(await self._call(lambda c: c.get_response(probe, count_only=True)))

    async def get(self, key: str) -> bytes:
        full = self._full(key)
        response = self._saw(await self._call(lambda c: c.get_response(full)))
        if not response.kvs:
            raise KeyNotFound(key)
        return bytes(response.kvs[0].value)

    async def set(self, key: str, value: bytes) -> None:
        full = self._full(key)
        data = bytes(value)
        self._saw(await self._call(lambda c: c.put(full, data)))

    async def has(self, key: str) -> bool:
        full = self._full(key)
        response = self._saw(await self._call(lambda c: c.get_response(full, count_only=True)))
        return int(response.count) > 0

    async def has_any(self, kind: str) -> bool:
        prefix = (self.prefix + check_kind(kind) + "/").encode()
        end = _prefix_end(prefix)
        response = self._saw(
            await self._call(lambda c: c.get_response(prefix, range_end=end, count_only=True))
        )
        return int(response.count) > 0

    async def compare_and_swap(self, key: str, old: bytes, new: bytes) -> None:
        full = self._full(key)
        old_b, new_b = bytes(old), bytes(new)

        def op(c: Any) -> bool:
            t = c.transactions
            compare = t.create(full) == 0 if old_b == b"" else t.value(full) == old_b
            succeeded, responses = c.transaction(
                compare=[compare], success=[t.put(full, new_b)], failure=[]
            )
            if succeeded and responses:
                self._saw(responses[0].response_put)
            return bool(succeeded)

        # Not retried on another endpoint: after a lost reply the outcome is unknown.
        if not await self._call(op, idempotent=False):
            raise ConcurrentUpdate(f"compare-and-swap of {key} lost: the value changed")

    def watch(self, key: str) -> AsyncIterator[bytes]:
        """New values of ``key``, and DELETED when it is deleted (etcd reports deletions; after
        a compaction the current value is compared with the last one seen, so a key that went
        away meanwhile is reported too; one gap is etcd's: a delete compacted at exactly its own
        revision while the stream was down leaves neither event nor compaction error, so it goes
        unreported until the next value). The stream itself opens on first iteration, but it starts
        right after the newest revision this store had seen when ``watch()`` was called, so it
        covers every write from then on (an older value may be replayed; consumers of ``latest``
        are idempotent)."""
        check_key(key)
        return self._watch_key(key, self._revision_seen)

    async def _watch_key(self, key: str, floor: int | None) -> AsyncIterator[bytes]:
        full = self._full(key)
        response = self._saw(await self._call(lambda c: c.get_response(full)))
        last = bytes(response.kvs[0].value) if response.kvs else None
        start = int(response.header.revision) + 1
        if floor is not None and floor + 1 < start:
            start, last = floor + 1, None  # replay what was written since watch() was called
        watch = _RevisionWatch(self, full.encode(), None, start, key)
        self._watches.add(watch)
        try:
            while True:
                events = await watch.next()
                if events is None:  # compacted: continue from the current value
                    response = await self._call(lambda c: c.get_response(full))
                    current = bytes(response.kvs[0].value) if response.kvs else None
                    await watch.reset(response.header.revision + 1)
                    changed = current != last
                    last = current
                    if changed:
                        yield DELETED if current is None else current
                    continue
                for event in events:
                    if event.type == _DELETE:
                        last = None
                        yield DELETED
                        continue
                    last = bytes(event.kv.value)
                    yield last
        finally:
            self._watches.discard(watch)
            await watch.aclose()

    # -- membership (DESIGN §8) --------------------------------------------------------------

    def _member_key(self, member_id: str) -> str:
        if not isinstance(member_id, str) or not _MEMBER_ID_RE.match(member_id):
            raise StoreConfigError(f"member id {member_id!r}: want [a-z0-9-]+")
        return self._full(f"members/{member_id}")

    @staticmethod
    def _register_sync(c: Any, full: str, value: bytes, ttl: int, lease_id: int | None) -> int:
        if lease_id is not None:
            try:
                c.put(full, value, lease=lease_id)
                return lease_id
            except grpc.RpcError as exc:
                if not _is_not_found(exc):  # lease gone: grant a new one below
                    raise
        lease = c.lease(ttl)
        c.put(full, value, lease=lease.id)
        return int(lease.id)

    @staticmethod
    def _refresh_sync(c: Any, lease_id: int) -> int:
        responses = list(c.refresh_lease(lease_id))
        return int(responses[0].TTL) if responses else 0

    @staticmethod
    def _revoke_sync(c: Any, lease_id: int) -> None:
        try:
            c.revoke_lease(lease_id)
        except grpc.RpcError as exc:
            if not _is_not_found(exc):
                raise

    async def put_member(self, member_id: str, value: bytes, ttl: int) -> None:
        """Publish ``members/<member_id>`` bound to a lease of ``ttl`` seconds and keep it alive
        (refreshed every ttl/3; re-registered if the lease expired during an outage). Calling
        it again updates the value. etcd rounds TTLs up to its minimum (1-2 s)."""
        full = self._member_key(member_id)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= _MAX_TTL:
            raise StoreConfigError(f"ttl {ttl!r}: want whole seconds in 1..{_MAX_TTL}")
        data = bytes(value)
        member = self._members.get(member_id)
        if member is None:
            lease_id = await self._call(lambda c: self._register_sync(c, full, data, ttl, None))
            if member_id in self._members:  # a concurrent put_member won the race
                await self._call(lambda c: self._revoke_sync(c, lease_id))
                return await self.put_member(member_id, value, ttl)
            member = _Member(full, data, ttl, lease_id)
            self._members[member_id] = member
            member.task = asyncio.create_task(
                self._keepalive(member_id, member), name=f"etcd-member-{member_id}"
            )
            return None
        async with member.lock:
            keep = member.lease_id if member.ttl == ttl else None
            lease_id = await self._call(lambda c: self._register_sync(c, full, data, ttl, keep))
            old, member.lease_id, member.value, member.ttl = member.lease_id, lease_id, data, ttl
        if old != lease_id:
            with contextlib.suppress(StoreUnavailable):
                await self._call(lambda c: self._revoke_sync(c, old))
        return None

    async def _keepalive(self, member_id: str, member: _Member) -> None:
        while True:
            await asyncio.sleep(max(member.ttl / 3, 0.2))
            async with member.lock:
                try:
                    await self._refresh_member(member_id, member)
                except StoreUnavailable as exc:
                    log.warning("membership keep-alive of %s failed: %s", member_id, exc)

    async def _refresh_member(self, member_id: str, member: _Member) -> None:
        lease_id = member.lease_id
        left = await self._call(lambda c: self._refresh_sync(c, lease_id))
        if left > 0:
            return
        key, value, ttl = member.key, member.value, member.ttl
        member.lease_id = await self._call(lambda c: self._register_sync(c, key, value, ttl, None))
        log.warning("membership lease of %s had expired; re-registered", member_id)

    async def stop_member(self, member_id: str, *, revoke: bool = True) -> None:
        """Stop keeping ``members/<member_id>`` alive. ``revoke`` deletes it now (a clean
        leave); otherwise it disappears when its lease runs out, as after a crash."""
        member = self._members.pop(member_id, None)
        if member is None:
            return
        if member.task is not None:
            member.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await member.task
        if revoke:
            lease_id = member.lease_id
            await self._call(lambda c: self._revoke_sync(c, lease_id))

    async def list_members(self) -> dict[str, bytes]:
        """Live members: id -> value."""
        members, _ = await self._members_snapshot()
        return members

    async def _members_snapshot(self) -> tuple[dict[str, bytes], int]:
        prefix = (self.prefix + "members/").encode()
        end = _prefix_end(prefix)
        response = await self._call(lambda c: c.get_response(prefix, range_end=end))
        members: dict[str, bytes] = {}
        for kv in response.kvs:
            member_id = self._member_id(kv.key, prefix)
            if member_id is not None:
                members[member_id] = bytes(kv.value)
        return members, int(response.header.revision)

    @staticmethod
    def _member_id(key: bytes, prefix: bytes) -> str | None:
        suffix = bytes(key)[len(prefix) :]
        try:
            text = suffix.decode("ascii")
        except UnicodeDecodeError:
            return None
        return text if _MEMBER_ID_RE.match(text) else None

    async def watch_members(self) -> AsyncGenerator[dict[str, bytes], None]:
        """The member set now, then again after every change (same failure rules as watch)."""
        prefix = (self.prefix + "members/").encode()
        members, revision = await self._members_snapshot()
        yield dict(members)
        watch = _RevisionWatch(self, prefix, _prefix_end(prefix), revision + 1, "members/")
        self._watches.add(watch)
        try:
            while True:
                events = await watch.next()
                if events is None:  # compacted: start over from a fresh listing
                    current, revision = await self._members_snapshot()
                    await watch.reset(revision + 1)
                else:
                    current = dict(members)
                    for event in events:
                        member_id = self._member_id(event.kv.key, prefix)
                        if member_id is None:
                            continue
                        if event.type == _DELETE:
                            current.pop(member_id, None)
                        else:
                            current[member_id] = bytes(event.kv.value)
                if current != members:
                    members = current
                    yield dict(members)
        finally:
            self._watches.discard(watch)
            await watch.aclose()

    # -- shutdown ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Revoke membership leases (best effort), end watches, release threads and channels."""
        if self.closed:
            return
        for member_id in list(self._members):
            try:
                await self.stop_member(member_id, revoke=True)
            except StoreUnavailable as exc:
                log.warning("could not revoke membership of %s: %s", member_id, exc)
        self.closed = True
        watches = list(self._watches)
        for watch in watches:
            watch.shutdown()
        for watch in watches:
            await watch.aclose()
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: self._executor.shutdown(wait=True)
        )
        for conn in self._conns:
            conn.close()
