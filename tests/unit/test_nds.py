"""NDS: the control plane's name tables (weir.control.nds), the message (weir.platform.nds), and the
agent's client (weir.agent.nds) against a real ADS server on 127.0.0.1.

The builder is checked entry by entry (a Service's VIP with its short-name attributes, a
headless Service's pods, a ServiceEntry host's auto-allocated address, an ExternalName alias
as weir's ``cname``), and its table through the agent's conversion into the resolver, which
answers short names only in the proxy's namespace. Then the real client on a real server: the
table arrives and is ACKed (the server's status shows it), a push after ``set_snapshot``, a
NACK that keeps the last good table, a server stopped and started again on the same port, a
proxy without a table, and a UNIX socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from tests.unit.test_ads import eventually
from tests.unit.test_dns_resolver import addresses, ask
from tests.unit.test_registry import entry, pod, registry, service
from weir.agent.bootstrap import BootstrapError
from weir.agent.dns.codec import Rcode, RType
from weir.agent.dns.resolver import LocalAnswers, NameTable
from weir.agent.nds import (
    NameTableClient,
    NameTableError,
    Node,
    backoff_delay,
    grpc_target,
    merge_resources,
    to_name_table,
)
from weir.control.ads import AdsServer, NodeInfo
from weir.control.compile import EnvoyResources
from weir.control.nds import name_table
from weir.control.registry import Registry
from weir.control.xds_convert import NAME_TABLE, pack
from weir.platform import nds

PRODUCTPAGE = service("productpage", {"app": "productpage"}, [{"name": "http", "port": 9080}])
RATINGS = service("ratings", {"app": "ratings"}, [{"name": "http", "port": 9080}], ns="other")
DB = service("db", {"app": "db"}, [{"port": 5432}], clusterIP="None")
DB_POD = pod("db-0", "10.244.0.20", {"app": "db"})
HTTPBIN = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "httpbin", "namespace": "default"},
           "spec": {"type": "ExternalName", "externalName": "httpbin.org."}}
API = entry("api", hosts=["api.example.com"], resolution="DNS",
            ports=[{"name": "https", "number": 443, "protocol": "TLS"}])
MESH = (PRODUCTPAGE, RATINGS, DB, DB_POD, HTTPBIN, API)
NODE = Node("sidecar~10.244.0.9~productpage-1.default~default.svc.cluster.local",
            {"NAMESPACE": "default", "NAME": "productpage-1", "INSTANCE_IPS": "10.244.0.9"})


# --- the table the control plane builds ------------------------------------------------------------


def test_table_has_vips_pods_auto_addresses_and_aliases() -> None:
    reg = registry(*MESH)
    (vip,) = reg.dns.addresses["productpage.default.svc.cluster.local"]
    (auto,) = reg.dns.addresses["api.example.com"]
    assert auto.startswith("240.240.")
    table = name_table(reg)["table"]
    assert list(table) == sorted(table)
    assert table == {
        "api.example.com": {"ips": [auto], "registry": "External"},
        "db.default.svc.cluster.local": {"ips": ["10.244.0.20"], "registry": "Kubernetes", "shortname": "db",
                                         "namespace": "default"},
        "httpbin.default.svc.cluster.local": {"registry": "Kubernetes", "shortname": "httpbin",
                                              "namespace": "default", "cname": "httpbin.org"},
        "productpage.default.svc.cluster.local": {"ips": [vip], "registry": "Kubernetes",
                                                  "shortname": "productpage", "namespace": "default"},
        "ratings.other.svc.cluster.local": {"ips": list(reg.dns.addresses["ratings.other.svc.cluster.local"]),
                                            "registry": "Kubernetes", "shortname": "ratings", "namespace": "other"},
    }
    assert name_table(registry(*reversed(MESH))) == name_table(reg)


def test_table_packs_as_istios_message_with_the_cname_extension() -> None:
    res = EnvoyResources(listeners=(), clusters=(), routes=(), secrets=(), name_table=name_table(registry(*MESH)))
    (packed,) = pack(res)[NAME_TABLE]
    assert packed.resource.type_url == "type.googleapis.com/istio.networking.nds.v1.NameTable" == NAME_TABLE
    message = nds.NameTable()
    assert packed.resource.Unpack(message)
    alias = message.table["httpbin.default.svc.cluster.local"]
    assert (list(alias.ips), alias.cname, alias.shortname) == ([], "httpbin.org", "httpbin")
    assert nds.NameInfo.DESCRIPTOR.fields_by_name["cname"].number == nds.CNAME_FIELD == 100
    assert NAME_TABLE not in pack(EnvoyResources(listeners=(), clusters=(), routes=(), secrets=()))


def _local(reg: Registry, namespace: str) -> LocalAnswers:
    message = json_format.ParseDict(name_table(reg), nds.NameTable())
    return LocalAnswers(to_name_table(message, namespace=namespace,
                                      search_domains=[f"{namespace}.svc.cluster.local", "svc.cluster.local"]))


def test_the_agent_answers_short_names_only_in_its_own_namespace() -> None:
    reg = registry(*MESH)
    (vip,) = reg.dns.addresses["productpage.default.svc.cluster.local"]
    (ratings,) = reg.dns.addresses["ratings.other.svc.cluster.local"]
    local = _local(reg, "default")
    for name in ("productpage", "productpage.default", "productpage.default.svc",
                 "productpage.default.svc.cluster.local"):
        reply = local.answer(ask(name))
        assert reply is not None, name
        assert addresses(reply) == [vip], name
    assert local.answer(ask("ratings")) is None  # not this namespace: upstream decides
    ratings_reply = local.answer(ask("ratings.other"))
    assert ratings_reply is not None
    assert addresses(ratings_reply) == [ratings]
    alias = local.answer(ask("httpbin", RType.CNAME))
    assert alias is not None
    assert [(r.name, r.data) for r in alias.answers] == [("httpbin", "httpbin.org")]
    external = local.answer(ask("api.example.com"))
    assert external is not None
    assert addresses(external) == list(reg.dns.addresses["api.example.com"])
    missing = local.answer(ask("nope.default.svc.cluster.local"))
    assert missing is not None
    assert missing.header.rcode == Rcode.NXDOMAIN
    # in "other", the short name is ratings's, and productpage needs its namespace
    other = _local(reg, "other")
    assert other.answer(ask("productpage")) is None
    ratings_short = other.answer(ask("ratings"))
    assert ratings_short is not None
    assert addresses(ratings_short) == [ratings]


def test_conversion_follows_istios_alt_hosts_and_rejects_bad_tables() -> None:
    info = nds.NameInfo
    pod_host = nds.NameTable(table={
        "web-0.web.default.svc.cluster.local": info(ips=["10.244.0.7"], registry="Kubernetes",
                                                    shortname="web-0.web", namespace="default",
                                                    alt_hosts=["web-0.internal."]),
        "web.default.svc.cluster.local": info(ips=["10.96.0.7"], registry="Kubernetes", shortname="web",
                                              namespace="default")})
    table = to_name_table(pod_host, namespace="default")
    # a pod's hostname gets Istio's alternatives (the resolver derives the Service's on its own)
    assert set(table.hosts) == {"web-0.web.default.svc.cluster.local", "web-0.web.default",
                                "web-0.web.default.svc", "web-0.web", "web-0.internal",
                                "web.default.svc.cluster.local"}
    assert to_name_table(nds.NameTable(), namespace="default") == NameTable.parse(namespace="default")
    bad = {"not an IP": info(ips=["10.0.0.300"]),
           "both": info(ips=["10.0.0.1"], cname="x.example.com"),
           "empty host": info(ips=["10.0.0.1"])}
    expected = {"not an IP": "'10.0.0.300' is not an IP address", "both": "both addresses and a cname",
                "empty host": "is not a hostname"}
    for what, entry_info in bad.items():
        host = "" if what == "empty host" else "a.default.svc.cluster.local"
        with pytest.raises(NameTableError, match=expected[what]):
            to_name_table(nds.NameTable(table={host: entry_info}), namespace="default")
    with pytest.raises(NameTableError, match="twice"):
        to_name_table(nds.NameTable(table={"A.example.com": info(ips=["10.0.0.1"]),
                                           "a.example.com.": info(ips=["10.0.0.2"])}), namespace="default")


def test_merge_rejects_foreign_and_duplicate_resources() -> None:
    from google.protobuf import any_pb2

    def packed(message: Any) -> Any:
        resource = any_pb2.Any()
        resource.Pack(message)
        return resource

    one = nds.NameTable(table={"a.example.com": nds.NameInfo(ips=["10.0.0.1"])})
    two = nds.NameTable(table={"b.example.com": nds.NameInfo(ips=["10.0.0.2"])})
    assert set(merge_resources([packed(one), packed(two)]).table) == {"a.example.com", "b.example.com"}
    with pytest.raises(NameTableError, match="more than one resource"):
        merge_resources([packed(one), packed(one)])
    with pytest.raises(NameTableError, match="not a NameTable"):
        merge_resources([packed(nds.NameInfo())])


def test_backoff_is_capped_exponential_with_jitter_and_addresses_parse() -> None:
    assert [backoff_delay(n, 0.999999, initial=1, maximum=30) for n in range(7)] == pytest.approx(
        [1, 2, 4, 8, 16, 30, 30], rel=1e-5)
    assert [backoff_delay(n, 0.0, initial=1, maximum=30) for n in (0, 3, 100)] == [0.5, 4, 15]
    assert backoff_delay(10**6, 0.5, initial=1, maximum=30) == 22.5
    assert grpc_target("127.0.0.1:15010") == "127.0.0.1:15010"
    assert grpc_target("[::1]:15010") == "[::1]:15010"
    assert grpc_target("unix:///run/weir/xds.sock") == grpc_target("unix:/run/weir/xds.sock") == (
        "unix:/run/weir/xds.sock")
    with pytest.raises(BootstrapError, match="NDS address"):
        grpc_target("istiod")
    with pytest.raises(ValueError, match="back-off"):
        NameTableClient("127.0.0.1:1", NODE, print, namespace="default", backoff_initial=0)


# --- the client against a real ADS server ------------------------------------------------------------


@dataclass(frozen=True)
class Mesh:
    """What the tests' ADS server serves: a registry, or a raw name table."""

    reg: Registry | None = None
    raw: dict[str, Any] | None = None


def tables_for(node: NodeInfo, mesh: Mesh) -> EnvoyResources:
    """Only a name table: the agent's stream asks for nothing else."""
    assert node.metadata["NAMESPACE"] == "default"
    table = mesh.raw if mesh.raw is not None else None if mesh.reg is None else name_table(mesh.reg)
    return EnvoyResources(listeners=(), clusters=(), routes=(), secrets=(), name_table=table)


def run(test: Callable[[AdsServer[Mesh], list[NameTable]], Awaitable[None]]) -> None:
    async def main() -> None:
        server: AdsServer[Mesh] = AdsServer(tables_for)
        try:
            await test(server, [])
        finally:
            await server.stop(grace=0)
    asyncio.run(main())


def client(target: str, tables: list[NameTable]) -> NameTableClient:
    return NameTableClient(target, NODE, tables.append, namespace="default", backoff_initial=0.05,
                           backoff_max=0.2)


def nds_status(server: AdsServer[Mesh]) -> Any:
    statuses = server.status()
    return statuses[0].types.get("NDS") if statuses else None


def test_table_arrives_is_acked_and_pushes_follow() -> None:
    async def test(server: AdsServer[Mesh], tables: list[NameTable]) -> None:
        target = await server.start("127.0.0.1:0")
        server.set_snapshot(Mesh(registry(*MESH)))
        nds_client = client(target, tables)
        await nds_client.start()
        try:
            await eventually(lambda: nds_client.last_version == "1", "version 1 applied")
            assert nds_client.connected
            assert tables[-1] is nds_client.table
            assert "productpage.default.svc.cluster.local" in tables[-1].hosts
            assert tables[-1].aliases == {"httpbin.default.svc.cluster.local": "httpbin.org"}
            await eventually(lambda: nds_status(server) is not None and nds_status(server).acked_version == "1",
                             "the ACK of 1")
            (status,) = server.status()
            assert status.node.id == NODE.id
            assert set(status.types) == {"NDS"}
            assert status.types["NDS"].state == "SYNCED"

            server.set_snapshot(Mesh(registry(*MESH, service("reviews", {"app": "reviews"}, [{"port": 9080}]))))
            await eventually(lambda: nds_client.last_version == "2", "version 2 pushed and applied")
            assert "reviews.default.svc.cluster.local" in tables[-1].hosts
            assert len(tables) == 2
            await eventually(lambda: nds_status(server).acked_version == "2", "the ACK of 2")
        finally:
            await nds_client.stop()
        assert not nds_client.connected
        await eventually(lambda: server.status() == (), "the stream to close")

    run(test)


def test_a_bad_table_is_nacked_and_the_last_good_one_kept() -> None:
    async def test(server: AdsServer[Mesh], tables: list[NameTable]) -> None:
        target = await server.start("127.0.0.1:0")
        good = Mesh(registry(*MESH))
        server.set_snapshot(good)
        nds_client = client(target, tables)
        await nds_client.start()
        try:
            await eventually(lambda: nds_client.last_version == "1", "version 1 applied")
            server.set_snapshot(Mesh(raw={"table": {"x.example.com": {"ips": ["not-an-ip"]}}}))
            await eventually(lambda: nds_status(server).last_nack is not None, "the NACK of 2")
            status = nds_status(server)
            assert (status.acked_version, status.sent_version, status.state) == ("1", "2", "NACKED")
            assert "'not-an-ip' is not an IP address" in status.last_nack.message
            assert "not-an-ip" in nds_client.last_nack
            assert (nds_client.last_version, len(tables)) == ("1", 1)
            assert nds_client.table is tables[0]
            server.set_snapshot(good)
            await eventually(lambda: nds_status(server).acked_version == "3", "the ACK of 3")
            assert (nds_client.last_version, nds_client.last_nack, len(tables)) == ("3", "", 2)
        finally:
            await nds_client.stop()

    run(test)


def test_an_on_table_failure_is_a_nack() -> None:
    async def test(server: AdsServer[Mesh], tables: list[NameTable]) -> None:
        target = await server.start("127.0.0.1:0")
        server.set_snapshot(Mesh(registry(*MESH)))

        def refuse(table: NameTable) -> None:
            raise RuntimeError("resolver is closed")

        nds_client = NameTableClient(target, NODE, refuse, namespace="default")
        await nds_client.start()
        try:
            await eventually(lambda: nds_status(server) is not None and nds_status(server).state == "NACKED",
                             "the NACK")
            assert "resolver is closed" in nds_status(server).last_nack.message
            assert (nds_client.last_version, nds_client.table) == ("", None)
        finally:
            await nds_client.stop()

    run(test)


def test_reconnects_after_the_server_restarts_and_logs_the_outage_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="weir.agent.nds")

    async def test(server: AdsServer[Mesh], tables: list[NameTable]) -> None:
        target = await server.start("127.0.0.1:0")
        server.set_snapshot(Mesh(registry(*MESH)))
        nds_client = client(target, tables)
        await nds_client.start()
        restarted: AdsServer[Mesh] = AdsServer(tables_for)
        try:
            await eventually(lambda: nds_client.connected, "the first table")
            await server.stop(grace=1)
            await eventually(lambda: not nds_client.connected, "the client to see the stream end")
            await eventually(lambda: _retries(caplog) >= 3, "a few failed retries while the server is down")
            assert await restarted.start(target) == target  # the same port
            restarted.set_snapshot(Mesh(registry(*MESH, service("reviews", {"app": "reviews"}, [{"port": 9080}]))))
            await eventually(lambda: nds_client.connected and "reviews.default.svc.cluster.local" in tables[-1].hosts,
                             "the table from the restarted server", timeout=15)
            assert nds_client.last_version == "1"  # the new server numbers from 1 again
            await eventually(lambda: nds_status(restarted) is not None and nds_status(restarted).acked_version == "1",
                             "the ACK to the new server")
        finally:
            await nds_client.stop()
            await restarted.stop(grace=0)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "no name tables" in r.message]
        assert len(warnings) == 1, [r.message for r in warnings]
        assert sum("flow again" in r.message for r in caplog.records) == 1

    run(test)


def _retries(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.levelno == logging.DEBUG and "still unreachable" in r.message for r in caplog.records)


def test_unix_socket_and_a_proxy_without_a_table(tmp_path: Path) -> None:
    async def test(server: AdsServer[Mesh], tables: list[NameTable]) -> None:
        target = await server.start(f"unix:{tmp_path / 'xds.sock'}")
        server.set_snapshot(Mesh())  # resources_for gives no name table: NDS is not answered
        nds_client = client(target, tables)
        await nds_client.start()
        try:
            await eventually(lambda: nds_status(server) is not None, "the NDS request")
            await asyncio.sleep(0.2)
            assert (nds_status(server).sent_version, nds_status(server).state) == ("", "STALE")
            assert not nds_client.connected
            assert tables == []
            server.set_snapshot(Mesh(registry(*MESH)))
            await eventually(lambda: nds_client.last_version == "2", "the table once there is one")
            assert nds_client.connected
        finally:
            await nds_client.stop()

    run(test)
