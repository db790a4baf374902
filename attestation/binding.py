"""Report-data derivation: what a piece of hardware evidence vouches for (DESIGN.md §7).

The 64-byte report data of every evidence Concord asks for or accepts is

    SHA-512(b"concord/v1/" || purpose || 0x00 || canonical CBOR array of the bound fields)

The purpose string separates the domains, so evidence produced for one protocol step (say a mesh
certificate) can never be replayed as evidence for another (say peer recovery). The CBOR array
length-prefixes every field, so no two different field lists encode to the same bytes.

Pure functions only; the layer knows nothing of the coordinator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

import cbor2

DOMAIN: Final = b"concord/v1/"

PURPOSE_ATTEST: Final = "attest"
PURPOSE_MESH_CERT: Final = "mesh-cert"
PURPOSE_PEER_RECOVER: Final = "peer-recover"
PURPOSES: Final = frozenset({PURPOSE_ATTEST, PURPOSE_MESH_CERT, PURPOSE_PEER_RECOVER})

REPORT_DATA_SIZE: Final = 64
STATE_DIGEST_SIZE: Final = 32
TRANSITION_HASH_SIZE: Final = 32
NONCE_SIZE: Final = 32
HPKE_PUBLIC_KEY_SIZE: Final = 32  # raw X25519
# Generous upper bound for any single bound field (SPKI DER, token); keeps hashing cheap.
MAX_FIELD_SIZE: Final = 4096

UNINITIALISED_STATE_DIGEST: Final = bytes(STATE_DIGEST_SIZE)


class BindingError(ValueError):
    """An input to the report-data derivation is unusable; ``field`` names it."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why


class UnknownPurpose(BindingError):
    """The purpose is not one of :data:`PURPOSES` (a programming error, never guessed)."""

    def __init__(self, purpose: object) -> None:
        super().__init__("purpose", f"unknown purpose {purpose!r}")


def report_data(purpose: str, fields: Sequence[bytes]) -> bytes:
    """Derive the 64-byte report data for ``purpose`` binding ``fields`` in order."""
    if not isinstance(purpose, str) or purpose not in PURPOSES:
        raise UnknownPurpose(purpose)
    if isinstance(fields, bytes | bytearray | memoryview | str):
        raise BindingError("fields", "must be a sequence of byte strings, not a single value")
    items: list[bytes] = []
    for index, value in enumerate(fields):
        if not isinstance(value, bytes):
            raise BindingError(f"fields[{index}]", f"must be bytes, not {type(value).__name__}")
        if len(value) > MAX_FIELD_SIZE:
            raise BindingError(f"fields[{index}]", f"longer than {MAX_FIELD_SIZE} bytes")
        items.append(value)
    encoded = cbor2.dumps(items, canonical=True)
    return hashlib.sha512(DOMAIN + purpose.encode("ascii") + b"\x00" + encoded).digest()


MAX_DEPLOYMENT_NAME = 253


def _deployment_bytes(deployment: str) -> bytes:
    if not isinstance(deployment, str):
        raise BindingError("deployment", f"must be str, not {type(deployment).__name__}")
    raw = deployment.encode("utf-8")
    if len(raw) > MAX_DEPLOYMENT_NAME:
        raise BindingError("deployment", f"longer than {MAX_DEPLOYMENT_NAME} bytes")
    return raw


def state_digest(
    latest_transition_hash: bytes | None,
    root_ca_der: bytes | None,
    mesh_ca_der: bytes | None,
    deployment: str = "",
) -> bytes:
    """Summarise the coordinator's state so a client can tell which manifest and CAs it attests.

    All three absent → 32 zero bytes (uninitialised). All three present →
    SHA-256(latest ‖ SHA-256(root CA DER) ‖ SHA-256(mesh CA DER)), followed by
    ‖ SHA-256(deployment name) when the coordinator is configured with one (DESIGN §12: the
    name is attested, so a coordinator of deployment B is never taken for one of A). Anything
    in between is a bug in the caller and is refused rather than papered over.
    """
    deployment_raw = _deployment_bytes(deployment)
    parts = (latest_transition_hash, root_ca_der, mesh_ca_der)
    if all(p is None for p in parts):
        return UNINITIALISED_STATE_DIGEST
    names = ("latest_transition_hash", "root_ca_der", "mesh_ca_der")
    for name, value in zip(names, parts, strict=True):
        if value is None:
            raise BindingError(name, "missing while the other state parts are present")
        if not isinstance(value, bytes):
            raise BindingError(name, f"must be bytes, not {type(value).__name__}")
    assert latest_transition_hash is not None and root_ca_der is not None
    assert mesh_ca_der is not None
    _require_len("latest_transition_hash", latest_transition_hash, TRANSITION_HASH_SIZE)
    if not root_ca_der:
        raise BindingError("root_ca_der", "empty")
    if not mesh_ca_der:
        raise BindingError("mesh_ca_der", "empty")
    return hashlib.sha256(
        latest_transition_hash
        + hashlib.sha256(root_ca_der).digest()
        + hashlib.sha256(mesh_ca_der).digest()
        + (hashlib.sha256(deployment_raw).digest() if deployment_raw else b"")
    ).digest()


def attest_report_data(
    tls_spki: bytes, hpke_pub: bytes, nonce: bytes, state_digest: bytes
) -> bytes:
    """Report data of ``Attestation.Attest``: binds the TLS key, HPKE key, nonce and state."""
    _require_nonempty("tls_spki", tls_spki)
    _require_len("hpke_pub", hpke_pub, HPKE_PUBLIC_KEY_SIZE)
    _require_len("nonce", nonce, NONCE_SIZE)
    _require_len("state_digest", state_digest, STATE_DIGEST_SIZE)
    return report_data(PURPOSE_ATTEST, [tls_spki, hpke_pub, nonce, state_digest])


def mesh_cert_report_data(
    leaf_spki: bytes,
    hpke_pub: bytes,
    token: bytes,
    hpke_offer: tuple[bytes, bytes] | None = None,
) -> bytes:
    """Report data of ``MeshAPI.NewMeshCert``: binds the leaf key, HPKE key and challenge.

    ``hpke_offer`` = (offered suite ids, hybrid public key) when the requester offers a
    post-quantum suite; it is appended so stripping it is detected, and absent otherwise so
    the classic bytes stay what they always were.
    """
    _require_nonempty("leaf_spki", leaf_spki)
    _require_len("hpke_pub", hpke_pub, HPKE_PUBLIC_KEY_SIZE)
    _require_nonempty("token", token)
    return report_data(PURPOSE_MESH_CERT, [leaf_spki, hpke_pub, token, *_offer(hpke_offer)])


def peer_recover_report_data(
    hpke_pub: bytes,
    token: bytes,
    deployment: str = "",
    hpke_offer: tuple[bytes, bytes] | None = None,
) -> bytes:
    """Report data of ``MeshAPI.Recover``: binds the requester's HPKE key, the challenge and,
    when configured, the deployment name the requester serves (DESIGN §12), so a coordinator
    of another deployment can never receive the secrets. With a post-quantum ``hpke_offer``
    the list is always [key, token, name (maybe empty), suite ids, hybrid key]."""
    _require_len("hpke_pub", hpke_pub, HPKE_PUBLIC_KEY_SIZE)
    _require_nonempty("token", token)
    name = _deployment_bytes(deployment)
    if hpke_offer is not None:
        return report_data(PURPOSE_PEER_RECOVER, [hpke_pub, token, name, *_offer(hpke_offer)])
    return report_data(PURPOSE_PEER_RECOVER, [hpke_pub, token, *([name] if name else [])])


def _offer(hpke_offer: tuple[bytes, bytes] | None) -> list[bytes]:
    if hpke_offer is None:
        return []
    suite_ids, public = hpke_offer
    _require_nonempty("hpke_suite_ids", suite_ids)
    _require_nonempty("hpke_pq_public_key", public)
    return [suite_ids, public]


def _require_bytes(field: str, value: object) -> bytes:
    if not isinstance(value, bytes):
        raise BindingError(field, f"must be bytes, not {type(value).__name__}")
    return value


def _require_len(field: str, value: object, size: int) -> None:
    if len(_require_bytes(field, value)) != size:
        raise BindingError(field, f"must be {size} bytes")


def _require_nonempty(field: str, value: object) -> None:
    if not _require_bytes(field, value):
        raise BindingError(field, "empty")
