"""The configfs-tsm provider against a fake kernel that behaves like the real one.

The fake implements the provider's TsmFs operations the way Linux configfs-tsm does: report
entries are directories created by mkdir; ``provider`` names the guest driver; each write to
``inblob`` or ``privlevel`` bumps ``generation``; reading ``outblob`` makes the (mock) firmware
produce a report or quote over exactly the written ``inblob``; on SNP ``auxblob`` is the GHCB
certificate table. The evidence it yields is then verified with the real verifier under the mock
anchors, so a provider that mixed up inputs or certificates would fail here.
"""

from __future__ import annotations

import errno
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation import anchors
from attestation.mock.snp import MockAmd, create_mock_amd
from attestation.mock.tdx import MockIntel, create_mock_intel
from attestation.providers.base import ProviderError
from attestation.providers.tsm import DEFAULT_ROOT, OsFs, TsmProvider, parse_snp_cert_table
from attestation.reference import SnpReference, TdxReference
from attestation.snp.report import parse_report
from attestation.snp.verify import verify_snp
from attestation.tdx.verify import verify_tdx

ROOT = Path("/fake/sys/kernel/config/tsm/report")
MEASUREMENT = bytes(range(48))
MR_TD = bytes(range(48, 96))
HOST_DATA = b"\x42" * 32

GUID = {
    "vcek": uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes_le,
    "vlek": uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1").bytes_le,
    "ask": uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes_le,
    "ark": uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae").bytes_le,
}


def cert_table(entries: list[tuple[bytes, bytes]]) -> bytes:
    """GHCB certificate table: 24-byte entries (GUID, offset, length), zero entry, then data."""
    header = 24 * (len(entries) + 1)
    table, data = b"", b""
    for guid, blob in entries:
        table += guid + (header + len(data)).to_bytes(4, "little") + len(blob).to_bytes(4, "little")
        data += blob
    return table + bytes(24) + data


@dataclass
class _Entry:
    generation: int = 0
    inblob: bytes | None = None
    privlevel: int = 0


class FakeKernel:
    """configfs-tsm semantics over an in-memory tree (implements attestation.providers.tsm.TsmFs)."""

    def __init__(
        self,
        provider: str,
        *,
        amd: MockAmd | None = None,
        intel: MockIntel | None = None,
        auxblob: bytes | None = None,
        signer: str = "vcek",
        present: bool = True,
    ) -> None:
        self.provider = provider
        self.amd = amd
        self.intel = intel
        self.auxblob = auxblob
        self.signer = signer
        self.present = present
        self.entries: dict[str, _Entry] = {}
        self.created: list[str] = []
        self.racer = False  # another process writes inblob while we read outblob

    def _entry(self, path: Path) -> _Entry:
        if path.parent != ROOT or path.name not in self.entries:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        return self.entries[path.name]

    def mkdir(self, path: Path) -> None:
        if not self.present or path.parent != ROOT:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        if path.name in self.entries:
            raise FileExistsError(errno.EEXIST, "File exists", str(path))
        self.entries[path.name] = _Entry()
        self.created.append(path.name)

    def rmdir(self, path: Path) -> None:
        self._entry(path)
        del self.entries[path.name]

    def write(self, path: Path, data: bytes) -> None:
        entry = self._entry(path.parent)
        if path.name == "inblob":
            if len(data) > 64:
                raise OSError(errno.EINVAL, "Invalid argument", str(path))
            entry.inblob = data
        elif path.name == "privlevel":
            level = int(data.decode())
            if not 0 <= level <= 3:
                raise OSError(errno.EINVAL, "Invalid argument", str(path))
            entry.privlevel = level
        else:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        entry.generation += 1

    def read(self, path: Path) -> bytes:
        entry = self._entry(path.parent)
        name = path.name
        if name == "provider":
            return f"{self.provider}\n".encode()
        if name == "generation":
            return f"{entry.generation}\n".encode()
        if name == "privlevel":
            return f"{entry.privlevel}\n".encode()
        if name in ("outblob", "auxblob"):
            if entry.inblob is None:
                raise OSError(errno.EINVAL, "Invalid argument", str(path))
            if name == "auxblob":
                return self.auxblob if self.provider == "sev_guest" and self.auxblob else b""
            if self.racer:
                entry.inblob = b"\xee" * 64
                entry.generation += 1
            return self._outblob(entry)
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))

    def _outblob(self, entry: _Entry) -> bytes:
        assert entry.inblob is not None
        report_data = entry.inblob.ljust(64, b"\x00")
        if self.provider == "sev_guest":
            assert self.amd is not None
            return self.amd.make_report(
                measurement=MEASUREMENT,
                host_data=HOST_DATA,
                report_data=report_data,
                vmpl=entry.privlevel,
                signer=self.signer,
            )
        if self.provider == "tdx_guest":
            assert self.intel is not None
            return self.intel.make_quote(mr_td=MR_TD, report_data=report_data)
        return b"\x00" * 64  # some other TSM provider's format


@pytest.fixture(scope="module")
def amd(tmp_path_factory: pytest.TempPathFactory) -> MockAmd:
    return create_mock_amd(tmp_path_factory.mktemp("tsm-amd"), "Genoa")


@pytest.fixture(scope="module")
def intel(tmp_path_factory: pytest.TempPathFactory) -> MockIntel:
    return create_mock_intel(tmp_path_factory.mktemp("tsm-intel"))


def snp_aux(amd: MockAmd, *names: str) -> bytes:
    der = {"vcek": amd.vcek_der, "vlek": amd.vlek_der, "ask": amd.ask_der, "ark": amd.ark_der}
    return cert_table([(GUID[n], der[n]) for n in names])


def _snp_kernel(amd: MockAmd, **kw: object) -> FakeKernel:
    aux = kw.pop("auxblob", snp_aux(amd, "ark", "vcek", "ask"))  # table order is not cert order
    return FakeKernel("sev_guest", amd=amd, auxblob=aux, **kw)  # type: ignore[arg-type]


def _mock_anchors(amd: MockAmd, intel: MockIntel) -> anchors.TrustAnchors:
    return anchors.TrustAnchors(kind="mock", amd={amd.product: amd.roots()}, intel_root=intel.root)


# --- happy paths -----------------------------------------------------------------------------


def test_snp_happy_path(amd: MockAmd, intel: MockIntel) -> None:
    kernel = _snp_kernel(amd)
    provider = TsmProvider(root=ROOT, fs=kernel)
    assert provider.tee == "snp"
    rd = bytes(range(64))
    ev = provider.evidence(rd)
    assert ev.tee == "snp"
    assert ev.certs == (amd.vcek_der, amd.ask_der, amd.ark_der)  # VCEK, ASK, ARK
    ref = SnpReference(product="Genoa", measurement=MEASUREMENT)
    verified = verify_snp(
        ev.report, ev.certs, _mock_anchors(amd, intel), [ref], rd, datetime.now(UTC)
    )
    assert verified.report_data == rd and verified.host_data == HOST_DATA
    assert kernel.entries == {}  # entry (and the probe) removed
    assert len(kernel.created) == 2


def test_snp_vlek_leaf_first(amd: MockAmd) -> None:
    kernel = _snp_kernel(amd, auxblob=snp_aux(amd, "vcek", "vlek", "ask", "ark"), signer="vlek")
    ev = TsmProvider(root=ROOT, fs=kernel).evidence(bytes(64))
    assert ev.certs == (amd.vlek_der, amd.ask_der, amd.ark_der)


def test_snp_without_auxblob_has_no_certs(amd: MockAmd) -> None:
    ev = TsmProvider(root=ROOT, fs=_snp_kernel(amd, auxblob=b"")).evidence(bytes(64))
    assert ev.tee == "snp" and ev.certs == ()


def test_snp_privlevel(amd: MockAmd) -> None:
    kernel = _snp_kernel(amd)
    ev = TsmProvider(root=ROOT, privlevel=2, fs=kernel).evidence(b"\x01" * 64)
    assert parse_report(ev.report).vmpl == 2


def test_tdx_happy_path(amd: MockAmd, intel: MockIntel) -> None:
    kernel = FakeKernel("tdx_guest", intel=intel)
    provider = TsmProvider(root=ROOT, fs=kernel)
    assert provider.tee == "tdx"
    rd = b"\x5a" * 64
    ev = provider.evidence(rd)
    assert ev.tee == "tdx" and ev.certs == () and not ev.collateral
    res = verify_tdx(
        ev.report,
        _mock_anchors(amd, intel),
        [TdxReference(mr_td=MR_TD)],
        rd,
        datetime.now(UTC),
        collateral=intel.make_collateral(datetime.now(UTC)),
    )
    assert res.report_data == rd and res.tcb_status == "UpToDate"
    assert kernel.entries == {}


# --- failures --------------------------------------------------------------------------------


def test_generation_mismatch(amd: MockAmd) -> None:
    kernel = _snp_kernel(amd)
    kernel.racer = True
    with pytest.raises(ProviderError, match="generation moved from 0 to 2: concurrent writer"):
        TsmProvider(root=ROOT, fs=kernel).evidence(bytes(64))
    assert kernel.entries == {}


def test_generation_mismatch_with_privlevel(amd: MockAmd) -> None:
    kernel = _snp_kernel(amd)
    kernel.racer = True
    with pytest.raises(ProviderError, match="generation moved from 0 to 3"):
        TsmProvider(root=ROOT, privlevel=1, fs=kernel).evidence(bytes(64))


@pytest.mark.parametrize("name", ["arm_cca_guest", "sev_guest_v2", ""])
def test_unsupported_provider(name: str) -> None:
    kernel = FakeKernel(name)
    provider = TsmProvider(root=ROOT, fs=kernel)
    with pytest.raises(ProviderError, match="unsupported provider"):
        provider.evidence(bytes(64))
    with pytest.raises(ProviderError, match="unsupported provider"):
        _ = provider.tee
    assert kernel.entries == {}


def test_missing_configfs_fake() -> None:
    provider = TsmProvider(root=ROOT, fs=FakeKernel("sev_guest", present=False))
    with pytest.raises(ProviderError, match=r"configfs-tsm not available: .* does not exist"):
        provider.evidence(bytes(64))
    with pytest.raises(ProviderError, match="configfs-tsm not available"):
        _ = provider.tee


def test_missing_configfs_real_filesystem(tmp_path: Path) -> None:
    provider = TsmProvider(root=tmp_path / "no" / "tsm" / "report")
    assert isinstance(provider.fs, OsFs)
    with pytest.raises(ProviderError, match="configfs-tsm not available"):
        provider.evidence(bytes(64))


def test_default_root() -> None:
    assert TsmProvider().root == DEFAULT_ROOT == Path("/sys/kernel/config/tsm/report")


def test_entry_creation_refused(amd: MockAmd) -> None:
    kernel = _snp_kernel(amd)

    def refuse(path: Path) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", str(path))

    kernel.mkdir = refuse  # type: ignore[method-assign]
    with pytest.raises(ProviderError, match=r"cannot create a report entry .*not permitted"):
        TsmProvider(root=ROOT, fs=kernel).evidence(bytes(64))


def test_privlevel_refused_by_kernel(amd: MockAmd) -> None:
    kernel = _snp_kernel(amd)
    with pytest.raises(ProviderError, match="cannot write privlevel"):
        TsmProvider(root=ROOT, privlevel=7, fs=kernel).evidence(bytes(64))
    assert kernel.entries == {}


@pytest.mark.parametrize(
    "aux",
    [
        b"\x01" * 10,  # not even one entry
        GUID["vcek"] + (48).to_bytes(4, "little") + (10).to_bytes(4, "little"),  # no terminator
        GUID["vcek"] + (48).to_bytes(4, "little") + (4096).to_bytes(4, "little") + bytes(24),
        GUID["vcek"] + (48).to_bytes(4, "little") + (0).to_bytes(4, "little") + bytes(24),
        GUID["ask"] + (0xFFFFFFFF).to_bytes(4, "little") + (1).to_bytes(4, "little") + bytes(24),
    ],
    ids=["short", "unterminated", "too-long", "zero-length", "offset-overflow"],
)
def test_malformed_auxblob(amd: MockAmd, aux: bytes) -> None:
    with pytest.raises(ProviderError, match="auxblob"):
        parse_snp_cert_table(aux)
    kernel = _snp_kernel(amd, auxblob=aux)
    with pytest.raises(ProviderError, match="auxblob"):
        TsmProvider(root=ROOT, fs=kernel).evidence(bytes(64))
    assert kernel.entries == {}


def test_cert_table_ignores_unknown_guids() -> None:
    other = uuid.uuid4().bytes_le
    aux = cert_table([(other, b"x" * 5), (GUID["ark"], b"ARK"), (GUID["vcek"], b"VCEK")])
    assert parse_snp_cert_table(aux) == (b"VCEK", b"ARK")
    assert parse_snp_cert_table(cert_table([])) == ()


def test_unexpected_outblob_is_a_provider_error(amd: MockAmd) -> None:
    kernel = _snp_kernel(amd)
    kernel.amd = None
    kernel.provider = "sev_guest"

    def short(entry: _Entry) -> bytes:
        return b"\x02" * 100

    kernel._outblob = short  # type: ignore[method-assign]
    with pytest.raises(ProviderError, match="unexpected outblob"):
        TsmProvider(root=ROOT, fs=kernel).evidence(bytes(64))


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_report_data_must_be_64_bytes(amd: MockAmd, size: int) -> None:
    kernel = _snp_kernel(amd)
    with pytest.raises(ValueError, match="exactly 64 bytes"):
        TsmProvider(root=ROOT, fs=kernel).evidence(bytes(size))
    assert kernel.created == []  # nothing touched


def test_tdx_attaches_configured_collateral(amd: MockAmd, intel: MockIntel) -> None:
    """Collateral fetched out of band rides in the envelope; the Verifier then accepts it."""
    from attestation.evidence import Evidence
    from attestation.reference import ReferenceValues
    from attestation.verify import Verifier

    collateral = intel.make_collateral(datetime.now(UTC)).to_cbor_map()
    provider = TsmProvider(
        root=ROOT, fs=FakeKernel("tdx_guest", intel=intel), tdx_collateral=collateral
    )
    rd = b"\x33" * 64
    ev = Evidence.decode(provider.evidence(rd).encode())
    assert dict(ev.collateral) == collateral
    verified = Verifier(_mock_anchors(amd, intel)).verify(
        ev, ReferenceValues(tdx=(TdxReference(mr_td=MR_TD),)), rd, datetime.now(UTC)
    )
    assert verified.detail.tcb_status == "UpToDate"


def test_snp_ignores_tdx_collateral(amd: MockAmd) -> None:
    provider = TsmProvider(root=ROOT, fs=_snp_kernel(amd), tdx_collateral={"tcb_info": b"x"})
    assert not provider.evidence(bytes(64)).collateral
