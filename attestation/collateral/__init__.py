"""Vendor collateral fetched, cached and refreshed, for verification that never fetches.

* :mod:`.cache` — the on-disk directory (``--collateral-dir``) that verification reads: VCEKs by
  (product, chip ID, reported TCB), TDX TCB info by FMSPC, QE identity, PCK CRL by CA, root CRL.
* :mod:`.fetch` — one upstream HTTP client (httpx): bounded retries with injected back-off,
  429 + Retry-After, 404 remembered, time-outs, truncated bodies, single flight per URL.
* :mod:`.kds` / :mod:`.pcs` — AMD KDS and Intel PCS v4 / PCCS endpoints and response checks.
* :mod:`.service` — keeps the directory warm: refresh before ``nextUpdate``, serve a stale copy
  within the configured grace when upstream fails, fail closed past it.

Only :mod:`.cache`, :mod:`.errors` and :mod:`.keys` are imported by verification; the fetching
modules (and httpx) load only where collateral is fetched.
"""
