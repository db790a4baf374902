"""The workload agent (``concord join --watch``, DESIGN §15) against real coordinators: timer
renewals of short leaves, a re-join after an update with the CA bundle, complete sets switched
atomically, several addresses, and an unreachable coordinator (files untouched, not ready before
expiry, then a typed exit)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from coordinator.backoff import Backoff
from coordinator.cli.files import CURRENT, CredentialDir
from coordinator.client.agent import Agent, AgentConfig, CredentialsExpired
from coordinator.service.feed import LifecycleConfig
from coordinator.service.server import CoordinatorServer
from tests.integration.service_helpers import (  # noqa: F401  (fixtures)
    ALL_POLICIES,
    WEB_POLICY,
    Coordinators,
    Keys,
    MockTee,
    connect,
    coordinators_fixture,
    keys_fixture,
    manifest_bytes,
    manifest_dict,
    mock_tee_fixture,
    set_first_manifest,
    update_request,
)

pytestmark = pytest.mark.timeout(90)

SHORT = LifecycleConfig(leaf_lifetime=timedelta(seconds=4), heartbeat=0.5)
FAST = Backoff(base=0.05, cap=0.3, jitter=0.2)


async def _deployed(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys
) -> tuple[CoordinatorServer, bytes]:
    server = await coordinators.start(lifecycle=SHORT)
    async with await connect(server, tee=mock_tee) as user:
        manifest = manifest_bytes(manifest_dict(mock_tee, owners=[keys.owner]))
        first = await set_first_manifest(user, manifest, ALL_POLICIES)
    return server, bytes(first.transition_hash)


def _agent(mock_tee: MockTee, addresses: tuple[str, ...], out: Path) -> Agent:
    config = AgentConfig(
        addresses=addresses,
        policy=mock_tee.coordinator_policy(),
        backoff=FAST,
        first_join_timeout=30,
        rpc_timeout=10,
    )
    return Agent(config, mock_tee.provider(WEB_POLICY), CredentialDir(out))


@contextlib.asynccontextmanager
async def _running(agent: Agent) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(agent.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _read_set(out: Path) -> dict[str, bytes]:
    current = (out / CURRENT).resolve()
    return {p.name: p.read_bytes() for p in current.iterdir()}


def _issued_by_bundle(files: dict[str, bytes]) -> list[int]:
    """Indexes of the bundle's CAs that signed the leaf."""
    leaf = x509.load_pem_x509_certificate(files["cert.pem"])
    signers = []
    for i, ca in enumerate(x509.load_pem_x509_certificates(files["mesh-ca.pem"])):
        try:
            leaf.verify_directly_issued_by(ca)
            signers.append(i)
        except Exception:
            pass
    return signers


async def test_agent_renews_follows_an_update_and_switches_whole_sets(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys, tmp_path: Path
) -> None:
    server, first = await _deployed(coordinators, mock_tee, keys)
    out = tmp_path / "creds"
    # A dead address first: the agent moves on to the next one.
    agent = _agent(mock_tee, ("127.0.0.1:1", server.addresses["mesh"]), out)
    async with _running(agent):
        await asyncio.wait_for(agent.wait_renewals(1), 30)
        files = _read_set(out)
        assert set(files) == {
            "key.pem",
            "cert.pem",
            "chain.pem",
            "mesh-ca.pem",
            "root-ca.pem",
            "workload-secret",
        }
        assert os.stat(out / CURRENT / "key.pem").st_mode & 0o777 == 0o600
        assert (out / "cert.pem").read_bytes() == files["cert.pem"]  # the fixed-path links
        assert _issued_by_bundle(files) == [0]
        assert agent.status.failures >= 1 and agent.current_status().ready
        # Timer renewals: a 4 s leaf is renewed at about 2 s, each time with a new key.
        await asyncio.wait_for(agent.wait_renewals(3), 30)
        assert _read_set(out)["key.pem"] != files["key.pem"]
        sets = sorted(p.name for p in out.iterdir() if p.name.startswith("set-"))
        assert len(sets) <= 2  # the current set and the one before it

        async with await connect(server, tee=mock_tee) as user:
            updated = manifest_bytes(
                manifest_dict(mock_tee, owners=[keys.owner], workloads={WEB_POLICY: {}})
            )
            request = update_request(updated, ALL_POLICIES[:2], first, keys.owner)
            resp = await user.user.SetManifest(request, timeout=20)
        new_hash = bytes(resp.transition_hash)

        async def renewed_under_update() -> None:
            while agent.creds is None or agent.creds.latest_transition_hash != new_hash:
                await agent.wait_renewals(agent.status.renewals + 1)

        await asyncio.wait_for(renewed_under_update(), 30)
        after = _read_set(out)
        bundle = x509.load_pem_x509_certificates(after["mesh-ca.pem"])
        assert len(bundle) == 2  # the new mesh CA and, within the grace, the previous one
        assert _issued_by_bundle(after)[0] == 0
        assert "workload-secret" not in after  # the updated policy has no secret ID
        assert not (out / "workload-secret").is_symlink()


async def test_unreachable_coordinator_keeps_files_then_not_ready_then_exit(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys, tmp_path: Path
) -> None:
    server, _ = await _deployed(coordinators, mock_tee, keys)
    out = tmp_path / "creds"
    agent = _agent(mock_tee, (server.addresses["mesh"],), out)
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.wait_renewals(1), 30)
        await coordinators.stop(server)
        before = _read_set(out)
        link = os.readlink(out / CURRENT)

        async def not_ready() -> None:
            while agent.current_status().ready:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(not_ready(), 30)
        assert not task.done()  # not ready is reported while the leaf is still valid
        with pytest.raises(CredentialsExpired) as exc:
            await asyncio.wait_for(task, 30)
        assert exc.value.reason == "credentials_expired"
        assert _read_set(out) == before and os.readlink(out / CURRENT) == link
        assert agent.status.failures >= 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _line(stream: asyncio.StreamReader) -> dict[str, object]:
    import json

    raw = await asyncio.wait_for(stream.readline(), 60)
    assert raw, "the agent ended its output"
    doc: dict[str, object] = json.loads(raw)
    return doc


async def test_join_watch_command(
    coordinators: Coordinators, mock_tee: MockTee, keys: Keys, tmp_path: Path
) -> None:
    """The real command: JSON lines on stdout, the hook after each set, the HTTP endpoint, and
    exit 0 on SIGTERM."""
    import signal
    import sys

    from tests.integration.service_helpers import http_get, sha256

    server, _ = await _deployed(coordinators, mock_tee, keys)
    policy = tmp_path / "web.policy"
    policy.write_bytes(WEB_POLICY)
    out = tmp_path / "creds"
    hook_log = tmp_path / "hook.log"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coordinator.cli", "join", "--watch",
        "-c", "127.0.0.1:1", "-c", server.addresses["mesh"],
        "--tee", f"mock:{mock_tee.directory}", "--mock-policy", str(policy),
        "--coordinator-policy-hash", sha256(b"concord test policy: coordinator\n").hex(),
        "--out", str(out), "--http-addr", "127.0.0.1:0",
        "--on-change", f'echo "$CONCORD_CREDENTIALS" >> {hook_log}',
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        http = await _line(proc.stdout)
        assert http["event"] == "agent_http"
        joined = await _line(proc.stdout)
        assert joined["event"] == "joined" and joined["ready"] is True
        address = str(http["http"])
        status, body = await http_get(address, "/readyz")
        assert status == 200, body
        status, body = await http_get(address, "/metrics")
        assert status == 200 and b"concord_agent_renewals_total" in body
        # A 4 s leaf: the hook runs again on the next renewal, naming the new set.
        for _ in range(200):
            if hook_log.exists() and len(hook_log.read_text().splitlines()) >= 2:
                break
            await asyncio.sleep(0.1)
        runs = hook_log.read_text().splitlines()
        assert len(runs) >= 2 and runs[0] != runs[1]
        assert all(Path(r).name.startswith("set-") for r in runs)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
