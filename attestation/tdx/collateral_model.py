"""TDX collateral as received: the value type, its encodings and the typed collateral errors.

The raw bytes (signed JSON text, r||s signatures, PEM issuer chains, DER CRLs) are kept exactly
as Intel PCS / a PCCS served them and never re-serialised, because the signatures cover them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attestation.errors import (
    CollateralRejected,
    MalformedEvidence,
    SizeLimitExceeded,
    TcbStatusRejected,
)

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
