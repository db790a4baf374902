"""``concord keys`` and ``concord manifest`` as a user runs them, and ``concord set`` refusing a
manifest that would freeze the deployment or make it unrecoverable unless told explicitly."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attestation.providers import mock
from coordinator import cli
from coordinator.cli.demo import CoordinatorProcess, serve_args
from coordinator.core.manifest import Manifest

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
ENV.pop("CONCORD_DEBUG", None)

pytestmark = pytest.mark.timeout(180)


def concord(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        cwd=REPO,
    )


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def tee(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tee") / "tee"
    mock.init(directory)
    return directory


# --- keys ----------------------------------------------------------------------------------------


def test_keys_new_owner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_path = tmp_path / "owner.pem"
    code, out, _ = run(capsys, "keys", "new", "owner", "--out", key_path, "--json")
    assert code == 0
    assert mode(key_path) == 0o600
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    result = json.loads(out)
    assert result["field"] == "WorkloadOwnerKeyDigests"
    assert result["value"] == hashlib.sha256(spki).hexdigest()
    before = key_path.read_bytes()
    # Never overwrites a key by accident: losing it freezes the deployment.
    code, _, err = run(capsys, "keys", "new", "owner", "--out", key_path)
    assert code == 2 and "exists" in err
    assert key_path.read_bytes() == before
    assert run(capsys, "keys", "new", "owner", "--out", key_path, "--force")[0] == 0
    assert key_path.read_bytes() != before
    # digest: the same value, from the private or the public key.
    code, out, _ = run(capsys, "keys", "digest", key_path, "--json")
    digest = json.loads(out)
    assert code == 0 and digest["seedshare_public_key"] is None
    pub = tmp_path / "owner.pub.pem"
    assert run(capsys, "keys", "public", key_path, "--out", pub)[0] == 0
    assert b"PRIVATE" not in pub.read_bytes()
    code, out, _ = run(capsys, "keys", "digest", pub)
    assert code == 0 and digest["owner_key_digest"] in out
    # Flags of the other kind, unknown types, unusable files: usage errors.
    assert run(capsys, "keys", "new", "owner", "--out", tmp_path / "x", "--bits", "2048")[0] == 2
    assert run(capsys, "keys", "new", "owner", "--out", tmp_path / "x", "--type", "rsa")[0] == 2
    assert run(capsys, "keys", "new", "owner", "--out", tmp_path / "no" / "x")[0] == 2
    code, _, err = run(capsys, "keys", "digest", tmp_path / "owner.pub.pem.missing")
    assert code == 2
    (tmp_path / "junk.pem").write_text("junk")
    code, _, err = run(capsys, "keys", "digest", tmp_path / "junk.pem")
    assert code == 2 and "not a PEM public or private key" in err


def test_keys_new_seedshare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_path = tmp_path / "seedshare.pem"
    code, out, _ = run(capsys, "keys", "new", "seedshare", "--out", key_path, "--bits", "2048")
    assert code == 0 and "SeedshareOwnerPubKeys" in out
    assert mode(key_path) == 0o600
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    code, out, _ = run(capsys, "keys", "digest", key_path, "--json")
    pkcs1 = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )
    assert json.loads(out)["seedshare_public_key"] == pkcs1.hex()
    assert (
        run(capsys, "keys", "new", "seedshare", "--out", tmp_path / "y", "--type", "p384")[0] == 2
    )


# --- manifest ------------------------------------------------------------------------------------


def test_manifest_build_edit_show(
    tmp_path: Path, tee: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coord, web = tmp_path / "coordinator.policy", tmp_path / "web.policy"
    coord.write_bytes(b"coordinator\n")
    web.write_bytes(b"web\n")
    owner, share = tmp_path / "owner.pem", tmp_path / "share.pem"
    assert run(capsys, "keys", "new", "owner", "--out", owner)[0] == 0
    assert run(capsys, "keys", "new", "seedshare", "--out", share, "--bits", "2048")[0] == 0
    m = tmp_path / "manifest.json"

    assert run(capsys, "manifest", "new", "--coordinator-policy", coord, "--out", m)[0] == 0
    code, _, err = run(capsys, "manifest", "new", "--coordinator-policy", coord, "--out", m)
    assert code == 2 and "exists" in err
    m.chmod(0o640)  # edits keep the file's mode
    code, out, _ = run(
        capsys, "manifest", "add-policy", m, web, "--san", "web", "--san", "10.0.0.1",
        "--secret-id", "web",
    )  # fmt: skip
    assert code == 0 and "added policy" in out
    assert run(capsys, "manifest", "add-reference", m, "--from-mock", tee)[0] == 0
    code, out, _ = run(capsys, "manifest", "add-reference", m, "--from-mock", tee)
    assert code == 0 and "(unchanged)" in out
    code, out, _ = run(
        capsys, "manifest", "add-owner", m, "--owner-key", owner, "--seedshare-key", share
    )
    assert code == 0 and "1 owner added, 1 seed-share owner added" in out
    assert mode(m) == 0o640

    parsed = Manifest.parse(m.read_bytes())
    assert parsed.coordinator_policy_hash == hashlib.sha256(b"coordinator\n").digest()
    web_entry = parsed.policy(hashlib.sha256(b"web\n").digest())
    assert web_entry is not None
    assert web_entry.sans == ("web", "10.0.0.1") and web_entry.workload_secret_id == "web"
    owner_key = serialization.load_pem_private_key(owner.read_bytes(), None)
    assert parsed.is_owner(
        owner_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert len(parsed.seedshare_owner_keys) == 1
    assert len(parsed.reference_values.snp) == 1 and len(parsed.reference_values.tdx) == 1

    code, out, _ = run(capsys, "manifest", "show", m)
    assert code == 0
    assert "coordinator" in out and "10.0.0.1" in out and "warning" not in out
    code, out, _ = run(capsys, "manifest", "show", m, "--json")
    assert json.loads(out)["findings"] == []

    # A refused edit names the field, exits 2 and leaves the file byte for byte.
    before = m.read_bytes()
    refused: list[tuple[list[str | Path], str]] = [
        (["add-policy", m, web, "--san", "bad san"], "SANs[0]"),
        (["add-policy", m, web, "--role", "coordinator"], "--replace-coordinator"),
        (["add-policy", m, web, "--replace-coordinator"], "needs --role coordinator"),
        (["remove-policy", m, coord], "cannot be removed"),
        (["add-owner", m], "--owner-key"),
        (["add-owner", m, "--seedshare-key", owner], "must be RSA"),
        (["add-owner", m, "--owner-digest", "abc"], "64 hex"),
        (["add-reference", m, "--snp", coord], "not valid JSON"),
        (["add-reference", m, "--from-mock", tmp_path / "nowhere"], "reference values"),
    ]
    for argv, needle in refused:
        code, _, err = run(capsys, "manifest", *argv)
        assert code == 2, argv
        assert needle in err, (argv, err)
        assert "Traceback" not in err
    assert m.read_bytes() == before

    # An SNP reference from a file, then removing the web policy by its file.
    snp = tmp_path / "snp.json"
    snp.write_text(json.dumps({"ProductName": "Milan", "TrustedMeasurement": "ab" * 48}))
    assert run(capsys, "manifest", "add-reference", m, "--snp", snp)[0] == 0
    assert len(Manifest.parse(m.read_bytes()).reference_values.snp) == 2
    assert run(capsys, "manifest", "remove-policy", m, web)[0] == 0
    assert len(Manifest.parse(m.read_bytes()).policies) == 1


def test_manifest_show_warns_about_empty_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coord = tmp_path / "coordinator.policy"
    coord.write_bytes(b"c\n")
    m = tmp_path / "manifest.json"
    assert run(capsys, "manifest", "new", "--coordinator-policy", coord, "--out", m)[0] == 0
    code, out, _ = run(capsys, "manifest", "show", m)
    assert code == 0
    assert "warning: WorkloadOwnerKeyDigests: no workload owner" in out
    assert "warning: SeedshareOwnerPubKeys: no seed-share owner" in out
    assert "warning: ReferenceValues" in out
    m.write_text('{"Policies": null}')
    code, _, err = run(capsys, "manifest", "show", m)
    assert code == 2 and "ReferenceValues: required" in err


@pytest.mark.parametrize("command", ["keys", "manifest"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([command, "--help"]) == 0
    assert f"usage: concord {command}" in capsys.readouterr().out


# --- set refuses foot-guns -----------------------------------------------------------------------


@pytest.fixture
def bare_manifest(tmp_path: Path, tee: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A first manifest with only the coordinator policy and the reference values."""
    coord = tmp_path / "coordinator.policy"
    coord.write_bytes(f"coordinator {os.urandom(4).hex()}\n".encode())
    m = tmp_path / "manifest.json"
    assert run(capsys, "manifest", "new", "--coordinator-policy", coord, "--out", m)[0] == 0
    assert run(capsys, "manifest", "add-reference", m, "--from-mock", tee)[0] == 0
    return m


def test_set_refuses_manifest_without_owners_locally(
    bare_manifest: Path, tmp_path: Path, tee: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before anything is sent: port 1 is never contacted (that would be exit 1)."""
    base: list[str | Path] = [
        "set",
        "-c",
        "127.0.0.1:1",
        bare_manifest,
        "--policy",
        tmp_path / "coordinator.policy",
    ]
    base += ["--trust-anchors", f"mock:{tee}", "--out", tmp_path / "out"]
    code, _, err = run(capsys, *base)
    assert code == 2
    assert err.count("\n") == 1, err  # one line
    assert "WorkloadOwnerKeyDigests is empty: no workload owner: this manifest can never be " in err
    assert "--allow-immutable" in err
    assert "SeedshareOwnerPubKeys is empty" in err and "--allow-unrecoverable" in err
    code, _, err = run(capsys, *base, "--allow-immutable")
    assert code == 2
    assert "--allow-unrecoverable" in err and "--allow-immutable" not in err
    code, _, err = run(capsys, *base, "--allow-unrecoverable")
    assert code == 2
    assert "--allow-immutable" in err and "--allow-unrecoverable" not in err
    assert not (tmp_path / "out").exists()
    # With both, the refusal is gone: it now tries the coordinator (unreachable: exit 1).
    code, _, err = run(capsys, *base, "--allow-immutable", "--allow-unrecoverable")
    assert code == 1 and "cannot reach the coordinator" in err


@pytest.fixture
def coordinator(bare_manifest: Path, tee: Path, tmp_path: Path) -> Iterator[CoordinatorProcess]:
    proc = CoordinatorProcess(
        serve_args(tmp_path, tee, tmp_path / "coordinator.policy", tmp_path / "store"),
        tmp_path / "coordinator.log",
    )
    try:
        proc.start()
        yield proc
    finally:
        code = proc.stop()
    assert code == 0, proc.log_tail()


def test_set_unrecoverable_by_choice_gives_no_seed_share_advice(
    bare_manifest: Path, tee: Path, tmp_path: Path, coordinator: CoordinatorProcess
) -> None:
    out = tmp_path / "out"
    proc = concord(
        "set", "-c", coordinator.user, bare_manifest, "--policy", tmp_path / "coordinator.policy",
        "--trust-anchors", f"mock:{tee}", "--out", out,
        "--allow-immutable", "--allow-unrecoverable",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "first manifest" in proc.stdout
    assert "seedshares.json" not in proc.stdout
    assert "no seed-share owners: this deployment cannot be recovered by a user" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["mesh-ca.pem", "root-ca.pem"]
