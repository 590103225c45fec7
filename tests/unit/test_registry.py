"""weir.control.registry: Services, ServiceEntries and pods -> mesh services, addresses, endpoints, DNS tables."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from weir.api.load import load_documents
from weir.control.registry import (
    AUTO_ALLOCATE_CIDR,
    DEFAULT_SERVICE_CIDR,
    Registry,
    Snapshot,
    build_registry,
    port_protocol,
)


def pod(name: str, ip: str | None, labels: dict[str, str], ports: tuple[tuple[str, int], ...] = (), *,
        ns: str = "default", phase: str = "Running") -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "app", "command": ["/app"]}
    if ports:
        container["ports"] = [{"name": n, "containerPort": p} for n, p in ports]
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"serviceAccountName": "sa-" + name, "containers": [container]}, "status": status}


def service(name: str, selector: dict[str, str], ports: list[dict[str, Any]], ns: str = "default",
            **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": selector, "ports": ports, **spec}}


def entry(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def registry(*docs: dict[str, Any]) -> Registry:
    return build_registry(Snapshot.of(load_documents(json.dumps(list(docs)), "test", json.loads)))


def addresses(reg: Registry, host: str, port: int) -> list[tuple[str, int]]:
    svc = reg.service(host)
    assert svc is not None, host
    return [(e.address, e.port) for e in svc.endpoints[port]]


def test_endpoints_are_running_pods_the_selector_matches() -> None:
    reg = registry(
        service("web", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": 8080}]),
        pod("web-b", "10.244.0.12", {"app": "web"}),
        pod("web-a", "10.244.0.11", {"app": "web", "extra": "x"}),
        pod("web-pending", None, {"app": "web"}),
        pod("web-done", "10.244.0.13", {"app": "web"}, phase="Succeeded"),
        pod("other", "10.244.0.14", {"app": "other"}),
        pod("web-elsewhere", "10.244.0.15", {"app": "web"}, ns="prod"),
    )
    assert addresses(reg, "web.default.svc.cluster.local", 80) == [("10.244.0.11", 8080), ("10.244.0.12", 8080)]
    svc = reg.service("web.default.svc.cluster.local")
    assert svc is not None
    assert svc.endpoints[80][0].service_account == "sa-web-a"
    assert svc.endpoints[80][0].tls_mode == "disabled"


def test_named_target_ports_resolve_per_pod() -> None:
    reg = registry(
        service("web", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": "web"}]),
        pod("web-a", "10.244.0.11", {"app": "web"}, (("web", 8080),)),
        pod("web-b", "10.244.0.12", {"app": "web"}, (("web", 9090),)),
        pod("web-c", "10.244.0.13", {"app": "web"}, (("other", 7070),)),
    )
    assert addresses(reg, "web.default.svc.cluster.local", 80) == [("10.244.0.11", 8080), ("10.244.0.12", 9090)]


def test_cluster_ip_is_honoured_and_others_are_allocated_stably() -> None:
    first = registry(service("a", {"app": "a"}, [{"port": 80}]),
                     service("b", {"app": "b"}, [{"port": 80}], clusterIP="10.96.0.77"))
    more = registry(service("a", {"app": "a"}, [{"port": 80}]),
                    service("b", {"app": "b"}, [{"port": 80}], clusterIP="10.96.0.77"),
                    service("c", {"app": "c"}, [{"port": 80}]), service("z", {}, [{"port": 80}], ns="zz"))
    vip = {s.hostname: s.vip for s in first.services}
    assert vip["b.default.svc.cluster.local"] == ipaddress.ip_address("10.96.0.77")
    assert vip["a.default.svc.cluster.local"] in DEFAULT_SERVICE_CIDR
    assert all(vip[s.hostname] == s.vip for s in more.services if s.hostname in vip)  # adding services moves none
    vips = [s.vip for s in more.services]
    assert len(set(vips)) == len(vips)


def test_allocation_avoids_a_taken_cluster_ip() -> None:
    alone = registry(service("a", {"app": "a"}, [{"port": 80}]))
    taken = alone.services[0].vip
    reg = registry(service("a", {"app": "a"}, [{"port": 80}]),
                   service("b", {"app": "b"}, [{"port": 80}], clusterIP=str(taken)))
    assert reg.dns.addresses["b.default.svc.cluster.local"] == (str(taken),)
    assert reg.dns.addresses["a.default.svc.cluster.local"] != (str(taken),)


def test_custom_service_cidr() -> None:
    docs = load_documents(json.dumps([service("a", {"app": "a"}, [{"port": 80}])]), "t", json.loads)
    reg = build_registry(Snapshot.of(docs), service_cidr=ipaddress.ip_network("172.20.0.0/24"))
    assert reg.services[0].vip in ipaddress.ip_network("172.20.0.0/24")


def test_headless_service_resolves_to_pod_addresses() -> None:
    reg = registry(service("db", {"app": "db"}, [{"port": 5432}], clusterIP="None"),
                   pod("db-1", "10.244.0.21", {"app": "db"}), pod("db-0", "10.244.0.20", {"app": "db"}))
    assert reg.services[0].vip is None
    assert reg.dns.addresses == {"db.default.svc.cluster.local": ("10.244.0.20", "10.244.0.21")}


def test_external_name_is_an_alias_without_address() -> None:
    reg = registry({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext", "namespace": "default"},
                    "spec": {"type": "ExternalName", "externalName": "api.example.com."}})
    svc = reg.services[0]
    assert (svc.vip, svc.resolution, svc.alias) == (None, "ALIAS", "api.example.com")
    assert reg.dns.aliases == {"ext.default.svc.cluster.local": "api.example.com"}
    assert reg.dns.addresses == {}


def test_service_entry_without_addresses_is_auto_allocated() -> None:
    reg = registry(entry("ext", hosts=["b.example.com", "a.example.com"], resolution="DNS",
                         ports=[{"name": "https", "number": 443, "protocol": "TLS"}]),
                   entry("wild", hosts=["*.wild.example.com"], resolution="NONE",
                         ports=[{"name": "https", "number": 443, "protocol": "TLS"}]))
    a, b = reg.dns.addresses["a.example.com"], reg.dns.addresses["b.example.com"]
    assert ipaddress.ip_address(a[0]) in AUTO_ALLOCATE_CIDR
    assert ipaddress.ip_address(b[0]) in AUTO_ALLOCATE_CIDR
    assert a != b
    assert not a[0].endswith((".0", ".255"))
    assert "*.wild.example.com" not in reg.dns.addresses
    assert addresses(reg, "a.example.com", 443) == [("a.example.com", 443)]  # DNS: the host itself
    svc = reg.service("a.example.com")
    assert svc is not None
    assert (svc.mesh_internal, svc.resolution, svc.ports[0].protocol) == (False, "DNS", "TLS")


def test_service_entry_addresses_and_static_endpoints() -> None:
    reg = registry(entry("db", hosts=["db.internal"], addresses=["192.168.7.7"], resolution="STATIC",
                         location="MESH_INTERNAL",
                         ports=[{"name": "tcp", "number": 5432, "targetPort": 15432}],
                         endpoints=[{"address": "10.1.0.2", "ports": {"tcp": 6432}}, {"address": "10.1.0.1"}]))
    assert reg.dns.addresses == {"db.internal": ("192.168.7.7",)}
    assert addresses(reg, "db.internal", 5432) == [("10.1.0.1", 15432), ("10.1.0.2", 6432)]


def test_service_entry_workload_selector_selects_pods() -> None:
    reg = registry(entry("vm", hosts=["vm.internal"], resolution="STATIC", location="MESH_INTERNAL",
                         workloadSelector={"labels": {"app": "vm"}}, ports=[{"name": "http", "number": 80}]),
                   pod("vm-1", "10.244.0.50", {"app": "vm", "security.istio.io/tlsMode": "istio"}))
    svc = reg.service("vm.internal")
    assert svc is not None
    assert [(e.address, e.port, e.tls_mode) for e in svc.endpoints[80]] == [("10.244.0.50", 80, "istio")]


def test_a_service_wins_over_a_service_entry_for_the_same_host() -> None:
    reg = registry(service("web", {"app": "web"}, [{"port": 80}]),
                   entry("web", hosts=["web.default.svc.cluster.local"], ports=[{"name": "http", "number": 80}]))
    assert [(s.hostname, s.kind) for s in reg.services] == [("web.default.svc.cluster.local", "Service")]


@pytest.mark.parametrize(("name", "app_protocol", "expected"), [
    ("http", "", "HTTP"), ("http-web", "", "HTTP"), ("http2", "", "HTTP2"), ("grpc-api", "", "GRPC"),
    ("grpc-web", "", "GRPC"), ("tcp-db", "", "TCP"), ("mysql", "", "MySQL"), ("web", "", "TCP"), ("", "", "TCP"),
    ("web", "http", "HTTP"), ("tcp", "grpc", "GRPC"), ("httpx", "", "TCP"),
])
def test_protocol_from_app_protocol_or_port_name(name: str, app_protocol: str, expected: str) -> None:
    assert port_protocol(name, app_protocol) == expected


def test_ports_carry_protocols() -> None:
    reg = registry(service("api", {"app": "api"}, [{"name": "http-web", "port": 80},
                                                   {"name": "db", "port": 5432, "appProtocol": "tcp"},
                                                   {"name": "rpc", "port": 9000, "appProtocol": "grpc"}]))
    assert [(p.port, p.protocol) for p in reg.services[0].ports] == [(80, "HTTP"), (5432, "TCP"), (9000, "GRPC")]


def test_resolve_short_names() -> None:
    reg = registry(service("reviews", {"app": "reviews"}, [{"port": 80}], ns="shop"))
    assert reg.resolve("reviews", "shop") == "reviews.shop.svc.cluster.local"
    assert reg.resolve("reviews.shop", "default") == "reviews.shop.svc.cluster.local"
    assert reg.resolve("api.example.com", "shop") == "api.example.com"


def test_dns_table_lists_every_name_sorted() -> None:
    reg = registry(service("b", {"app": "b"}, [{"port": 80}], clusterIP="10.96.0.20"),
                   service("a", {"app": "a"}, [{"port": 80}], clusterIP="10.96.0.10"),
                   entry("e", hosts=["x.example.com"], addresses=["240.240.9.9"], ports=[{"name": "t", "number": 1}]))
    assert reg.dns.to_json() == {"addresses": {"a.default.svc.cluster.local": ["10.96.0.10"],
                                               "b.default.svc.cluster.local": ["10.96.0.20"],
                                               "x.example.com": ["240.240.9.9"]},
                                 "aliases": {}}
