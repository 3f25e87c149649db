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

import json
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
    # partition -> index of its first bucket in this window (horizon windows: see PartitionMark)
    first_buckets: dict[int, int] = field(default_factory=dict)
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
        for p, b in other.first_buckets.items():
            self.first_buckets[p] = min(b, self.first_buckets.get(p, b))

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
    """Record, per partition, the lowest offset this window holds (rows: mask or indices);
    a second reader adds records before those read first."""
    if origin is None or origin.partitions.size == 0:
        return
    parts, offs = origin.partitions[rows], origin.offsets[rows]
    if parts.size == 0:
        return
    order = np.lexsort((offs, parts))  # by partition, then offset: each partition's lowest first
    uniq, first = np.unique(parts[order], return_index=True)
    for p, o in zip(uniq.tolist(), offs[order][first].tolist(), strict=True):
        if o < w.first_offsets.get(p, o + 1):
            w.first_offsets[p] = o


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

    The horizon windows still open have the partition's closed buckets in them: their part
    is rebuilt from Kafka too, by a second reader, without moving the committed offset
    (see `TumblingWindows.side_reads`). `horizons_from`: where those buckets' records begin;
    `periods`: (horizon, period index) of those windows; `first_bucket`: the index of the
    partition's first bucket in them (its buckets before were handed out in windows already,
    maybe of the same period: a lane's part closes apart); `late`: per closed bucket of them,
    the offset of the partition's first record that came after the bucket had closed (it and
    the bucket's records after it are not in the horizon window). `handover`: the reader gave
    its part of the horizon windows up when the partition left it, so whoever reads the
    partition next rebuilds it; without, the part stays with that reader and the horizon
    fields are for its own restart only (`for_commit` leaves them out).
    """

    replay_from: int
    position: int
    closed: int | None = None
    horizons_from: int | None = None
    periods: tuple[tuple[float, int], ...] = ()
    late: tuple[tuple[int, int], ...] = ()
    handover: bool = False
    first_bucket: int | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"replay_from": self.replay_from, "position": self.position, "closed": self.closed}
        if self.horizons_from is not None:
            d["horizons_from"] = self.horizons_from
            d["periods"] = [[h, period] for h, period in self.periods]
            if self.first_bucket is not None:
                d["first_bucket"] = self.first_bucket
            if self.late:  # flat, each pair as the difference from the one before: compact
                d["late"] = [x for (b, o), (pb, po) in zip(self.late, ((0, 0), *self.late[:-1]), strict=True)
                             for x in (b - pb, o - po)]
            if self.handover:
                d["handover"] = True
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PartitionMark:
        closed, horizons_from = d.get("closed"), d.get("horizons_from")
        return cls(int(d["replay_from"]), int(d["position"]), None if closed is None else int(closed),
                   None if horizons_from is None else int(horizons_from),
                   tuple((float(h), int(period)) for h, period in d.get("periods") or ()),
                   _undelta(d.get("late") or ()),
                   bool(d.get("handover", False)),
                   None if d.get("first_bucket") is None else int(d["first_bucket"]))

    def for_commit(self, handover: bool = True) -> PartitionMark:
        """The mark as another process may use it: the horizon fields only if handed over
        (and `handover` allows it)."""
        if self.handover and handover:
            return self
        return PartitionMark(self.replay_from, self.position, self.closed)

    def to_metadata(self, store: str) -> tuple[str, bool]:
        """The committed offset's metadata (the offset itself is `replay_from`), and False if
        a handover had to be left out: Kafka caps metadata (offset.metadata.max.bytes, 4096
        by default), and that part of the horizon windows is then lost if the partition moves."""
        d = {"driftline": 1, "store": store, **self.for_commit().to_json()}
        del d["replay_from"]
        text = json.dumps(d, separators=(",", ":"))
        if len(text) > MAX_METADATA_BYTES and self.handover:
            return self.for_commit(handover=False).to_metadata(store)[0], False
        return text, True

    @classmethod
    def from_metadata(cls, offset: int | None, metadata: str) -> tuple[str, PartitionMark] | None:
        """(store id, mark) from a committed offset and its metadata, if driftline wrote it."""
        if offset is None or not metadata.startswith("{"):
            return None
        try:
            d = json.loads(metadata)
            if d.get("driftline") != 1:
                return None
            return str(d["store"]), cls.from_json({**d, "replay_from": offset})
        except (ValueError, KeyError, TypeError):
            return None


MAX_METADATA_BYTES = 3000  # below Kafka's default offset.metadata.max.bytes (4096)


def _period_of(window: WindowProfile, horizon: float) -> int:
    """The period index of a horizon window (it starts at period * horizon)."""
    return round(window.start / horizon)


def _undelta(flat: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """(bucket, offset) pairs from `PartitionMark.to_json`'s flat differences."""
    pairs = np.cumsum(np.asarray(flat, dtype=np.int64).reshape(-1, 2), axis=0)
    return tuple((int(b), int(o)) for b, o in pairs.tolist())


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
    before the buckets' replay_from, by a second reader (`side_reads`, `add_side`); the
    first late offset per bucket (`_late_from`) tells which records were in them. With
    `handover`, after a rebalance that moves partitions as well, by every partition's new
    reader from the partition's mark.
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
        # partition -> bucket index -> offset of the partition's first record that came after
        # the bucket had closed, for the buckets of open horizon windows. Offsets grow in the
        # order records arrive, so a record read again went into its bucket (and its horizon
        # window) iff it is before that offset: after it, it had come late.
        self._late_from: dict[int, dict[int, int]] = {}
        # Once the broker is known to keep commit metadata (`hand_over_horizons`): a partition's
        # part of the horizon windows goes with it to its next reader (`PartitionMark.handover`),
        # as its open buckets do. Before, a moved partition's part stays where it was.
        self.handover = False
        self._handover_wanted = False
        self._horizons_restored = False  # emptied, being rebuilt by reading again
        # (horizon, window) of periods later than the current one's, restored for a partition
        # whose previous reader was ahead; the buckets roll into them when they get there
        self._ahead: list[tuple[float, WindowProfile]] = []
        self._rebuild: set[int] = set()  # partitions whose part of them is being read again
        self._rebuild_periods: dict[int, tuple[tuple[float, int], ...]] = {}  # ... into these windows
        self._rebuild_from: dict[int, int] = {}  # ... from this bucket on (PartitionMark.first_bucket)
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
            if late and origin is not None and self._horizons:
                self._note_late(index, origin, ~on_time)
        elif late and self._rebuild:
            assert origin is not None
            self._rebuild_horizons(batch, index, origin, ~on_time)
        windows = self._open if lane is None else self._lanes[lane].open
        for i in np.unique(index[on_time]).tolist():
            w = windows.get(i)
            if w is None:
                w = windows[i] = self._new(i * self.size, (i + 1) * self.size)
            rows = on_time & (index == i)  # (a late record of another partition may share the index)
            w.add_batch(batch if rows.all() else batch.select(rows))
            _note_first_offsets(w, origin, rows)
            if self._horizons:
                for p in w.first_offsets:
                    w.first_buckets.setdefault(p, i)
        newest = float(batch.event_time[on_time].max()) if late < batch.size else -math.inf
        if lane is not None:
            behind = self._lanes[lane]
            if newest > behind.max_event_time:
                behind.max_event_time, behind.wall_at_max_event = newest, self._clock()
        elif newest > self._max_event_time:
            self._max_event_time = newest
            self._wall_at_max_event = self._clock()
        return 0 if replay else late

    def _note_late(self, index: np.ndarray, origin: Origin, late_rows: np.ndarray) -> None:
        """Records that came after their bucket had closed: per partition and bucket, the
        first such offset (see `_late_from`)."""
        parts, buckets, offs = origin.partitions[late_rows], index[late_rows], origin.offsets[late_rows]
        order = np.lexsort((offs, buckets, parts))  # each (partition, bucket)'s lowest offset first
        parts, buckets, offs = parts[order], buckets[order], offs[order]
        first = np.ones(parts.size, dtype=bool)
        first[1:] = (parts[1:] != parts[:-1]) | (buckets[1:] != buckets[:-1])
        for p, b, o in zip(parts[first].tolist(), buckets[first].tolist(), offs[first].tolist(), strict=True):
            known = self._late_from.setdefault(p, {})
            if o < known.get(b, o + 1):
                known[b] = o

    def _horizon_windows(self) -> list[tuple[float, WindowProfile]]:
        """Every horizon window being filled: current, held back and ahead."""
        return [*((h, acc) for h, acc in self._horizons.items() if acc is not None), *self._held,
                *self._ahead]

    def _horizon_parts(self) -> list[tuple[float, WindowProfile]]:
        """Those and the lanes' horizon windows: every horizon part a checkpoint describes."""
        return [*self._horizon_windows(),
                *((h, acc) for lane in self._lanes.values() for h, acc in lane.horizons.items() if acc is not None)]

    def _rebuild_horizons(self, batch: DecodedBatch, index: np.ndarray, origin: Origin,
                          closed_rows: np.ndarray) -> None:
        """Records read again, of buckets closed before (`closed_rows`): those that were in
        their bucket when it closed go into its horizon window again, if being rebuilt."""
        rows = closed_rows & np.isin(origin.partitions, list(self._rebuild))
        if not rows.any():
            return
        for p in np.unique(origin.partitions[rows]).tolist():
            late = self._late_from.get(p)
            if not late:
                continue
            mine = rows & (origin.partitions == p)
            for bucket in np.intersect1d(index[mine], list(late)).tolist():
                rows &= ~(mine & (index == bucket) & (origin.offsets >= late[bucket]))
        for p, first in self._rebuild_from.items():  # (its buckets before: handed out already)
            rows &= ~((origin.partitions == p) & (index < first))
        for horizon, acc in self._horizon_windows():
            period = _period_of(acc, horizon)
            mine = rows & (self._period(index, horizon) == period)
            if not mine.any():
                continue
            # only into the windows the partition's mark named: its previous reader had
            # handed out the others (none named: a checkpoint written before marks named them)
            named = [p for p in np.unique(origin.partitions[mine]).tolist()
                     if (horizon, period) in self._rebuild_periods.get(p, ((horizon, period),))]
            mine &= np.isin(origin.partitions, named)
            if mine.any():
                acc.add_batch(batch.select(mine))
                _note_first_offsets(acc, origin, mine)
                for p in named:
                    first = int(index[mine & (origin.partitions == p)].min(initial=np.iinfo(np.int64).max))
                    acc.first_buckets[p] = min(first, acc.first_buckets.get(p, first))

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
                for index in sorted(i for i, w in self._open.items() if w.end <= mark):
                    self._closed.append(self._open.pop(index))
                    self._last_closed_index = max(self._last_closed_index, index)
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
            horizons.extend((h, acc) for h, acc in self._ahead if acc.end <= mark)
            self._ahead = [(h, acc) for h, acc in self._ahead if acc.end > mark]
            self._held.extend(horizons)
            if not self._side:  # (a window restored empty that nothing was read again into: dropped)
                out.extend((h, w) for h, w in self._held if w.events)
                self._held.clear()
            self._prune_late()
            self._maybe_hand_over()
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
                        for done in self._roll(lane.horizons, horizon, w):
                            out.extend(self._lane_horizon_closed(horizon, done))
                    self._closed_floor[p] = max(self._closed_floor.get(p, -math.inf), index)
                for horizon, acc in lane.horizons.items():
                    if acc is not None and acc.end <= mark:
                        out.extend(self._lane_horizon_closed(horizon, acc))
                        lane.horizons[horizon] = None
            if (self._closed_floor.get(p, -math.inf) >= self._last_closed_index
                    and lane.max_event_time >= self._max_event_time - self.lateness / 2):
                self._merge_lane(p)
        return out

    def _lane_horizon_closed(self, horizon: float, acc: WindowProfile) -> list[tuple[float, WindowProfile]]:
        """A lane's horizon window has closed: handed out as a share, unless this process
        still fills a window of that period (the lane partition's part handed over to it, held
        back while it is rebuilt): then it joins that one, so that the partition's part of a
        period is in one window (and one handover) only."""
        for h, mine in self._horizon_windows():
            if h == horizon and mine.start == acc.start:
                mine.merge(acc)
                return []
        return [(horizon, acc)]

    def _prune_late(self) -> None:
        """Keep the late offsets of the buckets of horizon windows still being filled."""
        oldest = min((round(acc.start / self.size) for _, acc in self._horizon_parts()), default=math.inf)
        for p, late in list(self._late_from.items()):
            kept = {b: o for b, o in late.items() if b >= oldest}
            if kept:
                self._late_from[p] = kept
            else:
                del self._late_from[p]

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
            elif mine is None and _period_of(acc, horizon) == self._period(self._last_closed_index + 1, horizon):
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
        horizons = self._horizon_parts()
        every_period = {(h, _period_of(acc, h)) for h, acc in horizons}
        partitions = {}
        for p, pos in self._positions.items():
            if p in self._floor_from_first:
                continue  # nothing known yet: its committed offset stays, and tells the next reader
            firsts = [w.first_offsets[p] for w in pending if p in w.first_offsets]
            mark = self._marks.get(p)
            # the horizon windows holding a part of p (those of other periods were handed
            # out with p's part in them, or it had none there), and where its part begins
            in_horizons = [acc.first_offsets[p] for _, acc in horizons if p in acc.first_offsets]
            periods = {(h, _period_of(acc, h)) for h, acc in horizons if p in acc.first_offsets}
            first_buckets = [acc.first_buckets.get(p, -math.inf) for _, acc in horizons if p in acc.first_offsets]
            if p in self._rebuild:  # (and what is being read again into them)
                periods.update(self._rebuild_periods.get(p, every_period))
                first_buckets.append(self._rebuild_from.get(p, -math.inf))
                if mark is not None and mark.horizons_from is not None:
                    in_horizons.append(mark.horizons_from)
            first_bucket = min(first_buckets, default=-math.inf)  # (-inf: not known, none left out)
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
                closed=part_closed, horizons_from=min(in_horizons, default=None), periods=tuple(sorted(periods)),
                late=tuple(sorted(self._late_from.get(p, {}).items())), handover=self.handover,
                first_bucket=None if first_bucket == -math.inf else int(first_bucket)).to_json()
        state: dict[str, Any] = {
            "kind": self.kind, "closed_index": closed, "count_index": self._count_index - len(self._closed),
            "max_event_time": None if self._max_event_time == -math.inf else self._max_event_time,
            "partitions": partitions}
        if self._horizons:
            state["horizons"] = {repr(h): None if acc is None else _period_of(acc, h)
                                 for h, acc in self._horizons.items()}
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
            self._late_from.pop(partition, None)
            if mark.horizons_from is not None and not (self._horizons_restored or mark.handover):
                mark = replace(mark, horizons_from=None)  # its part stayed with its previous reader
            self._rebuild_periods.pop(partition, None)
            self._rebuild_from.pop(partition, None)
            if mark.horizons_from is not None:
                if mark.first_bucket is not None:
                    self._rebuild_from[partition] = mark.first_bucket
                if mark.late:
                    self._late_from[partition] = dict(mark.late)
                if mark.periods:
                    self._rebuild_periods[partition] = mark.periods
                self._open_periods(mark.periods)
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

    def hand_over_horizons(self, on: bool = True) -> None:
        """The broker keeps commit metadata: hand each partition's part of the horizon windows
        over with it from now on. Not while a horizon window holds the part of a partition
        that left in the meantime (it stayed here, and would be emptied with the next
        rebalance): then from when those windows have closed. (`on=False`: no more.)"""
        with self._lock:
            self._handover_wanted = on
            self.handover = self.handover and on
            self._maybe_hand_over()

    def _maybe_hand_over(self) -> None:
        if self._handover_wanted and not self.handover:
            held = {p for _, acc in self._horizon_parts() for p in acc.first_offsets}
            self.handover = held <= set(self._positions)

    def _open_periods(self, periods: tuple[tuple[float, int], ...]) -> None:
        """Horizon windows for a partition's part to be rebuilt into: its previous reader's
        open periods. One this process has moved past is held back until the rebuild is done
        (then handed out); one it has not reached yet waits ahead for its buckets."""
        for h, period in periods:
            if h not in self._horizons or any(
                    hh == h and _period_of(acc, h) == period for hh, acc in self._horizon_windows()):
                continue
            acc = self._new(period * h, (period + 1) * h)
            current = self._horizons[h]
            if current is None and self._last_closed_index == -math.inf:
                # nothing closed here yet: which period the first bucket closed here is in
                # depends on every partition's floor; the watermark hands past ones out
                self._ahead.append((h, acc))
                continue
            now = _period_of(current, h) if current is not None else self._period(self._last_closed_index + 1, h)
            if period == now and current is None:
                self._horizons[h] = acc
            elif period < now:
                self._held.append((h, acc))
            else:
                self._ahead.append((h, acc))

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
            rebuilt = self._horizons_restored or self.handover  # (the horizon windows: below)
            if not rebuilt:
                for lane in self._lanes.values():  # their horizon windows so far, as shares
                    self._shares_due.extend((h, acc) for h, acc in lane.horizons.items() if acc is not None)
            self._lanes.clear()
            self._rebuild.clear()
            self._rebuild_periods.clear()
            self._rebuild_from.clear()
            self._side.clear()
            self._side_generation += 1  # the readers of those ranges stop
            if rebuilt:
                # Each partition's part of the horizon windows goes with it: emptied here and
                # rebuilt, from its mark, by whoever reads it now (this process too, for the
                # partitions it gets). Without handover (the broker drops commit metadata) the
                # windows stay, unless they were being rebuilt: then a moved partition's part
                # is lost.
                self._horizons = {h: acc if acc is None else self._new(acc.start, acc.end)
                                  for h, acc in self._horizons.items()}
                self._held.clear()
                self._ahead.clear()
                self._late_from.clear()
                self._horizons_restored = True

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
            self._rebuild_periods.clear()
            self._rebuild_from.clear()
            self._side.clear()
            self._side_generation += 1
            self._late_from.clear()
            for w in (*self._open.values(), *(acc for _, acc in self._horizon_windows())):
                w.first_offsets.clear()

    def _period(self, index: Any, horizon: float) -> Any:
        """The period of `horizon` (epoch-aligned) that holds bucket `index` (or each of an
        array of them)."""
        periods = np.floor(np.asarray(index, dtype=np.float64) * self.size / horizon + 1e-9).astype(np.int64)
        return int(periods) if periods.ndim == 0 else periods

    def _roll(self, accs: dict[float, WindowProfile | None], horizon: float,
              bucket: WindowProfile) -> list[WindowProfile]:
        """Merge a closed bucket into `accs`' window of `horizon`; the windows this closes."""
        closed = []
        acc = accs[horizon]
        period = int(self._period(round(bucket.start / self.size), horizon))
        if acc is not None and acc.start != period * horizon:
            closed.append(acc)  # (dropped later if empty: see close_and_checkpoint)
            acc = None
        if acc is None:
            waiting = [i for i, (h, w) in enumerate(self._ahead) if h == horizon and w.start == period * horizon]
            if waiting and accs is self._horizons:
                acc = self._ahead.pop(waiting[0])[1]
            else:
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
