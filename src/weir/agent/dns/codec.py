"""DNS messages (RFC 1035) as frozen values: parse bytes into a ``Message`` and build it back.

Pure: no sockets, no clock. Names are lower-level strings without the trailing dot (the root is
``""``), in the case they arrived in. Record data is typed for the types whose data holds
names (they must be decompressed on parse and may be re-compressed on build): A and AAAA as
``ipaddress`` values, CNAME/NS/PTR as a name, MX, SOA and SRV as small dataclasses; every other
type keeps its data as raw bytes. The EDNS0 OPT pseudo-record is lifted out of the additional
section into ``Message.edns``. Anything malformed raises ``DnsFormatError``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field, replace
from enum import IntEnum

HEADER_SIZE = 12
MAX_UDP_NO_EDNS = 512
"""The largest UDP response a client without EDNS0 accepts (RFC 1035 4.2.1)."""
MAX_NAME_LENGTH = 255
MAX_LABEL_LENGTH = 63
_POINTER_LIMIT = 0x3FFF


class DnsFormatError(ValueError):
    """The bytes are not a well-formed DNS message (answered with FORMERR, or dropped)."""


class RType(IntEnum):
    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    MX = 15
    TXT = 16
    AAAA = 28
    SRV = 33
    OPT = 41
    ANY = 255


class Rcode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5


CLASS_IN = 1
OPCODE_QUERY = 0


@dataclass(frozen=True)
class Header:
    id: int
    qr: bool = False
    opcode: int = OPCODE_QUERY
    aa: bool = False
    tc: bool = False
    rd: bool = True
    ra: bool = False
    rcode: int = Rcode.NOERROR

    def flags(self) -> int:
        return ((self.qr << 15) | ((self.opcode & 0xF) << 11) | (self.aa << 10) | (self.tc << 9)
                | (self.rd << 8) | (self.ra << 7) | (self.rcode & 0xF))

    @classmethod
    def from_flags(cls, msg_id: int, flags: int) -> Header:
        return cls(id=msg_id, qr=bool(flags & 0x8000), opcode=(flags >> 11) & 0xF, aa=bool(flags & 0x0400),
                   tc=bool(flags & 0x0200), rd=bool(flags & 0x0100), ra=bool(flags & 0x0080), rcode=flags & 0xF)


@dataclass(frozen=True)
class Question:
    name: str
    qtype: int
    qclass: int = CLASS_IN


@dataclass(frozen=True)
class Mx:
    preference: int
    exchange: str


@dataclass(frozen=True)
class Soa:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


@dataclass(frozen=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str


Rdata = ipaddress.IPv4Address | ipaddress.IPv6Address | str | Mx | Soa | Srv | bytes


@dataclass(frozen=True)
class Record:
    name: str
    rtype: int
    ttl: int
    data: Rdata
    rclass: int = CLASS_IN


@dataclass(frozen=True)
class Edns:
    """The OPT pseudo-record (RFC 6891): the sender's UDP payload size and the rest, passed through."""

    udp_size: int = 1232
    ext_rcode: int = 0
    version: int = 0
    flags: int = 0
    options: bytes = b""


@dataclass(frozen=True)
class Message:
    header: Header
    questions: tuple[Question, ...] = ()
    answers: tuple[Record, ...] = ()
    authorities: tuple[Record, ...] = ()
    additionals: tuple[Record, ...] = field(default=())
    edns: Edns | None = None

    @property
    def question(self) -> Question:
        if len(self.questions) != 1:
            raise DnsFormatError(f"expected exactly one question, got {len(self.questions)}")
        return self.questions[0]


def max_udp_payload(query: Message) -> int:
    """How large a UDP response this query's sender accepts: 512 without EDNS0."""
    if query.edns is None:
        return MAX_UDP_NO_EDNS
    return max(MAX_UDP_NO_EDNS, query.edns.udp_size)


def reply_to(query: Message, rcode: int = Rcode.NOERROR, *, answers: tuple[Record, ...] = (),
             authorities: tuple[Record, ...] = (), aa: bool = False, ra: bool = True) -> Message:
    """A response to ``query``: same id, opcode, RD and question; EDNS echoed when the query had it."""
    header = Header(id=query.header.id, qr=True, opcode=query.header.opcode, aa=aa, rd=query.header.rd, ra=ra,
                    rcode=rcode)
    edns = Edns(udp_size=max_udp_payload(query)) if query.edns is not None else None
    return Message(header, query.questions, answers, authorities, (), edns)


# -- parse ------------------------------------------------------------------------------------


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER_SIZE:
        raise DnsFormatError(f"message is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header")
    msg_id, flags = struct.unpack_from("!HH", data, 0)
    return Header.from_flags(msg_id, flags)


def parse(data: bytes) -> Message:
    header = parse_header(data)
    qd, an, ns, ar = struct.unpack_from("!HHHH", data, 4)
    reader = _Reader(data, HEADER_SIZE)
    questions = tuple(reader.question() for _ in range(qd))
    answers = tuple(reader.record() for _ in range(an))
    authorities = tuple(reader.record() for _ in range(ns))
    additionals: list[Record] = []
    edns: Edns | None = None
    for _ in range(ar):
        rec, opt = reader.record_or_opt()
        if opt is not None:
            if edns is not None:
                raise DnsFormatError("more than one OPT record")
            edns = opt
        elif rec is not None:
            additionals.append(rec)
    if edns is not None:
        header = replace(header, rcode=header.rcode | (edns.ext_rcode << 4))
    return Message(header, questions, answers, authorities, tuple(additionals), edns)


class _Reader:
    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset

    def take(self, n: int) -> bytes:
        end = self.offset + n
        if end > len(self.data):
            raise DnsFormatError(f"message ends at byte {len(self.data)}, inside a field that needs {end}")
        chunk = self.data[self.offset:end]
        self.offset = end
        return chunk

    def unpack(self, fmt: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def name(self) -> str:
        name, self.offset = read_name(self.data, self.offset)
        return name

    def question(self) -> Question:
        name = self.name()
        qtype, qclass = self.unpack("!HH")
        return Question(name, qtype, qclass)

    def record_or_opt(self) -> tuple[Record | None, Edns | None]:
        name = self.name()
        rtype, rclass, ttl, rdlength = self.unpack("!HHIH")
        end = self.offset + rdlength
        if end > len(self.data):
            raise DnsFormatError(f"record {name!r} type {rtype} claims {rdlength} data bytes past the message end")
        if rtype == RType.OPT:
            if name:
                raise DnsFormatError(f"OPT record owner must be the root, not {name!r}")
            options = self.take(rdlength)
            return None, Edns(udp_size=rclass, ext_rcode=ttl >> 24, version=(ttl >> 16) & 0xFF, flags=ttl & 0xFFFF,
                              options=options)
        data = self._rdata(rtype, rdlength, end)
        if self.offset != end:
            raise DnsFormatError(f"record {name!r} type {rtype}: data is not {rdlength} bytes long")
        return Record(name, rtype, ttl, data, rclass), None

    def record(self) -> Record:
        rec, _ = self.record_or_opt()
        if rec is None:
            raise DnsFormatError("OPT record outside the additional section")
        return rec

    def _rdata(self, rtype: int, rdlength: int, end: int) -> Rdata:
        if rtype == RType.A:
            if rdlength != 4:
                raise DnsFormatError(f"A record data is {rdlength} bytes, not 4")
            return ipaddress.IPv4Address(self.take(4))
        if rtype == RType.AAAA:
            if rdlength != 16:
                raise DnsFormatError(f"AAAA record data is {rdlength} bytes, not 16")
            return ipaddress.IPv6Address(self.take(16))
        if rtype in (RType.CNAME, RType.NS, RType.PTR):
            return self.name()
        if rtype == RType.MX:
            (pref,) = self.unpack("!H")
            return Mx(pref, self.name())
        if rtype == RType.SRV:
            prio, weight, port = self.unpack("!HHH")
            return Srv(prio, weight, port, self.name())
        if rtype == RType.SOA:
            mname, rname = self.name(), self.name()
            serial, refresh, retry, expire, minimum = self.unpack("!IIIII")
            return Soa(mname, rname, serial, refresh, retry, expire, minimum)
        return self.take(rdlength)


def read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The name at ``offset`` and the offset just past it (past the first pointer, if any).

    Each pointer must point before the start of the labels it ends, so every jump goes further
    back and a loop cannot be built.
    """
    labels: list[str] = []
    length = 0
    resume: int | None = None
    pos = lowest = offset
    while True:
        if pos >= len(data):
            raise DnsFormatError(f"name at byte {offset} runs past the end of the message")
        size = data[pos]
        kind = size & 0xC0
        if kind == 0xC0:
            if pos + 1 >= len(data):
                raise DnsFormatError(f"compression pointer at byte {pos} is cut off")
            target = ((size & 0x3F) << 8) | data[pos + 1]
            if target >= lowest:
                raise DnsFormatError(f"compression pointer at byte {pos} points to byte {target}, not before "
                                     f"byte {lowest} where this part of the name starts (a loop)")
            if resume is None:
                resume = pos + 2
            pos = lowest = target
            continue
        if kind != 0:
            raise DnsFormatError(f"unsupported label type 0x{kind:02x} at byte {pos}")
        if size == 0:
            break
        raw = data[pos + 1:pos + 1 + size]
        if len(raw) != size:
            raise DnsFormatError(f"label at byte {pos} runs past the end of the message")
        if b"." in raw:
            raise DnsFormatError(f"label at byte {pos} contains a dot, which weir does not represent")
        length += size + 1
        if length + 1 > MAX_NAME_LENGTH:
            raise DnsFormatError(f"name at byte {offset} is longer than {MAX_NAME_LENGTH} bytes")
        labels.append(raw.decode("latin-1"))
        pos += 1 + size
    return ".".join(labels), (resume if resume is not None else pos + 1)


# -- build ------------------------------------------------------------------------------------


def build(msg: Message, *, max_size: int | None = None) -> bytes:
    """Encode ``msg`` with name compression. With ``max_size`` (UDP), records that do not fit are
    left out and TC is set; the question and the OPT record are always kept."""
    writer = _Writer()
    for q in msg.questions:
        writer.name(q.name)
        writer.out += struct.pack("!HH", q.qtype, q.qclass)
    opt = _opt_bytes(msg.edns) if msg.edns is not None else b""
    budget = None if max_size is None else max_size - HEADER_SIZE - len(opt)
    counts = [0, 0, 0]
    truncated = False
    for i, section in enumerate((msg.answers, msg.authorities, msg.additionals)):
        for rec in section:
            mark = len(writer.out), dict(writer.offsets)
            writer.record(rec)
            if budget is not None and len(writer.out) > budget:
                writer.out = writer.out[:mark[0]]
                writer.offsets = mark[1]
                truncated = i < 2  # dropping additional records alone is not truncation (RFC 2181 9)
                break
            counts[i] += 1
        else:
            continue
        break
    header = msg.header
    if truncated:
        header = replace(header, tc=True)
    rcode = header.rcode
    if rcode > 0xF and msg.edns is None:
        raise DnsFormatError(f"rcode {rcode} needs EDNS0")
    flags = replace(header, rcode=rcode & 0xF).flags()
    head = struct.pack("!HHHHHH", header.id, flags, len(msg.questions), counts[0], counts[1],
                       counts[2] + (1 if msg.edns is not None else 0))
    if msg.edns is not None and rcode > 0xF:
        opt = _opt_bytes(replace(msg.edns, ext_rcode=rcode >> 4))
    return head + bytes(writer.out) + opt


def _opt_bytes(edns: Edns) -> bytes:
    ttl = (edns.ext_rcode << 24) | ((edns.version & 0xFF) << 16) | (edns.flags & 0xFFFF)
    return b"\x00" + struct.pack("!HHIH", RType.OPT, edns.udp_size, ttl, len(edns.options)) + edns.options


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()
        self.offsets: dict[str, int] = {}

    def name(self, name: str, *, compress: bool = True) -> None:
        labels = name.split(".") if name else []
        encoded = [label.encode("latin-1") for label in labels]
        if any(not 0 < len(label) <= MAX_LABEL_LENGTH for label in encoded):
            raise DnsFormatError(f"name {name!r} has an empty label or one longer than {MAX_LABEL_LENGTH} bytes")
        if sum(len(label) + 1 for label in encoded) + 1 > MAX_NAME_LENGTH:
            raise DnsFormatError(f"name {name!r} is longer than {MAX_NAME_LENGTH} bytes")
        for i in range(len(labels)):
            suffix = ".".join(labels[i:]).lower()
            known = self.offsets.get(suffix)
            if compress and known is not None:
                self.out += struct.pack("!H", 0xC000 | known)
                return
            if len(self.out) + HEADER_SIZE <= _POINTER_LIMIT:
                self.offsets.setdefault(suffix, len(self.out) + HEADER_SIZE)
            self.out.append(len(encoded[i]))
            self.out += encoded[i]
        self.out.append(0)

    def record(self, rec: Record) -> None:
        self.name(rec.name)
        self.out += struct.pack("!HHI", rec.rtype, rec.rclass, rec.ttl)
        length_at = len(self.out)
        self.out += b"\x00\x00"
        self._rdata(rec)
        struct.pack_into("!H", self.out, length_at, len(self.out) - length_at - 2)

    def _rdata(self, rec: Record) -> None:
        data = rec.data
        if isinstance(data, ipaddress.IPv4Address | ipaddress.IPv6Address):
            self.out += data.packed
        elif isinstance(data, str):
            self.name(data)
        elif isinstance(data, Mx):
            self.out += struct.pack("!H", data.preference)
            self.name(data.exchange)
        elif isinstance(data, Srv):
            self.out += struct.pack("!HHH", data.priority, data.weight, data.port)
            self.name(data.target, compress=False)  # RFC 2782: SRV targets are not compressed
        elif isinstance(data, Soa):
            self.name(data.mname)
            self.name(data.rname)
            self.out += struct.pack("!IIIII", data.serial, data.refresh, data.retry, data.expire, data.minimum)
        else:
            self.out += data
