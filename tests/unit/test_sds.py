"""The agent's secrets and its SDS server: the manager on a fake clock, the stream protocol as
transcripts, a gRPC client over the real UNIX socket, and the real Envoy taking its listener's
certificate from the server and rotating it while it serves.

The CA signs for real (``weir.control.ca``). Where Envoy or Python's TLS judges validity by
the real time, the CA keeps the real clock and only the manager's clock is advanced (the new
certificate is then valid in real time too).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import stat
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

from weir.agent.bootstrap import SDS_CLUSTER, BootstrapParams, render_bootstrap
from weir.agent.certs import rotation_time, verify_chain
from weir.agent.envoy import ENVOY_GID, ENVOY_UID, envoy_args, find_envoy_binary, runnable_binary
from weir.agent.sds import (
    DEFAULT_NAME,
    ROOT_NAME,
    SECRET_TYPE,
    SdsProtocolError,
    SdsServer,
    SdsStream,
    retry_delay,
)
from weir.agent.secrets import IssueError, WorkloadSecret, WorkloadSecrets
from weir.api.spiffe import SpiffeId
from weir.control.ca import CertificateAuthority, SignedCert

ID = SpiffeId("cluster.local", "shop", "cart")
TTL = timedelta(hours=1)
ROOT = os.geteuid() == 0
OWNER = (ENVOY_UID, ENVOY_GID) if ROOT else None
ENVOY_TTL = timedelta(seconds=90)
STEP = 10.0  # seconds any one wait may take


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def signer(ca: CertificateAuthority, identity: SpiffeId = ID, ttl: timedelta = TTL) -> Callable[[bytes], SignedCert]:
    def sign(csr_pem: bytes) -> SignedCert:
        return ca.sign(csr_pem, identity=identity, ttl=ttl)
    return sign


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def ca(clock: FakeClock) -> CertificateAuthority:
    return CertificateAuthority.self_signed(clock=clock)


@pytest.fixture
def manager(ca: CertificateAuthority, clock: FakeClock) -> WorkloadSecrets:
    return WorkloadSecrets(ID, signer(ca), clock)


def leaf(chain_pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificates(chain_pem)[0]


def uri_sans(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)


# ---- the manager ------------------------------------------------------------------------------


def test_manager_issues_checks_and_rotates_at_half_life(manager: WorkloadSecrets, clock: FakeClock) -> None:
    seen: list[WorkloadSecret] = []
    manager.add_listener(seen.append)
    assert manager.current is None
    assert manager.next_rotation() is None
    assert manager.due()

    chain, key = manager.default()
    first = manager.current
    assert first is not None
    assert seen == [first]
    assert first.generation == 1
    assert verify_chain(chain, b"", manager.root(), clock()) == ID
    assert uri_sans(leaf(chain)) == [str(ID)]
    assert key.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert manager.next_rotation() == rotation_time(leaf(chain), fraction=0.5)
    assert first.not_after - manager.next_rotation() == (first.not_after - first.not_before) / 2  # type: ignore[operator]

    clock.advance(TTL / 2 - timedelta(minutes=2))  # still before half-life (notBefore is now - 1 min)
    assert not manager.tick()
    assert manager.current is first
    assert len(seen) == 1
    clock.advance(timedelta(minutes=2))
    assert manager.due()
    assert manager.tick()
    second = manager.current
    assert second is not None
    assert second.serial != first.serial
    assert second.key_pem != first.key_pem
    assert second.generation == 2
    assert seen == [first, second]
    assert verify_chain(second.cert_chain_pem, b"", second.roots_pem, clock()) == ID


def test_a_failed_signing_keeps_the_old_secret(ca: CertificateAuthority, clock: FakeClock) -> None:
    fail = [False]

    def flaky(csr: bytes) -> SignedCert:
        if fail[0]:
            raise ConnectionError("CA unreachable")
        return signer(ca)(csr)

    manager = WorkloadSecrets(ID, flaky, clock)
    first = manager.ensure()
    clock.advance(TTL)  # past half-life
    fail[0] = True
    with pytest.raises(ConnectionError):
        manager.tick()
    assert manager.current is first
    fail[0] = False
    assert manager.tick()
    assert manager.current is not first


def test_answers_that_fail_the_checks_are_refused(ca: CertificateAuthority, clock: FakeClock) -> None:
    other = SpiffeId("cluster.local", "shop", "payments")

    def wrong_identity(csr: bytes) -> SignedCert:  # a CA that ignores the CSR's identity
        from weir.agent.certs import new_key_and_csr
        return ca.sign(new_key_and_csr(other)[1], identity=other, ttl=TTL)

    with pytest.raises(IssueError, match=r"for spiffe://cluster\.local/ns/shop/sa/payments, not for"):
        WorkloadSecrets(ID, wrong_identity, clock).ensure()

    def wrong_key(csr: bytes) -> SignedCert:  # the right identity, someone else's key
        from weir.agent.certs import new_key_and_csr
        return ca.sign(new_key_and_csr(ID)[1], identity=ID, ttl=TTL)

    with pytest.raises(IssueError, match="does not carry the key of our CSR"):
        WorkloadSecrets(ID, wrong_key, clock).ensure()

    stranger = CertificateAuthority.self_signed(clock=clock)

    def wrong_roots(csr: bytes) -> SignedCert:
        signed = ca.sign(csr, identity=ID, ttl=TTL)
        return SignedCert(signed.cert_pem, b"", stranger.root_pem, signed.not_after)

    manager = WorkloadSecrets(ID, wrong_roots, clock)
    with pytest.raises(IssueError, match="failed verification"):
        manager.ensure()
    assert manager.current is None


# ---- one stream's protocol, as a transcript ---------------------------------------------------


def request(names: list[str], *, version: str = "", nonce: str = "", error: str | None = None,
            type_url: str = SECRET_TYPE) -> Any:
    req = discovery_pb2.DiscoveryRequest(version_info=version, resource_names=names, type_url=type_url,
                                         response_nonce=nonce, node=base_pb2.Node(id="sidecar~test"))
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def unpack(response: Any) -> dict[str, Any]:
    assert response.type_url == SECRET_TYPE
    out = {}
    for resource in response.resources:
        secret = secret_pb2.Secret()
        assert resource.Unpack(secret)
        out[secret.name] = secret
    return out


def test_stream_transcript(manager: WorkloadSecrets, clock: FakeClock) -> None:
    stream = SdsStream("peer")
    assert stream.on_request(request([DEFAULT_NAME]), None) is None  # nothing issued yet: answered later
    first = manager.ensure()
    r1 = stream.on_secret(first)
    assert r1 is not None
    assert list(unpack(r1)) == [DEFAULT_NAME]
    assert stream.node_id == "sidecar~test"
    assert stream.on_secret(first) is None  # nothing changed
    assert stream.on_request(request([DEFAULT_NAME], version=r1.version_info, nonce=r1.nonce), first) is None
    assert stream.acked_version == r1.version_info
    assert stream.acks == 1

    clock.advance(TTL)
    second = manager.ensure()
    r2 = stream.on_secret(second)
    assert r2 is not None
    assert r2.version_info != r1.version_info
    assert r2.nonce != r1.nonce
    assert stream.on_request(request([DEFAULT_NAME], version=r1.version_info, nonce=r1.nonce), second) is None  # stale
    assert stream.on_request(request([DEFAULT_NAME], version=r1.version_info, nonce=r2.nonce, error="bad"),
                             second) is None
    status = stream.status()
    assert (status.acked_version, status.nack, status.nacks, status.sent_version) == (r1.version_info, "bad", 1,
                                                                                      r2.version_info)

    r3 = stream.on_request(request([DEFAULT_NAME, ROOT_NAME, "file-root:/x"], version=r1.version_info,
                                   nonce=r2.nonce), second)  # a new subscription set is answered at once
    assert r3 is not None
    assert set(unpack(r3)) == {DEFAULT_NAME, ROOT_NAME}
    roots = unpack(r3)[ROOT_NAME].validation_context.trusted_ca.inline_bytes
    assert roots == second.roots_pem
    with pytest.raises(SdsProtocolError, match="type_url"):
        stream.on_request(request([DEFAULT_NAME], type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"),
                          second)


def test_retry_delay_backs_off_to_a_ceiling() -> None:
    assert [retry_delay(n) for n in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


# ---- gRPC over the UNIX socket ----------------------------------------------------------------


async def until(predicate: Callable[[], bool], what: str, timeout: float = STEP) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def read(call: Any) -> Any:
    response = await asyncio.wait_for(call.read(), STEP)
    assert response is not grpc.aio.EOF
    return response


def test_grpc_stream_subscribe_ack_rotate_nack(manager: WorkloadSecrets, clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "run" / "workload-spiffe-uds" / "socket"

    async def scenario() -> None:
        server = SdsServer(manager, path, owner=OWNER)
        async with server:
            st = path.stat()
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o660
            if ROOT:
                assert (st.st_uid, st.st_gid) == (ENVOY_UID, ENVOY_GID)
                assert path.parent.stat().st_gid == ENVOY_GID
                assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
            async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
                stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
                certs, roots = stub.StreamSecrets(), stub.StreamSecrets()
                await certs.write(request([DEFAULT_NAME]))
                await roots.write(request([ROOT_NAME]))
                r1, root = await read(certs), await read(roots)
                tls = unpack(r1)[DEFAULT_NAME].tls_certificate
                chain, key = tls.certificate_chain.inline_bytes, tls.private_key.inline_bytes
                trusted = unpack(root)[ROOT_NAME].validation_context.trusted_ca.inline_bytes
                assert uri_sans(leaf(chain)) == [str(ID)]
                assert verify_chain(chain, b"", trusted, clock()) == ID
                assert (chain, key) == manager.default()
                await certs.write(request([DEFAULT_NAME], version=r1.version_info, nonce=r1.nonce))
                await roots.write(request([ROOT_NAME], version=root.version_info, nonce=root.nonce))
                await until(lambda: sorted(s.acks for s in server.status()) == [1, 1], "both ACKs")
                first_serial = leaf(chain).serial_number

                clock.advance(TTL / 2 + timedelta(minutes=1))
                assert manager.tick()
                r2 = await read(certs)  # pushed, unasked
                chain2 = unpack(r2)[DEFAULT_NAME].tls_certificate.certificate_chain.inline_bytes
                assert r2.version_info != r1.version_info
                assert leaf(chain2).serial_number != first_serial
                assert verify_chain(chain2, b"", trusted, clock()) == ID
                root_stream = next(s for s in server.status() if s.names == {ROOT_NAME})
                assert root_stream.sent_nonce == root.nonce  # same roots: no push to ROOTCA

                await certs.write(request([DEFAULT_NAME], version=r1.version_info, nonce=r2.nonce, error="bad key"))
                await until(lambda: any(s.nacks == 1 for s in server.status()), "the NACK")
                cert_stream = next(s for s in server.status() if s.names == {DEFAULT_NAME})
                assert (cert_stream.acked_version, cert_stream.nack) == (r1.version_info, "bad key")

                clock.advance(TTL / 2 + timedelta(minutes=1))
                assert manager.tick()
                r3 = await read(certs)  # the next rotation is pushed as usual
                assert r3.version_info not in (r1.version_info, r2.version_info)
                await certs.write(request([DEFAULT_NAME], version=r3.version_info, nonce=r3.nonce))
                await until(lambda: any(s.acked_version == r3.version_info and s.nack is None
                                        for s in server.status()), "the ACK of the third version")
                await server.stop()
                assert not path.exists()
                assert await asyncio.wait_for(certs.read(), STEP) is grpc.aio.EOF  # ended by the server
                assert await certs.code() == grpc.StatusCode.OK

    asyncio.run(scenario())


def test_a_subscription_before_the_first_certificate_is_answered_once_signing_succeeds(
        ca: CertificateAuthority, clock: FakeClock, tmp_path: Path) -> None:
    attempts = []

    def flaky(csr: bytes) -> SignedCert:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionError("CA not up yet")
        return signer(ca)(csr)

    manager = WorkloadSecrets(ID, flaky, clock)
    path = tmp_path / "sds.sock"

    async def scenario() -> None:
        async with SdsServer(manager, path, owner=OWNER, retry_initial=0.05, retry_max=0.1), \
                grpc.aio.insecure_channel(f"unix:{path}") as channel:
            call = sds_pb2_grpc.SecretDiscoveryServiceStub(channel).StreamSecrets()
            await call.write(request([DEFAULT_NAME, ROOT_NAME]))
            response = await read(call)
            assert set(unpack(response)) == {DEFAULT_NAME, ROOT_NAME}
            assert len(attempts) == 3
            call.cancel()
            stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
            fetched = await stub.FetchSecrets(request([ROOT_NAME]), timeout=STEP)
            assert unpack(fetched)[ROOT_NAME].validation_context.trusted_ca.inline_bytes == manager.root()
            delta = stub.DeltaSecrets()
            await delta.done_writing()
            assert await delta.code() == grpc.StatusCode.UNIMPLEMENTED

    asyncio.run(scenario())


# ---- the real Envoy ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def envoy_config(sds_path: Path, port: int, admin_port: int) -> dict[str, Any]:
    """A static bootstrap: the sidecar's own ``sds-grpc`` cluster and one mTLS listener whose
    certificate (``default``) and client validation (``ROOTCA``) come from SDS."""
    sidecar = render_bootstrap(BootstrapParams(pod_name="cart-1", namespace="shop", pod_ips=("10.0.0.7",),
                                               sds_path=str(sds_path)))
    sds_cluster = next(c for c in sidecar["static_resources"]["clusters"] if c["name"] == SDS_CLUSTER)
    sds = {"resource_api_version": "V3",
           "api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
                                 "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}]}}
    hcm = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    manager = {
        "@type": f"type.googleapis.com/{hcm}",
        "stat_prefix": "sds_test",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "served"}}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    tls = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificate_sds_secret_configs": [{"name": DEFAULT_NAME, "sds_config": sds}],
            "validation_context_sds_secret_config": {"name": ROOT_NAME, "sds_config": sds},
        },
    }
    listener = {
        "name": "mtls",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}],
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
        }],
    }
    return {
        "node": {"id": sidecar["node"]["id"], "cluster": sidecar["node"]["cluster"]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"clusters": [sds_cluster], "listeners": [listener]},
    }


def fetch(port: int, context: ssl.SSLContext) -> x509.Certificate:
    """One new mTLS connection and one request; the certificate Envoy presented."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
        tls.sendall(b"GET / HTTP/1.1\r\nHost: cart\r\nConnection: close\r\n\r\n")
        reply = b""
        while not reply.endswith(b"served"):  # not until EOF: Envoy delays its close by a second
            chunk = tls.recv(4096)
            assert chunk, f"the connection closed after {reply[:200]!r}"
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_real_envoy_serves_the_sds_certificate_and_rotates_without_a_failed_handshake(workdir: Path) -> None:
    # Envoy and the TLS client judge validity by the real time, so the fake clock starts there
    # and moves less than the CA's one-minute back-dating: a 90 s certificate (valid from -60 s)
    # is due at +15 s; at +16 s its successor is valid now in real time and due at +31 s.
    clock = FakeClock(datetime.now(UTC))
    ca = CertificateAuthority.self_signed(clock=clock)
    manager = WorkloadSecrets(ID, signer(ca, ttl=ENVOY_TTL), clock)
    client_id = SpiffeId("cluster.local", "shop", "frontend")
    client = WorkloadSecrets(client_id, signer(ca, client_id), clock)
    client_chain, client_key = client.default()
    (workdir / "client.pem").write_bytes(client_chain)
    (workdir / "client.key").write_bytes(client_key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # SPIFFE certificates name a URI, not a host
    context.load_verify_locations(cadata=ca.root_pem.decode())
    context.load_cert_chain(workdir / "client.pem", workdir / "client.key")

    sds_path = workdir / "run" / "workload-spiffe-uds" / "socket"
    port, admin_port = free_port(), free_port()
    config = workdir / "envoy.json"
    config.write_text(json.dumps(envoy_config(sds_path, port, admin_port)))
    config.chmod(0o644)
    as_envoy: dict[str, Any] = {"user": ENVOY_UID, "group": ENVOY_GID, "extra_groups": []} if ROOT else {}
    binary = runnable_binary(find_envoy_binary(), fallback_dir=workdir / "bin") if ROOT else find_envoy_binary()

    async def scenario() -> None:
        server = SdsServer(manager, sds_path, owner=OWNER)
        async with server:
            with (workdir / "envoy.log").open("wb") as log:
                proc = subprocess.Popen(envoy_args(binary, config, concurrency=1, log_level="info"),
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=workdir, start_new_session=True, **as_envoy)
            try:
                await envoy_scenario(server, proc)
            except BaseException:
                print((workdir / "envoy.log").read_text()[-4000:])
                raise
            finally:
                proc.kill()
                proc.wait()

    async def envoy_scenario(server: SdsServer, proc: subprocess.Popen[bytes]) -> None:
        if ROOT:
            uid_line = next(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                            if line.startswith("Uid:"))
            assert uid_line.split()[1] == str(ENVOY_UID)
        await until(lambda: sorted(s.names for s in server.status() if s.acks) == [{DEFAULT_NAME}, {ROOT_NAME}]
                    or proc.poll() is not None, "Envoy to ACK default and ROOTCA")
        assert proc.poll() is None, "Envoy exited"
        nodes = {s.node_id for s in server.status()}
        assert nodes == {envoy_config(sds_path, port, admin_port)["node"]["id"]}

        first = manager.current
        assert first is not None
        served = await retry_fetch(port, context)
        assert uri_sans(served) == [str(ID)]
        assert served.serial_number == first.serial

        # Rotation under load: a loop of new connections, each must complete, while the
        # manager rotates at half-life and the server pushes the new secret.
        results: list[int | BaseException] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                try:
                    results.append(fetch(port, context).serial_number)
                except (OSError, AssertionError) as e:
                    results.append(e)

        worker = threading.Thread(target=hammer, name="tls-hammer")
        worker.start()
        try:
            await until(lambda: len(results) >= 20, "connections before the rotation")
            clock.advance(timedelta(seconds=16))
            assert await asyncio.to_thread(manager.tick)
            second = manager.current
            assert second is not None
            assert second.serial != first.serial
            await until(lambda: second.serial in results, "a connection with the new certificate")
            await until(lambda: results.count(second.serial) >= 20, "20 connections on the new certificate")
        finally:
            stop.set()
            await asyncio.to_thread(worker.join)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures == [], failures
        assert set(results) == {first.serial, second.serial}
        switch = results.index(second.serial)
        assert all(r == second.serial for r in results[switch:])  # once switched, never back
        assert any(s.names == {DEFAULT_NAME} and s.nack is None and s.acks == 2 for s in server.status())
        fresh = await asyncio.to_thread(fetch, port, context)
        assert fresh.serial_number == second.serial
        assert uri_sans(fresh) == [str(ID)]
        certs = await asyncio.to_thread(admin_json, admin_port, "/certs")
        serials = {int(c["serial_number"], 16) for entry in certs["certificates"]
                   for c in entry.get("cert_chain", [])}
        assert second.serial in serials
        assert first.serial not in serials

    asyncio.run(scenario())


async def retry_fetch(port: int, context: ssl.SSLContext) -> x509.Certificate:
    """The first connection: the listener may still be warming when the secrets have just arrived."""
    deadline = time.monotonic() + STEP
    while True:
        try:
            return await asyncio.to_thread(fetch, port, context)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def admin_json(admin_port: int, path: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{admin_port}{path}", timeout=5) as response:
        return json.load(response)
