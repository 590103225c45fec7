"""The ADS server (istiod's xDS push): Envoy's ``AggregatedDiscoveryService``, state of the world, over gRPC.

:class:`AdsServer` serves ``StreamAggregatedResources`` (SotW; the delta variant answers
UNIMPLEMENTED) on a TCP address (``127.0.0.1:0`` picks a port) or a UNIX socket
(``unix:/path``). What a proxy gets is not decided here: the constructor takes
``resources_for(node, snapshot) -> EnvoyResources``, called once per stream and config
version, so the server knows nothing of how nodes map to pods. Per stream:

- the first request must carry the node (Envoy's ``set_node_on_first_message_only``);
- each type URL (CDS, LDS, RDS and NDS; others are logged and left unanswered) is answered
  with a ``DiscoveryResponse`` of the current version: all clusters and listeners (wildcard),
  the route configurations by the names Envoy asks for, and the proxy's DNS name table
  (Istio's ``istio.networking.nds.v1.NameTable``, one unnamed resource, wildcard) when
  ``resources_for`` gives one (``EnvoyResources.name_table``; without it NDS is not answered).
  Envoy never asks for NDS: the sidecar agent's DNS proxy does, on a stream of its own
  (:mod:`weir.agent.nds`), and is answered, ACKs and NACKs like any proxy;
- a request that echoes the last nonce is an ACK (Envoy applied ``version_info``) or, with
  ``error_detail``, a NACK: logged with the node id, recorded, and not answered, so Envoy
  keeps its last good version until the config changes; a request echoing an older nonce is
  stale and ignored;
- :meth:`AdsServer.set_snapshot` bumps the version (an increasing integer, as a string) and
  wakes every stream's pusher, which sends each subscribed type in :data:`PUSH_ORDER`
  (clusters before the listeners that use them, the name table last). Wake-ups coalesce: a
  slow proxy gets the latest version, not a backlog.

Each stream runs a reader and a pusher task (named after the stream, kept by reference);
both write under the stream's lock, and ``await`` on the write, so a proxy that does not
read holds back only its own stream (gRPC flow control is the back-pressure).
:meth:`AdsServer.stop` ends every stream (status OK, so Envoy reconnects elsewhere), then
stops the gRPC server within ``grace`` seconds. :meth:`AdsServer.status` is what
``weir status`` shows: per connected node, the version sent and ACKed per type and the last NACK.
This driver does the I/O; conversion to protobuf is :mod:`weir.control.xds_convert`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Generic, TypeVar

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from weir.control.compile import EnvoyResources
from weir.control.xds_convert import (
    CLUSTER,
    LISTENER,
    NAME_TABLE,
    PUSH_ORDER,
    ROUTE,
    SHORT_NAMES,
    ConversionError,
    PackCache,
    Packed,
    pack,
)

log = logging.getLogger(__name__)

S = TypeVar("S")
SERVICE: Final = "envoy.service.discovery.v3.AggregatedDiscoveryService"
METHOD: Final = "StreamAggregatedResources"
SERVED: Final = frozenset({CLUSTER, LISTENER, ROUTE, NAME_TABLE})
WILDCARD: Final = frozenset({CLUSTER, LISTENER, NAME_TABLE})
"""Types where an empty ``resource_names`` means every resource (LDS and CDS in SotW, and NDS)."""
DEFAULT_GRACE: Final = 5.0


@dataclass(frozen=True)
class NodeInfo:
    """The proxy as it introduced itself (Envoy's ``Node``), without protobuf."""

    id: str
    cluster: str = ""
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_proto(cls, node: Any) -> NodeInfo:
        metadata: dict[str, Any] = json_format.MessageToDict(node.metadata)
        return cls(id=str(node.id), cluster=str(node.cluster), metadata=MappingProxyType(metadata))


@dataclass(frozen=True)
class Nack:
    version: str
    """The version the proxy rejected."""
    nonce: str
    message: str


@dataclass(frozen=True)
class TypeStatus:
    type_url: str
    sent_version: str
    """The last version sent ("" before the first response)."""
    acked_version: str
    """The last version the proxy ACKed: what it runs ("" before the first ACK)."""
    last_nack: Nack | None
    pending: bool
    """A response is waiting for its ACK or NACK."""

    @property
    def state(self) -> str:
        """``SYNCED`` (runs what was sent), ``NACKED`` (rejected the latest), ``STALE`` (in flight)."""
        if self.last_nack is not None and self.last_nack.version == self.sent_version and not self.pending:
            return "NACKED"
        return "SYNCED" if self.sent_version and self.acked_version == self.sent_version else "STALE"


@dataclass(frozen=True)
class ProxyStatus:
    stream: int
    node: NodeInfo
    peer: str
    connected_at: float
    """Wall-clock seconds (from the injected clock) when the stream opened."""
    types: Mapping[str, TypeStatus]
    """By short name: ``CDS``, ``LDS``, ``RDS``, ``NDS``: the types this stream asked for."""


@dataclass
class _TypeState:
    names: frozenset[str] = frozenset()
    sent_version: str = ""
    sent_nonce: str = ""
    acked_version: str = ""
    last_nack: Nack | None = None
    pending: bool = False


@dataclass
class _Stream:
    id: int
    peer: str
    connected_at: float
    node: NodeInfo | None = None
    types: dict[str, _TypeState] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    packed_version: int = -1
    packed: dict[str, tuple[Packed, ...]] | None = None
    nonces: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def label(self) -> str:
        return f"{self.node.id if self.node else '?'} (stream {self.id}, {self.peer})"


class AdsServer(Generic[S]):
    """Aggregated discovery over gRPC for many Envoys; see the module docstring."""

    def __init__(self, resources_for: Callable[[NodeInfo, S], EnvoyResources], *,
                 clock: Callable[[], float] = time.time) -> None:
        self._resources_for = resources_for
        self._clock = clock
        self._snapshot: S | None = None
        self._version = 0
        self._cache = PackCache()
        self._cache_version = 0
        self._streams: dict[int, _Stream] = {}
        self._stream_ids = itertools.count(1)
        self._server: grpc.aio.Server | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, target: str) -> str:
        """Listen on ``host:port`` (port 0: any free port) or ``unix:/path``; returns the bound target."""
        if self._server is not None:
            raise RuntimeError("ADS server already started")
        server = grpc.aio.server()
        handler = grpc.stream_stream_rpc_method_handler(
            self._serve, request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
        port = server.add_insecure_port(target)
        if not port:
            raise OSError(f"ADS server: cannot listen on {target!r}")
        await server.start()
        self._server = server
        bound = target if target.startswith("unix:") else f"{target.rpartition(':')[0]}:{port}"
        log.info("ADS server listening on %s", bound)
        return bound

    async def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """End every stream (OK status), then stop serving; RPCs still running after ``grace`` s are cancelled."""
        server, self._server = self._server, None
        if server is None:
            return
        for stream in self._streams.values():
            stream.closing.set()
        await server.stop(grace)

    # --- config ---------------------------------------------------------------------------

    @property
    def version(self) -> str:
        """The current config version ("0" before the first snapshot)."""
        return str(self._version)

    def set_snapshot(self, snapshot: S) -> str:
        """Make ``snapshot`` the config: a new version, pushed to every subscribed stream. Returns it."""
        self._snapshot = snapshot
        self._version += 1
        for stream in self._streams.values():
            stream.changed.set()
        return self.version

    def status(self) -> tuple[ProxyStatus, ...]:
        """Every connected (identified) proxy's sync state, by stream."""
        return tuple(
            ProxyStatus(stream=s.id, node=s.node, peer=s.peer, connected_at=s.connected_at,
                        types=MappingProxyType({SHORT_NAMES[url]: TypeStatus(url, t.sent_version, t.acked_version,
                                                                              t.last_nack, t.pending)
                                                for url, t in s.types.items()}))
            for s in self._streams.values() if s.node is not None)

    # --- one stream -----------------------------------------------------------------------

    async def _serve(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        stream = _Stream(id=next(self._stream_ids), peer=str(context.peer()), connected_at=self._clock())
        self._streams[stream.id] = stream
        if self._server is None:  # stopping: let the proxy go elsewhere
            stream.closing.set()
        tasks = [asyncio.create_task(self._read(stream, requests, context), name=f"ads-{stream.id}-read"),
                 asyncio.create_task(self._push(stream, context), name=f"ads-{stream.id}-push"),
                 asyncio.create_task(stream.closing.wait(), name=f"ads-{stream.id}-closing")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            del self._streams[stream.id]
            log.info("ADS stream closed: %s", stream.label)

    async def _read(self, stream: _Stream, requests: AsyncIterator[Any],
                    context: grpc.aio.ServicerContext[Any, Any]) -> None:
        async for request in requests:
            async with stream.lock:
                if stream.node is None:
                    if not request.HasField("node") or not request.node.id:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                            "the first DiscoveryRequest must carry the node")
                    stream.node = NodeInfo.from_proto(request.node)
                    log.info("ADS stream opened: %s", stream.label)
                await self._on_request(stream, request, context)

    async def _on_request(self, stream: _Stream, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        type_url = str(request.type_url)
        if type_url not in SERVED:
            log.warning("ADS: %s asked for %s, which weir does not serve", stream.label, type_url or "no type")
            return
        state = stream.types.setdefault(type_url, _TypeState())
        nonce = str(request.response_nonce)
        if nonce:
            if nonce != state.sent_nonce:
                return  # stale: answers a response Envoy has since been sent a newer one for
            state.pending = False
            if request.HasField("error_detail"):
                state.last_nack = Nack(version=state.sent_version, nonce=nonce, message=request.error_detail.message)
                log.warning("ADS: %s rejected %s version %s (keeps %s): %s", stream.label, SHORT_NAMES[type_url],
                            state.sent_version, state.acked_version or "none", request.error_detail.message)
            else:
                state.acked_version = str(request.version_info)
        names = frozenset(request.resource_names)
        resubscribed = not nonce or names != state.names
        state.names = names
        if resubscribed or state.sent_version != self.version:
            await self._send(stream, type_url, context)

    async def _push(self, stream: _Stream, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        while True:
            await stream.changed.wait()
            stream.changed.clear()
            async with stream.lock:
                for type_url in PUSH_ORDER:
                    state = stream.types.get(type_url)
                    if state is not None and state.sent_version != self.version:
                        await self._send(stream, type_url, context)

    def _packed(self, stream: _Stream) -> dict[str, tuple[Packed, ...]] | None:
        """This stream's resources at the current version (computed once per version); None: nothing to send."""
        if self._snapshot is None or stream.node is None:
            return None
        if stream.packed_version != self._version:
            stream.packed_version = self._version
            try:
                if self._cache_version != self._version:  # one cache per config version, shared by all streams
                    self._cache, self._cache_version = PackCache(), self._version
                stream.packed = pack(self._resources_for(stream.node, self._snapshot), self._cache)
            except ConversionError as e:
                log.error("ADS: no config for %s at version %s (it keeps the last one sent): %s",
                          stream.label, self.version, e)
                stream.packed = None
            except Exception:
                log.exception("ADS: resources_for(%s) failed at version %s (it keeps the last one sent)",
                              stream.label, self.version)
                stream.packed = None
        return stream.packed

    async def _send(self, stream: _Stream, type_url: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        packed = self._packed(stream)
        if packed is None:
            return
        if type_url not in packed:  # no name table for this proxy: leave NDS unanswered
            return
        state = stream.types[type_url]
        items = packed[type_url]
        if state.names:
            items = tuple(p for p in items if p.name in state.names)
        elif type_url not in WILDCARD:
            items = ()
        response = discovery_pb2.DiscoveryResponse(version_info=self.version, type_url=type_url,
                                                   nonce=f"{stream.id}-{next(stream.nonces)}",
                                                   resources=[p.resource for p in items])
        state.sent_version, state.sent_nonce, state.pending = response.version_info, response.nonce, True
        log.debug("ADS: %s <- %s version %s, %d resources", stream.label, SHORT_NAMES[type_url],
                  response.version_info, len(items))
        await context.write(response)
