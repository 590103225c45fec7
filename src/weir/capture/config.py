"""Front end (a): istio-iptables' environment-style configuration -> CaptureSpec.

Keys are the environment-variable names istio-iptables accepts (``INBOUND_PORTS_INCLUDE``,
``PROXY_UID``, ``DNS_SERVERS_V4`` ...); Istio's Go field names (``InboundPortsInclude`` ...)
are accepted as aliases. As in Istio's capture harness, a key that is absent is *off*,
except the base values (ports 15001/15006/15008, uid = gid = 1337, TPROXY mark 1337,
route table 133, owner groups ``*``, IPv4 loopback 127.0.0.1/32). Unknown keys are errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from weir.capture import spec as s

_Parser = Callable[[str, Any], Any]


def _text(name: str, raw: Any) -> str:
    if isinstance(raw, bool) or raw is None or isinstance(raw, dict):
        raise s.InvalidSpecError(name, raw, "expected a string")
    if isinstance(raw, list):
        return ",".join(str(x) for x in raw)
    return str(raw)


def _list(name: str, raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, list):
        return [str(x) for x in raw]
    if isinstance(raw, str):
        return s.split_list(raw)
    raise s.InvalidSpecError(name, raw, "expected a list of addresses")


@dataclass(frozen=True)
class _Key:
    env: str
    alias: str
    attr: str
    parse: _Parser


def _port(n: str, v: Any) -> int:
    return s.parse_port(n, v)


def _ports(n: str, v: Any) -> tuple[int, ...]:
    return s.parse_port_list(n, _text(n, v)).ports


_KEYS: tuple[_Key, ...] = (
    _Key("PROXY_PORT", "ProxyPort", "proxy_port", _port),
    _Key("INBOUND_CAPTURE_PORT", "InboundCapturePort", "inbound_capture_port", _port),
    _Key("INBOUND_TUNNEL_PORT", "InboundTunnelPort", "inbound_tunnel_port", _port),
    _Key("PROXY_UID", "ProxyUID", "proxy_uids", s.parse_id_list),
    _Key("PROXY_GID", "ProxyGID", "proxy_gids", s.parse_id_list),
    _Key("INBOUND_TPROXY_MARK", "InboundTProxyMark", "tproxy_mark",
         lambda n, v: s.parse_number(n, v, maximum=0xFFFFFFFF)),
    _Key("INBOUND_TPROXY_ROUTE_TABLE", "InboundTProxyRouteTable", "tproxy_route_table",
         lambda n, v: s.parse_number(n, v, maximum=0xFFFFFFFF)),
    _Key("OUTBOUND_OWNER_GROUPS_INCLUDE", "OwnerGroupsInclude", "owner_groups_include",
         lambda n, v: s.parse_group_selection(n, _text(n, v))),
    _Key("OUTBOUND_OWNER_GROUPS_EXCLUDE", "OwnerGroupsExclude", "owner_groups_exclude",
         lambda n, v: s.parse_groups(n, _text(n, v))),
    _Key("HOST_IPV4_LOOPBACK_CIDR", "HostIPv4LoopbackCidr", "ipv4_loopback_cidr",
         lambda n, v: s.parse_loopback_cidr(n, _text(n, v))),
    _Key("INBOUND_INTERCEPTION_MODE", "InboundInterceptionMode", "interception_mode",
         lambda n, v: s.parse_mode(n, _text(n, v))),
    _Key("INBOUND_PORTS_INCLUDE", "InboundPortsInclude", "inbound_ports_include",
         lambda n, v: s.parse_port_list(n, _text(n, v), allow_wildcard=True)),
    _Key("INBOUND_PORTS_EXCLUDE", "InboundPortsExclude", "inbound_ports_exclude", _ports),
    _Key("OUTBOUND_PORTS_INCLUDE", "OutboundPortsInclude", "outbound_ports_include", _ports),
    _Key("OUTBOUND_PORTS_EXCLUDE", "OutboundPortsExclude", "outbound_ports_exclude", _ports),
    _Key("OUTBOUND_IPRANGES_INCLUDE", "OutboundIPRangesInclude", "outbound_ip_ranges_include",
         lambda n, v: s.parse_cidr_list(n, _text(n, v), allow_wildcard=True)),
    _Key("OUTBOUND_IPRANGES_EXCLUDE", "OutboundIPRangesExclude", "outbound_ip_ranges_exclude",
         lambda n, v: s.parse_cidr_list(n, _text(n, v), allow_wildcard=False).cidrs),
    _Key("KUBE_VIRT_INTERFACES", "RerouteVirtualInterfaces", "reroute_virtual_interfaces",
         lambda n, v: s.parse_interfaces(n, _text(n, v))),
    _Key("EXCLUDE_INTERFACES", "ExcludeInterfaces", "exclude_interfaces",
         lambda n, v: s.parse_interfaces(n, _text(n, v))),
    _Key("REDIRECT_DNS", "RedirectDNS", "redirect_dns", s.parse_bool),
    _Key("CAPTURE_ALL_DNS", "CaptureAllDNS", "capture_all_dns", s.parse_bool),
    _Key("DROP_INVALID", "DropInvalid", "drop_invalid", s.parse_bool),
    _Key("ENABLE_INBOUND_IPV6", "EnableIPv6", "enable_ipv6", s.parse_bool),
    _Key("DUAL_STACK", "DualStack", "dual_stack", s.parse_bool),
    _Key("DNS_SERVERS_V4", "DNSServersV4", "dns_servers_v4",
         lambda n, v: s.parse_dns_servers(n, _list(n, v), 4)),
    _Key("DNS_SERVERS_V6", "DNSServersV6", "dns_servers_v6",
         lambda n, v: s.parse_dns_servers(n, _list(n, v), 6)),
)

# Accepted so that Istio's own configs load, but they do not change the rules.
_IGNORED = {"DRY_RUN": "DryRun"}

_BY_NAME: dict[str, _Key] = {}
for _k in _KEYS:
    _BY_NAME[_k.env] = _k
    _BY_NAME[_k.alias] = _k

KNOWN_KEYS: tuple[str, ...] = tuple(k.env for k in _KEYS) + tuple(_IGNORED)


def spec_from_config(config: Mapping[str, Any]) -> s.CaptureSpec:
    """Build a spec from environment-style keys. Raises InvalidSpecError naming the key."""
    if not isinstance(config, Mapping):
        raise s.InvalidSpecError("config", config, "expected a mapping of istio-iptables keys to values")
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    ignored = set(_IGNORED) | set(_IGNORED.values())
    for name, raw in config.items():
        if name in ignored:
            s.parse_bool(name, raw)
            continue
        key = _BY_NAME.get(name)
        if key is None:
            raise s.InvalidSpecError(name, raw, f"unknown key; known keys are {', '.join(KNOWN_KEYS)}")
        if key.attr in seen:
            raise s.InvalidSpecError(name, raw, f"given twice (also as {seen[key.attr]})")
        seen[key.attr] = name
        values[key.attr] = key.parse(name, raw)
    return s.CaptureSpec(**values)
