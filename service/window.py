"""Tumbling windows of events, kept as per-feature partial profiles.

A `WindowProfile` holds, per feature, the window's values (numerical: a compact float
array, bounded by a reservoir sample beyond `budget` values; categorical: exact counts)
and how many events lacked the feature. Profiles merge, so a window can be assembled
from parts.

Time windows are aligned to the epoch (a 5-minute window starts at :00, :05, …) and
close when the watermark passes their end plus the allowed lateness. The watermark is
the latest event time seen, advanced by the wall-clock time elapsed since that event
arrived: it follows event time while a backlog is replayed, and still closes the last
window when traffic stops.

A partition handed over from another process (a rebalance) may be behind this process's
windows: the windows its events belong to were closed here already, with this process's
own partitions only. Such a partition gets a lane of its own (`_Lane`): its events fill
windows of that partition alone, closed by its own watermark and evaluated as shares
(`WindowProfile.partitions`), until it has caught up and its windows merge into the
process's. So a handed-over window's events are counted once, by some process, instead
of arriving late.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from driftline.collectors.events import MISSING, DecodedBatch

from .drift import ColumnKind, ColumnSample

DEFAULT_BUDGET = 100_000
# Distinct labels kept per categorical feature per window; beyond, the rarest are counted
# together under OTHER_LABEL, so a feature of ever-new labels (ids) cannot grow memory.
MAX_LABELS = 10_000
OTHER_LABEL = "__other__"


class NumericalValues:
    """Every value up to `budget`, then a uniform reservoir sample of `budget` values."""

    __slots__ = ("_np_rng", "budget", "seen", "values")

    def __init__(self, budget: int = DEFAULT_BUDGET, seed: int | None = None) -> None:
        self.values = array("d")
        self.budget = budget
        self.seen = 0
        self._np_rng = np.random.default_rng(seed)

    def add_many(self, xs: np.ndarray) -> None:
        """Add values in order; the same sample law as calling `add` for each."""
        room = self.budget - len(self.values)
        if room > 0:
            head = xs[:room]
            self.values.frombytes(np.ascontiguousarray(head, dtype=np.float64).tobytes())
            self.seen += head.size
            xs = xs[room:]
        if xs.size == 0:
            return
        # Algorithm R for the k-th value overall: replace a uniform slot of [0, k) if it is
        # within the budget. numpy assigns repeated indices in order, last write winning,
        # which is the sequential algorithm's outcome.
        k = self.seen + np.arange(1, xs.size + 1, dtype=np.int64)
        slot = self._np_rng.integers(0, k)
        keep = slot < self.budget
        np.frombuffer(self.values, dtype=np.float64)[slot[keep]] = xs[keep]
        self.seen += xs.size

    def add(self, x: float) -> None:
        self.add_many(np.array([x], dtype=np.float64))

    def merge(self, other: NumericalValues) -> None:
        """Become a uniform sample of the union of both sides' values."""
        total = self.seen + other.seen
        if len(self.values) + len(other.values) <= self.budget and self.exact and other.exact:
            self.values.extend(other.values)
            self.seen = total
            return
        # A uniform sample of the union takes from each side a hypergeometric share (the
        # values each side stands for), drawn uniformly from that side's own sample.
        size = min(self.budget, total)
        from_self = int(self._np_rng.hypergeometric(self.seen, other.seen, size)) if other.seen else size
        mine = np.frombuffer(self.values, dtype=np.float64)
        theirs = np.frombuffer(other.values, dtype=np.float64)
        merged = np.concatenate((self._np_rng.choice(mine, from_self, replace=False),
                                 self._np_rng.choice(theirs, size - from_self, replace=False)))
        self.values = array("d", merged.tobytes())
        self.seen = total

    @property
    def exact(self) -> bool:
        return self.seen == len(self.values)

    def sample(self) -> ColumnSample:
        # sorted: the result does not depend on the order events arrived in (partitions
        # interleave differently from run to run, and sums in another order round apart)
        return ColumnSample(ColumnKind.NUMERICAL, values=np.sort(np.frombuffer(self.values, dtype=np.float64)))


@dataclass
class WindowProfile:
    """One window's partial profile: mergeable, and holding aggregates, not raw events."""

    kinds: tuple[ColumnKind, ...]
    start: float
    end: float
    budget: int = DEFAULT_BUDGET
    events: int = 0
    missing: list[int] = field(default_factory=list)
    numerical: dict[int, NumericalValues] = field(default_factory=dict)
    categorical: dict[int, Counter[str]] = field(default_factory=dict)
    prediction_kind: ColumnKind | None = None
    prediction_missing: int = 0
    model_versions: Counter[str] = field(default_factory=Counter)
    first_event_time: float = math.inf
    last_event_time: float = -math.inf
    # partition -> offset of its first event in this window: where a rebuild re-reads from
    first_offsets: dict[int, int] = field(default_factory=dict)
    # a share: these partitions' events only, of a window already evaluated here without them
    partitions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.missing = [0] * len(self.kinds)
        for i, kind in enumerate(self.kinds):
            if kind is ColumnKind.NUMERICAL:
                self.numerical[i] = NumericalValues(self.budget)
            else:
                self.categorical[i] = Counter()
        self._prediction: NumericalValues | Counter[str] | None = None
        if self.prediction_kind is ColumnKind.NUMERICAL:
            self._prediction = NumericalValues(self.budget)
        elif self.prediction_kind is ColumnKind.CATEGORICAL:
            self._prediction = Counter()

    def add(self, features: Sequence[float | str | None], event_time: float,
            prediction: float | str | None, model_version: str | None) -> None:
        """Account for one event (None: missing); the batch path does the work."""
        self.add_batch(one_event(self.kinds, self.prediction_kind, features, event_time, prediction, model_version))

    def add_batch(self, batch: DecodedBatch) -> None:
        """Account for a decoded batch of events (all of this window)."""
        if batch.size == 0:
            return
        self.events += batch.size
        for i, col in batch.numerical.items():
            present = ~np.isnan(col)
            n_present = int(np.count_nonzero(present))
            self.missing[i] += batch.size - n_present
            self.numerical[i].add_many(col if n_present == batch.size else col[present])
        for i, labels in batch.categorical.items():
            counts = self.categorical[i]
            counts.update(labels)
            self.missing[i] += counts.pop(MISSING, 0)
            if len(counts) > MAX_LABELS:
                _fold_rare(counts)
        if self._prediction is not None and batch.prediction is not None:
            if isinstance(self._prediction, NumericalValues):
                pred = np.asarray(batch.prediction)
                present = ~np.isnan(pred)
                self.prediction_missing += batch.size - int(np.count_nonzero(present))
                self._prediction.add_many(pred[present])
            else:
                self._prediction.update(batch.prediction)
                self.prediction_missing += self._prediction.pop(MISSING, 0)
        if batch.model_version is not None:
            self.model_versions.update(batch.model_version)
            self.model_versions.pop(MISSING, None)  # type: ignore[call-overload]
        lo, hi = float(batch.event_time.min()), float(batch.event_time.max())
        self.first_event_time = min(self.first_event_time, lo)
        self.last_event_time = max(self.last_event_time, hi)

    def merge(self, other: WindowProfile) -> None:
        if other.kinds != self.kinds:
            raise ValueError("cannot merge profiles of different features")
        self.events += other.events
        self.missing = [a + b for a, b in zip(self.missing, other.missing, strict=True)]
        for i, vals in other.numerical.items():
            self.numerical[i].merge(vals)
        for i, counts in other.categorical.items():
            self.categorical[i].update(counts)
            if len(self.categorical[i]) > MAX_LABELS:
                _fold_rare(self.categorical[i])
        if isinstance(self._prediction, NumericalValues) and isinstance(other._prediction, NumericalValues):
            self._prediction.merge(other._prediction)
        elif isinstance(self._prediction, Counter) and isinstance(other._prediction, Counter):
            self._prediction.update(other._prediction)
        self.prediction_missing += other.prediction_missing
        self.model_versions.update(other.model_versions)
        self.start, self.end = min(self.start, other.start), max(self.end, other.end)
        self.first_event_time = min(self.first_event_time, other.first_event_time)
        self.last_event_time = max(self.last_event_time, other.last_event_time)
        for p, o in other.first_offsets.items():
            self.first_offsets[p] = min(o, self.first_offsets.get(p, o))

    def sample(self, i: int) -> ColumnSample:
        if i in self.numerical:
            return self.numerical[i].sample()
        # labels in sorted order, not arrival order: sums over them must not round apart
        return ColumnSample.categorical(dict(sorted(self.categorical[i].items())))

    def exact(self, i: int) -> bool:
        return i not in self.numerical or self.numerical[i].exact

    def prediction_sample(self) -> ColumnSample | None:
        if isinstance(self._prediction, NumericalValues):
            return self._prediction.sample()
        if isinstance(self._prediction, Counter):
            return ColumnSample.categorical(dict(sorted(self._prediction.items())))
        return None


def one_event(kinds: tuple[ColumnKind, ...], prediction_kind: ColumnKind | None,
              features: Sequence[float | str | None], event_time: float, prediction: float | str | None,
              model_version: str | None) -> DecodedBatch:
    """A batch of one event, features given in the decoder's form (None: missing)."""
    def num(v: float | str | None) -> np.ndarray:
        return np.array([math.nan if v is None else v], dtype=np.float64)

    def label(v: float | str | None) -> list[object]:
        return [MISSING if v is None else v]

    pred: np.ndarray | list[object] | None = None
    if prediction_kind is ColumnKind.NUMERICAL:
        pred = num(prediction)
    elif prediction_kind is ColumnKind.CATEGORICAL:
        pred = label(prediction)
    return DecodedBatch(
        1, {i: num(v) for i, (k, v) in enumerate(zip(kinds, features, strict=True)) if k is ColumnKind.NUMERICAL},
        {i: label(v) for i, (k, v) in enumerate(zip(kinds, features, strict=True)) if k is ColumnKind.CATEGORICAL},
        np.array([event_time]), pred, None, label(model_version))


def _note_first_offsets(w: WindowProfile, origin: Origin | None, rows: np.ndarray) -> None:
    """Record, per partition, the first offset this window holds (rows: mask or indices)."""
    if origin is None or origin.partitions.size == 0:
        return
    parts, offs = origin.partitions[rows], origin.offsets[rows]
    if parts.size == 0:
        return
    uniq, first = np.unique(parts, return_index=True)
    for p, j in zip(uniq.tolist(), first.tolist(), strict=True):
        w.first_offsets.setdefault(p, int(offs[j]))


def _fold_rare(counts: Counter[str]) -> None:
    keep = dict(counts.most_common(MAX_LABELS - 1))
    other = sum(counts.values()) - sum(keep.values())
    counts.clear()
    counts.update(keep)
    counts[OTHER_LABEL] += other


Clock = Callable[[], float]


@dataclass(frozen=True)
class Origin:
    """Where a batch's events came from: per event its partition and offset, and per
    partition the offset after the batch's last record (valid or not)."""

    partitions: np.ndarray
    offsets: np.ndarray
    next_offsets: dict[int, int]
    replay: bool = False  # read again after a restart or rebalance: counted before

    def select(self, rows: np.ndarray) -> Origin:
        return Origin(self.partitions[rows], self.offsets[rows], self.next_offsets, self.replay)


@dataclass
class _Lane:
    """The windows of one partition that is behind this process's closed windows."""

    open: dict[int, WindowProfile] = field(default_factory=dict)
    max_event_time: float = -math.inf
    wall_at_max_event: float = 0.0
    # horizon size -> the running merge of this lane's closed windows of its current period
    horizons: dict[float, WindowProfile | None] = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionMark:
    """What a partition's previous reader had accounted for, from its checkpoint.

    Records before `replay_from` are in windows it closed: they are skipped. Records from
    `replay_from` to `position` were read before: those of windows still open are added
    again (the open windows are rebuilt from Kafka, as no raw value is stored), the others
    skipped, and none is counted again. Time windows up to index `closed` were closed and
    evaluated by that reader (None: none).

    `horizons_from` (this process's own checkpoint only, never in commit metadata): where
    the closed buckets of the horizons' open windows begin. After a restart, a second
    reader reads the records from there to `replay_from` again, to rebuild those horizon
    windows too (see `TumblingWindows.restore`, `side_reads`); the committed offset does not
    move for it.
    """

    replay_from: int
    position: int
    closed: int | None = None
    horizons_from: int | None = None

    def to_json(self) -> dict[str, int | None]:
        d = {"replay_from": self.replay_from, "position": self.position, "closed": self.closed}
        if self.horizons_from is not None:
            d["horizons_from"] = self.horizons_from
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PartitionMark:
        closed, horizons_from = d.get("closed"), d.get("horizons_from")
        return cls(int(d["replay_from"]), int(d["position"]), None if closed is None else int(closed),
                   None if horizons_from is None else int(horizons_from))


class TumblingWindows:
    """Assigns events to tumbling windows and hands out the ones that have closed.

    The consumer thread calls `add_batch`; the evaluation job calls `close_due`. Both take
    the same lock, held only for a dict lookup and an append.

    Crash safety: `checkpoint()` describes, per partition, what is accounted for (a
    `PartitionMark`) plus the window markers, all taken under the lock, so one consistent
    cut. It holds positions and counters only: open windows are rebuilt after a restart or
    a rebalance by reading their events from Kafka again (`adopt` a partition's mark, then
    feed its records with `Origin.replay` while they are below the mark's position). The
    horizon windows still open are rebuilt after a restart too: their closed buckets' records,
    before the buckets' replay_from, by a second reader (`side_reads`, `add_side`), and the
    positions at each closing step tell which records were in them and which came late.
    """

    def __init__(self, *, kind: str, size: float, allowed_lateness: float, kinds: tuple[ColumnKind, ...],
                 prediction_kind: ColumnKind | None, clock: Clock, budget: int = DEFAULT_BUDGET,
                 horizons: tuple[float, ...] = ()) -> None:
        if kind not in ("time", "count"):
            raise ValueError(f"unknown window type {kind!r}")
        if horizons and kind != "time":
            raise ValueError("horizons need time windows")
        # horizon size -> the running merge of the closed buckets of its current period
        self._horizons: dict[float, WindowProfile | None] = dict.fromkeys(horizons)
        self.kind, self.size, self.lateness = kind, size, allowed_lateness
        self._kinds, self._prediction_kind, self._budget = kinds, prediction_kind, budget
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[int, WindowProfile] = {}
        self._closed: list[WindowProfile] = []
        self._last_closed_index: float = -math.inf
        self._max_event_time = -math.inf
        self._wall_at_max_event = 0.0
        self._count_index = 0
        self.late_events = 0
        self._positions: dict[int, int] = {}  # partition -> offset after the last record read
        self._marks: dict[int, PartitionMark] = {}  # partitions still replaying what was read before
        # partition -> windows up to this index are closed for it (by this process or its
        # previous reader); -inf: none
        self._closed_floor: dict[int, float] = {}
        self._floor_from_first: set[int] = set()  # adopted without a known floor
        self._lanes: dict[int, _Lane] = {}  # partitions behind the closed windows
        self._paused = False  # partitions revoked, not yet assigned again: nothing may close
        # Horizon windows after a restart (`restore`): each closing step whose buckets are in
        # an open horizon window, as (highest bucket index closed, every partition's position
        # then). A record read again was merged into its horizon window iff it came before
        # the position of the step that closed its bucket; after it, it had come late.
        self._close_steps: list[tuple[int, dict[int, int]]] = []
        self._horizons_restored = False  # restored empty, rebuilt by reading again
        self._rebuild: set[int] = set()  # partitions whose part of them is being read again
        # partition -> the offsets [from, to) before its replay_from that a second reader
        # reads to rebuild the horizon windows (`side_reads`), so that the buckets need not
        # wait for it; the horizon windows that close meanwhile are held back until it is done
        self._side: dict[int, tuple[int, int, int]] = {}
        self._side_generation = 0  # one per assignment: the second readers of another stop
        self._held: list[tuple[float, WindowProfile]] = []
        self._shares_due: list[tuple[float, WindowProfile]] = []  # horizon shares of lanes merged

    def _new(self, start: float, end: float) -> WindowProfile:
        return WindowProfile(self._kinds, start, end, self._budget, prediction_kind=self._prediction_kind)

    def add(self, features: Sequence[float | str | None], event_time: float,
            prediction: float | str | None, model_version: str | None) -> bool:
        """Account for one event; False if it arrived after its window had closed."""
        batch = one_event(self._kinds, self._prediction_kind, features, event_time, prediction, model_version)
        return self.add_batch(batch) == 0

    def add_batch(self, batch: DecodedBatch, origin: Origin | None = None) -> int:
        """Account for a decoded batch; return how many events arrived after their window
        closed (replayed events are never counted: they were before)."""
        with self._lock:
            late = self._add(batch, origin)
            if origin is not None:
                for p, nxt in origin.next_offsets.items():
                    if nxt > self._positions.get(p, -1):
                        self._positions[p] = nxt
                    mark = self._marks.get(p)
                    if mark is not None and nxt >= mark.position:
                        self._replayed(p)  # caught up: what follows is new
                        self._resume_watermark()
            return late

    def _add(self, batch: DecodedBatch, origin: Origin | None) -> int:
        if batch.size == 0:
            return 0
        if self.kind == "count":
            start = 0
            while start < batch.size:
                w = self._open.get(self._count_index)
                if w is None:
                    t0 = float(batch.event_time[start])
                    w = self._open[self._count_index] = self._new(t0, t0)
                take = min(int(self.size) - w.events, batch.size - start)
                rows = np.arange(start, start + take)
                w.add_batch(batch.select(rows))
                _note_first_offsets(w, origin, rows)
                w.start, w.end = w.first_event_time, w.last_event_time
                start += take
                if w.events >= self.size:
                    self._closed.append(self._open.pop(self._count_index))
                    self._count_index += 1
            return 0
        index = np.floor(batch.event_time / self.size).astype(np.int64)
        if origin is None:
            return self._add_timed(batch, index, None)
        if self._floor_from_first:
            self._decide_floors(index, origin)
        if not self._lanes:
            return self._add_timed(batch, index, origin)
        in_lane = np.isin(origin.partitions, list(self._lanes))
        late = 0
        for p in np.unique(origin.partitions[in_lane]).tolist():
            rows = origin.partitions == p
            late += self._add_timed(batch.select(rows), index[rows], origin.select(rows), p)
        if not in_lane.all():
            rest = ~in_lane
            late += self._add_timed(batch.select(rest), index[rest], origin.select(rest))
        return late

    def _add_timed(self, batch: DecodedBatch, index: np.ndarray, origin: Origin | None,
                   lane: int | None = None) -> int:
        """Add to this process's windows, or (lane: a partition) to that partition's lane."""
        if lane is not None:
            on_time = index > self._closed_floor.get(lane, -math.inf)
        elif origin is not None and self._closed_floor:
            floor = self._last_closed_index
            floors = np.array([max(floor, self._closed_floor.get(p, floor)) for p in origin.partitions.tolist()])
            on_time = index > floors
        else:
            on_time = index > self._last_closed_index
        late = batch.size - int(np.count_nonzero(on_time))
        replay = origin is not None and origin.replay
        if not replay:
            self.late_events += late
        elif late and lane is None and self._rebuild:
            assert origin is not None
            self._rebuild_horizons(batch, index, origin, ~on_time)
        windows = self._open if lane is None else self._lanes[lane].open
        for i in np.unique(index[on_time]).tolist():
            w = windows.get(i)
            if w is None:
                w = windows[i] = self._new(i * self.size, (i + 1) * self.size)
            rows = index == i
            w.add_batch(batch if rows.all() else batch.select(rows))
            _note_first_offsets(w, origin, rows)
        newest = float(batch.event_time[on_time].max()) if late < batch.size else -math.inf
        if lane is not None:
            behind = self._lanes[lane]
            if newest > behind.max_event_time:
                behind.max_event_time, behind.wall_at_max_event = newest, self._clock()
        elif newest > self._max_event_time:
            self._max_event_time = newest
            self._wall_at_max_event = self._clock()
        return 0 if replay else late

    def _rebuild_horizons(self, batch: DecodedBatch, index: np.ndarray, origin: Origin,
                          closed_rows: np.ndarray) -> None:
        """Records read again after a restart, of buckets closed before it (`closed_rows`):
        those that were merged into a horizon window still open go into it again."""
        rows = closed_rows & np.isin(origin.partitions, list(self._rebuild))
        if not rows.any() or not self._close_steps:
            return
        uptos = np.array([upto for upto, _ in self._close_steps])
        step = np.searchsorted(uptos, index, side="left")  # the step that closed each record's bucket
        before = np.full(index.size, -1, dtype=np.int64)
        for p in np.unique(origin.partitions[rows]).tolist():
            at_close = np.array([positions.get(p, -1) for _, positions in self._close_steps] + [-1])
            mine = rows & (origin.partitions == p)
            before[mine] = at_close[step[mine]]
        rows &= origin.offsets < before  # read before its bucket closed: it was in the bucket
        for horizon, acc in [*((h, acc) for h, acc in self._horizons.items() if acc is not None), *self._held]:
            mine = rows & (np.floor(index * self.size / horizon + 1e-9) == round(acc.start / horizon))
            if mine.any():
                acc.add_batch(batch.select(mine))
                _note_first_offsets(acc, origin, mine)

    def _decide_floors(self, index: np.ndarray, origin: Origin) -> None:
        """A partition adopted without a known floor (its previous reader's commit carried
        no marks: e.g. Tansu drops commit metadata): its first record, at the committed
        offset, begins the oldest window that reader left open, so the windows before were
        closed for it. (Wrong only if that reader had skipped a whole window of the
        partition and records of that window follow: they count as late.)"""
        for p in set(origin.partitions.tolist()) & self._floor_from_first:
            first = int(np.argmax(origin.partitions == p))
            floor = float(index[first] - 1)
            self._closed_floor[p] = floor
            self._floor_from_first.discard(p)
            self._lane_if_behind(p)

    def _lane_if_behind(self, p: int) -> None:
        if self.kind == "time" and self._closed_floor.get(p, -math.inf) < self._last_closed_index:
            self._lanes.setdefault(p, _Lane(horizons=dict.fromkeys(self._horizons)))

    def watermark(self) -> float:
        if self._max_event_time == -math.inf:
            return -math.inf
        return self._max_event_time + max(0.0, self._clock() - self._wall_at_max_event)

    @property
    def replaying(self) -> bool:
        """True while an adopted partition has not yet been read up to its mark's position:
        its open windows are incomplete and must not close."""
        with self._lock:
            return bool(self._marks) or self._paused

    def close_due(self) -> list[tuple[float, WindowProfile]]:
        """(horizon, window) of the windows that closed since the last call, oldest first.

        The buckets (windows of `size`) come with horizon `size`; each longer horizon's
        window is the merge of the buckets of its period, closed with its last bucket or
        when the watermark passes its end. Nothing closes while a partition replays."""
        return self.close_and_checkpoint()[0]

    def close_and_checkpoint(self) -> tuple[list[tuple[float, WindowProfile]], dict[str, Any]]:
        """`close_due`, and the checkpoint of the state right after, in one cut."""
        with self._lock:
            if self._marks or self._paused:
                return [], self._checkpoint()
            if not self._side:
                self._horizons_restored = False  # every partition read again: rebuilt
            mark = -math.inf
            if self.kind == "time":
                mark = self.watermark() - self.lateness
                before = self._last_closed_index
                for index in sorted(i for i, w in self._open.items() if w.end <= mark):
                    self._closed.append(self._open.pop(index))
                    self._last_closed_index = max(self._last_closed_index, index)
                if self._horizons and self._last_closed_index > before:
                    self._close_steps.append((int(self._last_closed_index), {
                        p: pos for p, pos in self._positions.items() if p not in self._lanes}))
            buckets, self._closed = self._closed, []
            out: list[tuple[float, WindowProfile]] = []
            horizons: list[tuple[float, WindowProfile]] = []
            for bucket in buckets:
                out.append((self.size, bucket))
                for horizon in self._horizons:
                    horizons.extend((horizon, w) for w in self._roll(self._horizons, horizon, bucket))
            for horizon, acc in self._horizons.items():
                if acc is not None and acc.end <= mark:
                    horizons.append((horizon, acc))
                    self._horizons[horizon] = None
            self._held.extend(horizons)
            if not self._side:  # (a window restored empty that nothing was read again into: dropped)
                out.extend((h, w) for h, w in self._held if w.events)
                self._held.clear()
            self._prune_close_steps()
            out.extend(self._close_lanes())
            out.extend(self._shares_due)
            self._shares_due.clear()
            return out, self._checkpoint()

    def _close_lanes(self) -> list[tuple[float, WindowProfile]]:
        """Close each lane's windows by its own watermark, as shares, rolled into the lane's
        own horizon windows (shares too); merge a lane that has caught up (closed all this
        process closed, and its event time within half the lateness of the process's) into
        the process's windows."""
        out: list[tuple[float, WindowProfile]] = []
        now = self._clock()
        for p, lane in list(self._lanes.items()):
            if lane.max_event_time != -math.inf:
                mark = lane.max_event_time + max(0.0, now - lane.wall_at_max_event) - self.lateness
                for index in sorted(i for i, w in lane.open.items() if w.end <= mark):
                    w = lane.open.pop(index)
                    w.partitions = (p,)
                    out.append((self.size, w))
                    for horizon in lane.horizons:
                        out.extend((horizon, acc) for acc in self._roll(lane.horizons, horizon, w))
                    self._closed_floor[p] = max(self._closed_floor.get(p, -math.inf), index)
                for horizon, acc in lane.horizons.items():
                    if acc is not None and acc.end <= mark:
                        out.append((horizon, acc))
                        lane.horizons[horizon] = None
            if (self._closed_floor.get(p, -math.inf) >= self._last_closed_index
                    and lane.max_event_time >= self._max_event_time - self.lateness / 2):
                self._merge_lane(p)
        return out

    def _prune_close_steps(self) -> None:
        """Keep the steps that closed buckets of the open horizon windows."""
        held = [w for _, w in self._held]
        firsts = [round(acc.start / self.size) for acc in [*self._horizons.values(), *held] if acc is not None]
        oldest = min(firsts, default=math.inf)
        self._close_steps = [s for s in self._close_steps if s[0] >= oldest]

    def _merge_lane(self, p: int) -> None:
        """The lane's open windows join the process's; so does each of its horizon windows
        of the process's current period. One of a later period (the process has not closed
        that period's first bucket yet) is handed out as a share."""
        lane = self._lanes.pop(p)
        for i, w in lane.open.items():
            mine = self._open.get(i)
            if mine is None:
                self._open[i] = w
            else:
                mine.merge(w)
        for horizon, acc in lane.horizons.items():
            if acc is None:
                continue
            mine = self._horizons.get(horizon)
            if mine is not None and mine.start == acc.start:
                mine.merge(acc)
            elif mine is None and acc.start == self._period_start(self._last_closed_index + 1, horizon):
                acc.partitions = None  # the period the process's next bucket rolls into
                self._horizons[horizon] = acc
            else:
                self._shares_due.append((horizon, acc))

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """The state to store, without closing anything (see `close_and_checkpoint`)."""
        with self._lock:
            return self._checkpoint()

    def _checkpoint(self) -> dict[str, Any]:
        # windows closed but not yet handed out count as open: they are rebuilt, not lost
        pending = [*self._open.values(), *self._closed,
                   *(w for lane in self._lanes.values() for w in lane.open.values())]
        # (only count windows wait there: time windows close and are handed out in one step)
        closed = None if self._last_closed_index == -math.inf else int(self._last_closed_index)
        horizons = [acc for acc in self._horizons.values() if acc is not None]
        partitions = {}
        for p, pos in self._positions.items():
            if p in self._floor_from_first:
                continue  # nothing known yet: its committed offset stays, and tells the next reader
            firsts = [w.first_offsets[p] for w in pending if p in w.first_offsets]
            mark = self._marks.get(p)
            in_horizons = [acc.first_offsets[p] for acc in horizons if p in acc.first_offsets]
            if mark is not None and mark.horizons_from is not None and p in self._rebuild:
                in_horizons.append(mark.horizons_from)
            if p in self._side:
                in_horizons.append(self._side[p][0])
            floor = self._closed_floor.get(p, -math.inf)
            if p in self._lanes:
                part_closed = None if floor == -math.inf else int(floor)
            else:
                part_closed = closed if floor == -math.inf else int(max(floor, self._last_closed_index))
            partitions[str(p)] = PartitionMark(
                # (while replaying, reading may have begun before replay_from: horizons_from)
                replay_from=min(firsts, default=pos) if mark is None else min([mark.replay_from, *firsts]),
                position=pos if mark is None else max(pos, mark.position),
                closed=part_closed, horizons_from=min(in_horizons, default=None)).to_json()
        state: dict[str, Any] = {
            "kind": self.kind, "closed_index": closed, "count_index": self._count_index - len(self._closed),
            "max_event_time": None if self._max_event_time == -math.inf else self._max_event_time,
            "partitions": partitions}
        if self._horizons:
            state["horizons"] = {repr(h): None if acc is None else round(acc.start / h)
                                 for h, acc in self._horizons.items()}
            state["close_steps"] = [[upto, {str(p): pos for p, pos in positions.items()}]
                                    for upto, positions in self._close_steps]
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Take up the window markers of a checkpoint (partitions are adopted one by one)."""
        with self._lock:
            if state.get("kind") != self.kind:
                return
            if state.get("closed_index") is not None:
                self._last_closed_index = int(state["closed_index"])
            self._count_index = int(state.get("count_index", 0))
            if state.get("max_event_time") is not None:
                self._max_event_time = float(state["max_event_time"])
                self._wall_at_max_event = self._clock()
            # Open horizon windows come back empty, and are rebuilt from Kafka like the open
            # buckets: each partition's records from its mark's horizons_from to its
            # replay_from are read by a second reader (`side_reads`), those from replay_from
            # on by the consumer, and the records that were in the closed buckets go into
            # them again (`_rebuild_horizons`). Until the partitions are assigned, nothing
            # closes; until the second reader is done, no horizon window closes.
            periods = state.get("horizons") or {}
            for h in self._horizons:
                period = periods.get(repr(h))
                if period is not None:
                    self._horizons[h] = self._new(period * h, (period + 1) * h)
                    self._horizons_restored = self._paused = True
            self._close_steps = [(int(upto), {int(p): int(pos) for p, pos in positions.items()})
                                 for upto, positions in state.get("close_steps") or []]

    def _resume_watermark(self) -> None:
        """The watermark advances with the wall clock only while this process reads: the
        time spent down, rejoining and replaying must not close windows early."""
        if self._max_event_time != -math.inf:
            self._wall_at_max_event = self._clock()

    def adopt(self, partition: int, mark: PartitionMark | None, start: int | None) -> int | None:
        """A partition is now read by this process, from offset `start` (None: unknown yet).
        With a mark, its records up to the mark's position are a replay (see PartitionMark).
        Returns the offset to read from.

        Windows up to the mark's `closed` were closed for the partition; without a mark, its
        first record decides (`_decide_floors`). If that
        leaves it behind this process's closed windows, it gets a lane (module docstring).
        The mark's `horizons_from` counts only while horizon windows are being restored."""
        with self._lock:
            self._paused = False
            self._resume_watermark()
            self._closed_floor.pop(partition, None)
            self._floor_from_first.discard(partition)
            self._lanes.pop(partition, None)
            self._rebuild.discard(partition)
            if mark is None:
                self._marks.pop(partition, None)
                if start is not None:
                    self._positions[partition] = start
                    if self.kind == "time":
                        self._floor_from_first.add(partition)
                return start
            self._side.pop(partition, None)
            if not self._horizons_restored and mark.horizons_from is not None:
                mark = replace(mark, horizons_from=None)
            if mark.horizons_from is not None and mark.horizons_from < mark.replay_from:
                self._side[partition] = (mark.horizons_from, mark.replay_from, self._side_generation)
                self._rebuild.add(partition)
            self._positions[partition] = mark.replay_from
            self._closed_floor[partition] = -math.inf if mark.closed is None else mark.closed
            self._lane_if_behind(partition)
            if mark.position > self._positions[partition]:
                self._marks[partition] = mark
                if mark.horizons_from is not None:
                    self._rebuild.add(partition)
            return mark.replay_from

    def _replayed(self, partition: int) -> None:
        """The partition has been read up to its mark's position (caller holds the lock)."""
        del self._marks[partition]
        if partition not in self._side:
            self._rebuild.discard(partition)

    def side_reads(self) -> dict[int, tuple[int, int, int]]:
        """Partition -> (from, to, generation): the offsets [from, to) that a second reader,
        outside the consumer group, reads and hands to `add_side` (then `side_done`), to
        rebuild the horizon windows restored after a restart. The buckets do not wait for it;
        horizon windows do not close before it is done."""
        with self._lock:
            return dict(self._side)

    def add_side(self, batch: DecodedBatch, origin: Origin, generation: int) -> bool:
        """Records a second reader read for `side_reads` of that generation; False once the
        reading is no longer wanted (the partitions moved, or it was done)."""
        with self._lock:
            wanted = {p: r for p, r in self._side.items() if r[2] == generation}
            if not wanted:
                return False
            if batch.size and self.kind == "time":
                index = np.floor(batch.event_time / self.size).astype(np.int64)
                inside = np.zeros(batch.size, dtype=bool)
                floors = np.full(batch.size, self._last_closed_index)
                for p, (lo, hi, _) in wanted.items():
                    mine = origin.partitions == p
                    inside |= mine & (origin.offsets >= lo) & (origin.offsets < hi)
                    floors[mine] = max(self._closed_floor.get(p, -math.inf), self._last_closed_index)
                rows = inside & (index <= floors)
                if rows.any():
                    self._rebuild_horizons(batch, index, origin, rows)
            return True

    def side_done(self, partition: int, generation: int) -> None:
        """The second reader has read the partition's range up to its end."""
        with self._lock:
            got = self._side.get(partition)
            if got is not None and got[2] == generation:
                del self._side[partition]
                if partition not in self._marks:
                    self._rebuild.discard(partition)

    def mark(self, partition: int) -> PartitionMark | None:
        with self._lock:
            return self._marks.get(partition)

    def pause(self) -> None:
        """The partitions are revoked: until they are assigned again, nothing closes (a
        window holding events of a partition that moves elsewhere must be rebuilt)."""
        with self._lock:
            self._paused = True

    def keep(self, partition: int) -> int | None:
        """A partition came back to this process with nobody reading it in between: its
        events stay in the open windows. Returns its position, where reading goes on."""
        with self._lock:
            self._paused = False
            pos = self._positions.get(partition)
            mark = self._marks.get(partition)
            if mark is not None and (pos is None or pos >= mark.position):
                self._replayed(partition)
            return pos  # (a replay cut short by the revocation goes on from there)

    def release(self) -> None:
        """Partitions went to another process: drop the open windows (the partitions kept
        are rebuilt from Kafka like the others) and every position."""
        with self._lock:
            self._paused = False
            self._open.clear()
            self._closed.clear()
            self._positions.clear()
            self._marks.clear()
            self._closed_floor.clear()
            self._floor_from_first.clear()
            for lane in self._lanes.values():  # their horizon windows so far, as shares
                self._shares_due.extend((h, acc) for h, acc in lane.horizons.items() if acc is not None)
            self._lanes.clear()
            self._rebuild.clear()
            self._side.clear()
            self._side_generation += 1  # the readers of those ranges stop
            if self._horizons_restored:
                # restored horizon windows not rebuilt yet: emptied, rebuilt by whoever reads
                # the partitions this process gets now (a moved partition's part is lost, and
                # so are those of a period that ended meanwhile)
                self._horizons = {h: acc if acc is None else self._new(acc.start, acc.end)
                                  for h, acc in self._horizons.items()}
                self._held.clear()

    def caught_up(self, positions: dict[int, int]) -> None:
        """The consumer's fetch positions: a partition whose position reached its mark's
        has nothing more to replay, even if no record came (an idle partition)."""
        with self._lock:
            for p, pos in positions.items():
                mark = self._marks.get(p)
                if mark is not None and pos >= mark.position:
                    self._replayed(p)
                    self._positions[p] = max(self._positions.get(p, pos), pos)
                    self._resume_watermark()

    def forget_positions(self) -> None:
        """The topic was recreated: its old offsets mean nothing any more."""
        with self._lock:
            for p in list(self._lanes):
                self._merge_lane(p)
            self._positions.clear()
            self._marks.clear()
            self._closed_floor.clear()
            self._floor_from_first.clear()
            self._rebuild.clear()
            self._side.clear()
            self._side_generation += 1
            self._close_steps.clear()
            for w in (*self._open.values(), *(acc for acc in self._horizons.values() if acc is not None)):
                w.first_offsets.clear()

    def _period_start(self, index: float, horizon: float) -> float:
        """Where the period of `horizon` that holds bucket `index` begins."""
        return math.floor(index * self.size / horizon + 1e-9) * horizon

    def _roll(self, accs: dict[float, WindowProfile | None], horizon: float,
              bucket: WindowProfile) -> list[WindowProfile]:
        """Merge a closed bucket into `accs`' window of `horizon`; the windows this closes."""
        closed = []
        acc = accs[horizon]
        period = math.floor(bucket.start / horizon + 1e-9)
        if acc is not None and acc.start != period * horizon:
            closed.append(acc)  # (dropped later if empty: see close_and_checkpoint)
            acc = None
        if acc is None:
            acc = self._new(period * horizon, (period + 1) * horizon)
        acc.merge(bucket)
        acc.start, acc.end = period * horizon, (period + 1) * horizon
        acc.partitions = bucket.partitions
        if bucket.end >= acc.end - 1e-9:
            closed.append(acc)
            acc = None
        accs[horizon] = acc
        return closed

    def open_events(self) -> int:
        with self._lock:
            return (sum(w.events for w in self._open.values())
                    + sum(w.events for lane in self._lanes.values() for w in lane.open.values()))
