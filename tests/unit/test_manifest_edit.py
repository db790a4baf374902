"""Building and editing manifests: every result parses, errors name the field, nothing is guessed."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519

from coordinator.core import manifest_edit as edit
from coordinator.core.manifest import Manifest

REPO = Path(__file__).resolve().parents[2]
COORD = b"coordinator policy\n"
WEB = b"web policy\n"
MEAS = "11" * 48
SNP = {"ProductName": "Genoa", "TrustedMeasurement": MEAS}
TDX = {"MrTd": "22" * 48}


def pem_private(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def pem_public(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def doc(raw: bytes) -> dict[str, Any]:
    out = json.loads(raw)
    assert isinstance(out, dict)
    return out


# --- new / layout ------------------------------------------------------------------------------


def test_new_manifest_is_valid_and_shows_every_field() -> None:
    raw = edit.new_manifest(COORD, sans=["coordinator"])
    m = Manifest.parse(raw)
    assert m.coordinator_policy_hash.hex() == h(COORD)
    assert list(doc(raw)) == [
        "Policies",
        "ReferenceValues",
        "WorkloadOwnerKeyDigests",
        "SeedshareOwnerPubKeys",
    ]
    assert doc(raw)["Policies"][h(COORD)] == {"SANs": ["coordinator"], "Role": "coordinator"}
    assert raw.endswith(b"}\n") and b'\n  "Policies": {\n' in raw  # stable, pretty layout
    names = {f.name for f in edit.findings(m)}
    assert names == {edit.IMMUTABLE, edit.UNRECOVERABLE, edit.ADMITS_NOTHING}


def test_new_manifest_rejects_bad_san_naming_the_field() -> None:
    with pytest.raises(edit.ManifestEditError) as info:
        edit.new_manifest(COORD, sans=["ok", "not ok"])
    assert info.value.field == f"Policies.{h(COORD)}.SANs[1]"
    assert info.value.reason == "invalid_manifest"


def test_render_keeps_the_coordinator_first_and_refuses_unknown_fields() -> None:
    raw = edit.add_policy(edit.new_manifest(COORD), WEB, sans=["web"]).raw
    d = doc(raw)
    reordered = {"SeedshareOwnerPubKeys": [], "Policies": dict(reversed(d["Policies"].items()))}
    reordered["ReferenceValues"] = d["ReferenceValues"]
    reordered["WorkloadOwnerKeyDigests"] = []
    assert edit.render(reordered) == edit.render(d)
    assert list(doc(edit.render(reordered))["Policies"]) == [h(COORD), h(WEB)]
    with pytest.raises(edit.ManifestEditError, match="Extra: unknown top-level field"):
        edit.render({**d, "Extra": 1})


def test_edits_refuse_an_invalid_input_manifest() -> None:
    with pytest.raises(edit.ManifestEditError) as info:
        edit.add_policy(b'{"Policies": {}, "ReferenceValues": {}}', WEB)
    assert info.value.field == "Policies"


# --- policies ----------------------------------------------------------------------------------


def test_add_policy_adds_then_replaces_its_entry() -> None:
    raw = edit.new_manifest(COORD)
    first = edit.add_policy(raw, WEB, sans=["web", "10.0.0.1"], secret_id="web")
    assert first.changed and first.what == f"added policy {h(WEB)}"
    assert doc(first.raw)["Policies"][h(WEB)] == {
        "SANs": ["web", "10.0.0.1"],
        "WorkloadSecretID": "web",
    }
    again = edit.add_policy(first.raw, WEB, sans=["web", "10.0.0.1"], secret_id="web")
    assert not again.changed and again.raw == first.raw
    second = edit.add_policy(first.raw, WEB, sans=["web2"])
    assert second.what.startswith("replaced policy")
    assert doc(second.raw)["Policies"][h(WEB)] == {"SANs": ["web2"]}


def test_second_coordinator_needs_explicit_replacement() -> None:
    raw = edit.add_policy(edit.new_manifest(COORD), WEB).raw
    new_coord = b"coordinator v2\n"
    with pytest.raises(edit.CoordinatorConflict) as info:
        edit.add_policy(raw, new_coord, coordinator=True)
    assert info.value.field == f"Policies.{h(COORD)}.Role"
    assert info.value.reason == "coordinator_policy_conflict"
    out = edit.add_policy(raw, new_coord, coordinator=True, replace_coordinator=True).raw
    m = Manifest.parse(out)
    assert m.coordinator_policy_hash.hex() == h(new_coord)
    assert list(m.policies) == [h(new_coord), h(WEB)]  # the old coordinator entry is gone


def test_coordinator_policy_keeps_its_role() -> None:
    raw = edit.new_manifest(COORD)
    with pytest.raises(edit.ManifestEditError, match="keeps the coordinator role"):
        edit.add_policy(raw, COORD, sans=["x"])
    # Re-adding it as coordinator updates its SANs.
    out = edit.add_policy(raw, COORD, sans=["c"], coordinator=True).raw
    assert doc(out)["Policies"][h(COORD)]["SANs"] == ["c"]


def test_remove_policy() -> None:
    raw = edit.add_policy(edit.new_manifest(COORD), WEB).raw
    out = edit.remove_policy(raw, h(WEB).upper()).raw
    assert list(Manifest.parse(out).policies) == [h(COORD)]
    with pytest.raises(edit.ManifestEditError, match="not in the manifest"):
        edit.remove_policy(out, h(WEB))
    with pytest.raises(edit.ManifestEditError, match="cannot be removed"):
        edit.remove_policy(out, h(COORD))
    with pytest.raises(edit.ManifestEditError, match="64-hex"):
        edit.remove_policy(out, "web")


# --- reference values --------------------------------------------------------------------------


def test_reference_input_shapes() -> None:
    assert edit.reference_input(SNP, "snp", "f") == {"snp": [SNP], "tdx": []}
    assert edit.reference_input([TDX, TDX], "tdx", "f") == {"snp": [], "tdx": [TDX, TDX]}
    assert edit.reference_input({"snp": [SNP]}, None, "f") == {"snp": [SNP], "tdx": []}
    with pytest.raises(edit.ManifestEditError) as info:
        edit.reference_input({**SNP, "TrustedMeasurement": "11"}, "snp", "snp.json")
    assert info.value.field == "snp.json.snp[0].TrustedMeasurement"
    with pytest.raises(edit.ManifestEditError, match="unknown field"):
        edit.reference_input({"sev": []}, None, "f")
    with pytest.raises(edit.ManifestEditError):
        edit.reference_input(SNP, "sgx", "f")


def test_add_references_appends_once_and_replaces_on_request() -> None:
    raw = edit.new_manifest(COORD)
    values = edit.reference_input({"snp": [SNP], "tdx": [TDX]}, None, "f")
    first = edit.add_references(raw, values)
    assert first.changed and first.what == "2 reference entries added"
    again = edit.add_references(first.raw, values)
    assert not again.changed
    other = {**SNP, "TrustedMeasurement": "33" * 48}
    both = edit.add_references(first.raw, {"snp": [other]}).raw
    assert len(Manifest.parse(both).reference_values.snp) == 2
    replaced = Manifest.parse(edit.add_references(both, {"snp": [other]}, replace=True).raw)
    assert [r.measurement.hex() for r in replaced.reference_values.snp] == ["33" * 48]
    assert len(replaced.reference_values.tdx) == 1  # the other TEE is untouched
    assert edit.ADMITS_NOTHING not in {f.name for f in edit.findings(replaced)}


# --- owners ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate,
    ],
)
def test_owner_digest_of_private_and_public_pem_is_the_spki_sha256(make: Any) -> None:
    key = make()
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert edit.owner_key_digest(pem_private(key)) == h(spki)
    assert edit.owner_key_digest(pem_public(key)) == h(spki)
    # What the coordinator checks an update against.
    raw = edit.add_owner_digests(edit.new_manifest(COORD), [h(spki)]).raw
    assert Manifest.parse(raw).is_owner(spki)


def test_seedshare_hex_is_pkcs1_and_accepted_by_the_manifest(rsa_key: rsa.RSAPrivateKey) -> None:
    value = edit.seedshare_public_key_hex(pem_private(rsa_key))
    assert value == edit.seedshare_public_key_hex(pem_public(rsa_key))
    der = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )
    assert value == der.hex()
    raw = edit.add_seedshare_owners(edit.new_manifest(COORD), [value]).raw
    m = Manifest.parse(raw)
    assert m.is_seedshare_owner(der)
    assert edit.UNRECOVERABLE not in {f.name for f in edit.findings(m)}


def test_key_errors_are_typed(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(edit.InvalidKeyInput) as info:
        edit.owner_key_digest(b"not a key", "k.pem")
    assert info.value.field == "k.pem" and info.value.reason == "invalid_key"
    with pytest.raises(edit.InvalidKeyInput, match="must be RSA"):
        edit.seedshare_public_key_hex(pem_private(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(edit.InvalidKeyInput, match="EC, Ed25519 or RSA"):
        edit.owner_key_digest(pem_private(x25519.X25519PrivateKey.generate()))
    small = rsa.generate_private_key(65537, 1024)
    with pytest.raises(edit.InvalidKeyInput, match=r"2048\.\.8192"):
        edit.seedshare_public_key_hex(pem_private(small))
    encrypted = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(edit.InvalidKeyInput, match="encrypted"):
        edit.owner_key_digest(encrypted)


def test_owner_lists_deduplicate_and_validate() -> None:
    raw = edit.new_manifest(COORD)
    digest = "ab" * 32
    first = edit.add_owner_digests(raw, [digest.upper(), digest])
    assert doc(first.raw)["WorkloadOwnerKeyDigests"] == [digest]
    assert first.what == "1 owner added"
    assert not edit.add_owner_digests(first.raw, [digest]).changed
    with pytest.raises(edit.ManifestEditError, match="64 hex"):
        edit.add_owner_digests(raw, ["abc"])
    with pytest.raises(edit.ManifestEditError) as info:
        edit.add_seedshare_owners(raw, ["00ff"])
    assert info.value.field == "SeedshareOwnerPubKeys[0]"


def test_owner_limit_is_the_parsers() -> None:
    raw = edit.new_manifest(COORD)
    with pytest.raises(edit.ManifestEditError, match="more than 100"):
        edit.add_owner_digests(raw, [f"{i:064x}" for i in range(101)])


# --- findings and describe -----------------------------------------------------------------------


def test_findings_name_the_consequences(rsa_key: rsa.RSAPrivateKey) -> None:
    raw = edit.new_manifest(COORD)
    by_name = {f.name: f for f in edit.findings(Manifest.parse(raw))}
    assert by_name[edit.IMMUTABLE].field == "WorkloadOwnerKeyDigests"
    assert "never be updated" in by_name[edit.IMMUTABLE].consequence
    assert by_name[edit.UNRECOVERABLE].field == "SeedshareOwnerPubKeys"
    assert "never be recovered" in by_name[edit.UNRECOVERABLE].consequence
    raw = edit.add_owner_digests(raw, ["ab" * 32]).raw
    raw = edit.add_seedshare_owners(raw, [edit.seedshare_public_key_hex(pem_private(rsa_key))]).raw
    raw = edit.add_references(raw, {"snp": [SNP]}).raw
    assert edit.findings(Manifest.parse(raw)) == ()


def test_describe(rsa_key: rsa.RSAPrivateKey) -> None:
    raw = edit.add_policy(edit.new_manifest(COORD), WEB, sans=["web"], secret_id="w").raw
    raw = edit.add_references(raw, {"snp": [SNP], "tdx": [TDX]}).raw
    raw = edit.add_seedshare_owners(raw, [edit.seedshare_public_key_hex(pem_private(rsa_key))]).raw
    info = edit.describe(Manifest.parse(raw))
    json.dumps(info)  # JSON-ready
    assert info["sha256"] == h(raw)
    assert [p["sha256"] for p in info["policies"]] == [h(COORD), h(WEB)]
    assert info["policies"][1] == {
        "sha256": h(WEB),
        "role": "",
        "sans": ["web"],
        "workload_secret_id": "w",
    }
    assert [(r["tee"], r["index"]) for r in info["reference_values"]] == [("snp", 0), ("tdx", 0)]
    assert info["reference_values"][0]["measurement"] == MEAS
    assert info["seedshare_owners"][0]["bits"] == 2048
    assert [f["name"] for f in info["findings"]] == [edit.IMMUTABLE]


# --- the documented example ----------------------------------------------------------------------


def test_documented_manifest_example_is_valid() -> None:
    """The complete example in the README parses, uses every field of
    the reference values, and every field name it uses is documented in the field table."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(
        r"<!-- manifest-example:start -->\s*```json\n(.*?)```\s*<!-- manifest-example:end -->",
        text,
        re.S,
    )
    assert block is not None
    m = Manifest.parse(block.group(1).encode())
    assert m.reference_values.snp and m.reference_values.tdx
    example = json.loads(block.group(1))
    snp, tdx = example["ReferenceValues"]["snp"][0], example["ReferenceValues"]["tdx"][0]
    from attestation import reference

    assert set(snp) == {
        "ProductName",
        "TrustedMeasurement",
        "MinimumTCB",
        "MinimumLaunchTCB",
        "GuestPolicy",
        "PlatformInfo",
        "AllowedChipIDs",
        "AllowVLEK",
        "AllowedVMPLs",
    }
    assert set(snp["GuestPolicy"]) == {
        "ABIMajor",
        "ABIMinor",
        *reference.SNP_POLICY_PERMISSIVE,
        *reference.SNP_POLICY_RESTRICTIVE,
    }
    assert set(snp["PlatformInfo"]) == set(reference.SNP_PLATFORM_BITS)
    assert {"MrTd", "MrSeam", "Rtmrs", "Xfam", "TdAttributes", "AcceptedTcbStatuses"} <= set(tdx)
    # Every field name of the reference and the manifest is documented in the field table.
    for name in [*snp, *tdx, "SANs", "WorkloadSecretID", "Role", *example]:
        assert f"`{name}`" in text or f".{name}`" in text, name


def test_text_that_is_not_utf8_is_refused() -> None:
    """A command-line argument decoded with surrogateescape cannot go into the manifest."""
    with pytest.raises(edit.ManifestEditError, match="not valid UTF-8"):
        edit.add_policy(edit.new_manifest(COORD), WEB, secret_id="bad\udcff")
