"""weir.control.casvc and weir.agent.caclient: workload CSRs signed over gRPC, as Istio does it.

A real ``grpc.aio`` server (:class:`CaServer`, TLS, on 127.0.0.1 with a free port) runs on its
own event loop in a thread; the real client (:func:`grpc_signer`) calls it, alone or under
:class:`WorkloadSecrets`. Issued certificates carry the token's identity and chain to the root
(with and without an intermediate CA, in Istio's ``cert_chain`` order). Refused: no token, a
malformed, forged or expired token, a CSR for another identity, a pod the ``pod_check`` no
longer knows, impersonation; each counted and logged. TLS: a wrong trust bundle or server name
fails; the serving certificate names istiod and the bind IP and is renewed at half-life.
Validity: honoured, defaulted, capped. The client re-reads the token, survives a CA restart.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from weir.agent.caclient import CaAnswer, CaRefused, CaUnavailable, GrpcSigner, grpc_signer
from weir.agent.certs import new_key_and_csr, verify_chain
from weir.agent.secrets import IssueError, WorkloadSecrets
from weir.api.spiffe import SpiffeId
from weir.control.ca import CertificateAuthority
from weir.control.casvc import ISTIOD_DNS_NAMES, CaServer, CaService, PodCheck
from weir.pki import tokens
from weir.platform import caproto

from .pki_helpers import ID
from .test_ca import issue

KEY = b"t" * 32
HOUR = timedelta(hours=1)


class Clock:
    """The real time, plus an offset a test may move forward."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Mesh:
    """A CA server on its own event loop (a thread), and the files a pod would have."""

    ca: CertificateAuthority
    service: CaService
    server: CaServer
    address: str
    root_cert: Path
    token_file: Path
    loop: asyncio.AbstractEventLoop
    signers: list[GrpcSigner] = field(default_factory=list)

    def token(self, identity: SpiffeId = ID, *, key: bytes = KEY, ttl: float = 3600, now: float | None = None,
              audience: str = "istio-ca", pod: str = "cart-1", uid: str = "uid-1") -> str:
        tok = tokens.mint(key, namespace=identity.namespace, service_account=identity.service_account,
                          pod_name=pod, pod_uid=uid, audience=audience, ttl=ttl,
                          now=time.time() if now is None else now)
        self.token_file.write_text(tok + "\n")
        return tok

    def signer(self, **kwargs: Any) -> GrpcSigner:
        address = kwargs.pop("address", self.address)
        signer = grpc_signer(address, **({"token_file": self.token_file, "root_cert": self.root_cert} | kwargs))
        self.signers.append(signer)
        return signer

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="ca-server-loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def start_mesh(loop: asyncio.AbstractEventLoop, tmp_path: Path, *, ca: CertificateAuthority | None = None,
               pod_check: PodCheck | None = None, service_class: type[CaService] = CaService,
               **service_args: Any) -> Mesh:
    ca = ca or CertificateAuthority.self_signed(clock=Clock())
    service = service_class(ca, KEY, pod_check=pod_check, **service_args)
    server = CaServer(service, serving_ttl=HOUR)
    address = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1:0"), loop).result(timeout=30)
    (tmp_path / "root-cert.pem").write_bytes(ca.root_pem)
    return Mesh(ca=ca, service=service, server=server, address=address, root_cert=tmp_path / "root-cert.pem",
                token_file=tmp_path / "token", loop=loop)


@pytest.fixture
def mesh(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> Iterator[Mesh]:
    yield from _serve(start_mesh(loop, tmp_path))


@pytest.fixture
def make_mesh(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> Iterator[Callable[..., Mesh]]:
    made: list[Mesh] = []

    def make(**kwargs: Any) -> Mesh:
        made.append(start_mesh(loop, tmp_path, **kwargs))
        return made[-1]
    yield make
    for m in made:
        for _ in _serve(m):
            pass


def _serve(m: Mesh) -> Iterator[Mesh]:
    try:
        yield m
    finally:
        for signer in m.signers:
            signer.close()
        m.run(m.server.stop(0))


def leaf_of(answer: CaAnswer) -> x509.Certificate:
    return x509.load_pem_x509_certificate(answer.cert_pem)


def uri_sans(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)


def refusal(sign: Callable[[bytes], Any], csr: bytes, kind: type[Exception] = CaRefused) -> Any:
    with pytest.raises(kind) as info:
        sign(csr)
    return info.value


def raw_call(m: Mesh, request: Any, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    """The RPC without weir's client (as any Istio agent would make it)."""
    credentials = grpc.ssl_channel_credentials(root_certificates=m.root_cert.read_bytes())
    with grpc.secure_channel(m.address, credentials,
                             options=(("grpc.ssl_target_name_override", ISTIOD_DNS_NAMES[0]),)) as channel:
        call = channel.unary_unary(caproto.METHOD_PATH,
                                   request_serializer=caproto.IstioCertificateRequest.SerializeToString,
                                   response_deserializer=caproto.IstioCertificateResponse.FromString)
        return call(request, metadata=metadata, timeout=10)


# -- issuing -----------------------------------------------------------------------------------------

def test_issues_the_tokens_identity_chained_to_the_root(mesh: Mesh) -> None:
    mesh.token(ID, pod="cart-1", uid="uid-1")
    _, csr = new_key_and_csr(ID)
    answer = mesh.signer()(csr)
    leaf = leaf_of(answer)
    assert uri_sans(leaf) == [str(ID)]
    assert answer.root_pem == mesh.ca.root_pem
    assert answer.chain_pem == b""  # a self-signed CA: the leaf, then the root
    assert verify_chain(answer.cert_pem, answer.chain_pem, answer.root_pem, datetime.now(UTC)) == ID
    assert mesh.service.stats.issued == 1
    assert mesh.service.stats.refused() == {}


def test_workload_secrets_renew_through_the_ca(mesh: Mesh) -> None:
    mesh.token(ID)
    sign = mesh.signer()
    first = WorkloadSecrets(ID, sign, lambda: datetime.now(UTC)).ensure()
    assert first.identity == ID
    second = WorkloadSecrets(ID, sign, lambda: datetime.now(UTC)).ensure()  # the same channel again
    assert second.serial != first.serial
    assert mesh.service.stats.issued == 2


def test_istio_cert_chain_order_with_an_intermediate(make_mesh: Callable[..., Mesh]) -> None:
    now = datetime.now(UTC)
    root = issue("root", not_before=now - timedelta(days=1), not_after=now + timedelta(days=365))
    inter = issue("intermediate", root, not_before=now - timedelta(days=1), not_after=now + timedelta(days=300))
    ca = CertificateAuthority.from_pem(
        ca_cert=inter.pem, root_cert=root.pem, cert_chain=inter.pem + root.pem,
        ca_key=inter.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    m = make_mesh(ca=ca)
    m.token(ID)
    _, csr = new_key_and_csr(ID)
    response = raw_call(m, caproto.IstioCertificateRequest(csr=csr.decode()),
                        metadata=(("authorization", f"Bearer {m.token_file.read_text().strip()}"),))
    chain = [x509.load_pem_x509_certificates(pem.encode()) for pem in response.cert_chain]
    assert [len(c) for c in chain] == [1, 1, 1]
    assert uri_sans(chain[0][0]) == [str(ID)]
    assert chain[1][0] == inter.cert
    assert chain[2][0] == root.cert
    answer = m.signer()(new_key_and_csr(ID)[1])
    assert verify_chain(answer.cert_pem, answer.chain_pem, answer.root_pem, datetime.now(UTC)) == ID


# -- refusals ----------------------------------------------------------------------------------------

def test_no_token_is_unauthenticated(mesh: Mesh) -> None:
    _, csr = new_key_and_csr(ID)
    with pytest.raises(grpc.RpcError) as info:
        raw_call(mesh, caproto.IstioCertificateRequest(csr=csr.decode()))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        raw_call(mesh, caproto.IstioCertificateRequest(csr=csr.decode()), metadata=(("authorization", "Basic x"),))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert mesh.service.stats.refused() == {"no-token": 1, "malformed": 1}
    assert mesh.service.stats.issued == 0


def test_bad_tokens_are_unauthenticated(mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    sign = mesh.signer()
    _, csr = new_key_and_csr(ID)
    mesh.token_file.write_text("not-a-token")
    error = refusal(sign, csr)
    assert error.code == "UNAUTHENTICATED"
    assert "3 dot-separated parts" in str(error)
    forged = mesh.token(ID, key=b"x" * 32)
    error = refusal(sign, csr)
    assert "signature does not verify" in str(error)
    mesh.token(ID, now=time.time() - 7200, ttl=3600)
    assert "expired" in str(refusal(sign, csr))
    mesh.token(ID, audience="kubernetes")
    assert "not for 'istio-ca'" in str(refusal(sign, csr))
    assert mesh.service.stats.refused() == {"malformed": 1, "bad-signature": 1, "expired": 1, "wrong-audience": 1}
    assert mesh.service.stats.issued == 0
    logged = [r.getMessage() for r in caplog.records if r.name == "weir.control.casvc"]
    assert any("refused" in line and "UNAUTHENTICATED" in line and "expired" in line for line in logged)
    assert not any(forged in line for line in logged)  # tokens are never logged
    mesh.token(ID)  # the token file is read afresh: the same signer now succeeds
    assert uri_sans(leaf_of(sign(csr))) == [str(ID)]


def test_a_csr_for_another_identity_is_refused(mesh: Mesh) -> None:
    mesh.token(ID)
    other = SpiffeId("cluster.local", "shop", "payments")
    _, csr = new_key_and_csr(other)
    error = refusal(mesh.signer(), csr)
    assert error.code == "INVALID_ARGUMENT"
    assert f"the CSR asks for URI:{other}, but the caller's identity is {ID}" in str(error)
    secrets = WorkloadSecrets(other, mesh.signer(), lambda: datetime.now(UTC))
    with pytest.raises(CaRefused):
        secrets.ensure()
    assert mesh.service.stats.refused() == {"bad-csr": 2}


def test_garbage_csr_is_invalid_argument(mesh: Mesh) -> None:
    mesh.token(ID)
    error = refusal(mesh.signer(), b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    assert error.code == "INVALID_ARGUMENT"
    assert "PKCS #10" in str(error)


def test_pod_check_refuses_tokens_of_pods_that_are_gone(make_mesh: Callable[..., Mesh]) -> None:
    asked: list[tuple[str, str, str]] = []
    alive = {("shop", "cart-1", "uid-1")}

    def pod_check(namespace: str, name: str, uid: str) -> bool:
        asked.append((namespace, name, uid))
        return (namespace, name, uid) in alive

    m = make_mesh(pod_check=pod_check)
    _, csr = new_key_and_csr(ID)
    sign = m.signer()
    m.token(ID, pod="cart-1", uid="uid-1")
    sign(csr)
    m.token(ID, pod="cart-1", uid="uid-0")  # the same name, an older pod
    error = refusal(sign, csr)
    assert error.code == "UNAUTHENTICATED"
    assert "pod shop/cart-1 (uid uid-0)" in str(error)
    assert "no longer exists" in str(error)
    assert asked == [("shop", "cart-1", "uid-1"), ("shop", "cart-1", "uid-0")]
    assert m.service.stats.refused() == {"pod-gone": 1}


def test_a_failing_pod_check_is_temporary(make_mesh: Callable[..., Mesh]) -> None:
    def pod_check(namespace: str, name: str, uid: str) -> bool:
        raise OSError("database is locked")

    m = make_mesh(pod_check=pod_check)
    m.token(ID)
    error = refusal(m.signer(), new_key_and_csr(ID)[1], CaUnavailable)
    assert error.code == "UNAVAILABLE"
    assert "database is locked" in str(error)


def test_impersonation_is_refused(mesh: Mesh) -> None:
    tok = mesh.token(ID)
    request = caproto.IstioCertificateRequest(csr=new_key_and_csr(ID)[1].decode())
    request.metadata.update({"ImpersonatedIdentity": "spiffe://cluster.local/ns/kube-system/sa/admin"})
    with pytest.raises(grpc.RpcError) as info:
        raw_call(mesh, request, metadata=(("authorization", f"Bearer {tok}"),))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_missing_token_file_is_temporary_and_local(mesh: Mesh) -> None:
    error = refusal(mesh.signer(), new_key_and_csr(ID)[1], CaUnavailable)
    assert error.code == "LOCAL"
    assert str(mesh.token_file) in str(error)


# -- TLS ---------------------------------------------------------------------------------------------

def test_a_wrong_trust_bundle_fails_tls(mesh: Mesh, tmp_path: Path) -> None:
    mesh.token(ID)
    other = tmp_path / "other-root.pem"
    other.write_bytes(CertificateAuthority.self_signed().root_pem)
    error = refusal(mesh.signer(root_cert=other), new_key_and_csr(ID)[1], CaUnavailable)
    assert error.code == "UNAVAILABLE"
    assert mesh.service.stats.issued == 0
    assert mesh.service.stats.refused() == {}  # the request never reached the service


@pytest.mark.parametrize("content", [b"", b"garbage\n"])
def test_an_empty_or_garbage_trust_bundle_is_refused_locally(mesh: Mesh, tmp_path: Path, content: bytes) -> None:
    mesh.token(ID)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(content)
    error = refusal(mesh.signer(root_cert=bundle), new_key_and_csr(ID)[1], CaUnavailable)
    assert error.code == "LOCAL"
    assert "holds no PEM certificate" in str(error)


def test_a_changed_trust_bundle_is_picked_up(mesh: Mesh, tmp_path: Path) -> None:
    mesh.token(ID)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(CertificateAuthority.self_signed().root_pem)
    sign = mesh.signer(root_cert=bundle)
    refusal(sign, new_key_and_csr(ID)[1], CaUnavailable)
    bundle.write_bytes(mesh.ca.root_pem)  # the mesh's bundle arrives: a new channel verifies with it
    assert uri_sans(leaf_of(sign(new_key_and_csr(ID)[1]))) == [str(ID)]


def test_a_wrong_server_name_fails_tls(mesh: Mesh) -> None:
    mesh.token(ID)
    refusal(mesh.signer(server_name="evil.example.com"), new_key_and_csr(ID)[1], CaUnavailable)
    sign = mesh.signer(server_name="istiod.istio-system.svc.cluster.local")
    assert uri_sans(leaf_of(sign(new_key_and_csr(ID)[1]))) == [str(ID)]


def peer_certificate(address: str) -> x509.Certificate:
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only reading what the server presents
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=ISTIOD_DNS_NAMES[0]) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_the_serving_certificate_names_istiod_and_is_renewed(mesh: Mesh) -> None:
    cert = peer_certificate(mesh.address)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == list(ISTIOD_DNS_NAMES)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH])
    cert.verify_directly_issued_by(mesh.ca.cert)
    assert peer_certificate(mesh.address).serial_number == cert.serial_number  # not due: the same one
    clock = mesh.ca.clock
    assert isinstance(clock, Clock)
    clock.offset = timedelta(minutes=31)  # past half of the one-hour serving TTL
    renewed = peer_certificate(mesh.address)
    assert renewed.serial_number != cert.serial_number
    assert mesh.server.serving_cert is not None
    assert renewed.not_valid_after_utc == mesh.server.serving_cert.not_after


@pytest.mark.parametrize(("names", "ips", "ttl", "words"), [
    (["Not_A_Name"], [], HOUR, "DNS name 'Not_A_Name'"),
    ([], ["300.1.1.1"], HOUR, "IP '300.1.1.1' is not an IP address"),
    ([], [], HOUR, "at least one DNS name or IP"),
    (["istiod"], [], timedelta(0), "ttl must be positive"),
])
def test_serving_cert_refuses_bad_input(names: list[str], ips: list[str], ttl: timedelta, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        CertificateAuthority.self_signed().serving_cert(names, ips, ttl=ttl)


def test_serving_cert_is_capped_by_the_ca() -> None:
    ca = CertificateAuthority.self_signed(ttl=timedelta(days=2))
    serving = ca.serving_cert(["istiod"], ["::1"], ttl=timedelta(days=30))
    assert serving.not_after == ca.not_after
    leaf = x509.load_pem_x509_certificates(serving.cert_chain_pem)
    assert len(leaf) == 1  # the root is not sent
    assert b"PRIVATE KEY" in serving.key_pem
    assert "key_pem" not in repr(serving)


# -- validity ----------------------------------------------------------------------------------------

def lifetime(answer: CaAnswer) -> timedelta:
    leaf = leaf_of(answer)
    return leaf.not_valid_after_utc - leaf.not_valid_before_utc - timedelta(minutes=1)  # the CA's clock skew


def test_validity_is_honoured_defaulted_and_capped(make_mesh: Callable[..., Mesh]) -> None:
    m = make_mesh(max_ttl=timedelta(hours=6), default_ttl=timedelta(hours=2))
    m.token(ID)
    _, csr = new_key_and_csr(ID)
    assert abs(lifetime(m.signer(ttl=HOUR)(csr)) - HOUR) <= timedelta(seconds=2)
    assert abs(lifetime(m.signer(ttl=timedelta(days=365))(csr)) - timedelta(hours=6)) <= timedelta(seconds=2)
    response = raw_call(m, caproto.IstioCertificateRequest(csr=csr.decode(), validity_duration=0),
                        metadata=(("authorization", f"Bearer {m.token_file.read_text().strip()}"),))
    leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
    granted = leaf.not_valid_after_utc - leaf.not_valid_before_utc - timedelta(minutes=1)
    assert abs(granted - timedelta(hours=2)) <= timedelta(seconds=2)
    huge = raw_call(m, caproto.IstioCertificateRequest(csr=csr.decode(), validity_duration=2**62),
                    metadata=(("authorization", f"Bearer {m.token_file.read_text().strip()}"),))
    assert len(huge.cert_chain) == 2


def test_service_settings_are_checked() -> None:
    ca = CertificateAuthority.self_signed()
    with pytest.raises(ValueError, match="max_ttl"):
        CaService(ca, KEY, max_ttl=timedelta(days=91))
    with pytest.raises(ValueError, match="default_ttl"):
        CaService(ca, KEY, max_ttl=HOUR, default_ttl=timedelta(hours=2))


# -- the client's channel ----------------------------------------------------------------------------

def test_the_client_survives_a_ca_restart(mesh: Mesh) -> None:
    mesh.token(ID)
    sign = mesh.signer()
    _, csr = new_key_and_csr(ID)
    sign(csr)
    mesh.run(mesh.server.stop(0))
    error = refusal(sign, csr, CaUnavailable)
    assert error.code == "UNAVAILABLE"
    again = CaServer(mesh.service, serving_ttl=HOUR)
    assert mesh.run(again.start(mesh.address)) == mesh.address
    mesh.server = again
    assert uri_sans(leaf_of(sign(csr))) == [str(ID)]  # dialled afresh, no back-off wait


class TruncatingService(CaService):
    """A CA that answers only the leaf: the client cannot tell the root."""

    async def create_certificate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        answer = await super().create_certificate(request, context)
        return caproto.IstioCertificateResponse(cert_chain=answer.cert_chain[:1])


def test_an_answer_without_a_chain_is_an_issue_error(make_mesh: Callable[..., Mesh]) -> None:
    m = make_mesh(service_class=TruncatingService)
    m.token(ID)
    with pytest.raises(IssueError, match="answered 1 PEM block"):
        m.signer()(new_key_and_csr(ID)[1])


def test_client_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="address"):
        grpc_signer("", token_file=tmp_path / "t", root_cert=tmp_path / "r")
    with pytest.raises(ValueError, match="timeout"):
        grpc_signer("127.0.0.1:1", token_file=tmp_path / "t", root_cert=tmp_path / "r", timeout=0)


def test_bad_server_addresses(loop: asyncio.AbstractEventLoop) -> None:
    server = CaServer(CaService(CertificateAuthority.self_signed(), KEY))
    with pytest.raises(ValueError, match="not host:port"):
        asyncio.run_coroutine_threadsafe(server.start("127.0.0.1"), loop).result(timeout=30)
    with pytest.raises(OSError, match="cannot listen"):
        asyncio.run_coroutine_threadsafe(server.start("192.0.2.1:0"), loop).result(timeout=30)


@pytest.fixture(autouse=True)
def _log_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="weir.control.casvc")
