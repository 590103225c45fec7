"""Pod status transitions, in Kubernetes' JSON shape (what Istio's repair controller reads)."""

from __future__ import annotations

from weir.runtime import status as st


def test_initial_status_waits_for_init_containers() -> None:
    s = st.initial(["istio-validation"], ["app", "istio-proxy"])
    assert s["phase"] == "Pending"
    assert [c["name"] for c in s["initContainerStatuses"]] == ["istio-validation"]
    assert s["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert st.initial([], ["app"])["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"


def test_a_failed_validation_looks_like_kubernetes_shows_it() -> None:
    s = st.initial(["istio-validation"], ["app"])
    s = st.running(s, "istio-validation", 100.0)
    s = st.terminated(s, "istio-validation", 126, 100.0, 105.0)
    s = st.back_off(s, "istio-validation", 10)
    entry = st.container(s, "istio-validation")
    assert entry["restartCount"] == 1
    assert entry["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert entry["lastState"]["terminated"]["exitCode"] == 126
    assert entry["lastState"]["terminated"]["reason"] == "Error"
    s = st.running(s, "istio-validation", 115.0)
    s = st.terminated(s, "istio-validation", 0, 115.0, 116.0)
    entry = st.container(s, "istio-validation")
    assert st.completed(entry)
    assert entry["lastState"]["terminated"]["exitCode"] == 126, "the last failure stays visible"
    assert entry["state"]["terminated"]["reason"] == "Completed"


def test_start_failure_is_a_start_error() -> None:
    s = st.start_failed(st.initial([], ["app"]), "app", "no such file", 1.0)
    term = st.container(s, "app")["state"]["terminated"]
    assert term["reason"] == "StartError"
    assert term["exitCode"] == 128
    assert term["message"] == "no such file"


def test_backoff_doubles_to_five_minutes() -> None:
    assert [st.backoff_delay(n) for n in range(7)] == [10, 20, 40, 80, 160, 300, 300]
    assert st.backoff_delay(2, 0.5) == 2.0


def test_phase_sets_kubernetes_conditions() -> None:
    s = st.running(st.initial([], ["app"]), "app", 1.0)
    s = st.with_phase(s, "Running")
    conditions = {c["type"]: c["status"] for c in s["conditions"]}
    assert conditions == {"PodScheduled": "True", "Initialized": "True", "ContainersReady": "True", "Ready": "True"}
    assert st.set_ip(s, ["10.213.0.5"])["podIPs"] == [{"ip": "10.213.0.5"}]


# --- probes: started, ready and the pod's conditions ------------------------------------------------


def conditions(s: st.Status) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c.get("reason", ""), c.get("message", "")) for c in s["conditions"]}


def test_a_startup_probe_holds_started_and_a_readiness_probe_holds_ready() -> None:
    s = st.running(st.initial([], ["app"]), "app", 1.0, started=False)
    assert (st.container(s, "app")["started"], st.container(s, "app")["ready"]) == (False, False)
    s = st.running(st.initial([], ["app"]), "app", 1.0, started=False, ready=True)
    assert st.container(s, "app")["ready"] is False, "not ready before started"
    s = st.running(st.initial([], ["app"]), "app", 1.0, started=True, ready=False)
    assert (st.container(s, "app")["started"], st.container(s, "app")["ready"]) == (True, False)
    s = st.probed(s, "app", started=True, ready=True)
    assert st.container(s, "app")["ready"] is True
    s = st.probed(s, "app", started=True, ready=False)
    assert st.container(s, "app")["ready"] is False
    done = st.terminated(st.probed(s, "app", started=True, ready=True), "app", 137, 1.0, 2.0)
    assert st.probed(done, "app", started=True, ready=True) == done, "a container that does not run is not ready"
    assert (st.container(done, "app")["started"], st.container(done, "app")["ready"]) == (False, False)


def test_conditions_follow_readiness_with_transition_times_and_reasons() -> None:
    s = st.running(st.initial([], ["app", "web"]), "app", 1.0)
    s = st.running(s, "web", 1.0, ready=False)
    s = st.with_phase(s, "Running", at=100.0)
    assert conditions(s) == {
        "PodScheduled": ("True", "", ""),
        "Initialized": ("True", "", ""),
        "ContainersReady": ("False", "ContainersNotReady", "containers with unready status: [web]"),
        "Ready": ("False", "ContainersNotReady", "containers with unready status: [web]"),
    }
    ready_since = {c["type"]: c["lastTransitionTime"] for c in s["conditions"]}
    assert ready_since["Ready"] == st.now_iso(100.0)
    again = st.with_phase(s, "Running", at=200.0)
    assert again == s, "no flip, no new transition time"
    s = st.with_phase(st.probed(s, "web", started=True, ready=True), "Running", at=300.0)
    assert conditions(s)["Ready"] == ("True", "", "")
    times = {c["type"]: c["lastTransitionTime"] for c in s["conditions"]}
    assert (times["Ready"], times["ContainersReady"], times["Initialized"]) == (
        st.now_iso(300.0), st.now_iso(300.0), st.now_iso(100.0))
    s = st.with_phase(st.probed(s, "app", started=True, ready=False), "Running", at=400.0)
    assert conditions(s)["Ready"] == ("False", "ContainersNotReady", "containers with unready status: [app]")


def test_a_native_sidecar_gates_initialized_and_counts_for_ready() -> None:
    sidecars = {"istio-proxy"}
    s = st.initial(["istio-validation", "istio-proxy"], ["app"])
    s = st.running(s, "istio-validation", 1.0)
    s = st.with_phase(s, "Pending", sidecars)
    assert conditions(s)["Initialized"] == ("False", "ContainersNotInitialized",
                                            "containers with incomplete status: [istio-validation istio-proxy]")
    s = st.terminated(s, "istio-validation", 0, 1.0, 2.0)
    s = st.running(s, "istio-proxy", 2.0, started=False)
    s = st.with_phase(s, "Pending", sidecars)
    assert conditions(s)["Initialized"][2] == "containers with incomplete status: [istio-proxy]"
    s = st.probed(s, "istio-proxy", started=True, ready=False)
    s = st.running(s, "app", 3.0)
    s = st.with_phase(s, "Running", sidecars)
    assert conditions(s)["Initialized"] == ("True", "", "")
    assert conditions(s)["Ready"] == ("False", "ContainersNotReady", "containers with unready status: [istio-proxy]")
    assert st.ready_count(s, sidecars) == (1, 2)
    s = st.with_phase(st.probed(s, "istio-proxy", started=True, ready=True), "Running", sidecars)
    assert conditions(s)["Ready"] == ("True", "", "")
    assert st.ready_count(s, sidecars) == (2, 2)
    # The sidecar restarts: the pod stays initialized (its app started), but is not ready.
    s = st.back_off(st.terminated(s, "istio-proxy", 137, 2.0, 9.0), "istio-proxy", 1)
    s = st.with_phase(s, "Running", sidecars)
    assert conditions(s)["Initialized"] == ("True", "", "")
    assert conditions(s)["Ready"][0] == "False"
    assert st.ready_count(s, sidecars) == (1, 2)
    assert st.ready_count(s) == (1, 1), "without sidecars, only the containers count"


def test_terminal_phases_say_why_the_pod_is_not_ready() -> None:
    s = st.terminated(st.running(st.initial([], ["app"]), "app", 1.0), "app", 0, 1.0, 2.0)
    assert conditions(st.with_phase(s, "Succeeded"))["Ready"] == ("False", "PodCompleted", "")
    assert conditions(st.with_phase(s, "Failed"))["ContainersReady"] == ("False", "PodFailed", "")


def test_ever_started() -> None:
    s = st.initial([], ["app"])
    assert not st.ever_started(st.container(s, "app"))
    s = st.running(s, "app", 1.0)
    assert st.ever_started(st.container(s, "app"))
    s = st.back_off(st.terminated(s, "app", 1, 1.0, 2.0), "app", 1)
    assert st.ever_started(st.container(s, "app")), "waiting to restart: it did run"
