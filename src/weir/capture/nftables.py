"""Pure renderer: CaptureSpec -> a native nftables script (``nft -f`` input).

The script is Istio's (tools/istio-nftables): three ``inet`` tables, ``istio-proxy-nat``,
``istio-proxy-mangle`` and ``istio-proxy-raw``, each added, flushed and rebuilt, so that one
``nft -f`` applies IPv4 and IPv6 together in a single transaction. Only chains that get rules
are declared, base chains first, in a fixed order per table. Every rule counts its packets
(``counter`` before the final statement). An insert into a still-empty chain is an add,
because nftables can only insert before a rule that exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from weir.capture.spec import DNS_LISTENER_PORT, OUTBOUND_MARK, CaptureSpec, InterceptionMode

NAT = "istio-proxy-nat"
MANGLE = "istio-proxy-mangle"
RAW = "istio-proxy-raw"
TABLES = (NAT, MANGLE, RAW)

PREROUTING = "prerouting"
OUTPUT = "output"
INBOUND = "istio-inbound"
REDIRECT = "istio-redirect"
IN_REDIRECT = "istio-in-redirect"
OUTPUT_CHAIN = "istio-output"
OUTPUT_DNS = "istio-output-dns"
DIVERT = "istio-divert"
TPROXY = "istio-tproxy"
DROP = "istio-drop"

# Chains per table in declaration order; base chains carry their hook definition.
CHAINS: dict[str, tuple[tuple[str, str | None], ...]] = {
    NAT: (
        (PREROUTING, "type nat hook prerouting priority -100"),
        (OUTPUT, "type nat hook output priority -100"),
        (INBOUND, None), (REDIRECT, None), (IN_REDIRECT, None), (OUTPUT_CHAIN, None), (OUTPUT_DNS, None),
    ),
    MANGLE: (
        (PREROUTING, "type filter hook prerouting priority -150"),
        (OUTPUT, "type route hook output priority -150"),
        (DIVERT, None), (TPROXY, None), (INBOUND, None), (DROP, None),
    ),
    RAW: (
        (PREROUTING, "type filter hook prerouting priority -300"),
        (OUTPUT, "type filter hook output priority -300"),
        (INBOUND, None), (OUTPUT_DNS, None),
    ),
}


@dataclass(frozen=True)
class NftRule:
    """``add rule inet TABLE CHAIN MATCH counter ACTION`` (or ``insert ... index N``)."""

    table: str
    chain: str
    match: str
    action: str
    index: int | None = None

    def body(self) -> str:
        return " ".join(part for part in (self.match, "counter", self.action) if part)


class _Builder:
    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.rules: dict[str, list[NftRule]] = {t: [] for t in TABLES}

    def add(self, table: str, chain: str, match: str, action: str, *, v6: bool = False,
            index: int | None = None) -> None:
        """Add a rule; ``v6=True`` marks an IPv6-only rule, skipped unless IPv6 is on."""
        if v6 and not self.ipv6:
            return
        self.rules[table].append(NftRule(table, chain, match, action, index))


def build(spec: CaptureSpec) -> dict[str, tuple[NftRule, ...]]:
    """Rules per table, in order. Interception mode NONE captures nothing."""
    b = _Builder(spec.ipv6)
    if spec.interception_mode is not InterceptionMode.NONE:
        _build(b, spec)
    return {t: tuple(r) for t, r in b.rules.items()}


def _build(b: _Builder, spec: CaptureSpec) -> None:
    tproxy = spec.interception_mode is InterceptionMode.TPROXY
    lo4 = str(spec.ipv4_loopback_cidr)
    dns = spec.effective_redirect_dns
    for iface in spec.exclude_interfaces:
        b.add(NAT, PREROUTING, f"iifname {iface}", "return")
        b.add(NAT, OUTPUT, f"oifname {iface}", "return")
    if tproxy:
        for iface in spec.exclude_interfaces:
            b.add(MANGLE, PREROUTING, f"iifname {iface}", "return")
            b.add(MANGLE, OUTPUT, f"oifname {iface}", "return")
    for iface in spec.reroute_virtual_interfaces:
        b.add(NAT, PREROUTING, f"iifname {iface}", "return", index=0)
    if spec.drop_invalid:
        b.add(MANGLE, PREROUTING, "meta l4proto tcp ct state invalid", f"jump {DROP}")
        b.add(MANGLE, DROP, "", "drop")

    b.add(NAT, INBOUND, f"meta l4proto tcp tcp dport {spec.inbound_tunnel_port}", "return")
    b.add(NAT, REDIRECT, "meta l4proto tcp", f"redirect to :{spec.proxy_port}")
    b.add(NAT, IN_REDIRECT, "meta l4proto tcp", f"redirect to :{spec.inbound_capture_port}")
    _inbound(b, spec, tproxy, lo4)

    b.add(NAT, OUTPUT, "", f"jump {OUTPUT_CHAIN}")
    for port in spec.outbound_ports_exclude:
        b.add(NAT, OUTPUT_CHAIN, f"tcp dport {port}", "return")
        b.add(NAT, OUTPUT_CHAIN, f"udp dport {port}", "return")
    b.add(NAT, OUTPUT_CHAIN, "oifname lo ip saddr 127.0.0.6/32", "return")
    b.add(NAT, OUTPUT_CHAIN, "oifname lo ip6 saddr ::6/128", "return", v6=True)
    _owners(b, spec, lo4, dns)
    if spec.owner_groups_include.wildcard:
        for group in spec.owner_groups_exclude:
            b.add(NAT, OUTPUT_CHAIN, f"skgid {group}", "return")
    else:
        b.add(NAT, OUTPUT_CHAIN, " ".join(f"skgid != {g}" for g in spec.owner_groups_include.groups), "return")
    if dns:
        _dns(b, spec)
    b.add(NAT, OUTPUT_CHAIN, f"ip daddr {lo4}", "return")
    b.add(NAT, OUTPUT_CHAIN, "ip6 daddr ::1/128", "return", v6=True)
    ranges = spec.outbound_ip_ranges_include
    for cidr in spec.outbound_ip_ranges_exclude:
        if cidr.version == 4:
            b.add(NAT, OUTPUT_CHAIN, f"ip daddr {cidr}", "return")
    for cidr in spec.outbound_ip_ranges_exclude:
        if cidr.version == 6:
            b.add(NAT, OUTPUT_CHAIN, f"ip6 daddr {cidr}", "return", v6=True)
    for port in spec.outbound_ports_include:
        b.add(NAT, OUTPUT_CHAIN, f"tcp dport {port}", f"jump {REDIRECT}")
    if ranges.wildcard:
        b.add(NAT, OUTPUT_CHAIN, "", f"jump {REDIRECT}")
        for iface in spec.reroute_virtual_interfaces:
            b.add(NAT, PREROUTING, f"iifname {iface}", f"jump {REDIRECT}", index=0)
    else:
        for cidrs, ip, v6 in ((ranges.v4(), "ip", False), (ranges.v6(), "ip6", True)):
            for cidr in cidrs:
                for iface in spec.reroute_virtual_interfaces:
                    b.add(NAT, PREROUTING, f"iifname {iface} {ip} daddr {cidr}", f"jump {REDIRECT}", v6=v6, index=0)
                b.add(NAT, OUTPUT_CHAIN, f"{ip} daddr {cidr}", f"jump {REDIRECT}", v6=v6)
    if tproxy:
        _tproxy_marks(b, spec, lo4)


def _inbound(b: _Builder, spec: CaptureSpec, tproxy: bool, lo4: str) -> None:
    include = spec.inbound_ports_include
    if include.empty:
        return
    mark = spec.tproxy_mark
    port = spec.inbound_capture_port
    if tproxy:
        b.add(MANGLE, DIVERT, "", f"meta mark set {mark}")
        b.add(MANGLE, DIVERT, "", "accept")
        b.add(MANGLE, TPROXY, f"meta l4proto tcp ip daddr != {lo4} tproxy ip to :{port} meta mark set {mark}",
              "accept")
        b.add(MANGLE, TPROXY, f"meta l4proto tcp ip6 daddr != ::1/128 tproxy ip6 to :{port} meta mark set {mark}",
              "accept", v6=True)
    table = MANGLE if tproxy else NAT
    b.add(table, PREROUTING, "meta l4proto tcp", f"jump {INBOUND}")
    if include.wildcard:
        for excluded in spec.inbound_ports_exclude:
            b.add(table, INBOUND, f"meta l4proto tcp tcp dport {excluded}", "return")
        if tproxy:
            b.add(MANGLE, INBOUND, "meta l4proto tcp ct state related,established", f"jump {DIVERT}")
            b.add(MANGLE, INBOUND, "meta l4proto tcp", f"jump {TPROXY}")
        else:
            b.add(NAT, INBOUND, "meta l4proto tcp", f"jump {IN_REDIRECT}")
        return
    for included in include.ports:
        if tproxy:
            b.add(MANGLE, INBOUND, f"meta l4proto tcp ct state related,established tcp dport {included}",
                  f"jump {DIVERT}")
            b.add(MANGLE, INBOUND, f"meta l4proto tcp tcp dport {included}", f"jump {TPROXY}")
        else:
            b.add(NAT, INBOUND, f"meta l4proto tcp tcp dport {included}", f"jump {IN_REDIRECT}")


def _owners(b: _Builder, spec: CaptureSpec, lo4: str, dns: bool) -> None:
    tunnel = spec.inbound_tunnel_port
    keep_lo_return = not spec.outbound_ip_ranges_include.has_loopback
    for key, ids in (("skuid", spec.proxy_uids), ("skgid", spec.proxy_gids)):
        for ident in ids:
            ports = f"{{ 53, {tunnel} }}" if dns and key == "skuid" else str(tunnel)
            jump = f"jump {IN_REDIRECT}"
            b.add(NAT, OUTPUT_CHAIN,
                  f"oifname lo meta l4proto tcp ip daddr != {lo4} tcp dport != {ports} {key} {ident}", jump)
            b.add(NAT, OUTPUT_CHAIN,
                  f"oifname lo meta l4proto tcp ip6 daddr != ::1/128 tcp dport != {ports} {key} {ident}", jump, v6=True)
            if keep_lo_return:
                not_dns = "meta l4proto tcp tcp dport != 53 " if dns else ""
                b.add(NAT, OUTPUT_CHAIN, f"oifname lo {not_dns}{key} != {ident}", "return")
            b.add(NAT, OUTPUT_CHAIN, f"{key} {ident}", "return")


def _dns(b: _Builder, spec: CaptureSpec) -> None:
    port = DNS_LISTENER_PORT
    every = spec.capture_all_dns
    v4, v6 = spec.dns_servers_v4, spec.dns_servers_v6
    b.add(RAW, OUTPUT, "", f"jump {OUTPUT_DNS}")
    if every or v4 or v6:
        b.add(NAT, OUTPUT_CHAIN, "", f"jump {OUTPUT_DNS}")
    for proto in ("tcp", "udp"):
        if every:
            b.add(NAT, OUTPUT_DNS, f"meta l4proto {proto} {proto} dport 53" if proto == "tcp" else "udp dport 53",
                  f"redirect to :{port}")
            continue
        for server in v4:
            b.add(NAT, OUTPUT_DNS, f"ip daddr {server}/32 {proto} dport 53", f"redirect to :{port}")
        for server in v6:
            b.add(NAT, OUTPUT_DNS, f"ip6 daddr {server}/128 {proto} dport 53", f"redirect to :{port}", v6=True)
    for key, ids in (("skuid", spec.proxy_uids), ("skgid", spec.proxy_gids)):
        for ident in ids:
            b.add(RAW, OUTPUT_DNS, f"udp dport 53 meta {key} {ident}", "ct zone set 1")
            b.add(RAW, OUTPUT_DNS, f"udp sport {port} meta {key} {ident}", "ct zone set 2")
    if every:
        b.add(RAW, PREROUTING, "", f"jump {INBOUND}")
        b.add(RAW, OUTPUT_DNS, "udp dport 53", "ct zone set 2")
        b.add(RAW, INBOUND, "udp sport 53", "ct zone set 1")
        return
    if v4 or v6:
        b.add(RAW, PREROUTING, "", f"jump {INBOUND}")
    for server in v4:
        b.add(RAW, OUTPUT_DNS, f"udp dport 53 ip daddr {server}/32", "ct zone set 2")
        b.add(RAW, INBOUND, f"udp sport 53 ip saddr {server}/32", "ct zone set 1")
    for server in v6:
        b.add(RAW, OUTPUT_DNS, f"udp dport 53 ip6 daddr {server}/128", "ct zone set 2", v6=True)
        b.add(RAW, INBOUND, f"udp sport 53 ip6 saddr {server}/128", "ct zone set 1", v6=True)


def _tproxy_marks(b: _Builder, spec: CaptureSpec, lo4: str) -> None:
    mark = spec.tproxy_mark
    b.add(MANGLE, PREROUTING, f"meta l4proto tcp mark {mark}", "ct mark set mark")
    b.add(MANGLE, OUTPUT, f"oifname lo meta l4proto tcp mark {mark}", "return")
    for key, ids in (("skuid", spec.proxy_uids), ("skgid", spec.proxy_gids)):
        for ident in ids:
            b.add(MANGLE, OUTPUT, f"oifname lo meta l4proto tcp ip daddr != {lo4} {key} {ident}",
                  f"meta mark set {OUTBOUND_MARK}")
            b.add(MANGLE, OUTPUT, f"oifname lo meta l4proto tcp ip6 daddr != ::1/128 {key} {ident}",
                  f"meta mark set {OUTBOUND_MARK}", v6=True)
    b.add(MANGLE, OUTPUT, f"meta l4proto tcp ct mark {mark}", "meta mark set ct mark")
    b.add(MANGLE, INBOUND, f"meta l4proto tcp mark {mark}", "return", index=0)
    b.add(MANGLE, INBOUND, "iifname lo meta l4proto tcp ip saddr 127.0.0.6/32", "return", index=1)
    b.add(MANGLE, INBOUND, "iifname lo meta l4proto tcp ip6 saddr ::6/128", "return", index=1, v6=True)
    b.add(MANGLE, INBOUND, f"iifname lo meta l4proto tcp mark != {OUTBOUND_MARK}", "return", index=2)


def table_script(table: str, rules: tuple[NftRule, ...]) -> list[str]:
    """The lines that (re)build one table; empty when the table has no rules.

    An insert at or past the end of a chain is written as an add, as Istio does: nft can
    only insert before an existing rule, and appending is what such an insert means.
    """
    if not rules:
        return []
    used = {r.chain for r in rules}
    lines = [f"add table inet {table}", f"flush table inet {table}"]
    for chain, hook in CHAINS[table]:
        if chain in used:
            lines.append(f"add chain inet {table} {chain}" + (f" {{ {hook} ; }}" if hook else ""))
    count: dict[str, int] = {}
    for rule in rules:
        have = count.get(rule.chain, 0)
        if rule.index is None or rule.index >= have:
            lines.append(f"add rule inet {table} {rule.chain} {rule.body()}")
        else:
            lines.append(f"insert rule inet {table} {rule.chain} index {rule.index} {rule.body()}")
        count[rule.chain] = have + 1
    return lines


def render(spec: CaptureSpec) -> str:
    """The whole ``nft -f`` script for ``spec`` (both address families, one transaction)."""
    tables = build(spec)
    lines = [line for table in TABLES for line in table_script(table, tables[table])]
    return "".join(line + "\n" for line in lines)
