"""The state feed behind ``MeshAPI.Watch`` (DESIGN §15): one task follows the Guard and
publishes a snapshot of what workloads must trust; every Watch stream waits on the feed, not on
the Guard, so a thousand streams cost one wake-up each per change and nothing in between.

The feed also keeps the mesh CA rotation (the previous mesh CA for ``mesh_ca_grace`` after an
update) and publishes again when the grace ends, so agents drop the old CA from their bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from attestation.binding import state_digest
from coordinator.core.lifecycle import DEFAULT_LEAF_LIFETIME, DEFAULT_MESH_CA_GRACE, MeshCaRotation
from coordinator.core.state import Guard, State
from coordinator.errors import Status
from coordinator.service.limits import Gate, TooManyRequests

log = logging.getLogger("concord.feed")

DEFAULT_HEARTBEAT = 15.0
"""Seconds between heartbeats on an idle Watch stream: a dead coordinator is noticed by its
agents within about this (well inside gRPC keepalive and any proxy's idle timeout)."""

DEFAULT_MAX_WATCHERS = 4096
"""Concurrent Watch streams per process; each holds a little memory and one HTTP/2 stream."""


class TooManyWatchers(TooManyRequests):
    """Every Watch slot is taken; the agent backs off and renews on its own timer meanwhile."""

    reason = "too_many_watchers"
    status = Status.RESOURCE_EXHAUSTED


@dataclass(frozen=True)
class LifecycleConfig:
    """Leaf lifetime, mesh CA grace and Watch limits of one coordinator (``concord serve``)."""

    leaf_lifetime: timedelta = DEFAULT_LEAF_LIFETIME
    mesh_ca_grace: timedelta = DEFAULT_MESH_CA_GRACE
    heartbeat: float = DEFAULT_HEARTBEAT
    max_watchers: int = DEFAULT_MAX_WATCHERS


@dataclass(frozen=True)
class Snapshot:
    """What a Watch event carries except the token (minted per event, per stream)."""

    version: int
    state: State | None = field(repr=False)
    ready: bool
    state_digest: bytes
    latest_transition_hash: bytes
    root_ca_pem: bytes
    mesh_ca_pem: bytes
    mesh_ca_bundle_pem: bytes


class StateFeed:
    """Follows the Guard; :meth:`snapshot` is the latest publication, :meth:`wait_after` waits
    for the next. Run :meth:`run` as a task for the life of the server."""

    def __init__(
        self,
        guard: Guard,
        deployment: str,
        config: LifecycleConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.guard = guard
        self.deployment = deployment
        self.config = config or LifecycleConfig()
        self._clock = clock
        self._rotation = MeshCaRotation()
        self._pulse = asyncio.Event()
        self.gate = Gate("MeshAPI/Watch", self.config.max_watchers)
        self._snapshot = self._build(0)
        self.closed = False

    @property
    def grace(self) -> float:
        return self.config.mesh_ca_grace.total_seconds()

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def bundle(self) -> bytes:
        """The mesh CA bundle right now (NewMeshCert answers with it)."""
        return self._rotation.bundle(self._clock(), self.grace)

    async def wait_after(self, version: int) -> Snapshot:
        """The first snapshot newer than ``version`` (at once if there is one, or once the feed
        is closed: callers check :attr:`closed`)."""
        while self._snapshot.version <= version and not self.closed:
            await self._pulse.wait()
        return self._snapshot

    def close(self) -> None:
        """End every Watch stream (server shutdown): agents reconnect elsewhere at once instead
        of holding the shutdown for its whole grace."""
        self.closed = True
        pulse, self._pulse = self._pulse, asyncio.Event()
        pulse.set()

    def refresh(self) -> Snapshot:
        """Publish the Guard's current State if anything a workload sees has changed."""
        candidate = self._build(self._snapshot.version + 1)
        old = self._snapshot
        if (candidate.ready, candidate.state_digest, candidate.mesh_ca_bundle_pem) != (
            old.ready,
            old.state_digest,
            old.mesh_ca_bundle_pem,
        ) or candidate.state is not old.state:
            self._snapshot = candidate
            pulse, self._pulse = self._pulse, asyncio.Event()
            pulse.set()
            log.info(
                "state feed: published",
                extra={"event": "feed_published", "version": candidate.version},
            )
        return self._snapshot

    def _build(self, version: int) -> Snapshot:
        state = self.guard.current()
        if state is None:
            return Snapshot(
                version, None, False, state_digest(None, None, None), b"", b"", b"", b""
            )
        now = self._clock()
        self._rotation = self._rotation.advance(state.ca.mesh_ca_pem, now)
        ca = state.ca
        return Snapshot(
            version=version,
            state=state,
            ready=not state.stale,
            state_digest=state_digest(
                state.transition.hash, ca.root_der, ca.mesh_ca_der, self.deployment
            ),
            latest_transition_hash=state.transition.hash,
            root_ca_pem=ca.root_pem,
            mesh_ca_pem=ca.mesh_ca_pem,
            mesh_ca_bundle_pem=self._rotation.bundle(now, self.grace),
        )

    async def run(self) -> None:
        """Forever: publish on every Guard change and when a grace period ends."""
        while True:
            self.refresh()
            timeout: float | None = None
            now, ends = self._clock(), self._rotation.grace_ends(self.grace)
            if ends is not None and self._rotation.in_grace(now, self.grace):
                timeout = ends - now + 0.01  # publish the bundle without the previous CA
            # Taken with no await since refresh() read the Guard: no change is missed.
            signal = self.guard.change_signal()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signal.wait(), timeout)
