"""VirtualService HTTP routes -> Envoy ``RouteConfiguration`` dicts (Istio's route translation).

:func:`route_configuration` builds the route table a sidecar uses for one service port: the
VirtualServices bound to the mesh whose hosts name the service, their ``http`` routes in
order (matches on URI, method, authority, headers, query parameters and port), weighted
clusters for splits (subset clusters ``outbound|port|subset|host``), timeouts, retries and
mirrors with their percentages; without a VirtualService, one default route to the service's
cluster. Clusters are named by :func:`cluster_name`. Pure; knows nothing of listeners.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from weir.api.istio_values import host_matches
from weir.api.networking_model import Destination, HTTPMatchRequest, HTTPRetry, HTTPRoute, StringMatch, VirtualService
from weir.control import envoy_shapes as es
from weir.control.registry import MeshService, Registry

JSON = es.JSON
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
"""Istio's retry policy when a route sets none (2 attempts)."""
DEFAULT_ATTEMPTS = 2
_MILLION = 1_000_000

PortOf = Callable[[Destination], int]


def cluster_name(direction: str, port: int, subset: str, host: str) -> str:
    """Istio's cluster names: ``outbound|80|v1|reviews.default.svc.cluster.local``, ``inbound|8080||``."""
    return f"{direction}|{port}|{subset}|{host}"


def bound_virtual_services(registry: Registry, vss: tuple[VirtualService, ...], service: MeshService,
                           ) -> list[VirtualService]:
    """The mesh VirtualServices whose hosts name ``service`` (short names resolve in the VS's namespace)."""
    return [vs for vs in vss if vs.spec.applies_to_mesh
            and any(host_matches(registry.resolve(h, vs.metadata.namespace), service.hostname)
                    for h in vs.spec.hosts)]


def route_configuration(name: str, registry: Registry, service: MeshService, port: int,
                        vss: list[VirtualService]) -> JSON:
    """The route table for ``service:port``; one virtual host (the listener is the service's own VIP:port)."""
    routes: list[JSON] = []
    for vs in vss:
        for http in vs.spec.http:
            matches = [m for m in http.match if m.port in (None, port)] if http.match else [None]
            if http.match and not matches:
                continue
            port_of = _port_resolver(registry, vs.metadata.namespace, port)
            routes.extend(_route(registry, vs.metadata.namespace, http, m, port_of) for m in matches)
        if routes:
            break  # Istio merges VirtualServices per host; the first (oldest, here by name) wins
    if not routes:
        cluster = cluster_name("outbound", port, "", service.hostname)
        routes.append({"name": "default", "match": {"prefix": "/"},
                       "route": {"cluster": cluster, "timeout": "0s", "retry_policy": _retry(None)}})
    return {"name": name,
            "virtual_hosts": [{"name": f"{service.hostname}:{port}", "domains": ["*"], "routes": routes}]}


def _port_resolver(registry: Registry, namespace: str, listener_port: int) -> PortOf:
    def port_of(dest: Destination) -> int:
        if dest.port is not None:
            return dest.port
        target = registry.service(registry.resolve(dest.host, namespace))
        if target is None or not target.ports:
            return listener_port
        if len(target.ports) == 1:
            return target.ports[0].port
        return listener_port if target.port(listener_port) else target.ports[0].port
    return port_of


def _route(registry: Registry, namespace: str, http: HTTPRoute, match: HTTPMatchRequest | None,
           port_of: PortOf) -> JSON:
    def cluster(dest: Destination) -> str:
        return cluster_name("outbound", port_of(dest), dest.subset, registry.resolve(dest.host, namespace))

    action: JSON = {}
    if len(http.route) == 1:
        action["cluster"] = cluster(http.route[0].destination)
    else:
        action["weighted_clusters"] = {"clusters": [{"name": cluster(d.destination), "weight": d.weight}
                                                    for d in http.route if d.weight > 0]}
    action["timeout"] = es.duration(http.timeout or datetime.timedelta(0))
    retry = _retry(http.retries)
    if retry is not None:
        action["retry_policy"] = retry
    mirrors = _mirrors(http, cluster)
    if mirrors:
        action["request_mirror_policies"] = mirrors
    if http.rewrite is not None:
        if http.rewrite.uri:
            action["prefix_rewrite"] = http.rewrite.uri
        if http.rewrite.authority:
            action["host_rewrite_literal"] = http.rewrite.authority
    route: JSON = {"match": _match(match), "route": action}
    name = "/".join(n for n in (http.name, match.name if match else "") if n)
    return {"name": name, **route} if name else route


def _retry(retries: HTTPRetry | None) -> JSON | None:
    attempts = DEFAULT_ATTEMPTS if retries is None else retries.attempts
    if attempts == 0:
        return None
    policies = list(retries.retry_on) if retries is not None and retries.retry_on else DEFAULT_RETRY_ON.split(",")
    codes = [int(p) for p in policies if p.isdigit()]
    named = [p for p in policies if not p.isdigit()]
    if codes and "retriable-status-codes" not in named:
        named.append("retriable-status-codes")
    policy: JSON = {"retry_on": ",".join(named), "num_retries": attempts,
                    "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                                              "typed_config": {"@type": es.PREVIOUS_HOSTS}}],
                    "host_selection_retry_max_attempts": 5}
    if retries is not None and retries.per_try_timeout is not None:
        policy["per_try_timeout"] = es.duration(retries.per_try_timeout)
    policy["retriable_status_codes"] = codes or [503]
    return policy


def _fraction(percentage: float | None) -> JSON:
    value = 100.0 if percentage is None else percentage
    return {"default_value": {"numerator": round(value * _MILLION / 100), "denominator": "MILLION"}}


def _mirrors(http: HTTPRoute, cluster: Callable[[Destination], str]) -> list[JSON]:
    pairs = [(http.mirror, http.mirror_percentage)] if http.mirror is not None else []
    pairs += [(m.destination, m.percentage) for m in http.mirrors]
    return [{"cluster": cluster(dest), "runtime_fraction": _fraction(pct), "trace_sampled": False}
            for dest, pct in pairs]


def _string_match(match: StringMatch) -> JSON:
    if match.type == "regex":
        return {"safe_regex": {"regex": match.value}}
    return {match.type: match.value}


def _header(name: str, match: StringMatch, *, invert: bool = False) -> JSON:
    header: JSON = {"name": name}
    if match.type == "present":
        header["present_match"] = True
    else:
        header["string_match"] = _string_match(match)
    if invert:
        header["invert_match"] = True
    return header


def _match(match: HTTPMatchRequest | None) -> JSON:
    if match is None:
        return {"prefix": "/"}
    result: JSON
    uri = match.uri
    if uri is None or uri.type == "present":
        result = {"prefix": "/"}
    elif uri.type == "exact":
        result = {"path": uri.value}
    elif uri.type == "prefix":
        result = {"prefix": uri.value}
    else:
        result = {"safe_regex": {"regex": uri.value}}
    if match.ignore_uri_case:
        result["case_sensitive"] = False
    headers = [_header(k, v) for k, v in sorted(match.headers.items())]
    headers += [_header(k, v, invert=True) for k, v in sorted(match.without_headers.items())]
    for pseudo, value in ((":method", match.method), (":authority", match.authority), (":scheme", match.scheme)):
        if value is not None:
            headers.append(_header(pseudo, value))
    if headers:
        result["headers"] = headers
    if match.query_params:
        result["query_parameters"] = [
            {"name": k, **({"present_match": True} if v.type == "present" else {"string_match": _string_match(v)})}
            for k, v in sorted(match.query_params.items())]
    return result
