"""The columnar fast path of `EventDecoder`: a whole poll decoded at once.

A row takes the fast path only when it is plainly valid; every other row is decoded by
`EventDecoder.decode`, the one definition of what is valid and why not, so both paths
give the same events and the same reasons (tests hold them to it).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any

import numpy as np
import orjson

from .events import (
    MAX_FUTURE_SKEW_SECONDS,
    MISSING,
    DecodedBatch,
    Event,
    EventDecoder,
    InvalidEvent,
    _category,
    _number,
)

_NUMBER_TYPES = frozenset({float, int})
_FLOAT_ONLY = frozenset({float})
_LABEL_TYPES = frozenset({str, float})  # float: only the MISSING sentinel on the fast path


class BatchDecoder:
    """Decodes a whole poll at once.

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
        type_errors: list[tuple[int, float]] = []
        for i in slow:
            try:
                events.append(self.d.decode(raws[i], record_ts_ms[i] if record_ts_ms else None, now))
                index.append(i)
            except InvalidEvent as exc:
                invalid[exc.reason] += 1
                rejected.append((i, exc.reason, exc.detail))
                if exc.feature is not None and exc.reason == "wrong_type":
                    type_errors.append((exc.feature, exc.event_time))
        if not events:
            fast.invalid, fast.rejected, fast.type_errors = invalid, rejected, type_errors
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
        merged.invalid, merged.rejected, merged.type_errors = invalid, rejected, type_errors
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
