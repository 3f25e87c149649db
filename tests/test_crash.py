"""Crash safety with time windows: kill -9 at random moments, DRIFTLINE_CRASH_KILLS times (10 by
default), while traffic flows into three partitions, with time windows closed by event time
with no allowed lateness. After the restarts, every window's event count and drift numbers equal
those of a run that was never interrupted, reading the same topic, and each window is recorded
once: the 10 s buckets and the 30 s horizon windows merging them (restored from the checkpoint).
The retraining request the drifted windows make is delivered with the same webhook-id as the
uninterrupted run's. (Count windows: tests/test_crash_count_windows.py; standbys:
tests/test_standby.py. Each chaos run is a file of its own so that the workers share them out.)

Each run writes its window results to its state file; the test reads them there.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.crash import (
    DRIFTED,
    KILLS,
    PARTITIONS,
    T0,
    WINDOW_S,
    WINDOWS,
    comparable,
    config,
    kill_at_random_moments,
    produce_slowly,
    results,
    traffic_events,
)
from tests.helpers import ServiceProcess, wait_until

pytestmark = pytest.mark.integration


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
