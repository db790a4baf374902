"""TDX collateral: TCB info, QE identity and CRLs, verified over their exact signed bytes.

This module re-exports the four parts so existing imports keep working:
:mod:`attestation.tdx.collateral_model` (the raw value and its encodings),
:mod:`attestation.tdx.collateral_parse` (strict JSON/CRL parsing),
:mod:`attestation.tdx.collateral_verify` (signatures, chains, dates, revocation) and
:mod:`attestation.tdx.tcb` (TCB level evaluation and status convergence).
"""

from __future__ import annotations

from attestation.tdx.collateral_model import (
    MAX_CHAIN_PEM_SIZE,
    MAX_CRL_SIZE,
    MAX_JSON_SIZE,
    QE_IDENTITY_ID,
    QE_IDENTITY_VERSIONS,
    TCB_INFO_ID,
    TCB_INFO_VERSIONS,
    CollateralMismatch,
    CollateralSignatureInvalid,
    QeIdentityMismatch,
    TdxCollateral,
    TdxModuleMismatch,
    extract_signed_json,
    load_collateral_json,
)
from attestation.tdx.collateral_parse import (
    IsvTcbLevel,
    QeIdentity,
    TcbInfo,
    TcbLevel,
    TdxModuleIdentity,
    _load_json,
    parse_crl,
    parse_qe_identity,
    parse_tcb_info,
)
from attestation.tdx.collateral_verify import VerifiedCollateral, verify_collateral
from attestation.tdx.tcb import TcbEvaluation, check_qe_identity, converge, evaluate_tcb

__all__ = [
    "MAX_CHAIN_PEM_SIZE",
    "MAX_CRL_SIZE",
    "MAX_JSON_SIZE",
    "QE_IDENTITY_ID",
    "QE_IDENTITY_VERSIONS",
    "TCB_INFO_ID",
    "TCB_INFO_VERSIONS",
    "CollateralMismatch",
    "CollateralSignatureInvalid",
    "IsvTcbLevel",
    "QeIdentity",
    "QeIdentityMismatch",
    "TcbEvaluation",
    "TcbInfo",
    "TcbLevel",
    "TdxCollateral",
    "TdxModuleIdentity",
    "TdxModuleMismatch",
    "VerifiedCollateral",
    "_load_json",
    "check_qe_identity",
    "converge",
    "evaluate_tcb",
    "extract_signed_json",
    "load_collateral_json",
    "parse_crl",
    "parse_qe_identity",
    "parse_tcb_info",
    "verify_collateral",
]
