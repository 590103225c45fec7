"""The repair controller in the pure tier: Istio's detection table (TestMatchesFilter), the
decisions (repair > delete > label, never twice), the settings, the driver against a recording
backend, the Kubernetes backend's requests (against a fake CoreV1Api, and the real client against
a recording HTTP server on loopback), the /proc network-namespace lookup on a fake tree, and the
embedded runtime's poller on a store in a temporary directory.

No Kubernetes cluster exists on this machine: what the API server would answer is what these
fakes answer, nothing here ran against a real cluster.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from weir.capture.apply import CaptureError
from weir.capture.spec import InvalidSpecError
from weir.nodeagent.repair import (
    Act,
    FieldRequirement,
    LabelRequirement,
    Mode,
    NoAction,
    RepairConfig,
    Skip,
    decide_action,
    matches_filter,
    parse_field_selector,
    parse_label_selector,
    selected,
)
from weir.nodeagent.repairer import METRIC, NotCaptured, RepairController, RepairCounts
from weir.nodeagent.settings import ConfigError, Source
from weir.platform import PodBackendError, PodConflict, PodEvent
from weir.platform.kube import KubePods, find_netns
from weir.runtime.node import NodeConfig
from weir.runtime.pods import Runtime
from weir.runtime.repairbackend import RuntimePods

ANNOTATION = "sidecar.istio.io/status"
VALIDATION = "istio-validation"

# ---- Istio's fixtures (cni/pkg/repair/repair_test_helpers.go) ---------------------------------------


def make_pod(name: str, init_status: Mapping[str, Any], *, annotations: Mapping[str, str] | None = None,
             labels: Mapping[str, str] | None = None, uid: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default", "uid": uid or f"uid-{name}",
                            "resourceVersion": "7"}
    if annotations is not None:
        meta["annotations"] = dict(annotations)
    if labels is not None:
        meta["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"initContainers": [{"name": VALIDATION}], "containers": [{"name": "payload-container"}]},
            "status": {"podIP": "10.1.2.3",
                       "initContainerStatuses": [dict(init_status)],
                       "containerStatuses": [{"name": "payload-container",
                                              "state": {"waiting": {"reason": "PodInitializing"}}}]}}


DIED = {"exitCode": 126, "reason": "Error", "message": "Died for some reason"}
BROKEN_WAITING = {"name": VALIDATION,
                  "state": {"waiting": {"reason": "CrashLoopBackOff",
                                        "message": "Back-off 5m0s restarting failed blah blah blah"}},
                  "lastState": {"terminated": DIED}}
BROKEN_TERMINATING = {"name": VALIDATION, "state": {"terminated": DIED}, "lastState": {"terminated": DIED}}
WORKING_DIED_PREVIOUSLY = {"name": VALIDATION, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                           "lastState": {"terminated": DIED}}
WORKING = {"name": VALIDATION, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
STATUS = {ANNOTATION: "something"}

broken_pod_terminating = make_pod("broken-pod-terminating", BROKEN_TERMINATING, annotations=STATUS,
                                  labels={"testlabel": "true"})
broken_pod_waiting = make_pod("broken-pod-waiting", BROKEN_WAITING, annotations=STATUS)
broken_pod_no_annotation = make_pod("broken-pod-no-annotation", BROKEN_WAITING)
working_pod = make_pod("working-pod", WORKING, annotations=STATUS)
working_pod_died_previously = make_pod("working-pod-died-previously", WORKING_DIED_PREVIOUSLY, annotations=STATUS)


def detect_pod(name: str, message: str, exit_code: int) -> dict[str, Any]:
    return make_pod(name, {"name": VALIDATION,
                           "state": {"waiting": {"reason": "CrashLoopBackOff",
                                                 "message": "Back-off 5m0s restarting failed blah blah blah"}},
                           "lastState": {"terminated": {"message": message, "exitCode": exit_code}}},
                    annotations=STATUS)


def filters(**kw: Any) -> RepairConfig:
    base: dict[str, Any] = {"sidecar_annotation": ANNOTATION, "init_container_name": VALIDATION,
                            "init_exit_code": 0}
    return RepairConfig(**{**base, **kw})


# ---- TestMatchesFilter ------------------------------------------------------------------------------

MATCHES_FILTER = [
    # Istio's 12 cases, in Istio's order and with Istio's names
    ("OK pod with only ExitCode check", filters(init_exit_code=126), working_pod, False),
    ("working pod (that previously died) with only ExitCode check", filters(init_exit_code=126),
     working_pod_died_previously, False),
    ("broken pod (in waiting state) with only ExitCode check", filters(init_exit_code=126), broken_pod_waiting, True),
    ("broken pod (in terminating state) with only ExitCode check", filters(init_exit_code=126),
     broken_pod_terminating, True),
    ("broken pod with wrong ExitCode", filters(init_exit_code=55), broken_pod_waiting, False),
    ("broken pod with no annotation (should be ignored)", filters(init_exit_code=126), broken_pod_no_annotation, False),
    ("termination message match false", filters(init_termination_message="Termination Message"),
     detect_pod("TerminationMessageMatchFalse", "This Does Not Match", 0), False),
    ("termination message match true", filters(init_termination_message="Termination Message"),
     detect_pod("TerminationMessageMatchTrue", "Termination Message", 0), True),
    ("termination message match true for trailing and leading space",
     filters(init_termination_message="            Termination Message"),
     detect_pod("TerminationMessageMatchTrueLeadingSpace", "Termination Message              ", 0), True),
    ("termination code match false", filters(init_exit_code=126), detect_pod("TerminationCodeMatchFalse", "", 121),
     False),
    ("termination code match true", filters(init_exit_code=126), detect_pod("TerminationCodeMatchTrue", "", 126), True),
    ("badly formatted pod", filters(init_exit_code=126), make_pod("Test", {}, annotations=STATUS), False),
    # and weir's additions
    ("empty status", filters(), {**working_pod, "status": {}}, False),
    ("no status at all", filters(), {k: v for k, v in broken_pod_waiting.items() if k != "status"}, False),
    ("status null", filters(), {**broken_pod_waiting, "status": None}, False),
    ("exit code 0 in the filter matches any code", filters(init_exit_code=0), detect_pod("any", "", 3), True),
    ("a running validation after a 126 (the next attempt)", filters(init_exit_code=126),
     make_pod("running", {"name": VALIDATION, "state": {"running": {}}, "lastState": {"terminated": DIED}},
              annotations=STATUS), True),
    ("current exit 0 without reason Completed still wins", filters(init_exit_code=126),
     make_pod("zero", {"name": VALIDATION, "state": {"terminated": {"exitCode": 0}}, "lastState": {"terminated": DIED}},
              annotations=STATUS), False),
    ("current terminated {} reads as exit 0 (Go's zero value)", filters(init_exit_code=126),
     make_pod("empty-term", {"name": VALIDATION, "state": {"terminated": {}}, "lastState": {"terminated": DIED}},
              annotations=STATUS), False),
    ("current Completed with a non-zero code still wins", filters(init_exit_code=126),
     make_pod("completed", {"name": VALIDATION, "state": {"terminated": {"exitCode": 126, "reason": "Completed"}},
                            "lastState": {"terminated": DIED}}, annotations=STATUS), False),
    ("no last termination: not (yet) broken", filters(), make_pod("first", {"name": VALIDATION, "state": {
        "terminated": DIED}, "lastState": {}}, annotations=STATUS), False),
    ("lastState.terminated {} is present: exit 0, empty message", filters(init_exit_code=0),
     make_pod("zero-last", {"name": VALIDATION, "state": {"waiting": {}}, "lastState": {"terminated": {}}},
              annotations=STATUS), True),
    ("another init container's failure", filters(init_exit_code=126),
     make_pod("other", {**BROKEN_WAITING, "name": "migrate"}, annotations=STATUS), False),
    ("an empty container name filter looks at every init container",
     filters(init_container_name="", init_exit_code=126),
     make_pod("other", {**BROKEN_WAITING, "name": "migrate"}, annotations=STATUS), True),
    ("an empty annotation filter looks at every pod", filters(sidecar_annotation="", init_exit_code=126),
     broken_pod_no_annotation, True),
    ("another annotation is configured", filters(sidecar_annotation="some.other.sidecar/annotation"),
     broken_pod_waiting, False),
    ("an exit code that is not a number reads as 0", filters(init_exit_code=126),
     make_pod("weird", {"name": VALIDATION, "state": {"waiting": {}},
                        "lastState": {"terminated": {"exitCode": "126"}}}, annotations=STATUS), False),
]


@pytest.mark.parametrize(("cfg", "pod", "want"), [c[1:] for c in MATCHES_FILTER], ids=[c[0] for c in MATCHES_FILTER])
def test_matches_filter(cfg: RepairConfig, pod: dict[str, Any], want: bool) -> None:
    assert matches_filter(pod, cfg) is want


def test_the_default_config_is_istios_filter() -> None:
    cfg = RepairConfig()
    assert (cfg.init_container_name, cfg.init_exit_code, cfg.sidecar_annotation) == (VALIDATION, 126, ANNOTATION)
    assert matches_filter(broken_pod_waiting, cfg)
    assert not matches_filter(broken_pod_no_annotation, cfg)
    assert not matches_filter(detect_pod("x", "", 121), cfg)


# ---- decide_action ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("modes", "want"), [
    ({"repair_pods": True, "delete_pods": True, "label_pods": True}, Mode.REPAIR),
    ({"repair_pods": False, "delete_pods": True, "label_pods": True}, Mode.DELETE),
    ({"repair_pods": False, "delete_pods": False, "label_pods": True}, Mode.LABEL),
    ({"repair_pods": True, "delete_pods": False, "label_pods": True}, Mode.REPAIR),
])
def test_the_first_enabled_mode_wins(modes: dict[str, bool], want: Mode) -> None:
    action = decide_action(broken_pod_waiting, RepairConfig(**modes), set())
    assert isinstance(action, Act)
    assert action.mode is want
    assert "istio-validation last exited 126 (Died for some reason)" in action.reason


def test_nothing_to_do() -> None:
    off = RepairConfig(repair_pods=False)
    assert decide_action(broken_pod_waiting, off, set()) == NoAction("no repair mode is enabled")
    disabled = RepairConfig(enabled=False, delete_pods=True)
    assert decide_action(broken_pod_waiting, disabled, set()) == NoAction("repair is disabled")
    assert disabled.mode is None
    cfg = RepairConfig(delete_pods=True)
    for pod in (working_pod, working_pod_died_previously, broken_pod_no_annotation):
        assert decide_action(pod, cfg, set()) == NoAction("the pod is not broken")
    no_uid = copy.deepcopy(broken_pod_waiting)
    del no_uid["metadata"]["uid"]
    assert decide_action(no_uid, cfg, set()) == NoAction("the pod has no metadata.uid")


def test_never_twice_for_one_uid() -> None:
    for cfg in (RepairConfig(), RepairConfig(repair_pods=False, delete_pods=True),
                RepairConfig(repair_pods=False, label_pods=True)):
        handled: set[str] = set()
        assert isinstance(decide_action(broken_pod_waiting, cfg, handled), Act)
        handled.add("uid-broken-pod-waiting")
        assert isinstance(decide_action(broken_pod_waiting, cfg, handled), NoAction)
        again = copy.deepcopy(broken_pod_waiting)  # the same name, a new pod (a StatefulSet's)
        again["metadata"]["uid"] = "uid-2"
        assert isinstance(decide_action(again, cfg, handled), Act)


def test_a_labelled_pod_is_skipped() -> None:
    cfg = RepairConfig(repair_pods=False, label_pods=True, label_key="testlabel", label_value="other")
    action = decide_action(broken_pod_terminating, cfg, set())
    assert isinstance(action, Skip)
    assert action.mode is Mode.LABEL
    assert "already" in action.reason
    assert isinstance(decide_action(broken_pod_waiting, cfg, set()), Act)
    # only the label mode looks at labels
    assert isinstance(decide_action(broken_pod_terminating, RepairConfig(), set()), Act)


# ---- RepairConfig -----------------------------------------------------------------------------------


def config(env: Mapping[str, str] | None = None, **flags: str) -> RepairConfig:
    return RepairConfig.from_source(Source(flags, env or {}))


def test_defaults_are_istios_chart() -> None:
    assert config() == RepairConfig()
    cfg = RepairConfig()
    assert (cfg.enabled, cfg.repair_pods, cfg.delete_pods, cfg.label_pods) == (True, True, False, False)
    assert (cfg.label_key, cfg.label_value) == ("cni.istio.io/uninitialized", "true")
    assert (cfg.init_termination_message, cfg.node_name, cfg.poll_interval) == ("", "", 1.0)
    assert cfg.mode is Mode.REPAIR


def test_every_setting_by_its_istio_name() -> None:
    env = {"REPAIR_ENABLED": "true", "REPAIR_REPAIR_PODS": "false", "REPAIR_DELETE_PODS": "1",
           "REPAIR_LABEL_PODS": "yes", "REPAIR_INIT_CONTAINER_NAME": "check", "REPAIR_INIT_CONTAINER_EXIT_CODE": "0",
           "REPAIR_INIT_CONTAINER_TERMINATION_MESSAGE": " boom ", "REPAIR_BROKEN_POD_LABEL_KEY": "example.com/broken",
           "REPAIR_BROKEN_POD_LABEL_VALUE": "", "REPAIR_SIDECAR_ANNOTATION": "", "REPAIR_NODE_NAME": "node-1.zone",
           "REPAIR_LABEL_SELECTORS": "app=web, tier in (a, b),!skip", "REPAIR_POLL_INTERVAL": "0.25",
           "REPAIR_FIELD_SELECTORS": "metadata.namespace!=kube-system"}
    cfg = config(env)
    assert cfg == RepairConfig(
        enabled=True, repair_pods=False, delete_pods=True, label_pods=True, init_container_name="check",
        init_exit_code=0, init_termination_message=" boom ", label_key="example.com/broken", label_value="",
        sidecar_annotation="", node_name="node-1.zone", poll_interval=0.25,
        label_selector=(LabelRequirement("app", "=", ("web",)), LabelRequirement("tier", "in", ("a", "b")),
                        LabelRequirement("skip", "!")),
        field_selector=(FieldRequirement("metadata.namespace", "!=", "kube-system"),))
    assert cfg.mode is Mode.DELETE
    assert cfg.label_selector_text == "app=web,tier in (a,b),!skip"
    assert cfg.field_selector_text == "metadata.namespace!=kube-system"
    assert config(env, repair_delete_pods="false").mode is Mode.LABEL, "a flag wins over the environment"


@pytest.mark.parametrize(("env", "named", "value"), [
    ({"REPAIR_ENABLED": "maybe"}, "REPAIR_ENABLED", "maybe"),
    ({"REPAIR_REPAIR_PODS": "2"}, "REPAIR_REPAIR_PODS", "2"),
    ({"REPAIR_DELETE_PODS": "on please"}, "REPAIR_DELETE_PODS", "on please"),
    ({"REPAIR_LABEL_PODS": "ja"}, "REPAIR_LABEL_PODS", "ja"),
    ({"REPAIR_INIT_CONTAINER_EXIT_CODE": "abc"}, "REPAIR_INIT_CONTAINER_EXIT_CODE", "abc"),
    ({"REPAIR_INIT_CONTAINER_EXIT_CODE": "256"}, "REPAIR_INIT_CONTAINER_EXIT_CODE", "256"),
    ({"REPAIR_INIT_CONTAINER_EXIT_CODE": "-1"}, "REPAIR_INIT_CONTAINER_EXIT_CODE", "-1"),
    ({"REPAIR_INIT_CONTAINER_NAME": "Istio_Validation"}, "REPAIR_INIT_CONTAINER_NAME", "Istio_Validation"),
    ({"REPAIR_BROKEN_POD_LABEL_KEY": "bad key"}, "REPAIR_BROKEN_POD_LABEL_KEY", "bad key"),
    ({"REPAIR_BROKEN_POD_LABEL_KEY": "-x/y"}, "REPAIR_BROKEN_POD_LABEL_KEY", "-x/y"),
    ({"REPAIR_BROKEN_POD_LABEL_KEY": ""}, "REPAIR_BROKEN_POD_LABEL_KEY", ""),
    ({"REPAIR_BROKEN_POD_LABEL_VALUE": "x" * 64}, "REPAIR_BROKEN_POD_LABEL_VALUE", "x" * 64),
    ({"REPAIR_BROKEN_POD_LABEL_VALUE": "a b"}, "REPAIR_BROKEN_POD_LABEL_VALUE", "a b"),
    ({"REPAIR_SIDECAR_ANNOTATION": "no spaces allowed"}, "REPAIR_SIDECAR_ANNOTATION", "no spaces allowed"),
    ({"REPAIR_NODE_NAME": "Node_1"}, "REPAIR_NODE_NAME", "Node_1"),
    ({"REPAIR_LABEL_SELECTORS": "app=web,,x"}, "REPAIR_LABEL_SELECTORS", "app=web,,x"),
    ({"REPAIR_LABEL_SELECTORS": "a=b=c"}, "REPAIR_LABEL_SELECTORS", "a=b=c"),
    ({"REPAIR_LABEL_SELECTORS": "tier in (a b)"}, "REPAIR_LABEL_SELECTORS", "tier in (a b)"),
    ({"REPAIR_FIELD_SELECTORS": "spec.nodeName"}, "REPAIR_FIELD_SELECTORS", "spec.nodeName"),
    ({"REPAIR_FIELD_SELECTORS": "spec..x=1"}, "REPAIR_FIELD_SELECTORS", "spec..x=1"),
    ({"REPAIR_POLL_INTERVAL": "0"}, "REPAIR_POLL_INTERVAL", "0"),
    ({"REPAIR_POLL_INTERVAL": "soon"}, "REPAIR_POLL_INTERVAL", "soon"),
    ({"REPAIR_POLL_INTERVAL": "nan"}, "REPAIR_POLL_INTERVAL", "nan"),
])
def test_bad_values_are_named(env: dict[str, str], named: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(env)
    assert named in str(err.value)
    assert repr(value) in str(err.value)


def test_a_bad_flag_is_named_as_a_flag() -> None:
    with pytest.raises(ConfigError, match=r"--repair-init-container-exit-code: invalid value 'x'"):
        config(repair_init_container_exit_code="x")


def test_selectors_match_as_kubernetes_does() -> None:
    labels = {"app": "web", "tier": "a"}
    cases = {"app": True, "!app": False, "missing": False, "!missing": True, "app=web": True, "app==web": True,
             "app=api": False, "app!=api": True, "missing!=x": True, "tier in (a,b)": True, "tier in (b)": False,
             "missing in (a)": False, "tier notin (b)": True, "missing notin (a)": True,
             "app=web,tier notin (a)": False, "example.com/x": False, "app=": False}
    for text, want in cases.items():
        reqs = parse_label_selector("S", text)
        assert all(r.matches(labels) for r in reqs) is want, text
    pod = {"metadata": {"name": "p", "namespace": "shop"}, "spec": {"hostNetwork": False},
           "status": {"phase": "Running"}}
    for text, want in {"metadata.namespace=shop": True, "metadata.namespace!=shop": False, "status.phase=Running": True,
                       "spec.hostNetwork=false": True, "spec.nodeName=": True, "spec.nodeName=n1": False,
                       "metadata.name==p,status.phase!=Pending": True}.items():
        assert all(r.matches(pod) for r in parse_field_selector("F", text)) is want, text
    cfg = RepairConfig(label_selector=parse_label_selector("S", "app=web"),
                       field_selector=parse_field_selector("F", "metadata.namespace=default"))
    assert not selected(broken_pod_waiting, cfg)
    labelled = copy.deepcopy(broken_pod_waiting)
    labelled["metadata"]["labels"] = {"app": "web"}
    assert selected(labelled, cfg)


# ---- the driver, against a recording backend -------------------------------------------------------


class FakeBackend:
    """A PodBackend that records every call; errors to raise are queued per verb."""

    def __init__(self, events: list[PodEvent] | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.events: list[tuple[str, str, str, str]] = []
        self.errors: dict[str, list[Exception]] = {}
        self.stream = list(events or [])
        self.woken = threading.Event()

    def _maybe_fail(self, verb: str) -> None:
        queue = self.errors.get(verb) or []
        if queue:
            raise queue.pop(0)

    def watch(self, stop: threading.Event) -> Iterator[PodEvent]:
        yield from self.stream
        stop.wait()

    def wake(self) -> None:
        self.woken.set()

    def netns(self, pod: Mapping[str, Any]) -> str:
        self.calls.append(("netns", pod["metadata"]["name"]))
        self._maybe_fail("netns")
        return f"/proc/4242/ns/net#{pod['metadata']['name']}"

    def delete(self, pod: Mapping[str, Any]) -> None:
        self.calls.append(("delete", pod["metadata"]["name"]))
        self._maybe_fail("delete")

    def label(self, pod: Mapping[str, Any], key: str, value: str) -> None:
        self.calls.append(("label", f"{pod['metadata']['name']} {key}={value}"))
        self._maybe_fail("label")

    def event(self, pod: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self._maybe_fail("event")
        self.events.append((pod["metadata"]["name"], type_, reason, message))


class FakeProgrammer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.errors: list[Exception] = []

    def __call__(self, pod: Mapping[str, Any], netns: str) -> str:
        self.calls.append((pod["metadata"]["name"], netns))
        if self.errors:
            raise self.errors.pop(0)
        return "iptables-nft, programmed"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


FIXTURES = [working_pod, working_pod_died_previously, broken_pod_waiting, broken_pod_terminating,
            broken_pod_no_annotation]


def run_all(controller: RepairController) -> None:
    for pod in FIXTURES:
        controller.handle(PodEvent("ADDED", pod))
    controller.process_due()


def test_label_pods() -> None:  # Istio's TestLabelPods
    backend = FakeBackend()
    cfg = RepairConfig(repair_pods=False, label_pods=True, label_key="testlabel", label_value="true")
    controller = RepairController(backend, cfg)
    run_all(controller)
    assert backend.calls == [("label", "broken-pod-waiting testlabel=true")]
    assert controller.counts.snapshot() == {("label", "success"): 1, ("label", "skip"): 1}
    assert [(e[0], e[1], e[2]) for e in backend.events] == [("broken-pod-waiting", "Warning", "LabelBrokenPod")]
    assert backend.events[0][3].startswith("pod detected as broken (init container istio-validation last exited 126")
    assert backend.events[0][3].endswith("labeled")
    run_all(controller)
    assert len(backend.calls) == 1, "never twice"
    assert controller.handled == {"uid-broken-pod-waiting", "uid-broken-pod-terminating"}


def test_delete_pods() -> None:  # Istio's TestDeletePods
    backend = FakeBackend()
    controller = RepairController(backend, RepairConfig(repair_pods=False, delete_pods=True))
    run_all(controller)
    assert sorted(backend.calls) == [("delete", "broken-pod-terminating"), ("delete", "broken-pod-waiting")]
    assert controller.counts.snapshot() == {("delete", "success"): 2}
    assert {e[2] for e in backend.events} == {"DeleteBrokenPod"}
    assert all(e[3].endswith("deleted") for e in backend.events)


def test_repair_pods_programs_the_netns_the_backend_finds() -> None:
    backend, program = FakeBackend(), FakeProgrammer()
    controller = RepairController(backend, RepairConfig(), program)
    run_all(controller)
    assert sorted(program.calls) == [("broken-pod-terminating", "/proc/4242/ns/net#broken-pod-terminating"),
                                     ("broken-pod-waiting", "/proc/4242/ns/net#broken-pod-waiting")]
    assert controller.counts.snapshot() == {("repair", "success"): 2}
    assert {e[2] for e in backend.events} == {"RepairedPod"}
    assert "capture rules programmed: /proc/4242/ns/net#broken-pod-waiting: iptables-nft, programmed" in \
        next(e[3] for e in backend.events if e[0] == "broken-pod-waiting")
    with pytest.raises(ValueError, match="programmer"):
        RepairController(backend, RepairConfig())


def test_failures_are_retried_with_back_off_then_given_up() -> None:
    backend, clock = FakeBackend(), Clock()
    backend.errors["delete"] = [PodBackendError("API down")] * 6
    controller = RepairController(backend, RepairConfig(repair_pods=False, delete_pods=True), clock=clock,
                                  retry_delay=0.5, max_attempts=5)
    controller.handle(PodEvent("ADDED", broken_pod_waiting))
    delays = []
    for _ in range(10):
        done = controller.process_due()
        assert len(done) <= 1
        due = controller._next_due()
        if due is None:
            break
        delays.append(due - clock.now)
        clock.now = due
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert controller.counts.snapshot() == {("delete", "fail"): 5}
    assert len(backend.events) == 5
    assert "but failed to delete: API down" in backend.events[0][3]
    assert "uid-broken-pod-waiting" not in controller.handled
    # a change of the pod queues it afresh (as an informer's update event)
    controller.handle(PodEvent("MODIFIED", broken_pod_waiting))
    backend.errors["delete"] = []
    assert [o.result for o in controller.process_due()] == ["success"]


def test_a_change_while_waiting_keeps_the_back_off_and_takes_the_new_copy() -> None:
    backend, clock = FakeBackend(), Clock()
    backend.errors["label"] = [PodBackendError("API down")]
    controller = RepairController(backend, RepairConfig(repair_pods=False, label_pods=True), clock=clock)
    controller.handle(PodEvent("ADDED", broken_pod_waiting))
    controller.process_due()
    newer = copy.deepcopy(broken_pod_waiting)
    newer["metadata"]["resourceVersion"] = "8"
    controller.handle(PodEvent("MODIFIED", newer))
    assert controller.process_due() == [], "not due yet"
    clock.now += 0.5
    (outcome,) = controller.process_due()
    assert outcome.result == "success"


def test_what_retrying_cannot_fix_is_not_retried() -> None:
    backend, program = FakeBackend(), FakeProgrammer()
    controller = RepairController(backend, RepairConfig(), program)
    program.errors = [InvalidSpecError("traffic.sidecar.istio.io/includeInboundPorts", "x", "not a port")]
    controller.handle(PodEvent("ADDED", broken_pod_waiting))
    (outcome,) = controller.process_due()
    assert (outcome.result, outcome.retry) == ("fail", False)
    assert controller._next_due() is None

    backend.errors["netns"] = [PodConflict("gone")]
    controller.handle(PodEvent("MODIFIED", broken_pod_waiting))
    (outcome,) = controller.process_due()
    assert (outcome.result, outcome.retry) == ("fail", False)

    program.errors = [CaptureError("iptables-restore failed")]
    controller.handle(PodEvent("MODIFIED", broken_pod_waiting))
    (outcome,) = controller.process_due()
    assert (outcome.result, outcome.retry) == ("fail", True)

    program.errors = [NotCaptured("namespace kube-system is excluded")]
    controller.handle(PodEvent("MODIFIED", broken_pod_terminating))
    (outcome,) = controller.process_due()
    assert outcome.result == "skip"
    assert "uid-broken-pod-terminating" in controller.handled
    assert controller.counts.snapshot() == {("repair", "fail"): 3, ("repair", "skip"): 1}
    assert "does not capture it" in backend.events[-1][3]


def test_a_failed_event_does_not_fail_the_repair() -> None:
    backend = FakeBackend()
    backend.errors["event"] = [PodBackendError("events are forbidden")]
    controller = RepairController(backend, RepairConfig(repair_pods=False, delete_pods=True))
    controller.handle(PodEvent("ADDED", broken_pod_waiting))
    assert [o.result for o in controller.process_due()] == ["success"]


def test_deleted_pods_are_forgotten_and_unselected_pods_ignored() -> None:
    backend = FakeBackend()
    cfg = RepairConfig(repair_pods=False, delete_pods=True, label_selector=parse_label_selector("S", "!testlabel"))
    controller = RepairController(backend, cfg)
    run_all(controller)
    assert backend.calls == [("delete", "broken-pod-waiting")], "broken-pod-terminating has testlabel"
    assert "uid-broken-pod-waiting" in controller.handled
    controller.handle(PodEvent("DELETED", broken_pod_waiting))
    assert controller.handled == set()


def test_counts_feed_a_sink() -> None:
    seen: list[tuple[str, str]] = []
    counts = RepairCounts(on_count=lambda t, r: seen.append((t, r)))
    counts.add("repair", "success")
    counts.add("repair", "success")
    assert counts.get("repair", "success") == 2
    assert counts.get("label", "skip") == 0
    assert seen == [("repair", "success")] * 2
    assert METRIC == "istio_cni_repair_pods_repaired_total"


def test_the_threads_start_and_stop() -> None:
    backend = FakeBackend([PodEvent("ADDED", p) for p in FIXTURES])
    controller = RepairController(backend, RepairConfig(repair_pods=False, label_pods=True))
    controller.start()
    try:
        deadline = threading.Event()
        for _ in range(100):
            if controller.counts.get("label", "success") == 2:
                break
            deadline.wait(0.02)
        assert controller.counts.snapshot() == {("label", "success"): 2}
        with pytest.raises(RuntimeError):
            controller.start()
    finally:
        assert controller.stop(5)
    assert backend.woken.is_set()


class FailingWatch(FakeBackend):
    def __init__(self) -> None:
        super().__init__()
        self.watches = 0

    def watch(self, stop: threading.Event) -> Iterator[PodEvent]:
        self.watches += 1
        if self.watches == 1:
            raise PodBackendError("connection refused")
        yield PodEvent("ADDED", broken_pod_waiting)
        stop.wait()


def test_a_failed_watch_is_started_again() -> None:
    backend = FailingWatch()
    controller = RepairController(backend, RepairConfig(repair_pods=False, delete_pods=True), watch_backoff=0.05)
    controller.start()
    try:
        for _ in range(200):
            if backend.calls:
                break
            threading.Event().wait(0.01)
    finally:
        assert controller.stop(5)
    assert backend.watches == 2
    assert backend.calls == [("delete", "broken-pod-waiting")]


# ---- the Kubernetes backend: request shapes against a fake CoreV1Api -------------------------------


class Response:
    def __init__(self, doc: Any) -> None:
        self.data = json.dumps(doc).encode()


class FakeCore:
    """Records each call to the CoreV1Api methods the backend uses (name, args, kwargs)."""

    def __init__(self, pods: list[dict[str, Any]], version: str = "100") -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.pods = pods
        self.version = version
        self.fail: dict[str, Exception] = {}

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))
        if name in self.fail:
            raise self.fail.pop(name)

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Response:
        self._record("list", **kwargs)
        return Response({"kind": "PodList", "metadata": {"resourceVersion": self.version}, "items": self.pods})

    def delete_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> None:
        self._record("delete", name, namespace, **kwargs)

    def patch_namespaced_pod_status(self, name: str, namespace: str, body: Any, **kwargs: Any) -> None:
        self._record("patch_status", name, namespace, body, **kwargs)

    def create_namespaced_event(self, namespace: str, body: Any, **kwargs: Any) -> None:
        self._record("create_event", namespace, body, **kwargs)


class FakeWatch:
    """``kubernetes.watch.Watch`` as the backend uses it: ``stream(func, **kwargs)`` and ``stop()``."""

    def __init__(self, script: list[list[dict[str, Any]] | Exception], calls: list[dict[str, Any]]) -> None:
        self.script = script
        self.calls = calls
        self.stopped = False

    def stream(self, func: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.calls.append({"func": func.__name__, **kwargs})
        step = self.script.pop(0) if self.script else []
        if isinstance(step, Exception):
            raise step
        for event in step:
            yield {"type": event["type"], "raw_object": event["object"], "object": None}

    def stop(self) -> None:
        self.stopped = True


def kpod(name: str, uid: str, version: str) -> dict[str, Any]:
    pod = make_pod(name, BROKEN_WAITING, annotations=STATUS, uid=uid)
    pod["metadata"]["resourceVersion"] = version
    return pod


SERIALIZE = k8s.ApiClient().sanitize_for_serialization


def test_kube_list_then_watch_then_relist_after_410() -> None:
    a, b = kpod("a", "uid-a", "90"), kpod("b", "uid-b", "91")
    core = FakeCore([a, b])
    watch_calls: list[dict[str, Any]] = []
    a2 = {**a, "metadata": {**a["metadata"], "resourceVersion": "101"}}
    script: list[list[dict[str, Any]] | Exception] = [
        [{"type": "MODIFIED", "object": a2},
         {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "105"}}}],
        ApiException(status=410, reason="Gone"),
        [{"type": "DELETED", "object": a2}],
    ]
    backend = KubePods(core, node_name="node-1", label_selector="app=web", field_selector="metadata.namespace=shop",
                       watch_factory=lambda: FakeWatch(script, watch_calls), watch_timeout=60)
    stop = threading.Event()
    got = []
    for event in backend.watch(stop):
        got.append((event.kind, event.pod["metadata"]["name"], event.pod["metadata"]["resourceVersion"]))
        if len(got) == 3:  # b goes away while the next watch has expired
            core.pods, core.version = [a2], "200"
        if len(got) == 6:
            break
    assert got == [("ADDED", "a", "90"), ("ADDED", "b", "91"), ("MODIFIED", "a", "101"),  # list, then watch
                   ("MODIFIED", "a", "101"), ("DELETED", "b", "91"),  # 410: listed again, b vanished
                   ("DELETED", "a", "101")]  # watching from the new list's resourceVersion
    selectors = {"field_selector": "metadata.namespace=shop,spec.nodeName=node-1", "label_selector": "app=web"}
    assert core.calls == [("list", (), {**selectors, "_preload_content": False, "_request_timeout": 30.0})] * 2
    assert watch_calls[0] == {"func": "list_pod_for_all_namespaces", **selectors, "resource_version": "100",
                              "timeout_seconds": 60, "allow_watch_bookmarks": True, "_request_timeout": (10, 90)}
    assert [c["resource_version"] for c in watch_calls] == ["100", "105", "200"], "a bookmark moves it on"


def test_kube_relist_reports_what_vanished() -> None:
    a, b = kpod("a", "uid-a", "90"), kpod("b", "uid-b", "91")
    core = FakeCore([a, b])
    watch_calls: list[dict[str, Any]] = []
    script: list[list[dict[str, Any]] | Exception] = [ApiException(status=410, reason="Gone"), []]
    backend = KubePods(core, node_name="node-1", watch_factory=lambda: FakeWatch(script, watch_calls))
    stop = threading.Event()
    got = []
    for event in backend.watch(stop):
        got.append((event.kind, event.pod["metadata"]["name"]))
        if len(got) == 2:
            core.pods = [a]
            core.version = "200"
        if len(got) == 4:
            break
    assert got == [("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert [c[0] for c in core.calls] == ["list", "list"]
    assert "label_selector" not in core.calls[0][2]
    assert core.calls[0][2]["field_selector"] == "spec.nodeName=node-1"


def test_kube_watch_errors_are_backend_errors() -> None:
    core = FakeCore([])
    core.fail["list"] = ApiException(status=403, reason="Forbidden")
    backend = KubePods(core, node_name="n", watch_factory=lambda: FakeWatch([], []))
    with pytest.raises(PodBackendError, match="403 Forbidden"):
        next(iter(backend.watch(threading.Event())))
    script: list[list[dict[str, Any]] | Exception] = [ApiException(status=500, reason="Internal")]
    backend = KubePods(FakeCore([]), node_name="n", watch_factory=lambda: FakeWatch(script, []))
    with pytest.raises(PodBackendError, match="500 Internal"):
        list(backend.watch(threading.Event()))
    with pytest.raises(ValueError, match="REPAIR_NODE_NAME"):
        KubePods(core, node_name="")


def test_kube_a_new_watch_after_an_error_reports_what_vanished() -> None:
    a, b = kpod("a", "uid-a", "1"), kpod("b", "uid-b", "2")
    core = FakeCore([a, b])
    script: list[list[dict[str, Any]] | Exception] = [ApiException(status=500, reason="Internal")]
    backend = KubePods(core, node_name="n", watch_factory=lambda: FakeWatch(script, []))
    events = backend.watch(threading.Event())
    assert [e.kind for e in (next(events), next(events))] == ["ADDED", "ADDED"]
    with pytest.raises(PodBackendError):
        next(events)
    core.pods = [b]
    again = backend.watch(threading.Event())
    assert [(e.kind, e.pod["metadata"]["name"]) for e in (next(again), next(again))] == [
        ("MODIFIED", "b"), ("DELETED", "a")]


def test_kube_delete_label_and_event_requests() -> None:
    core = FakeCore([])
    backend = KubePods(core, node_name="node-1", watch_factory=lambda: FakeWatch([], []))
    pod = kpod("web-1", "uid-9", "77")
    pod["metadata"]["namespace"] = "shop"
    backend.delete(pod)
    name, args, kwargs = core.calls[-1]
    assert (name, args) == ("delete", ("web-1", "shop"))
    assert SERIALIZE(kwargs["body"]) == {"preconditions": {"uid": "uid-9", "resourceVersion": "77"}}
    backend.label(pod, "cni.istio.io/uninitialized", "true")
    name, args, kwargs = core.calls[-1]
    assert name == "patch_status", "the status subresource: RBAC pods/status is enough"
    assert args == ("web-1", "shop", {"metadata": {"uid": "uid-9", "labels": {"cni.istio.io/uninitialized": "true"}}})
    assert kwargs["_content_type"] == "application/merge-patch+json"
    assert kwargs["_preload_content"] is False
    backend.event(pod, "Warning", "DeleteBrokenPod", "pod detected as broken, deleted")
    name, args, kwargs = core.calls[-1]
    assert (name, args[0]) == ("create_event", "shop")
    body = SERIALIZE(args[1])
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": "web-1", "namespace": "shop",
                                      "uid": "uid-9", "resourceVersion": "77"}
    assert (body["type"], body["reason"], body["message"]) == ("Warning", "DeleteBrokenPod",
                                                               "pod detected as broken, deleted")
    assert body["metadata"] == {"generateName": "web-1.", "namespace": "shop"}
    assert body["source"] == {"component": "cni-repair", "host": "node-1"}
    assert body["firstTimestamp"] == body["lastTimestamp"]


@pytest.mark.parametrize(("status", "error"), [(409, PodConflict), (404, PodConflict), (422, PodConflict),
                                               (500, PodBackendError), (403, PodBackendError)])
def test_kube_api_errors(status: int, error: type[Exception]) -> None:
    core = FakeCore([])
    backend = KubePods(core, node_name="n", watch_factory=lambda: FakeWatch([], []))
    for verb in ("delete", "patch_status", "create_event"):
        core.fail[verb] = ApiException(status=status, reason="X")
    pod = kpod("p", "u", "1")
    for call in (lambda: backend.delete(pod), lambda: backend.label(pod, "k", "v"),
                 lambda: backend.event(pod, "Warning", "R", "m")):
        with pytest.raises(error) as err:
            call()
        assert f"{status} X" in str(err.value)
        assert type(err.value) is error


# ---- the real client, against a recording API server on loopback -----------------------------------


class FakeApiServer(http.server.ThreadingHTTPServer):
    """Answers the few requests the backend makes and records them (method, path, query, headers, body)."""

    def __init__(self, pods: list[dict[str, Any]], watch_events: list[dict[str, Any]]) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status_next = 0  # answer the next request with this error status
        self.pods = pods
        self.watch_events = watch_events
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    server: FakeApiServer

    def log_message(self, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                     "content_type": self.headers.get("Content-Type"),
                                     "body": json.loads(body) if body else None})
        query = parse_qs(url.query)
        if self.command == "GET" and query.get("watch") == ["true"]:
            text = "".join(json.dumps(e) + "\n" for e in self.server.watch_events)
            self.server.watch_events = []
        elif self.command == "GET":
            text = json.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "500"},
                               "items": self.server.pods})
        else:
            text = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Success"} if self.command == "DELETE"
                              else self.server.pods[0] if self.command == "PATCH"
                              else {"kind": "Event", "apiVersion": "v1", "metadata": {"name": "e"},
                                    "involvedObject": {}})
        status, self.server.status_next = self.server.status_next or (201 if self.command == "POST" else 200), 0
        if status >= 400:
            text = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status,
                               "reason": "Conflict", "message": "Precondition failed: UID in precondition"})
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = _serve


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    pod = kpod("web-1", "uid-9", "77")
    pod["metadata"]["namespace"] = "shop"
    server = FakeApiServer([pod], [{"type": "MODIFIED", "object": {**pod, "metadata": {**pod["metadata"],
                                                                                      "resourceVersion": "501"}}}])
    thread = threading.Thread(target=server.serve_forever, name="fake-apiserver", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_real_client_sends_what_the_api_expects(apiserver: FakeApiServer) -> None:
    configuration = k8s.Configuration(host=f"http://127.0.0.1:{apiserver.server_address[1]}")
    core = k8s.CoreV1Api(k8s.ApiClient(configuration))
    backend = KubePods(core, node_name="node-1", label_selector="app=web", watch_timeout=5, request_timeout=5)
    stop = threading.Event()
    got = []
    for event in backend.watch(stop):
        got.append((event.kind, event.pod["metadata"]["resourceVersion"]))
        if len(got) == 2:
            stop.set()
            break
    assert got == [("ADDED", "77"), ("MODIFIED", "501")]
    pod = apiserver.pods[0]
    backend.delete(pod)
    backend.label(pod, "cni.istio.io/uninitialized", "true")
    backend.event(pod, "Warning", "LabelBrokenPod", "pod detected as broken, labeled")
    listing, watching, delete, patch, event = apiserver.requests
    assert (listing["method"], listing["path"]) == ("GET", "/api/v1/pods")
    assert listing["query"] == {"fieldSelector": ["spec.nodeName=node-1"], "labelSelector": ["app=web"]}
    assert (watching["method"], watching["path"]) == ("GET", "/api/v1/pods")
    assert watching["query"] == {"fieldSelector": ["spec.nodeName=node-1"], "labelSelector": ["app=web"],
                                 "resourceVersion": ["500"], "timeoutSeconds": ["5"],
                                 "allowWatchBookmarks": ["true"], "watch": ["true"]}
    assert (delete["method"], delete["path"]) == ("DELETE", "/api/v1/namespaces/shop/pods/web-1")
    assert delete["body"] == {"preconditions": {"uid": "uid-9", "resourceVersion": "77"}}
    assert (patch["method"], patch["path"]) == ("PATCH", "/api/v1/namespaces/shop/pods/web-1/status")
    assert patch["content_type"] == "application/merge-patch+json"
    assert patch["body"] == {"metadata": {"uid": "uid-9", "labels": {"cni.istio.io/uninitialized": "true"}}}
    assert (event["method"], event["path"]) == ("POST", "/api/v1/namespaces/shop/events")
    assert event["body"]["involvedObject"]["uid"] == "uid-9"
    assert (event["body"]["type"], event["body"]["reason"]) == ("Warning", "LabelBrokenPod")
    assert event["body"]["source"] == {"component": "cni-repair", "host": "node-1"}
    apiserver.status_next = 409
    with pytest.raises(PodConflict, match="409"):
        backend.delete(pod)
    apiserver.status_next = 503
    with pytest.raises(PodBackendError, match="503") as err:
        backend.label(pod, "k", "v")
    assert not isinstance(err.value, PodConflict)


# ---- the pod's network namespace from /proc ---------------------------------------------------------


def stat_line(pid: int, start: int) -> str:
    fields = ["S"] + ["0"] * 18 + [str(start)] + ["0"] * 20  # state is field 3, starttime field 22
    return f"{pid} (pause) {' '.join(fields)}\n"


class FakeProc:
    """A /proc tree: ``ns/net`` files (hard links for processes sharing a namespace) and ``stat``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir()
        self.addresses: dict[tuple[int, int], list[str]] = {}
        self.looked: list[str] = []

    def namespace(self, name: str, addresses: list[str]) -> Path:
        path = self.root.parent / f"ns-{name}"
        path.write_text(name)
        st = os.stat(path)
        self.addresses[(st.st_dev, st.st_ino)] = addresses
        return path

    def process(self, pid: int, ns: Path, start: int | None) -> None:
        d = self.root / str(pid)
        (d / "ns").mkdir(parents=True)
        os.link(ns, d / "ns" / "net")
        if start is not None:
            (d / "stat").write_text(stat_line(pid, start))

    def lookup(self, path: str) -> list[str]:
        self.looked.append(path)
        st = os.stat(path)
        found = self.addresses.get((st.st_dev, st.st_ino))
        if found is None:
            raise OSError(2, "gone")
        return found


def test_the_oldest_process_in_the_namespace_with_the_pod_ip(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    host = proc.namespace("host", ["127.0.0.1/8", "192.168.1.10/24"])
    pod = proc.namespace("pod", ["127.0.0.1/8", "10.213.0.5/16", "fe80::1/64"])
    other = proc.namespace("other", ["127.0.0.1/8", "10.213.0.6/16"])
    proc.process(1, host, 10)
    proc.process(300, pod, 5000)   # istio-validation, younger
    proc.process(200, pod, 4000)   # the pause process: the oldest in the pod
    proc.process(250, other, 3000)
    (proc.root / "self").mkdir()   # not a pid
    (proc.root / "400").mkdir()    # a process without ns/net (a kernel thread, or gone)
    found = find_netns("10.213.0.5", str(proc.root), proc.lookup)
    assert found == str(proc.root / "200" / "ns" / "net")
    assert len(proc.looked) == 3, "each namespace is looked into once"
    with pytest.raises(PodBackendError, match="no network namespace"):
        find_netns("10.213.0.99", str(proc.root), proc.lookup)
    with pytest.raises(PodBackendError, match="not an IP address"):
        find_netns("nope", str(proc.root), proc.lookup)
    with pytest.raises(PodBackendError, match="cannot read"):
        find_netns("10.213.0.5", str(tmp_path / "missing"), proc.lookup)


def test_ipv6_and_unreadable_processes(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    pod = proc.namespace("pod", ["fd00:0:0:0::5/64"])
    proc.process(50, pod, None)   # stat unreadable: used only if nothing better
    assert find_netns("fd00::5", str(proc.root), proc.lookup) == str(proc.root / "50" / "ns" / "net")
    proc.process(60, pod, 7)
    assert find_netns("fd00::5", str(proc.root), proc.lookup) == str(proc.root / "60" / "ns" / "net")
    gone = tmp_path / "ns-gone"
    gone.write_text("x")
    proc.process(70, gone, 1)   # the lookup fails (gone meanwhile): skipped
    assert find_netns("fd00::5", str(proc.root), proc.lookup) == str(proc.root / "60" / "ns" / "net")


def test_kube_netns_uses_the_pod_ip(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    proc.process(10, proc.namespace("pod", ["10.1.2.3/24"]), 1)
    backend = KubePods(FakeCore([]), node_name="n", proc_root=str(proc.root), addresses=proc.lookup,
                       watch_factory=lambda: FakeWatch([], []))
    assert backend.netns(broken_pod_waiting) == str(proc.root / "10" / "ns" / "net")
    with pytest.raises(PodBackendError, match="no pod IP"):
        backend.netns({**broken_pod_waiting, "status": {}})


# ---- the embedded runtime's poller ------------------------------------------------------------------


def test_runtime_pods_polls_the_store(tmp_path: Path) -> None:
    runtime = Runtime(NodeConfig(root=str(tmp_path)))
    store = runtime.store
    store.create("uid-1", {"metadata": {"name": "one", "namespace": "shop", "uid": "uid-1"}}, {"phase": "Pending"})
    backend = RuntimePods(runtime, interval=0.01)
    stop = threading.Event()
    events = backend.watch(stop)
    first = next(events)
    assert (first.kind, first.pod["metadata"]["name"], first.pod["kind"]) == ("ADDED", "one", "Pod")
    store.update("uid-1", status={"phase": "Running"})
    store.create("uid-2", {"metadata": {"name": "two", "namespace": "shop", "uid": "uid-2"}}, {"phase": "Pending"})
    got = sorted((e.kind, e.pod["metadata"]["name"]) for e in (next(events), next(events)))
    assert got == [("ADDED", "two"), ("MODIFIED", "one")]
    store.update("uid-2", deleting=True)  # being removed: gone from view, as from StorePods
    gone = next(events)
    assert (gone.kind, gone.pod["metadata"]["name"]) == ("DELETED", "two")

    backend.label(first.pod, "cni.istio.io/uninitialized", "true")
    labelled = next(events)
    assert labelled.kind == "MODIFIED"
    assert labelled.pod["metadata"]["labels"] == {"cni.istio.io/uninitialized": "true"}
    stale = {**first.pod, "metadata": {**first.pod["metadata"], "uid": "uid-old"}}
    with pytest.raises(PodConflict):
        backend.label(stale, "k", "v")
    with pytest.raises(PodConflict):
        backend.delete(stale)
    with pytest.raises(PodBackendError, match="no network namespace"):
        backend.netns(first.pod)
    backend.event(first.pod, "Warning", "LabelBrokenPod", "labeled")
    assert store.events("uid-1")[-1]["reason"] == "LabelBrokenPod"
    stop.set()
    assert list(events) == []
    store.delete("uid-1")
    store.create("uid-3", {"metadata": {"name": "three", "namespace": "shop", "uid": "uid-3"}}, {})
    store.update("uid-2", deleting=False)
    again = backend.watch(threading.Event())  # a new watch (after an error): everything, and what vanished
    got = sorted((e.kind, e.pod["metadata"]["name"]) for e in (next(again), next(again), next(again)))
    assert got == [("ADDED", "three"), ("ADDED", "two"), ("DELETED", "one")]
