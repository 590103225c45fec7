"""weir.api.load: multi-document YAML/JSON -> resources, dispatched on apiVersion/kind; Lists;
one object per (kind, namespace, name); every problem of every document, each naming its
source, document index and JSON path; directories of manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from weir.api.core import Namespace, ServiceAccount
from weir.api.errors import ManifestError
from weir.api.load import KINDS, MANIFEST_SUFFIXES, load_documents, load_files, manifest_files, supported_kinds
from weir.api.networking import DestinationRule, ServiceEntry, VirtualService
from weir.api.pod import Pod
from weir.api.security import PeerAuthentication
from weir.api.service import Service


def yaml_documents(text: str) -> list[object]:
    return list(yaml.safe_load_all(text))


def errors(text: str, source: str = "mesh.yaml", decode: Any = yaml_documents) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_documents(text, source, decode)
    lines = [str(e) for e in info.value.errors]
    assert all("\n" not in line for line in [*lines, str(info.value)])
    assert str(info.value).startswith(lines[0])
    return lines


BOOKINFO = """\
apiVersion: v1
kind: Namespace
metadata:
  name: bookinfo
  labels: {istio-injection: enabled}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: bookinfo-reviews, namespace: bookinfo}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo, labels: {app: reviews}}
spec:
  ports: [{port: 9080, name: http}]
  selector: {app: reviews}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: bookinfo, labels: {app: reviews, version: v1}}
spec:
  serviceAccountName: bookinfo-reviews
  containers: [{name: reviews, command: [/usr/bin/reviews], ports: [{containerPort: 9080}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext, namespace: bookinfo}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
"""


def test_multi_document_file_dispatches_every_kind_in_order() -> None:
    resources = load_documents(BOOKINFO, "bookinfo.yaml", yaml_documents)
    assert [type(r) for r in resources] == [Namespace, ServiceAccount, Service, Pod, DestinationRule, VirtualService,
                                            ServiceEntry, PeerAuthentication]
    assert [(r.kind, r.metadata.namespace, r.metadata.name) for r in resources] == [
        ("Namespace", "", "bookinfo"), ("ServiceAccount", "bookinfo", "bookinfo-reviews"),
        ("Service", "bookinfo", "reviews"), ("Pod", "bookinfo", "reviews-v1"),
        ("DestinationRule", "bookinfo", "reviews"), ("VirtualService", "bookinfo", "reviews"),
        ("ServiceEntry", "bookinfo", "httpbin-ext"), ("PeerAuthentication", "istio-system", "default")]


def test_every_registered_kind_is_in_the_bookinfo_file() -> None:
    kinds = {r.kind for r in load_documents(BOOKINFO, "bookinfo.yaml", yaml_documents)}
    assert kinds == {kind.header.kind for kind in KINDS}


def test_empty_documents_and_comments_are_skipped() -> None:
    text = "---\n# only a comment\n---\n" + BOOKINFO.split("---\n", 1)[0] + "---\n---\n"
    assert [r.kind for r in load_documents(text, "ns.yaml", yaml_documents)] == ["Namespace"]
    assert load_documents("", "empty.yaml", yaml_documents) == []


def test_json_single_document_and_json_list() -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    assert [r.metadata.name for r in load_documents(json.dumps(namespace), "ns.json", json.loads)] == ["shop"]
    listed = {"apiVersion": "v1", "kind": "List", "items": [namespace, {**namespace, "metadata": {"name": "pay"}}]}
    assert [r.metadata.name for r in load_documents(json.dumps(listed), "ns.json", json.loads)] == ["shop", "pay"]


def test_list_documents_are_unrolled_in_place() -> None:
    text = """\
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: List
metadata: {resourceVersion: ""}
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: b}}
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: c, namespace: b}}
---
apiVersion: v1
kind: Namespace
metadata: {name: d}
"""
    assert [r.metadata.name for r in load_documents(text, "l.yaml", yaml_documents)] == ["a", "b", "c", "d"]


def test_typed_list_items_may_omit_api_version_and_kind() -> None:
    text = """\
apiVersion: networking.istio.io/v1beta1
kind: VirtualServiceList
items:
- metadata: {name: a}
  spec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}
- metadata: {name: b}
  spec: {hosts: [b], http: [{route: [{destination: {host: b}}]}]}
"""
    resources = load_documents(text, "vs.yaml", yaml_documents)
    assert [(r.kind, r.api_version, r.metadata.name) for r in resources] == [
        ("VirtualService", "networking.istio.io/v1beta1", "a"), ("VirtualService", "networking.istio.io/v1beta1", "b")]


# --- duplicates ----------------------------------------------------------------------------

NS_A = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n"
VS = """\
apiVersion: networking.istio.io/%s
kind: VirtualService
metadata: {name: reviews%s}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}
"""


def test_duplicate_kind_namespace_and_name_is_an_error() -> None:
    assert errors(f"{NS_A}---\n{NS_A}") == [
        "mesh.yaml: document 1: metadata.name: duplicate Namespace a (first defined in mesh.yaml: document 0)"]
    text = "---\n".join([VS % ("v1", ""), VS % ("v1beta1", ", namespace: default")])
    assert errors(text) == ["mesh.yaml: document 1: metadata.name: duplicate VirtualService default/reviews "
                            "(first defined in mesh.yaml: document 0)"]


def test_same_name_in_another_namespace_or_kind_is_fine() -> None:
    text = "---\n".join([
        VS % ("v1", ""), VS % ("v1", ", namespace: bookinfo"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec: {host: reviews}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {ports: [{port: 80}]}\n",
    ])
    assert len(load_documents(text, "mesh.yaml", yaml_documents)) == 4


def test_duplicate_inside_a_list_names_the_item() -> None:
    text = """\
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: a}}
- {apiVersion: v1, kind: Namespace, metadata: {name: a}}
"""
    assert errors(text) == ["mesh.yaml: document 0: items[1].metadata.name: duplicate Namespace a "
                            "(first defined in mesh.yaml: document 0: items[0])"]


def test_pods_named_by_generate_name_are_never_duplicates() -> None:
    pod = ("apiVersion: v1\nkind: Pod\nmetadata: {generateName: web-}\n"
           "spec: {containers: [{name: app, command: [sleep, '1']}]}\n")
    assert len(load_documents(f"{pod}---\n{pod}", "pods.yaml", yaml_documents)) == 2


# --- errors --------------------------------------------------------------------------------


def test_every_problem_of_every_document_names_source_index_and_path() -> None:
    text = "---\n".join([
        NS_A,
        (VS % ("v1", "")).replace("host: reviews}", "host: reviews, subet: v1}"),
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: B}}\n",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {mtls: {mode: ON}}\n",
    ])
    assert errors(text) == [
        'mesh.yaml: document 1: spec.http[0].route[0].destination.subet: unknown field (did you mean "subset"?)',
        'mesh.yaml: document 2: items[0].metadata.name: invalid value "B": must be a lowercase RFC 1123 label: lower '
        "case alphanumeric characters or '-', starting and ending with an alphanumeric character (e.g. 'my-name')",
        # YAML 1.1 reads ON as true
        "mesh.yaml: document 3: spec.mtls.mode: expected a string, got boolean true (quote it in YAML)",
    ]


def test_nothing_is_half_loaded() -> None:
    with pytest.raises(ManifestError) as info:
        load_documents(f"{NS_A}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: Bad}}\n", "m.yaml",
                       yaml_documents)
    assert info.value.document == 1
    assert (info.value.source, info.value.path) == ("m.yaml", "metadata.name")


def test_unknown_kind_names_kind_and_api_version_and_lists_the_supported_ones() -> None:
    text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
    assert errors(text) == [
        'mesh.yaml: document 0: kind: unsupported kind "Deployment" with apiVersion "apps/v1"; weir loads '
        "v1 Pod, Service, Namespace, ServiceAccount; networking.istio.io/v1 (or v1beta1, v1alpha3) ServiceEntry, "
        "DestinationRule, VirtualService; security.istio.io/v1 (or v1beta1) PeerAuthentication"]
    assert supported_kinds() in errors(text)[0]


def test_misspelt_kind_gets_a_suggestion() -> None:
    found = errors("apiVersion: networking.istio.io/v1\nkind: virtualservice\nmetadata: {name: x}\n")
    assert found[0].startswith('mesh.yaml: document 0: kind: unsupported kind "virtualservice" with apiVersion '
                               '"networking.istio.io/v1" (did you mean "VirtualService"?); weir loads ')


@pytest.mark.parametrize(("text", "expected"), [
    ("apiVersion: networking.istio.io/v2\nkind: ServiceEntry\n",
     'apiVersion: unsupported apiVersion "networking.istio.io/v2" for kind ServiceEntry (expected one of '
     '"networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3")'),
    ("apiVersion: v1beta1\nkind: Service\n", 'apiVersion: unsupported apiVersion "v1beta1" for kind Service '
                                             '(expected "v1")'),
    ("apiVerison: v1\nkind: Pod\n", 'apiVerison: unknown field (did you mean "apiVersion"?)'),
    ("apiVersion: v1\nknid: Pod\n", 'knid: unknown field (did you mean "kind"?)'),
    ("apiVersion: v1\nkind: 7\n", "kind: expected a string, got integer 7"),
    ("- a\n- b\n", "expected a manifest (a mapping with apiVersion and kind), got a list"),
    ("just text\n", 'expected a manifest (a mapping with apiVersion and kind), got string "just text"'),
])
def test_document_headers(text: str, expected: str) -> None:
    assert errors(text) == [f"mesh.yaml: document 0: {expected}"]


def test_missing_kind_lists_what_weir_loads() -> None:
    assert errors("apiVersion: v1\nmetadata: {name: x}\n") == [
        f"mesh.yaml: document 0: kind: required (weir loads {supported_kinds()})"]


def test_list_errors() -> None:
    nested = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: List, items: []}\n"
    assert errors(nested) == ["mesh.yaml: document 0: items[0].kind: a List may not contain a List"]
    assert errors("apiVersion: v2\nkind: List\nitems: []\n") == [
        'mesh.yaml: document 0: apiVersion: expected "v1", got string "v2"']
    assert errors("apiVersion: v1\nkind: List\nitem: []\n") == [
        'mesh.yaml: document 0: item: unknown field (did you mean "items"?)']
    assert errors("apiVersion: v1\nkind: List\nitems:\n- null\n- 3\n") == [
        "mesh.yaml: document 0: items[0]: expected a manifest (a mapping with apiVersion and kind), got null",
        "mesh.yaml: document 0: items[1]: expected a manifest (a mapping with apiVersion and kind), got integer 3"]


def test_decoder_errors_become_one_line_problems() -> None:
    assert errors("a: [\n", "bad.yaml") == [
        "bad.yaml: cannot decode: while parsing a flow node expected the node content, but found '<stream end>' in "
        '"<unicode string>", line 2, column 1: ^']
    assert errors("{", "bad.json", json.loads) == [
        "bad.json: cannot decode: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"]


# --- files ---------------------------------------------------------------------------------


def write(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def ns(name: str) -> str:
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n"


def test_directories_load_their_manifests_sorted_and_not_recursively(tmp_path: Path) -> None:
    write(tmp_path, {"b.yml": ns("b"), "a.yaml": ns("a"), "c.json": json.dumps(yaml.safe_load(ns("c"))),
                     "README.md": "not a manifest", "notes.txt": "- x", "sub/d.yaml": ns("d")})
    resources = load_files([tmp_path], Path.read_text, yaml_documents)
    assert [r.metadata.name for r in resources] == ["a", "b", "c"]
    assert MANIFEST_SUFFIXES == (".yaml", ".yml", ".json")


def test_files_as_given_in_order_and_each_once(tmp_path: Path) -> None:
    write(tmp_path, {"z.yaml": ns("z"), "mesh.conf": ns("m"), "d/a.yaml": ns("a")})
    paths = [tmp_path / "z.yaml", str(tmp_path / "mesh.conf"), tmp_path / "d", tmp_path / "d" / "a.yaml"]
    assert [r.metadata.name for r in load_files(paths, Path.read_text, yaml_documents)] == ["z", "m", "a"]
    assert manifest_files(paths) == [tmp_path / "z.yaml", tmp_path / "mesh.conf", tmp_path / "d" / "a.yaml"]


def test_duplicates_are_found_across_files(tmp_path: Path) -> None:
    write(tmp_path, {"one.yaml": ns("a"), "two.yaml": f"{ns('b')}---\n{ns('a')}"})
    with pytest.raises(ManifestError) as info:
        load_files([tmp_path], Path.read_text, yaml_documents)
    assert str(info.value) == (f"{tmp_path / 'two.yaml'}: document 1: metadata.name: duplicate Namespace a "
                               f"(first defined in {tmp_path / 'one.yaml'}: document 0)")


def test_unreadable_files_and_bad_files_are_all_reported(tmp_path: Path) -> None:
    write(tmp_path, {"bad.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: A}\n", "good.yaml": ns("g")})
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ManifestError) as info:
        load_files([missing, tmp_path], Path.read_text, yaml_documents)
    assert [str(e) for e in info.value.errors] == [
        f"{missing}: cannot read: No such file or directory",
        f'{tmp_path / "bad.yaml"}: document 0: metadata.name: invalid value "A": must be a lowercase RFC 1123 label: '
        "lower case alphanumeric characters or '-', starting and ending with an alphanumeric character (e.g. "
        "'my-name')",
    ]


def test_read_is_the_callers(tmp_path: Path) -> None:
    seen: list[Path] = []

    def read(path: Path) -> str:
        seen.append(path)
        return ns(path.stem)

    assert [r.metadata.name for r in load_files(["x.yaml", "y.yaml"], read, yaml_documents)] == ["x", "y"]
    assert seen == [Path("x.yaml"), Path("y.yaml")]
