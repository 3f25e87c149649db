"""Tumbling windows over a stream of several partitions, closed by event time.

Event time is kept per partition (`EventClock`), as Flink and Kafka Streams do: a time
window closes once every assigned partition's event time has passed its end plus the
allowed lateness, so reading a backlog in any interleaving of partitions drops nothing.
A partition with nothing to read for `idle_timeout` (wall clock, its lag zero) stops
holding windows back; its next records are judged against the windows as they are then.
When every partition is idle (traffic stopped), event time advances with the wall clock
from the latest event, so the last window still closes.

Windows are aligned to the epoch (a 5-minute window covers :00–:05, …) or count events
(`kind="count"`). Each longer horizon's window is the merge of its period's buckets.

The whole state is a value: `snapshot()` gives the profiles (only those changed since the
last one, by stamp) with every partition's position and event time, in one cut under the
lock; `restore()` takes it back. The consumer thread calls `add_batch`; the evaluation job
calls `close_due` and `snapshot`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from driftline.collectors.events import DecodedBatch
from driftline.collectors.schema import format_duration, format_span

from .profile import WindowProfile

Clock = Callable[[], float]


class EventClock:
    """Each partition's event time, and the watermark over them (see the module docstring)."""

    def __init__(self, idle_timeout: float, clock: Clock) -> None:
        self.idle_timeout, self._clock = idle_timeout, clock
        self.event_time: dict[int, float] = {}  # partition -> latest event time read from it
        self._active_at: dict[int, float] = {}  # partition -> wall time of its last event, or of its assignment
        self._lag: dict[int, int] = {}  # partition -> records waiting to be read (absent: unknown)
        self.latest = -math.inf  # the latest event time of any partition
        self._latest_at = 0.0  # wall time it was read
        self.partitions: frozenset[int] = frozenset()

    def assign(self, partitions: set[int] | frozenset[int]) -> None:
        now = self._clock()
        self.partitions = frozenset(partitions)
        self._active_at = dict.fromkeys(self.partitions, now)
        self._lag = {}
        self._latest_at = now  # time spent away (down, rejoining) must not close windows

    def observe(self, partition: int, newest: float, now: float) -> None:
        if newest > self.event_time.get(partition, -math.inf):
            self.event_time[partition] = newest
        self._active_at[partition] = now
        if newest > self.latest:
            self.latest, self._latest_at = newest, now

    def note_lag(self, lag: dict[int, int]) -> None:
        self._lag = dict(lag)

    def idle(self, partition: int, now: float) -> bool:
        """Nothing read from it for idle_timeout, and nothing waiting to be read."""
        return self._lag.get(partition, 1) == 0 and now - self._active_at.get(partition, now) >= self.idle_timeout

    def watermark(self) -> float:
        now = self._clock()
        active = [p for p in self.partitions if not self.idle(p, now)]
        if active:
            return min(self.event_time.get(p, -math.inf) for p in active)
        if not self.partitions or self.latest == -math.inf:
            return -math.inf
        return self.latest + max(0.0, now - self._latest_at)

    def state(self) -> dict[str, Any]:
        return {"event_time": {str(p): t for p, t in self.event_time.items()},
                "latest": None if self.latest == -math.inf else self.latest}

    def restore(self, state: dict[str, Any]) -> None:
        self.event_time = {int(p): float(t) for p, t in state.get("event_time", {}).items()}
        self.latest = -math.inf if state.get("latest") is None else float(state["latest"])
        self._latest_at = self._clock()

    def describe(self) -> dict[int, dict[str, Any]]:
        """Per partition: its event time, lag and whether it is idle (for the status API)."""
        now = self._clock()
        return {p: {"event_time": _finite(self.event_time.get(p, -math.inf)), "lag": self._lag.get(p),
                    "idle": self.idle(p, now)} for p in sorted(self.partitions)}


@dataclass(frozen=True)
class Origin:
    """Where a batch's events came from: per event its partition, and per partition the
    offset after the batch's last record (valid or not)."""

    partitions: np.ndarray
    next_offsets: dict[int, int]


@dataclass
class Snapshot:
    """The windows' state at one cut: `meta` (JSON: positions, event times, markers), the
    profiles changed since the stamps given to `snapshot` (`blobs`), and every profile's
    key and stamp (`stamps`: a key that is gone from it is gone from the state)."""

    meta: dict[str, Any]
    blobs: dict[str, bytes]
    stamps: dict[str, int]


class TumblingWindows:
    def __init__(self, *, kind: str, size: float, allowed_lateness: float, template: WindowProfile,
                 clock: Clock, idle_timeout: float = 30.0, horizons: tuple[float, ...] = ()) -> None:
        if kind not in ("time", "count"):
            raise ValueError(f"unknown window type {kind!r}")
        if horizons and kind != "time":
            raise ValueError("horizons need time windows")
        self.kind, self.size, self.lateness = kind, size, allowed_lateness
        self._template, self._clock = template, clock
        self.clock = EventClock(idle_timeout, clock)
        self._lock = threading.Lock()
        self._open: dict[int, WindowProfile] = {}  # bucket index (count: window number) -> profile
        self._pending: list[tuple[int, WindowProfile]] = []  # closed count windows, not yet handed out
        self._closed_index: int | None = None  # time: the last bucket closed
        self._count_index = 0  # count: the number of the window being filled
        self._horizons: dict[float, WindowProfile | None] = dict.fromkeys(horizons)
        self.positions: dict[int, int] = {}  # partition -> offset after the last record accounted for
        self.late_events = 0
        self.paused = True  # no partitions assigned: nothing closes
        # after starting over without a checkpoint: the windows the first records open (they
        # lack what the previous reader had read), for the log
        self._starting_over = False
        self.started_over: list[str] = []
        self._seen_since_reset: set[int] = set()
        self._announced: set[str] = set()

    def _new(self, start: float, end: float) -> WindowProfile:
        return self._template.empty_like(start, end)

    # -- partitions -------------------------------------------------------------------------
    def assign(self, starts: dict[int, int | None]) -> None:
        """These partitions are read from now on, each from its offset (None: not known yet)."""
        with self._lock:
            self.positions = {p: o for p, o in self.positions.items() if p in starts}
            self.positions.update({p: o for p, o in starts.items() if o is not None})
            self.clock.assign(set(starts))
            self.paused = False

    def pause(self) -> None:
        """The partitions are being revoked: nothing closes until they are assigned again."""
        with self._lock:
            self.paused = True

    def note_lag(self, lag: dict[int, int]) -> None:
        with self._lock:
            self.clock.note_lag(lag)

    def forget_positions(self) -> None:
        """The topic was recreated: its old offsets mean nothing any more."""
        with self._lock:
            self.positions.clear()

    # -- ingest -------------------------------------------------------------------------------
    def add_batch(self, batch: DecodedBatch, origin: Origin | None = None) -> int:
        """Account for a decoded batch (its records up to `origin.next_offsets`); return how
        many events arrived after their window had closed (they are left out)."""
        with self._lock:
            late = self._add(batch, origin)
            if origin is not None:
                for p, nxt in origin.next_offsets.items():
                    if nxt > self.positions.get(p, -1):
                        self.positions[p] = nxt
            self.late_events += late
            return late

    def _add(self, batch: DecodedBatch, origin: Origin | None) -> int:
        if self.kind == "count":
            self._add_counted(batch)
            return 0
        late = 0
        if batch.size:
            index = np.floor(batch.event_time / self.size).astype(np.int64)
            on_time = index > (self._closed_index if self._closed_index is not None else np.iinfo(np.int64).min)
            late = batch.size - int(np.count_nonzero(on_time))
            if self._starting_over:
                self._note_start_over(index, origin)
            for i in np.unique(index[on_time]).tolist():
                w = self._open.get(i)
                if w is None:
                    w = self._open[i] = self._new(i * self.size, (i + 1) * self.size)
                rows = index == i
                w.add_batch(batch if rows.all() else batch.select(rows))
            self._observe(batch, origin)
        for feature, t in batch.type_errors:
            if math.isfinite(t):
                w = self._open.get(math.floor(t / self.size))
                if w is not None:
                    w.add_type_error(feature)
        return late

    def _note_start_over(self, index: np.ndarray, origin: Origin | None) -> None:
        """The window of each partition's first record after starting over (its records
        before were read by the previous reader) and, when that is not the first bucket of a
        horizon's period, the horizon's window, are noted in `started_over` for the log."""
        parts = origin.partitions if origin is not None else np.zeros(index.size, dtype=np.int64)
        uniq, first = np.unique(parts, return_index=True)
        for p, i in zip(uniq.tolist(), index[first].tolist(), strict=True):
            if p in self._seen_since_reset:
                continue
            self._seen_since_reset.add(p)
            names = [(self.size, i * self.size)]
            names += [(h, math.floor(i * self.size / h) * h) for h in self._horizons
                      if math.floor(i * self.size / h) * h < i * self.size]
            for length, start in names:
                name = f"{format_duration(length)} {describe(start, start + length, 0).removesuffix(' (0 events)')}"
                if name not in self._announced:
                    self._announced.add(name)
                    self.started_over.append(name)
        if self._seen_since_reset >= self.clock.partitions:
            self._starting_over = False

    def _observe(self, batch: DecodedBatch, origin: Origin | None) -> None:
        now = self._clock()
        if origin is None:
            self.clock.observe(-1, float(batch.event_time.max()), now)
            return
        for p in np.unique(origin.partitions).tolist():
            self.clock.observe(p, float(batch.event_time[origin.partitions == p].max()), now)

    def _add_counted(self, batch: DecodedBatch) -> None:
        start = 0
        while start < batch.size:
            w = self._open.get(self._count_index)
            if w is None:
                t0 = float(batch.event_time[start])
                w = self._open[self._count_index] = self._new(t0, t0)
            take = min(int(self.size) - w.events, batch.size - start)
            w.add_batch(batch.select(np.arange(start, start + take)))
            w.start, w.end = w.first_event_time, w.last_event_time
            start += take
            if w.events >= self.size:
                self._pending.append((self._count_index, self._open.pop(self._count_index)))
                self._count_index += 1
        w = self._open.get(self._count_index)
        for feature, _ in batch.type_errors:
            if w is not None:
                w.add_type_error(feature)

    # -- closing --------------------------------------------------------------------------------
    def watermark(self) -> float:
        with self._lock:
            return self.clock.watermark()

    def close_due(self) -> list[tuple[float, WindowProfile]]:
        """(length, window) of the windows closed since the last call, oldest first: the
        buckets (length `size`), then each horizon's window whose period they complete, or
        whose end the watermark has passed."""
        with self._lock:
            for i, w in self._pending:
                w.number = i
            buckets = [w for _, w in self._pending]
            self._pending.clear()
            mark = -math.inf
            if self.kind == "time" and not self.paused:
                mark = self.clock.watermark() - self.lateness
                for index in sorted(i for i, w in self._open.items() if w.end <= mark):
                    buckets.append(self._open.pop(index))
                    self._closed_index = max(index, self._closed_index if self._closed_index is not None else index)
            out: list[tuple[float, WindowProfile]] = []
            for bucket in buckets:
                out.append((self.size, bucket))
                for h in self._horizons:
                    out.extend((h, w) for w in self._roll(h, bucket))
            for h, acc in self._horizons.items():
                if acc is not None and acc.end <= mark:
                    out.append((h, acc))
                    self._horizons[h] = None
            return out

    def _roll(self, horizon: float, bucket: WindowProfile) -> list[WindowProfile]:
        """Merge a closed bucket into its horizon window; the horizon windows this closes."""
        per = round(horizon / self.size)
        index = round(bucket.start / self.size)
        period = index // per
        closed = []
        acc = self._horizons[horizon]
        if acc is not None and round(acc.start / horizon) != period:
            closed.append(acc)
            acc = None
        if acc is None:
            acc = self._new(period * horizon, (period + 1) * horizon)
        acc.merge(bucket)
        acc.start, acc.end = period * horizon, (period + 1) * horizon
        if index % per == per - 1:  # the period's last bucket
            closed.append(acc)
            acc = None
        self._horizons[horizon] = acc
        return closed

    def describe_partitions(self) -> dict[int, dict[str, Any]]:
        with self._lock:
            return self.clock.describe()

    def open_events(self) -> int:
        with self._lock:
            return sum(w.events for w in self._open.values())

    # -- state ------------------------------------------------------------------------------
    def snapshot(self, written: dict[str, int] | None = None) -> Snapshot:
        """The state now (see Snapshot); profiles whose stamp equals `written`'s are left
        out of `blobs` (they are stored already)."""
        written = written or {}
        with self._lock:
            profiles: dict[str, WindowProfile] = {}
            prefix = "b" if self.kind == "time" else "c"
            for i, w in self._open.items():
                profiles[f"{prefix}{i}"] = w
            for i, w in self._pending:
                profiles[f"{prefix}{i}"] = w
            for h, acc in self._horizons.items():
                if acc is not None:
                    profiles[f"h{h:g}"] = acc
            meta = {"kind": self.kind, "size": self.size, "closed_index": self._closed_index,
                    "count_index": self._count_index, "pending": [f"{prefix}{i}" for i, _ in self._pending],
                    "positions": {str(p): o for p, o in self.positions.items()}, "clock": self.clock.state(),
                    "late_events": self.late_events,
                    "summary": {k: [w.start, w.end, w.events] for k, w in profiles.items()}}
            stamps = {k: w.stamp for k, w in profiles.items()}
            blobs = {k: w.to_bytes() for k, w in profiles.items() if written.get(k) != w.stamp}
        return Snapshot(meta, blobs, stamps)

    def restore(self, meta: dict[str, Any], blobs: dict[str, bytes]) -> dict[str, int]:
        """Take up a snapshot's state (meta and every profile's bytes). Returns the restored
        profiles' stamps: they are stored as they are."""
        with self._lock:
            self._open.clear()
            self._pending.clear()
            self._horizons = dict.fromkeys(self._horizons)
            self._closed_index = meta.get("closed_index")
            self._count_index = int(meta.get("count_index", 0))
            self.positions = {int(p): int(o) for p, o in meta.get("positions", {}).items()}
            self.clock.restore(meta.get("clock", {}))
            self.late_events = int(meta.get("late_events", 0))
            pending = set(meta.get("pending", ()))
            stamps = {}
            for key, data in sorted(blobs.items()):
                w = WindowProfile.from_bytes(data)
                if w.kinds != self._template.kinds or w.prediction_kind != self._template.prediction_kind:
                    continue  # the features changed since (a new config): that window starts over
                stamps[key] = w.stamp
                if key.startswith("h"):
                    h = next((h for h in self._horizons if f"h{h:g}" == key), None)
                    if h is not None:
                        self._horizons[h] = w
                elif key in pending:
                    self._pending.append((int(key[1:]), w))
                else:
                    self._open[int(key[1:])] = w
            self._pending.sort(key=lambda iw: iw[0])
            return stamps

    def reset(self, closed_index: int | None = None, announce: bool = False) -> list[str]:
        """Start over (no usable checkpoint): drop the windows in progress; windows up to
        `closed_index` count as closed. Returns what was dropped, for the log. `announce`:
        another reader read before, so the windows the first records open lack its events
        (`started_over` names them)."""
        with self._lock:
            dropped = [describe(w.start, w.end, w.events)
                       for w in (*self._open.values(), *(w for _, w in self._pending),
                                 *(a for a in self._horizons.values() if a is not None))]
            self._open.clear()
            self._pending.clear()
            self._horizons = dict.fromkeys(self._horizons)
            self._closed_index = closed_index
            self.positions.clear()
            self.clock.restore({})
            self._starting_over = announce
            self._seen_since_reset, self._announced = set(), set()
            return dropped


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def describe(start: float, end: float, events: int) -> str:
    """A window as the log names it, dates included."""
    return f"{format_span(start, end, dates=True)} ({events} events)"
