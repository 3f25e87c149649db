"""The service's local store (SQLite): the webhook outbox and the retraining cooldowns.

A retraining request is written here before any attempt to deliver it, so it survives a
restart and keeps its webhook-id on every retry. Only aggregates and request bodies are
stored, never a raw feature value.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    monitor TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending | delivered | gone
    last_status TEXT,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS retrain_state (
    monitor TEXT PRIMARY KEY,
    last_requested_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class OutboxMessage:
    id: str
    monitor: str
    url: str
    body: str
    created_at: float
    attempts: int


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- outbox ----------------------------------------------------------------------
    def enqueue(self, message_id: str, monitor: str, url: str, body: str, now: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO outbox (id, monitor, url, body, created_at, next_attempt_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", (message_id, monitor, url, body, now, now))

    def request_retrain(self, monitor: str, message_id: str, url: str, body: str, now: float) -> None:
        """Record the request and the cooldown start in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR IGNORE INTO outbox (id, monitor, url, body, created_at, next_attempt_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)", (message_id, monitor, url, body, now, now))
                self._db.execute(
                    "INSERT INTO retrain_state (monitor, last_requested_at) VALUES (?, ?) "
                    "ON CONFLICT(monitor) DO UPDATE SET last_requested_at = excluded.last_requested_at",
                    (monitor, now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def due(self, now: float, monitors: list[str], limit: int = 50) -> list[OutboxMessage]:
        """Pending messages of these monitors whose next attempt is due, oldest due first.

        Messages of monitors no longer configured stay pending, untouched, and never
        crowd out the others."""
        if not monitors:
            return []
        marks = ",".join("?" * len(monitors))
        with self._lock:
            rows = self._db.execute(
                "SELECT id, monitor, url, body, created_at, attempts FROM outbox "
                f"WHERE state = 'pending' AND next_attempt_at <= ? AND monitor IN ({marks}) "
                "ORDER BY next_attempt_at LIMIT ?", (now, *monitors, limit)).fetchall()
        return [OutboxMessage(*r) for r in rows]

    def next_due_at(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'").fetchone()
        return row[0]

    def mark_delivered(self, message_id: str, status: str, now: float) -> None:
        with self._lock:
            self._db.execute("UPDATE outbox SET state = 'delivered', attempts = attempts + 1, last_status = ?, "
                             "delivered_at = ? WHERE id = ?", (status, now, message_id))

    def mark_gone(self, message_id: str, status: str) -> None:
        with self._lock:
            self._db.execute("UPDATE outbox SET state = 'gone', attempts = attempts + 1, last_status = ? "
                             "WHERE id = ?", (status, message_id))

    def reschedule(self, message_id: str, status: str, next_attempt_at: float) -> None:
        with self._lock:
            self._db.execute("UPDATE outbox SET attempts = attempts + 1, last_status = ?, next_attempt_at = ? "
                             "WHERE id = ?", (status, next_attempt_at, message_id))

    def pending_count(self, monitor: str | None = None) -> int:
        q = "SELECT COUNT(*) FROM outbox WHERE state = 'pending'"
        args: tuple[str, ...] = ()
        if monitor is not None:
            q, args = q + " AND monitor = ?", (monitor,)
        with self._lock:
            return int(self._db.execute(q, args).fetchone()[0])

    # -- cooldowns --------------------------------------------------------------------
    def last_retrain_request(self, monitor: str) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT last_requested_at FROM retrain_state WHERE monitor = ?",
                                   (monitor,)).fetchone()
        return None if row is None else float(row[0])
