"""The DNS proxy on real sockets, 127.0.0.1 only: a fake upstream DNS server on a random port
answers one name (and a large one) and counts what reaches it."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from weir.agent.dns import query
from weir.agent.dns.codec import (
    Header,
    Message,
    Question,
    Rcode,
    Record,
    RType,
    Soa,
    build,
    max_udp_payload,
    parse,
    reply_to,
)
from weir.agent.dns.resolver import NameTable, Resolver
from weir.agent.dns.server import DnsProxy, Upstream, load_upstreams, parse_resolv_conf

T = TypeVar("T")
TABLE = NameTable.parse(hosts={"reviews.bookinfo.svc.cluster.local": ["10.0.0.1"]}, namespace="bookinfo",
                        search_domains=["bookinfo.svc.cluster.local", "svc.cluster.local", "cluster.local"])


class FakeUpstream:
    """Answers example.org A (TTL 60) and big.example.org (60 A records, truncated over UDP
    without EDNS), NXDOMAIN otherwise; or nothing at all when ``silent``."""

    def __init__(self, *, silent: bool = False) -> None:
        self.silent = silent
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port: int = self.udp.getsockname()[1]
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen()
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]
        for thread in self._threads:
            thread.start()

    @property
    def address(self) -> Upstream:
        return "127.0.0.1", self.port

    def count(self, proto: str | None = None) -> int:
        with self._lock:
            return sum(1 for p, _ in self.seen if proto in (None, p))

    def answer(self, data: bytes, proto: str) -> bytes | None:
        q = parse(data)
        with self._lock:
            self.seen.append((proto, q.question.name))
        if self.silent:
            return None
        name = q.question.name.lower()
        if name == "example.org" and q.question.qtype == RType.A:
            reply = reply_to(q, answers=(Record(q.question.name, RType.A, 60, ipaddress.IPv4Address("192.0.2.1")),))
        elif name == "big.example.org":
            reply = reply_to(q, answers=tuple(Record(name, RType.A, 60, ipaddress.IPv4Address(f"10.1.0.{i}"))
                                              for i in range(1, 61)))
        else:
            soa = Record("example.org", RType.SOA, 60, Soa("ns.example.org", "admin.example.org", 1, 2, 3, 4, 30))
            reply = reply_to(q, Rcode.NXDOMAIN, authorities=(soa,))
        return build(reply, max_size=max_udp_payload(q) if proto == "udp" else None)

    def _serve_udp(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                data, addr = self.udp.recvfrom(65535)
                if not data:
                    return
                out = self.answer(data, "udp")
                if out is not None:
                    self.udp.sendto(out, addr)

    def _serve_tcp(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.tcp.accept()
                with conn:
                    size = struct.unpack("!H", conn.recv(2))[0]
                    out = self.answer(conn.recv(size, socket.MSG_WAITALL), "tcp")
                    if out is not None:
                        conn.sendall(struct.pack("!H", len(out)) + out)

    def close(self) -> None:
        for sock in (self.udp, self.tcp):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5)


class LoopThread:
    """An event loop on its own thread, so the tests can use the blocking client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    yield fake
    fake.close()


StartProxy = Callable[..., DnsProxy]


@pytest.fixture
def start_proxy(loop: LoopThread) -> Iterator[StartProxy]:
    started: list[DnsProxy] = []

    def start(upstreams: list[Upstream], clock: Callable[[], float] = time.monotonic, **kw: Any) -> DnsProxy:
        proxy = DnsProxy(Resolver(TABLE, clock), upstreams, host="127.0.0.1", port=0, **{"timeout": 0.5, **kw})
        loop.run(proxy.start())
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        loop.run(proxy.stop(grace=2))


def dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def a_records(msg: Message) -> list[str]:
    return [str(r.data) for r in msg.answers if r.rtype == RType.A]


def test_upstreams_come_from_resolv_conf(tmp_path: Path, upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# written by the runtime\nsearch bookinfo.svc.cluster.local\n"
                    "nameserver 127.0.0.1\noptions ndots:5\n")
    proxy = start_proxy(list(load_upstreams(conf, port=upstream.port)))
    reply = query("example.org", "A", proxy.address)
    assert reply.header.rcode == Rcode.NOERROR
    assert a_records(reply) == ["192.0.2.1"]
    assert upstream.count("udp") == 1


def test_parse_resolv_conf_keeps_order_and_skips_the_rest(tmp_path: Path) -> None:
    text = "nameserver 10.96.0.10\n; comment\nnameserver ::1 # local\nsearch a b\nnameserver\n"
    assert parse_resolv_conf(text) == (("10.96.0.10", 53), ("::1", 53))
    (tmp_path / "empty").write_text("search a\n")
    with pytest.raises(ValueError, match="no nameserver"):
        load_upstreams(tmp_path / "empty")


def test_forwarded_answers_are_cached_within_their_ttl(upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    clock = FakeClock()
    proxy = start_proxy([upstream.address], clock=clock)
    first = query("example.org", RType.A, proxy.address)
    clock.now += 59
    second = query("Example.ORG", RType.A, proxy.address)
    assert a_records(first) == a_records(second) == ["192.0.2.1"]
    assert second.answers[0].ttl == 1
    assert second.answers[0].name == "Example.ORG"
    assert upstream.count() == 1
    clock.now += 1
    query("example.org", RType.A, proxy.address)
    assert upstream.count() == 2


def test_negative_answers_are_forwarded_and_cached(upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    proxy = start_proxy([upstream.address])
    for _ in range(2):
        assert query("nosuch.example.org", "A", proxy.address).header.rcode == Rcode.NXDOMAIN
    assert upstream.count() == 1


def test_mesh_names_are_answered_without_upstream(upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    proxy = start_proxy([upstream.address])
    assert a_records(query("reviews", "A", proxy.address)) == ["10.0.0.1"]
    expanded = query("reviews.bookinfo.bookinfo.svc.cluster.local", "A", proxy.address)
    assert [r.rtype for r in expanded.answers] == [RType.CNAME, RType.A]
    assert query("nosuch.bookinfo.svc.cluster.local", "A", proxy.address).header.rcode == Rcode.NXDOMAIN
    assert upstream.count() == 0


def test_a_silent_upstream_is_servfail(start_proxy: StartProxy) -> None:
    silent = FakeUpstream(silent=True)
    try:
        proxy = start_proxy([silent.address], timeout=0.2)
        began = time.monotonic()
        reply = query("example.org", "A", proxy.address, timeout=5)
        assert reply.header.rcode == Rcode.SERVFAIL
        assert time.monotonic() - began < 4, "the proxy's 0.2 s upstream timeout applied, not the client's 5 s"
        assert silent.count() == 1
        assert proxy.stats.upstream_failures == 1
    finally:
        silent.close()


def test_no_upstream_listening_is_servfail(start_proxy: StartProxy) -> None:
    proxy = start_proxy([("127.0.0.1", dead_port())])
    assert query("example.org", "A", proxy.address).header.rcode == Rcode.SERVFAIL
    assert query("example.org", "A", proxy.address, tcp=True).header.rcode == Rcode.SERVFAIL


def test_failures_fall_back_to_the_next_upstream(upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    silent = FakeUpstream(silent=True)
    try:
        proxy = start_proxy([("127.0.0.1", dead_port()), silent.address, upstream.address], timeout=0.2)
        assert a_records(query("example.org", "A", proxy.address)) == ["192.0.2.1"]
        assert (silent.count(), upstream.count()) == (1, 1)
    finally:
        silent.close()


def test_tcp_queries_are_forwarded_over_tcp(upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    proxy = start_proxy([upstream.address])
    assert a_records(query("example.org", "A", proxy.address, tcp=True)) == ["192.0.2.1"]
    assert upstream.count("tcp") == 1
    assert a_records(query("reviews", "A", proxy.address, tcp=True)) == ["10.0.0.1"]


def test_large_answers_are_truncated_for_udp_and_whole_over_tcp(upstream: FakeUpstream,
                                                                 start_proxy: StartProxy) -> None:
    proxy = start_proxy([upstream.address])
    udp = query("big.example.org", "A", proxy.address)
    assert udp.header.tc
    assert len(a_records(udp)) < 60
    # the upstream truncated its UDP answer too, so the proxy asked it again over TCP
    assert (upstream.count("udp"), upstream.count("tcp")) == (1, 1)
    assert len(a_records(query("big.example.org", "A", proxy.address, tcp=True))) == 60
    edns = query("big.example.org", "A", proxy.address, udp_size=4096)
    assert not edns.header.tc
    assert len(a_records(edns)) == 60
    assert edns.edns is not None


def raw_udp(address: Upstream, payload: bytes, timeout: float = 0.5) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, address)
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def test_malformed_packets_are_dropped_or_formerr(upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    proxy = start_proxy([upstream.address])
    assert raw_udp(proxy.address, b"\x12\x34\x01") is None  # no header: nothing to answer
    response = build(Message(Header(id=5, qr=True)))
    assert raw_udp(proxy.address, response) is None  # a response, not a query
    no_question = struct.pack("!HHHHHH", 0xABCD, 0x0100, 1, 0, 0, 0)
    reply = raw_udp(proxy.address, no_question)
    assert reply is not None
    assert parse(reply).header == Header(id=0xABCD, qr=True, rd=True, ra=True, rcode=Rcode.FORMERR)
    two_questions = struct.pack("!HHHHHH", 0xABCE, 0x0100, 2, 0, 0, 0) + (b"\x01a\x00\x00\x01\x00\x01" * 2)
    reply = raw_udp(proxy.address, two_questions)
    assert reply is not None
    assert parse(reply).header.rcode == Rcode.FORMERR
    notify = build(Message(Header(id=6, opcode=4), (Question("example.org", RType.SOA),)))
    reply = raw_udp(proxy.address, notify)
    assert reply is not None
    assert parse(reply).header.rcode == Rcode.NOTIMP
    assert upstream.count() == 0
    assert a_records(query("example.org", "A", proxy.address)) == ["192.0.2.1"]  # still serving


def test_a_truncated_tcp_frame_closes_only_that_connection(upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    proxy = start_proxy([upstream.address])
    with socket.create_connection(proxy.address, timeout=2) as conn:
        conn.sendall(b"\x00\x40\x12")
        conn.shutdown(socket.SHUT_WR)
        assert conn.recv(10) == b""
    assert a_records(query("reviews", "A", proxy.address, tcp=True)) == ["10.0.0.1"]


def query_bytes(name: str, msg_id: int = 1) -> bytes:
    return build(Message(Header(id=msg_id), (Question(name, RType.A),)))


def test_udp_queries_past_the_concurrency_bound_are_dropped(start_proxy: StartProxy) -> None:
    silent = FakeUpstream(silent=True)
    try:
        proxy = start_proxy([silent.address], timeout=1.0, max_inflight=2)
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
        try:
            for i, sock in enumerate(sockets):
                sock.sendto(query_bytes(f"q{i}.example.org", i), proxy.address)
            deadline = time.monotonic() + 2
            while proxy.stats.received < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert (proxy.stats.received, proxy.stats.dropped) == (4, 2)
        finally:
            for sock in sockets:
                sock.close()
    finally:
        silent.close()


def test_stop_lets_in_flight_queries_answer_then_closes_both_sockets(loop: LoopThread) -> None:
    silent = FakeUpstream(silent=True)
    try:
        proxy = DnsProxy(Resolver(TABLE, time.monotonic), [silent.address], host="127.0.0.1", port=0, timeout=0.3)
        loop.run(proxy.start())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(3)
            client.sendto(query_bytes("example.org", 77), proxy.address)
            deadline = time.monotonic() + 2
            while silent.count() < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            stopping = asyncio.run_coroutine_threadsafe(proxy.stop(grace=3), loop.loop)
            reply = parse(client.recv(65535))
        assert (reply.header.id, reply.header.rcode) == (77, Rcode.SERVFAIL)
        stopping.result(5)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=1).close()
        assert raw_udp(proxy.address, query_bytes("example.org"), timeout=0.2) is None
    finally:
        silent.close()
