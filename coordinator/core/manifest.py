"""The manifest: what a workload owner admits, parsed strictly and kept as the exact bytes sent.

The manifest is hashed and stored as the bytes the user sent (DESIGN §2); this module never
re-serialises it. Parsing is fail-closed: anything not understood is rejected with a
:class:`ManifestError` naming the JSON path (``Policies.<hash>.SANs[2]``) and the reason.

Format (top-level keys, nothing else allowed)::

    Policies                 required  object, 1..MAX_POLICIES entries:
                                       "<64 lowercase hex sha256(policy)>": {
                                           "SANs": [str, ...]          optional, default []
                                           "WorkloadSecretID": str     optional, default "" (none)
                                           "Role": "" | "coordinator"  optional, default ""
                                       }
                                       exactly one policy has Role "coordinator".
    ReferenceValues          required  see attestation.reference (may list no entry: then no
                                       workload is admitted, which is fail-closed).
    WorkloadOwnerKeyDigests  optional  [64 lowercase hex sha256(owner SPKI DER)], default []
                                       (empty: the manifest can never be updated).
    SeedshareOwnerPubKeys    optional  [lowercase hex PKCS#1 RSAPublicKey DER, 2048..8192 bit],
                                       default [] (empty: no user recovery possible).
    SeedshareThreshold       optional  int k, 1 <= k <= number of seed-share owners, default 1:
                                       how many owners together recover (Shamir k-of-n).
    SeedshareOwnerMLKEMKeys  optional  {"<an owner's PKCS#1 hex>": "<raw ML-KEM-768 public key
                                       hex, 1184 bytes>"}, default {}: that owner's share is
                                       wrapped for RSA-OAEP and ML-KEM together (post-quantum).

JSON rules: UTF-8 without BOM, one JSON object, no duplicate keys at any depth, no
NaN/Infinity. Limits (DESIGN §13; a manifest over one is refused with
:class:`ManifestLimitExceeded`, INVALID_ARGUMENT, naming the limit): MAX_MANIFEST_BYTES,
MAX_POLICIES, MAX_SANS per policy, MAX_TOTAL_SANS, MAX_SECRET_ID_LENGTH, MAX_OWNERS,
MAX_REFERENCE_ENTRIES per TEE type and MAX_REFERENCE_LIST per list inside an entry. Every
count is checked before the items it counts are validated, so the work a manifest costs is
bounded by the limits, not by its size.

SAN rules (:func:`classify_san`): an IP address literal is an IP SAN; a string containing
``://`` is a URI SAN; anything else is a DNS SAN (``*`` and ``*.`` wildcards allowed).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from attestation.errors import InvalidReferenceValues
from attestation.jsonstrict import DuplicateKey, reject_duplicates
from attestation.reference import ReferenceValues, parse_reference_values
from coordinator.errors import ConcordError, Status

MAX_MANIFEST_BYTES = 1 << 20
MAX_POLICIES = 1000
MAX_SANS = 100
MAX_TOTAL_SANS = 10_000
MAX_REFERENCE_ENTRIES = 256
MAX_REFERENCE_LIST = 1024
MAX_SAN_LENGTH = 253
MAX_URI_LENGTH = 2048
MAX_SECRET_ID_LENGTH = 256
MAX_OWNERS = 100
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192

ROLE_NONE = ""
ROLE_COORDINATOR = "coordinator"
ROLES = (ROLE_NONE, ROLE_COORDINATOR)

TOP_LEVEL_KEYS = (
    "Policies",
    "ReferenceValues",
    "WorkloadOwnerKeyDigests",
    "SeedshareOwnerPubKeys",
    "SeedshareThreshold",
    "SeedshareOwnerMLKEMKeys",
)
REQUIRED_TOP_LEVEL_KEYS = ("Policies", "ReferenceValues")
POLICY_KEYS = ("SANs", "WorkloadSecretID", "Role")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_DNS_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")

SanKind = Literal["ip", "uri", "dns"]


class ManifestError(ConcordError, ValueError):
    """The manifest is malformed; ``path`` names the JSON field, ``why`` the reason."""

    reason = "malformed_manifest"
    status = Status.INVALID_ARGUMENT

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why


class ManifestLimitExceeded(ManifestError):
    """The manifest exceeds a documented size or count limit; ``why`` names the limit."""

    reason = "manifest_limit_exceeded"


@dataclass(frozen=True)
class PolicyEntry:
    """What the manifest grants a workload whose policy hash is the entry's key."""

    sans: tuple[str, ...]
    workload_secret_id: str
    role: str


# --- SANs ------------------------------------------------------------------------------------


def classify_san(s: str) -> tuple[SanKind, str]:
    """Classify a manifest SAN string as ``ip``/``uri``/``dns`` and validate it.

    Returns the kind and the value (IP literals in canonical form). Raises ``ValueError``
    with the reason (callers add the path).
    """
    if not isinstance(s, str):
        raise ValueError("must be a string")
    if not s:
        raise ValueError("must not be empty")
    if not s.isascii() or not s.isprintable() or any(c.isspace() for c in s):
        raise ValueError("must be printable ASCII without whitespace")
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        ip = None
    if ip is not None:
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
            raise ValueError("IPv6 scope IDs cannot be certified")
        return "ip", str(ip)
    if "://" in s:
        if len(s) > MAX_URI_LENGTH:
            raise ValueError(f"URI longer than {MAX_URI_LENGTH} characters")
        scheme, _, rest = s.partition("://")
        if not _URI_SCHEME.fullmatch(scheme):
            raise ValueError("URI scheme is not valid")
        if not rest:
            raise ValueError("URI has nothing after the scheme")
        return "uri", s
    if len(s) > MAX_SAN_LENGTH:
        raise ValueError(f"DNS name longer than {MAX_SAN_LENGTH} characters")
    labels = s.split(".")
    for i, label in enumerate(labels):
        if label == "*" and i == 0:
            continue
        if not label:
            raise ValueError("DNS name has an empty label")
        if not _DNS_LABEL.fullmatch(label):
            raise ValueError(f"DNS label {i} is not valid (letters, digits, '-', '_'; ≤63)")
    if labels[-1].isdigit():
        raise ValueError("DNS name ends in a numeric label (a malformed IP address?)")
    return "dns", s


# --- JSON helpers ----------------------------------------------------------------------------


def _short(key: str) -> str:
    """A JSON key as it appears in an error path (bounded, printable)."""
    if len(key) <= 100 and key.isprintable():
        return key
    return repr(key[:100]) + ("…" if len(key) > 100 else "")


def _reject_constant(name: str) -> Any:
    raise _BadConstant(name)


class _BadConstant(ValueError):
    pass


def require_manifest_size(data: bytes) -> None:
    """The size limit alone: checked before anything else is done with a manifest."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestLimitExceeded("$", f"larger than {MAX_MANIFEST_BYTES} bytes")


def _load_json(data: bytes) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ManifestError("$", "must be bytes")
    require_manifest_size(data)
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError("$", f"not valid UTF-8 at byte {e.start}") from None
    if text.startswith("\ufeff"):
        raise ManifestError("$", "byte order mark not allowed")
    try:
        return json.loads(
            text, object_pairs_hook=reject_duplicates, parse_constant=_reject_constant
        )
    except DuplicateKey as e:
        raise ManifestError("$", f"duplicate key {_short(e.key)!r}") from None
    except _BadConstant as e:
        raise ManifestError("$", f"{e} is not allowed") from None
    except json.JSONDecodeError as e:
        raise ManifestError(
            "$", f"not valid JSON: {e.msg} (line {e.lineno} col {e.colno})"
        ) from None
    except RecursionError:
        raise ManifestError("$", "nested too deeply") from None
    except ValueError as e:  # e.g. integer literal beyond the int conversion limit
        raise ManifestError("$", f"not valid JSON: {e}") from None


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(path, "must be a JSON object")
    return value


def _list(value: Any, path: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise ManifestError(path, "must be a JSON array")
    if len(value) > limit:
        raise ManifestLimitExceeded(path, f"more than {limit} entries")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ManifestError(path, "must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError(path, "contains an unpaired surrogate") from None
    return value


def _hex(value: Any, path: str, size: int | None = None) -> bytes:
    text = _str(value, path)
    if text != text.lower():
        raise ManifestError(path, "hex must be lowercase")
    if not re.fullmatch(r"(?:[0-9a-f]{2})+", text):
        raise ManifestError(path, "not valid hex")
    raw = bytes.fromhex(text)
    if size is not None and len(raw) != size:
        raise ManifestError(path, f"must be {size} bytes, got {len(raw)}")
    return raw


# --- sections --------------------------------------------------------------------------------


def _policy_entry(value: Any, path: str) -> PolicyEntry:
    obj = _obj(value, path)
    for key in obj:
        if key not in POLICY_KEYS:
            raise ManifestError(f"{path}.{_short(key)}", "unknown field")
    sans_path = f"{path}.SANs"
    sans: list[str] = []
    seen: set[str] = set()
    for i, san in enumerate(_list(obj.get("SANs", []), sans_path, MAX_SANS)):
        item = f"{sans_path}[{i}]"
        if not isinstance(san, str):
            raise ManifestError(item, "must be a string")
        try:
            classify_san(san)
        except ValueError as e:
            raise ManifestError(item, str(e)) from None
        if san in seen:
            raise ManifestError(item, "duplicate SAN")
        seen.add(san)
        sans.append(san)
    secret_id = _str(obj.get("WorkloadSecretID", ""), f"{path}.WorkloadSecretID")
    if len(secret_id.encode("utf-8")) > MAX_SECRET_ID_LENGTH:
        raise ManifestLimitExceeded(
            f"{path}.WorkloadSecretID", f"longer than {MAX_SECRET_ID_LENGTH} bytes"
        )
    if secret_id and not secret_id.isprintable():
        raise ManifestError(f"{path}.WorkloadSecretID", "must be printable")
    role = _str(obj.get("Role", ""), f"{path}.Role")
    if role not in ROLES:
        raise ManifestError(f"{path}.Role", 'must be "" or "coordinator"')
    return PolicyEntry(sans=tuple(sans), workload_secret_id=secret_id, role=role)


def _policies(value: Any) -> tuple[dict[str, PolicyEntry], bytes]:
    obj = _obj(value, "Policies")
    if not obj:
        raise ManifestError("Policies", "must contain at least the coordinator policy")
    if len(obj) > MAX_POLICIES:
        raise ManifestLimitExceeded("Policies", f"more than {MAX_POLICIES} policies")
    total_sans = sum(
        len(entry["SANs"])
        for entry in obj.values()
        if isinstance(entry, dict) and isinstance(entry.get("SANs"), list)
    )
    if total_sans > MAX_TOTAL_SANS:
        raise ManifestLimitExceeded(
            "Policies", f"more than {MAX_TOTAL_SANS} SANs in all policies together"
        )
    out: dict[str, PolicyEntry] = {}
    coordinators: list[str] = []
    for key, entry in obj.items():
        path = f"Policies.{_short(key)}"
        if not _HEX64.fullmatch(key):
            why = "hex must be lowercase" if _HEX64.fullmatch(key.lower()) else ""
            raise ManifestError(path, why or "key must be 64 lowercase hex (SHA-256 of the policy)")
        parsed = _policy_entry(entry, path)
        if parsed.role == ROLE_COORDINATOR:
            coordinators.append(key)
            if len(coordinators) > 1:
                raise ManifestError(f"{path}.Role", "more than one coordinator policy")
        out[key] = parsed
    if not coordinators:
        raise ManifestError("Policies", 'no policy has Role "coordinator"')
    return out, bytes.fromhex(coordinators[0])


def _owner_digests(value: Any) -> tuple[bytes, ...]:
    path = "WorkloadOwnerKeyDigests"
    out: list[bytes] = []
    for i, item in enumerate(_list(value, path, MAX_OWNERS)):
        digest = _hex(item, f"{path}[{i}]", 32)
        if digest in out:
            raise ManifestError(f"{path}[{i}]", "duplicate entry")
        out.append(digest)
    return tuple(out)


def _seedshare_threshold(value: Any, owners: int) -> int:
    """k of n: an int (not a bool), at least 1, at most the number of owners (1 when none)."""
    path = "SeedshareThreshold"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(path, "must be an integer")
    if value < 1:
        raise ManifestError(path, "must be at least 1")
    if value > max(owners, 1):
        raise ManifestError(path, f"must be at most the number of seed-share owners ({owners})")
    return value


MLKEM768_PUBLIC_KEY_SIZE = 1184


def _seedshare_mlkem_keys(value: Any, owners: Sequence[bytes]) -> dict[bytes, bytes]:
    """Each key names a listed owner; each value is a usable raw ML-KEM-768 public key."""
    from cryptography.hazmat.primitives.asymmetric import mlkem

    path = "SeedshareOwnerMLKEMKeys"
    if not isinstance(value, dict):
        raise ManifestError(path, "must be a JSON object")
    if len(value) > MAX_OWNERS:
        raise ManifestLimitExceeded(path, f"more than {MAX_OWNERS} entries")
    out: dict[bytes, bytes] = {}
    for owner_hex, key_hex in value.items():
        item_path = f"{path}.{_short(owner_hex)}"
        owner = _hex(owner_hex, item_path)
        if owner not in owners:
            raise ManifestError(item_path, "not listed in SeedshareOwnerPubKeys")
        raw = _hex(key_hex, item_path, MLKEM768_PUBLIC_KEY_SIZE)
        try:
            mlkem.MLKEM768PublicKey.from_public_bytes(raw)
        except ValueError:
            raise ManifestError(item_path, "not an ML-KEM-768 public key") from None
        out[owner] = raw
    return out


def _seedshare_owners(value: Any) -> tuple[tuple[rsa.RSAPublicKey, ...], tuple[bytes, ...]]:
    path = "SeedshareOwnerPubKeys"
    keys: list[rsa.RSAPublicKey] = []
    ders: list[bytes] = []
    for i, item in enumerate(_list(value, path, MAX_OWNERS)):
        item_path = f"{path}[{i}]"
        der = _hex(item, item_path)
        key = parse_pkcs1_public_key(der, item_path)
        if der in ders:
            raise ManifestError(item_path, "duplicate entry")
        keys.append(key)
        ders.append(der)
    return tuple(keys), tuple(ders)


def _check_reference_counts(value: Any) -> None:
    """Cap the reference entries per TEE type and every list inside an entry before the
    entries are validated (their shape is checked by the attestation layer's parser)."""
    if not isinstance(value, dict):
        return  # the parser names the error
    for tee, entries in value.items():
        path = f"ReferenceValues.{_short(tee)}"
        if not isinstance(entries, list):
            continue
        if len(entries) > MAX_REFERENCE_ENTRIES:
            raise ManifestLimitExceeded(path, f"more than {MAX_REFERENCE_ENTRIES} entries")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            for key, item in entry.items():
                if isinstance(item, list) and len(item) > MAX_REFERENCE_LIST:
                    raise ManifestLimitExceeded(
                        f"{path}[{i}].{_short(key)}", f"more than {MAX_REFERENCE_LIST} entries"
                    )


def parse_pkcs1_public_key(der: bytes, path: str = "PublicKey") -> rsa.RSAPublicKey:
    """Strictly parse PKCS#1 RSAPublicKey DER (not SPKI; canonical; 2048..8192 bit)."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError):
        raise ManifestError(path, "not a DER RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ManifestError(path, "not an RSA public key")
    canonical = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    if canonical != der:
        raise ManifestError(path, "must be canonical PKCS#1 RSAPublicKey DER (not SPKI)")
    if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        raise ManifestError(path, f"RSA key must be {MIN_RSA_BITS}..{MAX_RSA_BITS} bits")
    return key


# --- the manifest ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Manifest:
    """A validated manifest. Build it with :meth:`parse`; equality is by the exact bytes."""

    raw: bytes
    digest: bytes
    policies: Mapping[str, PolicyEntry]
    reference_values: ReferenceValues
    owner_key_digests: tuple[bytes, ...]
    seedshare_owner_keys: tuple[rsa.RSAPublicKey, ...]
    seedshare_owner_keys_der: tuple[bytes, ...]
    coordinator_policy_hash: bytes
    seedshare_threshold: int = 1
    """k of the n seed-share owners must submit their share to recover (DESIGN §3)."""
    seedshare_owner_mlkem_keys: Mapping[bytes, bytes] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Owner PKCS#1 DER → raw ML-KEM-768 public key, for owners whose share is also wrapped
    post-quantum."""

    @property
    def hex_digest(self) -> str:
        return self.digest.hex()

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Validate ``data`` and keep it byte for byte; raises :class:`ManifestError`."""
        doc = _load_json(data)
        if doc is None:
            raise ManifestError("$", "must be a JSON object, not null")
        top = _obj(doc, "$")
        for key in top:
            if key not in TOP_LEVEL_KEYS:
                raise ManifestError(_short(key), "unknown top-level field")
        for key in REQUIRED_TOP_LEVEL_KEYS:
            if key not in top:
                raise ManifestError(key, "required")
        policies, coordinator = _policies(top["Policies"])
        _check_reference_counts(top["ReferenceValues"])
        try:
            reference_values = parse_reference_values(top["ReferenceValues"], "ReferenceValues")
        except InvalidReferenceValues as e:
            raise ManifestError(e.path, e.why) from None
        owners = _owner_digests(top.get("WorkloadOwnerKeyDigests", []))
        keys, ders = _seedshare_owners(top.get("SeedshareOwnerPubKeys", []))
        threshold = _seedshare_threshold(top.get("SeedshareThreshold", 1), len(keys))
        mlkem_keys = _seedshare_mlkem_keys(top.get("SeedshareOwnerMLKEMKeys", {}), ders)
        raw = bytes(data)
        return cls(
            raw=raw,
            digest=hashlib.sha256(raw).digest(),
            policies=MappingProxyType(policies),
            reference_values=reference_values,
            owner_key_digests=owners,
            seedshare_owner_keys=keys,
            seedshare_owner_keys_der=ders,
            coordinator_policy_hash=coordinator,
            seedshare_threshold=threshold,
            seedshare_owner_mlkem_keys=MappingProxyType(mlkem_keys),
        )

    def policy(self, hash: bytes) -> PolicyEntry | None:
        """The entry for a 32-byte policy hash, or None when the manifest does not admit it."""
        if len(hash) != 32:
            return None
        return self.policies.get(bytes(hash).hex())

    def is_owner(self, spki_der: bytes) -> bool:
        """Whether SHA-256 of this SPKI DER is listed in ``WorkloadOwnerKeyDigests``."""
        return hashlib.sha256(spki_der).digest() in self.owner_key_digests

    def is_seedshare_owner(self, pkcs1_der: bytes) -> bool:
        """Whether this PKCS#1 DER key is listed in ``SeedshareOwnerPubKeys``."""
        return bytes(pkcs1_der) in self.seedshare_owner_keys_der

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"Manifest({self.hex_digest[:16]}…, {len(self.policies)} policies)"
