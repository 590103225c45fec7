"""``weir install``: the IstioOperator parser and its translation to chart values (pure), the
server-side apply plan (pure), and the command run in-process with the real helm 3 on real files.

``--apply`` is exercised only up to the point where a cluster would be needed (no kubeconfig, a
closed loopback port); no Kubernetes API server exists here."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import helm_or_skip
from weir.cli.main import main
from weir.install import CHART_DIR, CHECKOUT_HELM
from weir.install.apply import FIELD_MANAGER, ApplyRequest, plan
from weir.install.operator import (
    API_VERSION,
    CNI_VALUES,
    GLOBAL_VALUES,
    KIND,
    InstallSpec,
    SpecError,
    Unsupported,
    apply_sets,
    parse,
    parse_set_value,
)

Capsys = pytest.CaptureFixture[str]


def operator(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "weir"}, "spec": spec or {}}


FULL = operator({
    "hub": "registry.example/mesh", "tag": "0.2.0",
    "components": {"cni": {"enabled": True, "namespace": "weir-system",
                           "k8s": {"resources": {"requests": {"cpu": "50m"}}}}},
    "values": {
        "cni": {
            "cniBinDir": "/var/lib/cni/bin", "cniConfDir": "/etc/cni/multus/net.d", "cniConfFileName": "weir.conf",
            "chained": False, "excludeNamespaces": ["kube-system", "ci"], "logging": {"level": "debug"},
            "repair": {"repairPods": False, "labelPods": True, "brokenPodLabelKey": "example.com/broken"},
            "istioOwnedCNIConfig": True, "cniConfDropIn": False, "provider": "default",
        },
        "pilot": {"cni": {"enabled": True}},
        "global": {"nativeNftables": True, "logging": {"level": "info"}, "istioNamespace": "ignored-here"},
    },
})


# ---- the parser --------------------------------------------------------------------------------


def test_an_empty_operator_installs_the_cni_with_the_charts_defaults() -> None:
    assert parse(operator()) == InstallSpec(cni_enabled=True, namespace="istio-system", values={})
    assert parse(operator()).comments() == []


def test_the_full_translation() -> None:
    spec = parse(FULL)
    assert spec.cni_enabled
    assert spec.namespace == "weir-system"
    assert spec.pilot_cni_enabled is True
    assert spec.values == {
        "cniBinDir": "/var/lib/cni/bin", "cniConfDir": "/etc/cni/multus/net.d", "cniConfFileName": "weir.conf",
        "chained": False, "excludeNamespaces": ["kube-system", "ci"], "logging": {"level": "debug"},
        "repair": {"repairPods": False, "labelPods": True, "brokenPodLabelKey": "example.com/broken"},
        "istioOwnedCNIConfig": True, "cniConfDropIn": False,
        "resources": {"requests": {"cpu": "50m"}},
        "global": {"nativeNftables": True, "logging": {"level": "info"}, "hub": "registry.example/mesh",
                   "tag": "0.2.0"},
    }
    assert spec.comments() == ["values.pilot.cni.enabled=true: recorded for the sidecar injector (a later stage "
                               "of weir); nothing below depends on it"]


def test_the_input_document_is_not_changed() -> None:
    before = json.dumps(FULL, sort_keys=True)
    parse(FULL)
    apply_sets(FULL, ["values.cni.chained=true"])
    assert json.dumps(FULL, sort_keys=True) == before


@pytest.mark.parametrize(("spec", "namespace"), [
    ({}, "istio-system"),
    ({"values": {"global": {"istioNamespace": "mesh"}}}, "mesh"),
    ({"namespace": "ops", "values": {"global": {"istioNamespace": "mesh"}}}, "ops"),
    ({"namespace": "ops", "components": {"cni": {"namespace": "kube-system"}}}, "kube-system"),
])
def test_namespace_precedence(spec: dict[str, Any], namespace: str) -> None:
    assert parse(operator(spec)).namespace == namespace


@pytest.mark.parametrize(("spec", "enabled"), [
    ({"components": {"cni": {"enabled": False}}}, False),
    ({"values": {"cni": {"enabled": False}}}, False),  # Istio's older switch
    ({"values": {"cni": {"enabled": True}}}, True),
    ({"components": {"cni": {"enabled": True}}, "values": {"cni": {"enabled": True}}}, True),
])
def test_enabled(spec: dict[str, Any], enabled: bool) -> None:
    parsed = parse(operator(spec))
    assert parsed.cni_enabled is enabled
    assert "enabled" not in parsed.values
    assert ("components.cni.enabled is false: nothing to install" in parsed.comments()) is not enabled


def test_component_image_coordinates_and_k8s() -> None:
    spec = parse(operator({"components": {"cni": {"hub": "r.example/own", "tag": 7, "k8s": {
        "tolerations": [{"operator": "Exists"}], "podAnnotations": {"a": "b"}, "affinity": {}}}}}))
    assert spec.values == {"hub": "r.example/own", "tag": "7", "tolerations": [{"operator": "Exists"}],
                           "podAnnotations": {"a": "b"}, "affinity": {}}


def test_null_means_unset() -> None:
    spec = parse(operator({"values": {"cni": {"cniConfFileName": None, "repair": None, "chained": True}}}))
    assert spec.values == {"chained": True}


@pytest.mark.parametrize(("document", "message"), [
    ({**operator(), "apiVersion": "install.istio.io/v1"},
     "apiVersion: expected install.istio.io/v1alpha1, got 'install.istio.io/v1'"),
    ({**operator(), "kind": "IstioOperators"}, "kind: expected IstioOperator, got 'IstioOperators'"),
    ({**operator(), "status": {}}, "status: unknown field (known here: apiVersion, kind, metadata, spec)"),
    ([], "(document): expected a mapping, got a list"),
    (operator({"values": {"cni": {"chained": "yes"}}}),
     "spec.values.cni.chained: expected true or false, got 'yes' (a string)"),
    (operator({"values": {"cni": {"chianed": False}}}),
     "spec.values.cni.chianed: unknown field (did you mean chained?)"),
    (operator({"values": {"cni": {"repair": {"repairpods": True}}}}),
     "spec.values.cni.repair.repairpods: unknown field (did you mean repairPods?)"),
    (operator({"values": {"cni": {"repair": {"enabled": 1}}}}),
     "spec.values.cni.repair.enabled: expected true or false, got 1 (a number)"),
    (operator({"values": {"cni": {"cniBinDir": "opt/cni/bin"}}}),
     "spec.values.cni.cniBinDir: expected an absolute path, got 'opt/cni/bin'"),
    (operator({"values": {"cni": {"cniConfFileName": "/etc/cni/net.d/x.conf"}}}),
     "spec.values.cni.cniConfFileName: expected a file name without '/', got '/etc/cni/net.d/x.conf'"),
    (operator({"values": {"cni": {"excludeNamespaces": "kube-system"}}}),
     "spec.values.cni.excludeNamespaces: expected a list of strings, got 'kube-system' (a string)"),
    (operator({"values": {"cni": {"excludeNamespaces": ["kube-system", 3]}}}),
     "spec.values.cni.excludeNamespaces[1]: expected a string, got 3 (a number)"),
    (operator({"values": {"cni": {"resources": ["100m"]}}}),
     "spec.values.cni.resources: expected a mapping, got a list"),
    (operator({"values": {"cni": {"env": {"A": ["x"]}}}}),
     "spec.values.cni.env.A: expected a string, number or true/false, got a list"),
    (operator({"values": {"cni": {"provider": "multus"}}}),
     "spec.values.cni.provider: expected one of 'default', got 'multus'"),
    (operator({"values": {"cni": {"ambient": {"enabled": False}}}}),
     "spec.values.cni.ambient: Istio's ambient mode is not part of weir (weir captures for sidecars)"),
    (operator({"values": {"cni": {"seccompProfile": {}}}}),
     "spec.values.cni.seccompProfile: an Istio setting the weir-cni chart does not have"),
    (operator({"values": {"global": {"nativeNftables": "true"}}}),
     "spec.values.global.nativeNftables: expected true or false, got 'true' (a string)"),
    (operator({"values": {"global": {"nativeNftable": True}}}),
     "spec.values.global.nativeNftable: unknown field (did you mean nativeNftables?)"),
    (operator({"values": {"global": {"meshID": "m"}}}),
     "spec.values.global.meshID: not supported by weir install yet: it renders only components.cni "
     "(the control plane is a later stage)"),
    (operator({"values": {"pilot": {"cni": {"enabled": "on"}}}}),
     "spec.values.pilot.cni.enabled: expected true or false, got 'on' (a string)"),
    (operator({"values": {"pilot": {"autoscaleEnabled": True}}}),
     "spec.values.pilot.autoscaleEnabled: not supported by weir install yet: it renders only components.cni "
     "(the control plane is a later stage)"),
    (operator({"components": {"pilot": {"enabled": True}}}),
     "spec.components.pilot: not supported by weir install yet: it renders only components.cni "
     "(the control plane is a later stage)"),
    (operator({"components": {"cni": {"namespace": "Weir_System"}}}),
     "spec.components.cni.namespace: expected a namespace name (a DNS-1123 label), got 'Weir_System'"),
    (operator({"components": {"cni": {"k8s": {"nodeSelector": {}}}}}),
     "spec.components.cni.k8s.nodeSelector: only resources, tolerations, affinity and podAnnotations are "
     "supported here; see spec.values.cni for the rest"),
    (operator({"components": {"cni": {"enabled": True}}, "values": {"cni": {"enabled": False}}}),
     "spec.components.cni.enabled: is true but spec.values.cni.enabled is false; set one of them"),
    (operator({"values": {"cni": {"cniConfDropIn": True, "chained": False}}}),
     "spec.values.cni.cniConfDropIn: needs chained: true (a drop-in extends the primary conflist)"),
    (operator({"profile": "ambient"}), "spec.profile: expected one of 'default', got 'ambient'"),
    (operator({"values": {"cni": {"logging": {"level": "default:debug"}}}}),
     "spec.values.cni.logging.level: expected one of '', 'debug', 'info', 'warn', 'warning', 'error', "
     "got 'default:debug'"),
    (operator({"values": {"cni": {"terminationGracePeriodSeconds": -1}}}),
     "spec.values.cni.terminationGracePeriodSeconds: expected a whole number of 0 or more, got -1 (a number)"),
])
def test_errors_name_the_field(document: Any, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse(document)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("text", "value"), [
    ("true", True), ("false", False), ("null", None), ("15", 15), ("-3", -3), ("1.24", "1.24"),
    ("kube-system", "kube-system"), ("[kube-system, ci]", ["kube-system", "ci"]), ("{cpu: 100m}", {"cpu": "100m"}),
    ("", ""), ("a=b", "a=b"),
])
def test_set_values(text: str, value: Any) -> None:
    assert parse_set_value(text) == value


def test_sets_go_under_spec_and_are_checked_like_the_file() -> None:
    doc = apply_sets(operator({"values": {"cni": {"chained": True}}}), [
        "values.cni.chained=false", "spec.components.cni.namespace=weir-system",
        "values.cni.excludeNamespaces=[kube-system,ci]", "values.cni.repair.labelPods=true",
        "values.cni.terminationGracePeriodSeconds=5",
    ])
    spec = parse(doc)
    assert spec.namespace == "weir-system"
    assert spec.values == {"chained": False, "excludeNamespaces": ["kube-system", "ci"],
                           "repair": {"labelPods": True}, "terminationGracePeriodSeconds": 5}
    with pytest.raises(SpecError, match=r"^spec.values.cni.chained: expected true or false, got 'yes'"):
        parse(apply_sets(operator(), ["values.cni.chained=yes"]))


@pytest.mark.parametrize(("item", "message"), [
    ("values.cni.chained", "--set values.cni.chained: expected PATH=VALUE, e.g. values.cni.chained=false"),
    ("=x", "--set =x: expected PATH=VALUE, e.g. values.cni.chained=false"),
    ("values..cni=x", "--set values..cni=x: expected PATH=VALUE, e.g. values.cni.chained=false"),
    ("values.cni.chained.x=1", "spec.values.cni.chained: cannot set values.cni.chained.x: spec.values.cni.chained "
                               "is true, not a mapping"),
    ("values.cni.x=[a", "--set [a: not a YAML list or map: while parsing a flow sequence"),
])
def test_bad_sets(item: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        apply_sets(operator({"values": {"cni": {"chained": True}}}), [item])
    assert str(caught.value) == message


def test_the_parser_accepts_exactly_the_charts_values() -> None:
    """Every value the chart declares can be set through spec.values.cni, and nothing else is passed on."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())["properties"]

    def supported(table: Any) -> set[str]:
        return {k for k, v in table.items() if k != "*" and not isinstance(v, Unsupported)}

    assert supported(CNI_VALUES) - {"enabled", "provider"} == set(schema) - {"global"}
    assert supported(CNI_VALUES["repair"]) == set(schema["repair"]["properties"])
    assert supported(GLOBAL_VALUES) - {"istioNamespace"} == set(schema["global"]["properties"])


# ---- the apply plan ----------------------------------------------------------------------------

MANIFESTS = [
    {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "weir-cni-node", "namespace": "weir-system"}},
    None,
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "weir-cni"}},
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "weir-cni-config"}},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "weir-cni"}},
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "weir-cni", "namespace": "weir-system"}},
    {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "other"}},
]


def test_plan_orders_like_helm_and_creates_the_namespace_first() -> None:
    requests = plan(MANIFESTS, "weir-system")
    assert [(r.kind, r.namespace, r.name) for r in requests] == [
        ("Namespace", None, "weir-system"),
        ("ServiceAccount", "weir-system", "weir-cni"),
        ("ConfigMap", "weir-system", "weir-cni-config"),  # the namespace filled in
        ("ClusterRole", None, "weir-cni"),
        ("ClusterRoleBinding", None, "weir-cni"),
        ("DaemonSet", "weir-system", "weir-cni-node"),
        ("Widget", "other", "w"),  # unknown kinds last; an explicit namespace is kept
    ]
    assert requests[0].body == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "weir-system"}}
    assert requests[2].body["metadata"] == {"name": "weir-cni-config", "namespace": "weir-system"}
    assert MANIFESTS[3]["metadata"] == {"name": "weir-cni-config"}  # type: ignore[index]  # input untouched
    assert requests[5].body is MANIFESTS[0] or requests[5].body == MANIFESTS[0]
    for r in requests:
        assert (r.field_manager, r.force, r.content_type) == (FIELD_MANAGER, True, "application/apply-patch+yaml")
    assert requests[5].describe() == ("PATCH apps/v1 DaemonSet weir-system/weir-cni-node "
                                      "(server-side apply, fieldManager=weir-install, force)")
    assert requests[3].describe().startswith("PATCH rbac.authorization.k8s.io/v1 ClusterRole weir-cni (")


def test_plan_does_not_apply_the_namespace_twice() -> None:
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "weir-system", "labels": {"a": "b"}}}
    assert [r.kind for r in plan([ns], "weir-system")] == ["Namespace"]


@pytest.mark.parametrize("bad", [
    ["not a mapping"], [{"kind": "ConfigMap", "metadata": {"name": "x"}}], [{"apiVersion": "v1", "kind": "ConfigMap"}],
    [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ""}}],
])
def test_plan_refuses_incomplete_manifests(bad: list[Any]) -> None:
    with pytest.raises(ValueError, match="manifest 0"):
        plan(bad, "weir-system")


def test_apply_request_is_frozen() -> None:
    request = ApplyRequest("v1", "ConfigMap", "x", "ns", {})
    with pytest.raises(AttributeError):
        request.name = "y"  # type: ignore[misc]


# ---- the command (real helm, real files) -------------------------------------------------------


@pytest.fixture
def helm(monkeypatch: pytest.MonkeyPatch) -> str:
    helm = helm_or_skip()
    monkeypatch.setenv("WEIR_HELM", helm)
    return helm


def write(tmp_path: Path, document: Any) -> str:
    path = tmp_path / "operator.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


def run(capsys: Capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["install", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def documents(text: str) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


def test_print_renders_the_translated_values(helm: str, tmp_path: Path, capsys: Capsys) -> None:
    code, out, err = run(capsys, "-f", write(tmp_path, FULL), "--set", "values.cni.repair.labelPods=false",
                         "--set", "values.cni.repair.deletePods=true")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "# weir install: components.cni in namespace weir-system"
    assert lines[1].startswith("# values.pilot.cni.enabled=true: recorded for the sidecar injector")
    manifests = documents(out)
    data = manifests["ConfigMap"]["data"]
    assert (data["CHAINED_CNI_PLUGIN"], data["CNI_CONF_NAME"], data["EXCLUDE_NAMESPACES"]) == \
        ("false", "weir.conf", "kube-system,ci")
    assert (data["NATIVE_NFTABLES"], data["CNI_PLUGIN_LOG_LEVEL"], data["CNI_CONF_DROPIN"]) == \
        ("true", "debug", "false")
    assert (data["REPAIR_REPAIR_PODS"], data["REPAIR_DELETE_PODS"], data["REPAIR_LABEL_PODS"]) == \
        ("false", "true", "false")
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]} in manifests["ClusterRole"]["rules"]
    ds = manifests["DaemonSet"]
    assert ds["metadata"]["namespace"] == "weir-system"
    container = ds["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/mesh/weir:0.2.0"
    assert container["resources"]["requests"]["cpu"] == "50m"
    volumes = {v["name"]: v["hostPath"]["path"] for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert (volumes["cni-bin-dir"], volumes["cni-net-dir"]) == ("/var/lib/cni/bin", "/etc/cni/multus/net.d")


EVERYTHING = operator({
    "hub": "registry.example/mesh", "tag": "0.2.0", "namespace": "ops", "profile": "default",
    "components": {"cni": {"enabled": True, "namespace": "weir-system", "hub": "registry.example/own", "tag": "1",
                           "k8s": {"resources": {"limits": {"memory": "300Mi"}},
                                   "tolerations": [{"operator": "Exists"}], "affinity": {"nodeAffinity": {}},
                                   "podAnnotations": {"k": "v"}}}},
    "values": {
        "cni": {
            "enabled": True, "hub": "registry.example/cni", "tag": "2", "image": "weir", "pullPolicy": "IfNotPresent",
            "logging": {"level": "debug"}, "cniBinDir": "/opt/cni/bin", "cniConfDir": "/etc/cni/net.d",
            "cniConfFileName": "10-x.conflist", "cniNetnsDir": "/run/netns", "chained": True,
            "istioOwnedCNIConfig": True, "istioOwnedCNIConfigFileName": "02-x.conflist", "cniConfDropIn": True,
            "nativeNftables": True, "excludeNamespaces": ["kube-system"],
            "repair": {"enabled": True, "repairPods": False, "deletePods": False, "labelPods": True,
                       "brokenPodLabelKey": "k", "brokenPodLabelValue": "v", "initContainerName": "c"},
            "resources": {"requests": {"cpu": "1"}}, "tolerations": [], "affinity": {}, "podAnnotations": {},
            "updateStrategy": {"type": "OnDelete"}, "terminationGracePeriodSeconds": 10, "env": {"A": "b", "N": 1},
            "provider": "default",
        },
        "pilot": {"cni": {"enabled": True, "provider": "default"}},
        "global": {"hub": "registry.example/g", "tag": "3", "imagePullPolicy": "Always", "imagePullSecrets": ["s"],
                   "logging": {"level": "info"}, "nativeNftables": False, "istioNamespace": "mesh"},
    },
})


def test_every_supported_field_is_accepted_by_the_chart(helm: str, tmp_path: Path, capsys: Capsys) -> None:
    """The parser never passes the chart a value its schema refuses, and the result is valid Kubernetes."""
    import kubernetes_validate

    code, out, err = run(capsys, "-f", write(tmp_path, EVERYTHING))
    assert (code, err) == (0, "")
    manifests = documents(out)
    for doc in manifests.values():
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    assert manifests["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/own/weir:1"
    assert manifests["DaemonSet"]["spec"]["updateStrategy"] == {"type": "OnDelete"}


def test_without_a_file_it_is_the_charts_default_render(helm: str, capsys: Capsys) -> None:
    code, out, _ = run(capsys)
    assert code == 0
    direct = subprocess.run([helm, "template", "weir-cni", str(CHART_DIR), "--namespace", "istio-system"],
                            capture_output=True, text=True, check=True).stdout
    assert out == "# weir install: components.cni in namespace istio-system\n" + direct


def test_stdin_and_json(helm: str, capsys: Capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(operator({"values": {"cni": {"chained": False}}}))))
    code, out, _ = run(capsys, "-f", "-", "--print")
    assert code == 0
    assert documents(out)["ConfigMap"]["data"]["CHAINED_CNI_PLUGIN"] == "false"


def test_dry_run_lists_the_requests(helm: str, tmp_path: Path, capsys: Capsys) -> None:
    code, out, _ = run(capsys, "-f", write(tmp_path, operator({"namespace": "ops"})), "--dry-run")
    assert code == 0
    assert out.splitlines() == [
        "# weir install: components.cni in namespace ops",
        "# dry run: nothing was sent",
        "PATCH v1 Namespace ops (server-side apply, fieldManager=weir-install, force)",
        "PATCH v1 ServiceAccount ops/weir-cni (server-side apply, fieldManager=weir-install, force)",
        "PATCH v1 ConfigMap ops/weir-cni-config (server-side apply, fieldManager=weir-install, force)",
        "PATCH rbac.authorization.k8s.io/v1 ClusterRole weir-cni (server-side apply, fieldManager=weir-install, "
        "force)",
        "PATCH rbac.authorization.k8s.io/v1 ClusterRoleBinding weir-cni (server-side apply, "
        "fieldManager=weir-install, force)",
        "PATCH apps/v1 DaemonSet ops/weir-cni-node (server-side apply, fieldManager=weir-install, force)",
    ]


def test_disabled_renders_nothing_and_needs_no_helm(tmp_path: Path, capsys: Capsys) -> None:
    doc = operator({"components": {"cni": {"enabled": False}}, "values": {"pilot": {"cni": {"enabled": False}}}})
    code, out, err = run(capsys, "-f", write(tmp_path, doc), "--helm", "/nonexistent/helm")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "# weir install: components.cni disabled",
        "# values.pilot.cni.enabled=false: recorded for the sidecar injector (a later stage of weir); "
        "nothing below depends on it",
        "# components.cni.enabled is false: nothing to install",
    ]


@pytest.mark.parametrize(("argv", "message"), [
    (["--set", "values.cni.chained=yes"], "spec.values.cni.chained: expected true or false, got 'yes' (a string)"),
    (["--set", "values.cni.repair.repairpods=true"],
     "spec.values.cni.repair.repairpods: unknown field (did you mean repairPods?)"),
    (["--set", "values.cni"], "--set values.cni: expected PATH=VALUE, e.g. values.cni.chained=false"),
    (["-f", "/nonexistent/operator.yaml"], "/nonexistent/operator.yaml: No such file or directory"),
])
def test_bad_input_is_exit_2_with_one_line(capsys: Capsys, argv: list[str], message: str) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err == f"weir install: error: {message}\n"


def test_a_mistyped_field_in_the_file(tmp_path: Path, capsys: Capsys) -> None:
    path = tmp_path / "operator.yaml"
    path.write_text(f"apiVersion: {API_VERSION}\nkind: {KIND}\nspec:\n  values:\n    cni:\n"
                    "      excludeNamespaces: kube-system\n")
    code, out, err = run(capsys, "-f", str(path))
    assert (code, out) == (2, "")
    assert err == ("weir install: error: spec.values.cni.excludeNamespaces: expected a list of strings, "
                   "got 'kube-system' (a string)\n")


def test_modes_are_exclusive(capsys: Capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["install", "--print", "--apply"])
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_missing_helm_or_chart_is_exit_1(tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, "--helm", str(tmp_path / "helm"))
    assert (code, out) == (1, "")
    assert err == f"weir install: error: --helm: '{tmp_path / 'helm'}' is not an executable file\n"
    monkeypatch.setenv("WEIR_HELM", str(CHECKOUT_HELM))
    code, _, err = run(capsys, "--chart", str(tmp_path))
    assert code == 1
    assert err == f"weir install: error: {tmp_path}: not a Helm chart (no Chart.yaml); pass --chart\n"


def test_apply_without_a_cluster_configured(helm: str, tmp_path: Path, capsys: Capsys,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    code, out, err = run(capsys, "--apply")
    assert (code, out) == (1, "")
    assert err.startswith("weir install: error: --apply: no cluster configured: ")


def test_apply_to_an_unreachable_api_server(helm: str, tmp_path: Path, capsys: Capsys,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "t", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
    }))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    code, out, err = run(capsys, "--apply")
    assert (code, out) == (1, "")
    assert err.startswith("weir install: error: --apply: cannot reach the cluster: ")
    assert "Connection refused" in err
