"""Threshold seed shares: k of n owners together recover, none alone (DESIGN §3).

The 64-byte seed is split with Shamir's scheme from pycryptodome
(``Crypto.Protocol.SecretSharing.Shamir``, GF(2^128)), once per 16-byte block; owner *i* (its
position in ``SeedshareOwnerPubKeys``, from 1) gets the *i*-th point of every block. No field
arithmetic lives here: this module only cuts, labels and reassembles.

A share names the deployment it belongs to, so a share of another deployment is refused when it
is submitted, not when k of them fail to combine. A wrong share is caught when the k-th arrives:
the combined seed must sign the store's ``latest`` (the Guard checks that).

:class:`ShareCollector` keeps a coordinator's partial shares between submissions: in memory
only (never in the store), encrypted under a key that lives and dies with the process, bound to
the expected latest transition and the deployment ID, and dropped after a deadline. A restart
loses exactly the partial set, nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from coordinator.errors import ConcordError, Status

BLOCK: Final = 16
SEED_SIZE: Final = 64
DEPLOYMENT_ID_SIZE: Final = 32
SHARE_VERSION: Final = 1
SHARE_SIZE: Final = 2 + DEPLOYMENT_ID_SIZE + SEED_SIZE  # version, index, deployment ID, points
MAX_OWNERS: Final = 255  # Shamir indices are one byte here
DEFAULT_DEADLINE: Final = timedelta(hours=1)


class ThresholdError(ConcordError, ValueError):
    """A threshold share is malformed or cannot be used."""

    reason = "invalid_seed_share"
    status = Status.INVALID_ARGUMENT


class ShareOfOtherDeployment(ConcordError):
    """The share was cut from another deployment's seed; the partial set is kept."""

    reason = "recovery_share_other_deployment"
    status = Status.FAILED_PRECONDITION


class ShareIndexMismatch(ConcordError):
    """The share's index is not the signing owner's position: owners submit their own share."""

    reason = "recovery_share_not_signers"
    status = Status.PERMISSION_DENIED


class ShareSetReset(ConcordError):
    """The partial set was dropped (the shares did not reconstruct this deployment's seed)."""

    reason = "recovery_shares_reset"
    status = Status.FAILED_PRECONDITION


@dataclass(frozen=True, repr=False)
class SeedShare:
    """One owner's point on every block: ``version ‖ index ‖ deployment ID ‖ 4 blocks of 16``."""

    index: int
    deployment_id: bytes
    points: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.index <= MAX_OWNERS:
            raise ThresholdError(f"share index must be 1..{MAX_OWNERS}")
        if len(self.deployment_id) != DEPLOYMENT_ID_SIZE:
            raise ThresholdError(f"deployment ID must be {DEPLOYMENT_ID_SIZE} bytes")
        if len(self.points) != SEED_SIZE:
            raise ThresholdError(f"share points must be {SEED_SIZE} bytes")

    def encode(self) -> bytes:
        return bytes([SHARE_VERSION, self.index]) + self.deployment_id + self.points

    @classmethod
    def decode(cls, data: bytes) -> SeedShare:
        if not isinstance(data, bytes) or len(data) != SHARE_SIZE:
            raise ThresholdError(f"a threshold share is {SHARE_SIZE} bytes")
        if data[0] != SHARE_VERSION:
            raise ThresholdError(f"unknown share format version {data[0]}")
        return cls(data[1], data[2 : 2 + DEPLOYMENT_ID_SIZE], data[2 + DEPLOYMENT_ID_SIZE :])

    def __repr__(self) -> str:
        return f"SeedShare(index={self.index}, deployment={self.deployment_id.hex()[:16]}…)"


def split_seed(seed: bytes, k: int, n: int, deployment_id: bytes) -> tuple[SeedShare, ...]:
    """Cut ``seed`` into ``n`` shares of which any ``k`` reconstruct it (index i+1 for owner i)."""
    if len(seed) != SEED_SIZE:
        raise ThresholdError(f"only {SEED_SIZE}-byte seeds are split")
    if not 2 <= k <= n <= MAX_OWNERS:
        raise ThresholdError(f"need 2 <= k <= n <= {MAX_OWNERS}, got k={k}, n={n}")
    points: list[list[bytes]] = [[] for _ in range(n)]
    for start in range(0, SEED_SIZE, BLOCK):
        for index, point in Shamir.split(k, n, seed[start : start + BLOCK]):
            points[index - 1].append(point)
    return tuple(SeedShare(i + 1, deployment_id, b"".join(p)) for i, p in enumerate(points))


def combine_shares(shares: Sequence[SeedShare]) -> bytes:
    """The seed from k shares of distinct indices (garbage, not an error, when one is wrong)."""
    if len({s.index for s in shares}) != len(shares) or not shares:
        raise ThresholdError("shares must have distinct indices")
    if len({s.deployment_id for s in shares}) != 1:
        raise ThresholdError("shares belong to different deployments")
    seed = b""
    for start in range(0, SEED_SIZE, BLOCK):
        seed += Shamir.combine([(s.index, s.points[start : start + BLOCK]) for s in shares])
    return seed


@dataclass(frozen=True)
class Progress:
    """What one submission achieved; ``seed`` is set once the k-th share arrived."""

    received: int
    needed: int
    dropped: int = 0
    """Partial shares of an earlier set dropped by this submission (expired, or for another
    latest transition)."""
    seed: bytes | None = field(default=None, repr=False)
    deployment_id: bytes = b""
    """The deployment the shares name: the combined seed must derive exactly this ID."""


@dataclass
class _Set:
    expected: bytes
    deployment_id: bytes
    threshold: int
    started: datetime
    sealed: dict[int, bytes] = field(default_factory=dict)


class ShareCollector:
    """The partial shares of one coordinator process, sealed in memory, one set at a time."""

    def __init__(
        self,
        deadline: timedelta = DEFAULT_DEADLINE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._deadline = deadline
        self._clock = clock
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self._set: _Set | None = None

    @property
    def pending(self) -> int:
        """Partial shares held now (0 after expiry, completion or reset)."""
        self._expire()
        return 0 if self._set is None else len(self._set.sealed)

    def add(
        self,
        share: SeedShare,
        *,
        signer_index: int,
        expected: bytes,
        threshold: int,
        known_deployment_id: bytes | None = None,
    ) -> Progress:
        """Take one owner's share for the recovery of ``expected``.

        ``signer_index`` is the position (from 1) of the owner whose signature authorised the
        request; ``known_deployment_id`` the ID of the State this coordinator held, if any. A
        set for another ``expected`` is dropped (the owners named another history); the k-th
        share returns the combined seed and empties the collector.
        """
        if share.index != signer_index:
            raise ShareIndexMismatch(
                f"share index {share.index} is not the signing owner's ({signer_index})"
            )
        if known_deployment_id is not None and share.deployment_id != known_deployment_id:
            raise ShareOfOtherDeployment("the share belongs to another deployment")
        dropped = self._expire()
        current = self._set
        if current is not None and (current.expected != expected or current.threshold != threshold):
            dropped += len(current.sealed)
            current = None
        if current is not None and share.deployment_id != current.deployment_id:
            raise ShareOfOtherDeployment("the share belongs to another deployment than the set")
        if current is None:
            current = _Set(expected, share.deployment_id, threshold, self._clock())
        current.sealed[share.index] = self._seal(current, share)
        self._set = current
        if len(current.sealed) < threshold:
            return Progress(len(current.sealed), threshold, dropped)
        shares = [self._open(current, i, box) for i, box in current.sealed.items()]
        self._set = None
        seed = combine_shares(shares)
        return Progress(len(shares), threshold, dropped, seed, current.deployment_id)

    def reset(self) -> int:
        """Drop the partial set (a wrong share was found); returns how many were dropped."""
        dropped = 0 if self._set is None else len(self._set.sealed)
        self._set = None
        return dropped

    def _expire(self) -> int:
        current = self._set
        if current is not None and self._clock() - current.started > self._deadline:
            self._set = None
            return len(current.sealed)
        return 0

    @staticmethod
    def _aad(s: _Set, index: int) -> bytes:
        return s.expected + s.deployment_id + bytes([index])

    def _seal(self, s: _Set, share: SeedShare) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, share.points, self._aad(s, share.index))

    def _open(self, s: _Set, index: int, box: bytes) -> SeedShare:
        try:
            points = self._aead.decrypt(box[:12], box[12:], self._aad(s, index))
        except InvalidTag:  # only if memory was tampered with: fail closed
            raise ShareSetReset("a held share no longer opens") from None
        return SeedShare(index, s.deployment_id, points)
