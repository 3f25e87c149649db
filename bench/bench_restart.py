"""Benchmark: how soon a restarted service evaluates buckets again while it rebuilds a long
horizon window.

    .venv/bin/python bench/bench_restart.py [--events-per-bucket 20000] [--buckets 12] [--rounds 3]

A real Tansu broker and the service in process. A topic of 3 partitions holds `buckets` 10 s
buckets of event time, all inside one horizon window (`buckets + 2` buckets long, so it is
still open at the restart). The service reads them, stops (SIGTERM's path: checkpoint and
commit), one more bucket is produced, and a new service starts on the same state. Timed from
its start: the evaluation of the first bucket it closes, and the end of the horizon rebuild
(the second reader's last partition).

  baseline: the same without horizons (nothing to rebuild);
  horizon:  with the horizon, rebuilt by the second reader beside the consumer.

Printed: the median of each time and the ratio horizon / baseline for the first bucket
(near 1: the buckets do not wait for the rebuild). The rebuild's own time is what the first
bucket waited for when the rebuild went through the group's consumer (before 1e91241).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from driftline.service.app import Service
from driftline.service.config import load_settings
from driftline.service.demo.broker import LocalBroker
from driftline.service.demo.traffic import TrafficModel, encode, monitor_config, write_training_data
from driftline.service.reference import build_profile, save_profile

BUCKET_S = 10.0


def produce(bootstrap: str, topic: str, first: int, last: int, per_bucket: int, t0: float) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20, compression_type="lz4")
    model = TrafficModel(seed=first)
    spacing = BUCKET_S / per_bucket
    for b in range(first, last):
        evs = model.events(per_bucket)
        for i, e in enumerate(evs):
            e["ts"] = t0 + b * BUCKET_S + i * spacing
        for i, value in enumerate(encode(evs)):
            producer.send(topic, value, partition=i % 3)
    producer.flush(120)
    producer.close(10)


def run_once(broker: LocalBroker, reference: Path, workdir: Path, buckets: int, per_bucket: int,
             horizon: bool) -> tuple[float, float | None]:
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions=3)
    span = (buckets + 2) * BUCKET_S
    t0 = ((time.time() - 2 * 86400) // span) * span  # two days ago, where a horizon window begins
    produce(broker.bootstrap, topic, 0, buckets, per_bucket, t0)
    window = {"type": "time", "size": f"{BUCKET_S:g}s", "allowed_lateness": "5s", "min_events": 100,
              "evaluation_interval": 0.1}
    if horizon:
        window["horizons"] = [f"{span:g}s"]
    conf = {"service": {"listen": "127.0.0.1:0", "state_path": str(workdir / f"{topic}.sqlite"),
                        "log_level": "WARNING"},
            "monitors": [monitor_config("bench", broker.bootstrap, topic, reference, window=window,
                                        kafka={"bootstrap_servers": [broker.bootstrap], "topic": topic,
                                               "group_id": f"g-{topic}", "auto_offset_reset": "earliest",
                                               "commit_interval": 0.5, "max_poll_interval": 10,
                                               "session_timeout": 6})]}
    path = workdir / f"{topic}.yaml"
    path.write_text(yaml.safe_dump(conf))

    def start() -> Service:
        settings, secrets = load_settings(path)
        svc = Service(settings, secrets)
        svc.start()
        return svc

    def latest_start(svc: Service) -> float:
        r = svc.monitors[0].latest_result()
        return r.window_start if r is not None else -1.0

    svc = start()
    last_closed = t0 + (buckets - 2) * BUCKET_S  # the last bucket stays open: nothing later yet
    deadline = time.monotonic() + 300
    while latest_start(svc) < last_closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert latest_start(svc) >= last_closed, "the first service did not evaluate the buckets"
    time.sleep(1.0)  # a checkpoint and a commit after the last evaluation
    svc.stop()
    produce(broker.bootstrap, topic, buckets, buckets + 1, per_bucket, t0)  # closes the open bucket

    started = time.monotonic()
    svc = start()
    first_bucket = rebuilt = None
    rebuilding = False
    deadline = started + 300
    while (first_bucket is None or (horizon and rebuilt is None)) and time.monotonic() < deadline:
        now = time.monotonic() - started
        if first_bucket is None and latest_start(svc) >= t0 + (buckets - 1) * BUCKET_S:
            first_bucket = now
        side = bool(svc.monitors[0].windows.side_reads())
        if horizon and rebuilt is None and rebuilding and not side:
            rebuilt = now
        rebuilding = rebuilding or side
        time.sleep(0.01)
    svc.stop()
    assert first_bucket is not None, "the restarted service evaluated no bucket"
    return first_bucket, rebuilt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events-per-bucket", type=int, default=20_000)
    ap.add_argument("--buckets", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        reference = workdir / "ref.dlref"
        save_profile(build_profile(write_training_data(workdir / "train.parquet")), reference)
        broker = LocalBroker(log_path=workdir / "tansu.log").start()
        try:
            base, with_h, rebuild = [], [], []
            for r in range(args.rounds):
                b, _ = run_once(broker, reference, workdir, args.buckets, args.events_per_bucket, horizon=False)
                h, rb = run_once(broker, reference, workdir, args.buckets, args.events_per_bucket, horizon=True)
                base.append(b)
                with_h.append(h)
                if rb is not None:
                    rebuild.append(rb)
                print(f"round {r + 1}: first bucket after restart {b:.2f}s without horizon, {h:.2f}s with; "
                      f"horizon rebuilt after {rb if rb is None else f'{rb:.2f}s'}", flush=True)
        finally:
            broker.stop()
    b, h = statistics.median(base), statistics.median(with_h)
    print(f"\n{args.buckets} buckets x {args.events_per_bucket} events in the open horizon window, "
          f"{args.rounds} rounds (medians):")
    print(f"  first bucket evaluated after the restart: baseline (no horizon) {b:.2f}s, with the horizon {h:.2f}s "
          f"-> ratio {h / b:.2f}")
    if rebuild:
        print(f"  horizon window rebuilt after {statistics.median(rebuild):.2f}s "
              f"(what the first bucket waited for when the rebuild went through the group's consumer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
