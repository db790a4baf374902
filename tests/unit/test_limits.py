"""The documented request limits (DESIGN §13) as values: the serve defaults, the gRPC options
they become, the per-method gates, and the manifest's count limits, each refused with a typed
error naming the limit."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest

from coordinator.core.limits import MAX_MESSAGE
from coordinator.core.manifest import (
    MAX_REFERENCE_ENTRIES,
    MAX_REFERENCE_LIST,
    MAX_SANS,
    MAX_TOTAL_SANS,
    Manifest,
    ManifestError,
    ManifestLimitExceeded,
)
from coordinator.errors import Status
from coordinator.service.limits import (
    ATTEST,
    DEFAULT_METHOD_CONCURRENCY,
    NEW_MESH_CERT,
    SET_MANIFEST,
    Gate,
    MessageTooLarge,
    RpcLimits,
    TooManyRequests,
    method_limits,
)


def test_defaults_become_the_transport_policy() -> None:
    options = dict(RpcLimits().grpc_options())
    assert options["grpc.max_receive_message_length"] == MAX_MESSAGE
    assert options["grpc.max_concurrent_streams"] == 64
    assert options["grpc.server_handshake_timeout_ms"] == 10_000
    assert options["grpc.max_connection_idle_ms"] == 300_000
    assert options["grpc.max_connection_age_ms"] == 3_600_000
    assert options["grpc.keepalive_time_ms"] == 60_000
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] == 10_000
    assert options["grpc.http2.max_ping_strikes"] == 2


def test_message_sizes_per_method_never_exceed_the_transport_cap() -> None:
    limits = RpcLimits(message_sizes={ATTEST: 4096, SET_MANIFEST: 10 * MAX_MESSAGE})
    assert limits.message_size(ATTEST) == 4096
    assert limits.message_size(SET_MANIFEST) == MAX_MESSAGE
    assert limits.message_size("/some.Other/Method") == MAX_MESSAGE
    defaults = RpcLimits()
    assert defaults.message_size(ATTEST) < defaults.message_size(NEW_MESH_CERT)
    assert defaults.message_size(NEW_MESH_CERT) < defaults.message_size(SET_MANIFEST)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_concurrent_rpcs": 0},
        {"idle_timeout_s": -1.0},
        {"handshake_timeout_s": 0.0},
        {"method_concurrency": {SET_MANIFEST: 0}},
        {"message_sizes": {ATTEST: -5}},
    ],
)
def test_non_positive_limits_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        RpcLimits(**kwargs)


def test_method_limits_from_flags() -> None:
    out = method_limits(["SetManifest=2", "MeshAPI/Recover=3"], DEFAULT_METHOD_CONCURRENCY)
    assert out[SET_MANIFEST] == 2
    assert out["/concord.v1.MeshAPI/Recover"] == 3
    assert out[NEW_MESH_CERT] == DEFAULT_METHOD_CONCURRENCY[NEW_MESH_CERT]
    for bad in ("SetManifest", "Nope=2", "SetManifest=0", "SetManifest=x"):
        with pytest.raises(ValueError, match="SetManifest"):
            method_limits([bad], DEFAULT_METHOD_CONCURRENCY)


def test_a_gate_refuses_when_full_and_reopens() -> None:
    gate = Gate("UserAPI/SetManifest", 2)
    gate.enter()
    gate.enter()
    with pytest.raises(TooManyRequests) as exc:
        gate.enter()
    assert exc.value.reason == "too_many_requests"
    assert exc.value.status is Status.RESOURCE_EXHAUSTED
    assert "UserAPI/SetManifest is limited to 2" in exc.value.public_message()
    gate.leave()
    gate.enter()
    assert gate.active == 2
    assert MessageTooLarge.status is Status.INVALID_ARGUMENT


# --- manifest limits ----------------------------------------------------------------------------


def _doc() -> dict[str, Any]:
    coordinator = hashlib.sha256(b"limits: coordinator").hexdigest()
    return {"Policies": {coordinator: {"Role": "coordinator"}}, "ReferenceValues": {"snp": []}}


def _policies(doc: dict[str, Any], count: int, sans: int) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for i in range(count):
        key = hashlib.sha256(b"policy %d" % i).hexdigest()
        out["Policies"][key] = {"SANs": [f"h{j}.p{i}.test" for j in range(sans)]}
    return out


def _refused(doc: dict[str, Any]) -> ManifestLimitExceeded:
    with pytest.raises(ManifestLimitExceeded) as exc:
        Manifest.parse(json.dumps(doc).encode())
    assert exc.value.reason == "manifest_limit_exceeded"
    assert exc.value.status is Status.INVALID_ARGUMENT
    assert isinstance(exc.value, ManifestError)
    return exc.value


def test_total_sans_are_capped_across_policies() -> None:
    per = MAX_SANS
    at_limit = _policies(_doc(), MAX_TOTAL_SANS // per, per)
    Manifest.parse(json.dumps(at_limit).encode())
    over = _policies(_doc(), MAX_TOTAL_SANS // per + 1, per)
    err = _refused(over)
    assert (err.path, err.why) == (
        "Policies",
        f"more than {MAX_TOTAL_SANS} SANs in all policies together",
    )


def test_sans_per_policy_are_capped() -> None:
    err = _refused(_policies(_doc(), 1, MAX_SANS + 1))
    assert err.why == f"more than {MAX_SANS} entries"


def test_reference_entries_are_capped_before_they_are_validated() -> None:
    doc = _doc()
    # Not even valid entries: the count is refused first, whatever the entries are.
    doc["ReferenceValues"] = {"snp": [{}] * (MAX_REFERENCE_ENTRIES + 1)}
    err = _refused(doc)
    assert (err.path, err.why) == (
        "ReferenceValues.snp",
        f"more than {MAX_REFERENCE_ENTRIES} entries",
    )


def test_lists_inside_a_reference_entry_are_capped() -> None:
    doc = _doc()
    doc["ReferenceValues"] = {"snp": [{"AllowedChipIDs": ["00"] * (MAX_REFERENCE_LIST + 1)}]}
    err = _refused(doc)
    assert err.path == "ReferenceValues.snp[0].AllowedChipIDs"


# --- serve flags ----------------------------------------------------------------------------------


def test_serve_flags_become_the_limits() -> None:
    from coordinator import cli
    from coordinator.cli.serve import rpc_limits

    flags = ["--max-concurrent-rpcs", "7", "--max-concurrent", "NewMeshCert=9"]
    flags += ["--idle-timeout", "30", "--handshake-timeout", "2"]
    args = cli.build_parser().parse_args(["serve", *flags])
    limits = rpc_limits(args)
    assert limits.max_concurrent_rpcs == 7
    assert limits.method_concurrency[NEW_MESH_CERT] == 9
    assert limits.method_concurrency[SET_MANIFEST] == DEFAULT_METHOD_CONCURRENCY[SET_MANIFEST]
    assert (limits.idle_timeout_s, limits.handshake_timeout_s) == (30.0, 2.0)
    assert rpc_limits(cli.build_parser().parse_args(["serve"])) == RpcLimits()


@pytest.mark.parametrize(
    "flags",
    [["--max-concurrent", "Bogus=1"], ["--max-concurrent-rpcs", "0"], ["--idle-timeout", "-1"]],
)
def test_bad_serve_limit_flags_are_usage_errors(flags: list[str]) -> None:
    from coordinator import cli
    from coordinator.cli.common import UsageError
    from coordinator.cli.serve import rpc_limits

    args = cli.build_parser().parse_args(["serve", *flags])
    with pytest.raises(UsageError):
        rpc_limits(args)
