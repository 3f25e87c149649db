"""Crash safety and standbys, with `driftline run` processes and a real Tansu broker.

- kill -9 at random moments, DRIFTLINE_CRASH_KILLS times (10 by default), while traffic
  flows into three partitions, with time windows closed by event time with no allowed
  lateness: after the restarts, every window's event count and drift numbers equal those
  of a run that was never interrupted, reading the same topic, and each window is recorded
  once: the 10 s buckets and the 30 s horizon windows merging them (restored from the
  checkpoint). The retraining request the drifted windows make is delivered with the same
  webhook-id as the uninterrupted run's. The same with count windows: every window holds
  exactly its size, none is recorded twice, none lost.
- A second instance of the monitor in the same group stands by; when the active one is
  killed it takes over: from the active one's checkpoint when they share the state file
  (every window then equals an uninterrupted run's), from the committed offsets otherwise
  (each event in exactly one window of one of them, and the log names what starts over).

Each run writes its window results to its state file; the test reads them there.
"""

from __future__ import annotations

import json
import os
import random
import re
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

    kill_at_random_moments(crashing, KILLS)
    producer.join(120)

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
    for run in (steady, crashing):  # no lateness allowed, and no event late: windows close on the slowest
        assert run.sample("driftline_events_late_total") == 0.0
    drifted = [w for w, r in enumerate(want) if r["dataset_drift"]]
    assert set(drifted) <= set(DRIFTED) and len(drifted) >= 3, drifted

    # the drifted windows ask for retraining once; both runs name the request alike
    wait_until(lambda: len(receiver.state.unique_verified()) >= 1 and
               sum(1 for d in receiver.state.deliveries if d.verified) >= 2, 60, what="both runs' webhooks")
    ids = {d.webhook_id for d in receiver.state.deliveries if d.verified}
    assert len(ids) == 1, ids


def test_kill_9_at_random_moments_with_count_windows_loses_no_event_and_records_no_window_twice(
        services, tmp_path, broker, reference_path) -> None:
    """Count windows take events in the order they are read, which differs from run to run
    over several partitions: every window holds exactly its size, every event is in one."""
    topic = f"crash-count-{uuid.uuid4().hex[:10]}"
    broker.create_topic(topic, partitions=PARTITIONS)
    (tmp_path / "crashing").mkdir()
    conf = config(broker.bootstrap, topic, reference_path, f"count-{uuid.uuid4().hex[:6]}", None, "count-0")
    conf["window"] = {"type": "count", "size": 700, "min_events": 200}
    crashing = ServiceProcess(tmp_path / "crashing", [conf])
    services.append(crashing)
    crashing.start(wait_ready=False)
    events = traffic_events()
    producer = produce_slowly(broker.bootstrap, topic, events, seconds=40)
    kill_at_random_moments(crashing, KILLS)
    producer.join(120)
    wait_until(lambda: crashing._answers("/readyz"), 60, what="the last restart")

    def accounted() -> int:
        closed = sum(r["events"] for r in results(crashing.workdir / "state.sqlite", horizon=""))
        return closed + crashing.monitor("credit-risk")["open_window_events"]

    wait_until(lambda: accounted() >= len(events), 120, what="every event in a window")
    time.sleep(3.0)  # an event counted twice would show up by now
    got = results(crashing.workdir / "state.sqlite", horizon="")
    assert accounted() == len(events)
    assert [r["events"] for r in got] == [700] * (len(events) // 700)


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


def test_a_standby_sharing_the_state_file_takes_over_with_the_windows_in_progress(
        services, tmp_path, broker, reference_path) -> None:
    """Two instances of one monitor in one group: one reads, the other stands by (it says so
    in the API and the log). The active one is killed mid-window; the standby takes its
    partitions and its checkpoint over: every window equals an uninterrupted run's."""
    topic = f"standby-{uuid.uuid4().hex[:10]}"
    broker.create_topic(topic, partitions=PARTITIONS)
    (tmp_path / "steady").mkdir()
    steady = ServiceProcess(tmp_path / "steady", [config(broker.bootstrap, topic, reference_path,
                                                         f"steady-{uuid.uuid4().hex[:6]}", horizons=("30s",))])
    a, b = standby_pair(tmp_path, broker.bootstrap, topic, reference_path, shared=True)
    services.extend([steady, a, b])
    steady.start()
    a.start()
    wait_until(lambda: a.monitor("credit-risk")["role"] == "active", 30, what="the first instance to be active")
    b.start()
    wait_until(lambda: b.monitor("credit-risk")["role"] == "standby", 30, what="the second to stand by")
    producer = produce_slowly(broker.bootstrap, topic, traffic_events(), seconds=40)
    time.sleep(15)
    assert a.monitor("credit-risk")["role"] == "active" and b.monitor("credit-risk")["role"] == "standby"
    assert "standby for" in b.log()
    assert a.proc is not None
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    wait_until(lambda: b.monitor("credit-risk")["role"] == "active", 60, what="the standby to take over")
    producer.join(120)
    shared = tmp_path / "shared.sqlite"
    for state in (steady.workdir / "state.sqlite", shared):
        wait_until(lambda: len(results(state)) >= WINDOWS, 120, what="every window")  # noqa: B023
    time.sleep(3.0)
    want, got = results(steady.workdir / "state.sqlite"), results(shared)
    assert [r["events"] for r in want] == [1000] * WINDOWS
    assert [comparable(r) for r in got] == [comparable(r) for r in want]
    assert [comparable(r) for r in results(shared, "30s")] == \
        [comparable(r) for r in results(steady.workdir / "state.sqlite", "30s")]
    assert "windows in progress restored from the checkpoint" in b.log()


def test_a_standby_with_its_own_state_file_takes_over_from_the_committed_offsets(
        services, tmp_path, broker, reference_path) -> None:
    """Without the active one's state file the standby reads on from the committed offsets:
    the window in progress starts over with the events from there on (the log names it), no
    window is evaluated by both, and every event is in exactly one window of one of them (the
    first one's in-progress window stays in its state file)."""
    topic = f"standby-own-{uuid.uuid4().hex[:10]}"
    broker.create_topic(topic, partitions=PARTITIONS)
    a, b = standby_pair(tmp_path, broker.bootstrap, topic, reference_path, shared=False)
    services.extend([a, b])
    a.start()
    wait_until(lambda: a.monitor("credit-risk")["role"] == "active", 30, what="the first instance to be active")
    b.start()
    events = traffic_events()
    producer = produce_slowly(broker.bootstrap, topic, events, seconds=40)
    time.sleep(15)
    assert a.stop() == 0  # leaves (a rolling update): it checkpoints and commits on the way out
    wait_until(lambda: b.monitor("credit-risk")["role"] == "active", 60, what="the standby to take over")
    producer.join(120)
    a_windows = results(a.workdir / "state.sqlite")
    a_open = in_progress(a.workdir / "state.sqlite")
    assert len(a_open) == 1, a_open  # stopped with a window in progress (maybe full, not yet closed)

    def accounted() -> int:
        closed = sum(r["events"] for r in a_windows + results(b.workdir / "state.sqlite"))
        return closed + sum(a_open.values()) + b.monitor("credit-risk")["open_window_events"]

    wait_until(lambda: accounted() >= len(events), 120, what="every event in a window")
    time.sleep(3.0)
    b_windows = results(b.workdir / "state.sqlite")
    assert a_windows and b_windows
    assert not {r["window_start"] for r in a_windows} & {r["window_start"] for r in b_windows}
    assert accounted() == len(events)
    [(start, before)] = a_open.items()
    # its events are split between the two: what the first read is in its state file (it stood
    # down), the rest in the second's window of that start (none if the first had read it all)
    after = sum(r["events"] for r in b_windows if r["window_start"] == start)
    assert before + after == 1000
    assert re.search(r"window 10s \S+ \S+\.\.\S+ \S+ holds only the events read from the committed offsets on",
                     b.log()), b.log()[-3000:]


def in_progress(state: Path) -> dict[float, int]:
    """The buckets in progress in a state file's checkpoint: start -> events."""
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=10)
    try:
        [(meta,)] = db.execute("SELECT meta FROM monitor_state").fetchall()
    finally:
        db.close()
    summary = json.loads(meta)["windows"]["summary"]
    return {start: events for key, (start, _, events) in summary.items() if key.startswith("b")}
