"""Benchmark: a restart with a `1d` horizon of `5m` buckets a day but one bucket in.

    .venv/bin/python bench/bench_restart.py [--events-per-bucket 500] [--rounds 3]

A real Tansu broker and `driftline run` processes. A topic of 3 partitions holds 287 buckets of
5 minutes of event time (a day but its last bucket). A service reads them, is killed (SIGKILL,
as a crash) once the last of them is evaluated, the day's last bucket and an event of the next
day are produced, and a new service starts on the same state file. From its start:

  - events read again: what it consumed minus what was produced after the kill (what came
    after its last checkpoint; the horizon's 287 buckets are restored, not read again);
  - the time to the first bucket evaluated, and to the `1d` window evaluated.

  baseline: the same without horizons.

Printed: the medians, and the ratio horizon / baseline of the time to the first bucket (goal:
at most 1.1), and the events re-read with and without the horizon (goal: at most one
checkpoint interval's worth: kafka.commit_interval, 5 s here).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import yaml
from driftline.service.demo.broker import LocalBroker, free_port
from driftline.service.demo.traffic import TrafficModel, encode, monitor_config, write_training_data
from driftline.service.reference import build_profile, save_profile

BUCKET_S = 300.0
BUCKETS = 288


def produce(bootstrap: str, topic: str, first: int, last: int, per_bucket: int, t0: float) -> int:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20, compression_type="lz4")
    model = TrafficModel(seed=first)
    n = 0
    for b in range(first, last):
        evs = model.events(per_bucket)
        for i, e in enumerate(evs):
            e["ts"] = t0 + b * BUCKET_S + i * BUCKET_S / per_bucket
        for i, value in enumerate(encode(evs)):
            producer.send(topic, value, partition=i % 3)
        n += len(evs)
    producer.flush(120)
    producer.close(10)
    return n


class Run:
    def __init__(self, config: Path, log: Path) -> None:
        self.port = yaml.safe_load(config.read_text())["service"]["listen"].rsplit(":", 1)[1]
        env = {**os.environ, "DO_NOT_TRACK": "1"}
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "driftline.service.cli", "run", "--config", str(config)],
                                     stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)

    def get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return resp.read()  # type: ignore[no-any-return]
        except OSError:
            return None

    def latest(self, horizon: str) -> float:
        body = self.get("/api/v1/monitors/bench")
        if body is None:
            return -1.0
        w = json.loads(body)["horizons"][horizon]["latest_window"]
        return w["window_start"] if w else -1.0

    def consumed(self) -> float:
        body = self.get("/metrics") or b""
        for line in body.decode().splitlines():
            if line.startswith("driftline_events_consumed_total{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(30)


def run_once(broker: LocalBroker, reference: Path, workdir: Path, per_bucket: int,
             horizon: bool) -> tuple[float, float | None, float]:
    """(seconds to the first bucket, seconds to the 1d window, events read again)."""
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions=3)
    t0 = (time.time() // 86400 - 2) * 86400  # a day two days ago
    produce(broker.bootstrap, topic, 0, BUCKETS - 1, per_bucket, t0)
    window = {"type": "time", "size": "5m", "allowed_lateness": "5s", "min_events": 100, "evaluation_interval": 0.1}
    if horizon:
        window["horizons"] = ["1d"]
    conf = {"service": {"listen": f"127.0.0.1:{free_port()}", "state_path": str(workdir / f"{topic}.sqlite")},
            "monitors": [monitor_config("bench", broker.bootstrap, topic, reference, window=window,
                                        kafka={"bootstrap_servers": [broker.bootstrap], "topic": topic,
                                               "group_id": f"g-{topic}", "auto_offset_reset": "earliest",
                                               "commit_interval": 5, "session_timeout": 6,
                                               "group_instance_id": "bench-0"})]}
    config = workdir / f"{topic}.yaml"
    config.write_text(yaml.safe_dump(conf))
    log = workdir / f"{topic}.log"

    first = Run(config, log)
    last_closed = t0 + (BUCKETS - 3) * BUCKET_S  # the bucket before the last one produced
    deadline = time.monotonic() + 600
    while first.latest("5m") < last_closed and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first.latest("5m") >= last_closed, "the first service did not evaluate the buckets"
    first.kill()
    produced = produce(broker.bootstrap, topic, BUCKETS - 1, BUCKETS, per_bucket, t0)
    produced += produce(broker.bootstrap, topic, BUCKETS, BUCKETS + 1, 3, t0)  # the next day: closes the last bucket

    again = Run(config, log)
    first_bucket = day = None
    deadline = again.started + 600
    while (first_bucket is None or (horizon and day is None)) and time.monotonic() < deadline:
        now = time.monotonic() - again.started
        if first_bucket is None and again.latest("5m") >= t0 + (BUCKETS - 2) * BUCKET_S:
            first_bucket = now
        if horizon and day is None and again.latest("1d") >= t0:
            day = now
        time.sleep(0.02)
    time.sleep(2.0)
    reread = again.consumed() - produced
    again.kill(signal.SIGTERM)
    assert first_bucket is not None, f"the restarted service evaluated no bucket; see {log}"
    return first_bucket, day, reread


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events-per-bucket", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        reference = workdir / "ref.dlref"
        save_profile(build_profile(write_training_data(workdir / "train.parquet")), reference)
        broker = LocalBroker(log_path=workdir / "tansu.log").start()
        try:
            base, with_h, days, reread_base, reread_h = [], [], [], [], []
            for r in range(args.rounds):
                b, _, rb = run_once(broker, reference, workdir, args.events_per_bucket, horizon=False)
                h, d, rh = run_once(broker, reference, workdir, args.events_per_bucket, horizon=True)
                base.append(b)
                with_h.append(h)
                reread_base.append(rb)
                reread_h.append(rh)
                if d is not None:
                    days.append(d)
                print(f"round {r + 1}: first bucket after the restart {b:.2f}s without the horizon, {h:.2f}s with; "
                      f"the 1d window after {d if d is None else f'{d:.2f}s'}; events read again "
                      f"{rb:.0f} without, {rh:.0f} with", flush=True)
        finally:
            broker.stop()
    b, h = statistics.median(base), statistics.median(with_h)
    print(f"\n{BUCKETS - 1} buckets x {args.events_per_bucket} events in the open 1d window, "
          f"{args.rounds} rounds (medians):")
    print(f"  first bucket evaluated after the restart: baseline (no horizon) {b:.2f}s, with the 1d horizon "
          f"{h:.2f}s -> ratio {h / b:.2f} (goal <= 1.1)")
    if days:
        print(f"  the 1d window evaluated {statistics.median(days):.2f}s after the restart")
    print(f"  events read again after the kill: {statistics.median(reread_base):.0f} without the horizon, "
          f"{statistics.median(reread_h):.0f} with (of {(BUCKETS - 1) * args.events_per_bucket:,} in the day; "
          f"what came after the last checkpoint)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
