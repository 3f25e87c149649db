"""Where a Kafka record becomes an event: decode, validate, and pick out the fields.

A record either becomes an `Event` (feature values in the monitor's feature order, None
where a feature is missing) or raises `InvalidEvent` with one of `INVALID_REASONS`, the
label values of `driftline_events_invalid_total{reason}`, and a detail that says what was
wrong without quoting a value (details are logged and shown in the API). A missing feature
is not an invalid event: it is counted toward `driftline_feature_missing_ratio`.

`EventDecoder.decode` is the one definition of what is valid; `decode_batch` decodes a
whole poll at once (collectors/batch.py) and gives the same events and reasons.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from .schema import ColumnKind, EventSchema, category_label

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
    """Why a record is not an event. `feature`: the index of the feature at fault (a value
    of the wrong type), with the event's time when it could be read (NaN otherwise)."""

    def __init__(self, reason: str, detail: str = "", feature: int | None = None,
                 event_time: float = math.nan) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.feature = feature
        self.event_time = event_time


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


def json_type(value: Any) -> str:
    """A value's JSON type, as a detail may name it (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


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
            raise InvalidEvent("non_finite", "NaN or infinite")
        return value
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            raise InvalidEvent("non_finite", "a number beyond a float's range") from None
    raise InvalidEvent("wrong_type", f"expected a number, got {json_type(value)}")


def _category(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, bool | int):
        return category_label(value)
    if type(value) is float:
        if not math.isfinite(value):
            raise InvalidEvent("non_finite", "NaN or infinite")
        return category_label(value)
    raise InvalidEvent("wrong_type", f"expected text or a number, got {json_type(value)}")


class EventDecoder:
    """Decodes one monitor's events. Build it once; `decode_batch` is the hot path."""

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
        self._batch: Any = None

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

    def _check_known(self, obj: dict[str, Any], tree: dict[str, Any], prefix: str = "") -> None:
        for key, value in obj.items():
            if key not in tree:
                # a key is schema, not data: naming it (shortened) tells the user what to allow
                raise InvalidEvent("unknown_field", f"{prefix}{key[:64]} (not in the event schema)")
            sub = tree[key]
            if sub is not None and isinstance(value, dict):
                self._check_known(value, sub, f"{prefix}{key[:64]}.")

    def decode(self, raw: bytes | None, record_timestamp_ms: int | None, now: float) -> Event:
        if raw is None:
            raise InvalidEvent("invalid_json", "empty record")
        if len(raw) > self._max_bytes:
            raise InvalidEvent("oversized", f"{len(raw):,} bytes, over event.max_event_bytes ({self._max_bytes:,})")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEvent("invalid_encoding", f"not UTF-8 (byte {exc.start})") from None
        try:
            obj = json.loads(text)
        except RecursionError:
            raise InvalidEvent("invalid_json", "nested deeper than the parser allows") from None
        except ValueError as exc:
            raise InvalidEvent("invalid_json", getattr(exc, "msg", "not JSON") + (
                f" at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else "")) from None
        if type(obj) is not dict:
            raise InvalidEvent("not_an_object", f"the record is {json_type(obj)}, not an object")
        if self._known is not None:
            self._check_known(obj, self._known)

        values: list[float | str | None] = []
        for i, (parts, convert) in enumerate(self._features):
            v = _get(obj, parts)
            if v is _MISSING or v is None:
                values.append(None)
                continue
            try:
                values.append(convert(v))
            except InvalidEvent as exc:
                raise self._feature_error(i, exc, obj, record_timestamp_ms, now) from None

        event_time = self._event_time(obj, record_timestamp_ms, now)
        prediction: float | str | None = None
        if self._prediction is not None:
            p = _get(obj, self._prediction[0])
            prediction = None if p is _MISSING or p is None else self._field(self._prediction[1], p, "prediction")
        latency: float | None = None
        if self._latency is not None:
            lat = _get(obj, self._latency[0])
            if lat is not _MISSING and lat is not None:
                latency = self._field(_number, lat, "latency") * self._latency[1]
                if latency < 0:
                    raise InvalidEvent("wrong_type", "latency: negative")
        version: str | None = None
        if self._version is not None:
            ver = _get(obj, self._version)
            if ver is not _MISSING and ver is not None:
                version = self._field(_category, ver, "model_version")
        return Event(tuple(values), event_time, prediction, latency, version)

    @staticmethod
    def _field(convert: Any, value: Any, name: str) -> Any:
        try:
            return convert(value)
        except InvalidEvent as exc:
            raise InvalidEvent(exc.reason, f"{name}: {exc.detail}") from None

    def _feature_error(self, i: int, exc: InvalidEvent, obj: dict[str, Any], record_timestamp_ms: int | None,
                       now: float) -> InvalidEvent:
        """The error of feature i, with the event's time if it can be read (a type change is
        counted in the window of its event)."""
        try:
            t = self._event_time(obj, record_timestamp_ms, now)
        except InvalidEvent:
            t = math.nan
        return InvalidEvent(exc.reason, f"feature {self.feature_names[i]}: {exc.detail}", i, t)

    def _event_time(self, obj: dict[str, Any], record_timestamp_ms: int | None, now: float) -> float:
        if self._time_parts is not None:
            raw_time = _get(obj, self._time_parts)
            if raw_time is _MISSING or raw_time is None:
                raise InvalidEvent("missing_field", f"{self.schema.event_time.path} (the event time)")  # type: ignore[union-attr]
            event_time = self._parse_time(raw_time)
        elif record_timestamp_ms is not None and record_timestamp_ms >= 0:
            event_time = record_timestamp_ms / 1000.0
        else:
            event_time = now
        if event_time > now + MAX_FUTURE_SKEW_SECONDS:
            raise InvalidEvent("bad_timestamp", f"more than {MAX_FUTURE_SKEW_SECONDS:.0f} s in the future")
        return event_time

    def decode_batch(self, raws: list[bytes | None], record_ts_ms: list[int | None] | None,
                     now: float) -> DecodedBatch:
        """Decode one poll's records at once (the service's hot path); see BatchDecoder."""
        if self._batch is None:
            from .batch import BatchDecoder

            self._batch = BatchDecoder(self)
        return self._batch.decode_batch(raws, record_ts_ms, now)  # type: ignore[no-any-return]

    def _parse_time(self, value: Any) -> float:
        fmt = self._time.format  # type: ignore[union-attr]
        if fmt == "iso8601":
            if type(value) is not str:
                raise InvalidEvent("bad_timestamp", f"expected an ISO-8601 string, got {json_type(value)}")
            try:
                dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidEvent("bad_timestamp", "not an ISO-8601 date and time") from None
            if dt.tzinfo is None:
                raise InvalidEvent("bad_timestamp", "ISO-8601 time without a time zone (add Z or +hh:mm)")
            return dt.timestamp()
        try:
            seconds = _number(value)
        except InvalidEvent as exc:
            raise InvalidEvent("bad_timestamp", f"{fmt}: {exc.detail}") from None
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
    # records rejected for a feature of the wrong type: (feature index, event time or NaN)
    type_errors: list[tuple[int, float]] = field(default_factory=list)

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
