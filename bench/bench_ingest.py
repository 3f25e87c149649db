"""Benchmark 3: ingest rate from a real broker, driftline vs kafka-python alone.

    .venv/bin/python bench/bench_ingest.py [--events 300000] [--rounds 3]

Starts a local Tansu broker, produces --events serving events (20 numerical + 5
categorical features, some missing) to one topic, then reads the topic alternately with
  baseline:  kafka-python's KafkaConsumer + json.loads of every value;
  driftline: its KafkaSource + decode + validation + window profile update (the service's
             consumer loop without the scheduler).
Each reader uses its own consumer group; the clock starts at the first record, so the
group join is not timed. Rounds alternate the two readers; prints events/s of each and
driftline's share of the baseline (the median of the per-round ratios).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from driftline.collectors.kafka import KafkaSource
from driftline.service.config import MonitorSettings
from driftline.service.demo.broker import LocalBroker
from driftline.service.metrics import DriftlineMetrics
from driftline.service.monitor import Monitor
from driftline.service.reference import build_profile, save_profile

N_NUM, N_CAT = 20, 5
NAMES = [f"num{i}" for i in range(N_NUM)] + [f"cat{j}" for j in range(N_CAT)]


def events(n: int, seed: int = 3) -> list[bytes]:
    rng = np.random.default_rng(seed)
    num = rng.normal(0, 1, (n, N_NUM)).round(6)
    cat = rng.integers(0, 8, (n, N_CAT))
    missing = rng.random((n, N_NUM)) < 0.02
    now = time.time()
    out = []
    for i in range(n):
        feats: dict[str, object] = {f"num{k}": float(num[i, k]) for k in range(N_NUM) if not missing[i, k]}
        feats.update({f"cat{k}": f"v{cat[i, k]}" for k in range(N_CAT)})
        out.append(json.dumps({"ts": now, "request_id": uuid.UUID(int=i).hex, "features": feats,
                               "latency_ms": 12.5}).encode())
    return out


def baseline(bootstrap: str, topic: str, n: int) -> float:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"base-{uuid.uuid4().hex}",
                             enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=2000,
                             max_poll_interval_ms=10000, session_timeout_ms=10000)
    seen, start = 0, None
    loads = json.loads
    while seen < n:
        for records in consumer.poll(timeout_ms=500).values():
            if start is None:
                start = time.perf_counter()
            for r in records:
                loads(r.value)
            seen += len(records)
    elapsed = time.perf_counter() - (start or time.perf_counter())
    consumer.close(autocommit=False)
    return n / elapsed


def driftline(bootstrap: str, topic: str, n: int, reference: Path) -> float:
    from prometheus_client import CollectorRegistry

    settings = MonitorSettings.model_validate({
        "name": "bench", "reference": {"path": str(reference)},
        "kafka": {"bootstrap_servers": [bootstrap], "topic": topic, "group_id": f"dl-{uuid.uuid4().hex}",
                  "auto_offset_reset": "earliest", "max_poll_records": 2000, "commit_interval": 3600},
        "event": {"features": {name: {"path": f"features.{name}"} for name in NAMES},
                  "event_time": {"path": "ts"}, "latency": {"path": "latency_ms", "unit": "ms"},
                  "allowed_extra_fields": ["request_id"]},
        "window": {"type": "time", "size": "1h", "min_events": 1}})
    monitor = Monitor(settings, 0, DriftlineMetrics(CollectorRegistry()), None)
    source = KafkaSource(settings.kafka, lambda _: None, monitor)
    seen, start = 0, None
    while seen < n:
        polled = source.poll(timeout_ms=500, timestamps=monitor.needs_record_timestamps)
        if polled:
            if start is None:
                start = time.perf_counter()
            monitor.consume(polled)  # the service's path: offsets tracked for checkpoints
            source.mark_processed(polled)
            seen += len(polled)
    elapsed = time.perf_counter() - (start or time.perf_counter())
    source.close()
    valid = monitor.windows.open_events()
    assert valid == n, f"only {valid} of {n} events were accounted for"
    return n / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-share", type=float, default=0.9)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/driftline-bench"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    train = pd.DataFrame({**{f"num{i}": rng.normal(0, 1, 20_000) for i in range(N_NUM)},
                          **{f"cat{j}": [f"v{x}" for x in rng.integers(0, 8, 20_000)] for j in range(N_CAT)}})
    train.to_parquet(args.workdir / "ingest-train.parquet")
    save_profile(build_profile(args.workdir / "ingest-train.parquet"), args.workdir / "ingest.dlref")

    with LocalBroker() as broker:
        topic = "ingest-bench"
        broker.create_topic(topic, partitions=1)
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20, batch_size=256 * 1024,
                                 compression_type="lz4")
        for value in events(args.events):
            producer.send(topic, value)
        producer.flush()
        producer.close()
        base_rates, ours_rates = [], []
        for _ in range(args.rounds):
            base_rates.append(baseline(broker.bootstrap, topic, args.events))
            ours_rates.append(driftline(broker.bootstrap, topic, args.events, args.workdir / "ingest.dlref"))
    base, ours = statistics.median(base_rates), statistics.median(ours_rates)
    # rounds alternate baseline and driftline; the machine's noise is shared within a pair
    share = statistics.median(o / b for o, b in zip(ours_rates, base_rates, strict=True))
    print(f"{args.events:,} events of {N_NUM} numerical + {N_CAT} categorical features, lz4, one partition")
    print(f"baseline  kafka-python poll + json.loads          median {base:10,.0f} events/s  "
          f"({', '.join(f'{r:,.0f}' for r in base_rates)})")
    print(f"driftline poll + decode + validate + profile       median {ours:10,.0f} events/s  "
          f"({', '.join(f'{r:,.0f}' for r in ours_rates)})")
    print(f"share     {share:.0%} of the baseline, median of {args.rounds} paired rounds "
          f"(target {args.min_share:.0%})")
    return 0 if share >= args.min_share else 1


if __name__ == "__main__":
    sys.exit(main())
