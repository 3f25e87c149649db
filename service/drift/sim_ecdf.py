"""Simulated windows for the empirical-CDF measures: wasserstein, ed, ks_statistic, cohens_d,
rank_biserial (the same numbers `DriftMethod.score` and the effect sizes give; the tests hold
them equal).

A window is drawn as sorted uniforms (cumulated exponential spacings, so no window is sorted;
or, for whole rows, each row's rank in the column plus a jitter, `sim_rows.py`) mapped to
values through the reference:

- **The body**: a uniform u falls on the reference's value at position floor(u·N): a resample.
- **The tails** of a continuous column (its 2% most extreme values on each side, at least 10,
  mostly distinct): new data has a tail the training rows only sample, and a heavy one is
  what a resample understates most (a small reference of a lognormal column: windows of new
  data reach values the reference never showed, and its few largest values are a lottery). So
  there u maps to a generalised Pareto tail fitted to those values (probability-weighted
  moments, Hosking & Wallis 1987), whose shape is drawn afresh for every window from its
  estimate's sampling distribution: the floors account for how uncertain the tail is, not
  just for its best guess (the predictive distribution of a new window). A fitted shape below
  0 (a light or bounded tail) is taken as 0: an exponential tail, which bounds it.
- **The ends of a discrete or short column**: new data falls beyond the reference's range,
  each side with probability 1 / (N + 1) (exchangeability), as far as a generalised Pareto
  fitted by moments to its extremes says.

The measures are then read off the integrals of the reference's CDF (exact at any value:
the CDF is constant between reference values), so a window's values need not be the
reference's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import ColumnSample
from .gpd import gpd_excess, pwm_gpd, pwm_shape_se

MEASURES = ("wasserstein", "ed", "ks_statistic", "cohens_d", "rank_biserial")
_BATCH_ELEMENTS = 1 << 19
TAIL_SHARE = 0.02  # the reference's most extreme 2% on each side are modelled as a tail …
TAIL_COUNT = (10, 400)  # … at least 10 values (else no tail model), at most 400
_TAIL_DISTINCT = 0.5  # … when at least half of them are distinct (a continuous tail)
_SHAPE_MAX = 0.75  # shapes drawn beyond this are cut (a tail with no finite mean beyond 1)


@dataclass(frozen=True)
class Tail:
    """One end of a continuous column, seen from its extreme: values beyond `threshold` (the
    `count`-th most extreme reference value) fall a generalised Pareto excess beyond it."""

    threshold: float
    count: int
    shape: float  # fitted (at least 0)
    shape_se: float
    median: float  # median excess

    @classmethod
    def fit(cls, extreme_first: np.ndarray, n: int) -> Tail | None:
        """The tail of one side, from the reference's values ordered from its extreme
        (descending for the upper side, negated for the lower), or None for a short or
        discrete one."""
        k = int(min(max(round(TAIL_SHARE * n), 0), TAIL_COUNT[1]))
        if k < TAIL_COUNT[0] or n < 4 * k:
            return None
        tail = extreme_first[:k]
        if np.unique(tail).size < _TAIL_DISTINCT * k:
            return None
        threshold = float(extreme_first[k])
        excess = tail - threshold
        shape, _ = pwm_gpd(excess)
        median = float(np.median(excess))
        if median <= 0:
            return None
        shape = max(shape, 0.0)
        return cls(threshold, k, shape, pwm_shape_se(shape, k), median)

    def shapes(self, reps: int, rng: np.random.Generator) -> np.ndarray:
        """One shape per window, from the estimate's sampling distribution (at least 0)."""
        return np.clip(self.shape + self.shape_se * rng.standard_normal((reps, 1)), 0.0, _SHAPE_MAX)


class Ecdf:
    """Windows as sorted values mapped from uniforms through the reference: the empirical-CDF measures."""

    def __init__(self, sample: ColumnSample) -> None:
        r = self.r = sample.sorted
        n = self.n = r.size
        new_run = np.concatenate(([True], r[1:] != r[:-1]))
        starts = np.flatnonzero(new_run)
        run = np.cumsum(new_run) - 1
        self.left = starts[run]  # reference values below each position's value
        self.right = np.append(starts[1:], n)[run]  # … at or below it
        self.cdf = self.right / n
        gaps = np.diff(r)
        self.int1 = np.concatenate(([0.0], np.cumsum(self.cdf[:-1] * gaps)))  # integral of F_ref up to each value
        self.int2 = np.concatenate(([0.0], np.cumsum(self.cdf[:-1] ** 2 * gaps)))  # … of F_ref squared
        self.norm = max(sample.std, 0.001)
        self.mean = sample.mean
        self.var1 = sample.std**2 * n / (n - 1) if n > 1 else 0.0
        self.tail_low = Tail.fit(-r, n)
        self.tail_high = Tail.fit(r[::-1], n)
        # a side without a tail model: new data falls beyond the range with probability 1 / (N + 1),
        # as far as a generalised Pareto fitted by moments to the reference's own extremes says
        top = max(5, min(200, n // 50))
        self.beyond_low = _pareto_beyond(r[top] - r[:top][::-1], r[top] - r[0]) if n > 2 * top else (0.0, 0.0)
        self.beyond_high = _pareto_beyond(r[-top:] - r[-top - 1], r[-1] - r[-top - 1]) if n > 2 * top else (0.0, 0.0)

    def measures(self, m: int, reps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The measures of `reps` windows of m values drawn from the column."""
        out: dict[str, list[np.ndarray]] = {name: [] for name in MEASURES}
        step = max(1, _BATCH_ELEMENTS // (m + 1))
        for start in range(0, reps, step):
            u = self.sorted_uniforms(m, min(step, reps - start), rng)
            for name, values in self.of_values(*self.values_of(u, rng)).items():
                out[name].append(values)
        return {name: np.concatenate(parts) for name, parts in out.items()}

    @staticmethod
    def sorted_uniforms(m: int, reps: int, rng: np.random.Generator) -> np.ndarray:
        spacing = np.cumsum(rng.standard_exponential((reps, m + 1)), axis=1)
        return spacing[:, :m] / spacing[:, m:]

    def values_of(self, u: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(values, positions) of windows given as sorted uniforms (reps, m) in [0, 1): each
        row's values sorted, and the position of the largest reference value at or below each
        (-1 below the range)."""
        r, n = self.r, self.n
        reps = u.shape[0]
        lo_share = self.tail_low.count / n if self.tail_low else 1 / (n + 1)
        hi_share = self.tail_high.count / n if self.tail_high else 1 / (n + 1)
        if self.tail_low and self.tail_high:
            body = u
        else:  # the exchangeable share beyond the range is not the reference's: the body is rescaled
            start = 0.0 if self.tail_low else lo_share
            stop = 1.0 if self.tail_high else 1 - hi_share
            body = (u - start) / (stop - start)
        pos = np.clip((body * n).astype(np.int64), 0, n - 1)
        values = r[pos]
        for side, share in ((-1, lo_share), (1, hi_share)):
            at = np.nonzero(u < share) if side < 0 else np.nonzero(u > 1 - share)
            if at[0].size == 0:
                continue
            survival = np.clip((u[at] if side < 0 else 1 - u[at]) / share, 1e-300, 1.0)
            tail = self.tail_low if side < 0 else self.tail_high
            if tail is not None:
                drawn = tail.threshold + gpd_excess(survival, tail.shapes(reps, rng)[at[0], 0], tail.median)
                drawn = -drawn if side < 0 else drawn
            else:
                shape, scale = self.beyond_low if side < 0 else self.beyond_high
                if scale <= 0:
                    continue
                distance = scale * (np.expm1(-shape * np.log(survival)) / shape if shape > 0 else -np.log(survival))
                drawn = r[0] - distance if side < 0 else r[-1] + distance
            values[at] = drawn
            pos[at] = np.searchsorted(r, drawn, side="right") - 1
        return values, pos

    def of_values(self, v: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
        """The measures of windows of values `v` (sorted rows), `pos` the position of the largest
        reference value at or below each (-1 below the reference's range).

        Values beyond the range count at the range's end in the integrals over it, and what
        lies beyond is added: for Wasserstein their distances, for the energy distance the
        integral of the share of the window beyond each point, squared."""
        r, n, m = self.r, self.n, v.shape[1]
        is_low, is_high = pos < 0, v > r[-1]
        p = np.clip(pos, 0, n - 1)
        w = np.clip(v, r[0], r[-1])  # the window within the range
        exact = w == r[p]
        k_right = self.right[p]
        k_left = np.where(exact, self.left[p], k_right)  # between reference values: none equal
        n_low, n_high = np.count_nonzero(is_low, axis=1), np.count_nonzero(is_high, axis=1)
        ks = np.maximum.reduce([self._ks(w, k_left, k_right, m), n_low / m, n_high / m])
        above = np.where(is_low, 0, np.where(is_high, 2 * n, k_left + k_right))  # reference values below, ×2
        out = {"ks_statistic": ks, "rank_biserial": above.sum(axis=1) / (m * n) - 1,
               "cohens_d": self._cohens_d(v, m)}
        inside = self._integrals(w, p, m)
        low = np.where(is_low, r[0] - v, 0.0)
        high = np.where(is_high, v - r[-1], 0.0)
        out["wasserstein"] = inside["wasserstein"] + (low.sum(axis=1) + high.sum(axis=1)) / m / self.norm
        out["ed"] = np.sqrt(np.maximum(inside["ed"] ** 2 + 2 * (_low_squares(low, m) + _high_squares(high, m)), 0.0))
        return out

    def _ks(self, w: np.ndarray, k_left: np.ndarray, k_right: np.ndarray, m: int) -> np.ndarray:
        index = np.arange(m)
        new = np.ones(w.shape, dtype=bool)
        new[:, 1:] = w[:, 1:] != w[:, :-1]  # a new value: a new run of ties in the window
        last = np.ones(w.shape, dtype=bool)
        last[:, :-1] = new[:, 1:]
        cur_left = np.maximum.accumulate(np.where(new, index, 0), axis=1)
        cur_right = np.minimum.accumulate(np.where(last, index + 1, m)[:, ::-1], axis=1)[:, ::-1]
        at = k_right / self.n - cur_right / m
        before = k_left / self.n - cur_left / m
        return np.maximum.reduce([at.max(axis=1), before.max(axis=1), -at.min(axis=1), -before.min(axis=1),
                                  np.zeros(at.shape[0])])

    def _cohens_d(self, v: np.ndarray, m: int) -> np.ndarray:
        n = self.n
        pooled = ((n - 1) * self.var1 + (m - 1) * v.var(axis=1, ddof=1)) / (n + m - 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.abs(v.mean(axis=1) - self.mean) / np.sqrt(pooled)

    def _int1(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Integral of F_ref from the range's start to x, r[p] <= x < r[p + 1]: F_ref is constant there."""
        return self.int1[p] + self.cdf[p] * (x - self.r[p])

    def _integrals(self, w: np.ndarray, p: np.ndarray, m: int) -> dict[str, np.ndarray]:
        """Wasserstein and energy distance from the integrals of F_ref (int1) and F_ref² (int2).
        The window's CDF G is i/m between its i-th and (i+1)-th values, so by parts:
            ∫ (F - G) = mean(window) - mean(reference),  ∫ |F - G| = ∫ (F - G) + 2 ∫ (G - F)+,
        where on the i-th stretch [a, b) G - F > 0 below x' = the first reference value with
        F >= i/m, clipped to [a, b]: ∫ (G - F)+ = (i/m)(x' - a) - (int1(x') - int1(a)); and
            ∫ (F - G)² = int2(end) - 2 (int1(end) - mean of int1 at the window's values)
                         + end - sum over the window's k-th value of (2k - 1) value / m²."""
        r, n = self.r, self.n
        reps = w.shape[0]
        i = np.arange(m + 1)
        k_cross = -(-i * n // m)  # the same for every window: the first rank where F_ref >= i/m
        at_cross = np.maximum(k_cross - 1, 0)
        crossing = r[at_cross]
        int1_w = self._int1(w, p)
        a = np.concatenate((np.full((reps, 1), r[0]), w), axis=1)
        b = np.concatenate((w, np.full((reps, 1), r[-1])), axis=1)
        int1_a = np.concatenate((np.zeros((reps, 1)), int1_w), axis=1)
        int1_b = np.concatenate((int1_w, np.full((reps, 1), self.int1[-1])), axis=1)
        below = (k_cross == 0) | (crossing < a)
        above = ~below & (crossing > b)
        x = np.where(below, a, np.where(above, b, crossing))
        int1_x = np.where(below, int1_a, np.where(above, int1_b, self.int1[at_cross]))
        positive = (i / m) * (x - a) - (int1_x - int1_a)
        wasserstein = (w.mean(axis=1) - self.mean + 2 * positive.sum(axis=1)) / self.norm
        weights = (2 * np.arange(1, m + 1) - 1) / (m * m)
        squares = (self.int2[-1] - 2 * (self.int1[-1] - int1_w.mean(axis=1)) + r[-1] - w @ weights)
        return {"wasserstein": wasserstein, "ed": np.sqrt(2 * np.maximum(squares, 0.0))}


def _pareto_beyond(excesses: np.ndarray, extreme: float) -> tuple[float, float]:
    """(shape, scale) of how far a new value falls beyond the extreme: a generalised Pareto fitted
    by moments to the excesses of the most extreme values over a threshold (shape in [0, 0.45]:
    light tails get an exponential), carried from the threshold to the extreme, the excess
    beyond a higher threshold being generalised Pareto with the scale grown by shape × the
    distance between them."""
    mean, var = float(np.mean(excesses)), float(np.var(excesses))
    if mean <= 0 or var <= 0:
        return 0.0, 0.0
    shape = min(max(0.5 * (1 - mean * mean / var), 0.0), 0.45)
    scale = mean * (1 - shape)
    return shape, scale + shape * extreme


def _high_squares(distance: np.ndarray, m: int) -> np.ndarray:
    """Integral over the stretch above the range of (share of the window beyond each point)²:
    `distance` is each value's distance above the range (0 within it), rows sorted ascending,
    so the value at index t has m - t values at or beyond it."""
    gaps = np.diff(distance, axis=1, prepend=0.0)
    beyond = m - np.arange(m)
    return np.sum(np.where(distance > 0, gaps, 0.0) * beyond**2, axis=1) / (m * m)


def _low_squares(distance: np.ndarray, m: int) -> np.ndarray:
    """The same below the range: the value at index t (distances descending) has t + 1 values
    at or beyond it."""
    gaps = distance - np.concatenate((distance[:, 1:], np.zeros((distance.shape[0], 1))), axis=1)
    beyond = np.arange(1, m + 1)
    return np.sum(np.where(distance > 0, gaps, 0.0) * beyond**2, axis=1) / (m * m)
