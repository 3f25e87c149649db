"""Methods on value counts: chisquare, z.

Both compare how often each value occurs in the reference and in the window; they work
on counts alone, so a window of any size costs work proportional to its distinct values.
"""

from __future__ import annotations

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
    first = sorted(ref_map.keys() | cur_map.keys())[0]
    n1, n2 = ref.n, cur.n
    # Evidently codes the first value as 0 and every other as 1.
    p1 = float(n1 - ref_map.get(first, 0)) / n1
    p2 = float(n2 - cur_map.get(first, 0)) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - stats.norm.cdf(np.abs(z))))


BOTH = frozenset({ColumnKind.NUMERICAL, ColumnKind.CATEGORICAL})

METHODS = (
    # Evidently registers chisquare and z for categorical columns only, yet picks them by
    # default for numerical columns with few values; driftline accepts both kinds too.
    DriftMethod("chisquare", "chi-square p_value", BOTH, 0.05, Verdict.P_VALUE_LT, chisquare),
    DriftMethod("z", "Z-test p_value", BOTH, 0.05, Verdict.P_VALUE_LT, z_test),
)
