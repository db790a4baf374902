"""verify_snp end to end: real vectors as the README states, a negative matrix, the mock TEE."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from attestation import anchors as anchors_mod
from attestation.anchors import AmdRoots, TrustAnchors
from attestation.cache import BoundedCache
from attestation.errors import (
    BindingMismatch,
    CertificateExpired,
    CertificateExtensionInvalid,
    CertificateRevoked,
    CertificateSignatureInvalid,
    CollateralExpired,
    DebugForbidden,
    EvidenceRejected,
    MalformedEvidence,
    MeasurementMismatch,
    MissingCertificate,
    NoMatchingReference,
    ReportDataMismatch,
    ReservedFieldNotZero,
    SignatureInvalid,
    SizeLimitExceeded,
    TcbTooLow,
    UnsupportedVersion,
    UntrustedRoot,
)
from attestation.mock.snp import MockAmd, create_mock_amd, issue_certificate, load_mock_amd
from attestation.reference import SnpGuestPolicy, SnpReference, SnpTcb, parse_snp_reference
from attestation.snp import certs as c
from attestation.snp.policy import (
    AbiVersionTooLow,
    ChipIdNotAllowed,
    GuestPolicyViolation,
    PlatformInfoViolation,
    ProductMismatch,
    VlekNotAllowed,
    VmplNotAllowed,
)
from attestation.snp.report import UnsupportedSignatureAlgorithm, encode_policy, parse_report
from attestation.snp.tcb import UnknownProduct, encode_tcb
from attestation.snp.verify import CertificateProductMismatch, SnpVerified, verify_snp
from tests.unit.snp_helpers import (  # noqa: F401  (fixtures)
    NOW,
    mock_amd_anchors,
    production_fixture,
    snp_vectors_fixture,
)

MEAS = bytes(range(48))
HOST = bytes(range(100, 132))
RD = bytes(range(64))
ALL_PERMISSIVE = frozenset({"SMT", "MigrateMA", "Debug", "CXLAllow"})


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def genoa(tmp_path_factory: pytest.TempPathFactory) -> MockAmd:
    return create_mock_amd(tmp_path_factory.mktemp("genoa"), "Genoa")


@pytest.fixture(scope="module")
def turin(tmp_path_factory: pytest.TempPathFactory) -> MockAmd:
    return create_mock_amd(tmp_path_factory.mktemp("turin"), "Turin")


@pytest.fixture(scope="module")
def fake_milan(tmp_path_factory: pytest.TempPathFactory) -> MockAmd:
    """A hierarchy with exactly AMD's Milan names (ARK-Milan, SEV-Milan) but its own keys."""
    return create_mock_amd(tmp_path_factory.mktemp("fake-milan"), "Milan")


def _ref_for(report: bytes, product: str, **kw: object) -> SnpReference:
    parsed = parse_report(report)
    return SnpReference(product=product, measurement=parsed.measurement, **kw)  # type: ignore[arg-type]


def _flip(raw: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(raw)
    out[offset] ^= mask
    return bytes(out)


def _put(raw: bytes, offset: int, value: bytes) -> bytes:
    out = bytearray(raw)
    out[offset : offset + len(value)] = value
    return bytes(out)


# --- real vectors as the README says ---------------------------------------------------------


def test_milan_v2_valid(snp: Path, production: TrustAnchors) -> None:
    report = (snp / "milan-v2.report.bin").read_bytes()
    vcek = (snp / "milan-v2.vcek.der").read_bytes()
    parsed = parse_report(report)
    ref = _ref_for(
        report, "Milan", minimum_tcb=SnpTcb(3, 0, 8, 0x73), allowed_chip_ids=(parsed.chip_id,)
    )
    res = verify_snp(report, [vcek], production, [ref], parsed.report_data, NOW)
    assert isinstance(res, SnpVerified)
    assert (res.product, res.signer, res.reference_index) == ("Milan", "vcek", 0)
    assert res.tcb == SnpTcb(bootloader=3, tee=0, snp=8, microcode=0x73)
    assert res.measurement == parsed.measurement and res.host_data == bytes(32)
    assert res.report_data == parsed.report_data and res.chip_id == parsed.chip_id
    assert res.report.raw == report


def test_milan_v2_with_pinned_chain_in_evidence(snp: Path, production: TrustAnchors) -> None:
    report = (snp / "milan-v2.report.bin").read_bytes()
    roots = production.amd["Milan"]
    certs = [
        (snp / "milan-v2.vcek.der").read_bytes(),
        roots.ask.public_bytes(serialization.Encoding.DER),
        roots.ark.public_bytes(serialization.Encoding.DER),
    ]
    assert (
        verify_snp(report, certs, production, [_ref_for(report, "Milan")], None, NOW).product
        == "Milan"
    )


def test_milan_v2_debug(snp: Path, production: TrustAnchors) -> None:
    report = (snp / "milan-v2-debug.report.bin").read_bytes()
    vcek = (snp / "milan-v2-debug.vcek.der").read_bytes()
    forbids = _ref_for(report, "Milan")
    allows = _ref_for(
        report, "Milan", guest_policy=SnpGuestPolicy(allowed=frozenset({"SMT", "Debug"}))
    )
    with pytest.raises(DebugForbidden):
        verify_snp(report, [vcek], production, [forbids], None, NOW)
    res = verify_snp(report, [vcek], production, [allows], None, NOW)
    assert res.report.policy.debug and res.tcb == SnpTcb(2, 0, 5, 0x44)
    # With several references, the one that allows debug is chosen.
    assert verify_snp(report, [vcek], production, [forbids, allows], None, NOW).reference_index == 1


def test_vlek_v3(snp: Path, production: TrustAnchors) -> None:
    report = (snp / "vlek-v3.report.bin").read_bytes()
    vlek = (snp / "vlek-v3.vlek.der").read_bytes()
    allowed = _ref_for(report, "Milan", allow_vlek=True, allowed_vmpls=(1,))
    res = verify_snp(report, [vlek], production, [allowed], None, datetime(2025, 12, 9, tzinfo=UTC))
    assert (res.signer, res.product) == ("vlek", "Milan")
    assert res.tcb == SnpTcb(bootloader=4, tee=0, snp=24, microcode=0xD9)
    with pytest.raises(CertificateExpired):
        verify_snp(report, [vlek], production, [allowed], None, datetime(2026, 11, 25, tzinfo=UTC))
    with pytest.raises(VlekNotAllowed):
        verify_snp(report, [vlek], production, [replace(allowed, allow_vlek=False)], None, NOW)


def test_vlek_v3_reference_from_manifest_json(snp: Path, production: TrustAnchors) -> None:
    report = (snp / "vlek-v3.report.bin").read_bytes()
    ref = parse_snp_reference(
        {
            "ProductName": "Milan",
            "TrustedMeasurement": parse_report(report).measurement.hex(),
            "MinimumTCB": {"Bootloader": 4, "TEE": 0, "SNP": 24, "Microcode": 217},
            "AllowVLEK": True,
            "AllowedVMPLs": [1],
        },
        "snp[0]",
    )
    assert (
        verify_snp(
            report, [(snp / "vlek-v3.vlek.der").read_bytes()], production, [ref], None, NOW
        ).signer
        == "vlek"
    )
    with pytest.raises(TcbTooLow, match="microcode"):
        verify_snp(
            report,
            [(snp / "vlek-v3.vlek.der").read_bytes()],
            production,
            [replace(ref, minimum_tcb=SnpTcb(4, 0, 24, 218))],
            None,
            NOW,
        )


def test_vlek_v3_chip_id_allow_list_cannot_match(snp: Path, production: TrustAnchors) -> None:
    report = (snp / "vlek-v3.report.bin").read_bytes()
    ref = _ref_for(
        report, "Milan", allow_vlek=True, allowed_vmpls=(1,), allowed_chip_ids=(b"\x01" * 64,)
    )
    with pytest.raises(ChipIdNotAllowed):
        verify_snp(report, [(snp / "vlek-v3.vlek.der").read_bytes()], production, [ref], None, NOW)


def test_turin_vcek_for_extension_parsing(snp: Path, production: TrustAnchors) -> None:
    key = c.verify_key_chain([(snp / "turin.vcek.der").read_bytes()], production, NOW)
    assert key.product == "Turin" and key.info.hwid is not None and len(key.info.hwid) == 8
    assert key.info.tcb.fmc == 0


# --- negative matrix -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    report: bytes
    certs: tuple[bytes, ...]
    anchors: TrustAnchors
    refs: tuple[SnpReference, ...]
    report_data: bytes | None = None
    now: datetime = NOW
    crls: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class World:
    production: TrustAnchors
    real: Case  # milan-v2 under production anchors
    genoa: MockAmd
    genoa_case: Case
    turin: MockAmd
    turin_case: Case
    fake_milan: MockAmd

    def mock_case(
        self, mock: MockAmd | None = None, /, signer: str = "vcek", **report_kw: object
    ) -> Case:
        mock = mock or self.genoa
        kw: dict[str, object] = {"measurement": MEAS, "host_data": HOST, "report_data": RD}
        kw.update(report_kw)
        report = mock.make_report(signer=signer, **kw)  # type: ignore[arg-type]
        return Case(
            report=report,
            certs=mock.certs(signer),
            anchors=TrustAnchors("mock", {mock.product: mock.roots()}, self.production.intel_root),
            refs=(SnpReference(product=mock.product, measurement=MEAS, allow_vlek=True),),
            report_data=RD,
        )


@pytest.fixture(scope="module")
def world(
    snp: Path, production: TrustAnchors, genoa: MockAmd, turin: MockAmd, fake_milan: MockAmd
) -> World:
    report = (snp / "milan-v2.report.bin").read_bytes()
    real = Case(
        report=report,
        certs=((snp / "milan-v2.vcek.der").read_bytes(),),
        anchors=production,
        refs=(_ref_for(report, "Milan"),),
        report_data=parse_report(report).report_data,
    )
    w = World(production, real, genoa, None, turin, None, fake_milan)  # type: ignore[arg-type]
    return replace(w, genoa_case=w.mock_case(genoa), turin_case=w.mock_case(turin))


def _rs_big_endian(raw: bytes) -> bytes:
    out = bytearray(raw)
    for off in (0x2A0, 0x2E8):
        out[off : off + 48] = bytes(reversed(out[off : off + 48]))
    return bytes(out)


def _rs_big_endian_72(raw: bytes) -> bytes:
    out = bytearray(raw)
    for off in (0x2A0, 0x2E8):
        out[off : off + 72] = bytes(reversed(out[off : off + 72]))
    return bytes(out)


def _rs_swapped(raw: bytes) -> bytes:
    out = bytearray(raw)
    r, s = bytes(out[0x2A0:0x2E8]), bytes(out[0x2E8:0x330])
    out[0x2A0:0x2E8], out[0x2E8:0x330] = s, r
    return bytes(out)


def _real(w: World, **kw: object) -> Case:
    return replace(w.real, **kw)  # type: ignore[arg-type]


def _real_report(w: World, f: Callable[[bytes], bytes]) -> Case:
    return _real(w, report=f(w.real.report))


def _resigned(mock: MockAmd, raw: bytes, signer: str = "vcek") -> bytes:
    return mock.sign(raw, signer)


def _fake_chain(w: World, *, extras: bool) -> Case:
    """Real Milan product names, forged keys: a chain to a non-pinned ARK."""
    fake = w.fake_milan
    report = fake.make_report(measurement=MEAS, host_data=HOST, report_data=RD)
    certs = fake.certs("vcek", chain=extras)
    return Case(report, certs, w.production, (SnpReference(product="Milan", measurement=MEAS),), RD)


def _pkcs1_ask(w: World) -> Case:
    g = w.genoa
    ask = issue_certificate(
        subject_cn="SEV-Genoa",
        issuer=g.ark,
        issuer_key=g.ark_key,
        public_key=g.ask_key.public_key(),
        ca=True,
        rsa_padding=padding.PKCS1v15(),
    )
    anchors = TrustAnchors(
        "mock", {"Genoa": AmdRoots("Genoa", g.ark, ask, g.asvk)}, w.production.intel_root
    )
    return replace(w.genoa_case, anchors=anchors)


def _leaf(w: World, mock: MockAmd | None = None, signer: str = "vcek", **leaf_kw: object) -> Case:
    mock = mock or w.genoa
    case = w.mock_case(mock, signer) if signer == "vlek" or mock is not w.genoa else w.genoa_case
    return replace(case, certs=(mock.issue_leaf(signer, **leaf_kw),))  # type: ignore[arg-type]


def _tcb_override(w: World, mock: MockAmd, **component: int) -> Case:
    """Report whose REPORTED_TCB differs from the VCEK in one component (validly signed)."""
    return w.mock_case(mock, reported_tcb=replace(mock.tcb, **component))


def _turin_chip_tail(w: World) -> Case:
    chip = w.turin.chip_id[:8] + b"\x01" + bytes(55)
    return w.mock_case(w.turin, chip_id=chip)


def _genoa_raw(w: World, f: Callable[[bytes], bytes]) -> Case:
    return replace(w.genoa_case, report=_resigned(w.genoa, f(w.genoa_case.report)))


def _mask_chip_key(w: World) -> Case:
    return w.mock_case(mask_chip_key=True)


CASES: list[tuple[str, Callable[[World], Case], type[EvidenceRejected]]] = [
    # bit flips in every signed region of a real report
    (
        "real-flip-header-guest-svn",
        lambda w: _real_report(w, lambda r: _flip(r, 0x04)),
        SignatureInvalid,
    ),
    ("real-flip-policy-smt", lambda w: _real_report(w, lambda r: _flip(r, 0x0A)), SignatureInvalid),
    (
        "real-flip-policy-abi-minor",
        lambda w: _real_report(w, lambda r: _flip(r, 0x08)),
        SignatureInvalid,
    ),
    ("real-flip-family-id", lambda w: _real_report(w, lambda r: _flip(r, 0x10)), SignatureInvalid),
    ("real-flip-vmpl", lambda w: _real_report(w, lambda r: _flip(r, 0x30)), SignatureInvalid),
    (
        "real-flip-current-tcb",
        lambda w: _real_report(w, lambda r: _flip(r, 0x3F)),
        SignatureInvalid,
    ),
    (
        "real-flip-platform-info",
        lambda w: _real_report(w, lambda r: _flip(r, 0x40, 0x02)),
        SignatureInvalid,
    ),
    (
        "real-flip-report-data",
        lambda w: _real_report(w, lambda r: _flip(r, 0x8F)),
        SignatureInvalid,
    ),
    (
        "real-flip-measurement",
        lambda w: _real_report(w, lambda r: _flip(r, 0x90, 0x80)),
        SignatureInvalid,
    ),
    ("real-flip-host-data", lambda w: _real_report(w, lambda r: _flip(r, 0xC0)), SignatureInvalid),
    (
        "real-flip-id-key-digest",
        lambda w: _real_report(w, lambda r: _flip(r, 0xE0)),
        SignatureInvalid,
    ),
    ("real-flip-report-id", lambda w: _real_report(w, lambda r: _flip(r, 0x140)), SignatureInvalid),
    (
        "real-flip-reported-tcb-snp",
        lambda w: _real_report(w, lambda r: _flip(r, 0x186)),
        BindingMismatch,
    ),
    (
        "real-flip-reported-tcb-bootloader",
        lambda w: _real_report(w, lambda r: _flip(r, 0x180)),
        BindingMismatch,
    ),
    ("real-flip-chip-id", lambda w: _real_report(w, lambda r: _flip(r, 0x1DF)), BindingMismatch),
    (
        "real-flip-committed-tcb",
        lambda w: _real_report(w, lambda r: _flip(r, 0x1E0)),
        SignatureInvalid,
    ),
    (
        "real-flip-current-build",
        lambda w: _real_report(w, lambda r: _flip(r, 0x1E8)),
        SignatureInvalid,
    ),
    (
        "real-flip-launch-tcb",
        lambda w: _real_report(w, lambda r: _flip(r, 0x1F7)),
        SignatureInvalid,
    ),
    (
        "real-reserved-tcb-byte",
        lambda w: _real_report(w, lambda r: _flip(r, 0x183)),
        ReservedFieldNotZero,
    ),
    # signature encoding
    ("real-flip-r", lambda w: _real_report(w, lambda r: _flip(r, 0x2A0)), SignatureInvalid),
    (
        "real-flip-s",
        lambda w: _real_report(w, lambda r: _flip(r, 0x2E8 + 47, 0x10)),
        SignatureInvalid,
    ),
    ("real-swapped-r-s", lambda w: _real_report(w, _rs_swapped), SignatureInvalid),
    ("real-big-endian-r-s", lambda w: _real_report(w, _rs_big_endian), SignatureInvalid),
    ("real-big-endian-r-s-72", lambda w: _real_report(w, _rs_big_endian_72), ReservedFieldNotZero),
    (
        "real-zero-signature",
        lambda w: _real_report(w, lambda r: _put(r, 0x2A0, bytes(144))),
        SignatureInvalid,
    ),
    (
        "real-signer-none",
        lambda w: _real_report(w, lambda r: _put(r, 0x48, b"\x1c")),
        SignatureInvalid,
    ),
    (
        "real-signer-says-vlek",
        lambda w: _real_report(w, lambda r: _put(r, 0x48, b"\x04")),
        BindingMismatch,
    ),
    # shape
    ("real-truncated", lambda w: _real_report(w, lambda r: r[:-1]), MalformedEvidence),
    ("real-oversized", lambda w: _real_report(w, lambda r: r + b"\x00"), SizeLimitExceeded),
    (
        "real-version-1",
        lambda w: _real_report(w, lambda r: _put(r, 0, b"\x01")),
        UnsupportedVersion,
    ),
    (
        "real-version-6",
        lambda w: _real_report(w, lambda r: _put(r, 0, b"\x06")),
        UnsupportedVersion,
    ),
    (
        "real-signature-algo-2",
        lambda w: _real_report(w, lambda r: _put(r, 0x34, b"\x02")),
        UnsupportedSignatureAlgorithm,
    ),
    (
        "real-signature-algo-0",
        lambda w: _real_report(w, lambda r: _put(r, 0x34, b"\x00")),
        UnsupportedSignatureAlgorithm,
    ),
    (
        "real-policy-bit17-clear",
        lambda w: _real_report(w, lambda r: _flip(r, 0x0A, 0x02)),
        ReservedFieldNotZero,
    ),
    (
        "real-policy-bit-30",
        lambda w: _real_report(w, lambda r: _flip(r, 0x0B, 0x40)),
        ReservedFieldNotZero,
    ),
    ("real-mbz-0x4c", lambda w: _real_report(w, lambda r: _flip(r, 0x4C)), ReservedFieldNotZero),
    (
        "real-mbz-0x188-v2-cpuid",
        lambda w: _real_report(w, lambda r: _flip(r, 0x188)),
        ReservedFieldNotZero,
    ),
    ("real-mbz-0x1eb", lambda w: _real_report(w, lambda r: _flip(r, 0x1EB)), ReservedFieldNotZero),
    ("real-mbz-0x1f8", lambda w: _real_report(w, lambda r: _flip(r, 0x1F8)), ReservedFieldNotZero),
    ("real-mbz-0x29f", lambda w: _real_report(w, lambda r: _flip(r, 0x29F)), ReservedFieldNotZero),
    (
        "real-mbz-signature-reserved",
        lambda w: _real_report(w, lambda r: _flip(r, 0x400)),
        ReservedFieldNotZero,
    ),
    (
        "real-mbz-signer-info",
        lambda w: _real_report(w, lambda r: _flip(r, 0x49, 0x01)),
        ReservedFieldNotZero,
    ),
    (
        "real-signing-key-reserved",
        lambda w: _real_report(w, lambda r: _put(r, 0x48, b"\x08")),
        MalformedEvidence,
    ),
    # certificates
    ("real-no-certs", lambda w: _real(w, certs=()), MissingCertificate),
    ("real-garbage-vcek", lambda w: _real(w, certs=(b"\x30\x82\x01",)), MalformedEvidence),
    (
        "real-other-chips-vcek",
        lambda w: _real(w, certs=(w.real.certs[0][:0] + _debug_vcek(),)),
        BindingMismatch,
    ),
    (
        "real-tampered-legacy-vcek",
        lambda w: _real(w, certs=(_vector("tampered-legacy.vcek.der"),)),
        CertificateSignatureInvalid,
    ),
    (
        "real-tampered-new-vcek",
        lambda w: _real(w, certs=(_vector("tampered-new.vcek.der"),)),
        CertificateSignatureInvalid,
    ),
    (
        "real-vcek-expired",
        lambda w: _real(w, now=datetime(2030, 4, 4, tzinfo=UTC)),
        CertificateExpired,
    ),
    (
        "real-vcek-not-yet-valid",
        lambda w: _real(w, now=datetime(2023, 4, 1, tzinfo=UTC)),
        CertificateExpired,
    ),
    ("real-under-mock-anchors", lambda w: _real(w, anchors=w.genoa_case.anchors), UntrustedRoot),
    (
        "real-under-same-named-mock-ark",
        lambda w: _real(w, anchors=mock_amd_anchors(w.fake_milan, w.production)),
        CertificateSignatureInvalid,
    ),
    (
        "real-foreign-ark-in-evidence",
        lambda w: _real(w, certs=(*w.real.certs, w.fake_milan.ark_der)),
        UntrustedRoot,
    ),
    ("real-report-data-mismatch", lambda w: _real(w, report_data=bytes(64)), ReportDataMismatch),
    # chain on mock evidence
    (
        "mock-chain-to-non-pinned-ark",
        lambda w: _fake_chain(w, extras=False),
        CertificateSignatureInvalid,
    ),
    (
        "mock-chain-to-non-pinned-ark-with-chain",
        lambda w: _fake_chain(w, extras=True),
        UntrustedRoot,
    ),
    (
        "mock-under-production",
        lambda w: replace(w.genoa_case, anchors=w.production),
        CertificateSignatureInvalid,
    ),
    (
        "mock-chain-under-production",
        lambda w: replace(
            w.genoa_case, anchors=w.production, certs=w.genoa.certs("vcek", chain=True)
        ),
        UntrustedRoot,
    ),
    ("mock-pkcs1-ask", _pkcs1_ask, CertificateSignatureInvalid),
    (
        "mock-pkcs1-vcek",
        lambda w: _leaf(w, rsa_padding=padding.PKCS1v15()),
        CertificateSignatureInvalid,
    ),
    (
        "mock-vcek-expired",
        lambda w: _leaf(w, not_after=datetime(2025, 1, 1, tzinfo=UTC)),
        CertificateExpired,
    ),
    (
        "mock-vcek-not-yet-valid",
        lambda w: _leaf(w, not_before=datetime(2025, 7, 1, tzinfo=UTC)),
        CertificateExpired,
    ),
    (
        "mock-vcek-other-key",
        lambda w: _leaf(w, key=ec.generate_private_key(ec.SECP384R1())),
        SignatureInvalid,
    ),
    (
        "mock-crl-revokes-ask",
        lambda w: replace(w.genoa_case, crls=(w.genoa.make_crl([w.genoa.ask.serial_number]),)),
        CertificateRevoked,
    ),
    (
        "mock-crl-stale",
        lambda w: replace(
            w.genoa_case, crls=(w.genoa.make_crl(next_update=datetime(2025, 1, 1, tzinfo=UTC)),)
        ),
        CollateralExpired,
    ),
    (
        "mock-wrong-product-anchors",
        lambda w: replace(w.genoa_case, anchors=w.turin_case.anchors),
        UntrustedRoot,
    ),
    # binding report <-> VCEK
    ("mock-tcb-bootloader", lambda w: _tcb_override(w, w.genoa, bootloader=10), BindingMismatch),
    ("mock-tcb-tee", lambda w: _tcb_override(w, w.genoa, tee=1), BindingMismatch),
    ("mock-tcb-snp", lambda w: _tcb_override(w, w.genoa, snp=22), BindingMismatch),
    ("mock-tcb-microcode", lambda w: _tcb_override(w, w.genoa, microcode=73), BindingMismatch),
    ("mock-turin-tcb-fmc", lambda w: _tcb_override(w, w.turin, fmc=2), BindingMismatch),
    ("mock-turin-tcb-snp", lambda w: _tcb_override(w, w.turin, snp=4), BindingMismatch),
    (
        "mock-turin-legacy-layout",
        lambda w: w.mock_case(
            w.turin, reported_tcb=encode_tcb(replace(w.turin.tcb, fmc=None), "Milan")
        ),
        ReservedFieldNotZero,
    ),
    ("mock-turin-chip-id-tail", _turin_chip_tail, BindingMismatch),
    (
        "mock-turin-chip-id",
        lambda w: w.mock_case(w.turin, chip_id=bytes(7) + b"\x01" + bytes(56)),
        BindingMismatch,
    ),
    ("mock-chip-id-mismatch", lambda w: w.mock_case(chip_id=b"\x07" * 64), BindingMismatch),
    (
        "mock-cpuid-says-milan",
        lambda w: w.mock_case(cpuid_mod_id=0x01),
        CertificateProductMismatch,
    ),
    ("mock-cpuid-unknown", lambda w: w.mock_case(cpuid_fam_id=0x17), UnknownProduct),
    (
        "mock-vlek-without-cspid",
        lambda w: _leaf(w, signer="vlek", omit=(c.OID_CSP_ID,)),
        CertificateExtensionInvalid,
    ),
    (
        "mock-vlek-not-allowed",
        lambda w: replace(
            w.mock_case(signer="vlek"), refs=(SnpReference(product="Genoa", measurement=MEAS),)
        ),
        VlekNotAllowed,
    ),
    (
        "mock-vlek-report-vcek-cert",
        lambda w: replace(w.mock_case(signer="vlek"), certs=w.genoa.certs("vcek")),
        BindingMismatch,
    ),
    (
        "mock-vcek-report-vlek-cert",
        lambda w: replace(w.genoa_case, certs=w.genoa.certs("vlek")),
        BindingMismatch,
    ),
    (
        "mock-vcek-spl4-nonzero",
        lambda w: _leaf(w, extra={c.OID_SPL_4: b"\x02\x01\x01"}),
        BindingMismatch,
    ),
    (
        "mock-vcek-missing-snp-spl",
        lambda w: _leaf(w, omit=(c.OID_SNP_SPL,)),
        CertificateExtensionInvalid,
    ),
    ("mock-vcek-product-name-milan", lambda w: _leaf(w, product_name="Milan-B0"), UntrustedRoot),
    ("mock-mask-chip-key-vcek", _mask_chip_key, MalformedEvidence),
    # mock MBZ / version specifics (validly re-signed)
    ("mock-v3-mbz-0x18b", lambda w: _genoa_raw(w, lambda r: _flip(r, 0x18B)), ReservedFieldNotZero),
    ("mock-v3-mit-vector-mbz", lambda w: w.mock_case(launch_mit_vector=1), ReservedFieldNotZero),
    (
        "mock-v5-mbz-0x208",
        lambda w: replace(
            w.genoa_case, report=_resigned(w.genoa, _flip(w.mock_case(version=5).report, 0x208))
        ),
        ReservedFieldNotZero,
    ),
    ("mock-vmpl-out-of-range", lambda w: w.mock_case(vmpl=4), MalformedEvidence),
    (
        "mock-platform-unknown-bit-forbidden",
        lambda w: replace(
            w.mock_case(platform_info=1 << 8),
            refs=(
                SnpReference(
                    product="Genoa",
                    measurement=MEAS,
                    allow_vlek=True,
                    platform_unknown_forbidden=1 << 8,
                ),
            ),
        ),
        PlatformInfoViolation,
    ),
    (
        "mock-report-data-mismatch",
        lambda w: replace(w.genoa_case, report_data=b"\x01" * 64),
        ReportDataMismatch,
    ),
]

_VECTORS: dict[str, Path] = {}


def _vector(name: str) -> bytes:
    return (_VECTORS["snp"] / name).read_bytes()


def _debug_vcek() -> bytes:
    return _vector("milan-v2-debug.vcek.der")


@pytest.fixture(autouse=True, scope="module")
def _register_vectors(snp: Path) -> None:
    _VECTORS["snp"] = snp


def test_matrix_is_large_and_distinct() -> None:
    ids = [name for name, _, _ in CASES]
    assert len(ids) == len(set(ids)) >= 35


@pytest.mark.parametrize(
    ("build", "error"), [(b, e) for _, b, e in CASES], ids=[n for n, _, _ in CASES]
)
def test_negative_matrix(
    world: World, build: Callable[[World], Case], error: type[EvidenceRejected]
) -> None:
    case = build(world)
    with pytest.raises(EvidenceRejected) as info:
        verify_snp(
            case.report,
            case.certs,
            case.anchors,
            case.refs,
            case.report_data,
            case.now,
            crls=case.crls,
        )
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert str(info.value).startswith(error.reason + ": ")


def test_matrix_bases_are_valid(world: World) -> None:
    for case in (world.real, world.genoa_case, world.turin_case, world.mock_case(signer="vlek")):
        res = verify_snp(
            case.report, case.certs, case.anchors, case.refs, case.report_data, case.now
        )
        assert res.reference_index == 0


def test_binding_mismatch_names_the_component(world: World) -> None:
    for component, value in (("bootloader", 10), ("tee", 1), ("snp", 22), ("microcode", 73)):
        case = _tcb_override(world, world.genoa, **{component: value})
        with pytest.raises(BindingMismatch, match=rf"reported_tcb\.{component}"):
            verify_snp(case.report, case.certs, case.anchors, case.refs, None, NOW)
    case = _tcb_override(world, world.turin, fmc=2)
    with pytest.raises(BindingMismatch, match=r"reported_tcb\.fmc"):
        verify_snp(case.report, case.certs, case.anchors, case.refs, None, NOW)
    case = world.mock_case(chip_id=b"\x07" * 64)
    with pytest.raises(BindingMismatch, match="chip_id"):
        verify_snp(case.report, case.certs, case.anchors, case.refs, None, NOW)


def test_masked_chip_id_uses_the_vcek_hwid(world: World) -> None:
    case = world.mock_case(chip_id=bytes(64))
    res = verify_snp(case.report, case.certs, case.anchors, case.refs, None, NOW)
    assert res.chip_id == world.genoa.chip_id
    case = world.mock_case(world.turin, chip_id=bytes(64))
    res = verify_snp(case.report, case.certs, case.anchors, case.refs, None, NOW)
    assert res.chip_id == world.turin.chip_id and res.chip_id[8:] == bytes(56)


def test_expected_report_data_must_be_64_bytes(world: World) -> None:
    with pytest.raises(ValueError):
        verify_snp(
            world.real.report, world.real.certs, world.production, world.real.refs, b"x", NOW
        )


def test_cached_chain_still_checks_everything(world: World) -> None:
    cache: BoundedCache[bytes, c.VerifiedKey] = BoundedCache(4)
    case = world.real
    verify_snp(case.report, case.certs, case.anchors, case.refs, None, NOW, cache=cache)
    verify_snp(case.report, case.certs, case.anchors, case.refs, None, NOW, cache=cache)
    assert cache.hits == 1 and len(cache) == 1
    with pytest.raises(SignatureInvalid):
        verify_snp(
            _flip(case.report, 0x90), case.certs, case.anchors, case.refs, None, NOW, cache=cache
        )
    with pytest.raises(CertificateExpired):
        verify_snp(
            case.report,
            case.certs,
            case.anchors,
            case.refs,
            None,
            datetime(2031, 1, 1, tzinfo=UTC),
            cache=cache,
        )


# --- reference values: every field of SnpReference -------------------------------------------


def _policy(*flags: str, abi: tuple[int, int] = (0, 0)) -> int:
    return encode_policy(abi_major=abi[0], abi_minor=abi[1], flags=set(flags))


def _ref(product: str = "Genoa", **kw: object) -> SnpReference:
    kw.setdefault("measurement", MEAS)
    return SnpReference(product=product, **kw)  # type: ignore[arg-type]


def _gp(**kw: object) -> SnpGuestPolicy:
    return SnpGuestPolicy(**kw)  # type: ignore[arg-type]


POLICY_CASES: list[
    tuple[str, dict[str, object], SnpReference, type[EvidenceRejected] | None, str]
] = [
    ("product", {}, _ref("Milan"), ProductMismatch, "Genoa"),
    ("measurement", {}, _ref(measurement=bytes(48)), MeasurementMismatch, "measurement"),
    ("debug-forbidden", {"policy": _policy("SMT", "Debug")}, _ref(), DebugForbidden, "DEBUG"),
    (
        "debug-allowed",
        {"policy": _policy("Debug")},
        _ref(guest_policy=_gp(allowed=frozenset({"Debug"}))),
        None,
        "",
    ),
    ("smt-forbidden", {}, _ref(guest_policy=_gp(allowed=frozenset())), GuestPolicyViolation, "SMT"),
    ("smt-clear-ok", {"policy": _policy()}, _ref(guest_policy=_gp(allowed=frozenset())), None, ""),
    (
        "migrate-ma-forbidden",
        {"policy": _policy("MigrateMA")},
        _ref(),
        GuestPolicyViolation,
        "MigrateMA",
    ),
    (
        "migrate-ma-allowed",
        {"policy": _policy("MigrateMA")},
        _ref(guest_policy=_gp(allowed=ALL_PERMISSIVE)),
        None,
        "",
    ),
    ("cxl-forbidden", {"policy": _policy("CXLAllow")}, _ref(), GuestPolicyViolation, "CXLAllow"),
    (
        "cxl-allowed",
        {"policy": _policy("CXLAllow")},
        _ref(guest_policy=_gp(allowed=frozenset({"CXLAllow"}))),
        None,
        "",
    ),
    (
        "single-socket-required",
        {},
        _ref(guest_policy=_gp(required=frozenset({"SingleSocket"}))),
        GuestPolicyViolation,
        "SingleSocket",
    ),
    (
        "single-socket-present",
        {"policy": _policy("SMT", "SingleSocket")},
        _ref(guest_policy=_gp(required=frozenset({"SingleSocket"}))),
        None,
        "",
    ),
    (
        "aes256-required",
        {},
        _ref(guest_policy=_gp(required=frozenset({"MemAES256XTS"}))),
        GuestPolicyViolation,
        "MemAES256XTS",
    ),
    (
        "rapl-required",
        {},
        _ref(guest_policy=_gp(required=frozenset({"RAPLDis"}))),
        GuestPolicyViolation,
        "RAPLDis",
    ),
    (
        "ciphertext-hiding-required",
        {},
        _ref(guest_policy=_gp(required=frozenset({"CipherTextHiding"}))),
        GuestPolicyViolation,
        "CipherTextHiding",
    ),
    (
        "page-swap-required",
        {},
        _ref(guest_policy=_gp(required=frozenset({"PageSwapDisable"}))),
        GuestPolicyViolation,
        "PageSwapDisable",
    ),
    (
        "all-restrictive-present",
        {
            "policy": _policy(
                "SingleSocket", "MemAES256XTS", "RAPLDis", "CipherTextHiding", "PageSwapDisable"
            )
        },
        _ref(
            guest_policy=_gp(
                required=frozenset(
                    {
                        "SingleSocket",
                        "MemAES256XTS",
                        "RAPLDis",
                        "CipherTextHiding",
                        "PageSwapDisable",
                    }
                )
            )
        ),
        None,
        "",
    ),
    (
        "abi-major-low",
        {"policy": _policy("SMT", abi=(0, 99))},
        _ref(guest_policy=_gp(abi_major=1)),
        AbiVersionTooLow,
        "ABI 0.99",
    ),
    (
        "abi-minor-low",
        {"policy": _policy("SMT", abi=(1, 50))},
        _ref(guest_policy=_gp(abi_major=1, abi_minor=51)),
        AbiVersionTooLow,
        "1.51",
    ),
    (
        "abi-ok",
        {"policy": _policy("SMT", abi=(1, 51))},
        _ref(guest_policy=_gp(abi_major=1, abi_minor=51)),
        None,
        "",
    ),
    (
        "platform-smt-forbidden",
        {},
        _ref(platform_allowed=frozenset({"TSMEEnabled"})),
        PlatformInfoViolation,
        "SMTEnabled",
    ),
    (
        "platform-tsme-forbidden",
        {"platform_info": 0b10},
        _ref(platform_allowed=frozenset()),
        PlatformInfoViolation,
        "TSMEEnabled",
    ),
    ("platform-alias-check-ok", {"platform_info": 0x21}, _ref(), None, ""),
    ("vmpl-not-allowed", {"vmpl": 2}, _ref(), VmplNotAllowed, "VMPL 2"),
    ("vmpl-allowed", {"vmpl": 2}, _ref(allowed_vmpls=(0, 2)), None, ""),
    (
        "tcb-bootloader-low",
        {},
        _ref(minimum_tcb=SnpTcb(bootloader=10)),
        TcbTooLow,
        "reported_tcb.bootloader",
    ),
    ("tcb-tee-low", {}, _ref(minimum_tcb=SnpTcb(tee=1)), TcbTooLow, "reported_tcb.tee"),
    ("tcb-snp-low", {}, _ref(minimum_tcb=SnpTcb(snp=24)), TcbTooLow, "reported_tcb.snp"),
    (
        "tcb-microcode-low",
        {},
        _ref(minimum_tcb=SnpTcb(microcode=73)),
        TcbTooLow,
        "reported_tcb.microcode",
    ),
    ("tcb-exact-ok", {}, _ref(minimum_tcb=SnpTcb(9, 0, 23, 72)), None, ""),
    (
        "committed-tcb-low",
        {"committed_tcb": SnpTcb(9, 0, 22, 72)},
        _ref(minimum_tcb=SnpTcb(snp=23)),
        TcbTooLow,
        "committed_tcb.snp",
    ),
    (
        "current-tcb-low",
        {"current_tcb": SnpTcb(8, 0, 23, 72)},
        _ref(minimum_tcb=SnpTcb(bootloader=9)),
        TcbTooLow,
        "current_tcb.bootloader",
    ),
    (
        "launch-tcb-low",
        {"launch_tcb": SnpTcb(9, 0, 23, 70)},
        _ref(minimum_launch_tcb=SnpTcb(microcode=71)),
        TcbTooLow,
        "launch_tcb.microcode",
    ),
    (
        "launch-tcb-not-checked-without-minimum",
        {"launch_tcb": SnpTcb(0, 0, 0, 0)},
        _ref(),
        None,
        "",
    ),
    (
        "chip-id-not-allowed",
        {},
        _ref(allowed_chip_ids=(b"\x01" * 64,)),
        ChipIdNotAllowed,
        "chip ID",
    ),
    ("vlek-not-allowed", {"signer": "vlek"}, _ref(), VlekNotAllowed, "VLEK"),
    ("vlek-allowed", {"signer": "vlek"}, _ref(allow_vlek=True), None, ""),
]


@pytest.mark.parametrize(
    ("report_kw", "ref", "error", "needle"),
    [case[1:] for case in POLICY_CASES],
    ids=[case[0] for case in POLICY_CASES],
)
def test_reference_fields(
    world: World,
    report_kw: dict[str, object],
    ref: SnpReference,
    error: type[EvidenceRejected] | None,
    needle: str,
) -> None:
    kw = dict(report_kw)
    signer = str(kw.pop("signer", "vcek"))
    case = world.mock_case(signer=signer, **kw)
    if error is None:
        assert (
            verify_snp(case.report, case.certs, case.anchors, [ref], RD, NOW).reference_index == 0
        )
        return
    with pytest.raises(EvidenceRejected) as info:
        verify_snp(case.report, case.certs, case.anchors, [ref], RD, NOW)
    assert type(info.value) is error
    assert needle in str(info.value)


def test_turin_fmc_minimum(world: World) -> None:
    case = world.turin_case
    ok = _ref("Turin", minimum_tcb=SnpTcb(1, 1, 3, 9, fmc=1))
    assert verify_snp(case.report, case.certs, case.anchors, [ok], None, NOW).tcb.fmc == 1
    with pytest.raises(TcbTooLow, match=r"reported_tcb\.fmc"):
        verify_snp(
            case.report,
            case.certs,
            case.anchors,
            [replace(ok, minimum_tcb=SnpTcb(fmc=2))],
            None,
            NOW,
        )


def test_chip_id_allow_list_admits(world: World) -> None:
    case = world.genoa_case
    ref = _ref(allowed_chip_ids=(b"\x02" * 64, world.genoa.chip_id))
    assert (
        verify_snp(case.report, case.certs, case.anchors, [ref], None, NOW).chip_id
        == world.genoa.chip_id
    )


def test_no_matching_reference_lists_each_reason(world: World) -> None:
    case = world.genoa_case
    refs = [_ref("Milan"), _ref(measurement=bytes(48)), _ref(minimum_tcb=SnpTcb(snp=99))]
    with pytest.raises(NoMatchingReference) as info:
        verify_snp(case.report, case.certs, case.anchors, refs, None, NOW)
    text = str(info.value)
    assert (
        "snp[0] product" in text and "snp[1] measurement" in text and "snp[2] tcb_too_low" in text
    )
    with pytest.raises(NoMatchingReference):
        verify_snp(case.report, case.certs, case.anchors, [], None, NOW)
    assert (
        verify_snp(
            case.report, case.certs, case.anchors, [*refs, _ref()], None, NOW
        ).reference_index
        == 3
    )


# --- mock TEE --------------------------------------------------------------------------------


def _intel_root(directory: Path) -> None:
    """anchors.mock() also loads DIR/intel/root.pem (the TDX side); give it a throwaway root."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Mock SGX Root")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2049, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )
    (directory / "intel").mkdir(exist_ok=True)
    (directory / "intel" / "root.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize("product", ["Milan", "Genoa", "Turin"])
def test_mock_files_and_anchors_mock(
    tmp_path: Path, production: TrustAnchors, product: str
) -> None:
    mock = create_mock_amd(tmp_path, product)
    amd = tmp_path / "amd"
    assert (amd / "product").read_text().strip() == product
    for name in ("ark.pem", "ask.pem", "asvk.pem", "vcek.pem", "vlek.pem"):
        assert (amd / name).is_file()
    for name in ("vcek-key.pem", "vlek-key.pem", "ark-key.pem", "ask-key.pem", "asvk-key.pem"):
        assert stat.S_IMODE(os.stat(amd / name).st_mode) == 0o600
    _intel_root(tmp_path)
    anchors = anchors_mod.mock(tmp_path)
    loaded = load_mock_amd(tmp_path)
    assert (
        loaded.chip_id == mock.chip_id
        and loaded.tcb == mock.tcb
        and loaded.vcek_der == mock.vcek_der
    )
    ref = _ref(product, allow_vlek=True)
    for version in (2, 3, 4, 5):
        if product == "Turin" and version == 2:
            continue  # Turin firmware reports v3+; a v2 report cannot carry the Turin TCB layout
        for signer in ("vcek", "vlek"):
            report = loaded.make_report(
                measurement=MEAS, host_data=HOST, report_data=RD, version=version, signer=signer
            )
            assert len(report) == 0x4A0
            parsed = parse_report(report)
            assert parsed.version == version
            if version >= 3:
                assert parsed.cpuid_product == product
            res = verify_snp(report, loaded.certs(signer, chain=True), anchors, [ref], RD, NOW)
            assert (res.signer, res.product, res.host_data) == (signer, product, HOST)
            assert res.tcb == mock.tcb
            # Mock evidence under the production anchors: never.
            with pytest.raises((CertificateSignatureInvalid, UntrustedRoot)):
                verify_snp(report, loaded.certs(signer), production, [ref], RD, NOW)


def test_mock_make_report_overrides(genoa: MockAmd) -> None:
    raw = genoa.make_report(
        measurement=MEAS,
        host_data=HOST,
        report_data=RD,
        guest_svn=7,
        family_id=b"\x01" * 16,
        image_id=b"\x02" * 16,
        id_key_digest=b"\x03" * 48,
        author_key_digest=b"\x04" * 48,
        author_key_en=True,
        report_id=b"\x05" * 32,
        report_id_ma=bytes(32),
        current_build=9,
        policy=_policy("SMT", "MigrateMA", abi=(1, 55)),
        vmpl=3,
        version=5,
        launch_mit_vector=3,
        current_mit_vector=5,
    )
    r = parse_report(raw)
    assert (r.guest_svn, r.family_id, r.image_id, r.vmpl, r.current_build) == (
        7,
        b"\x01" * 16,
        b"\x02" * 16,
        3,
        9,
    )
    assert (
        r.author_key_en and r.id_key_digest == b"\x03" * 48 and r.author_key_digest == b"\x04" * 48
    )
    assert r.policy.flags == {"SMT", "MigrateMA"} and (r.policy.abi_major, r.policy.abi_minor) == (
        1,
        55,
    )
    assert (r.launch_mit_vector, r.current_mit_vector) == (3, 5)
    with pytest.raises(TypeError):
        genoa.make_report(measurement=MEAS, host_data=HOST, report_data=RD, no_such_field=1)
    with pytest.raises(ValueError):
        genoa.make_report(measurement=MEAS[:47], host_data=HOST, report_data=RD)
    with pytest.raises(ValueError):
        genoa.make_report(measurement=MEAS, host_data=HOST, report_data=RD, signer="ask")


def test_mock_reports_are_fresh_and_byte_exact(genoa: MockAmd) -> None:
    a = genoa.make_report(measurement=MEAS, host_data=HOST, report_data=RD)
    b = genoa.make_report(measurement=MEAS, host_data=HOST, report_data=RD)
    assert a[:0x140] == b[:0x140] and a[0x160:0x2A0] == b[0x160:0x2A0]
    assert a[0x140:0x160] != b[0x140:0x160]  # REPORT_ID differs per report
    assert a[0x90:0xC0] == MEAS and a[0xC0:0xE0] == HOST and a[0x50:0x90] == RD


def test_mock_ark_is_rsa_2048_and_not_pinned(genoa: MockAmd) -> None:
    key = genoa.ark.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    digest = genoa.ark.fingerprint(hashes.SHA256()).hex()
    assert digest not in anchors_mod.PINNED_ROOT_SHA256.values()


def test_real_evidence_under_mock_anchors_from_directory(snp: Path, tmp_path: Path) -> None:
    create_mock_amd(tmp_path, "Milan")
    _intel_root(tmp_path)
    anchors = anchors_mod.mock(tmp_path)
    report = (snp / "milan-v2.report.bin").read_bytes()
    with pytest.raises(CertificateSignatureInvalid):
        verify_snp(
            report,
            [(snp / "milan-v2.vcek.der").read_bytes()],
            anchors,
            [_ref_for(report, "Milan")],
            None,
            NOW,
        )
