"""Istio ``networking.istio.io`` ServiceEntry, DestinationRule and VirtualService: frozen dataclasses.

Built by :mod:`weir.api.networking` from manifests of any served version (``v1``, ``v1beta1``,
``v1alpha3``: one schema). Field names follow Istio's protos in snake_case. What xDS
compilation acts on is typed (hosts, ports, weights, matches, durations as ``timedelta``);
subtrees weir accepts without modelling (connection pools, outlier detection, fault injection,
redirects, CORS, header operations) are kept as read-only mappings, already checked.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from weir.api.istio_values import IPAddress, IPNetwork, Protocol
from weir.api.meta import ObjectMeta

Location = Literal["MESH_EXTERNAL", "MESH_INTERNAL"]
Resolution = Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"]
TLSMode = Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]
SimpleLB = Literal["UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"]
MatchType = Literal["exact", "prefix", "regex", "present"]

Raw = Mapping[str, Any]


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


# --- ServiceEntry --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServiceEntryPort:
    number: int
    name: str
    protocol: Protocol | None = None
    """In Istio's spelling (``HTTP``, ``GRPC-Web``, ``Mongo``); ``None``: unset (protocol sniffing)."""
    target_port: int | None = None


@dataclass(frozen=True, kw_only=True)
class WorkloadEntry:
    """One ``endpoints`` entry of a ServiceEntry."""

    address: str
    """An IP address, a DNS name (DNS resolution) or ``unix:///path`` (STATIC)."""
    ip: IPAddress | None = None
    """``address`` when it is an IP address."""
    ports: Mapping[str, int] = field(default_factory=_empty)
    """Service port name -> the port this endpoint listens on instead."""
    labels: Mapping[str, str] = field(default_factory=_empty)
    network: str = ""
    locality: str = ""
    weight: int | None = None
    service_account: str = ""


@dataclass(frozen=True, kw_only=True)
class ServiceEntrySpec:
    hosts: tuple[str, ...]
    addresses: tuple[IPNetwork, ...] = ()
    """Virtual IPs or CIDR blocks; a single address is a /32 (/128) network."""
    ports: tuple[ServiceEntryPort, ...] = ()
    location: Location = "MESH_EXTERNAL"
    resolution: Resolution = "NONE"
    endpoints: tuple[WorkloadEntry, ...] = ()
    workload_selector: Mapping[str, str] | None = None
    export_to: tuple[str, ...] = ()
    subject_alt_names: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ServiceEntry:
    metadata: ObjectMeta
    spec: ServiceEntrySpec
    api_version: str = "networking.istio.io/v1"
    kind: str = "ServiceEntry"
    raw: Raw = field(default_factory=dict, compare=False, repr=False)


# --- DestinationRule -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ClientTLSSettings:
    mode: TLSMode = "DISABLE"
    client_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    credential_name: str = ""
    subject_alt_names: tuple[str, ...] = ()
    sni: str = ""
    insecure_skip_verify: bool | None = None


@dataclass(frozen=True, kw_only=True)
class LoadBalancerSettings:
    simple: SimpleLB | None = None
    """``None`` when another policy (``consistentHash``) is set, or nothing is."""
    consistent_hash: Raw | None = None
    locality_lb_setting: Raw | None = None


@dataclass(frozen=True, kw_only=True)
class PortTrafficPolicy:
    port: int
    load_balancer: LoadBalancerSettings | None = None
    tls: ClientTLSSettings | None = None
    connection_pool: Raw | None = None
    outlier_detection: Raw | None = None


@dataclass(frozen=True, kw_only=True)
class TrafficPolicy:
    load_balancer: LoadBalancerSettings | None = None
    tls: ClientTLSSettings | None = None
    connection_pool: Raw | None = None
    """Accepted as given (checked): ``tcp`` and ``http`` settings."""
    outlier_detection: Raw | None = None
    """Accepted as given (checked)."""
    port_level_settings: tuple[PortTrafficPolicy, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Subset:
    name: str
    labels: Mapping[str, str] = field(default_factory=_empty)
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True, kw_only=True)
class DestinationRuleSpec:
    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    export_to: tuple[str, ...] = ()
    workload_selector: Mapping[str, str] | None = None

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.subsets if s.name == name), None)


@dataclass(frozen=True, kw_only=True)
class DestinationRule:
    metadata: ObjectMeta
    spec: DestinationRuleSpec
    api_version: str = "networking.istio.io/v1"
    kind: str = "DestinationRule"
    raw: Raw = field(default_factory=dict, compare=False, repr=False)


# --- VirtualService ------------------------------------------------------------------------


@dataclass(frozen=True)
class StringMatch:
    """``exact``, ``prefix`` or ``regex`` (RE2), or ``present`` (a header given as ``{}``)."""

    type: MatchType
    value: str = ""


@dataclass(frozen=True, kw_only=True)
class Destination:
    host: str
    subset: str = ""
    port: int | None = None


@dataclass(frozen=True, kw_only=True)
class HTTPMatchRequest:
    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: Mapping[str, StringMatch] = field(default_factory=_empty)
    without_headers: Mapping[str, StringMatch] = field(default_factory=_empty)
    query_params: Mapping[str, StringMatch] = field(default_factory=_empty)
    port: int | None = None
    source_labels: Mapping[str, str] = field(default_factory=_empty)
    gateways: tuple[str, ...] = ()
    source_namespace: str = ""
    ignore_uri_case: bool = False


@dataclass(frozen=True, kw_only=True)
class HTTPRouteDestination:
    destination: Destination
    weight: int
    """Percent of the route's traffic; a lone destination gets 100."""
    headers: Raw | None = None


@dataclass(frozen=True, kw_only=True)
class HTTPRetry:
    attempts: int
    per_try_timeout: datetime.timedelta | None = None
    retry_on: tuple[str, ...] = ()
    retry_remote_localities: bool | None = None


@dataclass(frozen=True, kw_only=True)
class HTTPRewrite:
    uri: str = ""
    authority: str = ""
    uri_regex_match: str = ""
    uri_regex_rewrite: str = ""
    """``uriRegexRewrite``: replace what ``uri_regex_match`` matches with this."""


@dataclass(frozen=True, kw_only=True)
class HTTPMirrorPolicy:
    destination: Destination
    percentage: float | None = None
    """``None``: Istio's default (all requests)."""


@dataclass(frozen=True, kw_only=True)
class HTTPRoute:
    name: str = ""
    match: tuple[HTTPMatchRequest, ...] = ()
    route: tuple[HTTPRouteDestination, ...] = ()
    timeout: datetime.timedelta | None = None
    retries: HTTPRetry | None = None
    rewrite: HTTPRewrite | None = None
    mirror: Destination | None = None
    mirror_percentage: float | None = None
    mirrors: tuple[HTTPMirrorPolicy, ...] = ()
    fault: Raw | None = None
    """Accepted as given (checked): ``delay`` and ``abort``."""
    redirect: Raw | None = None
    direct_response: Raw | None = None
    delegate: Raw | None = None
    headers: Raw | None = None
    cors_policy: Raw | None = None


@dataclass(frozen=True, kw_only=True)
class L4MatchAttributes:
    destination_subnets: tuple[IPNetwork, ...] = ()
    port: int | None = None
    source_labels: Mapping[str, str] = field(default_factory=_empty)
    gateways: tuple[str, ...] = ()
    source_namespace: str = ""
    sni_hosts: tuple[str, ...] = ()
    """TLS routes only (required there)."""


@dataclass(frozen=True, kw_only=True)
class RouteDestination:
    destination: Destination
    weight: int


@dataclass(frozen=True, kw_only=True)
class TCPRoute:
    match: tuple[L4MatchAttributes, ...] = ()
    route: tuple[RouteDestination, ...] = ()


@dataclass(frozen=True, kw_only=True)
class TLSRoute:
    match: tuple[L4MatchAttributes, ...] = ()
    route: tuple[RouteDestination, ...] = ()


@dataclass(frozen=True, kw_only=True)
class VirtualServiceSpec:
    hosts: tuple[str, ...] = ()
    """Empty only for a delegate VirtualService."""
    gateways: tuple[str, ...] = ()
    http: tuple[HTTPRoute, ...] = ()
    tcp: tuple[TCPRoute, ...] = ()
    tls: tuple[TLSRoute, ...] = ()
    export_to: tuple[str, ...] = ()

    @property
    def applies_to_mesh(self) -> bool:
        """Sidecars use it: no gateways given, or ``mesh`` among them."""
        return not self.gateways or "mesh" in self.gateways


@dataclass(frozen=True, kw_only=True)
class VirtualService:
    metadata: ObjectMeta
    spec: VirtualServiceSpec
    api_version: str = "networking.istio.io/v1"
    kind: str = "VirtualService"
    raw: Raw = field(default_factory=dict, compare=False, repr=False)
