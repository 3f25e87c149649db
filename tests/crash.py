"""The crash and standby tests' traffic and helpers (tests/test_crash*.py, tests/test_standby.py):
`driftline run` processes reading a real Tansu broker, three partitions, their window results
read from their state files."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from driftline.service.demo.traffic import TrafficModel, monitor_config

from tests.helpers import ServiceProcess, wait_until

KILLS = int(os.environ.get("DRIFTLINE_CRASH_KILLS", "10"))
PARTITIONS = 3
WINDOW_S = 10.0
SPACING_S = 0.01  # event time between two events: 1,000 events per window
WINDOWS = 24
DRIFTED = range(12, 18)  # windows whose traffic is shifted
# event times start here (a window boundary two days ago: event times may not be in the future)
T0 = (time.time() // 86400 - 2) * 86400


def traffic_events() -> list[tuple[int, bytes]]:
    """(partition, value) in production order: WINDOWS windows of event time, round robin
    over the partitions, then one far-future event per partition that closes them all."""
    per_window = int(WINDOW_S / SPACING_S)
    stable, shifted = TrafficModel(seed=61), TrafficModel(seed=62, shift=("income", "debt_to_income", "loan_purpose"))
    out = []
    i = 0
    for w in range(WINDOWS):
        model = shifted if w in DRIFTED else stable
        for e in model.events(per_window):
            e["ts"] = T0 + i * SPACING_S
            out.append((i % PARTITIONS, json.dumps(e, separators=(",", ":")).encode()))
            i += 1
    for p in range(PARTITIONS):
        e = stable.events(1)[0]
        e["ts"] = T0 + 86400.0
        out.append((p, json.dumps(e, separators=(",", ":")).encode()))
    return out


def config(bootstrap: str, topic: str, reference: Path, group: str, receiver_url: str | None = None,
           instance: str | None = None, lateness: str = "0s", horizons: tuple[str, ...] = ()) -> dict[str, Any]:
    conf = monitor_config(
        "credit-risk", bootstrap, topic, reference,
        # no lateness allowed: each partition is in order, and windows close on the slowest
        window={"type": "time", "size": "10s", "allowed_lateness": lateness, "min_events": 200,
                "horizons": list(horizons)},
        kafka={"bootstrap_servers": [bootstrap], "topic": topic, "group_id": group, "auto_offset_reset": "earliest",
               "commit_interval": 1, "session_timeout": 6, "max_poll_interval": 10, "max_poll_records": 300,
               # static membership: the restarted process takes the killed one's partitions at once
               # (without it Tansu hands some to the dead member until its session expires)
               "group_instance_id": instance})
    if receiver_url is not None:
        conf["retrain"] = {"webhook_url": receiver_url, "secret_env": "DRIFTLINE_WEBHOOK_SECRET",
                           "consecutive_windows": 2, "cooldown": "1d"}
    return conf


def results(state: Path, horizon: str = "10s") -> list[dict[str, Any]]:
    """The bucket windows recorded in a state file (count windows, or all: horizon "")."""
    if not state.exists():
        return []
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=10)
    try:
        # (not the far-future closers' window: it closes too, by the wall clock, once traffic stops)
        rows = db.execute("SELECT result FROM window_results WHERE (horizon = ? OR ? = '') AND window_start < ? "
                          "ORDER BY window_start, id", (horizon, horizon, T0 + 86400.0))
        return [json.loads(r[0]) for r in rows]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()


def comparable(r: dict[str, Any]) -> dict[str, Any]:
    """A window result without what depends on when it was computed."""
    return {k: v for k, v in r.items() if k not in ("evaluated_at", "evaluation_seconds")}


def kill_at_random_moments(proc: ServiceProcess, kills: int) -> None:
    """SIGKILL `proc` `kills` times, each at a random moment (mostly while it reads, sometimes
    while it starts or joins the group), restarting it after each."""
    rng = random.Random(int(os.environ.get("DRIFTLINE_CRASH_SEED", "7")))
    kill_log = []
    for k in range(kills):
        if rng.random() < 0.75:
            wait_until(lambda: proc.get("/readyz")[0] == 200 if proc._answers("/healthz") else False, 60,
                       what="the restarted process to read its partitions")
        time.sleep(rng.uniform(0.3, 4.0))
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(10)
        kill_log.append((k, len(results(proc.workdir / "state.sqlite", horizon=""))))
        proc.start(wait_ready=False)
    print(f"\nkilled at (kill, windows recorded so far): {kill_log}")


def produce_slowly(bootstrap: str, topic: str, events: list[tuple[int, bytes]], seconds: float) -> threading.Thread:
    from kafka import KafkaProducer

    def run() -> None:
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_block_ms=15000)
        chunk = 200
        pause = seconds / (len(events) / chunk)
        for i in range(0, len(events), chunk):
            for p, v in events[i:i + chunk]:
                producer.send(topic, v, partition=p)
            time.sleep(pause)
        producer.flush(30)
        producer.close(10)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def standby_pair(tmp_path: Path, bootstrap: str, topic: str, reference: Path, shared: bool
                 ) -> tuple[ServiceProcess, ServiceProcess]:
    group = f"pair-{uuid.uuid4().hex[:6]}"
    procs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        # (no static membership: Tansu never expires a static member that died, so its
        # partitions would stay with it; Kafka does after session_timeout)
        procs.append(ServiceProcess(tmp_path / name, [config(bootstrap, topic, reference, group, None, None,
                                                             horizons=("30s",))],
                                    service={"state_path": str(tmp_path / "shared.sqlite")} if shared else None))
    return procs[0], procs[1]


def in_progress(state: Path) -> dict[float, int]:
    """The buckets in progress in a state file's checkpoint: start -> events."""
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=10)
    try:
        [(meta,)] = db.execute("SELECT meta FROM monitor_state").fetchall()
    finally:
        db.close()
    summary = json.loads(meta)["windows"]["summary"]
    return {start: events for key, (start, _, events) in summary.items() if key.startswith("b")}
