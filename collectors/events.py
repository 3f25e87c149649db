"""Where a Kafka record becomes an event: decode, validate, and pick out the fields.

A record either becomes an `Event` (feature values in the monitor's feature order, None
where a feature is missing) or raises `InvalidEvent` with one of `INVALID_REASONS`, the
label values of `driftline_events_invalid_total{reason}`. A missing feature is not an
invalid event: it is counted toward `driftline_feature_missing_ratio`.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any, NamedTuple

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


class Event(NamedTuple):
    features: tuple[float | str | None, ...]
    event_time: float  # unix seconds
    prediction: float | str | None
    latency_seconds: float | None
    model_version: str | None


_MISSING = object()
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
