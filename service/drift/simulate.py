"""Windows without drift, simulated when a reference profile is built: the noise floors' data.

For every grid size m (`noise.GRID`, up to the first size at or above the reference's own
number of values), many windows of m values are drawn with replacement from the reference
column and every measure that can apply to it is computed on each, vectorised over the
windows (the same numbers `DriftMethod.score` and the effect sizes give on such a window; the
tests hold them equal):

- **Counts** (psi, kl_div, jensenshannon, hellinger, cohens_w, cohens_h, tv_distance): a window
  is a multinomial draw over the reference's categories, its distinct values (20 or fewer, as
  Evidently's binning compares them), or its histogram bins for the size m. A window of new
  data also holds values the reference never had, about as often as the reference's values seen
  once (Good-Turing: f1 / N); those are drawn too, each a category of its own.
- **Empirical CDFs** (wasserstein, ed, ks_statistic, cohens_d, rank_biserial): sorted window
  positions in the sorted reference come from sorted uniforms (cumulated exponential spacings),
  so no window is sorted; the distances are read off the integrals of the reference's CDF
  up to each of its values. Simulated up to 3,162 values: beyond, these measures follow their
  n^-1/2 law (`NoiseTable.floor`), which they have reached there (bench/bench_calibration.py
  --tails compares the two at 10,000).

Each column's draws come from its own generator, seeded from the reference's content: the
same training data gives the same floors.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import math
import multiprocessing
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .base import ColumnKind, ColumnSample
from .binned import histogram_of_sorted, sturges_edges
from .noise import GRID, NoiseTable, TailFit

REPLICATES = 1000  # windows per size, count-based measures
ECDF_REPLICATES = 400  # windows per size, empirical-CDF measures (each costs m values)
ECDF_MAX_SIZE = 3_200
_DIRECT_VALUES = 20  # binned methods compare value by value up to this many (binned.py)
_COUNTS_MAX_VALUES = 1000  # chisquare / z effect sizes are simulated for numerical columns this small
_BATCH_ELEMENTS = 1 << 19
CATEGORICAL_MEASURES = ("psi", "kl_div", "jensenshannon", "hellinger", "tv_distance", "cohens_w", "cohens_h")


def simulate(sample: ColumnSample, rng: np.random.Generator) -> NoiseTable:
    """The noise table of one reference column."""
    sizes = tuple(GRID[:next((i + 1 for i, s in enumerate(GRID) if s >= sample.n), len(GRID))])
    draws: dict[str, list[np.ndarray]] = {}
    replicates: dict[str, int] = {}
    if sample.kind is ColumnKind.CATEGORICAL:
        counts = _CountModel(sample.counts, _unseen_rate(sample.counts), first=0)
        for m in sizes:
            _collect(draws, counts.measures(m, REPLICATES, rng, CATEGORICAL_MEASURES))
        replicates.update(dict.fromkeys(draws, REPLICATES))
    else:
        _simulate_numerical(sample, sizes, rng, draws, replicates)
    fits = {name: tuple(TailFit.of(name, v) for v in values) for name, values in draws.items()}
    return NoiseTable(sizes, fits, replicates)


def _collect(draws: dict[str, list[np.ndarray]], found: dict[str, np.ndarray]) -> None:
    for name, values in found.items():
        draws.setdefault(name, []).append(values)


def _unseen_rate(counts: np.ndarray) -> float:
    """Good-Turing: the share of new data in categories the sample never had is about the share
    of the sample's values in categories seen exactly once."""
    return float(np.count_nonzero(counts == 1) / counts.sum())


def _simulate_numerical(sample: ColumnSample, sizes: tuple[int, ...], rng: np.random.Generator,
                        draws: dict[str, list[np.ndarray]], replicates: dict[str, int]) -> None:
    r = sample.sorted
    uniques, counts = sample.uniques, sample.unique_counts
    direct = _CountModel(counts, _unseen_rate(counts), first=0) if uniques.size <= _COUNTS_MAX_VALUES else None
    hellinger_edges = sturges_edges(r[0], r[-1], uniques.size)
    hellinger = _CountModel(histogram_of_sorted(r, hellinger_edges), 0.0, first=0)
    ecdf = _Ecdf(sample)
    for m in sizes:
        binned = ("psi", "kl_div", "jensenshannon")
        if uniques.size <= _DIRECT_VALUES and direct is not None:
            found = direct.measures(m, REPLICATES, rng, binned)
        else:  # Sturges bins over the reference's range for a window of m values inside it
            bins = _CountModel(histogram_of_sorted(r, sturges_edges(r[0], r[-1], r.size + m)), 0.0, first=0)
            found = bins.measures(m, REPLICATES, rng, binned)
        found["hellinger"] = hellinger.hellinger_binned(m, REPLICATES, rng, hellinger_edges)
        if direct is not None:
            found.update(direct.measures(m, REPLICATES, rng, ("cohens_w", "cohens_h")))
        _collect(draws, found)
        if m <= ECDF_MAX_SIZE:
            _collect(draws, ecdf.measures(m, ECDF_REPLICATES, rng))
    for name in draws:
        replicates[name] = ECDF_REPLICATES if name in _Ecdf.MEASURES else REPLICATES


class _CountModel:
    """Windows as counts over a reference's categories (or values, or bins)."""

    def __init__(self, ref_counts: np.ndarray, unseen: float, first: int) -> None:
        self.counts = np.asarray(ref_counts, dtype=np.float64)
        self.n = float(self.counts.sum())
        self.p = self.counts / self.n
        self.unseen = unseen
        self.first = first  # the category z codes 0: the smallest label (labels and values are sorted)
        nonzero = self.p[self.p > 0]
        self.fill = _fill_value(float(nonzero.min()))  # Evidently's fill for the reference's empty shares

    def draw(self, m: int, reps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(reps, k) counts of a window's values in the categories, and (reps,) values in new ones."""
        new = rng.binomial(m, self.unseen, reps) if self.unseen > 0 else np.zeros(reps, dtype=np.int64)
        k = self.p.size
        if k <= 4 * m or k <= 256:
            return rng.multinomial(m - new, self.p), new
        # many categories, few values: draw the values themselves, in batches
        cdf = np.cumsum(self.p)
        cdf[-1] = 1.0
        out = np.zeros((reps, k), dtype=np.int64)
        step = max(1, _BATCH_ELEMENTS // max(m, k))
        for start in range(0, reps, step):
            stop = min(reps, start + step)
            labels = np.searchsorted(cdf, rng.random((stop - start, m)), side="right")
            labels[np.arange(m)[None, :] >= (m - new[start:stop])[:, None]] = k  # the new values' slots
            flat = labels + (k + 1) * np.arange(stop - start)[:, None]
            out[start:stop] = np.bincount(flat.ravel(), minlength=(k + 1) * (stop - start)).reshape(-1, k + 1)[:, :k]
        return out, new

    def measures(self, m: int, reps: int, rng: np.random.Generator, which: tuple[str, ...]) -> dict[str, np.ndarray]:
        c, new = self.draw(m, reps, rng)
        return self.measures_of(c, new, m, which)

    def measures_of(self, c: np.ndarray, new: np.ndarray, m: int, which: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The measures of windows with counts `c` in the categories and `new` values in new ones."""
        out: dict[str, np.ndarray] = {}
        if "psi" in which or "kl_div" in which:
            out["psi"], out["kl_div"] = self._psi_kl(c, new, m)
        if "jensenshannon" in which:
            out["jensenshannon"] = self._jensenshannon(c, new, m)
        if "hellinger" in which:  # categorical: the Bhattacharyya coefficient over the shares
            out["hellinger"] = np.sqrt(1 - np.clip(np.sqrt(self.p * (c / m)).sum(axis=1), 0, 1))
        if "tv_distance" in which:
            out["tv_distance"] = 0.5 * (np.abs(self.p - c / m).sum(axis=1) + new / m)
        if "cohens_w" in which:
            out["cohens_w"] = self._cohens_w(c)
        if "cohens_h" in which:
            out["cohens_h"] = self._cohens_h(c, m)
        return {k: v for k, v in out.items() if k in which}

    def _psi_kl(self, c: np.ndarray, new: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Evidently's psi and kl_div: empty shares filled on both sides, then the sums."""
        share = c / m
        smallest = np.where(c > 0, c, np.iinfo(np.int64).max).min(axis=1).astype(np.float64)
        smallest = np.where(new > 0, 1.0, smallest) / m
        fill_c = np.where(smallest <= 0.0001, smallest / 10**6, 0.0001)
        q = np.where(c > 0, share, fill_c[:, None])
        p = np.where(self.p > 0, self.p, self.fill)
        log_ratio = np.log(p / q)
        psi = ((p - q) * log_ratio).sum(axis=1) + new * (self.fill - 1 / m) * math.log(self.fill * m)
        # scipy's entropy normalises both sides (the fills make each sum slightly above 1)
        sum_p = p.sum() + new * self.fill
        sum_q = q.sum(axis=1) + new / m
        kl = ((p * log_ratio).sum(axis=1) + new * self.fill * math.log(self.fill * m)) / sum_p + np.log(sum_q / sum_p)
        return psi, kl

    def _jensenshannon(self, c: np.ndarray, new: np.ndarray, m: int) -> np.ndarray:
        q = c / m
        mid = (self.p + q) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            left = np.where(self.p > 0, self.p * np.log(self.p / mid), 0.0)
            right = np.where(q > 0, q * np.log(q / mid), 0.0)
        return np.sqrt(np.maximum((left.sum(axis=1) + right.sum(axis=1) + new / m * math.log(2)) / 2, 0.0))

    def hellinger_binned(self, m: int, reps: int, rng: np.random.Generator, edges: np.ndarray) -> np.ndarray:
        return self.hellinger_of(self.draw(m, reps, rng)[0], m, edges)

    def hellinger_of(self, c: np.ndarray, m: int, edges: np.ndarray) -> np.ndarray:
        """Evidently's numerical hellinger: bin densities over Sturges bins of the distinct values."""
        widths = np.diff(edges)
        h1 = self.counts / widths / self.n
        h2 = c / widths / m
        bin_width = (edges.max() - edges.min()) / (edges.size - 1)
        bc = (np.sqrt(h1 * h2) * bin_width).sum(axis=1)
        return np.sqrt(1 - np.clip(bc, 0, 1))

    def _cohens_w(self, c: np.ndarray) -> np.ndarray:
        seen = c.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = c / seen
            return np.sqrt(np.maximum((s * s / self.p).sum(axis=1) - 1, 0.0))

    def _cohens_h(self, c: np.ndarray, m: int) -> np.ndarray:
        p1 = 1 - self.p[self.first]
        p2 = 1 - c[:, self.first] / m
        return np.abs(2 * math.asin(math.sqrt(p1)) - 2 * np.arcsin(np.sqrt(p2)))


def _fill_value(smallest: float) -> float:
    """binned._fill_zeroes: what an empty share becomes, given the smallest non-empty one."""
    return smallest / 10**6 if smallest <= 0.0001 else 0.0001


class _Ecdf:
    """Windows as sorted positions in the sorted reference: the empirical-CDF measures."""

    MEASURES = ("wasserstein", "ed", "ks_statistic", "cohens_d", "rank_biserial")

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

    def measures(self, m: int, reps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {name: [] for name in self.MEASURES}
        step = max(1, _BATCH_ELEMENTS // (m + 1))
        for start in range(0, reps, step):
            for name, values in self._batch(m, min(step, reps - start), rng).items():
                out[name].append(values)
        return {name: np.concatenate(parts) for name, parts in out.items()}

    def _batch(self, m: int, reps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.of_positions(self.positions(m, reps, rng))

    def positions(self, m: int, reps: int, rng: np.random.Generator) -> np.ndarray:
        """(reps, m) sorted positions in the sorted reference: windows drawn with replacement."""
        spacing = np.cumsum(rng.standard_exponential((reps, m + 1)), axis=1)
        return np.minimum((spacing[:, :m] / spacing[:, m:] * self.n).astype(np.int64), self.n - 1)

    def of_positions(self, pos: np.ndarray) -> dict[str, np.ndarray]:
        """The measures of the windows holding the reference's values at `pos` (sorted rows)."""
        r, n, m = self.r, self.n, pos.shape[1]
        w, k_left, k_right = r[pos], self.left[pos], self.right[pos]
        return {"ks_statistic": self._ks(k_left, k_right, m),
                "rank_biserial": (k_left + k_right).sum(axis=1) / (m * n) - 1,
                "cohens_d": self._cohens_d(w, m),
                **self._integrals(w, pos, m)}

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

CalibrationProgress = Callable[[int, int, str], None]
# Below this many reference values in all, the columns are simulated in this process (a pool's
# start-up would cost more than it saves).
_POOL_MIN_VALUES = 2_000_000


def simulate_columns(samples: dict[str, ColumnSample], seed: str, progress: CalibrationProgress | None = None,
                     workers: int | None = None) -> dict[str, NoiseTable]:
    """The noise table of every column; `progress(done, total, column)` after each one.

    Each column's generator is seeded from `seed` (the profile's content hash) and its name, so
    the tables do not depend on the order or the process the columns are simulated in. Large
    profiles are simulated by a pool of processes (at most `workers`, default: the CPUs, up
    to 4)."""
    names = list(samples)
    jobs = [(samples[n], _column_seed(seed, n)) for n in names]
    total_values = sum(s.n for s in samples.values())
    workers = min(workers or os.cpu_count() or 1, 4, len(names))
    tables: dict[str, NoiseTable] = {}
    if workers <= 1 or total_values < _POOL_MIN_VALUES:
        for done, (name, (sample, column_seed)) in enumerate(zip(names, jobs, strict=True), 1):
            tables[name] = simulate(sample, np.random.default_rng(column_seed))
            if progress:
                progress(done, len(names), name)
        return tables
    context = multiprocessing.get_context("spawn")  # never fork a process that may run threads
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(_simulate_job, sample.kind, sample.sorted if sample.kind is ColumnKind.NUMERICAL
                               else (sample.labels, sample.counts), column_seed): name
                   for name, (sample, column_seed) in zip(names, jobs, strict=True)}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            name = futures[future]
            tables[name] = NoiseTable.from_json(future.result())
            if progress:
                progress(done, len(names), name)
    return {n: tables[n] for n in names}


def _column_seed(seed: str, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{name}".encode()).digest()[:8], "little")


def _simulate_job(kind: ColumnKind, data: Any, column_seed: int) -> dict[str, Any]:
    if kind is ColumnKind.NUMERICAL:
        sample = ColumnSample.from_sorted(data)
    else:
        sample = ColumnSample(kind, labels=data[0], counts=data[1])
    return simulate(sample, np.random.default_rng(column_seed)).to_json()
