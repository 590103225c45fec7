"""Istio's CNI pass-through rules, one by one, and the capture that remains."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from weir.capture.spec import InvalidSpecError
from weir.nodeagent.decide import Capture, PassThrough, decide, is_agent_pod

INJECTED: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "app-1", "namespace": "shop", "labels": {},
                 "annotations": {"sidecar.istio.io/status": "{}"}},
    "spec": {
        "initContainers": [{"name": "istio-validation"}],
        "containers": [{"name": "app"}, {"name": "istio-proxy", "args": ["proxy", "sidecar"]}],
    },
}


def pod(**changes: Any) -> dict[str, Any]:
    p = copy.deepcopy(INJECTED)
    for path, value in changes.items():
        node = p
        *parents, last = path.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return p


def reason(p: dict[str, Any], **kw: Any) -> str:
    decision = decide(p, **kw)
    assert isinstance(decision, PassThrough), decision
    return decision.reason


def test_an_injected_pod_is_captured_with_the_cni_defaults() -> None:
    decision = decide(INJECTED)
    assert isinstance(decision, Capture)
    assert decision.spec.inbound_ports_include.wildcard
    assert decision.spec.inbound_ports_exclude == (15020, 15021, 15090)


def test_excluded_namespace_passes_through_first() -> None:
    assert "excluded" in reason(pod(metadata__annotations={}), exclude_namespaces={"shop"})


def test_the_agents_own_pod_passes_through() -> None:
    p = pod(metadata__name="weir-cni-node-x7", metadata__namespace="weir-system")
    assert "own pod" in reason(p, agent_namespace="weir-system")
    assert isinstance(decide(p, agent_namespace="other"), Capture)
    assert not is_agent_pod("weir-system", "weir-cni-node-x", "")


def test_an_istio_init_container_means_the_pod_captures_itself() -> None:
    p = pod(spec__initContainers=[{"name": "istio-init"}])
    assert "istio-init" in reason(p)


@pytest.mark.parametrize("value", ["true", "1", "True"])
def test_disable_envoy_passes_through(value: str) -> None:
    p = pod(spec__containers=[{"name": "app"}, {"name": "istio-proxy", "env": [{"name": "DISABLE_ENVOY",
                                                                                 "value": value}]}])
    assert "DISABLE_ENVOY" in reason(p)


def test_no_istio_proxy_passes_through() -> None:
    assert "no istio-proxy" in reason(pod(spec__containers=[{"name": "app"}]))


def test_a_native_sidecar_istio_proxy_in_init_containers_counts() -> None:
    p = pod(spec__containers=[{"name": "app"}],
            spec__initContainers=[{"name": "istio-proxy", "restartPolicy": "Always"}])
    assert isinstance(decide(p), Capture)


def test_a_gateway_is_not_a_sidecar() -> None:
    p = pod(spec__containers=[{"name": "istio-proxy", "args": ["proxy", "router"]}])
    assert "router" in reason(p)


def test_inject_false_label_wins_over_annotation() -> None:
    p = pod(metadata__labels={"sidecar.istio.io/inject": "false"},
            metadata__annotations={"sidecar.istio.io/status": "{}", "sidecar.istio.io/inject": "true"})
    assert "inject" in reason(p)
    p = pod(metadata__labels={"sidecar.istio.io/inject": "true"},
            metadata__annotations={"sidecar.istio.io/status": "{}", "sidecar.istio.io/inject": "false"})
    assert isinstance(decide(p), Capture)


def test_an_unparseable_inject_value_is_ignored() -> None:
    p = pod(metadata__annotations={"sidecar.istio.io/status": "{}", "sidecar.istio.io/inject": "maybe"})
    assert isinstance(decide(p), Capture)


def test_never_injected_passes_through() -> None:
    assert "not injected" in reason(pod(metadata__annotations={}))


def test_a_bad_annotation_is_an_error_naming_it() -> None:
    p = pod(metadata__annotations={"sidecar.istio.io/status": "{}",
                                   "traffic.sidecar.istio.io/includeInboundPorts": "70000"})
    with pytest.raises(InvalidSpecError, match=r"includeInboundPorts.*70000"):
        decide(p)


def test_ips_choose_the_family() -> None:
    decision = decide(INJECTED, ips=["fd00::5/64"])
    assert isinstance(decision, Capture)
    assert decision.spec.ipv6
