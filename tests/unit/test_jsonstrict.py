"""One duplicate-key hook for every JSON document that carries trust."""

from __future__ import annotations

import json

import pytest

from attestation.jsonstrict import DuplicateKey, reject_duplicates


def test_plain_objects_pass() -> None:
    doc = json.loads('{"a": 1, "b": {"c": [{"d": 2}]}}', object_pairs_hook=reject_duplicates)
    assert doc == {"a": 1, "b": {"c": [{"d": 2}]}}


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 2}',
        '{"x": {"a": 1, "a": 1}}',
        '[{"k": 0}, {"k": 1, "k": 2}]',
        '{"a":1,"\\u0061":2}',
    ],
)
def test_duplicates_at_any_depth_are_refused(text: str) -> None:
    with pytest.raises(DuplicateKey) as err:
        json.loads(text, object_pairs_hook=reject_duplicates)
    assert err.value.reason == "duplicate_key"
    assert isinstance(err.value, ValueError)
    assert err.value.key in ("a", "k")


def test_long_keys_are_cut_in_the_message() -> None:
    key = "k" * 1000
    with pytest.raises(DuplicateKey) as err:
        reject_duplicates([(key, 1), (key, 2)])
    assert err.value.key == key and len(str(err.value)) < 100


def test_every_trusted_document_uses_it() -> None:
    """Manifests, seed-share documents and TDX collateral all refuse a repeated key."""
    from attestation.errors import CollateralRejected
    from attestation.tdx.collateral_parse import _load_json
    from coordinator.core.manifest import Manifest, ManifestError
    from coordinator.core.seedengine import SeedEngineError, SeedShareDocument

    with pytest.raises(ManifestError, match="duplicate key 'Policies'"):
        Manifest.parse(b'{"Policies": {}, "Policies": {}}')
    with pytest.raises(SeedEngineError, match="duplicate key 'Salt'"):
        SeedShareDocument.from_json(b'{"Salt": "00", "Salt": "00", "SeedShares": []}')
    with pytest.raises(CollateralRejected, match="duplicate key 'a'"):
        _load_json(b'{"a": 1, "a": 2}', "tcbInfo")
