"""Methods on mean-type statistics of numerical values: mannw, t_test, es, empirical_mmd.

mannw compares mean ranks, t_test means, es (Epps-Singleton) the means of the empirical
characteristic functions, and empirical_mmd the kernel mean embeddings of the two samples.

Order. A numerical `ColumnSample` presents its values in the order it was given them: a
window sample in arrival order (or its reservoir's order), a reference profile sorted
ascending (`ColumnSample.from_sorted`). Given the values in that order, Evidently computes
the same numbers (empirical_mmd: with numpy's global generator seeded with 0). In
another order:

- mannw depends on the sorted values only: the same numbers.
- t_test sums in presented order: the same to relative 1e-9.
- es sums in presented order: the same to relative 1e-6 while the pooled covariance of
  its four characteristic-function components has full rank. On columns with few
  distinct values it is singular (scipy warns "does not have full rank") and the
  pseudo-inverse keeps or drops near-zero singular values by rounding noise, so
  Evidently's p-value, and this one, can change arbitrarily with the order.
- empirical_mmd's permutations move *positions*: its p-value is another Monte Carlo
  estimate of the same permutation p-value, within 0.25 (about 3.5 standard errors of
  a 100-permutation estimate) of Evidently's.
"""

from __future__ import annotations

import math
import warnings
from typing import cast

import numpy as np
from scipy import special, stats

from .base import ColumnKind, ColumnSample, DriftMethod, Verdict, register_preparation

# scipy's mannwhitneyu(method="auto") is exact when a side has at most this many values
# and no value is tied; otherwise it uses the tie-corrected normal approximation.
_MWU_MAX_EXACT_N = 8


@register_preparation
def _prepare(ref: ColumnSample) -> None:
    if ref.kind is ColumnKind.NUMERICAL and ref.n:
        _ref_ties(ref)
        if ref.n >= 2:
            _median_sigma(ref, mmd_subsample(ref.values).reshape(-1, 1))


def _ref_ties(ref: ColumnSample) -> float:
    """The reference's own part of the tie term (cached)."""
    cache = ref.cache()
    if "mannw_ties" not in cache:
        t = ref.unique_counts.astype(np.float64)
        cache["mannw_ties"] = float(np.sum(t**3 - t))
    return cast(float, cache["mannw_ties"])


def _ties(ref: ColumnSample, cur: ColumnSample) -> tuple[float, bool]:
    """(sum of t**3 - t over the tie counts t of the pooled sample, whether any t > 1)."""
    ref_term = _ref_ties(ref)
    b = cur.unique_counts.astype(np.float64)
    a = (np.searchsorted(ref.sorted, cur.uniques, "right")
         - np.searchsorted(ref.sorted, cur.uniques, "left")).astype(np.float64)
    pooled = a + b
    term = ref_term + float(np.sum((pooled**3 - pooled) - (a**3 - a)))
    tied = ref.nunique < ref.n or bool(np.any(pooled > 1))
    return term, tied


def _mwu_exact_sf(k: int, m: int, n: int) -> float:
    """P(U >= k) for U of a sample of m against one of n with no ties, exactly.

    The number of arrangements with U = u is the coefficient of q**u in the Gaussian
    binomial [m+n choose m]_q = prod_{i<=m} (1 - q**(n+i)) / (1 - q**i); it is built
    here in Python integers up to degree min(k - 1, m*n - k) <= m*n/2, so the cost is
    O(min(m, n) * m * n) rather than the quadratic loop of scipy's `_MWU`.
    """
    m, n = min(m, n), max(m, n)
    total = math.comb(m + n, m)
    if 2 * k >= m * n:  # P(U >= k) = P(U <= m*n - k) by symmetry
        upto, complement = m * n - k, False
    else:
        upto, complement = k - 1, True
    if upto < 0:
        return 1.0 if complement else 0.0
    c = np.zeros(upto + 1, dtype=object)  # Python int zeros
    c[0] = 1
    for i in range(1, m + 1):
        for r in range(min(i, upto + 1)):
            c[r::i] = np.cumsum(c[r::i])
        shift = n + i
        if shift <= upto:
            c[shift:] = c[shift:] - c[:-shift].copy()
    below = int(np.sum(c))
    return (total - below) / total if complement else below / total


def mannw(ref: ColumnSample, cur: ColumnSample) -> float:
    """`scipy.stats.mannwhitneyu(ref, cur, alternative="less").pvalue`, as Evidently calls it.

    U comes from the window's midranks in the pooled sample, read with `searchsorted`
    from the sorted reference; the reference's own tie counts are cached on it.
    """
    n1, n2 = ref.n, cur.n
    n = n1 + n2
    y = cur.sorted
    below = np.searchsorted(ref.sorted, y, "left") + np.searchsorted(y, y, "left")
    upto = np.searchsorted(ref.sorted, y, "right") + np.searchsorted(y, y, "right")
    twice_r2 = int(np.sum(below + upto + 1))  # twice the rank sum of the window
    r1 = (n * (n + 1) - twice_r2) / 2
    u1 = r1 - n1 * (n1 + 1) / 2
    u2 = n1 * n2 - u1  # alternative "less" reads the survival function of U2
    tie_term, tied = _ties(ref, cur)
    if (n1 <= _MWU_MAX_EXACT_N or n2 <= _MWU_MAX_EXACT_N) and not tied:
        p = _mwu_exact_sf(round(u2), n1, n2)
    else:
        s = np.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))))
        z = (u2 - n1 * n2 / 2 - 0.5) / s
        p = float(special.ndtr(-z))
    return float(np.clip(p, 0.0, 1.0))


def t_test(ref: ColumnSample, cur: ColumnSample) -> float:
    """Student's two-sample t-test with pooled variance, `scipy.stats.ttest_ind(ref, cur)`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one value on both sides: no degrees of freedom, NaN
        return float(stats.ttest_ind(ref.values, cur.values).pvalue)


def epps_singleton(ref: ColumnSample, cur: ColumnSample) -> float:
    """`scipy.stats.epps_singleton_2samp(ref, cur).pvalue`, as Evidently's `es`.

    Evidently raises when the pooled interquartile range is 0 (the test scales its
    evaluation points by it). Textbook values instead: 1.0 when every value on both
    sides is the same (the two samples are identical), NaN otherwise (the statistic is
    undefined). scipy itself gives NaN below 5 values on a side.
    """
    pooled = np.concatenate((ref.values, cur.values))
    if ref.sorted[0] == ref.sorted[-1] == cur.sorted[0] == cur.sorted[-1]:
        return 1.0
    if stats.iqr(pooled) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's small-sample and covariance-rank warnings
        return float(stats.epps_singleton_2samp(ref.values, cur.values)[1])


# Evidently's empirical_mmd builds (n_ref + n_cur)**2 kernel matrices and permutes them
# 100 times; above this many values a side is cut to a fixed random subsample.
MMD_MAX_VALUES = 500
_MMD_PERMUTATIONS = 100
_MMD_SEED = 0


def mmd_subsample(values: np.ndarray) -> np.ndarray:
    """At most MMD_MAX_VALUES of `values`: all of them, or a seeded random subset in order."""
    if values.size <= MMD_MAX_VALUES:
        return values
    keep = np.random.default_rng(_MMD_SEED).choice(values.size, MMD_MAX_VALUES, replace=False)
    return values[np.sort(keep)]


def _sq_dist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (y**2).T - 2 * np.dot(x, y.T) + x**2


def _median_sigma(ref: ColumnSample, x: np.ndarray) -> float:
    """Evidently's `sigma_median` of the reference's pairwise squared distances (cached)."""
    cache = ref.cache()
    if "mmd_sigma" not in cache:
        sigma = (0.5 * np.percentile(a=_sq_dist(x, x).flatten(), q=50, method="nearest")) ** 0.5
        cache["mmd_sigma"] = float(sigma) if sigma != 0 else (0.5 * 1) ** 0.5
    return cast(float, cache["mmd_sigma"])


def _mmd(km: np.ndarray, ny: int) -> float:
    nx = km.shape[0] - ny
    kxx, kyy, kxy = km[:-ny, :-ny], km[-ny:, -ny:], km[-ny:, :-ny]
    return float(1 / (nx * (nx - 1)) * kxx.sum() + 1 / (ny * (ny - 1)) * kyy.sum() - 2.0 * kxy.mean())


def empirical_mmd(ref: ColumnSample, cur: ColumnSample) -> float:
    """Evidently's empirical_mmd: a 100-permutation test of the unbiased MMD² with an RBF kernel.

    The kernel's width is the median pairwise distance within the reference (cached on
    it). Evidently draws its permutations from numpy's global generator without seeding
    it, so its p-value changes from call to call; here they come from a private
    `RandomState(0)`, which draws exactly what Evidently draws after `np.random.seed(0)`.
    Evidently's operations are reproduced step by step (including the layout of each
    permuted matrix, which fixes the rounding of its sums), so under the same input
    order and seed the p-value is identical. Each side is first cut to `mmd_subsample`
    (at most 500 values), which keeps the cost at most 100 copies of a 1000 x 1000 matrix;
    NaN with fewer than two values on a side (the estimator divides by n(n-1); Evidently
    raises ZeroDivisionError).
    """
    if ref.n < 2 or cur.n < 2:
        return math.nan
    x = mmd_subsample(ref.values).reshape(-1, 1)
    y = mmd_subsample(cur.values).reshape(-1, 1)
    sigma = _median_sigma(ref, x)
    gamma = 1.0 / (2.0 * sigma**2)
    kxx, kxy, kyy = (np.exp(-gamma * _sq_dist(a, b)) for a, b in ((x, x), (x, y), (y, y)))
    km = np.concatenate((np.concatenate((kxx, kxy), axis=1), np.concatenate((kxy.T, kyy), axis=1)), axis=0)
    km = km - np.diag(np.diagonal(km))
    ny = y.shape[0]
    observed = _mmd(km, ny)
    rng = np.random.RandomState(_MMD_SEED)
    permuted = np.empty(_MMD_PERMUTATIONS)
    for i in range(_MMD_PERMUTATIONS):
        index = rng.permutation(km.shape[0])
        permuted[i] = _mmd(km[index][:, index], ny)
    return float((observed <= permuted).mean())


NUMERICAL = frozenset({ColumnKind.NUMERICAL})

METHODS = (
    DriftMethod("mannw", "Mann-Whitney U-rank test", NUMERICAL, 0.05, Verdict.P_VALUE_LT, mannw,
                effect="rank_biserial"),
    DriftMethod("t_test", "t_test", NUMERICAL, 0.05, Verdict.P_VALUE_LT, t_test, effect="cohens_d"),
    DriftMethod("es", "Epps-Singleton", NUMERICAL, 0.05, Verdict.P_VALUE_LT, epps_singleton,
                effect="ks_statistic"),
    DriftMethod("empirical_mmd", "empirical_mmd", NUMERICAL, 0.1, Verdict.P_VALUE_LT, empirical_mmd,
                effect="ks_statistic"),
)
