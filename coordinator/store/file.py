"""The embedded default store: one directory on a local filesystem (``file:DIR``, DESIGN §11).

Layout: key ``<a>/<b>`` is the file ``DIR/<a>/<b>``; ``DIR/.lock`` carries an exclusive
``flock`` for the lifetime of the store, so exactly one live :class:`FileStore` (in any process)
owns the directory. Because of that single writer, compare-and-swap needs only an in-process lock
and watchers are fed in-process. The kernel drops the flock when its holder dies (even on
SIGKILL), so a crashed coordinator never blocks its own restart.

Durability: every write goes to a temp file (``.tmp-*``, never a valid key name) in the target
directory, is fsynced, renamed over the key with :func:`os.replace` and the directory is fsynced.
A reader therefore sees the old or the new value, never a torn one. Temp files left by a crash are
ignored by reads and removed on the next :meth:`FileStore.open`.

Threading: writes (two fsyncs each) run in a worker thread via :func:`asyncio.to_thread`. Reads
(``get``/``has``) call the filesystem directly on the event loop: values are small (a 64-byte
transition, a ~100-byte ``latest``, manifests of a few KiB), normally served from the page cache,
and the history layer caches immutable blobs, so a thread hop would cost more than the read.

Deletions: the store itself never deletes, but whoever can write the directory can (DESIGN §12).
A watch checks every ``poll_interval`` seconds, while its consumer waits, whether the key file
it last saw has gone, and then yields :data:`~coordinator.store.base.DELETED`.

Filesystem: use a local filesystem (flock over NFS is not a reliable mutual exclusion).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import secrets
import stat
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from coordinator.store.base import (
    DELETED,
    KEY_RE,
    KIND_RE,
    ConcurrentUpdate,
    InvalidKey,
    KeyNotFound,
    StoreLocked,
    StoreUnavailable,
    check_key,
    check_kind,
)

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "DIR_MODE",
    "FILE_MODE",
    "LOCK_NAME",
    "TEMP_PREFIX",
    "FileStore",
]

DIR_MODE = 0o700
FILE_MODE = 0o600
LOCK_NAME = ".lock"
TEMP_PREFIX = ".tmp-"
DEFAULT_POLL_INTERVAL = 1.0
"""Seconds between a waiting watch's checks for a deleted key file (one lstat each)."""

_T = TypeVar("_T")


def _check_key(key: str) -> str:
    """base.check_key plus ``fullmatch``: ``$`` in KEY_RE also matches before a final newline,
    and ``a/b\\n`` must not become a file name."""
    check_key(key)
    if not KEY_RE.fullmatch(key):
        raise InvalidKey(f"invalid store key {key!r}: want '<name>/<name>' with [a-z0-9-]")
    return key


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir_private(path: Path) -> bool:
    """Create ``path`` with mode 0700 (exactly, whatever the umask); False if it existed."""
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", str(path))
        return False
    os.chmod(path, DIR_MODE)
    return True


def _read_holder(fd: int) -> str:
    """Best-effort pid written by the lock holder, for the error message only."""
    try:
        raw = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return raw if raw.isdigit() else ""


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a regular file (not followed if a symlink); errors count as absent."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class _Watch:
    """Async iterator over values of one key written after it was created, and DELETED when
    the key file disappears.

    Registered eagerly (at :meth:`FileStore.watch` call time, not on the first ``__anext__``),
    so ``w = store.watch(k); await store.set(k, v)`` always delivers ``v``. The store keeps only
    a weak reference: an abandoned watch is garbage-collected instead of queueing forever.
    """

    def __init__(self, store: FileStore, key: str, path: Path) -> None:
        self._store = store
        self._key = key
        self._path = path
        # ``None`` marks the end (store closed or watch closed); values are always bytes.
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._done = False
        # Whether the key file existed at the last look: a deletion is a present -> absent step.
        self._present = _is_file(path)

    def _push(self, value: bytes | None) -> None:
        if not self._done:
            self._queue.put_nowait(value)

    def __aiter__(self) -> _Watch:
        return self

    async def __anext__(self) -> bytes:
        while not self._done:
            try:
                async with asyncio.timeout(self._store.poll_interval):
                    value = await self._queue.get()
            except TimeoutError:
                present, self._present = self._present, _is_file(self._path)
                if present and not self._present:
                    return DELETED
                continue
            if value is None:
                self._done = True
                self._store._unwatch(self._key, self)
                break
            self._present = True
            return value
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop watching; later ``__anext__`` calls end the iteration."""
        if not self._done:
            self._done = True
            self._store._unwatch(self._key, self)


class FileStore:
    """:class:`~coordinator.store.base.Store` on a local directory. Build it with :meth:`open`."""

    def __init__(
        self, root: Path, lock_fd: int, poll_interval: float = DEFAULT_POLL_INTERVAL
    ) -> None:
        """Internal: use :meth:`FileStore.open`, which takes the directory lock."""
        self.poll_interval = poll_interval
        self._root = root
        self._lock_fd: int | None = lock_fd
        self._closed = False
        # The asyncio lock queues writers on the loop (one worker thread busy at a time); the
        # threading lock is what makes read-compare-write atomic: it is held inside the worker
        # thread, so a cancelled caller (whose thread keeps running) cannot let a second write
        # overlap the first.
        self._alock = asyncio.Lock()
        self._tlock = threading.Lock()
        self._known_dirs: set[str] = set()
        self._watchers: dict[str, weakref.WeakSet[_Watch]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> FileStore:
        """Open (creating with mode 0700 if missing) and lock ``directory``.

        Synchronous: it is called once at start-up and does only a few quick syscalls. An
        existing directory keeps its mode. Raises :class:`StoreLocked` when another live
        FileStore (this process or another) holds the directory, :class:`StoreUnavailable` when
        it cannot be created or opened. ``poll_interval``: see :data:`DEFAULT_POLL_INTERVAL`.
        """
        if not poll_interval > 0:
            raise ValueError(f"poll_interval {poll_interval!r}: want a positive number of seconds")
        root = Path(os.path.abspath(os.fspath(directory)))
        try:
            root.parent.mkdir(parents=True, exist_ok=True)
            _mkdir_private(root)
            lock_fd = os.open(
                root / LOCK_NAME,
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                FILE_MODE,
            )
        except OSError as exc:
            raise StoreUnavailable(f"cannot open file store {root}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(lock_fd)
            os.close(lock_fd)
            if holder == str(os.getpid()):
                who = "another FileStore in this process"
            elif holder:
                who = f"another live process (pid {holder})"
            else:
                who = "another live process"
            raise StoreLocked(
                f"file store directory {root} is locked by {who}; "
                "one coordinator may serve a store directory at a time"
            ) from None
        except OSError as exc:
            os.close(lock_fd)
            raise StoreUnavailable(f"cannot lock file store {root}: {exc.strerror}") from exc
        try:
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
            cls._remove_temp_files(root)
        except OSError as exc:
            os.close(lock_fd)  # also drops the flock
            raise StoreUnavailable(f"cannot prepare file store {root}: {exc.strerror}") from exc
        return cls(root, lock_fd, poll_interval)

    @staticmethod
    def _remove_temp_files(root: Path) -> None:
        """Drop ``.tmp-*`` leftovers of writes interrupted by a crash (we hold the lock)."""
        for sub in root.iterdir():
            if sub.name.startswith(".") or not sub.is_dir() or sub.is_symlink():
                continue
            removed = False
            for entry in sub.iterdir():
                if entry.name.startswith(TEMP_PREFIX):
                    entry.unlink(missing_ok=True)
                    removed = True
            if removed:
                _fsync_dir(sub)

    @property
    def directory(self) -> Path:
        """The absolute store directory."""
        return self._root

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Wait for an in-flight write, release the directory lock and end all watches.

        Idempotent. Every operation after it raises :class:`StoreUnavailable`: once the lock is
        gone another process may own the directory.
        """
        if self._closed:
            return
        async with self._alock:
            await asyncio.to_thread(self._close_sync)
        for watchers in list(self._watchers.values()):
            for w in list(watchers):
                w._push(None)
        self._watchers.clear()

    def _close_sync(self) -> None:
        with self._tlock:
            self._closed = True
            fd, self._lock_fd = self._lock_fd, None
            if fd is not None:
                os.close(fd)  # closing the only descriptor drops the flock

    async def __aenter__(self) -> FileStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"file store {self._root} is closed")

    # -- paths and raw I/O -------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        _check_key(key)
        sub, name = key.split("/")
        return self._root / sub / name

    def _read(self, key: str, path: Path) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise KeyNotFound(key) from None
        except OSError as exc:
            raise StoreUnavailable(
                f"file store {self._root}: reading {key}: {exc.strerror}"
            ) from exc
        try:
            with open(fd, "rb", closefd=True) as f:
                return f.read()
        except OSError as exc:
            raise StoreUnavailable(
                f"file store {self._root}: reading {key}: {exc.strerror}"
            ) from exc

    def _ensure_subdir(self, sub: Path) -> None:
        if sub.name in self._known_dirs:
            return
        if _mkdir_private(sub):
            _fsync_dir(self._root)
        self._known_dirs.add(sub.name)

    def _write_atomic(self, path: Path, value: bytes) -> None:
        """temp file + fsync + rename + fsync(dir): the key holds the old or the new value."""
        sub = path.parent
        self._ensure_subdir(sub)
        tmp = sub / f"{TEMP_PREFIX}{path.name}-{secrets.token_hex(8)}"
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
            FILE_MODE,
        )
        try:
            try:
                os.fchmod(fd, FILE_MODE)  # exact mode whatever the umask
                view = memoryview(value)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(sub)

    def _post(self, loop: asyncio.AbstractEventLoop, key: str, value: bytes) -> None:
        """Queue the watcher notification from the worker thread, still inside the write lock,
        so notifications keep write order and are not lost when the writer is cancelled."""
        if key in self._watchers:
            with contextlib.suppress(RuntimeError):  # loop already closed: nobody to tell
                loop.call_soon_threadsafe(self._notify, key, value)

    def _notify(self, key: str, value: bytes) -> None:
        for w in list(self._watchers.get(key, ())):
            w._push(value)

    def _unwatch(self, key: str, w: _Watch) -> None:
        watchers = self._watchers.get(key)
        if watchers is not None:
            watchers.discard(w)
            if not watchers:
                del self._watchers[key]

    async def _run_write(self, fn: Callable[[], _T]) -> _T:
        async with self._alock:
            self._check_open()
            return await asyncio.to_thread(fn)

    # -- Store protocol ----------------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        """Value of ``key``; :class:`KeyNotFound` when absent."""
        path = self._path(key)
        self._check_open()
        return self._read(key, path)

    async def has(self, key: str) -> bool:
        path = self._path(key)
        self._check_open()
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise StoreUnavailable(
                f"file store {self._root}: checking {key}: {exc.strerror}"
            ) from exc
        return stat.S_ISREG(st.st_mode)

    async def has_any(self, kind: str) -> bool:
        directory = self._root / check_kind(kind)
        self._check_open()
        try:
            with os.scandir(directory) as entries:
                return any(
                    e.is_file(follow_symlinks=False) and KIND_RE.fullmatch(e.name) is not None
                    for e in entries
                )
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise StoreUnavailable(
                f"file store {self._root}: listing {kind}: {exc.strerror}"
            ) from exc

    async def set(self, key: str, value: bytes) -> None:
        path = self._path(key)
        data = bytes(value)
        loop = asyncio.get_running_loop()

        def work() -> None:
            with self._tlock:
                self._check_open()
                try:
                    self._write_atomic(path, data)
                except OSError as exc:
                    raise StoreUnavailable(
                        f"file store {self._root}: writing {key}: {exc.strerror or exc}"
                    ) from exc
                self._post(loop, key, data)

        await self._run_write(work)

    async def compare_and_swap(self, key: str, old: bytes, new: bytes) -> None:
        """Set ``key`` to ``new`` iff it holds ``old`` (missing equals ``b""``).

        :class:`ConcurrentUpdate` on mismatch, leaving the key unchanged.
        """
        path = self._path(key)
        expected, data = bytes(old), bytes(new)
        loop = asyncio.get_running_loop()

        def work() -> None:
            with self._tlock:
                self._check_open()
                try:
                    current = self._read(key, path)
                except KeyNotFound:
                    current = b""
                if current != expected:
                    # Values stay out of the message: they may be sensitive.
                    raise ConcurrentUpdate(
                        f"compare_and_swap on {key}: the current value is not the expected one"
                    )
                try:
                    self._write_atomic(path, data)
                except OSError as exc:
                    raise StoreUnavailable(
                        f"file store {self._root}: writing {key}: {exc.strerror or exc}"
                    ) from exc
                self._post(loop, key, data)

        await self._run_write(work)

    def watch(self, key: str) -> AsyncIterator[bytes]:
        """Values of ``key`` written after this call, in write order (not the current value),
        and DELETED when someone removes the key file (noticed within ``poll_interval``).

        Ends when the store closes. Raises :class:`InvalidKey` at once for a bad key and
        :class:`StoreUnavailable` if the store is closed.
        """
        _check_key(key)
        self._check_open()
        w = _Watch(self, key, self._path(key))
        self._watchers.setdefault(key, weakref.WeakSet()).add(w)
        return w
