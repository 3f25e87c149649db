"""The service's local store (SQLite): each monitor's state, window results, the webhook
outbox and the retraining cooldowns.

A monitor's state (its window profiles, every partition's position and event time, the
retraining streak) and the results of the windows that closed since it was last written
go in one transaction; Kafka offsets are committed only from state already written. Only
the profiles that changed are written again. A retraining request is written here before
any attempt to deliver it, so it survives a restart and keeps its webhook-id on every retry.

The window profiles hold sampled raw feature values (the same values the source topic
holds, at most the exactness budget per feature per window), so the file is created with
mode 0600 (its -wal and -shm files follow the database file's mode).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
DROP TABLE IF EXISTS checkpoints;  -- the checkpoints of driftline before window profiles were stored
CREATE TABLE IF NOT EXISTS monitor_state (
    monitor TEXT PRIMARY KEY,
    meta TEXT NOT NULL,  -- JSON: positions, event times, window markers, retraining streak
    saved_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS monitor_windows (
    monitor TEXT NOT NULL,
    key TEXT NOT NULL,  -- b<bucket>, c<count window>, h<horizon>
    profile BLOB NOT NULL,  -- WindowProfile.to_bytes()
    PRIMARY KEY (monitor, key)
);
CREATE TABLE IF NOT EXISTS window_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    monitor TEXT NOT NULL,
    horizon TEXT NOT NULL,
    window_start REAL NOT NULL,
    window_end REAL NOT NULL,
    events INTEGER NOT NULL,
    status TEXT NOT NULL,
    dataset_drift INTEGER NOT NULL,
    drift_share REAL NOT NULL,
    result TEXT NOT NULL,  -- JSON, as the status API shows it: scores, never values
    recorded_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS window_results_by_monitor ON window_results (monitor, id);
CREATE TABLE IF NOT EXISTS window_samples (
    monitor TEXT NOT NULL,
    window_id TEXT NOT NULL,
    profile BLOB NOT NULL,  -- the window's WindowProfile.to_bytes(): what its report is drawn from
    PRIMARY KEY (monitor, window_id)
);
CREATE TABLE IF NOT EXISTS store_info (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""



@dataclass(frozen=True)
class Retention:
    """How much window history a monitor keeps: results by count and age, and the samples
    (window profiles) of its most recent windows, from which their reports are drawn."""

    windows: int = 10_000
    max_age: float | None = 30 * 86400.0
    samples: int = 10


@dataclass(frozen=True)
class ResultRow:
    horizon: str
    window_start: float
    window_end: float
    events: int
    status: str
    dataset_drift: bool
    drift_share: float
    result: str
    window_id: str = ""
    sample: bytes | None = None  # the window's profile, kept for its report (Retention.samples)


@dataclass(frozen=True)
class OutboxMessage:
    id: str
    monitor: str
    url: str
    body: str
    created_at: float
    attempts: int


log = logging.getLogger("driftline.store")


class Store:
    def __init__(self, path: str | Path, retention: Retention | None = None) -> None:
        self.path = str(path)
        self.retention = retention or Retention()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            _private(self.path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(window_results)")}
        if "window_id" not in columns:  # a state file of an earlier driftline
            self._db.execute("ALTER TABLE window_results ADD COLUMN window_id TEXT")
        self._db.execute("CREATE INDEX IF NOT EXISTS window_results_by_id ON window_results (monitor, window_id)")
        self._lock = threading.Lock()
        self._db.execute("INSERT OR IGNORE INTO store_info (key, value) VALUES ('id', ?)", (uuid.uuid4().hex,))
        self.store_id: str = self._db.execute("SELECT value FROM store_info WHERE key = 'id'").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- monitor state -------------------------------------------------------------------
    def save_state(self, monitor: str, meta: dict[str, Any], blobs: dict[str, bytes], keys: set[str],
                   results: list[ResultRow], now: float) -> None:
        """In one transaction: the monitor's meta, the profiles in `blobs` (changed ones),
        no profile whose key is not in `keys`, and the results of the windows closed since."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO monitor_state (monitor, meta, saved_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(monitor) DO UPDATE SET meta = excluded.meta, saved_at = excluded.saved_at",
                    (monitor, json.dumps(meta, separators=(",", ":"), sort_keys=True), now))
                gone = [k for (k,) in self._db.execute("SELECT key FROM monitor_windows WHERE monitor = ?",
                                                        (monitor,)) if k not in keys]
                self._db.executemany("DELETE FROM monitor_windows WHERE monitor = ? AND key = ?",
                                     [(monitor, k) for k in gone])
                self._db.executemany(
                    "INSERT INTO monitor_windows (monitor, key, profile) VALUES (?, ?, ?) "
                    "ON CONFLICT(monitor, key) DO UPDATE SET profile = excluded.profile",
                    [(monitor, k, sqlite3.Binary(v)) for k, v in blobs.items()])
                if results:
                    self._record(monitor, results, now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _record(self, monitor: str, results: list[ResultRow], now: float) -> None:
        """Append results (and the samples of the latest), then apply the retention (caller
        holds the lock, in a transaction)."""
        db, keep = self._db, self.retention
        db.executemany(
            "INSERT INTO window_results (monitor, horizon, window_start, window_end, events, status, dataset_drift, "
            "drift_share, result, recorded_at, window_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(monitor, r.horizon, r.window_start, r.window_end, r.events, r.status, int(r.dataset_drift),
              r.drift_share, r.result, now, r.window_id) for r in results])
        samples = [(monitor, r.window_id, sqlite3.Binary(r.sample)) for r in results[-keep.samples:]
                   if r.sample is not None and keep.samples > 0]
        db.executemany("INSERT OR REPLACE INTO window_samples (monitor, window_id, profile) VALUES (?, ?, ?)", samples)
        db.execute("DELETE FROM window_results WHERE monitor = ? AND id <= "
                   "(SELECT id FROM window_results WHERE monitor = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                   (monitor, monitor, keep.windows))
        if keep.max_age is not None:
            db.execute("DELETE FROM window_results WHERE monitor = ? AND recorded_at < ?",
                       (monitor, now - keep.max_age))
        # the samples of the latest windows, and only of windows still in the history
        db.execute("DELETE FROM window_samples WHERE monitor = ? AND rowid NOT IN "
                   "(SELECT rowid FROM window_samples WHERE monitor = ? ORDER BY rowid DESC LIMIT ?)",
                   (monitor, monitor, keep.samples))
        db.execute("DELETE FROM window_samples WHERE monitor = ? AND window_id NOT IN "
                   "(SELECT window_id FROM window_results WHERE monitor = ?)", (monitor, monitor))

    def history(self, monitor: str, limit: int, before: str | None = None, horizon: str | None = None
                ) -> list[tuple[str, str, bool]] | None:
        """Evaluated windows, newest first: (window id, result JSON, whether its sample is
        kept). `before`: only windows recorded before that one (None if it is not known)."""
        with self._lock:
            bound = 2**63 - 1
            if before is not None:
                row = self._db.execute("SELECT max(id) FROM window_results WHERE monitor = ? AND window_id = ?",
                                       (monitor, before)).fetchone()
                if row[0] is None:
                    return None
                bound = row[0]
            rows = self._db.execute(
                "SELECT r.window_id, r.result, s.window_id IS NOT NULL FROM window_results r "
                "LEFT JOIN window_samples s ON s.monitor = r.monitor AND s.window_id = r.window_id "
                "WHERE r.monitor = ? AND r.id < ? "
                "AND (? IS NULL OR r.horizon = ?) ORDER BY r.id DESC LIMIT ?",
                (monitor, bound, horizon, horizon, limit)).fetchall()
        return [(w, res, bool(has)) for w, res, has in rows]

    def window(self, monitor: str, window_id: str) -> tuple[str, bytes | None] | None:
        """A window's result JSON and its sample (None once it is no longer kept); None if the
        window is not in the history."""
        with self._lock:
            row = self._db.execute("SELECT result FROM window_results WHERE monitor = ? AND window_id = ? "
                                   "ORDER BY id DESC LIMIT 1", (monitor, window_id)).fetchone()
            if row is None:
                return None
            sample = self._db.execute("SELECT profile FROM window_samples WHERE monitor = ? AND window_id = ?",
                                      (monitor, window_id)).fetchone()
        return row[0], None if sample is None else bytes(sample[0])

    def load_state(self, monitor: str) -> tuple[dict[str, Any], dict[str, bytes]] | None:
        """The monitor's meta and every stored profile's bytes (None: no state stored)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                row = self._db.execute("SELECT meta FROM monitor_state WHERE monitor = ?", (monitor,)).fetchone()
                blobs = {k: bytes(v) for k, v in self._db.execute(
                    "SELECT key, profile FROM monitor_windows WHERE monitor = ?", (monitor,))}
            finally:
                self._db.execute("COMMIT")
        return None if row is None else (dict(json.loads(row[0])), blobs)

    def window_results(self, monitor: str, limit: int = 100) -> list[tuple[ResultRow, float]]:
        """The latest window results of a monitor, newest first, with when they were recorded."""
        with self._lock:
            rows = self._db.execute(
                "SELECT horizon, window_start, window_end, events, status, dataset_drift, drift_share, result, "
                "recorded_at FROM window_results WHERE monitor = ? ORDER BY id DESC LIMIT ?",
                (monitor, limit)).fetchall()
        return [(ResultRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7]), r[8]) for r in rows]

    def latest_results(self, monitor: str, horizon: str) -> list[tuple[str, str]]:
        """(window id, result JSON) of a horizon's latest recorded window and of its latest
        evaluated one (one row when that is the same window; none without history)."""
        with self._lock:
            rows = [self._db.execute(
                "SELECT window_id, result FROM window_results WHERE monitor = ? AND horizon = ?" + only +
                " ORDER BY id DESC LIMIT 1", (monitor, horizon)).fetchone()
                for only in ("", " AND status = 'evaluated'")]
        return list(dict.fromkeys((r[0], r[1]) for r in rows if r is not None))

    def has_message(self, message_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM outbox WHERE id = ?", (message_id,)).fetchone() is not None

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


def _private(path: str) -> None:
    """Create the database file readable by its owner only, and make an existing one so."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    for p in (path, path + "-wal", path + "-shm"):
        try:
            if os.stat(p).st_mode & 0o077:
                os.chmod(p, 0o600)
                log.warning("%s was readable by others: now 0600 (it holds sampled feature values)", p)
        except FileNotFoundError:
            pass
