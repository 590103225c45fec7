"""The CNI spec as values (weir.cni.spec): versions, codes, errors, net config, results, CNI_ARGS."""

from __future__ import annotations

import json
from typing import Any

import pytest

from weir.cni.spec import (
    SUPPORTED_VERSIONS,
    CniError,
    Code,
    K8sPodArgs,
    NetConf,
    convert_result,
    empty_result,
    is_supported,
    k8s_pod_args,
    parse_cni_args,
    parse_netconf,
    parse_version,
    version_at_least,
)


def error_of(call: Any, *args: Any) -> CniError:
    with pytest.raises(CniError) as info:
        call(*args)
    return info.value


def conf(**fields: Any) -> bytes:
    base: dict[str, Any] = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "weir-cni"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


# ---- versions and codes --------------------------------------------------------------------------


def test_supported_versions_are_ordered_oldest_first() -> None:
    assert SUPPORTED_VERSIONS == ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
    assert [parse_version(v) for v in SUPPORTED_VERSIONS] == sorted(parse_version(v) for v in SUPPORTED_VERSIONS)


@pytest.mark.parametrize(
    ("text", "parsed"), [("1.1.0", (1, 1, 0)), ("0.4.0", (0, 4, 0)), ("1.0", (1, 0, 0)), ("2", (2, 0, 0))]
)
def test_parse_version(text: str, parsed: tuple[int, int, int]) -> None:
    assert parse_version(text) == parsed


@pytest.mark.parametrize("text", ["", "1.0.0.0", "v1.0.0", "1.x.0", "1..0", "1.0.0-rc1", "\u0661.0.0"])
def test_parse_version_rejects_non_semver(text: str) -> None:
    assert error_of(parse_version, text).code == Code.DECODE_FAILURE


def test_version_at_least_compares_numerically() -> None:
    assert version_at_least("0.10.0", "0.4.0")
    assert version_at_least("1.1.0", "1.1.0")
    assert not version_at_least("0.3.1", "0.4.0")
    assert not version_at_least("1.0.0", "1.1.0")


def test_is_supported() -> None:
    assert all(is_supported(v) for v in SUPPORTED_VERSIONS)
    assert not any(is_supported(v) for v in ("0.1.0", "0.2.0", "1.2.0", "1.0", None, 1))


def test_codes_match_the_spec_and_weirs_reserved_range() -> None:
    assert {c.name: int(c) for c in Code} == {
        "INCOMPATIBLE_VERSION": 1,
        "UNSUPPORTED_FIELD": 2,
        "UNKNOWN_CONTAINER": 3,
        "INVALID_ENVIRONMENT": 4,
        "IO_FAILURE": 5,
        "DECODE_FAILURE": 6,
        "INVALID_NETWORK_CONFIG": 7,
        "TRY_AGAIN_LATER": 11,
        "NOT_AVAILABLE": 50,
        "LIMITED_CONNECTIVITY": 51,
        "CAPTURE_FAILED": 100,
        "RULES_DRIFTED": 101,
        "AGENT_ERROR": 102,
        "INTERNAL": 999,
    }


# ---- CniError ------------------------------------------------------------------------------------


def test_error_json_has_the_spec_fields_and_omits_empty_details() -> None:
    assert CniError(Code.TRY_AGAIN_LATER, "agent busy").to_json("1.0.0") == {
        "cniVersion": "1.0.0",
        "code": 11,
        "msg": "agent busy",
    }
    full = CniError(Code.AGENT_ERROR, "agent said no", "pod default/a not found").to_json("0.4.0")
    assert full == {"cniVersion": "0.4.0", "code": 102, "msg": "agent said no", "details": "pod default/a not found"}
    assert type(full["code"]) is int


def test_error_text_joins_msg_and_details() -> None:
    assert str(CniError(7, "bad", "very bad")) == "bad; very bad"
    assert str(CniError(7, "bad")) == "bad"


def test_error_is_never_wrapped_twice() -> None:
    original = CniError(Code.TRY_AGAIN_LATER, "later")
    assert CniError.from_exception(original) is original
    wrapped = CniError.from_exception(KeyError("x"))
    assert (wrapped.code, wrapped.msg, wrapped.details) == (
        Code.INTERNAL,
        "unexpected error in weir-cni",
        "KeyError: 'x'",
    )


# ---- network configuration -----------------------------------------------------------------------


def test_parse_netconf_keeps_every_key_as_given() -> None:
    raw = {
        "cniVersion": "0.3.1",
        "name": "k8s-pod-network",
        "type": "weir-cni",
        "kubernetes": {"kubeconfig": "/etc/cni/net.d/weir-kubeconfig"},
        "cni.dev/unknown": [1, 2],
        "prevResult": {"cniVersion": "0.3.1", "ips": []},
        "runtimeConfig": {"portMappings": []},
    }
    nc = parse_netconf(json.dumps(raw).encode())
    assert nc == NetConf("0.3.1", "k8s-pod-network", "weir-cni", raw, raw["prevResult"], {"portMappings": []})
    with pytest.raises(AttributeError, match="immutable"):
        nc.name = "x"  # type: ignore[misc]


def test_parse_netconf_defaults() -> None:
    nc = parse_netconf(conf(runtimeConfig=None))
    assert (nc.prev_result, nc.runtime_config) == (None, {})


@pytest.mark.parametrize(
    "stdin", [b"", b"   ", b"{", b'{"cniVersion": "1.0.0",}', b"\xff\xfe\xfa", b"[" * 100_000, b"NaNx"]
)
def test_parse_netconf_undecodable_is_decode_failure(stdin: bytes) -> None:
    err = error_of(parse_netconf, stdin)
    assert err.code == Code.DECODE_FAILURE
    assert err.msg == "network configuration is not valid JSON"
    assert err.details


@pytest.mark.parametrize(("stdin", "kind"), [(b"[]", "an array"), (b'"x"', "a string"), (b"null", "null")])
def test_parse_netconf_needs_an_object(stdin: bytes, kind: str) -> None:
    err = error_of(parse_netconf, stdin)
    assert (err.code, err.msg) == (
        Code.INVALID_NETWORK_CONFIG,
        f"network configuration must be a JSON object, not {kind}",
    )


@pytest.mark.parametrize("key", ["cniVersion", "name", "type"])
def test_parse_netconf_names_a_missing_field(key: str) -> None:
    err = error_of(parse_netconf, conf(**{key: ...}))
    assert (err.code, err.msg) == (Code.INVALID_NETWORK_CONFIG, f'network configuration has no "{key}"')


@pytest.mark.parametrize("key", ["cniVersion", "name", "type"])
@pytest.mark.parametrize(("value", "kind"), [(1, "a number"), (None, "null"), (["x"], "an array"), (True, "a boolean")])
def test_parse_netconf_names_a_non_string_field(key: str, value: object, kind: str) -> None:
    err = error_of(parse_netconf, conf(**{key: value}))
    assert (err.code, err.msg) == (Code.INVALID_NETWORK_CONFIG, f'"{key}" must be a string, not {kind}')


@pytest.mark.parametrize("key", ["cniVersion", "name", "type"])
def test_parse_netconf_rejects_empty_strings(key: str) -> None:
    err = error_of(parse_netconf, conf(**{key: ""}))
    assert (err.code, err.msg) == (Code.INVALID_NETWORK_CONFIG, f'"{key}" must not be empty')


@pytest.mark.parametrize("name", ["-net", "my net", "net/1", "net\n", "ñet"])
def test_parse_netconf_rejects_bad_network_names(name: str) -> None:
    err = error_of(parse_netconf, conf(name=name))
    assert (err.code, err.msg) == (Code.INVALID_NETWORK_CONFIG, f"invalid network name {name!r}")


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "1.2.0", "1.0", "1.0.0 "])
def test_parse_netconf_unsupported_version_lists_supported_ones(version: str) -> None:
    err = error_of(parse_netconf, conf(cniVersion=version))
    assert err.code == Code.INCOMPATIBLE_VERSION
    assert err.msg == f"unsupported cniVersion {version!r}"
    assert err.details == "this plugin supports 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"


def test_parse_netconf_reports_unsupported_version_before_other_fields() -> None:
    assert error_of(parse_netconf, conf(cniVersion="0.2.0", name=...)).code == Code.INCOMPATIBLE_VERSION


@pytest.mark.parametrize("key", ["prevResult", "runtimeConfig"])
def test_parse_netconf_nested_objects_must_be_objects(key: str) -> None:
    err = error_of(parse_netconf, conf(**{key: [1]}))
    assert (err.code, err.msg) == (Code.INVALID_NETWORK_CONFIG, f'"{key}" must be an object, not an array')


# ---- results -------------------------------------------------------------------------------------

INTERFACES = [
    {"name": "eth0", "mac": "0a:58:0a:f4:00:05", "sandbox": "/var/run/netns/pod1", "mtu": 1450},
]
RESULT_040 = {
    "cniVersion": "0.4.0",
    "interfaces": INTERFACES,
    "ips": [
        {"version": "4", "address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 0},
        {"version": "6", "address": "fd00::5/64", "gateway": "fd00::1", "interface": 0},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}, {"dst": "::/0"}],
    "dns": {"nameservers": ["10.96.0.10"], "domain": "cluster.local", "search": ["svc.cluster.local"]},
}
RESULT_100 = {
    **RESULT_040,
    "cniVersion": "1.0.0",
    "ips": [{k: v for k, v in ip.items() if k != "version"} for ip in RESULT_040["ips"]],  # type: ignore[attr-defined]
}


@pytest.mark.parametrize("to_version", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("source", [RESULT_040, RESULT_100], ids=["from-0.4.0", "from-1.0.0"])
def test_convert_result_between_every_pair_of_versions(source: dict[str, Any], to_version: str) -> None:
    expected = dict(RESULT_100 if version_at_least(to_version, "1.0.0") else RESULT_040, cniVersion=to_version)
    assert convert_result(source, to_version) == expected


def test_convert_result_puts_cni_version_first_and_keeps_unknown_fields() -> None:
    source = {"ips": [{"address": "10.0.0.2/8", "cni.dev/x": 1}], "weir": {"captured": True}, "cniVersion": "1.1.0"}
    out = convert_result(source, "0.3.1")
    assert list(out) == ["cniVersion", "ips", "weir"]
    assert out["ips"] == [{"version": "4", "address": "10.0.0.2/8", "cni.dev/x": 1}]
    assert out["weir"] == {"captured": True}


def test_convert_result_does_not_touch_its_input() -> None:
    source = json.loads(json.dumps(RESULT_040))
    out = convert_result(source, "1.1.0")
    assert source == RESULT_040
    out["interfaces"][0]["name"] = "changed"
    assert source["interfaces"][0]["name"] == "eth0"


def test_convert_result_recomputes_a_wrong_ip_version() -> None:
    out = convert_result({"ips": [{"version": "6", "address": "10.0.0.2/8"}]}, "0.4.0")
    assert out["ips"] == [{"version": "4", "address": "10.0.0.2/8"}]


def test_convert_result_accepts_a_result_without_version_and_an_empty_one() -> None:
    assert convert_result({}, "1.0.0") == {"cniVersion": "1.0.0"}
    assert convert_result({"ips": None, "dns": None}, "1.0.0") == {"cniVersion": "1.0.0", "ips": None, "dns": None}


def test_empty_result() -> None:
    assert empty_result("0.3.1") == {"cniVersion": "0.3.1"}


@pytest.mark.parametrize(
    ("result", "where"),
    [
        ({"ips": {"address": "10.0.0.1/8"}}, "ips must be a list"),
        ({"ips": ["10.0.0.1/8"]}, "ips[0] must be an object"),
        ({"ips": [{}]}, "ips[0].address is not an address in CIDR form"),
        ({"ips": [{"address": "10.0.0.1"}]}, "ips[0].address is not an address in CIDR form"),
        ({"ips": [{"address": "10.0.0.1/255.0.0.0"}]}, "ips[0].address is not an address in CIDR form"),
        ({"ips": [{"address": "10.0.0.1/33"}]}, "ips[0].address is not an address in CIDR form"),
        ({"ips": [{"address": "10.0.0.300/8"}]}, "ips[0].address is not an address in CIDR form"),
        ({"ips": [{"address": 167772161}]}, "ips[0].address is not an address in CIDR form"),
        ({"ips": [{"address": "10.0.0.1/8", "gateway": "10.0.0"}]}, "ips[0].gateway is not an IP address"),
        ({"ips": [{"address": "10.0.0.1/8", "interface": 0}]}, "ips[0].interface is not an index into the 0"),
        (
            {"interfaces": [{"name": "eth0"}], "ips": [{"address": "fd00::1/64", "interface": 1}]},
            "ips[0].interface is not an index into the 1",
        ),
        ({"interfaces": [{}], "ips": [{"address": "fd00::1/64", "interface": -1}]}, "ips[0].interface"),
        ({"interfaces": [{}], "ips": [{"address": "fd00::1/64", "interface": True}]}, "ips[0].interface"),
        ({"interfaces": [{}], "ips": [{"address": "fd00::1/64", "interface": "0"}]}, "ips[0].interface"),
        ({"interfaces": {}}, "interfaces must be a list"),
        ({"interfaces": ["eth0"]}, "interfaces[0] must be an object"),
        ({"interfaces": [{"name": 0}]}, "interfaces[0].name must be a string"),
        ({"routes": [{"gw": "10.0.0.1"}]}, "routes[0].dst is not an address in CIDR form"),
        ({"routes": [{"dst": "0.0.0.0/0", "gw": "gateway"}]}, "routes[0].gw is not an IP address"),
        ({"dns": ["10.96.0.10"]}, "dns must be an object"),
        ({"dns": {"nameservers": "10.96.0.10"}}, "dns.nameservers must be a list of strings"),
        ({"dns": {"search": [1]}}, "dns.search must be a list of strings"),
        ({"dns": {"domain": ["a"]}}, "dns.domain must be a string"),
        ({"cniVersion": 1.0}, "cniVersion must be a string"),
    ],
)
def test_convert_result_rejects_garbage_naming_the_field(result: dict[str, Any], where: str) -> None:
    err = error_of(convert_result, result, "1.0.0")
    assert err.code == Code.DECODE_FAILURE
    assert err.msg.startswith(f"invalid result: {where}"), err.msg
    assert err.details.startswith("got ")


def test_convert_result_needs_an_object() -> None:
    err = error_of(convert_result, ["ips"], "1.0.0")
    assert (err.code, err.msg) == (Code.DECODE_FAILURE, "a result must be a JSON object, not an array")


def test_convert_result_refuses_versions_it_does_not_speak() -> None:
    legacy = {"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/8"}}
    err = error_of(convert_result, legacy, "1.0.0")
    assert (err.code, err.msg) == (Code.INCOMPATIBLE_VERSION, "unsupported result cniVersion '0.2.0'")
    assert error_of(convert_result, {}, "2.0.0").code == Code.INCOMPATIBLE_VERSION


# ---- CNI_ARGS ------------------------------------------------------------------------------------

KUBELET_ARGS = (
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
    "K8S_POD_INFRA_CONTAINER_ID=3f6940ab5ab4;K8S_POD_UID=0e2b7c1a-5b6d-4f0e-9d1c-2a3b4c5d6e7f"
)


def test_parse_cni_args_collects_every_key() -> None:
    assert parse_cni_args(KUBELET_ARGS) == {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": "default",
        "K8S_POD_NAME": "web-0",
        "K8S_POD_INFRA_CONTAINER_ID": "3f6940ab5ab4",
        "K8S_POD_UID": "0e2b7c1a-5b6d-4f0e-9d1c-2a3b4c5d6e7f",
    }


def test_parse_cni_args_edge_cases() -> None:
    assert parse_cni_args("") == {}
    assert parse_cni_args("A=") == {"A": ""}
    assert parse_cni_args("A=1;A=2") == {"A": "2"}


@pytest.mark.parametrize(
    ("text", "pair"), [("A", "A"), ("A=1;B", "B"), ("=1", "=1"), ("A=1=2", "A=1=2"), ("A=1;", ""), (";", "")]
)
def test_parse_cni_args_malformed_pair_is_invalid_environment(text: str, pair: str) -> None:
    err = error_of(parse_cni_args, text)
    assert (err.code, err.msg) == (Code.INVALID_ENVIRONMENT, f"CNI_ARGS: invalid pair {pair!r}")


def test_k8s_pod_args() -> None:
    assert k8s_pod_args(parse_cni_args(KUBELET_ARGS)) == K8sPodArgs(
        "default", "web-0", "0e2b7c1a-5b6d-4f0e-9d1c-2a3b4c5d6e7f", "3f6940ab5ab4"
    )
    assert k8s_pod_args({"K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "p"}) == K8sPodArgs("ns", "p", "", "")


@pytest.mark.parametrize("args", [{}, {"K8S_POD_NAMESPACE": "ns"}, {"K8S_POD_NAME": "p", "K8S_POD_NAMESPACE": ""}])
def test_k8s_pod_args_without_namespace_or_name_is_no_pod(args: dict[str, str]) -> None:
    assert k8s_pod_args(args) is None
