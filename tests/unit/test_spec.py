"""The capture spec's value parsers and invariants (weir.capture.spec), one rule per test."""

from __future__ import annotations

import ipaddress
from dataclasses import FrozenInstanceError

import pytest

from weir.capture import spec as s
from weir.capture.spec import CaptureSpec, GroupSelection, InterceptionMode, InvalidSpecError, PortSelection


def error_of(call: object, *args: object, **kwargs: object) -> InvalidSpecError:
    assert callable(call)
    with pytest.raises(InvalidSpecError) as info:
        call(*args, **kwargs)
    return info.value


def assert_names(err: InvalidSpecError, field: str, value: str) -> None:
    """The message starts with the key, quotes the offending value and is one line."""
    message = str(err)
    assert message.startswith(f"{field}: "), message
    assert repr(value) in message, message
    assert "\n" not in message
    assert err.field == field


# ---- InvalidSpecError ----------------------------------------------------------------------------


def test_error_message_names_field_value_and_reason() -> None:
    err = InvalidSpecError("PROXY_PORT", "abc", "a port must be a number")
    assert str(err) == "PROXY_PORT: invalid value 'abc': a port must be a number"
    assert (err.field, err.value, err.reason) == ("PROXY_PORT", "abc", "a port must be a number")


def test_error_message_shows_numbers_and_booleans_bare() -> None:
    assert str(InvalidSpecError("k", 70000, "r")) == "k: invalid value 70000: r"
    assert str(InvalidSpecError("k", True, "r")) == "k: invalid value True: r"


def test_error_message_stays_on_one_line_whatever_the_field_and_value() -> None:
    message = str(InvalidSpecError("bad\nkey", "two\nlines", "reason"))
    assert "\n" not in message
    assert message.startswith("'bad\\nkey': ")


def test_error_is_a_value_error() -> None:
    assert issubclass(InvalidSpecError, ValueError)


# ---- ports ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "port"), [("80", 80), (" 443 ", 443), ("1", 1), ("65535", 65535), (8080, 8080)])
def test_parse_port_accepts(raw: object, port: int) -> None:
    assert s.parse_port("PROXY_PORT", raw) == port


@pytest.mark.parametrize("raw", ["70000", "65536", "0", "abc", "", "-1", "+80", "80.0", "8080a", "0x50", "²", "٣"])
def test_parse_port_rejects(raw: str) -> None:
    assert_names(error_of(s.parse_port, "PROXY_PORT", raw), "PROXY_PORT", raw)


def test_parse_port_rejects_json_booleans() -> None:
    err = error_of(s.parse_port, "PROXY_PORT", True)
    assert str(err).startswith("PROXY_PORT: invalid value True")


def test_port_list_keeps_order_and_drops_empty_items() -> None:
    got = s.parse_port_list("INBOUND_PORTS_INCLUDE", " 9080, 80,,443 ,")
    assert got == PortSelection(ports=(9080, 80, 443))
    assert str(got) == "9080,80,443"


def test_port_list_empty_is_empty_not_wildcard() -> None:
    got = s.parse_port_list("INBOUND_PORTS_INCLUDE", "", allow_wildcard=True)
    assert got.empty
    assert not got.wildcard


def test_port_list_wildcard_where_allowed() -> None:
    got = s.parse_port_list("INBOUND_PORTS_INCLUDE", " * ", allow_wildcard=True)
    assert got.wildcard
    assert not got.empty
    assert str(got) == "*"


def test_port_list_wildcard_refused_in_an_exclude_list() -> None:
    err = error_of(s.parse_port_list, "INBOUND_PORTS_EXCLUDE", "*")
    assert_names(err, "INBOUND_PORTS_EXCLUDE", "*")
    assert "not allowed" in str(err)


@pytest.mark.parametrize("raw", ["80,*", "*,80", "*,*"])
def test_port_list_wildcard_inside_a_list_is_refused(raw: str) -> None:
    err = error_of(s.parse_port_list, "INBOUND_PORTS_INCLUDE", raw, allow_wildcard=True)
    assert_names(err, "INBOUND_PORTS_INCLUDE", raw)
    assert "stand alone" in str(err)


def test_port_list_names_the_whole_value_when_one_port_is_bad() -> None:
    assert_names(error_of(s.parse_port_list, "OUTBOUND_PORTS_EXCLUDE", "80,70000"), "OUTBOUND_PORTS_EXCLUDE", "70000")


# ---- uids and gids -------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "ids"), [("1337", (1337,)), ("3,4", (3, 4)), ([1, 2], (1, 2)), (0, (0,)),
                                          ("4294967294", (4294967294,))])
def test_id_list(raw: object, ids: tuple[int, ...]) -> None:
    assert s.parse_id_list("PROXY_UID", raw) == ids


@pytest.mark.parametrize("raw", ["-1", "abc", "4294967295", "1337a", "²"])
def test_id_list_rejects(raw: str) -> None:
    assert_names(error_of(s.parse_id_list, "PROXY_UID", raw), "PROXY_UID", raw)


@pytest.mark.parametrize("raw", ["", " , ", []])
def test_id_list_must_not_be_empty(raw: object) -> None:
    err = error_of(s.parse_id_list, "ProxyGID", raw)
    assert str(err).startswith("ProxyGID: ")
    assert "at least one" in str(err)


# ---- CIDRs ---------------------------------------------------------------------------------------


def test_cidr_keeps_the_address_as_written() -> None:
    got = s.parse_cidr_list("OUTBOUND_IPRANGES_INCLUDE", "10.0.0.1/8, fd00::1/64", allow_wildcard=True)
    assert [str(c) for c in got.cidrs] == ["10.0.0.1/8", "fd00::1/64"]
    assert [str(c) for c in got.v4()] == ["10.0.0.1/8"]
    assert [str(c) for c in got.v6()] == ["fd00::1/64"]
    assert str(got) == "10.0.0.1/8,fd00::1/64"


@pytest.mark.parametrize("raw", ["10.0.0.0/33", "fd00::/129", "10.0.0.256/8", "abc/8", "10.0.0.0/", "10.0.0.0/-1",
                                 "10.0.0.0/255.0.0.0", "10.0.0.0/08", "fe80::1%eth0/64", "10.0.0.0/8/8"])
def test_cidr_rejects(raw: str) -> None:
    err = error_of(s.parse_cidr_list, "OUTBOUND_IPRANGES_EXCLUDE", raw, allow_wildcard=False)
    assert_names(err, "OUTBOUND_IPRANGES_EXCLUDE", raw)
    assert "CIDR" in str(err)


@pytest.mark.parametrize("raw", ["10.0.0.1", "fd00::1"])
def test_cidr_without_prefix_length_is_refused(raw: str) -> None:
    err = error_of(s.parse_cidr_list, "OUTBOUND_IPRANGES_INCLUDE", f"10.0.0.0/8,{raw}", allow_wildcard=True)
    assert_names(err, "OUTBOUND_IPRANGES_INCLUDE", raw)
    assert "prefix length" in str(err)


def test_cidr_wildcard_in_an_include_list() -> None:
    got = s.parse_cidr_list("OUTBOUND_IPRANGES_INCLUDE", "*", allow_wildcard=True)
    assert got.wildcard
    assert got.cidrs == ()


def test_cidr_wildcard_refused_in_an_exclude_list() -> None:
    err = error_of(s.parse_cidr_list, "OUTBOUND_IPRANGES_EXCLUDE", "*", allow_wildcard=False)
    assert_names(err, "OUTBOUND_IPRANGES_EXCLUDE", "*")
    assert "exclude" in str(err)


@pytest.mark.parametrize("allow_wildcard", [True, False])
def test_cidr_wildcard_inside_a_list_is_refused(allow_wildcard: bool) -> None:
    err = error_of(s.parse_cidr_list, "OUTBOUND_IPRANGES_INCLUDE", "10.0.0.0/8,*", allow_wildcard=allow_wildcard)
    assert_names(err, "OUTBOUND_IPRANGES_INCLUDE", "10.0.0.0/8,*")


def test_range_selection_sees_loopback() -> None:
    assert s.parse_cidr_list("k", "127.0.0.0/8", allow_wildcard=True).has_loopback
    assert s.parse_cidr_list("k", "::1/128", allow_wildcard=True).has_loopback
    assert not s.parse_cidr_list("k", "10.0.0.0/8", allow_wildcard=True).has_loopback
    assert not s.parse_cidr_list("k", "*", allow_wildcard=True).has_loopback


# ---- interfaces and groups -----------------------------------------------------------------------


def test_interfaces_keep_order() -> None:
    assert s.parse_interfaces("EXCLUDE_INTERFACES", "eth1, k6t-eth0,net1.100,x_y") == (
        "eth1", "k6t-eth0", "net1.100", "x_y")


@pytest.mark.parametrize("name", ["eth/0", "eth:0", "eth 0", "a" * 16, ".", "..", "-eth0", "eth0;x", 'eth"0', "eth*",
                                  "eth+", "eth{0}", "éth0"])
def test_interfaces_rejects(name: str) -> None:
    err = error_of(s.parse_interfaces, "EXCLUDE_INTERFACES", f"eth1,{name}")
    assert_names(err, "EXCLUDE_INTERFACES", name)
    assert "interface name" in str(err)


def test_interfaces_fifteen_characters_is_the_limit() -> None:
    assert s.parse_interfaces("EXCLUDE_INTERFACES", "a" * 15) == ("a" * 15,)


def test_groups_accept_names_and_gids() -> None:
    assert s.parse_groups("OUTBOUND_OWNER_GROUPS_EXCLUDE", "1337, istio,www-data,machine$") == (
        "1337", "istio", "www-data", "machine$")


@pytest.mark.parametrize("group", ["bad group", "-x", "a;b", "a" * 33, "*"])
def test_groups_reject(group: str) -> None:
    assert_names(error_of(s.parse_groups, "OUTBOUND_OWNER_GROUPS_EXCLUDE", group),
                 "OUTBOUND_OWNER_GROUPS_EXCLUDE", group)


def test_group_selection_wildcard_and_list() -> None:
    assert s.parse_group_selection("OUTBOUND_OWNER_GROUPS_INCLUDE", "*") == GroupSelection(wildcard=True)
    got = s.parse_group_selection("OUTBOUND_OWNER_GROUPS_INCLUDE", "java,202")
    assert got == GroupSelection(wildcard=False, groups=("java", "202"))
    assert str(got) == "java,202"


def test_group_selection_limits_included_groups_as_istio_does() -> None:
    limit = s.MAX_OWNER_GROUPS_INCLUDE
    assert len(s.parse_group_selection("k", ",".join(str(g) for g in range(limit))).groups) == limit
    err = error_of(s.parse_group_selection, "OUTBOUND_OWNER_GROUPS_INCLUDE", ",".join(str(g) for g in range(limit + 1)))
    assert str(err).startswith("OUTBOUND_OWNER_GROUPS_INCLUDE: ")
    assert f"at most {limit}" in str(err)


# ---- modes, loopback, DNS servers, numbers, booleans ---------------------------------------------


@pytest.mark.parametrize(("raw", "mode"), [("", InterceptionMode.REDIRECT), ("REDIRECT", InterceptionMode.REDIRECT),
                                           (" TPROXY ", InterceptionMode.TPROXY), ("NONE", InterceptionMode.NONE)])
def test_mode(raw: str, mode: InterceptionMode) -> None:
    assert s.parse_mode("INBOUND_INTERCEPTION_MODE", raw) is mode


@pytest.mark.parametrize("raw", ["redirect", "Tproxy", "DNAT", "*"])
def test_mode_rejects_unknown(raw: str) -> None:
    err = error_of(s.parse_mode, "INBOUND_INTERCEPTION_MODE", raw)
    assert_names(err, "INBOUND_INTERCEPTION_MODE", raw)
    assert "REDIRECT, TPROXY, NONE" in str(err)


def test_mode_none_can_be_refused() -> None:
    err = error_of(s.parse_mode, "mode", "NONE", allow_none=False)
    assert_names(err, "mode", "NONE")
    assert "NONE" not in str(err).split("expected one of")[1]


@pytest.mark.parametrize("raw", ["127.0.0.1/32", "127.0.0.1/8", "127.10.0.0/16"])
def test_loopback_cidr(raw: str) -> None:
    assert str(s.parse_loopback_cidr("HOST_IPV4_LOOPBACK_CIDR", raw)) == raw


@pytest.mark.parametrize("raw", ["10.0.0.1/32", "127.0.0.1", "127.0.0.1/7", "::1/128", "128.0.0.1/8",
                                 "127.0.0.1/255.0.0.0", "127.0.0.1/032", "x"])
def test_loopback_cidr_rejects(raw: str) -> None:
    assert_names(error_of(s.parse_loopback_cidr, "HOST_IPV4_LOOPBACK_CIDR", raw), "HOST_IPV4_LOOPBACK_CIDR", raw)


def test_loopback_cidr_outside_127_names_the_rule() -> None:
    assert "inside 127.0.0.0/8" in str(error_of(s.parse_loopback_cidr, "HOST_IPV4_LOOPBACK_CIDR", "10.0.0.1/32"))


def test_dns_servers() -> None:
    assert s.parse_dns_servers("DNS_SERVERS_V4", [" 10.96.0.10", "8.8.8.8"], 4) == ("10.96.0.10", "8.8.8.8")
    assert s.parse_dns_servers("DNS_SERVERS_V6", ["fd00::a"], 6) == ("fd00::a",)


@pytest.mark.parametrize(("raw", "version", "reason"), [("fd00::a", 4, "not an IPv4 address"),
                                                        ("10.0.0.1", 6, "not an IPv6 address"),
                                                        ("dns.local", 4, "not an IP address"),
                                                        ("10.0.0.0/8", 4, "not an IP address")])
def test_dns_servers_reject(raw: str, version: int, reason: str) -> None:
    err = error_of(s.parse_dns_servers, f"DNS_SERVERS_V{version}", [raw], version)
    assert_names(err, f"DNS_SERVERS_V{version}", raw)
    assert str(err).endswith(reason)


def test_number_bounds() -> None:
    assert s.parse_number("INBOUND_TPROXY_MARK", "4294967295", maximum=0xFFFFFFFF) == 0xFFFFFFFF
    assert s.parse_number("INBOUND_TPROXY_MARK", 0, maximum=10) == 0
    for raw in ("4294967296", "-1", "0x10", "²"):
        assert_names(error_of(s.parse_number, "INBOUND_TPROXY_MARK", raw, maximum=0xFFFFFFFF),
                     "INBOUND_TPROXY_MARK", raw)


@pytest.mark.parametrize("raw", ["1", "t", "T", "TRUE", "true", "True", True, 1])
def test_bool_true_as_go_parses_it(raw: object) -> None:
    assert s.parse_bool("REDIRECT_DNS", raw) is True


@pytest.mark.parametrize("raw", ["0", "f", "F", "FALSE", "false", "False", "", False, 0])
def test_bool_false_as_go_parses_it(raw: object) -> None:
    assert s.parse_bool("REDIRECT_DNS", raw) is False


@pytest.mark.parametrize("raw", ["yes", "on", "tRUE", "2", "enabled"])
def test_bool_rejects(raw: str) -> None:
    assert_names(error_of(s.parse_bool, "REDIRECT_DNS", raw), "REDIRECT_DNS", raw)


def test_split_list() -> None:
    assert s.split_list(" a, ,b,,c ") == ["a", "b", "c"]
    assert s.split_list("") == []


# ---- CaptureSpec ---------------------------------------------------------------------------------


def test_spec_defaults_are_istios_base_values() -> None:
    spec = CaptureSpec()
    assert (spec.proxy_port, spec.inbound_capture_port, spec.inbound_tunnel_port) == (15001, 15006, 15008)
    assert (spec.proxy_uids, spec.proxy_gids) == ((1337,), (1337,))
    assert (spec.tproxy_mark, spec.tproxy_route_table) == (1337, 133)
    assert spec.owner_groups_include.wildcard
    assert spec.ipv4_loopback_cidr == ipaddress.IPv4Interface("127.0.0.1/32")
    assert spec.interception_mode is InterceptionMode.REDIRECT
    assert spec.inbound_ports_include.empty
    assert not spec.outbound_ip_ranges_include.wildcard
    assert not spec.outbound_ip_ranges_include.cidrs
    assert (spec.redirect_dns, spec.capture_all_dns, spec.drop_invalid, spec.ipv6) == (False, False, False, False)


def test_spec_is_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        CaptureSpec().proxy_port = 1  # type: ignore[misc]


def test_spec_refuses_owner_group_include_and_exclude_together() -> None:
    err = error_of(CaptureSpec, owner_groups_include=GroupSelection(wildcard=False, groups=("a",)),
                   owner_groups_exclude=("b", "c"))
    assert_names(err, "OUTBOUND_OWNER_GROUPS_EXCLUDE", "b,c")
    assert "only one of OUTBOUND_OWNER_GROUPS_INCLUDE and OUTBOUND_OWNER_GROUPS_EXCLUDE" in str(err)


def test_spec_allows_exclude_with_the_wildcard_include() -> None:
    assert CaptureSpec(owner_groups_exclude=("b",)).owner_groups_exclude == ("b",)


@pytest.mark.parametrize(("field", "key"), [("proxy_uids", "PROXY_UID"), ("proxy_gids", "PROXY_GID")])
def test_spec_needs_a_proxy_id(field: str, key: str) -> None:
    assert error_of(CaptureSpec, **{field: ()}).field == key


@pytest.mark.parametrize(("enable", "dual", "ipv6"), [(False, False, False), (True, False, True),
                                                      (False, True, True), (True, True, True)])
def test_ipv6_is_enabled_or_dual_stack(enable: bool, dual: bool, ipv6: bool) -> None:
    assert CaptureSpec(enable_ipv6=enable, dual_stack=dual).ipv6 is ipv6


@pytest.mark.parametrize(("redirect", "all_dns", "v4", "v6", "effective"), [
    (False, True, ("1.1.1.1",), (), False),
    (True, False, (), (), False),
    (True, True, (), (), True),
    (True, False, ("1.1.1.1",), (), True),
    (True, False, (), ("fd00::a",), True),
])
def test_dns_is_redirected_only_when_there_is_something_to_capture(
        redirect: bool, all_dns: bool, v4: tuple[str, ...], v6: tuple[str, ...], effective: bool) -> None:
    spec = CaptureSpec(redirect_dns=redirect, capture_all_dns=all_dns, dns_servers_v4=v4, dns_servers_v6=v6)
    assert spec.effective_redirect_dns is effective


def test_inbound_capture_and_tproxy_routing() -> None:
    wildcard = PortSelection(wildcard=True)
    assert not CaptureSpec().captures_inbound
    assert CaptureSpec(inbound_ports_include=wildcard).captures_inbound
    assert not CaptureSpec(inbound_ports_include=wildcard, interception_mode=InterceptionMode.NONE).captures_inbound
    assert not CaptureSpec(inbound_ports_include=wildcard).needs_tproxy_routing
    assert CaptureSpec(inbound_ports_include=wildcard, interception_mode=InterceptionMode.TPROXY).needs_tproxy_routing
    assert not CaptureSpec(interception_mode=InterceptionMode.TPROXY).needs_tproxy_routing
