"""Front end (b): a Kubernetes Pod manifest -> CaptureSpec, with the CNI plugin's rules.

This is what Istio's CNI plugin programs for an injected pod (cni/pkg/plugin
sidecar_redirect.go): the ``traffic.sidecar.istio.io/*`` annotations,
``sidecar.istio.io/interceptionMode``, ``istio.io/reroute-virtual-interfaces`` (or the
deprecated ``traffic.sidecar.istio.io/kubevirtInterfaces``), the istio-proxy container's
``ISTIO_META_DNS_CAPTURE``, ``INVALID_DROP`` and ``ISTIO_DUAL_STACK`` env and its
``runAsUser``/``runAsGroup``. The CNI defaults differ from istio-iptables' own: everything
inbound and outbound is captured, inbound 15020,15021,15090 are always excluded and
outbound 15020 is excluded unless the annotation says otherwise.

A bad annotation is an error naming the annotation and its value (the plugin fails ADD).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from weir.capture import spec as s

ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES = "traffic.sidecar.istio.io/includeOutboundIPRanges"
ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
ANNOTATION_INCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/includeInboundPorts"
ANNOTATION_EXCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/excludeInboundPorts"
ANNOTATION_INCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/includeOutboundPorts"
ANNOTATION_EXCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/excludeOutboundPorts"
ANNOTATION_EXCLUDE_INTERFACES = "traffic.sidecar.istio.io/excludeInterfaces"
ANNOTATION_KUBEVIRT_INTERFACES = "traffic.sidecar.istio.io/kubevirtInterfaces"
ANNOTATION_REROUTE_VIRTUAL_INTERFACES = "istio.io/reroute-virtual-interfaces"
ANNOTATION_INTERCEPTION_MODE = "sidecar.istio.io/interceptionMode"
ANNOTATION_STATUS_PORT = "status.sidecar.istio.io/port"

PROXY_CONTAINER = "istio-proxy"
ALWAYS_EXCLUDED_INBOUND = (15020, 15021, 15090)
DEFAULT_EXCLUDED_OUTBOUND = "15020"


def _mapping(where: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise s.InvalidSpecError(where, value, "expected a mapping")
    return value


def _annotations(pod: Mapping[str, Any]) -> dict[str, str]:
    metadata = _mapping("metadata", pod.get("metadata"))
    annotations = _mapping("metadata.annotations", metadata.get("annotations"))
    out: dict[str, str] = {}
    for key, value in annotations.items():
        if not isinstance(value, str):
            raise s.InvalidSpecError(key, value, "annotation values must be strings (quote them in YAML)")
        out[str(key)] = value
    return out


def find_proxy_container(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``istio-proxy`` container, among initContainers (native sidecar) and containers."""
    podspec = _mapping("spec", pod.get("spec"))
    for group in ("initContainers", "containers"):
        containers = podspec.get(group) or []
        if not isinstance(containers, list):
            raise s.InvalidSpecError(f"spec.{group}", containers, "expected a list of containers")
        for container in containers:
            if isinstance(container, Mapping) and container.get("name") == PROXY_CONTAINER:
                return container
    return None


def proxy_env(container: Mapping[str, Any] | None) -> dict[str, str]:
    """Literal env values of a container (``valueFrom`` entries have no value here)."""
    if container is None:
        return {}
    env = container.get("env") or []
    if not isinstance(env, list):
        raise s.InvalidSpecError(f"containers[{PROXY_CONTAINER}].env", env, "expected a list")
    out: dict[str, str] = {}
    for item in env:
        if isinstance(item, Mapping) and "name" in item and item.get("value") is not None:
            out[str(item["name"])] = str(item["value"])
    return out


def _proxy_id(container: Mapping[str, Any] | None, key: str) -> int:
    """runAsUser/runAsGroup of istio-proxy; absent or 0 falls back to 1337 (as Istio)."""
    if container is None:
        return s.DEFAULT_PROXY_UID
    ctx = _mapping(f"containers[{PROXY_CONTAINER}].securityContext", container.get("securityContext"))
    value = ctx.get(key)
    if value is None:
        return s.DEFAULT_PROXY_UID
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFE:
        raise s.InvalidSpecError(f"containers[{PROXY_CONTAINER}].securityContext.{key}", value,
                                 "expected a uid/gid number")
    return value or s.DEFAULT_PROXY_UID


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    """Parse an env flag as the plugin does: unparseable values are false (Istio only warns)."""
    try:
        return s.parse_bool(name, env[name]) if name in env else False
    except s.InvalidSpecError:
        return False


def pod_ips(pod: Mapping[str, Any]) -> list[str]:
    status = _mapping("status", pod.get("status"))
    ips = [str(p.get("ip")) for p in status.get("podIPs") or [] if isinstance(p, Mapping) and p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    return ips


def _first_is_ipv6(ips: Sequence[str]) -> bool:
    for ip in ips:
        try:
            addr = ipaddress.ip_interface(ip).ip
        except ValueError:
            raise s.InvalidSpecError("pod IP", ip, "not an IP address") from None
        if addr.is_loopback or addr.is_link_local:
            continue
        return addr.version == 6
    return False


def _dedup(ports: Sequence[int]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(ports))


def spec_from_pod(pod: Mapping[str, Any], ips: Sequence[str] | None = None) -> s.CaptureSpec:
    """The spec Istio's CNI plugin programs for ``pod``.

    ``ips`` are the pod's addresses (from the CNI prevResult or the pod netns); by default
    ``status.podIPs``. As in Istio, IPv6 rules are added when the first usable address is
    IPv6 or the proxy has ``ISTIO_DUAL_STACK=true``.
    """
    if not isinstance(pod, Mapping):
        raise s.InvalidSpecError("pod", pod, "expected a Kubernetes Pod manifest (a mapping)")
    kind = pod.get("kind", "Pod")
    if kind != "Pod":
        raise s.InvalidSpecError("kind", kind, "expected a Pod manifest")
    ann = _annotations(pod)
    proxy = find_proxy_container(pod)
    env = proxy_env(proxy)

    def get(key: str, default: str) -> str:
        return ann.get(key, default)

    raw_mode = get(ANNOTATION_INTERCEPTION_MODE, "REDIRECT")
    if raw_mode.strip() not in ("REDIRECT", "TPROXY"):
        raise s.InvalidSpecError(ANNOTATION_INTERCEPTION_MODE, raw_mode,
                                 "the CNI plugin supports REDIRECT or TPROXY")
    mode = s.parse_mode(ANNOTATION_INTERCEPTION_MODE, raw_mode)
    if ANNOTATION_STATUS_PORT in ann:
        s.parse_port_list(ANNOTATION_STATUS_PORT, ann[ANNOTATION_STATUS_PORT])
    include_ranges = s.parse_cidr_list(ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES,
                                       get(ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES, "*"), allow_wildcard=True)
    exclude_ranges = s.parse_cidr_list(ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES,
                                       get(ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES, ""), allow_wildcard=False)
    include_inbound = s.parse_port_list(ANNOTATION_INCLUDE_INBOUND_PORTS,
                                        get(ANNOTATION_INCLUDE_INBOUND_PORTS, "*"), allow_wildcard=True)
    exclude_inbound = s.parse_port_list(ANNOTATION_EXCLUDE_INBOUND_PORTS,
                                        get(ANNOTATION_EXCLUDE_INBOUND_PORTS, "15020"))
    include_outbound = s.parse_port_list(ANNOTATION_INCLUDE_OUTBOUND_PORTS,
                                         get(ANNOTATION_INCLUDE_OUTBOUND_PORTS, ""))
    exclude_outbound = s.parse_port_list(ANNOTATION_EXCLUDE_OUTBOUND_PORTS,
                                         get(ANNOTATION_EXCLUDE_OUTBOUND_PORTS, DEFAULT_EXCLUDED_OUTBOUND))
    exclude_ifaces = s.parse_interfaces(ANNOTATION_EXCLUDE_INTERFACES, get(ANNOTATION_EXCLUDE_INTERFACES, ""))
    if ANNOTATION_REROUTE_VIRTUAL_INTERFACES in ann:
        virt = s.parse_interfaces(ANNOTATION_REROUTE_VIRTUAL_INTERFACES, ann[ANNOTATION_REROUTE_VIRTUAL_INTERFACES])
    else:
        virt = s.parse_interfaces(ANNOTATION_KUBEVIRT_INTERFACES, get(ANNOTATION_KUBEVIRT_INTERFACES, ""))

    dns = _env_bool(env, "ISTIO_META_DNS_CAPTURE")
    dual_stack = _env_bool(env, "ISTIO_DUAL_STACK")
    addresses = list(ips) if ips is not None else pod_ips(pod)
    return s.CaptureSpec(
        proxy_uids=(_proxy_id(proxy, "runAsUser"),),
        proxy_gids=(_proxy_id(proxy, "runAsGroup"),),
        interception_mode=mode,
        inbound_ports_include=include_inbound,
        inbound_ports_exclude=_dedup([*exclude_inbound.ports, *ALWAYS_EXCLUDED_INBOUND]),
        outbound_ip_ranges_include=include_ranges,
        outbound_ip_ranges_exclude=exclude_ranges.cidrs,
        outbound_ports_include=include_outbound.ports,
        outbound_ports_exclude=exclude_outbound.ports,
        reroute_virtual_interfaces=virt,
        exclude_interfaces=exclude_ifaces,
        redirect_dns=dns,
        capture_all_dns=dns,
        drop_invalid=_env_bool(env, "INVALID_DROP"),
        dual_stack=dual_stack,
        enable_ipv6=_first_is_ipv6(addresses),
    )
