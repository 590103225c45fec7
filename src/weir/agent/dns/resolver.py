"""Answering names from the table the control plane pushes, the way Istio's DNS proxy does.

``NameTable`` is the pushed table: hostnames with their addresses, aliases (ExternalName
services: alias -> canonical hostname), the pod's namespace, its search domains and the
cluster domain. ``answer_locally`` is a pure function from a table and a query to a response,
or ``None`` when the query must be forwarded upstream. ``ForwardCache`` keeps forwarded
answers for their smallest TTL, with time from an injected clock. ``Resolver`` ties the two
together for the server. No sockets and no clock of its own live here.

What is answered locally (as Istio's lookup table):

- a table host by its exact name; a host under the cluster domain also by its short forms
  ``svc.ns.svc``, ``svc.ns`` and, in the pod's own namespace, ``svc``;
- any of those names followed by the first search domain (the query a stub resolver makes
  first when it walks its search list): a CNAME to the matched name, then its records;
- an alias: a CNAME to its target (followed through further aliases), then the target's
  records when the table has them;
- A from the IPv4 addresses, AAAA from the IPv6 ones, NOERROR with no data for any other type
  (or a family the host lacks);
- NXDOMAIN for an A or AAAA query of an unknown name under the cluster domain.

Everything else goes upstream.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from weir.agent.dns.codec import Message, Question, Rcode, Record, RType, Soa, reply_to

Clock = Callable[[], float]
"""Monotonic seconds; the server passes ``time.monotonic``, tests a fake."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOCAL_TTL = 30
"""TTL of the answers built from the table (Istio's DNS proxy uses 30 seconds)."""
MAX_ALIAS_DEPTH = 8


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


@dataclass(frozen=True)
class NameTable:
    hosts: Mapping[str, tuple[IPAddress, ...]] = field(default_factory=lambda: MappingProxyType({}))
    aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    namespace: str = "default"
    search_domains: tuple[str, ...] = ()
    cluster_domain: str = "cluster.local"

    @classmethod
    def parse(cls, *, hosts: Mapping[str, Iterable[str]] | None = None, aliases: Mapping[str, str] | None = None,
              namespace: str = "default", search_domains: Iterable[str] = (),
              cluster_domain: str = "cluster.local") -> NameTable:
        """The parse edge: names lowered and without trailing dots, addresses parsed."""
        parsed: dict[str, tuple[IPAddress, ...]] = {}
        for host, addrs in (hosts or {}).items():
            ips: list[IPAddress] = []
            for addr in addrs:
                try:
                    ips.append(ipaddress.ip_address(addr))
                except ValueError:
                    raise ValueError(f"hosts[{host!r}]: {addr!r} is not an IP address") from None
            if not _norm(host):
                raise ValueError(f"hosts: {host!r} is not a hostname")
            parsed[_norm(host)] = tuple(ips)
        alias_map = {_norm(a): _norm(t) for a, t in (aliases or {}).items()}
        for alias, target in alias_map.items():
            if not alias or not target:
                raise ValueError(f"aliases: {alias!r} -> {target!r} needs two hostnames")
            if alias in parsed:
                raise ValueError(f"aliases: {alias!r} is also a host with addresses")
        return cls(MappingProxyType(parsed), MappingProxyType(alias_map), namespace.strip().lower(),
                   tuple(d for d in (_norm(s) for s in search_domains) if d), _norm(cluster_domain))

    def short_forms(self, host: str) -> tuple[str, ...]:
        """The names ``host`` also answers to: ``svc.ns.svc`` and ``svc.ns`` (and ``svc`` in the
        pod's namespace) for ``svc.ns.svc.<cluster domain>``; nothing for other hosts."""
        suffix = f".svc.{self.cluster_domain}"
        if not host.endswith(suffix):
            return ()
        parts = host[:-len(suffix)].split(".")
        if len(parts) != 2:
            return ()
        svc, ns = parts
        forms = [f"{svc}.{ns}.svc", f"{svc}.{ns}"]
        if ns == self.namespace:
            forms.append(svc)
        return tuple(forms)


@dataclass(frozen=True)
class _Index:
    """Every name the table answers to -> the table key (host or alias) it stands for."""

    names: Mapping[str, str]

    @classmethod
    def of(cls, table: NameTable) -> _Index:
        names: dict[str, str] = {}
        for key in (*table.hosts, *table.aliases):
            names[key] = key
        for key in (*table.hosts, *table.aliases):
            for form in table.short_forms(key):
                names.setdefault(form, key)  # an exact name always wins over a short form
        return cls(MappingProxyType(names))


class LocalAnswers:
    """The table and its precomputed index; ``answer`` is pure."""

    def __init__(self, table: NameTable) -> None:
        self.table = table
        self._index = _Index.of(table)

    def answer(self, query: Message) -> Message | None:
        """The response to ``query`` from the table, or ``None`` to forward it."""
        q = query.question
        name = _norm(q.name)
        matched = self._match(name)
        if matched is None:
            if q.qtype in (RType.A, RType.AAAA) and self._in_cluster(name):
                return reply_to(query, Rcode.NXDOMAIN, aa=True)
            return None
        answers: list[Record] = []
        owner = q.name.rstrip(".")
        alt, key = matched
        if alt != name:  # a search-domain expansion of a name we know
            answers.append(Record(owner, RType.CNAME, LOCAL_TTL, alt))
            if q.qtype == RType.CNAME:
                return reply_to(query, aa=True, answers=tuple(answers))
            owner = alt
        for _ in range(MAX_ALIAS_DEPTH):
            target = self.table.aliases.get(key)
            if target is None:
                break
            answers.append(Record(owner, RType.CNAME, LOCAL_TTL, target))
            if q.qtype == RType.CNAME:
                return reply_to(query, aa=True, answers=tuple(answers))
            owner, key = target, self._index.names.get(target, target)
        if q.qtype in (RType.A, RType.AAAA):
            version = 4 if q.qtype == RType.A else 6
            answers += [Record(owner, q.qtype, LOCAL_TTL, ip) for ip in self.table.hosts.get(key, ())
                        if ip.version == version]
        return reply_to(query, aa=True, answers=tuple(answers))

    def _match(self, name: str) -> tuple[str, str] | None:
        """(the table name matched, its key): the name itself, or the name less a search domain."""
        key = self._index.names.get(name)
        if key is not None:
            return name, key
        # Like Istio, only the first search domain: a stub resolver walks its list in order and
        # stops at the first answer, and later domains would make names kube-dns does not have.
        for domain in self.table.search_domains[:1]:
            if name.endswith("." + domain):
                alt = name[:-len(domain) - 1]
                key = self._index.names.get(alt)
                if key is not None:
                    return alt, key
        return None

    def _in_cluster(self, name: str) -> bool:
        domain = self.table.cluster_domain
        return bool(domain) and (name == domain or name.endswith("." + domain))


def answer_locally(table: NameTable, query: Message) -> Message | None:
    return LocalAnswers(table).answer(query)


# -- the cache of forwarded answers -----------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    response: Message
    stored_at: float
    expires_at: float


def cache_ttl(response: Message) -> int:
    """How long a forwarded response may be kept: the smallest TTL of its answer and authority
    records (a negative answer: its SOA's TTL capped by the SOA minimum, RFC 2308). 0 = do not keep."""
    if response.header.tc or response.header.rcode not in (Rcode.NOERROR, Rcode.NXDOMAIN):
        return 0
    ttls = [r.ttl for r in (*response.answers, *response.authorities)]
    if not response.answers:
        soas = [r for r in response.authorities if isinstance(r.data, Soa)]
        if not soas:
            return 0
        ttls += [min(r.ttl, r.data.minimum) for r in soas if isinstance(r.data, Soa)]
    return min(ttls) if ttls else 0


class ForwardCache:
    """Forwarded responses keyed by (lower-cased name, type, class), kept for their smallest TTL
    (at most ``max_ttl``), ``max_entries`` at most, least recently used evicted first."""

    def __init__(self, clock: Clock, *, max_entries: int = 4096, max_ttl: int = 3600) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._max_ttl = max_ttl
        self._entries: OrderedDict[tuple[str, int, int], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(q: Question) -> tuple[str, int, int]:
        return _norm(q.name), q.qtype, q.qclass

    def put(self, query: Message, response: Message) -> None:
        ttl = min(cache_ttl(response), self._max_ttl)
        if ttl <= 0 or len(query.questions) != 1:
            return
        now = self._clock()
        key = self._key(query.question)
        self._entries[key] = _Entry(response, now, now + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def get(self, query: Message) -> Message | None:
        """The kept response re-addressed to ``query`` with its TTLs aged, or ``None``."""
        key = self._key(query.question)
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock()
        if now >= entry.expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        age = int(now - entry.stored_at)

        def aged(records: tuple[Record, ...]) -> tuple[Record, ...]:
            return tuple(replace(r, ttl=max(0, r.ttl - age)) for r in records)

        kept = entry.response
        header = replace(kept.header, id=query.header.id, rd=query.header.rd)
        return replace(kept, header=header, questions=query.questions, answers=aged(kept.answers),
                       authorities=aged(kept.authorities), additionals=aged(kept.additionals),
                       edns=reply_to(query).edns)


class Resolver:
    """Local answers first, then the cache; ``None`` means: forward it, then ``remember``."""

    def __init__(self, table: NameTable, clock: Clock, *, cache_entries: int = 4096, max_ttl: int = 3600) -> None:
        self._local = LocalAnswers(table)
        self.cache = ForwardCache(clock, max_entries=cache_entries, max_ttl=max_ttl)

    @property
    def table(self) -> NameTable:
        return self._local.table

    def update(self, table: NameTable) -> None:
        """Take a table the control plane pushed."""
        self._local = LocalAnswers(table)

    def resolve(self, query: Message) -> Message | None:
        local = self._local.answer(query)
        return local if local is not None else self.cache.get(query)

    def remember(self, query: Message, response: Message) -> None:
        self.cache.put(query, response)
