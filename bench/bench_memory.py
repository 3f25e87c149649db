"""Benchmark 2: memory of one window as its event count grows 10x.

    .venv/bin/python bench/bench_memory.py [--events 1000000,10000000]

For each size, a fresh process builds a monitor of 20 numerical + 5 categorical features
(as the service does, reference loaded), measures its idle RSS, resets the kernel's
peak-RSS mark, then feeds that many events through decode + validation + window update
in poll-sized batches, all into one window, closes and evaluates the window, and reads
the peak. The baseline is the same process idle; the check is that the peak grows by at
most --max-growth-mb over it and that the largest size's peak is within --max-ratio of
the smallest's (memory bounded by the exactness budget, not by traffic).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

N_NUM, N_CAT = 20, 5
NAMES = [f"num{i}" for i in range(N_NUM)] + [f"cat{j}" for j in range(N_CAT)]


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(events: int, reference: Path) -> dict[str, float]:
    import gc

    import numpy as np
    from driftline.service.config import MonitorSettings
    from driftline.service.metrics import DriftlineMetrics
    from driftline.service.monitor import Monitor
    from prometheus_client import CollectorRegistry

    clock = [1_800_000_000.0]
    settings = MonitorSettings.model_validate({
        "name": "bench", "reference": {"path": str(reference)},
        "kafka": {"bootstrap_servers": ["127.0.0.1:9"], "topic": "t", "group_id": "g"},
        "event": {"features": {n: {"path": f"features.{n}"} for n in NAMES}, "event_time": {"path": "ts"},
                  "latency": {"path": "latency_ms", "unit": "ms"}},
        "window": {"type": "time", "size": "1d", "allowed_lateness": "1s", "min_events": 1}})
    monitor = Monitor(settings, 0, DriftlineMetrics(CollectorRegistry()), None, clock=lambda: clock[0])
    rng = np.random.default_rng(0)
    t0 = clock[0] - 3600
    pool = []
    for i in range(20_000):  # distinct events, cycled: the window sees `events` values per feature
        feats = {f"num{k}": float(x) for k, x in enumerate(rng.normal(0, 1, N_NUM))}
        feats.update({f"cat{k}": f"v{rng.integers(0, 8)}" for k in range(N_CAT)})
        pool.append(json.dumps({"ts": t0 + i * 1e-3, "features": feats, "latency_ms": 10.0}).encode())
    batch = 2000
    monitor.consume_batch(pool[:batch])  # warm every code path before measuring idle
    gc.collect()
    idle = rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    fed = batch
    while fed < events:
        offset = fed % len(pool)
        monitor.consume_batch(pool[offset:offset + batch])
        fed += batch
    clock[0] += 2 * 86400  # the watermark passes the window's end
    results = monitor.evaluate_due()
    elapsed = time.perf_counter() - start
    peak = rss_kb("VmHWM")
    assert results and results[0].events == fed, "every event lands in the one window"
    return {"events": fed, "idle_mb": idle / 1024, "peak_mb": peak / 1024, "seconds": elapsed,
            "evidently_imported": "evidently" in sys.modules}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", default="1000000,10000000")
    ap.add_argument("--max-growth-mb", type=float, default=150.0)
    ap.add_argument("--max-ratio", type=float, default=1.10)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/driftline-bench"))
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    reference = args.workdir / "memory.dlref"
    if args.child:
        print(json.dumps(child(args.child, reference)))
        return 0

    import numpy as np
    import pandas as pd
    from driftline.service.reference import build_profile, save_profile

    args.workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    train = pd.DataFrame({**{f"num{i}": rng.normal(0, 1, 100_000) for i in range(N_NUM)},
                          **{f"cat{j}": [f"v{x}" for x in rng.integers(0, 8, 100_000)] for j in range(N_CAT)}})
    train.to_parquet(args.workdir / "memory-train.parquet")
    save_profile(build_profile(args.workdir / "memory-train.parquet"), reference)

    rows = []
    for n in (int(x) for x in args.events.split(",")):
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--workdir", str(args.workdir)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"one window, {N_NUM} numerical + {N_CAT} categorical features, exactness budget 100,000 values")
    print(f"{'events':>12} {'idle RSS':>10} {'peak RSS':>10} {'growth':>10} {'time':>8}  evidently imported")
    for r in rows:
        print(f"{r['events']:>12,} {r['idle_mb']:>8.0f}MB {r['peak_mb']:>8.0f}MB "
              f"{r['peak_mb'] - r['idle_mb']:>8.0f}MB {r['seconds']:>7.1f}s  {r['evidently_imported']}")
    growth = max(r["peak_mb"] - r["idle_mb"] for r in rows)
    ratio = rows[-1]["peak_mb"] / rows[0]["peak_mb"]
    print(f"largest growth over idle {growth:.0f} MB (target <= {args.max_growth_mb:.0f}); "
          f"peak at {rows[-1]['events']:,} / peak at {rows[0]['events']:,} = {ratio:.3f} (target <= {args.max_ratio})")
    ok = growth <= args.max_growth_mb and ratio <= args.max_ratio and not any(r["evidently_imported"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
