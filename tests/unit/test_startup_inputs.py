"""Input checked at start-up (usage errors, exit 2), defaults in ``--help``, and the operations
side: readable JSON logs, metrics present from the start, rate-limited peer complaints, an
HTTP port that answers a TLS client at once. Each test names the issue's symptom it pins."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from coordinator import cli
from coordinator.cluster.recovery import ClusterDeps, PeerRecovery
from coordinator.http_probes import ProbeServer
from coordinator.service.metrics import RECOVERY_SOURCES, TEES, Metrics
from coordinator.service.server import (
    AddressInUse,
    JsonLogFormatter,
    ServerConfig,
    TeeUnavailable,
    check_bindable,
    check_tee,
)

ANY_PORTS = (
    "--user-addr",
    "127.0.0.1:0",
    "--mesh-addr",
    "127.0.0.1:0",
    "--http-addr",
    "127.0.0.1:0",
)


@pytest.fixture(autouse=True)
def _grpc_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``concord serve`` sets GRPC_VERBOSITY for its own process; keep the test process clean."""
    monkeypatch.setenv("GRPC_VERBOSITY", "NONE")


@pytest.fixture
def listening() -> Iterator[int]:
    """A port another process (here: this one) already listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def parse(*argv: str) -> Any:
    return cli.build_parser().parse_args(list(argv))


# --- addresses -------------------------------------------------------------------------------


def test_coordinator_host_alone_takes_the_documented_port() -> None:
    assert parse("verify", "-c", "127.0.0.1", "M", "--out", "o").coordinator == "127.0.0.1:1313"
    assert parse("set", "-c", "[::1]", "M", "--out", "o").coordinator == "[::1]:1313"
    args = parse("join", "-c", "localhost", "-c", "[::1]:7000", "--out", "o")
    assert args.coordinator == ["localhost:7777", "[::1]:7000"] and args.api == "mesh"


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "-c", "127.0.0.1:99999", "M", "--out", "o"],
        ["verify", "-c", "::1:1313", "M", "--out", "o"],
        ["verify", "-c", "127.0.0.1:0", "M", "--out", "o"],
        ["join", "-c", "bad host", "--out", "o"],
        ["serve", "--user-addr", "127.0.0.1:99999"],
        ["serve", "--mesh-addr", "::1:7777"],
        ["serve", "--peer", "127.0.0.1:70000"],
        ["set", "-c", "127.0.0.1", "M", "--out", "o", "--timeout", "0"],
        ["join", "-c", "127.0.0.1", "--out", "o", "--timeout", "soon"],
    ],
)
def test_bad_input_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_serve_binds_take_default_ports_and_port_zero() -> None:
    args = parse("serve", "--user-addr", "localhost", "--mesh-addr", "[::1]")
    assert (args.user_addr, args.mesh_addr) == ("localhost:1313", "[::1]:7777")
    args = parse("serve", "--user-addr", "0.0.0.0:0", "--http-addr", "[::]")
    assert (args.user_addr, args.http_addr) == ("0.0.0.0:0", "[::]:9102")


def test_serve_binds_loopback_by_default() -> None:
    args = parse("serve")
    assert (args.user_addr, args.mesh_addr, args.http_addr) == (
        "127.0.0.1:1313",
        "127.0.0.1:7777",
        "127.0.0.1:9102",
    )
    assert ServerConfig().user_addr.startswith("127.0.0.1:")


@pytest.mark.parametrize("command", ["set", "verify", "recover", "join"])
def test_every_client_command_has_a_timeout(command: str) -> None:
    extra = {"recover": ["--seedshares", "s", "--seedshare-key", "k"], "join": []}.get(command, [])
    positional = [] if command == "join" else ["M"]
    out = [] if command == "recover" else ["--out", "o"]
    args = parse(command, "-c", "127.0.0.1", *positional, *extra, *out, "--timeout", "2.5")
    assert args.timeout == 2.5


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for default in ("127.0.0.1:1313", "127.0.0.1:7777", "127.0.0.1:9102", "file:/var/lib/concord"):
        assert f"(default: {default})" in text
    assert "(default: info)" in text and "(default: None)" not in text
    assert cli.main(["set", "--help"]) == 0
    assert "(default: 30.0)" in " ".join(capsys.readouterr().out.split())


# --- start-up checks ---------------------------------------------------------------------------


def test_port_in_use_is_one_clear_line(
    listening: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(AddressInUse, match="already in use") as info:
        check_bindable(f"127.0.0.1:{listening}", "--user-addr")
    assert info.value.reason == "address_in_use"
    check_bindable("127.0.0.1:0", "--user-addr")  # any free port always binds

    code = cli.main(
        [
            "serve",
            "--store",
            f"file:{tmp_path / 'store'}",
            *ANY_PORTS,
            "--user-addr",
            f"127.0.0.1:{listening}",
        ]
    )
    lines = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"concord: --user-addr 127.0.0.1:{listening}: address already in use"
    )


def test_tsm_without_configfs_is_refused_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-tsm"
    with pytest.raises(TeeUnavailable, match="no-tsm") as info:
        check_tee(ServerConfig(tee="tsm"), missing)
    assert info.value.reason == "tee_unavailable" and "--tee mock:DIR" in str(info.value)
    (tmp_path / "tsm").mkdir()
    check_tee(ServerConfig(tee="tsm"), tmp_path / "tsm")  # present: accepted

    if Path("/sys/kernel/config/tsm/report").is_dir():
        pytest.skip("this host has configfs-tsm")
    code = cli.main(["serve", "--tee", "tsm", "--store", f"file:{tmp_path / 's'}", *ANY_PORTS])
    err = capsys.readouterr().err
    assert code == 2
    assert "/sys/kernel/config/tsm/report" in err and "mock-tee init" in err
    assert not (tmp_path / "s").exists()  # refused before the store was opened


# --- logs, metrics, repeats ------------------------------------------------------------------------


def test_log_lines_carry_fields_as_keys() -> None:
    record = logging.LogRecord("concord.x", logging.INFO, __file__, 1, "peer %s", ("p",), None)
    record.__dict__.update(
        {"peer": "127.0.0.1:7777", "transition": b"\x01\x02", "msg_extra": [1], "level": "x"}
    )
    entry = json.loads(JsonLogFormatter().format(record))
    assert entry["msg"] == "peer p" and entry["level"] == "info"
    assert entry["peer"] == "127.0.0.1:7777" and entry["transition"] == "0102"
    assert entry["field_level"] == "x"  # a field never overwrites the envelope
    assert "args" not in entry and "lineno" not in entry


def test_every_metric_exists_from_the_start() -> None:
    text = Metrics().render().decode()
    for tee in TEES:
        assert f'concord_certificates_issued_total{{tee="{tee}"}} 0.0' in text
    for source in RECOVERY_SOURCES:
        assert f'concord_recoveries_total{{source="{source}"}} 0.0' in text
    for reason in ("certificate_signature", "untrusted_root", "report_data"):
        assert f'concord_attestation_failures_total{{reason="{reason}"}} 0.0' in text
    assert 'concord_request_seconds_count{code="OK",method="NewMeshCert"} 0.0' in text


def test_peer_complaints_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    none = cast(Any, None)
    recovery = PeerRecovery(
        ClusterDeps(
            node_id="c0",
            static_peers=("p:7777",),
            store=none,
            guard=none,
            anchors=none,
            addresses={},
            advertise_mesh_addr=None,
            is_ready=lambda: False,
            evidence=none,
            own_evidence_under=none,
            on_recovery=lambda _: None,
        )
    )
    with caplog.at_level(logging.INFO, logger="concord.recovery"):
        for _ in range(6):
            recovery._peer_log(logging.INFO, "p:7777", "not_usable", "serves another latest")
        recovery._peer_log(logging.INFO, "q:7777", "not_usable", "serves another latest")
    lines = [r for r in caplog.records if r.name == "concord.recovery"]
    assert [getattr(r, "peer", None) for r in lines] == ["p:7777", "q:7777"]
    assert lines[0].getMessage() == "peer not usable for recovery"  # data in fields, not text


# --- the HTTP port and a TLS client ------------------------------------------------------------


async def test_http_port_refuses_a_tls_client_at_once() -> None:
    async def ok() -> tuple[int, str, bytes]:
        return 200, "text/plain", b"ok\n"

    probes = ProbeServer({"/healthz": ok})
    port = await probes.start("127.0.0.1", 0)
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 30)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # HTTP still works
        writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 30)).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        await probes.stop()
