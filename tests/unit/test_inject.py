"""The sidecar injector: Istio's decision rules, Istio 1.32's output (the two CNI goldens), both
flavors, and the hand-off to the CNI plugin (``decide`` captures what ``inject`` produced).

The goldens are Istio's ``pkg/kube/inject/testdata/inject/*.cni.injected``; their inputs
(``hello.yaml``, ``proxy-override-runas.yaml``, same directory) are copied below as test data.
Istio's test values for them: hub ``registry.istio.io/testing``, tag ``latest``, CNI on, and
``global.network=network1`` for hello only.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import GOLDEN, skip_unless_ci
from weir.api.pod import parse_pod
from weir.capture.spec import InterceptionMode
from weir.control.inject import (
    InjectError,
    InjectResult,
    InjectValues,
    MeshInfo,
    inject,
    inject_template_spec,
)
from weir.nodeagent.decide import Capture, PassThrough, decide

HELLO_INPUT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: 7
  selector:
    matchLabels:
      app: hello
      tier: backend
      track: stable
  template:
    metadata:
      labels:
        app: hello
        tier: backend
        track: stable
    spec:
      containers:
        - name: hello
          image: "fake.docker.io/google-samples/hello-go-gke:1.0"
          ports:
            - name: http
              containerPort: 80
"""
RUNAS_INPUT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  selector:
    matchLabels:
      app: hello
  template:
    metadata:
      labels:
        app: hello
    spec:
      containers:
      - name: hello
        image: "fake.docker.io/google-samples/hello-go-gke:1.0"
      - name: istio-proxy
        image: auto
        securityContext:
          runAsUser: 1234
          runAsGroup: 4321
"""
ISTIO_TEST_VALUES = {"hub": "registry.istio.io/testing", "tag": "latest"}
CASES = {  # golden file -> (input, extra values)
    "hello.yaml.cni.injected": (HELLO_INPUT, {"network": "network1"}),
    "proxy-override-runas.yaml.cni.injected": (RUNAS_INPUT, {}),
}
MESH = MeshInfo()
TRAFFIC = ("sidecar.istio.io/interceptionMode", "traffic.sidecar.istio.io/includeInboundPorts",
           "traffic.sidecar.istio.io/excludeInboundPorts", "traffic.sidecar.istio.io/includeOutboundIPRanges")
VALIDATION_ARGS = ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
                   "-x", "", "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info",
                   "--run-validation", "--skip-rule-apply"]


def golden(name: str) -> dict[str, Any]:
    path = GOLDEN / "injected_examples" / name
    if not path.exists():
        skip_unless_ci(f"Istio golden data not found at {path} (set WEIR_GOLDEN_DIR)")
    doc: dict[str, Any] = next(yaml.safe_load_all(Path(path).read_text()))
    return doc


def injected_golden_case(name: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(input, weir's output, Istio's output) for a golden case."""
    source, extra = CASES[name]
    workload = yaml.safe_load(source)
    result = inject_template_spec(workload, values=InjectValues(**ISTIO_TEST_VALUES, **extra), mesh=MESH)
    assert result.injected, result.reason
    return workload, result.pod, golden(name)


def pod(*, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
        name: str = "app-1", namespace: str = "shop", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": "shop"},
                         "annotations": annotations or {}},
            "spec": {"containers": [{"name": "app", "image": "shop:1", "command": ["/bin/shop"],
                                     "ports": [{"containerPort": 8080, "name": "http"}]}], **spec}}


ENABLED = {"istio-injection": "enabled"}
K8S = InjectValues()
EMBEDDED = InjectValues(flavor="embedded")


def names(containers: list[dict[str, Any]] | None) -> list[str]:
    return [c["name"] for c in containers or []]


def container(p: dict[str, Any], name: str) -> dict[str, Any]:
    spec = p["spec"]
    found = [c for c in (spec.get("initContainers") or []) + spec["containers"] if c["name"] == name]
    assert len(found) == 1, names(spec.get("initContainers")) + names(spec["containers"])
    return found[0]


# --- Istio's goldens ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_essential_fields_equal_istios(case: str) -> None:
    _, got, want = injected_golden_case(case)
    got_t, want_t = got["spec"]["template"], want["spec"]["template"]
    assert names(got_t["spec"]["initContainers"]) == names(want_t["spec"]["initContainers"]) \
        == ["istio-validation", "istio-proxy"]
    assert names(got_t["spec"]["containers"]) == names(want_t["spec"]["containers"]) == ["hello"]
    for name in ("istio-validation", "istio-proxy"):
        got_c, want_c = container(got_t, name), container(want_t, name)
        assert got_c["securityContext"] == want_c["securityContext"], name
        assert got_c.get("restartPolicy") == want_c.get("restartPolicy"), name
        assert got_c["args"] == want_c["args"], name
    got_ann, want_ann = got_t["metadata"]["annotations"], want_t["metadata"]["annotations"]
    for key in TRAFFIC:
        assert got_ann[key] == want_ann[key], key
    got_status = json.loads(got_ann["sidecar.istio.io/status"])
    want_status = json.loads(want_ann["sidecar.istio.io/status"])
    assert got_status["initContainers"] == want_status["initContainers"]
    assert got_status["containers"] == want_status["containers"] is None
    assert got_ann["sidecar.istio.io/status"] == want_ann["sidecar.istio.io/status"]  # byte for byte
    assert got_t["metadata"]["labels"] == want_t["metadata"]["labels"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_whole_pod_template_equals_istios_but_gos_empty_resources(case: str) -> None:
    """Everything is reproduced (env, probes, images, resources, volumes ...) except that Go
    writes ``resources: {}`` on every container it decoded, the app's included; weir leaves the
    app container as given. Outside the template Go also adds ``strategy: {}``/``status: {}``."""
    workload, got, want = injected_golden_case(case)
    for app in want["spec"]["template"]["spec"]["containers"]:
        assert app.pop("resources") == {}
    assert got["spec"]["template"] == want["spec"]["template"]
    assert want.pop("status") == {}
    assert want["spec"].pop("strategy") == {}
    del got["spec"]["template"], want["spec"]["template"], workload["spec"]["template"]
    assert got == want == workload


def test_validation_args_are_istios_with_cni() -> None:
    _, got, _ = injected_golden_case("hello.yaml.cni.injected")
    assert container(got["spec"]["template"], "istio-validation")["args"] == VALIDATION_ARGS


def test_a_users_proxy_runas_reaches_the_validation_container() -> None:
    _, got, want = injected_golden_case("proxy-override-runas.yaml.cni.injected")
    template = got["spec"]["template"]
    validation, proxy = container(template, "istio-validation"), container(template, "istio-proxy")
    assert validation["args"][validation["args"].index("-u") + 1] == "1234"
    assert (validation["securityContext"]["runAsUser"], validation["securityContext"]["runAsGroup"]) == (1234, 4321)
    assert (proxy["securityContext"]["runAsUser"], proxy["securityContext"]["runAsGroup"]) == (1234, 4321)
    assert proxy["image"] == "registry.istio.io/testing/proxyv2:latest"  # "auto" keeps the injected image
    assert template["metadata"]["annotations"]["proxy.istio.io/overrides"] == \
        want["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/overrides"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_injected_workload_is_valid_kubernetes(case: str) -> None:
    _, got, _ = injected_golden_case(case)
    kubernetes_validate.validate(got, kubernetes_validate.latest_version(), strict=True)


# --- the CNI plugin captures what was injected -------------------------------------------------


@pytest.mark.parametrize("values", [K8S, EMBEDDED], ids=["kubernetes", "embedded"])
def test_the_cni_plugin_captures_the_injected_pod_with_the_defaults(values: InjectValues) -> None:
    result = inject(pod(), values=values, namespace_labels=ENABLED, mesh=MESH)
    assert result.injected
    decision = decide(result.pod)
    assert isinstance(decision, Capture), decision
    spec = decision.spec
    assert spec.interception_mode is InterceptionMode.REDIRECT
    assert (spec.proxy_uids, spec.proxy_gids) == ((1337,), (1337,))
    assert spec.inbound_ports_include.wildcard
    assert spec.inbound_ports_exclude == (15020, 15021, 15090)
    assert spec.outbound_ip_ranges_include.wildcard
    assert not spec.outbound_ip_ranges_exclude
    assert spec.outbound_ports_exclude == (15020,)


def test_the_cni_plugin_captures_a_users_proxy_uid() -> None:
    _, got, _ = injected_golden_case("proxy-override-runas.yaml.cni.injected")
    template = got["spec"]["template"]
    decision = decide({"apiVersion": "v1", "kind": "Pod", **template})
    assert isinstance(decision, Capture)
    assert (decision.spec.proxy_uids, decision.spec.proxy_gids) == ((1234,), (4321,))


def test_traffic_annotations_reach_the_capture_spec() -> None:
    annotations = {"traffic.sidecar.istio.io/excludeInboundPorts": "9000",
                   "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/8",
                   "traffic.sidecar.istio.io/excludeOutboundPorts": "5432"}
    result = inject(pod(annotations=annotations), values=K8S, namespace_labels=ENABLED, mesh=MESH)
    ann = result.pod["metadata"]["annotations"]
    assert ann["traffic.sidecar.istio.io/excludeInboundPorts"] == "9000,15020"
    args = container(result.pod, "istio-validation")["args"]
    assert args[args.index("-d") + 1] == "15090,15021,9000,15020"
    assert args[args.index("-o") + 1] == "5432"
    decision = decide(result.pod)
    assert isinstance(decision, Capture)
    assert decision.spec.inbound_ports_exclude == (9000, 15020, 15021, 15090)
    assert [str(c) for c in decision.spec.outbound_ip_ranges_include.cidrs] == ["10.0.0.0/8"]
    assert decision.spec.outbound_ports_exclude == (5432,)


def test_without_cni_istio_init_captures_and_the_plugin_passes_through() -> None:
    result = inject(pod(), values=InjectValues(cni_enabled=False), namespace_labels=ENABLED, mesh=MESH)
    init = container(result.pod, "istio-init")
    assert names(result.pod["spec"]["initContainers"]) == ["istio-init", "istio-proxy"]
    assert init["securityContext"]["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert (init["securityContext"]["runAsUser"], init["securityContext"]["runAsNonRoot"]) == (0, False)
    assert "--run-validation" not in init["args"]
    assert "sidecar.istio.io/interceptionMode" not in result.pod["metadata"]["annotations"]
    assert isinstance(decide(result.pod), PassThrough)


# --- the embedded flavor -----------------------------------------------------------------------


def test_embedded_containers_have_commands_and_no_images_or_volumes() -> None:
    result = inject(pod(), values=EMBEDDED, namespace_labels=ENABLED, mesh=MESH)
    p = result.pod
    validation, proxy = container(p, "istio-validation"), container(p, "istio-proxy")
    assert validation["command"] == ["weir", "capture", "validate", "--timeout", "5"]
    assert "args" not in validation
    assert proxy["command"] == ["weir", "proxy-agent"]
    assert proxy["args"][:2] == ["proxy", "sidecar"]
    assert proxy["restartPolicy"] == "Always"
    for c in (validation, proxy):
        assert not {"image", "volumeMounts", "lifecycle"} & c.keys()
    assert "volumes" not in p["spec"]
    assert json.loads(p["metadata"]["annotations"]["sidecar.istio.io/status"])["volumes"] is None
    assert validation["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_the_embedded_runtime_accepts_the_injected_pod() -> None:
    result = inject(pod(), values=EMBEDDED, namespace_labels=ENABLED, mesh=MESH)
    parsed = parse_pod(result.pod)
    proxy = parsed.container("istio-proxy")
    validation = parsed.container("istio-validation")
    assert proxy is not None
    assert validation is not None
    assert proxy.is_native_sidecar
    assert (proxy.uid(parsed), validation.uid(parsed)) == (1337, 1337)
    assert [c.name for c in parsed.spec.init_containers] == ["istio-validation", "istio-proxy"]


def test_embedded_without_cni_is_an_error() -> None:
    with pytest.raises(InjectError, match=r"pilot\.cni\.enabled=false"):
        InjectValues(flavor="embedded", cni_enabled=False)


def test_embedded_tproxy_is_an_error() -> None:
    with pytest.raises(InjectError, match="TPROXY"):
        inject(pod(annotations={"sidecar.istio.io/interceptionMode": "TPROXY"}), values=EMBEDDED,
               namespace_labels=ENABLED, mesh=MESH)


# --- whether to inject -------------------------------------------------------------------------

DECISIONS = [  # namespace labels, pod labels, pod annotations, injected
    (ENABLED, {}, {}, True),
    ({}, {}, {}, False),
    ({"istio-injection": "disabled"}, {"sidecar.istio.io/inject": "true"}, {}, False),
    (ENABLED, {"sidecar.istio.io/inject": "false"}, {}, False),
    (ENABLED, {}, {"sidecar.istio.io/inject": "false"}, False),
    (ENABLED, {"sidecar.istio.io/inject": "true"}, {"sidecar.istio.io/inject": "false"}, True),  # label wins
    (ENABLED, {"sidecar.istio.io/inject": "no"}, {}, False),
    (ENABLED, {}, {"sidecar.istio.io/inject": "Yes"}, True),
    ({}, {"sidecar.istio.io/inject": "true"}, {}, True),
    ({}, {}, {"sidecar.istio.io/inject": "true"}, False),  # the webhook sees labels only
    ({"istio.io/rev": "default"}, {}, {}, True),
    ({"istio.io/rev": "canary"}, {}, {}, False),
    ({}, {"istio.io/rev": "default"}, {}, True),
    ({}, {"istio.io/rev": "default", "sidecar.istio.io/inject": "false"}, {}, False),
    ({"istio-injection": "enabled", "istio.io/rev": "canary"}, {}, {}, True),  # istio-injection wins
]


@pytest.mark.parametrize(("ns", "labels", "annotations", "want"), DECISIONS)
def test_istios_injection_decision(ns: dict[str, str], labels: dict[str, str], annotations: dict[str, str],
                                   want: bool) -> None:
    result = inject(pod(labels=labels, annotations=annotations), values=K8S, namespace_labels=ns, mesh=MESH)
    assert result.injected is want, result.reason
    assert bool(result.reason) is not want


def test_revisions_and_defaults() -> None:
    canary = InjectValues(revision="canary")
    assert inject(pod(), values=canary, namespace_labels={"istio.io/rev": "canary"}, mesh=MESH).injected
    assert not inject(pod(), values=canary, namespace_labels=ENABLED, mesh=MESH).injected
    result = inject(pod(), values=canary, namespace_labels={"istio.io/rev": "canary"}, mesh=MESH)
    proxy = container(result.pod, "istio-proxy")
    assert {"name": "CA_ADDR", "value": "istiod-canary.istio-system.svc:15012"} in proxy["env"]
    assert result.pod["metadata"]["annotations"]["istio.io/rev"] == "canary"
    by_default = InjectValues(enable_namespaces_by_default=True)
    assert inject(pod(), values=by_default, mesh=MESH).injected
    disabled_policy = InjectValues(auto_inject=False)
    assert not inject(pod(), values=disabled_policy, namespace_labels=ENABLED, mesh=MESH).injected
    assert inject(pod(annotations={"sidecar.istio.io/inject": "true"}), values=disabled_policy,
                  namespace_labels=ENABLED, mesh=MESH).injected


def test_host_network_and_system_namespaces_are_never_injected() -> None:
    result = inject(pod(hostNetwork=True, labels={"sidecar.istio.io/inject": "true"}), values=K8S,
                    namespace_labels=ENABLED, mesh=MESH)
    assert not result.injected
    assert "hostNetwork" in result.reason
    assert result.pod == pod(hostNetwork=True, labels={"sidecar.istio.io/inject": "true"})
    result = inject(pod(namespace="kube-system"), values=K8S, namespace_labels=ENABLED, mesh=MESH)
    assert not result.injected
    assert "kube-system" in result.reason


def test_injection_is_idempotent_and_leaves_its_input_alone() -> None:
    original = pod()
    before = copy.deepcopy(original)
    first = inject(original, values=K8S, namespace_labels=ENABLED, mesh=MESH)
    assert original == before
    again = inject(first.pod, values=K8S, namespace_labels=ENABLED, mesh=MESH)
    assert again == InjectResult(first.pod, injected=False, reason=again.reason)
    assert "already injected" in again.reason
    assert again.pod is not first.pod


def test_kube_inject_ignores_namespace_labels_but_not_the_pod() -> None:
    workload = yaml.safe_load(HELLO_INPUT)
    workload["spec"]["template"]["metadata"]["annotations"] = {"sidecar.istio.io/inject": "false"}
    result = inject_template_spec(workload, values=K8S, mesh=MESH)
    assert not result.injected
    assert result.pod == workload


# --- details of the output ---------------------------------------------------------------------


def test_a_replicaset_pod_is_named_after_its_deployment() -> None:
    p = pod(name="", labels={"app": "shop", "pod-template-hash": "5d9f7c"})
    p["metadata"].update(generateName="shop-5d9f7c-", ownerReferences=[
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "shop-5d9f7c", "controller": True, "uid": "u"}])
    proxy = container(inject(p, values=K8S, namespace_labels=ENABLED, mesh=MESH).pod, "istio-proxy")
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert env["ISTIO_META_WORKLOAD_NAME"] == "shop"
    assert env["ISTIO_META_OWNER"] == "kubernetes://apis/apps/v1/namespaces/shop/deployments/shop"
    assert env["ISTIO_META_APP_CONTAINERS"] == "app"
    assert env["ISTIO_META_POD_PORTS"] == '[\n    {"name":"http","containerPort":8080}\n]'


def test_native_sidecar_opt_out_puts_the_proxy_last_in_containers() -> None:
    p = pod(annotations={"sidecar.istio.io/nativeSidecar": "false"})
    result = inject(p, values=K8S, namespace_labels=ENABLED, mesh=MESH)
    assert names(result.pod["spec"]["initContainers"]) == ["istio-validation"]
    assert names(result.pod["spec"]["containers"]) == ["app", "istio-proxy"]
    assert "restartPolicy" not in container(result.pod, "istio-proxy")
    status = json.loads(result.pod["metadata"]["annotations"]["sidecar.istio.io/status"])
    assert (status["initContainers"], status["containers"]) == (["istio-validation"], ["istio-proxy"])
    assert isinstance(decide(result.pod), Capture)


def test_existing_init_containers_follow_the_proxy() -> None:
    p = pod(initContainers=[{"name": "migrate", "image": "shop:1", "command": ["/bin/migrate"]}])
    result = inject(p, values=K8S, namespace_labels=ENABLED, mesh=MESH)
    assert names(result.pod["spec"]["initContainers"]) == ["istio-validation", "istio-proxy", "migrate"]


def test_prometheus_scraping_moves_to_the_agent() -> None:
    p = pod(annotations={"prometheus.io/port": "9102", "prometheus.io/path": "/m"})
    result = inject(p, values=K8S, namespace_labels=ENABLED, mesh=MESH)
    ann = result.pod["metadata"]["annotations"]
    assert (ann["prometheus.io/port"], ann["prometheus.io/path"], ann["prometheus.io/scrape"]) == \
        ("15020", "/stats/prometheus", "true")
    env = {e["name"]: e.get("value") for e in container(result.pod, "istio-proxy")["env"]}
    assert env["ISTIO_PROMETHEUS_ANNOTATIONS"] == '{"scrape":"","path":"/m","port":"9102"}'
    off = inject(pod(annotations={"prometheus.io/scrape": "false"}), values=K8S, namespace_labels=ENABLED,
                 mesh=MESH).pod["metadata"]["annotations"]
    assert off["prometheus.io/scrape"] == "false"
    assert "prometheus.io/port" not in off


@pytest.mark.parametrize(("annotation", "value"), [
    ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0"),
    ("traffic.sidecar.istio.io/excludeInboundPorts", "http"),
    ("sidecar.istio.io/interceptionMode", "MAGIC"),
    ("status.sidecar.istio.io/port", "70000"),
])
def test_a_bad_annotation_is_an_error_that_names_it(annotation: str, value: str) -> None:
    with pytest.raises(InjectError, match=annotation.replace(".", r"\.")):
        inject(pod(annotations={annotation: value}), values=K8S, namespace_labels=ENABLED, mesh=MESH)


def test_values_from_helm() -> None:
    values = InjectValues.from_helm({
        "pilot": {"cni": {"enabled": False}},
        "global": {"hub": "example.com/istio", "tag": 1.32, "network": "n1",
                   "proxy": {"statusPort": 15021, "autoInject": "disabled", "includeIPRanges": "10.0.0.0/8"}},
        "revision": "canary"})
    assert (values.cni_enabled, values.hub, values.tag, values.network) == (False, "example.com/istio", "1.32", "n1")
    assert (values.status_port, values.auto_inject, values.include_ip_ranges) == (15021, False, "10.0.0.0/8")
    assert (values.revision, values.flavor) == ("canary", "kubernetes")
    with pytest.raises(InjectError, match=r"values\.global\.proxy\.statusPort"):
        InjectValues.from_helm({"global": {"proxy": {"statusPort": "high"}}})
