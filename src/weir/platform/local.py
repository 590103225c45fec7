"""The embedded runtime's durable state: pods in SQLite, shared by the runtime (which writes)
and the node agent (which looks pods up, as a ``PodSource``).

One row per pod: its manifest as given (with ``metadata.uid`` filled in), its status in
Kubernetes' shape, its sandbox (network namespace and sandbox id) and the pid of the shim
that supervises its containers. WAL mode and a busy timeout let the shims, the CLI and the
agent use the database at once. Nothing here runs a process or touches a namespace.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from weir.platform import sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS pods (
    uid          TEXT PRIMARY KEY,
    namespace    TEXT NOT NULL,
    name         TEXT NOT NULL,
    manifest     TEXT NOT NULL,
    status       TEXT NOT NULL,
    netns        TEXT NOT NULL DEFAULT '',
    sandbox_id   TEXT NOT NULL DEFAULT '',
    shim_pid     INTEGER NOT NULL DEFAULT 0,
    created      REAL NOT NULL,
    deleting     INTEGER NOT NULL DEFAULT 0,
    UNIQUE (namespace, name)
);
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    pod_uid   TEXT NOT NULL,
    time      REAL NOT NULL,
    type      TEXT NOT NULL,
    reason    TEXT NOT NULL,
    message   TEXT NOT NULL
);
"""


class DuplicatePodError(Exception):
    """A pod with that namespace and name already exists."""


@dataclass(frozen=True)
class PodRecord:
    uid: str
    namespace: str
    name: str
    manifest: dict[str, Any]
    status: dict[str, Any]
    netns: str
    sandbox_id: str
    shim_pid: int
    created: float
    deleting: bool

    @property
    def native_sidecars(self) -> set[str]:
        """The pod's native sidecars: init containers with ``restartPolicy: Always``."""
        spec = self.manifest.get("spec") or {}
        return {str(c.get("name")) for c in spec.get("initContainers") or []
                if isinstance(c, dict) and c.get("restartPolicy") == "Always"}

    @property
    def has_istio_proxy(self) -> bool:
        """Whether the pod runs Istio's sidecar (``istio-proxy``, native or not)."""
        spec = self.manifest.get("spec") or {}
        return any(isinstance(c, dict) and c.get("name") == "istio-proxy"
                   for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])])

    @property
    def phase(self) -> str:
        return str(self.status.get("phase", "Pending"))

    def as_object(self) -> dict[str, Any]:
        """The pod as Kubernetes shows it: the manifest with its status."""
        obj: dict[str, Any] = json.loads(json.dumps(self.manifest))
        obj.setdefault("apiVersion", "v1")
        obj.setdefault("kind", "Pod")
        obj["status"] = self.status
        return obj


class PodStore:
    def __init__(self, path: str) -> None:
        self.path = path
        sqlite.create(path, SCHEMA)

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return sqlite.connect(self.path, synchronous="NORMAL")

    @staticmethod
    def _record(row: tuple[Any, ...]) -> PodRecord:
        uid, namespace, name, manifest, status, netns, sandbox_id, shim_pid, created, deleting = row
        return PodRecord(uid, namespace, name, json.loads(manifest), json.loads(status), netns, sandbox_id,
                         int(shim_pid), float(created), bool(deleting))

    _COLUMNS = "uid, namespace, name, manifest, status, netns, sandbox_id, shim_pid, created, deleting"  # a constant

    def create(self, uid: str, manifest: Mapping[str, Any], status: Mapping[str, Any]) -> PodRecord:
        meta = manifest.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name"))
        try:
            with self._db() as db:
                db.execute(f"INSERT INTO pods ({self._COLUMNS}) VALUES (?, ?, ?, ?, ?, '', '', 0, ?, 0)",
                           (uid, namespace, name, json.dumps(manifest), json.dumps(status), time.time()))
        except sqlite3.IntegrityError:
            raise DuplicatePodError(f"pod {namespace}/{name} already exists") from None
        record = self.by_uid(uid)
        assert record is not None
        return record

    def get(self, namespace: str, name: str) -> PodRecord | None:
        with self._db() as db:
            row = db.execute(f"SELECT {self._COLUMNS} FROM pods WHERE namespace = ? AND name = ?",
                             (namespace, name)).fetchone()
        return self._record(row) if row else None

    def by_uid(self, uid: str) -> PodRecord | None:
        with self._db() as db:
            row = db.execute(f"SELECT {self._COLUMNS} FROM pods WHERE uid = ?", (uid,)).fetchone()
        return self._record(row) if row else None

    def pods(self, namespace: str | None = None) -> list[PodRecord]:
        with self._db() as db:
            if namespace is None:
                rows = db.execute(f"SELECT {self._COLUMNS} FROM pods ORDER BY namespace, name").fetchall()
            else:
                rows = db.execute(f"SELECT {self._COLUMNS} FROM pods WHERE namespace = ? ORDER BY name",
                                  (namespace,)).fetchall()
        return [self._record(r) for r in rows]

    def update(self, uid: str, **fields: Any) -> None:
        """Set some of: status (dict), netns, sandbox_id, shim_pid, deleting."""
        allowed = {"status", "netns", "sandbox_id", "shim_pid", "deleting"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
        values = {k: json.dumps(v) if k == "status" else v for k, v in fields.items()}
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self._db() as db:
            db.execute(f"UPDATE pods SET {assignments} WHERE uid = ?", (*values.values(), uid))

    def set_label(self, uid: str, key: str, value: str) -> PodRecord | None:
        """Set ``metadata.labels[key]`` on the pod's manifest in one transaction (the pod's
        containers keep running); None when there is no pod with that uid."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT manifest FROM pods WHERE uid = ?", (uid,)).fetchone()
                if row is not None:
                    manifest = json.loads(row[0])
                    metadata = manifest.setdefault("metadata", {})
                    metadata["labels"] = {**(metadata.get("labels") or {}), key: value}
                    db.execute("UPDATE pods SET manifest = ? WHERE uid = ?", (json.dumps(manifest), uid))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self.by_uid(uid) if row is not None else None

    def delete(self, uid: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM pods WHERE uid = ?", (uid,))
            db.execute("DELETE FROM events WHERE pod_uid = ?", (uid,))

    def event(self, uid: str, type_: str, reason: str, message: str) -> None:
        with self._db() as db:
            db.execute("INSERT INTO events (pod_uid, time, type, reason, message) VALUES (?, ?, ?, ?, ?)",
                       (uid, time.time(), type_, reason, message))

    def events(self, uid: str) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT time, type, reason, message FROM events WHERE pod_uid = ? ORDER BY id",
                              (uid,)).fetchall()
        return [{"time": t, "type": ty, "reason": r, "message": m} for t, ty, r, m in rows]


class StorePods:
    """The runtime's pods as the node agent sees them (``PodSource``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        if not os.path.exists(self.path):
            return None
        record = PodStore(self.path).get(namespace, name)
        return record.as_object() if record is not None and not record.deleting else None
