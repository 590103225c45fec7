"""xDS resources as protobuf: the JSON-able dicts of :mod:`weir.control.compile` -> ``Any`` messages.

:func:`to_message` parses one resource dict into its v3 message (``Listener``, ``Cluster``,
``RouteConfiguration`` ...) with ``google.protobuf.json_format.ParseDict``, strictly: an
unknown field or a bad value raises :class:`ConversionError`, naming the type and the resource.
:func:`pack` turns a whole :class:`~weir.control.compile.EnvoyResources` into ``google.protobuf.Any``
messages by type URL, in the order the ADS server sends them (clusters before listeners), with
the proxy's DNS name table (Istio's NDS, :mod:`weir.platform.nds`) when it has one.

A ``typed_config``'s ``@type`` resolves through protobuf's default descriptor pool, which knows
a message only once its ``*_pb2`` module is imported: the imports below register every type
the compiler emits (see :mod:`weir.control.envoy_shapes`). Pure: no I/O, nothing of gRPC.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

# Registered for "@type" resolution inside typed_config / Any fields (imported for their side effect).
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2  # noqa: F401
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import any_pb2, json_format, message

from weir.control.compile import EnvoyResources
from weir.platform import nds

_PREFIX: Final = "type.googleapis.com/"
LISTENER: Final = _PREFIX + "envoy.config.listener.v3.Listener"
CLUSTER: Final = _PREFIX + "envoy.config.cluster.v3.Cluster"
ROUTE: Final = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
ENDPOINT: Final = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET: Final = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
NAME_TABLE: Final = nds.TYPE_URL
"""Istio's NDS: the agent's DNS proxy asks for it on its own stream; Envoy never does."""

MESSAGES: Final[Mapping[str, type[message.Message]]] = MappingProxyType({
    LISTENER: listener_pb2.Listener,
    CLUSTER: cluster_pb2.Cluster,
    ROUTE: route_pb2.RouteConfiguration,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    SECRET: secret_pb2.Secret,
    NAME_TABLE: nds.NameTable,
})
"""The resource types weir's ADS knows, by type URL."""

SHORT_NAMES: Final[Mapping[str, str]] = MappingProxyType({
    CLUSTER: "CDS", LISTENER: "LDS", ROUTE: "RDS", ENDPOINT: "EDS", SECRET: "SDS", NAME_TABLE: "NDS"})

PUSH_ORDER: Final = (CLUSTER, ENDPOINT, LISTENER, ROUTE, NAME_TABLE)
"""Envoy warms clusters (and their endpoints) before the listeners that use them, then routes.
The name table comes last: it goes on the agent's stream, not Envoy's, so its place does not
order it against Envoy's types; last says that a name should not resolve before the listeners
for its address are sent (a stream that took every type would get it in that order)."""


class ConversionError(ValueError):
    """A resource dict is not a valid message of its type; the message names both."""


NAME_TABLE_RESOURCE: Final = ""
"""The name table's resource name: Istio sends one unnamed ``NameTable`` per response."""


@dataclass(frozen=True)
class Packed:
    """One resource, ready for a ``DiscoveryResponse``."""

    name: str
    resource: Any
    """A ``google.protobuf.any_pb2.Any``."""


def to_message(type_url: str, resource: Mapping[str, Any]) -> Any:
    """The protobuf message of ``type_url`` parsed from ``resource`` (strict: unknown fields raise)."""
    cls = MESSAGES.get(type_url)
    if cls is None:
        raise ConversionError(f"unknown resource type {type_url!r}")
    try:
        return json_format.ParseDict(dict(resource), cls())
    except json_format.ParseError as e:
        raise ConversionError(f"{SHORT_NAMES[type_url]} resource {resource.get('name', '?')!r}: {e}") from e


def to_any(type_url: str, resource: Mapping[str, Any]) -> Any:
    """``resource`` as a ``google.protobuf.Any`` carrying ``type_url``."""
    packed = any_pb2.Any()
    packed.Pack(to_message(type_url, resource))
    if packed.type_url != type_url:  # the message type and the URL agree by construction; say so if not
        raise ConversionError(f"{type_url!r} packed as {packed.type_url!r}")
    return packed


class PackCache:
    """Packed resources by (type, canonical JSON), shared by every proxy of one config version.

    Most of what proxies get is identical (every sidecar has the same outbound clusters and
    listeners): converting each distinct resource once, and letting the streams share the
    message, is what keeps a push from costing proxies x resources conversions and copies.
    Start a new cache for each config version (nothing is ever evicted)."""

    def __init__(self) -> None:
        self._packed: dict[tuple[str, str], Packed] = {}
        self._by_id: dict[int, tuple[Mapping[str, Any], Packed]] = {}
        """The same dict object again (shared by the compiler): no need to serialize it to find it."""
        self.hits = 0

    def __len__(self) -> int:
        return len(self._packed)

    def get(self, type_url: str, resource: Mapping[str, Any], name: str | None = None) -> Packed:
        """``resource`` packed (``name``: its resource name when it has no ``name`` field)."""
        same = self._by_id.get(id(resource))
        if same is not None and same[0] is resource and same[1].resource.type_url == type_url:
            self.hits += 1
            return same[1]
        key = (type_url, json.dumps(resource, sort_keys=True, separators=(",", ":")))
        found = self._packed.get(key)
        if found is None:
            label = str(resource["name"]) if name is None else name
            found = self._packed[key] = Packed(label, to_any(type_url, resource))
        else:
            self.hits += 1
        self._by_id[id(resource)] = (resource, found)  # keeps the dict alive, so its id stays its own
        return found


def pack_all(type_url: str, resources: Iterable[Mapping[str, Any]], cache: PackCache | None = None,
             ) -> tuple[Packed, ...]:
    if cache is None:
        return tuple(Packed(str(r["name"]), to_any(type_url, r)) for r in resources)
    return tuple(cache.get(type_url, r) for r in resources)


def pack(resources: EnvoyResources, cache: PackCache | None = None) -> dict[str, tuple[Packed, ...]]:
    """Every resource of ``resources`` by type URL (CDS, LDS, RDS, and NDS when ``name_table`` is set),
    packed (through ``cache`` when given); raises :class:`ConversionError`."""
    packed = {CLUSTER: pack_all(CLUSTER, resources.clusters, cache),
              LISTENER: pack_all(LISTENER, resources.listeners, cache),
              ROUTE: pack_all(ROUTE, resources.routes, cache)}
    if resources.name_table is not None:
        table = resources.name_table
        packed[NAME_TABLE] = (cache.get(NAME_TABLE, table, NAME_TABLE_RESOURCE) if cache is not None
                              else Packed(NAME_TABLE_RESOURCE, to_any(NAME_TABLE, table)),)
    return packed
