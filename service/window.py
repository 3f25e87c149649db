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
"""

from __future__ import annotations

import math
import threading
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
        return ColumnSample(ColumnKind.NUMERICAL, values=np.frombuffer(self.values, dtype=np.float64).copy())


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

    def sample(self, i: int) -> ColumnSample:
        if i in self.numerical:
            return self.numerical[i].sample()
        return ColumnSample.categorical(dict(self.categorical[i]))

    def exact(self, i: int) -> bool:
        return i not in self.numerical or self.numerical[i].exact

    def prediction_sample(self) -> ColumnSample | None:
        if isinstance(self._prediction, NumericalValues):
            return self._prediction.sample()
        if isinstance(self._prediction, Counter):
            return ColumnSample.categorical(dict(self._prediction))
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


def _fold_rare(counts: Counter[str]) -> None:
    keep = dict(counts.most_common(MAX_LABELS - 1))
    other = sum(counts.values()) - sum(keep.values())
    counts.clear()
    counts.update(keep)
    counts[OTHER_LABEL] += other


Clock = Callable[[], float]


class TumblingWindows:
    """Assigns events to tumbling windows and hands out the ones that have closed.

    The consumer thread calls `add`; the evaluation job calls `close_due`. Both take the
    same lock, held only for a dict lookup and an append.
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
        self._last_closed_index = -math.inf
        self._max_event_time = -math.inf
        self._wall_at_max_event = 0.0
        self._count_index = 0
        self.late_events = 0

    def _new(self, start: float, end: float) -> WindowProfile:
        return WindowProfile(self._kinds, start, end, self._budget, prediction_kind=self._prediction_kind)

    def add(self, features: Sequence[float | str | None], event_time: float,
            prediction: float | str | None, model_version: str | None) -> bool:
        """Account for one event; False if it arrived after its window had closed."""
        batch = one_event(self._kinds, self._prediction_kind, features, event_time, prediction, model_version)
        return self.add_batch(batch) == 0

    def add_batch(self, batch: DecodedBatch) -> int:
        """Account for a decoded batch; return how many events arrived after their window closed."""
        if batch.size == 0:
            return 0
        with self._lock:
            if self.kind == "count":
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
                        self._closed.append(self._open.pop(self._count_index))
                        self._count_index += 1
                return 0
            index = np.floor(batch.event_time / self.size).astype(np.int64)
            on_time = index > self._last_closed_index
            late = batch.size - int(np.count_nonzero(on_time))
            self.late_events += late
            for i in np.unique(index[on_time]).tolist():
                w = self._open.get(i)
                if w is None:
                    w = self._open[i] = self._new(i * self.size, (i + 1) * self.size)
                rows = index == i
                w.add_batch(batch if rows.all() else batch.select(rows))
            newest = float(batch.event_time[on_time].max()) if late < batch.size else -math.inf
            if newest > self._max_event_time:
                self._max_event_time = newest
                self._wall_at_max_event = self._clock()
            return late

    def watermark(self) -> float:
        if self._max_event_time == -math.inf:
            return -math.inf
        return self._max_event_time + max(0.0, self._clock() - self._wall_at_max_event)

    def close_due(self) -> list[tuple[float, WindowProfile]]:
        """(horizon, window) of the windows that closed since the last call, oldest first.

        The buckets (windows of `size`) come with horizon `size`; each longer horizon's
        window is the merge of the buckets of its period, closed with its last bucket or
        when the watermark passes its end."""
        with self._lock:
            mark = -math.inf
            if self.kind == "time":
                mark = self.watermark() - self.lateness
                for index in sorted(i for i, w in self._open.items() if w.end <= mark):
                    self._closed.append(self._open.pop(index))
                    self._last_closed_index = max(self._last_closed_index, index)
            buckets, self._closed = self._closed, []
            out: list[tuple[float, WindowProfile]] = []
            for bucket in buckets:
                out.append((self.size, bucket))
                for horizon in self._horizons:
                    out.extend((horizon, w) for w in self._roll(horizon, bucket))
            for horizon, acc in self._horizons.items():
                if acc is not None and acc.end <= mark:
                    out.append((horizon, acc))
                    self._horizons[horizon] = None
        return out

    def _roll(self, horizon: float, bucket: WindowProfile) -> list[WindowProfile]:
        closed = []
        acc = self._horizons[horizon]
        period = math.floor(bucket.start / horizon + 1e-9)
        if acc is not None and acc.start != period * horizon:
            closed.append(acc)
            acc = None
        if acc is None:
            acc = self._new(period * horizon, (period + 1) * horizon)
        acc.merge(bucket)
        acc.start, acc.end = period * horizon, (period + 1) * horizon
        if bucket.end >= acc.end - 1e-9:
            closed.append(acc)
            acc = None
        self._horizons[horizon] = acc
        return closed

    def open_events(self) -> int:
        with self._lock:
            return sum(w.events for w in self._open.values())
