"""Where pods come from, behind small protocols: the embedded runtime, a directory of
manifests (static pods), or the Kubernetes API. The node agent depends only on ``PodSource``
(one pod by name, for the plugin's ADD) and ``PodBackend`` (this node's pods as a stream of
changes, and what the repair controller may do to them). Pods are plain mappings in the
Kubernetes API's JSON shape (camelCase keys, ``status.initContainerStatuses[].lastState``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import yaml


class PodSource(Protocol):
    def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The Pod manifest, or None when there is no such pod (yet)."""


class PodBackendError(Exception):
    """A backend call failed for now (API unreachable, a command failed); it may be retried."""


class PodConflict(PodBackendError):
    """The pod is gone or changed since it was seen (a precondition on its uid or
    resourceVersion failed): retrying with the old copy is pointless."""


@dataclass(frozen=True)
class PodEvent:
    """One change to a pod of this node, as a Kubernetes watch reports it."""

    kind: Literal["ADDED", "MODIFIED", "DELETED"]
    pod: Mapping[str, Any]


class PodBackend(Protocol):
    """This node's pods for the repair controller (Kubernetes: list/watch and the API; the
    embedded runtime: its store and its verbs)."""

    def watch(self, stop: threading.Event) -> Iterator[PodEvent]:
        """Every pod of this node (ADDED) and then each change, until ``stop`` is set. Raises
        PodBackendError when the source fails; the caller starts a new watch."""

    def wake(self) -> None:
        """Called from another thread after ``stop`` was set: make a blocked ``watch`` return soon."""

    def netns(self, pod: Mapping[str, Any]) -> str:
        """The path of the running pod's network namespace; PodBackendError when not found."""

    def delete(self, pod: Mapping[str, Any]) -> None:
        """Delete the pod, only if it is still this uid (and resourceVersion, where there is one):
        PodConflict otherwise. Its controller (ReplicaSet, or the runtime) makes a new one."""

    def label(self, pod: Mapping[str, Any], key: str, value: str) -> None:
        """Set one label on the pod (still this uid, else PodConflict)."""

    def event(self, pod: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Record an Event about the pod (``type_`` Normal or Warning)."""


_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class DirectoryPods:
    """Pod manifests (YAML or JSON, one per file) in a directory. The directory is listed on
    every lookup, so a pod written just before its CNI ADD is found; a file is parsed again only
    when its size, mtime or inode changed. Unreadable files are skipped."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._parsed: dict[str, tuple[tuple[int, int, int], Any]] = {}

    def _load(self, path: str) -> Any:
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._parsed.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            doc = json.loads(text) if path.endswith(".json") else yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
        except (OSError, ValueError, yaml.YAMLError):
            doc = None
        self._parsed[path] = (key, doc)
        return doc

    def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            entries = sorted(os.listdir(self.directory))
        except OSError:
            return None
        paths = {os.path.join(self.directory, e) for e in entries if e.endswith((".yaml", ".yml", ".json"))}
        for path in list(self._parsed):
            if path not in paths:
                del self._parsed[path]
        for path in sorted(paths):
            doc = self._load(path)
            if not isinstance(doc, dict) or doc.get("kind", "Pod") != "Pod":
                continue
            meta = doc.get("metadata") or {}
            if meta.get("name") == name and (meta.get("namespace") or "default") == namespace:
                return doc
        return None
