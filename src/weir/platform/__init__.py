"""Where pods come from, behind a small protocol: the embedded runtime, a directory of
manifests (static pods), or the Kubernetes API. The node agent depends only on ``PodSource``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Protocol

import yaml


class PodSource(Protocol):
    def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The Pod manifest, or None when there is no such pod (yet)."""


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
