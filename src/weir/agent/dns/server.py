"""The DNS proxy's driver (Istio's istio-agent DNS server on ``:15053``): UDP and TCP sockets.

It parses what arrives, asks the pure ``Resolver`` (table, then cache), forwards the rest to
the upstream servers of a resolv.conf in order (a timeout or an error moves on to the next;
none left is SERVFAIL), remembers forwarded answers and writes the response back, truncated
for UDP clients. Queries too short to carry a header, and responses sent to it, are dropped;
other malformed queries get FORMERR. At most ``max_inflight`` queries are handled at once:
past that, UDP queries are dropped (the client retries) and TCP connections wait.
``query`` is a small blocking client, for tests and ``weir`` commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import secrets
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from weir.agent.dns.codec import (
    OPCODE_QUERY,
    DnsFormatError,
    Edns,
    Header,
    Message,
    Question,
    Rcode,
    RType,
    build,
    max_udp_payload,
    parse,
    parse_header,
    reply_to,
)
from weir.agent.dns.resolver import Resolver

log = logging.getLogger("weir.agent.dns")

Upstream = tuple[str, int]
DEFAULT_PORT = 15053
TCP_MAX = 65535


def parse_resolv_conf(text: str, port: int = 53) -> tuple[Upstream, ...]:
    """The ``nameserver`` lines of a resolv.conf, in order, each on ``port``."""
    servers: list[Upstream] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            servers.append((fields[1], port))
    return tuple(servers)


def load_upstreams(path: str | Path, port: int = 53) -> tuple[Upstream, ...]:
    servers = parse_resolv_conf(Path(path).read_text(), port)
    if not servers:
        raise ValueError(f"{path}: no nameserver lines, nothing to forward to")
    return servers


class UpstreamMismatch(Exception):
    """An upstream answered with another id or question than the one asked."""


@dataclass
class Stats:
    received: int = 0
    forwarded: int = 0
    dropped: int = 0
    upstream_failures: int = 0


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, proxy: DnsProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.proxy.on_datagram(data, addr)


class _UdpExchange(asyncio.DatagramProtocol):
    def __init__(self, msg_id: bytes, done: asyncio.Future[bytes]) -> None:
        self.msg_id = msg_id
        self.done = done

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if data[:2] == self.msg_id and not self.done.done():
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class DnsProxy:
    def __init__(self, resolver: Resolver, upstreams: Sequence[Upstream], *, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, timeout: float = 2.0, max_inflight: int = 256,
                 tcp_idle_timeout: float = 10.0) -> None:
        self.resolver = resolver
        self.upstreams = tuple(upstreams)
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.tcp_idle_timeout = tcp_idle_timeout
        self.stats = Stats()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._slots = asyncio.Semaphore(max_inflight)
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping = False

    @property
    def address(self) -> Upstream:
        """Where both sockets listen (the real port when ``port`` was 0)."""
        return self.host, self.port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for attempt in range(5):
            udp, _ = await loop.create_datagram_endpoint(lambda: _UdpServer(self), local_addr=(self.host, self.port))
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError as exc:
                udp.close()
                if self.port != 0 or exc.errno != errno.EADDRINUSE or attempt == 4:
                    raise
                continue
            self._udp, self.port = udp, port
            log.info("DNS proxy listening on %s:%d (udp, tcp), upstreams %s", self.host, port, self.upstreams)
            return

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight queries finish (and their answers go out) for ``grace``
        seconds, cancel the rest, then close the sockets."""
        self._stopping = True
        if self._tcp is not None:
            self._tcp.close()
        pending = set(self._tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._udp is not None:
            self._udp.close()
        for writer in list(self._writers):
            writer.close()
        if self._tcp is not None:
            await self._tcp.wait_closed()

    # -- UDP --------------------------------------------------------------------------------

    def on_datagram(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.stats.received += 1
        if self._stopping or len(self._tasks) >= self.max_inflight:
            self.stats.dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._answer_udp(data, addr), name=f"dns-udp-{addr}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_udp(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        response = await self.handle(data, tcp=False)
        if response is not None and self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(response, addr)

    # -- TCP (RFC 1035 4.2.2: each message after a two-byte length) -------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), self.tcp_idle_timeout))[0]
                    data = await asyncio.wait_for(reader.readexactly(size), self.timeout)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                self.stats.received += 1
                async with self._slots:
                    task = asyncio.get_running_loop().create_task(self.handle(data, tcp=True), name="dns-tcp")
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    response = await task
                if response is None:
                    return
                writer.write(struct.pack("!H", len(response)) + response)
                await writer.drain()
        except ConnectionError as exc:
            log.debug("DNS TCP client went away: %s", exc)
        finally:
            self._writers.discard(writer)
            writer.close()

    # -- the one step both transports share ---------------------------------------------------

    async def handle(self, data: bytes, *, tcp: bool) -> bytes | None:
        """The wire response to one query, or ``None`` to send nothing."""
        try:
            header = parse_header(data)
        except DnsFormatError:
            self.stats.dropped += 1
            return None
        if header.qr:
            self.stats.dropped += 1
            return None
        try:
            query = parse(data)
            if header.opcode != OPCODE_QUERY:
                return build(reply_to(query, Rcode.NOTIMP))
            _ = query.question
        except DnsFormatError as exc:
            log.debug("malformed DNS query %d: %s", header.id, exc)
            return build(Message(Header(id=header.id, qr=True, opcode=header.opcode, rd=header.rd, ra=True,
                                        rcode=Rcode.FORMERR)))
        limit = None if tcp else max_udp_payload(query)
        response = self.resolver.resolve(query)
        if response is None:
            response = await self._forward(query, tcp=tcp)
            if response is None:
                response = reply_to(query, Rcode.SERVFAIL)
            else:
                self.resolver.remember(query, response)
        try:
            return build(response, max_size=limit)
        except DnsFormatError as exc:
            log.warning("cannot encode the answer to %s: %s", query.question, exc)
            return build(reply_to(query, Rcode.SERVFAIL), max_size=limit)

    async def _forward(self, query: Message, *, tcp: bool) -> Message | None:
        self.stats.forwarded += 1
        msg_id = secrets.randbelow(0x10000)
        payload = build(replace(query, header=replace(query.header, id=msg_id)))
        for upstream in self.upstreams:
            try:
                raw = await asyncio.wait_for(self._exchange(upstream, payload, tcp=tcp), self.timeout)
                response = parse(raw)
                if response.header.tc and not tcp:
                    response = parse(await asyncio.wait_for(self._exchange(upstream, payload, tcp=True),
                                                            self.timeout))
                asked, got = query.question, response.questions
                if (response.header.id != msg_id or len(got) != 1
                        or (got[0].name.lower(), got[0].qtype) != (asked.name.lower(), asked.qtype)):
                    raise UpstreamMismatch(f"answer for id {response.header.id} {got}, asked {msg_id} {asked}")
            except (OSError, TimeoutError, DnsFormatError, UpstreamMismatch, asyncio.IncompleteReadError) as exc:
                self.stats.upstream_failures += 1
                log.warning("upstream %s:%d failed for %s: %r", *upstream, query.question.name, exc)
                continue
            return replace(response, header=replace(response.header, id=query.header.id),
                           questions=query.questions)
        return None

    async def _exchange(self, upstream: Upstream, payload: bytes, *, tcp: bool) -> bytes:
        if tcp:
            reader, writer = await asyncio.open_connection(*upstream)
            try:
                writer.write(struct.pack("!H", len(payload)) + payload)
                await writer.drain()
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                return await reader.readexactly(size)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpExchange(payload[:2], done),
                                                           remote_addr=upstream)
        try:
            transport.sendto(payload)
            return await done
        finally:
            transport.close()


def query(name: str, qtype: int | str, server: Upstream, *, tcp: bool = False, timeout: float = 2.0,
          udp_size: int | None = None) -> Message:
    """Ask ``server`` one question and return its parsed answer (blocking; stdlib sockets)."""
    rtype = RType[qtype.upper()] if isinstance(qtype, str) else qtype
    msg_id = secrets.randbelow(0x10000)
    edns = Edns(udp_size=udp_size) if udp_size is not None else None
    payload = build(Message(Header(id=msg_id), (Question(name, rtype),), edns=edns))
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    if tcp:
        with socket.create_connection(server, timeout=timeout) as conn:
            conn.sendall(struct.pack("!H", len(payload)) + payload)
            (size,) = struct.unpack("!H", _recv_exactly(conn, 2))
            raw = _recv_exactly(conn, size)
    else:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect(server)
            sock.send(payload)
            raw = sock.recv(TCP_MAX)
            while raw[:2] != payload[:2]:
                raw = sock.recv(TCP_MAX)
    return parse(raw)


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = conn.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)
