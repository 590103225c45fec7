"""A Pod manifest -> CaptureSpec with the Istio CNI plugin's rules (weir.capture.pod)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from weir.capture import pod as p
from weir.capture.pod import spec_from_pod
from weir.capture.spec import InterceptionMode, InvalidSpecError, PortSelection


def make_pod(annotations: dict[str, Any] | None = None, env: dict[str, Any] | None = None,
             security: dict[str, Any] | None = None, *, native_sidecar: bool = False,
             status_ips: list[str] | None = None) -> dict[str, Any]:
    proxy: dict[str, Any] = {"name": "istio-proxy", "image": "proxyv2"}
    if env is not None:
        proxy["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if security is not None:
        proxy["securityContext"] = security
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "app"}]}
    if native_sidecar:
        spec["initContainers"] = [proxy]
    else:
        spec["containers"].append(proxy)
    pod: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "annotations": dict(annotations or {})},
        "spec": spec,
    }
    if status_ips is not None:
        pod["status"] = {"podIPs": [{"ip": ip} for ip in status_ips]}
    return pod


def error_of(pod: Any, ips: list[str] | None = None) -> str:
    with pytest.raises(InvalidSpecError) as info:
        spec_from_pod(pod, ips)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- defaults ------------------------------------------------------------------------------------


def test_defaults_capture_everything_except_istios_own_ports() -> None:
    spec = spec_from_pod(make_pod())
    assert spec.interception_mode is InterceptionMode.REDIRECT
    assert spec.inbound_ports_include == PortSelection(wildcard=True)
    assert spec.inbound_ports_exclude == (15020, 15021, 15090)
    assert spec.outbound_ip_ranges_include.wildcard
    assert spec.outbound_ip_ranges_exclude == ()
    assert spec.outbound_ports_include == ()
    assert spec.outbound_ports_exclude == (15020,)
    assert (spec.proxy_uids, spec.proxy_gids) == ((1337,), (1337,))
    assert (spec.redirect_dns, spec.capture_all_dns, spec.drop_invalid, spec.ipv6) == (False, False, False, False)
    assert spec.exclude_interfaces == spec.reroute_virtual_interfaces == ()


def test_a_pod_without_istio_proxy_gets_the_defaults() -> None:
    pod = make_pod()
    pod["spec"]["containers"] = [{"name": "app"}]
    assert spec_from_pod(pod) == spec_from_pod(make_pod())


def test_a_pod_without_metadata_or_spec_gets_the_defaults() -> None:
    assert spec_from_pod({"kind": "Pod"}) == spec_from_pod(make_pod())
    assert spec_from_pod({}) == spec_from_pod(make_pod())


# ---- port annotations ----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "ports"), [
    ("15021,3306", (15021, 3306, 15020, 15090)),
    ("3306", (3306, 15020, 15021, 15090)),
    ("3306,3306", (3306, 15020, 15021, 15090)),
    ("", (15020, 15021, 15090)),
    ("15090,15020,15021", (15090, 15020, 15021)),
])
def test_inbound_excludes_always_get_istios_ports_deduplicated(value: str, ports: tuple[int, ...]) -> None:
    spec = spec_from_pod(make_pod({p.ANNOTATION_EXCLUDE_INBOUND_PORTS: value}))
    assert spec.inbound_ports_exclude == ports


@pytest.mark.parametrize(("value", "ports"), [("", ()), ("8080", (8080,)), ("8080, 15020", (8080, 15020))])
def test_outbound_exclude_default_only_when_the_annotation_is_absent(value: str, ports: tuple[int, ...]) -> None:
    spec = spec_from_pod(make_pod({p.ANNOTATION_EXCLUDE_OUTBOUND_PORTS: value}))
    assert spec.outbound_ports_exclude == ports


def test_include_annotations() -> None:
    spec = spec_from_pod(make_pod({
        p.ANNOTATION_INCLUDE_INBOUND_PORTS: "9080,9443",
        p.ANNOTATION_INCLUDE_OUTBOUND_PORTS: "3306",
        p.ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES: "10.0.0.0/8,fd00::/64",
        p.ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES: "10.96.0.1/32",
        p.ANNOTATION_EXCLUDE_INTERFACES: "eth1",
    }))
    assert spec.inbound_ports_include == PortSelection(ports=(9080, 9443))
    assert spec.outbound_ports_include == (3306,)
    assert [str(c) for c in spec.outbound_ip_ranges_include.cidrs] == ["10.0.0.0/8", "fd00::/64"]
    assert [str(c) for c in spec.outbound_ip_ranges_exclude] == ["10.96.0.1/32"]
    assert spec.exclude_interfaces == ("eth1",)


def test_empty_include_annotations_capture_nothing() -> None:
    spec = spec_from_pod(make_pod({p.ANNOTATION_INCLUDE_INBOUND_PORTS: "",
                                   p.ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES: ""}))
    assert spec.inbound_ports_include.empty
    assert not spec.outbound_ip_ranges_include.wildcard
    assert spec.outbound_ip_ranges_include.cidrs == ()


@pytest.mark.parametrize(("annotation", "value", "shown"), [
    (p.ANNOTATION_EXCLUDE_INBOUND_PORTS, "70000", "70000"),
    (p.ANNOTATION_EXCLUDE_INBOUND_PORTS, "*", "*"),
    (p.ANNOTATION_INCLUDE_INBOUND_PORTS, "0", "0"),
    (p.ANNOTATION_INCLUDE_INBOUND_PORTS, "80,*", "80,*"),
    (p.ANNOTATION_INCLUDE_OUTBOUND_PORTS, "abc", "abc"),
    (p.ANNOTATION_EXCLUDE_OUTBOUND_PORTS, "*", "*"),
    (p.ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/33", "10.0.0.0/33"),
    (p.ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.1", "10.0.0.1"),
    (p.ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES, "*,10.0.0.0/8", "*,10.0.0.0/8"),
    (p.ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES, "*", "*"),
    (p.ANNOTATION_EXCLUDE_INTERFACES, "eth0:1", "eth0:1"),
    (p.ANNOTATION_REROUTE_VIRTUAL_INTERFACES, "net1,net/2", "net/2"),
    (p.ANNOTATION_KUBEVIRT_INTERFACES, "..", ".."),
    (p.ANNOTATION_STATUS_PORT, "abc", "abc"),
])
def test_bad_annotations_name_the_annotation_and_the_value(annotation: str, value: str, shown: str) -> None:
    assert error_of(make_pod({annotation: value})).startswith(f"{annotation}: invalid value {shown!r}: ")


# ---- interception mode ---------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "mode"), [("REDIRECT", InterceptionMode.REDIRECT),
                                             ("TPROXY", InterceptionMode.TPROXY)])
def test_interception_mode(value: str, mode: InterceptionMode) -> None:
    assert spec_from_pod(make_pod({p.ANNOTATION_INTERCEPTION_MODE: value})).interception_mode is mode


@pytest.mark.parametrize("value", ["NONE", "redirect", "tproxy", "", "DNAT"])
def test_interception_mode_the_plugin_cannot_program_is_an_error(value: str) -> None:
    message = error_of(make_pod({p.ANNOTATION_INTERCEPTION_MODE: value}))
    assert message.startswith(f"sidecar.istio.io/interceptionMode: invalid value {value!r}: ")
    assert "REDIRECT or TPROXY" in message


# ---- virtual interfaces --------------------------------------------------------------------------


def test_reroute_virtual_interfaces_is_preferred_over_kubevirt_interfaces() -> None:
    spec = spec_from_pod(make_pod({p.ANNOTATION_REROUTE_VIRTUAL_INTERFACES: "net1",
                                   p.ANNOTATION_KUBEVIRT_INTERFACES: "k6t-eth0"}))
    assert spec.reroute_virtual_interfaces == ("net1",)


def test_reroute_virtual_interfaces_wins_even_when_empty() -> None:
    spec = spec_from_pod(make_pod({p.ANNOTATION_REROUTE_VIRTUAL_INTERFACES: "",
                                   p.ANNOTATION_KUBEVIRT_INTERFACES: "k6t-eth0"}))
    assert spec.reroute_virtual_interfaces == ()


def test_deprecated_kubevirt_interfaces_still_work() -> None:
    spec = spec_from_pod(make_pod({p.ANNOTATION_KUBEVIRT_INTERFACES: "k6t-eth0,k6t-eth1"}))
    assert spec.reroute_virtual_interfaces == ("k6t-eth0", "k6t-eth1")


def test_the_ignored_kubevirt_annotation_is_not_validated() -> None:
    spec = spec_from_pod(make_pod({p.ANNOTATION_REROUTE_VIRTUAL_INTERFACES: "net1",
                                   p.ANNOTATION_KUBEVIRT_INTERFACES: "bad/name"}))
    assert spec.reroute_virtual_interfaces == ("net1",)


# ---- proxy uid and gid ---------------------------------------------------------------------------


@pytest.mark.parametrize(("security", "uid", "gid"), [
    ({"runAsUser": 1000670000, "runAsGroup": 1000670001}, 1000670000, 1000670001),
    ({"runAsUser": 0, "runAsGroup": 0}, 1337, 1337),
    ({"runAsUser": 0, "runAsGroup": 5}, 1337, 5),
    ({"runAsUser": 1000}, 1000, 1337),
    ({"runAsGroup": 2000}, 1337, 2000),
    ({"runAsUser": None, "runAsGroup": None}, 1337, 1337),
    ({}, 1337, 1337),
])
def test_proxy_ids_fall_back_to_1337_independently(security: dict[str, Any], uid: int, gid: int) -> None:
    spec = spec_from_pod(make_pod(security=security))
    assert (spec.proxy_uids, spec.proxy_gids) == ((uid,), (gid,))


def test_istio_proxy_as_a_native_sidecar_is_found_in_init_containers() -> None:
    spec = spec_from_pod(make_pod(security={"runAsUser": 1234, "runAsGroup": 4321},
                                  env={"ISTIO_META_DNS_CAPTURE": "true"}, native_sidecar=True))
    assert (spec.proxy_uids, spec.proxy_gids) == ((1234,), (4321,))
    assert spec.redirect_dns


@pytest.mark.parametrize("value", ["1000", -1, True, 1.5, 4294967295])
def test_bad_run_as_user_is_named(value: object) -> None:
    message = error_of(make_pod(security={"runAsUser": value}))
    assert message.startswith(f"containers[istio-proxy].securityContext.runAsUser: invalid value {value!r}: ")


# ---- proxy environment ---------------------------------------------------------------------------


def test_dns_capture_env_redirects_and_captures_all_dns() -> None:
    spec = spec_from_pod(make_pod(env={"ISTIO_META_DNS_CAPTURE": "true"}))
    assert spec.redirect_dns
    assert spec.capture_all_dns
    assert spec.effective_redirect_dns


@pytest.mark.parametrize("value", ["yes", "enabled", "", "2"])
def test_an_unparseable_env_flag_is_false(value: str) -> None:
    spec = spec_from_pod(make_pod(env={"ISTIO_META_DNS_CAPTURE": value, "INVALID_DROP": value,
                                       "ISTIO_DUAL_STACK": value}))
    assert (spec.redirect_dns, spec.capture_all_dns, spec.drop_invalid, spec.dual_stack) == (False, False, False, False)


def test_invalid_drop_env() -> None:
    assert spec_from_pod(make_pod(env={"INVALID_DROP": "1"})).drop_invalid


def test_env_from_value_from_is_ignored() -> None:
    pod = make_pod()
    pod["spec"]["containers"][1]["env"] = [{"name": "ISTIO_META_DNS_CAPTURE",
                                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    assert not spec_from_pod(pod).redirect_dns


def test_env_of_another_container_is_ignored() -> None:
    pod = make_pod()
    pod["spec"]["containers"][0]["env"] = [{"name": "ISTIO_META_DNS_CAPTURE", "value": "true"}]
    assert not spec_from_pod(pod).redirect_dns


# ---- IPv6 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ips", "ipv6"), [
    (["10.0.0.2/24"], False),
    (["fd00::2/64"], True),
    (["fe80::1/64", "fd00::2/64"], True),
    (["fe80::1/64", "10.0.0.2/24", "fd00::2/64"], False),
    (["fd00::2", "10.0.0.2"], True),
    (["10.0.0.2", "fd00::2"], False),
    (["fe80::1"], False),
    ([], False),
])
def test_ipv6_follows_the_first_non_link_local_address(ips: list[str], ipv6: bool) -> None:
    spec = spec_from_pod(make_pod(), ips)
    assert spec.enable_ipv6 is ipv6
    assert spec.ipv6 is ipv6


def test_ips_default_to_the_pod_status() -> None:
    assert spec_from_pod(make_pod(status_ips=["fd00::5", "10.0.0.5"])).ipv6
    assert not spec_from_pod(make_pod(status_ips=["10.0.0.5", "fd00::5"])).ipv6
    pod = make_pod()
    pod["status"] = {"podIP": "fd00::7"}
    assert spec_from_pod(pod).ipv6


def test_explicit_ips_win_over_the_pod_status() -> None:
    assert not spec_from_pod(make_pod(status_ips=["fd00::5"]), ["10.0.0.5"]).ipv6


def test_dual_stack_env_turns_ipv6_on_for_an_ipv4_pod() -> None:
    spec = spec_from_pod(make_pod(env={"ISTIO_DUAL_STACK": "true"}), ["10.0.0.2/24"])
    assert spec.dual_stack
    assert not spec.enable_ipv6
    assert spec.ipv6


def test_a_bad_pod_ip_is_named() -> None:
    assert error_of(make_pod(), ["10.0.0.300"]).startswith("pod IP: invalid value '10.0.0.300': ")


# ---- malformed manifests -------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "shown"), [(15020, "15020"), (True, "True"), (None, "None"), (["a"], "['a']")])
def test_annotation_values_must_be_strings(value: object, shown: str) -> None:
    message = error_of(make_pod({p.ANNOTATION_EXCLUDE_INBOUND_PORTS: value}))
    assert message.startswith(f"{p.ANNOTATION_EXCLUDE_INBOUND_PORTS}: invalid value {shown}: ")
    assert "must be strings" in message


@pytest.mark.parametrize("kind", ["Deployment", "pod", None])
def test_kind_must_be_pod(kind: object) -> None:
    pod = make_pod()
    pod["kind"] = kind
    assert error_of(pod).startswith(f"kind: invalid value {kind!r}: expected a Pod manifest")


@pytest.mark.parametrize("doc", [["kind", "Pod"], "Pod", 5])
def test_not_a_mapping(doc: object) -> None:
    assert error_of(doc).startswith(f"pod: invalid value {doc!r}: ")


@pytest.mark.parametrize(("path", "value", "where"), [
    (("metadata",), "x", "metadata"),
    (("metadata", "annotations"), ["a"], "metadata.annotations"),
    (("spec",), [], "spec"),
    (("spec", "containers"), {"name": "istio-proxy"}, "spec.containers"),
    (("status",), "Running", "status"),
])
def test_wrongly_shaped_parts_are_named(path: tuple[str, ...], value: object, where: str) -> None:
    pod = make_pod()
    target = pod
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert error_of(pod).startswith(f"{where}: invalid value ")


def test_istio_proxy_env_must_be_a_list() -> None:
    pod = make_pod()
    pod["spec"]["containers"][1]["env"] = {"ISTIO_META_DNS_CAPTURE": "true"}
    assert error_of(pod).startswith("containers[istio-proxy].env: invalid value ")


# ---- a real injected pod -------------------------------------------------------------------------


def test_an_injected_pod_with_a_native_sidecar_and_custom_ids(golden_dir: Path) -> None:
    """Istio's injector output (a Deployment): its pod template is what the plugin sees."""
    text = (golden_dir / "injected_examples" / "proxy-override-runas.yaml.cni.injected").read_text()
    deployment = next(d for d in yaml.safe_load_all(text) if d and d.get("kind") == "Deployment")
    template = deployment["spec"]["template"]
    spec = spec_from_pod({"kind": "Pod", "metadata": template["metadata"], "spec": template["spec"]}, ["10.0.0.9"])
    proxy = next(c for c in template["spec"]["initContainers"] if c["name"] == "istio-proxy")
    ctx = proxy["securityContext"]
    assert (spec.proxy_uids, spec.proxy_gids) == ((ctx["runAsUser"],), (ctx["runAsGroup"],))
    assert spec.proxy_uids != (1337,)
    assert spec.inbound_ports_include.wildcard
    assert spec.outbound_ip_ranges_include.wildcard
    assert spec.inbound_ports_exclude == (15020, 15021, 15090)
