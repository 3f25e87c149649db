"""Where a Kafka record becomes an event: decode, validate, and pick out the fields.

A record either becomes an `Event` (feature values in the monitor's feature order, None
where a feature is missing) or raises `InvalidEvent` with one of `INVALID_REASONS`, the
label values of `driftline_events_invalid_total{reason}`. A missing feature is not an
invalid event: it is counted toward `driftline_feature_missing_ratio`.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import orjson
from driftline.service.config import EventSchema
from driftline.service.drift import ColumnKind
from driftline.service.reference import category_label

INVALID_REASONS = (
    "oversized",          # more bytes than event.max_event_bytes
    "invalid_encoding",   # not UTF-8
    "invalid_json",       # not JSON (or nested deeper than the parser allows)
    "not_an_object",      # JSON, but not an object at the top level
    "wrong_type",         # a number where text is expected, text where a number is, …
    "non_finite",         # NaN, Infinity, or a number too large for a float
    "missing_field",      # the event time, when windows are by event time
    "unknown_field",      # a field no configured path mentions (event.unknown_fields: reject)
    "bad_timestamp",      # an event time that cannot be read, or far in the future
)

# An event time further ahead of the wall clock than this is rejected: it would close
# every open window at once.
MAX_FUTURE_SKEW_SECONDS = 300.0


class InvalidEvent(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Event(NamedTuple):
    features: tuple[float | str | None, ...]
    event_time: float  # unix seconds
    prediction: float | str | None
    latency_seconds: float | None
    model_version: str | None


_MISSING = object()
# A missing value in a decoded batch column: this one NaN object (numerical columns hold
# NaN there, categorical columns this object, which dict lookups find by identity).
MISSING = float("nan")
_LATENCY_SCALE = {"s": 1.0, "ms": 0.001, "us": 0.000001}


def _get(obj: Any, parts: tuple[str, ...]) -> Any:
    for part in parts:
        if not isinstance(obj, dict):
            return _MISSING
        obj = obj.get(part, _MISSING)
        if obj is _MISSING:
            return _MISSING
    return obj


def _number(value: Any) -> float:
    if type(value) is float:
        if value - value != 0.0:  # nan or ±inf, faster than math.isfinite
            raise InvalidEvent("non_finite")
        return value
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            raise InvalidEvent("non_finite") from None
    raise InvalidEvent("wrong_type")


def _category(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, bool | int):
        return category_label(value)
    if type(value) is float:
        if not math.isfinite(value):
            raise InvalidEvent("non_finite")
        return category_label(value)
    raise InvalidEvent("wrong_type")


class EventDecoder:
    """Decodes one monitor's events. Build it once; `decode` is the hot path."""

    def __init__(self, schema: EventSchema, kinds: dict[str, ColumnKind],
                 prediction_kind: ColumnKind | None = None) -> None:
        self.schema = schema
        self.feature_names = tuple(schema.features)
        self._features = tuple(
            (spec.parts, _number if kinds[name] is ColumnKind.NUMERICAL else _category)
            for name, spec in schema.features.items()
        )
        self._time = schema.event_time
        self._time_parts = schema.event_time.parts if schema.event_time else None
        self._prediction = (schema.prediction.parts,
                            _category if prediction_kind is ColumnKind.CATEGORICAL else _number) \
            if schema.prediction else None
        self._latency = (schema.latency.parts, _LATENCY_SCALE[schema.latency.unit]) if schema.latency else None
        self._version = schema.model_version.parts if schema.model_version else None
        self._max_bytes = schema.max_event_bytes
        self._known = self._known_tree() if schema.unknown_fields == "reject" else None

    def _known_tree(self) -> dict[str, Any]:
        """Nested dict of every configured path; a leaf (None) accepts anything below it."""
        specs = [s for s in (*self.schema.features.values(), self.schema.event_time, self.schema.prediction,
                             self.schema.latency, self.schema.model_version) if s is not None]
        paths = [s.parts for s in specs] + [tuple(p.split(".")) for p in self.schema.allowed_extra_fields]
        tree: dict[str, Any] = {}
        for parts in paths:
            node = tree
            for part in parts[:-1]:
                nxt = node.get(part, {})
                if nxt is None:  # a shorter path already accepts everything below
                    break
                node = node.setdefault(part, nxt)
            else:
                node[parts[-1]] = None
        return tree

    def _check_known(self, obj: dict[str, Any], tree: dict[str, Any]) -> None:
        for key, value in obj.items():
            if key not in tree:
                raise InvalidEvent("unknown_field", key)
            sub = tree[key]
            if sub is not None and isinstance(value, dict):
                self._check_known(value, sub)

    def decode(self, raw: bytes | None, record_timestamp_ms: int | None, now: float) -> Event:
        if raw is None:
            raise InvalidEvent("invalid_json", "empty record")
        if len(raw) > self._max_bytes:
            raise InvalidEvent("oversized")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent("invalid_encoding") from None
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            raise InvalidEvent("invalid_json") from None
        if type(obj) is not dict:
            raise InvalidEvent("not_an_object")
        if self._known is not None:
            self._check_known(obj, self._known)

        values: list[float | str | None] = []
        for parts, convert in self._features:
            v = _get(obj, parts)
            values.append(None if v is _MISSING or v is None else convert(v))

        if self._time_parts is not None:
            raw_time = _get(obj, self._time_parts)
            if raw_time is _MISSING or raw_time is None:
                raise InvalidEvent("missing_field", self.schema.event_time.path)  # type: ignore[union-attr]
            event_time = self._parse_time(raw_time)
        elif record_timestamp_ms is not None and record_timestamp_ms >= 0:
            event_time = record_timestamp_ms / 1000.0
        else:
            event_time = now
        if event_time > now + MAX_FUTURE_SKEW_SECONDS:
            raise InvalidEvent("bad_timestamp", "in the future")

        prediction: float | str | None = None
        if self._prediction is not None:
            p = _get(obj, self._prediction[0])
            prediction = None if p is _MISSING or p is None else self._prediction[1](p)
        latency: float | None = None
        if self._latency is not None:
            lat = _get(obj, self._latency[0])
            if lat is not _MISSING and lat is not None:
                latency = _number(lat) * self._latency[1]
                if latency < 0:
                    raise InvalidEvent("wrong_type", "negative latency")
        version: str | None = None
        if self._version is not None:
            ver = _get(obj, self._version)
            if ver is not _MISSING and ver is not None:
                version = _category(ver)
        return Event(tuple(values), event_time, prediction, latency, version)

    def decode_batch(self, raws: list[bytes | None], record_ts_ms: list[int | None] | None,
                     now: float) -> DecodedBatch:
        """Decode one poll's records at once (the service's hot path); see BatchDecoder."""
        batch = self.__dict__.get("_batch")
        if batch is None:
            batch = self.__dict__["_batch"] = BatchDecoder(self)
        return batch.decode_batch(raws, record_ts_ms, now)

    def _parse_time(self, value: Any) -> float:
        fmt = self._time.format  # type: ignore[union-attr]
        if fmt == "iso8601":
            if type(value) is not str:
                raise InvalidEvent("bad_timestamp", "expected an ISO-8601 string")
            try:
                dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidEvent("bad_timestamp") from None
            if dt.tzinfo is None:
                raise InvalidEvent("bad_timestamp", "no time zone")
            return dt.timestamp()
        try:
            seconds = _number(value)
        except InvalidEvent:
            raise InvalidEvent("bad_timestamp") from None
        if fmt == "epoch_millis":
            seconds /= 1000.0
        if seconds < 0:
            raise InvalidEvent("bad_timestamp", "before 1970")
        return seconds


@dataclass
class DecodedBatch:
    """Valid events of one poll, column by column, in record order.

    Numerical columns are float64 arrays with NaN where the feature is missing;
    categorical columns are lists of labels with `MISSING` where it is missing.
    """

    size: int
    numerical: dict[int, np.ndarray]
    categorical: dict[int, list[Any]]
    event_time: np.ndarray
    prediction: np.ndarray | list[Any] | None
    latency: np.ndarray | None  # seconds, NaN where absent
    model_version: list[Any] | None  # MISSING where absent
    invalid: Counter[str] = field(default_factory=Counter)
    # the invalid records: (position in the poll, reason, detail), in record order
    rejected: list[tuple[int, str, str]] = field(default_factory=list)

    def select(self, rows: np.ndarray) -> DecodedBatch:
        """The events at these positions (a boolean mask or sorted indices)."""
        idx = np.flatnonzero(rows) if rows.dtype == bool else rows
        pick = idx.tolist()

        def take(col: Any) -> Any:
            if col is None:
                return None
            if isinstance(col, np.ndarray):
                return col[idx]
            return [col[i] for i in pick]

        return DecodedBatch(len(pick), {k: v[idx] for k, v in self.numerical.items()},
                            {k: take(v) for k, v in self.categorical.items()}, self.event_time[idx],
                            take(self.prediction), take(self.latency), take(self.model_version))


_NUMBER_TYPES = frozenset({float, int})
_FLOAT_ONLY = frozenset({float})
_LABEL_TYPES = frozenset({str, float})  # float: only the MISSING sentinel on the fast path


class BatchDecoder:
    """The columnar fast path of `EventDecoder`: decodes a whole poll at once.

    A row takes the fast path only when it is plainly valid: strict JSON (RFC 8259, UTF-8,
    as orjson parses it: no NaN/Infinity literals, no BOM, no lone surrogates), an object
    whose containers hold known keys only, numbers where numbers are expected, text where
    labels are. Every other row is decoded by
    `EventDecoder.decode`, the one definition of what is valid and why not, so both
    paths give the same events and the same reasons (tests hold them to it).

    Every configured path is read through its parent container: each container is
    looked up once per event, checked for unknown keys with one set comparison, and
    read with one `map(container.get, leaves)`.
    """

    def __init__(self, decoder: EventDecoder) -> None:
        self.d = decoder
        schema = decoder.schema
        fields: list[tuple[tuple[str, ...], str]] = [(spec.parts, f"f{i}")
                                                     for i, spec in enumerate(schema.features.values())]
        for name, spec in (("time", schema.event_time), ("prediction", schema.prediction),
                           ("latency", schema.latency), ("version", schema.model_version)):
            if spec is not None:
                fields.append((spec.parts, name))
        by_parent: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        for parts, target in fields:
            by_parent.setdefault(parts[:-1], []).append((parts[-1], target))
        known = self._container_keys(decoder._known) if decoder._known is not None else {}
        # (parent path, its known keys or None, leaves, targets, holds a feature)
        self._slots = [(parent, known.get(parent), tuple(leaf for leaf, _ in members),
                        [t for _, t in members], any(t.startswith("f") for _, t in members))
                       for parent, members in by_parent.items()]
        self._other_containers = [(path, keys) for path, keys in known.items() if path not in by_parent]
        self._n_features = len(decoder.feature_names)
        self._numerical = {i for i, (_, conv) in enumerate(decoder._features) if conv is _number}
        self._pred = decoder._prediction
        self._lat = decoder._latency
        self._has_time = decoder._time_parts is not None
        self._has_version = decoder._version is not None

    @staticmethod
    def _container_keys(tree: dict[str, Any]) -> dict[tuple[str, ...], frozenset[str]]:
        out: dict[tuple[str, ...], frozenset[str]] = {}

        def walk(node: dict[str, Any], path: tuple[str, ...]) -> None:
            out[path] = frozenset(node)
            for key, sub in node.items():
                if sub is not None:
                    walk(sub, (*path, key))

        walk(tree, ())
        return out

    def decode_batch(self, raws: list[bytes | None], record_ts_ms: list[int | None] | None,
                     now: float) -> DecodedBatch:
        slots, others = self._slots, self._other_containers
        flat: list[list[Any]] = [[] for _ in slots]  # per container: each event's leaves, one after another
        index: list[int] = []
        slow: list[int] = []
        decode_json, max_bytes, missing = orjson.loads, self.d._max_bytes, MISSING
        repeat_missing = itertools.repeat(MISSING)
        for i, raw in enumerate(raws):
            if raw is None or len(raw) > max_bytes:
                slow.append(i)
                continue
            try:
                obj = decode_json(raw)
            except Exception:  # decode() names the reason
                slow.append(i)
                continue
            if type(obj) is not dict:
                slow.append(i)
                continue
            got: list[Any] = []
            for parent, keys, leaves, _, holds_feature in slots:
                if not parent:
                    box = obj
                elif len(parent) == 1:
                    box = obj.get(parent[0], missing)
                else:
                    box = _dig(obj, parent)
                if type(box) is dict:
                    if keys is not None and not box.keys() <= keys:
                        break
                    got.append(map(box.get, leaves, repeat_missing))
                elif box is missing and not holds_feature:
                    got.append((missing,) * len(leaves))
                else:
                    break  # a container that is not an object, or absent features: decode() decides
            else:
                if others and not _known_only(obj, others):
                    slow.append(i)
                    continue
                index.append(i)
                for g, values in enumerate(got):
                    flat[g].extend(values)
                continue
            slow.append(i)
        return self._assemble(flat, index, slow, raws, record_ts_ms, now)

    def _assemble(self, flat: list[list[Any]], index_list: list[int], slow: list[int],
                  raws: list[bytes | None], record_ts_ms: list[int | None] | None, now: float) -> DecodedBatch:
        n = len(index_list)
        bad = np.zeros(n, dtype=bool)
        columns: dict[str, Any] = {}
        for (_, _, leaves, targets, _), values in zip(self._slots, flat, strict=True):
            width = len(leaves)
            columns.update((t, values[j::width]) for j, t in enumerate(targets))
        numerical: dict[int, np.ndarray] = {}
        categorical: dict[int, list[Any]] = {}
        for i in range(self._n_features):
            col = columns[f"f{i}"]
            if i in self._numerical:
                numerical[i] = _number_column(col, bad)
            else:
                categorical[i] = _label_column(col, bad)
        if self._has_time:
            times = self._time_column(columns["time"], bad, now)
        elif record_ts_ms is not None:
            ts = [record_ts_ms[i] for i in index_list]
            times = np.array([t / 1000.0 if t is not None and t >= 0 else now for t in ts], dtype=np.float64)
            bad |= times > now + MAX_FUTURE_SKEW_SECONDS
        else:
            times = np.full(n, now)
        prediction: np.ndarray | list[Any] | None = None
        if self._pred is not None:
            prediction = (_label_column(columns["prediction"], bad) if self._pred[1] is _category
                          else _number_column(columns["prediction"], bad))
        latency = None
        if self._lat is not None:
            latency = _number_column(columns["latency"], bad) * self._lat[1]
            bad |= latency < 0
        version = _label_column(columns["version"], bad) if self._has_version else None

        fast = DecodedBatch(n, numerical, categorical, times, prediction, latency, version)
        index = np.asarray(index_list, dtype=np.int64)
        if bad.any():
            slow.extend(index[bad].tolist())
            fast, index = fast.select(~bad), index[~bad]
        if not slow:
            return fast
        return self._merge_slow(fast, index, sorted(slow), raws, record_ts_ms, now)

    def _time_column(self, raw_times: list[Any], bad: np.ndarray, now: float) -> np.ndarray:
        fmt = self.d._time.format  # type: ignore[union-attr]
        if fmt == "iso8601":
            out = np.empty(len(raw_times))
            for i, v in enumerate(raw_times):
                try:
                    out[i] = self.d._parse_time(v) if v is not MISSING and v is not None else math.nan
                except InvalidEvent:
                    out[i] = math.nan
        else:
            types = set(map(type, raw_times))
            if types <= _NUMBER_TYPES:
                out = _floats(raw_times)
            else:
                out = np.fromiter((math.nan if math.isinf(x := _float_or_inf(v)) else x for v in raw_times),
                                  dtype=np.float64, count=len(raw_times))
            if fmt == "epoch_millis":
                out = out / 1000.0
        with np.errstate(invalid="ignore"):
            bad |= ~(out >= 0) | (out > now + MAX_FUTURE_SKEW_SECONDS)  # NaN (missing, unreadable) is bad
        return out

    def _merge_slow(self, fast: DecodedBatch, fast_index: np.ndarray, slow: list[int],
                    raws: list[bytes | None], record_ts_ms: list[int | None] | None, now: float) -> DecodedBatch:
        events: list[Event] = []
        index: list[int] = []
        invalid: Counter[str] = Counter()
        rejected: list[tuple[int, str, str]] = []
        for i in slow:
            try:
                events.append(self.d.decode(raws[i], record_ts_ms[i] if record_ts_ms else None, now))
                index.append(i)
            except InvalidEvent as exc:
                invalid[exc.reason] += 1
                rejected.append((i, exc.reason, exc.detail))
        if not events:
            fast.invalid, fast.rejected = invalid, rejected
            return fast
        extra = self._from_events(events)
        order = np.argsort(np.concatenate((fast_index, np.asarray(index, dtype=np.int64))), kind="stable")

        def join(a: Any, b: Any) -> Any:
            if a is None:
                return None
            if isinstance(a, np.ndarray):
                return np.concatenate((a, b))[order]
            both = a + b
            return [both[k] for k in order.tolist()]

        merged = DecodedBatch(
            fast.size + extra.size, {k: join(v, extra.numerical[k]) for k, v in fast.numerical.items()},
            {k: join(v, extra.categorical[k]) for k, v in fast.categorical.items()},
            join(fast.event_time, extra.event_time), join(fast.prediction, extra.prediction),
            join(fast.latency, extra.latency), join(fast.model_version, extra.model_version))
        merged.invalid, merged.rejected = invalid, rejected
        return merged

    def _from_events(self, events: list[Event]) -> DecodedBatch:
        def nums(values: list[Any]) -> np.ndarray:
            return np.array([math.nan if v is None else v for v in values], dtype=np.float64)

        def labels(values: list[Any]) -> list[Any]:
            return [MISSING if v is None else v for v in values]

        cols = list(zip(*(e.features for e in events), strict=True))
        numerical_set = set(self._numerical)
        return DecodedBatch(
            len(events), {i: nums(list(cols[i])) for i in range(self._n_features) if i in numerical_set},
            {i: labels(list(cols[i])) for i in range(self._n_features) if i not in numerical_set},
            np.array([e.event_time for e in events], dtype=np.float64),
            None if self._pred is None else (labels([e.prediction for e in events]) if self._pred[1] is _category
                                             else nums([e.prediction for e in events])),
            None if self._lat is None else nums([e.latency_seconds for e in events]),
            labels([e.model_version for e in events]) if self._has_version else None)


def _dig(obj: Any, parts: tuple[str, ...]) -> Any:
    """The value at a path, or MISSING."""
    for part in parts:
        if type(obj) is not dict:
            return MISSING
        obj = obj.get(part, MISSING)
    return obj


def _known_only(obj: dict[str, Any], containers: list[tuple[tuple[str, ...], frozenset[str]]]) -> bool:
    """True unless a container on these paths holds a key no configured path mentions."""
    for path, keys in containers:
        box = _dig(obj, path) if path else obj
        if type(box) is dict and not box.keys() <= keys:
            return False
    return True


def _float_or_inf(v: Any) -> float:
    """A number as a float; inf (a bad row) for anything else or an int beyond float range."""
    if type(v) is float:
        return v  # type: ignore[no-any-return]
    if type(v) is int:
        try:
            return float(v)
        except OverflowError:
            return math.inf
    return math.inf


def _floats(col: Any) -> np.ndarray:
    try:
        return np.fromiter(col, dtype=np.float64, count=len(col))
    except OverflowError:  # an int beyond float range: decode() calls it non_finite
        return np.fromiter(map(_float_or_inf, col), dtype=np.float64, count=len(col))


def _number_column(col: Any, bad: np.ndarray) -> np.ndarray:
    """float64 values, NaN for MISSING; rows holding anything else are marked bad."""
    types = set(map(type, col))
    if types <= _NUMBER_TYPES:
        out = _floats(col)
    else:
        out = np.fromiter(map(_float_or_inf, col), dtype=np.float64, count=len(col))
    nan = np.isnan(out)
    if nan.any():  # NaN can only be the MISSING sentinel here (literals go the slow way)
        for i in np.flatnonzero(nan).tolist():
            if col[i] is not MISSING:
                bad[i] = True
    bad |= np.isinf(out)
    return out


def _label_column(col: Any, bad: np.ndarray) -> list[Any]:
    """Labels as given; MISSING stays; rows holding anything but text are marked bad."""
    types = set(map(type, col))
    if types <= _LABEL_TYPES:
        if float in types:
            for i, v in enumerate(col):
                if type(v) is float and v is not MISSING:
                    bad[i] = True
        return list(col)
    for i, v in enumerate(col):
        if type(v) is not str and v is not MISSING:
            bad[i] = True
    return list(col)
