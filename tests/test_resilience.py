"""Shutdown and broker trouble, with `driftline run` as a process and a real Tansu broker.

- SIGTERM during traffic: exit 0 within 10 s; the group's committed offset is exactly the
  position after the last record the service accounted for (its checkpoint holds the open
  window); a restart counts exactly the rest, and its open window holds the events read
  before the restart and after.
- The broker stopped (SIGSTOP) for DRIFTLINE_OUTAGE_SECONDS (a minute by default):
  /healthz and /metrics answer, /readyz turns 503, then 200 after SIGCONT, and every event
  is counted exactly once.
- The broker killed, and after the same outage a new, empty one started on the same address:
  driftline stays up, reconnects by itself and reads the recreated topic from its beginning,
  though its offsets start at 0 again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from driftline.service.demo.broker import LocalBroker
from driftline.service.demo.traffic import TrafficModel, encode, monitor_config

from tests.helpers import ServiceProcess, produce, wait_until

pytestmark = pytest.mark.integration

WINDOW = 1000
OUTAGE = float(os.environ.get("DRIFTLINE_OUTAGE_SECONDS", "60"))
READY_BOUND = 10.0  # /readyz turns 503 within this after the broker stops answering


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker of this test's own, which it may stop, kill and restart."""
    b = LocalBroker(log_path=tmp_path / "tansu.log").start()
    yield b
    if b.pid is not None:
        os.kill(b.pid, signal.SIGCONT)
    b.stop()


def start(services: list[ServiceProcess], tmp_path: Path, bootstrap: str, topic: str, reference: Path,
          group: str) -> ServiceProcess:
    conf = monitor_config("credit-risk", bootstrap, topic, reference,
                          window={"type": "count", "size": WINDOW, "min_events": 200},
                          kafka={"bootstrap_servers": [bootstrap], "topic": topic, "group_id": group,
                                 "auto_offset_reset": "earliest", "commit_interval": 1})
    svc = ServiceProcess(tmp_path, [conf])
    services.append(svc)
    return svc.start()


def serving(services: list[ServiceProcess], tmp_path: Path, broker: LocalBroker, reference: Path, name: str,
            seed: int, first: int) -> tuple[ServiceProcess, str, TrafficModel]:
    """A service on a new topic of `broker`, once it has read the `first` events produced."""
    topic = f"serving-{uuid.uuid4().hex[:10]}"
    broker.create_topic(topic)
    svc = start(services, tmp_path, broker.bootstrap, topic, reference, f"{name}-{uuid.uuid4().hex[:8]}")
    traffic = TrafficModel(seed=seed)
    produce(broker.bootstrap, topic, encode(traffic.events(first)))
    wait_until(lambda: consumed(svc) == first, 60, what="the first events")
    return svc, topic, traffic


def consumed(svc: ServiceProcess) -> float:
    return svc.sample("driftline_events_consumed_total", monitor="credit-risk") or 0.0


def windows_closed(svc: ServiceProcess) -> float:
    return sum(svc.sample("driftline_windows_total", monitor="credit-risk", status=s) or 0
               for s in ("evaluated", "insufficient_data"))


def committed_offset(bootstrap: str, group: str, topic: str) -> Any:
    """The group's committed OffsetAndMetadata of partition 0."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return c.committed(TopicPartition(topic, 0), metadata=True)
    finally:
        c.close(autocommit=False)


def test_sigterm_during_traffic_commits_exactly_what_was_accounted_for_and_exits_within_10s(
        services, tmp_path, broker, topic, reference_path) -> None:
    from kafka import KafkaProducer

    group = f"shutdown-{uuid.uuid4().hex[:8]}"
    svc = start(services, tmp_path, broker.bootstrap, topic, reference_path, group)
    events = encode(TrafficModel(seed=41).events(3000))
    produced = [0]
    stop_producing = threading.Event()

    def traffic() -> None:  # ~4,000 events/s until told to stop
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5, max_block_ms=15000)
        i = 0
        while not stop_producing.is_set():
            for _ in range(40):
                producer.send(topic, events[i % len(events)])
                i += 1
            time.sleep(0.01)
        producer.flush(30)
        producer.close(10)
        produced[0] = i

    producer = threading.Thread(target=traffic, daemon=True)
    producer.start()
    try:
        wait_until(lambda: consumed(svc) >= 5000, 60, what="traffic to flow through driftline")
        assert svc.proc is not None
        t0 = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        rc = svc.proc.wait(15)
        took = time.monotonic() - t0
    finally:
        stop_producing.set()
        producer.join(60)
    print(f"\nshutdown: exit {rc} after {took:.2f}s; produced {produced[0]:,}")
    assert rc == 0 and took < 10.0, (rc, took)
    m = re.search(r"consumer stopped, (\d+) records consumed, committed offsets \{(?:0: (\d+))?\}", svc.log())
    assert m, svc.log()[-3000:]
    accounted, last_commit = int(m.group(1)), int(m.group(2) or 0)
    # one partition, a new group: the checkpoint written on the way out holds every record
    # read, the open window's included, so the commit is the position after the last one
    assert accounted > 0 and last_commit == accounted
    committed = committed_offset(broker.bootstrap, group, topic)
    assert committed.offset == last_commit
    if committed.metadata:  # Tansu drops offset metadata; Kafka keeps it
        assert json.loads(committed.metadata)["driftline"] == 2
    assert accounted < produced[0]  # it stopped with traffic still coming

    # a new process on the same state file reads exactly the rest: nothing lost, nothing twice
    again = start(services, tmp_path, broker.bootstrap, topic, reference_path, group)
    rest = produced[0] - accounted
    wait_until(lambda: consumed(again) >= rest, 60, what="the rest of the topic")
    time.sleep(1.5)
    assert consumed(again) == rest
    # the restored open window holds the events read before the restart, and those after
    expect_open = produced[0] % WINDOW
    wait_until(lambda: again.monitor("credit-risk")["open_window_events"] == expect_open, 10,
               what=f"{expect_open} events in the open window")


def test_a_stopped_broker_makes_driftline_not_ready_then_it_resumes_counting_every_event_once(
        services, tmp_path, own_broker, reference_path) -> None:
    svc, topic, traffic = serving(services, tmp_path, own_broker, reference_path, "stop", 43, 2 * WINDOW + 300)
    time.sleep(1.5)  # a commit of them (commit_interval 1 s)
    assert svc.get("/readyz")[0] == 200

    assert own_broker.pid is not None
    os.kill(own_broker.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    not_ready_after = None
    try:
        while time.monotonic() - stopped_at < OUTAGE:
            t = time.monotonic()
            assert svc.get("/healthz")[0] == 200
            status, body = svc.get("/metrics")
            assert status == 200 and b"driftline_events_consumed_total" in body
            assert time.monotonic() - t < 3.0, "the HTTP API is slow while the broker is stopped"
            ready = svc.get("/readyz")[0]
            if not_ready_after is None and ready == 503:
                not_ready_after = time.monotonic() - stopped_at
            assert not_ready_after is None or ready == 503, "ready again while the broker is stopped"
            time.sleep(0.5)
        assert svc.proc is not None and svc.proc.poll() is None
    finally:
        os.kill(own_broker.pid, signal.SIGCONT)
    print(f"\nbroker stopped {OUTAGE:.0f}s: /readyz 503 after {not_ready_after}s")
    assert not_ready_after is not None and not_ready_after < READY_BOUND

    wait_until(lambda: svc.get("/readyz")[0] == 200, 90, what="/readyz to be 200 again")
    produce(own_broker.bootstrap, topic, encode(traffic.events(2 * WINDOW - 300)))
    total = 4 * WINDOW
    wait_until(lambda: consumed(svc) >= total, 90, what="the events produced after the outage")
    wait_until(lambda: windows_closed(svc) >= 4, 30, what="four windows")
    time.sleep(2.0)
    assert consumed(svc) == total
    assert windows_closed(svc) == 4
    m = svc.monitor("credit-risk")
    assert m["open_window_events"] == 0 and m["latest_window"]["events"] == WINDOW


def test_a_broker_killed_and_restarted_empty_on_the_same_address_is_read_again_from_the_start(
        services, tmp_path, own_broker, reference_path) -> None:
    first = WINDOW + 500
    svc, topic, traffic = serving(services, tmp_path, own_broker, reference_path, "kill", 47, first)
    time.sleep(1.5)

    assert own_broker._proc is not None
    own_broker._proc.kill()
    own_broker._proc.wait(5)
    own_broker._proc = None
    killed_at = time.monotonic()
    wait_until(lambda: svc.get("/readyz")[0] == 503, READY_BOUND, what="/readyz to turn 503")
    print(f"\nbroker killed: /readyz 503 after {time.monotonic() - killed_at:.1f}s")
    assert svc.get("/healthz")[0] == 200 and svc.get("/metrics")[0] == 200
    deadline = killed_at + OUTAGE
    while time.monotonic() < deadline:  # down for the whole outage: the HTTP side keeps answering
        assert svc.get("/healthz")[0] == 200 and svc.get("/metrics")[0] == 200
        assert svc.get("/readyz")[0] == 503
        time.sleep(1.0)
    assert svc.proc is not None and svc.proc.poll() is None
    own_broker.start()  # empty: no topics, no groups, offsets from 0

    # More events than driftline had read before: resuming at its old position would skip
    # the first `first` of them without a sign.
    own_broker.create_topic(topic)
    second = 2 * WINDOW + 700
    produce(own_broker.bootstrap, topic, encode(traffic.events(second)))
    wait_until(lambda: consumed(svc) >= first + second, 120, what="the events on the new broker")
    wait_until(lambda: svc.get("/readyz")[0] == 200, 60, what="/readyz to be 200 again")
    time.sleep(2.0)
    assert consumed(svc) == first + second
    assert svc.proc is not None and svc.proc.poll() is None
    wait_until(lambda: windows_closed(svc) >= (first + second) // WINDOW, 30, what="the windows")
    assert svc.monitor("credit-risk")["open_window_events"] == (first + second) % WINDOW
