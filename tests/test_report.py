"""Drill-down reports: Evidently's own report, on frames rebuilt from driftline's profiles,
gives driftline's numbers for an exact window; sampled windows and large references are
bounded; rendering runs in a worker with a timeout and loads nothing from elsewhere."""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from driftline.service.config import MonitorSettings
from driftline.service.demo.traffic import DEFAULT_SHIFT
from driftline.service.drift import ColumnKind
from driftline.service.evaluation import FeatureDrift, WindowResult, WindowStatus, evaluate_window
from driftline.service.offline import OfflineResult, _batch, evaluate_files
from driftline.service.profile import WindowProfile
from driftline.service.reference import build_profile
from driftline.service.report import (
    ReportColumn,
    ReportRenderer,
    ReportTimeout,
    build_snapshot,
    columns_from_result,
    render_report,
    report_job,
)

from tests.evidently_oracle import evidently_drift  # noqa: F401  (sets DO_NOT_TRACK before evidently is imported)
from tests.test_offline import DISPLAY_NAMES, mixed, traffic, write


def offline(tmp_path: Path, reference: pd.DataFrame, current: pd.DataFrame, **options: Any) -> OfflineResult:
    return evaluate_files(write(reference, tmp_path / "ref.parquet"), write(current, tmp_path / "cur.parquet"),
                          **options)


def evidently_numbers(snapshot: Any) -> dict[str, Any]:
    """Per column (method, threshold, score) of every ValueDrift, and the drifted count and share."""
    out: dict[str, Any] = {"columns": {}}
    for m in snapshot.dict()["metrics"]:
        cfg = m["config"]
        if cfg["type"].endswith("ValueDrift"):
            method = DISPLAY_NAMES.get(cfg["method"], cfg["method"])
            out["columns"][cfg["column"]] = (method, cfg["threshold"], float(m["value"]))
        elif cfg["type"].endswith("DriftedColumnsCount"):
            out["count"], out["share"] = m["value"]["count"], m["value"]["share"]
    return out


# -- an exact window: Evidently's numbers are driftline's ---------------------------------

@pytest.mark.parametrize(("data", "options"), [
    pytest.param(lambda: traffic(3_000, 1_500, DEFAULT_SHIFT, 1), {"prediction_column": "prediction"},
                 id="traffic-default-methods"),
    pytest.param(lambda: traffic(800, 500, ("age", "region", "loan_term_months"), 2),
                 {"prediction_column": "prediction", "drift_share": 0.2},
                 id="small-reference-ks-chisquare-z"),  # z on a numerical column: categorical to Evidently
    pytest.param(lambda: traffic(2_000, 1_000, ("income", "age", "region"), 3),
                 {"per_column_method": {"income": "psi", "age": "mannw", "loan_amount": "anderson",
                                        "credit_score": "t_test", "open_accounts": "cramer_von_mises",
                                        "debt_to_income": "ed", "region": "hellinger", "loan_purpose": "kl_div",
                                        "home_ownership": "chisquare"},
                  "per_column_threshold": {"income": 0.2, "age": 0.01, "region": 0.05}, "exclude": ["prediction"]},
                 id="configured-methods-and-thresholds"),
    pytest.param(lambda: mixed(1_500, 700, 4), {"types": {"code": ColumnKind.CATEGORICAL}, "drift_share": 0.3},
                 id="missing-values-inf-booleans-integer-codes"),
])
def test_an_exact_windows_report_gives_driftlines_numbers(tmp_path: Path, data: Any, options: dict[str, Any]) -> None:
    reference, current = data()
    # Evidently's plain verdicts: driftline's with calibration off (the service passes a noise
    # floor above a threshold as the threshold: service/drilldown.py, tests/test_history.py)
    out = offline(tmp_path, reference, current, calibration="off", **options)
    r = out.result
    features, pred, _ = columns_from_result(r, out.prediction_column)
    job = report_job(out.window, out.reference, features, drift_share=r.drift_share_threshold, prediction=pred)

    # the frames hold exactly the window: its values, its counts, its missing values
    assert len(job.current) == r.events == len(current)
    for f in r.features:
        column = job.current[f.feature]
        assert int(column.isna().sum()) == round(f.missing_ratio * r.events)
        if f.kind is ColumnKind.NUMERICAL:
            expected = current[f.feature].replace([np.inf, -np.inf], np.nan).dropna().to_numpy(dtype=float)
            assert np.array_equal(column.dropna().to_numpy(dtype=float), expected)  # in the order they came
        else:
            assert Counter(column.dropna()) == Counter(out.window.categorical[r.features.index(f)])
    assert len(job.reference) == len(reference)

    theirs = evidently_numbers(build_snapshot(job))
    assert set(theirs["columns"]) == {f.feature for f in r.features} | ({pred.name} if pred else set())
    for f in [*r.features, *([r.prediction] if r.prediction else [])]:
        name = pred.name if pred is not None and f is r.prediction else f.feature
        method, threshold, score = theirs["columns"][name]
        assert (method, threshold) == (f.method, f.threshold), name
        assert f.score is not None
        if math.isnan(f.score):
            assert math.isnan(score)
        else:
            assert score == pytest.approx(f.score, rel=1e-9, abs=1e-12), name
    assert theirs["count"] == len(r.drifted_features) and r.drifted_features
    assert theirs["share"] == pytest.approx(r.drift_share, rel=1e-12)


# -- beyond the budget, and a large reference: bounded, uniform, reproducible --------------

def test_a_sampled_window_and_a_large_reference_are_shown_as_bounded_samples(tmp_path: Path) -> None:
    reference, current = traffic(30_000, 12_000, DEFAULT_SHIFT, 5)
    ref = build_profile(write(reference, tmp_path / "ref.parquet"))
    names = [c for c in reference.columns if c != "prediction"]
    kinds = [ref.columns[n].kind for n in names]
    budget = 2_000
    window = WindowProfile(tuple(kinds), 0.0, 600.0, budget=budget)
    for start in range(0, len(current), 1_000):  # as the service fills it: batch by batch
        window.add_batch(_batch(current.iloc[start:start + 1_000], names, kinds, None, None, tmp_path))
    assert not all(window.exact(i) for i in range(len(names)))
    settings = MonitorSettings.model_validate({
        "name": "m", "kafka": {"bootstrap_servers": ["x:1"], "topic": "t", "group_id": "g"},
        "reference": {"path": str(tmp_path / "ref.dlref")}, "event": {"features": names},
        "window": {"size": "10m"}})
    result = evaluate_window(window, ref, settings, tuple(names))
    features, _, _ = columns_from_result(result)

    job = report_job(window, ref, features, drift_share=0.5, reference_rows=10_000)
    assert len(job.current) == budget and len(job.reference) == 10_000
    for i, f in enumerate(result.features):
        cur, refcol = job.current[f.feature], job.reference[f.feature]
        if f.kind is ColumnKind.NUMERICAL:  # values drawn from the window's sample, and from the reference
            assert set(cur.dropna()) <= set(window.numerical[i].values)
            assert set(refcol.dropna()) <= set(ref.columns[f.feature].sample.values)
        else:
            assert all(n <= window.categorical[i][label] for label, n in Counter(cur.dropna()).items())
        # missing values in about the window's share (a hypergeometric draw: 5 sigma)
        sigma = math.sqrt(budget * f.missing_ratio * (1 - f.missing_ratio)) + 1
        assert abs(cur.isna().sum() - budget * f.missing_ratio) <= 5 * sigma, f.feature
    notes = " ".join(job.notes)
    assert f"uniform sample of {budget:,} rows" in notes and "10,000 of its 30,000 rows" in notes
    again = report_job(window, ref, features, drift_share=0.5, reference_rows=10_000)
    pd.testing.assert_frame_equal(again.current, job.current)  # the same page every time (a cache can keep it)
    pd.testing.assert_frame_equal(again.reference, job.reference)

    # the verdicts still agree where distances are far from their thresholds: "far" is 0.05 for a
    # feature the page shows with all its budget of values, wider for one it shows fewer of (the
    # window's sample of a feature missing in half the events is subsampled again to ~900 values,
    # whose own noise alone moved a Wasserstein distance by more than 0.05 in one run of many)
    theirs = evidently_numbers(build_snapshot(job))
    for f in result.features:
        _, threshold, score = theirs["columns"][f.feature]
        assert f.score is not None and f.threshold is not None
        shown = max(int(job.current[f.feature].notna().sum()), 1)
        if abs(f.score - f.threshold) > 0.05 * math.sqrt(budget / shown):
            assert (score >= threshold) == f.drifted, f.feature


# -- the page, the worker, the timeout -----------------------------------------------------

@pytest.fixture(scope="module")
def renderer() -> Any:
    with ReportRenderer() as r:
        yield r


def test_the_page_is_self_contained_and_a_slow_render_times_out(tmp_path: Path, renderer: ReportRenderer) -> None:
    reference, current = traffic(3_000, 1_000, DEFAULT_SHIFT, 9)
    out = offline(tmp_path, reference, current, prediction_column="prediction")
    features, pred, _ = columns_from_result(out.result, "prediction")
    page = render_report(out.window, out.reference, features, drift_share=0.5, prediction=pred,
                         title="credit-risk <5m> window", renderer=renderer)
    assert page.lstrip().startswith("<!DOCTYPE html>")
    assert "<title>credit-risk &lt;5m&gt; window</title>" in page
    assert "1,000 events" in page and "Rows are rebuilt column by column" in page
    # nothing to load from elsewhere: no script, style, image or font by URL (links are not loads)
    loads = re.findall(r"""<(?:script|img|iframe|link)\b[^>]*\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, re.I)
    loads += re.findall(r"""url\(\s*["']?(https?:[^"')]+)""", page)
    loads += re.findall(r"@import\s+[\"']?(https?:[^\"';]+)", page)
    assert loads == []

    # a render that takes too long: a clear error within the timeout, and the next render works
    big_ref, big_cur = traffic(100_000, 100_000, DEFAULT_SHIFT, 10)
    big = offline(tmp_path, big_ref, big_cur)
    big_features, _, _ = columns_from_result(big.result)
    started = time.monotonic()
    with pytest.raises(ReportTimeout, match=r"rendering the report took longer than 0.5 s"):
        render_report(big.window, big.reference, big_features, drift_share=0.5, timeout=0.5, renderer=renderer)
    assert time.monotonic() - started < 20  # building the frames, then 0.5 s: not Evidently's whole run
    again = render_report(out.window, out.reference, features, drift_share=0.5, prediction=pred, renderer=renderer)
    assert "1,000 events" in again


def test_a_column_evidently_cannot_test_is_named_and_the_rest_is_rendered(tmp_path: Path,
                                                                            renderer: ReportRenderer) -> None:
    # g_test on sides of different sizes: Evidently raises (docs/drift-methods.md), driftline does not
    reference, current = traffic(2_000, 700, ("region",), 11)
    out = offline(tmp_path, reference, current, per_column_method={"region": "g_test"}, exclude=["prediction"])
    assert next(f for f in out.result.features if f.feature == "region").score is not None
    features, _, _ = columns_from_result(out.result)
    page = render_report(out.window, out.reference, features, drift_share=0.5, renderer=renderer)
    assert "Evidently cannot compute g_test for region on this window (ValueError" in page


def test_report_columns_must_match_the_window_and_the_reference(tmp_path: Path) -> None:
    reference, current = mixed(300, 200, 12)
    out = offline(tmp_path, reference, current, types={"code": ColumnKind.CATEGORICAL})
    features, _, _ = columns_from_result(out.result)
    with pytest.raises(ValueError, match="6 report columns for a window of 7 features"):
        report_job(out.window, out.reference, features[:-1], drift_share=0.5)
    renamed = [ReportColumn("salary", f.method, f.threshold) if f.name == "x" else f for f in features]
    with pytest.raises(ValueError, match="no column 'salary' in the reference profile"):
        report_job(out.window, out.reference, renamed, drift_share=0.5)
    swapped = [ReportColumn("city" if f.name == "x" else "x" if f.name == "city" else f.name) for f in features]
    with pytest.raises(ValueError, match="'city' is numerical in the window and categorical in the reference"):
        report_job(out.window, out.reference, swapped, drift_share=0.5)


def test_an_idle_worker_stops_and_the_next_render_starts_it_again(tmp_path: Path) -> None:
    reference, current = traffic(1_500, 300, DEFAULT_SHIFT, 13)
    out = offline(tmp_path, reference, current)
    features, _, _ = columns_from_result(out.result)
    with ReportRenderer(idle_timeout=1.0) as r:
        r.start()
        assert r.running
        deadline = time.monotonic() + 15
        while r.running and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not r.running  # its memory is given back
        assert "300 events" in render_report(out.window, out.reference, features, drift_share=0.5, renderer=r)
        assert r.running


def test_report_columns_carry_the_limit_that_decided_and_name_what_evidently_cannot_weigh() -> None:
    """The service's reports and `driftline evaluate --html` pass Evidently the limit behind each
    verdict: a distance's noise floor where it is above the threshold (so a score between them is
    "not drifted" in both), the threshold otherwise; a p-value verdict that an effect-size floor
    changed gets a note, since Evidently's test cannot weigh it."""
    num = ColumnKind.NUMERICAL

    def feature(name: str, method: str | None, threshold: float | None, score: float | None, drifted: bool,
                plain: bool, noise: float | None = None, **more: Any) -> FeatureDrift:
        return FeatureDrift(name, num, method, threshold, score, drifted, 500, 0.0, True, plain,
                            noise is not None, noise, **more)

    features = (feature("floored", "wasserstein", 0.1, 0.15, False, True, noise=0.2, decided_by="noise_floor"),
                feature("plain", "wasserstein", 0.1, 0.15, True, True, noise=0.05, decided_by="threshold",
                        counts_for_dataset=True),
                feature("small_effect", "ks", 0.05, 0.01, False, True, noise=0.02, effect_size=0.01,
                        effect_size_measure="ks_statistic", effect_size_floor=0.05, decided_by="effect_size_floor"),
                feature("absent", None, None, None, False, False))
    result = WindowResult("m", "5m", WindowStatus.EVALUATED, 0.0, 300.0, 500, features, None, 0.25, 0.5, False,
                          {}, "sha256:x", 0.0, 0.0, calibration="on")
    columns, prediction, notes = columns_from_result(result)
    assert columns == [ReportColumn("floored", "wasserstein", 0.2), ReportColumn("plain", "wasserstein", 0.1),
                       ReportColumn("small_effect", "ks", 0.05), ReportColumn("absent")]
    assert prediction is None
    assert len(notes) == 1 and notes[0].startswith("small_effect: driftline's verdict (not drifted)")
    # a drifted feature the dataset rule did not count (below the dataset's stricter floor) is named:
    # Evidently's own summary counts every drifted feature
    uncounted = dataclasses.replace(features[1], counts_for_dataset=False, dataset_noise_floor=0.2)
    result = dataclasses.replace(result, features=(uncounted,), dataset_false_alarm_level=0.001, dataset_share=0.0)
    _, _, notes = columns_from_result(result)
    assert notes == ["driftline's dataset rule counts a drifted feature only beyond the stricter noise floor of the "
                     "dataset's false-alarm level (0.001); it did not count plain: dataset drift no (share 0). "
                     "Evidently's summary below counts every drifted feature."]

