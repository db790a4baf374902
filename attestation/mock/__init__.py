"""The software TEE: mock AMD and Intel hierarchies producing byte-exact SNP reports and TDX quotes.

Imported explicitly (``attestation.mock.snp``, ``attestation.mock.tdx``); nothing in the
verification path imports it, and its roots are trusted only via ``--trust-anchors mock:DIR``.
"""
