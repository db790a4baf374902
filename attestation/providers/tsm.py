"""Evidence from Linux configfs-tsm (``/sys/kernel/config/tsm/report``) inside a real CVM.

Protocol: create a report entry directory, write 64 bytes to ``inblob``, read ``outblob`` (SNP
report or TDX quote) and, on SNP, ``auxblob`` (the certificate table with VCEK/ASK/ARK). The
``generation`` counter is read before writing and after reading: if another writer used the same
entry in between, the outblob may not be ours, so the attempt fails instead of returning it.
"""

from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

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


def parse_snp_cert_table(aux: bytes) -> tuple[bytes, ...]:
    """DER certificates of an SNP certificate table, ordered VCEK/VLEK, ASK, ARK."""
    found: dict[str, bytes] = {}
    pos = 0
    while True:
        if pos + 24 > len(aux):
            raise ProviderError("auxblob: certificate table is not terminated")
        guid = aux[pos : pos + 16]
        offset = int.from_bytes(aux[pos + 16 : pos + 20], "little")
        length = int.from_bytes(aux[pos + 20 : pos + 24], "little")
        pos += 24
        if guid == bytes(16):
            break
        if offset + length > len(aux) or length == 0:
            raise ProviderError("auxblob: certificate entry points outside the blob")
        name = _SNP_CERT_GUIDS.get(guid)
        if name is not None:
            found[name] = aux[offset : offset + length]
    return tuple(found[n] for n in _CERT_ORDER if n in found)


@dataclass(frozen=True)
class TsmProvider:
    """configfs-tsm provider; ``root`` is injectable so tests can run against a fake tree."""

    root: Path = DEFAULT_ROOT
    privlevel: int | None = None

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
            name = (probe / "provider").read_text().strip()
        except OSError as exc:
            raise ProviderError(f"configfs-tsm: cannot read provider: {exc.strerror}") from None
        finally:
            if made:
                self._rmdir(probe)
        if name not in _PROVIDERS:
            raise ProviderError(f"configfs-tsm: unsupported provider {name!r}")
        return _PROVIDERS[name]

    def _mkdir(self, entry: Path) -> None:
        try:
            os.mkdir(entry)
        except OSError as exc:
            raise ProviderError(
                f"configfs-tsm: cannot create a report entry under {self.root}: {exc.strerror}"
            ) from None

    def _rmdir(self, entry: Path) -> None:
        try:
            os.rmdir(entry)
        except OSError:
            pass

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise ValueError("report data must be exactly 64 bytes")
        entry = self.root / f"concord-{secrets.token_hex(8)}"
        self._mkdir(entry)
        try:
            tee = self._read_provider(entry)
            before = self._generation(entry)
            if self.privlevel is not None:
                (entry / "privlevel").write_text(str(self.privlevel))
            (entry / "inblob").write_bytes(report_data)
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
        certs = parse_snp_cert_table(aux) if aux else ()
        return Evidence(tee=tee, report=report, certs=certs)

    @staticmethod
    def _generation(entry: Path) -> int:
        try:
            return int((entry / "generation").read_text().strip())
        except (OSError, ValueError):
            raise ProviderError("configfs-tsm: cannot read generation") from None

    @staticmethod
    def _read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ProviderError(f"configfs-tsm: cannot read {path.name}: {exc.strerror}") from None
