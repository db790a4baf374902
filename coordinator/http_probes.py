"""A deliberately tiny HTTP/1.1 endpoint for probes and metrics: GET only, one request per
connection, bounded request size. Enough for kubelet probes and a Prometheus scraper without
adding a web framework to a security product.

The coordinator (``concord serve``) and the workload agent (``concord join --watch``) both serve
through it; it imports nothing of ours, so the agent loads nothing of the server side with it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("concord.http")

Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
MAX_REQUEST = 8192
TLS_HANDSHAKE = b"\x16"
"""First byte of a TLS record carrying a handshake (ClientHello): never the start of HTTP."""
TLS_HANDSHAKE_FAILURE = bytes.fromhex("15030100020228")
"""A TLS alert record: fatal (2), handshake_failure (40)."""


class ProbeServer:
    def __init__(self, routes: dict[str, Handler]) -> None:
        self._routes = routes
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await asyncio.wait_for(reader.readexactly(1), 5)
            if first == TLS_HANDSHAKE:
                # A gRPC client pointed at this port: answer its ClientHello with a TLS alert,
                # so it fails its handshake now, as a TLS error, not after the request timeout.
                header = await asyncio.wait_for(reader.readexactly(4), 5)
                await asyncio.wait_for(reader.readexactly(int.from_bytes(header[2:4], "big")), 5)
                writer.write(TLS_HANDSHAKE_FAILURE)
                await writer.drain()
                return
            head = first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if len(head) > MAX_REQUEST:
                raise ValueError("request too large")
            method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = path.split("?", 1)[0]
            handler = self._routes.get(path)
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"method not allowed\n"
            elif handler is None:
                status, ctype, body = 404, "text/plain", b"not found\n"
            else:
                status, ctype, body = await handler()
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
                + (body if method == "GET" else b"")
            )
            await writer.drain()
        except Exception as exc:
            log.debug("probe request failed: %s", type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
