"""The committed protobuf/gRPC modules are exactly what hack/genproto produces from proto/.

A stale generated file would silently ship an old wire format, so regeneration is compared
byte-for-byte. The field tables pin the wire format of DESIGN.md §7: renumbering or renaming a
field must be a deliberate change to this test as well.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor

REPO = Path(__file__).resolve().parents[2]
GENERATED = ("concord_pb2.py", "concord_pb2.pyi", "concord_pb2_grpc.py")
PKG = Path("coordinator") / "api" / "v1"

B = FieldDescriptor.TYPE_BYTES
BOOL = FieldDescriptor.TYPE_BOOL
STR = FieldDescriptor.TYPE_STRING
U32 = FieldDescriptor.TYPE_UINT32
ENUM = FieldDescriptor.TYPE_ENUM
REP = "repeated"
ONE = "optional"

# message -> [(field name, number, type, cardinality)]
EXPECTED_MESSAGES: dict[str, list[tuple[str, int, int, str]]] = {
    "AttestRequest": [("nonce", 1, B, ONE)],
    "AttestResponse": [
        ("evidence", 1, B, ONE),
        ("hpke_public_key", 2, B, ONE),
        ("state_digest", 3, B, ONE),
        ("latest_transition_hash", 4, B, ONE),
        ("root_ca_pem", 5, B, ONE),
        ("mesh_ca_pem", 6, B, ONE),
        ("deployment", 7, STR, ONE),
        ("token", 8, B, ONE),
    ],
    "ChallengeRequest": [],
    "ChallengeResponse": [("token", 1, B, ONE)],
    "SetManifestRequest": [
        ("manifest", 1, B, ONE),
        ("policies", 2, B, REP),
        ("previous_transition_hash", 3, B, ONE),
        ("owner_public_key", 4, B, ONE),
        ("signature", 5, B, ONE),
    ],
    "SetManifestResponse": [
        ("root_ca_pem", 1, B, ONE),
        ("mesh_ca_pem", 2, B, ONE),
        ("transition_hash", 3, B, ONE),
        ("seed_share_document", 4, B, ONE),
        ("deployment_id", 5, B, ONE),
    ],
    "GetManifestsRequest": [],
    "GetManifestsResponse": [
        ("manifests", 1, B, REP),
        ("policies", 2, B, REP),
        ("root_ca_pem", 3, B, ONE),
        ("mesh_ca_pem", 4, B, ONE),
        ("latest_transition_hash", 5, B, ONE),
        ("latest_signature", 6, B, ONE),
        ("history_signing_public_key", 7, B, ONE),
        ("deployment_id", 8, B, ONE),
    ],
    "UserRecoverRequest": [
        ("sealed_secret", 1, B, ONE),
        ("seedshare_owner_public_key", 2, B, ONE),
        ("signature", 3, B, ONE),
        ("nonce", 4, B, ONE),
        ("force", 5, BOOL, ONE),
        ("expected_latest_transition_hash", 6, B, ONE),
    ],
    "UserRecoverResponse": [
        ("shares_received", 1, U32, ONE),
        ("shares_needed", 2, U32, ONE),
        ("shares_dropped", 3, U32, ONE),
    ],
    "GetHistoryRequest": [],
    "GetHistoryResponse": [
        ("manifests", 1, B, REP),
        ("latest_transition_hash", 2, B, ONE),
        ("latest_signature", 3, B, ONE),
    ],
    "NewMeshCertRequest": [
        ("evidence", 1, B, ONE),
        ("leaf_public_key", 2, B, ONE),
        ("hpke_public_key", 3, B, ONE),
        ("token", 4, B, ONE),
        ("hpke_suites", 16, ENUM, REP),
        ("pq_hpke_public_key", 17, B, ONE),
    ],
    "NewMeshCertResponse": [
        ("certificate_chain_pem", 1, B, ONE),
        ("mesh_ca_pem", 2, B, ONE),
        ("root_ca_pem", 3, B, ONE),
        ("sealed_workload_secret", 4, B, ONE),
        ("mesh_ca_bundle_pem", 5, B, ONE),
        ("leaf_lifetime_seconds", 6, U32, ONE),
        ("hpke_suite", 16, ENUM, ONE),
    ],
    "MeshRecoverRequest": [
        ("evidence", 1, B, ONE),
        ("hpke_public_key", 2, B, ONE),
        ("token", 3, B, ONE),
        ("hpke_suites", 16, ENUM, REP),
        ("pq_hpke_public_key", 17, B, ONE),
    ],
    "MeshRecoverResponse": [("sealed_secrets", 1, B, ONE), ("hpke_suite", 16, ENUM, ONE)],
    "WatchRequest": [],
    "WatchEvent": [
        ("heartbeat", 1, BOOL, ONE),
        ("ready", 2, BOOL, ONE),
        ("state_digest", 3, B, ONE),
        ("latest_transition_hash", 4, B, ONE),
        ("root_ca_pem", 5, B, ONE),
        ("mesh_ca_pem", 6, B, ONE),
        ("mesh_ca_bundle_pem", 7, B, ONE),
        ("token", 8, B, ONE),
        ("leaf_lifetime_seconds", 9, U32, ONE),
    ],
}

# service -> [(method, request, response)]
EXPECTED_SERVICES: dict[str, list[tuple[str, str, str]]] = {
    "Attestation": [
        ("Attest", "AttestRequest", "AttestResponse"),
        ("Challenge", "ChallengeRequest", "ChallengeResponse"),
    ],
    "UserAPI": [
        ("SetManifest", "SetManifestRequest", "SetManifestResponse"),
        ("GetManifests", "GetManifestsRequest", "GetManifestsResponse"),
        ("Recover", "UserRecoverRequest", "UserRecoverResponse"),
        ("GetHistory", "GetHistoryRequest", "GetHistoryResponse"),
    ],
    "MeshAPI": [
        ("NewMeshCert", "NewMeshCertRequest", "NewMeshCertResponse"),
        ("Recover", "MeshRecoverRequest", "MeshRecoverResponse"),
        ("Watch", "WatchRequest", "WatchEvent"),
    ],
}


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    """Run hack/genproto into a temp dir; the committed modules must match byte-for-byte."""
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path))
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "genproto")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"hack/genproto failed:\n{result.stderr}"
    produced = sorted(p.name for p in (tmp_path / PKG).iterdir())
    assert produced == sorted(GENERATED)
    stale = [
        name
        for name in GENERATED
        if (tmp_path / PKG / name).read_bytes() != (REPO / PKG / name).read_bytes()
    ]
    assert not stale, f"stale generated files (run hack/genproto): {stale}"


def test_genproto_is_executable() -> None:
    assert os.access(REPO / "hack" / "genproto", os.X_OK)


def test_modules_import_under_package_path() -> None:
    from coordinator.api.v1 import concord_pb2, concord_pb2_grpc

    assert concord_pb2.DESCRIPTOR.package == "concord.v1"
    assert concord_pb2.DESCRIPTOR.name == "coordinator/api/v1/concord.proto"
    # The gRPC module must import the messages through the package path, not a bare module.
    assert concord_pb2_grpc.coordinator_dot_api_dot_v1_dot_concord__pb2 is concord_pb2


def test_messages_have_exactly_the_design_fields() -> None:
    from coordinator.api.v1 import concord_pb2

    assert set(concord_pb2.DESCRIPTOR.message_types_by_name) == set(EXPECTED_MESSAGES)
    for name, fields in EXPECTED_MESSAGES.items():
        desc = concord_pb2.DESCRIPTOR.message_types_by_name[name]
        actual = [
            (f.name, f.number, f.type, REP if f.is_repeated else ONE)
            for f in sorted(desc.fields, key=lambda f: f.number)
        ]
        assert actual == fields, name


def test_services_have_expected_methods() -> None:
    from coordinator.api.v1 import concord_pb2, concord_pb2_grpc

    assert set(concord_pb2.DESCRIPTOR.services_by_name) == set(EXPECTED_SERVICES)
    for service, methods in EXPECTED_SERVICES.items():
        desc = concord_pb2.DESCRIPTOR.services_by_name[service]
        assert desc.full_name == f"concord.v1.{service}"
        actual = [(m.name, m.input_type.name, m.output_type.name) for m in desc.methods]
        assert actual == methods, service
        for method, _, _ in methods:
            assert not method.startswith("_")
            assert callable(getattr(getattr(concord_pb2_grpc, f"{service}Servicer"), method))
        assert callable(getattr(concord_pb2_grpc, f"add_{service}Servicer_to_server"))
        assert callable(getattr(concord_pb2_grpc, f"{service}Stub"))


def test_stub_method_paths() -> None:
    """The stub calls the fully qualified method paths a server registers."""
    from coordinator.api.v1 import concord_pb2_grpc

    seen: list[str] = []

    class _Channel:
        def unary_unary(self, path: str, **_: object) -> str:
            seen.append(path)
            return path

        def unary_stream(self, path: str, **_: object) -> str:
            seen.append(path)
            return path

    concord_pb2_grpc.MeshAPIStub(_Channel())
    concord_pb2_grpc.UserAPIStub(_Channel())
    concord_pb2_grpc.AttestationStub(_Channel())
    assert seen == [
        "/concord.v1.MeshAPI/NewMeshCert",
        "/concord.v1.MeshAPI/Recover",
        "/concord.v1.MeshAPI/Watch",
        "/concord.v1.UserAPI/SetManifest",
        "/concord.v1.UserAPI/GetManifests",
        "/concord.v1.UserAPI/Recover",
        "/concord.v1.UserAPI/GetHistory",
        "/concord.v1.Attestation/Attest",
        "/concord.v1.Attestation/Challenge",
    ]


def test_round_trip_and_unknown_type_rejected() -> None:
    from coordinator.api.v1 import concord_pb2

    req = concord_pb2.SetManifestRequest(
        manifest=b"{}", policies=[b"p1", b"p2"], previous_transition_hash=b"\x01" * 32
    )
    back = concord_pb2.SetManifestRequest.FromString(req.SerializeToString())
    assert back == req
    assert list(back.policies) == [b"p1", b"p2"]
    with pytest.raises(TypeError):
        concord_pb2.AttestRequest(nonce="not bytes")  # type: ignore[arg-type]


def test_grpc_runtime_matches_tools() -> None:
    """The generated gRPC module refuses older runtimes; make sure ours is accepted."""
    from coordinator.api.v1 import concord_pb2_grpc

    assert grpc.__version__ == concord_pb2_grpc.GRPC_GENERATED_VERSION
