"""The collateral directory and the small pure parts of fetching (no network here).

Covers: entries round-trip byte for byte, malformed or mislabelled files are typed errors (the
service refetches), keys never escape the directory, Retry-After in both forms, the default
back-off, and the configfs-tsm provider filling in what the host did not give from the directory.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from attestation.collateral.cache import CacheEntry, CollateralDir
from attestation.collateral.errors import CacheEntryInvalid, ChipIdMasked, VlekNotFetchable
from attestation.collateral.fetch import ExponentialRetry, parse_retry_after
from attestation.collateral.kds import vcek_path
from attestation.collateral.keys import VcekKey, safe_name, tdx_key, vcek_keys
from attestation.mock.snp import MockAmd, create_mock_amd
from attestation.mock.tdx import MockIntel, create_mock_intel
from attestation.providers.tsm import TsmProvider
from attestation.reference import SnpTcb
from attestation.snp.tcb import encode_tcb

NOW = datetime(2025, 7, 1, tzinfo=UTC)


def _entry(kind: str = "tcbinfo", name: str = "b0c06f000000") -> CacheEntry:
    return CacheEntry(
        kind=kind,
        name=name,
        body=b'{"tcbInfo":{"a": 1},"signature":"00"}',
        fetched_at=NOW,
        next_update=NOW + timedelta(days=30),
        issuer_chain=b"-----BEGIN CERTIFICATE-----\n...",
        source="https://pcs.example/tdx/certification/v4/tcb?fmspc=b0c06f000000",
    )


def test_entry_round_trip_and_atomic_files(tmp_path: Path) -> None:
    store = CollateralDir(tmp_path)
    path = store.write(_entry())
    assert path == tmp_path / "tcbinfo" / "b0c06f000000.json"
    assert store.read("tcbinfo", "b0c06f000000") == _entry()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    assert store.read("tcbinfo", "000000000000") is None


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"{}",
        b'{"format": "concord-collateral/1", "kind": "tcbinfo"}',
        _entry().to_json().replace(b'"body": "', b'"body": "!!'),
        _entry().to_json().replace(b"+00:00", b""),  # naive time
    ],
)
def test_malformed_entries_are_typed(tmp_path: Path, content: bytes) -> None:
    store = CollateralDir(tmp_path)
    path = store.path("tcbinfo", "b0c06f000000")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(CacheEntryInvalid):
        store.read("tcbinfo", "b0c06f000000")


def test_entry_under_the_wrong_name_refused(tmp_path: Path) -> None:
    store = CollateralDir(tmp_path)
    store.write(_entry(name="b0c06f000000"))
    other = store.path("tcbinfo", "00906ed50000")
    store.path("tcbinfo", "b0c06f000000").rename(other)
    with pytest.raises(CacheEntryInvalid, match="holds"):
        store.read("tcbinfo", "00906ed50000")


@pytest.mark.parametrize("name", ["../x", "a/b", "", "A", ".hidden", "x" * 200])
def test_unsafe_names_refused(name: str) -> None:
    with pytest.raises(ValueError):
        safe_name(name)
    with pytest.raises(ValueError):
        CollateralDir("/tmp/unused").path("vcek", name)


def test_retry_after_forms() -> None:
    assert parse_retry_after("12", 0.0) == 12.0
    assert parse_retry_after(None, 0.0) is None
    assert parse_retry_after("soon", 0.0) is None
    epoch = NOW.timestamp()
    date = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(date, epoch) == pytest.approx(90.0)
    assert parse_retry_after(format_datetime(NOW, usegmt=True), epoch + 5) == 0.0


def test_default_backoff_is_bounded() -> None:
    retry = ExponentialRetry(base=1.0, cap=8.0, max_attempts=3)
    assert [retry.delay(a) for a in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    with pytest.raises(ValueError):
        ExponentialRetry(base=0.0)


def test_kds_paths() -> None:
    milan = VcekKey("Milan", b"\xab" * 64, encode_tcb(SnpTcb(3, 0, 8, 115), "Milan"))
    assert vcek_path(milan) == (
        f"/vcek/v1/Milan/{'ab' * 64}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115"
    )
    turin = VcekKey("Turin", b"\x01" * 8, encode_tcb(SnpTcb(1, 1, 4, 82, fmc=1), "Turin"))
    assert vcek_path(turin) == (
        f"/vcek/v1/Turin/{'01' * 8}?fmcSPL=01&blSPL=01&teeSPL=01&snpSPL=04&ucodeSPL=82"
    )


@pytest.fixture(scope="module")
def turin(tmp_path_factory: pytest.TempPathFactory) -> MockAmd:
    return create_mock_amd(tmp_path_factory.mktemp("turin"), "Turin")


def test_keys_from_evidence(turin: MockAmd, tmp_path: Path) -> None:
    report = turin.make_report(measurement=bytes(48), host_data=bytes(32), report_data=bytes(64))
    (key,) = vcek_keys(report)
    assert key.product == "Turin" and len(key.hwid) == 8  # Turin: an 8-byte hwid
    vlek = turin.make_report(
        measurement=bytes(48), host_data=bytes(32), report_data=bytes(64), signer="vlek"
    )
    with pytest.raises(VlekNotFetchable, match="KDS does not publish VLEKs"):
        vcek_keys(vlek)
    masked = turin.make_report(
        measurement=bytes(48), host_data=bytes(32), report_data=bytes(64), chip_id=bytes(64)
    )
    with pytest.raises(ChipIdMasked):
        vcek_keys(masked)
    intel: MockIntel = create_mock_intel(tmp_path / "intel", now=NOW)
    quote = intel.make_quote(mr_td=bytes(48), report_data=bytes(64))
    assert tdx_key(quote).fmspc == intel.extensions.fmspc


class _Source:
    def __init__(self, certs: tuple[bytes, ...]) -> None:
        self.certs = certs
        self.asked: list[bytes] = []

    def snp_certs(self, report: bytes) -> tuple[bytes, ...]:
        self.asked.append(report)
        return self.certs

    def tdx_collateral(self, quote: bytes) -> None:
        return None


def test_tsm_provider_fills_missing_certs_from_the_directory(turin: MockAmd) -> None:
    from tests.unit.test_provider_tsm import ROOT, FakeKernel

    kernel = FakeKernel("sev_guest", amd=turin, auxblob=b"")
    source = _Source((turin.vcek_der,))
    ev = TsmProvider(root=ROOT, fs=kernel, collateral=source).evidence(bytes(64))
    assert ev.certs == (turin.vcek_der,) and source.asked == [ev.report]


def test_collateral_urls() -> None:
    from attestation.collateral.upstreams import AMD_KDS, INTEL_PCS
    from attestation.collateral.warmer import parse_collateral_urls

    assert parse_collateral_urls(["default"]) == (AMD_KDS, INTEL_PCS)
    assert parse_collateral_urls(["https://proxy:8443"]) == ("https://proxy:8443",) * 2
    assert parse_collateral_urls(["pcs=https://pccs:8081"]) == (AMD_KDS, "https://pccs:8081")
    for bad in (["ftp://x"], ["kds=nope"], ["amd=https://x"]):
        with pytest.raises(ValueError):
            parse_collateral_urls(bad)


def test_serve_wiring(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from attestation import anchors
    from attestation.collateral.warmer import Warmer, WarmingDir
    from coordinator.service.server import ServerConfig, collateral_for

    production = anchors.production()
    registry = CollectorRegistry()
    assert collateral_for(ServerConfig(), production, registry) == (None, None)
    source, warmer = collateral_for(ServerConfig(collateral_dir=tmp_path), production, registry)
    assert isinstance(source, CollateralDir) and warmer is None
    config = ServerConfig(collateral_dir=tmp_path, collateral_urls=("pcs=https://pccs:8081",))
    source, warmer = collateral_for(config, production, registry)
    assert isinstance(source, WarmingDir) and isinstance(warmer, Warmer)
    assert source.root == tmp_path
