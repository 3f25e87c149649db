"""Benchmark: what a `1d` horizon of `5m` buckets adds to each checkpoint and to each
partition's commit metadata.

    .venv/bin/python bench/bench_checkpoint.py [--partitions 12 64] [--late 0 0.001 0.01]

The windows are fed directly (no broker): a day but its last bucket of events, 2,000 per
bucket spread over the partitions, a share `late` of them two buckets late, with an
evaluation tick after every bucket. Then the checkpoint is encoded as the service writes it.

  baseline: the same windows without horizons;
  horizon:  with `horizons: [1d]`, handing parts over (the broker keeps commit metadata).

Printed per case: the checkpoint's size and encoding time for both, the ratio horizon /
baseline of the size, and the largest commit metadata of a partition (Kafka's default cap is
4,096 bytes; driftline leaves the horizon part out above 3,000).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from driftline.collectors.events import DecodedBatch
from driftline.service.drift import ColumnKind
from driftline.service.window import Origin, PartitionMark, TumblingWindows

DAY_START = 1_700_006_400.0  # a UTC midnight
BUCKET = 300.0
EVENTS_PER_BUCKET = 2000


def run(partitions: int, late: float, horizons: tuple[float, ...]) -> tuple[int, float, int]:
    """(checkpoint bytes, encoding seconds, largest metadata bytes)."""
    w = TumblingWindows(kind="time", size=BUCKET, allowed_lateness=30.0, kinds=(ColumnKind.NUMERICAL,),
                        prediction_kind=None, clock=lambda: 0.0, horizons=horizons)
    w.hand_over_horizons()
    for p in range(partitions):
        w.adopt(p, None, 0)
    rng = np.random.default_rng(0)
    next_offset = np.zeros(partitions, dtype=np.int64)
    for b in range(int(86400 / BUCKET) - 1):
        n = EVENTS_PER_BUCKET
        t = DAY_START + b * BUCKET + rng.uniform(0, BUCKET, n)
        t[rng.random(n) < late] -= 2 * BUCKET
        part = rng.integers(0, partitions, n)
        offsets = np.empty(n, dtype=np.int64)
        for p in range(partitions):
            mine = part == p
            k = int(mine.sum())
            offsets[mine] = next_offset[p] + np.arange(k)
            next_offset[p] += k
        batch = DecodedBatch(n, {0: rng.normal(size=n)}, {}, t, None, None, None)
        w.add_batch(batch, Origin(part, offsets, {p: int(next_offset[p]) for p in range(partitions)}))
        w.close_and_checkpoint()
    state = w.checkpoint()
    runs = []
    for _ in range(20):
        start = time.perf_counter()
        text = json.dumps(state, separators=(",", ":"))
        runs.append(time.perf_counter() - start)
    metadata = max(len(PartitionMark.from_json(m).to_metadata("x" * 32)[0]) for m in state["partitions"].values())
    return len(text), float(np.median(runs)), metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", type=int, nargs="+", default=[12, 64])
    parser.add_argument("--late", type=float, nargs="+", default=[0.0, 0.001, 0.01])
    args = parser.parse_args()
    print(f"{'partitions':>10} {'late':>6} {'baseline':>18} {'horizon 1d':>18} {'size ratio':>10} {'metadata':>9}")
    for partitions in args.partitions:
        for late in args.late:
            base_bytes, base_s, _ = run(partitions, late, ())
            bytes_, seconds, metadata = run(partitions, late, (86400.0,))
            print(f"{partitions:>10} {late:>6.3f} {base_bytes / 1024:>8.1f} KB {base_s * 1e3:>5.2f} ms "
                  f"{bytes_ / 1024:>8.1f} KB {seconds * 1e3:>5.2f} ms {bytes_ / base_bytes:>9.2f}x {metadata:>7} B")


if __name__ == "__main__":
    main()
