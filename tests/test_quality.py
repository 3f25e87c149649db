"""Data quality per feature and window: broken data is named as such, clean data never is, and
only code-like category labels ever leave the process. Windows are today's `WindowProfile`
(service/window.py) with `type_errors` assigned, as the rewritten profile will carry it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from driftline.service.drift import ColumnKind
from driftline.service.evaluation import evaluate_window
from driftline.service.profile import WindowProfile
from driftline.service.quality import label_shape_ok
from driftline.service.reference import ReferenceProfile, build_profile
from driftline.service.result_json import result_json

from tests.simulation import settings

NAMES = ("amount", "purpose", "note", "tenure")
KINDS = (ColumnKind.NUMERICAL, ColumnKind.CATEGORICAL, ColumnKind.CATEGORICAL, ColumnKind.NUMERICAL)
PURPOSES = ["car", "home", "debt consolidation", "medical", "travel"]


def training(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    tenure = rng.gamma(2, 3, rows)
    tenure[rng.random(rows) < 0.05] = np.nan  # missing in 5% of the training rows
    return pd.DataFrame({
        "amount": rng.lognormal(9, 0.5, rows),
        "purpose": rng.choice(PURPOSES, rows, p=[0.3, 0.3, 0.2, 0.1, 0.1]),
        "note": [f"applicant {i} wrote a few words" for i in rng.integers(0, 10**6, rows)],  # free text
        "tenure": tenure})


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> ReferenceProfile:
    path = tmp_path_factory.mktemp("quality") / "train.parquet"
    training(20_000, np.random.default_rng(0)).to_parquet(path, index=False)
    return build_profile(path)


def window(frame: pd.DataFrame, type_errors: list[int] | None = None) -> WindowProfile:
    profile = WindowProfile(KINDS, 0.0, 1.0)
    for row in frame.itertuples(index=False):
        profile.add(tuple(None if pd.isna(v) else v for v in row), 0.5, None, None)
    profile.type_errors = type_errors if type_errors is not None else [0] * len(NAMES)  # type: ignore[attr-defined]
    return profile


def issues(reference: ReferenceProfile, profile: WindowProfile, tmp_path: Path) -> dict[str, tuple[str, ...]]:
    result = evaluate_window(profile, reference, settings(tmp_path, features=NAMES), NAMES)
    return {f.feature: f.quality.issues for f in result.features if f.quality and f.quality.issues}


def test_clean_windows_raise_no_issue(reference: ReferenceProfile, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    found = [issues(reference, window(training(100, rng)), tmp_path) for _ in range(200)]
    assert sum(bool(f) for f in found) == 0, [f for f in found if f]
    result = evaluate_window(window(training(500, rng)), reference, settings(tmp_path, features=NAMES), NAMES)
    note = {f.feature: f for f in result.features}["note"]
    assert note.quality and note.quality.unseen_category_ratio and note.quality.unseen_category_ratio > 0.95
    # nearly every note is new, as expected of free text (Good-Turing): not an issue
    assert note.quality.unseen_category_ratio == pytest.approx(note.quality.expected_unseen_ratio, abs=0.02)
    assert not note.quality.issues


def test_a_new_category_is_named_with_its_count_whatever_the_drift_score(reference: ReferenceProfile,
                                                                         tmp_path: Path) -> None:
    frame = training(2_000, np.random.default_rng(2))
    frame.loc[:29, "purpose"] = "crypto"  # 1.5% of the window
    frame.loc[30:34, "purpose"] = "boat"
    result = evaluate_window(window(frame), reference, settings(tmp_path, features=NAMES), NAMES)
    purpose = {f.feature: f for f in result.features}["purpose"]
    assert purpose.quality is not None
    assert purpose.quality.issues == ("unseen_category",)
    assert purpose.quality.unseen_category_ratio == pytest.approx(35 / 2_000)
    assert purpose.quality.unseen_labels == (("crypto", 30), ("boat", 5))
    assert not purpose.drifted and purpose.score is not None and purpose.score < 0.1  # no drift said it
    body = result_json(result)
    assert body is not None and {"feature": "purpose", "issues": ["unseen_category"]} in body["data_quality_issues"]


def test_free_text_and_identifying_labels_are_never_named(reference: ReferenceProfile, tmp_path: Path) -> None:
    frame = training(1_000, np.random.default_rng(3))
    frame.loc[:99, "purpose"] = [f"call me on 0612345{i:03d}" for i in range(100)]  # identifying
    frame.loc[100:149, "purpose"] = "jane.doe@example.com"
    frame.loc[150:199, "purpose"] = "this applicant wants the money for a holiday"  # free text
    frame.loc[200:229, "purpose"] = "gold"
    result = evaluate_window(window(frame), reference, settings(tmp_path, features=NAMES), NAMES)
    by_name = {f.feature: f for f in result.features}
    assert by_name["purpose"].quality and by_name["purpose"].quality.unseen_labels == (("gold", 30),)
    assert by_name["purpose"].quality.unseen_categories == 103
    # a reference of free text names nothing: its categories are not codes
    assert by_name["note"].quality and by_name["note"].quality.unseen_labels == ()
    assert not label_shape_ok("a sentence of more than three words") and label_shape_ok("debt consolidation")


def test_out_of_range_values_missing_values_and_type_errors_are_signals(reference: ReferenceProfile,
                                                                        tmp_path: Path) -> None:
    frame = training(1_000, np.random.default_rng(4))
    frame.loc[:29, "amount"] = 1e9  # 3% far above anything in training
    frame.loc[:199, "tenure"] = np.nan  # missing in 20%+ of rows, 5% in training
    found = issues(reference, window(frame, type_errors=[0, 0, 0, 40]), tmp_path)
    assert found == {"amount": ("out_of_range",), "tenure": ("missing_increase", "type_error")}
    result = evaluate_window(window(frame, [0, 0, 0, 40]), reference, settings(tmp_path, features=NAMES), NAMES)
    tenure = {f.feature: f for f in result.features}["tenure"].quality
    assert tenure is not None and tenure.type_errors == 40 and tenure.type_error_ratio == pytest.approx(40 / 1_040)
    assert tenure.reference_missing_ratio == pytest.approx(0.05, abs=0.005)


def test_thresholds_are_configurable_and_a_small_window_only_measures(reference: ReferenceProfile,
                                                                      tmp_path: Path) -> None:
    frame = training(1_000, np.random.default_rng(5))
    frame.loc[:14, "amount"] = 1e9  # 1.5%
    st = settings(tmp_path, features=NAMES)
    assert issues(reference, window(frame), tmp_path) == {"amount": ("out_of_range",)}
    strict = settings(tmp_path, features=NAMES, data_quality={"out_of_range_share": 0.02})
    result = evaluate_window(window(frame), reference, strict, NAMES)
    assert not any(f.quality and f.quality.issues for f in result.features)
    small = st.model_copy(update={"window": st.window.model_copy(update={"min_events": 5_000})})
    result = evaluate_window(window(frame), reference, small, NAMES)
    amount = {f.feature: f for f in result.features}["amount"].quality
    assert amount is not None and amount.out_of_range_ratio == pytest.approx(0.015) and amount.issues == ()


def test_a_window_without_type_error_counts_reports_them_unknown(reference: ReferenceProfile,
                                                                 tmp_path: Path) -> None:
    profile = window(training(300, np.random.default_rng(6)))
    del profile.type_errors  # type: ignore[attr-defined]  # today's WindowProfile does not count them
    result = evaluate_window(profile, reference, settings(tmp_path, features=NAMES), NAMES)
    assert all(f.quality and f.quality.type_errors is None and f.quality.type_error_ratio is None
               for f in result.features)
