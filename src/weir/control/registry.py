"""The service registry (istiod's service discovery): a config snapshot -> mesh services and DNS tables.

:func:`build_registry` is pure. From the parsed resources of a :class:`Snapshot` it computes:

- one :class:`MeshService` per Kubernetes Service (host ``name.ns.svc.cluster.local``) with a
  virtual IP (``spec.clusterIP`` when given, else allocated from the service CIDR) and, per
  port, the endpoints of the running pods its selector matches (named target ports resolved
  through the pods' ``containerPorts``, as Kubernetes' endpoints controller does);
- one per ServiceEntry host, with ``spec.addresses`` or an address auto-allocated from
  ``240.240.0.0/16`` (Istio's DNS auto-allocation) and endpoints from ``spec.endpoints``,
  ``spec.workloadSelector`` or, for DNS resolution, the host itself;
- ``ExternalName`` Services as aliases (a CNAME, no VIP);
- the DNS proxy's :class:`DnsTable`: ``{fqdn: addresses}`` and ``{fqdn: alias target}``.

Allocation is stable: an address is a hash of the object's key (FNV-1a, as Istio's
auto-allocation), collisions move to the next free address, and objects are placed in sorted
key order, so adding a service never moves another's address unless they collide.
This module knows nothing of Envoy (``compile``), of storage or of serving.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, TypeVar

from weir.api.core import Namespace, ServiceAccount
from weir.api.istio_values import PROTOCOLS, IPAddress, IPNetwork, Protocol
from weir.api.load import Resource
from weir.api.networking_model import DestinationRule, ServiceEntry, VirtualService, WorkloadEntry
from weir.api.pod_model import Pod
from weir.api.security import PeerAuthentication
from weir.api.service import Service, ServicePort

DEFAULT_SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/16")
"""Embedded mode's service CIDR (kubeadm's default)."""
AUTO_ALLOCATE_CIDR = ipaddress.IPv4Network("240.240.0.0/16")
"""Istio's range for ServiceEntry addresses auto-allocated for DNS (Class E, never routed)."""
DEFAULT_DOMAIN = "cluster.local"
TLS_MODE_LABEL = "security.istio.io/tlsMode"
"""The injector labels sidecar pods ``istio``: their endpoints take mutual TLS (auto mTLS)."""
_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
_T = TypeVar("_T")

Kind = Literal["Service", "ServiceEntry"]
Resolution = Literal["STATIC", "DNS", "NONE", "ALIAS"]
"""How a client reaches the endpoints: listed IPs, DNS names, the original destination, or a CNAME."""


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    address: str
    """An IP address, or a DNS name (``resolution == "DNS"``)."""
    port: int
    """The port the workload listens on (the resolved target port)."""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    service_account: str = ""
    namespace: str = ""
    name: str = ""
    """The pod's name (empty for ServiceEntry endpoints)."""

    @property
    def tls_mode(self) -> str:
        """``istio`` when the workload runs a sidecar (mutual TLS), else ``disabled``."""
        return "istio" if self.labels.get(TLS_MODE_LABEL) == "istio" else "disabled"


@dataclass(frozen=True, kw_only=True)
class Port:
    name: str
    port: int
    protocol: Protocol
    """Istio's protocol: from ``appProtocol``, the port name's prefix (``http-web``), or TCP."""


@dataclass(frozen=True, kw_only=True)
class MeshService:
    hostname: str
    namespace: str
    name: str
    """The Service's or ServiceEntry's name."""
    kind: Kind
    ports: tuple[Port, ...] = ()
    vip: IPAddress | None = None
    """``None``: headless, an alias, or a ServiceEntry host with a CIDR or wildcard."""
    resolution: Resolution = "STATIC"
    mesh_internal: bool = True
    endpoints: Mapping[int, tuple[Endpoint, ...]] = field(default_factory=lambda: MappingProxyType({}))
    """Service port number -> its endpoints, sorted by address."""
    alias: str = ""
    """``ExternalName``: the name this host is a CNAME for."""

    def port(self, number: int) -> Port | None:
        return next((p for p in self.ports if p.port == number), None)


@dataclass(frozen=True, kw_only=True)
class DnsTable:
    """What the sidecar's DNS proxy answers for mesh names (fully qualified, no trailing dot)."""

    addresses: Mapping[str, tuple[str, ...]]
    aliases: Mapping[str, str]

    def to_json(self) -> dict[str, object]:
        return {"addresses": {k: list(v) for k, v in self.addresses.items()}, "aliases": dict(self.aliases)}


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """The config the control plane compiles from, as parsed resources (each tuple sorted by key)."""

    pods: tuple[Pod, ...] = ()
    services: tuple[Service, ...] = ()
    service_entries: tuple[ServiceEntry, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    virtual_services: tuple[VirtualService, ...] = ()
    peer_authentications: tuple[PeerAuthentication, ...] = ()

    @classmethod
    def of(cls, resources: Iterable[Resource]) -> Snapshot:
        """Sort ``resources`` (from :func:`weir.api.load.load_documents`) by kind; namespaces and
        service accounts are not needed here and are dropped."""
        by: dict[type, list[Resource]] = {}
        for resource in resources:
            if not isinstance(resource, Namespace | ServiceAccount):
                by.setdefault(type(resource), []).append(resource)

        def of_type(kind: type[_T]) -> tuple[_T, ...]:
            items = [r for r in by.get(kind, []) if isinstance(r, kind)]
            return tuple(sorted(items, key=lambda r: (r.metadata.namespace, r.metadata.name)))

        return cls(pods=of_type(Pod), services=of_type(Service), service_entries=of_type(ServiceEntry),
                   destination_rules=of_type(DestinationRule), virtual_services=of_type(VirtualService),
                   peer_authentications=of_type(PeerAuthentication))


@dataclass(frozen=True, kw_only=True)
class Registry:
    services: tuple[MeshService, ...]
    """Sorted by hostname."""
    dns: DnsTable
    domain: str = DEFAULT_DOMAIN

    def service(self, hostname: str) -> MeshService | None:
        return next((s for s in self.services if s.hostname == hostname), None)

    def resolve(self, host: str, namespace: str) -> str:
        """A host as config writes it (``reviews``, ``reviews.ns``, an FQDN) -> the registry's hostname."""
        if "." not in host:
            return f"{host}.{namespace}.svc.{self.domain}"
        parts = host.split(".")
        if len(parts) == 2 and self.service(f"{host}.svc.{self.domain}") is not None:
            return f"{host}.svc.{self.domain}"
        return host


def build_registry(snapshot: Snapshot, *, service_cidr: IPNetwork = DEFAULT_SERVICE_CIDR,
                   auto_cidr: IPNetwork = AUTO_ALLOCATE_CIDR, domain: str = DEFAULT_DOMAIN) -> Registry:
    """The registry of ``snapshot``: services, their addresses and endpoints, and the DNS tables."""
    pods = [p for p in snapshot.pods if pod_ip(p) is not None]
    service_vips = _Allocator(service_cidr, taken=[s.spec.cluster_ip for s in snapshot.services])
    auto_vips = _Allocator(auto_cidr, taken=[])
    services: list[MeshService] = []
    for svc in snapshot.services:  # sorted by namespace/name: allocation order is stable
        services.append(_kube_service(svc, pods, service_vips, domain))
    for entry in snapshot.service_entries:
        services.extend(_entry_services(entry, pods, auto_vips))
    services.sort(key=lambda s: (s.hostname, s.kind))
    unique: dict[str, MeshService] = {}
    for service in services:
        unique.setdefault(service.hostname, service)  # a Service wins over a ServiceEntry for its host
    return Registry(services=tuple(unique.values()), dns=_dns_table(unique.values()), domain=domain)


def pod_ip(pod: Pod) -> IPAddress | None:
    """``status.podIP`` of a pod that is not finished, else ``None``."""
    status = pod.raw.get("status")
    if not isinstance(status, dict) or status.get("phase") in _TERMINAL_PHASES:
        return None
    value = status.get("podIP")
    try:
        return ipaddress.ip_address(value) if isinstance(value, str) and value else None
    except ValueError:
        return None


def port_protocol(name: str, app_protocol: str = "") -> Protocol:
    """Istio's protocol selection: ``appProtocol``, else the name's prefix before ``-``, else TCP."""
    for candidate in (app_protocol, name.split("-", 1)[0]):
        protocol = PROTOCOLS.get(candidate.lower())
        if protocol is not None:
            return protocol
    return "TCP"


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- Kubernetes Services --------------------------------------------------------------------


def _kube_service(svc: Service, pods: list[Pod], vips: _Allocator, domain: str) -> MeshService:
    meta, spec = svc.metadata, svc.spec
    hostname = f"{meta.name}.{meta.namespace}.svc.{domain}"
    ports = tuple(Port(name=p.name, port=p.port, protocol=port_protocol(p.name, p.app_protocol))
                  for p in spec.ports if p.protocol == "TCP")
    if spec.type == "ExternalName":
        return MeshService(hostname=hostname, namespace=meta.namespace, name=meta.name, kind="Service",
                           ports=ports, resolution="ALIAS", alias=spec.external_name.removesuffix("."))
    vip = None if spec.headless else (spec.cluster_ip or vips.allocate(f"{meta.namespace}/{meta.name}"))
    selected = [p for p in pods if p.metadata.namespace == meta.namespace and spec.selector
                and selects(spec.selector, p.metadata.labels)]
    endpoints = {p.port: tuple(sorted((e for pod in selected for e in _pod_endpoint(pod, p)), key=_by_address))
                 for p in spec.ports if p.protocol == "TCP"}
    return MeshService(hostname=hostname, namespace=meta.namespace, name=meta.name, kind="Service", ports=ports,
                       vip=vip, endpoints=MappingProxyType(endpoints))


def _pod_endpoint(pod: Pod, port: ServicePort) -> list[Endpoint]:
    target = port.target_port
    if isinstance(target, str):
        numbers = [cp.container_port for c in pod.spec.containers for cp in c.ports
                   if cp.name == target and cp.protocol == port.protocol]
        if not numbers:
            return []  # Kubernetes leaves a pod without the named port out of the endpoints
        target = numbers[0]
    return [Endpoint(address=str(pod_ip(pod)), port=target, labels=pod.metadata.labels,
                     service_account=pod.spec.service_account_name, namespace=pod.metadata.namespace,
                     name=pod.metadata.name)]


# --- ServiceEntries -------------------------------------------------------------------------


def _entry_services(entry: ServiceEntry, pods: list[Pod], vips: _Allocator) -> list[MeshService]:
    meta, spec = entry.metadata, entry.spec
    ports = tuple(Port(name=p.name, port=p.number, protocol=p.protocol or port_protocol(p.name))
                  for p in spec.ports)
    single = [n.network_address for n in spec.addresses if n.num_addresses == 1]
    found: list[MeshService] = []
    for host in sorted(spec.hosts):
        vip: IPAddress | None = single[0] if single else None
        if not spec.addresses and not host.startswith("*"):
            vip = vips.allocate(host)
        endpoints: dict[int, tuple[Endpoint, ...]] = {}
        for p in spec.ports:
            endpoints[p.number] = tuple(sorted(_entry_endpoints(entry, host, p.name, p.number, p.target_port, pods),
                                               key=_by_address))
        found.append(MeshService(hostname=host, namespace=meta.namespace, name=meta.name, kind="ServiceEntry",
                                 ports=ports, vip=vip, resolution=_resolution(spec.resolution),
                                 mesh_internal=spec.location == "MESH_INTERNAL",
                                 endpoints=MappingProxyType(endpoints)))
    return found


def _resolution(value: str) -> Resolution:
    return "DNS" if value in ("DNS", "DNS_ROUND_ROBIN") else "STATIC" if value == "STATIC" else "NONE"


def _entry_endpoints(entry: ServiceEntry, host: str, name: str, number: int, target: int | None,
                     pods: list[Pod]) -> list[Endpoint]:
    spec = entry.spec
    default_port = target or number
    if spec.workload_selector is not None:
        selector = spec.workload_selector
        return [Endpoint(address=str(pod_ip(p)), port=default_port, labels=p.metadata.labels,
                         service_account=p.spec.service_account_name, namespace=p.metadata.namespace,
                         name=p.metadata.name)
                for p in pods if p.metadata.namespace == entry.metadata.namespace
                and selects(selector, p.metadata.labels)]
    if spec.endpoints:
        return [_workload_endpoint(w, name, default_port, entry.metadata.namespace) for w in spec.endpoints
                if not w.address.startswith("unix://")]
    if spec.resolution in ("DNS", "DNS_ROUND_ROBIN") and not host.startswith("*"):
        return [Endpoint(address=host, port=default_port)]
    return []


def _workload_endpoint(entry: WorkloadEntry, port_name: str, default_port: int, namespace: str) -> Endpoint:
    return Endpoint(address=entry.address, port=entry.ports.get(port_name, default_port), labels=entry.labels,
                    service_account=entry.service_account, namespace=namespace)


# --- addresses and DNS ----------------------------------------------------------------------


class _Allocator:
    """Hash-then-probe allocation in one network, skipping taken addresses and ``.0``/``.255``."""

    def __init__(self, network: IPNetwork, taken: Iterable[IPAddress | None]) -> None:
        self._network = network
        self._taken = {ip for ip in taken if ip is not None}

    def allocate(self, key: str) -> IPAddress:
        size = self._network.num_addresses
        start = _fnv1a(key) % size
        for step in range(size):
            candidate = self._network.network_address + (start + step) % size
            last = int(candidate) & 0xFF
            if candidate in self._taken or last in (0, 255) or candidate == self._network.broadcast_address:
                continue
            self._taken.add(candidate)
            return candidate
        raise ValueError(f"no free address left in {self._network} for {key!r}")


def _fnv1a(text: str) -> int:
    value = 0x811C9DC5
    for byte in text.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def _dns_table(services: Iterable[MeshService]) -> DnsTable:
    addresses: dict[str, tuple[str, ...]] = {}
    aliases: dict[str, str] = {}
    for svc in services:
        if svc.resolution == "ALIAS":
            aliases[svc.hostname] = svc.alias
        elif svc.vip is not None:
            addresses[svc.hostname] = (str(svc.vip),)
        elif svc.kind == "Service":  # headless: the pods' own addresses
            ips = sorted({e.address for eps in svc.endpoints.values() for e in eps}, key=_ip_order)
            if ips:
                addresses[svc.hostname] = tuple(ips)
    return DnsTable(addresses=MappingProxyType(dict(sorted(addresses.items()))),
                    aliases=MappingProxyType(dict(sorted(aliases.items()))))


def _key(resource: Resource) -> tuple[str, str]:
    return (resource.metadata.namespace, resource.metadata.name)


def _ip_order(address: str) -> tuple[int, int | str]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (2, address)
    return (ip.version, int(ip))


def _by_address(endpoint: Endpoint) -> tuple[tuple[int, int | str], int]:
    return (_ip_order(endpoint.address), endpoint.port)
