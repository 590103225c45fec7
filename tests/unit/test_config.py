"""istio-iptables' environment-style configuration -> CaptureSpec (weir.capture.config)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from weir.capture.config import KNOWN_KEYS, spec_from_config
from weir.capture.spec import CaptureSpec, GroupSelection, InterceptionMode, InvalidSpecError, PortSelection


def error_of(config: Any) -> str:
    with pytest.raises(InvalidSpecError) as info:
        spec_from_config(config)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_empty_config_is_the_base_values_and_captures_nothing() -> None:
    spec = spec_from_config({})
    assert spec == CaptureSpec()
    assert spec.inbound_ports_include.empty
    assert spec.outbound_ip_ranges_include.cidrs == ()
    assert not spec.outbound_ip_ranges_include.wildcard
    assert spec.owner_groups_include == GroupSelection(wildcard=True)


def test_every_value_is_parsed_into_its_field() -> None:
    spec = spec_from_config({
        "PROXY_PORT": "15101", "INBOUND_CAPTURE_PORT": 15106, "INBOUND_TUNNEL_PORT": "15108",
        "PROXY_UID": "3,4", "PROXY_GID": [1, 2], "INBOUND_TPROXY_MARK": "1400", "INBOUND_TPROXY_ROUTE_TABLE": 200,
        "OUTBOUND_OWNER_GROUPS_INCLUDE": "java,202", "HOST_IPV4_LOOPBACK_CIDR": "127.0.0.1/8",
        "INBOUND_INTERCEPTION_MODE": "TPROXY", "INBOUND_PORTS_INCLUDE": "*", "INBOUND_PORTS_EXCLUDE": "7000, 7001",
        "OUTBOUND_PORTS_INCLUDE": ["32000"], "OUTBOUND_PORTS_EXCLUDE": "3306",
        "OUTBOUND_IPRANGES_INCLUDE": "9.9.0.0/16,fd00::/64", "OUTBOUND_IPRANGES_EXCLUDE": "1.1.0.0/16",
        "KUBE_VIRT_INTERFACES": "k6t-eth0", "EXCLUDE_INTERFACES": "eth1,eth2",
        "REDIRECT_DNS": "true", "CAPTURE_ALL_DNS": True, "DROP_INVALID": "1", "ENABLE_INBOUND_IPV6": "T",
        "DUAL_STACK": False, "DNS_SERVERS_V4": "10.96.0.10, 8.8.8.8", "DNS_SERVERS_V6": ["fd00::a"],
    })
    assert (spec.proxy_port, spec.inbound_capture_port, spec.inbound_tunnel_port) == (15101, 15106, 15108)
    assert (spec.proxy_uids, spec.proxy_gids) == ((3, 4), (1, 2))
    assert (spec.tproxy_mark, spec.tproxy_route_table) == (1400, 200)
    assert spec.owner_groups_include == GroupSelection(wildcard=False, groups=("java", "202"))
    assert spec.ipv4_loopback_cidr == ipaddress.IPv4Interface("127.0.0.1/8")
    assert spec.interception_mode is InterceptionMode.TPROXY
    assert spec.inbound_ports_include == PortSelection(wildcard=True)
    assert spec.inbound_ports_exclude == (7000, 7001)
    assert (spec.outbound_ports_include, spec.outbound_ports_exclude) == ((32000,), (3306,))
    assert [str(c) for c in spec.outbound_ip_ranges_include.cidrs] == ["9.9.0.0/16", "fd00::/64"]
    assert [str(c) for c in spec.outbound_ip_ranges_exclude] == ["1.1.0.0/16"]
    assert spec.reroute_virtual_interfaces == ("k6t-eth0",)
    assert spec.exclude_interfaces == ("eth1", "eth2")
    assert (spec.redirect_dns, spec.capture_all_dns, spec.drop_invalid) == (True, True, True)
    assert (spec.enable_ipv6, spec.dual_stack) == (True, False)
    assert (spec.dns_servers_v4, spec.dns_servers_v6) == (("10.96.0.10", "8.8.8.8"), ("fd00::a",))


@pytest.mark.parametrize(("env", "alias", "value"), [
    ("PROXY_UID", "ProxyUID", "3,4"),
    ("INBOUND_PORTS_INCLUDE", "InboundPortsInclude", "80,443"),
    ("OUTBOUND_IPRANGES_EXCLUDE", "OutboundIPRangesExclude", "10.0.0.0/8"),
    ("KUBE_VIRT_INTERFACES", "RerouteVirtualInterfaces", "k6t-eth0"),
    ("ENABLE_INBOUND_IPV6", "EnableIPv6", True),
    ("DNS_SERVERS_V4", "DNSServersV4", ["10.0.0.10"]),
    ("HOST_IPV4_LOOPBACK_CIDR", "HostIPv4LoopbackCidr", "127.0.0.1/16"),
])
def test_istio_field_names_are_aliases(env: str, alias: str, value: object) -> None:
    assert spec_from_config({env: value}) == spec_from_config({alias: value}) != CaptureSpec()


def test_known_keys_are_the_environment_names() -> None:
    assert "INBOUND_PORTS_INCLUDE" in KNOWN_KEYS
    assert "DRY_RUN" in KNOWN_KEYS
    assert "InboundPortsInclude" not in KNOWN_KEYS
    assert len(KNOWN_KEYS) == len(set(KNOWN_KEYS))


@pytest.mark.parametrize("key", ["DRY_RUN", "DryRun"])
def test_dry_run_is_accepted_and_changes_nothing(key: str) -> None:
    assert spec_from_config({key: True}) == CaptureSpec()
    assert error_of({key: "perhaps"}).startswith(f"{key}: invalid value 'perhaps'")


def test_unknown_key_is_named_with_the_known_ones() -> None:
    message = error_of({"INBOUND_PORTS_INCLUDE": "80", "INBOUND_PORT_INCLUDE": "80"})
    assert message.startswith("INBOUND_PORT_INCLUDE: invalid value '80': unknown key")
    assert "INBOUND_PORTS_INCLUDE" in message


@pytest.mark.parametrize(("first", "second"), [("PROXY_UID", "ProxyUID"), ("ProxyUID", "PROXY_UID")])
def test_a_key_given_twice_is_refused(first: str, second: str) -> None:
    message = error_of({first: "1", second: "2"})
    assert message.startswith(f"{second}: invalid value '2': given twice (also as {first})")


def test_not_a_mapping() -> None:
    assert error_of(["PROXY_UID"]).startswith("config: invalid value ['PROXY_UID']: expected a mapping")


@pytest.mark.parametrize(("config", "key", "shown"), [
    ({"PROXY_PORT": "70000"}, "PROXY_PORT", "'70000'"),
    ({"PROXY_PORT": 70000}, "PROXY_PORT", "70000"),
    ({"INBOUND_CAPTURE_PORT": "0"}, "INBOUND_CAPTURE_PORT", "'0'"),
    ({"InboundTunnelPort": "abc"}, "InboundTunnelPort", "'abc'"),
    ({"INBOUND_PORTS_INCLUDE": "80,abc"}, "INBOUND_PORTS_INCLUDE", "'abc'"),
    ({"INBOUND_PORTS_INCLUDE": "80,*"}, "INBOUND_PORTS_INCLUDE", "'80,*'"),
    ({"INBOUND_PORTS_EXCLUDE": "*"}, "INBOUND_PORTS_EXCLUDE", "'*'"),
    ({"OUTBOUND_PORTS_INCLUDE": "*"}, "OUTBOUND_PORTS_INCLUDE", "'*'"),
    ({"OUTBOUND_PORTS_EXCLUDE": "70000"}, "OUTBOUND_PORTS_EXCLUDE", "'70000'"),
    ({"OUTBOUND_IPRANGES_INCLUDE": "10.0.0.0/33"}, "OUTBOUND_IPRANGES_INCLUDE", "'10.0.0.0/33'"),
    ({"OUTBOUND_IPRANGES_INCLUDE": "10.0.0.0/8,*"}, "OUTBOUND_IPRANGES_INCLUDE", "'10.0.0.0/8,*'"),
    ({"OutboundIPRangesExclude": "10.0.0.1"}, "OutboundIPRangesExclude", "'10.0.0.1'"),
    ({"OUTBOUND_IPRANGES_EXCLUDE": "*"}, "OUTBOUND_IPRANGES_EXCLUDE", "'*'"),
    ({"INBOUND_INTERCEPTION_MODE": "tproxy"}, "INBOUND_INTERCEPTION_MODE", "'tproxy'"),
    ({"EXCLUDE_INTERFACES": "eth0,eth/1"}, "EXCLUDE_INTERFACES", "'eth/1'"),
    ({"KUBE_VIRT_INTERFACES": "a-very-long-interface"}, "KUBE_VIRT_INTERFACES", "'a-very-long-interface'"),
    ({"HOST_IPV4_LOOPBACK_CIDR": "10.0.0.1/32"}, "HOST_IPV4_LOOPBACK_CIDR", "'10.0.0.1/32'"),
    ({"PROXY_UID": "-1"}, "PROXY_UID", "'-1'"),
    ({"ProxyUID": ""}, "ProxyUID", "''"),
    ({"PROXY_GID": True}, "PROXY_GID", "'True'"),
    ({"INBOUND_TPROXY_MARK": "4294967296"}, "INBOUND_TPROXY_MARK", "'4294967296'"),
    ({"OUTBOUND_OWNER_GROUPS_EXCLUDE": "bad group"}, "OUTBOUND_OWNER_GROUPS_EXCLUDE", "'bad group'"),
    ({"REDIRECT_DNS": "yes"}, "REDIRECT_DNS", "'yes'"),
    ({"DNS_SERVERS_V4": ["fd00::a"]}, "DNS_SERVERS_V4", "'fd00::a'"),
    ({"DNSServersV6": "10.0.0.10"}, "DNSServersV6", "'10.0.0.10'"),
    ({"DNS_SERVERS_V4": 5}, "DNS_SERVERS_V4", "5"),
    ({"INBOUND_PORTS_INCLUDE": None}, "INBOUND_PORTS_INCLUDE", "None"),
    ({"OUTBOUND_IPRANGES_INCLUDE": True}, "OUTBOUND_IPRANGES_INCLUDE", "True"),
    ({"EXCLUDE_INTERFACES": {"eth0": 1}}, "EXCLUDE_INTERFACES", "{'eth0': 1}"),
])
def test_bad_values_name_the_key_and_the_value(config: dict[str, Any], key: str, shown: str) -> None:
    assert error_of(config).startswith(f"{key}: invalid value {shown}: ")


def test_owner_groups_include_and_exclude_together_are_refused() -> None:
    message = error_of({"OUTBOUND_OWNER_GROUPS_INCLUDE": "java", "OUTBOUND_OWNER_GROUPS_EXCLUDE": "nginx"})
    assert message.startswith("OUTBOUND_OWNER_GROUPS_EXCLUDE: invalid value 'nginx': only one of")


def test_owner_groups_exclude_with_the_wildcard_include() -> None:
    spec = spec_from_config({"OUTBOUND_OWNER_GROUPS_INCLUDE": "*", "OUTBOUND_OWNER_GROUPS_EXCLUDE": "nginx,1000"})
    assert spec.owner_groups_exclude == ("nginx", "1000")


def test_null_dns_server_list_is_empty() -> None:
    assert spec_from_config({"DNS_SERVERS_V4": None}).dns_servers_v4 == ()


def test_empty_strings_are_off() -> None:
    spec = spec_from_config({"INBOUND_PORTS_INCLUDE": "", "OUTBOUND_IPRANGES_INCLUDE": "", "REDIRECT_DNS": "",
                             "INBOUND_INTERCEPTION_MODE": ""})
    assert spec == CaptureSpec()
