"""Hints that name the fix (issue 15, "Why"): the wrong port (user / mesh / HTTP), production
trust anchors for mock evidence, an unreachable or hung coordinator (``--timeout`` on every
client command). Each runs ``concord`` as a process against a real ``concord serve``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attestation.providers import mock
from coordinator.cli.demo import CoordinatorProcess, manifest_json, serve_args
from coordinator.core.authz import public_spki, rsa_pkcs1_der

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
ENV.pop("CONCORD_DEBUG", None)

pytestmark = pytest.mark.timeout(180)


def concord(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        cwd=REPO,
    )


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """Exit 1 and one ``concord: ...`` line (warnings aside), never a traceback."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("concord: warning:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _pem(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class Served:
    root: Path
    mock_dir: Path
    coordinator_policy: Path
    web_policy: Path
    manifest: Path
    seedshares: Path
    seedshare_key: Path
    coordinator: CoordinatorProcess


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("hints")
    mock_dir = root / "mock"
    refs = mock.init(mock_dir)
    coordinator_policy, web_policy = root / "coordinator.policy", root / "web.policy"
    coordinator_policy.write_bytes(b"hints: coordinator\n")
    web_policy.write_bytes(b"hints: web\n")
    owner = ec.generate_private_key(ec.SECP256R1())
    seedshare = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (root / "seedshare.pem").write_bytes(_pem(seedshare))
    manifest = root / "manifest.json"
    manifest.write_bytes(
        manifest_json(
            coordinator_policy.read_bytes(),
            [(web_policy.read_bytes(), ["web"], "web")],
            refs,
            public_spki(owner),
            rsa_pkcs1_der(seedshare),
        )
    )
    proc = CoordinatorProcess(
        serve_args(root, mock_dir, coordinator_policy, root / "store"), root / "coordinator.log"
    )
    proc.start()
    try:
        done = concord(
            "set", "-c", proc.user, manifest, "--policy", coordinator_policy, web_policy,
            "--trust-anchors", f"mock:{mock_dir}", "--out", root / "owner",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        yield Served(
            root, mock_dir, coordinator_policy, web_policy, manifest,
            root / "owner" / "seedshares.json",
            root / "seedshare.pem", proc,
        )  # fmt: skip
    finally:
        proc.stop()


def test_user_command_at_the_mesh_port_names_the_user_port(served: Served, tmp_path: Path) -> None:
    proc = concord(
        "verify", "-c", served.coordinator.mesh, served.manifest,
        "--trust-anchors", f"mock:{served.mock_dir}", "--out", tmp_path,
    )  # fmt: skip
    line = error_line(proc)
    assert "UNIMPLEMENTED" in line
    assert "mesh API port" in line and "user API: port 1313" in line and "--user-addr" in line


def test_join_at_the_user_port_names_the_mesh_port(served: Served, tmp_path: Path) -> None:
    proc = concord(
        "join", "-c", served.coordinator.user, "--tee", f"mock:{served.mock_dir}",
        "--mock-policy", served.web_policy, "--out", tmp_path,
    )  # fmt: skip
    line = error_line(proc)
    assert "user API port" in line and "mesh API: port 7777" in line


@pytest.mark.parametrize("command", ["verify", "join"])
def test_the_http_port_is_a_tls_failure_with_a_hint(
    served: Served, tmp_path: Path, command: str
) -> None:
    if command == "join":
        args: list[str | Path] = [
            "--tee",
            f"mock:{served.mock_dir}",
            "--mock-policy",
            served.web_policy,
        ]
    else:
        args = [served.manifest, "--trust-anchors", f"mock:{served.mock_dir}"]
    proc = concord(command, "-c", served.coordinator.http, *args, "--out", tmp_path)
    line = error_line(proc)  # join does not retry a wrong port until its timeout
    assert "TLS handshake" in line and "HTTP probe port" in line


def test_mock_evidence_under_production_anchors_hints_mock_anchors(
    served: Served, tmp_path: Path
) -> None:
    proc = concord("verify", "-c", served.coordinator.user, served.manifest, "--out", tmp_path)
    line = error_line(proc)
    assert "attestation failed" in line and "--trust-anchors mock:DIR" in line


def test_nothing_listening_is_connection_refused_with_a_hint(
    served: Served, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        proc = concord(
            "verify", "-c", f"127.0.0.1:{port}", served.manifest,
            "--trust-anchors", f"mock:{served.mock_dir}", "--out", tmp_path,
        )  # fmt: skip
    line = error_line(proc)
    assert "connection refused" in line and "is it running?" in line


@pytest.fixture
def hung() -> Iterator[str]:
    """A "coordinator" that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("command", ["set", "verify", "recover", "join"])
def test_a_hung_coordinator_ends_at_timeout_with_a_hint(
    served: Served, hung: str, tmp_path: Path, command: str
) -> None:
    anchors = ["--trust-anchors", f"mock:{served.mock_dir}"]
    args: dict[str, list[str | Path]] = {
        "set": [served.manifest, "--policy", served.coordinator_policy, served.web_policy,
                *anchors, "--out", tmp_path],
        "verify": [served.manifest, *anchors, "--out", tmp_path],
        "recover": [
            served.manifest, "--seedshares", served.seedshares,
            "--seedshare-key", served.seedshare_key, *anchors,
        ],
        "join": ["--tee", f"mock:{served.mock_dir}", "--mock-policy", served.web_policy,
                 "--out", tmp_path],
    }  # fmt: skip
    extra = ["--allow-immutable", "--allow-unrecoverable"] if command == "set" else []
    proc = concord(command, "-c", hung, *args[command], *extra, "--timeout", "1")
    line = error_line(proc)
    assert f"no answer from the coordinator at {hung} within 1s" in line
    assert "--timeout SECONDS" in line
