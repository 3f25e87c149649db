"""Benchmark 1: evaluating one window against the reference, driftline vs Evidently.

    .venv/bin/python bench/bench_evaluation.py [--data tied,untied] [--reference-rows 100000] [--window-rows 10000]

100,000-row reference, 10,000-row window, 20 numerical + 5 categorical columns, default
methods, on two kinds of data: `tied` (a quarter of the numerical columns integers, another
quarter rounded to 2 decimals: many repeated values) and `untied` (every numerical value
distinct, as continuous measurements are). The baseline is Evidently's
`Report([DataDriftPreset()])` on the same DataFrames in the same process (its import is not
timed). driftline's time is `evaluate_window` with calibration on (the default) on a window
profile, the reference profile saved and loaded as the service loads it:

- **cold**: the first window after the profile is loaded and prepared as the service does when it
  loads a reference (`evaluation.prepare`: the monitor's false-alarm level), median over --cold-runs fresh loads;
- **warm**: the next ones (median of --runs).

Every per-column method, threshold and score is compared with Evidently's; the run fails if one
differs or if a speed-up is below --min-ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")

import numpy as np
import pandas as pd
from driftline.service.config import MonitorSettings
from driftline.service.drift import METHODS, ColumnKind
from driftline.service.evaluation import evaluate_window, prepare
from driftline.service.profile import WindowProfile
from driftline.service.reference import build_profile, load_profile, save_profile

N_NUM, N_CAT = 20, 5


def make_frame(rows: int, seed: int, shifted: bool, untied: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    shapes = np.random.default_rng(0)  # the same category distributions in every frame
    cols: dict[str, np.ndarray] = {}
    for i in range(N_NUM):
        shape = i % 4
        delta = 0.15 if shifted and i % 5 == 0 else 0.0
        if shape == 0:
            cols[f"num{i}"] = rng.normal(delta, 1.0, rows)
        elif shape == 1:
            cols[f"num{i}"] = rng.lognormal(delta, 0.8, rows)
        elif shape == 2:
            gamma = rng.gamma(2.0 + delta, 3.0, rows)
            cols[f"num{i}"] = gamma if untied else np.round(gamma, 2)
        elif untied:
            cols[f"num{i}"] = rng.uniform(0, 50, rows) + (3 if delta else 0)
        else:
            cols[f"num{i}"] = rng.integers(0, 50, rows).astype(float) + (3 if delta else 0)
    for j in range(N_CAT):
        k = 3 + 4 * j
        p = shapes.dirichlet(np.ones(k) * 3)
        if shifted and j == 0:
            p = np.roll(p, 1)
        cols[f"cat{j}"] = rng.choice([f"v{x}" for x in range(k)], rows, p=p)
    return pd.DataFrame(cols)


def evidently_scores(ref: pd.DataFrame, cur: pd.DataFrame) -> tuple[float, dict[str, tuple[str, float, float]]]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    names = {m.display_name: m.name for m in METHODS.values()}
    dd = DataDefinition(numerical_columns=[c for c in ref if c.startswith("num")],
                        categorical_columns=[c for c in ref if c.startswith("cat")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        snap = Report([DataDriftPreset()]).run(Dataset.from_pandas(cur, data_definition=dd),
                                               Dataset.from_pandas(ref, data_definition=dd))
        elapsed = time.perf_counter() - t0
    out = {}
    for m in snap.dict()["metrics"]:
        cfg = m["config"]
        if cfg["type"].endswith("ValueDrift"):
            out[cfg["column"]] = (names[cfg["method"]], cfg["threshold"], float(m["value"]))
    return elapsed, out


def window_profile(cur: pd.DataFrame, kinds: tuple[ColumnKind, ...]) -> WindowProfile:
    p = WindowProfile(kinds, 0.0, 1.0)
    rows = cur.to_dict("split")["data"]
    for row in rows:
        p.add(row, 0.5, None, None)
    return p


def run(kind: str, args: argparse.Namespace) -> bool:
    untied = kind == "untied"
    ref = make_frame(args.reference_rows, 1, shifted=False, untied=untied)
    cur = make_frame(args.window_rows, 2, shifted=True, untied=untied)
    args.workdir.mkdir(parents=True, exist_ok=True)
    ref.to_parquet(args.workdir / "ref.parquet")
    save_profile(build_profile(args.workdir / "ref.parquet"), args.workdir / "ref.dlref")
    names = tuple(ref.columns)
    profile = load_profile(args.workdir / "ref.dlref")
    kinds = tuple(profile.columns[n].kind for n in names)
    settings = MonitorSettings.model_validate({
        "name": "bench", "kafka": {"bootstrap_servers": ["127.0.0.1:9"], "topic": "t", "group_id": "g"},
        "reference": {"path": str(args.workdir / "ref.dlref")},
        "event": {"features": list(names)}, "window": {"type": "count", "size": 10**9, "min_events": 1}})
    window = window_profile(cur, kinds)

    base_times, theirs = [], {}
    for _ in range(args.baseline_runs):
        t, theirs = evidently_scores(ref, cur)
        base_times.append(t)
    cold_times = []
    for _ in range(args.cold_runs):
        fresh = load_profile(args.workdir / "ref.dlref")  # loading is not timed: the first window is
        prepare(fresh, settings, names)  # what the service does when it loads a reference
        t0 = time.perf_counter()
        evaluate_window(window, fresh, settings, names)
        cold_times.append(time.perf_counter() - t0)
    warm_times, result = [], None
    for _ in range(args.runs):
        t0 = time.perf_counter()
        result = evaluate_window(window, profile, settings, names)
        warm_times.append(time.perf_counter() - t0)
    assert result is not None and result.calibration == "on"

    mismatches = []
    for f in result.features:
        method, threshold, score = theirs[f.feature]
        if f.method != method or f.threshold != threshold or not np.isclose(f.score, score, rtol=1e-9, atol=1e-12):
            mismatches.append(f"{f.feature}: driftline {f.method} {f.score!r} vs Evidently {method} {score!r}")
    base = statistics.median(base_times)
    cold, warm = statistics.median(cold_times), statistics.median(warm_times)
    print(f"{kind} data: reference {args.reference_rows:,} rows, window {args.window_rows:,} rows, "
          f"{N_NUM} numerical + {N_CAT} categorical columns, default methods, calibration on")
    print(f"  baseline  Evidently Report([DataDriftPreset()])  median {base * 1000:9.1f} ms  "
          f"(min {min(base_times) * 1000:.1f}, {args.baseline_runs} runs)")
    print(f"  driftline evaluate_window, cold (first window)   median {cold * 1000:9.2f} ms  "
          f"(min {min(cold_times) * 1000:.2f}, {args.cold_runs} fresh loads)  {base / cold:.0f}x faster")
    print(f"  driftline evaluate_window, warm                  median {warm * 1000:9.2f} ms  "
          f"(min {min(warm_times) * 1000:.2f}, {args.runs} runs)  {base / warm:.0f}x faster")
    print(f"  cold / warm {cold / warm:.2f}; target {args.min_ratio:.0f}x")
    print(f"  scores    {len(result.features) - len(mismatches)}/{len(result.features)} columns equal Evidently's "
          f"(method, threshold, score to rel 1e-9); drifted: {', '.join(f.feature for f in result.drifted_features)}"
          f" (Evidently's thresholds alone: {', '.join(f.feature for f in result.features if f.plain_drifted)})")
    for m in mismatches:
        print("  MISMATCH", m)
    return not mismatches and min(base / cold, base / warm) >= args.min_ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="tied,untied", help="tied, untied or both (comma-separated)")
    ap.add_argument("--reference-rows", type=int, default=100_000)
    ap.add_argument("--window-rows", type=int, default=10_000)
    ap.add_argument("--baseline-runs", type=int, default=3)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--cold-runs", type=int, default=5)
    ap.add_argument("--min-ratio", type=float, default=200.0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/driftline-bench"))
    args = ap.parse_args()
    import evidently  # noqa: F401  (import cost is not part of the baseline)

    ok = [run(kind.strip(), args) for kind in args.data.split(",")]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
