"""``parse_virtual_service``: an Istio VirtualService manifest -> dataclasses, or every problem.

Istio's rules (``pkg/config/validation/virtualservice.go`` and ``validation.go``): hosts are
DNS names, wildcards or IP addresses, ``*`` only on gateways, no two overlapping; every HTTP
route has a route, a redirect, a direct response or a delegate, never two of them; weights of
several destinations add up to 100; durations are at least 1ms; regexes are RE2.
"""

from __future__ import annotations

import copy
from itertools import combinations
from types import MappingProxyType

from weir.api import istio_parse as ip
from weir.api import istio_schema as isc
from weir.api import istio_values as iv
from weir.api import read as rd
from weir.api.errors import Problems, field_path, item_path, quoted
from weir.api.meta import Header, open_manifest, parse_metadata
from weir.api.networking_model import (
    Destination,
    HTTPMatchRequest,
    HTTPMirrorPolicy,
    HTTPRetry,
    HTTPRewrite,
    HTTPRoute,
    HTTPRouteDestination,
    L4MatchAttributes,
    MatchType,
    RouteDestination,
    StringMatch,
    TCPRoute,
    TLSRoute,
    VirtualService,
    VirtualServiceSpec,
)

VIRTUAL_SERVICE = Header("VirtualService", isc.NETWORKING_VERSIONS, isc.VIRTUAL_SERVICE)

_MATCH_TYPES: tuple[MatchType, ...] = ("exact", "prefix", "regex")
_CONFLICTS = {  # what a redirect or a direct response cannot be combined with
    "redirect": (("route", "a route"), ("fault", "fault injection"), ("rewrite", "a rewrite"),
                 ("directResponse", "a direct response")),
    "directResponse": (("route", "a route"), ("fault", "fault injection"), ("rewrite", "a rewrite")),
}


def parse_virtual_service(doc: object, source: str = "<virtualservice>") -> VirtualService:
    """Check and build a VirtualService. Raises :class:`~weir.api.errors.ManifestError` listing every problem."""
    problems, doc = open_manifest(doc, source, VIRTUAL_SERVICE)
    metadata = parse_metadata(doc, problems, VIRTUAL_SERVICE)
    spec = ip.spec(doc, problems, "spec.hosts and routes")
    gateways = ip.gateways(spec, "spec", problems)
    on_mesh = not gateways or iv.MESH_GATEWAY in gateways
    hosts = _hosts(spec, on_mesh, problems)
    delegate = not hosts and rd.absent(spec, "hosts")
    if delegate:  # a delegate VirtualService: hosts come from the root that delegates to it
        for key in ("gateways", "tcp", "tls"):
            if not rd.absent(spec, key):
                problems.add(f"spec.{key}", f"a delegate VirtualService (no hosts) must have no {key}")
    if isinstance(doc.get("spec"), dict) and all(rd.absent(spec, k) for k in ("http", "tcp", "tls")):
        problems.add("spec", "must have at least one of http, tcp or tls routes")
    http = tuple(_http_route(route, path, problems, on_mesh=on_mesh, delegate=delegate)
                 for path, route in rd.mappings(spec, "http", "spec"))
    tcp = tuple(TCPRoute(match=tuple(_l4_match(m, mpath, problems) for mpath, m in rd.mappings(route, "match", path)),
                         route=_l4_destinations(route, path, problems))
                for path, route in rd.mappings(spec, "tcp", "spec"))
    tls = tuple(_tls_route(route, path, hosts, problems) for path, route in rd.mappings(spec, "tls", "spec"))
    export_to = ip.export_to(spec, metadata.namespace, problems)
    problems.raise_if_any()
    return VirtualService(
        metadata=metadata,
        spec=VirtualServiceSpec(hosts=hosts, gateways=gateways, http=http, tcp=tcp, tls=tls, export_to=export_to),
        api_version=rd.string(doc, "apiVersion"),
        raw=copy.deepcopy(doc),
    )


def _hosts(spec: rd.Doc, on_mesh: bool, problems: Problems) -> tuple[str, ...]:
    hosts = rd.strings(spec, "hosts")
    valid = True
    for index, host in enumerate(hosts):
        path = item_path("spec.hosts", index)
        if iv.ip(host) is not None:
            continue
        problem = iv.wildcard_domain(host)
        if problem:
            rd.invalid(problems, path, host, problem)
            valid = False
        elif host == "*" and on_mesh:
            problems.add(path, 'the host "*" is allowed only for gateways (set spec.gateways, without "mesh")')
            valid = False
    if valid:
        for (_, first), (j, second) in combinations(enumerate(hosts), 2):
            if iv.host_matches(first, second):
                problems.add(item_path("spec.hosts", j), f"duplicate host: {quoted(second)} overlaps {quoted(first)}")
    return hosts


# --- HTTP ----------------------------------------------------------------------------------


def _http_route(doc: rd.Doc, path: str, problems: Problems, *, on_mesh: bool, delegate: bool) -> HTTPRoute:
    _check_conflicts(doc, path, problems, delegate=delegate)
    entries = list(rd.mappings(doc, "route", path))
    weights = ip.weights(entries, f"{path}.route", problems)
    route = tuple(HTTPRouteDestination(destination=_destination(entry, epath, problems), weight=weight,
                                       headers=_header_operations(entry, epath, problems))
                  for (epath, entry), weight in zip(entries, weights, strict=True))
    _check_fault(doc, path, problems)
    _check_redirect(doc, path, problems)
    _check_direct_response(doc, path, problems)
    _check_cors(doc, path, problems)
    mirror = None
    if rd.present(doc, "mirror"):
        mirror = ip.destination(rd.mapping(doc, "mirror"), f"{path}.mirror", problems)
    mirrors = tuple(HTTPMirrorPolicy(destination=_destination(m, mpath, problems),
                                     percentage=rd.number(rd.mapping(m, "percentage"), "value"))
                    for mpath, m in rd.mappings(doc, "mirrors", path))
    return HTTPRoute(
        name=rd.string(doc, "name"),
        match=tuple(_http_match(m, mpath, problems, on_mesh=on_mesh) for mpath, m in rd.mappings(doc, "match", path)),
        route=route,
        timeout=iv.duration(doc.get("timeout")),
        retries=_retries(doc, path, problems),
        rewrite=_rewrite(doc, path, problems),
        mirror=mirror,
        mirror_percentage=rd.number(rd.mapping(doc, "mirrorPercentage"), "value"),
        mirrors=mirrors,
        fault=rd.frozen_or_none(doc, "fault"),
        redirect=rd.frozen_or_none(doc, "redirect"),
        direct_response=rd.frozen_or_none(doc, "directResponse"),
        delegate=rd.frozen_or_none(doc, "delegate"),
        headers=_header_operations(doc, path, problems),
        cors_policy=rd.frozen_or_none(doc, "corsPolicy"),
    )


def _check_conflicts(doc: rd.Doc, path: str, problems: Problems, *, delegate: bool) -> None:
    """One of route, redirect, directResponse or delegate, and what each excludes."""
    if rd.present(doc, "mirror") and not rd.absent(doc, "mirrors"):
        problems.add(f"{path}.mirrors", "only one of mirror or mirrors may be set")
    if rd.present(doc, "delegate"):
        if delegate:
            problems.add(f"{path}.delegate", "a delegate VirtualService's routes may not delegate again")
        for key in ("route", "redirect"):
            if not rd.absent(doc, key):
                problems.add(f"{path}.{key}", "must not be set on a route that delegates")
        return
    for action in ("redirect", "directResponse"):
        if rd.present(doc, action):
            for key, what in _CONFLICTS[action]:
                if not rd.absent(doc, key):
                    problems.add(f"{path}.{key}", f"{what} cannot be combined with {action}")
            return
    if rd.absent(doc, "route"):
        problems.missing(f"{path}.route", "required (or redirect, directResponse or delegate)")


def _destination(entry: rd.Doc, path: str, problems: Problems) -> Destination:
    if not rd.present(entry, "destination"):
        problems.missing(f"{path}.destination", "required (host, and optionally subset and port)")
        return Destination(host="")
    return ip.destination(rd.mapping(entry, "destination"), f"{path}.destination", problems)


def _http_match(doc: rd.Doc, path: str, problems: Problems, *, on_mesh: bool) -> HTTPMatchRequest:
    return HTTPMatchRequest(
        name=rd.string(doc, "name"),
        uri=_string_match(doc, "uri", path, problems, empty_prefix=True),
        scheme=_string_match(doc, "scheme", path, problems),
        method=_string_match(doc, "method", path, problems),
        authority=_string_match(doc, "authority", path, problems),
        headers=_headers(doc, "headers", path, problems, on_mesh=on_mesh),
        without_headers=_headers(doc, "withoutHeaders", path, problems, on_mesh=on_mesh),
        query_params=MappingProxyType({
            name: match for name in rd.mapping(doc, "queryParams")
            if (match := _string_match(rd.mapping(doc, "queryParams"), name, f"{path}.queryParams", problems))
        }),
        port=rd.integer(doc, "port"),
        source_labels=ip.labels(doc, "sourceLabels", path, problems),
        gateways=ip.gateways(doc, path, problems),
        source_namespace=ip.source_namespace(doc, path, problems),
        ignore_uri_case=rd.boolean(doc, "ignoreUriCase") is True,
    )


def _string_match(doc: rd.Doc, key: str, path: str, problems: Problems, *, empty_prefix: bool = False,
                  presence: bool = False) -> StringMatch | None:
    """One of ``exact``, ``prefix`` or ``regex``; ``{}`` means presence where ``presence`` allows it."""
    if not rd.present(doc, key):
        return None
    match = rd.mapping(doc, key)
    mpath = field_path(path, key)
    given = [t for t in _MATCH_TYPES if isinstance(match.get(t), str)]
    if len(given) > 1:
        problems.add(mpath, f"only one of exact, prefix or regex may be set, got {' and '.join(given)}")
        return None
    if not given:
        if not match and presence:
            return StringMatch("present")
        if not match:
            problems.add(mpath, "must set one of exact, prefix or regex" + (" ({} matches presence only for headers)"
                                                                             if not presence else ""))
        return None
    kind = given[0]
    value = rd.string(match, kind)
    if kind == "prefix" and not value and not empty_prefix:
        problems.add(f"{mpath}.prefix", "must not be empty")
    if kind == "regex":
        problem = iv.regex_problem(value)
        if problem:
            problems.add(f"{mpath}.regex", problem)
    return StringMatch(kind, value)


def _headers(doc: rd.Doc, key: str, path: str, problems: Problems, *,
             on_mesh: bool) -> MappingProxyType[str, StringMatch]:
    found: dict[str, StringMatch] = {}
    headers = rd.mapping(doc, key)
    for name in headers:
        hpath = field_path(field_path(path, key), name)
        problem = iv.header_name(name)
        if problem:
            problems.add(hpath, problem)
        elif name.startswith(iv.JWT_CLAIM_PREFIX) and on_mesh:
            problems.add(hpath, "routing on JWT claims works only on gateways (set spec.gateways, without \"mesh\")")
        match = _string_match(headers, name, field_path(path, key), problems, presence=True)
        if match is not None:
            found[name] = match
    return MappingProxyType(found)


def _retries(doc: rd.Doc, path: str, problems: Problems) -> HTTPRetry | None:
    if not rd.present(doc, "retries"):
        return None
    retries = rd.mapping(doc, "retries")
    rpath = f"{path}.retries"
    attempts = rd.integer(retries, "attempts") or 0
    if attempts < 0:
        problems.add(f"{rpath}.attempts", f"must not be negative, got {attempts}")
    elif attempts == 0 and any(rd.present(retries, k) for k in ("perTryTimeout", "retryOn", "retryRemoteLocalities")):
        problems.add(f"{rpath}.attempts", "retries are configured but attempts is 0 (retries disabled): set attempts")
    retry_on = tuple(rd.string(retries, "retryOn").split(",")) if rd.string(retries, "retryOn") else ()
    for policy in retry_on:
        problem = iv.retry_on(policy)
        if problem:
            problems.add(f"{rpath}.retryOn", problem)
    return HTTPRetry(attempts=max(attempts, 0), per_try_timeout=iv.duration(retries.get("perTryTimeout")),
                     retry_on=retry_on, retry_remote_localities=rd.boolean(retries, "retryRemoteLocalities"))


def _rewrite(doc: rd.Doc, path: str, problems: Problems) -> HTTPRewrite | None:
    if not rd.present(doc, "rewrite"):
        return None
    rewrite = rd.mapping(doc, "rewrite")
    rpath = f"{path}.rewrite"
    uri, authority = rd.string(rewrite, "uri"), rd.string(rewrite, "authority")
    regex = rd.mapping(rewrite, "uriRegexRewrite")
    if uri and rd.present(rewrite, "uriRegexRewrite"):
        problems.add(rpath, "only one of uri or uriRegexRewrite may be set")
    elif not uri and not authority and not rd.present(rewrite, "uriRegexRewrite") and not rewrite:
        problems.add(rpath, "must set uri, uriRegexRewrite or authority")
    if rd.present(rewrite, "uriRegexRewrite"):
        for key in ("match", "rewrite"):
            if not rd.string(regex, key) and rd.absent(regex, key):
                problems.missing(f"{rpath}.uriRegexRewrite.{key}", "required (uriRegexRewrite needs match and rewrite)")
        match = rd.string(regex, "match")
        problem = iv.regex_problem(match) if match else None
        if problem:
            problems.add(f"{rpath}.uriRegexRewrite.match", problem)
    return HTTPRewrite(uri=uri, authority=authority, uri_regex_match=rd.string(regex, "match"),
                       uri_regex_rewrite=rd.string(regex, "rewrite"))


def _header_operations(doc: rd.Doc, path: str, problems: Problems) -> rd.Doc | None:
    """``headers.request`` / ``headers.response``: set, add, remove; pseudo-headers cannot be changed."""
    for direction in ("request", "response"):
        operations = rd.mapping(rd.mapping(doc, "headers"), direction)
        opath = f"{path}.headers.{direction}"
        for op in ("set", "add", "remove"):
            keys = rd.strings(operations, op) if op == "remove" else tuple(rd.string_map(operations, op))
            for name in keys:
                authority = direction == "request" and op != "remove" and name.lower() in (":authority", "host")
                if not name:
                    problems.add(f"{opath}.{op}", "header name must not be empty")
                elif not authority and (name.startswith(":") or name.lower() == "host"):
                    problems.add(f"{opath}.{op}", f"header {quoted(name)} cannot be changed (pseudo-header or Host)")
    return rd.frozen_or_none(doc, "headers")


def _check_fault(doc: rd.Doc, path: str, problems: Problems) -> None:
    if not rd.present(doc, "fault"):
        return
    fault = rd.mapping(doc, "fault")
    fpath = f"{path}.fault"
    if not fault:
        problems.add(fpath, "must set abort and/or delay")
    if rd.present(fault, "abort"):
        abort = rd.mapping(fault, "abort")
        kinds = [k for k in ("httpStatus", "grpcStatus", "http2Error") if rd.present(abort, k)]
        if len(kinds) > 1:
            problems.add(f"{fpath}.abort",
                         f"only one of httpStatus, grpcStatus or http2Error may be set, got {' and '.join(kinds)}")
        if "http2Error" in kinds:
            problems.add(f"{fpath}.abort.http2Error", "HTTP/2 abort fault injection is not supported (as in Istio)")
        status = rd.integer(abort, "httpStatus")
        if status is not None and not 200 <= status <= 599:
            problems.add(f"{fpath}.abort.httpStatus", f"must be an HTTP status between 200 and 599, got {status}")
        grpc = rd.string(abort, "grpcStatus")
        if grpc and grpc not in iv.GRPC_STATUSES:
            problems.add(f"{fpath}.abort.grpcStatus", f"unknown gRPC status {quoted(grpc)} (e.g. \"UNAVAILABLE\")")
    if rd.present(fault, "delay"):
        delay = rd.mapping(fault, "delay")
        if rd.present(delay, "exponentialDelay"):
            problems.add(f"{fpath}.delay.exponentialDelay", "not supported (as in Istio): use fixedDelay")
        elif not rd.present(delay, "fixedDelay"):
            problems.missing(f"{fpath}.delay.fixedDelay", "required (the delay to inject)")


def _check_redirect(doc: rd.Doc, path: str, problems: Problems) -> None:
    if not rd.present(doc, "redirect"):
        return
    redirect = rd.mapping(doc, "redirect")
    rpath = f"{path}.redirect"
    unknown = [k for k in redirect if k not in isc.HTTP_REDIRECT.fields]  # reported by the schema pass
    if not unknown and not any(rd.present(redirect, k) for k in ("uri", "authority", "port", "derivePort", "scheme")):
        problems.add(rpath, "must set uri, authority, scheme or port")
    code = rd.integer(redirect, "redirectCode")
    if code and not 300 <= code <= 399:
        problems.add(f"{rpath}.redirectCode", f"must be a 3xx status, got {code}")
    scheme = rd.string(redirect, "scheme")
    if scheme and scheme not in ("http", "https"):
        problems.add(f"{rpath}.scheme", f'must be "http" or "https", got {quoted(scheme)}')


def _check_direct_response(doc: rd.Doc, path: str, problems: Problems) -> None:
    if not rd.present(doc, "directResponse"):
        return
    status = rd.integer(rd.mapping(doc, "directResponse"), "status")
    if status is None and rd.absent(rd.mapping(doc, "directResponse"), "status"):
        problems.missing(f"{path}.directResponse.status", "required (the HTTP status to answer with)")
    elif status is not None and not 200 <= status <= 599:
        problems.add(f"{path}.directResponse.status", f"must be an HTTP status between 200 and 599, got {status}")


def _check_cors(doc: rd.Doc, path: str, problems: Problems) -> None:
    cors = rd.mapping(doc, "corsPolicy")
    cpath = f"{path}.corsPolicy"
    for opath, origin in rd.mappings(cors, "allowOrigins", cpath):
        given = [t for t in _MATCH_TYPES if rd.string(origin, t)]
        if not given:
            problems.add(opath, "must set a non-empty exact, prefix or regex")
        elif given[0] == "regex" and iv.regex_problem(rd.string(origin, "regex")):
            problems.add(f"{opath}.regex", iv.regex_problem(rd.string(origin, "regex")) or "")
    for index, method in enumerate(rd.strings(cors, "allowMethods")):
        if method not in iv.CORS_METHODS:
            problems.add(item_path(f"{cpath}.allowMethods", index), f"{quoted(method)} is not a supported HTTP method")


# --- TCP and TLS ---------------------------------------------------------------------------


def _l4_match(doc: rd.Doc, path: str, problems: Problems, *, sni_hosts: tuple[str, ...] = ()) -> L4MatchAttributes:
    return L4MatchAttributes(
        destination_subnets=ip.subnets(doc, "destinationSubnets", path, problems),
        port=rd.integer(doc, "port"),
        source_labels=ip.labels(doc, "sourceLabels", path, problems),
        gateways=ip.gateways(doc, path, problems),
        source_namespace=ip.source_namespace(doc, path, problems),
        sni_hosts=sni_hosts,
    )


def _l4_destinations(route: rd.Doc, path: str, problems: Problems) -> tuple[RouteDestination, ...]:
    entries = list(rd.mappings(route, "route", path))
    if not entries and rd.absent(route, "route"):
        problems.missing(f"{path}.route", "required (at least one destination)")
    weights = ip.weights(entries, f"{path}.route", problems)
    return tuple(RouteDestination(destination=_destination(entry, epath, problems), weight=weight)
                 for (epath, entry), weight in zip(entries, weights, strict=True))


def _tls_route(route: rd.Doc, path: str, hosts: tuple[str, ...], problems: Problems) -> TLSRoute:
    matches = list(rd.mappings(route, "match", path))
    if not matches and rd.absent(route, "match"):
        problems.missing(f"{path}.match", "required (TLS routes match on sniHosts)")
    found: list[L4MatchAttributes] = []
    for mpath, match in matches:
        sni_hosts = rd.strings(match, "sniHosts")
        if not sni_hosts and rd.absent(match, "sniHosts"):
            problems.missing(f"{mpath}.sniHosts", "required (at least one SNI host)")
        for index, sni in enumerate(sni_hosts):
            spath = item_path(f"{mpath}.sniHosts", index)
            if iv.ip(sni) is not None:
                continue
            problem = iv.wildcard_domain(sni)
            if problem:
                rd.invalid(problems, spath, sni, problem)
            elif not any(iv.host_subset_of(sni, host) for host in hosts):
                problems.add(spath, f"{quoted(sni)} is not covered by any of the VirtualService's hosts")
        found.append(_l4_match(match, mpath, problems, sni_hosts=sni_hosts))
    return TLSRoute(match=tuple(found), route=_l4_destinations(route, path, problems))
