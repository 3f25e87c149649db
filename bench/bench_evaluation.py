"""Benchmark 1: evaluating one window against the reference, driftline vs Evidently.

    .venv/bin/python bench/bench_evaluation.py [--reference-rows 100000] [--window-rows 10000]

100,000-row reference, 10,000-row window, 20 numerical + 5 categorical columns, default
methods. The baseline is Evidently's `Report([DataDriftPreset()])` on the same DataFrames
in the same process (its import is not timed); driftline's time is `evaluate_window` on a
window profile with the reference profile loaded once, as the service does. Every
per-column method, threshold and score is compared; the run fails if one differs or if
the speed-up is below --min-ratio.
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
from driftline.service.evaluation import evaluate_window
from driftline.service.profile import WindowProfile
from driftline.service.reference import build_profile

N_NUM, N_CAT = 20, 5


def make_frame(rows: int, seed: int, shifted: bool) -> pd.DataFrame:
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
            cols[f"num{i}"] = np.round(rng.gamma(2.0 + delta, 3.0, rows), 2)
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-rows", type=int, default=100_000)
    ap.add_argument("--window-rows", type=int, default=10_000)
    ap.add_argument("--baseline-runs", type=int, default=3)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--min-ratio", type=float, default=200.0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/driftline-bench"))
    args = ap.parse_args()

    ref = make_frame(args.reference_rows, 1, shifted=False)
    cur = make_frame(args.window_rows, 2, shifted=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    ref.to_parquet(args.workdir / "ref.parquet")
    profile = build_profile(args.workdir / "ref.parquet")
    names = tuple(ref.columns)
    kinds = tuple(profile.columns[n].kind for n in names)
    settings = MonitorSettings.model_validate({
        "name": "bench", "kafka": {"bootstrap_servers": ["127.0.0.1:9"], "topic": "t", "group_id": "g"},
        "reference": {"path": str(args.workdir / "unused.dlref")},
        "event": {"features": list(names)}, "window": {"type": "count", "size": 10**9, "min_events": 1}})
    window = window_profile(cur, kinds)

    import evidently  # noqa: F401  (import cost is not part of the baseline)

    base_times, theirs = [], {}
    for _ in range(args.baseline_runs):
        t, theirs = evidently_scores(ref, cur)
        base_times.append(t)
    ours_times, result = [], None
    for _ in range(args.runs):
        t0 = time.perf_counter()
        result = evaluate_window(window, profile, settings, names)
        ours_times.append(time.perf_counter() - t0)
    assert result is not None

    mismatches = []
    for f in result.features:
        method, threshold, score = theirs[f.feature]
        if f.method != method or f.threshold != threshold or not np.isclose(f.score, score, rtol=1e-9, atol=1e-12):
            mismatches.append(f"{f.feature}: driftline {f.method} {f.score!r} vs Evidently {method} {score!r}")
    base, ours = statistics.median(base_times), statistics.median(ours_times)
    ratio = base / ours
    print(f"reference {args.reference_rows:,} rows, window {args.window_rows:,} rows, "
          f"{N_NUM} numerical + {N_CAT} categorical columns, default methods")
    print(f"baseline  Evidently Report([DataDriftPreset()])  median {base * 1000:9.1f} ms  "
          f"(min {min(base_times) * 1000:.1f}, {args.baseline_runs} runs)")
    print(f"driftline evaluate_window                         median {ours * 1000:9.2f} ms  "
          f"(min {min(ours_times) * 1000:.2f}, {args.runs} runs)")
    print(f"ratio     {ratio:.0f}x faster (target {args.min_ratio:.0f}x)")
    print(f"scores    {len(result.features) - len(mismatches)}/{len(result.features)} columns equal Evidently's "
          f"(method, threshold, score to rel 1e-9); drifted: {', '.join(f.feature for f in result.drifted_features)}")
    for m in mismatches:
        print("  MISMATCH", m)
    return 0 if not mismatches and ratio >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
