"""The capture spec: a typed model of every istio-iptables option.

This module knows what a capture configuration *is* and how to validate its parts. It knows
nothing of files, environment variables, pods, iptables or the kernel: the parsers in
``config.py`` and ``pod.py`` build a :class:`CaptureSpec`, the renderers in ``iptables.py``
and ``nftables.py`` turn it into rule text, and ``apply.py`` is the only code that runs it.

Values are parsed once, here, into typed fields: ports are ``int``, CIDRs are
``ipaddress`` interfaces (which keep the address exactly as written, as Istio's
``netip.Prefix`` does), lists are tuples. Order is kept wherever Istio's output depends on it.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

IPNetwork = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# Istio's well-known ports and ids (tools/istio-iptables constants).
DEFAULT_PROXY_PORT = 15001
DEFAULT_INBOUND_CAPTURE_PORT = 15006
DEFAULT_INBOUND_TUNNEL_PORT = 15008
DEFAULT_PROXY_UID = 1337
DEFAULT_TPROXY_MARK = 1337
DEFAULT_TPROXY_ROUTE_TABLE = 133
DEFAULT_IPV4_LOOPBACK_CIDR = "127.0.0.1/32"
DNS_LISTENER_PORT = 15053
PROBE_PORT = 15002
OUTBOUND_MARK = 1338


_LOOPBACK = ipaddress.IPv4Interface(DEFAULT_IPV4_LOOPBACK_CIDR)


class InvalidSpecError(ValueError):
    """A capture option has a bad value. ``field`` names the key or annotation."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        name = str(field) if str(field).isprintable() else repr(field)  # one line, whatever the key
        super().__init__(f"{name}: invalid value {_show(value)}: {reason}")


def _show(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    return repr(value) if not isinstance(value, int | float | bool) else str(value)


class InterceptionMode(enum.Enum):
    REDIRECT = "REDIRECT"
    TPROXY = "TPROXY"
    NONE = "NONE"


@dataclass(frozen=True)
class PortSelection:
    """Ports to capture: every port (``*``), an ordered list, or none (empty)."""

    wildcard: bool = False
    ports: tuple[int, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.wildcard and not self.ports

    def __str__(self) -> str:
        return "*" if self.wildcard else ",".join(str(p) for p in self.ports)


@dataclass(frozen=True)
class RangeSelection:
    """Outbound IP ranges to capture: every range (``*``), an ordered list, or none."""

    wildcard: bool = False
    cidrs: tuple[IPNetwork, ...] = ()

    def v4(self) -> tuple[ipaddress.IPv4Interface, ...]:
        return tuple(c for c in self.cidrs if isinstance(c, ipaddress.IPv4Interface))

    def v6(self) -> tuple[ipaddress.IPv6Interface, ...]:
        return tuple(c for c in self.cidrs if isinstance(c, ipaddress.IPv6Interface))

    @property
    def has_loopback(self) -> bool:
        return any(c.ip.is_loopback for c in self.cidrs)

    def __str__(self) -> str:
        return "*" if self.wildcard else ",".join(str(c) for c in self.cidrs)


@dataclass(frozen=True)
class GroupSelection:
    """Owner groups whose traffic is captured: all (``*``) or only the listed ones."""

    wildcard: bool = True
    groups: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "*" if self.wildcard else ",".join(self.groups)


@dataclass(frozen=True)
class CaptureSpec:
    """Every istio-iptables option, typed. Defaults are Istio's base values.

    The defaults here are those of Istio's capture test harness and of ``istio-iptables``
    run with no flags: no inbound and no outbound capture until a parser says otherwise.
    """

    proxy_port: int = DEFAULT_PROXY_PORT
    inbound_capture_port: int = DEFAULT_INBOUND_CAPTURE_PORT
    inbound_tunnel_port: int = DEFAULT_INBOUND_TUNNEL_PORT
    proxy_uids: tuple[int, ...] = (DEFAULT_PROXY_UID,)
    proxy_gids: tuple[int, ...] = (DEFAULT_PROXY_UID,)
    interception_mode: InterceptionMode = InterceptionMode.REDIRECT
    inbound_ports_include: PortSelection = field(default_factory=PortSelection)
    inbound_ports_exclude: tuple[int, ...] = ()
    outbound_ip_ranges_include: RangeSelection = field(default_factory=RangeSelection)
    outbound_ip_ranges_exclude: tuple[IPNetwork, ...] = ()
    outbound_ports_include: tuple[int, ...] = ()
    outbound_ports_exclude: tuple[int, ...] = ()
    owner_groups_include: GroupSelection = field(default_factory=GroupSelection)
    owner_groups_exclude: tuple[str, ...] = ()
    reroute_virtual_interfaces: tuple[str, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    redirect_dns: bool = False
    capture_all_dns: bool = False
    dns_servers_v4: tuple[str, ...] = ()
    dns_servers_v6: tuple[str, ...] = ()
    drop_invalid: bool = False
    enable_ipv6: bool = False
    dual_stack: bool = False
    ipv4_loopback_cidr: ipaddress.IPv4Interface = _LOOPBACK
    tproxy_mark: int = DEFAULT_TPROXY_MARK
    tproxy_route_table: int = DEFAULT_TPROXY_ROUTE_TABLE

    def __post_init__(self) -> None:
        if not self.owner_groups_include.wildcard and self.owner_groups_exclude:
            raise InvalidSpecError(
                "OUTBOUND_OWNER_GROUPS_EXCLUDE",
                ",".join(self.owner_groups_exclude),
                "only one of OUTBOUND_OWNER_GROUPS_INCLUDE and OUTBOUND_OWNER_GROUPS_EXCLUDE may be set",
            )
        if not self.proxy_uids:
            raise InvalidSpecError("PROXY_UID", "", "at least one proxy uid is required")
        if not self.proxy_gids:
            raise InvalidSpecError("PROXY_GID", "", "at least one proxy gid is required")

    @property
    def ipv6(self) -> bool:
        """Whether IPv6 rules are rendered (IPv6 enabled, or dual stack)."""
        return self.enable_ipv6 or self.dual_stack

    @property
    def effective_redirect_dns(self) -> bool:
        """DNS is redirected only when servers are known or all DNS is captured (as Istio)."""
        return self.redirect_dns and (
            self.capture_all_dns or bool(self.dns_servers_v4) or bool(self.dns_servers_v6)
        )

    @property
    def captures_inbound(self) -> bool:
        return self.interception_mode is not InterceptionMode.NONE and not self.inbound_ports_include.empty

    @property
    def needs_tproxy_routing(self) -> bool:
        """TPROXY needs policy routing (fwmark -> local table) when inbound is captured."""
        return self.interception_mode is InterceptionMode.TPROXY and not self.inbound_ports_include.empty


# ---- value parsers shared by every front end -------------------------------------------------

# Interface names are written unquoted into iptables arguments and nft scripts, so only the
# characters that are safe in both are accepted (kernel names may hold more).
_IFNAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}$")
_PREFIX = re.compile(r"^(0|[1-9][0-9]{0,2})$")
_GROUP = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}\$?$")
MAX_OWNER_GROUPS_INCLUDE = 64  # Istio's limit: all included groups go into one rule


def _is_number(text: str) -> bool:
    """ASCII decimal digits only (``str.isdigit`` also accepts '²' and other scripts' digits)."""
    return text.isascii() and text.isdigit()


def split_list(value: str) -> list[str]:
    """Split a comma list as Istio does, dropping empty items and surrounding space."""
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_port(name: str, raw: object) -> int:
    text = str(raw).strip() if not isinstance(raw, bool) else ""
    if not _is_number(text):
        raise InvalidSpecError(name, raw, "a port must be a whole number from 1 to 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise InvalidSpecError(name, raw, "a port must be a whole number from 1 to 65535")
    return port


def parse_port_list(name: str, raw: str, *, allow_wildcard: bool = False) -> PortSelection:
    text = raw.strip()
    if text == "*":
        if not allow_wildcard:
            raise InvalidSpecError(name, raw, "'*' is not allowed here; list the ports")
        return PortSelection(wildcard=True)
    ports = []
    for item in split_list(text):
        if item == "*":
            raise InvalidSpecError(name, raw, "'*' must stand alone, not inside a list")
        ports.append(parse_port(name, item))
    return PortSelection(ports=tuple(ports))


def parse_id(name: str, raw: object) -> int:
    text = str(raw).strip()
    if isinstance(raw, bool) or not _is_number(text) or int(text) > 0xFFFFFFFE:
        raise InvalidSpecError(name, raw, "a uid or gid must be a whole number from 0 to 4294967294")
    return int(text)


def parse_id_list(name: str, raw: object) -> tuple[int, ...]:
    items = split_list(str(raw)) if not isinstance(raw, list) else [str(x) for x in raw]
    if not items:
        raise InvalidSpecError(name, raw, "at least one uid or gid is required")
    return tuple(parse_id(name, item) for item in items)


def parse_cidr(name: str, raw: str) -> IPNetwork:
    text = raw.strip()
    _, slash, prefix = text.partition("/")
    # Go's netip.ParsePrefix (Istio) refuses zones, netmasks and zero-padded prefix lengths.
    if "%" not in text and (not slash or _PREFIX.match(prefix)):
        with contextlib.suppress(ValueError):
            return ipaddress.ip_interface(text)
    raise InvalidSpecError(name, raw, "not a CIDR (expected e.g. 10.0.0.0/8 or fd00::/64)")


def parse_cidr_list(name: str, raw: str, *, allow_wildcard: bool) -> RangeSelection:
    text = raw.strip()
    if text == "*":
        if not allow_wildcard:
            raise InvalidSpecError(name, raw, "'*' is not allowed in an exclude list")
        return RangeSelection(wildcard=True)
    cidrs = []
    for item in split_list(text):
        if item == "*":
            raise InvalidSpecError(
                name, raw, "'*' must stand alone" if allow_wildcard else "'*' is not allowed in an exclude list"
            )
        if "/" not in item:
            raise InvalidSpecError(name, item, "a CIDR needs a prefix length (e.g. 10.0.0.1/32)")
        cidrs.append(parse_cidr(name, item))
    return RangeSelection(cidrs=tuple(cidrs))


def parse_interfaces(name: str, raw: str) -> tuple[str, ...]:
    names = split_list(raw)
    for item in names:
        if not _IFNAME.match(item) or item in (".", ".."):
            raise InvalidSpecError(
                name, item, "not a valid interface name (1-15 of A-Z a-z 0-9 _ . -, not starting with '-')"
            )
    return tuple(names)


def parse_groups(name: str, raw: str) -> tuple[str, ...]:
    groups = split_list(raw)
    for item in groups:
        if not _GROUP.match(item):
            raise InvalidSpecError(name, item, "not a valid group name or gid")
    return tuple(groups)


def parse_group_selection(name: str, raw: str) -> GroupSelection:
    if raw.strip() == "*":
        return GroupSelection(wildcard=True)
    groups = parse_groups(name, raw)
    if len(groups) > MAX_OWNER_GROUPS_INCLUDE:
        raise InvalidSpecError(name, raw, f"at most {MAX_OWNER_GROUPS_INCLUDE} groups can be included")
    return GroupSelection(wildcard=False, groups=groups)


def parse_dns_servers(name: str, raw: Iterable[str], version: int) -> tuple[str, ...]:
    servers = []
    for item in raw:
        text = str(item).strip()
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise InvalidSpecError(name, item, "not an IP address") from None
        if addr.version != version:
            raise InvalidSpecError(name, item, f"not an IPv{version} address")
        servers.append(text)
    return tuple(servers)


def parse_mode(name: str, raw: str, *, allow_none: bool = True) -> InterceptionMode:
    text = raw.strip()
    if text == "":
        return InterceptionMode.REDIRECT
    allowed = [m.value for m in InterceptionMode if allow_none or m is not InterceptionMode.NONE]
    if text not in allowed:
        raise InvalidSpecError(name, raw, f"unknown interception mode; expected one of {', '.join(allowed)}")
    return InterceptionMode(text)


def parse_loopback_cidr(name: str, raw: str) -> ipaddress.IPv4Interface:
    try:
        cidr = ipaddress.IPv4Interface(raw.strip())
    except ValueError:
        raise InvalidSpecError(name, raw, "not an IPv4 CIDR") from None
    prefix = raw.strip().partition("/")[2]
    if not _PREFIX.match(prefix) or not cidr.ip.is_loopback or not 8 <= cidr.network.prefixlen <= 32:
        raise InvalidSpecError(name, raw, "must be a CIDR inside 127.0.0.0/8 with a prefix length from 8 to 32")
    return cidr


def parse_number(name: str, raw: object, *, maximum: int) -> int:
    text = str(raw).strip()
    if isinstance(raw, bool) or not _is_number(text) or int(text) > maximum:
        raise InvalidSpecError(name, raw, f"must be a whole number from 0 to {maximum}")
    return int(text)


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False", ""}


def parse_bool(name: str, raw: object) -> bool:
    """Parse a boolean as Go's strconv.ParseBool does (plus JSON true/false)."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidSpecError(name, raw, "expected true or false")
