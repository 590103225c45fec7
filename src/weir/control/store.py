"""The control plane's config store: mesh resources in SQLite (WAL), as ``weir apply`` leaves them.

One row per object, keyed by kind, namespace and name (``""`` for cluster-scoped kinds),
holding its manifest as JSON (``metadata.namespace`` filled in, so ``default`` given or
omitted is the same object) and the store version at which it last changed. The store version
is one integer that every changing transaction raises by one; a reader that saw version ``n``
knows nothing changed while it still reads ``n``, which is what the control plane polls.

:meth:`ConfigStore.apply` writes a batch in one transaction (all or nothing) and says per object
``created``, ``configured`` or ``unchanged``. Objects go in already parsed (by
:mod:`weir.api.load`, the one parse edge) and come back parsed through it again
(:meth:`ConfigStore.resources`). This module knows nothing of the registry, Envoy or serving.
"""

from __future__ import annotations

import builtins
import copy
import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from weir.api.load import Resource, load_documents
from weir.platform import sqlite

Action = Literal["created", "configured", "unchanged"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind         TEXT NOT NULL,
    namespace    TEXT NOT NULL,
    name         TEXT NOT NULL,
    api_version  TEXT NOT NULL,
    body         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('version', 0);
"""


class StoreError(ValueError):
    """A resource the store cannot keep (e.g. a pod named only by ``generateName``)."""


@dataclass(frozen=True)
class Applied:
    kind: str
    namespace: str
    name: str
    action: Action

    def __iter__(self) -> Iterator[str]:  # unpacks as (kind, ns, name, action)
        return iter((self.kind, self.namespace, self.name, self.action))


@dataclass(frozen=True)
class StoredObject:
    kind: str
    namespace: str
    name: str
    api_version: str
    body: dict[str, Any]
    """The manifest as applied (``metadata.namespace`` filled in)."""
    version: int
    """The store version at which this object last changed."""


def _body(resource: Resource) -> dict[str, Any]:
    body = copy.deepcopy(dict(resource.raw))
    namespace = resource.metadata.namespace
    metadata = body.setdefault("metadata", {})
    if namespace and isinstance(metadata, dict):
        metadata["namespace"] = namespace
    return body


def _canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


class ConfigStore:
    """Mesh resources in the SQLite database at ``path`` (created with its directory when missing)."""

    def __init__(self, path: str) -> None:
        self.path = path
        sqlite.create(path, SCHEMA)

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return sqlite.connect(self.path)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @property
    def version(self) -> int:
        """Raised by one by every transaction that changed something; never goes down."""
        with self._db() as db:
            return int(db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])

    def apply(self, resources: Iterable[Resource]) -> builtins.list[Applied]:
        """Create or replace each resource, in one transaction; raises :class:`StoreError`
        (nothing applied) for a resource without a name."""
        results: builtins.list[Applied] = []
        with self._transaction() as db:
            version = int(db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0]) + 1
            for resource in resources:
                meta = resource.metadata
                if not meta.name:
                    raise StoreError(f"{resource.kind} with generateName {meta.generate_name!r}: "
                                     "the config store needs metadata.name")
                body = _canonical(_body(resource))
                key = (resource.kind, meta.namespace, meta.name)
                row = db.execute("SELECT body FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
                                 key).fetchone()
                if row is not None and row[0] == body:
                    results.append(Applied(*key, "unchanged"))
                    continue
                db.execute("INSERT OR REPLACE INTO objects (kind, namespace, name, api_version, body, version) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (*key, resource.api_version, body, version))
                results.append(Applied(*key, "created" if row is None else "configured"))
            if any(r.action != "unchanged" for r in results):
                db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (version,))
        return results

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete one object; False when there was none (and the version stays)."""
        with self._transaction() as db:
            deleted = db.execute("DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
                                 (kind, namespace, name)).rowcount
            if deleted:
                db.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
        return bool(deleted)

    def get(self, kind: str, namespace: str, name: str) -> StoredObject | None:
        found = [o for o in self.list(kind) if (o.namespace, o.name) == (namespace, name)]
        return found[0] if found else None

    def list(self, kind: str | None = None) -> builtins.list[StoredObject]:
        """Every object (of ``kind``), sorted by kind, namespace and name."""
        query = "SELECT kind, namespace, name, api_version, body, version FROM objects"
        args: tuple[str, ...] = ()
        if kind is not None:
            query, args = query + " WHERE kind = ?", (kind,)
        with self._db() as db:
            rows = db.execute(query + " ORDER BY kind, namespace, name", args).fetchall()
        return [StoredObject(k, ns, n, av, json.loads(body), int(v)) for k, ns, n, av, body, v in rows]

    def resources(self) -> tuple[int, builtins.list[Resource]]:
        """The store version and every object parsed again (one read transaction, so they agree)."""
        with self._db() as db:
            db.execute("BEGIN")
            version = int(db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])
            bodies = [row[0] for row in db.execute("SELECT body FROM objects ORDER BY kind, namespace, name")]
            db.execute("COMMIT")
        text = "[" + ",".join(bodies) + "]"
        return version, load_documents(text, f"config store {self.path}", json.loads)
