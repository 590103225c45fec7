"""The pod-start benchmark's pure parts: the pods it compares are the shapes it claims (the agent
captures the injected one and passes the istio-init and floor ones through), the rule text the
istio-init container loads is the agent's, and the agent's histogram is read right."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from weir.api.pod import parse_pod
from weir.capture import iptables
from weir.capture.pod import spec_from_pod
from weir.nodeagent.decide import Capture, PassThrough, decide
from weir.nodeagent.monitoring import Metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import pod_start_lab as lab  # bench/ is not a package: its directory is put on sys.path above


def init_container(doc: Mapping[str, Any]) -> dict[str, Any]:
    (only,) = doc["spec"]["initContainers"]
    return dict(only)


def test_injected_pod_is_captured_and_validated_without_privileges() -> None:
    doc = lab.injected_pod("p", {"PYTHONPATH": "/x"})
    parse_pod(doc)
    assert isinstance(decide(doc), Capture)
    init = init_container(doc)
    assert init["name"] == "istio-validation"
    assert init["command"][:3] == ["weir", "capture", "validate"]
    assert init["securityContext"]["runAsUser"] == 1337
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert init["env"] == [{"name": "PYTHONPATH", "value": "/x"}]
    assert doc["metadata"]["namespace"] == lab.NAMESPACE


def test_istio_init_pod_is_passed_through_and_programs_itself_as_root() -> None:
    doc = lab.istio_init_pod("p", "/m/p.yaml")
    parse_pod(doc)
    decision = decide(doc)
    assert isinstance(decision, PassThrough)
    assert "istio-init" in decision.reason
    init = init_container(doc)
    assert init["command"] == ["sh", "-c", lab.ISTIO_INIT_SCRIPT, "istio-init", "/m/p.yaml"]
    assert init["securityContext"]["runAsUser"] == 0
    assert init["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    # the same annotations, so the same rules as the injected pod's
    assert spec_from_pod(doc) == spec_from_pod(lab.injected_pod("p"))
    assert iptables.render(spec_from_pod(doc), 4) == iptables.render(spec_from_pod(lab.injected_pod("p")), 4)


def test_floor_pod_is_passed_through_and_its_init_container_does_nothing() -> None:
    doc = lab.floor_pod("p")
    parse_pod(doc)
    assert isinstance(decide(doc), PassThrough)
    assert init_container(doc)["command"] == ["true"]
    assert [c["name"] for c in doc["spec"]["containers"]] == ["app", "istio-proxy"]


def test_every_pod_gets_its_own_uid() -> None:
    uids = {lab.injected_pod("p")["metadata"]["uid"] for _ in range(5)}
    assert len(uids) == 5


def test_add_histogram_reads_the_agents_metrics() -> None:
    metrics = Metrics()
    for seconds in (0.003, 0.012, 0.040):
        metrics.plugin_request("ADD", "success", seconds)
    metrics.plugin_request("DEL", "success", 5.0)  # not an ADD: not in the histogram
    text = generate_latest(metrics.registry).decode()
    total, count = lab.add_histogram(text)
    assert count == 3
    assert total == pytest.approx(0.055)
    buckets = lab.add_buckets(text)
    assert [buckets[le] for le in ("0.005", "0.025", "0.05", "+Inf")] == [1, 2, 3, 3]


def test_add_histogram_refuses_text_without_it() -> None:
    with pytest.raises(RuntimeError, match="weir_cni_add_duration_seconds"):
        lab.add_histogram("# nothing here\n")


def test_timed_exec_records_each_plugin_run() -> None:
    calls: list[lab.PluginCall] = []

    def inner(plugin_type: str, env: Mapping[str, str], stdin: str, /) -> tuple[str, str, int]:
        return "{}", "", 0

    timed = lab.TimedExec(inner, calls)
    assert timed("bridge", {"CNI_COMMAND": "ADD"}, "{}") == ("{}", "", 0)
    timed("weir-cni", {"CNI_COMMAND": "DEL"}, "{}")
    assert [(c.plugin, c.command) for c in calls] == [("bridge", "ADD"), ("weir-cni", "DEL")]
    assert all(c.seconds >= 0 for c in calls)
