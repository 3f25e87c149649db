"""Benchmark: false alarms and detection delays, Evidently's plain thresholds vs driftline's calibrated ones.

    .venv/bin/python bench/bench_calibration.py [--windows 1000] [--sequences 20] [--tails]

Data from tests/simulation.py: a dozen features of the shapes serving data has (normal, skewed,
heavy-tailed, counts, rounded values with ties, 40% missing, binary, 4, 5 and 30 categories, two
copies of one feature, half of them correlated through one factor), a reference of 20,000 rows
(Evidently's defaults: wasserstein, jensenshannon) and one of 800 (ks, chisquare, z). Evidently's
verdicts are driftline's with `drift.calibration: off` (the tests hold them equal to Evidently's),
so the baseline costs no Evidently run and is measured on the very same windows.

1. **No drift**: --windows windows at each size, each drawn afresh from the population: the
   share of features flagged and the windows declared dataset drift (drift_share 0.5).
2. **Drift**: --sequences sequences of windows at 1,000 and 5,000 events, three without drift
   then drift (abrupt: from the fourth window on; gradual: growing every window): per drifted
   feature, the first window from the drift's onset each flags; the delay is driftline's
   first minus Evidently's.
3. With --tails (--only-tails): the fitted tails (noise.TailFit from 400 or 1,000 windows, as a
   build draws them; 25 fits each) against the quantiles of 100,000 simulated windows, and the
   n^-1/2 law carrying the empirical-CDF floors from 3,162 to 10,000 values against a direct
   simulation at 10,000.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.simulation, run from anywhere

from driftline.service.evaluation import evaluate_window
from driftline.service.reference import ReferenceProfile, build_profile

from tests.simulation import FEATURES, Population, settings, windows

SIZES = (100, 500, 1_000, 2_000, 5_000)
ABRUPT = {"small": {"normal": 0.15, "rounded": 0.15, "few": 0.3},
          "medium": {"normal": 0.3, "skewed": 0.3, "rounded": 0.3, "count": 0.5, "few": 0.5, "region": 0.6},
          "large": {"normal": 1.0, "skewed": 1.0, "heavy": 1.0, "sparse": 1.0, "few": 0.8, "many": 0.8}}
GRADUAL = {"slow (0.02 sd a window)": 0.02, "fast (0.05 sd a window)": 0.05}


def reference(rows: int, workdir: Path) -> ReferenceProfile:
    path = workdir / f"reference-{rows}.parquet"
    Population().frame(rows, np.random.default_rng(rows)).to_parquet(path, index=False)
    return build_profile(path)


def false_alarms(ref: ReferenceProfile, workdir: Path, count: int) -> None:
    off, on = settings(workdir, calibration="off"), settings(workdir)
    print(f"  {'window':>7}  {'Evidently: features flagged':>28}  {'dataset drift':>14}  "
          f"{'driftline: features flagged':>28}  {'dataset drift':>14}")
    for size in SIZES:
        flagged, dataset = {"off": 0, "on": 0}, {"off": 0, "on": 0}
        for w in windows(Population(), size, count, seed=size):
            for mode, st in (("off", off), ("on", on)):
                r = evaluate_window(w, ref, st, FEATURES)
                flagged[mode] += len(r.drifted_features)
                dataset[mode] += r.dataset_drift
        n = count * len(FEATURES)
        print(f"  {size:>7,}  {100 * flagged['off'] / n:>27.2f}%  {dataset['off']:>7} of {count:<4}  "
              f"{100 * flagged['on'] / n:>27.2f}%  {dataset['on']:>7} of {count:<4}")


def first_flags(ref: ReferenceProfile, workdir: Path, shifts: list[dict[str, float]], size: int,
                seed: int) -> dict[str, tuple[int | None, int | None]]:
    verdicts: dict[str, dict[str, list[bool]]] = {"off": {}, "on": {}}
    for i, shift in enumerate(shifts):
        [w] = windows(Population(shift=shift), size, 1, seed=seed * 1000 + i)
        for mode in ("off", "on"):
            for f in evaluate_window(w, ref, settings(workdir, calibration=mode), FEATURES).features:
                verdicts[mode].setdefault(f.feature, []).append(f.drifted)

    onset = next(i for i, shift in enumerate(shifts) if any(shift.values()))

    def first(flags: list[bool]) -> int | None:  # from the drift's onset: a flag before it is a false alarm
        return next((i - onset for i, f in enumerate(flags) if f and i >= onset), None)

    names = {n for s in shifts for n in s}
    return {n: (first(verdicts["off"][n]), first(verdicts["on"][n])) for n in sorted(names)}


def delays(ref: ReferenceProfile, workdir: Path, sequences: int) -> None:
    print(f"  {'scenario':<34} {'window':>6}  {'Evidently caught':>16}  {'driftline caught':>16}  "
          f"{'same window':>11}  {'one later':>9}  {'later':>5}  {'missed':>6}  {'mean delay':>10}")
    scenarios: list[tuple[str, list[dict[str, float]]]] = [
        (f"abrupt, {name}", [{}] * 3 + [shift] * 6) for name, shift in ABRUPT.items()]
    scenarios += [(f"gradual, {name}", [{"normal": step * i, "rounded": step * i, "few": step * i}
                                         for i in range(int(1 / step) + 3)]) for name, step in GRADUAL.items()]
    for label, shifts in scenarios:
        for size in (1_000, 5_000):
            caught = {"off": 0, "on": 0}
            same = one = later = missed = 0
            gaps: list[int] = []
            for seed in range(sequences):
                for theirs, ours in first_flags(ref, workdir, shifts, size, seed).values():
                    if theirs is None:
                        continue
                    caught["off"] += 1
                    if ours is None:
                        missed += 1
                        continue
                    caught["on"] += 1
                    gap = ours - theirs
                    gaps.append(gap)
                    same += gap <= 0
                    one += gap == 1
                    later += gap > 1
            mean = f"{np.mean(gaps):+.2f}" if gaps else "-"
            print(f"  {label:<34} {size:>6,}  {caught['off']:>16}  {caught['on']:>16}  {same:>11}  {one:>9}  "
                  f"{later:>5}  {missed:>6}  {mean:>10}")


def tails() -> None:
    from driftline.service.drift import ColumnSample
    from driftline.service.drift.noise import TailFit
    from driftline.service.drift.sim_counts import CountModel
    from driftline.service.drift.sim_ecdf import Ecdf

    rng = np.random.default_rng(0)
    print(f"  {'column':<22} {'measure':<14} {'window':>6}  {'level':>7}  {'fitted floor':>12}  "
          f"{'exact quantile':>14}  {'windows above the floor, mean over 25 fits (worst)':>50}")

    def check(name: str, measure: str, m: int, values: np.ndarray, fit_size: int) -> None:
        from driftline.service.drift.simulate import ECDF_REPLICATES, ECDF_WORK

        if measure in ("wasserstein", "ks_statistic"):  # as many windows as a build draws at that size
            fit_size = min(max(ECDF_WORK // m, ECDF_REPLICATES[0]), ECDF_REPLICATES[1])
        for level in (1e-3, 2.5e-4):
            fits = [TailFit.of(measure, rng.choice(values, fit_size, replace=False)).quantile(measure, level)
                    for _ in range(25)]
            rates = [(values >= f).mean() / level for f in fits]
            print(f"  {name:<22} {measure:<14} {m:>6,}  {level:>7.2g}  {np.median(fits):>12.4f}  "
                  f"{np.quantile(values, 1 - level):>14.4f}  {np.mean(rates):>41.2f}x ({max(rates):.1f}x)")

    columns = {"normal": rng.normal(0, 1, 100_000), "lognormal(0.8)": rng.lognormal(0, 0.8, 100_000),
               "integers 0..49": rng.integers(0, 50, 100_000).astype(float)}
    for name, data in columns.items():
        ecdf = Ecdf(ColumnSample.from_sorted(np.sort(data)).prepare())
        for m in (100, 1_000):
            parts = [ecdf.measures(m, 5_000, rng) for _ in range(20)]
            for measure in ("wasserstein", "ks_statistic"):
                check(name, measure, m, np.concatenate([p[measure] for p in parts]), 400)
    for k in (2, 10, 50):
        p = np.random.default_rng(k).dirichlet(np.ones(k) * 3)
        model = CountModel((p * 100_000).astype(int) + 1)
        for m in (100, 1_000):
            values = model.measures(m, 100_000, rng, ("jensenshannon",))["jensenshannon"]
            check(f"{k} categories", "jensenshannon", m, values, 1_000)
    print()
    print("  the n^-1/2 law from 3,162 to 10,000 values (quantile ratio carried / simulated, 2,000 windows each):")
    for name, data in columns.items():
        ecdf = Ecdf(ColumnSample.from_sorted(np.sort(data)).prepare())
        small, large = ecdf.measures(3_162, 2_000, rng), ecdf.measures(10_000, 2_000, rng)
        ratios = [f"{m} {np.quantile(small[m], 0.99) * (3_162 / 10_000) ** 0.5 / np.quantile(large[m], 0.99):.3f}"
                  for m in ("wasserstein", "ks_statistic", "ed", "cohens_d")]
        print(f"    {name:<22} " + ", ".join(ratios))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=1_000, help="windows per size without drift")
    ap.add_argument("--sequences", type=int, default=20, help="sequences per drift scenario and size")
    ap.add_argument("--tails", action="store_true", help="also check the fitted tails and the n^-1/2 law")
    ap.add_argument("--only-tails", action="store_true", help="only that check")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/driftline-bench-calibration"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for rows in () if args.only_tails else (20_000, 800):
        ref = reference(rows, args.workdir)
        methods = sorted({evaluate_window(w, ref, settings(args.workdir), FEATURES).features[i].method or ""
                          for w in windows(Population(), 500, 1, seed=1) for i in range(len(FEATURES))})
        print(f"reference of {rows:,} rows (default methods: {', '.join(methods)})")
        print(f"1. no drift, {args.windows:,} windows a size")
        false_alarms(ref, args.workdir, args.windows)
        if rows == 20_000:
            print(f"2. drift, {args.sequences} sequences a scenario (per drifted feature: when each first flags it)")
            delays(ref, args.workdir, args.sequences)
        print()
    if args.tails or args.only_tails:
        print("3. fitted tails against 100,000 simulated windows")
        tails()
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
