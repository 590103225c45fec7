"""Pure renderer: CaptureSpec -> iptables-restore input, one per address family.

The rules, their order and their text are Istio's (tools/istio-iptables capture/run.go), so
that ``iptables-save`` in a weir pod shows exactly the chains an Istio user knows. Output is
``iptables-restore --noflush`` input: tables in alphabetical order, empty tables left out;
per table first ``-N`` for each Istio chain in the order it first gets a rule, then ``-N``
for chains that are only jumped to, then every rule in the order it was added.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from weir.capture.spec import (
    DNS_LISTENER_PORT,
    OUTBOUND_MARK,
    CaptureSpec,
    InterceptionMode,
    RangeSelection,
)

ISTIO_INBOUND = "ISTIO_INBOUND"
ISTIO_REDIRECT = "ISTIO_REDIRECT"
ISTIO_IN_REDIRECT = "ISTIO_IN_REDIRECT"
ISTIO_OUTPUT = "ISTIO_OUTPUT"
ISTIO_OUTPUT_DNS = "ISTIO_OUTPUT_DNS"
ISTIO_DIVERT = "ISTIO_DIVERT"
ISTIO_TPROXY = "ISTIO_TPROXY"
ISTIO_DROP = "ISTIO_DROP"

CHAIN_PREFIX = "ISTIO_"
BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
TABLES = ("filter", "mangle", "nat", "raw")

_V = "\0family-specific\0"  # placeholder replaced per family (Istio's IPVersionSpecific)


@dataclass(frozen=True)
class Rule:
    """One restore line: ``-A CHAIN args...`` or ``-I CHAIN POS args...`` in ``table``."""

    table: str
    chain: str
    args: tuple[str, ...]
    position: int | None = None

    def line(self) -> str:
        head = ("-A", self.chain) if self.position is None else ("-I", self.chain, str(self.position))
        return " ".join((*head, *self.args))

    @property
    def target(self) -> str | None:
        if len(self.args) >= 2 and self.args[-2] == "-j":
            return self.args[-1]
        return None


@dataclass(frozen=True)
class IptablesPlan:
    """Rules per family, in the order they are applied."""

    v4: tuple[Rule, ...]
    v6: tuple[Rule, ...]

    def rules(self, family: int) -> tuple[Rule, ...]:
        return self.v4 if family == 4 else self.v6

    def restore(self, family: int) -> str:
        return restore_text(self.rules(family))


class _Builder:
    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.v4: list[Rule] = []
        self.v6: list[Rule] = []

    def add(self, table: str, chain: str, *args: str, v4: bool = True, v6: bool = True,
            position: int | None = None) -> None:
        if v4:
            self.v4.append(Rule(table, chain, args, position))
        if v6 and self.ipv6:
            self.v6.append(Rule(table, chain, args, position))

    def versioned(self, v4_value: str, v6_value: str, table: str, chain: str, *args: str,
                  position: int | None = None) -> None:
        """Add a rule to both families with a family-specific address substituted."""
        self.add(table, chain, *(v4_value if a == _V else a for a in args), v6=False, position=position)
        self.add(table, chain, *(v6_value if a == _V else a for a in args), v4=False, position=position)


def build(spec: CaptureSpec) -> IptablesPlan:
    """All rules for ``spec``, per family. Interception mode NONE captures nothing."""
    b = _Builder(spec.ipv6)
    if spec.interception_mode is InterceptionMode.NONE:
        return IptablesPlan((), ())
    tproxy = spec.interception_mode is InterceptionMode.TPROXY
    lo4 = str(spec.ipv4_loopback_cidr)
    dns = spec.effective_redirect_dns

    for iface in spec.exclude_interfaces:
        b.add("nat", "PREROUTING", "-i", iface, "-j", "RETURN")
        b.add("nat", "OUTPUT", "-o", iface, "-j", "RETURN")
    if tproxy:
        for iface in spec.exclude_interfaces:
            b.add("mangle", "PREROUTING", "-i", iface, "-j", "RETURN")
            b.add("mangle", "OUTPUT", "-o", iface, "-j", "RETURN")
    for iface in spec.reroute_virtual_interfaces:
        b.add("nat", "PREROUTING", "-i", iface, "-j", "RETURN", position=1)
    if spec.drop_invalid:
        b.add("mangle", "PREROUTING", "-m", "conntrack", "--ctstate", "INVALID", "-j", ISTIO_DROP)
        b.add("mangle", ISTIO_DROP, "-j", "DROP")

    b.add("nat", ISTIO_INBOUND, "-p", "tcp", "--dport", str(spec.inbound_tunnel_port), "-j", "RETURN")
    b.add("nat", ISTIO_REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(spec.proxy_port))
    b.add("nat", ISTIO_IN_REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(spec.inbound_capture_port))
    _inbound(b, spec, tproxy, lo4)

    b.add("nat", "OUTPUT", "-j", ISTIO_OUTPUT)
    for port in spec.outbound_ports_exclude:
        b.add("nat", ISTIO_OUTPUT, "-p", "tcp", "--dport", str(port), "-j", "RETURN")
        b.add("nat", ISTIO_OUTPUT, "-p", "udp", "--dport", str(port), "-j", "RETURN")
    b.versioned("127.0.0.6/32", "::6/128", "nat", ISTIO_OUTPUT, "-o", "lo", "-s", _V, "-j", "RETURN")
    _owners(b, spec, lo4, dns)
    _owner_groups(b, spec)
    if dns:
        _dns(b, spec)
    b.versioned(lo4, "::1/128", "nat", ISTIO_OUTPUT, "-d", _V, "-j", "RETURN")
    for cidr in spec.outbound_ip_ranges_exclude:
        b.add("nat", ISTIO_OUTPUT, "-d", str(cidr), "-j", "RETURN", v4=cidr.version == 4, v6=cidr.version == 6)
    for port in spec.outbound_ports_include:
        b.add("nat", ISTIO_OUTPUT, "-p", "tcp", "--dport", str(port), "-j", ISTIO_REDIRECT)
    _outbound_include(b, spec, spec.outbound_ip_ranges_include, 4)
    _outbound_include(b, spec, spec.outbound_ip_ranges_include, 6)
    if tproxy:
        _tproxy_marks(b, spec, lo4)
    return IptablesPlan(tuple(b.v4), tuple(b.v6))


def _inbound(b: _Builder, spec: CaptureSpec, tproxy: bool, lo4: str) -> None:
    include = spec.inbound_ports_include
    if include.empty:
        return
    mark = str(spec.tproxy_mark)
    if tproxy:
        b.add("mangle", ISTIO_DIVERT, "-j", "MARK", "--set-mark", mark)
        b.add("mangle", ISTIO_DIVERT, "-j", "ACCEPT")
        b.versioned(lo4, "::1/128", "mangle", ISTIO_TPROXY, "!", "-d", _V, "-p", "tcp", "-j", "TPROXY",
                    "--tproxy-mark", f"{mark}/0xffffffff", "--on-port", str(spec.inbound_capture_port))
    table = "mangle" if tproxy else "nat"
    b.add(table, "PREROUTING", "-p", "tcp", "-j", ISTIO_INBOUND)
    if include.wildcard:
        for port in spec.inbound_ports_exclude:
            b.add(table, ISTIO_INBOUND, "-p", "tcp", "--dport", str(port), "-j", "RETURN")
        if tproxy:
            b.add("mangle", ISTIO_INBOUND, "-p", "tcp", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
                  "-j", ISTIO_DIVERT)
            b.add("mangle", ISTIO_INBOUND, "-p", "tcp", "-j", ISTIO_TPROXY)
        else:
            b.add("nat", ISTIO_INBOUND, "-p", "tcp", "-j", ISTIO_IN_REDIRECT)
        return
    for port in include.ports:
        if tproxy:
            b.add("mangle", ISTIO_INBOUND, "-p", "tcp", "--dport", str(port), "-m", "conntrack", "--ctstate",
                  "RELATED,ESTABLISHED", "-j", ISTIO_DIVERT)
            b.add("mangle", ISTIO_INBOUND, "-p", "tcp", "--dport", str(port), "-j", ISTIO_TPROXY)
        else:
            b.add("nat", ISTIO_INBOUND, "-p", "tcp", "--dport", str(port), "-j", ISTIO_IN_REDIRECT)


def _owners(b: _Builder, spec: CaptureSpec, lo4: str, dns: bool) -> None:
    tunnel = str(spec.inbound_tunnel_port)
    keep_lo_return = not spec.outbound_ip_ranges_include.has_loopback
    for kind, ids in (("--uid-owner", spec.proxy_uids), ("--gid-owner", spec.proxy_gids)):
        for ident in (str(i) for i in ids):
            if dns and kind == "--uid-owner":
                ports: tuple[str, ...] = ("-m", "multiport", "!", "--dports", f"53,{tunnel}")
            else:
                ports = ("!", "--dport", tunnel)
            b.versioned(lo4, "::1/128", "nat", ISTIO_OUTPUT, "-o", "lo", "!", "-d", _V, "-p", "tcp", *ports,
                        "-m", "owner", kind, ident, "-j", ISTIO_IN_REDIRECT)
            if keep_lo_return:
                not_dns: tuple[str, ...] = ("-p", "tcp", "!", "--dport", "53") if dns else ()
                b.add("nat", ISTIO_OUTPUT, "-o", "lo", *not_dns, "-m", "owner", "!", kind, ident, "-j", "RETURN")
            b.add("nat", ISTIO_OUTPUT, "-m", "owner", kind, ident, "-j", "RETURN")


def _owner_groups(b: _Builder, spec: CaptureSpec) -> None:
    if spec.owner_groups_include.wildcard:
        for group in spec.owner_groups_exclude:
            b.add("nat", ISTIO_OUTPUT, "-m", "owner", "--gid-owner", group, "-j", "RETURN")
        return
    none_of = [arg for g in spec.owner_groups_include.groups for arg in ("-m", "owner", "!", "--gid-owner", g)]
    b.add("nat", ISTIO_OUTPUT, *none_of, "-j", "RETURN")


def _dns(b: _Builder, spec: CaptureSpec) -> None:
    port = str(DNS_LISTENER_PORT)
    every = spec.capture_all_dns
    v4, v6 = spec.dns_servers_v4, spec.dns_servers_v6
    b.add("raw", "OUTPUT", "-j", ISTIO_OUTPUT_DNS)
    b.add("nat", ISTIO_OUTPUT, "-j", ISTIO_OUTPUT_DNS, v4=every or bool(v4), v6=every or bool(v6))
    for proto, flag in (("tcp", "--to-ports"), ("udp", "--to-port")):
        if every:
            b.add("nat", ISTIO_OUTPUT_DNS, "-p", proto, "--dport", "53", "-j", "REDIRECT", flag, port)
            continue
        for server in v4:
            b.add("nat", ISTIO_OUTPUT_DNS, "-p", proto, "--dport", "53", "-d", f"{server}/32", "-j", "REDIRECT",
                  flag, port, v6=False)
        for server in v6:
            b.add("nat", ISTIO_OUTPUT_DNS, "-p", proto, "--dport", "53", "-d", f"{server}/128", "-j", "REDIRECT",
                  flag, port, v4=False)
    for kind, ids in (("--uid-owner", spec.proxy_uids), ("--gid-owner", spec.proxy_gids)):
        for ident in (str(i) for i in ids):
            b.add("raw", ISTIO_OUTPUT_DNS, "-p", "udp", "--dport", "53", "-m", "owner", kind, ident,
                  "-j", "CT", "--zone", "1")
            b.add("raw", ISTIO_OUTPUT_DNS, "-p", "udp", "--sport", port, "-m", "owner", kind, ident,
                  "-j", "CT", "--zone", "2")
    if every:
        b.add("raw", "PREROUTING", "-j", ISTIO_INBOUND)
        b.add("raw", ISTIO_OUTPUT_DNS, "-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2")
        b.add("raw", ISTIO_INBOUND, "-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1")
        return
    for servers, suffix, is4 in ((v4, "/32", True), (v6, "/128", False)):
        if servers:
            b.add("raw", "PREROUTING", "-j", ISTIO_INBOUND, v4=is4, v6=not is4)
        for server in servers:
            b.add("raw", ISTIO_OUTPUT_DNS, "-p", "udp", "--dport", "53", "-d", server + suffix,
                  "-j", "CT", "--zone", "2", v4=is4, v6=not is4)
            b.add("raw", ISTIO_INBOUND, "-p", "udp", "--sport", "53", "-s", server + suffix,
                  "-j", "CT", "--zone", "1", v4=is4, v6=not is4)


def _outbound_include(b: _Builder, spec: CaptureSpec, ranges: RangeSelection, family: int) -> None:
    is4 = family == 4
    if ranges.wildcard:
        b.add("nat", ISTIO_OUTPUT, "-j", ISTIO_REDIRECT, v4=is4, v6=not is4)
        for iface in spec.reroute_virtual_interfaces:
            b.add("nat", "PREROUTING", "-i", iface, "-j", ISTIO_REDIRECT, v4=is4, v6=not is4, position=1)
        return
    for cidr in ranges.v4() if is4 else ranges.v6():
        for iface in spec.reroute_virtual_interfaces:
            b.add("nat", "PREROUTING", "-i", iface, "-d", str(cidr), "-j", ISTIO_REDIRECT, v4=is4, v6=not is4,
                  position=1)
        b.add("nat", ISTIO_OUTPUT, "-d", str(cidr), "-j", ISTIO_REDIRECT, v4=is4, v6=not is4)


def _tproxy_marks(b: _Builder, spec: CaptureSpec, lo4: str) -> None:
    mark = str(spec.tproxy_mark)
    b.add("mangle", "PREROUTING", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "CONNMARK", "--save-mark")
    b.add("mangle", "OUTPUT", "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN")
    for kind, ids in (("--uid-owner", spec.proxy_uids), ("--gid-owner", spec.proxy_gids)):
        for ident in (str(i) for i in ids):
            b.versioned(lo4, "::1/128", "mangle", "OUTPUT", "!", "-d", _V, "-p", "tcp", "-o", "lo",
                        "-m", "owner", kind, ident, "-j", "MARK", "--set-mark", str(OUTBOUND_MARK))
    b.add("mangle", "OUTPUT", "-p", "tcp", "-m", "connmark", "--mark", mark, "-j", "CONNMARK", "--restore-mark")
    b.add("mangle", ISTIO_INBOUND, "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN", position=1)
    b.versioned("127.0.0.6/32", "::6/128", "mangle", ISTIO_INBOUND, "-p", "tcp", "-s", _V, "-i", "lo",
                "-j", "RETURN", position=2)
    b.add("mangle", ISTIO_INBOUND, "-p", "tcp", "-i", "lo", "-m", "mark", "!", "--mark", str(OUTBOUND_MARK),
          "-j", "RETURN", position=3)


def restore_text(rules: Iterable[Rule]) -> str:
    """iptables-restore input for one family (empty string when there are no rules)."""
    rules = list(rules)
    per_table: dict[str, list[str]] = {t: [] for t in TABLES}
    declared: set[tuple[str, str]] = set()

    def declare(table: str, chain: str) -> None:
        if chain in BUILTIN_CHAINS or (table, chain) in declared:
            return
        declared.add((table, chain))
        per_table.setdefault(table, []).append(f"-N {chain}")

    for rule in rules:
        declare(rule.table, rule.chain)
    for rule in rules:
        if rule.target and rule.target.startswith(CHAIN_PREFIX):
            declare(rule.table, rule.target)
    for rule in rules:
        per_table[rule.table].append(rule.line())
    out = []
    for table in sorted(per_table):
        if per_table[table]:
            out.append(f"* {table}")
            out.extend(per_table[table])
            out.append("COMMIT")
    return "".join(line + "\n" for line in out)


def render(spec: CaptureSpec, family: int = 4) -> str:
    """iptables-restore input for ``family`` (4 or 6); empty when the family has no rules."""
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family}")
    return build(spec).restore(family)
