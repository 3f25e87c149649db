"""`driftline check --sample N` against the real local broker: the last N records of each
monitor's topic, decoded as the service decodes them, counted by outcome with the first
details; the monitor's consumer group and its offsets are untouched."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from driftline.service.check import sample_topic
from driftline.service.config import load_settings
from driftline.service.demo.broker import LocalBroker, free_port
from driftline.service.demo.traffic import TrafficModel, monitor_config


def produce_timed(broker: LocalBroker, topic: str, events: list[dict[str, Any]], start_ms: int,
                  partitions: int) -> None:
    """Events in order, one millisecond apart, round-robin over the partitions."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, max_block_ms=15000, linger_ms=5)
    for i, event in enumerate(events):
        producer.send(topic, json.dumps(event).encode(), partition=i % partitions, timestamp_ms=start_ms + i)
    producer.flush(30)
    producer.close(10)


def new_topic(broker: LocalBroker, partitions: int) -> str:
    name = f"sample-{uuid.uuid4().hex[:10]}"
    broker.create_topic(name, partitions=partitions)
    return name


def write_config(path: Path, monitors: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"service": {"state_path": str(path.parent / "state.sqlite")},
                                    "monitors": monitors}, sort_keys=False))
    return path


def check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "driftline.service.cli", "check", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120, env={"DO_NOT_TRACK": "1", "PATH": ""})


def committed(broker: LocalBroker, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close()


def commit(broker: LocalBroker, group: str, topic: str, offsets: dict[int, int]) -> None:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()})
    finally:
        consumer.close()


def test_valid_events_and_times_without_a_zone(broker: LocalBroker, reference_path: Path, tmp_path: Path) -> None:
    now = time.time()
    valid_topic, bad_topic = new_topic(broker, 3), new_topic(broker, 2)
    produce_timed(broker, valid_topic, TrafficModel(seed=1).events(250, now=now), int(now * 1000), 3)
    naive = datetime.fromtimestamp(now, UTC).replace(tzinfo=None).isoformat()  # no Z, no +hh:mm
    produce_timed(broker, bad_topic, [{**e, "ts": naive} for e in TrafficModel(seed=2).events(120, now=now)],
                  int(now * 1000), 2)
    good = monitor_config("credit-risk", broker.bootstrap, valid_topic, reference_path)
    bad = monitor_config("credit-risk-iso", broker.bootstrap, bad_topic, reference_path,
                         event={"event_time": {"path": "ts", "format": "iso8601"}})
    commit(broker, good["kafka"]["group_id"], valid_topic, {0: 7, 1: 3})  # the monitor's group, mid-topic
    before = committed(broker, good["kafka"]["group_id"], valid_topic, 3)

    done = check(write_config(tmp_path / "both.yaml", [good, bad]), "--sample", "100")
    assert done.returncode == 1, done.stdout + done.stderr  # every record of one monitor is invalid
    out = done.stdout
    assert f"credit-risk: the last 100 records of topic '{valid_topic}' (3 partitions)" in out
    assert re.search(r"^  valid +100  \(100\.0%\)$", out, re.M)
    bad_part = out[out.index("credit-risk-iso:"):]
    assert f"the last 100 records of topic '{bad_topic}' (2 partitions)" in bad_part
    assert re.search(r"^  valid +0  \(0\.0%\)$", bad_part, re.M)
    assert re.search(r"^  bad_timestamp +100  \(100\.0%\)$", bad_part, re.M)
    details = re.findall(r"^      partition (\d), offset (\d+): (.*)$", bad_part, re.M)
    assert len(details) == 3 and all("without a time zone" in d for _, _, d in details)
    assert "hint: the event times have no time zone" in bad_part
    assert "every sampled record is invalid" in bad_part
    assert naive not in out + done.stderr  # a detail never quotes the value

    ok = check(write_config(tmp_path / "good.yaml", [good]), "--sample", "1000")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"the last 250 records of topic '{valid_topic}'" in ok.stdout  # fewer than asked: all of them

    # the monitor's group is untouched, and the check made no group of its own commit anything
    assert committed(broker, good["kafka"]["group_id"], valid_topic, 3) == before == {0: 7, 1: 3, 2: None}
    assert committed(broker, bad["kafka"]["group_id"], bad_topic, 2) == {0: None, 1: None}


def test_the_sample_is_the_last_records_across_partitions(broker: LocalBroker, reference_path: Path,
                                                         tmp_path: Path) -> None:
    now = time.time()
    topic = new_topic(broker, 3)
    events = TrafficModel(seed=3).events(300, now=now)
    for e in events[-40:]:  # the 40 latest lack their event time
        del e["ts"]
    produce_timed(broker, topic, events, int(now * 1000) - 10_000, 3)
    path = write_config(tmp_path / "c.yaml", [monitor_config("m", broker.bootstrap, topic, reference_path)])
    settings, secrets = load_settings(path)
    last = sample_topic(settings.monitors[0], 0, secrets, 40)
    assert (last.records, last.valid, dict(last.invalid)) == (40, 0, {"missing_field": 40})
    assert all(offset >= 260 // 3 for _, offset, _ in last.details["missing_field"])
    wider = sample_topic(settings.monitors[0], 0, secrets, 100)
    assert (wider.records, wider.valid, dict(wider.invalid)) == (100, 60, {"missing_field": 40})
    assert wider.complete and wider.partitions == 3


def test_an_unreachable_broker_or_topic_is_a_clear_error_in_bounded_time(broker: LocalBroker, reference_path: Path,
                                                                         tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    path = write_config(tmp_path / "dead.yaml", [monitor_config("m", dead, "serving", reference_path)])
    started = time.monotonic()
    done = check(path, "--sample", "10", "--timeout", "3")
    assert time.monotonic() - started < 30  # the interpreter's start, then 3 s
    assert done.returncode == 1
    assert f"m: monitors[0].kafka.bootstrap_servers: cannot reach {dead} within 3s" in done.stderr

    missing = f"no-such-topic-{uuid.uuid4().hex[:6]}"
    path = write_config(tmp_path / "missing.yaml", [monitor_config("m", broker.bootstrap, missing, reference_path)])
    done = check(path, "--sample", "10", "--timeout", "5")
    assert done.returncode == 1
    assert f"m: monitors[0].kafka.topic: no topic '{missing}' on {broker.bootstrap}" in done.stderr

    bad = check(path, "--sample", "0")
    assert bad.returncode == 2 and "expected a whole number of records, at least 1, got '0'" in bad.stderr


def test_an_empty_topic_is_said_plainly(broker: LocalBroker, reference_path: Path, tmp_path: Path) -> None:
    topic = new_topic(broker, 2)
    done = check(write_config(tmp_path / "e.yaml", [monitor_config("m", broker.bootstrap, topic, reference_path)]),
                 "--sample", "10", "--timeout", "5")
    assert done.returncode == 0, done.stderr
    assert f"m: topic '{topic}' has no records to sample yet" in done.stdout
