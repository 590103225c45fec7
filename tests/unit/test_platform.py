"""DirectoryPods: finds pods written just before their ADD, and re-reads only changed files."""

from __future__ import annotations

import os
from pathlib import Path

from weir.platform import DirectoryPods


def manifest(name: str, label: str) -> str:
    return f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{v: '{label}'}}}}\n"


def test_new_changed_and_removed_files_are_seen(tmp_path: Path) -> None:
    pods = DirectoryPods(str(tmp_path))
    assert pods.get("shop", "web") is None
    (tmp_path / "web.yaml").write_text(manifest("web", "1"))
    found = pods.get("shop", "web")
    assert found is not None
    assert found["metadata"]["labels"] == {"v": "1"}
    (tmp_path / "web.yaml").write_text(manifest("web", "22"))  # a new size: re-read
    found = pods.get("shop", "web")
    assert found is not None
    assert found["metadata"]["labels"] == {"v": "22"}
    os.unlink(tmp_path / "web.yaml")
    assert pods.get("shop", "web") is None
    (tmp_path / "broken.yaml").write_text("metadata: [unclosed")
    (tmp_path / "other.json").write_text('{"kind": "Pod", "metadata": {"name": "api", "namespace": "shop"}}')
    assert pods.get("shop", "api") is not None, "a broken file does not hide the others"
    assert pods.get("default", "api") is None
