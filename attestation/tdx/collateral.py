"""TDX collateral: TCB info, QE identity and CRLs, verified over their exact signed bytes.

Intel signs the raw JSON text of the ``tcbInfo`` / ``enclaveIdentity`` value (ECDSA P-256,
SHA-256, signature as hex r||s) with the Intel SGX TCB Signing key, whose certificate chains to
the pinned Intel SGX Root CA. The raw bytes are kept as they were received and never
re-serialised. Evaluation follows Intel's TDX TCB evaluation: FMSPC and PCE-ID must match the
PCK; the first TCB level whose 16 SGX components and PCESVN are <= the PCK's and whose TDX
components are <= the quote's TEE_TCB_SVN (components 0 and 1 are skipped when the TDX module
major version TEE_TCB_SVN[1] is non-zero: they are then judged through the matching
``tdxModuleIdentities`` entry) gives the platform status; the TDX module and the QE identity
statuses are converged into it (an OutOfDate component makes UpToDate/SWHardeningNeeded
OutOfDate and the Configuration* statuses OutOfDateConfigurationNeeded; Revoked wins).

The TD relaunch advice of TDX 1.5 (TEE_TCB_SVN_2) is not evaluated: the status vocabulary of
the reference values has no "TDRelaunchAdvised".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.anchors import TrustAnchors
from attestation.cache import BoundedCache, der_of
from attestation.errors import (
    CertificateRevoked,
    CollateralExpired,
    CollateralRejected,
    MalformedEvidence,
    SizeLimitExceeded,
    TcbStatusRejected,
)
from attestation.reference import TDX_TCB_STATUSES
from attestation.tdx.pck import (
    PckChain,
    SgxExtensions,
    SignerChain,
    check_aware,
    check_window,
    split_pem_certificates,
    verify_signer_chain,
)
from attestation.tdx.quote import QeReport, TdReportBody

MAX_JSON_SIZE = 64 * 1024
MAX_CHAIN_PEM_SIZE = 16 * 1024
MAX_CRL_SIZE = 512 * 1024

TCB_INFO_ID = "TDX"
TCB_INFO_VERSIONS = (3,)
QE_IDENTITY_ID = "TD_QE"
QE_IDENTITY_VERSIONS = (2,)

_MODULE_STATUSES = ("UpToDate", "OutOfDate", "Revoked")
_QE_STATUSES = (
    "UpToDate",
    "OutOfDate",
    "ConfigurationNeeded",
    "Revoked",
    "OutOfDateConfigurationNeeded",
)


class CollateralSignatureInvalid(CollateralRejected):
    """The TCB info, QE identity or a CRL is not signed by the key it must be signed by."""

    reason = "collateral_signature"


class CollateralMismatch(CollateralRejected):
    """Valid collateral that is not about this platform (FMSPC, PCE-ID, CRL issuer)."""

    reason = "collateral_mismatch"


class TdxModuleMismatch(TcbStatusRejected):
    """MRSIGNERSEAM / SEAM attributes do not match Intel's published TDX module identity."""

    reason = "tdx_module_mismatch"


class QeIdentityMismatch(TcbStatusRejected):
    """The Quoting Enclave is not the one Intel's QE identity describes."""

    reason = "qe_identity_mismatch"


# --- the collateral value --------------------------------------------------------------------


@dataclass(frozen=True)
class TdxCollateral:
    """Raw collateral as received: signed JSON bytes, signatures (r||s), PEM chains, DER CRLs."""

    tcb_info: bytes
    tcb_info_signature: bytes
    tcb_info_issuer_chain: bytes
    qe_identity: bytes
    qe_identity_signature: bytes
    qe_identity_issuer_chain: bytes
    pck_crl: bytes | None = None
    root_ca_crl: bytes | None = None
    pck_crl_issuer_chain: bytes | None = None

    def __post_init__(self) -> None:
        for name, limit in _LIMITS.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if not isinstance(value, bytes):
                raise MalformedEvidence(f"collateral.{name}: must be bytes")
            if len(value) > limit:
                raise SizeLimitExceeded(f"collateral.{name}: {len(value)} bytes, limit {limit}")

    def digest(self) -> bytes:
        h = hashlib.sha256(b"concord/tdx/collateral/v1\0")
        for name in _FIELDS:
            value = getattr(self, name)
            blob = b"" if value is None else value
            h.update(b"\x01" if value is not None else b"\x00")
            h.update(len(blob).to_bytes(4, "big"))
            h.update(blob)
        return h.digest()

    # CBOR (evidence envelope `collateral` field): a map of text keys to byte strings.
    def to_cbor_map(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for name, key in _CBOR_KEYS.items():
            value = getattr(self, name)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_cbor_map(cls, value: Any) -> TdxCollateral:
        if not isinstance(value, Mapping):
            raise MalformedEvidence("collateral: must be a CBOR map")
        kwargs: dict[str, bytes | None] = {}
        for name, key in _CBOR_KEYS.items():
            item = value.get(key)
            if item is None:
                if name in _OPTIONAL:
                    kwargs[name] = None
                    continue
                raise MalformedEvidence(f"collateral.{key}: required")
            if not isinstance(item, bytes):
                raise MalformedEvidence(f"collateral.{key}: must be a byte string")
            kwargs[name] = item
        return cls(**kwargs)  # type: ignore[arg-type]

    # dcap-qvl's QuoteCollateralV3 JSON (the shape of the test vectors and PCCS tooling).
    @classmethod
    def from_dcap_qvl_json(cls, data: bytes | str) -> TdxCollateral:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise CollateralRejected("collateral JSON: not valid JSON") from None
        if not isinstance(obj, dict):
            raise CollateralRejected("collateral JSON: must be an object")

        def text(key: str, *, optional: bool = False) -> bytes | None:
            v = obj.get(key)
            if v is None and optional:
                return None
            if not isinstance(v, str):
                raise CollateralRejected(f"collateral JSON.{key}: must be a string")
            return v.encode()

        def hexbytes(key: str, *, optional: bool = False) -> bytes | None:
            v = obj.get(key)
            if v is None and optional:
                return None
            if isinstance(v, list) and all(isinstance(b, int) and 0 <= b < 256 for b in v):
                return bytes(v)
            if not isinstance(v, str):
                raise CollateralRejected(f"collateral JSON.{key}: must be a hex string")
            try:
                return bytes.fromhex(v)
            except ValueError:
                raise CollateralRejected(f"collateral JSON.{key}: not valid hex") from None

        def req(v: bytes | None) -> bytes:
            assert v is not None
            return v

        return cls(
            tcb_info=req(text("tcb_info")),
            tcb_info_signature=req(hexbytes("tcb_info_signature")),
            tcb_info_issuer_chain=req(text("tcb_info_issuer_chain")),
            qe_identity=req(text("qe_identity")),
            qe_identity_signature=req(hexbytes("qe_identity_signature")),
            qe_identity_issuer_chain=req(text("qe_identity_issuer_chain")),
            pck_crl=hexbytes("pck_crl", optional=True),
            root_ca_crl=hexbytes("root_ca_crl", optional=True),
            pck_crl_issuer_chain=text("pck_crl_issuer_chain", optional=True),
        )

    def to_dcap_qvl_json(self) -> str:
        """The same collateral in dcap-qvl's JSON shape (CRLs and issuer chain required there)."""
        return json.dumps(
            {
                "pck_crl_issuer_chain": (self.pck_crl_issuer_chain or b"").decode(),
                "root_ca_crl": (self.root_ca_crl or b"").hex(),
                "pck_crl": (self.pck_crl or b"").hex(),
                "tcb_info_issuer_chain": self.tcb_info_issuer_chain.decode(),
                "tcb_info": self.tcb_info.decode(),
                "tcb_info_signature": self.tcb_info_signature.hex(),
                "qe_identity_issuer_chain": self.qe_identity_issuer_chain.decode(),
                "qe_identity": self.qe_identity.decode(),
                "qe_identity_signature": self.qe_identity_signature.hex(),
            }
        )

    @classmethod
    def from_pcs_responses(
        cls,
        tcb_info_response: bytes,
        tcb_info_issuer_chain: bytes,
        qe_identity_response: bytes,
        qe_identity_issuer_chain: bytes,
        *,
        pck_crl: bytes | None = None,
        root_ca_crl: bytes | None = None,
        pck_crl_issuer_chain: bytes | None = None,
    ) -> TdxCollateral:
        """Build from Intel PCS bodies ``{"tcbInfo": ..., "signature": ...}`` keeping raw bytes."""
        tcb_raw, tcb_sig = extract_signed_json(tcb_info_response, "tcbInfo")
        qe_raw, qe_sig = extract_signed_json(qe_identity_response, "enclaveIdentity")
        return cls(
            tcb_info=tcb_raw,
            tcb_info_signature=tcb_sig,
            tcb_info_issuer_chain=tcb_info_issuer_chain,
            qe_identity=qe_raw,
            qe_identity_signature=qe_sig,
            qe_identity_issuer_chain=qe_identity_issuer_chain,
            pck_crl=pck_crl,
            root_ca_crl=root_ca_crl,
            pck_crl_issuer_chain=pck_crl_issuer_chain,
        )


_FIELDS = (
    "tcb_info",
    "tcb_info_signature",
    "tcb_info_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
    "qe_identity_issuer_chain",
    "pck_crl",
    "root_ca_crl",
    "pck_crl_issuer_chain",
)
_OPTIONAL = frozenset({"pck_crl", "root_ca_crl", "pck_crl_issuer_chain"})
_LIMITS = {
    "tcb_info": MAX_JSON_SIZE,
    "tcb_info_signature": 64,
    "tcb_info_issuer_chain": MAX_CHAIN_PEM_SIZE,
    "qe_identity": MAX_JSON_SIZE,
    "qe_identity_signature": 64,
    "qe_identity_issuer_chain": MAX_CHAIN_PEM_SIZE,
    "pck_crl": MAX_CRL_SIZE,
    "root_ca_crl": MAX_CRL_SIZE,
    "pck_crl_issuer_chain": MAX_CHAIN_PEM_SIZE,
}
_CBOR_KEYS = {
    "tcb_info": "tcb_info",
    "tcb_info_signature": "tcb_info_sig",
    "tcb_info_issuer_chain": "tcb_info_chain",
    "qe_identity": "qe_identity",
    "qe_identity_signature": "qe_identity_sig",
    "qe_identity_issuer_chain": "qe_identity_chain",
    "pck_crl": "pck_crl",
    "root_ca_crl": "root_ca_crl",
    "pck_crl_issuer_chain": "pck_crl_chain",
}


def load_collateral_json(path: str | Path) -> TdxCollateral:
    """Load a dcap-qvl collateral JSON file (I/O edge)."""
    return TdxCollateral.from_dcap_qvl_json(Path(path).read_bytes())


def extract_signed_json(body: bytes, key: str) -> tuple[bytes, bytes]:
    """Exact raw bytes of the top-level ``key`` value and the ``signature`` of a PCS body."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise CollateralRejected(f"{key}: body is not UTF-8") from None
    decoder = json.JSONDecoder()
    ws = " \t\r\n"
    pos = 0
    while pos < len(text) and text[pos] in ws:
        pos += 1
    if pos >= len(text) or text[pos] != "{":
        raise CollateralRejected(f"{key}: body is not a JSON object")
    pos += 1
    raw: str | None = None
    signature: str | None = None
    try:
        while True:
            while pos < len(text) and text[pos] in ws:
                pos += 1
            if pos < len(text) and text[pos] == "}" and raw is None and signature is None:
                break
            name, pos = decoder.raw_decode(text, pos)
            if not isinstance(name, str):
                raise ValueError("key")
            while pos < len(text) and text[pos] in ws:
                pos += 1
            if pos >= len(text) or text[pos] != ":":
                raise ValueError(":")
            pos += 1
            while pos < len(text) and text[pos] in ws:
                pos += 1
            start = pos
            value, pos = decoder.raw_decode(text, pos)
            if name == key:
                if raw is not None:
                    raise CollateralRejected(f"{key}: duplicate key in body")
                raw = text[start:pos]
            elif name == "signature":
                if signature is not None or not isinstance(value, str):
                    raise CollateralRejected(f"{key}: bad signature field")
                signature = value
            while pos < len(text) and text[pos] in ws:
                pos += 1
            if pos < len(text) and text[pos] == ",":
                pos += 1
                continue
            if pos < len(text) and text[pos] == "}":
                pos += 1
                break
            raise ValueError("separator")
    except ValueError:
        raise CollateralRejected(f"{key}: body is not well-formed JSON") from None
    if text[pos:].strip(ws):
        raise CollateralRejected(f"{key}: trailing data after the JSON body")
    if raw is None or signature is None:
        raise CollateralRejected(f"{key}: body lacks {key!r} or 'signature'")
    try:
        sig = bytes.fromhex(signature)
    except ValueError:
        raise CollateralRejected(f"{key}: signature is not hex") from None
    return raw.encode("utf-8"), sig


# --- parsed JSON -----------------------------------------------------------------------------


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


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _load_json(raw: bytes, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
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


# --- verification ----------------------------------------------------------------------------


def _verify_json_signature(
    key: ec.EllipticCurvePublicKey, raw: bytes, sig: bytes, where: str
) -> None:
    if len(sig) != 64:
        raise CollateralSignatureInvalid(f"{where}: signature must be 64 bytes (r||s)")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, raw, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CollateralSignatureInvalid(
            f"{where}: signature does not verify over the raw JSON"
        ) from None


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


def _check_crl_signed(
    crl: x509.CertificateRevocationList, issuer: x509.Certificate, where: str
) -> None:
    if crl.issuer != issuer.subject:
        raise CollateralMismatch(
            f"{where}: issued by {crl.issuer.rfc4514_string()}, "
            f"expected {issuer.subject.rfc4514_string()}"
        )
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CollateralSignatureInvalid(f"{where}: issuer key is not ECDSA")
    try:
        valid = crl.is_signature_valid(key)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise CollateralSignatureInvalid(f"{where}: signature does not verify")


def _check_crl_window(crl: x509.CertificateRevocationList, now: datetime, where: str) -> None:
    next_update = crl.next_update_utc
    if next_update is None:
        raise CollateralRejected(f"{where}: has no nextUpdate")
    if now < crl.last_update_utc:
        raise CollateralExpired(f"{where}: not valid before {crl.last_update_utc.isoformat()}")
    if now > next_update:
        raise CollateralExpired(f"{where}: stale since {next_update.isoformat()}")


def _check_dates(issue: datetime, next_update: datetime, now: datetime, where: str) -> None:
    if now < issue:
        raise CollateralExpired(f"{where}: issued in the future ({issue.isoformat()})")
    if now > next_update:
        raise CollateralExpired(f"{where}: stale since nextUpdate {next_update.isoformat()}")


@dataclass(frozen=True)
class VerifiedCollateral:
    """Collateral whose signatures and chains verified; time-dependent checks redone per use."""

    tcb_info: TcbInfo
    qe_identity: QeIdentity
    tcb_signer: SignerChain = field(repr=False)
    qe_signer: SignerChain = field(repr=False)
    root_crl: x509.CertificateRevocationList | None = field(default=None, compare=False, repr=False)
    pck_crl: x509.CertificateRevocationList | None = field(default=None, compare=False, repr=False)

    def check_time(self, now: datetime) -> None:
        _check_dates(self.tcb_info.issue_date, self.tcb_info.next_update, now, "tcb_info")
        _check_dates(self.qe_identity.issue_date, self.qe_identity.next_update, now, "qe_identity")
        if self.root_crl is not None:
            _check_crl_window(self.root_crl, now, "root_ca_crl")
        if self.pck_crl is not None:
            _check_crl_window(self.pck_crl, now, "pck_crl")

    def check_revocation(self, pck: PckChain) -> None:
        """PCK CA and TCB signers against the root CRL; PCK against the PCK CRL (if present)."""
        if self.root_crl is not None:
            for name, serial in (
                ("PCK CA", pck.issuer_serial),
                ("TCB signing certificate", self.tcb_signer.cert.serial_number),
                ("QE identity signing certificate", self.qe_signer.cert.serial_number),
            ):
                if self.root_crl.get_revoked_certificate_by_serial_number(serial) is not None:
                    raise CertificateRevoked(
                        f"{name} (serial {serial:x}) is revoked by the root CA CRL"
                    )
        if self.pck_crl is not None:
            _check_crl_signed(self.pck_crl, pck.issuer, "pck_crl")
            if self.pck_crl.get_revoked_certificate_by_serial_number(pck.pck_serial) is not None:
                raise CertificateRevoked(
                    f"PCK certificate (serial {pck.pck_serial:x}) is revoked by the PCK CRL"
                )


def _signer_chain(
    pem: bytes,
    anchors: TrustAnchors,
    now: datetime,
    where: str,
    cache: BoundedCache[bytes, object] | None,
) -> SignerChain:
    ders = split_pem_certificates(pem, where)
    return verify_signer_chain(ders, anchors, now, where, cache)


def verify_collateral(
    collateral: TdxCollateral,
    anchors: TrustAnchors,
    now: datetime,
    cache: BoundedCache[bytes, object] | None = None,
) -> VerifiedCollateral:
    """Chains to the pinned root, signatures over the raw JSON, CRL signatures, then dates."""
    check_aware(now)
    key = (
        b"tdx-collateral:"
        + hashlib.sha256(der_of(anchors.intel_root) + collateral.digest()).digest()
    )
    verified: VerifiedCollateral | None = None
    if cache is not None:
        hit = cache.get(key)
        if isinstance(hit, VerifiedCollateral):
            verified = hit
    if verified is None:
        tcb_signer = _signer_chain(
            collateral.tcb_info_issuer_chain, anchors, now, "tcb_info_issuer_chain", cache
        )
        _verify_json_signature(
            tcb_signer.public_key, collateral.tcb_info, collateral.tcb_info_signature, "tcb_info"
        )
        qe_signer = _signer_chain(
            collateral.qe_identity_issuer_chain, anchors, now, "qe_identity_issuer_chain", cache
        )
        _verify_json_signature(
            qe_signer.public_key,
            collateral.qe_identity,
            collateral.qe_identity_signature,
            "qe_identity",
        )
        tcb_info = parse_tcb_info(collateral.tcb_info)
        qe_identity = parse_qe_identity(collateral.qe_identity)
        root_crl = pck_crl = None
        if collateral.root_ca_crl is not None:
            root_crl = _load_crl(collateral.root_ca_crl, "root_ca_crl")
            _check_crl_signed(root_crl, anchors.intel_root, "root_ca_crl")
        if collateral.pck_crl is not None:
            # Its signature is checked against the PCK's issuer when the PCK is known.
            pck_crl = _load_crl(collateral.pck_crl, "pck_crl")
        verified = VerifiedCollateral(
            tcb_info=tcb_info,
            qe_identity=qe_identity,
            tcb_signer=tcb_signer,
            qe_signer=qe_signer,
            root_crl=root_crl,
            pck_crl=pck_crl,
        )
        if cache is not None:
            cache.put(key, verified)
    else:
        for chain in (verified.tcb_signer, verified.qe_signer):
            for name, window in chain.windows:
                check_window(window, now, name)
    verified.check_time(now)
    return verified


# --- TCB evaluation --------------------------------------------------------------------------


@dataclass(frozen=True)
class TcbEvaluation:
    status: str
    platform_status: str
    module_status: str | None
    qe_status: str
    advisory_ids: tuple[str, ...]
    tcb_level: TcbLevel


def _masked_equal(value: bytes, expected: bytes, mask: bytes) -> bool:
    return all((v & m) == (e & m) for v, e, m in zip(value, expected, mask, strict=True))


def _find_module_identity(tcb_info: TcbInfo, version: int) -> TdxModuleIdentity:
    wanted = f"TDX_{version:02X}"
    for identity in tcb_info.tdx_module_identities:
        if identity.id.upper() == wanted:
            return identity
    raise TcbStatusRejected(
        f"tcb_info has no TDX module identity {wanted} for TEE_TCB_SVN[1]={version}"
    )


def _first_isv_level(levels: tuple[IsvTcbLevel, ...], svn: int) -> IsvTcbLevel | None:
    for level in levels:
        if svn >= level.isv_svn:
            return level
    return None


def converge(platform: str, components: list[str]) -> str:
    """Intel's convergence: an OutOfDate component downgrades, a Revoked one revokes."""
    status = platform
    if "OutOfDate" in components:
        if platform in ("UpToDate", "SWHardeningNeeded"):
            status = "OutOfDate"
        elif platform in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            status = "OutOfDateConfigurationNeeded"
    if "Revoked" in components:
        status = "Revoked"
    return status


def check_qe_identity(qe_identity: QeIdentity, qe_report: QeReport) -> IsvTcbLevel:
    """MRSIGNER, ISVPRODID, masked MISCSELECT/ATTRIBUTES, then the QE's ISVSVN level."""
    if qe_report.mr_signer != qe_identity.mr_signer:
        raise QeIdentityMismatch("qe_report.mr_signer: not the MRSIGNER of Intel's TD QE identity")
    if qe_report.isv_prod_id != qe_identity.isv_prod_id:
        raise QeIdentityMismatch(
            f"qe_report.isv_prod_id: {qe_report.isv_prod_id}, "
            f"QE identity says {qe_identity.isv_prod_id}"
        )
    if not _masked_equal(qe_report.miscselect, qe_identity.miscselect, qe_identity.miscselect_mask):
        raise QeIdentityMismatch(
            "qe_report.miscselect: does not match the QE identity under its mask"
        )
    if not _masked_equal(qe_report.attributes, qe_identity.attributes, qe_identity.attributes_mask):
        raise QeIdentityMismatch(
            "qe_report.attributes: do not match the QE identity under its mask"
        )
    level = _first_isv_level(qe_identity.tcb_levels, qe_report.isv_svn)
    if level is None:
        raise TcbStatusRejected(
            f"QE ISVSVN {qe_report.isv_svn} is below every QE identity TCB level"
        )
    if level.status not in _QE_STATUSES:
        raise TcbStatusRejected(f"qe_identity: unrecognised TCB status {level.status!r}")
    return level


def evaluate_tcb(
    collateral: VerifiedCollateral,
    body: TdReportBody,
    qe_report: QeReport,
    extensions: SgxExtensions,
) -> TcbEvaluation:
    """Platform, TDX module and QE statuses from verified collateral, converged to one status."""
    tcb_info = collateral.tcb_info
    if extensions.fmspc != tcb_info.fmspc:
        raise CollateralMismatch(
            f"tcb_info.fmspc {tcb_info.fmspc.hex()} is not the PCK's FMSPC {extensions.fmspc.hex()}"
        )
    if extensions.pce_id != tcb_info.pce_id:
        raise CollateralMismatch(
            f"tcb_info.pceId {tcb_info.pce_id.hex()} is not the PCK's PCE-ID "
            f"{extensions.pce_id.hex()}"
        )
    tee = body.tee_tcb_svn
    module_version = tee[1]
    module = (
        _find_module_identity(tcb_info, module_version) if module_version else tcb_info.tdx_module
    )
    if body.mr_signer_seam != module.mr_signer:
        raise TdxModuleMismatch(
            "body.mr_signer_seam: not the MRSIGNER of Intel's TDX module identity"
        )
    if not _masked_equal(body.seam_attributes, module.attributes, module.attributes_mask):
        raise TdxModuleMismatch(
            "body.seam_attributes: do not match the TDX module identity under its mask"
        )

    start = 2 if module_version else 0
    pck = extensions.tcb
    chosen: TcbLevel | None = None
    for level in tcb_info.tcb_levels:
        if any(
            have < need for have, need in zip(pck.components, level.sgx_components, strict=True)
        ):
            continue
        if pck.pce_svn < level.pce_svn:
            continue
        if any(tee[i] < level.tdx_components[i] for i in range(start, 16)):
            continue
        chosen = level
        break
    if chosen is None:
        raise TcbStatusRejected(
            "no TCB level matches: the platform (PCK SGX TCB, PCESVN, TEE_TCB_SVN) is below every "
            "level Intel publishes for this FMSPC"
        )
    if chosen.status not in TDX_TCB_STATUSES:
        raise TcbStatusRejected(f"tcb_info: unrecognised TCB status {chosen.status!r}")

    components: list[str] = []
    advisories = list(chosen.advisory_ids)
    module_status: str | None = None
    if module_version:
        mlevel = _first_isv_level(module.tcb_levels, tee[0])
        if mlevel is None:
            raise TcbStatusRejected(
                f"TDX module SVN {tee[0]} is below every level of identity {module.id}"
            )
        if mlevel.status not in _MODULE_STATUSES:
            raise TcbStatusRejected(
                f"tdx module identity: unrecognised TCB status {mlevel.status!r}"
            )
        module_status = mlevel.status
        components.append(mlevel.status)
        advisories.extend(mlevel.advisory_ids)

    qlevel = check_qe_identity(collateral.qe_identity, qe_report)
    components.append(qlevel.status)
    advisories.extend(qlevel.advisory_ids)

    return TcbEvaluation(
        status=converge(chosen.status, components),
        platform_status=chosen.status,
        module_status=module_status,
        qe_status=qlevel.status,
        advisory_ids=tuple(dict.fromkeys(advisories)),
        tcb_level=chosen,
    )
