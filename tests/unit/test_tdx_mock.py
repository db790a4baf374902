"""Mock Intel hierarchy and quotes (attestation/tdx/mock.py)."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from attestation import anchors as anchors_mod
from attestation.errors import UntrustedRoot
from attestation.mock.tdx import (
    DEFAULT_TEE_TCB_SVN,
    DEFAULT_XFAM,
    create_mock_intel,
    load_mock_intel,
)
from attestation.reference import TdxReference
from attestation.tdx.quote import parse_quote
from attestation.tdx.verify import verify_tdx

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _write_fake_amd(base: Path) -> None:
    """The AMD half of a mock directory (normally written by the SNP mock) so anchors.mock loads."""
    amd = base / "amd"
    amd.mkdir(parents=True)
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)

    def cert(cn: str, key: rsa.RSAPrivateKey, issuer: str) -> bytes:
        c = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=3650))
            .sign(ark_key, hashes.SHA384(), rsa_padding=pss)
        )
        return c.public_bytes(serialization.Encoding.PEM)

    (amd / "ark.pem").write_bytes(cert("ARK-Milan", ark_key, "ARK-Milan"))
    (amd / "ask.pem").write_bytes(
        cert(
            "SEV-Milan", rsa.generate_private_key(public_exponent=65537, key_size=2048), "ARK-Milan"
        )
    )
    (amd / "asvk.pem").write_bytes(
        cert(
            "SEV-VLEK-Milan",
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ARK-Milan",
        )
    )
    (amd / "product").write_text("Milan\n")


def test_files_permissions_and_reload(tmp_path: Path) -> None:
    m = create_mock_intel(tmp_path, now=NOW)
    intel = tmp_path / "intel"
    for name in ("root.pem", "pck-ca.pem", "pck.pem", "tcb-signing.pem", "qe.json"):
        assert (intel / name).is_file(), name
    for name in (
        "root-key.pem",
        "pck-ca-key.pem",
        "pck-key.pem",
        "tcb-signing-key.pem",
        "attestation-key.pem",
    ):
        assert stat.S_IMODE((intel / name).stat().st_mode) == 0o600, name
    again = load_mock_intel(tmp_path)
    assert again.root == m.root and again.pck == m.pck and again.qe == m.qe
    assert (
        again.attestation_key.public_key().public_numbers()
        == m.attestation_key.public_key().public_numbers()
    )
    # A reloaded hierarchy produces quotes the first one's anchors accept.
    quote = again.make_quote(mr_td=b"\x01" * 48, report_data=b"\x02" * 64)
    assert verify_tdx(
        quote,
        m.trust_anchors(),
        [TdxReference(mr_td=b"\x01" * 48)],
        b"\x02" * 64,
        NOW,
        collateral=m.make_collateral(NOW),
    )


def test_anchors_mock_loads_the_intel_root(tmp_path: Path) -> None:
    m = create_mock_intel(tmp_path, now=NOW)
    _write_fake_amd(tmp_path)
    loaded = anchors_mod.mock(tmp_path)
    assert loaded.is_mock and loaded.intel_root == m.root
    quote = m.make_quote(mr_td=b"\x01" * 48, report_data=bytes(64))
    assert verify_tdx(
        quote, loaded, [TdxReference(mr_td=b"\x01" * 48)], None, NOW, require_collateral=False
    )
    with pytest.raises(UntrustedRoot):
        verify_tdx(
            quote,
            anchors_mod.production(),
            [TdxReference(mr_td=b"\x01" * 48)],
            None,
            NOW,
            require_collateral=False,
        )


def test_names(tmp_path: Path) -> None:
    m = create_mock_intel(tmp_path / "a", now=NOW)
    assert "Concord Mock" in m.root.subject.rfc4514_string()
    assert "Concord Mock" in m.pck.subject.rfc4514_string()
    fake = create_mock_intel(tmp_path / "b", now=NOW, names="intel")
    assert fake.root.subject == anchors_mod.production().intel_root.subject
    with pytest.raises(ValueError):
        create_mock_intel(tmp_path / "c", names="other")


def test_quote_is_byte_exact(tmp_path: Path) -> None:
    m = create_mock_intel(tmp_path, now=NOW)
    rtmrs = (b"\x0a" * 48, b"\x0b" * 48, b"\x0c" * 48, b"\x0d" * 48)
    raw = m.make_quote(
        mr_td=b"\x01" * 48,
        mr_config_id=b"\x02" * 48,
        report_data=b"\x03" * 64,
        td_attributes=b"\x00\x00\x00\x10\x00\x00\x00\x00",
        rtmrs=rtmrs,
        version=5,
        mr_owner=b"\x04" * 48,
        tee_tcb_svn_2=b"\x05" * 16,
        user_data=b"\x06" * 20,
        trailing=b"tail",
    )
    q = parse_quote(raw)
    assert q.version == 5 and q.body_type == 3 and q.trailing_bytes == 4
    b = q.body
    assert (b.mr_td, b.mr_config_id, b.report_data, b.mr_owner) == (
        b"\x01" * 48,
        b"\x02" * 48,
        b"\x03" * 64,
        b"\x04" * 48,
    )
    assert b.rtmrs == rtmrs and b.xfam == DEFAULT_XFAM and b.tee_tcb_svn == DEFAULT_TEE_TCB_SVN
    assert b.tee_tcb_svn_2 == b"\x05" * 16 and b.mr_service_td == bytes(48)
    assert q.header.user_data == b"\x06" * 20
    assert q.qe_report.mr_signer == m.qe.mr_signer and q.qe_report.isv_svn == m.qe.isv_svn
    assert q.pck_chain_der[0] == m.pck.public_bytes(serialization.Encoding.DER)
    assert raw.endswith(b"\x00tail")  # PEM ends with NUL like real quotes


def test_make_quote_argument_errors(tmp_path: Path) -> None:
    m = create_mock_intel(tmp_path, now=NOW)
    with pytest.raises(TypeError):
        m.make_quote(mr_td=bytes(48), report_data=bytes(64), mrtd=bytes(48))
    with pytest.raises(ValueError):
        m.make_quote(mr_td=bytes(47), report_data=bytes(64))
    with pytest.raises(ValueError):
        m.make_quote(mr_td=bytes(48), report_data=bytes(63))
    with pytest.raises(ValueError):
        m.make_quote(mr_td=bytes(48), report_data=bytes(64), version=3)
    with pytest.raises(ValueError):
        m.make_quote(mr_td=bytes(48), report_data=bytes(64), version=4, body_type=3)
    with pytest.raises(ValueError):
        short: Any = (bytes(48),)
        m.make_quote(mr_td=bytes(48), report_data=bytes(64), rtmrs=short)


def test_two_mocks_do_not_trust_each_other(tmp_path: Path) -> None:
    a = create_mock_intel(tmp_path / "a", now=NOW)
    b = create_mock_intel(tmp_path / "b", now=NOW)
    quote = a.make_quote(mr_td=bytes(48), report_data=bytes(64))
    with pytest.raises(UntrustedRoot):
        verify_tdx(
            quote,
            b.trust_anchors(),
            [TdxReference(mr_td=bytes(48))],
            None,
            NOW,
            require_collateral=False,
        )
