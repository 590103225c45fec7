"""Kubernetes ``core/v1`` Services: the model and ``parse_service``.

What the mesh needs of a Service: its ports (Istio reads the protocol from ``appProtocol`` or
the port name's prefix), its selector, its cluster IP (or that it is headless) and, for an
``ExternalName`` service, the name it aliases. ``NodePort`` and ``LoadBalancer`` services are
accepted and behave as ``ClusterIP`` inside the mesh (:attr:`ServiceSpec.cluster_ip_like`).
Rules follow Kubernetes' ``ValidateService``; every other field is checked and kept in ``raw``.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from weir.api import core_schema as cs
from weir.api import names
from weir.api import read as rd
from weir.api.errors import Problems, item_path, quoted
from weir.api.meta import Header, ObjectMeta, check_labels, open_manifest, parse_metadata
from weir.api.pod_model import IPAddress, Protocol

ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]
HEADLESS = "None"

SERVICE = Header("Service", ("v1",), cs.SERVICE)

_TYPES: dict[str, ServiceType] = {"ClusterIP": "ClusterIP", "NodePort": "NodePort",
                                  "LoadBalancer": "LoadBalancer", "ExternalName": "ExternalName"}
_PROTOCOLS: dict[str, Protocol] = {"TCP": "TCP", "UDP": "UDP", "SCTP": "SCTP"}


def _frozen_map() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class ServicePort:
    port: int
    target_port: int | str
    """A container port number, or the name of a container port; defaults to ``port``."""
    protocol: Protocol = "TCP"
    name: str = ""
    app_protocol: str = ""
    node_port: int | None = None


@dataclass(frozen=True, kw_only=True)
class ServiceSpec:
    type: ServiceType = "ClusterIP"
    ports: tuple[ServicePort, ...] = ()
    selector: Mapping[str, str] = field(default_factory=_frozen_map)
    """Empty: the service selects no pods (its endpoints are managed by hand)."""
    cluster_ip: IPAddress | None = None
    """As given; ``None`` when unset (to be allocated) or headless."""
    headless: bool = False
    """``clusterIP: None``: DNS answers with the endpoints' addresses."""
    external_name: str = ""
    """``ExternalName`` services only: the DNS name this one is an alias (CNAME) for."""

    @property
    def cluster_ip_like(self) -> bool:
        """``ClusterIP``, ``NodePort`` and ``LoadBalancer`` services route alike inside the mesh."""
        return self.type != "ExternalName"


@dataclass(frozen=True, kw_only=True)
class Service:
    metadata: ObjectMeta
    spec: ServiceSpec
    api_version: str = "v1"
    kind: str = "Service"
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """A deep copy of the manifest as given."""


def parse_service(doc: object, source: str = "<service>") -> Service:
    """Check and build a Service. Raises :class:`~weir.api.errors.ManifestError` listing every problem."""
    problems, doc = open_manifest(doc, source, SERVICE)
    metadata = parse_metadata(doc, problems, SERVICE, name_rule=names.dns1035_label)
    if not rd.present(doc, "spec"):
        problems.missing("spec", "required (a Service needs spec.ports, or spec.externalName)")
    spec = rd.mapping(doc, "spec")
    type_ = _TYPES.get(rd.string(spec, "type"), "ClusterIP")
    cluster_ip, headless = _cluster_ip(spec, type_, problems)
    ports = _ports(spec, type_, problems)
    external_name = rd.string(spec, "externalName")
    if type_ == "ExternalName":
        _check_external_name(spec, problems)
    else:
        if not ports and not headless and rd.absent(spec, "ports") and isinstance(doc.get("spec"), dict):
            problems.missing("spec.ports", "required (at least one port, unless the service is headless)")
        if external_name:
            problems.add("spec.externalName", f'may only be set when type is "ExternalName", not "{type_}"')
            external_name = ""
    selector = rd.string_map(spec, "selector")
    check_labels(selector, "spec.selector", problems)
    problems.raise_if_any()
    return Service(
        metadata=metadata,
        spec=ServiceSpec(type=type_, ports=ports, selector=MappingProxyType(selector), cluster_ip=cluster_ip,
                         headless=headless, external_name=external_name),
        raw=copy.deepcopy(doc),
    )


def _cluster_ip(spec: rd.Doc, type_: ServiceType, problems: Problems) -> tuple[IPAddress | None, bool]:
    given = [("spec.clusterIP", rd.string(spec, "clusterIP"))] if rd.string(spec, "clusterIP") else []
    given += [(item_path("spec.clusterIPs", i), v) for i, v in enumerate(rd.strings(spec, "clusterIPs"))]
    if not given:
        return None, False
    if type_ == "ExternalName":
        problems.add(given[0][0], "must not be set for an ExternalName service")
        return None, False
    ips: list[IPAddress] = []
    for path, value in given:
        if value == HEADLESS:
            if type_ != "ClusterIP":
                problems.add(path, f'may not be "None" for a {type_} service (only ClusterIP services are headless)')
            continue
        try:
            ips.append(ipaddress.ip_address(value))
        except ValueError:
            rd.invalid(problems, path, value, 'must be an IP address or "None" (a headless service)')
    values = [value for _, value in given]
    if rd.string(spec, "clusterIP") and len(given) > 1 and values[0] != values[1]:
        problems.add("spec.clusterIPs[0]", f"must match spec.clusterIP ({quoted(values[0])})")
    families = rd.strings(spec, "clusterIPs")
    if len(families) > 2:
        problems.add("spec.clusterIPs", "may have at most two entries (one per IP family)")
    elif len(families) == 2 and HEADLESS not in families and len({ip.version for ip in ips}) == 1:
        problems.add("spec.clusterIPs", "two entries must be of different IP families (dual stack)")
    if HEADLESS in values and len(set(values)) > 1:
        problems.add("spec.clusterIPs", '"None" must be the only cluster IP of a headless service')
    return (ips[0] if ips else None), HEADLESS in values


def _ports(spec: rd.Doc, type_: ServiceType, problems: Problems) -> tuple[ServicePort, ...]:
    ports: list[ServicePort] = []
    entries = list(rd.mappings(spec, "ports", "spec"))
    names_seen: set[str] = set()
    pairs_seen: set[tuple[int, str]] = set()
    for ppath, port in entries:
        number = rd.integer(port, "port")
        if number is None:
            if rd.absent(port, "port"):
                problems.missing(f"{ppath}.port")
            continue
        if not 1 <= number <= 65535:
            problems.add(f"{ppath}.port", f"must be between 1 and 65535, inclusive, got {number}")
            continue
        name = rd.string(port, "name")
        if name:
            problem = names.dns1123_label(name)
            if problem:
                rd.invalid(problems, f"{ppath}.name", name, problem)
            elif name in names_seen:
                problems.add(f"{ppath}.name", f"duplicate port name {quoted(name)}")
            names_seen.add(name)
        elif len(entries) > 1 and rd.absent(port, "name"):
            problems.missing(f"{ppath}.name", "required when a service has more than one port")
        protocol = _PROTOCOLS.get(rd.string(port, "protocol"), "TCP")
        if (number, protocol) in pairs_seen:
            problems.add(ppath, f"duplicate port {number}/{protocol}")
        pairs_seen.add((number, protocol))
        app_protocol = rd.string(port, "appProtocol")
        if app_protocol:
            problem = names.qualified_name(app_protocol)
            if problem:
                rd.invalid(problems, f"{ppath}.appProtocol", app_protocol, problem)
        ports.append(ServicePort(port=number, target_port=_target_port(port, number, ppath, problems),
                                 protocol=protocol, name=name, app_protocol=app_protocol,
                                 node_port=_node_port(port, type_, ppath, problems)))
    return tuple(ports)


def _target_port(port: rd.Doc, number: int, path: str, problems: Problems) -> int | str:
    target = port.get("targetPort")
    if isinstance(target, int) and not isinstance(target, bool) and target != 0:
        if not 1 <= target <= 65535:
            problems.add(f"{path}.targetPort", f"must be between 1 and 65535, inclusive, got {target}")
        return target
    if isinstance(target, str) and target:
        problem = names.port_name(target)
        if problem:
            rd.invalid(problems, f"{path}.targetPort", target, f"a named port {problem}")
        return target
    return number  # unset, 0 or "": the service port, as Kubernetes defaults it


def _node_port(port: rd.Doc, type_: ServiceType, path: str, problems: Problems) -> int | None:
    node_port = rd.integer(port, "nodePort") or None  # 0 is unset
    if node_port is None:
        return None
    if type_ in ("ClusterIP", "ExternalName"):
        problems.add(f"{path}.nodePort", f'may not be used when type is "{type_}"')
        return None
    if not 1 <= node_port <= 65535:
        problems.add(f"{path}.nodePort", f"must be between 1 and 65535, inclusive, got {node_port}")
        return None
    return node_port


def _check_external_name(spec: rd.Doc, problems: Problems) -> None:
    value = rd.string(spec, "externalName")
    if not value:
        if rd.absent(spec, "externalName"):
            problems.missing("spec.externalName", "required for an ExternalName service (a DNS name)")
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        rd.invalid(problems, "spec.externalName", value, "must be a DNS name, not an IP address (it becomes a CNAME)")
        return
    problem = names.dns1123_subdomain(value.removesuffix("."))
    if problem:
        rd.invalid(problems, "spec.externalName", value, problem)
