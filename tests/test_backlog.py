"""A backlog over several partitions, read by `driftline run` from a real broker.

kafka-python fetches partitions in chunks of up to a megabyte each, so a backlog is read
with one partition far ahead of another in event time. Windows close on the slowest
partition, so nothing is late: with 3 and 12 partitions, from a fresh start and across a
restart (SIGTERM mid-backlog, then a new process on the same state file), no event is
counted late and every window holds exactly the events whose time falls in it.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from driftline.service.demo.traffic import TrafficModel, monitor_config

from tests.helpers import ServiceProcess, produce, wait_until

pytestmark = pytest.mark.integration

WINDOW_S = 10.0
EVENTS = 36_000  # about 14 MB: several fetches of each partition
SPAN_S = 300.0  # of event time
T0 = (time.time() // 86400 - 2) * 86400


def backlog(partitions: int, seed: int) -> tuple[dict[int, list[bytes]], Counter[float]]:
    """Each partition's events in order of event time (partitions get uneven shares), and
    the events per window; then a far-future event per partition, which closes them all."""
    rng = random.Random(seed)
    weights = [rng.uniform(0.5, 2.0) for _ in range(partitions)]
    per: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    windows: Counter[float] = Counter()
    for i, e in enumerate(TrafficModel(seed=seed).events(EVENTS)):
        e["ts"] = T0 + i * SPAN_S / EVENTS
        windows[math.floor(e["ts"] / WINDOW_S) * WINDOW_S] += 1
        per[rng.choices(range(partitions), weights)[0]].append(json.dumps(e, separators=(",", ":")).encode())
    closer = TrafficModel(seed=seed).events(1)[0]
    closer["ts"] = T0 + 86400.0
    for p in per:
        per[p].append(json.dumps(closer).encode())
    return per, windows


def recorded(state: Path) -> Counter[float]:
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT window_start, events FROM window_results WHERE horizon = '10s' AND window_start < ?",
                          (T0 + 86400.0,)).fetchall()
    except sqlite3.OperationalError:
        return Counter()
    finally:
        db.close()
    out: Counter[float] = Counter()
    for start, events in rows:
        out[start] += events  # (a window recorded twice would show as too many events)
    return out


@pytest.mark.parametrize("restart", [False, True], ids=["fresh", "restart"])
@pytest.mark.parametrize("partitions", [3, 12])
def test_a_backlog_over_partitions_is_read_without_a_late_event(services, tmp_path, broker, reference_path,
                                                                partitions: int, restart: bool) -> None:
    topic = f"backlog-{uuid.uuid4().hex[:10]}"
    broker.create_topic(topic, partitions=partitions)
    per, expected = backlog(partitions, seed=partitions)
    for p, values in per.items():
        produce(broker.bootstrap, topic, values, partition=p, linger_ms=50, batch_size=256 * 1024)
    conf = monitor_config("credit-risk", broker.bootstrap, topic, reference_path,
                          window={"type": "time", "size": "10s", "allowed_lateness": "0s", "min_events": 10},
                          kafka={"bootstrap_servers": [broker.bootstrap], "topic": topic,
                                 "group_id": f"backlog-{uuid.uuid4().hex[:6]}", "auto_offset_reset": "earliest",
                                 "commit_interval": 1})
    svc = ServiceProcess(tmp_path, [conf])
    services.append(svc)
    late = 0.0
    svc.start()
    if restart:
        wait_until(lambda: (svc.sample("driftline_events_consumed_total") or 0) > EVENTS / 3, 60,
                   what="a third of the backlog read")
        late += svc.sample("driftline_events_late_total") or 0.0
        assert svc.stop() == 0
        svc.start()
    state = tmp_path / "state.sqlite"
    wait_until(lambda: sum(recorded(state).values()) >= EVENTS, 120, what="every window of the backlog")
    time.sleep(1.0)
    late += svc.sample("driftline_events_late_total") or 0.0
    assert late == 0
    assert recorded(state) == expected
    assert svc.stop() == 0
    if restart:
        assert "windows in progress restored from the checkpoint" in svc.log()
