"""Standbys: a second instance of the monitor in the same group stands by; when the active one
is killed it takes over: from the active one's checkpoint when they share the state file (every
window then equals an uninterrupted run's), from the committed offsets otherwise (each event in
exactly one window of one of them, and the log names what starts over)."""

from __future__ import annotations

import re
import signal
import time
import uuid

import pytest

from tests.crash import (
    PARTITIONS,
    WINDOWS,
    comparable,
    config,
    in_progress,
    produce_slowly,
    results,
    standby_pair,
    traffic_events,
)
from tests.helpers import ServiceProcess, wait_until

pytestmark = pytest.mark.integration


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
