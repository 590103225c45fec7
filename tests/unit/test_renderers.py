"""Semantics of the two pure renderers beyond the Istio goldens (weir.capture.iptables / nftables).

The goldens pin Istio's text for Istio's scenarios; these tests pin the rules' meaning for
specs the goldens do not cover, and the structure every output must have.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest

from weir.capture import iptables, nftables
from weir.capture.spec import (
    CaptureSpec,
    GroupSelection,
    InterceptionMode,
    PortSelection,
    RangeSelection,
    parse_cidr_list,
)

ALL = PortSelection(wildcard=True)
EVERYWHERE = RangeSelection(wildcard=True)


def sidecar(**changes: Any) -> CaptureSpec:
    """What the CNI plugin programs by default: capture everything in and out."""
    values: dict[str, Any] = {"inbound_ports_include": ALL, "outbound_ip_ranges_include": EVERYWHERE,
                              "inbound_ports_exclude": (15020, 15021, 15090), "outbound_ports_exclude": (15020,)}
    values.update(changes)
    return CaptureSpec(**values)


def ranges(text: str) -> RangeSelection:
    return parse_cidr_list("test", text, allow_wildcard=True)


def tables(text: str) -> dict[str, list[str]]:
    """iptables-restore text -> table -> lines between ``* table`` and ``COMMIT``."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("* "):
            assert current is None, f"table opened inside a table: {line}"
            current = out.setdefault(line[2:], [])
        elif line == "COMMIT":
            current = None
        else:
            assert current is not None, f"line outside a table: {line}"
            current.append(line)
    assert current is None, "last table not committed"
    return out


def chain_rules(text: str, table: str, chain: str) -> list[str]:
    """The rule arguments of ``chain`` in ``table`` (after ``-A CHAIN`` / ``-I CHAIN N``)."""
    rules = []
    for line in tables(text).get(table, []):
        parts = line.split(" ")
        if parts[0] == "-A" and parts[1] == chain:
            rules.append(" ".join(parts[2:]))
        elif parts[0] == "-I" and parts[1] == chain:
            rules.append(" ".join(parts[3:]))
    return rules


def nft_rules(script: str, table: str, chain: str) -> list[str]:
    """Rule bodies (match, counter, action) of one nft chain, in script order."""
    pattern = re.compile(rf"^(?:add|insert) rule inet {re.escape(table)} {re.escape(chain)} (?:index \d+ )?(.*)$")
    return [m.group(1) for line in script.splitlines() if (m := pattern.match(line))]


SPECS = {
    "redirect": sidecar(),
    "redirect-ipv6": sidecar(enable_ipv6=True),
    "tproxy": sidecar(interception_mode=InterceptionMode.TPROXY, enable_ipv6=True),
    "tproxy-no-inbound": CaptureSpec(interception_mode=InterceptionMode.TPROXY, enable_ipv6=True),
    "dns-all": sidecar(redirect_dns=True, capture_all_dns=True, enable_ipv6=True),
    "dns-servers": sidecar(redirect_dns=True, dns_servers_v4=("10.96.0.10",), dns_servers_v6=("fd00::a",),
                           enable_ipv6=True),
    "everything": sidecar(interception_mode=InterceptionMode.TPROXY, drop_invalid=True, redirect_dns=True,
                          capture_all_dns=True, exclude_interfaces=("eth1",), reroute_virtual_interfaces=("k6t-eth0",),
                          outbound_ip_ranges_exclude=ranges("10.0.0.0/8,fd00::/8").cidrs,
                          outbound_ports_include=(3306,), proxy_uids=(1337, 1338), dual_stack=True),
    "inbound-list": sidecar(inbound_ports_include=PortSelection(ports=(9080, 9443)),
                            outbound_ip_ranges_include=ranges("10.0.0.0/8,fd00::/8"), enable_ipv6=True),
    "kubevirt": sidecar(reroute_virtual_interfaces=("k6t-eth0", "net1")),
    "empty": CaptureSpec(),
}


# ---- both renderers ------------------------------------------------------------------------------


def test_interception_mode_none_renders_nothing() -> None:
    spec = sidecar(interception_mode=InterceptionMode.NONE, redirect_dns=True, capture_all_dns=True,
                   drop_invalid=True, exclude_interfaces=("eth1",), enable_ipv6=True)
    assert iptables.render(spec, 4) == iptables.render(spec, 6) == ""
    assert nftables.render(spec) == ""
    assert iptables.build(spec).rules(4) == iptables.build(spec).rules(6) == ()


def test_ipv6_rules_only_when_ipv6_is_on() -> None:
    assert iptables.render(sidecar(), 6) == ""
    assert "ip6 " not in nftables.render(sidecar())
    for spec in (sidecar(enable_ipv6=True), sidecar(dual_stack=True)):
        v6 = iptables.render(spec, 6)
        assert "::1/128" in v6
        assert "::6/128" in v6
        assert "127.0.0." not in v6
        assert "::" not in iptables.render(spec, 4)
        assert "ip6 daddr != ::1/128" in nftables.render(spec)


def test_family_must_be_4_or_6() -> None:
    with pytest.raises(ValueError, match="family must be 4 or 6"):
        iptables.render(sidecar(), 5)


@pytest.mark.parametrize(("include", "kept"), [("127.0.0.0/8,10.0.0.0/8", False), ("10.0.0.0/8", True),
                                               ("*", True), ("::1/128", False)])
@pytest.mark.parametrize("dns", [False, True])
def test_loopback_include_drops_the_lo_returns_for_other_users(include: str, kept: bool, dns: bool) -> None:
    spec = sidecar(outbound_ip_ranges_include=ranges(include), proxy_uids=(1337, 7),
                   redirect_dns=dns, capture_all_dns=dns)
    lo_returns = [r for r in chain_rules(iptables.render(spec, 4), "nat", "ISTIO_OUTPUT")
                  if r.startswith("-o lo") and re.search(r"-m owner ! --(uid|gid)-owner \d+ -j RETURN$", r)]
    assert len(lo_returns) == (3 if kept else 0)  # two uids and one gid
    nft_lo_returns = [r for r in nft_rules(nftables.render(spec), nftables.NAT, nftables.OUTPUT_CHAIN)
                      if r.startswith("oifname lo") and re.search(r"sk[ug]id != \d+ counter return$", r)]
    assert len(nft_lo_returns) == len(lo_returns)
    if dns and kept:
        assert all("! --dport 53" in r for r in lo_returns)
        assert all("tcp dport != 53" in r for r in nft_lo_returns)


def test_owner_group_include_is_one_combined_rule() -> None:
    spec = sidecar(owner_groups_include=GroupSelection(wildcard=False, groups=("java", "202", "nobody")))
    group_rules = [r for r in chain_rules(iptables.render(spec, 4), "nat", "ISTIO_OUTPUT") if "--gid-owner java" in r]
    assert group_rules == ["-m owner ! --gid-owner java -m owner ! --gid-owner 202 -m owner ! --gid-owner nobody "
                           "-j RETURN"]
    nft = [r for r in nft_rules(nftables.render(spec), nftables.NAT, nftables.OUTPUT_CHAIN) if "java" in r]
    assert nft == ["skgid != java skgid != 202 skgid != nobody counter return"]


def test_owner_group_exclude_is_one_return_per_group() -> None:
    spec = sidecar(owner_groups_exclude=("java", "202"))
    rules = chain_rules(iptables.render(spec, 4), "nat", "ISTIO_OUTPUT")
    assert [r for r in rules if "--gid-owner java" in r or "--gid-owner 202" in r] == [
        "-m owner --gid-owner java -j RETURN", "-m owner --gid-owner 202 -j RETURN"]
    assert [r for r in nft_rules(nftables.render(spec), nftables.NAT, nftables.OUTPUT_CHAIN) if "skgid" in r
            and ("java" in r or "202" in r)] == ["skgid java counter return", "skgid 202 counter return"]


# ---- DNS -----------------------------------------------------------------------------------------


def test_dns_servers_v4_only_give_no_ipv6_dns_jump() -> None:
    spec = sidecar(redirect_dns=True, dns_servers_v4=("10.96.0.10",), enable_ipv6=True)
    v4, v6 = iptables.render(spec, 4), iptables.render(spec, 6)
    assert "-j ISTIO_OUTPUT_DNS" in chain_rules(v4, "nat", "ISTIO_OUTPUT")
    assert "-j ISTIO_OUTPUT_DNS" not in chain_rules(v6, "nat", "ISTIO_OUTPUT")
    assert "-j ISTIO_INBOUND" in chain_rules(v4, "raw", "PREROUTING")
    assert "-j ISTIO_INBOUND" not in chain_rules(v6, "raw", "PREROUTING")
    assert all("10.96.0.10/32" in r for r in chain_rules(v4, "nat", "ISTIO_OUTPUT_DNS"))
    assert len(chain_rules(v4, "nat", "ISTIO_OUTPUT_DNS")) == 2  # tcp and udp
    assert chain_rules(v6, "nat", "ISTIO_OUTPUT_DNS") == []
    nft = nftables.render(spec)
    assert not [r for r in nft_rules(nft, nftables.NAT, nftables.OUTPUT_DNS) if "ip6" in r]
    assert [r for r in nft_rules(nft, nftables.NAT, nftables.OUTPUT_DNS) if "10.96.0.10/32" in r]


def test_dns_servers_v6_only_give_no_ipv4_dns_jump() -> None:
    spec = sidecar(redirect_dns=True, dns_servers_v6=("fd00::a",), enable_ipv6=True)
    v4, v6 = iptables.render(spec, 4), iptables.render(spec, 6)
    assert "-j ISTIO_OUTPUT_DNS" not in chain_rules(v4, "nat", "ISTIO_OUTPUT")
    assert "-j ISTIO_OUTPUT_DNS" in chain_rules(v6, "nat", "ISTIO_OUTPUT")
    assert all("fd00::a/128" in r for r in chain_rules(v6, "nat", "ISTIO_OUTPUT_DNS"))


def test_capture_all_dns_in_both_families() -> None:
    spec = sidecar(redirect_dns=True, capture_all_dns=True, enable_ipv6=True)
    for family in (4, 6):
        text = iptables.render(spec, family)
        assert "-j ISTIO_OUTPUT_DNS" in chain_rules(text, "nat", "ISTIO_OUTPUT")
        assert [r for r in chain_rules(text, "nat", "ISTIO_OUTPUT_DNS") if " -d " in r] == []
        assert any("--dports 53,15008" in r for r in chain_rules(text, "nat", "ISTIO_OUTPUT"))


def test_redirect_dns_without_servers_or_capture_all_does_nothing() -> None:
    spec = sidecar(redirect_dns=True)
    assert iptables.render(spec, 4) == iptables.render(sidecar(), 4)
    assert nftables.render(spec) == nftables.render(sidecar())


def test_dns_proxy_traffic_is_kept_out_of_conntrack_zones_per_proxy_id() -> None:
    spec = sidecar(redirect_dns=True, capture_all_dns=True, proxy_uids=(1337, 7), proxy_gids=(8,))
    zones = chain_rules(iptables.render(spec, 4), "raw", "ISTIO_OUTPUT_DNS")
    for owner in ("--uid-owner 1337", "--uid-owner 7", "--gid-owner 8"):
        assert len([r for r in zones if owner in r]) == 2


# ---- iptables specifics --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("family", [4, 6])
def test_restore_text_is_well_formed(name: str, family: int) -> None:
    text = iptables.render(SPECS[name], family)
    parsed = tables(text)
    assert list(parsed) == sorted(parsed)
    assert all(parsed.values()), "empty tables are left out"
    for table, lines in parsed.items():
        declared = [line.split()[1] for line in lines if line.startswith("-N ")]
        first_rule = next(i for i, line in enumerate(lines) if not line.startswith("-N "))
        assert all(not line.startswith("-N ") for line in lines[first_rule:]), f"{table}: -N after a rule"
        assert len(declared) == len(set(declared))
        assert not set(declared) & iptables.BUILTIN_CHAINS
        used = {line.split()[1] for line in lines if line.startswith(("-A ", "-I "))}
        targets = {line.split()[-1] for line in lines if " -j ISTIO_" in line}
        assert (used | targets) - iptables.BUILTIN_CHAINS == set(declared)
    if text:
        assert text.endswith("COMMIT\n")


def test_inbound_capture_in_nat_for_redirect_and_in_mangle_for_tproxy() -> None:
    redirect = iptables.render(sidecar(), 4)
    tproxy = iptables.render(sidecar(interception_mode=InterceptionMode.TPROXY), 4)
    assert "-p tcp -j ISTIO_INBOUND" in chain_rules(redirect, "nat", "PREROUTING")
    assert "mangle" not in tables(redirect)
    assert "-p tcp -j ISTIO_INBOUND" in chain_rules(tproxy, "mangle", "PREROUTING")
    assert "-p tcp -j ISTIO_INBOUND" not in chain_rules(tproxy, "nat", "PREROUTING")


def test_tproxy_uses_the_configured_mark_and_port() -> None:
    text = iptables.render(sidecar(interception_mode=InterceptionMode.TPROXY, tproxy_mark=1400,
                                   inbound_capture_port=16006), 4)
    assert chain_rules(text, "mangle", "ISTIO_DIVERT")[0] == "-j MARK --set-mark 1400"
    assert "--tproxy-mark 1400/0xffffffff --on-port 16006" in chain_rules(text, "mangle", "ISTIO_TPROXY")[0]
    inbound_chains = chain_rules(text, "mangle", "ISTIO_DIVERT") + chain_rules(text, "mangle", "ISTIO_TPROXY")
    assert "1337" not in " ".join(inbound_chains)


def test_custom_ports_are_used() -> None:
    text = iptables.render(sidecar(proxy_port=15101, inbound_capture_port=15106, inbound_tunnel_port=15108), 4)
    assert chain_rules(text, "nat", "ISTIO_REDIRECT") == ["-p tcp -j REDIRECT --to-ports 15101"]
    assert chain_rules(text, "nat", "ISTIO_IN_REDIRECT") == ["-p tcp -j REDIRECT --to-ports 15106"]
    assert chain_rules(text, "nat", "ISTIO_INBOUND")[0] == "-p tcp --dport 15108 -j RETURN"


def test_inbound_port_list_ignores_the_excludes() -> None:
    text = iptables.render(SPECS["inbound-list"], 4)
    inbound = chain_rules(text, "nat", "ISTIO_INBOUND")
    assert [r for r in inbound if r.endswith("-j ISTIO_IN_REDIRECT")] == [
        "-p tcp --dport 9080 -j ISTIO_IN_REDIRECT", "-p tcp --dport 9443 -j ISTIO_IN_REDIRECT"]
    assert not [r for r in inbound if "15021" in r]


def test_inbound_wildcard_returns_the_excluded_ports_first() -> None:
    inbound = chain_rules(iptables.render(sidecar(inbound_ports_exclude=(22, 15020)), 4), "nat", "ISTIO_INBOUND")
    assert inbound[1:] == ["-p tcp --dport 22 -j RETURN", "-p tcp --dport 15020 -j RETURN",
                           "-p tcp -j ISTIO_IN_REDIRECT"]


def test_outbound_ranges_go_to_their_own_family() -> None:
    spec = sidecar(outbound_ip_ranges_include=ranges("10.0.0.0/8,fd00::/8"),
                   outbound_ip_ranges_exclude=ranges("10.96.0.0/12,fd00:1::/32").cidrs, enable_ipv6=True)
    v4 = chain_rules(iptables.render(spec, 4), "nat", "ISTIO_OUTPUT")
    v6 = chain_rules(iptables.render(spec, 6), "nat", "ISTIO_OUTPUT")
    assert "-d 10.96.0.0/12 -j RETURN" in v4
    assert "-d 10.0.0.0/8 -j ISTIO_REDIRECT" in v4
    assert "-d fd00:1::/32 -j RETURN" in v6
    assert "-d fd00::/8 -j ISTIO_REDIRECT" in v6
    assert not [r for r in v4 if "fd00" in r]
    assert not [r for r in v6 if "10." in r]
    assert "-j ISTIO_REDIRECT" not in v4 + v6  # no catch-all without the wildcard


def test_outbound_excludes_come_before_the_redirects() -> None:
    rules = chain_rules(iptables.render(SPECS["everything"], 4), "nat", "ISTIO_OUTPUT")
    assert rules.index("-d 10.0.0.0/8 -j RETURN") < rules.index("-p tcp --dport 3306 -j ISTIO_REDIRECT")
    assert rules.index("-p tcp --dport 3306 -j ISTIO_REDIRECT") < rules.index("-j ISTIO_REDIRECT")
    assert rules[-1] == "-j ISTIO_REDIRECT"


def test_excluded_interfaces_return_first() -> None:
    text = iptables.render(sidecar(exclude_interfaces=("eth1", "eth2"), interception_mode=InterceptionMode.TPROXY), 4)
    for table in ("nat", "mangle"):
        assert chain_rules(text, table, "PREROUTING")[:2] == ["-i eth1 -j RETURN", "-i eth2 -j RETURN"]
        assert chain_rules(text, table, "OUTPUT")[:2] == ["-o eth1 -j RETURN", "-o eth2 -j RETURN"]
    assert "mangle" not in tables(iptables.render(sidecar(exclude_interfaces=("eth1",)), 4))


def test_virtual_interfaces_are_inserted_at_the_top_of_prerouting() -> None:
    rules = iptables.build(SPECS["kubevirt"]).rules(4)
    inserted = [r.line() for r in rules if r.chain == "PREROUTING" and r.position is not None]
    assert inserted == ["-I PREROUTING 1 -i k6t-eth0 -j RETURN", "-I PREROUTING 1 -i net1 -j RETURN",
                        "-I PREROUTING 1 -i k6t-eth0 -j ISTIO_REDIRECT", "-I PREROUTING 1 -i net1 -j ISTIO_REDIRECT"]


def test_drop_invalid() -> None:
    text = iptables.render(sidecar(drop_invalid=True), 4)
    assert "-m conntrack --ctstate INVALID -j ISTIO_DROP" in chain_rules(text, "mangle", "PREROUTING")
    assert chain_rules(text, "mangle", "ISTIO_DROP") == ["-j DROP"]
    assert "ISTIO_DROP" not in iptables.render(sidecar(), 4)


def test_every_proxy_uid_and_gid_is_exempt() -> None:
    rules = chain_rules(iptables.render(sidecar(proxy_uids=(3, 4), proxy_gids=(1, 2)), 4), "nat", "ISTIO_OUTPUT")
    for owner in ("--uid-owner 3", "--uid-owner 4", "--gid-owner 1", "--gid-owner 2"):
        assert f"-m owner {owner} -j RETURN" in rules
    assert "--uid-owner 1337" not in " ".join(rules)


def test_rule_line_and_target() -> None:
    rule = iptables.Rule("nat", "PREROUTING", ("-i", "eth0", "-j", "RETURN"), position=1)
    assert rule.line() == "-I PREROUTING 1 -i eth0 -j RETURN"
    assert rule.target == "RETURN"
    assert iptables.Rule("nat", "X", ("-j", "ISTIO_Y")).line() == "-A X -j ISTIO_Y"
    assert iptables.Rule("nat", "X", ("-p", "tcp")).target is None


# ---- nftables specifics --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPECS))
def test_nft_script_is_well_formed(name: str) -> None:
    script = nftables.render(SPECS[name])
    lines = script.splitlines()
    table_lines = [line.split()[-1] for line in lines if line.startswith("add table inet ")]
    assert table_lines == [t for t in nftables.TABLES if t in table_lines]
    for table in table_lines:
        mine = [line for line in lines if f" inet {table} " in line + " "]
        assert mine[:2] == [f"add table inet {table}", f"flush table inet {table}"]
        chains = [line.split()[4] for line in mine if line.startswith("add chain ")]
        rules = [line for line in mine if " rule " in line]
        assert mine == mine[:2] + [m for m in mine if m.startswith("add chain ")] + rules, "chains before rules"
        assert chains == [c for c, _ in nftables.CHAINS[table] if c in chains]
        assert {line.split()[4] for line in rules} == set(chains), "only chains with rules are declared"
        assert all(" counter " in line for line in rules)


def test_nft_insert_into_an_empty_chain_is_an_add() -> None:
    script = nftables.render(SPECS["kubevirt"])
    prerouting = [line for line in script.splitlines() if " istio-proxy-nat prerouting " in line and " rule " in line]
    assert prerouting[0] == "add rule inet istio-proxy-nat prerouting iifname k6t-eth0 counter return"
    assert prerouting[1] == "insert rule inet istio-proxy-nat prerouting index 0 iifname net1 counter return"


def _nft_ops(script: str) -> list[tuple[str, str, int | None, str]]:
    ops = []
    for line in script.splitlines():
        m = re.match(r"^(add|insert) rule inet (\S+) (\S+) (?:index (\d+) )?(.*)$", line)
        if m:
            ops.append((m.group(1), f"{m.group(2)} {m.group(3)}", int(m.group(4)) if m.group(4) else None, m.group(5)))
    return ops


@pytest.mark.parametrize("name", sorted(SPECS))
def test_nft_never_inserts_at_or_past_the_end_of_a_chain(name: str) -> None:
    length: Counter[str] = Counter()
    for op, chain, index, _ in _nft_ops(nftables.render(SPECS[name])):
        if op == "insert":
            assert index is not None
            assert index < length[chain], f"insert at {index} into {chain} of {length[chain]} rules"
        length[chain] += 1


def test_nft_insert_past_the_end_is_an_add_as_istio_writes_it() -> None:
    ops = _nft_ops(nftables.render(SPECS["tproxy-no-inbound"]))
    inbound = [(op, index, body) for op, chain, index, body in ops if chain == "istio-proxy-mangle istio-inbound"]
    # Index 0 into an empty chain and index 1 into a 1-rule chain are adds; the IPv6 insert
    # at 1 and the last insert at 2 land inside the chain and stay inserts.
    assert [(op, index) for op, index, _ in inbound] == [("add", None), ("add", None), ("insert", 1), ("insert", 2)]
    assert inbound[1][2].startswith("iifname lo meta l4proto tcp ip saddr 127.0.0.6/32")


def test_nft_insert_inside_a_chain_stays_an_insert() -> None:
    ops = _nft_ops(nftables.render(SPECS["tproxy"]))
    inserts = [(chain, index) for op, chain, index, _ in ops if op == "insert"]
    assert ("istio-proxy-mangle istio-inbound", 0) in inserts


def test_nft_dual_stack_in_one_inet_script() -> None:
    script = nftables.render(sidecar(dual_stack=True))
    assert "ip daddr != 127.0.0.1/32" in script
    assert "ip6 daddr != ::1/128" in script
    assert script.count("add table inet ") == 1  # nat only: no TPROXY, no DNS
