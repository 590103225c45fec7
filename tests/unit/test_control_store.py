"""weir.control.store and the ``weir apply/get/delete`` commands, over temporary SQLite files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from weir.api.load import load_documents
from weir.api.service import Service
from weir.cli.main import main
from weir.control.store import ConfigStore, StoreError


def _service(name: str, port: int = 9080, ns: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns is not None:
        meta["namespace"] = ns
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port}]}}


VS = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "reviews"},
      "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}}


def parsed(*docs: dict[str, Any]) -> list[Any]:
    return load_documents(json.dumps(list(docs)), "test", json.loads)


def test_apply_created_unchanged_configured_and_delete(tmp_path: Path) -> None:
    store = ConfigStore(str(tmp_path / "control.db"))
    assert store.version == 0
    assert [tuple(a) for a in store.apply(parsed(_service("reviews"), VS))] == [
        ("Service", "default", "reviews", "created"), ("VirtualService", "default", "reviews", "created")]
    assert store.version == 1
    # the same again (namespace given explicitly this time): unchanged, and the version stays
    assert [a.action for a in store.apply(parsed(_service("reviews", ns="default"), VS))] == ["unchanged"] * 2
    assert store.version == 1
    assert [tuple(a) for a in store.apply(parsed(_service("reviews", port=80), VS))] == [
        ("Service", "default", "reviews", "configured"), ("VirtualService", "default", "reviews", "unchanged")]
    assert store.version == 2
    (svc,) = store.list("Service")
    assert (svc.namespace, svc.name, svc.api_version, svc.version) == ("default", "reviews", "v1", 2)
    assert svc.body["spec"]["ports"][0]["port"] == 80
    version, resources = store.resources()
    assert version == 2
    assert [type(r).__name__ for r in resources] == ["Service", "VirtualService"]
    assert isinstance(resources[0], Service)
    assert resources[0].spec.ports[0].port == 80

    assert store.delete("VirtualService", "default", "reviews")
    assert store.version == 3
    assert not store.delete("VirtualService", "default", "reviews")
    assert store.version == 3
    assert [o.kind for o in store.list()] == ["Service"]
    # the store is durable: a new handle on the same file sees it all
    assert [o.name for o in ConfigStore(store.path).list()] == ["reviews"]


def test_apply_is_all_or_nothing(tmp_path: Path) -> None:
    store = ConfigStore(str(tmp_path / "control.db"))
    store.apply(parsed(_service("ratings")))
    unnamed_pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-"},
                   "spec": {"containers": [{"name": "app", "image": "app", "command": ["/app"]}]}}
    batch = parsed(_service("reviews"), _service("ratings", port=1), unnamed_pod)
    with pytest.raises(StoreError, match="generateName"):
        store.apply(batch)
    assert [(o.name, o.body["spec"]["ports"][0]["port"]) for o in store.list()] == [("ratings", 9080)]
    assert store.version == 1


# --- the CLI ----------------------------------------------------------------------------------------


def _write(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    return path


def test_cli_apply_get_delete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "control.db")
    config = tmp_path / "config"
    config.mkdir()
    _write(config / "a-services.yaml", _service("reviews"), _service("ratings", ns="prod"))
    _write(config / "b-routes.yaml", VS)
    assert main(["apply", "-f", str(config), "--store", db]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "service/reviews created", "service/ratings created", "virtualservice/reviews created"]
    assert main(["apply", "-f", str(config / "b-routes.yaml"), "--store", db]) == 0
    assert capsys.readouterr().out == "virtualservice/reviews unchanged\n"

    assert main(["get", "svc", "--store", db]) == 0
    assert capsys.readouterr().out.splitlines() == ["NAMESPACE  NAME", "default    reviews", "prod       ratings"]
    assert main(["get", "services", "ratings", "-n", "prod", "-o", "json", "--store", db]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"] == {"name": "ratings", "namespace": "prod"}
    assert main(["get", "vs", "reviews", "--store", db]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["spec"]["hosts"] == ["reviews"]
    assert main(["get", "vs", "nope", "--store", db]) == 1
    assert capsys.readouterr().err == "weir get: virtualservice 'nope' not found in namespace default\n"
    assert main(["get", "gadgets", "--store", db]) == 2
    assert capsys.readouterr().err.startswith("weir get: error: unknown kind 'gadgets'")

    assert main(["delete", "service", "ratings", "-n", "prod", "--store", db]) == 0
    assert capsys.readouterr().out == "service 'ratings' deleted\n"
    assert main(["delete", "service", "ratings", "-n", "prod", "--store", db]) == 1
    assert [o.name for o in ConfigStore(db).list()] == ["reviews", "reviews"]


@pytest.mark.parametrize(("content", "expected"), [
    ("kind: Service\napiVersion: v1\nmetadata: {name: x}\nspec: {ports: [{port: 99999}]}\n", "spec.ports[0].port"),
    ("a: [1\n", "cannot decode"),
    ("apiVersion: v1\nkind: Gadget\nmetadata: {name: x}\n", 'unsupported kind "Gadget"'),
])
def test_cli_apply_bad_file_applies_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            content: str, expected: str) -> None:
    db = str(tmp_path / "control.db")
    good = _write(tmp_path / "good.yaml", _service("reviews"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(content, encoding="utf-8")
    assert main(["apply", "-f", str(good), "-f", str(bad), "--store", db]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(f"weir apply: error: {bad}: ")
    assert expected in err
    assert ConfigStore(db).list() == []


def test_cli_apply_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apply", "-f", str(tmp_path / "nope.yaml"), "--store", str(tmp_path / "c.db")]) == 2
    missing = tmp_path / "nope.yaml"
    assert capsys.readouterr().err == f"weir apply: error: {missing}: cannot read: No such file or directory\n"
