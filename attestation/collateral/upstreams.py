"""The vendors' public collateral services: the defaults of every fetcher and of the CLI.

Kept apart from the fetchers so that showing them (``--help``) loads no HTTP client and no metrics.
"""

from __future__ import annotations

AMD_KDS = "https://kdsintf.amd.com"
"""AMD Key Distribution Service (VCEKs, certificate chains)."""
INTEL_PCS = "https://api.trustedservices.intel.com"
"""Intel Provisioning Certification Service v4 (TCB info, QE identity, CRLs)."""
