"""Methods on value counts: chisquare, z, g_test, fisher_exact, TVD.

All compare how often each value occurs in the reference and in the window. chisquare,
z, g_test and fisher_exact work on counts alone, so a window of any size costs work
proportional to its distinct values.

TVD is a permutation test, and its permutations move *rows*. A categorical
`ColumnSample` presents its rows as its labels repeated by their counts, in label order
(a reference profile: labels sorted; a window: labels in order of first arrival); TVD
permutes exactly those rows, so its p-value equals Evidently's when Evidently is given
the rows in that order. In any other row order it is another Monte Carlo estimate of
the same permutation p-value (1000 permutations: standard error at most 0.016), within
0.1 of Evidently's once both sides have at least 50 rows; with fewer rows Evidently's
own result also moves with row order, because it breaks exact ties between permuted and
observed distances by floating-point rounding. That rounding follows the order of a
Python set of the labels, which for strings depends on the per-process hash seed
(PYTHONHASHSEED): Evidently's TVD p-value on the same rows can differ between processes
(0.941 or 0.934 on one 300-against-5 example). TVD here builds the same sets in the
same order, so it equals Evidently's in the same process and varies as it does.

The cost is 1000 shuffles of all n_ref + n_cur rows: about 0.1 s for 2,000 rows, 2 s
for 100,000, 35 s for a million (Evidently's own loop is far slower).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from .base import ColumnKind, ColumnSample, DriftMethod, Verdict


def _aligned_counts(ref: ColumnSample, cur: ColumnSample) -> tuple[np.ndarray, np.ndarray]:
    """Counts of every value seen on either side, in one order (zeros where absent)."""
    ref_map, cur_map = ref.count_map, cur.count_map
    keys = list(ref_map.keys() | cur_map.keys())
    r = np.array([ref_map.get(k, 0) for k in keys], dtype=np.float64)
    c = np.array([cur_map.get(k, 0) for k in keys], dtype=np.float64)
    return r, c


def chisquare(ref: ColumnSample, cur: ColumnSample) -> float:
    """Pearson's chi-square of window counts against reference counts scaled to the window."""
    r, c = _aligned_counts(ref, cur)
    expected = r * (cur.n / ref.n)
    return float(stats.chisquare(c, expected)[1])


def z_test(ref: ColumnSample, cur: ColumnSample) -> float:
    """Two-proportion z-test on the share of the smallest value (Evidently's `z`)."""
    ref_map, cur_map = ref.count_map, cur.count_map
    if len(ref_map) == 1 and len(cur_map) == 1 and ref_map.keys() == cur_map.keys():
        return 1.0
    first = min(ref_map.keys() | cur_map.keys())  # type: ignore[type-var]  # one column's labels share a type
    n1, n2 = ref.n, cur.n
    # Evidently codes the first value as 0 and every other as 1.
    p1 = float(n1 - ref_map.get(first, 0)) / n1
    p2 = float(n2 - cur_map.get(first, 0)) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - stats.norm.cdf(np.abs(z))))


def g_test(ref: ColumnSample, cur: ColumnSample) -> float:
    """The G-test (log-likelihood ratio) of window counts against the reference's.

    Evidently passes the raw reference counts as expected frequencies, which scipy only
    accepts when both sides have the same number of values (otherwise it raises); the
    textbook test, used here, scales them to the window as chisquare does, which is the
    same numbers when the sizes are equal.
    """
    r, c = _aligned_counts(ref, cur)
    expected = r if ref.n == cur.n else r * (cur.n / ref.n)
    return float(stats.power_divergence(c, expected, lambda_="log-likelihood")[1])


def fisher_exact(ref: ColumnSample, cur: ColumnSample) -> float:
    """Two-sided Fisher's exact test on the 2x2 table (window, reference) x (category).

    Defined for binary columns: with more than two categories over both sides there is
    no 2x2 table and the answer is NaN (Evidently raises, or with two categories on each
    side but three or four in all, silently counts all but one of them as the second).
    Evidently also requires both sides to have the same number of values; the test does
    not, so any sizes are accepted.
    """
    ref_map, cur_map = ref.count_map, cur.count_map
    keys = sorted(ref_map.keys() | cur_map.keys(), key=str)
    if len(keys) > 2:
        return math.nan
    table = np.zeros((2, 2), dtype=np.int64)
    for j, key in enumerate(keys):
        table[0, j], table[1, j] = cur_map.get(key, 0), ref_map.get(key, 0)
    return float(stats.fisher_exact(table)[1])


_TVD_ITERATIONS = 1000
_TVD_SEED = 0


def _tvd(ref_labels: list[object], ref_counts: dict[object, int], n_ref: int,
         cur_labels: list[object], cur_counts: dict[object, int], n_cur: int) -> float:
    """Evidently's `_total_variation_distance` for rows whose distinct labels first appear
    in the orders given: half the L1 distance of the shares, summed in its key order."""
    keys = list(set(ref_labels) | set(cur_labels))
    r = np.array([ref_counts.get(k, 0) for k in keys], dtype=np.int64)
    c = np.array([cur_counts.get(k, 0) for k in keys], dtype=np.int64)
    return float(0.5 * np.sum(np.abs(r / n_ref - c / n_cur)))


def tvd(ref: ColumnSample, cur: ColumnSample) -> float:
    """p-value of Evidently's TVD: the share of 1000 permutations whose distance is at least
    the observed one.

    Evidently's `permutation_test` seeds numpy's global generator with 0 and draws, per
    iteration, `np.random.choice(rows, n_ref, replace=False)`, i.e. the first n_ref of
    `permutation(n_ref + n_cur)`; the new window is the rest, its labels first appearing
    in the order they first appear in all rows. The same permutations come here from a
    private `RandomState(0)`, and each is reduced to label counts and first appearances
    with vectorised segment operations instead of lists, Counters and Series.
    """
    ref_map, cur_map = ref.count_map, cur.count_map
    ref_labels, cur_labels = ref.labels.tolist(), cur.labels.tolist()
    n_ref, n_cur = ref.n, cur.n
    observed = _tvd(ref_labels, ref_map, n_ref, cur_labels, cur_map, n_cur)

    union = ref_labels + [label for label in cur_labels if label not in ref_map]
    code = {label: i for i, label in enumerate(union)}
    seg_code = np.array([code[label] for label in ref_labels + cur_labels], dtype=np.int64)
    seg_len = np.concatenate((ref.counts, cur.counts)).astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(seg_len)[:-1]))
    k, n = len(union), n_ref + n_cur
    total = np.bincount(seg_code, weights=seg_len, minlength=k).astype(np.int64)
    positions = np.arange(n, dtype=np.int64)
    where = np.empty(n, dtype=np.int64)
    rng = np.random.RandomState(_TVD_SEED)
    stats_ = np.empty(_TVD_ITERATIONS)
    for i in range(_TVD_ITERATIONS):
        where[rng.permutation(n)] = positions  # where[row] = its place in the permutation
        seg_in_ref = np.add.reduceat(where < n_ref, starts, dtype=np.int64)
        seg_first = np.minimum.reduceat(where, starts)
        new_ref = np.bincount(seg_code, weights=seg_in_ref, minlength=k).astype(np.int64)
        first = np.full(k, n, dtype=np.int64)
        np.minimum.at(first, seg_code, seg_first)
        in_ref = np.flatnonzero(first < n_ref)
        new_ref_labels = [union[j] for j in in_ref[np.argsort(first[in_ref], kind="stable")]]
        new_cur = total - new_ref
        new_cur_labels = [union[j] for j in np.flatnonzero(new_cur > 0)]
        stats_[i] = _tvd(new_ref_labels, dict(zip(union, new_ref.tolist(), strict=True)), n_ref,
                         new_cur_labels, dict(zip(union, new_cur.tolist(), strict=True)), n_cur)
    return int(np.count_nonzero(observed <= np.abs(stats_))) / _TVD_ITERATIONS


BOTH = frozenset({ColumnKind.NUMERICAL, ColumnKind.CATEGORICAL})
CATEGORICAL = frozenset({ColumnKind.CATEGORICAL})

METHODS = (
    # Evidently registers chisquare and z for categorical columns only, yet picks them by
    # default for numerical columns with few values; driftline accepts both kinds too.
    DriftMethod("chisquare", "chi-square p_value", BOTH, 0.05, Verdict.P_VALUE_LT, chisquare,
                effect="cohens_w"),
    DriftMethod("z", "Z-test p_value", BOTH, 0.05, Verdict.P_VALUE_LT, z_test, effect="cohens_h"),
    DriftMethod("g_test", "g_test", CATEGORICAL, 0.1, Verdict.P_VALUE_LT, g_test, effect="cohens_w"),
    DriftMethod("fisher_exact", "Fisher's Exact test", CATEGORICAL, 0.1, Verdict.P_VALUE_LT, fisher_exact,
                effect="cohens_h"),
    DriftMethod("TVD", "Total-Variation-Distance", CATEGORICAL, 0.1, Verdict.P_VALUE_LT, tvd, effect="tv_distance"),
)
