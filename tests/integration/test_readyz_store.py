"""/readyz means "this coordinator can know its state is fresh" (issue 15: it stayed 200 for
over 10 s with etcd stopped while /healthz said the store was unreachable). A coordinator that
cannot see the store cannot tell whether a peer moved ``latest``: 503 until it sees it again."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.service_helpers import (  # noqa: F401  (fixtures)
    Coordinators,
    Keys,
    MockTee,
    coordinators_fixture,
    deploy,
    http_get,
    keys_fixture,
    mock_tee_fixture,
)
from tools.etcd_server import EtcdServer

pytestmark = pytest.mark.timeout(180)

PATIENCE = 60.0
"""How long a probe may take to change its answer before the test gives up (not a timing claim:
the store probe is bounded at a few seconds, the CI box is busy)."""


async def wait_probe(address: str, path: str, want: int) -> bytes:
    deadline = time.monotonic() + PATIENCE
    while True:
        try:
            status, body = await asyncio.wait_for(http_get(address, path), 15)
        except (TimeoutError, OSError):
            status, body = 0, b""
        if status == want:
            return body
        assert time.monotonic() < deadline, f"{path} still {status} {body!r}, want {want}"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("outage", ["pause", "stop"])
async def test_readyz_is_503_while_the_store_is_unreachable(
    coordinators: Coordinators,
    mock_tee: MockTee,
    keys: Keys,
    etcd: EtcdServer,
    deployment: str,
    outage: str,
) -> None:
    dep = await deploy(
        coordinators, mock_tee, keys, store=f"etcd://{etcd.endpoint}", deployment=deployment
    )
    http = dep.server.addresses["http"]
    try:
        await wait_probe(http, "/readyz", 200)
        if outage == "pause":
            etcd.pause()  # SIGSTOP: connections stay open, nothing answers
        else:
            await asyncio.to_thread(etcd.stop)
        body = await wait_probe(http, "/readyz", 503)
        assert body.startswith(b"not ready: ")
        assert b"store unreachable" in body or b"history watch down" in body
        await wait_probe(http, "/healthz", 503)
        if outage == "pause":
            etcd.resume()
        else:
            await asyncio.to_thread(etcd.start)
        assert await wait_probe(http, "/readyz", 200) == b"ready\n"
    finally:
        etcd.resume()
        await dep.close()


async def test_readyz_says_why_before_the_first_manifest(coordinators: Coordinators) -> None:
    server = await coordinators.start()
    status, body = await http_get(server.addresses["http"], "/readyz")
    assert (status, body) == (503, b"not ready: no state (no manifest set yet)\n")
