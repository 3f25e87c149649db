"""Windows of whole rows, simulated when a profile is built: the dataset rule's data.

The dataset drifts when enough of its features drift at once, so its false alarms depend on
how the features' noise moves together: two copies of a feature drift together, features
driven by one factor often do, independent ones almost never. Windows of m rows drawn from
the training rows (with replacement) carry that correlation as it is, and each column is
scored on its part of the same rows with every measure that can apply (the simulations of
`sim_ecdf.py` and `sim_counts.py`, fed the rows' own values).

For each window, column and measure the profile keeps how rare the score is among windows
without drift: its exceedance level, the share of such windows reaching it (the simulated
windows' own share in the bulk; the fitted tail, `noise.TailFit`, beyond their 100 highest),
coded on a log scale in one byte (`level_code`). A feature drifts at level q when its score
reaches its floor at q, i.e. when its exceedance level is at most q; so the share of windows in
which at least d of a monitor's features are at most q is the dataset's false-alarm rate at
level q, for any subset of the columns and any d, which is all the service needs to choose
its level when it knows its features and `drift_share` (`level.py`).

Approximations, each on the side of more joint drift or none: a column with missing values
gets its share of a window's rows as a fixed number of values (m times its present share),
taken from the window's rows in order (topped up from other rows in the rare window short of
them); values beyond the reference's range and categories it never had are drawn per column,
independently of the other columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import ColumnKind, ColumnSample
from .binned import histogram_of_sorted, sturges_edges
from .noise import TailFit
from .sim_counts import CATEGORICAL_MEASURES, CountModel
from .sim_ecdf import Ecdf

JOINT_SIZES: tuple[int, ...] = (100, 316, 1_000)  # events a window: every other size of the grid, up to 1,000
JOINT_WINDOWS = 2_000  # windows a size: the tail of the d-th most extreme level is fitted above the top 100
CODES_PER_DECADE = 32  # a level is kept as round(-log10(level) * 32), up to 255 (1e-8)
_BATCH_ELEMENTS = 1 << 20
_COUNTS_MAX_VALUES = 1000  # as simulate.py: cohens_w / cohens_h for numerical columns this small
_DIRECT_VALUES = 20


def level_code(levels: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.clip(np.rint(-np.log10(levels) * CODES_PER_DECADE), 0, 255).astype(np.uint8)


def code_level(codes: np.ndarray) -> np.ndarray:
    return np.power(10.0, -codes.astype(np.float64) / CODES_PER_DECADE)


@dataclass(frozen=True)
class ColumnRows:
    """One column's values in the training rows' order: each row's position in the sorted
    reference (numerical) or its label's index (categorical); -1 where it is missing."""

    index: np.ndarray  # int32, one per row

    @property
    def present_share(self) -> float:
        return float(np.count_nonzero(self.index >= 0) / max(self.index.size, 1))


def joint_sizes(rows: int) -> tuple[int, ...]:
    """The sizes simulated for a reference of this many rows: up to the first at or above it
    (a window is compared with the reference at n·N / (n + N) < N)."""
    return tuple(JOINT_SIZES[:next((i + 1 for i, s in enumerate(JOINT_SIZES) if s >= rows), len(JOINT_SIZES))])


def canonical_order(rows: dict[str, ColumnRows]) -> dict[str, ColumnRows]:
    """The rows in an order of their own content (a 64-bit hash of each row's values, the
    columns taken by name), so the whole-row windows do not depend on the file's row order,
    as the profile's content hash does not."""
    h = np.zeros(next(iter(rows.values())).index.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for name in sorted(rows):
            h = (h ^ (rows[name].index.astype(np.int64) + 1).astype(np.uint64)) * np.uint64(0x100000001B3)
            h ^= h >> np.uint64(29)
    order = np.argsort(h, kind="stable")
    return {name: ColumnRows(r.index[order]) for name, r in rows.items()}


def window_rows(rows: int, m: int, reps: int, seed: int) -> np.ndarray:
    """The rows of `reps` windows of m rows: the same for every column (drawn from `seed`)."""
    return np.random.default_rng(seed).integers(0, rows, (reps, m), dtype=np.int64)


def column_levels(sample: ColumnSample, rows: ColumnRows, sizes: tuple[int, ...], seed: int,
                  rng: np.random.Generator, windows: int = JOINT_WINDOWS) -> dict[str, np.ndarray]:
    """measure -> (len(sizes), windows) codes of the column's exceedance levels in the whole-row
    windows of each size (the rows drawn from `seed`, shared by every column)."""
    present = rows.present_share
    scores: dict[str, list[np.ndarray]] = {}
    for i, m in enumerate(sizes):
        values = max(1, round(m * present))
        picked = _picked(rows.index, window_rows(rows.index.size, m, windows, seed * 31 + i), values, rng)
        found = _scores(sample, picked, rng)
        for name, s in found.items():
            scores.setdefault(name, []).append(s)
    out: dict[str, np.ndarray] = {}
    for name, per_size in scores.items():
        if len(per_size) == len(sizes):
            out[name] = np.stack([level_code(_exceedance(name, s)) for s in per_size])
    return out


def _picked(index: np.ndarray, window: np.ndarray, values: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, values): the column's entries of the first `values` rows of each window holding
    it, topped up with rows drawn at random among those holding it where a window is short."""
    entries = index[window]
    present = entries >= 0
    if values == window.shape[1] and present.all():
        return entries
    rank = np.cumsum(present, axis=1) - 1
    keep = present & (rank < values)
    out = np.full((window.shape[0], values), -1, dtype=np.int64)
    rows_at, _ = np.nonzero(keep)
    out[rows_at, rank[keep]] = entries[keep]
    short = out < 0
    if short.any():
        holding = index[index >= 0]
        out[short] = holding[rng.integers(0, holding.size, int(np.count_nonzero(short)))]
    return out


def _exceedance(measure: str, scores: np.ndarray) -> np.ndarray:
    """Each window's exceedance level among windows of its size: the share of the simulated
    windows reaching its score, the fitted tail's probability above the tail's threshold."""
    clean = np.where(np.isnan(scores), 0.0, scores)
    order = np.sort(clean)
    reached = (clean.size - np.searchsorted(order, clean, side="left")) / clean.size
    fitted = TailFit.of(measure, scores).survival(measure, scores)
    return np.where(np.isnan(fitted), reached, fitted)


def _scores(sample: ColumnSample, picked: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if sample.kind is ColumnKind.CATEGORICAL:
        counts = CountModel(sample.counts, _unseen_rate(sample.counts))
        return _count_measures(counts, picked, sample.nunique, rng, CATEGORICAL_MEASURES)
    return _numerical(sample, picked, rng)


def _numerical(sample: ColumnSample, picked: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The measures of `simulate._simulate_numerical` on windows of the reference's positions."""
    r = sample.sorted
    n, m = r.size, picked.shape[1]
    out: dict[str, np.ndarray] = {}
    ecdf = Ecdf(sample)
    parts: dict[str, list[np.ndarray]] = {}
    step = max(1, _BATCH_ELEMENTS // (4 * m))
    for start in range(0, picked.shape[0], step):
        chunk = picked[start:start + step]
        u = np.sort((chunk + rng.random(chunk.shape)) / n, axis=1)
        for name, values in ecdf.of_values(*ecdf.values_of(u, rng)).items():
            parts.setdefault(name, []).append(values)
    out.update({name: np.concatenate(v) for name, v in parts.items()})
    uniques, unique_counts = sample.uniques, sample.unique_counts
    run = np.cumsum(np.concatenate(([True], r[1:] != r[:-1]))) - 1  # the distinct value at each position
    binned = ("psi", "kl_div", "jensenshannon")
    direct = CountModel(unique_counts, _unseen_rate(unique_counts)) if uniques.size <= _COUNTS_MAX_VALUES else None
    if uniques.size <= _DIRECT_VALUES and direct is not None:
        out.update(_count_measures(direct, run[picked], uniques.size, rng, binned))
    else:
        edges = sturges_edges(r[0], r[-1], n + m)
        bins = CountModel(histogram_of_sorted(r, edges), keyed=False)
        out.update(bins.measures_of(_bin_counts(_bin_of(r, edges)[picked], edges.size - 1),
                                    np.zeros(picked.shape[0], dtype=np.int64), m, binned))
    own = sturges_edges(r[0], r[-1], uniques.size)
    hellinger = CountModel(histogram_of_sorted(r, own), keyed=False)
    out["hellinger"] = hellinger.hellinger_of(_bin_counts(_bin_of(r, own)[picked], own.size - 1), m, own)
    if direct is not None:
        out.update(_count_measures(direct, run[picked], uniques.size, rng, ("cohens_w", "cohens_h")))
    return out


def _bin_of(r: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The histogram bin of each sorted reference value (half-open bins, the last closed)."""
    return np.minimum(np.searchsorted(edges, r, side="right") - 1, edges.size - 2)


def _bin_counts(labels: np.ndarray, k: int) -> np.ndarray:
    """(reps, k) counts of the labels 0..k-1 in each row of `labels`."""
    reps = labels.shape[0]
    flat = labels + k * np.arange(reps)[:, None]
    return np.bincount(flat.ravel(), minlength=k * reps).reshape(reps, k)


def _count_measures(model: CountModel, labels: np.ndarray, k: int, rng: np.random.Generator,
                    which: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Windows of category labels, each value in a category the reference never had with the
    Good-Turing probability (those values dropped from the counts, kept as `new`)."""
    reps, m = labels.shape
    new = (np.asarray(rng.binomial(m, model.unseen, reps), dtype=np.int64) if model.unseen > 0
           else np.zeros(reps, dtype=np.int64))
    kept = np.where(np.arange(m)[None, :] < (m - new)[:, None], labels, k)  # the last `new` become new
    parts: dict[str, list[np.ndarray]] = {}
    step = max(1, _BATCH_ELEMENTS // max(k + 1, m))
    for start in range(0, reps, step):
        stop = min(reps, start + step)
        counts = _bin_counts(kept[start:stop], k + 1)[:, :k]
        for name, values in model.measures_of(counts, new[start:stop], m, which).items():
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(v) for name, v in parts.items()}


def _unseen_rate(counts: np.ndarray) -> float:
    return float(np.count_nonzero(counts == 1) / counts.sum())

