"""Readers for values the schema pass (:mod:`weir.api.kube_schema`) already accepted.

The builders of every parser read the decoded manifest through these: each returns the value
when it has the expected JSON type and a neutral default otherwise (a wrong type was reported
by the schema pass, so it is not reported twice). ``null`` reads as absent. :func:`frozen`
turns a subtree weir accepts but does not model into a read-only value to keep.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from weir.api.errors import Problems, field_path, item_path, quoted

Doc = Mapping[str, object]


def present(doc: Doc, key: str) -> bool:
    return doc.get(key) is not None


def absent(doc: Doc, key: str) -> bool:
    """Unset, ``null`` or empty: a missing required value (a wrong type was reported already)."""
    return doc.get(key) in (None, "", [], {})


def string(doc: Doc, key: str, default: str = "") -> str:
    value = doc.get(key)
    return value if isinstance(value, str) else default


def integer(doc: Doc, key: str) -> int | None:
    value = doc.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def number(doc: Doc, key: str) -> float | None:
    value = doc.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def boolean(doc: Doc, key: str) -> bool | None:
    value = doc.get(key)
    return value if isinstance(value, bool) else None


def strings(doc: Doc, key: str) -> tuple[str, ...]:
    value = doc.get(key)
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def mapping(doc: Doc, key: str) -> Doc:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def mappings(doc: Doc, key: str, path: str) -> Iterator[tuple[str, Doc]]:
    """``(path, item)`` for each mapping in the list ``doc[key]``."""
    value = doc.get(key)
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, dict):
                yield item_path(field_path(path, key), index), item


def string_map(doc: Doc, key: str) -> dict[str, str]:
    value = doc.get(key)
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def invalid(problems: Problems, path: str, value: str, problem: str) -> None:
    problems.add(path, f"invalid value {quoted(value)}: {problem}")


def frozen(value: object) -> Any:
    """A deep, read-only copy of decoded JSON: mappings become ``MappingProxyType``, lists tuples."""
    if isinstance(value, dict):
        return MappingProxyType({k: frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(frozen(v) for v in value)
    return value


def frozen_or_none(doc: Doc, key: str) -> Mapping[str, Any] | None:
    """``doc[key]`` frozen when it is a mapping, else ``None`` (unset)."""
    value = doc.get(key)
    return frozen(value) if isinstance(value, dict) else None
