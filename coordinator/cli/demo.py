"""``concord demo``: the whole lifecycle on one machine with the software TEE.

A real coordinator *process* (``python -m coordinator.cli serve``) on the file store, driven by
the same client operations the CLI uses: set a manifest, join workloads (SNP and TDX mock CVMs),
verify the history, update the manifest with the owner key, restart the process (it comes back
in recovery mode), recover it with the seed share, join again. Meanwhile two workloads run the
agent of ``concord join --watch`` and talk mutual TLS to each other throughout
(:mod:`coordinator.cli.demo_mesh`); not one connection may fail. It checks what must hold: the
root CA survives updates and recovery, the mesh CA changes on an update, workload secrets are
stable. Every process started here is stopped on success, error, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from coordinator.cli.demo_mesh import Mesh
from coordinator.client.agent import CredentialSet
from coordinator.supervisor import Supervised, SupervisorError, python_env

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class DemoFailed(Exception):
    """A step of the demo failed or a property it checks does not hold."""


# --- a coordinator process -----------------------------------------------------------------------


class CoordinatorProcess:
    """``concord serve`` as a supervised child process; :meth:`start` returns once it serves.

    Start it from the main thread: on Linux the child is bound to the lifetime of the thread
    that forked it (PR_SET_PDEATHSIG), so a killed parent never leaves a coordinator behind.
    """

    def __init__(
        self,
        serve_args: Sequence[str],
        log_path: Path,
        *,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self.serve_args = list(serve_args)
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.info: dict[str, Any] = {}
        self.child = Supervised(
            [sys.executable, "-m", "coordinator.cli", "serve", *self.serve_args],
            log_path,
            env=python_env(PROJECT_ROOT),
            die_with_parent=True,
            stop_timeout=STOP_TIMEOUT,
            name="coordinator",
        )

    @property
    def user(self) -> str:
        return str(self.info["user"])

    @property
    def mesh(self) -> str:
        return str(self.info["mesh"])

    @property
    def http(self) -> str:
        return str(self.info["http"])

    @property
    def pid(self) -> int:
        pid = self.child.pid
        assert pid is not None
        return pid

    def start(self) -> dict[str, Any]:
        try:
            info = self.child.start_ready(self.startup_timeout, accept=_is_serving)
        except SupervisorError as exc:
            raise DemoFailed(str(exc)) from None
        self.info = info
        return info

    def log_tail(self, lines: int = 15) -> str:
        return self.child.log_tail(lines)

    def running(self) -> bool:
        return self.child.running

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait, SIGKILL if it does not go. Returns the exit code (None: never ran)."""
        return self.child.stop(timeout)

    def __enter__(self) -> CoordinatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _is_serving(info: dict[str, Any]) -> bool:
    return info.get("event") == "serving"


def serve_args(workdir: Path, mock_dir: Path, coordinator_policy: Path, store: Path) -> list[str]:
    """Flags of a local mock coordinator on loopback with free ports."""
    return [
        "--store",
        f"file:{store}",
        "--tee",
        f"mock:{mock_dir}",
        "--mock-policy",
        str(coordinator_policy),
        "--trust-anchors",
        f"mock:{mock_dir}",
        "--user-addr",
        "127.0.0.1:0",
        "--mesh-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--log-level",
        "warning",
    ]


# --- fixtures: policies, keys, manifest ----------------------------------------------------------


@dataclass(frozen=True)
class DemoFiles:
    mock_dir: Path
    coordinator_policy: Path
    workload_policies: tuple[Path, ...]
    manifest: Path
    manifest_update: Path
    owner_key: Path
    seedshare_key: Path
    reference_values: dict[str, Any]


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    from coordinator.client.operations import write_file

    write_file(path, data, mode)
    return path


def _policy_doc(name: str, run: str) -> bytes:
    """A policy is any bytes the CVM is launched with; this one names the workload."""
    return json.dumps({"demo": run, "workload": name, "command": ["/bin/" + name]}).encode() + b"\n"


def manifest_json(
    coordinator_policy: bytes,
    workloads: Sequence[tuple[bytes, Sequence[str], str]],
    reference_values: dict[str, Any],
    owner_spki: bytes,
    seedshare_pkcs1: bytes,
) -> bytes:
    policies: dict[str, Any] = {
        hashlib.sha256(coordinator_policy).hexdigest(): {
            "SANs": ["coordinator"],
            "Role": "coordinator",
        }
    }
    for policy, sans, secret_id in workloads:
        entry: dict[str, Any] = {"SANs": list(sans)}
        if secret_id:
            entry["WorkloadSecretID"] = secret_id
        policies[hashlib.sha256(policy).hexdigest()] = entry
    doc = {
        "Policies": policies,
        "ReferenceValues": reference_values,
        "WorkloadOwnerKeyDigests": [hashlib.sha256(owner_spki).hexdigest()],
        "SeedshareOwnerPubKeys": [seedshare_pkcs1.hex()],
    }
    return json.dumps(doc, indent=2).encode() + b"\n"


def workload_sans(i: int, updated: bool = False) -> list[str]:
    sans = [f"workload-{i}", f"workload-{i}.demo.svc", f"spiffe://concord.demo/workload-{i}"]
    if updated and i == 0:
        sans.append("v2.workload-0")
    return sans


def prepare(workdir: Path, workloads: int) -> DemoFiles:
    from attestation.providers import mock
    from coordinator.core.authz import public_spki, rsa_pkcs1_der

    mock_dir = workdir / "mock-tee"
    refs = mock.init(mock_dir)
    run = secrets.token_hex(8)
    pdir = workdir / "policies"
    pdir.mkdir(parents=True, exist_ok=True)
    coord_policy = _policy_doc("coordinator", run)
    coord_path = _write(pdir / "coordinator.policy", coord_policy)
    wl = [_policy_doc(f"workload-{i}", run) for i in range(workloads)]
    wl_paths = tuple(_write(pdir / f"workload-{i}.policy", p) for i, p in enumerate(wl))
    owner = ec.generate_private_key(ec.SECP256R1())
    seedshare = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    pem = serialization.PrivateFormat.PKCS8
    owner_path = _write(
        workdir / "owner-key.pem",
        owner.private_bytes(serialization.Encoding.PEM, pem, serialization.NoEncryption()),
        0o600,
    )
    seedshare_path = _write(
        workdir / "seedshare-key.pem",
        seedshare.private_bytes(serialization.Encoding.PEM, pem, serialization.NoEncryption()),
        0o600,
    )

    def build(updated: bool) -> bytes:
        return manifest_json(
            coord_policy,
            [(p, workload_sans(i, updated), f"workload-{i}") for i, p in enumerate(wl)],
            refs,
            public_spki(owner),
            rsa_pkcs1_der(seedshare),
        )

    return DemoFiles(
        mock_dir=mock_dir,
        coordinator_policy=coord_path,
        workload_policies=wl_paths,
        manifest=_write(workdir / "manifest.json", build(False)),
        manifest_update=_write(workdir / "manifest-v2.json", build(True)),
        owner_key=owner_path,
        seedshare_key=seedshare_path,
        reference_values=refs,
    )


# --- the flow ------------------------------------------------------------------------------------


class Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = round((time.perf_counter() - started) * 1000, 1)


def _probe(http: str, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{http}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _save_cas(directory: Path, root_pem: bytes, mesh_pem: bytes) -> None:
    """What ``concord set`` writes, kept per step so the CAs can be compared afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / "root-ca.pem", root_pem)
    _write(directory / "mesh-ca.pem", mesh_pem)


def _fp(pem: bytes) -> str:
    from coordinator.client.operations import cert_fingerprint

    return cert_fingerprint(pem)


LEAF_SECONDS = 20
"""Leaf lifetime of the demo's coordinator: renewals every ten seconds or so, while a restart
with recovery (a few seconds) still fits well inside one leaf."""
TIMER_RENEWALS = 2
"""Renewals by the clock (not by an update or recovery) the demo waits for after recovery."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _agents_hold(mesh: Mesh, what: Callable[[CredentialSet], Any]) -> set[Any]:
    """``what`` of each agent's current set (a set of one value when they agree)."""
    return {what(w.agent.creds) if w.agent.creds else None for w in mesh.workloads}


def _signed_by(cert_pem: bytes, ca: x509.Certificate) -> bool:
    try:
        x509.load_pem_x509_certificate(cert_pem).verify_directly_issued_by(ca)
    except Exception:
        return False
    return True


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise DemoFailed(what)


async def run(
    workdir: Path, workloads: int, progress: Callable[[str], None] = lambda _msg: None
) -> dict[str, Any]:
    """Run the demo in ``workdir``; returns the report. Raises DemoFailed."""
    from attestation.anchors import mock as mock_anchors
    from attestation.providers.mock import MockProvider
    from attestation.reference import parse_reference_values
    from coordinator.client.channel import CoordinatorPolicy
    from coordinator.client.operations import (
        OperationRefused,
        fetch_and_verify_history,
        join,
        recover,
        set_manifest,
    )

    timer = Timer()
    started = time.perf_counter()
    with timer("prepare"):
        files = await asyncio.to_thread(prepare, workdir, workloads)
    progress(f"mock TEE, {workloads} workload policies, manifest and keys in {workdir}")
    anchors = mock_anchors(files.mock_dir)
    manifest = files.manifest.read_bytes()
    manifest_v2 = files.manifest_update.read_bytes()
    policies = [files.coordinator_policy.read_bytes()] + [
        p.read_bytes() for p in files.workload_policies
    ]
    coord_hash = hashlib.sha256(files.coordinator_policy.read_bytes()).digest()
    join_policy = CoordinatorPolicy(
        anchors, parse_reference_values(files.reference_values), coord_hash
    )
    tees = ["snp" if i % 2 == 0 else "tdx" for i in range(workloads)]
    providers = [
        MockProvider(files.mock_dir, p.read_bytes(), tee=tee)
        for p, tee in zip(files.workload_policies, tees, strict=True)
    ]
    wl_dirs = [workdir / "workloads" / f"workload-{i}" for i in range(workloads)]
    owner_key = serialization.load_pem_private_key(files.owner_key.read_bytes(), None)
    seedshare_key = serialization.load_pem_private_key(files.seedshare_key.read_bytes(), None)
    assert isinstance(seedshare_key, rsa.RSAPrivateKey)
    args = serve_args(workdir, files.mock_dir, files.coordinator_policy, workdir / "store")
    # A fixed mesh port, so the agents find the coordinator again after its restart; short
    # leaves, so they renew while the demo runs (DESIGN §15).
    args += ["--mesh-addr", f"127.0.0.1:{_free_port()}", "--leaf-lifetime", f"{LEAF_SECONDS}s"]
    args += ["--watch-heartbeat", "1"]
    coordinator = CoordinatorProcess(args, workdir / "coordinator.log")
    issued = 0
    mesh: Mesh | None = None

    async def join_all(tag: str) -> list[Any]:
        nonlocal issued
        with timer(tag):
            results = await asyncio.gather(
                *(
                    join(coordinator.mesh, prov, policy=join_policy, out_dir=d, timeout=30)
                    for prov, d in zip(providers, wl_dirs, strict=True)
                )
            )
        issued += len(results)
        return list(results)

    try:
        with timer("start"):
            coordinator.start()
        progress(
            f"coordinator pid {coordinator.pid}: user {coordinator.user}, mesh {coordinator.mesh}"
        )

        with timer("set_manifest"):
            first = await set_manifest(coordinator.user, manifest, policies, anchors=anchors)
        _write(workdir / "seedshares.json", first.seed_share_document, 0o600)
        _save_cas(workdir / "set-1", first.root_ca_pem, first.mesh_ca_pem)
        progress(f"manifest set: transition {first.transition_hash.hex()[:16]}…")

        joined = await join_all("join")
        _check(all(r.root_ca_pem == first.root_ca_pem for r in joined), "join: root CA differs")
        secrets_before = [(d / "workload-secret").read_bytes() for d in wl_dirs]
        progress(f"{workloads} workloads joined ({', '.join(tees)})")

        with timer("mesh_start"):
            mesh = Mesh(
                workdir,
                (providers[0], providers[min(1, workloads - 1)]),
                coordinator.mesh,
                join_policy,
            )
            await mesh.start()
        progress("two workloads' agents joined; they talk mutual TLS to each other from now on")

        with timer("verify"):
            h1 = await fetch_and_verify_history(coordinator.user, manifest, anchors=anchors)
        _check(len(h1.manifests) == 1, "verify: expected a history of one manifest")

        with timer("update_manifest"):
            second = await set_manifest(
                coordinator.user, manifest_v2, policies, anchors=anchors, owner_key=owner_key
            )
        _check(not second.first, "update: the coordinator treated it as a first manifest")
        _save_cas(workdir / "set-2", second.root_ca_pem, second.mesh_ca_pem)
        with timer("verify_update"):
            h2 = await fetch_and_verify_history(coordinator.user, manifest_v2, anchors=anchors)
        _check(
            h2.transitions == (first.transition_hash, second.transition_hash),
            "verify: the history is not [first, update]",
        )
        progress(f"manifest updated: transition {second.transition_hash.hex()[:16]}…")
        with timer("mesh_follow_update"):
            await mesh.wait(
                lambda: (
                    _agents_hold(mesh, lambda c: c.latest_transition_hash)
                    == {second.transition_hash}
                ),
                60,
                "the agents to renew after the update",
            )
        progress("both agents renewed under the updated manifest, without a restart")

        with timer("restart"):
            code = coordinator.stop()
            _check(code == 0, f"coordinator exited with code {code} on SIGTERM")
            coordinator.start()
        readyz_before = await asyncio.to_thread(_probe, coordinator.http, "/readyz")
        try:
            await fetch_and_verify_history(coordinator.user, manifest_v2, anchors=anchors)
            in_recovery = False
        except OperationRefused as exc:
            in_recovery = exc.reason == "recovery_mode"
        _check(in_recovery, "restart: the coordinator is not in recovery mode")
        progress(f"coordinator restarted (pid {coordinator.pid}): recovery mode")

        with timer("recover"):
            await recover(
                coordinator.user,
                manifest_v2,
                (workdir / "seedshares.json").read_bytes(),
                seedshare_key,
                anchors=anchors,
            )
        readyz_after = await asyncio.to_thread(_probe, coordinator.http, "/readyz")
        with timer("verify_recovered"):
            h3 = await fetch_and_verify_history(coordinator.user, manifest_v2, anchors=anchors)
        progress("recovered with the seed share")
        recovered_ca = x509.load_pem_x509_certificate(h3.mesh_ca_pem)
        with timer("mesh_follow_recovery"):
            await mesh.wait(
                lambda: (
                    _agents_hold(mesh, lambda c: _signed_by(c.cert_pem, recovered_ca)) == {True}
                ),
                60,
                "the agents to renew under the recovered mesh CA",
            )
        renewed = {w.name: w.agent.status.renewals for w in mesh.workloads}
        with timer("mesh_renewals"):
            await mesh.wait(
                lambda: all(
                    w.agent.status.renewals >= renewed[w.name] + TIMER_RENEWALS
                    for w in mesh.workloads
                ),
                LEAF_SECONDS * (TIMER_RENEWALS + 1),
                "timer renewals",
            )
        await mesh.stop()
        mesh_report = mesh.report()
        progress(
            f"mesh: {mesh_report['connections_ok']} mutual TLS connections, "
            f"{mesh_report['connections_failed']} failed, renewals {mesh_report['renewals']}"
        )

        rejoined = await join_all("rejoin")
        secrets_after = [(d / "workload-secret").read_bytes() for d in wl_dirs]
        leaf0 = x509.load_pem_x509_certificate(rejoined[0].cert_pem)
        sans0 = leaf0.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        progress(f"{workloads} workloads joined again")

        root = first.root_ca_pem
        checks = {
            "root_ca_unchanged": all(
                _fp(pem) == _fp(root)
                for pem in (second.root_ca_pem, h3.root_ca_pem, *(r.root_ca_pem for r in rejoined))
            ),
            "mesh_ca_changed_on_update": _fp(first.mesh_ca_pem) != _fp(second.mesh_ca_pem),
            "recovery_mode_after_restart": in_recovery and readyz_before == 503,
            "ready_after_recovery": readyz_after == 200,
            "history_verified": h3.transitions == h2.transitions,
            "workload_secrets_stable": secrets_before == secrets_after,
            "update_applied": "v2.workload-0" in sans0.get_values_for_type(x509.DNSName),
            "rejoined_under_recovered_mesh_ca": all(
                r.mesh_ca_pem == h3.mesh_ca_pem for r in rejoined
            ),
            "mesh_no_failed_connection": mesh_report["connections_failed"] == 0
            and mesh_report["connections_ok"] > 0,
            "mesh_agents_renewed": all(
                n >= 3 + TIMER_RENEWALS for n in mesh_report["renewals"].values()
            ),
        }
        failed = [name for name, ok in checks.items() if not ok]
        _check(not failed, f"checks failed: {', '.join(failed)}")
        with timer("stop"):
            code = coordinator.stop()
        _check(code == 0, f"coordinator exited with code {code} on SIGTERM")
    except DemoFailed:
        raise
    except Exception as exc:
        tail = coordinator.log_tail()
        raise DemoFailed(
            f"{type(exc).__name__}: {exc}" + (f"\ncoordinator log:\n{tail}" if tail else "")
        ) from exc
    finally:
        if mesh is not None:
            await mesh.stop()
        coordinator.stop()

    timer.ms["total"] = round((time.perf_counter() - started) * 1000, 1)
    return {
        "ok": True,
        "workloads": workloads,
        "tee_types": {t: tees.count(t) for t in ("snp", "tdx")},
        "timings_ms": timer.ms,
        "transitions": [first.transition_hash.hex(), second.transition_hash.hex()],
        "root_ca_sha256": _fp(root),
        "mesh_ca_sha256": {
            "initial": _fp(first.mesh_ca_pem),
            "after_update": _fp(second.mesh_ca_pem),
            "after_recovery": _fp(h3.mesh_ca_pem),
        },
        "certificates_issued": issued,
        "mesh": mesh_report,
        "checks": checks,
        "workdir": str(workdir),
    }


_HUMAN_TIMINGS = (
    "start",
    "set_manifest",
    "join",
    "verify",
    "update_manifest",
    "restart",
    "recover",
    "rejoin",
    "total",
)


def _human(report: dict[str, Any], kept: bool) -> list[str]:
    t = report["timings_ms"]
    n = report["workloads"]
    lines = [
        "",
        "concord demo: all checks passed",
        f"  workloads            {n} ({report['tee_types']['snp']} SNP, "
        f"{report['tee_types']['tdx']} TDX), {report['certificates_issued']} certificates issued",
        f"  transitions          {report['transitions'][0]}",
        f"                       {report['transitions'][1]}",
        f"  root CA              sha256:{report['root_ca_sha256']} (unchanged throughout)",
        f"  mesh CA              initial       sha256:{report['mesh_ca_sha256']['initial'][:16]}…",
        f"                       after update  sha256:{report['mesh_ca_sha256']['after_update'][:16]}…",
        f"                       after recover sha256:{report['mesh_ca_sha256']['after_recovery'][:16]}…",
        "  timings (ms)         " + ", ".join(f"{k} {t[k]:.0f}" for k in _HUMAN_TIMINGS),
        f"  joins                {n} concurrent in {t['join']:.0f} ms, "
        f"again after recovery in {t['rejoin']:.0f} ms",
        f"  mesh                 {report['mesh']['connections_ok']} mutual TLS connections "
        f"between two workloads, {report['mesh']['connections_failed']} failed; agent renewals "
        + ", ".join(f"{k}={v}" for k, v in sorted(report["mesh"]["renewals"].items())),
    ]
    if kept:
        lines.append(f"  files                {report['workdir']}")
    return lines


def main(args: argparse.Namespace) -> int:
    """Entry of ``concord demo`` (called by coordinator.cli)."""
    keep = Path(args.keep) if args.keep else None
    quiet = bool(args.json)
    # The agents' reconnect warnings during the restart are expected: the report says the rest.
    agent_log = logging.getLogger("concord.agent")
    agent_log.addHandler(logging.NullHandler())
    agent_log.propagate = False

    def progress(msg: str) -> None:
        if not quiet:
            print(f"- {msg}", flush=True)

    async def guarded(workdir: Path) -> dict[str, Any]:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is not None:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await run(workdir, args.workloads, progress)
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            report = asyncio.run(guarded(keep))
        else:
            with tempfile.TemporaryDirectory(prefix="concord-demo-") as tmp:
                report = asyncio.run(guarded(Path(tmp)))
                report["workdir"] = None
    except DemoFailed as exc:
        print(f"concord: demo failed: {exc}", file=sys.stderr, flush=True)
        return 1
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True), flush=True)
    else:
        print("\n".join(_human(report, keep is not None)), flush=True)
    return 0
