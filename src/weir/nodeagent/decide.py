"""Whether a pod is captured, and with which spec: Istio's CNI plugin rules, as a pure function.

The first rule that matches means pass-through (no rules), in Istio's order
(cni/pkg/plugin/plugin.go): an excluded namespace; the node agent's own pods; a container
named ``istio-init`` (the pod captures itself); ``DISABLE_ENVOY`` on istio-proxy (proxyless);
no ``istio-proxy`` container; istio-proxy not run as a sidecar (gateways); injection turned
off (label over annotation); no ``sidecar.istio.io/status`` annotation (never injected).
Otherwise the pod is captured with the spec its annotations give.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from weir.capture.pod import PROXY_CONTAINER, find_proxy_container, proxy_env, spec_from_pod
from weir.capture.spec import CaptureSpec, InvalidSpecError, parse_bool

AGENT_POD_PREFIX = "weir-cni-node-"
INIT_CONTAINER = "istio-init"
INJECT = "sidecar.istio.io/inject"
STATUS = "sidecar.istio.io/status"


@dataclass(frozen=True)
class Capture:
    spec: CaptureSpec


@dataclass(frozen=True)
class PassThrough:
    reason: str


Decision = Capture | PassThrough


def is_agent_pod(namespace: str, name: str, agent_namespace: str) -> bool:
    """The node agent's own pods are never held up by the plugin (it would deadlock)."""
    return bool(agent_namespace) and namespace == agent_namespace and name.startswith(AGENT_POD_PREFIX)


def _flag(value: Any) -> bool | None:
    try:
        return parse_bool("flag", value) if isinstance(value, str | bool) else None
    except InvalidSpecError:
        return None


def _containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = pod.get("spec") or {}
    out: list[Mapping[str, Any]] = []
    for group in ("initContainers", "containers"):
        out += [c for c in spec.get(group) or [] if isinstance(c, Mapping)]
    return out


def decide(pod: Mapping[str, Any], *, exclude_namespaces: Collection[str] = (), agent_namespace: str = "",
           ips: Sequence[str] | None = None) -> Decision:
    """Capture or pass through ``pod``. Raises InvalidSpecError for a bad annotation."""
    metadata = pod.get("metadata") or {}
    namespace = str(metadata.get("namespace") or "default")
    name = str(metadata.get("name") or "")
    if namespace in exclude_namespaces:
        return PassThrough(f"namespace {namespace} is excluded")
    if is_agent_pod(namespace, name, agent_namespace):
        return PassThrough("the node agent's own pod")
    containers = _containers(pod)
    if any(c.get("name") == INIT_CONTAINER for c in containers):
        return PassThrough(f"the pod has an {INIT_CONTAINER} container, which captures it")
    proxy = find_proxy_container(pod)
    if proxy is not None and _flag(proxy_env(proxy).get("DISABLE_ENVOY")):
        return PassThrough("DISABLE_ENVOY is set on istio-proxy (proxyless)")
    if proxy is None:
        return PassThrough(f"no {PROXY_CONTAINER} container")
    args = proxy.get("args") or []
    if isinstance(args, list) and len(args) >= 2 and args[0] == "proxy" and args[1] != "sidecar":
        return PassThrough(f"istio-proxy runs as {args[1]}, not as a sidecar")
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    inject = _flag(labels.get(INJECT))
    if inject is None:
        inject = _flag(annotations.get(INJECT))
    if inject is False:
        return PassThrough(f"{INJECT} is false")
    if STATUS not in annotations:
        return PassThrough(f"no {STATUS} annotation (the pod was not injected)")
    return Capture(spec_from_pod(pod, ips))
