"""Trust anchors: pinned production roots, explicit mock roots, and the spec parser."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestation import anchors
from attestation.anchors import PINNED_ROOT_SHA256, AnchorError, TrustAnchors
from attestation.providers import mock as mock_tee

# The values published in the shared vectors' README, typed again here on purpose: a change of
# PINNED_ROOT_SHA256 must also change this test.
README_PINS = {
    "ARK-Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "ARK-Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "ARK-Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    "Intel SGX Root CA": "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3",
}


def _sha(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@pytest.fixture(scope="module")
def mock_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("anchors") / "mock"
    mock_tee.init(base, "Milan")
    return base


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- production ------------------------------------------------------------------------------


def test_pins_match_the_published_values() -> None:
    assert PINNED_ROOT_SHA256 == README_PINS


def test_production_loads_and_matches_pins() -> None:
    a = anchors.production()
    assert a.kind == "production" and not a.is_mock
    assert set(a.amd) == {"Milan", "Genoa", "Turin"}
    for product, roots in a.amd.items():
        assert roots.product == product
        assert _sha(roots.ark) == README_PINS[f"ARK-{product}"]
        assert roots.ask.issuer == roots.ark.subject
        assert roots.asvk is not None and roots.asvk.issuer == roots.ark.subject
        assert roots.ask.subject != roots.asvk.subject
    assert _sha(a.intel_root) == README_PINS["Intel SGX Root CA"]


def test_shipped_roots_equal_the_shared_vectors(vectors: Path) -> None:
    a = anchors.production()
    for product in ("milan", "genoa"):
        pem = (vectors / "anchors" / f"amd_ask_ark_{product}.pem").read_bytes()
        ask, ark = x509.load_pem_x509_certificates(pem)
        assert a.amd[product.capitalize()].ark == ark
        assert a.amd[product.capitalize()].ask == ask
    intel = x509.load_pem_x509_certificate(
        (vectors / "anchors" / "intel_sgx_root_ca.pem").read_bytes()
    )
    assert a.intel_root == intel


@pytest.mark.parametrize("name", list(README_PINS))
def test_tampered_pin_is_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    pins = dict(PINNED_ROOT_SHA256)
    pins[name] = "00" * 32
    monkeypatch.setattr(anchors, "PINNED_ROOT_SHA256", pins)
    with pytest.raises(AnchorError, match=f"{name}: SHA-256 .* does not match the pinned value"):
        anchors.production()


# --- mock ------------------------------------------------------------------------------------


def test_mock_anchors_load(mock_dir: Path) -> None:
    a = anchors.mock(mock_dir)
    assert isinstance(a, TrustAnchors)
    assert a.kind == "mock" and a.is_mock
    assert list(a.amd) == ["Milan"]
    roots = a.amd["Milan"]
    assert roots.ask.issuer == roots.ark.subject
    assert roots.asvk is not None
    assert _sha(roots.ark) not in README_PINS.values()
    assert _sha(a.intel_root) not in README_PINS.values()
    assert a.intel_root == x509.load_pem_x509_certificate(
        (mock_dir / "intel/root.pem").read_bytes()
    )


def test_mock_dir_with_production_amd_root_is_refused(mock_dir: Path, tmp_path: Path) -> None:
    base = _copy(mock_dir, tmp_path / "m")
    prod = anchors.production().amd["Milan"]
    # a consistent hierarchy (real ASK/ASVK signed by the real ARK) that *is* production
    for name, cert in (("ark", prod.ark), ("ask", prod.ask), ("asvk", prod.asvk)):
        assert cert is not None
        (base / "amd" / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(AnchorError, match="contain the production root ARK-Milan"):
        anchors.mock(base)


def test_mock_dir_with_production_intel_root_is_refused(mock_dir: Path, tmp_path: Path) -> None:
    base = _copy(mock_dir, tmp_path / "m")
    intel = anchors.production().intel_root
    (base / "intel" / "root.pem").write_bytes(intel.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(AnchorError, match="contain the production root Intel SGX Root CA"):
        anchors.mock(base)


def test_mock_missing_file(mock_dir: Path, tmp_path: Path) -> None:
    base = _copy(mock_dir, tmp_path / "m")
    (base / "intel" / "root.pem").unlink()
    with pytest.raises(AnchorError, match=r"No such file or directory: .*root\.pem"):
        anchors.mock(base)


def test_mock_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(AnchorError, match="mock trust anchors in"):
        anchors.mock(tmp_path / "nothing")


def test_mock_unknown_product(mock_dir: Path, tmp_path: Path) -> None:
    base = _copy(mock_dir, tmp_path / "m")
    (base / "amd" / "product").write_text("Naples\n")
    with pytest.raises(AnchorError, match="unknown product 'Naples'"):
        anchors.mock(base)


def test_mock_two_certs_in_one_file(mock_dir: Path, tmp_path: Path) -> None:
    base = _copy(mock_dir, tmp_path / "m")
    ark = (base / "amd" / "ark.pem").read_bytes()
    (base / "amd" / "ark.pem").write_bytes(ark + ark)
    with pytest.raises(AnchorError, match="exactly one certificate per file"):
        anchors.mock(base)


def test_mock_not_pem(mock_dir: Path, tmp_path: Path) -> None:
    base = _copy(mock_dir, tmp_path / "m")
    (base / "amd" / "ask.pem").write_bytes(b"not a certificate")
    with pytest.raises(AnchorError):
        anchors.mock(base)


def test_mock_ask_not_signed_by_ark(mock_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    mock_tee.init(other, "Milan")
    base = _copy(mock_dir, tmp_path / "m")
    shutil.copy(other / "amd" / "ask.pem", base / "amd" / "ask.pem")
    with pytest.raises(AnchorError, match="mock ask: not signed by"):
        anchors.mock(base)


# --- from_spec -------------------------------------------------------------------------------


def test_from_spec_production() -> None:
    assert anchors.from_spec("production").kind == "production"


def test_from_spec_mock(mock_dir: Path) -> None:
    assert anchors.from_spec(f"mock:{mock_dir}").kind == "mock"


@pytest.mark.parametrize(
    "spec", ["", "mock:", "mock", "Production", "prod", "file:/x", " production", "mock :x"]
)
def test_from_spec_errors(spec: str) -> None:
    with pytest.raises(AnchorError, match="--trust-anchors must be 'production' or 'mock:DIR'"):
        anchors.from_spec(spec)


def test_from_spec_mock_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(AnchorError, match="mock trust anchors in"):
        anchors.from_spec(f"mock:{tmp_path / 'missing'}")
