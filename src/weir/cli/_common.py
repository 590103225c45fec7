"""Shared CLI plumbing: the argument parser that fails in one line, and input files."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Hashable
from typing import Any, NoReturn

import yaml

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: exit 2 with this one-line message."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_USAGE)


class _DuplicateKeyError(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in a mapping is an error, not the last one wins."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: PyYAML reports it below
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_document(path: str) -> Any:
    """Read one JSON or YAML document from ``path`` ('-' for stdin)."""
    docs = load_documents(path)
    if len(docs) > 1:
        raise UsageError(f"{path}: expected one document, found {len(docs)}")
    return docs[0]


def load_documents(path: str) -> list[Any]:
    """Read every JSON or YAML document of ``path`` ('-' for stdin); at least one."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a UTF-8 text file") from None
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return [json.loads(text, object_pairs_hook=_unique_pairs)]
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        except _DuplicateKeyError as exc:
            raise UsageError(f"{path}: invalid JSON: found duplicate key {exc.args[0]!r}") from None
    try:
        docs = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"{path}: invalid YAML{where}: {problem}") from None
    if not docs:
        raise UsageError(f"{path}: the file is empty")
    return docs
