"""The embedded runtime as the repair controller's ``PodBackend``.

The runtime's store has no watch API, so ``watch`` reads it every ``interval`` seconds and
reports what changed (a pod's manifest or status) as Kubernetes' list and watch would:
every pod first, then ADDED, MODIFIED, DELETED. Pods being removed are not shown (as
``StorePods``). ``delete`` replaces the pod as a ReplicaSet would (``Runtime.recreate``: a new
uid, a new sandbox, a new CNI ADD), only if it still has the uid the controller saw; ``label``
sets the label on the stored manifest; the network namespace is the one the runtime recorded.
Events go to the runtime's event table; an event about a pod that was replaced is recorded on
its replacement.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from weir.netns import NetNS
from weir.platform import PodBackendError, PodConflict, PodEvent
from weir.runtime.pods import PodError, PodPreconditionError, Runtime


def _identity(pod: Mapping[str, Any]) -> tuple[str, str, str]:
    metadata = pod.get("metadata") or {}
    return (str(metadata.get("namespace") or "default"), str(metadata.get("name") or ""),
            str(metadata.get("uid") or ""))


class RuntimePods:
    """This machine's pods (``PodBackend``), read from the runtime's store every ``interval`` s."""

    def __init__(self, runtime: Runtime, interval: float = 1.0) -> None:
        if not interval > 0:
            raise ValueError(f"interval: {interval!r} must be more than 0 seconds")
        self.runtime = runtime
        self.interval = interval
        self._replaced: dict[str, str] = {}  # old uid -> the uid of the pod that replaced it
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[str, Mapping[str, Any]]] = {}

    def watch(self, stop: threading.Event) -> Iterator[PodEvent]:
        # What was seen is kept across calls: a watch started again (after an error) begins, as a
        # Kubernetes relist does, with every pod, and reports the pods that vanished meanwhile.
        resync = True
        while not stop.is_set():
            try:
                records = [r for r in self.runtime.pods() if not r.deleting]
            except (sqlite3.Error, OSError) as exc:  # the store is unreadable for now
                raise PodBackendError(f"reading the runtime's pods: {exc}") from exc
            now: dict[str, tuple[str, Mapping[str, Any]]] = {}
            for record in records:
                doc = record.as_object()
                now[record.uid] = (json.dumps(doc, sort_keys=True), doc)
            seen = self._seen
            for uid, (text, pod) in now.items():
                before = seen.get(uid)
                if before is None:
                    yield PodEvent("ADDED", pod)
                elif resync or before[0] != text:
                    yield PodEvent("MODIFIED", pod)
            for uid in seen.keys() - now.keys():
                yield PodEvent("DELETED", seen[uid][1])
            self._seen, resync = now, False
            stop.wait(self.interval)

    def wake(self) -> None:
        """``watch`` waits on the stop event itself: nothing to do."""

    def netns(self, pod: Mapping[str, Any]) -> str:
        namespace, name, uid = _identity(pod)
        record = self.runtime.store.by_uid(uid)
        if record is None or record.deleting:
            raise PodConflict(f"pod {namespace}/{name} (uid {uid}) is gone")
        if not record.netns or not NetNS(record.netns).exists():
            raise PodBackendError(f"pod {namespace}/{name} has no network namespace")
        return record.netns

    def delete(self, pod: Mapping[str, Any]) -> None:
        namespace, name, uid = _identity(pod)
        try:
            new = self.runtime.recreate(namespace, name, uid)
        except PodPreconditionError as exc:
            raise PodConflict(str(exc)) from None
        except PodError as exc:
            raise PodBackendError(str(exc)) from None
        with self._lock:
            self._replaced[uid] = new.uid
        self.runtime.store.event(new.uid, "Normal", "Replaced", f"replaces pod uid {uid}, deleted as broken")

    def label(self, pod: Mapping[str, Any], key: str, value: str) -> None:
        namespace, name, uid = _identity(pod)
        try:
            self.runtime.set_label(namespace, name, key, value, uid)
        except PodPreconditionError as exc:
            raise PodConflict(str(exc)) from None

    def event(self, pod: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        _, _, uid = _identity(pod)
        with self._lock:
            target = uid if self.runtime.store.by_uid(uid) is not None else self._replaced.pop(uid, None)
        if target:
            self.runtime.store.event(target, type_, reason, message)
