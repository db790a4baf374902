"""``--tee`` has one parser: what it accepts, what it refuses and how it says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from attestation.providers.spec import TeeKind, TeeSpec, TeeSpecError, parse_tee_spec


def test_tsm() -> None:
    spec = parse_tee_spec("tsm")
    assert spec == TeeSpec(TeeKind.TSM) and not spec.is_mock and spec.mock_dir is None
    assert str(spec) == "tsm"


def test_mock_keeps_the_directory() -> None:
    spec = parse_tee_spec("mock:/tmp/some dir/tee")
    assert spec.kind is TeeKind.MOCK and spec.is_mock
    assert spec.mock_dir == Path("/tmp/some dir/tee")
    assert parse_tee_spec(str(spec)) == spec
    assert parse_tee_spec("mock:rel").mock_dir == Path("rel")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--tee must be 'tsm' or 'mock:DIR', got ''"),
        ("TSM", "got 'TSM'"),
        (" tsm", "got ' tsm'"),
        ("tsm ", "got 'tsm '"),
        ("mock", "got 'mock'"),
        ("mock :x", "got 'mock :x'"),
        ("sev", "got 'sev'"),
        ("mock:", "needs a directory after 'mock:'"),
        ("mock:a\x00b", "NUL byte"),
    ],
)
def test_refusals_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(TeeSpecError) as err:
        parse_tee_spec(text)
    assert message in str(err.value)
    assert err.value.reason == "invalid_tee_spec"
    assert isinstance(err.value, ValueError)


def test_not_a_string() -> None:
    with pytest.raises(TeeSpecError, match="want 'tsm' or 'mock:DIR'"):
        parse_tee_spec(None)  # type: ignore[arg-type]


def test_server_and_cli_use_the_parser(tmp_path: Path) -> None:
    """The server refuses what the parser refuses, with the parser's message."""
    from coordinator.service.server import ServerConfig, build_provider

    with pytest.raises(TeeSpecError, match="needs a directory"):
        build_provider(ServerConfig(tee="mock:"))
    with pytest.raises(ValueError, match="--mock-policy"):
        build_provider(ServerConfig(tee=f"mock:{tmp_path}"))
