"""The agent's name-table client (pilot-agent's NDS): DNS tables from the control plane, over ADS.

Istio's agent gets ``istio.networking.nds.v1.NameTable`` (:mod:`weir.platform.nds`) from istiod
on the xDS stream it proxies for Envoy; weir's agent opens an ADS stream of its own
(``StreamAggregatedResources``, state of the world) to the control plane's ADS server, which
is also Envoy's, and asks only for that type. :class:`NameTableClient` is the driver:

- the first ``DiscoveryRequest`` carries the node (id and Istio's metadata, as Envoy's) and
  the version the agent holds ("" at first), no resource names (NDS is wildcard);
- each response is converted (:func:`to_name_table`) and handed to ``on_table`` (the DNS
  proxy's ``Resolver.update``), then ACKed (its ``version_info`` and nonce); a table that cannot
  be converted, or that ``on_table`` refuses, is NACKed with ``error_detail`` and the last good
  version, and the DNS proxy keeps answering from the last good table;
- when the stream ends or the control plane cannot be reached, it reconnects on a new channel
  after a capped exponential back-off with jitter (reset once a response arrives), logging one
  warning per outage and one line when the table flows again.

:func:`to_name_table` is pure and follows Istio's agent: the table's hosts by their FQDN;
for a Kubernetes entry (``registry`` ``Kubernetes``, ``shortname``, ``namespace``) under
``svc.<cluster domain>`` also ``name.ns``, ``name.ns.svc``, ``name`` in the agent's own
namespace, and its ``alt_hosts``; weir's ``cname`` makes an alias. The resolver derives the
usual short forms from the FQDN itself; only names it would not derive are added. (It also
derives them for any ``x.ns.svc.<domain>`` host, where Istio's agent does so only for
Kubernetes entries.) This package must not know the control plane: only the message is shared.
"""

from __future__ import annotations

import asyncio  # noqa: TID251 (the NDS client's driver: a gRPC stream and its retry loop)
import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import message as pb_message

from weir.agent.bootstrap import Address, TcpAddress, parse_address
from weir.agent.dns.resolver import NameTable
from weir.platform import nds

log = logging.getLogger(__name__)

TYPE_URL: Final = nds.TYPE_URL
BACKOFF_INITIAL: Final = 1.0
BACKOFF_MAX: Final = 30.0
_INVALID_ARGUMENT: Final = 3
"""``google.rpc.Code.INVALID_ARGUMENT``, the code of a NACK's ``error_detail`` (as Envoy sends)."""


class NameTableError(ValueError):
    """A pushed table cannot be used; the message names the host and what is wrong (sent as the NACK)."""


@dataclass(frozen=True)
class Node:
    """Who the agent says it is on its stream: Envoy's node id and Istio's metadata (what
    :func:`weir.agent.bootstrap.node_id` and :func:`~weir.agent.bootstrap.node_metadata` give)."""

    id: str
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    cluster: str = ""

    def to_proto(self) -> Any:
        node = base_pb2.Node(id=self.id, cluster=self.cluster)
        node.metadata.update(dict(self.metadata))
        return node


# --- the pure part ---------------------------------------------------------------------------


def merge_resources(resources: Sequence[Any]) -> Any:
    """The ``NameTable`` messages of a response (``Any``s) as one; none is the empty table."""
    merged = nds.NameTable()
    for index, resource in enumerate(resources):
        if resource.type_url != TYPE_URL:
            raise NameTableError(f"resource {index} is a {resource.type_url or 'untyped'} message, not a NameTable")
        part = nds.NameTable()
        try:
            resource.Unpack(part)
        except pb_message.DecodeError as exc:
            raise NameTableError(f"resource {index}: not a valid NameTable: {exc}") from None
        for host in part.table:
            if host in merged.table:
                raise NameTableError(f"host {host!r} is in more than one resource")
            merged.table[host].CopyFrom(part.table[host])
    return merged


def to_name_table(table: Any, *, namespace: str, search_domains: Iterable[str] = (),
                  cluster_domain: str = "cluster.local") -> NameTable:
    """A ``NameTable`` message -> the resolver's :class:`NameTable` for a pod in ``namespace``."""
    shape = NameTable.parse(namespace=namespace, search_domains=search_domains, cluster_domain=cluster_domain)
    entries: dict[str, Any] = {}
    for key in sorted(table.table):
        host = _norm(key)
        if host in entries:
            raise NameTableError(f"host {key!r} is in the table twice (names are case-insensitive)")
        entries[host] = info = table.table[key]
        if info.cname and info.ips:
            raise NameTableError(f"host {key!r} has both addresses and a cname ({info.cname!r})")
    hosts = {host: list(info.ips) for host, info in entries.items() if not info.cname}
    aliases = {host: str(info.cname) for host, info in entries.items() if info.cname}
    taken = set(entries)
    for host, info in entries.items():  # names the resolver does not derive itself, once, table keys first
        derived = set(shape.short_forms(host))
        for name in alt_names(host, info, namespace=shape.namespace, cluster_domain=shape.cluster_domain):
            if name in taken or name in derived:
                continue
            taken.add(name)
            if info.cname:
                aliases[name] = info.cname
            else:
                hosts[name] = list(info.ips)
    try:
        return NameTable.parse(hosts=hosts, aliases=aliases, namespace=namespace, search_domains=search_domains,
                               cluster_domain=cluster_domain)
    except ValueError as exc:
        raise NameTableError(str(exc)) from None


def alt_names(host: str, info: Any, *, namespace: str, cluster_domain: str) -> tuple[str, ...]:
    """Istio's other names of a Kubernetes entry (``GenerateAltHosts``), lower-cased, no trailing dot."""
    if info.registry != nds.REGISTRY_KUBERNETES or not info.shortname or not info.namespace:
        return ()
    if not _norm(host).endswith(f".svc.{cluster_domain}"):
        return ()  # another cluster's domain: its name.ns would clash with ours
    short, ns = _norm(info.shortname), _norm(info.namespace)
    names = [f"{short}.{ns}", f"{short}.{ns}.svc"]
    if ns == namespace:
        names.append(short)
    names += [_norm(h) for h in info.alt_hosts if _norm(h)]
    return tuple(names)


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def backoff_delay(attempt: int, rand: float, *, initial: float = BACKOFF_INITIAL,
                  maximum: float = BACKOFF_MAX) -> float:
    """Seconds before retry ``attempt`` (0, 1, ...): ``initial * 2**attempt`` capped at ``maximum``,
    then jittered into its upper half by ``rand`` in [0, 1), so agents that lost the same control
    plane do not come back in step."""
    ceiling = min(maximum, initial * 2.0 ** min(attempt, 32))
    return ceiling * (0.5 + 0.5 * rand)


def grpc_target(address: str | Address) -> str:
    """``host:port``, ``[v6]:port`` or ``unix:/path`` as gRPC's channel target."""
    parsed = parse_address(address, "NDS address") if isinstance(address, str) else address
    return str(parsed) if isinstance(parsed, TcpAddress) else f"unix:{parsed.path}"


# --- the driver ------------------------------------------------------------------------------


class NameTableClient:
    """The agent's NDS stream; see the module docstring. ``on_table`` runs on the event loop."""

    def __init__(self, address: str | Address, node: Node, on_table: Callable[[NameTable], None], *,
                 namespace: str, search_domains: Iterable[str] = (), cluster_domain: str = "cluster.local",
                 backoff_initial: float = BACKOFF_INITIAL, backoff_max: float = BACKOFF_MAX,
                 rand: Callable[[], float] = random.random) -> None:
        if not node.id:
            raise ValueError("NDS client: the node needs an id")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError(f"NDS client: back-off {backoff_initial}..{backoff_max} s is not 0 < initial <= max")
        self.target = grpc_target(address)
        self.node = node
        self._on_table = on_table
        self._namespace = namespace
        self._search_domains = tuple(search_domains)
        self._cluster_domain = cluster_domain
        self._backoff = (backoff_initial, backoff_max)
        self._rand = rand
        self._task: asyncio.Task[None] | None = None
        self._last_version = ""
        self._last_nack = ""
        self._connected = False
        self._outage = False
        self.table: NameTable | None = None
        """The last table applied (``None`` before the first)."""

    @property
    def last_version(self) -> str:
        """The version of the table in use, as the control plane numbered it ("" before the first)."""
        return self._last_version

    @property
    def connected(self) -> bool:
        """A stream is open and the control plane has answered on it."""
        return self._connected

    @property
    def last_nack(self) -> str:
        """Why the latest table was rejected ("" when the latest one was applied)."""
        return self._last_nack

    async def start(self) -> None:
        """Start the stream task (it connects, and reconnects, on its own)."""
        if self._task is not None:
            raise RuntimeError("NDS client already started")
        self._task = asyncio.create_task(self._run(), name=f"nds-{self.target}")

    async def stop(self) -> None:
        """End the stream and the retries; the last table stays where ``on_table`` put it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._connected = False

    async def _run(self) -> None:
        attempt = 0
        while True:
            unexpected = False
            try:
                await self._stream()
                reason = "the control plane ended the stream"
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:  # a bug must not end the retries: the DNS proxy needs the tables
                reason, unexpected = f"{type(exc).__name__}: {exc}", True
            if self._connected:  # the control plane answered on that stream: start the back-off over
                self._connected, attempt = False, 0
            delay = backoff_delay(attempt, self._rand(), initial=self._backoff[0], maximum=self._backoff[1])
            attempt += 1
            if not self._outage:  # one warning per outage; the retries log at debug level
                self._outage = True
                log.warning("NDS: no name tables from %s (%s); retrying with back-off up to %g s, "
                            "answering from version %s meanwhile", self.target, reason, self._backoff[1],
                            self._last_version or "none", exc_info=unexpected)
            else:
                log.debug("NDS: %s still unreachable (%s); next try in %.2f s", self.target, reason, delay,
                          exc_info=unexpected)
            await asyncio.sleep(delay)

    async def _stream(self) -> None:
        """One stream, on a new channel, until it ends (sets ``connected`` once answered)."""
        async with grpc.aio.insecure_channel(self.target) as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
            try:
                await call.write(self._request(node=True))
                while (response := await call.read()) is not grpc.aio.EOF:
                    if not self._connected:
                        self._connected = True
                        if self._outage:
                            self._outage = False
                            log.info("NDS: name tables flow again from %s", self.target)
                    await call.write(self._apply(response))
            except asyncio.InvalidStateError:  # wrote to a stream the server had just ended (status OK)
                return

    def _apply(self, response: Any) -> Any:
        """Convert and hand over ``response``'s table; the ACK or NACK to send back."""
        version, nonce = str(response.version_info), str(response.nonce)
        try:
            if response.type_url != TYPE_URL:
                raise NameTableError(f"asked for {TYPE_URL}, got {response.type_url or 'no type'}")
            table = to_name_table(merge_resources(response.resources), namespace=self._namespace,
                                  search_domains=self._search_domains, cluster_domain=self._cluster_domain)
        except NameTableError as exc:
            return self._nack(version, nonce, str(exc))
        try:
            self._on_table(table)
        except Exception as exc:
            log.exception("NDS: applying name table version %s failed", version)
            return self._nack(version, nonce, f"the agent could not apply it: {exc}")
        self.table, self._last_version, self._last_nack = table, version, ""
        log.debug("NDS: name table version %s: %d hosts, %d aliases", version, len(table.hosts), len(table.aliases))
        return self._request(nonce=nonce)

    def _nack(self, version: str, nonce: str, message: str) -> Any:
        self._last_nack = message
        log.warning("NDS: rejected name table version %s from %s (keeping %s): %s", version, self.target,
                    self._last_version or "none", message)
        return self._request(nonce=nonce, error=message)

    def _request(self, *, node: bool = False, nonce: str = "", error: str = "") -> Any:
        """A request for NDS at the version in use (an ACK when ``nonce`` is set, a NACK with ``error``)."""
        request = discovery_pb2.DiscoveryRequest(type_url=TYPE_URL, version_info=self._last_version,
                                                 response_nonce=nonce)
        if node:
            request.node.CopyFrom(self.node.to_proto())
        if error:
            request.error_detail.code, request.error_detail.message = _INVALID_ARGUMENT, error
        return request
