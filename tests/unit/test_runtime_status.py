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
