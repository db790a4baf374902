"""FileStore: Store semantics, file modes, atomic writes, locking in-process, watches."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from coordinator.store.base import (
    ConcurrentUpdate,
    InvalidKey,
    KeyNotFound,
    Store,
    StoreLocked,
    StoreUnavailable,
)
from coordinator.store.file import LOCK_NAME, TEMP_PREFIX, FileStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FileStore]:
    s = FileStore.open(tmp_path / "store")
    try:
        yield s
    finally:
        await s.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


async def _next(it: AsyncIterator[bytes]) -> bytes:
    return await asyncio.wait_for(it.__anext__(), timeout=5)


# -- basic semantics ----------------------------------------------------------------------------


async def test_is_a_store(store: FileStore) -> None:
    assert isinstance(store, Store)


async def test_get_set_has_roundtrip(store: FileStore) -> None:
    assert not await store.has("manifests/abc")
    await store.set("manifests/abc", b"\x00hello\xff")
    assert await store.has("manifests/abc")
    assert await store.get("manifests/abc") == b"\x00hello\xff"
    await store.set("manifests/abc", b"second")
    assert await store.get("manifests/abc") == b"second"
    assert (store.directory / "manifests" / "abc").read_bytes() == b"second"


async def test_empty_value_roundtrip(store: FileStore) -> None:
    await store.set("members/a", b"")
    assert await store.has("members/a")
    assert await store.get("members/a") == b""


async def test_get_missing_raises_key_not_found(store: FileStore) -> None:
    with pytest.raises(KeyNotFound) as info:
        await store.get("transitions/latest")
    assert info.value.key == "transitions/latest"
    # a missing sub-directory and a missing file in an existing one behave the same
    await store.set("transitions/other", b"x")
    with pytest.raises(KeyNotFound):
        await store.get("transitions/latest")


async def test_values_survive_reopen(tmp_path: Path) -> None:
    s = FileStore.open(tmp_path)
    await s.set("policies/p1", b"policy")
    await s.compare_and_swap("transitions/latest", b"", b"L1")
    await s.close()
    s2 = FileStore.open(tmp_path)
    try:
        assert await s2.get("policies/p1") == b"policy"
        assert await s2.get("transitions/latest") == b"L1"
    finally:
        await s2.close()


# -- compare and swap ---------------------------------------------------------------------------


async def test_cas_missing_key_equals_empty_old(store: FileStore) -> None:
    await store.compare_and_swap("transitions/latest", b"", b"one")
    assert await store.get("transitions/latest") == b"one"


async def test_cas_missing_key_with_nonempty_old_is_concurrent_update(store: FileStore) -> None:
    with pytest.raises(ConcurrentUpdate):
        await store.compare_and_swap("transitions/latest", b"one", b"two")
    assert not await store.has("transitions/latest")
    # and no junk (temp files) left behind
    sub = store.directory / "transitions"
    assert not sub.exists() or list(sub.iterdir()) == []


async def test_cas_success_and_mismatch_leaves_value(store: FileStore) -> None:
    await store.compare_and_swap("transitions/latest", b"", b"one")
    await store.compare_and_swap("transitions/latest", b"one", b"two")
    assert await store.get("transitions/latest") == b"two"
    with pytest.raises(ConcurrentUpdate):
        await store.compare_and_swap("transitions/latest", b"one", b"three")
    assert await store.get("transitions/latest") == b"two"
    # empty old on an existing key is a mismatch too
    with pytest.raises(ConcurrentUpdate):
        await store.compare_and_swap("transitions/latest", b"", b"three")
    assert await store.get("transitions/latest") == b"two"


async def test_cas_error_message_has_no_values(store: FileStore) -> None:
    await store.set("transitions/latest", b"SECRET-CURRENT")
    with pytest.raises(ConcurrentUpdate) as info:
        await store.compare_and_swap("transitions/latest", b"SECRET-OLD", b"SECRET-NEW")
    assert "SECRET" not in str(info.value)
    assert "transitions/latest" in str(info.value)


async def test_concurrent_cas_exactly_one_wins(store: FileStore) -> None:
    await store.set("transitions/latest", b"base")

    async def attempt(i: int) -> bool:
        try:
            await store.compare_and_swap("transitions/latest", b"base", b"v%d" % i)
        except ConcurrentUpdate:
            return False
        return True

    results = await asyncio.gather(*(attempt(i) for i in range(8)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert await store.get("transitions/latest") == b"v%d" % winner


async def test_cas_chain_is_linear(store: FileStore) -> None:
    """Each task advances the value by CAS-retrying; no update is lost."""

    async def bump() -> None:
        while True:
            cur = await store.get("members/counter") if await store.has("members/counter") else b""
            nxt = str(int(cur or b"0") + 1).encode()
            try:
                await store.compare_and_swap("members/counter", cur, nxt)
                return
            except ConcurrentUpdate:
                continue

    await asyncio.gather(*(bump() for _ in range(10)))
    assert await store.get("members/counter") == b"10"


# -- keys ---------------------------------------------------------------------------------------

BAD_KEYS = [
    "",
    "latest",
    "transitions/",
    "/latest",
    "a/b/c",
    "../x",
    "a/..",
    "A/b",
    "a/B",
    "a/b c",
    "a/.tmp-x",
    "a/.lock",
    ".lock/x",
    "a/b\n",
    "a\x00/b",
    "a_b/c",
]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_invalid_keys_rejected_everywhere(store: FileStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        await store.get(key)
    with pytest.raises(InvalidKey):
        await store.has(key)
    with pytest.raises(InvalidKey):
        await store.set(key, b"x")
    with pytest.raises(InvalidKey):
        await store.compare_and_swap(key, b"", b"x")
    with pytest.raises(InvalidKey):
        store.watch(key)
    # nothing was created next to the lock file
    assert sorted(p.name for p in store.directory.iterdir()) == [LOCK_NAME]


# -- modes --------------------------------------------------------------------------------------


async def test_modes_dir_0700_files_0600(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # even with a permissive umask the modes are exact
    try:
        s = FileStore.open(tmp_path / "fresh")
        try:
            await s.set("manifests/m1", b"m")
            await s.compare_and_swap("transitions/latest", b"", b"l")
        finally:
            await s.close()
    finally:
        os.umask(old_umask)
    root = tmp_path / "fresh"
    assert _mode(root) == 0o700
    assert _mode(root / "manifests") == 0o700
    assert _mode(root / "transitions") == 0o700
    assert _mode(root / "manifests" / "m1") == 0o600
    assert _mode(root / "transitions" / "latest") == 0o600
    assert _mode(root / LOCK_NAME) == 0o600


async def test_existing_directory_is_used(tmp_path: Path) -> None:
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "pre").write_bytes(b"existing")
    s = FileStore.open(tmp_path)
    try:
        assert await s.get("manifests/pre") == b"existing"
    finally:
        await s.close()


def test_open_on_a_regular_file_is_unavailable(tmp_path: Path) -> None:
    target = tmp_path / "not-a-dir"
    target.write_bytes(b"x")
    with pytest.raises(StoreUnavailable) as info:
        FileStore.open(target)
    assert str(target) in str(info.value)


# -- atomic writes ------------------------------------------------------------------------------


async def test_failed_replace_keeps_old_value_and_leaves_no_junk(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.set("transitions/latest", b"old")
    seen: list[bytes] = []

    def crash(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        # the temp file is complete and fsynced at this point; the rename never happens
        seen.append(Path(src).read_bytes())
        raise OSError(errno.EIO, "simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StoreUnavailable):
        await store.set("transitions/latest", b"new-value")
    with pytest.raises(StoreUnavailable):
        await store.compare_and_swap("transitions/latest", b"old", b"new-value")
    with pytest.raises(StoreUnavailable):
        await store.set("manifests/fresh", b"blob")
    monkeypatch.undo()

    assert seen == [b"new-value", b"new-value", b"blob"]
    assert await store.get("transitions/latest") == b"old"
    assert not await store.has("manifests/fresh")
    with pytest.raises(KeyNotFound):
        await store.get("manifests/fresh")
    assert [p.name for p in (store.directory / "transitions").iterdir()] == ["latest"]
    assert list((store.directory / "manifests").iterdir()) == []
    # the store still works afterwards
    await store.compare_and_swap("transitions/latest", b"old", b"new")
    assert await store.get("transitions/latest") == b"new"


async def test_crash_leftover_temp_files_ignored_and_cleaned_on_open(tmp_path: Path) -> None:
    s = FileStore.open(tmp_path)
    await s.set("transitions/latest", b"intact")
    await s.close()
    # what a crash between write and rename leaves behind
    leftover = tmp_path / "transitions" / f"{TEMP_PREFIX}latest-deadbeef"
    leftover.write_bytes(b"partial")
    other = tmp_path / "manifests"
    other.mkdir()
    (other / f"{TEMP_PREFIX}abc-00").write_bytes(b"half a blob")

    s2 = FileStore.open(tmp_path)
    try:
        assert not leftover.exists()
        assert list(other.iterdir()) == []
        assert await s2.get("transitions/latest") == b"intact"
        assert not await s2.has("manifests/abc")
    finally:
        await s2.close()


async def test_has_is_false_for_a_directory(store: FileStore) -> None:
    (store.directory / "a" / "b").mkdir(parents=True)
    assert not await store.has("a/b")


async def test_symlinked_key_is_not_followed(store: FileStore, tmp_path: Path) -> None:
    target = tmp_path / "outside"
    target.write_bytes(b"outside")
    (store.directory / "a").mkdir()
    (store.directory / "a" / "b").symlink_to(target)
    with pytest.raises(StoreUnavailable):
        await store.get("a/b")
    assert not await store.has("a/b")


# -- lock (in-process) and close ----------------------------------------------------------------


async def test_second_store_in_same_process_is_locked(store: FileStore) -> None:
    with pytest.raises(StoreLocked) as info:
        FileStore.open(store.directory)
    msg = str(info.value)
    assert str(store.directory) in msg
    assert "this process" in msg


async def test_close_releases_lock_and_is_idempotent(tmp_path: Path) -> None:
    s = FileStore.open(tmp_path)
    await s.close()
    await s.close()
    assert s.closed
    s2 = FileStore.open(tmp_path)
    await s2.close()


async def test_relative_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with FileStore.open("rel") as s:
        assert s.directory == tmp_path / "rel"
        with pytest.raises(StoreLocked) as info:
            FileStore.open(tmp_path / "rel")
        assert str(tmp_path / "rel") in str(info.value)


async def test_operations_after_close_are_unavailable(tmp_path: Path) -> None:
    s = FileStore.open(tmp_path)
    await s.set("a/b", b"x")
    await s.close()
    with pytest.raises(StoreUnavailable):
        await s.get("a/b")
    with pytest.raises(StoreUnavailable):
        await s.has("a/b")
    with pytest.raises(StoreUnavailable):
        await s.set("a/b", b"y")
    with pytest.raises(StoreUnavailable):
        await s.compare_and_swap("a/b", b"x", b"y")
    with pytest.raises(StoreUnavailable):
        s.watch("a/b")
    assert (tmp_path / "a" / "b").read_bytes() == b"x"


# -- watch --------------------------------------------------------------------------------------


async def test_watch_receives_updates_in_order_not_current(store: FileStore) -> None:
    await store.set("transitions/latest", b"before")
    w = store.watch("transitions/latest")
    await store.set("transitions/latest", b"v1")
    await store.compare_and_swap("transitions/latest", b"v1", b"v2")
    with pytest.raises(ConcurrentUpdate):  # a failed CAS is not an update
        await store.compare_and_swap("transitions/latest", b"v1", b"nope")
    await store.set("transitions/other", b"other key")
    await store.set("transitions/latest", b"v3")
    assert [await _next(w), await _next(w), await _next(w)] == [b"v1", b"v2", b"v3"]


async def test_watch_waits_for_a_later_write(store: FileStore) -> None:
    w = store.watch("members/x")
    pending = asyncio.ensure_future(_next(w))
    await asyncio.sleep(0.01)
    assert not pending.done()
    await store.compare_and_swap("members/x", b"", b"joined")
    assert await pending == b"joined"


async def test_watch_several_watchers_and_async_for(store: FileStore) -> None:
    w1 = store.watch("a/b")
    w2 = store.watch("a/b")

    async def collect(it: AsyncIterator[bytes]) -> list[bytes]:
        return [v async for v in it]

    tasks = [asyncio.ensure_future(collect(w)) for w in (w1, w2)]
    for i in range(5):
        await store.set("a/b", b"%d" % i)
    await store.close()  # ends every watch
    expected = [b"%d" % i for i in range(5)]
    assert await asyncio.wait_for(asyncio.gather(*tasks), timeout=5) == [expected, expected]


async def test_watch_aclose_stops_delivery(store: FileStore) -> None:
    w = store.watch("a/b")
    await store.set("a/b", b"1")
    assert await _next(w) == b"1"
    await w.aclose()  # type: ignore[attr-defined]
    await store.set("a/b", b"2")
    with pytest.raises(StopAsyncIteration):
        await _next(w)


async def test_cancelled_write_still_completes_and_notifies(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller cancelled mid-write cannot open a window for an overlapping write."""
    await store.set("transitions/latest", b"old")
    w = store.watch("transitions/latest")
    entered, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        if not release.is_set():
            entered.set()
            release.wait(5)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    task = asyncio.ensure_future(store.compare_and_swap("transitions/latest", b"old", b"A"))
    assert await asyncio.to_thread(entered.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the write is still in flight; a competing CAS must wait for it and then see "A"
    competitor = asyncio.ensure_future(store.compare_and_swap("transitions/latest", b"old", b"B"))
    await asyncio.sleep(0.01)
    release.set()
    with pytest.raises(ConcurrentUpdate):
        await competitor
    monkeypatch.undo()
    assert await store.get("transitions/latest") == b"A"
    assert await _next(w) == b"A"
