"""TDX collateral (attestation/tdx/collateral_*.py, tcb.py): loading, signatures, dates, CRLs, TCB."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest

from attestation.anchors import TrustAnchors, production
from attestation.cache import BoundedCache
from attestation.errors import (
    CertificateExpired,
    CertificateRevoked,
    CollateralExpired,
    CollateralRejected,
    MalformedEvidence,
    SizeLimitExceeded,
    TcbStatusRejected,
    UntrustedRoot,
)
from attestation.mock.tdx import MockIntel, create_mock_intel
from attestation.tdx.collateral_model import (
    CollateralMismatch,
    CollateralSignatureInvalid,
    QeIdentityMismatch,
    TdxCollateral,
    TdxModuleMismatch,
    extract_signed_json,
    load_collateral_json,
)
from attestation.tdx.collateral_parse import parse_crl, parse_qe_identity, parse_tcb_info
from attestation.tdx.collateral_verify import VerifiedCollateral, verify_collateral
from attestation.tdx.pck import (
    PckChain,
    split_pem_certificates,
    verify_pck_chain,
    verify_signer_chain,
)
from attestation.tdx.quote import TdxQuote, parse_quote
from attestation.tdx.tcb import converge, evaluate_tcb
from tests.unit.tdx_helpers import (  # noqa: F401  (fixtures)
    NOW,
    SEPT_VE,
    UPTODATE_NOW,
    anchors_fixture,
    mock_intel_fixture,
)


def _col(vectors: Path, name: str) -> TdxCollateral:
    return load_collateral_json(vectors / "tdx" / f"{name}.collateral.json")


def _quote(vectors: Path, name: str) -> TdxQuote:
    return parse_quote((vectors / "tdx" / f"{name}.quote.bin").read_bytes())


# --- loading and encoding --------------------------------------------------------------------


def test_load_uptodate_collateral(vectors: Path) -> None:
    col = _col(vectors, "uptodate-v4")
    assert col.tcb_info.startswith(b'{"id":"TDX","version":3')
    assert len(col.tcb_info_signature) == 64 and len(col.qe_identity_signature) == 64
    assert col.pck_crl is not None and col.root_ca_crl is not None
    tcb = parse_tcb_info(col.tcb_info)
    assert tcb.fmspc.hex() == "b0c06f000000" and tcb.pce_id == bytes(2)
    assert [i.id for i in tcb.tdx_module_identities] == ["TDX_03", "TDX_01"]
    assert tcb.tcb_levels[0].status == "UpToDate" and tcb.tcb_levels[1].pce_svn == 5
    assert tcb.next_update == datetime(2025, 7, 19, 10, 16, 3, tzinfo=UTC)
    qe = parse_qe_identity(col.qe_identity)
    assert qe.isv_prod_id == 2 and qe.tcb_levels[0].isv_svn == 4


def test_cbor_round_trip(vectors: Path) -> None:
    col = _col(vectors, "outdated-v5")
    encoded = cbor2.dumps(col.to_cbor_map(), canonical=True)
    back = TdxCollateral.from_cbor_map(cbor2.loads(encoded))
    assert back == col
    # Optional CRLs may be absent; unknown keys are ignored.
    m = col.to_cbor_map()
    for key in ("pck_crl", "root_ca_crl", "pck_crl_chain"):
        del m[key]
    m["future"] = b"ignored"
    bare = TdxCollateral.from_cbor_map(m)
    assert bare.pck_crl is None and bare.root_ca_crl is None


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda m: [1, 2], MalformedEvidence),
        (lambda m: {k: v for k, v in m.items() if k != "tcb_info"}, MalformedEvidence),
        (lambda m: {**m, "tcb_info_sig": "hex"}, MalformedEvidence),
        (lambda m: {**m, "pck_crl": 5}, MalformedEvidence),
        (lambda m: {**m, "tcb_info": b"x" * (64 * 1024 + 1)}, SizeLimitExceeded),
        (lambda m: {**m, "tcb_info_sig": b"x" * 65}, SizeLimitExceeded),
    ],
)
def test_cbor_map_rejections(vectors: Path, mutate: Any, error: type[Exception]) -> None:
    m = _col(vectors, "uptodate-v4").to_cbor_map()
    with pytest.raises(error) as exc:
        TdxCollateral.from_cbor_map(mutate(m))
    assert type(exc.value) is error


@pytest.mark.parametrize(
    "text",
    ["[]", "not json", '{"tcb_info": 5}', '{"tcb_info":"x","tcb_info_signature":"zz"}'],
)
def test_dcap_json_rejections(text: str) -> None:
    with pytest.raises(CollateralRejected):
        TdxCollateral.from_dcap_qvl_json(text)


def test_dcap_json_round_trip(vectors: Path) -> None:
    col = _col(vectors, "uptodate-v4")
    assert TdxCollateral.from_dcap_qvl_json(col.to_dcap_qvl_json()) == col


# --- real PCS responses ----------------------------------------------------------------------


def test_sample_pcs_bodies_parse_and_verify(vectors: Path) -> None:
    tcb_body = (vectors / "tdx" / "sample-tcbinfo.json").read_bytes()
    qe_body = (vectors / "tdx" / "sample-qeidentity.json").read_bytes()
    raw, sig = extract_signed_json(tcb_body, "tcbInfo")
    assert raw in tcb_body and raw.startswith(b'{"id":"TDX"') and len(sig) == 64
    tcb = parse_tcb_info(raw)
    assert tcb.fmspc.hex() == "50806f000000" and tcb.tcb_evaluation_data_number == 15
    assert len(tcb.tcb_levels) == 2 and tcb.tdx_module_identities == ()
    qraw, _ = extract_signed_json(qe_body, "enclaveIdentity")
    qe = parse_qe_identity(qraw)
    assert qe.id == "TD_QE" and qe.mr_signer.hex().startswith("dc9e2a7c")
    # Intel signed them with the key of today's TCB Signing certificate (same key, re-issued
    # in 2025): the signature verifies, but at the samples' own time that certificate was not
    # yet valid, so a full verification must refuse.
    chain = _col(vectors, "uptodate-v4").tcb_info_issuer_chain
    col = TdxCollateral.from_pcs_responses(tcb_body, chain, qe_body, chain)
    assert col.tcb_info == raw and col.qe_identity == qraw and col.tcb_info_signature == sig
    with pytest.raises(CertificateExpired, match="tcb_info_issuer_chain"):
        verify_collateral(col, production(), datetime(2023, 6, 20, tzinfo=UTC))
    # Signatures themselves: checked at a time the signer certificate is valid, the dates
    # of the 2023 JSON then make it stale.
    with pytest.raises(CollateralExpired, match="tcb_info: stale"):
        verify_collateral(col, production(), datetime(2025, 6, 1, tzinfo=UTC))
    tampered = replace(col, tcb_info=raw.replace(b'"version":3', b'"version":3 '))
    with pytest.raises(CollateralSignatureInvalid):
        verify_collateral(tampered, production(), datetime(2025, 6, 1, tzinfo=UTC))


def test_sample_tcbinfo_evaluates_real_pcks(vectors: Path, anchors: TrustAnchors) -> None:
    """The 2023 TCB info covers FMSPC 50806f000000 (spr-v4 and debug-v4)."""
    raw, _ = extract_signed_json((vectors / "tdx" / "sample-tcbinfo.json").read_bytes(), "tcbInfo")
    qraw, _ = extract_signed_json(
        (vectors / "tdx" / "sample-qeidentity.json").read_bytes(), "enclaveIdentity"
    )
    chain = split_pem_certificates(_col(vectors, "uptodate-v4").tcb_info_issuer_chain, "chain")
    signer = verify_signer_chain(chain, anchors, NOW, "chain")
    vc = VerifiedCollateral(
        tcb_info=parse_tcb_info(raw),
        qe_identity=parse_qe_identity(qraw),
        tcb_signer=signer,
        qe_signer=signer,
    )
    debug = _quote(vectors, "debug-v4")
    ev = evaluate_tcb(
        vc,
        debug.body,
        debug.qe_report,
        verify_pck_chain(debug.pck_chain_der, anchors, NOW).extensions,
    )
    assert ev.status == "UpToDate" and ev.module_status is None
    spr = _quote(vectors, "spr-v4")  # PCK SGX components 3,3,2,2,2,... are below both levels
    with pytest.raises(TcbStatusRejected, match="no TCB level matches") as exc:
        evaluate_tcb(
            vc,
            spr.body,
            spr.qe_report,
            verify_pck_chain(spr.pck_chain_der, anchors, NOW).extensions,
        )
    assert type(exc.value) is TcbStatusRejected


def test_real_crls_parse_and_verify(vectors: Path, anchors: TrustAnchors) -> None:
    pck_crl = parse_crl((vectors / "tdx" / "pckcrl.der").read_bytes())
    root_crl = parse_crl((vectors / "tdx" / "rootcrl.der").read_bytes())
    platform_ca = verify_pck_chain(_quote(vectors, "spr-v4").pck_chain_der, anchors, NOW).issuer
    assert pck_crl.issuer == platform_ca.subject
    assert pck_crl.is_signature_valid(platform_ca.public_key())  # type: ignore[arg-type]
    assert root_crl.issuer == anchors.intel_root.subject
    assert root_crl.is_signature_valid(anchors.intel_root.public_key())  # type: ignore[arg-type]
    assert len(list(pck_crl)) > 0 and len(list(root_crl)) == 0
    with pytest.raises(CollateralRejected, match="not a DER CRL"):
        parse_crl(b"\x30\x00")


def test_stale_real_crl_refused(vectors: Path, anchors: TrustAnchors) -> None:
    col = replace(
        _col(vectors, "uptodate-v4"), pck_crl=(vectors / "tdx" / "pckcrl.der").read_bytes()
    )
    with pytest.raises(CollateralExpired, match="pck_crl"):
        verify_collateral(col, anchors, UPTODATE_NOW)


# --- verification of real collateral ---------------------------------------------------------


def test_uptodate_collateral_verifies(vectors: Path, anchors: TrustAnchors) -> None:
    vc = verify_collateral(_col(vectors, "uptodate-v4"), anchors, UPTODATE_NOW)
    q = _quote(vectors, "uptodate-v4")
    pck = verify_pck_chain(q.pck_chain_der, anchors, UPTODATE_NOW)
    vc.check_revocation(pck)
    ev = evaluate_tcb(vc, q.body, q.qe_report, pck.extensions)
    assert (ev.status, ev.platform_status, ev.module_status, ev.qe_status) == ("UpToDate",) * 4


@pytest.mark.parametrize(
    "when",
    [
        datetime(2025, 7, 19, 10, 17, tzinfo=UTC),  # after tcbInfo nextUpdate
        datetime(2025, 8, 1, tzinfo=UTC),
        datetime(2025, 6, 19, 10, 0, tzinfo=UTC),  # before issueDate
    ],
)
def test_uptodate_collateral_outside_its_window(
    vectors: Path, anchors: TrustAnchors, when: datetime
) -> None:
    with pytest.raises(CollateralExpired):
        verify_collateral(_col(vectors, "uptodate-v4"), anchors, when)


@pytest.mark.parametrize(
    "field", ["tcb_info", "qe_identity", "tcb_info_signature", "qe_identity_signature"]
)
def test_tampered_real_collateral(vectors: Path, anchors: TrustAnchors, field: str) -> None:
    col = _col(vectors, "uptodate-v4")
    value = bytearray(getattr(col, field))
    value[len(value) // 2] ^= 0x01
    with pytest.raises(CollateralSignatureInvalid):
        verify_collateral(replace(col, **{field: bytes(value)}), anchors, UPTODATE_NOW)


def test_real_collateral_under_mock_anchors(vectors: Path, mock: MockIntel) -> None:
    with pytest.raises(UntrustedRoot):
        verify_collateral(_col(vectors, "uptodate-v4"), mock.trust_anchors(), UPTODATE_NOW)


def test_mock_signer_under_production_anchors(
    vectors: Path, anchors: TrustAnchors, mock: MockIntel
) -> None:
    real = _col(vectors, "uptodate-v4")
    fake = mock.make_collateral(UPTODATE_NOW, tcb_info=real.tcb_info, qe_identity=real.qe_identity)
    with pytest.raises(UntrustedRoot):
        verify_collateral(
            replace(
                real,
                tcb_info_signature=fake.tcb_info_signature,
                tcb_info_issuer_chain=fake.tcb_info_issuer_chain,
            ),
            anchors,
            UPTODATE_NOW,
        )


def test_collateral_cache(vectors: Path, anchors: TrustAnchors) -> None:
    cache: BoundedCache[bytes, object] = BoundedCache(16)
    col = _col(vectors, "uptodate-v4")
    first = verify_collateral(col, anchors, UPTODATE_NOW, cache)
    hits = cache.hits
    assert verify_collateral(col, anchors, UPTODATE_NOW + timedelta(days=1), cache) is first
    assert cache.hits == hits + 1
    with pytest.raises(CollateralExpired):  # dates re-checked on a hit
        verify_collateral(col, anchors, datetime(2025, 7, 20, tzinfo=UTC), cache)


# --- TCB evaluation on mock collateral -------------------------------------------------------


def _evaluate(mock: MockIntel, col: TdxCollateral, **quote_kwargs: Any) -> Any:
    anchors = mock.trust_anchors()
    raw = mock.make_quote(
        mr_td=b"\x01" * 48, report_data=bytes(64), td_attributes=SEPT_VE, **quote_kwargs
    )
    q = parse_quote(raw)
    pck: PckChain = verify_pck_chain(q.pck_chain_der, anchors, NOW)
    vc = verify_collateral(col, anchors, NOW)
    vc.check_revocation(pck)
    return evaluate_tcb(vc, q.body, q.qe_report, pck.extensions)


def _tcb(mock: MockIntel) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(mock.tcb_info_dict(NOW)))
    return doc


def _qe(mock: MockIntel) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(mock.qe_identity_dict(NOW)))
    return doc


def test_mock_collateral_up_to_date(mock: MockIntel) -> None:
    ev = _evaluate(mock, mock.make_collateral(NOW))
    assert (ev.status, ev.module_status, ev.qe_status) == ("UpToDate", "UpToDate", "UpToDate")


def test_module_svn_below_level_converges_out_of_date(mock: MockIntel) -> None:
    # TEE_TCB_SVN[0] is the TDX module minor SVN; with a module version (byte 1) > 0 it is judged
    # by the module identity, not by the platform level (components 0 and 1 are skipped there).
    ev = _evaluate(
        mock,
        mock.make_collateral(NOW),
        tee_tcb_svn=bytes.fromhex("04010300000000000000000000000000"),
    )
    assert ev.platform_status == "UpToDate" and ev.module_status == "OutOfDate"
    assert ev.status == "OutOfDate" and "INTEL-SA-MOCK-1" in ev.advisory_ids


def test_module_version_zero_compares_all_components(mock: MockIntel) -> None:
    tcb = _tcb(mock)
    ev = _evaluate(
        mock,
        mock.make_collateral(NOW, tcb_info=tcb),
        tee_tcb_svn=bytes.fromhex("05000300000000000000000000000000"),
    )
    assert ev.module_status is None
    # Component 1 of level 0 is 1: a module-version-0 quote with byte 1 = 0 matches level 1.
    assert ev.platform_status == "OutOfDate"


def test_missing_module_identity(mock: MockIntel) -> None:
    with pytest.raises(TcbStatusRejected, match="TDX_02") as exc:
        _evaluate(
            mock,
            mock.make_collateral(NOW),
            tee_tcb_svn=bytes.fromhex("05020300000000000000000000000000"),
        )
    assert type(exc.value) is TcbStatusRejected


def test_module_identity_mismatch(mock: MockIntel) -> None:
    with pytest.raises(TdxModuleMismatch, match="mr_signer_seam"):
        _evaluate(mock, mock.make_collateral(NOW), mr_signer_seam=b"\x01" * 48)
    with pytest.raises(TdxModuleMismatch, match="seam_attributes"):
        _evaluate(mock, mock.make_collateral(NOW), seam_attributes=b"\x01" + bytes(7))
    tcb = _tcb(mock)
    tcb["tdxModuleIdentities"][0]["attributesMask"] = "FEFFFFFFFFFFFFFF"
    ev = _evaluate(
        mock, mock.make_collateral(NOW, tcb_info=tcb), seam_attributes=b"\x01" + bytes(7)
    )
    assert ev.status == "UpToDate"  # the masked-out bit is ignored


def test_module_svn_below_every_level(mock: MockIntel) -> None:
    tcb = _tcb(mock)
    tcb["tdxModuleIdentities"][0]["tcbLevels"] = tcb["tdxModuleIdentities"][0]["tcbLevels"][:1]
    with pytest.raises(TcbStatusRejected, match="below every level"):
        _evaluate(
            mock,
            mock.make_collateral(NOW, tcb_info=tcb),
            tee_tcb_svn=bytes.fromhex("04010300000000000000000000000000"),
        )


def test_no_tcb_level_matches(mock: MockIntel) -> None:
    tcb = _tcb(mock)
    tcb["tcbLevels"] = tcb["tcbLevels"][:1]
    with pytest.raises(TcbStatusRejected, match="no TCB level matches"):
        _evaluate(
            mock,
            mock.make_collateral(NOW, tcb_info=tcb),
            tee_tcb_svn=bytes.fromhex("05010200000000000000000000000000"),
        )
    tcb["tcbLevels"][0]["tcb"]["pcesvn"] = 99
    with pytest.raises(TcbStatusRejected, match="no TCB level matches"):
        _evaluate(mock, mock.make_collateral(NOW, tcb_info=tcb))
    tcb = _tcb(mock)
    tcb["tcbLevels"] = tcb["tcbLevels"][:1]
    tcb["tcbLevels"][0]["tcb"]["sgxtcbcomponents"][15]["svn"] = 1
    with pytest.raises(TcbStatusRejected, match="no TCB level matches"):
        _evaluate(mock, mock.make_collateral(NOW, tcb_info=tcb))


@pytest.mark.parametrize(
    "status", ["SWHardeningNeeded", "ConfigurationNeeded", "Revoked", "OutOfDate"]
)
def test_platform_status_passes_through(mock: MockIntel, status: str) -> None:
    tcb = _tcb(mock)
    tcb["tcbLevels"][0]["tcbStatus"] = status
    assert _evaluate(mock, mock.make_collateral(NOW, tcb_info=tcb)).status == status


def test_unknown_platform_status_refused(mock: MockIntel) -> None:
    tcb = _tcb(mock)
    tcb["tcbLevels"][0]["tcbStatus"] = "Fine"
    with pytest.raises(TcbStatusRejected, match="unrecognised"):
        _evaluate(mock, mock.make_collateral(NOW, tcb_info=tcb))


def test_qe_status_convergence(mock: MockIntel) -> None:
    ev = _evaluate(mock, mock.make_collateral(NOW), qe_svn=mock.qe.isv_svn - 1)
    assert (ev.platform_status, ev.qe_status, ev.status) == ("UpToDate", "OutOfDate", "OutOfDate")
    tcb = _tcb(mock)
    tcb["tcbLevels"][0]["tcbStatus"] = "ConfigurationNeeded"
    ev = _evaluate(mock, mock.make_collateral(NOW, tcb_info=tcb), qe_svn=mock.qe.isv_svn - 1)
    assert ev.status == "OutOfDateConfigurationNeeded"
    qe = _qe(mock)
    qe["tcbLevels"][0]["tcbStatus"] = "Revoked"
    assert _evaluate(mock, mock.make_collateral(NOW, qe_identity=qe)).status == "Revoked"


def test_converge_table() -> None:
    assert converge("UpToDate", ["UpToDate", "UpToDate"]) == "UpToDate"
    assert converge("SWHardeningNeeded", ["OutOfDate"]) == "OutOfDate"
    assert (
        converge("ConfigurationAndSWHardeningNeeded", ["OutOfDate"])
        == "OutOfDateConfigurationNeeded"
    )
    assert converge("OutOfDate", ["UpToDate"]) == "OutOfDate"
    assert converge("UpToDate", ["OutOfDate", "Revoked"]) == "Revoked"
    assert converge("SWHardeningNeeded", ["ConfigurationNeeded"]) == "SWHardeningNeeded"


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("mrsigner", "00" * 32, "mr_signer"),
        ("isvprodid", 7, "isv_prod_id"),
        ("miscselect", "01000000", "miscselect"),
        ("attributes", "0500000000000000" + "00" * 8, "attributes"),
    ],
)
def test_qe_identity_mismatch(mock: MockIntel, field: str, value: Any, match: str) -> None:
    qe = _qe(mock)
    qe[field] = value
    with pytest.raises(QeIdentityMismatch, match=match):
        _evaluate(mock, mock.make_collateral(NOW, qe_identity=qe))


def test_qe_svn_below_every_level(mock: MockIntel) -> None:
    qe = _qe(mock)
    qe["tcbLevels"] = qe["tcbLevels"][:1]
    with pytest.raises(TcbStatusRejected, match="QE ISVSVN") as exc:
        _evaluate(mock, mock.make_collateral(NOW, qe_identity=qe), qe_svn=1)
    assert type(exc.value) is TcbStatusRejected


@pytest.mark.parametrize(("field", "value"), [("fmspc", "00606A000000"), ("pceId", "0100")])
def test_collateral_for_another_platform(mock: MockIntel, field: str, value: str) -> None:
    tcb = _tcb(mock)
    tcb[field] = value
    with pytest.raises(CollateralMismatch, match=field if field == "fmspc" else "pceId"):
        _evaluate(mock, mock.make_collateral(NOW, tcb_info=tcb))


def test_revocation(mock: MockIntel, tmp_path: Path) -> None:
    with pytest.raises(CertificateRevoked, match="PCK certificate"):
        _evaluate(mock, mock.make_collateral(NOW, revoked_pck=True))
    # The root CRL revoking the PCK CA.
    col = replace(
        mock.make_collateral(NOW), root_ca_crl=_root_crl_revoking(mock, mock.pck_ca.serial_number)
    )
    with pytest.raises(CertificateRevoked, match="PCK CA"):
        _evaluate(mock, col)
    # A PCK CRL from a different CA with the same name: signature refused.
    other = create_mock_intel(tmp_path, now=NOW)
    col = replace(mock.make_collateral(NOW), pck_crl=other.make_crl("pck-ca", NOW))
    with pytest.raises(CollateralSignatureInvalid, match="pck_crl"):
        _evaluate(mock, col)
    # A root CRL signed by another root.
    col = replace(mock.make_collateral(NOW), root_ca_crl=other.make_crl("root", NOW))
    with pytest.raises(CollateralSignatureInvalid, match="root_ca_crl"):
        _evaluate(mock, col)
    # A PCK CRL issued by the root (wrong issuer for a PCK).
    col = replace(mock.make_collateral(NOW), pck_crl=mock.make_crl("root", NOW))
    with pytest.raises(CollateralMismatch, match="pck_crl"):
        _evaluate(mock, col)


def _root_crl_revoking(mock: MockIntel, serial: int) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(mock.root.subject)
        .last_update(NOW - timedelta(days=1))
        .next_update(NOW + timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - timedelta(days=1))
            .build()
        )
    )
    return builder.sign(mock.root_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_mock_collateral_stale(mock: MockIntel) -> None:
    col = mock.make_collateral(NOW - timedelta(days=40))
    with pytest.raises(CollateralExpired):
        verify_collateral(col, mock.trust_anchors(), NOW)


def test_signer_chain_rules(mock: MockIntel, anchors: TrustAnchors) -> None:
    col = mock.make_collateral(NOW)
    # The PCK CA (a CA certificate) may not sign collateral, even though the root signed it.
    from cryptography.hazmat.primitives import serialization

    pem = mock.pck_ca.public_bytes(serialization.Encoding.PEM)
    bad = replace(col, tcb_info_issuer_chain=pem)
    from attestation.errors import ChainRejected

    with pytest.raises(ChainRejected, match="CA certificate"):
        verify_collateral(bad, mock.trust_anchors(), NOW)
    with pytest.raises(MalformedEvidence):
        verify_collateral(
            replace(col, qe_identity_issuer_chain=b"garbage"), mock.trust_anchors(), NOW
        )
    assert split_pem_certificates(col.tcb_info_issuer_chain, "x")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda t: t.update(id="SGX"), "tcb_info.id"),
        (lambda t: t.update(version=2), "tcb_info.version"),
        (lambda t: t["tcbLevels"][0]["tcb"]["sgxtcbcomponents"].pop(), "16 components"),
        (lambda t: t["tcbLevels"][0]["tcb"].update(pcesvn=-1), "pcesvn"),
        (lambda t: t.update(fmspc="zz"), "fmspc"),
        (lambda t: t.update(fmspc="00"), "fmspc"),
        (lambda t: t.pop("tdxModule"), "tdxModule"),
        (lambda t: t.update(issueDate="2025-01-01T00:00:00"), "time zone"),
        (lambda t: t.update(nextUpdate="tomorrow"), "nextUpdate"),
        (lambda t: t.update(tcbLevels=[]), "tcbLevels"),
        (lambda t: t["tcbLevels"][0].update(advisoryIDs=[1]), "advisoryIDs"),
    ],
)
def test_tcb_info_strictness(mock: MockIntel, mutate: Any, match: str) -> None:
    tcb = _tcb(mock)
    mutate(tcb)
    with pytest.raises(CollateralRejected, match=match):
        parse_tcb_info(json.dumps(tcb).encode())


def test_duplicate_json_keys_refused() -> None:
    with pytest.raises(CollateralRejected, match="duplicate"):
        parse_tcb_info(b'{"id":"TDX","id":"TDX"}')
    with pytest.raises(CollateralRejected):
        parse_qe_identity(b"[]")
    with pytest.raises(CollateralRejected):
        parse_qe_identity(b"\xff")


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"tcbInfo":{}}',
        b'{"signature":"00"}',
        b'{"tcbInfo":{},"signature":"zz"}',
        b'{"tcbInfo":{},"signature":"00"} x',
        b'{"tcbInfo":{},"tcbInfo":{},"signature":"00"}',
    ],
)
def test_extract_signed_json_rejections(body: bytes) -> None:
    with pytest.raises(CollateralRejected):
        extract_signed_json(body, "tcbInfo")


def test_extract_signed_json_keeps_exact_bytes() -> None:
    body = b' { "signature" : "0a0b", "tcbInfo" :  {"b": 1,  "a":[ 2 ]} } '
    raw, sig = extract_signed_json(body, "tcbInfo")
    assert raw == b'{"b": 1,  "a":[ 2 ]}' and sig == b"\x0a\x0b"
