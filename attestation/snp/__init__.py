"""AMD SEV-SNP: report parsing, VCEK/VLEK chains, binding, signature and reference values."""

from attestation.snp.report import SnpReport, parse_report
from attestation.snp.verify import SnpVerified, verify_snp

__all__ = ["SnpReport", "SnpVerified", "parse_report", "verify_snp"]
