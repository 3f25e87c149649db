"""Every drift number equals Evidently's on the same data, over many random inputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.service.drift import METHODS, ColumnKind, ColumnSample, default_method, get_method
from driftline.service.drift.binned import histogram_of_sorted, sturges_edges
from tests.evidently_oracle import evidently_drift, sample_of

REL = 1e-9

# Evidently registers these for categorical columns only; for numerical ones it reaches
# them only through its default choice, which test_default_choice covers.
EVIDENTLY_CATEGORICAL_ONLY = {"chisquare", "z"}
NUMERICAL_METHODS = sorted(n for n, m in METHODS.items()
                           if m.accepts(ColumnKind.NUMERICAL) and n not in EVIDENTLY_CATEGORICAL_ONLY)
CATEGORICAL_METHODS = sorted(n for n, m in METHODS.items() if m.accepts(ColumnKind.CATEGORICAL))


def assert_close(ours: float, theirs: float) -> None:
    if math.isnan(theirs):
        assert math.isnan(ours)
        return
    assert ours == pytest.approx(theirs, rel=REL, abs=1e-12), (ours, theirs)


@st.composite
def numerical_pair(draw: st.DrawFn) -> tuple[pd.Series, pd.Series]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(st.sampled_from(["normal", "lognormal", "discrete", "constant", "extreme", "ties"]))
    n_ref = draw(st.sampled_from([1, 2, 5, 30, 200, 1000, 1001, 3000]))
    n_cur = draw(st.sampled_from([1, 3, 10, 100, 500, 2000]))
    shift = draw(st.sampled_from([0.0, 0.1, 1.0]))

    def make(n: int, delta: float) -> np.ndarray:
        if shape == "normal":
            return rng.normal(delta, 1.0, n)
        if shape == "lognormal":
            return rng.lognormal(delta, 1.5, n)
        if shape == "discrete":
            return rng.integers(0, 4, n).astype(float) + delta
        if shape == "constant":
            return np.full(n, 3.0 + delta)
        if shape == "extreme":
            return rng.normal(0, 1, n) * 1e12 + delta * 1e12
        return np.round(rng.normal(delta, 1.0, n), 1)

    ref, cur = make(n_ref, 0.0), make(n_cur, shift)
    nan_share = draw(st.sampled_from([0.0, 0.2]))
    if nan_share and n_ref > 3:
        ref[rng.random(n_ref) < nan_share] = np.nan
        ref[0] = 1.0  # keep at least one finite value
    if nan_share and n_cur > 3:
        cur[rng.random(n_cur) < nan_share] = np.inf
        cur[0] = 1.0
    return pd.Series(ref), pd.Series(cur)


@st.composite
def categorical_pair(draw: st.DrawFn) -> tuple[pd.Series, pd.Series]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    k = draw(st.sampled_from([1, 2, 3, 6, 25]))
    n_ref = draw(st.sampled_from([1, 5, 50, 1000, 1500]))
    n_cur = draw(st.sampled_from([1, 5, 50, 800]))
    labels = np.array([f"c{i}" for i in range(k)] + ["unseen"])
    p_ref = rng.dirichlet(np.ones(k))
    ref = rng.choice(labels[:k], size=n_ref, p=p_ref)
    unseen = draw(st.booleans())
    p_cur = rng.dirichlet(np.ones(k + 1)) if unseen else np.append(p_ref, 0.0)
    cur = rng.choice(labels, size=n_cur, p=p_cur / p_cur.sum())
    return pd.Series(ref, dtype=object), pd.Series(cur, dtype=object)


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("method", NUMERICAL_METHODS)
@SETTINGS
@given(pair=numerical_pair())
def test_numerical_methods_equal_evidently(method: str, pair: tuple[pd.Series, pd.Series]) -> None:
    ref, cur = pair
    ours_ref, ours_cur = sample_of(ref, ColumnKind.NUMERICAL), sample_of(cur, ColumnKind.NUMERICAL)
    name, score, drifted = evidently_drift(ref, cur, ColumnKind.NUMERICAL, method)
    m = get_method(method)
    ours = m.score(ours_ref, ours_cur)
    assert_close(ours, score)
    assert m.verdict.drifted(ours, m.default_threshold) == drifted


@pytest.mark.parametrize("method", CATEGORICAL_METHODS)
@SETTINGS
@given(pair=categorical_pair())
def test_categorical_methods_equal_evidently(method: str, pair: tuple[pd.Series, pd.Series]) -> None:
    ref, cur = pair
    ours_ref, ours_cur = sample_of(ref, ColumnKind.CATEGORICAL), sample_of(cur, ColumnKind.CATEGORICAL)
    name, score, drifted = evidently_drift(ref, cur, ColumnKind.CATEGORICAL, method)
    m = get_method(method)
    ours = m.score(ours_ref, ours_cur)
    assert_close(ours, score)
    assert m.verdict.drifted(ours, m.default_threshold) == drifted


@SETTINGS
@given(pair=st.one_of(numerical_pair().map(lambda p: (p, ColumnKind.NUMERICAL)),
                      categorical_pair().map(lambda p: (p, ColumnKind.CATEGORICAL))))
def test_default_choice_and_numbers_equal_evidently(pair: tuple[tuple[pd.Series, pd.Series], ColumnKind]) -> None:
    (ref, cur), kind = pair
    ours_ref, ours_cur = sample_of(ref, kind), sample_of(cur, kind)
    name, score, drifted = evidently_drift(ref, cur, kind, None)
    m = default_method(ours_ref, ours_cur)
    assert m.name == name
    ours = m.score(ours_ref, ours_cur)
    assert_close(ours, score)
    assert m.verdict.drifted(ours, m.default_threshold) == drifted


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=1, max_size=300),
       extra=st.integers(0, 5000))
def test_sturges_edges_and_sorted_histogram_equal_numpy(values: list[float], extra: int) -> None:
    arr = np.array(values)
    n = arr.size + extra
    proxy = np.concatenate([arr, np.full(extra, arr[0])])
    edges = sturges_edges(arr.min(), arr.max(), n)
    np.testing.assert_array_equal(edges, np.histogram_bin_edges(proxy, bins="sturges"))
    np.testing.assert_array_equal(histogram_of_sorted(np.sort(arr), edges), np.histogram(arr, edges)[0])


def test_ks_at_scale_equals_evidently() -> None:
    """100,000 reference values against windows below and above the exact-p-value limit."""
    rng = np.random.default_rng(7)
    ref = pd.Series(rng.normal(0, 1, 100_000))
    for n_cur, shift in [(10_000, 0.0), (10_000, 0.05), (20_000, 0.02), (500, 0.3)]:
        cur = pd.Series(rng.normal(shift, 1, n_cur))
        _, score, _ = evidently_drift(ref, cur, ColumnKind.NUMERICAL, "ks")
        assert_close(get_method("ks").score(sample_of(ref, ColumnKind.NUMERICAL),
                                            sample_of(cur, ColumnKind.NUMERICAL)), score)


def test_reference_derivations_are_cached() -> None:
    ref = ColumnSample.numerical(np.arange(10.0)[::-1])
    assert ref.sorted is ref.sorted
    assert ref.std == pytest.approx(np.std(np.arange(10.0)))
    assert ref.count_map == {float(i): 1 for i in range(10)}
