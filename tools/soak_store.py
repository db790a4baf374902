"""A bounded soak of the untrusted-store rules (DESIGN §12) on a real etcd.

Three coordinator processes share one deployment. Each step is chosen at random: a legitimate
manifest update by the owner, a coordinator crash (SIGKILL and restart), or an attacker write
straight into etcd (rollback to an older signed ``latest``, deletion, garbage, a ``latest``
copied from another deployment). After every step the soak checks:

- the history in the store is one linear chain that contains every acknowledged update, in
  order, once the coordinators have repaired what the attacker wrote;
- no coordinator process ever serves an older manifest than one it served before;
- no workload is admitted by a manifest that was superseded (update *i* admits only the
  workload policy ``w-i``; the previous one must be refused everywhere).

Run ``python -m tools.soak_store --help`` (what ``hack/soak`` does). Exit status 0 when every
check held; the summary reports the steps and faults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attestation import anchors as trust
from attestation.binding import mesh_cert_report_data
from attestation.providers.mock import MockProvider
from attestation.reference import parse_reference_values
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client.channel import AttestedChannel, CoordinatorPolicy
from coordinator.core.authz import public_spki, rsa_pkcs1_der, set_manifest_message, sign_owner
from coordinator.core.history import LATEST_KEY, History, transition_hash
from coordinator.core.sealing import generate_keypair
from coordinator.store.etcd import EtcdStore
from tools.cluster import COORDINATOR_POLICY, Cluster, CoordinatorProcess, init_mock_tee
from tools.etcd_server import EtcdServer

ATTACKS = ("rollback", "delete", "garbage", "copy")
SETTLE = 30.0  # a ceiling for the coordinators to converge or repair, never a latency claim
RPC = 20.0


class SoakFailure(AssertionError):
    """A check of the soak did not hold."""


def workload_policy(i: int) -> bytes:
    return f"soak workload policy {i}\n".encode()


@dataclass
class Owner:
    key: ec.EllipticCurvePrivateKey
    seedshare: rsa.RSAPrivateKey
    references: dict[str, Any]

    def manifest(self, i: int) -> bytes:
        """Generation ``i`` admits the coordinator and exactly the workload ``w-i``."""
        doc = {
            "Policies": {
                hashlib.sha256(COORDINATOR_POLICY).hexdigest(): {"Role": "coordinator"},
                hashlib.sha256(workload_policy(i)).hexdigest(): {"SANs": [f"w-{i}"]},
            },
            "ReferenceValues": self.references,
            "WorkloadOwnerKeyDigests": [hashlib.sha256(public_spki(self.key)).hexdigest()],
            "SeedshareOwnerPubKeys": [rsa_pkcs1_der(self.seedshare.public_key()).hex()],
        }
        return json.dumps(doc).encode()


@dataclass
class Soak:
    cluster: Cluster
    store: EtcdStore
    foreign: EtcdStore
    owner: Owner
    mock_dir: Path
    policy: CoordinatorPolicy
    rng: random.Random
    acked: list[bytes] = field(default_factory=list)  # transition hashes, oldest first
    latests: list[bytes] = field(default_factory=list)  # their encoded ``latest`` values
    deployment_id: bytes = b""
    generation: int = 0  # of the newest acknowledged manifest (1-based)
    served: dict[tuple[str, int], int] = field(default_factory=dict)  # (node, start) -> gen
    faults: Counter[str] = field(default_factory=Counter)
    steps: int = 0

    # -- talking to coordinators -------------------------------------------------------------

    def live(self) -> list[CoordinatorProcess]:
        return [n for n in self.cluster.nodes if n.running and n.addresses is not None]

    async def channel(self, node: CoordinatorProcess, api: str = "user") -> AttestedChannel:
        address = node.user if api == "user" else node.mesh
        return await AttestedChannel.connect(address, self.policy, timeout=RPC)

    async def update(self) -> None:
        """A legitimate update through a random live coordinator (retried on a lost race)."""
        i = self.generation + 1
        raw = self.owner.manifest(i)
        deadline = time.monotonic() + SETTLE
        while True:
            node = self.rng.choice(self.live())
            try:
                chan = await self.channel(node)
            except Exception:
                await asyncio.sleep(0.2)
                continue
            async with chan:
                previous = self.acked[-1]
                new = transition_hash(hashlib.sha256(raw).digest(), previous)
                request = pb.SetManifestRequest(
                    manifest=raw,
                    policies=[workload_policy(i)],
                    previous_transition_hash=previous,
                    owner_public_key=public_spki(self.owner.key),
                    signature=sign_owner(
                        self.owner.key, set_manifest_message(self.deployment_id, new)
                    ),
                )
                try:
                    resp = await chan.user.SetManifest(request, timeout=RPC)
                except grpc.aio.AioRpcError as exc:
                    if time.monotonic() > deadline:
                        raise SoakFailure(f"update {i} never accepted: {exc.details()}") from None
                    await asyncio.sleep(0.2)  # stale or mid-repair coordinator: another try
                    continue
            if resp.transition_hash != new:
                raise SoakFailure("update acknowledged with another transition")
            self.acked.append(new)
            self.latests.append(await self.store.get(LATEST_KEY))
            self.generation = i
            return

    # -- faults --------------------------------------------------------------------------------

    async def crash(self) -> None:
        node = self.rng.choice(self.live())
        node.kill()
        await asyncio.to_thread(node.start)

    async def attack(self, kind: str) -> None:
        if kind == "rollback":
            await self.store.set(LATEST_KEY, self.rng.choice(self.latests[:-1]))
        elif kind == "delete":
            await asyncio.to_thread(
                self._raw_delete, f"/concord/{self.cluster.deployment}/{LATEST_KEY}"
            )
        elif kind == "garbage":
            await self.store.set(LATEST_KEY, self.rng.randbytes(self.rng.randint(1, 120)))
        else:  # a latest copied from another deployment (signed, but not with our key)
            await self.store.set(LATEST_KEY, await self.foreign.get(LATEST_KEY))

    def _raw_delete(self, key: str) -> None:
        import etcd3

        host, port = self.cluster.etcd_endpoint.rsplit(":", 1)
        client = etcd3.client(host=host, port=int(port), timeout=5)
        try:
            client.delete(key)
        finally:
            client.close()

    # -- checks --------------------------------------------------------------------------------

    async def settle(self) -> None:
        """Wait until the store holds the newest acknowledged ``latest`` again (repaired) and
        every live coordinator serves it."""
        deadline = time.monotonic() + SETTLE
        want = self.acked[-1]
        while True:
            raw = b""
            with contextlib.suppress(Exception):
                raw = await self.store.get(LATEST_KEY)
            serving = await self.serving_generations()
            if raw == self.latests[-1] and all(g == self.generation for g in serving.values()):
                return
            if time.monotonic() > deadline:
                raise SoakFailure(
                    f"not settled at {want.hex()[:16]}: store has "
                    f"{raw[:32].hex()[:16] or 'nothing'}, coordinators serve {serving}"
                )
            await asyncio.sleep(0.2)

    async def serving_generations(self) -> dict[str, int]:
        """Generation each live coordinator attests now (0: none), checked never to go back."""
        out: dict[str, int] = {}
        for node in self.live():
            try:
                chan = await self.channel(node)
            except Exception:
                continue
            async with chan:
                latest = bytes(chan.attestation.latest_transition_hash)
            generation = self.acked.index(latest) + 1 if latest in self.acked else 0
            if latest and not generation:
                raise SoakFailure(f"{node.node_id} serves an unknown transition {latest.hex()}")
            key = (node.node_id, node.starts)
            if generation < self.served.get(key, 0):
                raise SoakFailure(
                    f"{node.node_id} went back from generation {self.served[key]} to {generation}"
                )
            self.served[key] = max(generation, self.served.get(key, 0))
            out[node.node_id] = generation
        return out

    async def check_chain(self) -> None:
        chain = await History(self.store).walk(self.acked[-1])
        if [t.hash for t in chain] != self.acked:
            raise SoakFailure("the store's chain is not the acknowledged linear history")

    async def check_superseded(self) -> None:
        """The workload of the previous manifest is refused by every live coordinator."""
        if self.generation < 2:
            return
        provider = MockProvider(self.mock_dir, workload_policy(self.generation - 1))
        for node in self.live():
            chan = await self.channel(node, "mesh")
            async with chan:
                token = (await chan.attest.Challenge(pb.ChallengeRequest(), timeout=RPC)).token
                key = ec.generate_private_key(ec.SECP256R1())
                spki = public_spki(key)
                _, hpke = generate_keypair()
                evidence = provider.evidence(mesh_cert_report_data(spki, hpke, token)).encode()
                request = pb.NewMeshCertRequest(
                    evidence=evidence, leaf_public_key=spki, hpke_public_key=hpke, token=token
                )
                try:
                    await chan.mesh.NewMeshCert(request, timeout=RPC)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
                        raise SoakFailure(f"{node.node_id}: {exc.code().name}") from None
                    continue
                raise SoakFailure(f"{node.node_id} admitted a superseded workload")

    # -- the run -------------------------------------------------------------------------------

    async def first_manifest(self) -> None:
        node = self.live()[0]
        async with await self.channel(node) as chan:
            resp = await chan.user.SetManifest(
                pb.SetManifestRequest(
                    manifest=self.owner.manifest(1),
                    policies=[COORDINATOR_POLICY, workload_policy(1)],
                ),
                timeout=RPC,
            )
        self.deployment_id = bytes(resp.deployment_id)
        self.acked.append(bytes(resp.transition_hash))
        self.latests.append(await self.store.get(LATEST_KEY))
        self.generation = 1

    async def step(self) -> str:
        roll = self.rng.random()
        if roll < 0.35:
            await self.update()
            what = "update"
        elif roll < 0.5:
            await self.crash()
            what = "crash"
        else:
            what = self.rng.choice(ATTACKS if len(self.latests) > 1 else ATTACKS[1:])
            await self.attack(what)
        self.faults[what] += 1
        self.steps += 1
        await self.settle()
        await self.check_chain()
        await self.check_superseded()
        return what


def tamper_totals(nodes: Sequence[CoordinatorProcess]) -> Counter[str]:
    import urllib.request

    totals: Counter[str] = Counter()
    for node in nodes:
        if not node.running or node.addresses is None:
            continue
        with urllib.request.urlopen(f"http://{node.http}/metrics", timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("concord_store_tamper_total{"):
                    kind = line.split('kind="', 1)[1].split('"', 1)[0]
                    totals[kind] += int(float(line.rsplit(" ", 1)[1]))
    return totals


def tamper_logged(nodes: Sequence[CoordinatorProcess]) -> Counter[str]:
    """Tamper events in every coordinator log (all incarnations: counters restart with them)."""
    totals: Counter[str] = Counter()
    for node in nodes:
        for line in node.log_text().splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                msg = json.loads(line).get("msg", "")
                if msg.startswith("store tampering ("):
                    totals[msg.split("(", 1)[1].split(")", 1)[0]] += 1
    return totals


async def run(args: argparse.Namespace, workdir: Path) -> int:
    rng = random.Random(args.seed)
    mock_dir = init_mock_tee(workdir / "mock-tee")
    references = json.loads((mock_dir / "reference-values.json").read_text())
    policy = CoordinatorPolicy(
        trust.mock(mock_dir),
        parse_reference_values(references, "ReferenceValues"),
        hashlib.sha256(COORDINATOR_POLICY).digest(),
    )
    owner = Owner(
        ec.generate_private_key(ec.SECP256R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        references,
    )
    with EtcdServer() as etcd:
        foreign_cluster = Cluster(etcd.endpoint, "soak-foreign", mock_dir, workdir / "foreign")
        cluster = Cluster(etcd.endpoint, "soak", mock_dir, workdir / "soak")
        with foreign_cluster, cluster:
            store = await EtcdStore.connect([etcd.endpoint], "soak")
            foreign = await EtcdStore.connect([etcd.endpoint], "soak-foreign")
            try:
                (other,) = foreign_cluster.start(1)
                async with await AttestedChannel.connect(other.user, policy, timeout=RPC) as c:
                    await c.user.SetManifest(
                        pb.SetManifestRequest(
                            manifest=owner.manifest(1),
                            policies=[COORDINATOR_POLICY, workload_policy(1)],
                        ),
                        timeout=RPC,
                    )
                cluster.start(args.coordinators)
                soak = Soak(cluster, store, foreign, owner, mock_dir, policy, rng)
                await soak.first_manifest()
                deadline = time.monotonic() + args.duration
                while soak.steps < args.steps and time.monotonic() < deadline:
                    what = await soak.step()
                    if args.verbose:
                        print(f"step {soak.steps}: {what} ok (generation {soak.generation})")
                tampers = tamper_totals(cluster.nodes)
                logged = tamper_logged(cluster.nodes)
            except SoakFailure as exc:
                print(f"soak FAILED after {soak.steps if 'soak' in locals() else 0} steps: {exc}")
                print(f"logs: {workdir}")
                return 1
            finally:
                await store.close()
                await foreign.close()
    summary = {
        "steps": soak.steps,
        "faults": dict(soak.faults),
        "generation": soak.generation,
        "tamper_counted_by_live_coordinators": dict(tampers),
        "tamper_logged_by_all_coordinators": dict(logged),
        "seed": args.seed,
    }
    print(json.dumps(summary, indent=1, sort_keys=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soak_store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds (default 180)")
    parser.add_argument("--steps", type=int, default=1_000_000, help="stop after this many")
    parser.add_argument("--coordinators", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None, help="random seed (printed)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(run(args, args.workdir))
    with tempfile.TemporaryDirectory(prefix="concord-soak-") as tmp:
        return asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
