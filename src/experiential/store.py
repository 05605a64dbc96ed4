"""Embedded experience store: SQLite in WAL mode, stdlib only.

Why SQLite: one file, no server, and with WAL plus ``synchronous=FULL`` a committed append survives a
kill of the process (or of the machine) mid-write. Every append is one transaction, so a crash loses
at most the experience whose ``append`` had not returned yet, never one that had.

Tables: ``experiences`` (the data, as JSON columns), ``consumption`` (which adapter version learned
from which experience), ``adapters`` (versions with their metrics and the path of their weights).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from .experience import Experience, save_jsonl

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiences (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    prompt TEXT NOT NULL,
    attempt TEXT NOT NULL,
    feedback TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS consumption (
    experience_id TEXT NOT NULL REFERENCES experiences(id),
    adapter_version TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (experience_id, adapter_version)
);
CREATE TABLE IF NOT EXISTS adapters (
    version TEXT PRIMARY KEY,
    path TEXT,
    parent TEXT,
    metrics TEXT NOT NULL,
    created REAL NOT NULL
);
"""


class ExperienceStore:
    """A durable, append-only log of experiences with a record of what each adapter learned from.

    Safe to share between threads (one connection, guarded by a lock) and between processes
    (SQLite's own locking; WAL lets readers proceed while a writer writes).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)

    # -- experiences ---------------------------------------------------------------------------
    def append(self, experience: Experience) -> str:
        """Store one experience durably; returns its id. An existing id raises ``ValueError``."""
        return self.extend([experience])[0]

    def extend(self, experiences: Iterable[Experience]) -> list[str]:
        """Store several experiences in one transaction (all or none)."""
        rows = []
        for exp in experiences:
            exp.validate()
            rows.append((exp.id, json.dumps(exp.prompt, ensure_ascii=False), exp.attempt,
                         exp.feedback, json.dumps(exp.metadata, ensure_ascii=False), time.time()))
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO experiences (id, prompt, attempt, feedback, metadata, created) "
                    "VALUES (?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as e:
                self._db.execute("ROLLBACK")
                raise ValueError(f"experience id already stored: {e}") from None
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [r[0] for r in rows]

    def get(self, experience_id: str) -> Experience:
        with self._lock:
            row = self._db.execute(
                "SELECT id, prompt, attempt, feedback, metadata FROM experiences WHERE id = ?",
                (experience_id,)).fetchone()
        if row is None:
            raise KeyError(f"no experience with id {experience_id!r} in {self.path}")
        return _row_to_experience(row)

    def list(self, *, unconsumed_by: str | None = None, only_unconsumed: bool = False,
             limit: int | None = None) -> list[Experience]:
        """Experiences in insertion order.

        ``only_unconsumed``: those no adapter has learned from yet. ``unconsumed_by``: those the
        given adapter version has not learned from.
        """
        sql = "SELECT id, prompt, attempt, feedback, metadata FROM experiences e"
        args: list[Any] = []
        if only_unconsumed:
            sql += " WHERE NOT EXISTS (SELECT 1 FROM consumption c WHERE c.experience_id = e.id)"
        elif unconsumed_by is not None:
            sql += (" WHERE NOT EXISTS (SELECT 1 FROM consumption c WHERE c.experience_id = e.id"
                    " AND c.adapter_version = ?)")
            args.append(unconsumed_by)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_row_to_experience(r) for r in rows]

    def __len__(self) -> int:
        return self.count()

    def count(self, *, only_unconsumed: bool = False) -> int:
        """Number of experiences (only those no adapter has learned from, if asked)."""
        sql = "SELECT COUNT(*) FROM experiences e"
        if only_unconsumed:
            sql += " WHERE NOT EXISTS (SELECT 1 FROM consumption c WHERE c.experience_id = e.id)"
        with self._lock:
            return self._db.execute(sql).fetchone()[0]

    def __iter__(self) -> Iterator[Experience]:
        return iter(self.list())

    # -- consumption and adapters --------------------------------------------------------------
    def mark_consumed(self, experience_ids: Iterable[str], adapter_version: str) -> None:
        """Record that ``adapter_version`` learned from these experiences."""
        ids = list(experience_ids)
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                missing = [i for i in ids if self._db.execute(
                    "SELECT 1 FROM experiences WHERE id = ?", (i,)).fetchone() is None]
                if missing:
                    raise KeyError(f"unknown experience ids: {missing[:5]}")
                self._db.executemany(
                    "INSERT OR IGNORE INTO consumption (experience_id, adapter_version, at) "
                    "VALUES (?, ?, ?)", [(i, adapter_version, now) for i in ids])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def consumed_by(self, adapter_version: str) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT c.experience_id FROM consumption c JOIN experiences e "
                "ON e.id = c.experience_id WHERE c.adapter_version = ? ORDER BY e.seq",
                (adapter_version,)).fetchall()
        return [r[0] for r in rows]

    def versions_of(self, experience_id: str) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT adapter_version FROM consumption WHERE experience_id = ? ORDER BY at",
                (experience_id,)).fetchall()
        return [r[0] for r in rows]

    def add_adapter(self, version: str, path: str | None, *, parent: str | None = None,
                    metrics: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO adapters (version, path, parent, metrics, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (version, path, parent, json.dumps(metrics or {}), time.time()))

    def adapters(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT version, path, parent, metrics, created FROM adapters ORDER BY created"
            ).fetchall()
        return [{"version": v, "path": p, "parent": par, "metrics": json.loads(m), "created": c,
                 "experiences": self.consumed_by(v)} for v, p, par, m, c in rows]

    # -- export --------------------------------------------------------------------------------
    def export_jsonl(self, path: str | Path) -> int:
        """Write every stored experience to JSONL (the format :func:`load_jsonl` reads)."""
        return save_jsonl(self.list(), path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "ExperienceStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _row_to_experience(row: tuple) -> Experience:
    id_, prompt, attempt, feedback, metadata = row
    return Experience(prompt=json.loads(prompt), attempt=attempt, feedback=feedback,
                      metadata=json.loads(metadata), id=id_)
