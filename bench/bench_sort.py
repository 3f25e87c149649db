"""Benchmark: sorting a window's values, `sort_values` (service/drift/sorting.py) vs `np.sort`.

    .venv/bin/python bench/bench_sort.py [--size 10000] [--runs 200]

Every evaluation sorts each numerical window sample. The baseline is `np.sort` on the same
array in the same run; each figure is the best of 7 repeats of --runs sorts. The shapes cover
continuous data (no ties), heavy tails, ties, and the data the grid cannot spread (two modes
far apart), where `sort_values` hands over to `np.sort`. The run fails if a result differs from
`np.sort`'s.
"""

from __future__ import annotations

import argparse
import sys
import timeit

import numpy as np
from driftline.service.drift.sorting import sort_values


def shapes(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"normal": rng.normal(size=n), "gamma(2, 3)": rng.gamma(2, 3, n), "Cauchy": rng.standard_cauchy(n),
            "lognormal(0, 3)": rng.lognormal(0, 3, n), "integers 0..49": rng.integers(0, 50, n).astype(float),
            "60% zeros, lognormal": np.where(rng.random(n) < 0.6, 0.0, rng.lognormal(5, 2, n)),
            "two modes 1e6 apart": np.concatenate((rng.normal(0, 1, n // 2), rng.normal(1e6, 1, n - n // 2)))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    ok = True
    print(f"sorting {args.size:,} float64 values, best of 7 x {args.runs} runs")
    print(f"  {'data':24s} {'np.sort':>10s} {'sort_values':>12s}  np.sort / sort_values")
    for name, x in shapes(args.size, np.random.default_rng(0)).items():
        ok &= bool(np.array_equal(sort_values(x), np.sort(x)))
        base = min(timeit.repeat(lambda x=x: np.sort(x), number=args.runs, repeat=7)) / args.runs
        ours = min(timeit.repeat(lambda x=x: sort_values(x), number=args.runs, repeat=7)) / args.runs
        print(f"  {name:24s} {base * 1e6:8.0f} us {ours * 1e6:10.0f} us  {base / ours:5.2f}")
    print("  results equal np.sort's: " + ("yes" if ok else "NO"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
