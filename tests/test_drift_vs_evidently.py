"""Every drift number equals Evidently's on the same data, over many random inputs.

Where Evidently errs or is mathematically wrong on an input, driftline returns the
textbook value listed in docs/drift-methods.md; `textbook` computes that value
independently (from scipy or by definition) and the tests compare with it instead.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from driftline.service.drift import METHODS, ColumnKind, ColumnSample, default_method, get_method
from driftline.service.drift.binned import histogram_of_sorted, sturges_edges
from driftline.service.drift.moments import MMD_MAX_VALUES, _mwu_exact_sf, mmd_subsample
from evidently.legacy.calculations.stattests.registry import get_registered_stattest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from tests.evidently_oracle import _TYPES, evidently_drift, presented_rows, sample_of

REL = 1e-9

# Evidently registers these for categorical columns only; for numerical ones it reaches
# them only through its default choice, which test_default_choice covers.
EVIDENTLY_CATEGORICAL_ONLY = {"chisquare", "z"}
NUMERICAL_METHODS = sorted(n for n, m in METHODS.items()
                           if m.accepts(ColumnKind.NUMERICAL) and n not in EVIDENTLY_CATEGORICAL_ONLY)
CATEGORICAL_METHODS = sorted(n for n, m in METHODS.items() if m.accepts(ColumnKind.CATEGORICAL))
# Evidently runs these as Python loops over 100 (empirical_mmd) or 1000 (TVD) permutations,
# up to seconds a call, so they get fewer examples.
SLOW = {"empirical_mmd", "TVD"}
# Results that depend on the order of the rows: permutations of positions (TVD,
# empirical_mmd), a sum in set order whose rounding the square root magnifies near 0
# (hellinger). Evidently is given the rows in the order the sample presents them;
# test_row_order_moves_results_within_documented_tolerance covers other orders.
ORDERED = {"empirical_mmd", "TVD", "hellinger"}


def assert_close(ours: float, theirs: float) -> None:
    if math.isnan(theirs):
        assert math.isnan(ours), (ours, theirs)
        return
    assert ours == pytest.approx(theirs, rel=REL, abs=1e-12), (ours, theirs)


def clean(series: pd.Series, kind: ColumnKind) -> np.ndarray:
    """What Evidently tests: the finite values, or the labels as strings."""
    if kind is ColumnKind.NUMERICAL:
        arr = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return arr[np.isfinite(arr)]
    return series.dropna().astype(str).to_numpy()


def _counts(values: np.ndarray, keys: list[str]) -> np.ndarray:
    return np.array([np.count_nonzero(values == k) for k in keys], dtype=np.float64)


def textbook(method: str, ref: np.ndarray, cur: np.ndarray) -> float | None:
    """driftline's documented value on inputs where Evidently errs or is wrong, else None."""
    n1, n2 = ref.size, cur.size
    pooled = np.concatenate((ref, cur))
    if method in {"anderson", "cramer_von_mises", "es"} and np.unique(pooled).size == 1:
        return 1.0  # identical samples
    if method == "anderson" and n1 + n2 < 4:
        return math.nan
    if method == "cramer_von_mises":
        if min(n1, n2) < 2:
            return math.nan
        if max(n1, n2) <= 20:
            return float(stats.cramervonmises_2samp(ref, cur, method="exact").pvalue)
    if method == "es" and stats.iqr(pooled) == 0:
        return math.nan
    if method == "empirical_mmd" and min(n1, n2) < 2:
        return math.nan
    if method == "g_test" and n1 != n2:
        keys = sorted(set(pooled.tolist()))
        expected = _counts(ref, keys) * (n2 / n1)
        with np.errstate(divide="ignore"):  # a category unseen in the reference: G = inf, p = 0
            return float(stats.power_divergence(_counts(cur, keys), expected, lambda_="log-likelihood")[1])
    if method == "fisher_exact":
        keys = sorted(set(pooled.tolist()))
        if len(keys) > 2:
            return math.nan
        if n1 != n2:
            table = np.zeros((2, 2), dtype=np.int64)
            table[0, :len(keys)], table[1, :len(keys)] = _counts(cur, keys), _counts(ref, keys)
            return float(stats.fisher_exact(table)[1])
    return None


def check_against_evidently(method: str, kind: ColumnKind, ref: pd.Series, cur: pd.Series) -> None:
    m = get_method(method)
    ours_ref, ours_cur = sample_of(ref, kind), sample_of(cur, kind)
    ours = m.score(ours_ref, ours_cur)
    expected = textbook(method, clean(ref, kind), clean(cur, kind))
    if expected is not None:
        assert_close(ours, expected)
        return
    if method in ORDERED:
        ref, cur = presented_rows(ours_ref), presented_rows(ours_cur)
    if method == "empirical_mmd":
        ref, cur = (pd.Series(mmd_subsample(s.to_numpy())) for s in (ref, cur))
    name, score, drifted = evidently_drift(ref, cur, kind, method)
    assert name == method
    assert_close(ours, score)
    assert m.verdict.drifted(ours, m.default_threshold) == drifted


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
SLOW_SETTINGS = settings(SETTINGS, max_examples=10)


@pytest.mark.parametrize("method", [n for n in NUMERICAL_METHODS if n not in SLOW])
@SETTINGS
@given(pair=numerical_pair())
def test_numerical_methods_equal_evidently(method: str, pair: tuple[pd.Series, pd.Series]) -> None:
    check_against_evidently(method, ColumnKind.NUMERICAL, *pair)


@pytest.mark.parametrize("method", [n for n in NUMERICAL_METHODS if n in SLOW])
@SLOW_SETTINGS
@given(pair=numerical_pair())
def test_slow_numerical_methods_equal_evidently(method: str, pair: tuple[pd.Series, pd.Series]) -> None:
    check_against_evidently(method, ColumnKind.NUMERICAL, *pair)


@pytest.mark.parametrize("method", [n for n in CATEGORICAL_METHODS if n not in SLOW])
@SETTINGS
@given(pair=categorical_pair())
def test_categorical_methods_equal_evidently(method: str, pair: tuple[pd.Series, pd.Series]) -> None:
    check_against_evidently(method, ColumnKind.CATEGORICAL, *pair)


@pytest.mark.parametrize("method", [n for n in CATEGORICAL_METHODS if n in SLOW])
@SLOW_SETTINGS
@given(pair=categorical_pair())
def test_slow_categorical_methods_equal_evidently(method: str, pair: tuple[pd.Series, pd.Series]) -> None:
    check_against_evidently(method, ColumnKind.CATEGORICAL, *pair)


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


@pytest.mark.parametrize("method", sorted(METHODS))
def test_metadata_and_verdict_operator_equal_evidently(method: str) -> None:
    """Name, display name, default threshold and column kinds are Evidently's, and with the
    threshold set to the score itself the verdict is Evidently's (which pins < against <=)."""
    m = get_method(method)
    kinds = set(m.kinds) - ({ColumnKind.NUMERICAL} if method in EVIDENTLY_CATEGORICAL_ONLY else set())
    registered = get_registered_stattest(method, _TYPES[next(iter(kinds))])
    assert (registered.name, registered.display_name) == (m.name, m.display_name)
    assert registered.default_threshold == m.default_threshold
    assert {_TYPES[k] for k in kinds} == set(registered.allowed_feature_types)
    rng = np.random.default_rng(3)
    for kind in kinds:
        if kind is ColumnKind.NUMERICAL:
            ref, cur = pd.Series(rng.normal(0, 1, 40)), pd.Series(rng.normal(0.5, 1, 30))
        else:
            ref = pd.Series(rng.choice(["a", "b"], 40), dtype=object)
            cur = pd.Series(rng.choice(["a", "b"], 40, p=[0.3, 0.7]), dtype=object)
        ours_ref, ours_cur = sample_of(ref, kind), sample_of(cur, kind)
        score = m.score(ours_ref, ours_cur)
        ref, cur = presented_rows(ours_ref), presented_rows(ours_cur)
        _, theirs, drifted = evidently_drift(ref, cur, kind, method, threshold=score)
        assert_close(score, theirs)
        assert m.verdict.drifted(score, score) == drifted


@SETTINGS
@given(n=st.sampled_from([1, 2, 5, 40, 300]), p_ref=st.floats(0, 1), p_cur=st.floats(0, 1),
       seed=st.integers(0, 2**32 - 1), labels=st.sampled_from([("no", "yes"), ("x", "x")]))
def test_fisher_exact_on_binary_columns_of_equal_length_equals_evidently(
        n: int, p_ref: float, p_cur: float, seed: int, labels: tuple[str, str]) -> None:
    """Evidently's fisher_exact needs binary columns of equal length; there, it is exact."""
    rng = np.random.default_rng(seed)
    ref = pd.Series(np.where(rng.random(n) < p_ref, *labels), dtype=object)
    cur = pd.Series(np.where(rng.random(n) < p_cur, *labels), dtype=object)
    check_against_evidently("fisher_exact", ColumnKind.CATEGORICAL, ref, cur)
    assert textbook("fisher_exact", clean(ref, ColumnKind.CATEGORICAL), clean(cur, ColumnKind.CATEGORICAL)) is None


@SETTINGS
@given(n=st.sampled_from([1, 5, 50, 800]), k=st.sampled_from([1, 2, 3, 6, 25]), seed=st.integers(0, 2**32 - 1))
def test_g_test_on_equal_sizes_equals_evidently(n: int, k: int, seed: int) -> None:
    """Evidently's g_test only runs when both sides have as many values; there, it is exact."""
    rng = np.random.default_rng(seed)
    labels = np.array([f"c{i}" for i in range(k)] + ["unseen"])
    ref = pd.Series(rng.choice(labels[:k], n, p=rng.dirichlet(np.ones(k))), dtype=object)
    cur = pd.Series(rng.choice(labels, n, p=rng.dirichlet(np.ones(k + 1))), dtype=object)
    check_against_evidently("g_test", ColumnKind.CATEGORICAL, ref, cur)


def _num(values: list[float]) -> pd.Series:
    return pd.Series(values, dtype=np.float64)


def _cat(values: str) -> pd.Series:
    return pd.Series(list(values), dtype=object)


N, C = ColumnKind.NUMERICAL, ColumnKind.CATEGORICAL
# (method, kind, reference, current, driftline's value, what Evidently does instead)
DEVIATIONS = [
    ("anderson", N, _num([3.0] * 5), _num([3.0] * 10), 1.0, ValueError),
    ("anderson", N, _num([1.0]), _num([2.0]), math.nan, IndexError),
    ("cramer_von_mises", N, _num([3.0] * 1000), _num([3.0] * 100), 1.0, "drift"),
    ("cramer_von_mises", N, _num([1.0]), _num([2.0, 3.0, 4.0]), math.nan, ValueError),
    ("cramer_von_mises", N, _num([1.0, 2.0]), _num([2.0, 3.0]), 1 / 3, TypeError),
    ("cramer_von_mises", N, _num([1.0, 2, 3, 4, 5]), _num([2.0, 3, 4, 5, 6]), 220 / 252, 0.873046875),
    ("es", N, _num([3.0] * 20), _num([3.0] * 20), 1.0, ValueError),
    ("es", N, _num([0.0] * 20 + [1.0]), _num([0.0] * 20 + [5.0]), math.nan, ValueError),
    ("empirical_mmd", N, _num([1.0]), _num([1.0, 2.0, 3.0]), math.nan, ZeroDivisionError),
    ("g_test", C, _cat("abaa"), _cat("bba"),
     float(stats.power_divergence([1, 2], np.array([3.0, 1.0]) * 3 / 4, lambda_="log-likelihood")[1]),
     ValueError),
    ("fisher_exact", C, _cat("abaa"), _cat("bba"), float(stats.fisher_exact([[1, 2], [3, 1]])[1]), ValueError),
    ("fisher_exact", C, _cat("aaaaa"), _cat("aaa"), 1.0, ValueError),
    ("fisher_exact", C, _cat("abc"), _cat("abc"), math.nan, ValueError),
    ("fisher_exact", C, _cat("aba"), _cat("bcc"), math.nan, "a number"),
]


@pytest.mark.parametrize(("method", "kind", "ref", "cur", "ours", "evidently"), DEVIATIONS)
def test_documented_deviations_from_evidently(method: str, kind: ColumnKind, ref: pd.Series, cur: pd.Series,
                                              ours: float, evidently: object) -> None:
    """Each textbook value of docs/drift-methods.md, next to what Evidently does there."""
    assert_close(get_method(method).score(sample_of(ref, kind), sample_of(cur, kind)), ours)
    assert_close(ours, textbook(method, clean(ref, kind), clean(cur, kind)))  # type: ignore[arg-type]
    if isinstance(evidently, type):
        with pytest.raises(evidently):
            evidently_drift(ref, cur, kind, method)
        return
    _, score, drifted = evidently_drift(ref, cur, kind, method)
    if evidently == "drift":  # identical constant samples (of different sizes) reported as drifted
        assert drifted
    elif isinstance(evidently, float):
        assert score == evidently != ours
    else:
        assert not math.isnan(score)


def test_mannw_exact_distribution_by_enumeration() -> None:
    """The exact Mann-Whitney tail of moments.py equals counting every arrangement."""
    for m, n in [(1, 1), (1, 5), (2, 3), (3, 3), (4, 6), (5, 2)]:
        us = [sum(p - i for i, p in enumerate(pos)) for pos in itertools.combinations(range(m + n), m)]
        for k in range(m * n + 1):
            assert _mwu_exact_sf(k, m, n) == sum(u >= k for u in us) / len(us)


def test_mannw_exact_branch_with_a_large_reference_equals_evidently() -> None:
    """A window of five distinct values against 3,000: scipy's exact branch, O(m*n) counts."""
    rng = np.random.default_rng(11)
    ref = pd.Series(rng.normal(0, 1, 3000))
    for shift in (0.0, 0.8, -1.5):
        check_against_evidently("mannw", N, ref, pd.Series(rng.normal(shift, 1, 5)))


def test_empirical_mmd_above_the_bound_equals_evidently_on_the_subsample() -> None:
    rng = np.random.default_rng(5)
    ref, cur = rng.normal(0, 1, 3000), rng.normal(0.15, 1, 700)
    ours = get_method("empirical_mmd").score(ColumnSample.numerical(ref), ColumnSample.numerical(cur))
    sub_ref, sub_cur = mmd_subsample(ref), mmd_subsample(cur)
    assert sub_ref.size == sub_cur.size == MMD_MAX_VALUES
    assert np.all(np.isin(sub_ref, ref))
    _, theirs, _ = evidently_drift(pd.Series(sub_ref), pd.Series(sub_cur), N, "empirical_mmd")
    assert ours == theirs


def _shuffled(series: pd.Series, seed: int) -> pd.Series:
    return series.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_row_order_moves_results_within_documented_tolerance() -> None:
    """Evidently given rows in another order (raw rows, a sorted reference): TVD within 0.1
    (at least 50 rows a side), empirical_mmd within 0.25, categorical hellinger within
    sqrt(4 k eps) for k labels, t_test to relative 1e-9 and es (full-rank covariance) to
    relative 1e-6, as moments.py, counts.py and docs/drift-methods.md state."""
    rng = np.random.default_rng(2024)
    labels = np.array([f"c{i}" for i in range(6)])
    for n_ref, n_cur, shift in [(50, 50, 0.0), (400, 120, 0.0), (1000, 300, 0.05), (200, 60, 0.3)]:
        p = rng.dirichlet(np.ones(6))
        q = (1 - shift) * p + shift * rng.dirichlet(np.ones(6))
        ref = pd.Series(rng.choice(labels, n_ref, p=p), dtype=object)
        cur = pd.Series(rng.choice(labels, n_cur, p=q), dtype=object)
        ours_ref, ours_cur = sample_of(ref, C), sample_of(cur, C)
        tvd = get_method("TVD").score(ours_ref, ours_cur)
        hel = get_method("hellinger").score(ours_ref, ours_cur)
        for seed in range(2):
            raw_ref, raw_cur = _shuffled(ref, seed), _shuffled(cur, seed)
            assert abs(tvd - evidently_drift(raw_ref, raw_cur, C, "TVD")[1]) <= 0.1
            their_hel = evidently_drift(raw_ref, raw_cur, C, "hellinger")[1]
            assert abs(hel - their_hel) <= math.sqrt(4 * 6 * np.finfo(float).eps) + REL * their_hel
    for n_ref, n_cur, shift in [(300, 100, 0.0), (200, 200, 0.2), (500, 40, 0.5)]:
        ref, cur = pd.Series(rng.normal(0, 1, n_ref)), pd.Series(rng.normal(shift, 1, n_cur))
        mmd = get_method("empirical_mmd")
        as_given = mmd.score(sample_of(ref, N), sample_of(cur, N))
        as_profile = mmd.score(ColumnSample.from_sorted(np.sort(ref.to_numpy())), sample_of(cur, N))
        for seed in range(2):
            theirs = evidently_drift(_shuffled(ref, seed), _shuffled(cur, seed), N, "empirical_mmd")[1]
            assert abs(as_given - theirs) <= 0.25
            assert abs(as_profile - theirs) <= 0.25
    for shape in ("normal", "lognormal", "rounded"):
        ref, cur = rng.normal(0, 1, 2000), rng.normal(0.1, 1, 300)
        if shape == "lognormal":
            ref, cur = np.exp(ref), np.exp(cur)
        elif shape == "rounded":
            ref, cur = np.round(ref, 1), np.round(cur, 1)
        profile, window = ColumnSample.from_sorted(np.sort(ref)), ColumnSample.numerical(cur)
        for method, rel in (("t_test", REL), ("es", 1e-6)):
            theirs = evidently_drift(pd.Series(ref), pd.Series(cur), N, method)[1]
            assert get_method(method).score(profile, window) == pytest.approx(theirs, rel=rel, abs=1e-12)
