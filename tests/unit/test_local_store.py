"""The runtime's SQLite store and the node agent's view of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from weir.platform.local import DuplicatePodError, PodStore, StorePods

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
       "spec": {"containers": [{"name": "app", "command": ["sleep", "1"]}]}}


def test_create_get_update_delete_survive_reopening(tmp_path: Path) -> None:
    db = str(tmp_path / "state" / "runtime.db")
    store = PodStore(db)
    store.create("u1", POD, {"phase": "Pending"})
    with pytest.raises(DuplicatePodError, match="shop/web already exists"):
        store.create("u2", POD, {"phase": "Pending"})
    store.update("u1", status={"phase": "Running", "podIP": "10.213.0.9"}, netns="/var/run/netns/x", shim_pid=42)
    again = PodStore(db).get("shop", "web")
    assert again is not None
    assert again.phase == "Running"
    assert again.netns == "/var/run/netns/x"
    assert again.shim_pid == 42
    assert again.as_object()["status"]["podIP"] == "10.213.0.9"
    assert [r.name for r in store.pods("shop")] == ["web"]
    assert store.pods("other") == []
    store.event("u1", "Normal", "Started", "Started container app")
    assert store.events("u1")[0]["reason"] == "Started"
    with pytest.raises(ValueError, match="cannot update manifest"):
        store.update("u1", manifest={})
    store.delete("u1")
    assert store.get("shop", "web") is None
    assert store.events("u1") == []


def test_the_agent_sees_pods_but_not_those_being_deleted(tmp_path: Path) -> None:
    db = str(tmp_path / "runtime.db")
    assert StorePods(db).get("shop", "web") is None, "no database yet: no pod"
    store = PodStore(db)
    store.create("u1", POD, {"phase": "Pending"})
    seen = StorePods(db).get("shop", "web")
    assert seen is not None
    assert seen["metadata"]["uid"] == "u1"
    store.update("u1", deleting=True)
    assert StorePods(db).get("shop", "web") is None
