"""The credential directory of ``concord join --watch`` (DESIGN §15): whole sets, one switch."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coordinator.cli.files import CURRENT, CredentialDir, OutputDirError
from coordinator.client.agent import CredentialSet, CredentialSink


def _creds(tag: str, secret: bool = True) -> CredentialSet:
    return CredentialSet(
        key_pem=f"key {tag}".encode(),
        cert_pem=f"cert {tag}".encode(),
        chain_pem=f"chain {tag}".encode(),
        mesh_ca_pem=f"mesh {tag}".encode(),
        root_ca_pem=b"root",
        workload_secret=f"secret {tag}".encode() if secret else b"",
        not_after=datetime(2030, 1, 1, tzinfo=UTC),
        state_digest=b"d" * 32,
        latest_transition_hash=b"t" * 32,
    )


def test_a_set_is_written_whole_and_switched_by_one_link(tmp_path: Path) -> None:
    out = tmp_path / "creds"
    sink = CredentialDir(out)
    assert isinstance(sink, CredentialSink)
    assert sink.current() is None
    sink.publish(_creds("1"))
    assert os.readlink(out / CURRENT) == "set-1"
    assert (out / "cert.pem").read_bytes() == b"cert 1"
    assert os.readlink(out / "cert.pem") == f"{CURRENT}/cert.pem"
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (out / "workload-secret").stat().st_mode & 0o777 == 0o600
    assert (out / "mesh-ca.pem").stat().st_mode & 0o777 == 0o644
    assert out.stat().st_mode & 0o777 == 0o700

    sink.publish(_creds("2"))
    sink.publish(_creds("3", secret=False))
    assert os.readlink(out / CURRENT) == "set-3"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("set-")) == ["set-2", "set-3"]
    assert not (out / "workload-secret").exists() and not (out / "workload-secret").is_symlink()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert sink.current() == (out / "set-3").resolve()


def test_readers_never_see_a_mixed_set(tmp_path: Path) -> None:
    out = tmp_path / "creds"
    sink = CredentialDir(out)
    sink.publish(_creds("0"))
    stop = threading.Event()
    mixed: list[tuple[bytes, bytes]] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                directory = (out / CURRENT).resolve()
                key = (directory / "key.pem").read_bytes()
                cert = (directory / "cert.pem").read_bytes()
            except FileNotFoundError:
                continue  # a set two switches old was pruned under a slow reader: retry
            if key.split()[1] != cert.split()[1]:
                mixed.append((key, cert))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1, 200):
            sink.publish(_creds(str(i)))
    finally:
        stop.set()
        thread.join()
    assert mixed == []


def test_a_regular_file_in_the_way_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "creds"
    out.mkdir()
    (out / "cert.pem").write_bytes(b"from a one-shot join")
    with pytest.raises(OutputDirError) as exc:
        CredentialDir(out).publish(_creds("1"))
    assert exc.value.reason == "output_dir_unusable"
    assert (out / "cert.pem").read_bytes() == b"from a one-shot join"
