"""When retraining is requested: K consecutive drifted windows, at most once per cooldown,
and what the request says. Window results are built directly; the store is a real SQLite
file; the clock is a fake one."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from driftline.service.config import RetrainSettings, decode_webhook_secret
from driftline.service.drift import ColumnKind
from driftline.service.evaluation import FeatureDrift, WindowResult, WindowStatus
from driftline.service.quality import FeatureQuality
from driftline.service.store import OutboxMessage, Store
from driftline.service.trigger import EVENT_TYPE, RetrainTrigger
from driftline.service.webhooks import Dispatcher, Endpoint
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

MONITOR = "credit-risk"
URL = "http://127.0.0.1:9/retrain"
WINDOW = 300.0


class FakeClock:
    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def feature(name: str, drifted: bool, score: float | None = 0.2, method: str | None = "wasserstein",
            threshold: float | None = 0.1, kind: ColumnKind = ColumnKind.NUMERICAL) -> FeatureDrift:
    return FeatureDrift(name, kind, method, threshold, score, drifted, values=500, missing_ratio=0.0, exact=True,
                        counts_for_dataset=drifted)


class Windows:
    """Consecutive window results of one monitor."""

    def __init__(self, start: float = 1_749_990_000.0) -> None:
        self.start = start

    def next(self, drift: bool | None, features: tuple[FeatureDrift, ...] | None = None,
             prediction: FeatureDrift | None = None, model_versions: dict[str, int] | None = None,
             events: int = 1000, reference_hash: str = "sha256:" + "ab" * 32) -> WindowResult:
        """drift: True/False for an evaluated window, None for insufficient data."""
        start, self.start = self.start, self.start + WINDOW
        if features is None:
            features = (feature("income", bool(drift), 0.31), feature("age", False, 0.02),
                        feature("region", bool(drift), 0.001, "chisquare", 0.05, ColumnKind.CATEGORICAL))
        evaluated = [f for f in features if f.method is not None]
        share = sum(f.drifted for f in evaluated) / len(evaluated) if evaluated else 0.0
        counted = sum(f.counts_for_dataset for f in evaluated) / len(evaluated) if evaluated else 0.0
        status = WindowStatus.INSUFFICIENT_DATA if drift is None else WindowStatus.EVALUATED
        return WindowResult(
            monitor=MONITOR, horizon="5m", status=status, window_start=start, window_end=start + WINDOW,
            events=events if drift is not None else 12, features=features, prediction=prediction,
            drift_share=share, dataset_share=counted, drift_share_threshold=0.5, dataset_drift=bool(drift),
            model_versions=model_versions if model_versions is not None else {"v7": events},
            reference_hash=reference_hash, evaluated_at=start + WINDOW + 1, duration_seconds=0.01)


def retrain(k: int = 2, cooldown: float = 3600.0) -> RetrainSettings:
    return RetrainSettings(webhook_url=URL, secret_env="DRIFTLINE_TEST_SECRET", consecutive_windows=k,
                           cooldown=cooldown)


def outbox(store: Store) -> list[OutboxMessage]:
    return store.due(float("inf"), [MONITOR, "fraud"], limit=1000)


def strict_json(text: str) -> Any:
    """Parse as JSON proper: Python's json accepts NaN and Infinity, JSON does not."""
    def reject(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=reject)


def epoch(iso: str) -> float:
    assert iso.endswith("Z"), iso
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "driftline.sqlite"


@pytest.fixture
def store(store_path: Path) -> Iterator[Store]:
    s = Store(store_path)
    yield s
    s.close()


# ---------------------------------------------------------------------------------------
# when
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3])
def test_k_consecutive_drifted_windows_request_exactly_once(k, store, clock) -> None:
    trigger = RetrainTrigger(MONITOR, retrain(k, cooldown=3600), store, clock)
    w = Windows()
    outcomes = []
    for _ in range(k - 1):
        outcomes.append(trigger.observe(w.next(True)))
        assert store.pending_count() == 0
        clock.advance(WINDOW)
    outcomes.append(trigger.observe(w.next(True)))
    assert outcomes == [None] * (k - 1) + ["requested"]
    assert store.pending_count(MONITOR) == 1
    assert store.last_retrain_request(MONITOR) == clock()

    # drift goes on inside the cooldown: never a second request
    later = []
    for _ in range(3 * k):
        clock.advance(WINDOW)
        later.append(trigger.observe(w.next(True)))
    assert later.count("requested") == 0
    assert later == ([None] * (k - 1) + ["suppressed_cooldown"]) * 3
    assert len(outbox(store)) == 1


def test_a_non_drifted_window_resets_the_streak(store, clock) -> None:
    trigger = RetrainTrigger(MONITOR, retrain(3), store, clock)
    w = Windows()
    outcomes = [trigger.observe(w.next(d)) for d in (True, True, False, True, True)]
    assert outcomes == [None] * 5 and store.pending_count() == 0
    assert trigger.observe(w.next(True)) == "requested"
    assert store.pending_count() == 1


def test_insufficient_data_windows_neither_extend_nor_reset_a_streak(store, clock) -> None:
    trigger = RetrainTrigger(MONITOR, retrain(3), store, clock)
    w = Windows()
    # they do not extend it: one drifted window and many thin ones are still a streak of one
    outcomes = [trigger.observe(w.next(d)) for d in (True, None, None, None, None)]
    # nor reset it: two more drifted windows, with thin ones between, complete the streak
    outcomes += [trigger.observe(w.next(d)) for d in (True, None, True)]
    assert outcomes == [None] * 7 + ["requested"]
    assert store.pending_count() == 1


def test_insufficient_data_never_requests_even_when_flagged_drifted(store, clock) -> None:
    trigger = RetrainTrigger(MONITOR, retrain(1, cooldown=0), store, clock)
    w = Windows()
    for _ in range(5):
        r = w.next(None)
        r = replace(r, dataset_drift=True)  # status decides, not the flag
        assert trigger.observe(r) is None
    assert store.pending_count() == 0 and store.last_retrain_request(MONITOR) is None


def test_a_due_request_inside_the_cooldown_is_suppressed_and_enqueues_nothing(store, clock) -> None:
    trigger = RetrainTrigger(MONITOR, retrain(1, cooldown=600), store, clock)
    w = Windows()
    t0 = clock()
    assert trigger.observe(w.next(True)) == "requested"
    [first] = outbox(store)

    clock.advance(599.9)
    assert trigger.observe(w.next(True)) == "suppressed_cooldown"
    assert outbox(store) == [first]
    assert store.last_retrain_request(MONITOR) == t0  # a suppressed request does not extend the cooldown

    clock.now = t0 + 600
    assert trigger.observe(w.next(True)) == "requested"
    assert store.pending_count() == 2
    assert store.last_retrain_request(MONITOR) == t0 + 600
    second = next(m for m in outbox(store) if m.id != first.id)
    assert second.id.startswith("msg_") and second.url == URL and second.monitor == MONITOR


def test_the_cooldown_is_per_monitor(store, clock) -> None:
    w = Windows()
    a = RetrainTrigger(MONITOR, retrain(1), store, clock)
    b = RetrainTrigger("fraud", retrain(1), store, clock)
    assert a.observe(w.next(True)) == "requested"
    r = w.next(True)
    assert b.observe(replace(r, monitor="fraud")) == "requested"
    assert store.pending_count(MONITOR) == 1 and store.pending_count("fraud") == 1


def test_the_cooldown_survives_a_restart(store_path, clock) -> None:
    w = Windows()
    t0 = clock()
    first = Store(store_path)
    assert RetrainTrigger(MONITOR, retrain(1, cooldown=3600), first, clock).observe(w.next(True)) == "requested"
    first.close()

    clock.advance(60)
    second = Store(store_path)
    try:
        trigger = RetrainTrigger(MONITOR, retrain(1, cooldown=3600), second, clock)
        assert second.last_retrain_request(MONITOR) == t0
        assert trigger.observe(w.next(True)) == "suppressed_cooldown"
        assert second.pending_count() == 1
        clock.now = t0 + 3600
        assert trigger.observe(w.next(True)) == "requested"
        assert second.pending_count() == 2
    finally:
        second.close()


# ---------------------------------------------------------------------------------------
# what
# ---------------------------------------------------------------------------------------
def test_the_request_body_carries_the_evidence(store, clock) -> None:
    trigger = RetrainTrigger(MONITOR, retrain(2), store, clock)
    w = Windows()
    assert trigger.observe(w.next(True, model_versions={"v6": 10, "v7": 990})) is None
    unseen = FeatureQuality(0.0, 0.0, None, 0.031, 0.0, 1, (("crypto", 62),), 0, 0.0, ("unseen_category",))
    features = (replace(feature("income", True, 0.31, "wasserstein", 0.1), calibrated=True, noise_floor=0.13,
                        decided_by="noise_floor", dataset_noise_floor=0.16),
                replace(feature("age", True, 0.12, "wasserstein", 0.1), calibrated=True, noise_floor=0.11,
                        decided_by="noise_floor", dataset_noise_floor=0.14, counts_for_dataset=False),
                replace(feature("region", True, 0.0004, "chisquare", 0.05, ColumnKind.CATEGORICAL),
                        calibrated=True, noise_floor=0.08, effect_size=0.21, effect_size_measure="cohens_w",
                        effect_size_floor=0.1, decided_by="noise_floor", quality=unseen, dataset_noise_floor=0.09),
                feature("tenure", False, None, None, None))  # no value of it in the window
    prediction = replace(feature("prediction", True, 0.12, "psi", 0.1), counts_for_dataset=False)
    last = replace(w.next(True, features=features, prediction=prediction, model_versions={"v7": 980, "v8": 1020},
                          events=2000, reference_hash="sha256:" + "cd" * 32), calibration="on",
                   false_alarm_level=0.005, dataset_false_alarm_level=0.001, false_alarm_level_basis="whole rows")
    assert trigger.observe(last) == "requested"

    [msg] = outbox(store)
    body = strict_json(msg.body)
    assert body["type"] == EVENT_TYPE
    assert epoch(body["timestamp"]) == clock()
    data = body["data"]
    assert data["id"] == msg.id
    assert data["monitor"] == MONITOR
    assert "2 consecutive windows" in data["reason"]
    assert data["window"]["events"] == 2000
    assert (epoch(data["window"]["start"]), epoch(data["window"]["end"])) == (last.window_start, last.window_end)
    no_effect = {"effect_size": None, "effect_size_measure": None, "effect_size_floor": None}
    # age drifted, but not beyond the stricter floor the dataset rule counts at
    assert data["drifted_features"] == [
        {"feature": "income", "method": "wasserstein", "score": 0.31, "threshold": 0.1, "noise_floor": 0.13,
         **no_effect, "decided_by": "noise_floor", "calibrated": True, "dataset_noise_floor": 0.16,
         "counts_for_dataset": True},
        {"feature": "age", "method": "wasserstein", "score": 0.12, "threshold": 0.1, "noise_floor": 0.11,
         **no_effect, "decided_by": "noise_floor", "calibrated": True, "dataset_noise_floor": 0.14,
         "counts_for_dataset": False},
        {"feature": "region", "method": "chisquare", "score": 0.0004, "threshold": 0.05, "noise_floor": 0.08,
         "effect_size": 0.21, "effect_size_measure": "cohens_w", "effect_size_floor": 0.1,
         "decided_by": "noise_floor", "calibrated": True, "dataset_noise_floor": 0.09, "counts_for_dataset": True},
    ]
    assert data["dataset_drift_share"] == pytest.approx(2 / 3)  # what the dataset rule counted
    assert data["drift_share_threshold"] == 0.5
    assert data["calibration"] == "on"
    assert (data["false_alarm_level"], data["dataset_false_alarm_level"], data["false_alarm_level_basis"]) == (
        0.005, 0.001, "whole rows")
    assert data["prediction_drift"] == {"method": "psi", "score": 0.12, "threshold": 0.1, "noise_floor": None,
                                        **no_effect, "decided_by": None, "calibrated": False, "drifted": True,
                                        "dataset_noise_floor": None, "counts_for_dataset": False}
    # broken data is named, with the only raw values driftline ever sends: capped unseen category labels
    assert data["data_quality_issues"] == [
        {"feature": "region", "issues": ["unseen_category"], "missing_ratio": 0.0, "reference_missing_ratio": 0.0,
         "out_of_range_ratio": None, "unseen_category_ratio": 0.031, "expected_unseen_ratio": 0.0,
         "unseen_categories": 1, "unseen_labels": [{"label": "crypto", "count": 62}], "type_errors": 0,
         "type_error_ratio": 0.0}]
    assert data["reference"] == {"content_hash": "sha256:" + "cd" * 32}
    assert data["model_version"] == "v8"


def test_without_model_versions_or_prediction_those_are_null(store, clock) -> None:
    trigger = RetrainTrigger(MONITOR, retrain(1), store, clock)
    assert trigger.observe(Windows().next(True, model_versions={})) == "requested"
    data = strict_json(outbox(store)[0].body)["data"]
    assert data["model_version"] is None
    assert data["prediction_drift"] is None


@pytest.mark.parametrize("score", [math.inf, -math.inf, math.nan])
def test_a_non_finite_score_is_sent_as_null(score, store, clock) -> None:
    trigger = RetrainTrigger(MONITOR, retrain(1), store, clock)
    features = (feature("income", True, score), feature("age", True, 0.5))
    prediction = feature("prediction", True, score, "psi", 0.1)
    assert trigger.observe(Windows().next(True, features=features, prediction=prediction)) == "requested"
    [msg] = outbox(store)
    data = strict_json(msg.body)["data"]
    assert [f["score"] for f in data["drifted_features"]] == [None, 0.5]
    assert data["prediction_drift"]["score"] is None
    for token in ("NaN", "Infinity"):
        assert token not in msg.body


@hsettings(max_examples=100, derandomize=True, deadline=None)
@given(scores=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=6),
       prediction_score=st.floats(allow_nan=True, allow_infinity=True))
def test_any_scores_make_valid_json(scores: list[float], prediction_score: float) -> None:
    store = Store(":memory:")
    try:
        trigger = RetrainTrigger(MONITOR, retrain(1), store, FakeClock())
        features = tuple(feature(f"f{i}", True, s) for i, s in enumerate(scores))
        prediction = feature("prediction", True, prediction_score, "psi", 0.1)
        assert trigger.observe(Windows().next(True, features=features, prediction=prediction)) == "requested"
        data = strict_json(outbox(store)[0].body)["data"]
        sent = [f["score"] for f in data["drifted_features"]]
        assert sent == [s if math.isfinite(s) else None for s in scores]
        assert data["prediction_drift"]["score"] == (prediction_score if math.isfinite(prediction_score) else None)
    finally:
        store.close()


def test_a_requested_retraining_reaches_a_verifying_receiver(store, receiver, webhook_secret) -> None:
    """From window results to a delivery the `standardwebhooks` library accepts."""
    settings = RetrainSettings(webhook_url=receiver.url, secret_env="DRIFTLINE_TEST_SECRET",
                               consecutive_windows=2, cooldown=3600)
    trigger = RetrainTrigger(MONITOR, settings, store, time.time)
    w = Windows()
    outcomes = [trigger.observe(w.next(d)) for d in (True, True, True, True)]
    assert outcomes == [None, "requested", None, "suppressed_cooldown"]
    [pending] = outbox(store)
    statuses: list[str] = []
    endpoint = Endpoint(decode_webhook_secret(webhook_secret), 5.0, 1.0, 60.0)
    dispatcher = Dispatcher(store, {MONITOR: endpoint}, lambda m, s: statuses.append(s), rng=random.Random(0))
    assert dispatcher.run_once() == 1
    assert statuses == ["2xx"] and store.pending_count() == 0

    [delivery] = receiver.state.deliveries
    assert delivery.verified, delivery.error
    assert delivery.body is not None
    assert delivery.body == json.loads(pending.body)
    assert delivery.body["data"]["id"] == delivery.webhook_id == pending.id
    assert {f["feature"] for f in delivery.body["data"]["drifted_features"]} == {"income", "region"}
