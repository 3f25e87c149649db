"""Benchmark: what a checkpoint costs, with full windows.

    .venv/bin/python bench/bench_checkpoint.py [--events 400000] [--rounds 3] [--interval 1 5]

1. One checkpoint of a monitor of 25 numerical features whose open bucket and `1d` horizon
   window each hold the exactness budget (100,000 values a feature): bytes written and
   milliseconds, when everything is new (the first checkpoint, or after a restore), when only
   the bucket changed (the horizon is written only when a bucket closes into it), and when
   nothing changed (the positions alone).
2. Ingest with checkpoints on, against the same ingest with them off, in the same run: the
   service's path from encoded records to the window profile (decode, validate, add) on one
   thread, the scheduler's tick on another writing a checkpoint every `interval` seconds to a
   SQLite file, as `driftline run` does. Rounds alternate off and on; printed: events/s of
   each and the median of the paired ratios (target: at least 90%).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from driftline.service.config import MonitorSettings
from driftline.service.metrics import DriftlineMetrics
from driftline.service.monitor import Monitor
from driftline.service.reference import build_profile, save_profile
from driftline.service.store import Store
from prometheus_client import CollectorRegistry

N = 25
NAMES = [f"num{i}" for i in range(N)]
T0 = 1_700_006_400.0  # a UTC midnight


def reference(workdir: Path) -> Path:
    rng = np.random.default_rng(1)
    pd.DataFrame({n: rng.normal(0, 1, 20_000) for n in NAMES}).to_parquet(workdir / "ckpt-train.parquet")
    path = workdir / "ckpt.dlref"
    save_profile(build_profile(workdir / "ckpt-train.parquet"), path)
    return path


def monitor(ref: Path, store: Store | None, interval: float, clock: list[float]) -> Monitor:
    settings = MonitorSettings.model_validate({
        "name": "bench", "reference": {"path": str(ref)},
        "kafka": {"bootstrap_servers": ["127.0.0.1:9"], "topic": "t", "group_id": "g", "commit_interval": interval},
        "event": {"features": {n: {"path": n} for n in NAMES}, "event_time": {"path": "ts"}},
        "window": {"type": "time", "size": "5m", "horizons": ["1d"], "min_events": 1}})
    m = Monitor(settings, 0, DriftlineMetrics(CollectorRegistry()), None, clock=lambda: clock[0], store=store)
    m.adopt({0: None})
    return m


def records(n: int, t: float, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N))  # continuous values: no ties
    return [json.dumps({"ts": t + i * 1e-4, **dict(zip(NAMES, row.tolist(), strict=True))}).encode()
            for i, row in enumerate(x)]


def checkpoint_cost(ref: Path, workdir: Path) -> None:
    clock = [T0 + 86400 - 1]
    store = Store(workdir / "cost.sqlite")
    m = monitor(ref, store, 3600, clock)
    # the horizon: a closed bucket of 100,000 events merged into the day's window
    m.consume_batch(records(100_000, T0 + 3600, 1))
    m.consume_batch(records(1, T0 + 3 * 3600, 2))
    assert m.evaluate_due(checkpoint=True)  # bucket 1h..1h05 closed into the 1d horizon
    m.consume_batch(records(100_000, T0 + 3 * 3600 + 1, 3))  # the open bucket, full

    sizes: list[int] = []
    real = store.save_state

    def measured(*args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(sum(len(b) for b in args[2].values()) + len(json.dumps(args[1])))
        return real(*args, **kwargs)

    store.save_state = measured  # type: ignore[method-assign]

    def timed() -> float:
        start = time.perf_counter()
        m.evaluate_due(checkpoint=True)
        return (time.perf_counter() - start) * 1000

    m.state._written.clear()  # as after a restore: everything is new
    everything = timed()
    rows = [("everything new (first, or after a restore)", sizes[-1], everything)]
    changed = []
    for k in range(5):
        m.consume_batch(records(2_000, T0 + 3 * 3600 + 20 + k, 10 + k))
        changed.append((timed(), sizes[-1]))
    rows.append(("the open bucket changed", int(statistics.median(s for _, s in changed)),
                 statistics.median(t for t, _ in changed)))
    same = [timed() for _ in range(5)]
    rows.append(("nothing changed", sizes[-1], statistics.median(same)))
    print("1. one checkpoint, 25 numerical features; open bucket and 1d horizon at 100,000 values each")
    for what, size, ms in rows:
        print(f"   {what:<45} {size / 1e6:8.2f} MB written  {ms:8.1f} ms")
    store.close()


def ingest(ref: Path, workdir: Path, batches: list[list[bytes]], interval: float | None) -> float:
    """Events/s through decode + validate + profile; a checkpoint every `interval` s (None: off)."""
    clock = [T0 + 4 * 3600]
    store = Store(workdir / f"ingest-{time.monotonic_ns()}.sqlite") if interval is not None else None
    m = monitor(ref, store, interval or 3600, clock)
    stop = threading.Event()

    def scheduler() -> None:  # the service's evaluation tick (every evaluation_interval, 1 s)
        while not stop.wait(1.0):
            clock[0] = time.time()
            m.evaluate_due()

    tick = threading.Thread(target=scheduler, daemon=True)
    if interval is not None:
        tick.start()
    start = time.perf_counter()
    for b in batches:
        m.consume_batch(b)
    elapsed = time.perf_counter() - start
    stop.set()
    if interval is not None:
        tick.join()
        store.close()  # type: ignore[union-attr]
    assert m.windows.open_events() == sum(len(b) for b in batches)
    return sum(len(b) for b in batches) / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--interval", type=float, nargs="+", default=[1.0, 5.0],
                    help="checkpoint intervals (kafka.commit_interval) to measure")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ref = reference(workdir)
        checkpoint_cost(ref, workdir)
        events = records(args.events, T0 + 4 * 3600, 7)  # one 5m bucket: full after 100,000
        batches = [events[i:i + 2000] for i in range(0, len(events), 2000)]
        print(f"\n2. ingest of {args.events:,} events (25 numerical features, one open bucket at the budget)")
        ok = True
        for interval in args.interval:
            off, on = [], []
            for _ in range(args.rounds):
                off.append(ingest(ref, workdir, batches, None))
                on.append(ingest(ref, workdir, batches, interval))
            share = statistics.median(b / a for a, b in zip(off, on, strict=True))
            ok &= share >= 0.9
            print(f"   checkpoints every {interval:g}s: off {statistics.median(off):10,.0f} events/s, "
                  f"on {statistics.median(on):10,.0f} events/s -> {share:.0%} (median of {args.rounds} pairs)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
