"""Evidence from Linux configfs-tsm (``/sys/kernel/config/tsm/report``) inside a real CVM.

Protocol: create a report entry directory, write 64 bytes to ``inblob``, read ``outblob`` (SNP
report or TDX quote) and, on SNP, ``auxblob`` (the certificate table with VCEK/ASK/ARK). The
``generation`` counter is read before writing and after reading: if another writer used the same
entry in between, the outblob may not be ours, so the attempt fails instead of returning it.

The four file operations go through a small :class:`TsmFs` object so tests can put a fake kernel
behind them (configfs reacts to writes; a plain directory cannot).
"""

from __future__ import annotations

import errno
import os
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from attestation.collateral.cache import CollateralSource
from attestation.errors import EvidenceRejected
from attestation.evidence import Evidence
from attestation.providers.base import ProviderError

DEFAULT_ROOT = Path("/sys/kernel/config/tsm/report")

# GUIDs of the SNP extended-report certificate table (AMD GHCB spec), little-endian encoded.
_SNP_CERT_GUIDS = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes_le: "vcek",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1").bytes_le: "vlek",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes_le: "ask",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae").bytes_le: "ark",
}
_CERT_ORDER = ("vcek", "vlek", "ask", "ark")
_PROVIDERS = {"sev_guest": "snp", "tdx_guest": "tdx"}
_ENTRY_SIZE = 24
_SNP_SIGNER_INFO = 0x48  # report offset of the signer info word (SIGNING_KEY in bits 2..4)


def parse_snp_cert_table(aux: bytes, *, leaf: str | None = None) -> tuple[bytes, ...]:
    """DER certificates of an SNP certificate table, ordered VCEK/VLEK, ASK, ARK.

    ``leaf`` ("vcek" or "vlek", from the report's SIGNING_KEY) keeps only that leaf, so the
    verifier's ``certs[0]`` is the key that signed the report even when the host supplies both.
    """
    found: dict[str, bytes] = {}
    pos = 0
    while True:
        if pos + _ENTRY_SIZE > len(aux):
            raise ProviderError("auxblob: certificate table is not terminated")
        guid = aux[pos : pos + 16]
        offset = int.from_bytes(aux[pos + 16 : pos + 20], "little")
        length = int.from_bytes(aux[pos + 20 : pos + 24], "little")
        pos += _ENTRY_SIZE
        if guid == bytes(16):
            break
        if offset + length > len(aux) or length == 0:
            raise ProviderError("auxblob: certificate entry points outside the blob")
        name = _SNP_CERT_GUIDS.get(guid)
        if name is not None:
            found[name] = aux[offset : offset + length]
    order = _CERT_ORDER if leaf is None else (leaf, "ask", "ark")
    return tuple(found[n] for n in order if n in found)


def _snp_signer(report: bytes) -> str | None:
    if len(report) < _SNP_SIGNER_INFO + 4:
        return None
    key = (int.from_bytes(report[_SNP_SIGNER_INFO : _SNP_SIGNER_INFO + 4], "little") >> 2) & 7
    return {0: "vcek", 1: "vlek"}.get(key)


class TsmFs(Protocol):
    """The file operations the provider needs; each raises OSError like the os module."""

    def mkdir(self, path: Path) -> None: ...

    def rmdir(self, path: Path) -> None: ...

    def read(self, path: Path) -> bytes: ...

    def write(self, path: Path, data: bytes) -> None: ...


class OsFs:
    """The real filesystem (configfs)."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def write(self, path: Path, data: bytes) -> None:
        path.write_bytes(data)


@dataclass(frozen=True)
class TsmProvider:
    """configfs-tsm provider; ``root`` and ``fs`` are injectable so tests can fake the kernel."""

    root: Path = DEFAULT_ROOT
    privlevel: int | None = None
    fs: TsmFs = field(default_factory=OsFs, compare=False, repr=False)
    # TDX collateral (TCB info, QE identity, CRLs as envelope map) fetched out of band, e.g. by a
    # PCS/PCCS fetcher: verifiers require it, and this provider never fetches anything itself.
    tdx_collateral: Mapping[str, bytes] | None = field(default=None, compare=False, repr=False)
    # A collateral directory kept warm by the collateral service: supplies the VCEK when the host
    # gives no auxblob, and TDX collateral when no file was configured.
    collateral: CollateralSource | None = field(default=None, compare=False, repr=False)

    @property
    def tee(self) -> str:
        return self._read_provider(None)

    def _read_provider(self, entry: Path | None) -> str:
        probe = entry
        made = False
        if probe is None:
            probe = self.root / f"concord-probe-{secrets.token_hex(4)}"
            self._mkdir(probe)
            made = True
        try:
            name = self._read(probe / "provider").decode("ascii", "replace").strip()
        finally:
            if made:
                self._rmdir(probe)
        if name not in _PROVIDERS:
            raise ProviderError(f"configfs-tsm: unsupported provider {name!r}")
        return _PROVIDERS[name]

    def _mkdir(self, entry: Path) -> None:
        try:
            self.fs.mkdir(entry)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise ProviderError(
                    f"configfs-tsm not available: {self.root} does not exist (not a confidential "
                    "VM, kernel without CONFIG_TSM_REPORTS, or configfs not mounted at "
                    "/sys/kernel/config)"
                ) from None
            raise ProviderError(
                f"configfs-tsm: cannot create a report entry under {self.root}: {exc.strerror}"
            ) from None

    def _rmdir(self, entry: Path) -> None:
        try:
            self.fs.rmdir(entry)
        except OSError:
            pass

    def _write(self, path: Path, data: bytes) -> None:
        try:
            self.fs.write(path, data)
        except OSError as exc:
            raise ProviderError(f"configfs-tsm: cannot write {path.name}: {exc.strerror}") from None

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise ValueError("report data must be exactly 64 bytes")
        entry = self.root / f"concord-{secrets.token_hex(8)}"
        self._mkdir(entry)
        try:
            tee = self._read_provider(entry)
            before = self._generation(entry)
            if self.privlevel is not None:
                self._write(entry / "privlevel", str(self.privlevel).encode())
            self._write(entry / "inblob", report_data)
            report = self._read(entry / "outblob")
            aux = self._read(entry / "auxblob") if tee == "snp" else b""
            after = self._generation(entry)
        finally:
            self._rmdir(entry)
        writes = 2 if self.privlevel is not None else 1
        if after != before + writes:
            raise ProviderError(
                f"configfs-tsm: generation moved from {before} to {after}: concurrent writer"
            )
        certs = parse_snp_cert_table(aux, leaf=_snp_signer(report)) if aux else ()
        if tee == "snp" and not certs and self.collateral is not None:
            certs = self.collateral.snp_certs(report)
        try:
            collateral = dict(self.tdx_collateral or {}) if tee == "tdx" else {}
            if tee == "tdx" and not collateral and self.collateral is not None:
                found = self.collateral.tdx_collateral(report)
                collateral = found.to_cbor_map() if found is not None else {}
            return Evidence(tee=tee, report=report, certs=certs, collateral=collateral)
        except EvidenceRejected as exc:
            raise ProviderError(f"configfs-tsm: unexpected outblob/auxblob: {exc}") from None

    def _generation(self, entry: Path) -> int:
        try:
            return int(self.fs.read(entry / "generation").decode("ascii").strip())
        except (OSError, ValueError):
            raise ProviderError("configfs-tsm: cannot read generation") from None

    def _read(self, path: Path) -> bytes:
        try:
            return self.fs.read(path)
        except OSError as exc:
            raise ProviderError(f"configfs-tsm: cannot read {path.name}: {exc.strerror}") from None
