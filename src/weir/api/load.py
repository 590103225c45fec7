"""The one parse edge: manifest text (YAML or JSON, one or many documents) -> typed resources.

``load_documents`` decodes with the decoder the caller passes (``weir.api`` imports no YAML
library: ``lambda t: list(yaml.safe_load_all(t))``, or ``json.loads``), dispatches each
document on ``apiVersion``/``kind`` to its parser (:data:`KINDS`), unrolls ``List`` documents,
and rejects a second object with the same kind, namespace and name. ``load_files`` does the
same over files and directories (it lists directories with ``pathlib``; files are read by the
``read`` the caller passes). Either returns every resource, or raises one
:class:`~weir.api.errors.ManifestError` holding every problem of every document, each naming
its source, document index and JSON path: nothing is half-loaded.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from weir.api import core_schema as cs
from weir.api import kube_schema as ks
from weir.api.core import NAMESPACE, SERVICE_ACCOUNT, Namespace, ServiceAccount, parse_namespace, parse_service_account
from weir.api.errors import ManifestError, Problems, item_path, quoted, show
from weir.api.meta import Header, one_of
from weir.api.networking_model import DestinationRule, ServiceEntry, VirtualService
from weir.api.networking_parse import (
    DESTINATION_RULE,
    SERVICE_ENTRY,
    parse_destination_rule,
    parse_service_entry,
)
from weir.api.pod_model import Pod
from weir.api.pod_parse import POD, parse_pod
from weir.api.security import PEER_AUTHENTICATION, PeerAuthentication, parse_peer_authentication
from weir.api.service import SERVICE, Service, parse_service
from weir.api.virtual_service_parse import VIRTUAL_SERVICE, parse_virtual_service

Resource = (Pod | Service | Namespace | ServiceAccount
            | ServiceEntry | DestinationRule | VirtualService | PeerAuthentication)
Decoder = Callable[[str], Iterable[object]]
"""Text -> its documents, e.g. ``lambda text: list(yaml.safe_load_all(text))``. A decoder that
returns one mapping (``json.loads``) is taken as one document; ``None`` documents are skipped."""

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
_MESSAGE_MAX = 300


@dataclass(frozen=True)
class ResourceKind:
    """A kind ``load_documents`` accepts: its header (apiVersions, kind) and its parser."""

    header: Header
    parse: Callable[[object, str], Resource]


KINDS: tuple[ResourceKind, ...] = (
    ResourceKind(POD, parse_pod),
    ResourceKind(SERVICE, parse_service),
    ResourceKind(NAMESPACE, parse_namespace),
    ResourceKind(SERVICE_ACCOUNT, parse_service_account),
    ResourceKind(SERVICE_ENTRY, parse_service_entry),
    ResourceKind(DESTINATION_RULE, parse_destination_rule),
    ResourceKind(VIRTUAL_SERVICE, parse_virtual_service),
    ResourceKind(PEER_AUTHENTICATION, parse_peer_authentication),
)
_BY_KIND = {kind.header.kind: kind for kind in KINDS}
_TOP = ks.Obj("object", {"apiVersion": ks.STRING, "kind": ks.STRING, "metadata": ks.OPAQUE, "spec": ks.OPAQUE})


def supported_kinds() -> str:
    """``v1 Pod, Service ...; networking.istio.io/v1 (or v1beta1, v1alpha3) ServiceEntry ...``."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for kind in KINDS:
        groups.setdefault(kind.header.api_versions, []).append(kind.header.kind)
    parts = []
    for versions, kinds in groups.items():
        others = f" (or {', '.join(v.rpartition('/')[2] for v in versions[1:])})" if len(versions) > 1 else ""
        parts.append(f"{versions[0]}{others} {', '.join(kinds)}")
    return "; ".join(parts)


def load_documents(text: str, source: str, decode: Decoder) -> list[Resource]:
    """Every resource in ``text``, in order. Raises :class:`ManifestError` with every problem."""
    loader = _Loader()
    loader.load_text(text, source, decode)
    return loader.finish()


def load_files(paths: Iterable[str | os.PathLike[str]], read: Callable[[Path], str], decode: Decoder) -> list[Resource]:
    """Every resource in ``paths`` (see :func:`manifest_files`); duplicates are checked across all of them.

    ``read`` reads one file (``Path.read_text``); an ``OSError`` from it, or from listing a
    directory, is reported as a problem of that path. Raises :class:`ManifestError` with every problem.
    """
    loader = _Loader()
    found: list[Path] = []
    for path in map(Path, paths):
        try:
            found.extend(_expand(path))
        except OSError as exc:
            loader.errors.append(ManifestError("", f"cannot list directory: {exc.strerror or exc}", str(path)))
    for path in _unique(found):
        try:
            text = read(path)
        except OSError as exc:
            loader.errors.append(ManifestError("", f"cannot read: {exc.strerror or exc}", str(path)))
            continue
        loader.load_text(text, str(path), decode)
    return loader.finish()


def manifest_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The files ``load_files`` reads, in order and each once: files as given (any name),
    directories as their ``*.yaml``, ``*.yml`` and ``*.json`` files sorted by name (not recursive).
    Raises ``OSError`` when a directory cannot be listed.
    """
    return _unique([found for path in map(Path, paths) for found in _expand(path)])


def _expand(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix.lower() in MANIFEST_SUFFIXES and p.is_file())


def _unique(paths: list[Path]) -> list[Path]:
    unique: dict[Path, Path] = {}
    for path in paths:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


class _Loader:
    """Collects resources and problems over one load; duplicates are checked across sources."""

    def __init__(self) -> None:
        self.resources: list[Resource] = []
        self.errors: list[ManifestError] = []
        self.seen: dict[tuple[str, str, str, str], str] = {}

    def finish(self) -> list[Resource]:
        if self.errors:
            first = self.errors[0]
            raise ManifestError(first.path, first.message, first.source, tuple(self.errors), document=first.document)
        return self.resources

    def load_text(self, text: str, source: str, decode: Decoder) -> None:
        try:
            decoded = decode(text)
            documents = [decoded] if isinstance(decoded, dict) else list(decoded)
        except Exception as exc:  # the caller's decoder: YAMLError, JSONDecodeError ... all mean bad text
            message = " ".join(str(exc).split()) or type(exc).__name__
            if len(message) > _MESSAGE_MAX:
                message = message[:_MESSAGE_MAX - 3] + "..."
            self.errors.append(ManifestError("", f"cannot decode: {message}", source))
            return
        for index, doc in enumerate(documents):
            if doc is None:
                continue  # an empty document: a stray "---", or only comments
            if isinstance(doc, dict) and _list_kind(doc) is not None:
                self._list(doc, source, index)
            else:
                self._item(doc, source, index, "")

    def _list(self, doc: dict[object, object], source: str, index: int) -> None:
        problems = Problems(source)
        ks.check_object(doc, cs.LIST, "", problems)
        typed = _list_kind(doc)
        api_version = doc.get("apiVersion")
        allowed = typed.header.api_versions if isinstance(typed, ResourceKind) else ("v1",)
        if api_version is None:
            problems.add("apiVersion", f"required ({one_of(allowed)})")
        elif api_version not in allowed:
            problems.add("apiVersion", f"expected {one_of(allowed)}, got {show(api_version)}")
        self._relocate(problems.items, index, "")
        items = doc.get("items")
        if problems.items or not isinstance(items, list):
            return
        for position, given in enumerate(items):
            prefix = item_path("items", position)
            item = given
            if isinstance(given, dict) and isinstance(typed, ResourceKind):  # a typed list: items may omit these
                item = {"apiVersion": api_version, "kind": typed.header.kind, **given}
            if isinstance(item, dict) and _list_kind(item) is not None:
                self._relocate([ManifestError("kind", "a List may not contain a List", source)], index, prefix)
            else:
                self._item(item, source, index, prefix)

    def _item(self, doc: object, source: str, index: int, prefix: str) -> None:
        problems = Problems(source)
        kind = _dispatch(doc, problems)
        if kind is None:
            self._relocate(problems.items, index, prefix)
            return
        try:
            resource = kind.parse(doc, source)
        except ManifestError as exc:
            self._relocate(exc.errors, index, prefix)
            return
        self._remember(kind, resource, source, index, prefix)

    def _remember(self, kind: ResourceKind, resource: Resource, source: str, index: int, prefix: str) -> None:
        meta = resource.metadata
        here = f"{source}: document {index}" + (f": {prefix}" if prefix else "")
        if meta.name:  # a pod named by generateName is unique by construction
            key = (kind.header.group, kind.header.kind, meta.namespace, meta.name)
            first = self.seen.get(key)
            if first is not None:
                name = f"{meta.namespace}/{meta.name}" if meta.namespace else meta.name
                self.errors.append(ManifestError(_join(prefix, "metadata.name"),
                                                 f"duplicate {kind.header.kind} {name} (first defined in {first})",
                                                 source, document=index))
                return
            self.seen[key] = here
        self.resources.append(resource)

    def _relocate(self, errors: Iterable[ManifestError], index: int, prefix: str) -> None:
        for error in errors:
            self.errors.append(ManifestError(_join(prefix, error.path), error.message, error.source, document=index))


def _list_kind(doc: dict[object, object]) -> ResourceKind | str | None:
    """``"List"``, the item kind of a typed list (``PodList``), or ``None`` when not a list."""
    kind = doc.get("kind")
    if kind == "List":
        return "List"
    if isinstance(kind, str) and kind.endswith("List"):
        return _BY_KIND.get(kind.removesuffix("List"))
    return None


def _dispatch(doc: object, problems: Problems) -> ResourceKind | None:
    if not isinstance(doc, dict):
        problems.add("", f"expected a manifest (a mapping with apiVersion and kind), got {show(doc)}")
        return None
    api_version, kind_name = doc.get("apiVersion"), doc.get("kind")
    for key, value in (("apiVersion", api_version), ("kind", kind_name)):
        misspelt = [k for k in doc if isinstance(k, str) and k not in _TOP.fields and ks.closest_field(k, _TOP) == key]
        if value is None and misspelt:
            problems.add(misspelt[0], f'unknown field (did you mean "{key}"?)')
        elif value is None:
            problems.add(key, "required (weir loads " + supported_kinds() + ")")
        elif not isinstance(value, str):
            problems.add(key, f"expected a string, got {show(value)}")
    if problems.items:
        return None
    assert isinstance(kind_name, str)
    assert isinstance(api_version, str)
    kind = _BY_KIND.get(kind_name)
    if kind is None:
        close = difflib.get_close_matches(kind_name.lower(), [k.lower() for k in _BY_KIND], n=1)
        hint = next((f' (did you mean "{k}"?)' for k in _BY_KIND if close and k.lower() == close[0]), "")
        problems.add("kind", f"unsupported kind {quoted(kind_name)} with apiVersion {quoted(api_version)}{hint}; "
                             f"weir loads {supported_kinds()}")
        return None
    if api_version not in kind.header.api_versions:
        problems.add("apiVersion", f"unsupported apiVersion {quoted(api_version)} for kind {kind_name} "
                                   f"(expected {one_of(kind.header.api_versions)})")
        return None
    return kind


def _join(prefix: str, path: str) -> str:
    if not prefix or not path:
        return prefix or path
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"
