"""Where a record becomes an event: valid fields picked out, every malformed kind named."""

from __future__ import annotations

import json
from typing import Any

import pytest
from driftline.collectors.events import INVALID_REASONS, Event, EventDecoder, InvalidEvent
from driftline.service.config import EventSchema
from driftline.service.drift import ColumnKind
from hypothesis import given, settings
from hypothesis import strategies as st

NOW = 1_800_000_000.0
KINDS = {"age": ColumnKind.NUMERICAL, "city": ColumnKind.CATEGORICAL, "score": ColumnKind.NUMERICAL}


def decoder(**schema: Any) -> EventDecoder:
    base: dict[str, Any] = {
        "features": {"age": {"path": "user.age"}, "city": {"path": "user.address.city"}, "score": {"path": "s"}},
        "event_time": {"path": "ts"}, "prediction": {"path": "out.p"}, "latency": {"path": "lat", "unit": "ms"},
        "model_version": {"path": "model.v"}, "allowed_extra_fields": ["request_id", "debug"],
        "max_event_bytes": 2048}
    base.update(schema)
    return EventDecoder(EventSchema.model_validate(base), KINDS, ColumnKind.NUMERICAL)


def decode(obj: Any, d: EventDecoder | None = None, ts_ms: int | None = None) -> Event:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return (d or decoder()).decode(raw, ts_ms, NOW)


def reason(obj: Any, d: EventDecoder | None = None) -> str:
    with pytest.raises(InvalidEvent) as exc:
        decode(obj, d)
    assert exc.value.reason in INVALID_REASONS
    return exc.value.reason


def test_nested_paths_and_context_fields() -> None:
    ev = decode({"ts": NOW - 5, "user": {"age": 41, "address": {"city": "Lyon"}}, "s": 0.5, "out": {"p": 0.9},
                 "lat": 12.5, "model": {"v": "m-3"}, "request_id": "abc", "debug": {"anything": [1]}})
    assert ev == Event((41.0, "Lyon", 0.5), NOW - 5, 0.9, 0.0125, "m-3")


def test_missing_features_are_none_not_invalid() -> None:
    ev = decode({"ts": NOW, "user": {"address": {}}, "s": None})
    assert ev.features == (None, None, None) and ev.prediction is None and ev.latency_seconds is None


@pytest.mark.parametrize(("event", "expected"), [
    (b"\xff\xfe{}", "invalid_encoding"),
    (b"{nope", "invalid_json"),
    (b"[" * 1500, "invalid_json"),  # nested deeper than the parser allows
    (b"", "invalid_json"),
    ([1, 2], "not_an_object"),
    ("text", "not_an_object"),
    ({"ts": NOW, "user": {"age": "41"}}, "wrong_type"),
    ({"ts": NOW, "user": {"age": True}}, "wrong_type"),
    ({"ts": NOW, "user": {"address": {"city": {"name": "x"}}}}, "wrong_type"),
    ({"ts": NOW, "lat": -1}, "wrong_type"),
    (b'{"ts": 1800000000, "s": NaN}', "non_finite"),
    (b'{"ts": 1800000000, "s": -Infinity}', "non_finite"),
    (b'{"ts": 1800000000, "s": 1e400}', "non_finite"),
    ({"ts": NOW, "s": 10**400}, "non_finite"),
    ({"user": {"age": 1}}, "missing_field"),
    ({"ts": None}, "missing_field"),
    ({"ts": NOW, "password": "x"}, "unknown_field"),
    ({"ts": NOW, "user": {"age": 3, "ssn": "1"}}, "unknown_field"),
    ({"ts": "noon"}, "bad_timestamp"),
    ({"ts": NOW + 3600}, "bad_timestamp"),
    ({"ts": -5}, "bad_timestamp"),
    ({"ts": NOW, "request_id": "x" * 3000}, "oversized"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_each_malformed_kind_has_its_reason(event: Any, expected: str) -> None:
    assert reason(event) == expected


def test_unknown_fields_can_be_ignored() -> None:
    ev = decode({"ts": NOW, "password": "x", "user": {"age": 3, "ssn": "1"}}, decoder(unknown_fields="ignore"))
    assert ev.features[0] == 3.0


def test_categories_are_spelled_as_the_reference_spells_them() -> None:
    assert decode({"ts": NOW, "user": {"address": {"city": 75}}}).features[1] == "75"
    assert decode({"ts": NOW, "user": {"address": {"city": 75.0}}}).features[1] == "75"
    assert decode({"ts": NOW, "user": {"address": {"city": True}}}).features[1] == "True"


@pytest.mark.parametrize(("fmt", "value", "expected"), [
    ("epoch_seconds", NOW - 1.5, NOW - 1.5),
    ("epoch_millis", (NOW - 2) * 1000, NOW - 2),
    ("iso8601", "2027-01-15T08:00:00Z", 1800000000.0),
    ("iso8601", "2027-01-15T09:00:00+01:00", 1800000000.0),
])
def test_event_time_formats(fmt: str, value: Any, expected: float) -> None:
    d = decoder(event_time={"path": "ts", "format": fmt})
    assert decode({"ts": value}, d).event_time == pytest.approx(expected)


def test_iso_time_without_zone_is_refused() -> None:
    assert reason({"ts": "2027-01-15T08:00:00"}, decoder(event_time={"path": "ts", "format": "iso8601"})) \
        == "bad_timestamp"


def test_without_an_event_time_path_the_record_timestamp_is_used() -> None:
    d = decoder(event_time=None)
    assert decode({}, d, ts_ms=int((NOW - 3) * 1000)).event_time == pytest.approx(NOW - 3)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300) | st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["ts", "user", "age", "address", "city", "s", "out", "p", "lat", "model", "v", "x"]), inner, max_size=5),
    max_leaves=20).map(lambda o: json.dumps(o).encode()))
def test_any_input_is_an_event_or_a_named_reason(raw: bytes) -> None:
    try:
        ev = decoder().decode(raw, None, NOW)
    except InvalidEvent as exc:
        assert exc.reason in INVALID_REASONS
    else:
        assert isinstance(ev, Event)
        for v in ev.features:
            assert v is None or isinstance(v, str) or (isinstance(v, float) and v == v and abs(v) != float("inf"))


# -- the batch path: the same events and reasons as decoding one record at a time ------------

def _valid_event(draw: st.DrawFn) -> dict[str, Any]:
    ev: dict[str, Any] = {"ts": draw(st.sampled_from([NOW - 10, NOW, int(NOW) - 3, NOW + 60]))}
    user: dict[str, Any] = {}
    if draw(st.booleans()):
        user["age"] = draw(st.one_of(st.floats(-1e6, 1e6), st.integers(-100, 10**6)))
    if draw(st.booleans()):
        user["address"] = {"city": draw(st.sampled_from(["Lyon", "Paris", "Nice"]))}
    if user:
        ev["user"] = user
    if draw(st.booleans()):
        ev["s"] = draw(st.floats(-5, 5))
    if draw(st.booleans()):
        ev["out"] = {"p": draw(st.floats(0, 1))}
    if draw(st.booleans()):
        ev["lat"] = draw(st.floats(0, 500))
    if draw(st.booleans()):
        ev["model"] = {"v": draw(st.sampled_from(["m-1", "m-2"]))}
    return ev


@st.composite
def record(draw: st.DrawFn) -> bytes | None:
    ev = _valid_event(draw)
    spoil = draw(st.sampled_from(["none"] * 6 + [
        "null_feature", "string_number", "bool_number", "nan", "inf_literal", "big_int", "huge_float",
        "unknown", "unknown_nested", "missing_ts", "bad_ts", "future_ts", "negative_latency", "int_label",
        "not_object", "not_json", "bad_utf8", "bom", "tombstone", "oversized", "features_not_object",
        "dup_key", "huge_int_label", "surrogate_escape", "huge_int_time", "float_int"]))
    if spoil == "tombstone":
        return None
    raw_obj: Any = ev
    if spoil == "null_feature":
        ev["s"] = None
    elif spoil == "string_number":
        ev["s"] = "4.2"
    elif spoil == "bool_number":
        ev["s"] = True
    elif spoil == "big_int":
        ev["s"] = 10**400
    elif spoil == "unknown":
        ev["extra"] = 1
    elif spoil == "unknown_nested":
        ev.setdefault("user", {})["ssn"] = "x"
    elif spoil == "missing_ts":
        ev.pop("ts")
    elif spoil == "bad_ts":
        ev["ts"] = draw(st.sampled_from(["noon", -1, None, [1]]))
    elif spoil == "future_ts":
        ev["ts"] = NOW + 10_000
    elif spoil == "negative_latency":
        ev["lat"] = -3.0
    elif spoil == "int_label":
        ev["user"] = {"address": {"city": 75}}
    elif spoil == "not_object":
        raw_obj = [ev]
    elif spoil == "features_not_object":
        ev["user"] = 5
    raw = json.dumps(raw_obj).encode()
    if spoil == "nan":
        raw = raw.replace(b'"ts"', b'"s": NaN, "ts"', 1)
    elif spoil == "inf_literal":
        raw = raw.replace(b'"ts"', b'"s": -Infinity, "ts"', 1)
    elif spoil == "huge_float":
        raw = raw.replace(b'"ts"', b'"s": 1e400, "ts"', 1)
    elif spoil == "not_json":
        raw = raw[: len(raw) // 2]
    elif spoil == "bad_utf8":
        raw = raw.replace(b"{", b'{"request_id": "\xed\xa0\x80", ', 1)
    elif spoil == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif spoil == "oversized":
        raw = raw.replace(b"{", b'{"request_id": "' + b"x" * 2100 + b'", ', 1)
    elif spoil == "dup_key":
        raw = raw.replace(b"{", b'{"s": "first", ', 1)  # the later value wins in both parsers
    elif spoil == "huge_int_label":
        raw = raw.replace(b"{", b'{"user": {"address": {"city": 123456789012345678901234567890}}, ', 1)
    elif spoil == "surrogate_escape":
        raw = raw.replace(b"{", b'{"user": {"address": {"city": "\\ud800"}}, ', 1)
    elif spoil == "huge_int_time":
        raw = raw.replace(b'"ts"', b'"ts": 123456789012345678901234567890, "x_ts"', 1)
    elif spoil == "float_int":
        raw = raw.replace(b"{", b'{"s": 123456789012345678901234567890, ', 1)
    return raw


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (a != a and b != b) or a == b
    return bool(a == b)


@settings(max_examples=150, deadline=None)
@given(raws=st.lists(record(), max_size=40), ts=st.integers(0, 2))
def test_batch_decoding_equals_decoding_each_record(raws: list[bytes | None], ts: int) -> None:
    from collections import Counter

    from driftline.collectors.events import MISSING

    d = decoder() if ts else decoder(event_time=None)
    stamps = [int((NOW - i) * 1000) for i in range(len(raws))] if ts == 2 else None
    expected, reasons, rejected = [], Counter(), []
    for i, raw in enumerate(raws):
        try:
            expected.append(d.decode(raw, stamps[i] if stamps else None, NOW))
        except InvalidEvent as exc:
            reasons[exc.reason] += 1
            rejected.append((i, exc.reason, exc.detail))
    batch = d.decode_batch(raws, stamps, NOW)
    assert batch.invalid == reasons
    assert batch.rejected == rejected  # which records, in record order, with the reason decode() names
    assert batch.size == len(expected)
    for row, ev in enumerate(expected):
        for i, value in enumerate(ev.features):
            got = batch.numerical[i][row] if i in batch.numerical else batch.categorical[i][row]
            got = None if got is MISSING or (isinstance(got, float) and got != got) else got
            assert _same(got, value), (row, i, got, value)
        assert batch.event_time[row] == pytest.approx(ev.event_time)
        pred = batch.prediction[row]
        assert _same(None if pred != pred else float(pred), ev.prediction)
        lat = batch.latency[row]
        assert _same(None if lat != lat else float(lat), ev.latency_seconds)
        ver = batch.model_version[row]
        assert (None if ver is MISSING else ver) == ev.model_version


def test_the_collectors_import_nothing_of_the_service() -> None:
    """collectors/ turns records into events on its own: the service depends on it, not back."""
    import subprocess
    import sys

    modules = ["driftline.collectors." + m for m in ("schema", "events", "batch", "consumer", "assignor",
                                                      "kafka", "dead_letters", "tls")]
    code = (f"import sys, {', '.join(modules)}; "
            "print(sorted(m for m in sys.modules if m.startswith('driftline.service')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
