"""Simulated windows for the empirical-CDF measures: wasserstein, ed, ks_statistic, cohens_d,
rank_biserial (the same numbers `DriftMethod.score` and the effect sizes give; the tests hold
them equal).

Windows are drawn from the reference and scored against it. Sorted window positions come from
sorted uniforms (cumulated exponential spacings), so no window is sorted, and the distances
are read off the integrals of the reference's CDF up to each of its values. New data also falls
beyond the reference's range (each side with probability 1 / (N + 1), by exchangeability), as
far as a generalised Pareto tail fitted to the reference's extremes says.
"""

from __future__ import annotations

import numpy as np

from .base import ColumnSample

MEASURES = ("wasserstein", "ed", "ks_statistic", "cohens_d", "rank_biserial")
_BATCH_ELEMENTS = 1 << 19


class Ecdf:
    """Windows as sorted positions in the sorted reference: the empirical-CDF measures."""

    def __init__(self, sample: ColumnSample) -> None:
        r = self.r = sample.sorted
        n = self.n = r.size
        new_run = np.concatenate(([True], r[1:] != r[:-1]))
        starts = np.flatnonzero(new_run)
        run = np.cumsum(new_run) - 1
        self.left = starts[run]  # reference values below each position's value
        self.right = np.append(starts[1:], n)[run]  # … at or below it
        cdf = self.right / n
        gaps = np.diff(r)
        self.int1 = np.concatenate(([0.0], np.cumsum(cdf[:-1] * gaps)))  # integral of F_ref up to each value
        self.int2 = np.concatenate(([0.0], np.cumsum(cdf[:-1] ** 2 * gaps)))  # … of F_ref squared
        self.norm = max(sample.std, 0.001)
        self.mean = sample.mean
        self.var1 = sample.std**2 * n / (n - 1) if n > 1 else 0.0
        # new data falls beyond the reference's range, each side with probability at most
        # 1 / (N + 1); how far: a generalised Pareto tail fitted to the reference's own extremes
        top = max(5, min(200, n // 50))
        self.tail_low = _pareto_beyond(r[top] - r[:top][::-1], r[top] - r[0]) if n > 2 * top else (0.0, 0.0)
        self.tail_high = _pareto_beyond(r[-top:] - r[-top - 1], r[-1] - r[-top - 1]) if n > 2 * top else (0.0, 0.0)

    def measures(self, m: int, reps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {name: [] for name in MEASURES}
        step = max(1, _BATCH_ELEMENTS // (m + 1))
        for start in range(0, reps, step):
            for name, values in self._batch(m, min(step, reps - start), rng).items():
                out[name].append(values)
        return {name: np.concatenate(parts) for name, parts in out.items()}

    def _batch(self, m: int, reps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.of_positions(self.positions(m, reps, rng), *self.beyond(m, reps, rng))

    def beyond(self, m: int, reps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(reps, k) distances of the values drawn below the reference's minimum, and above its
        maximum: each row sorted ascending, NaN where a window has fewer."""
        sides = []
        for shape, scale in (self.tail_low, self.tail_high):
            count = rng.binomial(m, 1 / (self.n + 1), reps) if scale > 0 else np.zeros(reps, dtype=np.int64)
            width = int(count.max()) if count.size else 0
            u = rng.random((reps, width))
            # generalised Pareto by inversion (shape 0: exponential)
            distance = scale * (np.expm1(-shape * np.log(u)) / shape if shape > 0 else -np.log(u))
            distance[np.arange(width)[None, :] >= count[:, None]] = np.nan
            sides.append(np.sort(distance, axis=1))
        return sides[0], sides[1]

    def positions(self, m: int, reps: int, rng: np.random.Generator) -> np.ndarray:
        """(reps, m) sorted positions in the sorted reference: windows drawn with replacement."""
        spacing = np.cumsum(rng.standard_exponential((reps, m + 1)), axis=1)
        return np.minimum((spacing[:, :m] / spacing[:, m:] * self.n).astype(np.int64), self.n - 1)

    def of_positions(self, pos: np.ndarray, low: np.ndarray | None = None,
                     high: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The measures of the windows holding the reference's values at `pos` (sorted rows),
        except their first (last) values, which lie `low` (`high`) below (above) its range.

        Those values count at the range's end in the integrals over the range, and what lies
        beyond it is added: for Wasserstein their distances, for the energy distance the
        integral of the share of the window beyond each point, squared."""
        r, n, m = self.r, self.n, pos.shape[1]
        reps = pos.shape[0]
        low = np.zeros((reps, 0)) if low is None else low
        high = np.zeros((reps, 0)) if high is None else high
        n_low, n_high = np.count_nonzero(~np.isnan(low), axis=1), np.count_nonzero(~np.isnan(high), axis=1)
        index = np.arange(m)[None, :]
        is_low, is_high = index < n_low[:, None], index >= m - n_high[:, None]
        pos = np.where(is_low, 0, np.where(is_high, n - 1, pos))
        w, k_left, k_right = r[pos], self.left[pos], self.right[pos]
        values = w.copy()  # the window's own values, beyond the range where drawn there
        if low.shape[1]:
            rank = np.clip(n_low[:, None] - 1 - index[:, :low.shape[1]], 0, low.shape[1] - 1)
            values[:, :low.shape[1]] -= np.where(is_low[:, :low.shape[1]],
                                                 np.take_along_axis(np.nan_to_num(low), rank, axis=1), 0.0)
        if high.shape[1]:
            k = high.shape[1]
            rank = np.clip(index[:, :k] - (k - n_high[:, None]), 0, k - 1)
            values[:, m - k:] += np.where(is_high[:, m - k:], np.take_along_axis(np.nan_to_num(high), rank, axis=1),
                                          0.0)
        ks = np.maximum.reduce([self._ks(k_left, k_right, m), n_low / m, n_high / m])
        above = np.where(is_low, 0, np.where(is_high, 2 * n, k_left + k_right))  # reference values below, ×2
        out = {"ks_statistic": ks, "rank_biserial": above.sum(axis=1) / (m * n) - 1,
               "cohens_d": self._cohens_d(values, m)}
        inside = self._integrals(w, pos, m)
        outside = np.nansum(low, axis=1) + np.nansum(high, axis=1)
        out["wasserstein"] = inside["wasserstein"] + outside / m / self.norm
        out["ed"] = np.sqrt(np.maximum(inside["ed"] ** 2 + 2 * (_tail_squares(low, m) + _tail_squares(high, m)), 0.0))
        return out

    def _ks(self, k_left: np.ndarray, k_right: np.ndarray, m: int) -> np.ndarray:
        index = np.arange(m)
        new = np.ones(k_right.shape, dtype=bool)
        new[:, 1:] = k_right[:, 1:] != k_right[:, :-1]  # a new value: a new run of ties in the window
        last = np.ones(k_right.shape, dtype=bool)
        last[:, :-1] = new[:, 1:]
        cur_left = np.maximum.accumulate(np.where(new, index, 0), axis=1)
        cur_right = np.minimum.accumulate(np.where(last, index + 1, m)[:, ::-1], axis=1)[:, ::-1]
        at = k_right / self.n - cur_right / m
        before = k_left / self.n - cur_left / m
        return np.maximum.reduce([at.max(axis=1), before.max(axis=1), -at.min(axis=1), -before.min(axis=1),
                                  np.zeros(at.shape[0])])

    def _cohens_d(self, w: np.ndarray, m: int) -> np.ndarray:
        n = self.n
        pooled = ((n - 1) * self.var1 + (m - 1) * w.var(axis=1, ddof=1)) / (n + m - 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.abs(w.mean(axis=1) - self.mean) / np.sqrt(pooled)

    def _integrals(self, w: np.ndarray, pos: np.ndarray, m: int) -> dict[str, np.ndarray]:
        """Wasserstein and energy distance from the integrals of F_ref (int1) and F_ref² (int2)
        up to each reference value. The window's CDF G is i/m between its i-th and (i+1)-th
        values, so by parts:
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
        a = np.concatenate((np.full((reps, 1), r[0]), w), axis=1)
        b = np.concatenate((w, np.full((reps, 1), r[-1])), axis=1)
        pos_a = np.concatenate((np.zeros((reps, 1), dtype=np.int64), pos), axis=1)
        pos_b = np.concatenate((pos, np.full((reps, 1), n - 1)), axis=1)
        below = (k_cross == 0) | (crossing < a)
        above = ~below & (crossing > b)
        x = np.where(below, a, np.where(above, b, crossing))
        pos_x = np.where(below, pos_a, np.where(above, pos_b, at_cross))
        int1_w = self.int1[pos]
        positive = (i / m) * (x - a) - (self.int1[pos_x] - self.int1[pos_a])
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


def _tail_squares(distances: np.ndarray, m: int) -> np.ndarray:
    """Integral over the stretch beyond the range of (share of the window beyond each point)²,
    for sorted distances (NaN where none): (k - i)² / m² over the i-th gap between them."""
    if distances.shape[1] == 0:
        return np.zeros(distances.shape[0])
    count = np.count_nonzero(~np.isnan(distances), axis=1)
    gaps = np.diff(np.concatenate((np.zeros((distances.shape[0], 1)), np.nan_to_num(distances)), axis=1), axis=1)
    beyond = np.maximum(count[:, None] - np.arange(distances.shape[1])[None, :], 0)
    return np.sum(np.where(beyond > 0, gaps, 0.0) * beyond**2, axis=1) / (m * m)
