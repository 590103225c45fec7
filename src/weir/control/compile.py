"""Pure xDS compilation (istiod's config generation): snapshot + registry + one proxy -> Envoy resources.

:func:`compile_proxy` returns the listeners, clusters and route configurations one sidecar
needs, as JSON-able dicts in Envoy's v3 shape (``@type`` URLs on every ``typed_config``), and
the names of the secrets they reference. It follows Istio's sidecar layout:

- ``virtualOutbound`` on ``0.0.0.0:15001`` (``use_original_dst``) hands each connection to the
  listener of its original destination, else to ``PassthroughCluster`` (ORIGINAL_DST);
- one outbound listener per service VIP and port (``10.96.0.12_80``, not bound): an HTTP
  connection manager (HTTP, HTTP2, gRPC ports) with routes from RDS, or a TCP proxy;
- clusters ``outbound|port|subset|host`` per service port and DestinationRule subset, with
  mutual TLS (SDS secrets ``default`` and ``ROOTCA``, ALPN ``istio``, SNI
  ``outbound_.port_.subset_.host``) for sidecar endpoints: ``ISTIO_MUTUAL`` by DestinationRule,
  or Istio's auto mTLS by the endpoints' ``security.istio.io/tlsMode`` label;
- ``virtualInbound`` on ``0.0.0.0:15006``: a filter chain per port the proxy serves, terminating
  mutual TLS as PeerAuthentication says (STRICT: TLS only; PERMISSIVE: a TLS chain chosen by
  the tls_inspector, and a plaintext one), forwarding to ``127.0.0.1:port`` (``inbound|port||``)
  from ``127.0.0.6``; other ports pass through to their original destination.

:class:`Options` chooses how dynamic pieces are referenced: over ADS and SDS (the default, what
the ADS server sends), or inline routes and static secrets (a self-contained bootstrap, as
the tests give to ``envoy --mode validate``). This module does no I/O and knows nothing of gRPC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from weir.api.istio_values import HTTP_PROTOCOLS, host_matches
from weir.api.networking_model import ClientTLSSettings, DestinationRule, LoadBalancerSettings, Subset, TrafficPolicy
from weir.api.security import MTLSMode, PeerAuthentication
from weir.control import envoy_shapes as es
from weir.control.registry import Endpoint, MeshService, Port, Registry, Snapshot, selects
from weir.control.routes import bound_virtual_services, cluster_name, route_configuration

JSON = es.JSON
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
INBOUND_SOURCE = "127.0.0.6"
"""Istio's source address for inbound forwarding (the capture rules let it through)."""
PASSTHROUGH = "PassthroughCluster"
INBOUND_PASSTHROUGH = "InboundPassthroughCluster"
BLACKHOLE = "BlackHoleCluster"
MTLS_ALPN = ["istio-peer-exchange", "istio"]
ISTIO_ALPN = ["istio-peer-exchange", "istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"]
"""What a mesh client offers: the PERMISSIVE TLS chain matches these."""
HTTP_ALPN = ["h2", "http/1.1"]
_H2 = frozenset({"HTTP2", "GRPC", "GRPC-Web"})
_LB: Mapping[str, str] = MappingProxyType({"ROUND_ROBIN": "ROUND_ROBIN", "LEAST_CONN": "LEAST_REQUEST",
                                           "LEAST_REQUEST": "LEAST_REQUEST", "RANDOM": "RANDOM"})


@dataclass(frozen=True, kw_only=True)
class ProxyInfo:
    """The sidecar being compiled for, as it identifies itself (Envoy's node metadata)."""

    namespace: str
    name: str
    ip: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    service_account: str = "default"


@dataclass(frozen=True, kw_only=True)
class Options:
    rds: bool = True
    """Routes over RDS (ADS); ``False``: inline in each HTTP connection manager."""
    sds: bool = True
    """Secrets from the agent's SDS server (``sds-grpc``); ``False``: static secrets, by name."""
    root_namespace: str = "istio-system"
    """Mesh-wide PeerAuthentication lives here."""
    trust_domain: str = "cluster.local"


@dataclass(frozen=True, kw_only=True)
class EnvoyResources:
    listeners: tuple[JSON, ...]
    clusters: tuple[JSON, ...]
    routes: tuple[JSON, ...]
    """RouteConfigurations (for RDS; with ``Options(rds=False)`` the listeners carry them inline)."""
    secrets: tuple[str, ...]
    """Names of the SDS secrets referenced (``ROOTCA``, ``default``)."""
    name_table: JSON | None = None
    """The DNS name table (NDS, :func:`weir.control.nds.name_table`) for the proxy's agent; ``None``:
    none is served (:func:`compile_proxy` leaves it to the caller, so Envoy's config does not depend on it)."""

    def to_json(self) -> dict[str, Any]:
        return {"listeners": list(self.listeners), "clusters": list(self.clusters), "routes": list(self.routes),
                "secrets": list(self.secrets)}


@dataclass(frozen=True)
class _Outbound:
    listeners: tuple[JSON, ...]
    clusters: tuple[JSON, ...]
    routes: tuple[JSON, ...]
    uses_tls: bool


OutboundCache = dict[str, _Outbound]
"""The outbound half of a proxy's config, by namespace: it depends on nothing else of the proxy
(DestinationRules are chosen by the proxy's namespace first). One cache per config version
lets every proxy of a namespace share it; the dicts are shared, so do not change them."""


def compile_proxy(snapshot: Snapshot, registry: Registry, proxy: ProxyInfo,
                  options: Options = Options(), outbound_cache: OutboundCache | None = None) -> EnvoyResources:
    """Everything ``proxy`` needs. Deterministic: the same inputs give byte-identical JSON.
    ``outbound_cache`` (for one snapshot and ``options``) reuses the outbound half per namespace."""
    c = _Compiler(snapshot, registry, proxy, options)
    outbound = outbound_cache.get(proxy.namespace) if outbound_cache is not None else None
    if outbound is None:
        outbound = _Outbound(listeners=(c.virtual_outbound(), *c.outbound_listeners()),
                             clusters=tuple(c.outbound_clusters()), routes=tuple(c.routes), uses_tls=c.uses_tls)
        if outbound_cache is not None:
            outbound_cache[proxy.namespace] = outbound
    c.uses_tls = outbound.uses_tls
    listeners = [*outbound.listeners, c.virtual_inbound()]
    clusters = [*outbound.clusters, *c.inbound_clusters(), *c.fixed_clusters()]
    return EnvoyResources(listeners=tuple(listeners), clusters=tuple(sorted(clusters, key=lambda x: x["name"])),
                          routes=outbound.routes, secrets=(es.SECRET_ROOT, es.SECRET_CERT) if c.uses_tls else ())


@dataclass(frozen=True)
class _InboundPort:
    port: int
    protocol: str


class _Compiler:
    def __init__(self, snapshot: Snapshot, registry: Registry, proxy: ProxyInfo, options: Options) -> None:
        self.snapshot, self.registry, self.proxy, self.options = snapshot, registry, proxy, options
        self.routes: list[JSON] = []
        self.uses_tls = False

    # --- outbound ------------------------------------------------------------------------

    def virtual_outbound(self) -> JSON:
        return {"name": "virtualOutbound", "address": es.socket_address("0.0.0.0", OUTBOUND_PORT),
                "use_original_dst": True, "traffic_direction": "OUTBOUND",
                "filter_chains": [{"name": "virtualOutbound-catchall-tcp", "filters": [es.tcp_proxy(PASSTHROUGH)]}]}

    def outbound_listeners(self) -> list[JSON]:
        listeners = []
        for svc in self.registry.services:
            if svc.vip is None:
                continue
            for port in svc.ports:
                listeners.append(self._outbound_listener(svc, port))
        return sorted(listeners, key=lambda x: x["name"])

    def _outbound_listener(self, svc: MeshService, port: Port) -> JSON:
        name = f"{svc.vip}_{port.port}"
        if port.protocol in HTTP_PROTOCOLS:
            route_name = f"{svc.hostname}:{port.port}"
            vss = bound_virtual_services(self.registry, self.snapshot.virtual_services, svc)
            routes = route_configuration(route_name, self.registry, svc, port.port, vss)
            if self.options.rds:
                routes["validate_clusters"] = False
                self.routes.append(routes)
                hcm = es.http_connection_manager(f"outbound_{name}", rds_name=route_name)
            else:
                hcm = es.http_connection_manager(f"outbound_{name}", route_config=routes)
            filters = [hcm]
        else:
            filters = [es.tcp_proxy(cluster_name("outbound", port.port, "", svc.hostname))]
        return {"name": name, "address": es.socket_address(str(svc.vip), port.port), "bind_to_port": False,
                "traffic_direction": "OUTBOUND", "filter_chains": [{"filters": filters}]}

    def outbound_clusters(self) -> list[JSON]:
        clusters = []
        for svc in self.registry.services:
            rule = self._destination_rule(svc)
            for port in svc.ports:
                clusters.append(self._cluster(svc, port, rule, None))
                for subset in rule.spec.subsets if rule else ():
                    clusters.append(self._cluster(svc, port, rule, subset))
        return clusters

    def _destination_rule(self, svc: MeshService) -> DestinationRule | None:
        candidates = [dr for dr in self.snapshot.destination_rules
                      if host_matches(self.registry.resolve(dr.spec.host, dr.metadata.namespace), svc.hostname)]
        order = (self.proxy.namespace, svc.namespace, self.options.root_namespace)
        candidates.sort(key=lambda dr: (order.index(dr.metadata.namespace) if dr.metadata.namespace in order else 3,
                                        dr.spec.host.startswith("*"), dr.metadata.namespace, dr.metadata.name))
        return candidates[0] if candidates else None

    def _cluster(self, svc: MeshService, port: Port, rule: DestinationRule | None, subset: Subset | None) -> JSON:
        name = cluster_name("outbound", port.port, subset.name if subset else "", svc.hostname)
        endpoints = [e for e in svc.endpoints.get(port.port, ()) if subset is None or selects(subset.labels, e.labels)]
        policies = [rule.spec.traffic_policy if rule else None, subset.traffic_policy if subset else None]
        tls, lb = _policy(policies, port.port)
        cluster: JSON = {"name": name, "connect_timeout": "10s"}
        if svc.resolution == "NONE":
            cluster.update(type="ORIGINAL_DST", lb_policy="CLUSTER_PROVIDED")
        else:
            cluster["type"] = "STRICT_DNS" if svc.resolution in ("DNS", "ALIAS") else "STATIC"
            cluster["lb_policy"] = _LB.get(lb.simple or "", "LEAST_REQUEST") if lb else "LEAST_REQUEST"
            if svc.resolution == "ALIAS":
                endpoints = [Endpoint(address=svc.alias, port=port.port)]
            if cluster["type"] == "STRICT_DNS":
                cluster["dns_lookup_family"] = "V4_ONLY"
            cluster["load_assignment"] = {"cluster_name": name,
                                          "endpoints": [{"lb_endpoints": [_lb_endpoint(e) for e in endpoints]}]
                                          if endpoints else []}
        if port.protocol in _H2:
            cluster["typed_extension_protocol_options"] = es.http2_options()
        sni = f"outbound_.{port.port}_.{subset.name if subset else ''}_.{svc.hostname}"
        sans = sorted({self._spiffe(e) for e in endpoints if e.service_account})
        mode = tls.mode if tls else None
        if mode == "ISTIO_MUTUAL":
            cluster["transport_socket"] = es.upstream_tls(sni, MTLS_ALPN, sds=self.options.sds, sans=sans)
            self.uses_tls = True
        elif mode in ("SIMPLE", "MUTUAL") and tls is not None:
            cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": es.UPSTREAM_TLS, "sni": tls.sni or svc.hostname}}
        elif mode is None and svc.mesh_internal and svc.resolution in ("STATIC", "NONE"):
            cluster["transport_socket_matches"] = [
                {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
                 "transport_socket": es.upstream_tls(sni, MTLS_ALPN, sds=self.options.sds, sans=sans)},
                {"name": "tlsMode-disabled", "match": {}, "transport_socket": es.raw_buffer()}]
            self.uses_tls = True
        return cluster

    def _spiffe(self, endpoint: Endpoint) -> str:
        return f"spiffe://{self.options.trust_domain}/ns/{endpoint.namespace}/sa/{endpoint.service_account}"

    # --- inbound -------------------------------------------------------------------------

    def inbound_ports(self) -> list[_InboundPort]:
        """The ports of the services whose endpoints are this proxy, by target port (first protocol wins)."""
        found: dict[int, str] = {}
        for svc in self.registry.services:
            for port in svc.ports:
                for endpoint in svc.endpoints.get(port.port, ()):
                    if endpoint.address == self.proxy.ip and endpoint.namespace == self.proxy.namespace:
                        found.setdefault(endpoint.port, port.protocol)
        return [_InboundPort(p, found[p]) for p in sorted(found)]

    def mtls_mode(self, port: int | None) -> MTLSMode:
        """PeerAuthentication: workload (port-level first), then namespace, then mesh; PERMISSIVE at the top."""
        ns, root = self.proxy.namespace, self.options.root_namespace
        scopes: list[list[PeerAuthentication]] = [
            [pa for pa in self.snapshot.peer_authentications if pa.metadata.namespace == ns
             and pa.spec.selector and selects(pa.spec.selector, self.proxy.labels)],
            [pa for pa in self.snapshot.peer_authentications if pa.metadata.namespace == ns and not pa.spec.selector],
            [pa for pa in self.snapshot.peer_authentications if pa.metadata.namespace == root
             and not pa.spec.selector],
        ]
        for policies in scopes:
            for pa in policies:
                mode = pa.spec.port_level_mtls.get(port, "UNSET") if port is not None else "UNSET"
                if mode == "UNSET":
                    mode = pa.spec.mtls_mode
                if mode != "UNSET":
                    return mode
        return "PERMISSIVE"

    def virtual_inbound(self) -> JSON:
        chains: list[JSON] = []
        for inbound in self.inbound_ports():
            chains.extend(self._inbound_chains(inbound))
        chains.extend(self._passthrough_chains())
        listener: JSON = {"name": "virtualInbound", "address": es.socket_address("0.0.0.0", INBOUND_PORT),
                          "traffic_direction": "INBOUND",
                          "listener_filters": [es.listener_filter("original_dst", "OriginalDst"),
                                               es.listener_filter("tls_inspector", "TlsInspector")],
                          "filter_chains": [c for c in chains if "filter_chain_match" in c]}
        default = [c for c in chains if "filter_chain_match" not in c]
        if default:
            listener["default_filter_chain"] = default[0]
        return listener

    def _inbound_chains(self, inbound: _InboundPort) -> list[JSON]:
        cluster = cluster_name("inbound", inbound.port, "", "")
        http = inbound.protocol in HTTP_PROTOCOLS
        if http:
            route = {"name": cluster, "virtual_hosts": [
                {"name": f"inbound|http|{inbound.port}", "domains": ["*"],
                 "routes": [{"name": "default", "match": {"prefix": "/"},
                             "route": {"cluster": cluster, "timeout": "0s"}}]}]}
            filters = [es.http_connection_manager(f"inbound_0.0.0.0_{inbound.port}", route_config=route,
                                                  forward_client_cert=True)]
        else:
            filters = [es.tcp_proxy(cluster)]
        alpn = HTTP_ALPN if http else MTLS_ALPN
        return self._chains_for_mode(self.mtls_mode(inbound.port), filters, alpn, port=inbound.port, name=cluster)

    def _passthrough_chains(self) -> list[JSON]:
        filters = [es.tcp_proxy(INBOUND_PASSTHROUGH)]
        return self._chains_for_mode(self.mtls_mode(None), filters, MTLS_ALPN, port=None, name=INBOUND_PASSTHROUGH)

    def _chains_for_mode(self, mode: MTLSMode, filters: list[JSON], alpn: list[str], *, port: int | None,
                         name: str) -> list[JSON]:
        """STRICT: TLS only; PERMISSIVE: mesh TLS (by ALPN) or plaintext; DISABLE: plaintext.

        Without a port (the passthrough), a chain with no match becomes the default chain.
        """
        by_port: JSON = {"destination_port": port} if port is not None else {}
        tls_match = {**by_port, "transport_protocol": "tls", "application_protocols": ISTIO_ALPN}
        tls_chain = {"name": f"{name}-mtls", "transport_socket": es.downstream_tls(alpn, sds=self.options.sds),
                     "filters": filters}
        plain_chain: JSON = {"name": f"{name}-plaintext", "filters": filters}
        self.uses_tls = self.uses_tls or mode != "DISABLE"
        if by_port:
            plain_chain = {"filter_chain_match": by_port, **plain_chain}
        if mode == "STRICT":
            if by_port:
                return [{"filter_chain_match": by_port, **tls_chain}]
            return [tls_chain]
        if mode == "DISABLE":
            return [plain_chain]
        return [{"filter_chain_match": tls_match, **tls_chain}, plain_chain]

    def inbound_clusters(self) -> list[JSON]:
        clusters = []
        for inbound in self.inbound_ports():
            name = cluster_name("inbound", inbound.port, "", "")
            cluster: JSON = {"name": name, "type": "STATIC", "connect_timeout": "10s", "lb_policy": "ROUND_ROBIN",
                             "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                                 {"endpoint": {"address": es.socket_address("127.0.0.1", inbound.port)}}]}]},
                             "upstream_bind_config": {"source_address": {"address": INBOUND_SOURCE,
                                                                         "port_value": 0}}}
            if inbound.protocol in _H2:
                cluster["typed_extension_protocol_options"] = es.http2_options()
            clusters.append(cluster)
        return clusters

    def fixed_clusters(self) -> list[JSON]:
        return [es.original_dst_cluster(PASSTHROUGH), es.original_dst_cluster(INBOUND_PASSTHROUGH, bind=INBOUND_SOURCE),
                {"name": BLACKHOLE, "type": "STATIC", "connect_timeout": "10s"}]


def _policy(policies: list[TrafficPolicy | None], port: int) -> tuple[ClientTLSSettings | None,
                                                                     LoadBalancerSettings | None]:
    """TLS and load balancing from the rule's policy, overridden by its port level, then the subset's."""
    tls: ClientTLSSettings | None = None
    lb: LoadBalancerSettings | None = None
    for policy in policies:
        if policy is None:
            continue
        tls, lb = policy.tls or tls, policy.load_balancer or lb
        for level in policy.port_level_settings:
            if level.port == port:
                tls, lb = level.tls or tls, level.load_balancer or lb
    return tls, lb


def _lb_endpoint(endpoint: Endpoint) -> JSON:
    return {"endpoint": {"address": es.socket_address(endpoint.address, endpoint.port)},
            "metadata": {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": endpoint.tls_mode}}}}
