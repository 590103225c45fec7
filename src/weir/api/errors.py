"""The one error type of the manifest parsers, and the collector they report into.

A parser reports every problem it finds, in the order it finds them, and raises once at the
end: a user who fixes a manifest sees all its mistakes in one go. Each problem is a
:class:`ManifestError` whose ``str`` is a single line naming the source, the JSON path and
what is wrong, e.g. ``pod.yaml: spec.containers[1].comand: unknown field (did you mean
"command"?)``. Problems found by :mod:`weir.api.load` in a multi-document file also name the
document (counted from 0, as the decoder yields them): ``mesh.yaml: document 2: spec.hosts: ...``.
"""

from __future__ import annotations

import json
import re
from typing import NoReturn

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_$-]+")


class ManifestError(ValueError):
    """A manifest is invalid. ``path`` is a JSON path (``""`` for the whole document).

    When a parser found several problems it raises the first, with all of them (each a
    one-line ``ManifestError``) in ``errors``; ``str`` then says how many more there are.
    ``document`` is the index of the document in a multi-document source, or ``None``.
    """

    def __init__(self, path: str, message: str, source: str = "<manifest>",
                 errors: tuple[ManifestError, ...] = (), *, document: int | None = None) -> None:
        self.path = path
        self.message = message
        self.source = source
        self.document = document
        self.errors: tuple[ManifestError, ...] = errors or (self,)
        super().__init__(path, message)

    def __str__(self) -> str:
        where = self.source if self.document is None else f"{self.source}: document {self.document}"
        where = f"{where}: {self.path}: " if self.path else f"{where}: "
        more = len(self.errors) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
        return f"{where}{self.message}{suffix}"


def show(value: object) -> str:
    """A value as it reads in an error message: JSON-like, one line, bounded."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {quoted(value)}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def quoted(text: str) -> str:
    """A string in double quotes, escaped to one printable line, cut at 80 characters."""
    out = json.dumps(text, ensure_ascii=False)
    out = out if out.isprintable() else json.dumps(text)
    return out if len(out) <= 80 else f"{out[:76]}...\""


def field_path(parent: str, key: object) -> str:
    """``parent.key``, or ``parent["key"]`` when the key would not read as one plain token."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{json.dumps(str(key))}]"


def item_path(parent: str, index: int) -> str:
    return f"{parent}[{index}]"


class Problems:
    """Collects problems found in one manifest; ``raise_if_any`` raises them as one error."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[ManifestError] = []
        self.suggested: set[str] = set()
        """Paths an unknown field was taken to mean ("did you mean"): not reported missing too."""

    def add(self, path: str, message: str) -> None:
        self.items.append(ManifestError(path, message, self.source))

    def missing(self, path: str, message: str = "required") -> None:
        """A required value is absent, unless a misspelling of it was already reported."""
        if path not in self.suggested:
            self.add(path, message)

    def fail(self, path: str, message: str) -> NoReturn:
        """Report a problem that leaves nothing else worth checking, and raise."""
        self.add(path, message)
        self.raise_if_any()
        raise AssertionError("unreachable")  # raise_if_any raised: there is a problem

    def raise_if_any(self) -> None:
        if self.items:
            first = self.items[0]
            raise ManifestError(first.path, first.message, self.source, tuple(self.items))
