"""Envoy bootstrap: the pure renderer, its expected-output file, and the real Envoy's verdict.

``tests/golden/bootstrap/<scenario>.json`` pins the whole bootstrap of each named scenario;
``WEIR_REGENERATE=1 pytest tests/unit/test_bootstrap.py`` rewrites them (review the diff).
Every scenario is also handed to the real Envoy (``envoy --mode validate``), which must accept it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import envoy_or_skip
from weir.agent.bootstrap import (
    BootstrapError,
    BootstrapParams,
    TcpAddress,
    UnixAddress,
    node_id,
    parse_address,
    render_bootstrap,
    service_cluster,
)

EXPECTED = Path(__file__).resolve().parents[1] / "golden" / "bootstrap"
REGENERATE = os.environ.get("WEIR_REGENERATE") == "1"

SIDECAR = BootstrapParams(
    pod_name="reviews-v1-5d9c7b8f4-x2k9p",
    namespace="bookinfo",
    pod_ips=("10.88.0.12",),
    service_account="bookinfo-reviews",
    labels={"app": "reviews", "version": "v1", "pod-template-hash": "5d9c7b8f4"},
    xds_address=TcpAddress("istiod.istio-system.svc", 15010),
    node_name="node-1",
)

SCENARIOS: dict[str, BootstrapParams] = {
    "sidecar": SIDECAR,
    "sidecar-uds-xds": BootstrapParams(
        pod_name="ratings-v1-0", namespace="bookinfo", pod_ips=("10.88.0.13", "fd00::13"),
        labels={"service.istio.io/canonical-name": "ratings", "app": "ratings-app"},
        xds_address=UnixAddress("./etc/istio/proxy/XDS"), sds_path="/var/run/weir/sds.sock",
        status_address=TcpAddress("127.0.0.1", 25020)),
}


def as_text(bootstrap: dict[str, Any]) -> str:
    return json.dumps(bootstrap, indent=2) + "\n"


# ---- the expected-output files ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_bootstrap_matches_expected_file(name: str) -> None:
    path = EXPECTED / f"{name}.json"
    text = as_text(render_bootstrap(SCENARIOS[name]))
    if REGENERATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with WEIR_REGENERATE=1 to create it"
    assert text == path.read_text(encoding="utf-8"), f"{path} differs: review, then WEIR_REGENERATE=1"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_real_envoy_accepts_the_bootstrap(name: str, tmp_path: Path) -> None:
    config = tmp_path / f"{name}.json"
    config.write_text(as_text(render_bootstrap(SCENARIOS[name])), encoding="utf-8")
    done = subprocess.run([str(envoy_or_skip()), "--mode", "validate", "-c", str(config), "-l", "warning"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"configuration '{config}' OK" in done.stdout + done.stderr


def test_rendering_is_deterministic_and_pure() -> None:
    assert as_text(render_bootstrap(SIDECAR)) == as_text(render_bootstrap(SIDECAR))
    first = render_bootstrap(SIDECAR)
    first["node"]["metadata"]["LABELS"]["app"] = "changed"
    assert SIDECAR.labels["app"] == "reviews"


# ---- the node -----------------------------------------------------------------------------------


def test_node_is_istios_sidecar_node() -> None:
    node = render_bootstrap(SIDECAR)["node"]
    assert node["id"] == "sidecar~10.88.0.12~reviews-v1-5d9c7b8f4-x2k9p.bookinfo~bookinfo.svc.cluster.local"
    assert node["cluster"] == "reviews.bookinfo"
    meta = node["metadata"]
    assert meta["NAMESPACE"] == "bookinfo"
    assert meta["INSTANCE_IPS"] == "10.88.0.12"
    assert meta["SERVICE_ACCOUNT"] == "bookinfo-reviews"
    assert meta["LABELS"] == {"app": "reviews", "pod-template-hash": "5d9c7b8f4", "version": "v1"}
    assert meta["ISTIO_VERSION"]
    assert meta["NODE_NAME"] == "node-1"


@pytest.mark.parametrize(("labels", "app", "cluster"), [
    ({"service.istio.io/canonical-name": "canon", "app.kubernetes.io/name": "k8s", "app": "a"}, None, "canon.ns"),
    ({"app.kubernetes.io/name": "k8s", "app": "a"}, None, "k8s.ns"),
    ({"app": "a"}, None, "a.ns"),
    ({}, None, "pod-0.ns"),
    ({"app": "a"}, "explicit", "explicit.ns"),
])
def test_service_cluster_follows_istios_canonical_name(labels: dict[str, str], app: str | None, cluster: str) -> None:
    params = BootstrapParams(pod_name="pod-0", namespace="ns", pod_ips=("10.0.0.1",), labels=labels, app=app)
    assert service_cluster(params) == cluster


def test_node_id_uses_the_first_ip_and_the_dns_domain() -> None:
    params = BootstrapParams(pod_name="p", namespace="n", pod_ips=("fd00::1", "10.0.0.1"), dns_domain="corp.example")
    assert node_id(params) == "sidecar~fd00::1~p.n~n.svc.corp.example"
    assert render_bootstrap(params)["node"]["metadata"]["INSTANCE_IPS"] == "fd00::1,10.0.0.1"


# ---- clusters and listeners ---------------------------------------------------------------------


def clusters(bootstrap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}


def endpoint(cluster: dict[str, Any]) -> dict[str, Any]:
    address: dict[str, Any] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    return address


def test_ads_over_grpc_to_xds_grpc() -> None:
    dynamic = render_bootstrap(SIDECAR)["dynamic_resources"]
    assert dynamic["ads_config"] == {
        "api_type": "GRPC", "transport_api_version": "V3", "set_node_on_first_message_only": True,
        "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}
    assert dynamic["lds_config"]["ads"] == {}
    assert dynamic["cds_config"]["ads"] == {}


@pytest.mark.parametrize(("address", "kind", "expected"), [
    (TcpAddress("istiod.istio-system.svc", 15010), "STRICT_DNS",
     {"socket_address": {"protocol": "TCP", "address": "istiod.istio-system.svc", "port_value": 15010}}),
    (TcpAddress("10.96.0.10", 15010), "STATIC",
     {"socket_address": {"protocol": "TCP", "address": "10.96.0.10", "port_value": 15010}}),
    (UnixAddress("/run/weir/xds.sock"), "STATIC", {"pipe": {"path": "/run/weir/xds.sock"}}),
])
def test_xds_cluster_over_tcp_or_unix_socket(address: TcpAddress | UnixAddress, kind: str,
                                             expected: dict[str, Any]) -> None:
    params = BootstrapParams(pod_name="p", namespace="n", pod_ips=("10.0.0.1",), xds_address=address)
    xds = clusters(render_bootstrap(params))["xds-grpc"]
    assert xds["type"] == kind
    assert endpoint(xds) == expected
    assert "http2_protocol_options" in json.dumps(xds)  # gRPC needs HTTP/2


def test_sds_cluster_on_the_configured_socket() -> None:
    default = clusters(render_bootstrap(SIDECAR))["sds-grpc"]
    assert endpoint(default) == {"pipe": {"path": "./var/run/secrets/workload-spiffe-uds/socket"}}
    other = clusters(render_bootstrap(SCENARIOS["sidecar-uds-xds"]))["sds-grpc"]
    assert endpoint(other) == {"pipe": {"path": "/var/run/weir/sds.sock"}}


def listener_route(bootstrap: dict[str, Any], port: int) -> tuple[str, str]:
    (listener,) = [item for item in bootstrap["static_resources"]["listeners"]
                   if item["address"]["socket_address"]["port_value"] == port]
    assert listener["address"]["socket_address"]["address"] == "0.0.0.0"
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (route,) = manager["route_config"]["virtual_hosts"][0]["routes"]
    return route["match"]["prefix"], route["route"]["cluster"]


def test_prometheus_listener_goes_to_the_admin_port() -> None:
    bootstrap = render_bootstrap(SIDECAR)
    assert listener_route(bootstrap, 15090) == ("/stats/prometheus", "prometheus_stats")
    assert endpoint(clusters(bootstrap)["prometheus_stats"]) == endpoint({"load_assignment": {"endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": bootstrap["admin"]["address"]}}]}]}})
    assert bootstrap["admin"]["address"]["socket_address"] == {
        "protocol": "TCP", "address": "127.0.0.1", "port_value": 15000}


def test_readiness_listener_goes_to_the_status_server() -> None:
    bootstrap = render_bootstrap(SIDECAR)
    assert listener_route(bootstrap, 15021) == ("/healthz/ready", "agent")
    assert endpoint(clusters(bootstrap)["agent"])["socket_address"]["port_value"] == 15020
    moved = render_bootstrap(SCENARIOS["sidecar-uds-xds"])
    assert endpoint(clusters(moved)["agent"])["socket_address"]["port_value"] == 25020


def test_runtime_layers_and_overload_manager() -> None:
    bootstrap = render_bootstrap(SIDECAR)
    layers = bootstrap["layered_runtime"]["layers"]
    assert [next(k for k in layer if k != "name") for layer in layers] == ["static_layer", "admin_layer"]
    (monitor,) = bootstrap["overload_manager"]["resource_monitors"]
    assert monitor["name"] == "envoy.resource_monitors.global_downstream_max_connections"
    assert bootstrap["stats_config"]["use_all_default_tags"] is False


# ---- parsing at the edge --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "address"), [
    ("istiod.istio-system.svc:15012", TcpAddress("istiod.istio-system.svc", 15012)),
    ("10.0.0.1:15010", TcpAddress("10.0.0.1", 15010)),
    ("[fd00::1]:15010", TcpAddress("fd00::1", 15010)),
    ("unix:///etc/istio/proxy/XDS", UnixAddress("/etc/istio/proxy/XDS")),
    ("unix:./etc/istio/proxy/XDS", UnixAddress("./etc/istio/proxy/XDS")),
])
def test_parse_address(text: str, address: TcpAddress | UnixAddress) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize(("text", "message"), [
    ("istiod", "is not host:port"),
    ("istiod:http", "is not host:port"),
    ("fd00::1:15010", "in brackets"),
    ("istiod:0", "port 0"),
    ("istiod:70000", "port 70000"),
    ("unix://", "empty UNIX socket path"),
])
def test_parse_address_errors_name_the_value(text: str, message: str) -> None:
    with pytest.raises(BootstrapError, match=message):
        parse_address(text, "xds_address")


@pytest.mark.parametrize(("changes", "message"), [
    ({"pod_ips": ()}, "at least one pod IP"),
    ({"pod_ips": ("10.0.0.300",)}, "'10.0.0.300' is not an IP"),
    ({"namespace": ""}, "namespace: must not be empty"),
    ({"admin_port": 0}, "admin_port: 0"),
    ({"status_address": TcpAddress("localhost", 15020)}, "status_address: 'localhost' must be an IP"),
    ({"sds_path": ""}, "sds_path"),
])
def test_params_are_checked_at_construction(changes: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"pod_name": "p", "namespace": "n", "pod_ips": ("10.0.0.1",)}
    with pytest.raises(BootstrapError, match=message):
        BootstrapParams(**{**base, **changes})
