"""The DNS codec: wire bytes <-> frozen messages, compression, hostile pointers, truncation, EDNS0."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from weir.agent.dns.codec import (
    DnsFormatError,
    Edns,
    Header,
    Message,
    Mx,
    Question,
    Rcode,
    Record,
    RType,
    Soa,
    Srv,
    build,
    max_udp_payload,
    parse,
    reply_to,
)

# dig's query for example.com A, id 0x1234, RD set, no EDNS: the bytes as on the wire.
EXAMPLE_QUERY = bytes.fromhex("1234 0100 0001 0000 0000 0000 07 6578616d706c65 03 636f6d 00 0001 0001".replace(" ", ""))


def header_with(qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", 0xBEEF, flags, qd, an, ns, ar)


def test_parses_a_query_from_the_wire() -> None:
    msg = parse(EXAMPLE_QUERY)
    assert msg.header == Header(id=0x1234, rd=True)
    assert msg.questions == (Question("example.com", RType.A),)
    assert msg.edns is None
    assert build(msg) == EXAMPLE_QUERY


def test_header_flags_round_trip() -> None:
    header = Header(id=7, qr=True, opcode=2, aa=True, tc=True, rd=False, ra=True, rcode=Rcode.NXDOMAIN)
    assert parse(build(Message(header))).header == header


def test_records_of_every_typed_kind_round_trip() -> None:
    answers = (
        Record("www.example.com", RType.CNAME, 300, "example.com"),
        Record("example.com", RType.A, 60, ipaddress.IPv4Address("192.0.2.1")),
        Record("example.com", RType.AAAA, 60, ipaddress.IPv6Address("2001:db8::1")),
        Record("example.com", RType.MX, 60, Mx(10, "mail.example.com")),
        Record("_http._tcp.example.com", RType.SRV, 60, Srv(1, 2, 8080, "web.example.com")),
        Record("example.com", RType.TXT, 60, b"\x05hello"),
        Record("example.com", RType.NS, 60, "ns1.example.com"),
    )
    authority = (Record("example.com", RType.SOA, 60, Soa("ns1.example.com", "admin.example.com", 1, 2, 3, 4, 5)),)
    msg = Message(Header(id=1, qr=True), (Question("www.example.com", RType.A),), answers, authority)
    assert parse(build(msg)) == msg


def test_names_are_compressed_on_build() -> None:
    answers = tuple(Record("example.com", RType.A, 60, ipaddress.IPv4Address(f"192.0.2.{i}")) for i in range(3))
    wire = build(Message(Header(id=1, qr=True), (Question("example.com", RType.A),), answers))
    # the question name sits at offset 12; every answer owner is a two-byte pointer to it
    assert wire.count(b"\xc0\x0c") == 3
    assert wire.count(b"\x07example") == 1
    assert len(wire) == 12 + 17 + 3 * (2 + 10 + 4)


def test_suffixes_are_shared_too() -> None:
    msg = Message(Header(id=1, qr=True), (Question("a.example.com", RType.CNAME),),
                  (Record("a.example.com", RType.CNAME, 5, "b.example.com"),))
    wire = build(msg)
    assert wire.count(b"\x07example") == 1
    assert parse(wire) == msg


@pytest.mark.parametrize(("body", "why"), [
    (b"\xc0\x0c\x00\x01\x00\x01", "points to itself"),
    (b"\xc0\x0e\x00\x01\x00\x01", "points forward"),
    (b"\x01a\xc0\x0c\x00\x01\x00\x01", "points back to its own start"),
])
def test_pointer_loops_are_rejected(body: bytes, why: str) -> None:
    with pytest.raises(DnsFormatError, match="pointer"):
        parse(header_with() + body)


@pytest.mark.parametrize("data", [
    b"\x12\x34",  # shorter than a header
    header_with() + b"\x07exam",  # label cut off
    header_with() + b"\x07example\x03com\x00\x00",  # question type cut off
    header_with() + b"\x01.\x00\x00\x01\x00\x01",  # a dot inside a label
    header_with() + b"\x80\x00\x00\x01\x00\x01",  # reserved label type
    header_with() + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",  # name longer than 255
    header_with(qd=0, an=1) + b"\x00\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x05\x01\x02\x03\x04\x05",  # A of 5 bytes
    header_with(qd=0, an=1) + b"\x00\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x09\x01",  # rdlength past the end
    header_with(qd=0, ar=2) + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00" * 2,  # two OPT records
])
def test_malformed_messages_raise_format_errors(data: bytes) -> None:
    with pytest.raises(DnsFormatError):
        parse(data)


def test_building_rejects_bad_names() -> None:
    with pytest.raises(DnsFormatError, match="label"):
        build(Message(Header(id=1), (Question("a..b", RType.A),)))
    with pytest.raises(DnsFormatError, match="label"):
        build(Message(Header(id=1), (Question("x" * 64 + ".com", RType.A),)))


def big_answer(query: Message, count: int = 60) -> Message:
    answers = tuple(Record("big.example.org", RType.A, 60, ipaddress.IPv4Address(f"10.0.{i // 250}.{i % 250}"))
                    for i in range(count))
    return reply_to(query, answers=answers)


def test_udp_answers_over_512_bytes_without_edns_are_truncated() -> None:
    query = Message(Header(id=9), (Question("big.example.org", RType.A),))
    assert max_udp_payload(query) == 512
    wire = build(big_answer(query), max_size=max_udp_payload(query))
    assert len(wire) <= 512
    msg = parse(wire)
    assert msg.header.tc
    assert 0 < len(msg.answers) < 60
    assert not parse(build(big_answer(query))).header.tc  # TCP: no limit


def test_edns_raises_the_limit_and_is_echoed() -> None:
    query = Message(Header(id=9), (Question("big.example.org", RType.A),), edns=Edns(udp_size=4096, flags=0x8000))
    parsed_query = parse(build(query))
    assert parsed_query.edns == Edns(udp_size=4096, flags=0x8000)
    assert max_udp_payload(parsed_query) == 4096
    msg = parse(build(big_answer(parsed_query), max_size=max_udp_payload(parsed_query)))
    assert not msg.header.tc
    assert len(msg.answers) == 60
    assert msg.edns is not None
    assert msg.edns.udp_size == 4096


def test_truncation_keeps_room_for_the_opt_record() -> None:
    query = Message(Header(id=9), (Question("big.example.org", RType.A),), edns=Edns(udp_size=600))
    wire = build(big_answer(query), max_size=600)
    msg = parse(wire)
    assert len(wire) <= 600
    assert msg.header.tc
    assert msg.edns is not None


def test_extended_rcode_travels_in_the_opt_record() -> None:
    msg = Message(Header(id=3, qr=True, rcode=16), edns=Edns())  # BADVERS
    assert parse(build(msg)).header.rcode == 16
    with pytest.raises(DnsFormatError, match="EDNS0"):
        build(Message(Header(id=3, qr=True, rcode=16)))


def test_question_property_needs_exactly_one() -> None:
    with pytest.raises(DnsFormatError, match="exactly one"):
        _ = Message(Header(id=1)).question


def test_reply_to_copies_id_rd_and_question() -> None:
    query = parse(EXAMPLE_QUERY)
    reply = reply_to(query, Rcode.NXDOMAIN, aa=True)
    assert reply.header == Header(id=0x1234, qr=True, aa=True, rd=True, ra=True, rcode=Rcode.NXDOMAIN)
    assert reply.questions == query.questions
    assert reply.edns is None
