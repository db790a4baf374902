"""The etcd store over TLS against a real etcd: server authentication, client certificates,
user/password authentication with a role confined to the deployment's prefix, and the
coordinator's ``--etcd-*`` options end to end. Every refusal is a typed store error."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator import cli
from coordinator.store.base import ConcurrentUpdate, StoreAccessDenied, StoreUnavailable
from coordinator.store.etcd import EtcdStore, StoreConfigError
from tests.integration.service_helpers import (
    LATEST_KEY,
    WEB_POLICY,
    Coordinators,
    Keys,
    MockTee,
    coordinators_fixture,  # noqa: F401  (fixture)
    deploy,
    http_get,
    join,
    keys_fixture,  # noqa: F401  (fixture)
    mock_tee_fixture,  # noqa: F401  (fixture)
)
from tools.etcd_server import EtcdServer, EtcdTls, find_etcd

PASSWORD = "correct horse battery staple"
WRONG_PASSWORD = "wrong horse"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing etcd uses


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    cn: str,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca = _ca("concord test etcd CA")
    server_key, server = _leaf(
        ca_key,
        ca,
        "etcd",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client_key, client = _leaf(ca_key, ca, "concord", ExtendedKeyUsageOID.CLIENT_AUTH)
    _, other = _ca("some other CA")
    (d / "ca.pem").write_bytes(_pem(ca))
    (d / "server.pem").write_bytes(_pem(server))
    _write_key(d / "server-key.pem", server_key)
    (d / "client.pem").write_bytes(_pem(client))
    _write_key(d / "client-key.pem", client_key)
    (d / "other-ca.pem").write_bytes(_pem(other))
    return Pki(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server-key.pem",
        client_cert=d / "client.pem",
        client_key=d / "client-key.pem",
        other_ca=d / "other-ca.pem",
    )


def _tls(pki: Pki, *, client_auth: bool) -> EtcdTls:
    return EtcdTls(
        ca=pki.ca,
        server_cert=pki.server_cert,
        server_key=pki.server_key,
        client_ca=pki.ca if client_auth else None,
        client_cert=pki.client_cert if client_auth else None,
        client_key=pki.client_key if client_auth else None,
    )


def _started(tls: EtcdTls) -> Iterator[EtcdServer]:
    if find_etcd() is None:
        pytest.skip("etcd binary not installed")
    with EtcdServer(tls=tls) as server:
        yield server
    assert not server.running


@pytest.fixture(scope="module")
def mtls_etcd(pki: Pki) -> Iterator[EtcdServer]:
    """etcd over TLS that also requires a client certificate from the test CA."""
    yield from _started(_tls(pki, client_auth=True))


@pytest.fixture(scope="module")
def auth_etcd(pki: Pki) -> Iterator[EtcdServer]:
    """etcd over TLS (server authentication only) with users, roles and auth enabled."""
    yield from _started(_tls(pki, client_auth=False))


async def _roundtrip(store: EtcdStore) -> None:
    await store.set("test/probe", b"one")
    assert await store.get("test/probe") == b"one"
    await store.compare_and_swap("test/probe", b"one", b"two")
    with pytest.raises(ConcurrentUpdate):
        await store.compare_and_swap("test/probe", b"one", b"three")
    assert await store.get("test/probe") == b"two"


# --- mutual TLS ---------------------------------------------------------------------------------


async def test_mutual_tls_roundtrip(mtls_etcd: EtcdServer, pki: Pki, deployment: str) -> None:
    store = await EtcdStore.connect(
        [mtls_etcd.endpoint],
        deployment,
        ca_cert=pki.ca,
        cert_key=pki.client_key,
        cert_cert=pki.client_cert,
    )
    try:
        await _roundtrip(store)
    finally:
        await store.close()


async def test_plaintext_client_is_refused(mtls_etcd: EtcdServer, deployment: str) -> None:
    with pytest.raises(StoreUnavailable, match=mtls_etcd.endpoint):
        await EtcdStore.connect([mtls_etcd.endpoint], deployment, timeout=2.0)


async def test_missing_client_certificate_is_refused(
    mtls_etcd: EtcdServer, pki: Pki, deployment: str
) -> None:
    with pytest.raises(StoreUnavailable, match=mtls_etcd.endpoint):
        await EtcdStore.connect([mtls_etcd.endpoint], deployment, ca_cert=pki.ca, timeout=2.0)


async def test_server_from_an_untrusted_ca_is_refused(
    mtls_etcd: EtcdServer, pki: Pki, deployment: str
) -> None:
    """The store never talks to an etcd whose certificate its CA bundle does not vouch for."""
    with pytest.raises(StoreUnavailable, match=mtls_etcd.endpoint):
        await EtcdStore.connect(
            [mtls_etcd.endpoint],
            deployment,
            ca_cert=pki.other_ca,
            cert_key=pki.client_key,
            cert_cert=pki.client_cert,
            timeout=2.0,
        )


async def test_unreadable_tls_file_is_a_config_error(pki: Pki, deployment: str) -> None:
    with pytest.raises(StoreConfigError, match="cert_key: cannot read"):
        await EtcdStore.connect(
            ["127.0.0.1:1"],
            deployment,
            ca_cert=pki.ca,
            cert_key=pki.ca.parent / "missing.pem",
            cert_cert=pki.client_cert,
        )


# --- users, roles and passwords -----------------------------------------------------------------


def _gateway(server: EtcdServer, tls: EtcdTls, path: str, body: dict[str, Any]) -> Any:
    """etcd's JSON gateway (no etcdctl needed): user and role administration."""
    req = urllib.request.Request(
        f"{server.client_url}/v3/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10, context=tls.context()) as resp:
        return json.loads(resp.read() or b"{}")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def concord_user(auth_etcd: EtcdServer, pki: Pki) -> str:
    """Enable auth: a root user, and a user ``concord`` whose role may read and write only
    under one deployment's prefix. Returns that deployment's name."""
    tls = _tls(pki, client_auth=False)
    deployment = "tls-allowed"
    prefix = f"/concord/{deployment}/"
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    for path, body in (
        ("auth/role/add", {"name": "root"}),
        ("auth/user/add", {"name": "root", "password": "root-" + PASSWORD}),
        ("auth/user/grant", {"user": "root", "role": "root"}),
        ("auth/role/add", {"name": "concord"}),
        (
            "auth/role/grant",
            {
                "name": "concord",
                "perm": {"permType": "READWRITE", "key": _b64(prefix), "range_end": _b64(end)},
            },
        ),
        ("auth/user/add", {"name": "concord", "password": PASSWORD}),
        ("auth/user/grant", {"user": "concord", "role": "concord"}),
        ("auth/enable", {}),
    ):
        _gateway(auth_etcd, tls, path, body)
    return deployment


async def test_password_user_works_within_its_prefix(
    auth_etcd: EtcdServer, pki: Pki, concord_user: str
) -> None:
    store = await EtcdStore.connect(
        [auth_etcd.endpoint], concord_user, ca_cert=pki.ca, user="concord", password=PASSWORD
    )
    try:
        await _roundtrip(store)
        # A watch is a separate stream: it must authenticate too.
        it = store.watch("test/watched")
        task = asyncio.ensure_future(anext(it))
        try:
            deadline = time.monotonic() + 10
            while not task.done():
                assert time.monotonic() < deadline, "the watch never delivered"
                await store.set("test/watched", b"a")
                await asyncio.wait({task}, timeout=0.05)
            assert task.result() == b"a"
        finally:
            task.cancel()
            await it.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_wrong_password_is_refused(
    auth_etcd: EtcdServer, pki: Pki, concord_user: str
) -> None:
    with pytest.raises(StoreAccessDenied, match="authentication failed") as info:
        await EtcdStore.connect(
            [auth_etcd.endpoint],
            concord_user,
            ca_cert=pki.ca,
            user="concord",
            password=WRONG_PASSWORD,
            timeout=2.0,
        )
    assert WRONG_PASSWORD not in str(info.value)


async def test_user_cannot_reach_another_deployment(
    auth_etcd: EtcdServer, pki: Pki, concord_user: str
) -> None:
    """etcd's role check, not only our prefixing, keeps deployments apart."""
    with pytest.raises(StoreAccessDenied, match="permission denied"):
        store = await EtcdStore.connect(
            [auth_etcd.endpoint],
            "tls-forbidden",
            ca_cert=pki.ca,
            user="concord",
            password=PASSWORD,
            timeout=2.0,
        )
        try:
            await store.set("test/probe", b"x")
        finally:
            await store.close()


# --- the coordinator on a TLS etcd -------------------------------------------------------------


@pytest.mark.parametrize("auth", ["client-certificate", "password"])
async def test_coordinator_on_tls_etcd(
    auth: str,
    request: pytest.FixtureRequest,
    pki: Pki,
    coordinators: Coordinators,
    mock_tee: MockTee,
    keys: Keys,
) -> None:
    """``ServerConfig.etcd_options`` (what the ``--etcd-*`` flags become): the first manifest
    is stored over TLS, membership and watches run, a workload joins, and the history is in
    etcd. With a password the user's role covers only the deployment's prefix."""
    options: dict[str, str]
    if auth == "client-certificate":
        server: EtcdServer = request.getfixturevalue("mtls_etcd")
        deployment = "default"
        options = {
            "ca_cert": str(pki.ca),
            "cert_key": str(pki.client_key),
            "cert_cert": str(pki.client_cert),
        }
    else:
        server = request.getfixturevalue("auth_etcd")
        deployment = request.getfixturevalue("concord_user")
        options = {"ca_cert": str(pki.ca), "user": "concord", "password": PASSWORD}
    dep = await deploy(
        coordinators,
        mock_tee,
        keys,
        store=f"etcd://{server.endpoint}",
        etcd_options=options,
        deployment=deployment,
    )
    try:
        joined = await join(dep.mesh, mock_tee.provider(WEB_POLICY))
        assert joined.response.certificate_chain_pem
        status, _ = await http_get(dep.server.addresses["http"], "/readyz")
        assert status == 200
    finally:
        await dep.close()
    store = await EtcdStore.connect(
        [server.endpoint],
        deployment,
        **options,  # type: ignore[arg-type]
    )
    try:
        assert await store.has(LATEST_KEY)
    finally:
        await store.close()


def test_serve_with_a_wrong_etcd_password_exits_with_the_reason(
    auth_etcd: EtcdServer,
    pki: Pki,
    concord_user: str,
    mock_tee: MockTee,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``concord serve --etcd-ca --etcd-user --etcd-password-file``: refused credentials stop
    the start with the reason, and the password appears nowhere."""
    password_file = tmp_path / "etcd-password"
    password_file.write_text(WRONG_PASSWORD + "\n")
    policy = tmp_path / "policy"
    policy.write_bytes(b"coordinator policy")
    argv = [
        "serve",
        "--store",
        f"etcd://{auth_etcd.endpoint}",
        "--deployment",
        concord_user,
        "--etcd-ca",
        str(pki.ca),
        "--etcd-user",
        "concord",
        "--etcd-password-file",
        str(password_file),
        "--tee",
        f"mock:{mock_tee.directory}",
        "--mock-policy",
        str(policy),
        "--trust-anchors",
        f"mock:{mock_tee.directory}",
        "--user-addr",
        "127.0.0.1:0",
        "--mesh-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "StoreAccessDenied" in err and "authentication failed" in err
    assert WRONG_PASSWORD not in err
