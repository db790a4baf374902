"""The collateral directory: one JSON file per entry, keyed by what the collateral is about.

Layout (``DIR/<kind>/<name>.json``): ``vcek/<product>-<hwid>-<reported tcb>``,
``tcbinfo/<fmspc>``, ``qeidentity/td_qe``, ``pckcrl/<platform|processor>``, ``rootcrl/intel``.
Each file keeps the upstream body byte for byte (base64), the issuer chain from the response
header, when it was fetched and its ``nextUpdate``. Writes are atomic (temporary file, fsync,
rename), so a reader never sees half an entry. Nothing read here is trusted: verification
checks every signature again; the directory only saves the trip to the vendor.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from attestation.collateral.errors import CacheEntryInvalid
from attestation.collateral.keys import TdxKey, VcekKey, safe_name, tdx_key, vcek_keys
from attestation.errors import EvidenceRejected
from attestation.tdx.collateral_model import TdxCollateral, extract_signed_json

FORMAT = "concord-collateral/1"
MAX_ENTRY = 2 * 1024 * 1024
KINDS = ("vcek", "tcbinfo", "qeidentity", "pckcrl", "rootcrl")
QE_IDENTITY_NAME = "td_qe"
ROOT_CRL_NAME = "intel"


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    name: str
    body: bytes  # exactly as served (DER certificate / PCS JSON body / DER CRL)
    fetched_at: datetime
    next_update: datetime | None  # None: no refresh needed (a VCEK never changes)
    issuer_chain: bytes | None = None  # PEM from the response header
    source: str = ""

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "kind": self.kind,
                "name": self.name,
                "body": base64.b64encode(self.body).decode(),
                "issuer_chain": None if self.issuer_chain is None else self.issuer_chain.decode(),
                "fetched_at": self.fetched_at.isoformat(),
                "next_update": None if self.next_update is None else self.next_update.isoformat(),
                "source": self.source,
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> CacheEntry:
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict) or obj.get("format") != FORMAT:
                raise ValueError("not a collateral cache entry")
            chain = obj["issuer_chain"]
            nxt = obj["next_update"]
            entry = cls(
                kind=_str(obj, "kind"),
                name=_str(obj, "name"),
                body=base64.b64decode(_str(obj, "body"), validate=True),
                fetched_at=_aware(datetime.fromisoformat(_str(obj, "fetched_at"))),
                next_update=None if nxt is None else _aware(datetime.fromisoformat(nxt)),
                issuer_chain=None if chain is None else _str(obj, "issuer_chain").encode(),
                source=str(obj.get("source", "")),
            )
        except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
            raise CacheEntryInvalid(f"{where}: {exc}") from None
        return entry


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("time without a UTC offset")
    return value


@runtime_checkable
class CollateralSource(Protocol):
    """Where a verifier finds collateral the evidence does not carry (pure lookups, no network)."""

    def snp_certs(self, report: bytes) -> tuple[bytes, ...]:
        """VCEK DER for a raw SNP report, or () when none is known."""
        ...

    def tdx_collateral(self, quote: bytes) -> TdxCollateral | None:
        """TDX collateral for a raw quote, or None when incomplete."""
        ...


class CollateralDir:
    """Read and write the directory; a :class:`CollateralSource` for verification."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, kind: str, name: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown collateral kind {kind!r}")
        return self.root / kind / f"{safe_name(name)}.json"

    def read(self, kind: str, name: str) -> CacheEntry | None:
        path = self.path(kind, name)
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_ENTRY + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheEntryInvalid(f"{path}: cannot read ({exc.strerror})") from None
        if len(raw) > MAX_ENTRY:
            raise CacheEntryInvalid(f"{path}: larger than {MAX_ENTRY} bytes")
        entry = CacheEntry.from_json(raw, str(path))
        if (entry.kind, entry.name) != (kind, name):
            raise CacheEntryInvalid(f"{path}: holds {entry.kind}/{entry.name}")
        return entry

    def write(self, entry: CacheEntry) -> Path:
        path = self.path(entry.kind, entry.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(entry.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    # --- lookups for verification --------------------------------------------------------------

    def vcek(self, key: VcekKey) -> bytes | None:
        entry = self.read("vcek", key.name)
        return None if entry is None else entry.body

    def tdx(self, key: TdxKey) -> TdxCollateral | None:
        tcb = self.read("tcbinfo", key.fmspc.hex())
        qe = self.read("qeidentity", QE_IDENTITY_NAME)
        if tcb is None or qe is None or tcb.issuer_chain is None or qe.issuer_chain is None:
            return None
        pck_crl = self.read("pckcrl", key.ca)
        root_crl = self.read("rootcrl", ROOT_CRL_NAME)
        return collateral_from_entries(tcb, qe, pck_crl, root_crl)

    def snp_certs(self, report: bytes) -> tuple[bytes, ...]:
        try:
            keys = vcek_keys(report)
        except EvidenceRejected:
            return ()
        for key in keys:
            der = self.vcek(key)
            if der is not None:
                return (der,)
        return ()

    def tdx_collateral(self, quote: bytes) -> TdxCollateral | None:
        try:
            key = tdx_key(quote)
        except EvidenceRejected:
            return None
        return self.tdx(key)


def collateral_from_entries(
    tcb: CacheEntry,
    qe: CacheEntry,
    pck_crl: CacheEntry | None,
    root_crl: CacheEntry | None,
) -> TdxCollateral:
    """Assemble the envelope-shaped collateral from PCS responses kept byte for byte."""
    assert tcb.issuer_chain is not None and qe.issuer_chain is not None
    tcb_raw, tcb_sig = extract_signed_json(tcb.body, "tcbInfo")
    qe_raw, qe_sig = extract_signed_json(qe.body, "enclaveIdentity")
    with_pck_crl = pck_crl is not None and pck_crl.issuer_chain is not None
    return TdxCollateral(
        tcb_info=tcb_raw,
        tcb_info_signature=tcb_sig,
        tcb_info_issuer_chain=tcb.issuer_chain,
        qe_identity=qe_raw,
        qe_identity_signature=qe_sig,
        qe_identity_issuer_chain=qe.issuer_chain,
        pck_crl=pck_crl.body if with_pck_crl and pck_crl is not None else None,
        root_ca_crl=None if root_crl is None else root_crl.body,
        pck_crl_issuer_chain=pck_crl.issuer_chain if with_pck_crl and pck_crl else None,
    )
