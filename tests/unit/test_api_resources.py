"""weir.api: Service, Namespace, ServiceAccount, ServiceEntry, DestinationRule, VirtualService and
PeerAuthentication manifests -> frozen dataclasses, or one-line errors naming the JSON path.

The "docs" examples are written from the Istio and Kubernetes documentation (Bookinfo's
reviews 80/20 split, egress ServiceEntries, STRICT PeerAuthentication ...).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import ipaddress
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import yaml

from weir.api.core import Namespace, ServiceAccount, parse_namespace, parse_service_account
from weir.api.errors import ManifestError
from weir.api.networking import (
    Destination,
    DestinationRule,
    HTTPRouteDestination,
    ServiceEntry,
    StringMatch,
    VirtualService,
    parse_destination_rule,
    parse_service_entry,
    parse_virtual_service,
)
from weir.api.security import PeerAuthentication, parse_peer_authentication
from weir.api.service import Service, parse_service

Parser = Callable[[object, str], Any]
T = TypeVar("T")


def some(value: T | None) -> T:
    """``value``, which must be set (narrows the type for the checks that follow)."""
    assert value is not None
    return value


def problems(parse: Parser, doc: object, source: str = "r.yaml") -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse(doc, source)
    lines = [str(e) for e in info.value.errors]
    assert all("\n" not in line for line in [*lines, str(info.value)])
    assert all(line.startswith(f"{source}: ") for line in lines)
    return lines


def only_problem(parse: Parser, doc: object) -> str:
    found = problems(parse, doc)
    assert len(found) == 1, found
    return found[0]


def edit(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with the value at ``path`` replaced (or removed, for ``DELETE``)."""
    doc = copy.deepcopy(doc)
    node: Any = doc
    for step in path[:-1]:
        node = node[step]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


DELETE = object()


def load(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


# --- Service -------------------------------------------------------------------------------

REVIEWS_SERVICE = load("""
apiVersion: v1
kind: Service
metadata:
  name: reviews
  labels: {app: reviews, service: reviews}
spec:
  ports:
  - port: 9080
    name: http
  selector:
    app: reviews
""")


def test_service_bookinfo_reviews() -> None:
    service = parse_service(REVIEWS_SERVICE, "bookinfo.yaml")
    assert isinstance(service, Service)
    assert (service.metadata.name, service.metadata.namespace) == ("reviews", "default")
    assert service.spec.type == "ClusterIP"
    assert service.spec.cluster_ip_like
    port = service.spec.ports[0]
    assert (port.port, port.target_port, port.protocol, port.name) == (9080, 9080, "TCP", "http")
    assert service.spec.selector == {"app": "reviews"}
    assert service.spec.cluster_ip is None
    assert not service.spec.headless


def test_service_fields_are_typed() -> None:
    doc = load("""
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app.kubernetes.io/name: proxy}
  ports:
  - name: name-of-service-port
    protocol: TCP
    port: 80
    targetPort: http-web-svc
  - name: grpc
    port: 9090
    targetPort: 19090
    protocol: TCP
    appProtocol: kubernetes.io/h2c
  - name: dns
    port: 53
    protocol: UDP
  sessionAffinity: ClientIP
""")
    spec = parse_service(doc).spec
    assert spec.cluster_ip == ipaddress.ip_address("10.96.0.20")
    assert [p.target_port for p in spec.ports] == ["http-web-svc", 19090, 53]
    assert spec.ports[1].app_protocol == "kubernetes.io/h2c"
    assert spec.ports[2].protocol == "UDP"


@pytest.mark.parametrize(("service_type", "extra"), [
    ("NodePort", {"ports": [{"port": 80, "targetPort": 80, "nodePort": 30007}]}),
    ("LoadBalancer", {"ports": [{"port": 80, "protocol": "TCP"}], "loadBalancerIP": "192.0.2.127"}),
])
def test_node_port_and_load_balancer_are_cluster_ip_like(service_type: str, extra: dict[str, Any]) -> None:
    doc = edit(REVIEWS_SERVICE, ("spec",), {"type": service_type, "selector": {"app": "x"}, **extra})
    spec = parse_service(doc).spec
    assert spec.type == service_type
    assert spec.cluster_ip_like
    assert spec.ports[0].node_port == (30007 if service_type == "NodePort" else None)


def test_headless_service_needs_no_ports() -> None:
    spec = parse_service(edit(REVIEWS_SERVICE, ("spec",), {"clusterIP": "None", "selector": {"app": "db"}})).spec
    assert spec.headless
    assert spec.cluster_ip is None
    assert spec.ports == ()


def test_external_name_service() -> None:
    doc = load("""
apiVersion: v1
kind: Service
metadata: {name: my-service, namespace: prod}
spec:
  type: ExternalName
  externalName: my.database.example.com
""")
    spec = parse_service(doc).spec
    assert (spec.type, spec.external_name, spec.cluster_ip_like) == ("ExternalName", "my.database.example.com", False)


SPEC = ("spec",)
PORT0 = ("spec", "ports", 0)


@pytest.mark.parametrize(("path", "value", "expected"), [
    ((*SPEC, "port"), [], 'spec.port: unknown field (did you mean "ports"?)'),
    ((*PORT0, "targetport"), 80, 'spec.ports[0].targetport: unknown field (did you mean "targetPort"?)'),
    (("metadata", "name"), "Reviews", 'metadata.name: invalid value "Reviews": must be a lowercase RFC 1035 label'),
    (("metadata", "name"), "9reviews", 'metadata.name: invalid value "9reviews": must be a lowercase RFC 1035 label'),
    ((*SPEC, "ports"), DELETE, "spec.ports: required (at least one port, unless the service is headless)"),
    ((*PORT0, "port"), 0, "spec.ports[0].port: must be between 1 and 65535, inclusive, got 0"),
    ((*PORT0, "port"), "9080", 'spec.ports[0].port: expected an integer, got string "9080"'),
    ((*PORT0, "targetPort"), 70000, "spec.ports[0].targetPort: must be between 1 and 65535, inclusive, got 70000"),
    ((*PORT0, "targetPort"), "HTTP_web", 'spec.ports[0].targetPort: invalid value "HTTP_web": a named port must'),
    ((*PORT0, "protocol"), "tcp", 'spec.ports[0].protocol: unsupported value "tcp" (expected one of "TCP", "UDP"'),
    ((*PORT0, "nodePort"), 30007, 'spec.ports[0].nodePort: may not be used when type is "ClusterIP"'),
    ((*PORT0, "appProtocol"), "h2c/", 'spec.ports[0].appProtocol: invalid value "h2c/": name part must be non-empty'),
    ((*SPEC, "type"), "Ingress", 'spec.type: unsupported value "Ingress" (expected one of "ClusterIP", "NodePort"'),
    ((*SPEC, "clusterIP"), "300.1.1.1", 'spec.clusterIP: invalid value "300.1.1.1": must be an IP address or "None"'),
    ((*SPEC, "externalName"), "db.example.com", 'spec.externalName: may only be set when type is "ExternalName"'),
    ((*SPEC, "selector"), {"app": "a b"}, 'spec.selector.app: invalid value "a b": must be empty or consist of'),
    (("spec",), [], "spec: expected a mapping (ServiceSpec), got a list"),
])
def test_service_bad_inputs(path: tuple[Any, ...], value: Any, expected: str) -> None:
    assert only_problem(parse_service, edit(REVIEWS_SERVICE, path, value)).startswith(f"r.yaml: {expected}")


@pytest.mark.parametrize(("spec", "expected"), [
    ({"type": "ExternalName"}, ["spec.externalName: required for an ExternalName service (a DNS name)"]),
    ({"type": "ExternalName", "externalName": "10.0.0.1"},
     ['spec.externalName: invalid value "10.0.0.1": must be a DNS name, not an IP address (it becomes a CNAME)']),
    ({"type": "ExternalName", "externalName": "db.example.com", "clusterIP": "10.0.0.1"},
     ["spec.clusterIP: must not be set for an ExternalName service"]),
    ({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80}]},
     ['spec.clusterIP: may not be "None" for a NodePort service (only ClusterIP services are headless)']),
    ({"ports": [{"port": 80}, {"port": 81}]}, ["spec.ports[0].name: required when a service has more than one port",
                                                "spec.ports[1].name: required when a service has more than one port"]),
    ({"ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "a"}]},
     ['spec.ports[1].name: duplicate port name "a"']),
    ({"ports": [{"port": 80, "name": "a"}, {"port": 80, "name": "b"}]}, ["spec.ports[1]: duplicate port 80/TCP"]),
    ({"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.2"], "ports": [{"port": 80}]},
     ['spec.clusterIPs[0]: must match spec.clusterIP ("10.0.0.1")']),
])
def test_service_rules(spec: dict[str, Any], expected: list[str]) -> None:
    assert problems(parse_service, edit(REVIEWS_SERVICE, ("spec",), spec)) == [f"r.yaml: {e}" for e in expected]


def test_service_external_name_keeps_a_trailing_dot() -> None:
    doc = edit(REVIEWS_SERVICE, ("spec",), {"type": "ExternalName", "externalName": "db.example.com."})
    assert parse_service(doc).spec.external_name == "db.example.com."


# --- Namespace and ServiceAccount ----------------------------------------------------------

NAMESPACE = load("""
apiVersion: v1
kind: Namespace
metadata:
  name: bookinfo
  labels:
    istio-injection: enabled
""")


def test_namespace_injection_labels() -> None:
    namespace = parse_namespace(NAMESPACE)
    assert isinstance(namespace, Namespace)
    assert (namespace.metadata.name, namespace.metadata.namespace) == ("bookinfo", "")
    assert (namespace.injection, namespace.revision) == ("enabled", None)
    revisioned = parse_namespace(edit(NAMESPACE, ("metadata", "labels"), {"istio.io/rev": "canary"}))
    assert (revisioned.injection, revisioned.revision) == (None, "canary")
    disabled = parse_namespace(edit(NAMESPACE, ("metadata", "labels", "istio-injection"), "disabled"))
    assert disabled.injection == "disabled"


def test_namespace_is_cluster_scoped() -> None:
    namespace = parse_namespace(edit(NAMESPACE, ("metadata", "namespace"), "default"))
    assert namespace.metadata.namespace == ""


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("metadata", "labels", "istio-injection"), "true",
     'metadata.labels.istio-injection: unsupported value "true" (expected "enabled" or "disabled"; any other value '
     "leaves injection off)"),
    (("metadata", "labels"), {"istio.io/rev": ""}, 'metadata.labels["istio.io/rev"]: must name a revision'),
    (("metadata", "name"), "Book", 'metadata.name: invalid value "Book": must be a lowercase RFC 1123 label'),
    (("metadata", "name"), "book.info", 'metadata.name: invalid value "book.info": must be a lowercase RFC 1123 label'),
    (("spec",), {"finalisers": []}, 'spec.finalisers: unknown field (did you mean "finalizers"?)'),
    (("metdata",), {}, 'metdata: unknown field (did you mean "metadata"?)'),
    (("kind",), "Namespaces", 'kind: expected "Namespace", got string "Namespaces"'),
])
def test_namespace_bad_inputs(path: tuple[Any, ...], value: Any, expected: str) -> None:
    assert only_problem(parse_namespace, edit(NAMESPACE, path, value)).startswith(f"r.yaml: {expected}")


SERVICE_ACCOUNT = load("""
apiVersion: v1
kind: ServiceAccount
metadata:
  name: bookinfo-reviews
  labels: {account: reviews}
automountServiceAccountToken: false
""")


def test_service_account() -> None:
    account = parse_service_account(SERVICE_ACCOUNT)
    assert isinstance(account, ServiceAccount)
    assert (account.metadata.namespace, account.metadata.name, account.automount_token) == (
        "default", "bookinfo-reviews", False)
    unset = edit(SERVICE_ACCOUNT, ("automountServiceAccountToken",), DELETE)
    assert parse_service_account(unset).automount_token is None


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("metadata", "name"), "Bad_Name",
     'metadata.name: invalid value "Bad_Name": must be a lowercase RFC 1123 subdomain'),
    (("metadata", "name"), DELETE, "metadata.name: required"),
    (("automountServiceAccountToken",), "false",
     'automountServiceAccountToken: expected a boolean, got string "false"'),
    (("secret",), [], 'secret: unknown field (did you mean "secrets"?)'),
    (("imagePullSecrets",), [{"nmae": "x"}], 'imagePullSecrets[0].nmae: unknown field (did you mean "name"?)'),
    (("metadata", "generateName"), "sa-", "metadata.name: required"),
])
def test_service_account_bad_inputs(path: tuple[Any, ...], value: Any, expected: str) -> None:
    doc = edit(SERVICE_ACCOUNT, path, value)
    if path == ("metadata", "generateName"):
        doc = edit(doc, ("metadata", "name"), DELETE)
    assert only_problem(parse_service_account, doc).startswith(f"r.yaml: {expected}")


# --- ServiceEntry --------------------------------------------------------------------------

EXTERNAL_HTTPS = load("""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-svc-https
spec:
  hosts:
  - api.dropboxapi.com
  - www.googleapis.com
  - api.facebook.com
  location: MESH_EXTERNAL
  ports:
  - number: 443
    name: https
    protocol: TLS
  resolution: DNS
""")


def test_service_entry_docs_external_https() -> None:
    entry = parse_service_entry(EXTERNAL_HTTPS, "egress.yaml")
    assert isinstance(entry, ServiceEntry)
    assert entry.api_version == "networking.istio.io/v1"
    assert entry.spec.hosts == ("api.dropboxapi.com", "www.googleapis.com", "api.facebook.com")
    assert (entry.spec.location, entry.spec.resolution) == ("MESH_EXTERNAL", "DNS")
    port = entry.spec.ports[0]
    assert (port.number, port.name, port.protocol, port.target_port) == (443, "https", "TLS", None)


def test_service_entry_docs_httpbin_egress() -> None:
    entry = parse_service_entry(load("""
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.org]
  ports:
  - number: 80
    name: http
    protocol: http
  resolution: DNS
  location: MESH_EXTERNAL
"""))
    assert entry.api_version == "networking.istio.io/v1beta1"
    assert entry.spec.ports[0].protocol == "HTTP"  # any case, Istio's spelling


def test_service_entry_docs_static_mongo_cluster() -> None:
    entry = parse_service_entry(load("""
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: external-svc-mongocluster}
spec:
  hosts: [mymongodb.somedomain]
  addresses: [192.192.192.192/24]
  ports:
  - number: 27018
    name: mongodb
    protocol: MONGO
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - address: 2.2.2.2
  - address: 3.3.3.3
"""))
    assert entry.spec.addresses == (ipaddress.ip_network("192.192.192.0/24"),)
    assert entry.spec.ports[0].protocol == "Mongo"
    assert [e.ip for e in entry.spec.endpoints] == [ipaddress.ip_address("2.2.2.2"), ipaddress.ip_address("3.3.3.3")]


def test_service_entry_docs_dns_endpoints_and_unix_socket() -> None:
    dns = parse_service_entry(load("""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-svc-dns}
spec:
  hosts: [foo.bar.com]
  location: MESH_EXTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  endpoints:
  - address: us.foo.bar.com
    ports: {http: 8080}
  - address: uk.foo.bar.com
    ports: {http: 9080}
"""))
    assert [(e.address, e.ip, dict(e.ports)) for e in dns.spec.endpoints] == [
        ("us.foo.bar.com", None, {"http": 8080}), ("uk.foo.bar.com", None, {"http": 9080})]
    unix = parse_service_entry(load("""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: unix-domain-socket-example}
spec:
  hosts: [example.unix.local]
  location: MESH_EXTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - address: unix:///var/run/example/socket
"""))
    assert unix.spec.endpoints[0].address == "unix:///var/run/example/socket"


def test_service_entry_workload_selector_and_export_to() -> None:
    entry = parse_service_entry(load("""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details-svc, namespace: bookinfo}
spec:
  hosts: [details.bookinfo.com]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  workloadSelector:
    labels: {app: details-legacy}
  exportTo: [".", "istio-system"]
"""))
    assert entry.spec.workload_selector == {"app": "details-legacy"}
    assert entry.spec.export_to == (".", "istio-system")
    assert entry.spec.ports[0].target_port == 8080
    only_me = parse_service_entry(edit(EXTERNAL_HTTPS, ("spec", "exportTo"), ["~"]))
    assert only_me.spec.export_to == ("~",)


SE_SPEC = ("spec",)
SE_PORT0 = ("spec", "ports", 0)


@pytest.mark.parametrize(("path", "value", "expected"), [
    ((*SE_SPEC, "hosts"), DELETE, "spec.hosts: required (at least one host)"),
    ((*SE_SPEC, "hosts"), ["*"], 'spec.hosts[0]: invalid host "*" (it would match every host)'),
    ((*SE_SPEC, "hosts"), ["api.*.com"], 'spec.hosts[0]: invalid value "api.*.com": label "*" is not a DNS-1123'),
    ((*SE_SPEC, "hosts"), ["example.123"], 'spec.hosts[0]: invalid value "example.123": top level domain "123"'),
    ((*SE_SPEC, "resolution"), "DNSX", 'spec.resolution: unsupported value "DNSX" (expected one of "NONE", "STATIC"'),
    ((*SE_SPEC, "location"), "EXTERNAL", 'spec.location: unsupported value "EXTERNAL" (expected one of'),
    ((*SE_PORT0, "protocol"), "HTTP3", 'spec.ports[0].protocol: unsupported protocol "HTTP3" (one of HTTP, HTTPS'),
    ((*SE_PORT0, "name"), DELETE, "spec.ports[0].name: required (endpoints and routes refer to ports by name)"),
    ((*SE_PORT0, "name"), "https_1", 'spec.ports[0].name: invalid value "https_1": must be a DNS-1123 label'),
    ((*SE_PORT0, "number"), 0, "spec.ports[0].number: must be between 1 and 65535, inclusive, got 0"),
    ((*SE_PORT0, "targetPort"), 65536, "spec.ports[0].targetPort: must be between 1 and 65535, inclusive, got 65536"),
    ((*SE_PORT0, "targetport"), 8443, 'spec.ports[0].targetport: unknown field (did you mean "targetPort"?)'),
    ((*SE_SPEC, "endpoint"), [], 'spec.endpoint: unknown field (did you mean "endpoints"?)'),
    ((*SE_SPEC, "addresses"), ["1.2.3.4/33"], 'spec.addresses[0]: invalid value "1.2.3.4/33": must be an IP address'),
    ((*SE_SPEC, "addresses"), ["10.0.0.0/8"], "spec.addresses[0]: CIDR blocks are allowed only with resolution NONE"),
    ((*SE_SPEC, "exportTo"), ["*", "."], "spec.exportTo: cannot have both public (*) and non-public exportTo values"),
    ((*SE_SPEC, "exportTo"), ["Bad_NS"], "spec.exportTo[0]: invalid entry \"Bad_NS\": must be '.', '*' or a namespace"),
    ((*SE_SPEC, "exportTo"), [".", "default"], "spec.exportTo[1]: duplicate entry: '.' and the namespace \"default\""),
])
def test_service_entry_bad_inputs(path: tuple[Any, ...], value: Any, expected: str) -> None:
    assert only_problem(parse_service_entry, edit(EXTERNAL_HTTPS, path, value)).startswith(f"r.yaml: {expected}")


def _entry(**spec: Any) -> dict[str, Any]:
    return edit(EXTERNAL_HTTPS, ("spec",), {"hosts": ["db.example.com"], **spec})


@pytest.mark.parametrize(("doc", "expected"), [
    (_entry(resolution="NONE", endpoints=[{"address": "1.1.1.1"}]),
     "spec.endpoints: must be empty with resolution NONE (traffic goes to the address asked for)"),
    (_entry(resolution="STATIC", endpoints=[{"address": "db.internal"}]),
     'spec.endpoints[0].address: invalid value "db.internal": must be an IP address (or unix:///path) with '
     "resolution STATIC"),
    (_entry(resolution="STATIC", ports=[{"number": 5432, "name": "pg"}], endpoints=[{"address": "10.0.0.1",
                                                                                     "ports": {"postgres": 5433}}]),
     "spec.endpoints[0].ports.postgres: not a port name of this ServiceEntry (its ports: pg)"),
    (_entry(hosts=["*.example.com"], resolution="DNS"),
     "spec.hosts[0]: must be a DNS name without wildcard: with resolution DNS and no endpoints, the host itself is "
     "resolved"),
    (_entry(resolution="DNS_ROUND_ROBIN", endpoints=[{"address": "a.example.com"}, {"address": "b.example.com"}]),
     "spec.endpoints: may have at most one endpoint with resolution DNS_ROUND_ROBIN"),
    (_entry(hosts=["a.example.com", "b.example.com"], resolution="DNS", ports=[{"number": 5432, "name": "pg",
                                                                               "protocol": "TCP"}]),
     "spec.hosts: several hosts need HTTP or TLS ports unless resolution is NONE (port 5432 is TCP: TCP cannot tell "
     "the hosts apart)"),
    (_entry(resolution="STATIC", endpoints=[{"address": "10.0.0.1"}], workloadSelector={"labels": {"app": "db"}}),
     "spec.workloadSelector: only one of workloadSelector or endpoints may be set"),
    (_entry(resolution="DNS", endpoints=[{"address": "unix:///var/run/db.sock"}]),
     'spec.endpoints[0].address: invalid value "unix:///var/run/db.sock": unix:// endpoints need resolution STATIC'),
    (_entry(ports=[{"number": 80, "name": "a"}, {"number": 80, "name": "b"}]),
     "spec.ports[1].number: duplicate port number 80"),
    (_entry(exportTo=["~", "default"]), "spec.exportTo: cannot export to no one (~) and someone"),
])
def test_service_entry_rules(doc: dict[str, Any], expected: str) -> None:
    assert only_problem(parse_service_entry, doc) == f"r.yaml: {expected}"


# --- DestinationRule -----------------------------------------------------------------------

REVIEWS_RULE = load("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
""")


def test_destination_rule_docs_bookinfo_subsets() -> None:
    rule = parse_destination_rule(REVIEWS_RULE)
    assert isinstance(rule, DestinationRule)
    assert rule.spec.host == "reviews"
    assert [(s.name, dict(s.labels)) for s in rule.spec.subsets] == [
        ("v1", {"version": "v1"}), ("v2", {"version": "v2"}), ("v3", {"version": "v3"})]
    assert rule.spec.traffic_policy is None
    assert rule.spec.subset("v2") is rule.spec.subsets[1]


def test_destination_rule_docs_load_balancers_and_subset_policy() -> None:
    rule = parse_destination_rule(load("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bookinfo-ratings}
spec:
  host: ratings.prod.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
  subsets:
  - name: testversion
    labels: {version: v3}
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
"""))
    assert some(some(rule.spec.traffic_policy).load_balancer).simple == "LEAST_REQUEST"
    assert some(some(rule.spec.subsets[0].traffic_policy).load_balancer).simple == "ROUND_ROBIN"


def test_destination_rule_docs_istio_mutual_pools_and_outliers() -> None:
    rule = parse_destination_rule(load("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-cb-policy}
spec:
  host: reviews.prod.svc.cluster.local
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 30ms
        tcpKeepalive: {time: 7200s, interval: 75s}
      http:
        http2MaxRequests: 1000
        maxRequestsPerConnection: 10
    outlierDetection:
      consecutive5xxErrors: 7
      interval: 5m
      baseEjectionTime: 15m
    tls:
      mode: ISTIO_MUTUAL
"""))
    policy = some(rule.spec.traffic_policy)
    assert some(policy.tls).mode == "ISTIO_MUTUAL"
    assert some(policy.connection_pool)["tcp"]["maxConnections"] == 100
    assert policy.outlier_detection == {"consecutive5xxErrors": 7, "interval": "5m", "baseEjectionTime": "15m"}
    with pytest.raises(TypeError):
        some(policy.connection_pool)["tcp"]["maxConnections"] = 1


def test_destination_rule_docs_mutual_tls_and_port_level_settings() -> None:
    rule = parse_destination_rule(load("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db-mtls}
spec:
  host: mydbserver.prod.svc.cluster.local
  trafficPolicy:
    tls:
      mode: MUTUAL
      clientCertificate: /etc/certs/myclientcert.pem
      privateKey: /etc/certs/client_private_key.pem
      caCertificates: /etc/certs/rootcacerts.pem
    portLevelSettings:
    - port: {number: 80}
      loadBalancer: {simple: LEAST_REQUEST}
    - port: {number: 9080}
      loadBalancer: {simple: ROUND_ROBIN}
"""))
    policy = some(rule.spec.traffic_policy)
    assert (some(policy.tls).mode, some(policy.tls).client_certificate) == ("MUTUAL", "/etc/certs/myclientcert.pem")
    assert [(p.port, p.load_balancer.simple if p.load_balancer else None) for p in policy.port_level_settings] == [
        (80, "LEAST_REQUEST"), (9080, "ROUND_ROBIN")]


DR_POLICY = ("spec", "trafficPolicy")


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("spec", "host"), DELETE, "spec.host: required (the service the rule applies to)"),
    (("spec", "host"), "reviews..svc", 'spec.host: invalid value "reviews..svc": label "" is not a DNS-1123 label'),
    (("spec", "hots"), "x", 'spec.hots: unknown field (did you mean "host"?)'),
    (DR_POLICY, {"tls": {"mode": "ISTIO_MUTUALL"}},
     'spec.trafficPolicy.tls.mode: unsupported value "ISTIO_MUTUALL" (expected one of "DISABLE", "SIMPLE", "MUTUAL", '
     '"ISTIO_MUTUAL")'),
    (DR_POLICY, {"loadBalancer": {"simple": "LEAST_REQUESTS"}},
     'spec.trafficPolicy.loadBalancer.simple: unsupported value "LEAST_REQUESTS"'),
    (DR_POLICY, {"loadbalancer": {}}, 'spec.trafficPolicy.loadbalancer: unknown field (did you mean "loadBalancer"?)'),
    (DR_POLICY, {}, "spec.trafficPolicy: must set at least one of loadBalancer, connectionPool"),
    (DR_POLICY, {"outlierDetection": {"interval": "5 minutes"}},
     'spec.trafficPolicy.outlierDetection.interval: invalid duration "5 minutes"'),
    (DR_POLICY, {"outlierDetection": {"maxEjectionPercent": 150}},
     "spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be between 0 and 100, inclusive, got 150"),
    (DR_POLICY, {"connectionPool": {"tcp": {"maxConnections": -1}}},
     "spec.trafficPolicy.connectionPool.tcp.maxConnections: must not be negative, got -1"),
    (DR_POLICY, {"connectionPool": {"tcp": {"connectTimeout": "0s"}}},
     'spec.trafficPolicy.connectionPool.tcp.connectTimeout: duration "0s" must be at least 1ms'),
    (DR_POLICY, {"connectionPool": {}}, "spec.trafficPolicy.connectionPool: must set at least one of tcp, http"),
    (DR_POLICY, {"portLevelSettings": [{"loadBalancer": {"simple": "RANDOM"}}]},
     "spec.trafficPolicy.portLevelSettings[0].port.number: required (the port the settings apply to)"),
    (DR_POLICY, {"loadBalancer": {"consistentHash": {"httpCookie": {"ttl": "0s"}}}},
     "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name: required (the cookie to hash)"),
    (DR_POLICY, {"tls": {"mode": "SIMPLE", "credentialName": "db-cred", "caCertificates": "/ca.pem"}},
     "spec.trafficPolicy.tls: caCertificates may not be set with credentialName (the credential holds it)"),
    (("spec", "subsets", 1, "name"), "v1", 'spec.subsets[1].name: duplicate subset name "v1"'),
    (("spec", "subsets", 1, "name"), DELETE, "spec.subsets[1].name: required (routes refer to subsets by name)"),
    (("spec", "subsets", 1, "name"), "v2.0", 'spec.subsets[1].name: invalid value "v2.0": must be a DNS-1123 label'),
    (("spec", "subsets", 1, "label"), {}, 'spec.subsets[1].label: unknown field (did you mean "labels"?)'),
    (("spec", "subsets", 1, "labels"), {"-version": "v2"}, 'spec.subsets[1].labels: invalid key "-version"'),
    (("spec", "exportTo"), ["."], None),
])
def test_destination_rule_bad_inputs(path: tuple[Any, ...], value: Any, expected: str | None) -> None:
    doc = edit(REVIEWS_RULE, path, value)
    if expected is None:
        parse_destination_rule(doc)
    else:
        assert only_problem(parse_destination_rule, doc).startswith(f"r.yaml: {expected}")


def test_destination_rule_mutual_tls_needs_certificates() -> None:
    doc = edit(REVIEWS_RULE, DR_POLICY, {"tls": {"mode": "MUTUAL"}})
    assert problems(parse_destination_rule, doc) == [
        "r.yaml: spec.trafficPolicy.tls.clientCertificate: required for mode MUTUAL (or set credentialName)",
        "r.yaml: spec.trafficPolicy.tls.privateKey: required for mode MUTUAL (or set credentialName)",
    ]
    with_credential = edit(REVIEWS_RULE, DR_POLICY, {"tls": {"mode": "MUTUAL", "credentialName": "client-cred"}})
    assert some(some(parse_destination_rule(with_credential).spec.traffic_policy).tls).credential_name == "client-cred"


def test_destination_rule_with_workload_selector_stays_in_its_namespace() -> None:
    doc = edit(REVIEWS_RULE, ("spec", "workloadSelector"), {"matchLabels": {"app": "ratings"}})
    assert parse_destination_rule(doc).spec.workload_selector == {"app": "ratings"}
    assert only_problem(parse_destination_rule, edit(doc, ("spec", "exportTo"), ["*"])) == (
        "r.yaml: spec.exportTo: a rule with a workloadSelector may be exported only to its own namespace")


# --- VirtualService ------------------------------------------------------------------------

REVIEWS_80_20 = load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 80
    - destination:
        host: reviews
        subset: v2
      weight: 20
""")
HTTP0 = ("spec", "http", 0)
ROUTE0 = (*HTTP0, "route", 0)


def test_virtual_service_docs_reviews_80_20() -> None:
    service = parse_virtual_service(REVIEWS_80_20, "virtual-service-reviews-80-20.yaml")
    assert isinstance(service, VirtualService)
    assert service.spec.hosts == ("reviews",)
    assert service.spec.applies_to_mesh
    assert service.spec.http[0].route == (
        HTTPRouteDestination(destination=Destination(host="reviews", subset="v1"), weight=80),
        HTTPRouteDestination(destination=Destination(host="reviews", subset="v2"), weight=20),
    )


def test_virtual_service_docs_named_routes_matches_and_rewrite() -> None:
    service = parse_virtual_service(load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-route}
spec:
  hosts: [reviews.prod.svc.cluster.local]
  http:
  - name: "reviews-v2-routes"
    match:
    - uri: {prefix: "/wpcatalog"}
    - uri: {prefix: "/consumercatalog"}
    rewrite: {uri: "/newcatalog"}
    route:
    - destination: {host: reviews.prod.svc.cluster.local, subset: v2}
  - name: "reviews-v1-route"
    route:
    - destination: {host: reviews.prod.svc.cluster.local, subset: v1}
"""))
    first, second = service.spec.http
    assert first.name == "reviews-v2-routes"
    assert [m.uri for m in first.match] == [StringMatch("prefix", "/wpcatalog"),
                                            StringMatch("prefix", "/consumercatalog")]
    assert some(first.rewrite).uri == "/newcatalog"
    assert second.route[0].weight == 100  # a lone destination takes all traffic
    assert second.match == ()


def test_virtual_service_docs_timeouts_retries_and_faults() -> None:
    service = parse_virtual_service(load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    fault:
      delay:
        percentage: {value: 100.0}
        fixedDelay: 7s
    route:
    - destination: {host: ratings, subset: v1}
  - route:
    - destination: {host: ratings, subset: v2}
    timeout: 0.5s
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: gateway-error,connect-failure,refused-stream,503
"""))
    faulty, timed = service.spec.http
    assert faulty.match[0].headers == {"end-user": StringMatch("exact", "jason")}
    assert faulty.fault == {"delay": {"percentage": {"value": 100.0}, "fixedDelay": "7s"}}
    assert timed.timeout == datetime.timedelta(milliseconds=500)
    assert timed.retries is not None
    assert timed.retries.attempts == 3
    assert timed.retries.per_try_timeout == datetime.timedelta(seconds=2)
    assert timed.retries.retry_on == ("gateway-error", "connect-failure", "refused-stream", "503")


@pytest.mark.parametrize(("text", "expected"), [
    ("3s", datetime.timedelta(seconds=3)), ("0.5s", datetime.timedelta(milliseconds=500)),
    ("1m", datetime.timedelta(minutes=1)), ("1h30m", datetime.timedelta(hours=1, minutes=30)),
    ("250ms", datetime.timedelta(milliseconds=250)), ("1.5s", datetime.timedelta(milliseconds=1500)),
])
def test_virtual_service_timeouts_are_go_durations(text: str, expected: datetime.timedelta) -> None:
    doc = edit(REVIEWS_80_20, (*HTTP0, "timeout"), text)
    assert parse_virtual_service(doc).spec.http[0].timeout == expected


def test_virtual_service_docs_mirroring() -> None:
    service = parse_virtual_service(load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin]
  http:
  - route:
    - destination: {host: httpbin, subset: v1}
      weight: 100
    mirror: {host: httpbin, subset: v2}
    mirrorPercentage: {value: 100.0}
  - route:
    - destination: {host: httpbin, subset: v1}
    mirrors:
    - destination: {host: httpbin, subset: v2}
      percentage: {value: 25}
    - destination: {host: httpbin, subset: v3, port: {number: 8000}}
"""))
    single, several = service.spec.http
    assert single.mirror == Destination(host="httpbin", subset="v2")
    assert single.mirror_percentage == 100.0
    assert [(m.destination, m.percentage) for m in several.mirrors] == [
        (Destination(host="httpbin", subset="v2"), 25.0), (Destination(host="httpbin", subset="v3", port=8000), None)]


def test_virtual_service_docs_tcp_and_tls_routes() -> None:
    tcp = parse_virtual_service(load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo}
spec:
  hosts: [tcp-echo]
  tcp:
  - match:
    - port: 9000
    route:
    - destination: {host: tcp-echo, port: {number: 9000}, subset: v1}
      weight: 80
    - destination: {host: tcp-echo, port: {number: 9000}, subset: v2}
      weight: 20
"""))
    route = tcp.spec.tcp[0]
    assert route.match[0].port == 9000
    assert [(d.destination.subset, d.destination.port, d.weight) for d in route.route] == [
        ("v1", 9000, 80), ("v2", 9000, 20)]
    tls = parse_virtual_service(load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo-sni}
spec:
  hosts: ["*.bookinfo.com"]
  gateways: [mygateway]
  tls:
  - match:
    - port: 443
      sniHosts: [login.bookinfo.com]
    route:
    - destination: {host: login.prod.svc.cluster.local}
"""))
    assert not tls.spec.applies_to_mesh
    assert tls.spec.tls[0].match[0].sni_hosts == ("login.bookinfo.com",)


def test_virtual_service_gateways_wildcard_host_and_presence_match() -> None:
    doc = edit(REVIEWS_80_20, ("spec",), {
        "hosts": ["*"], "gateways": ["istio-system/ingress", "legacy-gateway"],
        "http": [{"match": [{"headers": {"x-canary": {}}, "port": 8080, "sourceLabels": {"app": "web"},
                             "ignoreUriCase": True, "uri": {"regex": "/api/v[0-9]+/.*"}}],
                  "route": [{"destination": {"host": "reviews"}}]}],
    })
    match = parse_virtual_service(doc).spec.http[0].match[0]
    assert match.headers == {"x-canary": StringMatch("present")}
    assert (match.port, dict(match.source_labels), match.ignore_uri_case) == (8080, {"app": "web"}, True)
    assert match.uri == StringMatch("regex", "/api/v[0-9]+/.*")


@pytest.mark.parametrize(("path", "value", "expected"), [
    ((*ROUTE0, "weight"), -1, "spec.http[0].route[0].weight: must not be negative, got -1"),
    ((*HTTP0, "route"), [{"destination": {"host": "reviews"}, "weight": -5}],
     "spec.http[0].route[0].weight: must not be negative, got -5"),  # a lone destination too, as Istio
    ((*ROUTE0, "weight"), "80", 'spec.http[0].route[0].weight: expected an integer, got string "80"'),
    (("spec", "hosts"), ["*"], 'spec.hosts[0]: the host "*" is allowed only for gateways'),
    (("spec", "hosts"), ["reviews", "reviews"], 'spec.hosts[1]: duplicate host: "reviews" overlaps "reviews"'),
    (("spec", "hosts"), ["*.example.com", "api.example.com"],
     'spec.hosts[1]: duplicate host: "api.example.com" overlaps "*.example.com"'),
    (("spec", "hosts"), ["rev iews"], 'spec.hosts[0]: invalid value "rev iews": label "rev iews" is not'),
    (("spec", "host"), ["reviews"], 'spec.host: unknown field (did you mean "hosts"?)'),
    (("spec", "http"), DELETE, "spec: must have at least one of http, tcp or tls routes"),
    ((*HTTP0, "route"), DELETE, "spec.http[0].route: required (or redirect, directResponse or delegate)"),
    ((*HTTP0, "rout"), [], 'spec.http[0].rout: unknown field (did you mean "route"?)'),
    ((*HTTP0, "redirect"), {"uri": "/v2"}, "spec.http[0].route: a route cannot be combined with redirect"),
    ((*HTTP0, "mirrors"), [{"destination": {"host": "b"}}], None),
    ((*ROUTE0, "destination", "host"), DELETE, "spec.http[0].route[0].destination.host: required"),
    ((*ROUTE0, "destination", "host"), "*", 'spec.http[0].route[0].destination.host: invalid destination host "*"'),
    ((*ROUTE0, "destination", "subet"), "v1",
     'spec.http[0].route[0].destination.subet: unknown field (did you mean "subset"?)'),
    ((*ROUTE0, "destination", "subset"), "v_1", 'spec.http[0].route[0].destination.subset: invalid value "v_1"'),
    ((*ROUTE0, "destination", "port"), {"number": 70000},
     "spec.http[0].route[0].destination.port.number: must be between 1 and 65535, inclusive, got 70000"),
    ((*ROUTE0, "destination", "port"), {}, "spec.http[0].route[0].destination.port.number: required"),
    ((*HTTP0, "timeout"), "3", 'spec.http[0].timeout: invalid duration "3" (e.g. "3s", "0.5s", "1m", "250ms")'),
    ((*HTTP0, "timeout"), "0s", 'spec.http[0].timeout: duration "0s" must be at least 1ms'),
    ((*HTTP0, "timeout"), "1.0005s", 'spec.http[0].timeout: duration "1.0005s" is more precise than a millisecond'),
    ((*HTTP0, "timeout"), 3, "spec.http[0].timeout: expected a string, got integer 3 (quote it in YAML)"),
    ((*HTTP0, "retries"), {"perTryTimeout": "2s"},
     "spec.http[0].retries.attempts: retries are configured but attempts is 0 (retries disabled): set attempts"),
    ((*HTTP0, "retries"), {"attempts": 3, "retryOn": "5xx, reset"},
     'spec.http[0].retries.retryOn: " reset" is not a valid retryOn policy'),
    ((*HTTP0, "retries"), {"attempts": -1}, "spec.http[0].retries.attempts: must not be negative, got -1"),
    ((*HTTP0, "retries"), {"attempts": 2, "retry_on": "5xx"},
     'spec.http[0].retries.retry_on: unknown field (did you mean "retryOn"?)'),
    ((*HTTP0, "mirrorPercentage"), {"value": 150}, "spec.http[0].mirrorPercentage.value: must be between 0 and 100"),
    ((*HTTP0, "fault"), {"abort": {"httpStatus": 700}},
     "spec.http[0].fault.abort.httpStatus: must be an HTTP status between 200 and 599, got 700"),
    ((*HTTP0, "fault"), {"delay": {"exponentialDelay": "1s"}},
     "spec.http[0].fault.delay.exponentialDelay: not supported (as in Istio): use fixedDelay"),
    ((*HTTP0, "fault"), {}, "spec.http[0].fault: must set abort and/or delay"),
    ((*HTTP0, "rewrite"), {"uri": "/a", "uriRegexRewrite": {"match": "^/b", "rewrite": "/c"}},
     "spec.http[0].rewrite: only one of uri or uriRegexRewrite may be set"),
    ((*HTTP0, "match"), [{"uri": {"exact": "/a", "prefix": "/a"}}],
     "spec.http[0].match[0].uri: only one of exact, prefix or regex may be set, got exact and prefix"),
    ((*HTTP0, "match"), [{"uri": {}}], "spec.http[0].match[0].uri: must set one of exact, prefix or regex"),
    ((*HTTP0, "match"), [{"uri": {"regex": "("}}], "spec.http[0].match[0].uri.regex: invalid regex: missing )"),
    ((*HTTP0, "match"), [{"uri": {"regex": "/(?!admin)"}}],
     "spec.http[0].match[0].uri.regex: lookaround assertions are not supported (Istio uses RE2 syntax"),
    ((*HTTP0, "match"), [{"method": {"prefix": ""}}], "spec.http[0].match[0].method.prefix: must not be empty"),
    ((*HTTP0, "match"), [{"headers": {"bad header": {"exact": "x"}}}],
     'spec.http[0].match[0].headers["bad header"]: "bad header" is not a valid header name'),
    ((*HTTP0, "match"), [{"headers": {"@request.auth.claims.group": {"exact": "admin"}}}],
     'spec.http[0].match[0].headers["@request.auth.claims.group"]: routing on JWT claims works only on gateways'),
    ((*HTTP0, "match"), [{"prot": 80}], 'spec.http[0].match[0].prot: unknown field (did you mean "port"?)'),
    (("spec", "gateways"), ["istio-system/Bad_Gw"],
     'spec.gateways[0]: invalid value "istio-system/Bad_Gw": invalid gateway name "Bad_Gw"'),
    (("spec", "exportTo"), ["~"], "spec.exportTo[0]: '~' (export to no one) is allowed only in a ServiceEntry"),
])
def test_virtual_service_bad_inputs(path: tuple[Any, ...], value: Any, expected: str | None) -> None:
    doc = edit(REVIEWS_80_20, path, value)
    if path[-1] == "mirrors":  # mirror and mirrors together
        doc = edit(doc, (*HTTP0, "mirror"), {"host": "a"})
        expected = "spec.http[0].mirrors: only one of mirror or mirrors may be set"
    assert only_problem(parse_virtual_service, doc).startswith(f"r.yaml: {expected}")


@pytest.mark.parametrize(("spec", "expected"), [
    ({"gateways": ["mesh"], "http": [{"route": [{"destination": {"host": "a"}}]}]},
     "spec.gateways: a delegate VirtualService (no hosts) must have no gateways"),
    ({"hosts": ["a"], "tcp": [{"match": [{"port": 0}], "route": [{"destination": {"host": "a"}}]}]},
     "spec.tcp[0].match[0].port: must be between 1 and 65535, inclusive, got 0"),
    ({"hosts": ["a"], "tcp": [{"match": [{"port": 9000}]}]}, "spec.tcp[0].route: required (at least one destination)"),
    ({"hosts": ["a"], "tcp": [{"route": [{"destination": {"host": "a"}, "weight": 0},
                                         {"destination": {"host": "b"}, "weight": 0}]}]},
     "spec.tcp[0].route: the destinations' weights add up to 0: no destination would get traffic"),
    ({"hosts": ["a"], "tcp": [{"match": [{"destinationSubnets": ["10.0.0.0/33"]}],
                               "route": [{"destination": {"host": "a"}}]}]},
     'spec.tcp[0].match[0].destinationSubnets[0]: invalid value "10.0.0.0/33": must be an IP address or a CIDR '
     "block"),
    ({"hosts": ["*.bookinfo.com"], "gateways": ["gw"], "tls": [{"match": [{"sniHosts": ["login.example.com"]}],
                                                                 "route": [{"destination": {"host": "a"}}]}]},
     'spec.tls[0].match[0].sniHosts[0]: "login.example.com" is not covered by any of the VirtualService\'s hosts'),
    ({"hosts": ["a"], "gateways": ["gw"],
      "tls": [{"match": [{"port": 443}], "route": [{"destination": {"host": "a"}}]}]},
     "spec.tls[0].match[0].sniHosts: required (at least one SNI host)"),
    ({"hosts": ["a"], "http": [{"directResponse": {"status": 503}, "fault": {"abort": {"httpStatus": 500}}}]},
     "spec.http[0].fault: fault injection cannot be combined with directResponse"),
    ({"hosts": ["a"], "http": [{"redirect": {"redirectCode": 302}}]},
     "spec.http[0].redirect: must set uri, authority, scheme or port"),
    ({"hosts": ["a"], "http": [{"redirect": {"url": "/v2"}}]},
     'spec.http[0].redirect.url: unknown field (did you mean "uri"?)'),
    ({"hosts": ["a", "10.0.0.1"], "http": [{"match": [{"queryParams": {"v": {"regex": "[0-9"}}}],
                                            "route": [{"destination": {"host": "a"}}]}]},
     'spec.http[0].match[0].queryParams.v.regex: invalid regex: unterminated character set at position 0'),
])
def test_virtual_service_rules(spec: dict[str, Any], expected: str) -> None:
    assert only_problem(parse_virtual_service, edit(REVIEWS_80_20, ("spec",), spec)) == f"r.yaml: {expected}"


def test_virtual_service_delegate_and_direct_response() -> None:
    delegate = parse_virtual_service(edit(REVIEWS_80_20, ("spec", "hosts"), DELETE))
    assert delegate.spec.hosts == ()
    root = edit(REVIEWS_80_20, (*HTTP0,), {"delegate": {"name": "reviews-delegate", "namespace": "bookinfo"}})
    assert parse_virtual_service(root).spec.http[0].delegate == {"name": "reviews-delegate", "namespace": "bookinfo"}
    direct = edit(REVIEWS_80_20, (*HTTP0,), {"directResponse": {"status": 503, "body": {"string": "unavailable"}}})
    assert parse_virtual_service(direct).spec.http[0].direct_response == {
        "status": 503, "body": {"string": "unavailable"}}


def test_virtual_service_every_served_version() -> None:
    for version in ("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"):
        assert parse_virtual_service(edit(REVIEWS_80_20, ("apiVersion",), version)).api_version == version
    assert only_problem(parse_virtual_service, edit(REVIEWS_80_20, ("apiVersion",), "networking.istio.io/v2")) == (
        'r.yaml: apiVersion: expected one of "networking.istio.io/v1", "networking.istio.io/v1beta1", '
        '"networking.istio.io/v1alpha3", got string "networking.istio.io/v2"')


# --- PeerAuthentication --------------------------------------------------------------------

MESH_STRICT = load("""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
""")
FINANCE = load("""
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: finance
  namespace: foo
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
""")


def test_peer_authentication_docs_mesh_wide_strict() -> None:
    policy = parse_peer_authentication(MESH_STRICT, "mesh.yaml")
    assert isinstance(policy, PeerAuthentication)
    assert (policy.metadata.namespace, policy.metadata.name) == ("istio-system", "default")
    assert (policy.spec.selector, policy.spec.mtls_mode, dict(policy.spec.port_level_mtls)) == (None, "STRICT", {})


def test_peer_authentication_docs_workload_with_port_level_mtls() -> None:
    policy = parse_peer_authentication(FINANCE)
    assert policy.spec.selector == {"app": "finance"}
    assert policy.spec.port_level_mtls == {8080: "DISABLE"}
    as_json = edit(FINANCE, ("spec", "portLevelMtls"), {"8080": {"mode": "PERMISSIVE"}, "9090": {}})
    assert parse_peer_authentication(as_json).spec.port_level_mtls == {8080: "PERMISSIVE", 9090: "UNSET"}


def test_peer_authentication_without_spec_sets_nothing() -> None:
    policy = parse_peer_authentication(edit(MESH_STRICT, ("spec",), DELETE))
    assert policy.spec.mtls_mode == "UNSET"
    permissive = parse_peer_authentication(edit(MESH_STRICT, ("spec", "mtls", "mode"), "PERMISSIVE"))
    assert permissive.spec.mtls_mode == "PERMISSIVE"


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("spec", "mtls", "mode"), "strict",
     'spec.mtls.mode: unsupported value "strict" (expected one of "UNSET", "DISABLE", "PERMISSIVE", "STRICT")'),
    (("spec", "mtl"), {}, 'spec.mtl: unknown field (did you mean "mtls"?)'),
    (("spec", "selector"), DELETE,
     "spec.portLevelMtls: needs spec.selector.matchLabels: a namespace- or mesh-wide policy cannot set port-level "
     "mTLS"),
    (("spec", "portLevelMtls"), {}, "spec.portLevelMtls: must have at least one port when set"),
    (("spec", "portLevelMtls"), {"http": {"mode": "DISABLE"}},
     'spec.portLevelMtls.http: keys must be port numbers, got string "http"'),
    (("spec", "portLevelMtls"), {0: {"mode": "DISABLE"}},
     "spec.portLevelMtls.0: port must be between 1 and 65535, inclusive, got 0"),
    (("spec", "portLevelMtls"), {8080: {"mode": "OFF"}}, 'spec.portLevelMtls.8080.mode: unsupported value "OFF"'),
    (("spec", "portLevelMtls"), {8080: {"mdoe": "DISABLE"}},
     'spec.portLevelMtls.8080.mdoe: unknown field (did you mean "mode"?)'),
    (("spec", "portLevelMtls"), {8080: {"mode": "DISABLE"}, "8080": {"mode": "STRICT"}},
     "spec.portLevelMtls.8080: duplicate port 8080"),
    (("spec", "portLevelMtls"), ["8080"],
     "spec.portLevelMtls: expected a mapping (port number -> MutualTLS), got a list"),
    (("spec", "selector", "matchLabels"), {"app": "*"}, 'spec.selector.matchLabels.app: invalid value "*"'),
    (("spec", "selector", "matchlabels"), {}, 'spec.selector.matchlabels: unknown field (did you mean "matchLabels"?)'),
    (("apiVersion",), "security.istio.io/v1alpha1",
     'apiVersion: expected one of "security.istio.io/v1", "security.istio.io/v1beta1", got string'),
])
def test_peer_authentication_bad_inputs(path: tuple[Any, ...], value: Any, expected: str) -> None:
    assert only_problem(parse_peer_authentication, edit(FINANCE, path, value)).startswith(f"r.yaml: {expected}")


# --- every kind: shape of values and errors -----------------------------------------------

EXAMPLES: list[tuple[Parser, dict[str, Any]]] = [
    (parse_service, REVIEWS_SERVICE), (parse_namespace, NAMESPACE), (parse_service_account, SERVICE_ACCOUNT),
    (parse_service_entry, EXTERNAL_HTTPS), (parse_destination_rule, REVIEWS_RULE),
    (parse_virtual_service, REVIEWS_80_20), (parse_peer_authentication, FINANCE),
]


@pytest.mark.parametrize(("parse", "doc"), EXAMPLES)
def test_values_are_frozen_raw_is_a_copy_and_input_is_untouched(parse: Parser, doc: dict[str, Any]) -> None:
    before = copy.deepcopy(doc)
    resource = parse(doc, "r.yaml")
    assert doc == before
    assert resource.raw == doc
    assert resource.raw is not doc
    assert resource.kind == doc["kind"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        resource.metadata = None
    assert parse(copy.deepcopy(doc), "r.yaml") == resource


@pytest.mark.parametrize(("parse", "doc"), EXAMPLES)
def test_not_a_mapping_and_another_kind(parse: Parser, doc: dict[str, Any]) -> None:
    kind = doc["kind"]
    assert only_problem(parse, ["x"]) == f"r.yaml: expected a {kind} manifest (a mapping), got a list"
    other = edit(doc, ("kind",), "ConfigMap")
    assert only_problem(parse, other) == f'r.yaml: kind: expected "{kind}", got string "ConfigMap"'


@pytest.mark.parametrize(("parse", "doc"), EXAMPLES)
def test_metadata_is_checked_like_a_pods(parse: Parser, doc: dict[str, Any]) -> None:
    assert only_problem(parse, edit(doc, ("metadata",), DELETE)) == (
        f"r.yaml: metadata: required (a {doc['kind']} needs metadata.name)")
    assert only_problem(parse, edit(doc, ("metadata", "lables"), {})) == (
        'r.yaml: metadata.lables: unknown field (did you mean "labels"?)')
    bad_label = edit(doc, ("metadata", "labels"), {"app": "no spaces"})
    assert only_problem(parse, bad_label).startswith('r.yaml: metadata.labels.app: invalid value "no spaces"')


def test_unknown_istio_field_without_a_close_match() -> None:
    doc = edit(REVIEWS_80_20, (*HTTP0, "zzz"), 1)
    assert only_problem(parse_virtual_service, doc) == (
        "r.yaml: spec.http[0].zzz: unknown field (not a field of an Istio HTTPRoute)")


def test_every_problem_is_reported_once_in_order() -> None:
    doc = edit(REVIEWS_80_20, (*ROUTE0, "weight"), -5)
    doc = edit(doc, (*HTTP0, "timeout"), "soon")
    doc = edit(doc, ("spec", "hosts"), ["*"])
    with pytest.raises(ManifestError) as info:
        parse_virtual_service(doc, "r.yaml")
    assert [e.path for e in info.value.errors] == ["spec.http[0].timeout", "spec.hosts[0]",
                                                   "spec.http[0].route[0].weight"]
    assert str(info.value).endswith("(and 2 more problems)")
    assert info.value.document is None


@pytest.mark.parametrize(("first", "second"), [(90, 20), (1, 1), (33, 33), (0, 5)])
def test_weights_are_relative_as_in_current_istio(first: int, second: int) -> None:
    doc = edit(edit(REVIEWS_80_20, (*ROUTE0, "weight"), first), ("spec", "http", 0, "route", 1, "weight"), second)
    routes = parse_virtual_service(doc).spec.http[0].route
    assert [r.weight for r in routes] == [first, second]


def test_a_missing_weight_is_zero_next_to_others() -> None:
    doc = edit(REVIEWS_80_20, (*ROUTE0, "weight"), DELETE)
    assert [r.weight for r in parse_virtual_service(doc).spec.http[0].route] == [0, 20]
