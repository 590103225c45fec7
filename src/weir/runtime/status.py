"""Pod status as Kubernetes keeps it, as pure functions over plain dicts (the JSON shape the
API shows: ``phase``, ``podIP``, ``initContainerStatuses``, ``containerStatuses`` with
``state``, ``lastState``, ``restartCount``, ``started``, ``ready``, and the pod's
``conditions``), so that tools written for Kubernetes (Istio's repair controller among them)
read the embedded runtime's pods unchanged.

Native sidecars (init containers with ``restartPolicy: Always``) are told apart by name: the
functions that need to know take ``sidecars``, the names of those init containers.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Collection, Sequence
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


def running(status: Status, name: str, at: float, *, started: bool = True, ready: bool | None = None) -> Status:
    """The container runs since ``at``. ``started`` is false while a startup probe has not passed;
    ``ready`` (by default: ``started``) is false while a readiness probe has not passed."""
    entry = _find(status, name)
    entry.update(state={"running": {"startedAt": now_iso(at)}}, started=started,
                 ready=started if ready is None else ready and started)
    return _put(status, entry)


def probed(status: Status, name: str, *, started: bool, ready: bool) -> Status:
    """A running container's probe results (a container that does not run stays unstarted, unready)."""
    entry = _find(status, name)
    if "running" not in entry.get("state", {}):
        return status
    entry.update(started=started, ready=ready and started)
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


def with_phase(status: Status, phase: str, sidecars: Collection[str] = (), at: float | None = None) -> Status:
    """The pod's ``phase`` and its conditions as kubelet derives them from the container statuses:
    ``Initialized`` (every init container completed and every native sidecar started, or any
    container started already), ``ContainersReady`` and ``Ready`` (every container and native
    sidecar ready). A condition's ``lastTransitionTime`` (``at``, default now) changes only when
    its status flips; a false one says why in ``reason`` and ``message``."""
    out = copy.deepcopy(status)
    out["phase"] = phase
    conditions = {c["type"]: c for c in out.get("conditions", [])}
    for kind, why in (("Initialized", _not_initialized(out, phase, sidecars)),
                      ("ContainersReady", _not_ready(out, phase, sidecars)),
                      ("Ready", _not_ready(out, phase, sidecars))):
        old = conditions.get(kind)
        text = "False" if why else "True"
        new: dict[str, Any] = {"type": kind, "status": text}
        if why:
            new["reason"], new["message"] = why
            if not new["message"]:
                del new["message"]
        flipped = old is None or old.get("status") != text
        new["lastTransitionTime"] = now_iso(at) if old is None or flipped else old.get("lastTransitionTime")
        conditions[kind] = new
    out["conditions"] = list(conditions.values())
    return out


def _not_initialized(status: Status, phase: str, sidecars: Collection[str]) -> tuple[str, str] | None:
    inits = status.get("initContainerStatuses", [])
    if not inits or phase == "Succeeded" or any(ever_started(c) for c in status.get("containerStatuses", [])):
        return None  # a regular container started: the pod was initialized (its sidecars may restart since)
    incomplete = [c["name"] for c in inits
                  if not (c.get("started") if c["name"] in sidecars else completed(c))]
    return ("ContainersNotInitialized", f"containers with incomplete status: {_names(incomplete)}") \
        if incomplete else None


def _not_ready(status: Status, phase: str, sidecars: Collection[str]) -> tuple[str, str] | None:
    if phase == "Succeeded":
        return "PodCompleted", ""
    if phase == "Failed":
        return "PodFailed", ""
    entries = [c for c in status.get("initContainerStatuses", []) if c["name"] in sidecars]
    unready = [c["name"] for c in (*entries, *status.get("containerStatuses", [])) if not c.get("ready")]
    return ("ContainersNotReady", f"containers with unready status: {_names(unready)}") if unready else None


def _names(names: Sequence[str]) -> str:
    return f"[{' '.join(names)}]"  # as kubelet prints a Go slice


def ever_started(entry: dict[str, Any]) -> bool:
    """The container has run at some point (it runs, ended, or ended before a restart)."""
    state = entry.get("state", {})
    return "running" in state or "terminated" in state or "terminated" in (entry.get("lastState") or {})


def ready_count(status: Status, sidecars: Collection[str] = ()) -> tuple[int, int]:
    """kubectl's READY column, ``(ready, total)``: the containers and the native sidecars; a sidecar
    counts as ready only once it has started."""
    entries = [c for c in status.get("initContainerStatuses", []) if c["name"] in sidecars]
    ready = sum(1 for c in entries if c.get("started") and c.get("ready"))
    containers = status.get("containerStatuses", [])
    return ready + sum(1 for c in containers if c.get("ready")), len(entries) + len(containers)


def completed(entry: dict[str, Any]) -> bool:
    term = entry.get("state", {}).get("terminated")
    return bool(term) and term.get("exitCode") == 0
