"""The ``concord`` command end to end: a ``concord serve`` process and the client commands as
separate processes, checking exit codes (0 success, 1 refused, 2 usage), messages, and the files
they write (and their modes)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attestation.providers import mock
from coordinator import cli
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.cli.demo import CoordinatorProcess, manifest_json, serve_args
from coordinator.client.operations import VerificationFailed, verify_history, verify_issued_chain
from coordinator.core.authz import public_spki, rsa_pkcs1_der
from coordinator.core.ca import CertificateAuthority, leaf_claims
from coordinator.core.history import ZERO_HASH, SignedLatest, transition_hash
from coordinator.core.seedengine import SeedEngine, SeedShareDocument

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
ENV.pop("CONCORD_DEBUG", None)

pytestmark = pytest.mark.timeout(180)


def concord(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=REPO,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """Refusals are a single ``concord: ...`` line on stderr, never a traceback."""
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("concord: warning:")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("concord: "), proc.stderr
    return lines[0]


# The client commands against the module's deployment (mock trust anchors); ``extra`` is appended.


def concord_set(
    user: str, d: Deployment, manifest: Path, out: Path, *extra: str | Path
) -> subprocess.CompletedProcess[str]:
    """``concord set`` with the deployment's coordinator, web and batch policies."""
    policies = (d.coordinator_policy, d.web_policy, d.batch_policy)
    return concord(
        "set", "-c", user, manifest, "--policy", *policies,
        "--trust-anchors", d.anchors(), "--out", out, *extra,
    )  # fmt: skip


def concord_verify(
    user: str, d: Deployment, manifest: Path, out: Path, *extra: str | Path
) -> subprocess.CompletedProcess[str]:
    return concord(
        "verify", "-c", user, manifest, "--trust-anchors", d.anchors(), "--out", out, *extra
    )


def concord_recover(
    user: str, d: Deployment, manifest: Path, seedshares: Path, *extra: str | Path
) -> subprocess.CompletedProcess[str]:
    """``concord recover`` with the deployment's seed-share key."""
    return concord(
        "recover", "-c", user, manifest, "--seedshares", seedshares,
        "--seedshare-key", d.seedshare_key, "--trust-anchors", d.anchors(), *extra,
    )  # fmt: skip


def concord_join_mock(
    mesh: str, d: Deployment, policy: Path, out: Path, *extra: str | Path
) -> subprocess.CompletedProcess[str]:
    """``concord join`` as a mock CVM of the deployment's TEE running ``policy``."""
    return concord(
        "join", "-c", mesh, "--tee", f"mock:{d.mock_dir}", "--mock-policy", policy,
        *extra, "--out", out,
    )  # fmt: skip


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def pem_key(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Deployment:
    root: Path
    mock_dir: Path
    coordinator_policy: Path
    web_policy: Path
    batch_policy: Path
    rogue_policy: Path
    manifest: Path
    manifest_v2: Path
    other_manifest: Path
    owner_key: Path
    seedshare_key: Path
    coordinator_hash: str

    def anchors(self) -> str:
        return f"mock:{self.mock_dir}"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    root = tmp_path_factory.mktemp("cli-flow")
    mock_dir = root / "mock"
    refs = mock.init(mock_dir)
    policies = {
        name: f"policy of {name} {os.urandom(4).hex()}\n".encode()
        for name in ("coordinator", "web", "batch", "rogue")
    }
    paths = {}
    for name, data in policies.items():
        paths[name] = root / f"{name}.policy"
        paths[name].write_bytes(data)
    owner = ec.generate_private_key(ec.SECP256R1())
    seedshare = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (root / "owner.pem").write_bytes(pem_key(owner))
    (root / "seedshare.pem").write_bytes(pem_key(seedshare))

    def build(web_sans: list[str]) -> bytes:
        return manifest_json(
            policies["coordinator"],
            [(policies["web"], web_sans, "web"), (policies["batch"], ["batch"], "")],
            refs,
            public_spki(owner),
            rsa_pkcs1_der(seedshare),
        )

    (root / "manifest.json").write_bytes(build(["web", "10.0.0.1"]))
    (root / "manifest-v2.json").write_bytes(build(["web", "10.0.0.1", "web.v2"]))
    (root / "other.json").write_bytes(build(["web-other"]))
    return Deployment(
        root=root,
        mock_dir=mock_dir,
        coordinator_policy=paths["coordinator"],
        web_policy=paths["web"],
        batch_policy=paths["batch"],
        rogue_policy=paths["rogue"],
        manifest=root / "manifest.json",
        manifest_v2=root / "manifest-v2.json",
        other_manifest=root / "other.json",
        owner_key=root / "owner.pem",
        seedshare_key=root / "seedshare.pem",
        coordinator_hash=hashlib.sha256(policies["coordinator"]).hexdigest(),
    )


@pytest.fixture
def coordinator(deployment: Deployment, tmp_path: Path) -> Iterator[CoordinatorProcess]:
    proc = CoordinatorProcess(
        serve_args(tmp_path, deployment.mock_dir, deployment.coordinator_policy, tmp_path / "s"),
        tmp_path / "coordinator.log",
    )
    try:
        proc.start()
        yield proc
    finally:
        code = proc.stop()
    assert code == 0, proc.log_tail()
    assert_unlocked(tmp_path / "s")


def assert_unlocked(store: Path) -> None:
    """The file store's flock is free: no coordinator process holds the store any more."""
    fd = os.open(store / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


# --- usage (no coordinator needed) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "command", ["serve", "set", "verify", "recover", "join", "demo", "evidence", "mock-tee"]
)
def test_help_everywhere(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([command, "--help"]) == 0
    assert f"usage: concord {command}" in capsys.readouterr().out


def test_closed_stdout_is_not_an_error(tmp_path: Path) -> None:
    """``concord ... | head``: the reader leaves early; concord stops quietly with 141 (as a
    SIGPIPE'd tool would), not with "cannot reach the coordinator"."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "mock-tee", "init", str(tmp_path / "tee")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before concord writes anything
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141, err
    assert err == ""
    assert (tmp_path / "tee").is_dir()  # the work itself was done


def test_usage_errors_exit_2(deployment: Deployment, tmp_path: Path) -> None:
    # The real console path, once: no subcommand.
    proc = concord()
    assert proc.returncode == 2
    assert "usage: concord" in proc.stderr
    # Missing required flags, unknown flags, bad choices.
    for argv in (
        ["set", str(deployment.manifest)],
        ["verify", "-c", "127.0.0.1:1", "--out", str(tmp_path)],
        ["join", "-c", "127.0.0.1:1", "--out", str(tmp_path), "--key-type", "rsa512"],
        ["serve", "--no-such-flag"],
        ["serve", "--issuer-workers", "-1"],
        ["serve", "--issuer-workers", "two"],
        ["frobnicate"],
    ):
        assert cli.main(argv) == 2, argv
    # Unusable local files: exit 2 before anything is sent.
    missing = str(tmp_path / "missing.json")
    cases = [
        ["set", "-c", "127.0.0.1:1", missing, "--out", str(tmp_path / "o")],
        ["verify", "-c", "127.0.0.1:1", missing, "--out", str(tmp_path / "o")],
        [
            "recover",
            "-c",
            "127.0.0.1:1",
            str(deployment.manifest),
            "--seedshares",
            missing,
            "--seedshare-key",
            str(deployment.seedshare_key),
        ],
        ["join", "-c", "127.0.0.1:1", "--tee", "tsm", "--out", str(tmp_path / "o")],
        [
            "join",
            "-c",
            "127.0.0.1:1",
            "--tee",
            f"mock:{deployment.mock_dir}",
            "--out",
            str(tmp_path / "o"),
        ],
        ["serve", "--tee", f"mock:{deployment.mock_dir}"],
        ["serve", "--trust-anchors", "mock:" + missing],
        [
            "verify",
            "-c",
            "127.0.0.1:1",
            str(deployment.manifest),
            "--out",
            str(tmp_path / "o"),
            "--trust-anchors",
            "bogus",
        ],
        # A policy file the manifest does not reference.
        [
            "set",
            "-c",
            "127.0.0.1:1",
            str(deployment.manifest),
            "--out",
            str(tmp_path / "o"),
            "--policy",
            str(deployment.rogue_policy),
        ],
        # The seed-share key is not a seed-share owner of the manifest.
        [
            "recover",
            "-c",
            "127.0.0.1:1",
            str(deployment.manifest),
            "--seedshares",
            str(deployment.manifest),
            "--seedshare-key",
            str(deployment.owner_key),
        ],
    ]
    for argv in cases:
        assert cli.main(argv) == 2, argv
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_unreachable_coordinator_exit_1(deployment: Deployment, tmp_path: Path) -> None:
    proc = concord_verify("127.0.0.1:1", deployment, deployment.manifest, tmp_path)
    assert proc.returncode == 1
    assert "cannot reach the coordinator at 127.0.0.1:1" in one_line_error(proc)


# --- the flow against a real coordinator process -------------------------------------------------


def test_cli_flow(deployment: Deployment, coordinator: CoordinatorProcess, tmp_path: Path) -> None:
    d = deployment
    user, mesh = coordinator.user, coordinator.mesh
    pin = ["--coordinator-policy-hash", d.coordinator_hash]
    web_mock = ["--tee", f"mock:{d.mock_dir}", "--mock-policy", str(d.web_policy), *pin]

    # A workload started before the manifest waits (retry with back-off) and then joins.
    early_out = tmp_path / "early"
    early = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator.cli",
            "join",
            "-c",
            mesh,
            *web_mock,
            "--out",
            str(early_out),
            "--timeout",
            "60",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=REPO,
    )
    try:
        # A join that gives up: bounded by --timeout, exit 1, says why.
        proc = concord("join", "-c", mesh, *web_mock, "--out", tmp_path / "late", "--timeout", "1")
        assert proc.returncode == 1
        assert "coordinator not ready: gave up after" in one_line_error(proc)
        assert "not initialized" in proc.stderr
        assert not (tmp_path / "late" / "key.pem").exists()

        # recover on an uninitialised coordinator: refused, even with --force.
        share_key = serialization.load_pem_private_key(d.seedshare_key.read_bytes(), None)
        assert isinstance(share_key, rsa.RSAPrivateKey)
        doc = SeedShareDocument.create(SeedEngine.generate(), [share_key.public_key()])
        fake_shares = tmp_path / "fake-seedshares.json"
        fake_shares.write_bytes(doc.to_json())
        proc = concord_recover(user, d, d.manifest, fake_shares, "--force")
        assert proc.returncode == 1
        assert "FAILED_PRECONDITION: not initialized" in one_line_error(proc)

        # First manifest.
        out = tmp_path / "owner"
        proc = concord_set(user, d, d.manifest, out, "--json")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["first"] is True
        first_transition = result["transition_hash"]
        assert len(bytes.fromhex(result["deployment_id"])) == 32
        assert result["files"] == ["seedshares.json", "root-ca.pem", "mesh-ca.pem"]
        assert mode(out / "seedshares.json") == 0o600
        doc = SeedShareDocument.from_json((out / "seedshares.json").read_bytes())
        assert len(doc.shares) == 1
        root_pem = (out / "root-ca.pem").read_bytes()

        early_stdout, early_stderr = early.communicate(timeout=60)
    finally:
        if early.poll() is None:
            early.kill()
            early.wait()
    assert early.returncode == 0, early_stderr
    assert json.loads(early_stdout)["attempts"] > 1
    assert (early_out / "root-ca.pem").read_bytes() == root_pem

    # An update without the owner key is a usage error; nothing changes.
    proc = concord_set(user, d, d.manifest_v2, tmp_path / "x")
    assert proc.returncode == 2
    assert "owner key" in one_line_error(proc)

    # verify: the history, byte for byte.
    vout = tmp_path / "verify"
    proc = concord_verify(user, d, d.manifest, vout)
    assert proc.returncode == 0, proc.stderr
    (m1,) = sorted((vout / "manifests").iterdir())
    assert m1.read_bytes() == d.manifest.read_bytes()
    assert m1.name == f"0001-{hashlib.sha256(d.manifest.read_bytes()).hexdigest()}.json"
    expected_policies = {
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (d.coordinator_policy, d.web_policy, d.batch_policy)
    }
    assert {p.name for p in (vout / "policies").iterdir()} == expected_policies
    for p in (vout / "policies").iterdir():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name
    assert (vout / "root-ca.pem").read_bytes() == root_pem

    # verify against another manifest: refused (1), and says why.
    proc = concord_verify(user, d, d.other_manifest, tmp_path / "v-other")
    assert proc.returncode == 1
    assert "is not the one given" in one_line_error(proc)

    # verify with production anchors: the mock coordinator does not attest.
    proc = concord("verify", "-c", user, d.manifest, "--out", tmp_path / "v-prod")
    assert proc.returncode == 1
    assert "coordinator attestation failed" in one_line_error(proc)

    # join: web (SNP, secret), batch (TDX, no secret).
    wout = tmp_path / "web"
    proc = concord("join", "-c", mesh, *web_mock, "--out", wout, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["workload_secret"] is True and info["tee"] == "snp"
    assert sorted(p.name for p in wout.iterdir()) == sorted(
        ["key.pem", "cert.pem", "chain.pem", "mesh-ca.pem", "root-ca.pem", "workload-secret"]
    )
    assert mode(wout / "key.pem") == 0o600
    assert mode(wout / "workload-secret") == 0o600
    leaf = x509.load_pem_x509_certificate((wout / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((wout / "key.pem").read_bytes(), None)
    assert public_spki(key) == public_spki(leaf.public_key())
    claims = leaf_claims(leaf)
    assert claims.policy_hash == hashlib.sha256(d.web_policy.read_bytes()).digest()
    assert claims.workload_secret_id == "web"
    secret_web = (wout / "workload-secret").read_bytes()
    assert len(secret_web) >= 32
    assert (early_out / "workload-secret").read_bytes() == secret_web

    bout = tmp_path / "batch"
    proc = concord_join_mock(mesh, d, d.batch_policy, bout, "--mock-tee-type", "tdx")
    assert proc.returncode == 0, proc.stderr
    assert "coordinator-policy-hash not given" in proc.stderr  # unpinned: warned
    assert not (bout / "workload-secret").exists()
    assert mode(bout / "key.pem") == 0o600

    # join with a policy the manifest does not have: refused at once, clear message.
    proc = concord_join_mock(mesh, d, d.rogue_policy, tmp_path / "rogue", *pin)
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert "PERMISSION_DENIED" in line
    rogue_hash = hashlib.sha256(d.rogue_policy.read_bytes()).hexdigest()
    assert f"policy {rogue_hash} is not in the manifest" in line
    assert "gave up after" not in proc.stderr  # a refusal is final: no retry loop ran
    assert not (tmp_path / "rogue" / "key.pem").exists()

    # join pinned to another coordinator policy: the coordinator is not trusted.
    proc = concord_join_mock(
        mesh, d, d.web_policy, tmp_path / "p", "--coordinator-policy-hash", "00" * 32
    )
    assert proc.returncode == 1
    assert "coordinator attestation failed" in one_line_error(proc)

    # Pinning the deployment (DESIGN §12): by ID or by root CA file; another ID is refused with
    # both IDs named, before any evidence or update is sent.
    deployment_id = hashlib.sha256(
        public_spki(x509.load_pem_x509_certificate(root_pem).public_key())
    ).hexdigest()
    proc = concord_verify(
        user, d, d.manifest, tmp_path / "pin-ok", "--root-ca", out / "root-ca.pem"
    )
    assert proc.returncode == 0, proc.stderr
    proc = concord_verify(
        user, d, d.manifest, tmp_path / "pin-id", "--deployment-id", deployment_id, "--json"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["deployment_id"] == deployment_id
    other = "ab" * 32
    for proc in (
        concord_verify(user, d, d.manifest, tmp_path / "pin-bad", "--deployment-id", other),
        concord_join_mock(mesh, d, d.web_policy, tmp_path / "pin-join", "--deployment-id", other),
        concord_set(
            user, d, d.manifest_v2, tmp_path / "pin-set", "--owner-key", d.owner_key,
            "--deployment-id", other,
        ),
    ):  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        line = one_line_error(proc)
        assert "deployment mismatch" in line and other in line and deployment_id in line
    assert not (tmp_path / "pin-join" / "key.pem").exists()
    # --previous: an update only on top of exactly that transition.
    proc = concord_set(
        user, d, d.manifest_v2, tmp_path / "prev", "--owner-key", d.owner_key,
        "--previous", "cd" * 32,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "not --previous" in one_line_error(proc)

    # recover on a ready coordinator: refused even with --force.
    proc = concord_recover(user, d, d.manifest, out / "seedshares.json", "--force")
    assert proc.returncode == 1
    assert "not in recovery mode" in one_line_error(proc)

    # Update signed by the owner key; the old manifest no longer verifies as latest.
    proc = concord_set(
        user, d, d.manifest_v2, tmp_path / "owner2", "--owner-key", d.owner_key, "--json",
        "--previous", first_transition, "--root-ca", out / "root-ca.pem",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    update = json.loads(proc.stdout)
    assert update["deployment_id"] == deployment_id
    assert update["first"] is False and update["files"] == ["root-ca.pem", "mesh-ca.pem"]
    assert not (tmp_path / "owner2" / "seedshares.json").exists()
    assert (tmp_path / "owner2" / "root-ca.pem").read_bytes() == root_pem
    proc = concord_verify(user, d, d.manifest, tmp_path / "v-old")
    assert proc.returncode == 1
    proc = concord_verify(user, d, d.manifest_v2, tmp_path / "v2", "--json")
    assert proc.returncode == 0, proc.stderr
    history = json.loads(proc.stdout)
    assert [m["transition_hash"] for m in history["manifests"]][-1] == update["transition_hash"]
    assert len(list((tmp_path / "v2" / "manifests").iterdir())) == 2

    # Restart on the same store: recovery mode; recover (the update is the latest manifest).
    assert coordinator.stop() == 0
    coordinator.start()
    user, mesh = coordinator.user, coordinator.mesh
    proc = concord_verify(user, d, d.manifest_v2, tmp_path / "v3")
    assert proc.returncode == 1
    assert "recovery mode" in one_line_error(proc)
    proc = concord_recover(user, d, d.manifest_v2, out / "seedshares.json", "--json")
    assert proc.returncode == 0, proc.stderr
    recovered = json.loads(proc.stdout)
    assert recovered["recovered"] is True and recovered["restored_latest"] is False
    assert recovered["transition_hash"] == update["transition_hash"]
    proc = concord("join", "-c", mesh, *web_mock, "--out", wout)
    assert proc.returncode == 0, proc.stderr
    assert (wout / "root-ca.pem").read_bytes() == root_pem
    assert (wout / "workload-secret").read_bytes() == secret_web
    leaf = x509.load_pem_x509_certificate((wout / "cert.pem").read_bytes())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "web.v2" in sans.get_values_for_type(x509.DNSName)


# --- the client's checks on what a verified coordinator returns (pure, no process) ---------------


def _history_response(
    manifests: list[bytes], policies: list[bytes], signing_key: ec.EllipticCurvePrivateKey
) -> pb.GetManifestsResponse:
    previous = ZERO_HASH
    for raw in manifests:
        previous = transition_hash(hashlib.sha256(raw).digest(), previous)
    latest = SignedLatest.sign(previous, signing_key)
    return pb.GetManifestsResponse(
        manifests=manifests,
        policies=policies,
        root_ca_pem=b"root",
        mesh_ca_pem=b"mesh",
        latest_transition_hash=previous,
        latest_signature=latest.signature,
        history_signing_public_key=public_spki(signing_key),
    )


def test_verify_history_checks(deployment: Deployment) -> None:
    d = deployment
    m1, m2 = d.manifest.read_bytes(), d.manifest_v2.read_bytes()
    pols = [p.read_bytes() for p in (d.coordinator_policy, d.web_policy, d.batch_policy)]
    key = SeedEngine.generate().history_signing_key
    good = _history_response([m1, m2], pols, key)
    history = verify_history(good, m2)
    t1 = transition_hash(hashlib.sha256(m1).digest(), ZERO_HASH)
    assert history.transitions == (t1, transition_hash(hashlib.sha256(m2).digest(), t1))
    assert set(history.policies) == {hashlib.sha256(p).hexdigest() for p in pols}

    def refused(resp: pb.GetManifestsResponse, manifest: bytes, match: str) -> None:
        with pytest.raises(VerificationFailed, match=match):
            verify_history(resp, manifest)

    refused(good, m1, "is not the one given")  # m1 is not the latest
    refused(_history_response([], pols, key), m2, "no manifests")
    # Manifests reordered but the latest kept: the chain no longer ends at `latest`.
    swapped = pb.GetManifestsResponse()
    swapped.CopyFrom(good)
    del swapped.manifests[:]
    swapped.manifests.extend([m1, m1, m2])
    refused(swapped, m2, "do not chain up")
    # `latest` signed by another key.
    forged = pb.GetManifestsResponse()
    forged.CopyFrom(good)
    forged.history_signing_public_key = public_spki(SeedEngine.generate().history_signing_key)
    refused(forged, m2, "latest signature")
    refused(_history_response([m1, m2], pols[:2], key), m2, "policies missing")
    extra = [*pols, d.rogue_policy.read_bytes()]
    refused(_history_response([m1, m2], extra, key), m2, "unreferenced policies")


def test_verify_issued_chain_checks() -> None:
    def ca() -> CertificateAuthority:
        return CertificateAuthority(
            ec.generate_private_key(ec.SECP384R1()),
            ec.generate_private_key(ec.SECP384R1()),
            os.urandom(32),
        )

    authority, other = ca(), ca()
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = authority.issue_leaf(
        leaf_key.public_key(),
        sans=["web"],
        policy_hash=os.urandom(32),
        tee="snp",
        measurement=os.urandom(48),
        tcb=os.urandom(8),
        workload_secret_id="",
    )
    chain = authority.chain_pem(leaf)
    spki = public_spki(leaf_key)
    verify_issued_chain(chain, authority.mesh_ca_pem, authority.root_pem, spki)

    with pytest.raises(VerificationFailed, match="does not certify our key"):
        verify_issued_chain(
            chain, authority.mesh_ca_pem, authority.root_pem, public_spki(other.mesh_key)
        )
    with pytest.raises(VerificationFailed, match="not signed by the mesh CA"):
        verify_issued_chain(chain, other.mesh_ca_pem, authority.root_pem, spki)
    with pytest.raises(VerificationFailed, match="not signed by the root CA"):
        verify_issued_chain(chain, authority.mesh_ca_pem, other.root_pem, spki)
    with pytest.raises(VerificationFailed, match="not signed by the intermediate"):
        verify_issued_chain(
            authority.chain_pem(leaf).split(b"-----END CERTIFICATE-----\n")[0]
            + b"-----END CERTIFICATE-----\n"
            + other.intermediate_pem,
            authority.mesh_ca_pem,
            authority.root_pem,
            spki,
        )
    with pytest.raises(VerificationFailed, match="want leaf and intermediate"):
        verify_issued_chain(
            authority.intermediate_pem, authority.mesh_ca_pem, authority.root_pem, spki
        )


# --- what the workload side loads ----------------------------------------------------------------

# Runs ``concord`` in a fresh interpreter and writes the names of every module it loaded to the
# file named by the first argument when the interpreter exits (also after SystemExit from --help).
_MODULES_PROBE = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from coordinator.cli import main
sys.exit(main(sys.argv[1:]))
"""
# The workload side never needs the server, the cluster, issuance, the State or metrics.
_SERVER_SIDE = (
    "coordinator.service",
    "coordinator.cluster",
    "coordinator.core.issuance",
    "coordinator.core.state",
    "coordinator.store.file",
    "coordinator.store.etcd",
    "prometheus_client",
    "etcd3",
)


def _loaded_by(
    tmp_path: Path, *args: str | Path
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    out = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.json"
    proc = subprocess.run(
        [sys.executable, "-c", _MODULES_PROBE, str(out), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        cwd=REPO,
    )
    return proc, json.loads(out.read_text())


def test_join_loads_no_server_side(
    deployment: Deployment, coordinator: CoordinatorProcess, tmp_path: Path
) -> None:
    d = deployment
    proc, modules = _loaded_by(tmp_path, "join", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "coordinator.cli" in modules  # the probe saw the command's own imports
    assert [m for m in modules if m.startswith(_SERVER_SIDE)] == []

    assert concord_set(coordinator.user, d, d.manifest, tmp_path / "set").returncode == 0
    proc, modules = _loaded_by(
        tmp_path,
        "join", "-c", coordinator.mesh, "--tee", f"mock:{d.mock_dir}",
        "--mock-policy", d.web_policy, "--coordinator-policy-hash", d.coordinator_hash,
        "--out", tmp_path / "web",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "web" / "cert.pem").is_file()  # a real, complete join
    assert "coordinator.client.operations" in modules
    assert [m for m in modules if m.startswith(_SERVER_SIDE)] == []
