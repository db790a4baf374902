"""Signed user requests: what a workload owner signs to update the manifest, and what a
seed-share owner signs to recover. Shared by the client (signing) and the server (verifying),
so both sides build the exact same domain-separated message."""

from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from coordinator.core.manifest import ManifestError, parse_pkcs1_public_key
from coordinator.errors import ConcordError, Status

SET_MANIFEST_DOMAIN = b"concord/v1/set-manifest\x00"
RECOVER_DOMAIN = b"concord/v1/recover\x00"


class SignatureError(ConcordError):
    """A user signature or key is unacceptable; the message says which and why."""

    reason = "signature_invalid"
    status = Status.PERMISSION_DENIED


DEPLOYMENT_ID_SIZE = 32


def set_manifest_message(deployment_id: bytes, new_transition_hash: bytes) -> bytes:
    """What a workload owner signs for an update: it names the deployment (DESIGN §12), so a
    signature made for one deployment is worthless in another with the same history."""
    if len(deployment_id) != DEPLOYMENT_ID_SIZE:
        raise SignatureError(f"deployment ID: must be {DEPLOYMENT_ID_SIZE} bytes")
    return SET_MANIFEST_DOMAIN + deployment_id + new_transition_hash


def recover_message(nonce: bytes, sealed: bytes, expected_latest: bytes) -> bytes:
    """What a seed-share owner signs to recover: it names the history it recovers."""
    return RECOVER_DOMAIN + nonce + hashlib.sha256(sealed).digest() + expected_latest


def deployment_id(root_ca_spki_der: bytes) -> bytes:
    """The deployment's cryptographic name: SHA-256 of the root CA's SubjectPublicKeyInfo DER.
    The root key derives from the seed, so it is stable across updates and recoveries."""
    return hashlib.sha256(root_ca_spki_der).digest()


def spki_digest(spki_der: bytes) -> bytes:
    return hashlib.sha256(spki_der).digest()


class PublicKey(Protocol):
    """Any cryptography public key: all of them serialise to SubjectPublicKeyInfo."""

    def public_bytes(
        self, encoding: serialization.Encoding, format: serialization.PublicFormat, /
    ) -> bytes: ...


@runtime_checkable
class PrivateKey(Protocol):
    """Any cryptography private key, whatever its algorithm."""

    def public_key(self) -> PublicKey: ...


def public_spki(key: PublicKey | PrivateKey) -> bytes:
    """SPKI DER of the public half; callers hold either half of the pair."""
    pub = key.public_key() if isinstance(key, PrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign_owner(key: PrivateKeyTypes, message: bytes) -> bytes:
    """Workload owner keys: ECDSA P-256/P-384 (SHA-256), Ed25519, or RSA-PSS (SHA-256)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, _pss(), hashes.SHA256())
    raise SignatureError("owner key: unsupported key type (want EC, Ed25519 or RSA)")


def verify_owner(spki_der: bytes, signature: bytes, message: bytes) -> None:
    try:
        key = serialization.load_der_public_key(spki_der)
    except (ValueError, TypeError):
        raise SignatureError("owner_public_key: not a valid SPKI DER public key") from None
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, _pss(), hashes.SHA256())
        else:
            raise SignatureError("owner_public_key: unsupported key type")
    except InvalidSignature:
        raise SignatureError("signature: does not verify with owner_public_key") from None


def sign_seedshare(key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    return key.sign(message, _pss(), hashes.SHA256())


def verify_seedshare(pkcs1_der: bytes, signature: bytes, message: bytes) -> None:
    try:
        key = parse_pkcs1_public_key(pkcs1_der, "seedshare_owner_public_key")
    except ManifestError as exc:
        raise SignatureError(str(exc)) from None
    try:
        key.verify(signature, message, _pss(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureError("signature: does not verify with the seed-share owner key") from None


def rsa_pkcs1_der(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> bytes:
    pub = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
