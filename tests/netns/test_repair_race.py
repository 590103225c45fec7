"""THE RACE, end to end on one machine: pods that started before the node agent, and the repair
controller that fixes them, once per mode (repair, delete, label).

Per mode: ``weir node init`` under a world-traversable root (containers run the node's ``weir``
as uid 1337) with its own node namespace and a 0.5 s crash-loop back-off; the agent is *not*
running, and the pods' namespace is fail-open, which models "the plugin is not installed yet":
CNI ADD passes them through uncaptured. Three copies of ``examples/pods/injected.yaml`` start;
each one's ``istio-validation`` fails (exit 126, as Istio's) and crash-loops. Then the agent
comes up, in this process: its capture service (serving the plugin) and the repair controller
over the runtime's store (``RuntimePods``, polled every second). Within a bound, every pod must
end up as the mode promises:

- repair: the same pod (same uid) captured in place, validation Completed, Running;
- delete: a new pod (new uid) in its place, captured by the agent at its ADD, Running;
- label: ``cni.istio.io/uninitialized=true`` on the pod, and still no rules.

The time from the agent's start to the last pod's outcome is printed. Everything (pods, their
namespaces and shims, the node namespace, the root) is removed also when the test fails.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from weir.netns import NetNS
from weir.nodeagent.repair import RepairConfig
from weir.nodeagent.repairer import CaptureRepair, RepairController
from weir.platform.local import PodRecord
from weir.runtime.repairbackend import RuntimePods

from .cni_helpers import has_istio_rules
from .runtime_helpers import (
    completed_and_running,
    every_pod,
    labelled_uninitialized,
    make_node,
    netns_name,
    netns_names,
    shim_pids,
    start_uncaptured,
    validation,
    wait_for,
)

pytestmark = [pytest.mark.cni_plugins, pytest.mark.timeout(90)]

NAMESPACE = "race"
PODS = [f"race-{i}" for i in range(3)]
RACE_WAIT = 30.0  # for each pod's first validation failure (the example's probe times out after 5 s)
BOUND = 40.0  # from the agent's start to every pod's outcome (Istio's TestCNIRaceRepair allows 80 s)


def captured_and_running(record: PodRecord) -> bool:
    return completed_and_running(record) and has_istio_rules(NetNS(record.netns))


def config(mode: str) -> RepairConfig:
    return RepairConfig(repair_pods=mode == "repair", delete_pods=mode == "delete", label_pods=mode == "label")


@pytest.mark.parametrize("mode", ["repair", "delete", "label"])
def test_pods_that_raced_the_agent_are_fixed(workdir: Path, mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    node = make_node(workdir / "node", agent=False, fail_open=NAMESPACE)
    controller: RepairController | None = None
    forced: list[str] = []
    try:
        before = start_uncaptured(node, NAMESPACE, PODS, RACE_WAIT)

        # The agent comes up: the capture service serves the plugin, the controller repairs.
        started = time.monotonic()
        assert node.agent is not None
        node.agent.start()
        cfg = config(mode)
        controller = RepairController(RuntimePods(node.runtime(), cfg.poll_interval), cfg,
                                      CaptureRepair(node.agent.service))
        controller.start()

        if mode == "repair":
            done = wait_for("every pod repaired in place",
                            lambda: every_pod(node, NAMESPACE, PODS, captured_and_running), BOUND, 0.1)
            assert {r.name: r.uid for r in done} == before, "the same pods"
        elif mode == "delete":
            done = wait_for("every pod replaced, captured and running", lambda: every_pod(
                node, NAMESPACE, PODS, lambda r: r.uid != before[r.name] and captured_and_running(r)), BOUND, 0.1)
            assert all(validation(r)["restartCount"] == 0 for r in done), "the new pods pass at once"
            assert {netns_name(uid) for uid in before.values()} & netns_names() == set(), "old sandboxes gone"
        else:
            done = wait_for("every pod labelled",
                            lambda: every_pod(node, NAMESPACE, PODS, labelled_uninitialized), BOUND, 0.1)
            assert {r.name: r.uid for r in done} == before
            assert not any(has_istio_rules(NetNS(r.netns)) for r in done), "labelling programs nothing"
        elapsed = time.monotonic() - started
        with capsys.disabled():
            print(f"\nrace/{mode}: {len(PODS)} pods fixed {elapsed:.1f}s after the agent started")

        reason = {"repair": "RepairedPod", "delete": "DeleteBrokenPod", "label": "LabelBrokenPod"}[mode]
        for record in done:
            events = [(e["type"], e["reason"]) for e in node.store().events(record.uid)]
            assert ("Warning", reason) in events, events
        assert controller.counts.snapshot() == {(mode, "success"): len(PODS)}
    finally:
        try:
            if controller is not None:
                assert controller.stop(15), "the repair controller did not stop"
        finally:
            forced = node.close()
    assert forced == [], f"cleaned up by force: {forced}"
    assert shim_pids(node.db) == []
