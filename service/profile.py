"""A window's profile: everything a drift result needs about a window's events, as a value.

Per feature: the numerical values (every value up to `budget`, then a uniform reservoir
sample of `budget`), the categorical counts, and how many events lacked it; the prediction
likewise; the event count, event-time range and model versions. Profiles merge (a horizon
is the merge of its buckets) and serialise (`to_bytes` / `from_bytes`, a versioned compact
format), so the checkpoint stores them and a restart restores them instead of reading
Kafka again.

A profile holds raw feature values (the numerical sample, the category labels): it is
written to the local state file only (mode 0600), never exported.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from driftline.collectors.events import MISSING, DecodedBatch

from .drift import ColumnKind, ColumnSample
from .drift.sorting import sort_values

DEFAULT_BUDGET = 100_000
# Distinct labels kept per categorical feature per window; beyond, the rarest are counted
# together under OTHER_LABEL, so a feature of ever-new labels (ids) cannot grow memory.
MAX_LABELS = 10_000
OTHER_LABEL = "__other__"

MAGIC = b"DLWP"
FORMAT_VERSION = 1
_stamps = itertools.count(1)  # every change of any profile gets a new stamp (see `stamp`)


class ProfileFormatError(ValueError):
    pass


class NumericalValues:
    """Every value up to `budget`, then a uniform reservoir sample of `budget` values."""

    __slots__ = ("_buf", "_n", "_rng", "budget", "seen")

    def __init__(self, budget: int = DEFAULT_BUDGET, seed: int | None = None) -> None:
        self._buf = np.empty(0, dtype=np.float64)  # grows by doubling up to the budget
        self._n = 0
        self.budget = budget
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    @property
    def values(self) -> np.ndarray:
        return self._buf[:self._n]

    @values.setter
    def values(self, arr: np.ndarray) -> None:
        self._buf = np.ascontiguousarray(arr, dtype=np.float64)
        self._n = self._buf.size

    def add_many(self, xs: np.ndarray) -> None:
        """Add values in order; the same sample law as adding them one by one."""
        room = self.budget - self._n
        if room > 0:
            head = xs[:room]
            end = self._n + head.size
            if end > self._buf.size:
                grown = np.empty(min(self.budget, max(end, 2 * self._buf.size, 1024)), dtype=np.float64)
                grown[:self._n] = self._buf[:self._n]
                self._buf = grown
            self._buf[self._n:end] = head
            self._n = end
            self.seen += head.size
            xs = xs[room:]
        if xs.size == 0:
            return
        # Algorithm R for the k-th value overall: replace a uniform slot of [0, k) if it is
        # within the budget. numpy assigns repeated indices in order, last write winning,
        # which is the sequential algorithm's outcome.
        k = self.seen + np.arange(1, xs.size + 1, dtype=np.int64)
        slot = self._rng.integers(0, k)
        keep = slot < self.budget
        self._buf[slot[keep]] = xs[keep]
        self.seen += xs.size

    def merge(self, other: NumericalValues) -> None:
        """Become a uniform sample of the union of both sides' values."""
        total = self.seen + other.seen
        if self._n + other._n <= self.budget and self.exact and other.exact:
            seen = self.seen
            self.add_many(other.values)
            self.seen = seen + other.seen
            return
        # A uniform sample of the union takes from each side a hypergeometric share (the
        # values each side stands for), drawn uniformly from that side's own sample.
        size = min(self.budget, total)
        from_self = int(self._rng.hypergeometric(self.seen, other.seen, size)) if other.seen else size
        self.values = np.concatenate((self._rng.choice(self.values, from_self, replace=False),
                                      self._rng.choice(other.values, size - from_self, replace=False)))
        self.seen = total

    @property
    def exact(self) -> bool:
        return self.seen == self._n

    def sample(self) -> ColumnSample:
        # sorted: the result does not depend on the order events arrived in (partitions
        # interleave differently from run to run, and sums in another order round apart)
        return ColumnSample(ColumnKind.NUMERICAL, values=sort_values(self.values))

    def __eq__(self, other: object) -> bool:
        """The same values (as a multiset: their order means nothing) standing for as many."""
        return (isinstance(other, NumericalValues) and self.seen == other.seen and self.budget == other.budget
                and np.array_equal(np.sort(self.values), np.sort(other.values)))

    __hash__ = None  # type: ignore[assignment]

    # -- bytes: seen (u64), n (u32), the generator's state (PCG64: state and increment, 16
    # bytes each; a buffered 32-bit draw: flag u8, value u32), then n float64 -------------
    def _write(self, out: list[bytes]) -> None:
        full = self._rng.bit_generator.state
        state = full["state"]
        out.append(struct.pack("<QI", self.seen, self._n))
        out.append(int(state["state"]).to_bytes(16, "little") + int(state["inc"]).to_bytes(16, "little"))
        out.append(struct.pack("<BI", int(full["has_uint32"]), int(full["uinteger"])))
        out.append(np.ascontiguousarray(self.values, dtype="<f8").tobytes())

    @classmethod
    def _read(cls, buf: memoryview, pos: int, budget: int) -> tuple[NumericalValues, int]:
        seen, n = struct.unpack_from("<QI", buf, pos)
        pos += 12
        state, inc = int.from_bytes(buf[pos:pos + 16], "little"), int.from_bytes(buf[pos + 16:pos + 32], "little")
        has_uint32, uinteger = struct.unpack_from("<BI", buf, pos + 32)
        pos += 37
        v = cls(budget)
        v.seen = seen
        v.values = np.frombuffer(buf, dtype="<f8", count=n, offset=pos).astype(np.float64)
        v._rng.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": state, "inc": inc},
                                      "has_uint32": has_uint32, "uinteger": uinteger}
        return v, pos + 8 * n


def _write_counts(counts: Counter[str], out: list[bytes]) -> None:
    """k (u32), k label lengths (u32), k counts (i64), the labels' UTF-8 bytes."""
    labels = [k.encode("utf-8", "surrogatepass") for k in counts]
    out.append(struct.pack("<I", len(labels)))
    out.append(np.array([len(b) for b in labels], dtype="<u4").tobytes())
    out.append(np.array(list(counts.values()), dtype="<i8").tobytes())
    out.append(b"".join(labels))


def _read_counts(buf: memoryview, pos: int) -> tuple[Counter[str], int]:
    (k,) = struct.unpack_from("<I", buf, pos)
    pos += 4
    lengths = np.frombuffer(buf, dtype="<u4", count=k, offset=pos).tolist()
    pos += 4 * k
    counts = np.frombuffer(buf, dtype="<i8", count=k, offset=pos).tolist()
    pos += 8 * k
    out: Counter[str] = Counter()
    for length, n in zip(lengths, counts, strict=True):
        out[bytes(buf[pos:pos + length]).decode("utf-8", "surrogatepass")] = n
        pos += length
    return out, pos


class WindowProfile:
    """One window's profile (see the module docstring). `add_batch` and `merge` change it;
    each change gives it a new `stamp`, by which a checkpoint knows what to write again."""

    def __init__(self, kinds: tuple[ColumnKind, ...], start: float, end: float, budget: int = DEFAULT_BUDGET,
                 prediction_kind: ColumnKind | None = None) -> None:
        self.kinds, self.start, self.end, self.budget = tuple(kinds), float(start), float(end), budget
        self.prediction_kind = prediction_kind
        self.events = 0
        self.missing = [0] * len(self.kinds)
        self.type_errors = [0] * len(self.kinds)  # events rejected for this feature's type
        self.numerical = {i: NumericalValues(budget) for i, k in enumerate(self.kinds) if k is ColumnKind.NUMERICAL}
        self.categorical: dict[int, Counter[str]] = {
            i: Counter() for i, k in enumerate(self.kinds) if k is ColumnKind.CATEGORICAL}
        self.prediction: NumericalValues | Counter[str] | None = (
            NumericalValues(budget) if prediction_kind is ColumnKind.NUMERICAL
            else Counter() if prediction_kind is ColumnKind.CATEGORICAL else None)
        self.prediction_missing = 0
        self.model_versions: Counter[str] = Counter()
        self.first_event_time = math.inf
        self.last_event_time = -math.inf
        self.number: int | None = None  # a count window's number, set as it closes (not stored)
        self.stamp = next(_stamps)

    def empty_like(self, start: float, end: float) -> WindowProfile:
        return WindowProfile(self.kinds, start, end, self.budget, self.prediction_kind)

    def add(self, features: Sequence[float | str | None], event_time: float,
            prediction: float | str | None = None, model_version: str | None = None) -> None:
        """Account for one event (None: missing); `add_batch` does the work."""
        self.add_batch(one_event(self.kinds, self.prediction_kind, features, event_time, prediction, model_version))

    def add_batch(self, batch: DecodedBatch) -> None:
        """Account for a decoded batch of events (all of this window)."""
        if batch.size == 0:
            return
        self.stamp = next(_stamps)
        self.events += batch.size
        for i, col in batch.numerical.items():
            present = ~np.isnan(col)
            n_present = int(np.count_nonzero(present))
            self.missing[i] += batch.size - n_present
            self.numerical[i].add_many(col if n_present == batch.size else col[present])
        for i, labels in batch.categorical.items():
            counts = self.categorical[i]
            counts.update(labels)
            self.missing[i] += counts.pop(MISSING, 0)  # type: ignore[call-overload]
            if len(counts) > MAX_LABELS:
                _fold_rare(counts)
        if self.prediction is not None and batch.prediction is not None:
            if isinstance(self.prediction, NumericalValues):
                pred = np.asarray(batch.prediction)
                present = ~np.isnan(pred)
                self.prediction_missing += batch.size - int(np.count_nonzero(present))
                self.prediction.add_many(pred[present])
            else:
                self.prediction.update(batch.prediction)
                self.prediction_missing += self.prediction.pop(MISSING, 0)  # type: ignore[call-overload]
                if len(self.prediction) > MAX_LABELS:
                    _fold_rare(self.prediction)
        if batch.model_version is not None:
            self.model_versions.update(batch.model_version)
            self.model_versions.pop(MISSING, None)  # type: ignore[call-overload]
            if len(self.model_versions) > MAX_LABELS:
                _fold_rare(self.model_versions)
        self.first_event_time = min(self.first_event_time, float(batch.event_time.min()))
        self.last_event_time = max(self.last_event_time, float(batch.event_time.max()))

    def add_type_error(self, feature: int, n: int = 1) -> None:
        self.stamp = next(_stamps)
        self.type_errors[feature] += n

    def merge(self, other: WindowProfile) -> None:
        """Take in another profile's events (its window's range joins this one's)."""
        if other.kinds != self.kinds or other.prediction_kind != self.prediction_kind:
            raise ValueError("cannot merge profiles of different features")
        self.stamp = next(_stamps)
        self.events += other.events
        self.missing = [a + b for a, b in zip(self.missing, other.missing, strict=True)]
        self.type_errors = [a + b for a, b in zip(self.type_errors, other.type_errors, strict=True)]
        for i, vals in other.numerical.items():
            self.numerical[i].merge(vals)
        for i, counts in other.categorical.items():
            self.categorical[i].update(counts)
            if len(self.categorical[i]) > MAX_LABELS:
                _fold_rare(self.categorical[i])
        if isinstance(self.prediction, NumericalValues) and isinstance(other.prediction, NumericalValues):
            self.prediction.merge(other.prediction)
        elif isinstance(self.prediction, Counter) and isinstance(other.prediction, Counter):
            self.prediction.update(other.prediction)
            if len(self.prediction) > MAX_LABELS:
                _fold_rare(self.prediction)
        self.prediction_missing += other.prediction_missing
        self.model_versions.update(other.model_versions)
        self.start, self.end = min(self.start, other.start), max(self.end, other.end)
        self.first_event_time = min(self.first_event_time, other.first_event_time)
        self.last_event_time = max(self.last_event_time, other.last_event_time)

    # -- what evaluation reads ------------------------------------------------------------
    def sample(self, i: int) -> ColumnSample:
        if i in self.numerical:
            return self.numerical[i].sample()
        # labels in sorted order, not arrival order: sums over them must not round apart
        return ColumnSample.categorical(dict(sorted(self.categorical[i].items())))

    def exact(self, i: int) -> bool:
        return i not in self.numerical or self.numerical[i].exact

    def prediction_sample(self) -> ColumnSample | None:
        if isinstance(self.prediction, NumericalValues):
            return self.prediction.sample()
        if isinstance(self.prediction, Counter):
            return ColumnSample.categorical(dict(sorted(self.prediction.items())))
        return None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WindowProfile):
            return NotImplemented
        return self._header() == other._header() and self.numerical == other.numerical \
            and self.categorical == other.categorical and self.prediction == other.prediction

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"WindowProfile({self.start:g}..{self.end:g}, {self.events} events)"

    # -- bytes ------------------------------------------------------------------------------
    def _header(self) -> dict[str, Any]:
        return {"kinds": [k.value for k in self.kinds], "start": self.start, "end": self.end,
                "budget": self.budget, "events": self.events, "missing": self.missing,
                "type_errors": self.type_errors,
                "prediction_kind": self.prediction_kind.value if self.prediction_kind else None,
                "prediction_missing": self.prediction_missing, "model_versions": dict(self.model_versions),
                "first_event_time": _finite_or_none(self.first_event_time),
                "last_event_time": _finite_or_none(self.last_event_time)}

    def to_bytes(self) -> bytes:
        """MAGIC, format version (u8), header length (u32), the header (JSON), then the
        numerical features' values and the categorical features' counts in feature order,
        then the prediction's."""
        header = json.dumps(self._header(), separators=(",", ":")).encode()
        out = [MAGIC, struct.pack("<BI", FORMAT_VERSION, len(header)), header]
        for i in range(len(self.kinds)):
            if i in self.numerical:
                self.numerical[i]._write(out)
            else:
                _write_counts(self.categorical[i], out)
        if isinstance(self.prediction, NumericalValues):
            self.prediction._write(out)
        elif isinstance(self.prediction, Counter):
            _write_counts(self.prediction, out)
        return b"".join(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> WindowProfile:
        buf = memoryview(data)
        if bytes(buf[:4]) != MAGIC or len(buf) < 9:
            raise ProfileFormatError("not a driftline window profile")
        version, length = struct.unpack_from("<BI", buf, 4)
        if version != FORMAT_VERSION:
            raise ProfileFormatError(f"window profile format {version}; this driftline reads {FORMAT_VERSION}")
        pos = 9 + length
        try:
            h = json.loads(bytes(buf[9:pos]))
            p = cls(tuple(ColumnKind(k) for k in h["kinds"]), h["start"], h["end"], int(h["budget"]),
                    ColumnKind(h["prediction_kind"]) if h["prediction_kind"] else None)
            p.events, p.missing, p.type_errors = int(h["events"]), list(h["missing"]), list(h["type_errors"])
            p.prediction_missing = int(h["prediction_missing"])
            p.model_versions = Counter(h["model_versions"])
            p.first_event_time = math.inf if h["first_event_time"] is None else float(h["first_event_time"])
            p.last_event_time = -math.inf if h["last_event_time"] is None else float(h["last_event_time"])
            for i in range(len(p.kinds)):
                if i in p.numerical:
                    p.numerical[i], pos = NumericalValues._read(buf, pos, p.budget)
                else:
                    p.categorical[i], pos = _read_counts(buf, pos)
            if isinstance(p.prediction, NumericalValues):
                p.prediction, pos = NumericalValues._read(buf, pos, p.budget)
            elif isinstance(p.prediction, Counter):
                p.prediction, pos = _read_counts(buf, pos)
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            raise ProfileFormatError(f"a damaged window profile: {exc}") from None
        if pos != len(buf):
            raise ProfileFormatError("a damaged window profile: trailing bytes")
        return p


def one_event(kinds: tuple[ColumnKind, ...], prediction_kind: ColumnKind | None,
              features: Sequence[float | str | None], event_time: float, prediction: float | str | None = None,
              model_version: str | None = None) -> DecodedBatch:
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


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
