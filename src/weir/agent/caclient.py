"""The sidecar's CA client (pilot-agent's ``CitadelClient``): CSRs signed by the control plane over gRPC.

:func:`grpc_signer` returns a :data:`weir.agent.secrets.Signer`: given a PEM CSR it calls
``istio.v1.auth.IstioCertificateService/CreateCertificate`` (messages in
:mod:`weir.platform.caproto`) on the control plane's CA (Istio's ``CA_ADDR``, port 15012) and
returns the certificate, the chain and the trust bundle. As Istio's agent does, it

- reads the pod's token from ``token_file`` on every call (kubelet, or weir's runtime, rewrites
  it before it expires) and sends it as ``authorization: Bearer <token>``;
- verifies the server over TLS against ``root_cert`` (the mesh's trust bundle, Istio's
  ``istio-ca-root-cert``) under the name ``server_name`` (``istiod.istio-system.svc``), whatever
  address it dials; a changed bundle file is picked up by the next call;
- asks for ``ttl`` (``validity_duration``); the CA may grant less.

Failures come out as one of two types, so callers decide retries by type, never by text:
:class:`CaUnavailable` (no token file yet, CA unreachable, TLS failure, timeout: try again
later) and :class:`CaRefused` (the CA answered no: bad token, a CSR for another identity ...),
both carrying the server's message. An answer that is not a chain is a
:class:`weir.agent.secrets.IssueError`.

One channel is reused across calls. A call that finds the CA unavailable drops the channel, so
the next call dials afresh instead of waiting out gRPC's reconnect back-off, and a call on a
channel that worked before is tried once more on a new one (the CA restarted, an address
moved). The call blocks: :class:`~weir.agent.secrets.WorkloadSecrets` runs it on a worker
thread. This module must not know the CA's implementation (``weir.control``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import grpc
from cryptography import x509

from weir.agent.secrets import IssueError
from weir.platform import caproto

log = logging.getLogger(__name__)

DEFAULT_SERVER_NAME: Final = "istiod.istio-system.svc"
DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_TTL: Final = timedelta(hours=24)
"""Istio's ``SECRET_TTL``."""

_TEMPORARY: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                               grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
                               grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
"""Codes worth retrying later; every other code is the CA refusing this request."""


class CaClientError(Exception):
    """The CA did not sign. ``code`` is the gRPC status name (``UNAUTHENTICATED`` ...), or
    ``LOCAL`` when the request could not even be made (no token file, no trust bundle)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class CaUnavailable(CaClientError):
    """Temporary: the CA cannot be reached or verified now, or the pod's files are not there yet."""


class CaRefused(CaClientError):
    """The CA refused this request (its message says why); the same request will fail again."""


@dataclass(frozen=True)
class CaAnswer:
    """The CA's ``cert_chain`` split as :class:`weir.agent.secrets.Issued` wants it (PEM)."""

    cert_pem: bytes
    chain_pem: bytes
    """The intermediates between the certificate and the root (may be empty)."""
    root_pem: bytes


class GrpcSigner:
    """A :data:`~weir.agent.secrets.Signer` over gRPC; see the module docstring. Thread-safe."""

    def __init__(self, address: str, *, token_file: Path, root_cert: Path,
                 server_name: str = DEFAULT_SERVER_NAME, timeout: float = DEFAULT_TIMEOUT,
                 ttl: timedelta = DEFAULT_TTL) -> None:
        if not address:
            raise ValueError("the CA's address is empty; expected host:port")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        if ttl < timedelta(seconds=1):
            raise ValueError(f"ttl must be at least one second, not {ttl}")
        self.address = address
        self.token_file = Path(token_file)
        self.root_cert = Path(root_cert)
        self.server_name = server_name
        self.timeout = timeout
        self.ttl = ttl
        self._lock = threading.Lock()
        self._channel: Any = None
        self._channel_roots = b""
        self._channel_worked = False

    def __call__(self, csr_pem: bytes) -> CaAnswer:
        try:
            csr = csr_pem.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("the CSR is not PEM (it holds non-ASCII bytes)") from None
        token = self._read(self.token_file, "the pod's token").decode("utf-8", "replace").strip()
        if not token:
            raise CaUnavailable("LOCAL", f"the token file {self.token_file} is empty")
        roots = self._read(self.root_cert, "the CA's trust bundle")
        try:  # an empty bundle would make gRPC fall back to the system's public roots
            x509.load_pem_x509_certificates(roots)
        except ValueError:
            raise CaUnavailable("LOCAL", f"the CA's trust bundle {self.root_cert} holds no PEM certificate") from None
        request = caproto.IstioCertificateRequest(csr=csr, validity_duration=int(self.ttl.total_seconds()))
        metadata = (("authorization", f"Bearer {token}"),)
        for attempt in (1, 2):
            stub, channel, reused = self._stub(roots)
            try:
                response = stub(request, timeout=self.timeout, metadata=metadata)
            except grpc.RpcError as e:
                code, details = e.code(), e.details() or ""
                if code not in _TEMPORARY:
                    raise CaRefused(code.name, f"the CA at {self.address} refused: {details}") from None
                self._drop(channel)
                if attempt == 1 and reused and code is grpc.StatusCode.UNAVAILABLE:
                    log.info("CA client: %s unavailable on the open channel (%s); dialling again", self.address,
                             details)
                    continue
                raise CaUnavailable(code.name, f"the CA at {self.address} is unavailable ({code.name}): "
                                               f"{details}") from None
            with self._lock:
                self._channel_worked = True
            return _answer(list(response.cert_chain), self.address)
        raise AssertionError("unreachable: the second attempt returns or raises")

    def close(self) -> None:
        """Close the channel; a later call opens a new one."""
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def _stub(self, roots: bytes) -> tuple[Any, Any, bool]:
        """The method's stub on the current channel (a new one when there is none or the bundle
        changed), that channel, and whether it has answered before."""
        stale = None
        with self._lock:
            if self._channel is not None and self._channel_roots != roots:
                stale, self._channel = self._channel, None
            if self._channel is None:
                credentials = grpc.ssl_channel_credentials(root_certificates=roots)
                options = (("grpc.ssl_target_name_override", self.server_name),
                           ("grpc.default_authority", self.server_name))
                self._channel = grpc.secure_channel(self.address, credentials, options=options)
                self._channel_roots = roots
                self._channel_worked = False
            stub = self._channel.unary_unary(
                caproto.METHOD_PATH, request_serializer=caproto.IstioCertificateRequest.SerializeToString,
                response_deserializer=caproto.IstioCertificateResponse.FromString)
            channel, reused = self._channel, self._channel_worked
        if stale is not None:
            stale.close()
        return stub, channel, reused

    def _drop(self, channel: Any) -> None:
        """Forget ``channel`` (unless another thread replaced it already) and close it."""
        with self._lock:
            if self._channel is not channel:
                return
            self._channel = None
        channel.close()

    def _read(self, path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except OSError as e:
            raise CaUnavailable("LOCAL", f"cannot read {what} from {path}: {e.strerror or e}") from None


def grpc_signer(address: str, *, token_file: Path, root_cert: Path, server_name: str = DEFAULT_SERVER_NAME,
                timeout: float = DEFAULT_TIMEOUT, ttl: timedelta = DEFAULT_TTL) -> GrpcSigner:
    """A signer that asks the CA at ``address`` (``host:port``); see the module docstring."""
    return GrpcSigner(address, token_file=token_file, root_cert=root_cert, server_name=server_name,
                      timeout=timeout, ttl=ttl)


def _answer(chain: list[str], address: str) -> CaAnswer:
    """Istio's ``cert_chain``: the leaf, the intermediates, the root bundle last."""
    if len(chain) < 2 or not all(pem.strip() for pem in chain):
        raise IssueError(f"the CA at {address} answered {len(chain)} PEM block(s); expected the certificate, "
                         f"any intermediates and the root")
    return CaAnswer(cert_pem=_pem(chain[0]), chain_pem=b"".join(_pem(p) for p in chain[1:-1]),
                    root_pem=_pem(chain[-1]))


def _pem(text: str) -> bytes:
    data = text.encode()
    return data if data.endswith(b"\n") else data + b"\n"
