"""Benchmark: a restart with a `1d` horizon of `5m` buckets a day but one bucket in.

    .venv/bin/python bench/bench_restart.py [--events-per-bucket 500] [--rounds 3]

A real Tansu broker and `driftline run` processes. A topic of 3 partitions holds 287 buckets of
5 minutes of event time (a day but its last bucket). A service reads them and is killed
(SIGKILL, as a crash) at a random moment while it reads; a new service on the same state file
reads the rest and is killed again once the last of them is evaluated; the day's last bucket
and an event of the next day are produced, and a third service starts. Measured:

  - events read again after the first kill: what the second service consumed minus what the
    first had not (read off /metrics just before the kill, so at most this), against what
    the first read in one checkpoint interval (kafka.commit_interval, 5 s here);
  - from the third service's start: the events it read again, the time to the first bucket
    evaluated, and to the `1d` window evaluated.

  baseline: the same without horizons.

Printed: the medians; the ratio horizon / baseline of the time to the first bucket (goal: at
most 1.1); the events read again (goal: at most one checkpoint interval's worth; the horizon's
287 buckets are restored, not read again).
"""

from __future__ import annotations

import argparse
import json
import os
import random
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
        self.started_at = time.time()
        self.proc = subprocess.Popen([sys.executable, "-m", "driftline.service.cli", "run", "--config", str(config)],
                                     stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)

    def get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return resp.read()  # type: ignore[no-any-return]
        except OSError:
            return None

    def latest(self, horizon: str) -> float:
        return self.window(horizon)[0]

    def window(self, horizon: str) -> tuple[float, float]:
        """The latest window of a horizon: its start, and when it was evaluated (wall clock)."""
        body = self.get("/api/v1/monitors/bench")
        if body is None:
            return -1.0, 0.0
        w = json.loads(body)["horizons"][horizon]["latest_window"]
        return (w["window_start"], w["evaluated_at"]) if w else (-1.0, 0.0)

    def consumed(self) -> float:
        body = self.get("/metrics") or b""
        for line in body.decode().splitlines():
            if line.startswith("driftline_events_consumed_total{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(30)


def run_once(broker: LocalBroker, reference: Path, workdir: Path, per_bucket: int, horizon: bool,
             rng: random.Random) -> tuple[float, float | None, float, float, float]:
    """(seconds to the first bucket, seconds to the 1d window, events read again after the
    end-of-day restart, after the mid-read crash, and one checkpoint interval's worth of reading)."""
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

    total = (BUCKETS - 1) * per_bucket
    crashing = Run(config, log)
    kill_at = t0 + rng.uniform(0.2, 0.8) * (BUCKETS - 3) * BUCKET_S
    deadline = time.monotonic() + 600
    while crashing.latest("5m") < kill_at and time.monotonic() < deadline:
        time.sleep(0.05)
    read = crashing.consumed()
    rate = read / (time.monotonic() - crashing.started)
    crashing.kill()

    first = Run(config, log)
    last_closed = t0 + (BUCKETS - 3) * BUCKET_S  # the bucket before the last one produced
    while first.latest("5m") < last_closed and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first.latest("5m") >= last_closed, "the service did not evaluate the buckets"
    time.sleep(1.0)
    crash_reread = first.consumed() - (total - read)
    first.kill()
    produced = produce(broker.bootstrap, topic, BUCKETS - 1, BUCKETS, per_bucket, t0)
    # the next day's first events, in every partition: they close the day's last bucket
    model = TrafficModel(seed=BUCKETS)
    evs = model.events(3)
    for i, e in enumerate(evs):
        e["ts"] = t0 + 86400 + 10 + i
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i, value in enumerate(encode(evs)):
        producer.send(topic, value, partition=i % 3)
    producer.flush(30)
    producer.close(10)
    produced += len(evs)

    again = Run(config, log)
    first_bucket = day = None
    deadline = again.started + 600
    # timed by when each window was evaluated (its result's evaluated_at): the buckets and the
    # day closing in one tick are evaluated in that order and shown together
    while (first_bucket is None or (horizon and day is None)) and time.monotonic() < deadline:
        start, at = again.window("5m")
        if first_bucket is None and start >= t0 + (BUCKETS - 2) * BUCKET_S:
            first_bucket = at - again.started_at
        if horizon and day is None:
            start, at = again.window("1d")
            if start >= t0:
                day = at - again.started_at
        time.sleep(0.02)
    time.sleep(2.0)
    reread = again.consumed() - produced
    again.kill(signal.SIGTERM)
    assert first_bucket is not None, f"the restarted service evaluated no bucket; see {log}"
    return first_bucket, day, reread, crash_reread, rate * 5.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events-per-bucket", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", metavar="DIR", help="keep the configs, state files and service logs in DIR")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        reference = workdir / "ref.dlref"
        save_profile(build_profile(write_training_data(workdir / "train.parquet")), reference)
        broker = LocalBroker(log_path=workdir / "tansu.log").start()
        try:
            base, with_h, days, reread_base, reread_h, crash, worth = [], [], [], [], [], [], []
            rng = random.Random(args.seed)
            for r in range(args.rounds):
                b, _, rb, cb, wb = run_once(broker, reference, workdir, args.events_per_bucket, False, rng)
                h, d, rh, ch, wh = run_once(broker, reference, workdir, args.events_per_bucket, True, rng)
                base.append(b)
                with_h.append(h)
                reread_base.append(rb)
                reread_h.append(rh)
                crash.extend((cb, ch))
                worth.extend((wb, wh))
                if d is not None:
                    days.append(d)
                print(f"round {r + 1}: first bucket after the restart {b:.2f}s without the horizon, {h:.2f}s with; "
                      f"the 1d window after {d if d is None else f'{d:.2f}s'}; events read again "
                      f"{rb:.0f} without, {rh:.0f} with; after the crash mid-read {cb:.0f} and {ch:.0f} "
                      f"(5 s of reading: {wb:,.0f} and {wh:,.0f})", flush=True)
        finally:
            broker.stop()
    b, h = statistics.median(base), statistics.median(with_h)
    print(f"\n{BUCKETS - 1} buckets x {args.events_per_bucket} events in the open 1d window, "
          f"{args.rounds} rounds (medians):")
    print(f"  first bucket evaluated after the restart: baseline (no horizon) {b:.2f}s, with the 1d horizon "
          f"{h:.2f}s -> ratio {h / b:.2f} (goal <= 1.1)")
    if days:
        print(f"  the 1d window evaluated {statistics.median(days):.2f}s after the restart")
    print(f"  events read again after the kill at the end of the day: {statistics.median(reread_base):.0f} without "
          f"the horizon, {statistics.median(reread_h):.0f} with (of {(BUCKETS - 1) * args.events_per_bucket:,} "
          f"in the day)")
    print(f"  events read again after a kill mid-read: at most {max(crash):,.0f} "
          f"(median {statistics.median(crash):,.0f}); one checkpoint interval (5 s) of reading: "
          f"{min(worth):,.0f} to {max(worth):,.0f} events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
