"""How weir's SQLite stores (the embedded runtime's pods, the control plane's resources) open
their databases: autocommit, WAL so readers never block the writer, and 30 s of waiting for a
busy writer rather than failing at once."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal


@contextmanager
def connect(path: str, *, synchronous: Literal["FULL", "NORMAL"] = "FULL") -> Iterator[sqlite3.Connection]:
    """A connection to ``path``, closed on exit. ``NORMAL`` trades the last commits on power loss
    (never on a crash of the process) for fewer fsyncs: for state that can be rebuilt."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=30000")
        if synchronous != "FULL":
            db.execute(f"PRAGMA synchronous={synchronous}")
        yield db
    finally:
        db.close()


def create(path: str, schema: str) -> None:
    """The database at ``path`` with ``schema`` applied, its directory made (0700) when missing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    with connect(path) as db:
        db.executescript(schema)
