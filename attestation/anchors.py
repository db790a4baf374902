"""Trust anchors: the roots every evidence chain must end in.

Production anchors are the vendor roots shipped in ``attestation/roots/``; each root's SHA-256
(over the DER) is pinned here and checked at load, and each intermediate (ASK, ASVK) must be
signed by its root. Mock anchors come only from a directory the operator names explicitly
(``mock:DIR``, written by ``concord mock-tee init``); they are never a fallback.

Mock directory layout (shared with :mod:`attestation.providers.mock`)::

    DIR/amd/ark.pem  ask.pem  asvk.pem      mock AMD roots (product: DIR/amd/product)
    DIR/intel/root.pem                      mock Intel SGX root
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

PINNED_ROOT_SHA256 = {
    "ARK-Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "ARK-Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "ARK-Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    "Intel SGX Root CA": "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3",
}

_AMD_FILES = {
    "Milan": ("amd_ask_ark_milan.pem", "amd_ask_ark_milan_vlek.pem"),
    "Genoa": ("amd_ask_ark_genoa.pem", "amd_ask_ark_genoa_vlek.pem"),
    "Turin": ("amd_ask_ark_turin_vcek.pem", "amd_ask_ark_turin_vlek.pem"),
}


class AnchorError(Exception):
    """Trust anchors could not be loaded or failed their pin."""


@dataclass(frozen=True)
class AmdRoots:
    """ARK plus the two AMD intermediates of one product: ASK signs VCEKs, ASVK signs VLEKs."""

    product: str
    ark: x509.Certificate
    ask: x509.Certificate
    asvk: x509.Certificate | None


@dataclass(frozen=True)
class TrustAnchors:
    kind: str  # "production" or "mock"
    amd: dict[str, AmdRoots]
    intel_root: x509.Certificate

    @property
    def is_mock(self) -> bool:
        return self.kind == "mock"


def _der_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _load_pem_chain(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise AnchorError(f"{what}: not a PEM certificate bundle ({exc})") from None
    return certs


def _check_signed_by_rsa_pss(child: x509.Certificate, parent: x509.Certificate, what: str) -> None:
    key = parent.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise AnchorError(f"{what}: issuer key is not RSA")
    try:
        key.verify(
            child.signature,
            child.tbs_certificate_bytes,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
            hashes.SHA384(),
        )
    except Exception:
        raise AnchorError(f"{what}: not signed by {parent.subject.rfc4514_string()}") from None


def _pin(cert: x509.Certificate, name: str) -> None:
    got = _der_sha256(cert)
    if got != PINNED_ROOT_SHA256[name]:
        raise AnchorError(f"{name}: SHA-256 {got} does not match the pinned value")


def production() -> TrustAnchors:
    """The pinned AMD and Intel roots shipped with the package."""
    roots = resources.files("attestation").joinpath("roots")
    amd: dict[str, AmdRoots] = {}
    for product, (vcek_file, vlek_file) in _AMD_FILES.items():
        ask, ark = _load_pem_chain(roots.joinpath(vcek_file).read_bytes(), vcek_file)
        asvk, ark2 = _load_pem_chain(roots.joinpath(vlek_file).read_bytes(), vlek_file)
        _pin(ark, f"ARK-{product}")
        if ark2 != ark:
            raise AnchorError(f"{vlek_file}: ARK differs from {vcek_file}")
        _check_signed_by_rsa_pss(ask, ark, vcek_file)
        _check_signed_by_rsa_pss(asvk, ark, vlek_file)
        amd[product] = AmdRoots(product=product, ark=ark, ask=ask, asvk=asvk)
    (intel,) = _load_pem_chain(roots.joinpath("intel_sgx_root_ca.pem").read_bytes(), "intel root")
    _pin(intel, "Intel SGX Root CA")
    return TrustAnchors(kind="production", amd=amd, intel_root=intel)


def mock(directory: str | Path) -> TrustAnchors:
    """Mock roots written by ``concord mock-tee init DIR``; only ever loaded on explicit request."""
    base = Path(directory)
    try:
        product = (base / "amd" / "product").read_text().strip()
        (ark,) = _load_pem_chain((base / "amd" / "ark.pem").read_bytes(), "mock ark")
        (ask,) = _load_pem_chain((base / "amd" / "ask.pem").read_bytes(), "mock ask")
        (asvk,) = _load_pem_chain((base / "amd" / "asvk.pem").read_bytes(), "mock asvk")
        (intel,) = _load_pem_chain((base / "intel" / "root.pem").read_bytes(), "mock intel root")
    except OSError as exc:
        raise AnchorError(f"mock trust anchors in {base}: {exc.strerror}: {exc.filename}") from None
    except ValueError:
        raise AnchorError(
            f"mock trust anchors in {base}: expected exactly one certificate per file"
        ) from None
    if product not in _AMD_FILES:
        raise AnchorError(f"mock trust anchors in {base}: unknown product {product!r}")
    _check_signed_by_rsa_pss(ask, ark, "mock ask")
    _check_signed_by_rsa_pss(asvk, ark, "mock asvk")
    for name, digest in PINNED_ROOT_SHA256.items():
        if _der_sha256(ark) == digest or _der_sha256(intel) == digest:
            raise AnchorError(f"mock trust anchors in {base}: contain the production root {name}")
    return TrustAnchors(
        kind="mock", amd={product: AmdRoots(product, ark, ask, asvk)}, intel_root=intel
    )


def from_spec(spec: str) -> TrustAnchors:
    """Parse the ``--trust-anchors`` value: ``production`` or ``mock:DIR``."""
    if spec == "production":
        return production()
    if spec.startswith("mock:") and len(spec) > len("mock:"):
        return mock(spec[len("mock:") :])
    raise AnchorError(f"--trust-anchors must be 'production' or 'mock:DIR', got {spec!r}")
