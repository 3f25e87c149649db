"""Methods on the order of numerical values: ks, wasserstein.

KS reads both empirical CDFs off the sorted reference and the sorted window with
`searchsorted`; its p-value follows `scipy.stats.ks_2samp` (exact below 10,000 values
on each side, Smirnov's asymptotic distribution above), so it equals what Evidently's
`ks` returns.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from scipy.stats import _stats_py

from .base import ColumnKind, ColumnSample, DriftMethod, Verdict

# scipy's ks_2samp(method="auto") is exact while both samples have at most this many values.
_KS_MAX_EXACT_N = 10000


def ks_statistic(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> tuple[float, float]:
    """(max(F_ref - F_cur), max(F_cur - F_ref)) over every observed value, as ks_2samp.

    Between two consecutive window values the window CDF is constant and the reference
    CDF only grows, so the extremes of F_ref - F_cur over all points are reached at a
    window value or just before one: evaluating there gives the same pairs of counts,
    and so the same floating-point differences, that ks_2samp evaluates at every point.
    """
    n1, n2 = ref_sorted.shape[0], cur_sorted.shape[0]
    ref_right = np.searchsorted(ref_sorted, cur_sorted, side="right")
    ref_left = np.searchsorted(ref_sorted, cur_sorted, side="left")
    cur_right = np.searchsorted(cur_sorted, cur_sorted, side="right")
    cur_left = np.searchsorted(cur_sorted, cur_sorted, side="left")
    at = ref_right / n1 - cur_right / n2
    before = ref_left / n1 - cur_left / n2
    # Reference values below the first window value are covered by `before` at that
    # value (the window CDF is 0 there); those above the last by `at` at the last one.
    max_diff = max(float(at.max()), float(before.max()))
    min_diff = min(float(at.min()), float(before.min()))
    return max_diff, min_diff


def ks_pvalue(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> float:
    """Two-sided `scipy.stats.ks_2samp(ref, cur, method="auto").pvalue`."""
    n1, n2 = ref_sorted.shape[0], cur_sorted.shape[0]
    max_diff, min_diff = ks_statistic(ref_sorted, cur_sorted)
    min_s = min(max(-min_diff, 0.0), 1.0)
    d = min_s if min_s > max_diff else max_diff
    g = math.gcd(n1, n2)
    if max(n1, n2) <= _KS_MAX_EXACT_N:
        success, d, prob = _stats_py._attempt_exact_2kssamp(n1, n2, g, d, "two-sided")
        if success:
            return float(np.clip(prob, 0, 1))
    m, n = sorted([float(n1), float(n2)], reverse=True)
    en = m * n / (m + n)
    prob = stats.distributions.kstwo.sf(d, np.round(en))
    return float(np.clip(prob, 0, 1))


def ks(ref: ColumnSample, cur: ColumnSample) -> float:
    return ks_pvalue(ref.sorted, cur.sorted)


def wasserstein_norm(ref: ColumnSample, cur: ColumnSample) -> float:
    """First Wasserstein distance divided by the reference's std (at least 0.001)."""
    norm = max(ref.std, 0.001)
    return float(stats.wasserstein_distance(ref.sorted, cur.values)) / norm


NUMERICAL = frozenset({ColumnKind.NUMERICAL})

METHODS = (
    DriftMethod("ks", "K-S p_value", NUMERICAL, 0.05, Verdict.P_VALUE_LE, ks),
    DriftMethod("wasserstein", "Wasserstein distance (normed)", NUMERICAL, 0.1, Verdict.DISTANCE_GE,
                wasserstein_norm),
)
