"""``parse_service_entry`` and ``parse_destination_rule``: Istio manifests -> dataclasses, or every problem.

Two passes, as for Pods: :mod:`weir.api.istio_schema` checks field names and JSON types (and
durations, ports, percentages), then the builders here apply Istio's validation rules
(``pkg/config/validation``) and build :mod:`weir.api.networking_model` values.
"""

from __future__ import annotations

import copy
from types import MappingProxyType
from typing import Any

from weir.api import istio_parse as ip
from weir.api import istio_schema as isc
from weir.api import istio_values as iv
from weir.api import read as rd
from weir.api.errors import Problems, field_path, item_path, quoted
from weir.api.meta import Header, open_manifest, parse_metadata
from weir.api.networking_model import (
    ClientTLSSettings,
    DestinationRule,
    DestinationRuleSpec,
    LoadBalancerSettings,
    Location,
    PortTrafficPolicy,
    Resolution,
    ServiceEntry,
    ServiceEntryPort,
    ServiceEntrySpec,
    SimpleLB,
    Subset,
    TLSMode,
    TrafficPolicy,
    WorkloadEntry,
)

SERVICE_ENTRY = Header("ServiceEntry", isc.NETWORKING_VERSIONS, isc.SERVICE_ENTRY)
DESTINATION_RULE = Header("DestinationRule", isc.NETWORKING_VERSIONS, isc.DESTINATION_RULE)

_LOCATIONS: dict[str, Location] = {"MESH_EXTERNAL": "MESH_EXTERNAL", "MESH_INTERNAL": "MESH_INTERNAL"}
_RESOLUTIONS: dict[str, Resolution] = {"NONE": "NONE", "STATIC": "STATIC", "DNS": "DNS",
                                       "DNS_ROUND_ROBIN": "DNS_ROUND_ROBIN"}
_TLS_MODES: dict[str, TLSMode] = {"DISABLE": "DISABLE", "SIMPLE": "SIMPLE", "MUTUAL": "MUTUAL",
                                  "ISTIO_MUTUAL": "ISTIO_MUTUAL"}
_SIMPLE_LB: dict[str, SimpleLB] = {
    "UNSPECIFIED": "UNSPECIFIED", "LEAST_CONN": "LEAST_CONN", "RANDOM": "RANDOM", "PASSTHROUGH": "PASSTHROUGH",
    "ROUND_ROBIN": "ROUND_ROBIN", "LEAST_REQUEST": "LEAST_REQUEST",
}
_POLICY_FIELDS = ("loadBalancer", "connectionPool", "outlierDetection", "tls", "portLevelSettings", "tunnel",
                  "proxyProtocol", "retryBudget")
_PORT_POLICY_FIELDS = ("loadBalancer", "connectionPool", "outlierDetection", "tls")


# --- ServiceEntry --------------------------------------------------------------------------


def parse_service_entry(doc: object, source: str = "<serviceentry>") -> ServiceEntry:
    """Check and build a ServiceEntry. Raises :class:`~weir.api.errors.ManifestError` listing every problem."""
    problems, doc = open_manifest(doc, source, SERVICE_ENTRY)
    metadata = parse_metadata(doc, problems, SERVICE_ENTRY)
    spec = ip.spec(doc, problems, "spec.hosts")
    resolution = _RESOLUTIONS.get(rd.string(spec, "resolution"), "NONE")
    hosts = _hosts(spec, problems, present=isinstance(doc.get("spec"), dict))
    addresses = _addresses(spec, resolution, problems)
    ports = _ports(spec, problems)
    endpoints = _endpoints(spec, resolution, ports, problems)
    workload_selector = ip.selector(spec, "workloadSelector", "spec", problems, labels_key="labels")
    if workload_selector is not None and rd.present(spec, "endpoints"):
        problems.add("spec.workloadSelector", "only one of workloadSelector or endpoints may be set")
    _check_resolution(spec, resolution, hosts, ports, problems)
    export_to = ip.export_to(spec, metadata.namespace, problems, service_entry=True)
    problems.raise_if_any()
    return ServiceEntry(
        metadata=metadata,
        spec=ServiceEntrySpec(
            hosts=hosts, addresses=addresses, ports=ports,
            location=_LOCATIONS.get(rd.string(spec, "location"), "MESH_EXTERNAL"), resolution=resolution,
            endpoints=endpoints, workload_selector=workload_selector, export_to=export_to,
            subject_alt_names=rd.strings(spec, "subjectAltNames"),
        ),
        api_version=rd.string(doc, "apiVersion"),
        raw=copy.deepcopy(doc),
    )


def _hosts(spec: rd.Doc, problems: Problems, *, present: bool) -> tuple[str, ...]:
    hosts = rd.strings(spec, "hosts")
    if not hosts and rd.absent(spec, "hosts") and present:
        problems.missing("spec.hosts", "required (at least one host)")
    for index, host in enumerate(hosts):
        ip.check_host(host, item_path("spec.hosts", index), problems)
    return hosts


def _addresses(spec: rd.Doc, resolution: Resolution, problems: Problems) -> tuple[iv.IPNetwork, ...]:
    found: list[iv.IPNetwork] = []
    for index, value in enumerate(rd.strings(spec, "addresses")):
        path = item_path("spec.addresses", index)
        network = iv.ip_or_cidr(value)
        if network is None:
            rd.invalid(problems, path, value, "must be an IP address or a CIDR block")
            continue
        if "/" in value and resolution not in ("NONE", "STATIC"):
            problems.add(path, f"CIDR blocks are allowed only with resolution NONE or STATIC, not {resolution}")
        found.append(network)
    return tuple(found)


def _ports(spec: rd.Doc, problems: Problems) -> tuple[ServiceEntryPort, ...]:
    ports: list[ServiceEntryPort] = []
    names_seen: set[str] = set()
    numbers_seen: set[int] = set()
    for ppath, port in rd.mappings(spec, "ports", "spec"):
        number = rd.integer(port, "number")
        if number is None and rd.absent(port, "number"):
            problems.missing(f"{ppath}.number")
        name = _unique_name(port, ppath, names_seen, problems, "port", "endpoints and routes refer to ports by name")
        if number is not None and number in numbers_seen:
            problems.add(f"{ppath}.number", f"duplicate port number {number}")
        protocol_name = rd.string(port, "protocol")
        protocol = iv.protocol(protocol_name) if protocol_name else None
        if protocol_name and protocol is None:
            problems.add(f"{ppath}.protocol", f"unsupported protocol {quoted(protocol_name)} (one of "
                                              f"{', '.join(iv.PROTOCOLS.values())}, any case)")
        target = rd.integer(port, "targetPort") or None  # 0 is unset
        if target is not None and iv.port_number(target):
            problems.add(f"{ppath}.targetPort", iv.port_number(target) or "")
            target = None
        if number is None or not 1 <= number <= 65535 or (protocol_name and protocol is None):
            continue  # reported: rules that read ports would only repeat it
        numbers_seen.add(number)
        ports.append(ServiceEntryPort(number=number, name=name, protocol=protocol, target_port=target))
    return tuple(ports)


def _endpoints(spec: rd.Doc, resolution: Resolution, ports: tuple[ServiceEntryPort, ...],
               problems: Problems) -> tuple[WorkloadEntry, ...]:
    found: list[WorkloadEntry] = []
    port_names = {p.name for p in ports}
    for epath, entry in rd.mappings(spec, "endpoints", "spec"):
        address = rd.string(entry, "address")
        network = rd.string(entry, "network")
        if not address:
            if rd.absent(entry, "address") and not network:
                problems.missing(f"{epath}.address", "required (or a network, for a remote endpoint)")
        elif resolution != "NONE":
            _check_address(address, resolution, f"{epath}.address", problems, has_ports=rd.present(entry, "ports"),
                           service_ports=len(ports))
        endpoint_ports = {k: v for k, v in rd.mapping(entry, "ports").items() if isinstance(v, int)}
        for name in endpoint_ports:
            if name not in port_names:
                known = ", ".join(sorted(port_names)) or "none"
                problems.add(field_path(f"{epath}.ports", name),
                             f"not a port name of this ServiceEntry (its ports: {known})")
        found.append(WorkloadEntry(
            address=address, ip=iv.ip(address), ports=MappingProxyType(endpoint_ports),
            labels=ip.labels(entry, "labels", epath, problems), network=network,
            locality=rd.string(entry, "locality"), weight=rd.integer(entry, "weight"),
            service_account=rd.string(entry, "serviceAccount"),
        ))
    return tuple(found)


def _check_address(address: str, resolution: Resolution, path: str, problems: Problems, *, has_ports: bool,
                   service_ports: int) -> None:
    if address.startswith(iv.UNIX_PREFIX):
        socket_path = address.removeprefix(iv.UNIX_PREFIX)
        if resolution != "STATIC":
            rd.invalid(problems, path, address, "unix:// endpoints need resolution STATIC")
        elif not socket_path.startswith(("/", "@")) or socket_path.endswith("/"):
            rd.invalid(problems, path, address, "must be unix:// and an absolute path to a socket (or @abstract)")
        elif has_ports:
            rd.invalid(problems, path, address, "a unix:// endpoint must not have ports")
        elif service_ports != 1:
            rd.invalid(problems, path, address, "a unix:// endpoint needs exactly one service port")
        return
    if iv.ip(address) is not None:
        return
    if resolution == "STATIC":
        rd.invalid(problems, path, address, "must be an IP address (or unix:///path) with resolution STATIC")
    elif iv.fqdn(address):
        rd.invalid(problems, path, address, f"must be an IP address or a DNS name: {iv.fqdn(address)}")


def _check_resolution(spec: rd.Doc, resolution: Resolution, hosts: tuple[str, ...],
                      ports: tuple[ServiceEntryPort, ...], problems: Problems) -> None:
    endpoints = list(rd.mappings(spec, "endpoints", "spec"))
    if resolution == "NONE" and endpoints:
        problems.add("spec.endpoints", "must be empty with resolution NONE (traffic goes to the address asked for)")
    if resolution in ("DNS", "DNS_ROUND_ROBIN") and not endpoints:
        for index, host in enumerate(hosts):
            if host != "*" and not iv.wildcard_domain(host) and iv.fqdn(host):
                problems.add(item_path("spec.hosts", index),
                             f"must be a DNS name without wildcard: with resolution {resolution} and no endpoints, "
                             "the host itself is resolved")
    if resolution == "DNS_ROUND_ROBIN" and len(endpoints) > 1:
        problems.add("spec.endpoints", "may have at most one endpoint with resolution DNS_ROUND_ROBIN")
    if resolution != "NONE" and len(hosts) > 1:
        plain = [p for p in ports if p.protocol not in iv.HTTP_PROTOCOLS | iv.TLS_PROTOCOLS]
        if plain:
            problems.add("spec.hosts", f"several hosts need HTTP or TLS ports unless resolution is NONE (port "
                                       f"{plain[0].number} is {plain[0].protocol or 'unset'}: TCP cannot tell the "
                                       "hosts apart)")


# --- DestinationRule -----------------------------------------------------------------------


def parse_destination_rule(doc: object, source: str = "<destinationrule>") -> DestinationRule:
    """Check and build a DestinationRule. Raises :class:`~weir.api.errors.ManifestError` listing every problem."""
    problems, doc = open_manifest(doc, source, DESTINATION_RULE)
    metadata = parse_metadata(doc, problems, DESTINATION_RULE)
    spec = ip.spec(doc, problems, "spec.host")
    host = rd.string(spec, "host")
    if not host:
        if rd.absent(spec, "host") and isinstance(doc.get("spec"), dict):
            problems.missing("spec.host", "required (the service the rule applies to)")
    elif iv.wildcard_domain(host):
        rd.invalid(problems, "spec.host", host, iv.wildcard_domain(host) or "")
    policy = traffic_policy(spec, "trafficPolicy", "spec", problems)
    subsets = _subsets(spec, problems)
    workload_selector = ip.selector(spec, "workloadSelector", "spec", problems)
    export_to = ip.export_to(spec, metadata.namespace, problems)
    if workload_selector is not None and {metadata.namespace if e == "." else e for e in export_to} - {
            metadata.namespace}:
        problems.add("spec.exportTo", "a rule with a workloadSelector may be exported only to its own namespace")
    problems.raise_if_any()
    return DestinationRule(
        metadata=metadata,
        spec=DestinationRuleSpec(host=host, traffic_policy=policy, subsets=subsets, export_to=export_to,
                                 workload_selector=workload_selector),
        api_version=rd.string(doc, "apiVersion"),
        raw=copy.deepcopy(doc),
    )


def _unique_name(item: rd.Doc, path: str, seen: set[str], problems: Problems, what: str, why: str) -> str:
    """``item``'s required ``name``: a DNS label not in ``seen`` (added to it); ``""`` when missing."""
    name = rd.string(item, "name")
    if not name:
        if rd.absent(item, "name"):
            problems.missing(f"{path}.name", f"required ({why})")
    elif bad := iv.label(name):
        rd.invalid(problems, f"{path}.name", name, bad)
    elif name in seen:
        problems.add(f"{path}.name", f"duplicate {what} name {quoted(name)}")
    seen.add(name)
    return name


def _subsets(spec: rd.Doc, problems: Problems) -> tuple[Subset, ...]:
    found: list[Subset] = []
    seen: set[str] = set()
    for spath, subset in rd.mappings(spec, "subsets", "spec"):
        name = _unique_name(subset, spath, seen, problems, "subset", "routes refer to subsets by name")
        found.append(Subset(name=name, labels=ip.labels(subset, "labels", spath, problems),
                            traffic_policy=traffic_policy(subset, "trafficPolicy", spath, problems)))
    return tuple(found)


def traffic_policy(parent: rd.Doc, key: str, parent_path: str, problems: Problems) -> TrafficPolicy | None:
    if not rd.present(parent, key):
        return None
    doc = rd.mapping(parent, key)
    path = field_path(parent_path, key)
    _at_least_one(doc, _POLICY_FIELDS, path, problems)
    if rd.present(doc, "tunnel") and rd.present(doc, "proxyProtocol"):
        problems.add(path, "tunnel and proxyProtocol must not be set together")
    port_level: list[PortTrafficPolicy] = []
    for ppath, port_policy in rd.mappings(doc, "portLevelSettings", path):
        number = rd.integer(rd.mapping(port_policy, "port"), "number")
        if number is None and rd.absent(rd.mapping(port_policy, "port"), "number"):
            problems.missing(f"{ppath}.port.number", "required (the port the settings apply to)")
        _at_least_one(port_policy, _PORT_POLICY_FIELDS, ppath, problems)
        settings = _settings(port_policy, ppath, problems)
        if number is not None and 1 <= number <= 65535:
            port_level.append(PortTrafficPolicy(port=number, **settings))
    return TrafficPolicy(port_level_settings=tuple(port_level), **_settings(doc, path, problems))


def _settings(doc: rd.Doc, path: str, problems: Problems) -> dict[str, Any]:
    """The four settings a traffic policy and a port-level policy share, as keyword arguments."""
    _check_connection_pool(doc, path, problems)
    _check_outlier_detection(doc, path, problems)
    return {
        "load_balancer": _load_balancer(doc, path, problems),
        "tls": _tls(doc, path, problems),
        "connection_pool": rd.frozen_or_none(doc, "connectionPool"),
        "outlier_detection": rd.frozen_or_none(doc, "outlierDetection"),
    }


def _at_least_one(doc: rd.Doc, fields: tuple[str, ...], path: str, problems: Problems) -> None:
    if not doc:  # unknown fields alone were reported by the schema pass
        problems.add(path, f"must set at least one of {', '.join(fields)}")


def _load_balancer(doc: rd.Doc, path: str, problems: Problems) -> LoadBalancerSettings | None:
    if not rd.present(doc, "loadBalancer"):
        return None
    lb = rd.mapping(doc, "loadBalancer")
    lb_path = f"{path}.loadBalancer"
    if rd.present(lb, "simple") and rd.present(lb, "consistentHash"):
        problems.add(lb_path, "only one of simple or consistentHash may be set")
    consistent_hash = rd.mapping(lb, "consistentHash")
    if rd.present(consistent_hash, "httpCookie") and not rd.string(rd.mapping(consistent_hash, "httpCookie"), "name"):
        problems.missing(f"{lb_path}.consistentHash.httpCookie.name", "required (the cookie to hash)")
    simple = rd.string(lb, "simple")
    return LoadBalancerSettings(simple=_SIMPLE_LB.get(simple), consistent_hash=rd.frozen_or_none(lb, "consistentHash"),
                                locality_lb_setting=rd.frozen_or_none(lb, "localityLbSetting"))


def _tls(doc: rd.Doc, path: str, problems: Problems) -> ClientTLSSettings | None:
    if not rd.present(doc, "tls"):
        return None
    tls = rd.mapping(doc, "tls")
    tls_path = f"{path}.tls"
    mode = _TLS_MODES.get(rd.string(tls, "mode"), "DISABLE")
    credential_name = rd.string(tls, "credentialName")
    files = [k for k in ("clientCertificate", "privateKey", "caCertificates", "caCrl") if rd.string(tls, k)]
    if mode in ("SIMPLE", "MUTUAL") and credential_name and files:
        problems.add(tls_path, f"{files[0]} may not be set with credentialName (the credential holds it)")
    if mode == "MUTUAL" and not credential_name:
        for key in ("clientCertificate", "privateKey"):
            if not rd.string(tls, key):
                problems.missing(f"{tls_path}.{key}", "required for mode MUTUAL (or set credentialName)")
    if rd.boolean(tls, "insecureSkipVerify"):
        keys = ("caCertificates", "subjectAltNames", *(("credentialName",) if mode == "SIMPLE" else ()))
        conflicting = [k for k in keys if rd.present(tls, k)]
        if mode in ("SIMPLE", "MUTUAL") and conflicting:
            problems.add(tls_path, f"{conflicting[0]} may not be set when insecureSkipVerify is true")
    return ClientTLSSettings(
        mode=mode, client_certificate=rd.string(tls, "clientCertificate"), private_key=rd.string(tls, "privateKey"),
        ca_certificates=rd.string(tls, "caCertificates"), credential_name=credential_name,
        subject_alt_names=rd.strings(tls, "subjectAltNames"), sni=rd.string(tls, "sni"),
        insecure_skip_verify=rd.boolean(tls, "insecureSkipVerify"),
    )


def _check_connection_pool(doc: rd.Doc, path: str, problems: Problems) -> None:
    if not rd.present(doc, "connectionPool"):
        return
    pool = rd.mapping(doc, "connectionPool")
    if not pool:
        problems.add(f"{path}.connectionPool", "must set at least one of tcp, http")
    http = rd.mapping(pool, "http")
    if rd.string(http, "h2UpgradePolicy") == "UPGRADE" and rd.boolean(http, "useClientProtocol"):
        problems.add(f"{path}.connectionPool.http",
                     "useClientProtocol must not be true when h2UpgradePolicy is UPGRADE")


def _check_outlier_detection(doc: rd.Doc, path: str, problems: Problems) -> None:
    outlier = rd.mapping(doc, "outlierDetection")
    failures = rd.integer(outlier, "consecutiveLocalOriginFailures")
    if failures and failures > 0 and not rd.boolean(outlier, "splitExternalLocalOriginErrors"):
        problems.add(f"{path}.outlierDetection.consecutiveLocalOriginFailures",
                     "needs splitExternalLocalOriginErrors: true")

