"""The Kubernetes API as the repair controller's ``PodBackend``, through the maintained
``kubernetes`` client (kubernetes-client/python).

- ``watch``: list then watch the pods of this node (field selector ``spec.nodeName=<node>`` plus
  the configured label and field selectors), from the list's resourceVersion, with bookmarks; an
  expired watch (410 Gone) lists again and reports what vanished meanwhile as DELETED.
- ``delete``: DELETE with preconditions ``{uid, resourceVersion}`` (Istio's deletePods).
- ``label``: JSON merge patch of ``metadata.labels`` on the ``status`` subresource (RBAC
  ``pods/status: patch`` is enough, as in Istio); the patch carries the pod's uid, so the label
  never lands on a newer pod of the same name.
- ``event``: a core/v1 Event about the pod, source component ``cni-repair`` (Istio's).
- ``netns``: found as Istio does, by scanning ``<proc root>/*/ns/net`` (the host's /proc,
  mounted at /host/proc in the DaemonSet) for the namespace that holds the pod IP, and taking
  the oldest process in it (the sandbox's pause process), once per distinct namespace.

The API object (``CoreV1Api``), the watch factory and the address lookup come in through the
constructor, so the request shapes are tested with fakes; ``connect`` builds the real ones.
Not run against a real cluster in this project (none can be installed here).
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from weir import netns as netns_mod
from weir.netns import NetNS
from weir.platform import PodBackendError, PodConflict, PodEvent

DEFAULT_PROC_ROOT = "/host/proc"
EVENT_COMPONENT = "cni-repair"
EVENT_MESSAGE_LIMIT = 1024  # what kubectl shows whole; longer error texts are cut
MERGE_PATCH = "application/merge-patch+json"
_GONE = 410
_CONFLICTS = (404, 409, 422)  # not found, precondition failed, uid mismatch in the patch

Addresses = Callable[[str], Collection[str]]


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = pod.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _who(pod: Mapping[str, Any]) -> str:
    meta = _meta(pod)
    return f"pod {meta.get('namespace')}/{meta.get('name')}"


def _describe(exc: Exception) -> str:
    return f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else str(exc)


def _error(action: str, pod: Mapping[str, Any], exc: Exception) -> PodBackendError:
    text = f"{action} {_who(pod)}: {_describe(exc)}"
    conflict = isinstance(exc, ApiException) and exc.status in _CONFLICTS
    return PodConflict(text) if conflict else PodBackendError(text)


_API_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError)


# ---- the pod's network namespace ----------------------------------------------------------------


def _namespace_addresses(path: str) -> list[str]:
    return [a.split("/")[0] for a in netns_mod.addresses(NetNS(path))]


def _start_time(proc_root: str, pid: str) -> int | None:
    try:
        with open(os.path.join(proc_root, pid, "stat")) as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
    except (OSError, IndexError, ValueError):
        return None


def find_netns(pod_ip: str, proc_root: str = DEFAULT_PROC_ROOT, addresses: Addresses = _namespace_addresses) -> str:
    """``<proc root>/<pid>/ns/net`` of the oldest process whose network namespace has an
    interface with ``pod_ip``; each distinct namespace is looked into once."""
    try:
        target = ipaddress.ip_address(pod_ip)
    except ValueError:
        raise PodBackendError(f"pod IP {pod_ip!r} is not an IP address") from None
    try:
        entries = [e for e in os.listdir(proc_root) if e.isdigit()]
    except OSError as exc:
        raise PodBackendError(f"cannot read {proc_root}: {exc.strerror}") from None
    groups: dict[tuple[int, int], list[tuple[float, int]]] = {}
    for pid in entries:
        try:
            st = os.stat(os.path.join(proc_root, pid, "ns", "net"))
        except OSError:
            continue  # the process is gone, or is a kernel thread
        start = _start_time(proc_root, pid)
        # As Istio: a process whose start time cannot be read is used only when nothing else is.
        groups.setdefault((st.st_dev, st.st_ino), []).append((float("inf") if start is None else start, int(pid)))
    best: tuple[float, int] | None = None
    for procs in groups.values():
        oldest = min(procs)
        try:
            found = addresses(os.path.join(proc_root, str(oldest[1]), "ns", "net"))
        except OSError:
            continue  # gone meanwhile, or not enterable
        for addr in found:
            try:
                match = ipaddress.ip_address(addr.split("/")[0]) == target
            except ValueError:
                continue
            if match and (best is None or oldest < best):
                best = oldest
    if best is None:
        raise PodBackendError(f"no network namespace under {proc_root} has the pod IP {pod_ip}")
    return os.path.join(proc_root, str(best[1]), "ns", "net")


def _drain(resp: Any) -> None:
    """Read and release a raw response. Responses are taken raw (``_preload_content=False``):
    nothing in them is needed, and the client's strict models would reject fields they do not know."""
    if resp is not None and hasattr(resp, "release_conn"):
        _ = resp.data
        resp.release_conn()


def _plain_watch() -> Any:
    """The client's Watch, told to hand pods over as the JSON the API sent: no model classes,
    whose strict validation would stop the watch at the first field a model does not expect."""
    from kubernetes import watch

    return watch.Watch(return_type="object")  # type: ignore[no-untyped-call]


# ---- the backend --------------------------------------------------------------------------------


class KubePods:
    """The pods of node ``node_name`` through the Kubernetes API (``PodBackend``)."""

    def __init__(self, core: Any, *, node_name: str, label_selector: str = "", field_selector: str = "",
                 watch_factory: Callable[[], Any] | None = None, proc_root: str = DEFAULT_PROC_ROOT,
                 addresses: Addresses = _namespace_addresses, watch_timeout: int = 300,
                 request_timeout: float = 30.0) -> None:
        if not node_name:
            raise ValueError("REPAIR_NODE_NAME: the node name is required with Kubernetes "
                             "(the DaemonSet sets it from spec.nodeName)")
        self.core = core
        self.node_name = node_name
        self.label_selector = label_selector
        self.field_selector = ",".join(s for s in (field_selector, f"spec.nodeName={node_name}") if s)
        self._watch_factory = watch_factory or _plain_watch
        self.proc_root = proc_root
        self._addresses = addresses
        self.watch_timeout = watch_timeout
        self.request_timeout = request_timeout
        self._current: Any = None
        self._known: dict[str, Mapping[str, Any]] = {}

    # ---- list / watch ---------------------------------------------------------------------------

    def _selectors(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field_selector": self.field_selector}
        if self.label_selector:
            out["label_selector"] = self.label_selector
        return out

    def _list(self) -> tuple[str, list[Mapping[str, Any]]]:
        resp = self.core.list_pod_for_all_namespaces(**self._selectors(), _preload_content=False,
                                                     _request_timeout=self.request_timeout)
        doc = json.loads(resp.data)
        _drain(resp)
        items = [p for p in doc.get("items") or [] if isinstance(p, Mapping)]
        return str((doc.get("metadata") or {}).get("resourceVersion") or ""), items

    def watch(self, stop: threading.Event) -> Iterator[PodEvent]:
        known = self._known  # kept across calls: a watch started again after an error reports what vanished
        version = ""
        while not stop.is_set():
            if not version:
                try:
                    version, items = self._list()
                except _API_ERRORS as exc:
                    raise PodBackendError(f"listing the pods of node {self.node_name}: {_describe(exc)}") from exc
                listed = {str(_meta(p).get("uid")): p for p in items}
                for uid, pod in listed.items():
                    yield PodEvent("MODIFIED" if uid in known else "ADDED", pod)
                for uid in known.keys() - listed.keys():
                    yield PodEvent("DELETED", known[uid])
                known.clear()
                known.update(listed)
            w = self._watch_factory()
            self._current = w
            try:
                for event in w.stream(self.core.list_pod_for_all_namespaces, **self._selectors(),
                                      resource_version=version, timeout_seconds=self.watch_timeout,
                                      allow_watch_bookmarks=True,
                                      _request_timeout=(10, self.watch_timeout + 30)):
                    kind, obj = event.get("type"), event.get("raw_object")
                    if not isinstance(obj, Mapping):
                        continue
                    version = str(_meta(obj).get("resourceVersion") or version)
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        uid = str(_meta(obj).get("uid"))
                        if kind == "DELETED":
                            known.pop(uid, None)
                        else:
                            known[uid] = obj
                        yield PodEvent(kind, obj)
                    if stop.is_set():
                        break
            except ApiException as exc:
                if exc.status != _GONE:
                    raise PodBackendError(f"watching the pods of node {self.node_name}: {exc.status} {exc.reason}") \
                        from exc
                version = ""  # expired: list again
            except _API_ERRORS as exc:
                if stop.is_set():
                    return  # wake() cut the connection
                raise PodBackendError(f"watching the pods of node {self.node_name}: {_describe(exc)}") from exc
            finally:
                self._current = None
                w.stop()

    def wake(self) -> None:
        current = self._current
        if current is not None:
            current.stop()

    # ---- actions --------------------------------------------------------------------------------

    def netns(self, pod: Mapping[str, Any]) -> str:
        status = pod.get("status")
        ip = str(status.get("podIP") or "") if isinstance(status, Mapping) else ""
        if not ip:
            raise PodBackendError(f"{_who(pod)} has no pod IP")
        return find_netns(ip, self.proc_root, self._addresses)

    def delete(self, pod: Mapping[str, Any]) -> None:
        meta = _meta(pod)
        preconditions = k8s.V1Preconditions(uid=str(meta.get("uid")),
                                            resource_version=str(meta.get("resourceVersion") or "") or None)
        try:
            _drain(self.core.delete_namespaced_pod(str(meta.get("name")), str(meta.get("namespace")),
                                                   body=k8s.V1DeleteOptions(preconditions=preconditions),
                                                   _preload_content=False, _request_timeout=self.request_timeout))
        except _API_ERRORS as exc:
            raise _error("deleting", pod, exc) from exc

    def label(self, pod: Mapping[str, Any], key: str, value: str) -> None:
        meta = _meta(pod)
        patch = {"metadata": {"uid": str(meta.get("uid")), "labels": {key: value}}}
        try:
            _drain(self.core.patch_namespaced_pod_status(str(meta.get("name")), str(meta.get("namespace")), patch,
                                                         _content_type=MERGE_PATCH, _preload_content=False,
                                                         _request_timeout=self.request_timeout))
        except _API_ERRORS as exc:
            raise _error("labelling", pod, exc) from exc

    def event(self, pod: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = _meta(pod)
        name, namespace = str(meta.get("name")), str(meta.get("namespace"))
        now = datetime.now(UTC)
        body = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(generate_name=f"{name}.", namespace=namespace),
            involved_object=k8s.V1ObjectReference(api_version="v1", kind="Pod", name=name, namespace=namespace,
                                                  uid=str(meta.get("uid")),
                                                  resource_version=str(meta.get("resourceVersion") or "") or None),
            type=type_, reason=reason, message=message[:EVENT_MESSAGE_LIMIT], count=1,
            first_timestamp=now, last_timestamp=now,
            source=k8s.V1EventSource(component=EVENT_COMPONENT, host=self.node_name),
            reporting_component=EVENT_COMPONENT, reporting_instance=self.node_name)
        try:
            _drain(self.core.create_namespaced_event(namespace, body, _preload_content=False,
                                                     _request_timeout=self.request_timeout))
        except _API_ERRORS as exc:
            raise _error("recording an event about", pod, exc) from exc


def connect(kubeconfig: str = "", **kwargs: Any) -> KubePods:
    """A KubePods over the real API: the in-cluster service account when ``kubeconfig`` is empty
    and the process runs in a pod, else the kubeconfig file (or ``$KUBECONFIG``/``~/.kube/config``)."""
    from kubernetes import config

    if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(config_file=kubeconfig or None)  # type: ignore[no-untyped-call]
    return KubePods(k8s.CoreV1Api(), **kwargs)


class PodLookup:
    """The node agent's pod lookup through the API (``PodSource``): the pods this node's backend
    has seen in its watch, else one GET. None for a pod that does not exist (yet)."""

    def __init__(self, pods: KubePods) -> None:
        self.pods = pods

    def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        for pod in list(self.pods._known.values()):
            meta = pod.get("metadata") or {}
            if meta.get("namespace") == namespace and meta.get("name") == name:
                return pod
        try:
            resp = self.pods.core.read_namespaced_pod(name, namespace, _preload_content=False,
                                                      _request_timeout=self.pods.request_timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        doc = json.loads(resp.data)
        _drain(resp)
        return doc if isinstance(doc, dict) else None
