"""FileStore across real processes: the directory lock and crash recovery (SIGKILL)."""

from __future__ import annotations

import hashlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from coordinator.store.base import KeyNotFound, StoreLocked
from coordinator.store.file import TEMP_PREFIX, FileStore

REPO = Path(__file__).resolve().parents[2]
LOCKED_EXIT = 3

# The child opens the store, does what its mode says, prints READY and then blocks until killed.
CHILD = r"""
import asyncio, os, sys, time
from coordinator.store.base import StoreLocked
from coordinator.store.file import FileStore

directory, mode, *args = sys.argv[1:]

def ready():
    print("READY", os.getpid(), flush=True)

async def main():
    try:
        store = FileStore.open(directory)
    except StoreLocked as exc:
        print("LOCKED", type(exc).__name__, exc, flush=True)
        sys.exit(3)
    if mode == "hold":
        ready()
    elif mode == "close":
        await store.close()
        print("CLOSED", flush=True)
        return
    elif mode == "blobs":
        # args: key=hexvalue ... written with set(); then stop just before the CAS of latest
        for arg in args:
            key, value = arg.split("=")
            await store.set(key, bytes.fromhex(value))
        ready()
    elif mode == "history":
        # args: manifest hex, previous transition hash hex; stop before History.set_latest
        from coordinator.core.history import History, Transition
        history = History(store)
        digest = await history.put_manifest(bytes.fromhex(args[0]))
        await history.put_transition(Transition.create(digest, bytes.fromhex(args[1])))
        ready()
    elif mode == "midwrite":
        # the temp file of latest is written and fsynced, the rename never happens
        def hang(src, dst):
            ready()
            time.sleep(3600)
        os.replace = hang
        await store.compare_and_swap("transitions/latest", bytes.fromhex(args[0]),
                                     bytes.fromhex(args[1]))
    time.sleep(3600)

asyncio.run(main())
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _readline(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"child {proc.pid} printed nothing within {timeout}s")
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"child {proc.pid} exited early ({proc.wait()}): {err}")
    return line.strip()


@contextmanager
def child(directory: Path, mode: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A child process that is always killed and reaped when the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), mode, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=_env(),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=20)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _sigkill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=20) == -signal.SIGKILL


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    line = _readline(proc)
    assert line == f"READY {proc.pid}", line


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_second_live_process_gets_store_locked(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    with child(directory, "hold") as holder:
        _wait_ready(holder)
        # in this process
        with pytest.raises(StoreLocked) as info:
            FileStore.open(directory)
        message = str(info.value)
        assert str(directory) in message
        assert f"pid {holder.pid}" in message
        # in a third process
        with child(directory, "hold") as second:
            line = _readline(second)
            assert second.wait(timeout=20) == LOCKED_EXIT
        assert line.startswith("LOCKED StoreLocked ")
        assert str(directory) in line
        assert holder.poll() is None  # the holder is unaffected


async def test_sigkilled_holder_does_not_block_restart(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    with child(directory, "hold") as holder:
        _wait_ready(holder)
        with pytest.raises(StoreLocked):
            FileStore.open(directory)
        _sigkill(holder)
    # the kernel dropped the flock with the process; a stale .lock file is harmless
    assert (directory / ".lock").exists()
    with child(directory, "hold") as successor:
        _wait_ready(successor)
        _sigkill(successor)
    store = FileStore.open(directory)
    try:
        await store.set("a/b", b"alive")
        assert await store.get("a/b") == b"alive"
    finally:
        await store.close()


async def test_clean_close_in_another_process_releases_lock(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    with child(directory, "close") as proc:
        assert _readline(proc) == "CLOSED"
        assert proc.wait(timeout=20) == 0
    store = FileStore.open(directory)
    await store.close()


def _history_step(manifest: bytes, previous: bytes) -> tuple[dict[str, bytes], bytes]:
    """Blobs of one history step (DESIGN §5 layout) and its ``latest`` value."""
    transition = hashlib.sha256(manifest).digest() + previous
    t_hash = hashlib.sha256(transition).digest()
    blobs = {f"manifests/{_sha(manifest)}": manifest, f"transitions/{t_hash.hex()}": transition}
    latest = t_hash + b"\x30\x06stand-in-signature"
    return blobs, latest


async def _assert_intact(
    store: FileStore, blobs: dict[str, bytes], latest: bytes, orphans: dict[str, bytes]
) -> None:
    assert await store.get("transitions/latest") == latest
    t_key = f"transitions/{latest[:32].hex()}"
    transition = await store.get(t_key)
    assert _sha(transition) == latest[:32].hex()
    manifest = await store.get(f"manifests/{transition[:32].hex()}")
    assert hashlib.sha256(manifest).digest() == transition[:32]
    for key, value in {**blobs, **orphans}.items():
        data = await store.get(key)
        assert data == value
        assert _sha(data) == key.split("/")[1]


async def test_crash_between_blob_writes_and_cas_keeps_previous_latest(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    blobs0, latest0 = _history_step(b"manifest generation 0", bytes(32))
    store = FileStore.open(directory)
    try:
        for key, value in blobs0.items():
            await store.set(key, value)
        await store.compare_and_swap("transitions/latest", b"", latest0)
    finally:
        await store.close()

    blobs1, latest1 = _history_step(b"manifest generation 1", latest0[:32])
    with child(directory, "blobs", *(f"{k}={v.hex()}" for k, v in blobs1.items())) as proc:
        _wait_ready(proc)  # blobs are durable; the CAS of latest has not happened
        _sigkill(proc)

    store = FileStore.open(directory)
    try:
        await _assert_intact(store, blobs0, latest0, orphans=blobs1)
        # the history can move on from the old latest
        await store.compare_and_swap("transitions/latest", latest0, latest1)
        assert await store.get("transitions/latest") == latest1
    finally:
        await store.close()


async def test_crash_in_the_middle_of_the_latest_write(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    blobs0, latest0 = _history_step(b"manifest generation 0", bytes(32))
    blobs1, latest1 = _history_step(b"manifest generation 1", latest0[:32])
    store = FileStore.open(directory)
    try:
        for key, value in {**blobs0, **blobs1}.items():
            await store.set(key, value)
        await store.compare_and_swap("transitions/latest", b"", latest0)
    finally:
        await store.close()

    with child(directory, "midwrite", latest0.hex(), latest1.hex()) as proc:
        _wait_ready(proc)
        leftovers = [p for p in (directory / "transitions").iterdir() if p.name.startswith(".")]
        assert len(leftovers) == 1 and leftovers[0].name.startswith(TEMP_PREFIX)
        assert leftovers[0].read_bytes() == latest1  # complete temp file, never renamed
        _sigkill(proc)
    assert leftovers[0].exists()  # the crash left it behind

    store = FileStore.open(directory)
    try:
        assert not leftovers[0].exists()  # cleaned on open
        await _assert_intact(store, blobs0, latest0, orphans=blobs1)
        with pytest.raises(KeyNotFound):
            await store.get(f"transitions/{leftovers[0].name[len(TEMP_PREFIX) :]}")
    finally:
        await store.close()


async def test_crash_before_latest_cas_history_loads_and_verifies(tmp_path: Path) -> None:
    """Same crash, checked through coordinator.core.history: the old latest verifies and walks."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from coordinator.core.history import History, SignedLatest, Transition

    directory = tmp_path / "store"
    key = ec.generate_private_key(ec.SECP256R1())
    store = FileStore.open(directory)
    try:
        history = History(store)
        m0 = await history.put_manifest(b"manifest generation 0")
        t0 = await history.put_transition(Transition.create(m0))
        latest0 = SignedLatest.sign(t0, key)
        await history.set_latest(latest0, None)
    finally:
        await store.close()

    with child(directory, "history", b"manifest generation 1".hex(), t0.hex()) as proc:
        _wait_ready(proc)
        _sigkill(proc)

    store = FileStore.open(directory)
    try:
        history = History(store)  # fresh cache: everything below comes from the files
        loaded = await history.get_latest()
        assert loaded == latest0
        history.verify_latest(loaded, key.public_key())
        chain = await history.walk(loaded.transition_hash)
        assert [t.hash for t in chain] == [t0]
        assert await history.get_manifest(chain[0].manifest_hash) == b"manifest generation 0"
        # the orphaned blobs of the crashed step are valid, and the history can continue
        m1 = hashlib.sha256(b"manifest generation 1").digest()
        assert await history.get_manifest(m1) == b"manifest generation 1"
        t1 = Transition.create(m1, t0)
        assert await history.get_transition(t1.hash) == t1
        latest1 = SignedLatest.sign(t1.hash, key)
        await history.set_latest(latest1, loaded)
        assert [t.hash for t in await history.walk(latest1.transition_hash)] == [t0, t1.hash]
    finally:
        await store.close()
