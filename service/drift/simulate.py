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
  values drawn from the reference, with the tails of a continuous column modelled and values
  beyond the reference's range (`sim_ecdf.py`); 1,000,000 / m windows of m values (400 to
  10,000). Simulated up to 3,162 values: beyond, these measures follow their n^-1/2 law
  (`NoiseTable.floor`), which they have reached there (bench/bench_calibration.py --tails
  compares the two at 10,000).

Windows of the count-based measures: 400,000 / m (1,000 to 4,000). The noise tables are per
column: a feature's floor depends on its own distribution only. The features' correlation
enters at the dataset rule: with the training rows' order, windows of whole rows are simulated
too (`sim_rows.py`), from which the service chooses each monitor's level (`level.py`). Each
column's draws come from its own generator, seeded from the reference's content, and the whole
rows from the rows' own content: the same training data gives the same floors, in any order.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import ColumnKind, ColumnSample
from .binned import histogram_of_sorted, sturges_edges
from .level import JointNoise
from .noise import GRID, NoiseTable, TailFit
from .sim_counts import CATEGORICAL_MEASURES, CountModel
from .sim_ecdf import Ecdf
from .sim_rows import JOINT_WINDOWS, ColumnRows, canonical_order, column_levels, joint_sizes

# Windows a size: many small ones, where the floors decide most often. The tail is fitted above
# the top 100 (`noise.TailFit`): 10,000 windows put that at the 99th percentile, one decade from
# the levels used (1 in 1,000 to 1 in 100), so the extrapolation, and its error, stay short.
COUNT_WORK = 400_000  # count-based measures: COUNT_WORK / m windows of m values …
REPLICATES = (1_000, 4_000)  # … within these bounds
ECDF_WORK = 1_000_000  # empirical-CDF measures: ECDF_WORK / m windows (each costs m values) …
ECDF_REPLICATES = (400, 10_000)  # … within these bounds
ECDF_MAX_SIZE = 3_200  # above, the empirical-CDF measures follow their n^-1/2 law
_DIRECT_VALUES = 20  # binned methods compare value by value up to this many (binned.py)
_COUNTS_MAX_VALUES = 1000  # chisquare / z effect sizes are simulated for numerical columns this small
# A window keeps at most 10,000 categories of a feature (window.py): a reference with more holds
# free text or identifiers, which no drift method compares usefully; no floors are simulated.
MAX_CATEGORIES = 10_000


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
        reps = [max(200, min(count_replicates(m), 2_000_000 // sample.nunique)) for m in sizes]
        for m, n in zip(sizes, reps, strict=True):
            _collect(draws, counts.measures(m, n, rng, CATEGORICAL_MEASURES))
        replicates.update({name: tuple(reps) for name in draws})
    else:
        _simulate_numerical(sample, sizes, rng, draws, replicates)
    fits = {name: tuple(TailFit.of(name, v) for v in values) for name, values in draws.items()}
    return NoiseTable(sizes, fits, replicates)


def count_replicates(m: int) -> int:
    return min(max(COUNT_WORK // m, REPLICATES[0]), REPLICATES[1])


def ecdf_replicates(m: int) -> int:
    return min(max(ECDF_WORK // m, ECDF_REPLICATES[0]), ECDF_REPLICATES[1])


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
        reps = count_replicates(m)
        if uniques.size <= _DIRECT_VALUES and direct is not None:
            found = direct.measures(m, reps, rng, binned)
        else:  # Sturges bins over the reference's range for a window of m values inside it
            bins = CountModel(histogram_of_sorted(r, sturges_edges(r[0], r[-1], r.size + m)), keyed=False)
            found = bins.measures(m, reps, rng, binned)
        found["hellinger"] = hellinger.hellinger_binned(m, reps, rng, hellinger_edges)
        if direct is not None:
            found.update(direct.measures(m, reps, rng, ("cohens_w", "cohens_h")))
        if m <= ECDF_MAX_SIZE:
            found.update(ecdf.measures(m, ecdf_replicates(m), rng))
        _collect(draws, found)
        for name, values in found.items():
            replicates[name] = (*replicates.get(name, ()), values.size)


CalibrationProgress = Callable[[int, int, str], None]
# Below this many reference values in all, the columns are simulated in this process (a pool's
# start-up would cost more than it saves). The demo's 50,000 rows x 13 columns: 18.7 s in one
# process, 16.0 s with a pool of two on a 2-core machine.
_POOL_MIN_VALUES = 200_000


@dataclass(frozen=True)
class Simulated:
    """A profile's simulations: each column's noise table, and its whole-row windows' levels
    (None without the training rows' order)."""

    tables: dict[str, NoiseTable]
    joint: JointNoise | None


def simulate_columns(samples: dict[str, ColumnSample], seed: str, progress: CalibrationProgress | None = None,
                     workers: int = 1, rows: dict[str, ColumnRows] | None = None) -> Simulated:
    """The noise table of every column and, given the training rows (`rows`, each column's
    values in row order), the whole-row windows' levels; `progress(done, total, column)`
    after each column.

    Each column's generator is seeded from `seed` (the profile's content hash) and its name, so
    the tables do not depend on the order or the process the columns are simulated in; the
    whole-row windows' rows are drawn from `seed` alone, the same for every column. With
    `workers` above 1 (the command line passes the CPUs), large profiles are simulated by a pool
    of that many processes (at most 4; spawned, so a script calling this needs the usual
    `if __name__ == "__main__":` guard)."""
    names = list(samples)
    sizes = joint_sizes(next(iter(rows.values())).index.size) if rows else ()
    row_seed = _column_seed(seed, "\0whole rows") % (1 << 31)
    rows = canonical_order(rows) if rows else None
    jobs = [(samples[n], _column_seed(seed, n), rows[n].index if rows else None) for n in names]
    total_values = sum(s.n for s in samples.values())
    workers = min(workers, 4, len(names))
    found: dict[str, tuple[NoiseTable, dict[str, np.ndarray]]] = {}
    if workers <= 1 or total_values < _POOL_MIN_VALUES:
        for done, (name, (sample, column_seed, index)) in enumerate(zip(names, jobs, strict=True), 1):
            found[name] = _simulate_column(sample, column_seed, index, sizes, row_seed)
            if progress:
                progress(done, len(names), name)
    else:
        context = multiprocessing.get_context("spawn")  # never fork a process that may run threads
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(_simulate_job, sample.kind, sample.sorted if sample.kind is ColumnKind.NUMERICAL
                                   else (sample.labels, sample.counts), column_seed, index, sizes, row_seed): name
                       for name, (sample, column_seed, index) in zip(names, jobs, strict=True)}
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                name = futures[future]
                table, codes = future.result()
                found[name] = (NoiseTable.from_json(table), codes)
                if progress:
                    progress(done, len(names), name)
    tables = {n: found[n][0] for n in names}
    joint = JointNoise(sizes, JOINT_WINDOWS, {n: found[n][1] for n in names if found[n][1]}) if rows else None
    return Simulated(tables, joint)


def _simulate_column(sample: ColumnSample, column_seed: int, index: np.ndarray | None, sizes: tuple[int, ...],
                     row_seed: int) -> tuple[NoiseTable, dict[str, np.ndarray]]:
    rng = np.random.default_rng(column_seed)
    table = simulate(sample, rng)
    if index is None or not table.fits:
        return table, {}
    return table, column_levels(sample, ColumnRows(index), sizes, row_seed, rng)


def _column_seed(seed: str, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{name}".encode()).digest()[:8], "little")


def _simulate_job(kind: ColumnKind, data: Any, column_seed: int, index: np.ndarray | None, sizes: tuple[int, ...],
                  row_seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if kind is ColumnKind.NUMERICAL:
        sample = ColumnSample.from_sorted(data)
    else:
        sample = ColumnSample(kind, labels=data[0], counts=data[1])
    table, codes = _simulate_column(sample, column_seed, index, sizes, row_seed)
    return table.to_json(), codes
