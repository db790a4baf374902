"""Strict parsing of TDX TCB info (v3), TD QE identity (v2) and CRLs into frozen values.

Parsing only: callers verify the signature over the raw bytes first (collateral_verify.py).
Every problem is a :class:`CollateralRejected` naming the JSON path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509

from attestation.errors import CollateralRejected
from attestation.jsonstrict import reject_duplicates
from attestation.tdx.collateral_model import (
    QE_IDENTITY_ID,
    QE_IDENTITY_VERSIONS,
    TCB_INFO_ID,
    TCB_INFO_VERSIONS,
)


@dataclass(frozen=True)
class TcbLevel:
    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...]
    tcb_date: datetime
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class IsvTcbLevel:
    """A level of an identity (QE or TDX module): ISVSVN threshold and its status."""

    isv_svn: int
    tcb_date: datetime
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModuleIdentity:
    id: str
    mr_signer: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[IsvTcbLevel, ...]


@dataclass(frozen=True)
class TcbInfo:
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tdx_module: TdxModuleIdentity
    tdx_module_identities: tuple[TdxModuleIdentity, ...]
    tcb_levels: tuple[TcbLevel, ...]


@dataclass(frozen=True)
class QeIdentity:
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: bytes
    miscselect_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    mr_signer: bytes
    isv_prod_id: int
    tcb_levels: tuple[IsvTcbLevel, ...]


def _load_json(raw: bytes, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=reject_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CollateralRejected(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CollateralRejected(f"{where}: must be a JSON object")
    return obj


class _J:
    """Typed accessors over a JSON object; problems are CollateralRejected naming the path."""

    def __init__(self, obj: Any, path: str) -> None:
        if not isinstance(obj, dict):
            raise CollateralRejected(f"{path}: must be an object")
        self.obj = obj
        self.path = path

    def has(self, key: str) -> bool:
        return key in self.obj

    def raw(self, key: str) -> Any:
        if key not in self.obj:
            raise CollateralRejected(f"{self.path}.{key}: required")
        return self.obj[key]

    def text(self, key: str) -> str:
        v = self.raw(key)
        if not isinstance(v, str):
            raise CollateralRejected(f"{self.path}.{key}: must be a string")
        return v

    def uint(self, key: str, bits: int = 32) -> int:
        v = self.raw(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < (1 << bits):
            raise CollateralRejected(f"{self.path}.{key}: must be an integer in [0, 2^{bits})")
        return v

    def hexbytes(self, key: str, size: int) -> bytes:
        v = self.text(key)
        if len(v) != 2 * size:
            raise CollateralRejected(f"{self.path}.{key}: must be {2 * size} hex digits")
        try:
            b = bytes.fromhex(v)
        except ValueError:
            raise CollateralRejected(f"{self.path}.{key}: not valid hex") from None
        if len(b) != size:
            raise CollateralRejected(f"{self.path}.{key}: must be {size} bytes, got {len(b)}")
        return b

    def date(self, key: str) -> datetime:
        v = self.text(key)
        try:
            d = datetime.fromisoformat(v)
        except ValueError:
            raise CollateralRejected(f"{self.path}.{key}: not an ISO 8601 date") from None
        if d.tzinfo is None:
            raise CollateralRejected(f"{self.path}.{key}: date has no time zone")
        return d

    def array(self, key: str) -> list[Any]:
        v = self.raw(key)
        if not isinstance(v, list):
            raise CollateralRejected(f"{self.path}.{key}: must be an array")
        return v

    def sub(self, key: str) -> _J:
        return _J(self.raw(key), f"{self.path}.{key}")

    def advisories(self) -> tuple[str, ...]:
        if "advisoryIDs" not in self.obj:
            return ()
        items = self.array("advisoryIDs")
        if not all(isinstance(a, str) for a in items):
            raise CollateralRejected(f"{self.path}.advisoryIDs: must be strings")
        return tuple(items)


def _svns(items: list[Any], path: str) -> tuple[int, ...]:
    if len(items) != 16:
        raise CollateralRejected(f"{path}: must have 16 components, got {len(items)}")
    return tuple(_J(c, f"{path}[{i}]").uint("svn", 8) for i, c in enumerate(items))


def _isv_levels(j: _J) -> tuple[IsvTcbLevel, ...]:
    out = []
    for i, item in enumerate(j.array("tcbLevels")):
        lj = _J(item, f"{j.path}.tcbLevels[{i}]")
        out.append(
            IsvTcbLevel(
                isv_svn=lj.sub("tcb").uint("isvsvn", 16),
                tcb_date=lj.date("tcbDate"),
                status=lj.text("tcbStatus"),
                advisory_ids=lj.advisories(),
            )
        )
    if not out:
        raise CollateralRejected(f"{j.path}.tcbLevels: empty")
    return tuple(out)


def _module(j: _J, with_levels: bool) -> TdxModuleIdentity:
    return TdxModuleIdentity(
        id=j.text("id") if with_levels else "",
        mr_signer=j.hexbytes("mrsigner", 48),
        attributes=j.hexbytes("attributes", 8),
        attributes_mask=j.hexbytes("attributesMask", 8),
        tcb_levels=_isv_levels(j) if with_levels else (),
    )


def parse_tcb_info(raw: bytes) -> TcbInfo:
    """Parse the raw ``tcbInfo`` JSON (TDX, version 3); strict on every field used."""
    j = _J(_load_json(raw, "tcb_info"), "tcb_info")
    tcb_id = j.text("id")
    version = j.uint("version")
    if tcb_id != TCB_INFO_ID:
        raise CollateralRejected(f"tcb_info.id: {tcb_id!r}, expected 'TDX'")
    if version not in TCB_INFO_VERSIONS:
        raise CollateralRejected(f"tcb_info.version: {version}, supported {TCB_INFO_VERSIONS}")
    levels = []
    for i, item in enumerate(j.array("tcbLevels")):
        lj = _J(item, f"tcb_info.tcbLevels[{i}]")
        tj = lj.sub("tcb")
        levels.append(
            TcbLevel(
                sgx_components=_svns(tj.array("sgxtcbcomponents"), f"{tj.path}.sgxtcbcomponents"),
                pce_svn=tj.uint("pcesvn", 16),
                tdx_components=_svns(tj.array("tdxtcbcomponents"), f"{tj.path}.tdxtcbcomponents"),
                tcb_date=lj.date("tcbDate"),
                status=lj.text("tcbStatus"),
                advisory_ids=lj.advisories(),
            )
        )
    if not levels:
        raise CollateralRejected("tcb_info.tcbLevels: empty")
    identities: list[TdxModuleIdentity] = []
    if j.has("tdxModuleIdentities"):
        for i, item in enumerate(j.array("tdxModuleIdentities")):
            identities.append(_module(_J(item, f"tcb_info.tdxModuleIdentities[{i}]"), True))
    return TcbInfo(
        id=tcb_id,
        version=version,
        issue_date=j.date("issueDate"),
        next_update=j.date("nextUpdate"),
        fmspc=j.hexbytes("fmspc", 6),
        pce_id=j.hexbytes("pceId", 2),
        tcb_type=j.uint("tcbType"),
        tcb_evaluation_data_number=j.uint("tcbEvaluationDataNumber"),
        tdx_module=_module(j.sub("tdxModule"), False),
        tdx_module_identities=tuple(identities),
        tcb_levels=tuple(levels),
    )


def parse_qe_identity(raw: bytes) -> QeIdentity:
    """Parse the raw ``enclaveIdentity`` JSON of the TD Quoting Enclave (TD_QE, version 2)."""
    j = _J(_load_json(raw, "qe_identity"), "qe_identity")
    qe_id = j.text("id")
    version = j.uint("version")
    if qe_id != QE_IDENTITY_ID:
        raise CollateralRejected(f"qe_identity.id: {qe_id!r}, expected 'TD_QE'")
    if version not in QE_IDENTITY_VERSIONS:
        raise CollateralRejected(
            f"qe_identity.version: {version}, supported {QE_IDENTITY_VERSIONS}"
        )
    return QeIdentity(
        id=qe_id,
        version=version,
        issue_date=j.date("issueDate"),
        next_update=j.date("nextUpdate"),
        tcb_evaluation_data_number=j.uint("tcbEvaluationDataNumber"),
        miscselect=j.hexbytes("miscselect", 4),
        miscselect_mask=j.hexbytes("miscselectMask", 4),
        attributes=j.hexbytes("attributes", 16),
        attributes_mask=j.hexbytes("attributesMask", 16),
        mr_signer=j.hexbytes("mrsigner", 32),
        isv_prod_id=j.uint("isvprodid", 16),
        tcb_levels=_isv_levels(j),
    )


def _load_crl(der: bytes, where: str) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_der_x509_crl(der)
        crl.next_update_utc  # noqa: B018 - force decoding of the fields we rely on
    except ValueError:
        raise CollateralRejected(f"{where}: not a DER CRL") from None
    return crl


def parse_crl(der: bytes, where: str = "crl") -> x509.CertificateRevocationList:
    """Parse a DER CRL (for tests and tooling); CollateralRejected when malformed."""
    return _load_crl(der, where)
