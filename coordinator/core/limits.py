"""Protocol sizes and limits shared by both ends of the wire (DESIGN §7, §13)."""

from __future__ import annotations

MAX_MESSAGE = 4 * 1024 * 1024
"""Largest gRPC message either side sends or accepts."""
NONCE_SIZE = 32
"""Bytes of the client's fresh nonce in ``Attest`` and user recovery."""
