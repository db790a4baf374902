"""Abuse benchmark (``./hack/bench abuse``; a benchmark, not a test): what hostile clients cost.

Starts a real coordinator (``concord serve``, software TEE, file store in a temporary
directory), sets a manifest, measures one legitimate NewMeshCert, then runs a corpus of
adversarial requests against it (DESIGN §13): hash-colliding CBOR maps of several key types,
deep nesting, huge arrays and byte strings (as NewMeshCert and MeshAPI.Recover evidence, with a
valid token from a free ``Challenge``), an 80k-SAN manifest, floods of small requests and slow
clients holding connections and streams. For each attack it reports

- the coordinator's CPU per request (from /proc, the idle rate subtracted) as a ratio to one
  legitimate NewMeshCert measured in the same run (target: at most 10x);
- p50/p99 latency of ``/readyz`` and of ``Attest`` from a separate probe process while the attack
  runs (target with 64 concurrent attack streams: /readyz p99 <= 100 ms);
- whether a legitimate join (attest, Challenge, NewMeshCert) succeeds during the attack.

JSON always, PNG with matplotlib. Every process started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import socket
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

READYZ_P99_TARGET_S = 0.1
CPU_RATIO_TARGET = 10.0
HASH_MODULUS = (1 << 61) - 1  # CPython's int hash is x mod 2**61-1: multiples all hash to 0
RPC_TIMEOUT = 30.0


# --- the corpus -------------------------------------------------------------------------------


def _head(major: int, n: int) -> bytes:
    """A CBOR initial byte and argument (RFC 8949 §3)."""
    if n < 24:
        return bytes([major << 5 | n])
    for info, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | info]) + struct.pack(fmt, n)
    raise ValueError("too large for a CBOR head")


def _bstr(data: bytes) -> bytes:
    return _head(2, len(data)) + data


def _tstr(text: str) -> bytes:
    raw = text.encode()
    return _head(3, len(raw)) + raw


def _bignum(value: int, negative: bool = False) -> bytes:
    """Tag 2 (or 3) bignum: what cbor2 turns into a Python int."""
    return bytes([0xC3 if negative else 0xC2]) + _bstr(value.to_bytes(16, "big"))


def _map_of(keys: Sequence[bytes], budget: int) -> bytes:
    """A map of ``keys`` (each with value 0), as many as fit in ``budget`` bytes."""
    room = budget - 9
    chosen: list[bytes] = []
    for key in keys:
        room -= len(key) + 1
        if room < 0:
            break
        chosen.append(key)
    return _head(5, len(chosen)) + b"".join(k + b"\x00" for k in chosen)


def colliding_bignum_keys(budget: int) -> bytes:
    return _map_of([_bignum(k * HASH_MODULUS) for k in range(1, budget // 19)], budget)


def colliding_negative_bignum_keys(budget: int) -> bytes:
    return _map_of([_bignum(k * HASH_MODULUS - 1, True) for k in range(1, budget // 19)], budget)


def colliding_array_keys(budget: int) -> bytes:
    """Arrays of one colliding bignum: cbor2 makes tuples, whose hashes collide too."""
    return _map_of([b"\x81" + _bignum(k * HASH_MODULUS) for k in range(1, budget // 20)], budget)


def float_keys(budget: int) -> bytes:
    return _map_of([b"\xfb" + struct.pack(">d", k + 0.5) for k in range(budget // 10)], budget)


def text_keys(budget: int) -> bytes:
    return _map_of([_tstr(f"k{k:x}") for k in range(budget // 8)], budget)


def deep_nesting(budget: int) -> bytes:
    return b"\x81" * (budget - 1) + b"\x00"


def huge_array(budget: int) -> bytes:
    n = budget - 9
    return _head(4, n) + b"\x00" * n


def huge_report(budget: int) -> bytes:
    """A well-formed envelope whose report is a byte string far beyond any TEE's report."""
    body = _tstr("v") + b"\x01" + _tstr("tee") + _tstr("snp") + _tstr("report")
    return _head(5, 3) + body + _bstr(b"\x00" * (budget - len(body) - 16))


def colliding_collateral(budget: int) -> bytes:
    """A TDX envelope whose collateral map is keyed by colliding bignums."""
    body = _tstr("v") + b"\x01" + _tstr("tee") + _tstr("tdx") + _tstr("report")
    body += _bstr(b"\x00" * 1024) + _tstr("collateral")
    inner = colliding_bignum_keys(budget - len(body) - 16)
    return _head(5, 4) + body + inner


EVIDENCE_ATTACKS: dict[str, Callable[[int], bytes]] = {
    "cbor_colliding_bignum_keys": colliding_bignum_keys,
    "cbor_colliding_negative_bignum_keys": colliding_negative_bignum_keys,
    "cbor_colliding_array_keys": colliding_array_keys,
    "cbor_float_keys": float_keys,
    "cbor_many_text_keys": text_keys,
    "cbor_deep_nesting": deep_nesting,
    "cbor_huge_array": huge_array,
    "envelope_huge_report": huge_report,
    "envelope_colliding_collateral": colliding_collateral,
}


def san_manifest(sans: int) -> bytes:
    """A manifest of ``sans`` IPv6 SANs (about 0.9 MiB for 80k), unsigned by any owner."""
    per = 100
    policies = {
        f"{i:064x}": {"SANs": [f"::{i:x}:{j:x}" for j in range(per)]}
        for i in range(max(1, sans // per))
    }
    return json.dumps({"Policies": policies, "ReferenceValues": {}}, separators=(",", ":")).encode()


# --- the probe process ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeConfig:
    http_addr: str
    user_addr: str
    interval_s: float = 0.02


def probe_main(cfg: ProbeConfig, ready: Any, stop: Any, out: Any) -> None:
    """A separate client: /readyz and Attest in turn every ``interval_s`` until ``stop``;
    sends back (monotonic time, kind, latency s, ok) per sample."""
    samples = asyncio.run(_probe(cfg, ready, stop))
    out.put(samples)


async def _probe(cfg: ProbeConfig, ready: Any, stop: Any) -> list[tuple[float, str, float, bool]]:
    import grpc

    from coordinator.api.v1 import concord_pb2 as pb
    from coordinator.api.v1 import concord_pb2_grpc as pb_grpc

    samples: list[tuple[float, str, float, bool]] = []
    parent = os.getppid()
    async with await _raw_channel(cfg.user_addr) as channel:
        stub = pb_grpc.AttestationStub(channel)
        ready.set()
        turn = 0
        while not stop.is_set() and os.getppid() == parent:
            turn += 1
            started = time.monotonic()
            if turn % 2:
                ok = await _readyz(cfg.http_addr)
                kind = "readyz"
            else:
                kind = "attest"
                try:
                    await stub.Attest(pb.AttestRequest(nonce=os.urandom(32)), timeout=10)
                    ok = True
                except grpc.aio.AioRpcError:
                    ok = False
            samples.append((started, kind, time.monotonic() - started, ok))
            await asyncio.sleep(cfg.interval_s)
    return samples


async def _readyz(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 10)
        try:
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
    except (OSError, TimeoutError):
        return False
    return data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.0 200")


async def _raw_channel(address: str) -> Any:
    """A channel pinned to the server's certificate, without attestation and without the
    client's message limits (attack traffic must reach the server's own limits)."""
    import grpc
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from coordinator.client.channel import fetch_certificate
    from coordinator.core.tlsid import SERVER_NAME

    der = await fetch_certificate(address)
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    return grpc.aio.secure_channel(
        address,
        grpc.ssl_channel_credentials(root_certificates=pem),
        options=[
            ("grpc.ssl_target_name_override", SERVER_NAME),
            ("grpc.max_send_message_length", 8 << 20),
            ("grpc.max_receive_message_length", 8 << 20),
        ],
    )


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    method: str
    description: str
    started: float = 0.0
    ended: float = 0.0
    requests: int = 0
    cpu_s: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    legit_join_ok: bool | None = None
    legit_join_s: float | None = None
    request_bytes: int = 0


def _identity(data: bytes) -> bytes:
    return data


class Bench:
    """One run against one coordinator process."""

    def __init__(self, pid: int, info: dict[str, Any], dep: Any, concurrency: int) -> None:
        self.pid = pid
        self.info = info
        self.dep = dep
        self.concurrency = concurrency
        self.token = b""

    def cpu(self) -> float:
        from tools.bench.harness import proc_cpu_seconds

        return proc_cpu_seconds(self.pid)

    async def challenge(self) -> bytes:
        from coordinator.api.v1 import concord_pb2 as pb
        from coordinator.api.v1 import concord_pb2_grpc as pb_grpc

        async with await _raw_channel(self.info["mesh"]) as channel:
            resp = await pb_grpc.AttestationStub(channel).Challenge(
                pb.ChallengeRequest(), timeout=RPC_TIMEOUT
            )
        return bytes(resp.token)

    def legit_request(self, token: bytes) -> bytes:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        from attestation.binding import mesh_cert_report_data
        from attestation.providers.mock import MockProvider
        from coordinator.api.v1 import concord_pb2 as pb
        from coordinator.core.sealing import generate_keypair

        leaf = ec.generate_private_key(ec.SECP256R1())
        spki = leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _, hpke = generate_keypair()
        provider = MockProvider(self.dep.mock_dir, self.dep.workload_policy, tee="snp")
        evidence = provider.evidence(mesh_cert_report_data(spki, hpke, token)).encode()
        request = pb.NewMeshCertRequest(
            evidence=evidence, leaf_public_key=spki, hpke_public_key=hpke, token=token
        )
        return request.SerializeToString()

    def evidence_request(self, method: str, evidence: bytes) -> bytes:
        from coordinator.api.v1 import concord_pb2 as pb

        hpke = os.urandom(32)
        if method.endswith("NewMeshCert"):
            spki = self.legit_spki
            return pb.NewMeshCertRequest(
                evidence=evidence, leaf_public_key=spki, hpke_public_key=hpke, token=self.token
            ).SerializeToString()
        return pb.MeshRecoverRequest(
            evidence=evidence, hpke_public_key=hpke, token=self.token
        ).SerializeToString()

    @property
    def legit_spki(self) -> bytes:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        return (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    async def legit_join(self) -> tuple[bool, float]:
        """What a workload does: attest the coordinator, Challenge, NewMeshCert."""
        import grpc

        from coordinator.api.v1 import concord_pb2 as pb
        from coordinator.client.channel import AttestedChannel
        from tools.bench.bench_main import coordinator_policy

        started = time.monotonic()
        try:
            chan = await AttestedChannel.connect(
                self.info["mesh"], coordinator_policy(self.dep), timeout=RPC_TIMEOUT
            )
            try:
                challenge = await chan.attest.Challenge(pb.ChallengeRequest(), timeout=RPC_TIMEOUT)
                request = pb.NewMeshCertRequest.FromString(self.legit_request(challenge.token))
                resp = await chan.mesh.NewMeshCert(request, timeout=RPC_TIMEOUT)
            finally:
                await chan.close()
        except (grpc.aio.AioRpcError, OSError, TimeoutError) as exc:
            print(f"  legit join failed: {exc}", file=sys.stderr)
            return False, time.monotonic() - started
        return bool(resp.certificate_chain_pem), time.monotonic() - started

    async def flood(
        self, phase: Phase, address: str, payloads: Sequence[bytes], duration: float, limit: int
    ) -> None:
        """``self.concurrency`` concurrent callers send ``payloads`` (round robin) for
        ``duration`` seconds or ``limit`` requests, over a few connections."""
        from coordinator.client.errors import reason_of

        channels = [await _raw_channel(address) for _ in range(max(1, self.concurrency // 16))]
        calls = [
            ch.unary_unary(
                phase.method, request_serializer=_identity, response_deserializer=_identity
            )
            for ch in channels
        ]
        deadline = time.monotonic() + duration
        sent = 0

        async def caller(i: int) -> None:
            nonlocal sent
            import grpc

            call = calls[i % len(calls)]
            while time.monotonic() < deadline and sent < limit:
                payload = payloads[sent % len(payloads)]
                sent += 1
                try:
                    await call(payload, timeout=RPC_TIMEOUT)
                    outcome = "OK"
                except grpc.aio.AioRpcError as exc:
                    outcome = f"{exc.code().name}:{reason_of(exc) or '-'}"
                phase.outcomes[outcome] = phase.outcomes.get(outcome, 0) + 1
                phase.requests += 1

        try:
            await asyncio.gather(*(caller(i) for i in range(self.concurrency)))
        finally:
            for ch in channels:
                await ch.close()

    @contextlib.asynccontextmanager
    async def measured(self, phase: Phase, join: bool) -> AsyncIterator[None]:
        """CPU and wall time of the coordinator around the body; a legit join in the middle."""
        cpu0 = self.cpu()
        phase.started = time.monotonic()
        joiner: asyncio.Task[tuple[bool, float]] | None = None
        if join:

            async def later() -> tuple[bool, float]:
                await asyncio.sleep(0.3)
                return await self.legit_join()

            joiner = asyncio.create_task(later())
        try:
            yield
        finally:
            if joiner is not None:
                phase.legit_join_ok, phase.legit_join_s = await joiner
            phase.ended = time.monotonic()
            phase.cpu_s = self.cpu() - cpu0


async def slow_tls(address: str, count: int, duration: float) -> int:
    """``count`` connections that dribble a TLS ClientHello one byte at a time."""
    host, _, port = address.rpartition(":")
    hello = bytes.fromhex("16030100c8010000c40303") + os.urandom(32)
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.setblocking(False)
            socks.append(s)
        deadline = time.monotonic() + duration
        i = 0
        while time.monotonic() < deadline:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.send(hello[i % len(hello) : i % len(hello) + 1])
            i += 1
            await asyncio.sleep(0.2)
    finally:
        for s in socks:
            s.close()
    return count


async def held_streams(address: str, method: str, count: int, duration: float) -> int:
    """``count`` calls whose request never arrives: the stream stays open until the end."""
    channels = [await _raw_channel(address) for _ in range(max(1, count // 32))]
    release = asyncio.Event()

    async def never() -> AsyncIterator[bytes]:
        await release.wait()
        return
        yield b""  # pragma: no cover - makes this an async generator

    calls = [
        ch.stream_unary(method, request_serializer=_identity, response_deserializer=_identity)
        for ch in channels
    ]
    tasks = [
        asyncio.ensure_future(calls[i % len(calls)](never(), timeout=duration + 30))
        for i in range(count)
    ]
    try:
        await asyncio.sleep(duration)
    finally:
        release.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close()
    return count


# --- the run ----------------------------------------------------------------------------------


NEW_MESH_CERT = "/concord.v1.MeshAPI/NewMeshCert"
MESH_RECOVER = "/concord.v1.MeshAPI/Recover"
SET_MANIFEST = "/concord.v1.UserAPI/SetManifest"
CHALLENGE = "/concord.v1.Attestation/Challenge"
ATTEST = "/concord.v1.Attestation/Attest"
EVIDENCE_BUDGET = 512 * 1024  # the SNP/TDX envelope cap: every byte reaches the decoder


async def run_corpus(bench: Bench, a: argparse.Namespace) -> dict[str, Any]:
    """Idle rate, the legitimate baseline, then every attack; raw phases for the report."""
    from coordinator.api.v1 import concord_pb2 as pb

    duration = a.duration
    phases: list[Phase] = []

    idle = Phase("idle", "-", "probe only")
    async with bench.measured(idle, join=False):
        await asyncio.sleep(max(1.0, duration))

    bench.token = await bench.challenge()
    legit_n = max(8, a.legit)
    print(f"legitimate NewMeshCert x{legit_n} ...", flush=True)
    legit_payloads = [bench.legit_request(bench.token) for _ in range(legit_n)]
    legit = Phase("legit_new_mesh_cert", NEW_MESH_CERT, "valid evidence, fresh keys")
    saved, bench.concurrency = bench.concurrency, 4
    async with bench.measured(legit, join=False):
        await bench.flood(legit, bench.info["mesh"], legit_payloads, 600.0, legit_n)
    bench.concurrency = saved
    phases.append(legit)

    budget = EVIDENCE_BUDGET if not a.quick else 64 * 1024
    attacks: list[tuple[str, str, str, list[bytes]]] = []
    for name, make in EVIDENCE_ATTACKS.items():
        evidence = make(budget)
        attacks.append(
            (
                f"new_mesh_cert_{name}",
                NEW_MESH_CERT,
                f"{len(evidence)} B evidence, valid token",
                [bench.evidence_request(NEW_MESH_CERT, evidence)],
            )
        )
        if name in ("cbor_colliding_bignum_keys", "cbor_deep_nesting", "envelope_huge_report"):
            attacks.append(
                (
                    f"mesh_recover_{name}",
                    MESH_RECOVER,
                    f"{len(evidence)} B evidence, valid token",
                    [bench.evidence_request(MESH_RECOVER, evidence)],
                )
            )
    oversized = colliding_bignum_keys(1024 * 1024 if not a.quick else 600 * 1024)
    attacks.append(
        (
            "new_mesh_cert_over_size_limit",
            NEW_MESH_CERT,
            f"{len(oversized)} B evidence (over the method limit)",
            [bench.evidence_request(NEW_MESH_CERT, oversized)],
        )
    )
    sans = 80_000 if not a.quick else 8_000
    manifest = san_manifest(sans)
    set_req = pb.SetManifestRequest(
        manifest=manifest,
        previous_transition_hash=bytes(32),
        owner_public_key=bench.legit_spki,
        signature=os.urandom(72),
    ).SerializeToString()
    attacks.append(
        (
            f"set_manifest_{sans // 1000}k_ipv6_sans",
            SET_MANIFEST,
            f"{len(manifest)} B manifest, not signed by an owner",
            [set_req],
        )
    )
    attacks.append(("flood_challenge", CHALLENGE, "empty request", [b""]))
    bad_token = pb.NewMeshCertRequest(
        evidence=b"\xa0", leaf_public_key=bench.legit_spki, hpke_public_key=bytes(32), token=b"x"
    ).SerializeToString()
    attacks.append(("flood_new_mesh_cert_bad_token", NEW_MESH_CERT, "tiny, bad token", [bad_token]))
    attacks.append(
        (
            "flood_attest",
            ATTEST,
            "valid nonce: one signed report each",
            [pb.AttestRequest(nonce=bytes(32)).SerializeToString()],
        )
    )

    if a.only:
        attacks = [attack for attack in attacks if any(part in attack[0] for part in a.only)]
    for name, method, description, payloads in attacks:
        address = bench.info["user"] if method == SET_MANIFEST else bench.info["mesh"]
        phase = Phase(name, method, description, request_bytes=len(payloads[0]))
        print(f"attack {name} ({description}) ...", flush=True)
        async with bench.measured(phase, join=True):
            await bench.flood(phase, address, payloads, duration, a.max_requests)
        phases.append(phase)

    if a.only and not any(part in "slow_tls_handshakes held_streams" for part in a.only):
        return {"idle": idle, "phases": phases}
    slow = Phase("slow_tls_handshakes", "-", f"{bench.concurrency} connections dribbling a hello")
    print(f"attack {slow.name} ...", flush=True)
    async with bench.measured(slow, join=True):
        slow.requests = await slow_tls(bench.info["mesh"], bench.concurrency, duration)
    phases.append(slow)
    held = Phase("held_streams", NEW_MESH_CERT, f"{bench.concurrency} calls never sending")
    print(f"attack {held.name} ...", flush=True)
    async with bench.measured(held, join=True):
        held.requests = await held_streams(
            bench.info["mesh"], NEW_MESH_CERT, bench.concurrency, duration
        )
    phases.append(held)
    return {"idle": idle, "phases": phases}


def summarise(
    idle: Phase, phases: list[Phase], samples: list[tuple[float, str, float, bool]]
) -> dict[str, Any]:
    from tools.bench.harness import percentile

    idle_rate = idle.cpu_s / max(1e-9, idle.ended - idle.started)
    legit = phases[0]
    legit_cpu = max(1e-9, legit.cpu_s - idle_rate * (legit.ended - legit.started)) / max(
        1, legit.requests
    )
    rows: list[dict[str, Any]] = []
    for p in phases:
        wall = p.ended - p.started
        attack_cpu = max(0.0, p.cpu_s - idle_rate * wall)
        per_request = attack_cpu / max(1, p.requests)
        inside = [s for s in samples if p.started <= s[0] <= p.ended]
        readyz = [s[2] for s in inside if s[1] == "readyz"]
        attest = [s[2] for s in inside if s[1] == "attest"]
        rows.append(
            {
                "attack": p.name,
                "method": p.method,
                "description": p.description,
                "request_bytes": p.request_bytes,
                "requests": p.requests,
                "wall_s": wall,
                "server_cpu_s": p.cpu_s,
                "server_cpu_per_request_s": per_request,
                "cpu_ratio_to_new_mesh_cert": per_request / legit_cpu,
                "outcomes": dict(p.outcomes),
                "readyz_p50_s": percentile(readyz, 50),
                "readyz_p99_s": percentile(readyz, 99),
                "readyz_failures": sum(1 for s in inside if s[1] == "readyz" and not s[3]),
                "attest_p50_s": percentile(attest, 50),
                "attest_p99_s": percentile(attest, 99),
                "attest_failures": sum(1 for s in inside if s[1] == "attest" and not s[3]),
                "legit_join_ok": p.legit_join_ok,
                "legit_join_s": p.legit_join_s,
            }
        )
    attacks = rows[1:]
    worst = max(attacks, key=lambda r: r["cpu_ratio_to_new_mesh_cert"]) if attacks else None
    worst_readyz = max((r["readyz_p99_s"] for r in attacks), default=float("nan"))
    return {
        "idle_server_cpu_per_s": idle_rate,
        "legit_new_mesh_cert_cpu_s": legit_cpu,
        "attacks": rows,
        "targets": {
            "max_cpu_ratio": worst["cpu_ratio_to_new_mesh_cert"] if worst else None,
            "max_cpu_ratio_attack": worst["attack"] if worst else None,
            "cpu_ratio_target": CPU_RATIO_TARGET,
            "cpu_ratio_met": bool(
                worst and worst["cpu_ratio_to_new_mesh_cert"] <= CPU_RATIO_TARGET
            ),
            "max_readyz_p99_s": worst_readyz,
            "readyz_p99_target_s": READYZ_P99_TARGET_S,
            "readyz_p99_met": worst_readyz <= READYZ_P99_TARGET_S,
            "legit_join_always_ok": all(r["legit_join_ok"] for r in attacks),
        },
    }


def plot(summary: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG", file=sys.stderr)
        return
    rows = summary["attacks"]
    names = [r["attack"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 9), sharex=True)
    ax1.bar(names, [max(1e-4, r["cpu_ratio_to_new_mesh_cert"]) for r in rows], color="tab:red")
    ax1.axhline(CPU_RATIO_TARGET, color="black", linestyle="--", label="target 10x")
    ax1.set_yscale("log")
    ax1.set_ylabel("server CPU / request\n(x one legit NewMeshCert)")
    ax1.legend()
    x = range(len(rows))
    ax2.plot(x, [r["readyz_p50_s"] * 1000 for r in rows], "o-", label="/readyz p50")
    ax2.plot(x, [r["readyz_p99_s"] * 1000 for r in rows], "o-", label="/readyz p99")
    ax2.plot(x, [r["attest_p99_s"] * 1000 for r in rows], "s--", label="Attest p99")
    ax2.axhline(READYZ_P99_TARGET_S * 1000, color="black", linestyle="--", label="target 100 ms")
    ax2.set_ylabel("latency during the attack (ms)")
    ax2.legend()
    ax2.set_xticks(list(x))
    ax2.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(summary: dict[str, Any]) -> None:
    print(f"legit NewMeshCert: {summary['legit_new_mesh_cert_cpu_s'] * 1000:.2f} ms server CPU")
    print(f"{'attack':44} {'n':>6} {'cpu x':>8} {'readyz p50/p99 ms':>18} {'join':>5}")
    for r in summary["attacks"]:
        print(
            f"{r['attack']:44} {r['requests']:6d} {r['cpu_ratio_to_new_mesh_cert']:8.3f} "
            f"{r['readyz_p50_s'] * 1000:8.1f}/{r['readyz_p99_s'] * 1000:<8.1f} "
            f"{r['legit_join_ok']!s:>5}"
        )
    print(json.dumps(summary["targets"]))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, required=True, help="write every figure here")
    p.add_argument("--png", type=Path, help="plot CPU ratio and probe latency per attack")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per attack")
    p.add_argument("--streams", type=int, default=64, help="concurrent attack streams")
    p.add_argument("--max-requests", type=int, default=100_000, help="per attack, at most")
    p.add_argument("--legit", type=int, default=60, help="legitimate NewMeshCert calls measured")
    p.add_argument("--workers", type=int, default=2, help="issuer workers of the coordinator")
    p.add_argument("--quick", action="store_true", help="smaller inputs (smoke runs)")
    p.add_argument(
        "--only",
        action="append",
        metavar="SUBSTRING",
        help="run only the attacks whose name contains this (repeatable)",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="hard limit for the whole run")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")


def abuse(a: argparse.Namespace) -> int:
    from tools.bench.bench_main import (
        BenchError,
        Children,
        Deadline,
        _loadavg,
        close_report,
        deadline,
        set_manifest,
        start_server,
    )
    from tools.bench.harness import create_deployment

    children = Children()
    workdir = Path(tempfile.mkdtemp(prefix="concord-abuse-"))
    report: dict[str, Any] = {
        "meta": {
            "started": datetime.now(UTC).isoformat(),
            "argv": sys.argv,
            "cpu_count": os.cpu_count(),
            "loadavg_start": _loadavg(),
            "duration_s": a.duration,
            "streams": a.streams,
            "quick": a.quick,
            "notes": [
                "Attack clients, the probe and the coordinator share the machine's cores.",
                "CPU per request is the coordinator's CPU during the attack minus its idle rate "
                "(probe only), divided by the requests answered.",
                "The legitimate baseline is NewMeshCert with valid evidence and fresh keys.",
            ],
        },
    }
    ctx = mp.get_context("spawn")
    probe: Any = None
    stop = ctx.Event()
    try:
        with deadline(a.timeout):
            dep = create_deployment(workdir / "mock-tee")
            server, info = start_server(children, dep, workdir, a.workers)
            asyncio.run(set_manifest(dep, info["user"]))
            ready, out = ctx.Event(), ctx.Queue()
            probe = ctx.Process(
                target=probe_main,
                args=(ProbeConfig(info["http"], info["user"]), ready, stop, out),
                name="abuse-probe",
                daemon=True,
            )
            probe.start()
            if not ready.wait(60):
                raise BenchError("the probe process did not start")
            if server.pid is None:
                raise BenchError("the coordinator is not running")
            bench = Bench(server.pid, info, dep, a.streams)
            raw = asyncio.run(run_corpus(bench, a))
            stop.set()
            samples = out.get(timeout=60)
            probe.join(10)
            report["summary"] = summarise(raw["idle"], raw["phases"], samples)
    except (BenchError, Deadline, KeyboardInterrupt) as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        print(f"benchmark failed: {report['error']}", file=sys.stderr)
    finally:
        stop.set()
        if probe is not None:
            probe.join(5)
            if probe.is_alive():
                probe.kill()
                probe.join(5)
        children.stop_all()
        close_report(report, a.json, workdir, keep=a.keep)
    if "error" in report:
        return 1
    if a.png is not None:
        plot(report["summary"], a.png)
    print_table(report["summary"])
    print(f"wrote {a.json}" + (f" and {a.png}" if a.png else ""))
    return 0
