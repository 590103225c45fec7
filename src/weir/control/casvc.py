"""The CA over the network (istiod's ``IstioCertificateService``, port 15012): signs workload CSRs.

A sidecar agent calls ``istio.v1.auth.IstioCertificateService/CreateCertificate`` (messages in
:mod:`weir.platform.caproto`) over TLS, with its pod's token in the ``authorization: Bearer
<token>`` header, as Istio's agent sends its projected ``istio-token``. :class:`CaService` decides,
in this order, each refusal one gRPC status with a message that says why:

1. the token: present, one, and verified with :func:`weir.pki.tokens.verify` (signature,
   audience ``istio-ca``, expiry) -> else ``UNAUTHENTICATED``;
2. the pod: the optional ``pod_check(namespace, pod_name, pod_uid)`` must say it still exists,
   so a token outliving its pod is worthless -> else ``UNAUTHENTICATED`` (``UNAVAILABLE`` when
   the check itself fails, so the agent retries);
3. the request: impersonation (Istio's ``ImpersonatedIdentity`` metadata) is refused ->
   ``PERMISSION_DENIED``;
4. the CSR: signed by :meth:`weir.control.ca.CertificateAuthority.sign` for the identity
   ``spiffe://<trust domain>/ns/<ns>/sa/<sa>`` taken from the token, never from the request; a
   CSR naming anything else, or a malformed one, is ``INVALID_ARGUMENT``.

``validity_duration`` (seconds) is honoured up to ``max_ttl`` (the CA's cap, 90 days by
default): longer requests get ``max_ttl`` (Istio refuses them instead), zero or negative gets
``default_ttl`` (24 h, Istio's ``DEFAULT_WORKLOAD_CERT_TTL``). The answer's ``cert_chain`` is
Istio's: the leaf, each intermediate, then the root bundle, one PEM string each. Every issuance
and every refusal is logged and counted in :class:`CaStats`.

:class:`CaServer` is the driver: a ``grpc.aio`` server on ``host:port`` with TLS, serving a
certificate that the CA issues for istiod's names (and the bind IP), renewed at half-life for
new connections. The checks run on a worker thread (token and CSR crypto, a pod lookup), never
on the event loop.
"""

from __future__ import annotations

import asyncio  # noqa: TID251 - the CA service's driver (worker threads for checks and signing)
import ipaddress
import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from google.protobuf import json_format

from weir.api.spiffe import SpiffeId, SpiffeIdError
from weir.control.ca import CertificateAuthority, ServingCert, SigningError
from weir.pki import tokens
from weir.platform import caproto

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 15012
"""istiod's secure port: the CA (and XDS over TLS) for sidecars."""
ISTIOD_DNS_NAMES: Final = ("istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local")
DEFAULT_WORKLOAD_TTL: Final = timedelta(hours=24)
DEFAULT_SERVING_TTL: Final = timedelta(days=30)
DEFAULT_GRACE: Final = 5.0
IMPERSONATION_KEY: Final = "ImpersonatedIdentity"
"""Istio's request metadata with which a trusted node agent asks for another identity."""

PodCheck = Callable[[str, str, str], bool]
"""``(namespace, pod_name, pod_uid) -> whether that pod (that uid) still exists``."""


class Refusal(Exception):
    """A request the CA will not sign: the gRPC ``code`` to answer, a short ``reason`` (counted
    in :class:`CaStats`) and the message the caller sees."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(message)


class CaStats:
    """Issuances and refusals since start; refusals by reason (a token's ``TokenError.reason``,
    ``no-token``, ``pod-gone``, ``pod-check-failed``, ``impersonation``, ``bad-csr``, ``ca``).
    Safe to update and read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._issued = 0
        self._refused: Counter[str] = Counter()

    def record_issued(self) -> None:
        with self._lock:
            self._issued += 1

    def record_refused(self, reason: str) -> None:
        with self._lock:
            self._refused[reason] += 1

    @property
    def issued(self) -> int:
        with self._lock:
            return self._issued

    def refused(self) -> dict[str, int]:
        """Refusals by reason."""
        with self._lock:
            return dict(self._refused)


@dataclass(frozen=True)
class Issuance:
    """One certificate issued: who got it, its serial and expiry, and the answer's ``cert_chain``."""

    identity: SpiffeId
    serial: int
    not_after: datetime
    cert_chain: tuple[str, ...]


class CaService:
    """``IstioCertificateService``: authenticates the caller by token and signs its CSR with ``ca``."""

    def __init__(self, ca: CertificateAuthority, token_key: bytes, *, audience: str = tokens.DEFAULT_AUDIENCE,
                 pod_check: PodCheck | None = None, default_ttl: timedelta = DEFAULT_WORKLOAD_TTL,
                 max_ttl: timedelta | None = None, token_leeway: timedelta = timedelta(0)) -> None:
        self.ca = ca
        self.max_ttl = ca.max_workload_ttl if max_ttl is None else max_ttl
        if not timedelta(0) < self.max_ttl <= ca.max_workload_ttl:
            raise ValueError(f"max_ttl must be positive and at most the CA's cap {ca.max_workload_ttl}, "
                             f"not {self.max_ttl}")
        if not timedelta(0) < default_ttl <= self.max_ttl:
            raise ValueError(f"default_ttl must be positive and at most max_ttl {self.max_ttl}, not {default_ttl}")
        self.default_ttl = default_ttl
        self.audience = audience
        self.pod_check = pod_check
        self.token_leeway = token_leeway
        self.stats = CaStats()
        self._token_key = token_key

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to add to a ``grpc.aio`` server."""
        method = grpc.unary_unary_rpc_method_handler(
            self.create_certificate, request_deserializer=caproto.IstioCertificateRequest.FromString,
            response_serializer=caproto.IstioCertificateResponse.SerializeToString)
        return grpc.method_handlers_generic_handler(caproto.SERVICE, {caproto.METHOD: method})

    async def create_certificate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """The RPC: :meth:`issue` on a worker thread; a :class:`Refusal` becomes the call's status."""
        peer = str(context.peer())
        authorization = [str(value) for key, value in (context.invocation_metadata() or ())
                         if str(key).lower() == "authorization"]
        try:
            issued = await asyncio.to_thread(self.issue, authorization, request, peer)
        except Refusal as refusal:
            await context.abort(refusal.code, str(refusal))  # raises: the call ends with this status
            raise
        return caproto.IstioCertificateResponse(cert_chain=list(issued.cert_chain))

    # -- the decision (blocking: runs on a worker thread) ------------------------------------------

    def issue(self, authorization: Sequence[str], request: Any, peer: str = "?") -> Issuance:
        """Authenticate ``authorization`` (the header's values), check the pod, sign the request's
        CSR; each refusal is logged, counted and raised as a :class:`Refusal`."""
        try:
            issuance = self._issue(authorization, request)
        except Refusal as refusal:
            self.stats.record_refused(refusal.reason)
            log.warning("CA: refused a certificate to %s (%s): %s", peer, refusal.code.name, refusal)
            raise
        self.stats.record_issued()
        log.info("CA: issued %s to %s: serial %x, not after %s", issuance.identity, peer, issuance.serial,
                 issuance.not_after.isoformat())
        return issuance

    def _issue(self, authorization: Sequence[str], request: Any) -> Issuance:
        claims = self._authenticate(authorization)
        who = f"pod {claims.namespace}/{claims.pod_name} (uid {claims.pod_uid})"
        if self.pod_check is not None:
            try:
                exists = self.pod_check(claims.namespace, claims.pod_name, claims.pod_uid)
            except Exception as e:
                log.exception("CA: the pod check for %s failed", who)
                raise Refusal(grpc.StatusCode.UNAVAILABLE, "pod-check-failed",
                              f"cannot check that {who} exists: {e}") from e
            if not exists:
                raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "pod-gone",
                              f"the token belongs to {who}, which no longer exists")
        metadata: Mapping[str, Any] = (json_format.MessageToDict(request.metadata)
                                       if request.HasField("metadata") else {})
        if IMPERSONATION_KEY in metadata:
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED, "impersonation",
                          f"{IMPERSONATION_KEY} is not allowed: a caller gets only its own identity")
        try:
            identity = SpiffeId(self.ca.trust_domain, claims.namespace, claims.service_account)
        except SpiffeIdError as e:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "bad-identity",
                          f"the token's service account is not a workload identity: {e}") from None
        ttl = self._ttl(int(request.validity_duration), identity)
        if self.ca.clock() >= self.ca.not_after:
            raise Refusal(grpc.StatusCode.INTERNAL, "ca",
                          f"the CA cannot sign: its chain expired at {self.ca.not_after.isoformat()}")
        try:
            signed = self.ca.sign(str(request.csr).encode(), identity=identity, ttl=ttl)
        except SigningError as e:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "bad-csr", f"{who}: {e}") from None
        leaf = x509.load_pem_x509_certificate(signed.cert_pem)
        return Issuance(identity=identity, serial=leaf.serial_number, not_after=signed.not_after,
                        cert_chain=(signed.cert_pem.decode(), *self._intermediates(), signed.root_pem.decode()))

    def _authenticate(self, authorization: Sequence[str]) -> tokens.Claims:
        if not authorization:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "no-token",
                          "no 'authorization: Bearer <token>' header: the CA needs the pod's token")
        if len(authorization) > 1:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "malformed",
                          f"{len(authorization)} authorization headers; send exactly one")
        scheme, _, token = authorization[0].strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "malformed",
                          "the authorization header is not 'Bearer <token>'")
        try:
            return tokens.verify(self._token_key, token.strip(), audience=self.audience, now=self.ca.clock(),
                                 leeway=self.token_leeway)
        except tokens.TokenError as e:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, e.reason, f"the token was refused: {e}") from None

    def _ttl(self, seconds: int, identity: SpiffeId) -> timedelta:
        if seconds <= 0:
            return self.default_ttl
        if seconds > self.max_ttl.total_seconds():
            log.info("CA: %s asked for %d s; granting the maximum %s", identity, seconds, self.max_ttl)
            return self.max_ttl
        return timedelta(seconds=seconds)

    def _intermediates(self) -> list[str]:
        """The CA's chain without its roots, one PEM string per certificate."""
        return [c.public_bytes(Encoding.PEM).decode() for c in self.ca.chain if c not in self.ca.roots]


class CaServer:
    """Serves a :class:`CaService` over TLS on ``host:port``; see the module docstring."""

    def __init__(self, service: CaService, *, dns_names: Sequence[str] = ISTIOD_DNS_NAMES,
                 ips: Sequence[str] = (), serving_ttl: timedelta = DEFAULT_SERVING_TTL) -> None:
        self.service = service
        self.dns_names = tuple(dns_names)
        self.ips = tuple(ips)
        self.serving_ttl = serving_ttl
        self.address: str | None = None
        self._server: grpc.aio.Server | None = None
        self._serving: ServingCert | None = None
        self._renew_at: datetime | None = None
        self._names: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self._lock = threading.Lock()

    async def __aenter__(self) -> CaServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def serving_cert(self) -> ServingCert | None:
        """The certificate new connections get (``None`` before :meth:`start`)."""
        with self._lock:
            return self._serving

    async def start(self, target: str = f"0.0.0.0:{DEFAULT_PORT}") -> str:
        """Listen on ``host:port`` (port 0: any free port) with TLS; returns the bound ``host:port``.
        The serving certificate names :attr:`dns_names`, :attr:`ips` and ``host`` when it is a
        specific address."""
        if self._server is not None:
            raise RuntimeError("the CA server was already started")
        host, port_text = _split(target)
        ips = list(self.ips)
        dns_names = list(self.dns_names)
        try:
            bind_ip = ipaddress.ip_address(host)
        except ValueError:
            dns_names.append(host)
        else:
            if not bind_ip.is_unspecified:
                ips.append(str(bind_ip))
        self._names = (tuple(dns_names), tuple(ips))
        initial = self._renew()
        credentials = grpc.dynamic_ssl_server_credentials(initial, self._fetch_certificate)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self.service.handler(),))
        try:
            port = server.add_secure_port(f"{_bracket(host)}:{port_text}", credentials)
        except RuntimeError as e:
            raise OSError(f"CA server: cannot listen on {target!r}: {e}") from None
        if not port:
            raise OSError(f"CA server: cannot listen on {target!r}")
        await server.start()
        self._server = server
        self.address = f"{_bracket(host)}:{port}"
        log.info("CA server listening on %s (TLS for %s)", self.address, ", ".join(dns_names + ips))
        return self.address

    async def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop serving; calls still running after ``grace`` seconds are cancelled."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)

    def _renew(self) -> Any:
        dns_names, ips = self._names
        serving = self.service.ca.serving_cert(dns_names, ips, ttl=self.serving_ttl)
        now = self.service.ca.clock()
        with self._lock:
            self._serving = serving
            self._renew_at = now + (serving.not_after - now) / 2
        log.info("CA server: new serving certificate, not after %s", serving.not_after.isoformat())
        return grpc.ssl_server_certificate_configuration([(serving.key_pem, serving.cert_chain_pem)])

    def _fetch_certificate(self) -> Any:
        """gRPC asks before each handshake: a new configuration once the current one is half-way
        through its life, else ``None`` (keep the current one)."""
        with self._lock:
            due = self._renew_at is not None and self.service.ca.clock() >= self._renew_at
        if not due:
            return None
        try:
            return self._renew()
        except Exception:  # a CA that can no longer sign: keep serving the old certificate
            log.exception("CA server: could not renew the serving certificate")
            return None


def _split(target: str) -> tuple[str, str]:
    host, sep, port = target.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"CA server address {target!r} is not host:port")
    return host, port


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host

