"""A whole window's drift table equals Evidently's `Report([DataDriftPreset()])` on the same data:
with `drift.calibration: off` the verdicts too; with it on, `plain_drifted` is Evidently's verdict
and a feature drifts only where Evidently's does."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from driftline.service.config import MonitorSettings
from driftline.service.demo.traffic import (
    CATEGORICAL,
    DEFAULT_SHIFT,
    FEATURES,
    NUMERICAL,
    TrafficModel,
    encode,
    monitor_config,
)
from driftline.service.drift import METHODS
from driftline.service.evaluation import evaluate_window
from driftline.service.profile import WindowProfile
from driftline.service.reference import build_profile, save_profile

from tests import evidently_oracle  # noqa: F401  (sets DO_NOT_TRACK before evidently is imported)
from tests.helpers import ServiceProcess, produce, wait_until

DISPLAY_NAMES = {m.display_name: m.name for m in METHODS.values()}


def evidently_table(reference: pd.DataFrame, current: pd.DataFrame, drift_share: float) -> dict[str, Any]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    dd = DataDefinition(numerical_columns=list(NUMERICAL), categorical_columns=list(CATEGORICAL))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snap = Report([DataDriftPreset(drift_share=drift_share)]).run(
            Dataset.from_pandas(current[list(FEATURES)], data_definition=dd),
            Dataset.from_pandas(reference[list(FEATURES)], data_definition=dd))
    out: dict[str, Any] = {"columns": {}}
    for m in snap.dict()["metrics"]:
        cfg = m["config"]
        if cfg["type"].endswith("ValueDrift"):
            out["columns"][cfg["column"]] = (DISPLAY_NAMES[cfg["method"]], cfg["threshold"], float(m["value"]))
        elif cfg["type"].endswith("DriftedColumnsCount"):
            out["count"], out["share"] = m["value"]["count"], m["value"]["share"]
    return out


def events_frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [{f: e["features"].get(f, np.nan) for f in FEATURES} for e in events]
    return pd.DataFrame(rows, columns=list(FEATURES)).astype({c: float for c in NUMERICAL})


def assert_equal_tables(ours: Any, theirs: dict[str, Any]) -> None:
    assert {f.feature for f in ours.features} == set(theirs["columns"])
    for f in ours.features:
        method, threshold, score = theirs["columns"][f.feature]
        assert f.method == method, f.feature
        assert f.threshold == threshold, f.feature
        assert f.score == pytest.approx(score, rel=1e-9, abs=1e-12) or (math.isnan(score) and math.isnan(f.score))
    assert sum(f.plain_drifted for f in ours.features) == theirs["count"]
    if ours.calibration == "off":
        assert [f.drifted for f in ours.features] == [f.plain_drifted for f in ours.features]
        assert ours.drift_share == pytest.approx(theirs["share"])
    else:  # calibration only ever adds conditions to Evidently's verdict
        assert ours.calibration == "on" and all(f.calibrated for f in ours.features)
        assert all(f.plain_drifted for f in ours.features if f.drifted)


def settings_for(reference: Path, drift_share: float = 0.2, calibration: str = "off") -> MonitorSettings:
    conf = monitor_config("m", "127.0.0.1:9", "t", reference, window={"type": "count", "size": 10**9,
                                                                     "min_events": 1})
    conf["drift"] = {"drift_share": drift_share, "calibration": calibration}
    return MonitorSettings.model_validate(conf)


@pytest.mark.parametrize(("reference_rows", "window", "shift", "seed"), [
    (20_000, 2_000, (), 1),
    (20_000, 1_500, DEFAULT_SHIFT, 2),
    (20_000, 300, ("age", "region", "credit_score"), 3),
    (800, 400, (), 4),                       # small reference: Evidently picks ks, chisquare, z
    (800, 250, ("loan_amount", "home_ownership"), 5),
    (1_001, 5_000, ("income",), 6),
])
def test_window_drift_table_equals_evidently_report(tmp_path: Path, reference_rows: int, window: int,
                                                    shift: tuple[str, ...], seed: int) -> None:
    training = pd.DataFrame(TrafficModel(seed=100 + seed).columns(reference_rows))
    training.to_parquet(tmp_path / "train.parquet")
    save_profile(build_profile(tmp_path / "train.parquet"), tmp_path / "ref.dlref")
    from driftline.service.reference import load_profile

    reference = load_profile(tmp_path / "ref.dlref")
    events = TrafficModel(seed=seed, shift=shift).events(window)
    from driftline.service.drift import ColumnKind

    kinds = tuple(reference.columns[f].kind for f in FEATURES)
    profile = WindowProfile(kinds, 0, 1, prediction_kind=ColumnKind.NUMERICAL)
    for e in events:
        feats = tuple(e["features"].get(f) for f in FEATURES)
        profile.add(feats, e["ts"], e["prediction"]["score"], None)
    theirs = evidently_table(training, events_frame(events), 0.2)
    for calibration in ("off", "on"):
        ours = evaluate_window(profile, reference, settings_for(tmp_path / "ref.dlref", calibration=calibration),
                               FEATURES)
        assert_equal_tables(ours, theirs)


@pytest.mark.integration
def test_the_running_service_reports_evidently_numbers_for_its_windows(
        services, tmp_path, broker, topic, training_data, reference_path) -> None:
    size = 1500
    conf = monitor_config("credit-risk", broker.bootstrap, topic, reference_path,
                          window={"type": "count", "size": size, "min_events": 100},
                          drift={"drift_share": 0.2, "calibration": "off"})
    svc = ServiceProcess(tmp_path, [conf])
    services.append(svc)
    svc.start()
    training = pd.read_parquet(training_data)
    for i, shift in enumerate([(), DEFAULT_SHIFT]):
        events = TrafficModel(seed=70 + i, shift=shift).events(size)
        produce(broker.bootstrap, topic, encode(events))
        wait_until(lambda i=i: (svc.sample("driftline_windows_total", monitor="credit-risk", status="evaluated")
                                or 0) >= i + 1, 60, what=f"window {i + 1}")
        api = svc.monitor("credit-risk")["latest_window"]
        theirs = evidently_table(training, events_frame(events), 0.2)
        for f in api["features"]:
            method, threshold, score = theirs["columns"][f["feature"]]
            assert (f["method"], f["threshold"]) == (method, threshold)
            assert f["score"] == pytest.approx(score, rel=1e-9, abs=1e-12)
            assert svc.sample("driftline_feature_drift_score", monitor="credit-risk", feature=f["feature"],
                              method=method) == pytest.approx(score, rel=1e-9, abs=1e-12)
            assert f["drifted"] == f["plain_drifted"] and f["decided_by"] == "threshold"
        assert len(api["drifted_features"]) == theirs["count"]
        assert api["drift_share"] == pytest.approx(theirs["share"])
