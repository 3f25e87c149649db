"""Windows without drift, simulated when a reference profile is built: the noise floors' data.

For every grid size m (`noise.GRID`, up to the first size at or above the reference's own number
of values), many windows of m values are drawn from the reference column and every measure that
can apply to it is computed on each, vectorised over the windows (`sim_counts.py` for the
count-based measures, `sim_ecdf.py` for the empirical-CDF ones; the same numbers
`DriftMethod.score` and the effect sizes give on such a window, which the tests hold equal):

- **Counts** (psi, kl_div, jensenshannon, hellinger, cohens_w, cohens_h, tv_distance): a window
  is a multinomial draw over the reference's categories, its distinct values (20 or fewer, as
  Evidently's binning compares them), or its histogram bins for the size m. A window of new
  data also holds values the reference never had, about as often as the reference's values seen
  once (Good-Turing: f1 / N); those are drawn too, each a category of its own.
- **Empirical CDFs** (wasserstein, ed, ks_statistic, cohens_d, rank_biserial): windows of
  reference values, plus the values new data has beyond the reference's range; 1,000,000 / m
  windows of m values (400 to 2,000). Simulated up to 3,162 values: beyond, these measures
  follow their n^-1/2 law (`NoiseTable.floor`), which they have reached there
  (bench/bench_calibration.py --tails compares the two at 10,000: 0.93 to 1.14 times).

Resampling is per column: a feature's floor depends on its own distribution only. The
features' correlation enters at the dataset rule, whose level (`noise.feature_level`) holds for
any correlation. Each column's draws come from its own generator, seeded from the reference's
content: the same training data gives the same floors.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
from collections.abc import Callable
from typing import Any

import numpy as np

from .base import ColumnKind, ColumnSample
from .binned import histogram_of_sorted, sturges_edges
from .noise import GRID, NoiseTable, TailFit
from .sim_counts import CountModel
from .sim_ecdf import MEASURES as ECDF_MEASURES
from .sim_ecdf import Ecdf

REPLICATES = 1000  # windows per size, count-based measures
ECDF_WORK = 1_000_000  # empirical-CDF measures: windows per size, ECDF_WORK / m (each costs m values) …
ECDF_REPLICATES = (400, 2_000)  # … within these bounds: many small windows, where the floors matter most
ECDF_MAX_SIZE = 3_200  # above, the empirical-CDF measures follow their n^-1/2 law
_DIRECT_VALUES = 20  # binned methods compare value by value up to this many (binned.py)
_COUNTS_MAX_VALUES = 1000  # chisquare / z effect sizes are simulated for numerical columns this small
# A window keeps at most 10,000 categories of a feature (window.py): a reference with more holds
# free text or identifiers, which no drift method compares usefully; no floors are simulated.
MAX_CATEGORIES = 10_000
CATEGORICAL_MEASURES = ("psi", "kl_div", "jensenshannon", "hellinger", "tv_distance", "cohens_w", "cohens_h")


def simulate(sample: ColumnSample, rng: np.random.Generator) -> NoiseTable:
    """The noise table of one reference column."""
    # up to the first size at or above the reference's own: a window is looked up at n_eff < N
    sizes = tuple(GRID[:next((i + 1 for i, s in enumerate(GRID) if s >= sample.n), len(GRID))])
    draws: dict[str, list[np.ndarray]] = {}
    replicates: dict[str, tuple[int, ...]] = {}
    if sample.kind is ColumnKind.CATEGORICAL:
        if sample.nunique > MAX_CATEGORIES:
            return NoiseTable((), {}, {})
        counts = CountModel(sample.counts, _unseen_rate(sample.counts))
        # many categories cost many draws each: fewer windows (the fitted tail stays an upper bound)
        reps = max(200, min(REPLICATES, 2_000_000 // sample.nunique))
        for m in sizes:
            _collect(draws, counts.measures(m, reps, rng, CATEGORICAL_MEASURES))
        replicates.update({name: (reps,) * len(sizes) for name in draws})
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
                        draws: dict[str, list[np.ndarray]], replicates: dict[str, tuple[int, ...]]) -> None:
    r = sample.sorted
    uniques, counts = sample.uniques, sample.unique_counts
    direct = CountModel(counts, _unseen_rate(counts)) if uniques.size <= _COUNTS_MAX_VALUES else None
    hellinger_edges = sturges_edges(r[0], r[-1], uniques.size)
    hellinger = CountModel(histogram_of_sorted(r, hellinger_edges), keyed=False)
    ecdf = Ecdf(sample)
    for m in sizes:
        binned = ("psi", "kl_div", "jensenshannon")
        if uniques.size <= _DIRECT_VALUES and direct is not None:
            found = direct.measures(m, REPLICATES, rng, binned)
        else:  # Sturges bins over the reference's range for a window of m values inside it
            bins = CountModel(histogram_of_sorted(r, sturges_edges(r[0], r[-1], r.size + m)), keyed=False)
            found = bins.measures(m, REPLICATES, rng, binned)
        found["hellinger"] = hellinger.hellinger_binned(m, REPLICATES, rng, hellinger_edges)
        if direct is not None:
            found.update(direct.measures(m, REPLICATES, rng, ("cohens_w", "cohens_h")))
        _collect(draws, found)
        if m <= ECDF_MAX_SIZE:
            reps = min(max(ECDF_WORK // m, ECDF_REPLICATES[0]), ECDF_REPLICATES[1])
            _collect(draws, ecdf.measures(m, reps, rng))
            for name in ECDF_MEASURES:
                replicates[name] = (*replicates.get(name, ()), reps)
    for name in draws:
        if name not in ECDF_MEASURES:
            replicates[name] = (REPLICATES,) * len(draws[name])


CalibrationProgress = Callable[[int, int, str], None]
# Below this many reference values in all, the columns are simulated in this process (a pool's
# start-up would cost more than it saves).
_POOL_MIN_VALUES = 2_000_000


def simulate_columns(samples: dict[str, ColumnSample], seed: str, progress: CalibrationProgress | None = None,
                     workers: int = 1) -> dict[str, NoiseTable]:
    """The noise table of every column; `progress(done, total, column)` after each one.

    Each column's generator is seeded from `seed` (the profile's content hash) and its name, so
    the tables do not depend on the order or the process the columns are simulated in. With
    `workers` above 1 (the command line passes the CPUs), large profiles are simulated by a pool
    of that many processes (at most 4; spawned, so a script calling this needs the usual
    `if __name__ == "__main__":` guard)."""
    names = list(samples)
    jobs = [(samples[n], _column_seed(seed, n)) for n in names]
    total_values = sum(s.n for s in samples.values())
    workers = min(workers, 4, len(names))
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
