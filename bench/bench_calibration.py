"""Benchmark: false alarms and detection delays, Evidently's plain thresholds vs driftline's calibrated ones.

    .venv/bin/python bench/bench_calibration.py [--windows 1000] [--sizes N ...] [--sequences 20] [--tails]
        [--only SECTION ...]

Data from tests/simulation.py: a dozen features of the shapes serving data has (normal, skewed,
heavy-tailed, counts, rounded values with ties, 40% missing, binary, 4, 5 and 30 categories, two
copies of one feature, half of them correlated through one factor), a reference of 20,000 rows
(Evidently's defaults: wasserstein, jensenshannon) and one of 800 (ks, chisquare, z). Evidently's
verdicts are driftline's with `drift.calibration: off` (the tests hold them equal to Evidently's),
so the baseline costs no Evidently run and is measured on the very same windows.

1. **No drift**: --windows windows at each size (--sizes: 100 to 5,000 events by default),
   each drawn afresh from the population: the share of features flagged and the windows
   declared dataset drift (drift_share 0.5).
2. **Drift**: --sequences sequences of windows at 1,000 and 5,000 events, three without drift
   then drift (abrupt: from the fourth window on; gradual: growing every window): per drifted
   feature, the first window from the drift's onset each flags; the delay is driftline's
   first minus Evidently's.
3. With --tails (--only tails): the fitted tails (noise.TailFit from as many windows as a build
   draws at that size; 25 fits each) against the quantiles of 100,000 simulated windows, and the
   n^-1/2 law carrying the empirical-CDF floors from 3,162 to 10,000 values against a direct
   simulation at 10,000.
4. **The level by monitor** (--only levels): the per-feature level each monitor gets at 100
   events, and the dataset rule's (from the whole-row windows, or Markov's bound), its false
   alarms without drift at 100 and 1,000 events (and Evidently's windows with dataset drift at
   1,000), and how late a slow drift (0.02 sd a window on `normal`, 1,000-event windows) is
   flagged per feature and declared dataset drift: behind Evidently's first dataset drift, and
   ("beyond") behind its first in a window whose population (100,000 rows of it) is itself
   declared dataset drift by Evidently, from 0.1 sd on; before that Evidently's is noise.
5. **A small heavy-tailed reference** (--only heavy): a lognormal column, 2,000 training rows,
   windows of 100 new events without drift, several references: the share declared dataset
   drift against the dataset's level, as a one-feature monitor (its dataset level is
   `false_alarm_rate`) at 0.001 and 0.005.
6. **Where the two demands meet** (--only conflict): a one-feature monitor (its dataset level is
   `false_alarm_rate`, 1 in 1,000) on `normal` at 1,000 events. Without drift: how often
   Evidently's own verdict flags a window, the feature's and the dataset's lines, and the exact
   99.9th percentile of the score. On --sequences x 5 slow drifts (0.02 sd a window): how late
   against Evidently driftline flags the feature and declares dataset drift, a line at that
   exact percentile would, a two-window rule would (a lower line this window and the previous
   one must both pass, the level split so that their union stays 1 in 1,000), and driftline's
   dataset drift with `false_alarm_rate` 0.003; and how often Evidently's first flag is not
   repeated in the next window (there, flagging at most one window later means flagging
   exactly where Evidently first did).
7. **Where the dataset's rate binds** (--only binding): 12 features with drift_share 0.1, whose
   dataset level the dataset's rate sets (not the features' cap): windows declared dataset drift without
   drift at 100, 500 and 2,000 events (--windows 10000 to resolve 1 in 1,000).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.simulation, run from anywhere

import pandas as pd
from driftline.service.config import MonitorSettings
from driftline.service.drift import ColumnKind
from driftline.service.evaluation import evaluate_window
from driftline.service.reference import ReferenceProfile, build_profile

from tests.simulation import (
    DATASET,
    FEATURES,
    ArrayWindow,
    Population,
    delay_counts,
    first_flagged,
    first_flags,
    settings,
    windows,
)

SIZES = (100, 500, 1_000, 2_000, 5_000)
ABRUPT = {"small": {"normal": 0.15, "rounded": 0.15, "few": 0.3},
          "medium": {"normal": 0.3, "skewed": 0.3, "rounded": 0.3, "count": 0.5, "few": 0.5, "region": 0.6},
          "large": {"normal": 1.0, "skewed": 1.0, "heavy": 1.0, "sparse": 1.0, "few": 0.8, "many": 0.8}}
GRADUAL = {"slow (0.02 sd a window)": 0.02, "fast (0.05 sd a window)": 0.05}


def reference(rows: int, workdir: Path) -> ReferenceProfile:
    path = workdir / f"reference-{rows}.parquet"
    Population().frame(rows, np.random.default_rng(rows)).to_parquet(path, index=False)
    return build_profile(path)


def false_alarms(ref: ReferenceProfile, workdir: Path, count: int, sizes: tuple[int, ...] = SIZES) -> None:
    off, on = settings(workdir, calibration="off"), settings(workdir)
    [w] = windows(Population(), 100, 1, seed=0)
    r = evaluate_window(w, ref, on, FEATURES)
    print(f"  level {r.false_alarm_level:.3g} per feature at 100 events "
          f"({getattr(r, 'false_alarm_level_basis', None)}), {len(FEATURES)} features, drift_share 0.5")
    print(f"  {'window':>7}  {'Evidently: features flagged':>28}  {'dataset drift':>14}  "
          f"{'driftline: features flagged':>28}  {'dataset drift':>14}")
    for size in sizes:
        flagged, dataset = {"off": 0, "on": 0}, {"off": 0, "on": 0}
        for w in windows(Population(), size, count, seed=size):
            for mode, st in (("off", off), ("on", on)):
                r = evaluate_window(w, ref, st, FEATURES)
                flagged[mode] += len(r.drifted_features)
                dataset[mode] += r.dataset_drift
        n = count * len(FEATURES)
        print(f"  {size:>7,}  {100 * flagged['off'] / n:>27.2f}%  {dataset['off']:>7} of {count:<4}  "
              f"{100 * flagged['on'] / n:>27.2f}%  {dataset['on']:>7} of {count:<4}")


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
            missed = 0
            gaps: list[int] = []
            for seed in range(sequences):
                for theirs, ours, _ in first_flags(ref, workdir, shifts, size, seed).values():
                    if theirs is None:
                        continue
                    caught["off"] += 1
                    if ours is None:
                        missed += 1
                        continue
                    caught["on"] += 1
                    gaps.append(ours - theirs)
            same, one, later = delay_counts(gaps)
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

    def check(name: str, measure: str, m: int, values: np.ndarray) -> None:
        from driftline.service.drift.simulate import count_replicates, ecdf_replicates

        # as many windows as a build draws at that size
        fit_size = ecdf_replicates(m) if measure in ("wasserstein", "ks_statistic") else count_replicates(m)
        for level in (5e-3, 1e-3):
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
                check(name, measure, m, np.concatenate([p[measure] for p in parts]))
    for k in (2, 10, 50):
        p = np.random.default_rng(k).dirichlet(np.ones(k) * 3)
        model = CountModel((p * 100_000).astype(int) + 1)
        for m in (100, 1_000):
            values = model.measures(m, 100_000, rng, ("jensenshannon",))["jensenshannon"]
            check(f"{k} categories", "jensenshannon", m, values)
    print()
    print("  the n^-1/2 law from 3,162 to 10,000 values (quantile ratio carried / simulated, 2,000 windows each):")
    for name, data in columns.items():
        ecdf = Ecdf(ColumnSample.from_sorted(np.sort(data)).prepare())
        small, large = ecdf.measures(3_162, 2_000, rng), ecdf.measures(10_000, 2_000, rng)
        ratios = [f"{m} {np.quantile(small[m], 0.99) * (3_162 / 10_000) ** 0.5 / np.quantile(large[m], 0.99):.3f}"
                  for m in ("wasserstein", "ks_statistic", "ed", "cohens_d")]
        print(f"    {name:<22} " + ", ".join(ratios))


MONITORS = {"12 features, drift_share 0.5": (FEATURES, 0.5), "12 features, drift_share 0.1": (FEATURES, 0.1),
            "4 features (two copies), 0.5": (("normal", "rounded", "copy_a", "copy_b"), 0.5),
            "2 copies of one feature, 0.5": (("copy_a", "copy_b"), 0.5), "1 feature": (("normal",), 0.5)}


def levels(ref: ReferenceProfile, workdir: Path, count: int, sequences: int) -> None:
    """Each monitor's level, its false alarms without drift, and a slow drift's delay."""
    from driftline.service.drift.noise import feature_level

    print(f"  {'monitor':<30} {'level':>8}  {'dataset':>8}  {'basis':<10} {'Markov':>8}  "
          f"{'no drift, features flagged / dataset drift':>44}  {'Evidently':>9}  "
          f"{'slow drift at 1,000: same / one later / later':>46}  {'dataset drift':>13}  {'beyond':>12}")
    slow = [{"normal": 0.02 * i, "copy": 0.02 * i} for i in range(16)]  # up to 0.3 sd: Evidently flags by then
    for label, (names, share) in MONITORS.items():
        st = settings(workdir, features=names, drift_share=share)
        plain = settings(workdir, features=names, drift_share=share, calibration="off")
        [w] = windows(Population(), 100, 1, seed=0, features=names)
        r = evaluate_window(w, ref, st, names)
        markov = feature_level(0.001, share, len(names))
        alarms, theirs_alarms = [], 0
        for size in (100, 1_000):
            flagged = dataset = 0
            for w in windows(Population(), size, count, seed=size + 7, features=names):
                r2 = evaluate_window(w, ref, st, names)
                flagged += len(r2.drifted_features)
                dataset += r2.dataset_drift
                if size == 1_000:
                    theirs_alarms += evaluate_window(w, ref, plain, names).dataset_drift
            alarms.append(f"{size:,}: {100 * flagged / (count * len(names)):.2f}% / {dataset}")
        gaps: dict[bool, list[int]] = {False: [], True: []}  # per feature, dataset drift
        beyond: list[int] = []  # dataset drift behind Evidently's first while the population is beyond
        shifted = {"normal"} if "normal" in names else {"copy_a", "copy_b"}
        for seed in range(sequences):
            found = first_flags(ref, workdir, slow, 1_000, seed, names, share, shifted | {DATASET})
            for name, (theirs, ours, theirs_beyond) in found.items():
                if theirs is not None:
                    gaps[name == DATASET].append(99 if ours is None else ours - theirs)
                if name == DATASET and theirs_beyond is not None:
                    beyond.append(99 if ours is None else ours - theirs_beyond)
        delay = " / ".join(map(str, delay_counts(gaps[False])))
        print(f"  {label:<30} {r.false_alarm_level:>8.2g}  {r.dataset_false_alarm_level:>8.2g}  "
              f"{r.false_alarm_level_basis or '-':<10} "
              f"{markov:>8.2g}  {', '.join(alarms) + f' of {count:,}':>44}  {theirs_alarms:>9}  {delay:>46}  "
              f"{' / '.join(map(str, delay_counts(gaps[True]))):>13}  {' / '.join(map(str, delay_counts(beyond))):>12}")


def conflict(ref: ReferenceProfile, workdir: Path, sequences: int, drift_free: int = 100_000) -> None:
    """Section 6: Evidently's timing on slow drift against the 1-in-1,000 rate, at 1,000 events."""
    names, size, level = ("normal",), 1_000, 0.001
    st = settings(workdir, features=names, calibration="off")

    def scores(population: Population, count: int, seed: int) -> np.ndarray:
        out = []
        for chunk in range(0, count, 5_000):  # a window of 1,000 rows at a time would be slow, all at once large
            ws = windows(population, size, min(5_000, count - chunk), seed=seed + chunk, features=names)
            out += [evaluate_window(w, ref, st, names).features[0].score for w in ws]
        return np.array(out)

    quiet = scores(Population(), drift_free, seed=99)
    on, looser = settings(workdir, features=names), settings(workdir, features=names, false_alarm_rate=0.003)
    [sample] = windows(Population(), size, 1, seed=0, features=names)
    threshold = evaluate_window(sample, ref, st, names).features[0].threshold or 0.0
    exact = float(np.quantile(quiet, 1 - level))
    high, low = np.quantile(quiet, 1 - 0.8 * level), np.quantile(quiet, 1 - math.sqrt(0.2 * level))
    def verdicts(w: ArrayWindow) -> tuple[float | None, bool, bool, bool]:
        r = evaluate_window(w, ref, on, names)
        return (evaluate_window(w, ref, st, names).features[0].score, r.features[0].drifted, r.dataset_drift,
                evaluate_window(w, ref, looser, names).dataset_drift)

    runs = [verdicts(w) for s in range(sequences) for i in range(16)
            for w in windows(Population(shift={"normal": 0.02 * i}), size, 1, seed=7_000 + 100 * s + i, features=names)]
    seqs, feature, ours, loose = (np.array(column).reshape(sequences, 16) for column in zip(*runs, strict=True))

    def tally(rule: np.ndarray) -> str:
        firsts = [(first_flagged(r), first_flagged(e)) for r, e in zip(rule, seqs >= threshold, strict=True)]
        return " / ".join(map(str, delay_counts([99 if ours is None else ours - theirs
                                                 for ours, theirs in firsts if theirs is not None])))

    both = (seqs >= threshold) & (seqs >= low) & np.pad(seqs >= low, ((0, 0), (1, 0)))[:, :-1]
    starts = [first_flagged(e) for e in seqs >= threshold]
    blips = sum(t is not None and t + 1 < 16 and s[t + 1] < threshold for t, s in zip(starts, seqs, strict=True))

    def rate(monitor: MonitorSettings, dataset: bool = True) -> str:  # a line at 1,000 values, on the same windows
        f = evaluate_window(sample, ref, monitor, names).features[0]
        line = max(f.threshold or 0.0, f.dataset_noise_floor or 0.0) if dataset else f.decision_threshold or 0.0
        return f"{(quiet >= line).mean() * 1000:.1f} (line {line:.4f})"

    print(f"  without drift ({drift_free:,} windows), flagged in 1,000: Evidently {rate(st)}; driftline: the feature "
          f"{rate(on, dataset=False)}, dataset drift {rate(on)}, with false_alarm_rate 0.003 {rate(looser)}; the "
          f"exact 99.9th percentile is {exact:.4f}")
    print(f"  slow drift, {sequences} sequences, same / one later / later than Evidently: driftline's feature "
          f"{tally(feature)}, its dataset drift {tally(ours)}; a line at that percentile "
          f"{tally(seqs >= max(threshold, exact))}; two windows (lines {high:.3f}, and {low:.3f} twice) "
          f"{tally((seqs >= max(threshold, high)) | both)}; driftline's dataset drift with false_alarm_rate 0.003 "
          f"{tally(loose)}")
    print(f"  Evidently's first flag is not repeated in the next window in {blips} of {sequences} sequences")


def binding(ref: ReferenceProfile, workdir: Path, count: int) -> None:
    """12 correlated features, drift_share 0.1 (two drifted are dataset drift): the dataset's rate,
    not the features' cap, sets the level; windows without drift declared dataset drift."""
    st = settings(workdir, drift_share=0.1)
    for size in (100, 500, 2_000):
        dataset = flagged = 0
        for w in windows(Population(), size, count, seed=4242 + size):
            r = evaluate_window(w, ref, st, FEATURES)
            dataset += r.dataset_drift
            flagged += len(r.drifted_features)
        print(f"  {size:>6,} events: level {r.false_alarm_level:.2g}, the dataset rule's "
              f"{r.dataset_false_alarm_level:.2g} ({r.false_alarm_level_basis}), dataset drift in "
              f"{dataset} of {count:,} windows, {100 * flagged / (count * len(FEATURES)):.3f}% of features flagged")


def heavy(workdir: Path, references: int, count: int) -> None:
    """A lognormal column, 2,000 training rows, 100-event windows of new data without drift."""
    print(f"  {'level':>6}  {'flagged / level: mean over references':>38}  {'median':>6}  {'worst':>6}"
          f"  {'references above the level':>28}")
    rng = np.random.default_rng(2000)
    refs = []
    for i in range(references):
        path = workdir / f"lognormal-{i}.parquet"
        pd.DataFrame({"x": rng.lognormal(0, 1, 2_000)}).to_parquet(path, index=False)
        refs.append(build_profile(path))
    for level in (0.001, 0.005):
        st = settings(workdir, features=("x",), false_alarm_rate=level)
        ratios = []
        for ref in refs:
            data = rng.lognormal(0, 1, (count, 100))
            flagged = sum(evaluate_window(ArrayWindow([row], [ColumnKind.NUMERICAL]), ref, st, ("x",)).dataset_drift
                          for row in data)
            ratios.append(flagged / count / level)
        print(f"  {level:>6}  {np.mean(ratios):>38.2f}  {np.median(ratios):>6.2f}  {max(ratios):>6.2f}"
              f"  {sum(r > 1 for r in ratios):>19} of {references}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=1_000, help="windows per size without drift")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES),
                    help="window sizes of section 1 (e.g. sizes between the noise grid's: 150 250 400 650 800 1300)")
    ap.add_argument("--sequences", type=int, default=20, help="sequences per drift scenario and size")
    ap.add_argument("--tails", action="store_true", help="also check the fitted tails and the n^-1/2 law")
    ap.add_argument("--only", nargs="+", choices=("table", "tails", "levels", "conflict", "binding", "heavy"),
                    help="only these sections (table: 1 and 2)")
    ap.add_argument("--heavy-windows", type=int, default=20_000, help="windows per reference in section 5")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/driftline-bench-calibration"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    only = set(args.only or ("table", "levels", "conflict", "binding", "heavy", *(("tails",) if args.tails else ())))
    for rows in (20_000, 800) if "table" in only else ():
        ref = reference(rows, args.workdir)
        methods = sorted({evaluate_window(w, ref, settings(args.workdir), FEATURES).features[i].method or ""
                          for w in windows(Population(), 500, 1, seed=1) for i in range(len(FEATURES))})
        print(f"reference of {rows:,} rows (default methods: {', '.join(methods)})")
        print(f"1. no drift, {args.windows:,} windows a size")
        false_alarms(ref, args.workdir, args.windows, tuple(args.sizes))
        if rows == 20_000:
            print(f"2. drift, {args.sequences} sequences a scenario (per drifted feature: when each first flags it)")
            delays(ref, args.workdir, args.sequences)
        print()
    if "tails" in only:
        print("3. fitted tails against 100,000 simulated windows")
        tails()
        print()
    if "levels" in only:
        print(f"4. the level by monitor (reference of 20,000 rows; {args.windows:,} windows a size without drift, "
              f"{args.sequences} sequences of slow drift)")
        levels(reference(20_000, args.workdir), args.workdir, args.windows, args.sequences)
        print()
    if "conflict" in only:
        print("6. where the two demands meet: one feature at 1,000 events, false_alarm_rate 1 in 1,000")
        conflict(reference(20_000, args.workdir), args.workdir, 5 * args.sequences)
        print()
    if "binding" in only:
        print(f"7. where the dataset's rate binds: 12 features, drift_share 0.1, {args.windows:,} windows a size")
        binding(reference(20_000, args.workdir), args.workdir, args.windows)
        print()
    if "heavy" in only:
        print(f"5. a small heavy-tailed reference: lognormal, 2,000 rows, 10 references x {args.heavy_windows:,} "
              "windows of 100 events without drift")
        heavy(args.workdir, 10, args.heavy_windows)
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
