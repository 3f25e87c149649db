"""The calibration and data-quality gauges: every series exists from startup for every configured
feature with the drift gauges' labels (monitor, feature, horizon), and carries the latest result."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from driftline.service.evaluation import WindowResult, evaluate_window
from driftline.service.metrics import BatchHistogram, MonitorCollector
from driftline.service.reference import build_profile
from prometheus_client import CollectorRegistry

from tests.simulation import settings
from tests.test_quality import NAMES, training, window

GAUGES = ("feature_effect_size", "feature_practical_threshold", "feature_noise_floor",
          "feature_plain_drift_detected", "feature_reference_missing_ratio", "feature_out_of_range_ratio",
          "feature_unseen_category_ratio", "feature_type_error_ratio", "feature_unseen_category_detected",
          "feature_missing_increase_detected", "feature_out_of_range_detected", "feature_type_errors_detected")


class View:
    """A monitor as the collector reads it (metrics.MonitorView)."""

    def __init__(self, result: WindowResult | None) -> None:
        self.name, self.feature_names, self.horizons = "m", NAMES, ("5m",)
        self.serving_latency = self.event_lag = self.evaluation_duration = BatchHistogram((1.0,))
        self.result = result

    def latest_result(self, horizon: str | None = None) -> WindowResult | None:
        return self.result

    has_prediction = False

    def configured_method(self, feature: str) -> str:
        return "auto"

    def configured_prediction_method(self) -> str:
        return "auto"

    def consumer_lag(self) -> dict[int, int]:
        return {}

    def open_window_events(self) -> int:
        return 0

    def reference_hash(self) -> str | None:
        return None

    def ready(self) -> bool:
        return True

    def role(self) -> str:
        return "active"

    def rejecting(self) -> bool:
        return False


def registry(result: WindowResult | None) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(MonitorCollector([View(result)]))
    return reg


def test_every_series_exists_from_startup_for_every_feature() -> None:
    reg = registry(None)
    for gauge in GAUGES:
        for feature in NAMES:
            value = reg.get_sample_value(f"driftline_{gauge}", {"monitor": "m", "feature": feature, "horizon": "5m"})
            assert value is not None, (gauge, feature)
            assert math.isnan(value) if gauge in GAUGES[:3] else value == 0.0, (gauge, feature, value)


def test_the_gauges_carry_the_latest_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    training(20_000, rng).to_parquet(tmp_path / "t.parquet", index=False)
    reference = build_profile(tmp_path / "t.parquet")
    frame = training(1_000, rng)
    frame.loc[:29, "amount"] = 1e9
    frame.loc[:39, "purpose"] = "crypto"
    profile = window(frame, type_errors=[0, 0, 0, 20])
    result = evaluate_window(profile, reference, settings(tmp_path, features=NAMES), NAMES)
    reg = registry(result)
    by_name = {f.feature: f for f in result.features}

    def value(gauge: str, feature: str) -> float | None:
        return reg.get_sample_value(f"driftline_{gauge}", {"monitor": "m", "feature": feature, "horizon": "5m"})

    amount, purpose, tenure = by_name["amount"], by_name["purpose"], by_name["tenure"]
    assert value("feature_noise_floor", "amount") == amount.noise_floor and amount.noise_floor
    assert value("feature_effect_size", "amount") == amount.score  # a distance is its own effect
    assert value("feature_practical_threshold", "amount") == amount.threshold == 0.1
    assert value("feature_plain_drift_detected", "amount") == float(amount.plain_drifted)
    assert value("feature_out_of_range_ratio", "amount") == 0.03
    assert value("feature_out_of_range_detected", "amount") == 1.0
    assert value("feature_unseen_category_ratio", "purpose") == purpose.quality.unseen_category_ratio == 0.04  # type: ignore[union-attr]
    assert value("feature_unseen_category_detected", "purpose") == 1.0
    assert value("feature_type_error_ratio", "tenure") == tenure.quality.type_error_ratio  # type: ignore[union-attr]
    assert value("feature_type_errors_detected", "tenure") == 1.0
    assert value("feature_reference_missing_ratio", "tenure") == reference.columns["tenure"].facts.missing_ratio
    # a share that does not apply to the feature's kind is 0, never missing
    assert value("feature_out_of_range_ratio", "purpose") == 0.0
    assert value("feature_unseen_category_ratio", "amount") == 0.0


def test_the_dataset_share_gauge_is_what_the_dataset_rule_counted(tmp_path: Path) -> None:
    """A one-feature monitor whose feature drifts beyond its own noise floor but not beyond the
    dataset's stricter one (level 1 in 1,000): the feature gauge says drifted, the dataset's
    share and verdict say what the dataset rule counted, so the two dataset gauges agree."""
    rng = np.random.default_rng(1)
    training(20_000, rng).to_parquet(tmp_path / "t.parquet", index=False)
    reference = build_profile(tmp_path / "t.parquet")
    names = ("amount",)
    st = settings(tmp_path, features=names)
    floors = evaluate_window(window(training(1_000, rng)), reference, st, names).features[0]
    assert floors.noise_floor is not None and floors.dataset_noise_floor is not None
    assert floors.dataset_noise_floor > max(floors.noise_floor, floors.threshold or 0.0), floors
    # a window whose score falls between the two lines: move `amount` until it does
    base = training(1_000, np.random.default_rng(2))
    low, high = 0.0, 1.0
    for _ in range(40):
        shift = (low + high) / 2
        frame = base.assign(amount=base["amount"] * (1 + shift))
        f = evaluate_window(window(frame), reference, st, names).features[0]
        if f.score is not None and f.score < max(f.noise_floor or 0.0, f.threshold or 0.0):
            low = shift
        elif f.score is not None and f.score >= (f.dataset_noise_floor or 0.0):
            high = shift
        else:
            break
    result = evaluate_window(window(frame), reference, st, names)
    [f] = result.features
    assert f.drifted and not f.counts_for_dataset and not result.dataset_drift, f
    assert (result.drift_share, result.dataset_share) == (1.0, 0.0)
    reg = CollectorRegistry()
    view = View(result)
    view.feature_names = names
    reg.register(MonitorCollector([view]))
    labels = {"monitor": "m", "horizon": "5m"}
    assert reg.get_sample_value("driftline_feature_drift_detected", {**labels, "feature": "amount"}) == 1.0
    assert reg.get_sample_value("driftline_dataset_drift_share", labels) == 0.0
    assert reg.get_sample_value("driftline_dataset_drift_detected", labels) == 0.0
