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


class DirectoryPods:
    """Pod manifests (YAML or JSON, one per file) in a directory, read on every lookup so that
    a pod written just before its CNI ADD is found. Unreadable files are skipped."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            entries = sorted(os.listdir(self.directory))
        except OSError:
            return None
        for entry in entries:
            if not entry.endswith((".yaml", ".yml", ".json")):
                continue
            try:
                with open(os.path.join(self.directory, entry), encoding="utf-8") as f:
                    text = f.read()
                doc = json.loads(text) if entry.endswith(".json") else yaml.safe_load(text)
            except (OSError, ValueError, yaml.YAMLError):
                continue
            if not isinstance(doc, dict) or doc.get("kind", "Pod") != "Pod":
                continue
            meta = doc.get("metadata") or {}
            if meta.get("name") == name and (meta.get("namespace") or "default") == namespace:
                return doc
        return None
