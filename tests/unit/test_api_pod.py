"""weir.api: Kubernetes v1 Pod manifests -> frozen dataclasses, or one-line errors naming the JSON path."""

from __future__ import annotations

import ast
import copy
import dataclasses
import ipaddress
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from weir.api.pod import (
    Container,
    ContainerPort,
    EnvVar,
    FieldRef,
    ManifestError,
    ObjectMeta,
    Pod,
    PodSecurityContext,
    PodSpec,
    ResourceFieldRef,
    SecurityContext,
    parse_pod,
    pod_to_dict,
)
from weir.api.pod_model import (
    ExecAction,
    GRPCAction,
    HTTPGetAction,
    HTTPHeader,
    Probe,
    TCPSocketAction,
)

NO_ENTRYPOINT = "required (the embedded runtime has no image to take an entrypoint from)"
API_SRC = Path(__file__).resolve().parents[2] / "src" / "weir" / "api"


def manifest(**spec: Any) -> dict[str, Any]:
    """A valid pod; ``spec`` keys replace the spec's (``containers`` included)."""
    doc: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "command": ["sleep", "infinity"]}]},
    }
    doc["spec"].update(spec)
    return doc


def with_container(**fields: Any) -> dict[str, Any]:
    return manifest(containers=[{"name": "app", "command": ["sleep", "1"], **fields}])


def problems(doc: object, source: str = "pod.yaml") -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_pod(doc, source)
    lines = [str(e) for e in info.value.errors]
    assert all("\n" not in line for line in [*lines, str(info.value)])
    return lines


def only_problem(doc: object) -> str:
    found = problems(doc)
    assert len(found) == 1, found
    return found[0]


# --- the golden injected pod -------------------------------------------------------------


@pytest.fixture
def hello(golden_dir: Path) -> dict[str, Any]:
    """The pod template of Istio's injected hello Deployment, as a v1 Pod manifest."""
    text = (golden_dir / "injected_examples" / "hello.yaml.cni.injected").read_text()
    deployment = next(d for d in yaml.safe_load_all(text) if d)
    template = deployment["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {**template["metadata"], "name": "hello"},
            "spec": template["spec"]}


def test_golden_injected_pod_fails_only_for_the_missing_commands(hello: dict[str, Any]) -> None:
    assert problems(hello, "hello.yaml") == [
        f"hello.yaml: spec.initContainers[0].command: {NO_ENTRYPOINT}",
        f"hello.yaml: spec.initContainers[1].command: {NO_ENTRYPOINT}",
        f"hello.yaml: spec.containers[0].command: {NO_ENTRYPOINT}",
    ]


def test_golden_injected_pod_parses_once_it_has_commands(hello: dict[str, Any]) -> None:
    for container in (*hello["spec"]["initContainers"], *hello["spec"]["containers"]):
        container["command"] = ["/usr/local/bin/" + container["name"]]
    pod = parse_pod(hello, "hello.yaml")

    assert [c.name for c in pod.spec.init_containers] == ["istio-validation", "istio-proxy"]
    assert [c.name for c in pod.spec.containers] == ["hello"]
    validation, proxy = pod.spec.init_containers
    app = pod.spec.containers[0]
    assert (validation.uid(pod), validation.gid(pod)) == (1337, 1337)
    assert (proxy.uid(pod), proxy.gid(pod)) == (1337, 1337)
    assert (app.uid(pod), app.gid(pod)) == (0, 0)
    assert not validation.is_native_sidecar
    assert proxy.is_native_sidecar
    assert validation.args[:1] == ("istio-iptables",)
    assert "--run-validation" in validation.args
    assert validation.security_context.capabilities.drop == ("ALL",)
    assert validation.security_context.read_only_root_filesystem is True
    assert validation.security_context.allow_privilege_escalation is False
    assert validation.security_context.run_as_non_root is True
    assert validation.image == "registry.istio.io/testing/proxyv2:latest"
    assert proxy.ports[0].container_port == 15090
    assert proxy.ports[0].name == "http-envoy-prom"
    assert app.ports[0].container_port == 80
    assert app.ports[0].protocol == "TCP"
    assert proxy.resources.limits == {"cpu": "2", "memory": "1Gi"}
    env = {e.name: e for e in proxy.env}
    assert env["CA_ADDR"].value == "istiod.istio-system.svc:15012"
    assert env["POD_NAME"].value_from == FieldRef("metadata.name")
    assert env["INSTANCE_IP"].value_from == FieldRef("status.podIP")
    assert env["ISTIO_CPU_LIMIT"].value_from == ResourceFieldRef("limits.cpu", divisor="1")
    assert env["GOMEMLIMIT"].value_from == ResourceFieldRef("limits.memory", divisor="1")
    assert pod.metadata.name == "hello"
    assert pod.metadata.namespace == "default"
    assert pod.metadata.labels["security.istio.io/tlsMode"] == "istio"
    assert pod.metadata.annotations["sidecar.istio.io/interceptionMode"] == "REDIRECT"
    assert pod.raw == hello
    assert pod.container("istio-proxy") is proxy
    assert pod.container("nope") is None


# --- defaults and the model --------------------------------------------------------------


def test_minimal_pod_gets_kubernetes_defaults() -> None:
    pod = parse_pod(manifest())
    assert pod.api_version == "v1"
    assert pod.kind == "Pod"
    assert pod.metadata == ObjectMeta(name="web", labels={"app": "web"})
    assert pod.metadata.namespace == "default"
    assert pod.metadata.uid == ""
    assert pod.spec.restart_policy == "Always"
    assert pod.spec.termination_grace_period_seconds == 30
    assert pod.spec.service_account_name == "default"
    app = pod.spec.containers[0]
    assert app == Container(name="app", command=("sleep", "infinity"))
    assert app.termination_message_path == "/dev/termination-log"
    assert app.restart_policy is None
    assert app.working_dir is None
    assert app.image is None


def test_uid_and_gid_container_over_pod_over_zero() -> None:
    doc = manifest(
        securityContext={"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000, "supplementalGroups": [4, 5],
                         "sysctls": [{"name": "net.ipv4.ip_forward", "value": "1"}]},
        containers=[
            {"name": "inherits", "command": ["a"]},
            {"name": "overrides", "command": ["b"], "securityContext": {"runAsUser": 1337, "runAsGroup": 0}},
        ],
    )
    pod = parse_pod(doc)
    inherits, overrides = pod.spec.containers
    assert (inherits.uid(pod), inherits.gid(pod)) == (1000, 3000)
    assert (overrides.uid(pod), overrides.gid(pod)) == (1337, 0)
    assert pod.spec.security_context.fs_group == 2000
    assert pod.spec.security_context.supplemental_groups == (4, 5)
    assert pod.spec.security_context.sysctls[0].name == "net.ipv4.ip_forward"
    bare = parse_pod(manifest())
    assert bare.spec.containers[0].uid(bare) == 0
    assert bare.spec.containers[0].gid(bare) == 0


def test_container_fields_are_typed() -> None:
    pod = parse_pod(with_container(
        args=["-c", "echo"], workingDir="/srv", image="ignored:latest", imagePullPolicy="Always",
        ports=[{"containerPort": 8080, "name": "http", "protocol": "UDP", "hostPort": 18080, "hostIP": "127.0.0.1"},
               {"containerPort": 9090, "hostPort": 0}],
        securityContext={"capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}, "privileged": False},
        terminationMessagePath="/tmp/msg", terminationMessagePolicy="FallbackToLogsOnError",
    ))
    c = pod.spec.containers[0]
    assert c.args == ("-c", "echo")
    assert c.working_dir == "/srv"
    assert c.image == "ignored:latest"
    http, metrics = c.ports
    assert (http.container_port, http.name, http.protocol, http.host_port) == (8080, "http", "UDP", 18080)
    assert http.host_ip == ipaddress.ip_address("127.0.0.1")
    assert metrics.host_port is None
    assert metrics.protocol == "TCP"
    assert c.security_context.capabilities.add == ("NET_BIND_SERVICE",)
    assert c.security_context.privileged is False
    assert c.security_context.run_as_user is None
    assert (c.termination_message_path, c.termination_message_policy) == ("/tmp/msg", "FallbackToLogsOnError")


def test_env_keeps_duplicates_in_order_and_relaxed_names() -> None:
    pod = parse_pod(with_container(env=[
        {"name": "A", "value": "1"}, {"name": "my.var-1", "value": "x"}, {"name": "A", "value": "2"},
        {"name": "EMPTY"}, {"name": "LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi",
                                                           "containerName": "app"}}},
    ]))
    env = pod.spec.containers[0].env
    assert [e.name for e in env] == ["A", "my.var-1", "A", "EMPTY", "LABEL", "MEM"]
    assert {e.name: e.value for e in env}["A"] == "2"  # the last one wins, as in Kubernetes
    assert env[3] == EnvVar("EMPTY")
    assert env[4].value_from == FieldRef("metadata.labels['app']")
    assert env[5].value_from == ResourceFieldRef("requests.memory", container_name="app", divisor="1Mi")


def test_native_sidecar_and_pod_restart_policy() -> None:
    pod = parse_pod(manifest(restartPolicy="Never", terminationGracePeriodSeconds=0, initContainers=[
        {"name": "proxy", "command": ["envoy"], "restartPolicy": "Always"},
        {"name": "setup", "command": ["true"]},
    ]))
    proxy, setup = pod.spec.init_containers
    assert proxy.is_native_sidecar
    assert not setup.is_native_sidecar
    assert pod.spec.restart_policy == "Never"
    assert pod.spec.termination_grace_period_seconds == 0
    assert [c.name for c in pod.spec.all_containers] == ["proxy", "setup", "app"]


def test_known_fields_the_runtime_ignores_and_status_are_accepted() -> None:
    doc = manifest(
        volumes=[{"name": "data", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                 {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "audience": "a",
                                                                                    "expirationSeconds": 600}}]}},
                 {"name": "legacy", "gcePersistentDisk": {"pdName": "x"}}],
        nodeSelector={"kubernetes.io/os": "linux"}, serviceAccountName="web-sa", dnsPolicy="ClusterFirst",
        tolerations=[{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}],
        affinity={"nodeAffinity": {"anything": ["goes"]}}, priority=10, hostNetwork=False,
        imagePullSecrets=[{"name": "reg"}], topologySpreadConstraints=[{"maxSkew": 1, "topologyKey": "zone",
                                                                         "whenUnsatisfiable": "ScheduleAnyway"}],
        containers=[{
            "name": "app", "command": ["app"], "image": "app:1", "imagePullPolicy": "IfNotPresent",
            "resources": {"limits": {"cpu": 2, "memory": "1Gi"}, "requests": {"cpu": "100m"}},
            "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
            "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "httpHeaders": [{"name": "X",
                                                                                                "value": "y"}]},
                              "periodSeconds": 5},
            "readinessProbe": {"tcpSocket": {"port": 8080}}, "startupProbe": {"grpc": {"port": 9000}},
            "lifecycle": {"preStop": {"exec": {"command": ["drain"]}}, "postStart": {"sleep": {"seconds": 1}}},
            "stdin": False, "tty": False,
        }],
    )
    doc["metadata"].update(uid="1234", creationTimestamp=None, ownerReferences=[
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u", "controller": True}])
    doc["status"] = {"phase": "Running", "podIP": "10.0.0.5", "anything": [1, 2]}
    pod = parse_pod(doc)
    assert pod.spec.service_account_name == "web-sa"
    assert pod.metadata.uid == "1234"
    assert pod.spec.containers[0].resources.limits == {"cpu": "2", "memory": "1Gi"}
    assert pod.raw["status"]["podIP"] == "10.0.0.5"


def test_generate_name_stands_in_for_name() -> None:
    doc = manifest()
    doc["metadata"] = {"generateName": "web-"}
    meta = parse_pod(doc).metadata
    assert (meta.name, meta.generate_name) == ("", "web-")


def test_values_are_frozen_and_raw_is_a_copy() -> None:
    doc = manifest()
    pod = parse_pod(doc)
    doc["metadata"]["name"] = "changed"
    doc["spec"]["containers"].clear()
    assert pod.raw["metadata"]["name"] == "web"
    assert pod.raw["spec"]["containers"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        pod.metadata.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        pod.metadata.labels["app"] = "x"  # type: ignore[index]


# --- pod_to_dict ---------------------------------------------------------------------------


def test_pod_to_dict_round_trips_and_shows_runtime_metadata() -> None:
    doc = manifest(volumes=[{"name": "data", "emptyDir": {}}])
    doc["status"] = {"phase": "Pending"}
    pod = parse_pod(doc)
    stored = pod_to_dict(dataclasses.replace(pod, metadata=dataclasses.replace(pod.metadata, uid="abc")))
    assert "status" not in stored
    assert stored["metadata"] == {"name": "web", "namespace": "default", "uid": "abc", "labels": {"app": "web"}}
    assert stored["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]  # ignored fields are kept
    again = parse_pod(stored)
    assert again.spec == pod.spec
    assert again.metadata.uid == "abc"
    stored["spec"]["containers"].clear()
    assert pod.raw["spec"]["containers"]  # a fresh copy every time
    assert yaml.safe_load(yaml.safe_dump(pod_to_dict(pod))) == pod_to_dict(pod)


def test_pod_to_dict_renders_a_pod_built_by_hand_or_changed() -> None:
    pod = Pod(
        metadata=ObjectMeta(name="built", namespace="ns1", labels={"a": "b"}),
        spec=PodSpec(
            containers=(Container(name="app", command=("app",), args=("--x",), working_dir="/w",
                                  env=(EnvVar("A", "1"), EnvVar("N", value_from=FieldRef("metadata.name")),
                                       EnvVar("C", value_from=ResourceFieldRef("limits.cpu", "app", "1m"))),
                                  security_context=SecurityContext(run_as_user=7)),),
            init_containers=(Container(name="side", command=("envoy",), restart_policy="Always"),),
            restart_policy="OnFailure",
            security_context=PodSecurityContext(run_as_group=5, supplemental_groups=(9,)),
        ),
    )
    assert parse_pod(pod_to_dict(pod)) == pod
    original = parse_pod(manifest(volumes=[{"name": "v", "emptyDir": {}}]))
    changed = dataclasses.replace(original, spec=dataclasses.replace(original.spec, restart_policy="Never"))
    rendered = pod_to_dict(changed)
    assert rendered["spec"]["restartPolicy"] == "Never"
    assert "volumes" not in rendered["spec"]
    assert parse_pod(rendered) == changed


# --- errors: shape -------------------------------------------------------------------------


def test_error_is_one_line_with_source_and_json_path() -> None:
    doc = manifest(containers=[{"name": "a", "command": ["a"]}, {"name": "b", "command": ["b"], "comand": ["b"]}])
    with pytest.raises(ManifestError) as info:
        parse_pod(doc, "pod.yaml")
    assert str(info.value) == 'pod.yaml: spec.containers[1].comand: unknown field (did you mean "command"?)'
    assert (info.value.path, info.value.source) == ("spec.containers[1].comand", "pod.yaml")
    assert info.value.message == 'unknown field (did you mean "command"?)'
    assert isinstance(info.value, ValueError)


def test_every_problem_is_reported_and_counted() -> None:
    doc = manifest(hostNetwork=True, containers=[{"name": "App", "comand": ["x"]}])
    with pytest.raises(ManifestError) as info:
        parse_pod(doc, "pod.yaml")
    assert str(info.value).endswith("(and 2 more problems)")
    # schema problems first, then meaning; "command: required" is not repeated after "did you mean"
    assert [e.path for e in info.value.errors] == [
        "spec.containers[0].comand", "spec.hostNetwork", "spec.containers[0].name"]


def test_strange_keys_stay_on_one_line() -> None:
    doc = manifest()
    doc["metadata"]["line\nbreak"] = 1
    assert only_problem(doc) == ('pod.yaml: metadata["line\\nbreak"]: unknown field '
                                 "(not a field of a Kubernetes v1 ObjectMeta)")


# --- errors: not a Pod ---------------------------------------------------------------------


@pytest.mark.parametrize(("doc", "got"), [
    ([], "a list"), ("apiVersion: v1", 'string "apiVersion: v1"'), (None, "null"), (3, "integer 3"),
])
def test_not_a_mapping(doc: object, got: str) -> None:
    assert only_problem(doc) == f"pod.yaml: expected a Pod manifest (a mapping), got {got}"


def test_non_v1_and_not_a_pod_stop_before_the_body() -> None:
    doc = {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 3, "template": {}}}
    assert problems(doc) == [
        'pod.yaml: apiVersion: expected "v1", got string "apps/v1" (the embedded runtime runs core v1 Pods)',
        'pod.yaml: kind: expected "Pod", got string "Deployment" (the embedded runtime runs core v1 Pods)',
    ]
    missing = manifest()
    del missing["apiVersion"]
    assert only_problem(missing) == 'pod.yaml: apiVersion: required ("v1")'
    misspelt = manifest()
    misspelt["apiVerison"] = misspelt.pop("apiVersion")
    assert only_problem(misspelt) == 'pod.yaml: apiVerison: unknown field (did you mean "apiVersion"?)'


@pytest.mark.parametrize(("drop", "expected"), [
    ("metadata", "pod.yaml: metadata: required (a Pod needs metadata.name)"),
    ("spec", "pod.yaml: spec: required (a Pod needs spec.containers)"),
])
def test_missing_metadata_or_spec(drop: str, expected: str) -> None:
    doc = manifest()
    del doc[drop]
    assert only_problem(doc) == expected


# --- errors: unknown fields at every level ----------------------------------------------------


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    node: Any = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return doc


C0 = ("spec", "containers", 0)


@pytest.mark.parametrize(("path", "value", "json_path", "suggestion"), [
    (("specs",), {}, "specs", "spec"),
    (("metadata", "lables"), {}, "metadata.lables", "labels"),
    (("metadata", "namepsace"), "x", "metadata.namepsace", "namespace"),
    (("spec", "initContainer"), [], "spec.initContainer", "initContainers"),
    (("spec", "restartpolicy"), "Never", "spec.restartpolicy", "restartPolicy"),
    (("spec", "securityContext"), {"fsgroup": 1}, "spec.securityContext.fsgroup", "fsGroup"),
    ((*C0, "comand"), ["x"], "spec.containers[0].comand", "command"),
    ((*C0, "workdir"), "/", "spec.containers[0].workdir", "workingDir"),
    ((*C0, "securityContext"), {"runAsUsr": 1}, "spec.containers[0].securityContext.runAsUsr", "runAsUser"),
    ((*C0, "securityContext"), {"RunAsGroup": 1}, "spec.containers[0].securityContext.RunAsGroup", "runAsGroup"),
    ((*C0, "securityContext"), {"capabilities": {"dorp": ["ALL"]}},
     "spec.containers[0].securityContext.capabilities.dorp", "drop"),
    ((*C0, "env"), [{"name": "A", "vaule": "1"}], "spec.containers[0].env[0].vaule", "value"),
    ((*C0, "env"), [{"name": "A", "valueFrom": {"fieldref": {"fieldPath": "metadata.name"}}}],
     "spec.containers[0].env[0].valueFrom.fieldref", "fieldRef"),
    ((*C0, "env"), [{"name": "A", "valueFrom": {"fieldRef": {"fieldpath": "metadata.name"}}}],
     "spec.containers[0].env[0].valueFrom.fieldRef.fieldpath", "fieldPath"),
    ((*C0, "ports"), [{"containerPort": 80, "protocl": "TCP"}], "spec.containers[0].ports[0].protocl", "protocol"),
    ((*C0, "readinessProbe"), {"initialDelay": 1}, "spec.containers[0].readinessProbe.initialDelay",
     "initialDelaySeconds"),
    ((*C0, "livenessProbe"), {"httpGet": {"paht": "/", "port": 80}},
     "spec.containers[0].livenessProbe.httpGet.paht", "path"),
    ((*C0, "resources"), {"limit": {"cpu": "1"}}, "spec.containers[0].resources.limit", "limits"),
    ((*C0, "volumeMounts"), [{"name": "v", "mountpath": "/v"}], "spec.containers[0].volumeMounts[0].mountpath",
     "mountPath"),
    ((*C0, "lifecycle"), {"prestop": {"exec": {"command": ["x"]}}}, "spec.containers[0].lifecycle.prestop",
     "preStop"),
    (("spec", "volumes"), [{"name": "v", "emptydir": {}}], "spec.volumes[0].emptydir", "emptyDir"),
    (("spec", "volumes"), [{"name": "v", "configMap": {"nmae": "x"}}], "spec.volumes[0].configMap.nmae", "name"),
    (("spec", "tolerations"), [{"key": "k", "efect": "NoSchedule"}], "spec.tolerations[0].efect", "effect"),
])
def test_unknown_field_with_suggestion(path: tuple[Any, ...], value: Any, json_path: str, suggestion: str) -> None:
    doc = _set(manifest(), path, value)
    assert only_problem(doc) == f'pod.yaml: {json_path}: unknown field (did you mean "{suggestion}"?)'


def test_unknown_field_without_a_close_match() -> None:
    doc = with_container(zzz=1)
    assert only_problem(doc) == ("pod.yaml: spec.containers[0].zzz: unknown field "
                                 "(not a field of a Kubernetes v1 Container)")


def test_unknown_fields_in_init_containers_too() -> None:
    doc = manifest(initContainers=[{"name": "init", "command": ["x"], "imagePullPolicyy": "Always"}])
    assert only_problem(doc) == ('pod.yaml: spec.initContainers[0].imagePullPolicyy: unknown field '
                                 '(did you mean "imagePullPolicy"?)')


# --- errors: types -------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "value", "message"), [
    (("spec", "terminationGracePeriodSeconds"), "30", 'expected an integer, got string "30"'),
    (("spec", "terminationGracePeriodSeconds"), 1.5, "expected an integer, got number 1.5"),
    (("spec", "hostNetwork"), "false", 'expected a boolean, got string "false"'),
    (("spec", "containers"), {"name": "app"}, "expected a list, got a mapping"),
    (("spec", "containers", 0), "app", 'expected a mapping (Container), got string "app"'),
    (("spec", "securityContext"), [], "expected a mapping (PodSecurityContext), got a list"),
    (("metadata",), [{"name": "web"}], "expected a mapping (ObjectMeta), got a list"),
    (("spec",), [{"containers": []}], "expected a mapping (PodSpec), got a list"),
    ((*C0, "env"), [["NAME", "value"]], "expected a mapping (EnvVar), got a list"),
    (("metadata", "labels"), ["app=web"], "expected a mapping, got a list"),
    (("metadata", "labels", "version"), 1.0, "expected a string, got number 1.0 (quote it in YAML)"),
    (("metadata", "annotations"), {"enabled": True}, "expected a string, got boolean true (quote it in YAML)"),
    (("metadata", "name"), 7, "expected a string, got integer 7 (quote it in YAML)"),
    ((*C0, "command"), "sleep 1", 'expected a list, got string "sleep 1"'),
    ((*C0, "command", 1), 1, "expected a string, got integer 1 (quote it in YAML)"),
    ((*C0, "args"), [None], "expected a value, got null"),
    ((*C0, "ports"), [{"containerPort": "80"}], 'expected an integer, got string "80"'),
    ((*C0, "ports"), [{"containerPort": True}], "expected an integer, got boolean true"),
    ((*C0, "securityContext"), {"runAsUser": True}, "expected an integer, got boolean true"),
    ((*C0, "securityContext"), {"privileged": "yes"}, 'expected a boolean, got string "yes"'),
    ((*C0, "env"), [{"name": "PORT", "value": 8080}], "expected a string, got integer 8080 (quote it in YAML)"),
    ((*C0, "env"), {"PORT": "8080"}, "expected a list, got a mapping"),
    ((*C0, "resources"), {"limits": {"cpu": "two"}}, 'invalid quantity "two" (e.g. "100m", "1Gi", "2")'),
    ((*C0, "livenessProbe"), {"tcpSocket": {"port": True}}, "expected an integer or a string, got boolean true"),
])
def test_wrong_types(path: tuple[Any, ...], value: Any, message: str) -> None:
    found = only_problem(_set(manifest(), path, value))
    assert found.endswith(f": {message}")


@pytest.mark.parametrize(("path", "value", "json_path", "message"), [
    (("spec", "restartPolicy"), "Sometimes", "spec.restartPolicy",
     'unsupported value "Sometimes" (expected one of "Always", "OnFailure", "Never")'),
    ((*C0, "ports"), [{"containerPort": 80, "protocol": "tcp"}], "spec.containers[0].ports[0].protocol",
     'unsupported value "tcp" (expected one of "TCP", "UDP", "SCTP")'),
    ((*C0, "imagePullPolicy"), "always", "spec.containers[0].imagePullPolicy",
     'unsupported value "always" (expected one of "Always", "Never", "IfNotPresent")'),
])
def test_enums(path: tuple[Any, ...], value: Any, json_path: str, message: str) -> None:
    assert only_problem(_set(manifest(), path, value)) == f"pod.yaml: {json_path}: {message}"


@pytest.mark.parametrize(("path", "value", "json_path", "message"), [
    ((*C0, "ports"), [{"containerPort": 0}], "spec.containers[0].ports[0].containerPort",
     "must be between 1 and 65535, inclusive, got 0"),
    ((*C0, "ports"), [{"containerPort": 65536}], "spec.containers[0].ports[0].containerPort",
     "must be between 1 and 65535, inclusive, got 65536"),
    ((*C0, "ports"), [{"containerPort": 80, "hostPort": 70000}], "spec.containers[0].ports[0].hostPort",
     "must be between 1 and 65535, inclusive, got 70000"),
    ((*C0, "ports"), [{"name": "http"}], "spec.containers[0].ports[0].containerPort", "required"),
    ((*C0, "ports"), [{"containerPort": 80, "hostIP": "localhost"}], "spec.containers[0].ports[0].hostIP",
     'invalid value "localhost": must be an IP address'),
    ((*C0, "securityContext"), {"runAsUser": -1}, "spec.containers[0].securityContext.runAsUser",
     "must be between 0 and 2147483647, inclusive, got -1"),
    ((*C0, "securityContext"), {"runAsGroup": 2147483648}, "spec.containers[0].securityContext.runAsGroup",
     "must be between 0 and 2147483647, inclusive, got 2147483648"),
    (("spec", "securityContext"), {"fsGroup": -5}, "spec.securityContext.fsGroup",
     "must be between 0 and 2147483647, inclusive, got -5"),
    (("spec", "securityContext"), {"supplementalGroups": [1, -2]}, "spec.securityContext.supplementalGroups[1]",
     "must be between 0 and 2147483647, inclusive, got -2"),
    (("spec", "terminationGracePeriodSeconds"), -1, "spec.terminationGracePeriodSeconds",
     "must be greater than or equal to 0, got -1"),
])
def test_ranges(path: tuple[Any, ...], value: Any, json_path: str, message: str) -> None:
    assert only_problem(_set(manifest(), path, value)) == f"pod.yaml: {json_path}: {message}"


# --- errors: names -------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "value", "json_path", "rule"), [
    (("metadata", "name"), "Web", "metadata.name", "RFC 1123 subdomain"),
    (("metadata", "name"), "web_1", "metadata.name", "RFC 1123 subdomain"),
    (("metadata", "name"), "a" * 254, "metadata.name", "no more than 253 characters"),
    (("metadata", "namespace"), "my.ns", "metadata.namespace", "RFC 1123 label"),
    (("metadata", "generateName"), "Web-", "metadata.generateName", "RFC 1123 subdomain"),
    ((*C0, "name"), "App", "spec.containers[0].name", "RFC 1123 label"),
    ((*C0, "name"), "a.b", "spec.containers[0].name", "RFC 1123 label"),
    ((*C0, "ports"), [{"containerPort": 80, "name": "http-metrics-port"}], "spec.containers[0].ports[0].name",
     "no more than 15 characters"),
    ((*C0, "ports"), [{"containerPort": 80, "name": "8080"}], "spec.containers[0].ports[0].name",
     "at least one letter"),
    ((*C0, "env"), [{"name": "A=B", "value": "x"}], "spec.containers[0].env[0].name", "other than '='"),
    ((*C0, "env"), [{"name": "tab\there"}], "spec.containers[0].env[0].name", "printable ASCII"),
])
def test_bad_names(path: tuple[Any, ...], value: Any, json_path: str, rule: str) -> None:
    doc = _set(manifest(), path, value)
    if path[-1] == "generateName":
        del doc["metadata"]["name"]
    found = only_problem(doc)
    assert found.startswith(f"pod.yaml: {json_path}: invalid value ")
    assert rule in found


def test_label_and_annotation_keys_and_values() -> None:
    doc = manifest()
    doc["metadata"]["labels"] = {"bad key": "x", "Example.com/app": "x", "ok": "not ok!", "v": "x" * 64,
                                 "app.kubernetes.io/name": "web", "empty": ""}
    doc["metadata"]["annotations"] = {"/x": "y", "Mixed.Example.COM/Key": "any value\nat all"}
    found = problems(doc)
    assert found[0].startswith('pod.yaml: metadata.labels: invalid key "bad key": name part must consist of')
    assert found[1].startswith('pod.yaml: metadata.labels: invalid key "Example.com/app": prefix part must be a '
                               "lowercase RFC 1123 subdomain")
    assert found[2].startswith('pod.yaml: metadata.labels.ok: invalid value "not ok!": must be empty or consist')
    assert found[3].startswith("pod.yaml: metadata.labels.v: invalid value ")
    assert "no more than 63" in found[3]
    assert found[4] == 'pod.yaml: metadata.annotations: invalid key "/x": prefix part must be non-empty'
    assert len(found) == 5


def test_missing_names() -> None:
    doc = manifest(containers=[{"command": ["x"]}])
    doc["metadata"] = {"namespace": "ns"}
    assert problems(doc) == ["pod.yaml: metadata.name: required (or metadata.generateName)",
                             "pod.yaml: spec.containers[0].name: required"]


def test_duplicate_container_names_across_init_and_regular() -> None:
    doc = manifest(initContainers=[{"name": "app", "command": ["init"]}],
                   containers=[{"name": "app", "command": ["a"]}, {"name": "side", "command": ["b"]},
                               {"name": "side", "command": ["c"]}])
    assert problems(doc) == ['pod.yaml: spec.containers[0].name: duplicate container name "app"',
                             'pod.yaml: spec.containers[2].name: duplicate container name "side"']


def test_duplicate_port_names_in_a_container() -> None:
    doc = with_container(ports=[{"containerPort": 80, "name": "http"}, {"containerPort": 81, "name": "http"}])
    assert only_problem(doc) == 'pod.yaml: spec.containers[0].ports[1].name: duplicate port name "http"'


# --- errors: what the embedded runtime cannot run ------------------------------------------


@pytest.mark.parametrize("command", [None, [], "absent"])
def test_missing_command(command: Any) -> None:
    container: dict[str, Any] = {"name": "app", "image": "nginx"}
    if command != "absent":
        container["command"] = command
    assert only_problem(manifest(containers=[container])) == f"pod.yaml: spec.containers[0].command: {NO_ENTRYPOINT}"


def test_missing_command_on_init_container_and_empty_program() -> None:
    doc = manifest(initContainers=[{"name": "init", "args": ["--flag"]}],
                   containers=[{"name": "app", "command": ["", "x"]}])
    assert problems(doc) == [f"pod.yaml: spec.initContainers[0].command: {NO_ENTRYPOINT}",
                             "pod.yaml: spec.containers[0].command[0]: must not be empty (it names the program to run)"]


@pytest.mark.parametrize("containers", [[], None])
def test_at_least_one_container(containers: Any) -> None:
    doc = manifest(containers=containers, initContainers=[{"name": "init", "command": ["x"]}])
    assert only_problem(doc) == "pod.yaml: spec.containers: required (at least one container)"


def test_host_network() -> None:
    assert only_problem(manifest(hostNetwork=True)) == (
        "pod.yaml: spec.hostNetwork: hostNetwork pods are not supported by the embedded runtime")


@pytest.mark.parametrize("source", ["secretKeyRef", "configMapKeyRef"])
def test_value_from_secrets_and_config_maps(source: str) -> None:
    doc = with_container(env=[{"name": "PASSWORD", "valueFrom": {source: {"name": "db", "key": "password"}}}])
    assert only_problem(doc) == (f"pod.yaml: spec.containers[0].env[0].valueFrom: valueFrom.{source} is not "
                                 "supported by the embedded runtime (only fieldRef and resourceFieldRef are)")


@pytest.mark.parametrize(("value_from", "json_path", "message"), [
    ({"fieldRef": {"fieldPath": "spec.nodeNames"}}, "valueFrom.fieldRef.fieldPath", 'unsupported field path "spec'),
    ({"fieldRef": {"fieldPath": "metadata.labels['bad key']"}}, "valueFrom.fieldRef.fieldPath",
     "invalid value \"metadata.labels['bad key']\": invalid key: name part"),
    ({"fieldRef": {"apiVersion": "v2", "fieldPath": "metadata.name"}}, "valueFrom.fieldRef.apiVersion",
     'expected "v1", got string "v2"'),
    ({"fieldRef": {}}, "valueFrom.fieldRef.fieldPath", "required"),
    ({"resourceFieldRef": {"resource": "limits.gpu"}}, "valueFrom.resourceFieldRef.resource",
     'unsupported resource "limits.gpu"'),
    ({"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1Mi"}}, "valueFrom.resourceFieldRef.divisor",
     'unsupported divisor "1Mi" for limits.cpu'),
    ({"fieldRef": {"fieldPath": "metadata.name"}, "resourceFieldRef": {"resource": "limits.cpu"}}, "valueFrom",
     "may not have more than one field specified at a time"),
    ({}, "valueFrom", "must set one of fieldRef, resourceFieldRef"),
])
def test_value_from_downward_api_checks(value_from: dict[str, Any], json_path: str, message: str) -> None:
    found = only_problem(with_container(env=[{"name": "X", "valueFrom": value_from}]))
    assert found.startswith(f"pod.yaml: spec.containers[0].env[0].{json_path}: {message}")


def test_value_and_value_from_together() -> None:
    doc = with_container(env=[{"name": "X", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}])
    assert only_problem(doc) == "pod.yaml: spec.containers[0].env[0].valueFrom: may not be set when value is not empty"


def test_env_from_is_not_supported() -> None:
    doc = with_container(envFrom=[{"configMapRef": {"name": "settings"}}])
    assert only_problem(doc) == ("pod.yaml: spec.containers[0].envFrom: envFrom is not supported by the embedded "
                                 "runtime (it has no ConfigMaps or Secrets)")


def test_restart_policy_only_on_init_containers() -> None:
    assert only_problem(with_container(restartPolicy="Always")) == (
        'pod.yaml: spec.containers[0].restartPolicy: only init containers may set restartPolicy ("Always" makes a '
        "native sidecar)")


def test_run_as_non_root_needs_a_non_zero_uid() -> None:
    doc = manifest(securityContext={"runAsNonRoot": True},
                   containers=[{"name": "root", "command": ["x"]},
                               {"name": "user", "command": ["y"], "securityContext": {"runAsUser": 1000}}])
    assert only_problem(doc) == ("pod.yaml: spec.containers[0]: runAsNonRoot is true but the container would run "
                                 "as uid 0 (set runAsUser)")


def test_relative_working_dir() -> None:
    assert only_problem(with_container(workingDir="srv")) == (
        'pod.yaml: spec.containers[0].workingDir: invalid value "srv": must be an absolute path (there is no image '
        "working directory to resolve it against)")


# --- probes ---------------------------------------------------------------------------------

ISTIO_READINESS = {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 15, "timeoutSeconds": 3,
                   "failureThreshold": 4}
ISTIO_STARTUP = {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 1, "timeoutSeconds": 3,
                 "failureThreshold": 600}


def sidecar_pod(**probes: Any) -> dict[str, Any]:
    return manifest(initContainers=[{"name": "istio-proxy", "command": ["envoy"], "restartPolicy": "Always",
                                     "ports": [{"name": "http-envoy-prom", "containerPort": 15090}], **probes}])


def test_the_injected_sidecar_probes_parse_with_kubernetes_defaults() -> None:
    pod = parse_pod(sidecar_pod(readinessProbe=ISTIO_READINESS, startupProbe=ISTIO_STARTUP))
    proxy = pod.spec.init_containers[0]
    handler = HTTPGetAction(port=15021, path="/healthz/ready")
    assert proxy.readiness_probe == Probe(handler=handler, period_seconds=15, timeout_seconds=3, failure_threshold=4)
    assert proxy.startup_probe == Probe(handler=handler, period_seconds=1, timeout_seconds=3, failure_threshold=600)
    assert proxy.liveness_probe is None
    assert proxy.probe("startup") is proxy.startup_probe
    assert proxy.startup_probe.http_get == handler
    assert proxy.startup_probe.tcp_socket is None
    assert (proxy.startup_probe.initial_delay_seconds, proxy.startup_probe.success_threshold) == (0, 1)
    assert pod.spec.containers[0].readiness_probe is None


def test_every_handler_and_field_is_typed() -> None:
    pod = parse_pod(with_container(
        ports=[{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 9901}],
        livenessProbe={"httpGet": {"path": "healthz?full=1", "port": "http", "host": "::1", "scheme": "HTTPS",
                                   "httpHeaders": [{"name": "X-Probe", "value": "a b"}, {"name": "Host",
                                                                                        "value": "web"}]},
                       "initialDelaySeconds": 2, "periodSeconds": 0, "timeoutSeconds": 0, "failureThreshold": 0,
                       "terminationGracePeriodSeconds": 5},
        readinessProbe={"tcpSocket": {"port": "admin", "host": "localhost"}, "successThreshold": 2},
        startupProbe={"exec": {"command": ["test", "-e", "/tmp/up"]}, "periodSeconds": 1},
    ))
    app = pod.spec.containers[0]
    assert app.liveness_probe == Probe(
        handler=HTTPGetAction(port="http", path="/healthz?full=1", host="::1", scheme="HTTPS",
                              http_headers=(HTTPHeader("X-Probe", "a b"), HTTPHeader("Host", "web"))),
        initial_delay_seconds=2, termination_grace_period_seconds=5)  # a 0 is the default, as in Kubernetes
    assert app.readiness_probe == Probe(handler=TCPSocketAction(port="admin", host="localhost"), success_threshold=2)
    assert app.startup_probe == Probe(handler=ExecAction(("test", "-e", "/tmp/up")), period_seconds=1)
    assert app.port_number("http") == 8080
    assert app.port_number(7) == 7
    assert app.port_number("nope") is None
    grpc = parse_pod(with_container(livenessProbe={"grpc": {"port": 9000, "service": "health"}}))
    assert grpc.spec.containers[0].liveness_probe == Probe(handler=GRPCAction(port=9000, service="health"))


def test_probes_round_trip_through_pod_to_dict() -> None:
    doc = with_container(ports=[{"name": "http", "containerPort": 8080}],
                         readinessProbe={"httpGet": {"port": "http"}}, livenessProbe={"tcpSocket": {"port": 8080}})
    pod = parse_pod(doc)
    assert pod_to_dict(pod)["spec"]["containers"][0]["readinessProbe"] == {"httpGet": {"port": "http"}}  # as given
    built = Pod(metadata=ObjectMeta(name="built"), spec=PodSpec(containers=(Container(
        name="app", command=("app",), ports=(ContainerPort(8080, name="http"),),
        startup_probe=Probe(handler=ExecAction(("true",)), period_seconds=1, failure_threshold=30),
        readiness_probe=Probe(handler=HTTPGetAction(port="http", path="/r", host="127.0.0.1", scheme="HTTPS",
                                                    http_headers=(HTTPHeader("A", "b"),)), success_threshold=2),
        liveness_probe=Probe(handler=GRPCAction(port=9000, service="s"), termination_grace_period_seconds=3)),
        Container(name="other", command=("x",), liveness_probe=Probe(handler=TCPSocketAction(port=81, host="::1"))),
    )))
    assert parse_pod(pod_to_dict(built)) == built


P = (*C0, "readinessProbe")


@pytest.mark.parametrize(("path", "value", "json_path", "message"), [
    (P, {}, "spec.containers[0].readinessProbe", "must specify a handler type (one of exec, httpGet, tcpSocket, grpc)"),
    (P, {"periodSeconds": 5}, "spec.containers[0].readinessProbe",
     "must specify a handler type (one of exec, httpGet, tcpSocket, grpc)"),
    (P, {"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}}, "spec.containers[0].readinessProbe",
     "may not specify more than 1 handler type (got exec, tcpSocket)"),
    (P, {"tcpSocket": {"port": 80}, "periodSeconds": -1}, "spec.containers[0].readinessProbe.periodSeconds",
     "must be greater than or equal to 0, got -1"),
    (P, {"tcpSocket": {"port": 80}, "initialDelaySeconds": -3},
     "spec.containers[0].readinessProbe.initialDelaySeconds", "must be greater than or equal to 0, got -3"),
    (P, {"tcpSocket": {"port": 80}, "failureThreshold": -1}, "spec.containers[0].readinessProbe.failureThreshold",
     "must be greater than or equal to 0, got -1"),
    (P, {"tcpSocket": {"port": 80}, "terminationGracePeriodSeconds": 5},
     "spec.containers[0].readinessProbe.terminationGracePeriodSeconds", "must not be set for readiness probes"),
    ((*C0, "livenessProbe"), {"tcpSocket": {"port": 80}, "successThreshold": 2},
     "spec.containers[0].livenessProbe.successThreshold", "must be 1 for a liveness probe, got 2"),
    ((*C0, "startupProbe"), {"tcpSocket": {"port": 80}, "successThreshold": 3},
     "spec.containers[0].startupProbe.successThreshold", "must be 1 for a startup probe, got 3"),
    ((*C0, "livenessProbe"), {"tcpSocket": {"port": 80}, "terminationGracePeriodSeconds": 0},
     "spec.containers[0].livenessProbe.terminationGracePeriodSeconds", "must be greater than 0, got 0"),
    (P, {"tcpSocket": {"port": 0}}, "spec.containers[0].readinessProbe.tcpSocket.port",
     "must be between 1 and 65535, inclusive, got 0"),
    (P, {"httpGet": {"port": 70000}}, "spec.containers[0].readinessProbe.httpGet.port",
     "must be between 1 and 65535, inclusive, got 70000"),
    (P, {"grpc": {"port": 0}}, "spec.containers[0].readinessProbe.grpc.port",
     "must be between 1 and 65535, inclusive, got 0"),
    (P, {"httpGet": {"path": "/"}}, "spec.containers[0].readinessProbe.httpGet.port",
     "required (a port number or the name of one of the container's ports)"),
    (P, {"grpc": {"service": "x"}}, "spec.containers[0].readinessProbe.grpc.port", "required"),
    (P, {"httpGet": {"port": "http"}}, "spec.containers[0].readinessProbe.httpGet.port",
     'no port named "http" in this container\'s ports (named ports: none)'),
    (P, {"tcpSocket": {"port": "8080"}}, "spec.containers[0].readinessProbe.tcpSocket.port",
     'invalid value "8080": must contain at least one letter'),
    (P, {"tcpSocket": {"port": 80, "host": "db.local"}}, "spec.containers[0].readinessProbe.tcpSocket.host",
     'invalid value "db.local": must be an IP address or "localhost" (the embedded runtime resolves no names for '
     "probes)"),
    (P, {"httpGet": {"port": 80, "path": "/a b"}}, "spec.containers[0].readinessProbe.httpGet.path",
     'invalid value "/a b": must not contain spaces or control characters (percent-encode them)'),
    (P, {"httpGet": {"port": 80, "httpHeaders": [{"name": "X Y", "value": "1"}]}},
     "spec.containers[0].readinessProbe.httpGet.httpHeaders[0].name",
     "invalid value \"X Y\": must be a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"),
    (P, {"httpGet": {"port": 80, "httpHeaders": [{"name": "X", "value": "a\r\nB: c"}]}},
     "spec.containers[0].readinessProbe.httpGet.httpHeaders[0].value", "must not contain line breaks or NUL"),
    (P, {"httpGet": {"port": 80, "httpHeaders": [{"value": "1"}]}},
     "spec.containers[0].readinessProbe.httpGet.httpHeaders[0].name", "required"),
    (P, {"exec": {}}, "spec.containers[0].readinessProbe.exec.command", "required"),
    (P, {"exec": {"command": []}}, "spec.containers[0].readinessProbe.exec.command", "required"),
    (P, {"exec": {"command": ["", "x"]}}, "spec.containers[0].readinessProbe.exec.command[0]",
     "must not be empty (it names the program to run)"),
    (P, {"httpGet": {"port": 80, "scheme": "http"}}, "spec.containers[0].readinessProbe.httpGet.scheme",
     'unsupported value "http" (expected one of "HTTP", "HTTPS")'),
])
def test_bad_probes(path: tuple[Any, ...], value: Any, json_path: str, message: str) -> None:
    assert only_problem(_set(manifest(), path, value)) == f"pod.yaml: {json_path}: {message}"


def test_named_port_lists_the_names_there_are() -> None:
    doc = with_container(ports=[{"name": "http", "containerPort": 80}, {"containerPort": 81}],
                         livenessProbe={"httpGet": {"port": "htp"}})
    assert only_problem(doc) == ('pod.yaml: spec.containers[0].livenessProbe.httpGet.port: no port named "htp" in '
                                 "this container's ports (named ports: \"http\")")


def test_probes_only_on_containers_and_native_sidecars() -> None:
    doc = manifest(initContainers=[{"name": "init", "command": ["x"], "readinessProbe": {"tcpSocket": {"port": 80}},
                                    "livenessProbe": {"exec": {"command": ["true"]}}}])
    assert problems(doc) == [
        "pod.yaml: spec.initContainers[0].readinessProbe: may not be set for init containers without "
        "restartPolicy=Always",
        "pod.yaml: spec.initContainers[0].livenessProbe: may not be set for init containers without "
        "restartPolicy=Always",
    ]
    assert parse_pod(sidecar_pod(livenessProbe={"tcpSocket": {"port": 15090}})).spec.init_containers[0].liveness_probe


def test_every_probe_problem_is_reported() -> None:
    doc = with_container(readinessProbe={"tcpSocket": {"port": 0, "host": "x"}, "timeoutSeconds": -1},
                         startupProbe={"grpc": {"port": 1}, "successThreshold": 2})
    assert [line.split(": ", 2)[1] for line in problems(doc)] == [
        "spec.containers[0].startupProbe.successThreshold",
        "spec.containers[0].readinessProbe.timeoutSeconds",
        "spec.containers[0].readinessProbe.tcpSocket.port",
        "spec.containers[0].readinessProbe.tcpSocket.host",
    ]


# --- the package's charter -----------------------------------------------------------------


def test_api_imports_only_the_standard_library() -> None:
    outside: list[str] = []
    for path in sorted(API_SRC.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and module.split(".")[:2] != ["weir", "api"]:
                    outside.append(f"{path.name}: {module}")
    assert outside == []


def test_parse_does_not_touch_its_input() -> None:
    doc = manifest(volumes=[{"name": "v", "emptyDir": {}}])
    before = copy.deepcopy(doc)
    parse_pod(doc)
    assert doc == before
