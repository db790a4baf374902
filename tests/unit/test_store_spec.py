"""The one ``--store`` parser: what it accepts, what it refuses (and says why), and that the CLI
and :func:`open_store` go through it."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.errors import Status
from coordinator.store import open_store
from coordinator.store.file import FileStore
from coordinator.store.spec import StoreKind, StoreSpec, StoreSpecError, parse_store_spec


@pytest.mark.parametrize(
    ("text", "directory"),
    [("file:/var/lib/concord", "/var/lib/concord"), ("file:rel/dir", "rel/dir"), ("file:x", "x")],
)
def test_file_specs(text: str, directory: str) -> None:
    spec = parse_store_spec(text)
    assert spec == StoreSpec(StoreKind.FILE, directory=directory)
    assert str(spec) == text


@pytest.mark.parametrize(
    ("text", "endpoints"),
    [
        ("etcd://127.0.0.1:2379", ("127.0.0.1:2379",)),
        ("etcd://a:1,b:2,[::1]:2379", ("a:1", "b:2", "[::1]:2379")),
        ("etcd://etcd-0.etcd:65535", ("etcd-0.etcd:65535",)),
    ],
)
def test_etcd_specs(text: str, endpoints: tuple[str, ...]) -> None:
    spec = parse_store_spec(text)
    assert spec == StoreSpec(StoreKind.ETCD, endpoints=endpoints)
    assert str(spec) == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "want file:DIR or etcd://"),
        ("memory:", "want file:DIR or etcd://"),  # the in-memory store is for tests only
        ("/var/lib/concord", "want file:DIR or etcd://"),
        ("FILE:/x", "want file:DIR or etcd://"),
        ("etcd:127.0.0.1:2379", "want file:DIR or etcd://"),
        ("file:", "needs a directory"),
        ("file:a\0b", "NUL"),
        ("etcd://", "at least one HOST:PORT"),
        ("etcd://a:1,", "empty endpoint"),
        ("etcd://a:1,,b:2", "empty endpoint"),
        ("etcd://localhost", "'localhost' is not HOST:PORT"),
        ("etcd://:2379", "is not HOST:PORT"),
        ("etcd://h:0", "is not HOST:PORT"),
        ("etcd://h:65536", "is not HOST:PORT"),
        ("etcd://h:port", "is not HOST:PORT"),
        ("etcd://http://h:2379", "is not HOST:PORT"),
        ("etcd://h:2379/path", "is not HOST:PORT"),
        ("etcd://a:1,a:1", "duplicate endpoint"),
    ],
)
def test_bad_specs_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(StoreSpecError, match=problem) as info:
        parse_store_spec(text)
    assert info.value.reason == "invalid_store_spec"
    assert info.value.status is Status.INVALID_ARGUMENT
    assert isinstance(info.value, ValueError)


def test_not_a_string() -> None:
    with pytest.raises(StoreSpecError):
        parse_store_spec(None)  # type: ignore[arg-type]


def test_spec_is_frozen() -> None:
    spec = parse_store_spec("file:/x")
    with pytest.raises(FrozenInstanceError):
        spec.directory = "/y"  # type: ignore[misc]


async def test_open_store_uses_the_parser(tmp_path: Path) -> None:
    store = await open_store(f"file:{tmp_path / 's'}")
    try:
        assert isinstance(store, FileStore)
        assert store.directory == tmp_path / "s"
    finally:
        await store.close()
    with pytest.raises(StoreSpecError, match="want file:DIR"):
        await open_store("memory:")
    with pytest.raises(StoreSpecError, match="etcd options"):
        await open_store(f"file:{tmp_path / 's'}", timeout=1.0)


def test_cli_refuses_memory_store(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--store", "memory:"]) == 2
    err = capsys.readouterr().err
    assert "--store" in err and "memory:" in err


def test_cli_refuses_etcd_flags_on_a_file_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"not read before the spec is checked")
    assert main(["serve", "--store", "file:/x", "--etcd-ca", str(ca)]) == 2
    assert "need --store etcd://" in capsys.readouterr().err
