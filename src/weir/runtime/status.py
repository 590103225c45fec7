"""Pod status as Kubernetes keeps it, as pure functions over plain dicts (the JSON shape the
API shows: ``phase``, ``podIP``, ``initContainerStatuses``, ``containerStatuses`` with
``state``, ``lastState``, ``restartCount``), so that tools written for Kubernetes (Istio's
repair controller among them) read the embedded runtime's pods unchanged.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

Status = dict[str, Any]

BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0


def now_iso(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def _container(name: str, waiting_reason: str) -> dict[str, Any]:
    return {"name": name, "state": {"waiting": {"reason": waiting_reason}}, "lastState": {}, "ready": False,
            "restartCount": 0, "started": False}


def initial(init_names: Sequence[str], names: Sequence[str]) -> Status:
    waiting = "PodInitializing" if init_names else "ContainerCreating"
    return {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now_iso()}],
        "initContainerStatuses": [_container(n, "PodInitializing") for n in init_names],
        "containerStatuses": [_container(n, waiting) for n in names],
        "startTime": now_iso(),
    }


def _find(status: Status, name: str) -> dict[str, Any]:
    for key in ("initContainerStatuses", "containerStatuses"):
        for entry in status.get(key, []):
            if entry["name"] == name:
                return dict(entry)
    raise KeyError(f"no container {name!r} in the pod status")


def _put(status: Status, entry: dict[str, Any]) -> Status:
    out = copy.deepcopy(status)
    for key in ("initContainerStatuses", "containerStatuses"):
        for i, old in enumerate(out.get(key, [])):
            if old["name"] == entry["name"]:
                out[key][i] = entry
                return out
    raise KeyError(f"no container {entry['name']!r} in the pod status")


def container(status: Status, name: str) -> dict[str, Any]:
    return _find(status, name)


def set_ip(status: Status, ips: Sequence[str]) -> Status:
    out = copy.deepcopy(status)
    if ips:
        out["podIP"] = ips[0]
        out["podIPs"] = [{"ip": ip} for ip in ips]
    return out


def running(status: Status, name: str, at: float) -> Status:
    entry = _find(status, name)
    entry.update(state={"running": {"startedAt": now_iso(at)}}, ready=True, started=True)
    return _put(status, entry)


def terminated(status: Status, name: str, exit_code: int, started: float | None, finished: float,
               message: str = "", signal: int | None = None) -> Status:
    entry = _find(status, name)
    term: dict[str, Any] = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                            "finishedAt": now_iso(finished)}
    if started is not None:
        term["startedAt"] = now_iso(started)
    if message:
        term["message"] = message
    if signal is not None:
        term["signal"] = signal
    entry.update(state={"terminated": term}, ready=False, started=False)
    return _put(status, entry)


def start_failed(status: Status, name: str, message: str, at: float) -> Status:
    """The process could not be started (no such command, permission): exit code 128 as a runtime reports."""
    status = terminated(status, name, 128, None, at, message)
    entry = _find(status, name)
    entry["state"]["terminated"]["reason"] = "StartError"
    return _put(status, entry)


def back_off(status: Status, name: str, delay: float) -> Status:
    """The container will be restarted after ``delay``: its last state is kept, the count grows."""
    entry = _find(status, name)
    last = entry.get("state", {})
    entry.update(lastState=last if "terminated" in last else entry.get("lastState", {}),
                 restartCount=int(entry.get("restartCount", 0)) + 1, ready=False, started=False,
                 state={"waiting": {"reason": "CrashLoopBackOff",
                                    "message": f"back-off {delay:g}s restarting failed container={name}"}})
    return _put(status, entry)


def backoff_delay(restarts: int, initial_delay: float = BACKOFF_INITIAL, maximum: float = BACKOFF_MAX) -> float:
    """Kubernetes' crash-loop back-off: 10 s doubling to 5 min (scaled by ``initial_delay``)."""
    return float(min(maximum, initial_delay * (2 ** max(0, restarts))))


def with_phase(status: Status, phase: str) -> Status:
    out = copy.deepcopy(status)
    out["phase"] = phase
    ready = phase == "Running" and all(c.get("ready") for c in out.get("containerStatuses", []))
    initialized = all(completed(c) or c.get("started") for c in out.get("initContainerStatuses", []))
    conditions = {c["type"]: c for c in out.get("conditions", [])}
    for kind, value in (("Initialized", initialized), ("ContainersReady", ready), ("Ready", ready)):
        old = conditions.get(kind)
        text = "True" if value else "False"
        if old is None or old.get("status") != text:
            conditions[kind] = {"type": kind, "status": text, "lastTransitionTime": now_iso()}
    out["conditions"] = list(conditions.values())
    return out


def completed(entry: dict[str, Any]) -> bool:
    term = entry.get("state", {}).get("terminated")
    return bool(term) and term.get("exitCode") == 0
