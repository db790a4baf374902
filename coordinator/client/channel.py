"""Client side of the attested channel (DESIGN §7).

Fetch the server certificate with a plain TLS handshake, pin the gRPC channel to exactly that
certificate, call ``Attest`` with a fresh nonce, and accept the coordinator only when its
evidence verifies against the expected reference values and coordinator policy and binds the
pinned TLS key, the HPKE key, the nonce and the state digest. Nothing else is sent before that.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestation.anchors import TrustAnchors
from attestation.binding import attest_report_data, state_digest
from attestation.reference import ReferenceValues
from attestation.verify import VerifiedEvidence, Verifier
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc as pb_grpc
from coordinator.core.address import split_address
from coordinator.core.limits import MAX_MESSAGE, NONCE_SIZE
from coordinator.core.tlsid import SERVER_NAME
from coordinator.errors import ConcordError, Status


class AttestationFailed(ConcordError):
    """The coordinator could not be verified; nothing was sent to it."""

    reason = "coordinator_attestation_failed"
    status = Status.PERMISSION_DENIED


class CoordinatorPolicyMismatch(AttestationFailed):
    """The coordinator's evidence verifies but it runs another policy than expected."""

    reason = "coordinator_policy_mismatch"


@dataclass(frozen=True)
class CoordinatorPolicy:
    """What a client expects of a coordinator. ``policy_hash`` None: any policy (not pinned)."""

    anchors: TrustAnchors
    reference_values: ReferenceValues
    policy_hash: bytes | None


async def fetch_certificate(address: str, timeout: float = 10.0) -> bytes:
    """The DER certificate the server presents, unverified: trust comes from attestation."""
    host, port = split_address(address, "coordinator address")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ctx, server_hostname=SERVER_NAME), timeout
    )
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der:
            raise AttestationFailed("server presented no certificate")
        return bytes(der)
    finally:
        # Abort instead of a graceful TLS shutdown: the gRPC server does not always answer the
        # close_notify, and asyncio would then wait ssl_shutdown_timeout (30 s) for nothing.
        writer.transport.abort()
        await asyncio.sleep(0)


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def check_state_digest(resp: pb.AttestResponse) -> None:
    """The CAs and transition in the response are exactly the attested state."""
    if resp.latest_transition_hash or resp.root_ca_pem or resp.mesh_ca_pem:
        try:
            expected = state_digest(
                resp.latest_transition_hash,
                _der(resp.root_ca_pem),
                _der(resp.mesh_ca_pem),
                resp.deployment,
            )
        except ValueError as exc:
            raise AttestationFailed(f"attest response: malformed state ({exc})") from None
    else:
        expected = state_digest(None, None, None)
    if resp.state_digest != expected:
        raise AttestationFailed("attest response: state digest does not match the returned state")


class AttestedChannel:
    """A gRPC channel to a verified coordinator. Use :meth:`connect`."""

    def __init__(
        self, channel: grpc.aio.Channel, attestation: pb.AttestResponse, verified: VerifiedEvidence
    ) -> None:
        self.channel = channel
        self.attestation = attestation
        self.verified = verified
        self.attest = pb_grpc.AttestationStub(channel)
        self.user = pb_grpc.UserAPIStub(channel)
        self.mesh = pb_grpc.MeshAPIStub(channel)

    @classmethod
    async def connect(
        cls,
        address: str,
        policy: CoordinatorPolicy,
        *,
        now: datetime | None = None,
        timeout: float = 10.0,
        pinned_certificate: bytes | None = None,
    ) -> AttestedChannel:
        """Verify the coordinator at ``address``; raises AttestationFailed or EvidenceRejected.

        ``pinned_certificate`` (DER) replaces the prefetch; tests use it to model a channel
        pinned to a certificate other than the attested one.
        """
        cert_der = pinned_certificate or await fetch_certificate(address, timeout)
        cert = x509.load_der_x509_certificate(cert_der)
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        channel = grpc.aio.secure_channel(
            address,
            grpc.ssl_channel_credentials(
                root_certificates=cert.public_bytes(serialization.Encoding.PEM)
            ),
            options=[
                ("grpc.ssl_target_name_override", SERVER_NAME),
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )
        try:
            nonce = os.urandom(NONCE_SIZE)
            stub = pb_grpc.AttestationStub(channel)
            resp: pb.AttestResponse = await stub.Attest(
                pb.AttestRequest(nonce=nonce), timeout=timeout
            )
            check_state_digest(resp)
            report_data = attest_report_data(spki, resp.hpke_public_key, nonce, resp.state_digest)
            verified = Verifier(policy.anchors).verify(
                resp.evidence, policy.reference_values, report_data, now or datetime.now(UTC)
            )
            if policy.policy_hash is not None and verified.policy_hash != policy.policy_hash:
                raise CoordinatorPolicyMismatch(
                    f"coordinator runs policy {verified.policy_hash.hex()}, "
                    f"expected {policy.policy_hash.hex()}"
                )
        except BaseException:
            await channel.close()
            raise
        return cls(channel, resp, verified)

    @property
    def initialized(self) -> bool:
        return bool(self.attestation.latest_transition_hash)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AttestedChannel:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
