"""The workload agent behind ``concord join --watch`` (DESIGN §15): keep a valid leaf, the mesh CA
bundle and the workload secret on disk for as long as the workload runs, without restarts.

One loop: attest a coordinator (every reconnect attests again), subscribe to ``MeshAPI.Watch``,
and renew when the deployment changes (a new state digest: an update or a recovery), when the
renewal time of the current leaf comes (half its remaining lifetime ±10 %), and once at start.
Every renewal is a complete, verified set handed to a :class:`CredentialSink` at once (the CLI's
sink writes a new directory and switches one symlink; this layer writes no files). When the
stream breaks, the agent tries the next coordinator address with jittered back-off; it gives up
(:class:`CredentialsExpired`) only when its leaf has expired without a renewal.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestation.binding import mesh_cert_report_data
from attestation.providers.base import EvidenceProvider
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.backoff import MONOTONIC, Backoff, Clock
from coordinator.client.channel import AttestedChannel, CoordinatorPolicy
from coordinator.client.errors import reason_of
from coordinator.client.operations import (
    NotReady,
    VerificationFailed,
    check_pin,
    mesh_bundle,
    new_leaf_key,
    verify_issued_chain,
)
from coordinator.core.authz import public_spki
from coordinator.core.ca import CAError, leaf_claims
from coordinator.core.lifecycle import renewal_delay
from coordinator.core.sealing import (
    PURPOSE_WORKLOAD_SECRET,
    SealingError,
    generate_keypair,
    open_sealed,
)
from coordinator.errors import ConcordError, Status

__all__ = [
    "AGENT_BACKOFF",
    "Agent",
    "AgentConfig",
    "AgentStatus",
    "CredentialSet",
    "CredentialSink",
    "CredentialsExpired",
]

log = logging.getLogger("concord.agent")

AGENT_BACKOFF = Backoff(base=0.2, cap=30.0, jitter=0.5)
"""Between reconnects: fast at first (a coordinator restart takes seconds), then at most every
30 s, spread ±50 % so a thousand agents that lost one coordinator do not return in one burst."""

TOKEN_FRESH = 30.0
"""A pushed token is used for this long (tokens live 60 s); after that the agent asks Challenge."""

SILENCE = 60.0
"""No event (heartbeats included) for this long: the stream is dead though TCP says otherwise."""

Rand = Callable[[], float]


class CredentialsExpired(ConcordError):
    """The leaf expired and no coordinator renewed it: the workload can no longer be trusted."""

    reason = "credentials_expired"
    status = Status.UNAVAILABLE


@dataclass(frozen=True)
class CredentialSet:
    """Everything one renewal produces; written as one set, never file by file."""

    key_pem: bytes = field(repr=False)
    cert_pem: bytes
    chain_pem: bytes
    mesh_ca_pem: bytes
    """The bundle: the current mesh CA, then the previous one within the coordinator's grace."""
    root_ca_pem: bytes
    workload_secret: bytes = field(repr=False)
    not_after: datetime
    state_digest: bytes
    latest_transition_hash: bytes

    def files(self) -> dict[str, tuple[bytes, int]]:
        """File name → (content, mode): what ``concord join`` writes (the secret only if any)."""
        out = {
            "key.pem": (self.key_pem, 0o600),
            "cert.pem": (self.cert_pem, 0o644),
            "chain.pem": (self.chain_pem, 0o644),
            "mesh-ca.pem": (self.mesh_ca_pem, 0o644),
            "root-ca.pem": (self.root_ca_pem, 0o644),
        }
        if self.workload_secret:
            out["workload-secret"] = (self.workload_secret, 0o600)
        return out


@runtime_checkable
class CredentialSink(Protocol):
    """Where a renewed set goes (the CLI writes a directory; tests keep a list)."""

    def publish(self, creds: CredentialSet) -> None:
        """Make ``creds`` the current set, all files at once (called in a worker thread)."""
        ...


@dataclass(frozen=True)
class AgentConfig:
    addresses: tuple[str, ...]
    """Mesh API addresses of the deployment's coordinators, tried in turn."""
    policy: CoordinatorPolicy
    key_type: str = "p256"
    pin: bytes | None = None
    """Deployment ID (SHA-256 of the root CA SPKI) every coordinator must serve, if pinned."""
    backoff: Backoff = AGENT_BACKOFF
    first_join_timeout: float = 60.0
    """Give up when no coordinator issued a first leaf within this long (like ``join``)."""
    rpc_timeout: float = 30.0
    silence: float = SILENCE
    keep_previous_ca: float = 600.0
    trust_settle: float = 2.0
    """When the mesh CA key changes (every update and user recovery mints a new mesh key), trust
    the new CA first and present a leaf under it only this many seconds later, so peers that
    learn of it a little later (every watching agent is told at once, within the fan-out time)
    still accept the new leaf."""
    """Seconds the agent itself keeps the mesh CA of its previous set in ``mesh-ca.pem`` when the
    coordinator's bundle no longer has it (a restarted coordinator forgot its rotation; a user
    recovery minted a new mesh key); 0 trusts exactly what the coordinator sends."""


@dataclass(frozen=True)
class AgentStatus:
    """What the agent's health endpoint shows (a snapshot; the agent replaces it)."""

    ready: bool = False
    connected: str = ""
    not_after: datetime | None = None
    renewals: int = 0
    failures: int = 0
    last_error: str = ""
    state_digest: bytes = b""

    def seconds_to_expiry(self, now: datetime) -> float:
        return 0.0 if self.not_after is None else (self.not_after - now).total_seconds()


class _Due:
    """Monotonic deadlines of the current leaf: renew at ``renew_at``, not ready from
    ``risky_at`` (its last quarter), gone at ``expires_at``."""

    def __init__(self, clock: Clock, remaining: float, rand: Rand) -> None:
        now = clock.now()
        self.renew_at = now + renewal_delay(remaining, rand)
        self.risky_at = now + 0.75 * remaining
        self.expires_at = now + remaining


class Agent:
    """Run :meth:`run`; read :attr:`status` any time (the HTTP endpoint does)."""

    def __init__(
        self,
        config: AgentConfig,
        provider: EvidenceProvider,
        sink: CredentialSink,
        *,
        on_change: Callable[[CredentialSet], Awaitable[None]] | None = None,
        clock: Clock = MONOTONIC,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        rand: Rand = random.random,
    ) -> None:
        if not config.addresses:
            raise ValueError("the agent needs at least one coordinator address")
        new_leaf_key(config.key_type)  # a bad key type fails before any traffic
        self.config = config
        self.provider = provider
        self.sink = sink
        self.on_change = on_change
        self.clock = clock
        self.wall = wall
        self.rand = rand
        self.status = AgentStatus()
        self.creds: CredentialSet | None = None
        self._due: _Due | None = None
        self._server_bundle = b""
        self._kept: tuple[bytes, float] | None = None  # (previous mesh CA PEM, until)
        self._changed = asyncio.Event()

    # -- status ------------------------------------------------------------------------------

    def _set(self, **changes: Any) -> None:
        self.status = replace(self.status, **changes)

    def _refresh_ready(self) -> None:
        due = self._due
        self._set(ready=due is not None and self.clock.now() < due.risky_at)

    @property
    def renew_at(self) -> float | None:
        """When (on :attr:`clock`) the current leaf is due for renewal, None before the first."""
        return None if self._due is None else self._due.renew_at

    def current_status(self) -> AgentStatus:
        self._refresh_ready()
        return self.status

    async def wait_renewals(self, count: int) -> AgentStatus:
        """Wait until at least ``count`` renewals happened (tests, the demo)."""
        while self.status.renewals < count:
            self._changed.clear()
            await self._changed.wait()
        return self.status

    # -- main loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Forever, unless the leaf expires unrenewed (CredentialsExpired) or no first leaf is
        issued within ``first_join_timeout`` (NotReady). Cancel to stop."""
        started = self.clock.now()
        attempt = 0
        index = 0
        addresses = self.config.addresses
        while True:
            address = addresses[index % len(addresses)]
            try:
                await self._session(address)
                attempt = 0  # a session ended cleanly (the server closed it): come back soon
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._record_failure(address, exc)
                attempt += 1
            index += 1  # the next coordinator (the same one when there is only one)
            self._set(connected="")
            self._refresh_ready()
            now = self.clock.now()
            due = self._due
            if due is not None and now >= due.expires_at:
                raise CredentialsExpired(
                    f"the leaf expired at {self.status.not_after} and no coordinator renewed it "
                    f"(last error: {self.status.last_error or 'none'})"
                )
            if due is None and now - started >= self.config.first_join_timeout:
                raise NotReady(
                    f"no certificate after {self.config.first_join_timeout:g}s: "
                    f"{self.status.last_error or 'no coordinator answered'}"
                )
            delay = self.config.backoff.delay(max(1, attempt), self.rand)
            if due is not None:
                delay = min(delay, max(0.0, due.expires_at - now))
            await self.clock.sleep(delay)

    def _record_failure(self, address: str, exc: BaseException) -> None:
        what = None
        if isinstance(exc, grpc.aio.AioRpcError):
            what = reason_of(exc) or exc.code().name.lower()
        if what is None:
            what = getattr(exc, "reason", None) or type(exc).__name__
        text = f"{address}: {what}"
        self._set(failures=self.status.failures + 1, last_error=text)
        log.warning("agent: %s", text, extra={"event": "agent_failure", "reason": what})

    async def _session(self, address: str) -> None:
        """Attest ``address``, renew as needed, follow its Watch stream until it ends."""
        cfg = self.config
        chan = await AttestedChannel.connect(address, cfg.policy, timeout=cfg.rpc_timeout)
        async with chan:
            if not chan.initialized:
                raise NotReady("coordinator not initialized")
            check_pin(cfg.pin, bytes(chan.attestation.root_ca_pem))  # before any evidence
            self._set(connected=address)
            token = bytes(chan.attestation.token)
            token_at = self.clock.now()
            digest = bytes(chan.attestation.state_digest)
            if token and self._needs_renewal(digest):
                if await self._pretrust(bytes(chan.attestation.mesh_ca_pem)):
                    token, token_at = await self._challenge(chan), self.clock.now()
                await self._renew(
                    chan, token, digest, bytes(chan.attestation.latest_transition_hash)
                )
            call = chan.mesh.Watch(pb.WatchRequest())
            try:
                await self._follow(chan, call, token, token_at)
            finally:
                call.cancel()

    def _needs_renewal(self, digest: bytes) -> bool:
        creds, due = self.creds, self._due
        return (
            creds is None
            or due is None
            or creds.state_digest != digest
            or self.clock.now() >= due.renew_at
        )

    async def _follow(
        self, chan: AttestedChannel, call: Any, token: bytes, token_at: float
    ) -> None:
        events = call.__aiter__()
        while True:
            now = self.clock.now()
            wait = self.config.silence
            if self._due is not None:
                wait = min(wait, max(0.0, self._due.renew_at - now))
            if self._kept is not None:
                wait = min(wait, max(0.0, self._kept[1] - now))
            try:
                event: pb.WatchEvent = await asyncio.wait_for(events.__anext__(), wait)
            except TimeoutError:
                if self._kept is not None and self.clock.now() >= self._kept[1]:
                    self._kept = None
                    await self._rebundle(self._server_bundle)
                    continue
                if self._due is not None and self.clock.now() >= self._due.renew_at:
                    if self.clock.now() - token_at > TOKEN_FRESH:
                        token = await self._challenge(chan)
                        token_at = self.clock.now()
                    assert self.creds is not None
                    old = self.creds
                    await self._renew(chan, token, old.state_digest, old.latest_transition_hash)
                    continue
                raise NotReady("the watch stream went silent") from None
            except StopAsyncIteration:
                return
            if not event.ready:
                # Stale or uninitialised: this coordinator cannot renew now; try another.
                raise NotReady("coordinator not ready (recovering)")
            if event.token:
                token, token_at = bytes(event.token), self.clock.now()
            digest = bytes(event.state_digest)
            if self._needs_renewal(digest):
                if await self._pretrust(bytes(event.mesh_ca_pem)):
                    token, token_at = await self._challenge(chan), self.clock.now()
                await self._renew(chan, token, digest, bytes(event.latest_transition_hash))
            elif self.creds is not None and event.mesh_ca_bundle_pem:
                await self._rebundle(bytes(event.mesh_ca_bundle_pem))

    async def _challenge(self, chan: AttestedChannel) -> bytes:
        resp = await chan.attest.Challenge(pb.ChallengeRequest(), timeout=self.config.rpc_timeout)
        return bytes(resp.token)

    async def _pretrust(self, mesh_ca_pem: bytes) -> bool:
        """Phase one of a mesh key change: add the new mesh CA to ``mesh-ca.pem`` (old leaf
        kept), wait ``trust_settle``, and report True. False (nothing done) when the new CA has
        a key the bundle already trusts (an update: old and new leaves verify either way)."""
        creds = self.creds
        if creds is None or not mesh_ca_pem or self.config.trust_settle <= 0:
            return False
        try:
            new_key = public_spki(x509.load_pem_x509_certificate(mesh_ca_pem).public_key())
            trusted = {
                public_spki(c.public_key())
                for c in x509.load_pem_x509_certificates(creds.mesh_ca_pem)
            }
        except ValueError:
            return False
        if new_key in trusted:
            return False
        current = _first_pem(creds.mesh_ca_pem) + b"\n"
        self._kept = (current, self.clock.now() + max(self.config.keep_previous_ca, 0.0))
        bundle = mesh_ca_pem if mesh_ca_pem.endswith(b"\n") else mesh_ca_pem + b"\n"
        await self._publish(replace(creds, mesh_ca_pem=bundle + creds.mesh_ca_pem), renewed=False)
        log.info(
            "agent: new mesh CA key trusted; switching leaves in %gs", self.config.trust_settle
        )
        await self.clock.sleep(self.config.trust_settle)
        return True

    def _with_kept(self, bundle: bytes) -> bytes:
        """``bundle`` plus the previous mesh CA the agent still keeps, if any."""
        kept = self._kept
        if kept is None or self.clock.now() >= kept[1] or kept[0] in bundle:
            return bundle
        return (bundle if bundle.endswith(b"\n") else bundle + b"\n") + kept[0]

    async def _rebundle(self, bundle: bytes) -> None:
        """The coordinator's bundle changed (its grace began or ended) or the agent's own grace
        for a previous CA ended: same leaf, new ``mesh-ca.pem``."""
        creds = self.creds
        assert creds is not None
        if not bundle.startswith(_first_pem(creds.mesh_ca_pem)):
            return  # not this leaf's CA: a renewal is coming
        self._server_bundle = bundle
        merged = self._with_kept(bundle)
        if merged != creds.mesh_ca_pem:
            await self._publish(replace(creds, mesh_ca_pem=merged), renewed=False)

    async def _renew(
        self, chan: AttestedChannel, token: bytes, digest: bytes, latest: bytes
    ) -> None:
        creds = await self._issue(chan, token, digest, latest)
        self._server_bundle = creds.mesh_ca_pem
        old = self.creds
        if old is not None and self.config.keep_previous_ca > 0:
            previous = _first_pem(old.mesh_ca_pem) + b"\n"
            if previous.strip() not in creds.mesh_ca_pem:
                self._kept = (previous, self.clock.now() + self.config.keep_previous_ca)
        await self._publish(
            replace(creds, mesh_ca_pem=self._with_kept(creds.mesh_ca_pem)), renewed=True
        )

    async def _publish(self, creds: CredentialSet, *, renewed: bool) -> None:
        await asyncio.to_thread(self.sink.publish, creds)
        self.creds = creds
        if renewed:
            remaining = (creds.not_after - self.wall()).total_seconds()
            self._due = _Due(self.clock, remaining, self.rand)
            self._set(
                renewals=self.status.renewals + 1,
                not_after=creds.not_after,
                state_digest=creds.state_digest,
            )
        self._refresh_ready()
        log.info(
            "agent: credentials %s",
            "renewed" if renewed else "re-bundled",
            extra={"event": "agent_renewed", "not_after": str(creds.not_after)},
        )
        if self.on_change is not None:
            try:
                await self.on_change(creds)
            except Exception as exc:  # the hook's failure is the hook's business
                log.warning("agent: on-change hook failed: %s", exc)
        self._changed.set()

    async def _issue(
        self, chan: AttestedChannel, token: bytes, digest: bytes, latest: bytes
    ) -> CredentialSet:
        """NewMeshCert with fresh keys and evidence over the token; the answer verified."""
        cfg = self.config
        leaf_key = new_leaf_key(cfg.key_type)
        leaf_spki = public_spki(leaf_key)
        hpke_private, hpke_public = generate_keypair()
        report_data = mesh_cert_report_data(leaf_spki, hpke_public, token)
        evidence = (await asyncio.to_thread(self.provider.evidence, report_data)).encode()
        request = pb.NewMeshCertRequest(
            evidence=evidence, leaf_public_key=leaf_spki, hpke_public_key=hpke_public, token=token
        )
        resp: pb.NewMeshCertResponse = await chan.mesh.NewMeshCert(request, timeout=cfg.rpc_timeout)
        now = self.wall()
        leaf, _ = verify_issued_chain(
            resp.certificate_chain_pem, resp.mesh_ca_pem, resp.root_ca_pem, leaf_spki, now
        )
        if _der(bytes(resp.root_ca_pem)) != _der(bytes(chan.attestation.root_ca_pem)):
            raise VerificationFailed("renewal: the root CA differs from the attested one")
        check_pin(cfg.pin, bytes(resp.root_ca_pem))
        secret = b""
        if resp.sealed_workload_secret:
            try:
                secret = open_sealed(
                    hpke_private, PURPOSE_WORKLOAD_SECRET, resp.sealed_workload_secret
                )
            except SealingError:
                raise VerificationFailed("renewal: the sealed secret cannot be opened") from None
        try:
            claims = leaf_claims(leaf)
        except CAError as exc:
            raise VerificationFailed(f"renewal: leaf claims: {exc}") from None
        if claims.workload_secret_id and not secret:
            raise VerificationFailed("renewal: the policy has a secret ID but no secret was sent")
        return CredentialSet(
            key_pem=bytes(
                leaf_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            ),
            cert_pem=leaf.public_bytes(serialization.Encoding.PEM),
            chain_pem=bytes(resp.certificate_chain_pem),
            mesh_ca_pem=mesh_bundle(resp),
            root_ca_pem=bytes(resp.root_ca_pem),
            workload_secret=secret,
            not_after=leaf.not_valid_after_utc,
            state_digest=digest,
            latest_transition_hash=latest,
        )


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _first_pem(bundle: bytes) -> bytes:
    end = b"-----END CERTIFICATE-----"
    cut = bundle.find(end)
    return bundle if cut < 0 else bundle[: cut + len(end)]
