"""bench/control_scale*.py, the pure parts: the synthetic mesh through weir's own loader and
registry, the simulated proxy's SotW walk (a transcript against a recording call), /proc
parsing and CPU windows, the summaries and the extrapolation to istiod's size, and the
profile's what-ifs (which must give exactly compile_proxy's output)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, cast

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import control_scale  # noqa: E402
import control_scale_client as client  # noqa: E402
import control_scale_mesh as mesh  # noqa: E402
import control_scale_procs as procs  # noqa: E402
import control_scale_profile as profile  # noqa: E402
import control_scale_report as report  # noqa: E402
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402

from weir.agent.bootstrap import BootstrapParams, node_metadata  # noqa: E402
from weir.api.load import load_documents  # noqa: E402
from weir.control.compile import compile_proxy  # noqa: E402
from weir.control.registry import Snapshot, build_registry  # noqa: E402
from weir.control.server import proxy_info  # noqa: E402
from weir.control.store import ConfigStore  # noqa: E402
from weir.control.xds_convert import CLUSTER, LISTENER, ROUTE, pack  # noqa: E402


def built(m: mesh.Mesh) -> tuple[Snapshot, Any]:
    snapshot = Snapshot.of(load_documents(json.dumps(m.manifests()), "test", json.loads))
    return snapshot, build_registry(snapshot)


# --- the mesh -------------------------------------------------------------------------------------


def test_mesh_loads_and_every_pod_is_an_endpoint_of_its_service() -> None:
    m = mesh.Mesh(60, 120)
    snapshot, registry = built(m)
    assert len(snapshot.services) == 60
    assert len(snapshot.pods) == 120
    assert len(snapshot.virtual_services) == len(snapshot.destination_rules) == 2  # one per namespace
    assert m.namespaces == ["bench-00", "bench-01"]
    svc = registry.service("svc-0051.bench-01.svc.cluster.local")
    assert svc is not None
    assert [(e.address, e.port, e.name) for e in svc.endpoints[80]] == [
        ("10.200.0.52", 8080, "pod-0051"), ("10.200.0.112", 8080, "pod-0111")]


def test_proxy_introduces_itself_as_the_sidecar_agent_would() -> None:
    m = mesh.Mesh(3, 6)
    p = m.proxy(4)
    params = BootstrapParams(pod_name="pod-0004", namespace="bench-00", pod_ips=("10.200.0.5",),
                             labels=mesh.pod_labels(1, 4))
    assert p.metadata == node_metadata(params)
    assert p.node_id == "sidecar~10.200.0.5~pod-0004.bench-00~bench-00.svc.cluster.local"
    info = proxy_info(p.metadata)
    assert (info.namespace, info.ip, info.labels["app"]) == ("bench-00", "10.200.0.5", "svc-0001")
    snapshot, registry = built(m)
    inbound = compile_proxy(snapshot, registry, info).listeners[-1]
    ports = {c["filter_chain_match"].get("destination_port") for c in inbound["filter_chains"]}
    assert ports == {8080, None}  # the pod's port, and the passthrough's TLS chain


def test_changes_load_and_each_one_changes_the_store(tmp_path: Path) -> None:
    m = mesh.Mesh(4, 8)
    store = ConfigStore(str(tmp_path / "control.db"))
    store.apply(load_documents(json.dumps(m.manifests()), "mesh", json.loads))
    for k in range(4):
        for kind, make in mesh.CHANGES.items():
            before = store.version
            (applied,) = store.apply(load_documents(json.dumps(make(k)), kind, json.loads))
            assert applied.action in ("created", "configured")
            assert store.version == before + 1


@pytest.mark.parametrize(("services", "proxies"), [(0, 1), (1, 0), (1, 70_000)])
def test_mesh_refuses_impossible_sizes(services: int, proxies: int) -> None:
    with pytest.raises(ValueError, match=r"proxies|service"):
        mesh.Mesh(services, proxies)


@pytest.mark.parametrize("text", ["1000", "10:x", "0:5", "5:", "a:b,1:2"])
def test_parse_sizes_names_the_bad_size(text: str) -> None:
    with pytest.raises(Exception, match="SERVICES:PROXIES"):
        control_scale.parse_sizes(text)
    assert control_scale.parse_sizes("50:100, 1000:2000") == [(50, 100), (1000, 2000)]


# --- the simulated proxy --------------------------------------------------------------------------


class RecordingCall:
    def __init__(self) -> None:
        self.written: list[Any] = []

    async def write(self, request: Any) -> None:
        self.written.append(request)


def responses(m: mesh.Mesh, proxy: int, version: int) -> dict[str, Any]:
    snapshot, registry = built(m)
    packed = pack(compile_proxy(snapshot, registry, proxy_info(m.proxy(proxy).metadata)))
    return {url: discovery_pb2.DiscoveryResponse(version_info=str(version), type_url=url, nonce=f"n{version}{url[-4:]}",
                                                 resources=[p.resource for p in packed[url]])
            for url in (CLUSTER, LISTENER, ROUTE)}


def test_route_names_come_from_the_listeners_connection_managers() -> None:
    got = client.route_names(responses(mesh.Mesh(3, 3), 0, 1)[LISTENER])
    assert got == {f"svc-000{i}.bench-00.svc.cluster.local:80" for i in range(3)}


def test_simulated_proxy_walks_cds_lds_rds_and_reports_when_synced() -> None:
    m = mesh.Mesh(2, 2)
    sim = client.SimProxy(0, m.proxy(0), cast(Any, None))
    call, out = RecordingCall(), client.Output()
    first = sim._request(CLUSTER, with_node=True)
    assert first.node.id == m.proxy(0).node_id
    assert first.node.metadata["NAMESPACE"] == "bench-00"
    v1 = responses(m, 0, 1)

    async def walk() -> None:
        await sim._on_response(call, v1[CLUSTER], out)
        assert [(r.type_url, r.response_nonce) for r in call.written] == [(CLUSTER, v1[CLUSTER].nonce), (LISTENER, "")]
        await sim._on_response(call, v1[LISTENER], out)
        rds = call.written[-1]
        assert (rds.type_url, rds.response_nonce) == (ROUTE, "")
        assert set(rds.resource_names) == client.route_names(v1[LISTENER])
        assert sim.synced_version() == 0  # no routes yet
        await sim._on_response(call, v1[ROUTE], out)
        ack = call.written[-1]
        assert (ack.type_url, ack.version_info, ack.response_nonce) == (ROUTE, "1", v1[ROUTE].nonce)
        assert set(ack.resource_names) == set(rds.resource_names)

        # version 2 adds a service: its new route name is asked for; synced only when it came
        bigger = mesh.Mesh(3, 2)
        v2 = responses(bigger, 0, 2)
        for url in (CLUSTER, LISTENER):
            await sim._on_response(call, v2[url], out)
        assert call.written[-1].type_url == ROUTE
        assert len(call.written[-1].resource_names) == 3
        old_routes = discovery_pb2.DiscoveryResponse(version_info="2", type_url=ROUTE, nonce="stale-names",
                                                     resources=v1[ROUTE].resources)
        await sim._on_response(call, old_routes, out)
        assert (sim.synced_version(), sim.reported) == (0, 1)  # ACKed version 2, but not every route yet
        await sim._on_response(call, v2[ROUTE], out)
        assert sim.synced_version() == 2

    asyncio.run(walk())
    events = [json.loads(line) for line in out._lines]
    assert [(e["p"], e["v"]) for e in events] == [(0, 1), (0, 2)]
    assert all(e["first"] <= e["synced"] for e in events)


# --- processes and sampling ------------------------------------------------------------------------


def test_proc_readers_see_this_process() -> None:
    assert procs.cpu_seconds(os.getpid()) > 0
    rss, hwm = procs.memory(os.getpid())
    assert 0 < rss <= hwm


def test_sampler_between_gives_cpu_and_the_busiest_second() -> None:
    sampler = procs.Sampler(os.getpid(), None)
    sampler.samples = [procs.Sample(t / 10, cpu, 0, 0, 0.0) for t, cpu in
                       enumerate([0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.15])]
    cpu, peak = sampler.between(0.0, 1.4)
    assert cpu == pytest.approx(1.15)
    assert peak == pytest.approx(1.0)


# --- summaries and the comparison -----------------------------------------------------------------


def phase(latencies: list[float], cpu: float) -> dict[str, Any]:
    return {"name": "x", "kind": "x", "version": 1, "latencies_s": latencies, "first_push_s": 0.5,
            "convergence_s": max(latencies), "control_cpu_s": cpu, "control_peak_cores": 1.0,
            "clients_cpu_s": 0.1, "reconnects": 0}


def size(services: int, proxies: int, per: float) -> dict[str, Any]:
    x = services * proxies * per
    return {"services": services, "proxies": proxies, "peak_rss_bytes": int(1e8 + 1e4 * services * proxies),
            "rss_ready_bytes": int(1e8), "phases": [phase([x / 2, x], x), phase([x, x * 1.01], x)]}


def test_summary_and_linear_extrapolation_to_istiods_size() -> None:
    res = report.build_results([size(10, 20, 1e-3), size(20, 40, 1e-3), size(40, 80, 1e-3)], {})
    s = res["summaries"][0]
    assert s["change_latency_s"]["n"] == 2
    assert s["change_convergence_s"]["max"] == pytest.approx(0.202)
    at = res["at_istiod_size"]
    assert at["how"].startswith("extrapolated")
    assert at["initial_convergence_s"] == pytest.approx(2000.0)
    assert at["control_peak_rss_bytes"] == pytest.approx(1e8 + 1e4 * 2e6)
    assert at["peak_rss_vs_istiod"] == pytest.approx((1e8 + 2e10) / 1.5e9)


def test_istiods_size_when_measured_is_not_extrapolated() -> None:
    res = report.build_results([size(10, 20, 1e-3), size(1000, 2000, 1e-6)], {})
    assert res["at_istiod_size"]["how"] == "measured"
    assert res["at_istiod_size"]["initial_convergence_s"] == pytest.approx(2.0)
    assert report.build_results([size(10, 20, 1e-3)], {})["at_istiod_size"] is None  # one size: no line


# --- the profile ----------------------------------------------------------------------------------


def test_profile_what_ifs_give_compile_proxys_output_and_hit_the_cache() -> None:
    p = profile.profile(60, 120, sample=4)
    assert p["what_if_namespace_and_pack_cache"]["identical_to_compile_proxy"] is True
    assert p["what_if_pack_cache"]["hits"] > p["what_if_pack_cache"]["misses"]
    clusters = 60 + 2 * 2 + 1 + 3  # a cluster per service, the 2 rules' subsets, inbound 8080, the 3 fixed ones
    listeners = 60 + 2  # a listener per service, virtualOutbound and virtualInbound
    assert p["resources_per_proxy"] == clusters + listeners + 60  # and a route table per service
    assert set(p["per_proxy_s"]) >= {"compile_proxy", "pack CDS+LDS+RDS (ParseDict)", "total"}
