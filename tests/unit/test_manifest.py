"""Manifest parsing: exact bytes kept, strict validation with field paths."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core.manifest import (
    MAX_MANIFEST_BYTES,
    MAX_POLICIES,
    Manifest,
    ManifestError,
    PolicyEntry,
    classify_san,
)

COORD = "c0" * 32
WEB = "a1" * 32
DB = "b2" * 32
MEAS = "11" * 48


@pytest.fixture(scope="module")
def rsa_keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(65537, 2048) for _ in range(2)]


def pkcs1_hex(key: rsa.RSAPrivateKey) -> str:
    pub = key.public_key()
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1).hex()


def base_doc() -> dict[str, Any]:
    return {
        "Policies": {
            COORD: {"SANs": ["coordinator"], "WorkloadSecretID": "", "Role": "coordinator"},
            WEB: {"SANs": ["web", "*", "10.0.0.1", "spiffe://x/y"], "WorkloadSecretID": "web"},
            DB: {},
        },
        "ReferenceValues": {
            "snp": [{"ProductName": "Milan", "TrustedMeasurement": MEAS}],
            "tdx": [{"MrTd": MEAS}],
        },
        "WorkloadOwnerKeyDigests": ["ab" * 32],
        "SeedshareOwnerPubKeys": [],
    }


def enc(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# --- positive --------------------------------------------------------------------------------


def test_parse_valid_manifest(rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    doc = base_doc()
    doc["SeedshareOwnerPubKeys"] = [pkcs1_hex(k) for k in rsa_keys]
    raw = enc(doc)
    m = Manifest.parse(raw)
    assert m.raw == raw
    assert m.digest == hashlib.sha256(raw).digest()
    assert m.hex_digest == hashlib.sha256(raw).hexdigest()
    assert m.coordinator_policy_hash == bytes.fromhex(COORD)
    assert m.policies[WEB] == PolicyEntry(
        sans=("web", "*", "10.0.0.1", "spiffe://x/y"), workload_secret_id="web", role=""
    )
    assert m.policies[DB] == PolicyEntry(sans=(), workload_secret_id="", role="")
    assert m.policy(bytes.fromhex(WEB)) is m.policies[WEB]
    assert m.policy(b"\x00" * 32) is None
    assert m.policy(bytes.fromhex(WEB)[:31]) is None
    assert m.reference_values.snp[0].product == "Milan"
    assert m.reference_values.tdx[0].mr_td == bytes.fromhex(MEAS)
    assert m.owner_key_digests == (b"\xab" * 32,)
    assert len(m.seedshare_owner_keys) == 2
    assert m.seedshare_owner_keys_der == tuple(bytes.fromhex(pkcs1_hex(k)) for k in rsa_keys)
    assert m.is_seedshare_owner(bytes.fromhex(pkcs1_hex(rsa_keys[1])))
    assert not m.is_seedshare_owner(b"\x30\x00")


def test_policies_mapping_is_read_only() -> None:
    m = Manifest.parse(enc(base_doc()))
    with pytest.raises(TypeError):
        m.policies[WEB] = PolicyEntry((), "", "")  # type: ignore[index]


def test_is_owner() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    doc = base_doc()
    doc["WorkloadOwnerKeyDigests"] = [hashlib.sha256(spki).hexdigest()]
    m = Manifest.parse(enc(doc))
    assert m.is_owner(spki)
    assert not m.is_owner(spki + b"\x00")


def test_optional_top_level_keys() -> None:
    doc = base_doc()
    del doc["WorkloadOwnerKeyDigests"]
    del doc["SeedshareOwnerPubKeys"]
    m = Manifest.parse(enc(doc))
    assert m.owner_key_digests == ()
    assert m.seedshare_owner_keys == ()
    assert m.seedshare_owner_keys_der == ()


def test_whitespace_changes_digest_and_bytes_are_kept() -> None:
    doc = base_doc()
    compact = json.dumps(doc, separators=(",", ":")).encode()
    pretty = json.dumps(doc, indent=2).encode()
    a, b = Manifest.parse(compact), Manifest.parse(pretty)
    assert a.raw == compact and b.raw == pretty
    assert a.digest != b.digest
    assert a != b
    assert a.policies == b.policies
    assert Manifest.parse(compact) == a
    assert hash(Manifest.parse(compact)) == hash(a)


def test_key_order_is_not_normalised() -> None:
    raw1 = b'{"Policies":{"' + COORD.encode() + b'":{"Role":"coordinator"}},"ReferenceValues":{}}'
    raw2 = b'{"ReferenceValues":{},"Policies":{"' + COORD.encode() + b'":{"Role":"coordinator"}}}'
    assert Manifest.parse(raw1).digest != Manifest.parse(raw2).digest


def test_repr_is_short() -> None:
    m = Manifest.parse(enc(base_doc()))
    assert m.hex_digest[:16] in repr(m)
    assert len(repr(m)) < 80


def test_empty_reference_values_admit_nothing_but_parse() -> None:
    doc = base_doc()
    doc["ReferenceValues"] = {}
    m = Manifest.parse(enc(doc))
    assert m.reference_values.snp == () and m.reference_values.tdx == ()


def test_max_policies_accepted() -> None:
    doc = base_doc()
    doc["Policies"] = {f"{i:064x}": {} for i in range(MAX_POLICIES - 1)}
    doc["Policies"][COORD] = {"Role": "coordinator"}
    assert len(Manifest.parse(enc(doc)).policies) == MAX_POLICIES


# --- negative: raw JSON ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"null", "not null"),
        (b"[]", "JSON object"),
        (b'"x"', "JSON object"),
        (b"1", "JSON object"),
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"\xef\xbb\xbf{}", "byte order mark"),
        (b'{"Policies": NaN}', "NaN"),
        (b'{"Policies": Infinity}', "Infinity"),
        (b'{"Policies": -Infinity}', "-Infinity"),
        (b'{"Policies": {}, "Policies": {}}', "duplicate key 'Policies'"),
        (b'{"Policies": {"a": {"x": 1, "x": 2}}}', "duplicate key 'x'"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a": ' + b"1" * 5000 + b"}", "not valid JSON"),
        (b"{} {}", "not valid JSON"),
    ],
)
def test_rejects_bad_json(raw: bytes, why: str) -> None:
    with pytest.raises(ManifestError) as e:
        Manifest.parse(raw)
    assert e.value.path == "$"
    assert why in e.value.why
    assert str(e.value) == f"$: {e.value.why}"


def test_rejects_oversized_manifest() -> None:
    raw = enc(base_doc())
    raw = raw[:-1] + b" " * (MAX_MANIFEST_BYTES - len(raw) + 1) + b"}"
    with pytest.raises(ManifestError) as e:
        Manifest.parse(raw)
    assert (e.value.path, e.value.why) == ("$", f"larger than {MAX_MANIFEST_BYTES} bytes")


# --- negative: structure ---------------------------------------------------------------------


def _mut(fn: Any) -> bytes:
    doc = copy.deepcopy(base_doc())
    fn(doc)
    return enc(doc)


def _set(path: list[Any], value: Any) -> Any:
    def fn(doc: Any) -> None:
        target = doc
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value

    return fn


def _del(path: list[Any]) -> Any:
    def fn(doc: Any) -> None:
        target = doc
        for p in path[:-1]:
            target = target[p]
        del target[path[-1]]

    return fn


def _add_policy(key: str, value: Any) -> Any:
    return _set(["Policies", key], value)


P_WEB = f"Policies.{WEB}"
CASES: list[tuple[str, Any, str, str]] = [
    ("unknown top-level", _set(["Extra"], 1), "Extra", "unknown top-level field"),
    ("missing Policies", _del(["Policies"]), "Policies", "required"),
    ("missing ReferenceValues", _del(["ReferenceValues"]), "ReferenceValues", "required"),
    ("Policies array", _set(["Policies"], []), "Policies", "must be a JSON object"),
    ("Policies null", _set(["Policies"], None), "Policies", "must be a JSON object"),
    ("Policies empty", _set(["Policies"], {}), "Policies", "must contain at least"),
    ("policy key short", _add_policy("ab" * 31, {}), f"Policies.{'ab' * 31}", "64 lowercase hex"),
    ("policy key upper", _add_policy("AB" * 32, {}), f"Policies.{'AB' * 32}", "lowercase"),
    ("policy key non-hex", _add_policy("zz" * 32, {}), f"Policies.{'zz' * 32}", "64 lowercase"),
    ("policy key long", _add_policy("ab" * 33, {}), f"Policies.{'ab' * 33}", "64 lowercase"),
    ("policy not object", _set(["Policies", WEB], []), P_WEB, "must be a JSON object"),
    ("policy unknown field", _set(["Policies", WEB, "Foo"], 1), f"{P_WEB}.Foo", "unknown field"),
    ("SANs not list", _set(["Policies", WEB, "SANs"], "web"), f"{P_WEB}.SANs", "JSON array"),
    ("SAN int", _set(["Policies", WEB, "SANs", 2], 5), f"{P_WEB}.SANs[2]", "must be a string"),
    ("SAN null", _set(["Policies", WEB, "SANs", 1], None), f"{P_WEB}.SANs[1]", "string"),
    ("SAN empty", _set(["Policies", WEB, "SANs", 2], ""), f"{P_WEB}.SANs[2]", "must not be empty"),
    ("SAN space", _set(["Policies", WEB, "SANs", 0], "a b"), f"{P_WEB}.SANs[0]", "whitespace"),
    ("SAN non-ascii", _set(["Policies", WEB, "SANs", 0], "wéb"), f"{P_WEB}.SANs[0]", "ASCII"),
    ("SAN bad label", _set(["Policies", WEB, "SANs", 0], "a..b"), f"{P_WEB}.SANs[0]", "empty"),
    ("SAN hyphen", _set(["Policies", WEB, "SANs", 0], "-web"), f"{P_WEB}.SANs[0]", "label 0"),
    ("SAN bad ip", _set(["Policies", WEB, "SANs", 0], "10.0.0.256"), f"{P_WEB}.SANs[0]", "numeric"),
    ("SAN bad uri", _set(["Policies", WEB, "SANs", 3], "1x://y"), f"{P_WEB}.SANs[3]", "scheme"),
    ("SAN uri empty", _set(["Policies", WEB, "SANs", 3], "x://"), f"{P_WEB}.SANs[3]", "nothing"),
    ("SAN dup", _set(["Policies", WEB, "SANs", 1], "web"), f"{P_WEB}.SANs[1]", "duplicate SAN"),
    ("SAN mid wildcard", _set(["Policies", WEB, "SANs", 1], "a.*"), f"{P_WEB}.SANs[1]", "label 1"),
    (
        "SAN too many",
        _set(["Policies", WEB, "SANs"], [f"s{i}" for i in range(101)]),
        f"{P_WEB}.SANs",
        "more than 100",
    ),
    (
        "secret id int",
        _set(["Policies", WEB, "WorkloadSecretID"], 1),
        f"{P_WEB}.WorkloadSecretID",
        "must be a string",
    ),
    (
        "secret id null",
        _set(["Policies", WEB, "WorkloadSecretID"], None),
        f"{P_WEB}.WorkloadSecretID",
        "must be a string",
    ),
    (
        "secret id long",
        _set(["Policies", WEB, "WorkloadSecretID"], "x" * 257),
        f"{P_WEB}.WorkloadSecretID",
        "longer than 256",
    ),
    (
        "secret id control",
        _set(["Policies", WEB, "WorkloadSecretID"], "a\nb"),
        f"{P_WEB}.WorkloadSecretID",
        "printable",
    ),
    (
        "secret id surrogate",
        _set(["Policies", WEB, "WorkloadSecretID"], "\ud800"),
        f"{P_WEB}.WorkloadSecretID",
        "surrogate",
    ),
    ("role bad", _set(["Policies", WEB, "Role"], "admin"), f"{P_WEB}.Role", "must be"),
    ("role case", _set(["Policies", WEB, "Role"], "Coordinator"), f"{P_WEB}.Role", "must be"),
    ("role null", _set(["Policies", WEB, "Role"], None), f"{P_WEB}.Role", "must be a string"),
    (
        "two coordinators",
        _set(["Policies", WEB, "Role"], "coordinator"),
        f"{P_WEB}.Role",
        "more than one coordinator",
    ),
    ("no coordinator", _del(["Policies", COORD]), "Policies", "no policy has Role"),
    (
        "too many policies",
        _set(["Policies"], {f"{i:064x}": {} for i in range(MAX_POLICIES + 1)}),
        "Policies",
        f"more than {MAX_POLICIES}",
    ),
    ("refvals array", _set(["ReferenceValues"], []), "ReferenceValues", "JSON object"),
    ("refvals unknown", _set(["ReferenceValues", "sev"], []), "ReferenceValues.sev", "unknown"),
    (
        "snp bad meas",
        _set(["ReferenceValues", "snp", 0, "TrustedMeasurement"], "11" * 47),
        "ReferenceValues.snp[0].TrustedMeasurement",
        "must be 48 bytes",
    ),
    (
        "snp bad product",
        _set(["ReferenceValues", "snp", 0, "ProductName"], "Naples"),
        "ReferenceValues.snp[0].ProductName",
        "must be one of",
    ),
    (
        "tdx missing mrtd",
        _del(["ReferenceValues", "tdx", 0, "MrTd"]),
        "ReferenceValues.tdx[0].MrTd",
        "required",
    ),
    (
        "owners not list",
        _set(["WorkloadOwnerKeyDigests"], "ab" * 32),
        "WorkloadOwnerKeyDigests",
        "JSON array",
    ),
    (
        "owner short",
        _set(["WorkloadOwnerKeyDigests", 0], "ab" * 31),
        "WorkloadOwnerKeyDigests[0]",
        "must be 32 bytes, got 31",
    ),
    (
        "owner upper",
        _set(["WorkloadOwnerKeyDigests", 0], "AB" * 32),
        "WorkloadOwnerKeyDigests[0]",
        "lowercase",
    ),
    (
        "owner odd hex",
        _set(["WorkloadOwnerKeyDigests", 0], "abc"),
        "WorkloadOwnerKeyDigests[0]",
        "not valid hex",
    ),
    (
        "owner not hex",
        _set(["WorkloadOwnerKeyDigests", 0], "zz" * 32),
        "WorkloadOwnerKeyDigests[0]",
        "not valid hex",
    ),
    (
        "owner int",
        _set(["WorkloadOwnerKeyDigests", 0], 7),
        "WorkloadOwnerKeyDigests[0]",
        "must be a string",
    ),
    (
        "owner dup",
        _set(["WorkloadOwnerKeyDigests"], ["ab" * 32, "cd" * 32, "ab" * 32]),
        "WorkloadOwnerKeyDigests[2]",
        "duplicate entry",
    ),
    (
        "owners too many",
        _set(["WorkloadOwnerKeyDigests"], [f"{i:064x}" for i in range(101)]),
        "WorkloadOwnerKeyDigests",
        "more than 100",
    ),
    (
        "seedshare not list",
        _set(["SeedshareOwnerPubKeys"], {}),
        "SeedshareOwnerPubKeys",
        "JSON array",
    ),
    (
        "seedshare garbage",
        _set(["SeedshareOwnerPubKeys"], ["3000"]),
        "SeedshareOwnerPubKeys[0]",
        "not a DER RSA public key",
    ),
    (
        "seedshare empty",
        _set(["SeedshareOwnerPubKeys"], [""]),
        "SeedshareOwnerPubKeys[0]",
        "not valid hex",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path", "why"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rejects_invalid_field(mutate: Any, path: str, why: str) -> None:
    with pytest.raises(ManifestError) as e:
        Manifest.parse(_mut(mutate))
    assert e.value.path == path
    assert why in e.value.why
    assert str(e.value) == f"{path}: {e.value.why}"


def test_negative_case_count() -> None:
    assert len(CASES) >= 30


def _seedshare_case(doc_keys: list[str]) -> ManifestError:
    doc = base_doc()
    doc["SeedshareOwnerPubKeys"] = doc_keys
    with pytest.raises(ManifestError) as e:
        Manifest.parse(enc(doc))
    return e.value


def test_rejects_seedshare_spki(rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    spki = (
        rsa_keys[0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    err = _seedshare_case([pkcs1_hex(rsa_keys[1]), spki.hex()])
    assert err.path == "SeedshareOwnerPubKeys[1]"
    assert "PKCS#1" in err.why


def test_rejects_seedshare_trailing_bytes(rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    err = _seedshare_case([pkcs1_hex(rsa_keys[0]) + "00"])
    assert err.path == "SeedshareOwnerPubKeys[0]"


def test_rejects_seedshare_duplicate(rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    k = pkcs1_hex(rsa_keys[0])
    err = _seedshare_case([k, pkcs1_hex(rsa_keys[1]), k])
    assert (err.path, err.why) == ("SeedshareOwnerPubKeys[2]", "duplicate entry")


def test_rejects_seedshare_uppercase(rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    err = _seedshare_case([pkcs1_hex(rsa_keys[0]).upper()])
    assert (err.path, err.why) == ("SeedshareOwnerPubKeys[0]", "hex must be lowercase")


def test_rejects_small_rsa_key() -> None:
    small = rsa.generate_private_key(65537, 1024)
    err = _seedshare_case([pkcs1_hex(small)])
    assert err.path == "SeedshareOwnerPubKeys[0]"
    assert "2048" in err.why


def test_rejects_ec_key_as_seedshare_owner() -> None:
    spki = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    err = _seedshare_case([spki.hex()])
    assert (err.path, err.why) == ("SeedshareOwnerPubKeys[0]", "not an RSA public key")


def test_long_unknown_key_is_truncated_in_path() -> None:
    doc = base_doc()
    doc["x" * 10_000] = 1
    with pytest.raises(ManifestError) as e:
        Manifest.parse(enc(doc))
    assert len(e.value.path) < 120
    assert e.value.why == "unknown top-level field"


def test_rejects_non_bytes() -> None:
    with pytest.raises(ManifestError) as e:
        Manifest.parse("{}")  # type: ignore[arg-type]
    assert e.value.path == "$"


# --- SAN classification ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("san", "kind", "value"),
    [
        ("10.0.0.1", "ip", "10.0.0.1"),
        ("::1", "ip", "::1"),
        ("2001:DB8:0:0::1", "ip", "2001:db8::1"),
        ("spiffe://x/y", "uri", "spiffe://x/y"),
        ("https://example.com:8443/a?b=c", "uri", "https://example.com:8443/a?b=c"),
        ("web", "dns", "web"),
        ("*", "dns", "*"),
        ("*.svc.cluster.local", "dns", "*.svc.cluster.local"),
        ("web-0.web.default.svc", "dns", "web-0.web.default.svc"),
        ("_grpc.example", "dns", "_grpc.example"),
        ("a" * 63 + ".b", "dns", "a" * 63 + ".b"),
    ],
)
def test_classify_san(san: str, kind: str, value: str) -> None:
    assert classify_san(san) == (kind, value)


@pytest.mark.parametrize(
    "san",
    [
        "",
        " ",
        "a" * 64,
        "a.b-",
        "a.",
        ".a",
        "a*.b",
        "*.*",
        "fe80::1%eth0",
        "1.2.3",
        "ex ample",
        "://x",
        "ht tp://x",
        "\x00",
        ("a." * 130) + "b",
    ],
)
def test_classify_san_rejects(san: str) -> None:
    with pytest.raises(ValueError):
        classify_san(san)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_classify_san_never_crashes(s: str) -> None:
    try:
        kind, _ = classify_san(s)
    except ValueError:
        return
    assert kind in ("ip", "uri", "dns")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_parse_random_bytes_only_raises_manifest_error(data: bytes) -> None:
    try:
        Manifest.parse(data)
    except ManifestError as e:
        assert e.path
