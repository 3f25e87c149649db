"""Methods that compare binned distributions: psi, kl_div, jensenshannon, hellinger.

All three use Evidently's `get_binned_data`: a numerical column with more than 20
distinct reference values is cut into Sturges bins over the combined range of reference
and window; anything else is compared value by value. Here the reference side of that
histogram is read off the sorted reference with `searchsorted`, so a window costs work
proportional to the window, and the counts are exactly those of `np.histogram`.

hellinger bins differently (Sturges bins over the *distinct* values of both samples,
any number of them) and is described at `hellinger`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from scipy.spatial import distance

from .base import ColumnKind, ColumnSample, DriftMethod, Verdict, combined_nunique

# Evidently's get_binned_data compares value by value up to this many reference values.
_MAX_VALUES_COMPARED_DIRECTLY = 20


def sturges_edges(lo: float, hi: float, n: int) -> np.ndarray:
    """`np.histogram_bin_edges(a, bins="sturges")` for an array with min lo, max hi, size n."""
    first, last = float(lo), float(hi)
    ptp = last - first
    if first == last:
        first, last = first - 0.5, last + 0.5
    width = ptp / (np.log2(n) + 1.0)
    n_bins = int(np.ceil((last - first) / width)) if width else 1
    return np.linspace(first, last, n_bins + 1, endpoint=True)


def histogram_of_sorted(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """`np.histogram(values, edges)[0]` for sorted values: half-open bins, the last closed."""
    left = np.searchsorted(sorted_values, edges, side="left")
    counts = np.diff(left)
    counts[-1] += np.searchsorted(sorted_values, edges[-1], side="right") - left[-1]
    return counts


def _fill_zeroes(percents: np.ndarray) -> np.ndarray:
    nonzero = percents[percents != 0]
    smallest = nonzero.min()
    fill = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    out = percents.copy()
    out[out == 0] = fill
    return out


def binned_percents(ref: ColumnSample, cur: ColumnSample, fill_zeroes: bool) -> tuple[np.ndarray, np.ndarray]:
    """Evidently's `get_binned_data(reference, current, feature_type, n, fill_zeroes)`."""
    if ref.kind is ColumnKind.NUMERICAL and ref.nunique > _MAX_VALUES_COMPARED_DIRECTLY:
        cur_sorted = cur.sorted
        lo = min(ref.sorted[0], cur_sorted[0]) if cur.n else ref.sorted[0]
        hi = max(ref.sorted[-1], cur_sorted[-1]) if cur.n else ref.sorted[-1]
        edges = sturges_edges(lo, hi, ref.n + cur.n)
        ref_pct = histogram_of_sorted(ref.sorted, edges) / ref.n
        cur_pct = histogram_of_sorted(cur_sorted, edges) / cur.n
    else:
        ref_map, cur_map = ref.count_map, cur.count_map
        # sorted, not Evidently's set order: that varies with PYTHONHASHSEED, and with it the
        # last bits of the sums, from one process (or restart) to the next
        keys = sorted(ref_map.keys() | cur_map.keys(), key=repr)
        ref_pct = np.array([ref_map.get(k, 0) for k in keys], dtype=np.float64) / ref.n
        cur_pct = np.array([cur_map.get(k, 0) for k in keys], dtype=np.float64) / cur.n
    if fill_zeroes:
        ref_pct, cur_pct = _fill_zeroes(ref_pct), _fill_zeroes(cur_pct)
    return ref_pct, cur_pct


def psi(ref: ColumnSample, cur: ColumnSample) -> float:
    r, c = binned_percents(ref, cur, fill_zeroes=True)
    return float(np.sum((r - c) * np.log(r / c)))


def kl_div(ref: ColumnSample, cur: ColumnSample) -> float:
    r, c = binned_percents(ref, cur, fill_zeroes=True)
    return float(stats.entropy(r, c))


def jensenshannon(ref: ColumnSample, cur: ColumnSample) -> float:
    r, c = binned_percents(ref, cur, fill_zeroes=False)
    return float(distance.jensenshannon(r, c))


def _ordered_keys(ref: ColumnSample, cur: ColumnSample) -> list[object]:
    """Evidently's key order: `list(set(reference.unique()) | set(current.unique()))`.

    A set's iteration order depends on the order its items were inserted when their
    hashes collide; a categorical sample presents its labels in label order, as if its
    rows were its labels repeated by their counts in that order, and the sets here are
    built in that order, so the order equals Evidently's for rows in that order.
    """
    return list(set(ref.labels.tolist()) | set(cur.labels.tolist()))


def _sequential_sum(terms: np.ndarray) -> float:
    """Left-to-right sum, as a Python loop `total += term` (Evidently's) adds them."""
    return float(np.cumsum(terms)[-1]) if terms.size else 0.0


def hellinger(ref: ColumnSample, cur: ColumnSample) -> float:
    """Hellinger distance sqrt(1 - BC) of Evidently's `_hellinger_distance`.

    Categorical: the Bhattacharyya coefficient BC over the shares of every label.
    Numerical: densities over Sturges bins spanning the distinct values of both samples
    (`np.histogram_bin_edges(keys, "sturges")`, keys being the union of distinct values),
    BC = sum sqrt(p * q) * mean bin width. BC is summed term by term in Evidently's order,
    because near BC = 1 the square root magnifies its rounding (about 1e-8 for identical
    distributions).
    """
    if ref.kind is ColumnKind.CATEGORICAL:
        ref_map, cur_map = ref.count_map, cur.count_map
        keys = _ordered_keys(ref, cur)
        p = np.array([ref_map.get(k, 0) for k in keys], dtype=np.int64) / ref.n
        q = np.array([cur_map.get(k, 0) for k in keys], dtype=np.int64) / cur.n
        bc = _sequential_sum(np.sqrt(p * q))
    else:
        lo = min(ref.sorted[0], cur.sorted[0])
        hi = max(ref.sorted[-1], cur.sorted[-1])
        edges = sturges_edges(lo, hi, combined_nunique(ref, cur))
        widths = np.diff(edges)
        ref_counts = histogram_of_sorted(ref.sorted, edges)
        cur_counts = histogram_of_sorted(cur.sorted, edges)
        h1 = ref_counts / widths / ref_counts.sum()
        h2 = cur_counts / widths / cur_counts.sum()
        bin_width = (edges.max() - edges.min()) / (edges.size - 1)
        bc = _sequential_sum(np.sqrt(h1 * h2) * bin_width)
    return math.sqrt(1 - float(np.clip(bc, 0, 1)))


BOTH = frozenset({ColumnKind.NUMERICAL, ColumnKind.CATEGORICAL})

METHODS = (
    DriftMethod("psi", "PSI", BOTH, 0.1, Verdict.DISTANCE_GE, psi),
    DriftMethod("kl_div", "Kullback-Leibler divergence", BOTH, 0.1, Verdict.DISTANCE_GE, kl_div),
    DriftMethod("jensenshannon", "Jensen-Shannon distance", BOTH, 0.1, Verdict.DISTANCE_GE, jensenshannon),
    DriftMethod("hellinger", "Hellinger distance", BOTH, 0.1, Verdict.DISTANCE_GE, hellinger),
)
