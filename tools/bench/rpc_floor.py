"""The gRPC floor of the issuance benchmark: ``concord serve`` with issuance taken out.

Run as ``python -m tools.bench.rpc_floor serve ...`` (the same arguments as ``concord serve``):
the real coordinator starts (TLS, attestation, Challenge, the MeshAPI servicer and its checks),
except that NewMeshCert signs only its first certificate and then answers every call with that
same response. The server CPU per join flow it costs is what gRPC, TLS and the servicer layer
take without any verifying or signing; the harness reports it next to the real figures, so the
best end-to-end efficiency this machine allows can be read off the same run:
``baseline / (floor + in-process issuer CPU)``.

Bench-only: nothing in the coordinator knows this module. It swaps the MeshAPI servicer class
before the server is built.
"""

from __future__ import annotations

import sys
from typing import Any

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.cli import main as cli_main
from coordinator.service import server as server_module
from coordinator.service.context import rpc
from coordinator.service.meshapi import MeshService


class CannedMeshService(MeshService):
    """NewMeshCert: the first call is issued for real; later calls get its response back,
    after the same freshness and input checks a real call makes first."""

    canned: pb.NewMeshCertResponse | None = None

    @rpc()
    async def NewMeshCert(
        self, request: pb.NewMeshCertRequest, context: Any
    ) -> pb.NewMeshCertResponse:
        if self.canned is None:
            response: pb.NewMeshCertResponse = await MeshService.NewMeshCert(self, request, context)
            CannedMeshService.canned = response
            return response
        await self.coord.fresh_for_mesh()
        self.coord.metrics.certificates.labels("snp").inc()
        return self.canned


def main(argv: list[str]) -> int:
    # Swap the servicer class the server module binds at import (a name it does not export).
    server_module.MeshService = CannedMeshService  # type: ignore[attr-defined]
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
