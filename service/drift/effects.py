"""Effect sizes: how large a difference is, reported beside the p-value methods' p-values.

A p-value says how sure a difference is, not how large: on a window of 100,000 events a KS
test flags a shift of a hundredth of a standard deviation. With calibration on, a p-value
method drifts only when its effect size also reaches a floor (the smallest difference worth
acting on) and the noise floor of that effect size for a window of that size. Each p-value
method names its effect size (`DriftMethod.effect`); the distance methods are their own.

- `ks_statistic` (ks, anderson, cramer_von_mises, es, empirical_mmd): the largest distance
  between the two empirical CDFs;
- `cohens_d` (t_test): the difference of the means over the pooled standard deviation
  (ddof 1 on each side);
- `rank_biserial` (mannw): P(window > reference) - P(window < reference), ties counted half;
  positive when the window is larger, the direction mannw tests;
- `cohens_w` (chisquare, g_test): sqrt of the sum over the reference's categories of
  (s - r)² / r, s being the window's shares among its values whose category the reference has
  (a category the reference never had is a data-quality signal of its own);
- `cohens_h` (z, fisher_exact): |2·asin(sqrt(p1)) - 2·asin(sqrt(p2))|, p the two sides' shares
  of every value but the first (the one z codes 0);
- `tv_distance` (TVD): half the sum of the absolute differences of the shares.

The default floors are the effect of a shift by a tenth of a standard deviation of a normal
column, the same practical difference Evidently's default Wasserstein threshold (0.1 of the
reference's standard deviation) names: KS statistic 2·Φ(0.05) - 1 ≈ 0.04, Cohen's d 0.1,
rank-biserial 2·Φ(0.1/√2) - 1 ≈ 0.056 (0.05); for category shares, Cohen's conventional
"small" effect for w (0.1), half of it for h (0.1: a share moving from 50% to 55%), and a total
variation of 0.05 (5% of the values changing category).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .base import ColumnSample


@dataclass(frozen=True)
class Effect:
    name: str
    default_floor: float
    fn: Callable[[ColumnSample, ColumnSample], float]

    def size(self, reference: ColumnSample, current: ColumnSample) -> float:
        with np.errstate(all="ignore"):
            return float(self.fn(reference, current))


def ks_statistic(ref: ColumnSample, cur: ColumnSample) -> float:
    r, c = ref.sorted, cur.sorted
    if r.size == 0 or c.size == 0:
        return math.nan
    at = np.searchsorted(r, c, side="right") / r.size - np.searchsorted(c, c, side="right") / c.size
    before = np.searchsorted(r, c, side="left") / r.size - np.searchsorted(c, c, side="left") / c.size
    return max(float(at.max()), float(before.max()), -float(at.min()), -float(before.min()), 0.0)


def cohens_d(ref: ColumnSample, cur: ColumnSample) -> float:
    n1, n2 = ref.n, cur.n
    if n1 + n2 <= 2:
        return math.nan
    pooled = ((n1 - 1) * _var1(ref) + (n2 - 1) * _var1(cur)) / (n1 + n2 - 2)
    return abs(cur.mean - ref.mean) / math.sqrt(pooled) if pooled > 0 else math.nan


def _var1(sample: ColumnSample) -> float:
    """Variance with ddof 1 (0 for a single value), from the cached population std."""
    n = sample.n
    return sample.std**2 * n / (n - 1) if n > 1 else 0.0


def rank_biserial(ref: ColumnSample, cur: ColumnSample) -> float:
    if ref.n == 0 or cur.n == 0:
        return math.nan
    r, c = ref.sorted, cur.uniques
    below = np.searchsorted(r, c, side="left")
    upto = np.searchsorted(r, c, side="right")
    u = float(np.dot(below + upto, cur.unique_counts)) / 2  # pairs window > reference, ties half
    return 2 * u / (ref.n * cur.n) - 1


def _shares(ref: ColumnSample, cur: ColumnSample) -> tuple[np.ndarray, np.ndarray, int]:
    """The reference's shares of its categories, the window's counts of them, and the window's
    values whose category the reference never had."""
    ref_map, cur_map = ref.count_map, cur.count_map
    keys = list(ref_map)
    r = np.fromiter((ref_map[k] for k in keys), dtype=np.float64, count=len(keys)) / ref.n
    c = np.fromiter((cur_map.get(k, 0) for k in keys), dtype=np.float64, count=len(keys))
    return r, c, cur.n - int(c.sum())


def cohens_w(ref: ColumnSample, cur: ColumnSample) -> float:
    r, c, _ = _shares(ref, cur)
    seen = c.sum()
    if seen == 0:
        return math.nan
    s = c / seen
    return math.sqrt(max(float(np.sum(s * s / r)) - 1.0, 0.0))


def cohens_h(ref: ColumnSample, cur: ColumnSample) -> float:
    ref_map, cur_map = ref.count_map, cur.count_map
    if ref.n == 0 or cur.n == 0:
        return math.nan
    first = min(ref_map.keys() | cur_map.keys())  # type: ignore[type-var]  # one column's labels share a type
    p1 = 1 - ref_map.get(first, 0) / ref.n
    p2 = 1 - cur_map.get(first, 0) / cur.n
    return abs(2 * math.asin(math.sqrt(p1)) - 2 * math.asin(math.sqrt(p2)))


def tv_distance(ref: ColumnSample, cur: ColumnSample) -> float:
    r, c, unseen = _shares(ref, cur)
    if cur.n == 0:
        return math.nan
    return 0.5 * (float(np.abs(r - c / cur.n).sum()) + unseen / cur.n)


EFFECTS: dict[str, Effect] = {e.name: e for e in (
    Effect("ks_statistic", 0.04, ks_statistic),
    Effect("cohens_d", 0.1, cohens_d),
    Effect("rank_biserial", 0.05, rank_biserial),
    Effect("cohens_w", 0.1, cohens_w),
    Effect("cohens_h", 0.1, cohens_h),
    Effect("tv_distance", 0.05, tv_distance),
)}
