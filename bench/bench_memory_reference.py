"""Benchmark: the reference's memory per value, cold vs warm evaluation, and the build's time.

    .venv/bin/python bench/bench_memory_reference.py [--rows 1000000] [--columns 20]

1. **Build**: a training set of --rows rows and --columns numerical columns (normal, lognormal,
   rounded gamma, integers, continuous uniform) plus 5 categorical ones, as Parquet; then
   `driftline reference build` on it as a user runs it (noise floors included, progress on
   stderr): its wall time.
2. **Memory and cold start**, in a fresh process: RSS before the profile is loaded, after
   loading it, after the first window's evaluation and after ten more. The baseline is the
   reference's own data (8 bytes per numerical value, what format 1 kept in memory before any
   derivation); driftline's figure is everything the loaded profile holds, counted two ways:
   the RSS growth over the values, and the bytes of every array the columns keep. Then the
   first window's evaluation time after a fresh load (cold; loaded and prepared as the service
   does: `evaluation.prepare`) against the next ones (warm), a 10,000-row window, calibration on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def frame(rows: int, columns: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for i in range(columns):
        kind = i % 5
        if kind == 0:
            out[f"num{i}"] = rng.normal(shift, 1, rows)
        elif kind == 1:
            out[f"num{i}"] = rng.lognormal(shift, 0.8, rows)
        elif kind == 2:
            out[f"num{i}"] = np.round(rng.gamma(2 + shift, 3, rows), 2)
        elif kind == 3:
            out[f"num{i}"] = rng.integers(0, 50, rows).astype(float)
        else:
            out[f"num{i}"] = rng.uniform(0, 1 + shift, rows)
    for j in range(5):
        out[f"cat{j}"] = rng.choice([f"v{x}" for x in range(3 + 4 * j)], rows)
    return pd.DataFrame(out)


def held_bytes(profile: object) -> tuple[int, int]:
    """(bytes of every array the numerical columns keep, their values)."""
    total = values = 0
    for col in profile.columns.values():  # type: ignore[attr-defined]
        if col.kind.value != "numerical":
            continue
        values += col.sample.n
        seen: set[int] = set()
        stack: list[object] = list(col.sample.__dict__.values())
        while stack:
            item = stack.pop()
            if isinstance(item, np.ndarray) and id(item) not in seen:
                seen.add(id(item))
                total += item.nbytes
            elif isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, tuple | list):
                stack.extend(item)
    return total, values


def child(profile_path: Path, window_path: Path, runs: int) -> dict[str, float]:
    from driftline.service.config import MonitorSettings
    from driftline.service.evaluation import evaluate_window, prepare
    from driftline.service.profile import WindowProfile
    from driftline.service.reference import load_profile

    window_frame = pd.read_parquet(window_path)
    names = tuple(window_frame.columns)
    settings = MonitorSettings.model_validate({
        "name": "bench", "kafka": {"bootstrap_servers": ["127.0.0.1:9"], "topic": "t", "group_id": "g"},
        "reference": {"path": str(profile_path)}, "event": {"features": list(names)},
        "window": {"type": "count", "size": 10**9, "min_events": 1}})
    import gc

    gc.collect()
    before = rss_mb()
    profile = load_profile(profile_path)
    prepare(profile, settings, names)  # what the service does when it loads a reference
    gc.collect()
    loaded = rss_mb()
    kinds = tuple(profile.columns[n].kind for n in names)
    window = WindowProfile(kinds, 0.0, 1.0, budget=len(window_frame))
    for row in window_frame.itertuples(index=False):
        window.add(tuple(row), 0.5, None, None)
    gc.collect()
    with_window = rss_mb()
    t0 = time.perf_counter()
    evaluate_window(window, profile, settings, names)
    first = time.perf_counter() - t0
    after_first = rss_mb()
    warm = []
    for _ in range(runs):
        t0 = time.perf_counter()
        evaluate_window(window, profile, settings, names)
        warm.append(time.perf_counter() - t0)
    after_warm = rss_mb()
    held, values = held_bytes(profile)
    cold = [first]
    for _ in range(4):  # more cold starts: a fresh load each
        fresh = load_profile(profile_path)
        prepare(fresh, settings, names)
        t0 = time.perf_counter()
        evaluate_window(window, fresh, settings, names)
        cold.append(time.perf_counter() - t0)
        del fresh
    return {"before": before, "loaded": loaded, "with_window": with_window, "after_first": after_first,
            "after_warm": after_warm, "values": values, "held": held, "cold": statistics.median(cold),
            "warm": statistics.median(warm)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--columns", type=int, default=20)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--max-bytes", type=float, default=16.0, help="fail above this many bytes per reference value")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/driftline-bench-reference"))
    ap.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.runs)))
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    data, profile, window = (args.workdir / "train.parquet", args.workdir / "train.dlref",
                             args.workdir / "window.parquet")
    frame(args.rows, args.columns, 1).to_parquet(data, index=False)
    frame(10_000, args.columns, 2, shift=0.1).to_parquet(window, index=False)
    t0 = time.perf_counter()
    build = subprocess.run([sys.executable, "-m", "driftline.service.cli", "reference", "build", "--data", str(data),
                            "--out", str(profile)], capture_output=True, text=True)
    built = time.perf_counter() - t0
    if build.returncode:
        print(build.stderr)
        return 1
    lines = build.stderr.strip().splitlines()
    print(f"1. driftline reference build: {args.rows:,} rows x {args.columns} numerical + 5 categorical columns "
          f"in {built:.1f} s, noise floors included ({profile.stat().st_size / 1e6:.0f} MB file); stderr ends:")
    for line in lines[-3:]:
        print(f"     {line.strip()}")
    out = json.loads(subprocess.run([sys.executable, __file__, "--runs", str(args.runs), "--child", str(profile),
                                     str(window)], capture_output=True, text=True, check=True).stdout)
    values = out["values"]
    grown = (out["loaded"] - out["before"]) * 2**20 / values
    cold_grown = (out["after_first"] - out["with_window"]) * 2**20 / values
    print(f"2. memory of the loaded reference, {values:,} numerical values:")
    print("     baseline  the values themselves                     8.0 bytes per value")
    print(f"     driftline arrays the columns keep                  {out['held'] / values:4.1f} bytes per value "
          f"({out['held'] / values / 8:.2f}x the baseline)")
    print(f"     driftline RSS growth at load (all columns)         {grown:4.1f} bytes per value")
    print(f"     RSS growth at the first evaluation                 {cold_grown:+5.1f} bytes per value "
          f"(after 10 more: {(out['after_warm'] - out['after_first']) * 2**20 / values:+.1f})")
    print(f"3. evaluation of a 10,000-row window, calibration on: cold (first window after a load) "
          f"{out['cold'] * 1000:.1f} ms, warm {out['warm'] * 1000:.1f} ms, cold / warm {out['cold'] / out['warm']:.2f}")
    return 0 if out["held"] / values <= args.max_bytes else 1


if __name__ == "__main__":
    sys.exit(main())
