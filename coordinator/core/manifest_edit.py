"""Building and editing a manifest without hand-computed digests (pure: bytes in, bytes out).

Every edit loads a manifest that :meth:`Manifest.parse` accepts, changes one thing and renders
it again in a stable layout (top-level keys in the documented order, the coordinator policy
first, two-space indentation, one trailing newline). The result is parsed again by the real
parser before it is returned, so an edit can never produce a manifest the coordinator would
refuse; the error then names the manifest field (``Policies.<hash>.SANs[1]``) and the reason.

The manifest stores digests and DER encodings, not keys: :func:`owner_key_digest` and
:func:`seedshare_public_key_hex` compute them from a PEM key (public or private; only the
public part is used).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from attestation.errors import InvalidReferenceValues
from attestation.reference import parse_reference_values
from coordinator.core.manifest import (
    ROLE_COORDINATOR,
    TOP_LEVEL_KEYS,
    Manifest,
    ManifestError,
    parse_pkcs1_public_key,
)
from coordinator.errors import ConcordError, Status

TEES = ("snp", "tdx")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ManifestEditError(ConcordError, ValueError):
    """An edit would produce an invalid manifest, or its input is unusable.

    ``field`` names the manifest field (or the input) and ``why`` the reason.
    """

    reason = "invalid_manifest"
    status = Status.INVALID_ARGUMENT

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why


class CoordinatorConflict(ManifestEditError):
    """A second coordinator policy without the explicit request to replace the current one."""

    reason = "coordinator_policy_conflict"


class InvalidKeyInput(ManifestEditError):
    """A key file is not a usable owner or seed-share owner key."""

    reason = "invalid_key"


# --- rendering ---------------------------------------------------------------------------------


def _load(raw: bytes) -> dict[str, Any]:
    """The manifest as a mutable document; it must already be valid."""
    try:
        Manifest.parse(raw)
    except ManifestError as exc:
        raise ManifestEditError(exc.path, exc.why) from None
    doc = json.loads(raw)
    if not isinstance(doc, dict):  # unreachable: Manifest.parse accepts objects only
        raise ManifestEditError("$", "must be a JSON object")
    return doc


def _ordered_policies(policies: Mapping[str, Any]) -> dict[str, Any]:
    """The coordinator policy first, the others in their existing order."""
    coordinator = [k for k, v in policies.items() if _is_coordinator(v)]
    return {k: policies[k] for k in [*coordinator, *(k for k in policies if k not in coordinator)]}


def _is_coordinator(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("Role") == ROLE_COORDINATOR


def render(doc: Mapping[str, Any]) -> bytes:
    """The stable layout every edit writes; validated by the real parser before it is returned."""
    ordered: dict[str, Any] = {k: doc[k] for k in TOP_LEVEL_KEYS if k in doc}
    unknown = [k for k in doc if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ManifestEditError(unknown[0], "unknown top-level field")
    if isinstance(ordered.get("Policies"), dict):
        ordered["Policies"] = _ordered_policies(ordered["Policies"])
    try:
        raw = (json.dumps(ordered, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # e.g. a command-line argument that was not valid UTF-8
        raise ManifestEditError("$", "contains text that is not valid UTF-8") from None
    try:
        Manifest.parse(raw)
    except ManifestError as exc:
        raise ManifestEditError(exc.path, exc.why) from None
    return raw


def policy_hash(policy: bytes) -> str:
    """A policy's identity in the manifest: lowercase hex SHA-256 of its exact bytes."""
    return hashlib.sha256(policy).hexdigest()


def _entry(sans: Sequence[str], secret_id: str, coordinator: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"SANs": list(sans)}
    if secret_id:
        entry["WorkloadSecretID"] = secret_id
    if coordinator:
        entry["Role"] = ROLE_COORDINATOR
    return entry


# --- policies ----------------------------------------------------------------------------------


def new_manifest(
    coordinator_policy: bytes, *, sans: Sequence[str] = (), secret_id: str = ""
) -> bytes:
    """A manifest that names only the coordinator policy, with every other field present and
    empty so that a reader sees what is still to be filled in."""
    doc = {
        "Policies": {policy_hash(coordinator_policy): _entry(sans, secret_id, True)},
        "ReferenceValues": {"snp": [], "tdx": []},
        "WorkloadOwnerKeyDigests": [],
        "SeedshareOwnerPubKeys": [],
    }
    return render(doc)


@dataclass(frozen=True)
class Edit:
    """The new manifest bytes and whether anything changed (``changed`` False: same bytes)."""

    raw: bytes
    changed: bool
    what: str


def add_policy(
    raw: bytes,
    policy: bytes,
    *,
    sans: Sequence[str] = (),
    secret_id: str = "",
    coordinator: bool = False,
    replace_coordinator: bool = False,
) -> Edit:
    """Set the entry of ``policy`` (added, or replaced when the policy is already listed).

    A second coordinator policy is refused unless ``replace_coordinator``: then the old
    coordinator policy's entry is removed (a coordinator upgrade).
    """
    doc = _load(raw)
    policies: dict[str, Any] = doc["Policies"]
    key = policy_hash(policy)
    current = next((k for k, v in policies.items() if _is_coordinator(v)), None)
    if coordinator and current is not None and current != key:
        if not replace_coordinator:
            raise CoordinatorConflict(
                f"Policies.{current}.Role",
                "the manifest already has a coordinator policy; replace it explicitly "
                "(its entry is then removed)",
            )
        del policies[current]
    if not coordinator and current == key:
        raise ManifestEditError(
            f"Policies.{key}.Role",
            "this is the coordinator policy: it keeps the coordinator role",
        )
    existed = key in policies
    policies[key] = _entry(sans, secret_id, coordinator)
    out = render(doc)
    return Edit(out, out != raw, f"{'replaced' if existed else 'added'} policy {key}")


def remove_policy(raw: bytes, key: str) -> Edit:
    """Remove a workload policy by its hash (the coordinator policy can only be replaced)."""
    doc = _load(raw)
    policies: dict[str, Any] = doc["Policies"]
    key = key.strip().lower()
    if not _HEX64.fullmatch(key):
        raise ManifestEditError("policy", "want a policy file or its 64-hex SHA-256")
    if key not in policies:
        raise ManifestEditError(f"Policies.{key}", "not in the manifest")
    if _is_coordinator(policies[key]):
        raise ManifestEditError(
            f"Policies.{key}.Role",
            "the coordinator policy cannot be removed, only replaced by another coordinator policy",
        )
    del policies[key]
    return Edit(render(doc), True, f"removed policy {key}")


# --- reference values --------------------------------------------------------------------------


def reference_input(doc: Any, tee: str | None, source: str) -> dict[str, list[Any]]:
    """Normalise a reference-values input to ``{"snp": [...], "tdx": [...]}`` and validate it.

    ``tee`` None: ``doc`` is a whole ``ReferenceValues`` object (what ``mock-tee init`` writes).
    ``tee`` "snp"/"tdx": ``doc`` is one reference object of that TEE, or an array of them.
    Errors name ``source`` and the JSON path inside it.
    """
    if tee is None:
        values = doc
    elif tee in TEES:
        values = {tee: doc if isinstance(doc, list) else [doc]}
    else:
        raise ManifestEditError("tee", f"want one of {', '.join(TEES)}")
    try:
        parse_reference_values(values, source)
    except InvalidReferenceValues as exc:
        raise ManifestEditError(exc.path, exc.why) from None
    return {t: list(values.get(t, [])) for t in TEES}


def add_references(
    raw: bytes, values: Mapping[str, Sequence[Any]], *, replace: bool = False
) -> Edit:
    """Append reference entries (validated by :func:`reference_input`); entries already present
    are not added twice. ``replace`` first drops the existing entries of each TEE given."""
    doc = _load(raw)
    refs: dict[str, Any] = doc["ReferenceValues"]
    added = 0
    for tee in TEES:
        entries = list(values.get(tee, []))
        if not entries:
            continue
        existing: list[Any] = [] if replace else list(refs.get(tee, []))
        for entry in entries:
            if entry not in existing:
                existing.append(entry)
                added += 1
        refs[tee] = existing
    out = render(doc)
    return Edit(out, out != raw, f"{added} reference entr{'y' if added == 1 else 'ies'} added")


# --- owners ------------------------------------------------------------------------------------


def public_key_from_pem(pem: bytes, field: str) -> Any:
    """The public key of a PEM public or private key (unencrypted)."""
    try:
        return serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        pass
    except Exception:  # UnsupportedAlgorithm
        raise InvalidKeyInput(field, "unsupported key algorithm") from None
    try:
        return serialization.load_pem_private_key(pem, password=None).public_key()
    except TypeError:
        raise InvalidKeyInput(field, "encrypted private keys are not supported") from None
    except Exception:  # ValueError, UnsupportedAlgorithm
        raise InvalidKeyInput(field, "not a PEM public or private key") from None


def owner_key_digest(pem: bytes, field: str = "owner key") -> str:
    """What ``WorkloadOwnerKeyDigests`` lists: lowercase hex SHA-256 of the SPKI DER."""
    key = public_key_from_pem(pem, field)
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise InvalidKeyInput(field, "an owner key must be EC, Ed25519 or RSA")
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def seedshare_public_key_hex(pem: bytes, field: str = "seed-share key") -> str:
    """What ``SeedshareOwnerPubKeys`` lists: lowercase hex PKCS#1 RSAPublicKey DER."""
    key = public_key_from_pem(pem, field)
    if not isinstance(key, rsa.RSAPublicKey):
        raise InvalidKeyInput(field, "a seed-share owner key must be RSA")
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    try:
        parse_pkcs1_public_key(der, field)
    except ManifestError as exc:
        raise InvalidKeyInput(field, exc.why) from None
    return der.hex()


def _append_unique(raw: bytes, field: str, values: Iterable[str], noun: str) -> Edit:
    doc = _load(raw)
    items: list[str] = list(doc.get(field, []))
    added = 0
    for value in values:
        if value not in items:
            items.append(value)
            added += 1
    doc[field] = items
    out = render(doc)
    return Edit(out, out != raw, f"{added} {noun}{'' if added == 1 else 's'} added")


def add_owner_digests(raw: bytes, digests: Iterable[str]) -> Edit:
    """Append owner digests (64 hex; upper case accepted and lowered)."""
    normalised = []
    for i, digest in enumerate(digests):
        text = digest.strip().lower()
        if not _HEX64.fullmatch(text):
            raise ManifestEditError(
                f"owner digest {i + 1}", "want 64 hex characters (SHA-256 of the SPKI DER)"
            )
        normalised.append(text)
    return _append_unique(raw, "WorkloadOwnerKeyDigests", normalised, "owner")


def add_seedshare_owners(raw: bytes, pkcs1_hex: Iterable[str]) -> Edit:
    """Append seed-share owner public keys (hex PKCS#1 DER, from :func:`seedshare_public_key_hex`)."""
    return _append_unique(raw, "SeedshareOwnerPubKeys", list(pkcs1_hex), "seed-share owner")


# --- what a manifest means ---------------------------------------------------------------------

IMMUTABLE = "immutable"
UNRECOVERABLE = "unrecoverable"
ADMITS_NOTHING = "admits_nothing"


@dataclass(frozen=True)
class Finding:
    """A property of a manifest its author should know before setting it."""

    name: str  # IMMUTABLE | UNRECOVERABLE | ADMITS_NOTHING
    field: str
    consequence: str


def findings(manifest: Manifest) -> tuple[Finding, ...]:
    """The consequences of empty fields; ``concord set`` refuses the first two unless told."""
    out = []
    if not manifest.owner_key_digests:
        out.append(
            Finding(
                IMMUTABLE,
                "WorkloadOwnerKeyDigests",
                "no workload owner: this manifest can never be updated",
            )
        )
    if not manifest.seedshare_owner_keys_der:
        out.append(
            Finding(
                UNRECOVERABLE,
                "SeedshareOwnerPubKeys",
                "no seed-share owner: the deployment can never be recovered once every "
                "coordinator has lost its state",
            )
        )
    refs = manifest.reference_values
    if not refs.snp and not refs.tdx:
        out.append(
            Finding(
                ADMITS_NOTHING,
                "ReferenceValues",
                "no reference values: no workload and no coordinator can be admitted",
            )
        )
    return tuple(out)


def describe(manifest: Manifest) -> dict[str, Any]:
    """A JSON-ready summary of a manifest (what ``concord manifest show`` prints)."""
    doc = json.loads(manifest.raw)
    coordinator = manifest.coordinator_policy_hash.hex()
    order = [coordinator, *(k for k in manifest.policies if k != coordinator)]
    policies = [
        {
            "sha256": key,
            "role": manifest.policies[key].role,
            "sans": list(manifest.policies[key].sans),
            "workload_secret_id": manifest.policies[key].workload_secret_id,
        }
        for key in order
    ]
    references: list[dict[str, Any]] = []
    for i, snp in enumerate(manifest.reference_values.snp):
        references.append(
            {
                "tee": "snp",
                "index": i,
                "product": snp.product,
                "measurement": snp.measurement.hex(),
                "fields": sorted(doc["ReferenceValues"]["snp"][i]),
            }
        )
    for i, tdx in enumerate(manifest.reference_values.tdx):
        references.append(
            {
                "tee": "tdx",
                "index": i,
                "mr_td": tdx.mr_td.hex(),
                "fields": sorted(doc["ReferenceValues"]["tdx"][i]),
            }
        )
    seedshare_owners = [
        {"bits": key.key_size, "sha256": hashlib.sha256(der).hexdigest()}
        for key, der in zip(
            manifest.seedshare_owner_keys, manifest.seedshare_owner_keys_der, strict=True
        )
    ]
    return {
        "sha256": manifest.hex_digest,
        "coordinator_policy": coordinator,
        "policies": policies,
        "reference_values": references,
        "workload_owner_key_digests": [d.hex() for d in manifest.owner_key_digests],
        "seedshare_owners": seedshare_owners,
        "findings": [
            {"name": f.name, "field": f.field, "consequence": f.consequence}
            for f in findings(manifest)
        ],
    }
