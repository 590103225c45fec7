"""Real traffic through real capture rules: host A is the captured pod, host B its peer on the
same bridge. Every test runs on each back-end (iptables-nft, iptables-legacy, native nftables)
and over IPv4 and IPv6.

Listeners stand where Envoy would (A:15001 outbound, A:15006 inbound, A:15053 DNS) and real
servers stand at the destinations; each answers with its own marker, so a reply says where a
connection really went, and ``SO_ORIGINAL_DST`` says where it was headed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from weir.capture.apply import Backend, Executor
from weir.netns import lab
from weir.netns.lab import Host

from .helpers import (
    BACKENDS,
    FAMILIES,
    IPTABLES_BACKENDS,
    addr,
    backend_id,
    connect,
    executor,
    reply,
    serving,
    spec,
    udp_query,
)

PREFIX = "wtr"

CAPTURE_ALL = {"INBOUND_PORTS_INCLUDE": "*", "OUTBOUND_IPRANGES_INCLUDE": "*", "ENABLE_INBOUND_IPV6": "true"}


@pytest.fixture(params=BACKENDS, ids=backend_id)
def backend(request: pytest.FixtureRequest) -> Backend:
    value: Backend = request.param
    return value


@pytest.fixture(params=FAMILIES, ids=lambda f: f"ipv{f}")
def family(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    with lab.topology(2, prefix=PREFIX) as topo:
        yield topo.hosts


@pytest.fixture
def ex(tmp_path: Path) -> Executor:
    return executor(tmp_path)


@pytest.mark.parametrize("uid", [0, 1000])
def test_outbound_and_inbound_are_redirected_to_the_proxy_ports(
        hosts: list[Host], ex: Executor, backend: Backend, family: int, uid: int) -> None:
    a, b = hosts
    ex.apply(spec(**CAPTURE_ALL), a.ns, backend)
    with serving(a, 15001, "A:15001", family=family) as outbound, \
            serving(a, 15006, "A:15006", family=family) as inbound, \
            serving(a, 8080, "A:8080", family=family) as a_app, \
            serving(b, 8080, "B:8080", family=family) as b_app:
        assert reply(connect(a, addr(b, family), 8080, user=uid)) == "A:15001"
        seen = outbound.expect()
        assert seen.original == (addr(b, family), 8080)
        assert seen.peer[0] == addr(a, family)

        assert reply(connect(b, addr(a, family), 8080)) == "A:15006"
        seen = inbound.expect()
        assert seen.original == (addr(a, family), 8080)
        assert seen.peer[0] == addr(b, family)

        b_app.assert_idle()
        a_app.assert_idle()


def test_the_proxy_uid_is_not_redirected(hosts: list[Host], ex: Executor, backend: Backend, family: int) -> None:
    a, b = hosts
    ex.apply(spec(**CAPTURE_ALL), a.ns, backend)
    with serving(a, 15001, "A:15001", family=family) as outbound, \
            serving(b, 8080, "B:8080", family=family) as b_app:
        assert reply(connect(a, addr(b, family), 8080, user=1337)) == "B:8080"
        assert b_app.expect().peer[0] == addr(a, family)
        outbound.assert_idle()
        # The same connection from another uid is captured: the rules are in place.
        assert reply(connect(a, addr(b, family), 8080, user=1000)) == "A:15001"


def test_excluded_ports_and_ranges_are_not_redirected(ex: Executor, backend: Backend, family: int) -> None:
    with lab.topology(3, prefix=PREFIX) as topo:
        a, b, c = topo.hosts
        ex.apply(spec(**CAPTURE_ALL, OUTBOUND_PORTS_EXCLUDE="9090", INBOUND_PORTS_EXCLUDE="8081",
                      OUTBOUND_IPRANGES_EXCLUDE=f"{c.ipv4}/32,{c.ipv6}/128"), a.ns, backend)
        with serving(a, 15001, "A:15001", family=family) as outbound, \
                serving(a, 15006, "A:15006", family=family) as inbound, \
                serving(a, 8081, "A:8081", family=family), \
                serving(b, 9090, "B:9090", family=family), \
                serving(c, 8080, "C:8080", family=family):
            assert reply(connect(a, addr(b, family), 9090, user=1000)) == "B:9090"  # excluded port
            assert reply(connect(a, addr(c, family), 8080, user=1000)) == "C:8080"  # excluded range
            assert reply(connect(b, addr(a, family), 8081)) == "A:8081"  # excluded inbound port
            outbound.assert_idle()
            inbound.assert_idle()
            # Everything else still is captured.
            assert reply(connect(a, addr(b, family), 8080, user=1000)) == "A:15001"
            assert reply(connect(b, addr(a, family), 8080)) == "A:15006"


@pytest.mark.parametrize("backend", IPTABLES_BACKENDS, ids=backend_id)
def test_ipv6_is_left_alone_unless_enabled(hosts: list[Host], ex: Executor, backend: Backend) -> None:
    # iptables only: native nftables uses inet tables, whose family-neutral rules (as in
    # Istio's istio-nftables) match IPv6 too.
    a, b = hosts
    ex.apply(spec(INBOUND_PORTS_INCLUDE="*", OUTBOUND_IPRANGES_INCLUDE="*"), a.ns, backend)
    with serving(a, 15001, "A:15001", family=6) as outbound, serving(a, 15006, "A:15006", family=6) as inbound, \
            serving(a, 8080, "A:8080", family=6), serving(b, 8080, "B:8080", family=6):
        assert reply(connect(a, b.ipv6, 8080, user=1000)) == "B:8080"
        assert reply(connect(b, a.ipv6, 8080)) == "A:8080"
        outbound.assert_idle()
        inbound.assert_idle()
    with serving(a, 15001, "A:15001", family=4):
        assert reply(connect(a, b.ipv4, 8080, user=1000)) == "A:15001"


def test_dns_is_redirected_to_the_dns_proxy(hosts: list[Host], ex: Executor, backend: Backend, family: int) -> None:
    a, b = hosts
    ex.apply(spec(REDIRECT_DNS="true", CAPTURE_ALL_DNS="true", ENABLE_INBOUND_IPV6="true"), a.ns, backend)
    # As Istio's DNS proxy, the UDP listener is on loopback and belongs to uid 1337: its answers
    # then share the query's conntrack zone and reach the app with B:53 as their source.
    with serving(a, 15053, "A:15053/udp", family=family, udp=True, owner=1337, loopback=True) as dns_proxy, \
            serving(a, 15053, "A:15053/tcp", family=family) as dns_proxy_tcp, \
            serving(b, 53, "B:53/udp", family=family, udp=True) as upstream, \
            serving(b, 53, "B:53/tcp", family=family):
        answer = udp_query(a, addr(b, family), 53, user=1000)
        assert reply(answer) == "A:15053/udp"
        assert answer["peer"] == [addr(b, family), 53]  # the app sees the answer come from B:53
        assert dns_proxy.expect().payload == b"query-for-weir"
        upstream.assert_idle()

        assert reply(connect(a, addr(b, family), 53, user=1000)) == "A:15053/tcp"
        assert dns_proxy_tcp.expect().original == (addr(b, family), 53)

        # The proxy's own queries go upstream.
        assert reply(udp_query(a, addr(b, family), 53, user=1337)) == "B:53/udp"
        assert upstream.expect().payload == b"query-for-weir"
        dns_proxy.assert_idle()


def _policy_routing(host: Host) -> dict[str, str]:
    return {f"{fam} {what}": host.run("ip", fam, *args).stdout
            for fam in ("-4", "-6")
            for what, args in (("rules", ("rule", "show")), ("table 133", ("route", "show", "table", "133")))}


def test_tproxy_inbound_keeps_the_original_destination(
        hosts: list[Host], ex: Executor, backend: Backend, family: int) -> None:
    a, b = hosts
    tproxy = spec(INBOUND_INTERCEPTION_MODE="TPROXY", INBOUND_PORTS_INCLUDE="*", ENABLE_INBOUND_IPV6="true")
    ex.apply(tproxy, a.ns, backend)

    routing = _policy_routing(a)
    for fam in ("-4", "-6"):
        assert "fwmark 0x539 lookup 133" in routing[f"{fam} rules"]
        assert routing[f"{fam} table 133"].startswith("local default dev lo")

    with serving(a, 15006, "A:15006", family=family, transparent=True) as inbound, \
            serving(a, 8080, "A:8080", family=family) as a_app:
        assert reply(connect(b, addr(a, family), 8080)) == "A:15006"
        seen = inbound.expect()
        assert seen.local == (addr(a, family), 8080)  # TPROXY: the socket is bound to the original
        assert seen.peer[0] == addr(b, family)
        a_app.assert_idle()

    assert ex.remove(a.ns, tproxy, backend)
    routing = _policy_routing(a)
    for fam in ("-4", "-6"):
        assert "lookup 133" not in routing[f"{fam} rules"]
        assert routing[f"{fam} table 133"] == ""
