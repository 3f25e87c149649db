"""Crash safety and rebalances, with `driftline run` processes and a real Tansu broker.

- kill -9 at random moments, DRIFTLINE_CRASH_KILLS times (6 by default), while traffic
  flows into three partitions: after the restarts, every window's event count and drift
  numbers equal those of a run that was never interrupted, reading the same topic, and
  each window is recorded once: the 10 s buckets and the 30 s horizon windows merging them
  (rebuilt after a restart by reading their closed buckets again). The retraining request the drifted windows make is
  delivered with the same webhook-id as the uninterrupted run's.
- Two processes in one consumer group, the second joining and later leaving mid-window
  (count and time windows): every event is in exactly one window of one of them, closed
  or open. With time windows the second process replays a backlog and lags: the windows
  it hands back were closed by the first already, which evaluates their share of them
  (a lane, see service/window.py); per window, the events of both equal a single run's.

- The horizon rebuild's second reader (a consumer outside the group) reads exactly the
  offset ranges it is given, and gives its partitions up instead of hanging on a failure.

Each run writes its window results to its own state file; the test reads them there.
"""

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

import pytest
from driftline.service.demo.traffic import TrafficModel, monitor_config

from tests.helpers import ServiceProcess, wait_until

pytestmark = pytest.mark.integration

KILLS = int(os.environ.get("DRIFTLINE_CRASH_KILLS", "6"))
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
           instance: str | None = None, lateness: str = "30s", horizons: tuple[str, ...] = ()) -> dict[str, Any]:
    conf = monitor_config(
        "credit-risk", bootstrap, topic, reference,
        # lateness covers the skew between partitions read in fetch-sized chunks
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
    """The bucket windows recorded in a state file (count windows: horizon "")."""
    if not state.exists():
        return []
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT result FROM window_results WHERE horizon = ? OR ? = '' ORDER BY window_start, id",
                          (horizon, horizon))
        return [json.loads(r[0]) for r in rows]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()


def comparable(r: dict[str, Any]) -> dict[str, Any]:
    """A window result without what depends on when it was computed."""
    return {k: v for k, v in r.items() if k not in ("evaluated_at", "evaluation_seconds")}


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


def test_kill_9_at_random_moments_changes_no_window_and_no_webhook_id(
        services, tmp_path, broker, reference_path, receiver, webhook_secret) -> None:
    topic = f"crash-{uuid.uuid4().hex[:10]}"
    broker.create_topic(topic, partitions=PARTITIONS)
    env = {"DRIFTLINE_WEBHOOK_SECRET": webhook_secret}
    (tmp_path / "steady").mkdir()
    (tmp_path / "crashing").mkdir()
    steady = ServiceProcess(tmp_path / "steady", [config(broker.bootstrap, topic, reference_path,
                                                         f"steady-{uuid.uuid4().hex[:6]}", receiver.url,
                                                         horizons=("30s",))], env)
    crashing = ServiceProcess(tmp_path / "crashing", [config(broker.bootstrap, topic, reference_path,
                                                             f"crashing-{uuid.uuid4().hex[:6]}", receiver.url,
                                                             "crashing-0", horizons=("30s",))], env)
    services.extend([steady, crashing])
    steady.start()
    crashing.start(wait_ready=False)
    producer = produce_slowly(broker.bootstrap, topic, traffic_events(), seconds=50)

    rng = random.Random(int(os.environ.get("DRIFTLINE_CRASH_SEED", "7")))
    kill_log = []
    for k in range(KILLS):
        # any moment: mostly once it reads (replaying, counting, evaluating), sometimes while
        # it starts or joins the group
        if rng.random() < 0.75:
            wait_until(lambda: crashing.get("/readyz")[0] == 200 if crashing._answers("/healthz") else False, 60,
                       what="the restarted process to read its partitions")
        time.sleep(rng.uniform(0.3, 5.0))
        assert crashing.proc is not None
        crashing.proc.send_signal(signal.SIGKILL)
        crashing.proc.wait(10)
        kill_log.append((k, len(results(crashing.workdir / "state.sqlite"))))
        crashing.start(wait_ready=False)
    producer.join(120)
    print(f"\nkilled at (kill, windows recorded so far): {kill_log}")

    wait_until(lambda: len(results(steady.workdir / "state.sqlite")) >= WINDOWS, 120,
               what="the uninterrupted run's windows")
    wait_until(lambda: len(results(crashing.workdir / "state.sqlite")) >= WINDOWS, 180,
               what="the crashed run's windows")
    for run in (steady, crashing):
        wait_until(lambda: len(results(run.workdir / "state.sqlite", "30s")) >= WINDOWS // 3, 30,  # noqa: B023
                   what="the horizon windows")
    time.sleep(3.0)  # a window recorded twice would show up by now

    want = results(steady.workdir / "state.sqlite")
    got = results(crashing.workdir / "state.sqlite")
    assert [r["window_start"] for r in want] == [T0 + w * WINDOW_S for w in range(WINDOWS)]
    assert [r["events"] for r in want] == [1000] * WINDOWS, "the uninterrupted run lost or delayed events"
    assert [r["window_start"] for r in got] == [r["window_start"] for r in want], "a window recorded twice or lost"
    for a, b in zip(got, want, strict=True):
        assert comparable(a) == comparable(b), (a["window_start"], a, b)
    want_30s = results(steady.workdir / "state.sqlite", "30s")
    got_30s = results(crashing.workdir / "state.sqlite", "30s")
    assert [r["events"] for r in want_30s] == [3000] * (WINDOWS // 3)
    assert [comparable(r) for r in got_30s] == [comparable(r) for r in want_30s]
    drifted = [w for w, r in enumerate(want) if r["dataset_drift"]]
    assert set(drifted) <= set(DRIFTED) and len(drifted) >= 3, drifted

    # the drifted windows ask for retraining once; both runs name the request alike
    wait_until(lambda: len(receiver.state.unique_verified()) >= 1 and
               sum(1 for d in receiver.state.deliveries if d.verified) >= 2, 60, what="both runs' webhooks")
    ids = {d.webhook_id for d in receiver.state.deliveries if d.verified}
    assert len(ids) == 1, ids


@pytest.mark.parametrize("window", ["count", "time"])
def test_a_second_process_joining_then_leaving_counts_every_event_once(
        services, tmp_path, broker, reference_path, window: str) -> None:
    """Whatever the two processes' windows, every event of the topic is in exactly one of
    them (closed in either, or open in the one that stays); with time windows, per window
    start the events of both processes' windows (shares included) are a single run's 1,000."""
    topic = f"rebalance-{uuid.uuid4().hex[:10]}"
    broker.create_topic(topic, partitions=PARTITIONS)
    group = f"shared-{uuid.uuid4().hex[:6]}"
    events = traffic_events()
    procs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        # time windows: a lateness the pause below exceeds, so the windows the second process
        # hands back are closed in the first one already
        conf = config(broker.bootstrap, topic, reference_path, group, lateness="10s")
        if window == "count":
            conf["window"] = {"type": "count", "size": 1000, "min_events": 200}
        procs.append(ServiceProcess(tmp_path / name, [conf]))
    a, b = procs
    services.extend(procs)
    a.start()
    producer = produce_slowly(broker.bootstrap, topic, events, seconds=50)
    time.sleep(12)
    b.start(wait_ready=False)
    wait_until(lambda: "assigned partitions [" in b.log() and "assigned partitions []" not in b.log(), 60,
               what="the second process to get partitions")
    time.sleep(8)
    # it stalls for 4 s (a GC pause, a slow node; within the 6 s session) while the first
    # reads on, then leaves
    assert b.proc is not None
    b.proc.send_signal(signal.SIGSTOP)
    time.sleep(4)
    b.proc.send_signal(signal.SIGCONT)
    assert b.stop() == 0  # leaves mid-window: its partitions and open window go back to the first
    producer.join(120)

    def accounted() -> int:
        closed = sum(r["events"] for p in procs for r in results(p.workdir / "state.sqlite", horizon=""))
        return closed + a.monitor("credit-risk")["open_window_events"]

    wait_until(lambda: accounted() >= len(events), 120, what="every event in a window")
    time.sleep(3.0)  # an event counted twice would show up by now
    b_windows = results(b.workdir / "state.sqlite", horizon="")
    print(f"\nthe second process evaluated {len(b_windows)} windows")
    assert b_windows, "the second process never evaluated a window: the rebalance was not exercised"
    assert "revoked" in a.log() and "partitions moved" in a.log()
    assert accounted() == len(events)
    if window == "time":
        per_window: dict[float, int] = {}
        for proc in procs:
            for r in results(proc.workdir / "state.sqlite"):
                per_window[r["window_start"]] = per_window.get(r["window_start"], 0) + r["events"]
        assert per_window == {T0 + w * WINDOW_S: 1000 for w in range(WINDOWS)}
        shares = [r for r in results(a.workdir / "state.sqlite") if r["partitions"] is not None]
        print(f"the first process evaluated {len(shares)} shares of windows handed back")


def test_the_second_reader_reads_exactly_its_ranges_and_gives_up_cleanly(broker) -> None:
    """The horizon rebuild's RangeReader (a consumer outside the group) hands over exactly the
    records of [from, to) per partition, says when each is done, and ends; one whose
    receiver fails gives its partitions up (done) instead of leaving them waiting."""
    from driftline.collectors.kafka import Polled, RangeReader
    from driftline.service.config import KafkaSettings

    from tests.helpers import produce

    topic = f"ranges-{uuid.uuid4().hex[:10]}"
    broker.create_topic(topic, partitions=2)
    for p in (0, 1):
        produce(broker.bootstrap, topic, [f"{p}-{i}".encode() for i in range(100)], partition=p)
    settings = KafkaSettings(bootstrap_servers=[broker.bootstrap], topic=topic, group_id="unused")

    got: list[tuple[int, int, bytes | None]] = []
    done: list[int] = []

    def deliver(polled: Polled) -> bool:
        got.extend((*polled.origin(i)[:2], polled.values[i]) for i in range(len(polled)))
        return True

    reader = RangeReader(settings, lambda _: None, {0: (10, 30), 1: (99, 100)}, deliver, done.append, False, "t")
    reader.start()
    reader.join(60)
    assert not reader.is_alive() and sorted(done) == [0, 1]
    assert sorted(got) == [(0, o, f"0-{o}".encode()) for o in range(10, 30)] + [(1, 99, b"1-99")]

    def broken(polled: Polled) -> bool:
        raise RuntimeError("a bug")

    done.clear()
    reader = RangeReader(settings, lambda _: None, {0: (0, 100), 1: (0, 100)}, broken, done.append, False, "t")
    reader.start()
    reader.join(60)
    assert not reader.is_alive() and sorted(done) == [0, 1]
