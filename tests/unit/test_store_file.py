"""FileStore specifics: file layout and modes, atomic writes, locking in-process, deletions
noticed by polling, cancelled writes. The Store semantics it shares with every backend are in
tests/contract."""

from __future__ import annotations

import asyncio
import errno
import math
import os
import shutil
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from coordinator.store.base import (
    DELETED,
    ConcurrentUpdate,
    InvalidKey,
    KeyNotFound,
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


async def test_a_key_is_a_file_in_a_subdirectory(store: FileStore) -> None:
    await store.set("manifests/abc", b"\x00hello\xff")
    await store.set("manifests/abc", b"second")
    assert await store.get("manifests/abc") == b"second"
    assert (store.directory / "manifests" / "abc").read_bytes() == b"second"


async def test_missing_subdirectory_and_missing_file_are_both_key_not_found(
    store: FileStore,
) -> None:
    with pytest.raises(KeyNotFound) as info:
        await store.get("transitions/latest")
    assert info.value.key == "transitions/latest"
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


async def test_failed_cas_on_a_missing_key_leaves_no_junk(store: FileStore) -> None:
    with pytest.raises(ConcurrentUpdate):
        await store.compare_and_swap("transitions/latest", b"one", b"two")
    assert not await store.has("transitions/latest")
    # and no junk (temp files) left behind
    sub = store.directory / "transitions"
    assert not sub.exists() or list(sub.iterdir()) == []


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
async def test_invalid_keys_touch_no_file(store: FileStore, key: str) -> None:
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


async def test_operations_after_close_touch_no_file(tmp_path: Path) -> None:
    s = FileStore.open(tmp_path)
    await s.set("a/b", b"x")
    await s.close()
    with pytest.raises(StoreUnavailable):
        await s.set("a/b", b"y")
    with pytest.raises(StoreUnavailable):
        await s.compare_and_swap("a/b", b"x", b"y")
    with pytest.raises(StoreUnavailable):
        s.watch("a/b")  # the file store refuses at once
    assert (tmp_path / "a" / "b").read_bytes() == b"x"


# -- watch --------------------------------------------------------------------------------------


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


# -- deletions by someone else (polled) ---------------------------------------------------------


@pytest.fixture
async def polled(tmp_path: Path) -> AsyncIterator[FileStore]:
    s = FileStore.open(tmp_path / "polled", poll_interval=0.01)
    try:
        yield s
    finally:
        await s.close()


async def test_removed_subdirectory_is_a_deletion(polled: FileStore) -> None:
    await polled.set("transitions/latest", b"v")
    w = polled.watch("transitions/latest")
    shutil.rmtree(polled.directory / "transitions")
    assert await _next(w) == DELETED
    await w.aclose()  # type: ignore[attr-defined]


async def test_a_key_never_seen_is_not_reported_deleted(polled: FileStore) -> None:
    w = polled.watch("transitions/latest")
    pending = asyncio.ensure_future(_next(w))
    await asyncio.sleep(0.1)  # several polls of a missing file
    assert not pending.done()
    await polled.set("transitions/latest", b"v")
    assert await pending == b"v"
    os.unlink(polled.directory / "transitions" / "latest")
    assert await _next(w) == DELETED  # seen through our own write, then gone
    await w.aclose()  # type: ignore[attr-defined]


async def test_a_file_created_behind_our_back_is_tracked_for_deletion(polled: FileStore) -> None:
    w = polled.watch("transitions/latest")
    (polled.directory / "transitions").mkdir()
    target = polled.directory / "transitions" / "latest"
    target.write_bytes(b"planted")
    pending = asyncio.ensure_future(_next(w))
    await asyncio.sleep(0.1)  # polls see it appear; only our own writes are values
    assert not pending.done()
    target.unlink()
    assert await pending == DELETED


async def test_aclose_from_elsewhere_ends_a_waiting_reader(polled: FileStore) -> None:
    w = polled.watch("a/b")
    pending = asyncio.ensure_future(_next(w))
    await asyncio.sleep(0.02)
    await w.aclose()  # type: ignore[attr-defined]
    with pytest.raises(StopAsyncIteration):
        await pending


@pytest.mark.parametrize("interval", [0, -1, math.nan])
def test_bad_poll_interval_rejected(tmp_path: Path, interval: float) -> None:
    with pytest.raises(ValueError, match="poll_interval"):
        FileStore.open(tmp_path, poll_interval=interval)
    assert not (tmp_path / LOCK_NAME).exists()
