"""The sidecar's Secret Discovery Service (pilot-agent's SDS server) for Envoy, over a UNIX socket.

Envoy's ``sds-grpc`` cluster (``weir.agent.bootstrap``) dials this server and subscribes, with
``envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets`` (state of the world), to the
two names Istio serves:

- ``default``: a ``tls_certificate`` with the workload's certificate chain and private key,
  inline, as one resource, so Envoy never holds a key from one issue and a chain from another;
- ``ROOTCA``: a ``validation_context`` whose ``trusted_ca`` is the trust bundle, inline.

Two parts. :class:`SdsStream` is the protocol for one stream, pure: requests and secret changes
in, responses out (subscriptions per resource name, nonces, versions, ACK/NACK bookkeeping).
:class:`SdsServer` is the driver: a ``grpc.aio`` server on the socket (directory created,
socket handed to uid 1337 so Envoy can connect), one task per stream, and the renewal task
that sleeps until :meth:`WorkloadSecrets.next_rotation` and retries failed signings with
backoff.

Rotation without a failed request: the certificate is renewed once half its lifetime is left
(``rotate_fraction``), checked before use, and pushed to every subscribed stream unasked;
Envoy swaps it in for new handshakes while the old one, still valid for the other half of its
life, keeps serving until then. A NACKed push leaves Envoy (and the stream's ACKed version)
on the previous secret; the next change is pushed as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from weir.agent.envoy import ENVOY_GID, ENVOY_UID
from weir.agent.secrets import WorkloadSecret, WorkloadSecrets

log = logging.getLogger(__name__)

SECRET_TYPE: Final = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105 (a type URL)
DEFAULT_NAME: Final = "default"
"""Istio's name for the workload certificate and key (``WorkloadKeyCertResourceName``)."""
ROOT_NAME: Final = "ROOTCA"
"""Istio's name for the trust bundle (``RootCertReqResourceName``)."""
SOCKET_MODE: Final = 0o660
DIR_MODE: Final = 0o750
RETRY_INITIAL: Final = 1.0
RETRY_MAX: Final = 30.0
MAX_SLEEP: Final = 300.0
"""The renewal task re-reads the clock at least this often (seconds), in case the wall clock jumps."""
MIN_SLEEP: Final = 1.0
"""And at most this often, so a CA that keeps issuing certificates already due cannot spin it."""

DiscoveryRequest = Any  # envoy.service.discovery.v3.DiscoveryRequest (protobuf, untyped)
DiscoveryResponse = Any  # envoy.service.discovery.v3.DiscoveryResponse


class SdsProtocolError(ValueError):
    """A request that breaks the SDS protocol (wrong type URL); the stream is ended with INVALID_ARGUMENT."""


# ---- the protocol, pure ---------------------------------------------------------------------


def render_secret(name: str, secret: WorkloadSecret) -> Any | None:
    """The ``Secret`` resource ``name`` for ``secret``, or ``None`` for a name this server does not serve."""
    if name == DEFAULT_NAME:
        return secret_pb2.Secret(name=name, tls_certificate=common_pb2.TlsCertificate(
            certificate_chain={"inline_bytes": secret.cert_chain_pem},
            private_key={"inline_bytes": secret.key_pem}))
    if name == ROOT_NAME:
        return secret_pb2.Secret(name=name, validation_context=common_pb2.CertificateValidationContext(
            trusted_ca={"inline_bytes": secret.roots_pem}))
    return None


def resource_version(name: str, secret: WorkloadSecret) -> str | None:
    """What identifies the content of ``name``: the serial for ``default``, a digest of the roots for ``ROOTCA``."""
    if name == DEFAULT_NAME:
        return f"{secret.serial:x}"
    if name == ROOT_NAME:
        return hashlib.sha256(secret.roots_pem).hexdigest()[:16]
    return None


@dataclass(frozen=True)
class StreamStatus:
    """One stream as seen from the server (for status pages and tests)."""

    peer: str
    node_id: str
    names: frozenset[str]
    sent_version: str | None
    sent_nonce: str | None
    acked_version: str | None
    """The version Envoy last accepted; a NACK leaves it as it was."""
    nack: str | None
    """The error of the last NACK, cleared by the next ACK."""
    acks: int
    nacks: int


class SdsStream:
    """One StreamSecrets stream's state. Feed it requests (:meth:`on_request`) and secret changes
    (:meth:`on_secret`); each returns the ``DiscoveryResponse`` to send, or ``None``."""

    def __init__(self, peer: str = "") -> None:
        self.peer = peer
        self.node_id = ""
        self.names: frozenset[str] = frozenset()
        self.sent_version: str | None = None
        self.sent_nonce: str | None = None
        self.acked_version: str | None = None
        self.nack: str | None = None
        self.acks = 0
        self.nacks = 0
        self._nonces = 0
        self._unknown: frozenset[str] = frozenset()

    def status(self) -> StreamStatus:
        return StreamStatus(peer=self.peer, node_id=self.node_id, names=self.names, sent_version=self.sent_version,
                            sent_nonce=self.sent_nonce, acked_version=self.acked_version, nack=self.nack,
                            acks=self.acks, nacks=self.nacks)

    def on_request(self, request: DiscoveryRequest, secret: WorkloadSecret | None) -> DiscoveryResponse | None:
        """A request from Envoy: a subscription (no nonce), an ACK or a NACK of our last response.

        Requests answering an older nonce are stale and ignored, as the xDS protocol says. A
        NACK is recorded and not answered (the same secret would be refused again).
        """
        type_url = str(request.type_url)
        if type_url and type_url != SECRET_TYPE:
            raise SdsProtocolError(f"type_url {type_url!r} is not {SECRET_TYPE!r}")
        if request.HasField("node") and request.node.id:
            self.node_id = str(request.node.id)
        nonce = str(request.response_nonce)
        names = frozenset(str(n) for n in request.resource_names)
        if nonce:
            if nonce != self.sent_nonce:
                return None
            if request.HasField("error_detail"):
                self.nacks += 1
                self.nack = str(request.error_detail.message) or "NACK without a message"
                log.warning("SDS %s (%s) rejected version %s of %s: %s", self.peer, self.node_id,
                            self.sent_version, ", ".join(sorted(self.names)), self.nack)
                return None
            self.acks += 1
            self.acked_version = str(request.version_info)
            self.nack = None
            if names == self.names:
                return None
        self.names = names
        return self._respond(secret, force=True)

    def on_secret(self, secret: WorkloadSecret | None) -> DiscoveryResponse | None:
        """The workload's secret changed (or became available): push what changed for this stream."""
        return self._respond(secret, force=False)

    def _respond(self, secret: WorkloadSecret | None, *, force: bool) -> DiscoveryResponse | None:
        if secret is None or not self.names:
            return None  # answered once the first secret is issued
        unknown = frozenset(n for n in self.names if render_secret(n, secret) is None)
        if unknown != self._unknown and unknown:
            log.warning("SDS %s asks for secrets this agent does not serve: %s", self.peer, ", ".join(sorted(unknown)))
        self._unknown = unknown
        known = sorted(self.names - unknown)
        if not known:
            return None
        marks = "\n".join(f"{n}={resource_version(n, secret)}" for n in known)
        version = hashlib.sha256(marks.encode()).hexdigest()[:16]
        if not force and version == self.sent_version:
            return None
        self._nonces += 1
        response = discovery_pb2.DiscoveryResponse(version_info=version, type_url=SECRET_TYPE,
                                                   nonce=str(self._nonces))
        for name in known:
            response.resources.add().Pack(render_secret(name, secret))
        self.sent_version = version
        self.sent_nonce = response.nonce
        return response


# ---- the driver -----------------------------------------------------------------------------


def retry_delay(failures: int, initial: float = RETRY_INITIAL, maximum: float = RETRY_MAX) -> float:
    """Seconds before signing attempt ``failures + 1`` of a failing series: 1, 2, 4 ... 30."""
    return min(maximum, initial * float(2 ** min(failures, 32)))


_CHANGED: Final = object()
_EOF: Final = object()


class _Servicer:
    """The handlers ``add_SecretDiscoveryServiceServicer_to_server`` looks up by name."""

    def __init__(self, server: SdsServer) -> None:
        self._server = server

    async def StreamSecrets(self, requests: AsyncIterator[DiscoveryRequest],
                            context: grpc.aio.ServicerContext) -> None:
        await self._server._serve_stream(requests, context)

    async def FetchSecrets(self, request: DiscoveryRequest,
                           context: grpc.aio.ServicerContext) -> DiscoveryResponse:
        secret = self._server.secrets.current
        if secret is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no certificate has been issued yet")
        stream = SdsStream(context.peer())
        try:
            response = stream.on_request(request, secret)
        except SdsProtocolError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if response is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "none of the requested secrets is served here")
        return response

    async def DeltaSecrets(self, requests: AsyncIterator[DiscoveryRequest],
                           context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this SDS server speaks state of the world (StreamSecrets)")


class SdsServer:
    """Serves ``secrets`` to Envoy on the UNIX socket ``path``; ``async with`` starts and stops it.

    ``owner`` (uid, gid) gets the socket (mode 0660) and any directory created for it (mode
    0750): Istio's Envoy runs as 1337. ``None`` leaves ownership alone (when not root).
    """

    def __init__(self, secrets: WorkloadSecrets, path: str | os.PathLike[str], *,
                 owner: tuple[int, int] | None = (ENVOY_UID, ENVOY_GID),
                 retry_initial: float = RETRY_INITIAL, retry_max: float = RETRY_MAX,
                 max_sleep: float = MAX_SLEEP, min_sleep: float = MIN_SLEEP) -> None:
        self.secrets = secrets
        self.path = Path(path).absolute()
        self.owner = owner
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.max_sleep = max_sleep
        self.min_sleep = min_sleep
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._streams: dict[SdsStream, asyncio.Queue[object]] = {}
        self._unlisten: Callable[[], None] | None = None
        self._stopping = False

    async def __aenter__(self) -> SdsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def status(self) -> list[StreamStatus]:
        """The open streams (call on the server's event loop)."""
        return [stream.status() for stream in self._streams]

    # -- lifecycle

    async def start(self) -> None:
        """Bind the socket, hand it to ``owner``, start serving and the renewal task."""
        if self._server is not None:
            raise RuntimeError("the SDS server was already started")
        self._loop = asyncio.get_running_loop()
        self._prepare_path()
        server = grpc.aio.server()
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(_Servicer(self), server)
        server.add_insecure_port(f"unix:{self.path}")
        await server.start()
        self._server = server
        self._own_socket()
        self._unlisten = self.secrets.add_listener(self._on_secret_threadsafe)
        self._renewer = asyncio.create_task(self._renew(), name=f"sds-renew {self.secrets.identity}")
        log.info("SDS serving %s on %s", self.secrets.identity, self.path)

    async def stop(self, grace: float = 1.0) -> None:
        """Stop renewing, end the streams (``grace`` seconds for writes in flight), remove the socket."""
        self._stopping = True
        if self._unlisten is not None:
            await asyncio.to_thread(self._unlisten)  # waits for a signing in progress, off the loop
            self._unlisten = None
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        for inbox in self._streams.values():
            inbox.put_nowait(_EOF)  # each stream ends with status OK; Envoy reconnects to the next agent
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
            self.path.unlink(missing_ok=True)

    def _prepare_path(self) -> None:
        parent = self.path.parent
        missing = [d for d in (parent, *parent.parents) if not d.exists()]
        parent.mkdir(parents=True, exist_ok=True)
        for directory in reversed(missing):
            directory.chmod(DIR_MODE)
            if self.owner is not None:
                os.chown(directory, -1, self.owner[1])
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise FileExistsError(f"{self.path} exists and is not a socket; not replacing it")
        self.path.unlink()  # a previous agent's socket

    def _own_socket(self) -> None:
        if self.owner is not None:
            os.chown(self.path, *self.owner)
        self.path.chmod(SOCKET_MODE)

    # -- renewal

    def _on_secret_threadsafe(self, secret: WorkloadSecret) -> None:
        loop = self._loop
        if loop is not None and not self._stopping and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_secret)

    def _on_secret(self) -> None:
        for inbox in self._streams.values():
            inbox.put_nowait(_CHANGED)

    async def _renew(self) -> None:
        failures = 0
        while True:
            try:
                await asyncio.to_thread(self.secrets.ensure)
            except Exception:  # sign() is the CA's client: every failure is retried, with backoff
                delay = retry_delay(failures, self.retry_initial, self.retry_max)
                failures += 1
                log.warning("SDS: could not renew the certificate of %s (attempt %d); retrying in %.0f s",
                            self.secrets.identity, failures, delay, exc_info=True)
            else:
                failures = 0
                delay = min(self.max_sleep, max(self.min_sleep, self.secrets.seconds_to_rotation()))
            await asyncio.sleep(delay)  # a rotation by someone else only moves the due time later

    # -- streams

    async def _serve_stream(self, requests: AsyncIterator[DiscoveryRequest], context: grpc.aio.ServicerContext) -> None:
        stream = SdsStream(str(context.peer()))
        inbox: asyncio.Queue[object] = asyncio.Queue()
        self._streams[stream] = inbox
        reader = asyncio.create_task(self._read(requests, inbox), name=f"sds-read {stream.peer}")
        try:
            while True:
                event = await inbox.get()
                if event is _EOF:
                    return
                if isinstance(event, Exception):
                    raise event
                current = self.secrets.current
                try:
                    response = stream.on_secret(current) if event is _CHANGED else stream.on_request(event, current)
                except SdsProtocolError as e:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
                if response is not None:
                    await context.write(response)
        finally:
            del self._streams[stream]
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    @staticmethod
    async def _read(requests: AsyncIterator[DiscoveryRequest], inbox: asyncio.Queue[object]) -> None:
        try:
            async for request in requests:
                inbox.put_nowait(request)
        except Exception as e:  # handed to the stream's task, which raises it
            inbox.put_nowait(e)
        else:
            inbox.put_nowait(_EOF)
