"""Crash safety with count windows: kill -9 at random moments, DRIFTLINE_CRASH_KILLS times (10 by
default), while traffic flows into three partitions: every window holds exactly its size, none
is recorded twice, none lost (tests/test_crash.py has the same with time windows)."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.crash import KILLS, PARTITIONS, config, kill_at_random_moments, produce_slowly, results, traffic_events
from tests.helpers import ServiceProcess, wait_until

pytestmark = pytest.mark.integration


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
