"""What every resource shares: ``ObjectMeta``, the apiVersion/kind header and the opening checks.

Each parser (Pod, Service, VirtualService ...) describes its kind with a :class:`Header` and
calls :func:`open_manifest`, which checks that the document is a mapping of that kind and runs
the schema pass over it; :func:`parse_metadata` then checks names, namespace, labels and
annotations with Kubernetes' rules. Nothing here knows a kind's spec.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from weir.api import kube_schema as ks
from weir.api import names
from weir.api import read as rd
from weir.api.errors import Problems, field_path, quoted, show

DEFAULT_NAMESPACE = "default"

Doc = rd.Doc
NameRule = Callable[[str], str | None]


def _frozen_map() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class ObjectMeta:
    name: str
    namespace: str = DEFAULT_NAMESPACE
    """``""`` for cluster-scoped kinds (Namespace)."""
    uid: str = ""
    """Empty until the runtime assigns one."""
    labels: Mapping[str, str] = field(default_factory=_frozen_map)
    annotations: Mapping[str, str] = field(default_factory=_frozen_map)
    generate_name: str = ""
    """When ``name`` is empty, the runtime names the pod this prefix plus a random suffix."""


@dataclass(frozen=True)
class Header:
    """A kind as a parser accepts it: ``apiVersion`` values, ``kind``, and its schema table."""

    kind: str
    api_versions: tuple[str, ...]
    schema: ks.Obj
    namespaced: bool = True
    note: str = ""
    """Appended to a wrong apiVersion or kind message, e.g. ``" (the embedded runtime runs core v1 Pods)"``."""

    @property
    def group(self) -> str:
        """The API group (``""`` for core)."""
        return self.api_versions[0].rpartition("/")[0]


def one_of(values: tuple[str, ...]) -> str:
    """``"v1"``, or ``one of "a", "b"``: the accepted values, as messages show them."""
    quoted_values = ", ".join(f'"{v}"' for v in values)
    return quoted_values if len(values) == 1 else f"one of {quoted_values}"


def open_manifest(doc: object, source: str, header: Header) -> tuple[Problems, Doc]:
    """Check that ``doc`` is a ``header`` manifest and run the schema pass over it.

    Raises at once when ``doc`` is not a mapping or is another kind (its body would only add
    noise); otherwise returns the problems found so far, for the parser to add to.
    """
    problems = Problems(source)
    if not isinstance(doc, dict):
        problems.fail("", f"expected a {header.kind} manifest (a mapping), got {show(doc)}")
    check_header(doc, header, problems)
    problems.raise_if_any()
    ks.check_object(doc, header.schema, "", problems)
    return problems, doc


def check_header(doc: Doc, header: Header, problems: Problems) -> None:
    for key, allowed in (("apiVersion", header.api_versions), ("kind", (header.kind,))):
        value = doc.get(key)
        misspelt = [k for k in doc if isinstance(k, str) and k not in header.schema.fields
                    and ks.closest_field(k, header.schema) == key]
        if value is None and misspelt:
            problems.add(field_path("", misspelt[0]), f'unknown field (did you mean "{key}"?)')
        elif value is None:
            problems.missing(key, f"required ({one_of(allowed)})")
        elif value not in allowed:
            problems.add(key, f"expected {one_of(allowed)}, got {show(value)}{header.note}")


def parse_metadata(doc: Doc, problems: Problems, header: Header, *, generate_name: bool = False,
                   name_rule: NameRule = names.dns1123_subdomain) -> ObjectMeta:
    """``metadata``: required with a name (or, when allowed, a ``generateName``)."""
    path = "metadata"
    if not rd.present(doc, path):
        problems.missing(path, f"required (a {header.kind} needs metadata.name)")
    meta = rd.mapping(doc, path)
    name = rd.string(meta, "name")
    given_prefix = rd.string(meta, "generateName")
    prefix = given_prefix if generate_name else ""
    if name:
        problem = name_rule(name)
        if problem:
            rd.invalid(problems, "metadata.name", name, problem)
    elif prefix:
        problem = names.generate_name_prefix(prefix)
        if problem:
            rd.invalid(problems, "metadata.generateName", prefix, problem)
    elif rd.absent(meta, "name") and isinstance(doc.get(path), dict):
        if not generate_name:
            problems.missing("metadata.name", f"required (generateName is not supported for a {header.kind})"
                             if given_prefix else "required")
        elif rd.absent(meta, "generateName"):
            problems.missing("metadata.name", "required (or metadata.generateName)")
    namespace = ""
    if header.namespaced:
        namespace = rd.string(meta, "namespace") or DEFAULT_NAMESPACE
        problem = names.dns1123_label(namespace)
        if problem:
            rd.invalid(problems, "metadata.namespace", namespace, problem)
    labels = rd.string_map(meta, "labels")
    check_labels(labels, "metadata.labels", problems)
    annotations = rd.string_map(meta, "annotations")
    for key in annotations:
        problem = names.qualified_name(key.lower())
        if problem:
            problems.add("metadata.annotations", f"invalid key {quoted(key)}: {problem}")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if size > names.ANNOTATIONS_MAX_BYTES:
        problems.add("metadata.annotations", f"too long: {size} bytes, at most {names.ANNOTATIONS_MAX_BYTES}")
    return ObjectMeta(name=name, namespace=namespace, uid=rd.string(meta, "uid"),
                      labels=MappingProxyType(labels), annotations=MappingProxyType(annotations),
                      generate_name=prefix)


def check_labels(labels: Mapping[str, str], path: str, problems: Problems) -> None:
    """Label keys and values (metadata, selectors, subsets), with Kubernetes' rules."""
    for key, value in labels.items():
        problem = names.qualified_name(key)
        if problem:
            problems.add(path, f"invalid key {quoted(key)}: {problem}")
        problem = names.label_value(value)
        if problem:
            rd.invalid(problems, field_path(path, key), value, problem)
