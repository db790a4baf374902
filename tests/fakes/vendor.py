"""A loopback HTTP server playing AMD KDS and Intel PCS with real vendor responses.

Routes map a request target (path and query, exactly as a client must send it) to a reply;
one-shot scripted replies are served first, so a test can stage "429, then 200". Replies can
also hang (accept and never answer) or truncate (announce a Content-Length, send half, close).
Every request target is logged, so tests can bound how often upstream was asked.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    mode: str = "normal"  # "normal" | "hang" | "truncate"


class FakeVendor:
    def __init__(self) -> None:
        self.routes: dict[str, Reply] = {}
        self.scripts: dict[str, list[Reply]] = {}
        self.log: list[str] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- staging ----------------------------------------------------------------------------

    def route(self, target: str, reply: Reply) -> None:
        with self._lock:
            self.routes[target] = reply

    def script(self, target: str, *replies: Reply) -> None:
        with self._lock:
            self.scripts.setdefault(target, []).extend(replies)

    def count(self, prefix: str = "") -> int:
        with self._lock:
            return sum(1 for t in self.log if t.startswith(prefix))

    def _next(self, target: str) -> Reply:
        with self._lock:
            self.log.append(target)
            queued = self.scripts.get(target)
            if queued:
                return queued.pop(0)
            return self.routes.get(target, Reply(404, b"Not Found"))

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def start(self) -> None:
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                reply = vendor._next(self.path)
                if reply.mode == "hang":
                    vendor._release.wait(60)
                    self.close_connection = True
                    return
                body = reply.body
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if reply.mode == "truncate":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fake-vendor")
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


@contextmanager
def running_vendor() -> Iterator[FakeVendor]:
    vendor = FakeVendor()
    vendor.start()
    try:
        yield vendor
    finally:
        vendor.stop()


# --- the real responses -----------------------------------------------------------------------


def milan_vcek_target(report: bytes) -> str:
    """KDS target of milan-v2.report.bin, written out by hand (not by the code under test)."""
    chip_id = report[0x1A0:0x1E0].hex()
    return f"/vcek/v1/Milan/{chip_id}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115"


def serve_kds(vendor: FakeVendor, vectors: Path) -> str:
    report = (vectors / "snp" / "milan-v2.report.bin").read_bytes()
    target = milan_vcek_target(report)
    vcek = (vectors / "snp" / "milan-v2.vcek.der").read_bytes()
    vendor.route(target, Reply(200, vcek, {"Content-Type": "application/octet-stream"}))
    return target


@dataclass(frozen=True)
class PcsTargets:
    tcb: str
    qe: str
    pck_crl: str
    root_crl: str


def pcs_bodies(vectors: Path, name: str = "uptodate-v4") -> dict[str, Reply]:
    """PCS v4 responses rebuilt from a dcap-qvl collateral file: the raw signed JSON kept as is."""
    col = json.loads((vectors / "tdx" / f"{name}.collateral.json").read_text())
    fmspc = json.loads(col["tcb_info"])["fmspc"].lower()
    tcb_body = f'{{"tcbInfo":{col["tcb_info"]},"signature":"{col["tcb_info_signature"]}"}}'
    qe_body = (
        f'{{"enclaveIdentity":{col["qe_identity"]},"signature":"{col["qe_identity_signature"]}"}}'
    )
    json_type = {"Content-Type": "application/json"}
    return {
        f"/tdx/certification/v4/tcb?fmspc={fmspc}": Reply(
            200,
            tcb_body.encode(),
            {**json_type, "TCB-Info-Issuer-Chain": quote(col["tcb_info_issuer_chain"])},
        ),
        "/tdx/certification/v4/qe/identity": Reply(
            200,
            qe_body.encode(),
            {
                **json_type,
                "SGX-Enclave-Identity-Issuer-Chain": quote(col["qe_identity_issuer_chain"]),
            },
        ),
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": Reply(
            200,
            bytes.fromhex(col["pck_crl"]),
            {"SGX-PCK-CRL-Issuer-Chain": quote(col["pck_crl_issuer_chain"])},
        ),
        "/sgx/certification/v4/rootcacrl": Reply(200, bytes.fromhex(col["root_ca_crl"])),
    }


def serve_pcs(vendor: FakeVendor, vectors: Path) -> PcsTargets:
    bodies = pcs_bodies(vectors)
    for target, reply in bodies.items():
        vendor.route(target, reply)
    tcb, qe, pck, root = bodies
    return PcsTargets(tcb=tcb, qe=qe, pck_crl=pck, root_crl=root)
