"""The pure resolver: Istio's name forms, aliases, NXDOMAIN vs forward, and the TTL cache (fake clock)."""

from __future__ import annotations

import ipaddress

import pytest

from weir.agent.dns.codec import Edns, Header, Message, Question, Rcode, Record, RType, Soa, reply_to
from weir.agent.dns.resolver import LOCAL_TTL, ForwardCache, LocalAnswers, NameTable, Resolver, cache_ttl

TABLE = NameTable.parse(
    hosts={
        "reviews.bookinfo.svc.cluster.local.": ["10.0.0.1", "fd00::1"],
        "ratings.other.svc.cluster.local": ["10.0.0.2"],
        "API.example.com": ["192.0.2.10"],
    },
    aliases={
        "ext.bookinfo.svc.cluster.local": "api.example.com",
        "outside.bookinfo.svc.cluster.local": "www.google.com",
    },
    namespace="bookinfo",
    search_domains=["bookinfo.svc.cluster.local", "svc.cluster.local", "cluster.local"],
)
LOCAL = LocalAnswers(TABLE)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ask(name: str, qtype: int = RType.A, msg_id: int = 42) -> Message:
    return Message(Header(id=msg_id), (Question(name, qtype),))


def addresses(msg: Message) -> list[str]:
    return [str(r.data) for r in msg.answers if r.rtype in (RType.A, RType.AAAA)]


@pytest.mark.parametrize("name", [
    "reviews.bookinfo.svc.cluster.local",
    "reviews.bookinfo.svc.cluster.local.",
    "reviews.bookinfo.svc",
    "reviews.bookinfo",
    "reviews",  # the pod's own namespace
    "ReViews.BookInfo",
])
def test_a_service_answers_to_its_short_forms(name: str) -> None:
    reply = LOCAL.answer(ask(name))
    assert reply is not None
    assert reply.header.rcode == Rcode.NOERROR
    assert reply.header.aa
    assert reply.header.id == 42
    assert reply.answers == (Record(name.rstrip("."), RType.A, LOCAL_TTL, ipaddress.IPv4Address("10.0.0.1")),)


def test_the_bare_name_is_only_for_the_pods_namespace() -> None:
    assert LOCAL.answer(ask("ratings")) is None  # not ours, not under the cluster domain: forwarded
    other = LOCAL.answer(ask("ratings.other"))
    assert other is not None
    assert addresses(other) == ["10.0.0.2"]


@pytest.mark.parametrize(("name", "alt"), [
    ("reviews.bookinfo.bookinfo.svc.cluster.local", "reviews.bookinfo"),
    ("reviews.bookinfo.svc.bookinfo.svc.cluster.local", "reviews.bookinfo.svc"),
    ("api.example.com.bookinfo.svc.cluster.local", "api.example.com"),
])
def test_search_expansions_answer_with_a_cname_to_the_name_asked(name: str, alt: str) -> None:
    reply = LOCAL.answer(ask(name))
    assert reply is not None
    assert reply.answers[0] == Record(name, RType.CNAME, LOCAL_TTL, alt)
    assert reply.answers[1].name == alt
    assert len(addresses(reply)) == 1


def test_only_the_first_search_domain_is_expanded_like_istio() -> None:
    reply = LOCAL.answer(ask("reviews.svc.cluster.local"))
    assert reply is not None
    assert reply.header.rcode == Rcode.NXDOMAIN


def test_aaaa_comes_from_the_ipv6_addresses() -> None:
    reply = LOCAL.answer(ask("reviews", RType.AAAA))
    assert reply is not None
    assert reply.answers == (Record("reviews", RType.AAAA, LOCAL_TTL, ipaddress.IPv6Address("fd00::1")),)


@pytest.mark.parametrize(("name", "qtype"), [
    ("api.example.com", RType.AAAA),  # v4 only
    ("reviews", RType.MX),
    ("reviews", RType.TXT),
])
def test_known_names_without_that_data_are_noerror_nodata(name: str, qtype: int) -> None:
    reply = LOCAL.answer(ask(name, qtype))
    assert reply is not None
    assert (reply.header.rcode, reply.answers) == (Rcode.NOERROR, ())


def test_an_alias_answers_a_cname_then_the_targets_records() -> None:
    reply = LOCAL.answer(ask("ext.bookinfo"))
    assert reply is not None
    assert reply.answers == (
        Record("ext.bookinfo", RType.CNAME, LOCAL_TTL, "api.example.com"),
        Record("api.example.com", RType.A, LOCAL_TTL, ipaddress.IPv4Address("192.0.2.10")),
    )


def test_an_alias_to_an_outside_name_answers_the_cname_alone() -> None:
    reply = LOCAL.answer(ask("outside.bookinfo.svc.cluster.local"))
    assert reply is not None
    assert reply.answers == (Record("outside.bookinfo.svc.cluster.local", RType.CNAME, LOCAL_TTL, "www.google.com"),)


def test_a_cname_query_gets_only_the_cname() -> None:
    reply = LOCAL.answer(ask("ext", RType.CNAME))
    assert reply is not None
    assert [r.rtype for r in reply.answers] == [RType.CNAME]


def test_alias_chains_are_followed_and_loops_end() -> None:
    table = NameTable.parse(hosts={"c.example.com": ["192.0.2.3"]},
                            aliases={"a.example.com": "b.example.com", "b.example.com": "c.example.com",
                                     "x.example.com": "y.example.com", "y.example.com": "x.example.com"})
    chain = LocalAnswers(table).answer(ask("a.example.com"))
    assert chain is not None
    assert [(r.name, r.rtype) for r in chain.answers] == [
        ("a.example.com", RType.CNAME), ("b.example.com", RType.CNAME), ("c.example.com", RType.A)]
    loop = LocalAnswers(table).answer(ask("x.example.com"))
    assert loop is not None
    assert len(loop.answers) == 8


@pytest.mark.parametrize("name", [
    "nosuch.bookinfo.svc.cluster.local",
    "www.google.com.bookinfo.svc.cluster.local",  # the first search expansion of an outside name
    "cluster.local",
])
def test_unknown_names_under_the_cluster_domain_are_nxdomain(name: str) -> None:
    reply = LOCAL.answer(ask(name))
    assert reply is not None
    assert reply.header.rcode == Rcode.NXDOMAIN
    assert reply.header.aa


@pytest.mark.parametrize(("name", "qtype"), [
    ("www.google.com", RType.A),
    ("nosuch", RType.A),
    ("_http._tcp.nosuch.bookinfo.svc.cluster.local", RType.SRV),  # only A/AAAA get the local NXDOMAIN
    ("notcluster.local.example", RType.AAAA),
])
def test_everything_else_is_forwarded(name: str, qtype: int) -> None:
    assert LOCAL.answer(ask(name, qtype)) is None


def test_the_query_edns_is_echoed() -> None:
    query = Message(Header(id=1), (Question("reviews", RType.A),), edns=Edns(udp_size=4096))
    reply = LOCAL.answer(query)
    assert reply is not None
    assert reply.edns == Edns(udp_size=4096)


def test_table_parse_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match=r"hosts\['a.example'\]: 'nope'"):
        NameTable.parse(hosts={"a.example": ["nope"]})
    with pytest.raises(ValueError, match="also a host"):
        NameTable.parse(hosts={"a.example": ["192.0.2.1"]}, aliases={"a.example.": "b.example"})


# -- the cache ------------------------------------------------------------------------------


def upstream_answer(query: Message, *ttls: int) -> Message:
    answers = tuple(Record("www.example.org", RType.A, ttl, ipaddress.IPv4Address(f"192.0.2.{i + 1}"))
                    for i, ttl in enumerate(ttls))
    return reply_to(query, answers=answers)


def test_cache_keeps_for_the_smallest_ttl_and_ages_answers() -> None:
    clock = FakeClock()
    cache = ForwardCache(clock)
    query = ask("www.example.org")
    cache.put(query, upstream_answer(query, 300, 30))
    clock.now += 10
    hit = cache.get(ask("WWW.example.org", msg_id=7))
    assert hit is not None
    assert hit.header.id == 7
    assert hit.questions == (Question("WWW.example.org", RType.A),)
    assert [r.ttl for r in hit.answers] == [290, 20]
    clock.now += 20
    assert cache.get(query) is None
    assert len(cache) == 0


def test_cache_keys_on_type() -> None:
    cache = ForwardCache(FakeClock())
    cache.put(ask("www.example.org"), upstream_answer(ask("www.example.org"), 60))
    assert cache.get(ask("www.example.org", RType.AAAA)) is None


def test_negative_answers_keep_for_the_soa_minimum() -> None:
    query = ask("nosuch.example.org")
    soa = Record("example.org", RType.SOA, 3600, Soa("ns.example.org", "admin.example.org", 1, 2, 3, 4, 45))
    assert cache_ttl(reply_to(query, Rcode.NXDOMAIN, authorities=(soa,))) == 45
    assert cache_ttl(reply_to(query, Rcode.NXDOMAIN)) == 0  # no SOA: not kept


@pytest.mark.parametrize("response", [
    reply_to(ask("x"), Rcode.SERVFAIL),
    reply_to(ask("x"), Rcode.REFUSED),
    upstream_answer(ask("x"), 0),
    Message(Header(id=1, qr=True, tc=True), answers=upstream_answer(ask("x"), 60).answers),
])
def test_failures_zero_ttls_and_truncated_answers_are_not_kept(response: Message) -> None:
    cache = ForwardCache(FakeClock())
    cache.put(ask("x"), response)
    assert len(cache) == 0


def test_cache_is_bounded_least_recently_used_first() -> None:
    cache = ForwardCache(FakeClock(), max_entries=2, max_ttl=10)
    for name in ("a.example", "b.example"):
        cache.put(ask(name), upstream_answer(ask(name), 60))
    assert cache.get(ask("a.example")) is not None
    cache.put(ask("c.example"), upstream_answer(ask("c.example"), 60))
    assert cache.get(ask("b.example")) is None
    assert cache.get(ask("a.example")) is not None


def test_max_ttl_caps_the_time_kept() -> None:
    clock = FakeClock()
    cache = ForwardCache(clock, max_ttl=10)
    cache.put(ask("a.example"), upstream_answer(ask("a.example"), 600))
    clock.now += 10
    assert cache.get(ask("a.example")) is None


def test_resolver_answers_local_names_before_the_cache_and_takes_pushed_tables() -> None:
    resolver = Resolver(TABLE, FakeClock())
    assert resolver.resolve(ask("www.example.org")) is None
    resolver.remember(ask("www.example.org"), upstream_answer(ask("www.example.org"), 60))
    cached = resolver.resolve(ask("www.example.org"))
    assert cached is not None
    assert addresses(cached) == ["192.0.2.1"]
    resolver.update(NameTable.parse(hosts={"www.example.org": ["198.51.100.1"]}))
    pushed = resolver.resolve(ask("www.example.org"))
    assert pushed is not None
    assert addresses(pushed) == ["198.51.100.1"]
    assert resolver.resolve(ask("reviews")) is None  # the old table is gone
