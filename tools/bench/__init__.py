"""The end-to-end benchmark harness (``hack/bench``) and the in-process measurements it shares
with the pytest benchmarks in tests/bench."""
