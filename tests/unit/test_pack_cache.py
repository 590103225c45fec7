"""weir.control.xds_convert.PackCache: one conversion per distinct resource, shared by proxies."""

from __future__ import annotations

import pytest

from weir.control import envoy_shapes as es
from weir.control.compile import EnvoyResources
from weir.control.xds_convert import CLUSTER, LISTENER, NAME_TABLE, ConversionError, PackCache, pack


def _resources(cluster_port: int, table_ip: str) -> EnvoyResources:
    cluster = {"name": "outbound|80||a.default.svc.cluster.local", "type": "STATIC", "connect_timeout": "10s",
               "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
                   {"endpoint": {"address": es.socket_address("10.0.0.1", cluster_port)}}]}]}}
    listener = {"name": "virtualOutbound", "address": es.socket_address("0.0.0.0", 15001),
                "filter_chains": [{"filters": [es.tcp_proxy("PassthroughCluster")]}]}
    table = {"table": {"a.default.svc.cluster.local": {"ips": [table_ip], "registry": "Kubernetes"}}}
    return EnvoyResources(listeners=(listener,), clusters=(cluster,), routes=(), secrets=(), name_table=table)


def test_identical_resources_are_converted_once_and_shared() -> None:
    cache = PackCache()
    first, second = pack(_resources(80, "10.96.0.1"), cache), pack(_resources(80, "10.96.0.1"), cache)
    for type_url in (CLUSTER, LISTENER, NAME_TABLE):
        assert first[type_url][0] is second[type_url][0]
    assert len(cache) == 3
    assert cache.hits == 3


def test_a_different_resource_is_packed_on_its_own_and_equals_the_uncached_form() -> None:
    cache = PackCache()
    pack(_resources(80, "10.96.0.1"), cache)
    other = pack(_resources(81, "10.96.0.2"), cache)
    assert other[LISTENER][0].resource == pack(_resources(81, "10.96.0.2"))[LISTENER][0].resource
    assert other[CLUSTER][0].resource == pack(_resources(81, "10.96.0.2"))[CLUSTER][0].resource
    assert other[NAME_TABLE][0].name == ""
    assert len(cache) == 5  # the listener is shared; the cluster and the table are new


def test_a_bad_resource_still_raises_through_the_cache() -> None:
    bad = EnvoyResources(listeners=({"name": "x", "no_such_field": 1},), clusters=(), routes=(), secrets=())
    with pytest.raises(ConversionError, match="no_such_field"):
        pack(bad, PackCache())
