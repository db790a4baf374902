"""Intel TDX: quote parsing, PCK chain, collateral, verification and policy.

The mock hierarchy lives in :mod:`attestation.mock.tdx` and is imported explicitly.
"""

from attestation.tdx.collateral_model import TdxCollateral, load_collateral_json
from attestation.tdx.quote import TdxQuote, parse_quote
from attestation.tdx.verify import MissingCollateral, TdxVerified, verify_tdx

__all__ = [
    "MissingCollateral",
    "TdxCollateral",
    "TdxQuote",
    "TdxVerified",
    "load_collateral_json",
    "parse_quote",
    "verify_tdx",
]
