"""`driftline check --sample N`: how a monitor's recent records decode, before deploying.

For each monitor: the last N records of its topic (by record time, across partitions) are
read by a consumer outside any group (it assigns partitions itself and commits nothing, so
the monitor's group and its offsets are untouched), decoded by the monitor's own
`EventDecoder` as the service decodes a poll, and counted by outcome: valid, or invalid by
reason, with the first details of each reason (details name fields and types, never values)
and where those records are (partition, offset).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from driftline.collectors.consumer import consumer_config
from driftline.collectors.events import EventDecoder
from driftline.collectors.schema import KafkaSettings

from .config import MonitorSettings, Secrets, Settings
from .monitor import MonitorSetupError, feature_kinds
from .reference import ReferenceError, load_profile

DETAILS_PER_REASON = 3
# What to do about the commonest causes, keyed by reason and the start of the decoder's detail
# (collectors/events.py words them; tests/test_check_sample.py holds the two together).
_HINTS = {
    ("bad_timestamp", "ISO-8601 time without a time zone"):
        "the event times have no time zone, so no instant can be read from them: send them with Z or +hh:mm "
        "(2026-11-30T09:00:00Z), or use event_time.format epoch_seconds / epoch_millis",
    ("bad_timestamp", "more than"):
        "event times far ahead of this machine's clock: check the producer's clock and event_time.format",
    ("unknown_field", ""):
        "fields the event schema does not name: add them to event.allowed_extra_fields, or set "
        "event.unknown_fields: ignore",
}


class SampleError(Exception):
    """The sample could not be read; the message names the field at fault."""


@dataclass
class Sample:
    """What the last records of a topic decode to."""

    monitor: str
    topic: str
    partitions: int
    records: int = 0
    valid: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    # per reason, the first few (partition, offset, detail)
    details: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    complete: bool = True  # False: the timeout came before the end of some partition

    @property
    def all_invalid(self) -> bool:
        return self.records > 0 and self.valid == 0

    def lines(self) -> list[str]:
        head = (f"{self.monitor}: the last {self.records:,} record{'s' if self.records != 1 else ''} of topic "
                f"{self.topic!r} ({self.partitions} partition{'s' if self.partitions != 1 else ''})")
        if self.records == 0:
            return [f"{self.monitor}: topic {self.topic!r} has no records to sample yet"]
        out = [head + ("" if self.complete else ", read before the timeout (the end was not reached)"),
               f"  {'valid':<16} {self.valid:>9,}  ({100 * self.valid / self.records:.1f}%)"]
        for reason, n in self.invalid.most_common():
            out.append(f"  {reason:<16} {n:>9,}  ({100 * n / self.records:.1f}%)")
            shown = self.details.get(reason, [])
            for partition, offset, detail in shown:
                out.append(f"      partition {partition}, offset {offset}: {detail}")
            out += [f"      hint: {hint}" for (r, start), hint in _HINTS.items()
                    if r == reason and any(d.startswith(start) for _, _, d in shown)]
        if self.all_invalid:
            out.append(f"{self.monitor}: every sampled record is invalid: the monitor would evaluate nothing")
        return out


def _decoder(settings: MonitorSettings, index: int) -> EventDecoder:
    """The monitor's decoder, built as the service builds it (Monitor.__init__)."""
    try:
        reference = load_profile(settings.reference.path)
    except ReferenceError as exc:
        raise SampleError(f"monitors[{index}].reference.path: {exc}") from None
    try:
        kinds = feature_kinds(settings, reference, index)
    except MonitorSetupError as exc:
        raise SampleError(str(exc)) from None
    pred = settings.event.prediction
    return EventDecoder(settings.event, kinds, reference.columns[pred.column].kind if pred else None)


def _consumer_config(kafka: KafkaSettings, secret: Callable[[str], str | None], timeout: float) -> dict[str, Any]:
    conf = consumer_config(kafka, secret)
    for key in ("group_instance_id", "session_timeout_ms", "heartbeat_interval_ms", "max_poll_interval_ms"):
        conf.pop(key, None)
    # no group: partitions are assigned by hand, and nothing can be committed
    conf.update(group_id=None, enable_auto_commit=False, client_id="driftline-check",
                bootstrap_timeout_ms=int(timeout * 1000), request_timeout_ms=max(1000, int(timeout * 1000)),
                reconnect_backoff_max_ms=1000)
    return conf


def sample_topic(settings: MonitorSettings, index: int, secrets: Secrets, n: int, timeout: float = 15.0,
                 now: Callable[[], float] = time.time) -> Sample:
    """Read and decode the last `n` records of the monitor's topic within about `timeout`
    seconds; SampleError if the broker or the topic cannot be reached."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    decoder = _decoder(settings, index)
    kafka = settings.kafka
    at = f"monitors[{index}].kafka"

    def secret(name: str) -> str | None:
        value = secrets.get(f"{at}.{name}")
        return value.get_secret_value() if value is not None else None

    conf = _consumer_config(kafka, secret, timeout)
    deadline = time.monotonic() + timeout
    try:
        if kafka.security_protocol.endswith("SSL"):
            from driftline.collectors.tls import check_tls_handshakes

            check_tls_handshakes(kafka, conf)
        consumer = KafkaConsumer(**conf)
    except KafkaError as exc:
        raise SampleError(f"{at}.bootstrap_servers: cannot reach {', '.join(kafka.bootstrap_servers)} within "
                          f"{timeout:g}s ({exc})") from None
    try:
        partitions = consumer.partitions_for_topic(kafka.topic)
        if not partitions:
            raise SampleError(f"{at}.topic: no topic {kafka.topic!r} on {', '.join(kafka.bootstrap_servers)}")
        tps = [TopicPartition(kafka.topic, p) for p in sorted(partitions)]
        kept, complete = _read_last(consumer, tps, n, deadline)
    except KafkaError as exc:
        raise SampleError(f"{at}: reading {kafka.topic!r} failed: {exc}") from None
    finally:
        consumer.close()

    # the last n across partitions, by record time (offset order within a partition)
    records = sorted((r for rs in kept.values() for r in rs), key=lambda r: (r[0], r[1], r[2]))[-n:]
    sample = Sample(settings.name, kafka.topic, len(tps), records=len(records), complete=complete)
    batch = decoder.decode_batch([r[3] for r in records], [r[0] if r[0] >= 0 else None for r in records], now())
    sample.valid = batch.size
    sample.invalid = Counter(batch.invalid)
    for position, reason, detail in batch.rejected:
        shown = sample.details.setdefault(reason, [])
        if len(shown) < DETAILS_PER_REASON:
            shown.append((records[position][1], records[position][2], detail))
    return sample


Record = tuple[int, int, int, bytes | None]  # (timestamp ms, partition, offset, value)


def _read_last(consumer: Any, tps: list[Any], n: int, deadline: float) -> tuple[dict[int, deque[Record]], bool]:
    """Each partition's last `n` records, read from a little before its end to its end."""
    remaining = max(0.5, deadline - time.monotonic())
    begin = consumer.beginning_offsets(tps, timeout_ms=int(remaining * 1000))
    end = consumer.end_offsets(tps, timeout_ms=int(remaining * 1000))
    consumer.assign(tps)
    for tp in tps:
        # Reading on to the end as the fetches report it (below), not to this answer: a broker
        # can report an end short of the truth (the local one gives the last batch's base
        # offset + 1), and starting n before it still covers the last n.
        consumer.seek(tp, max(begin[tp], end[tp] - n))
    kept: dict[int, deque[Record]] = {tp.partition: deque(maxlen=n) for tp in tps}
    todo = {tp for tp in tps if end[tp] > begin[tp]}
    while todo and time.monotonic() < deadline:
        polled = consumer.poll(timeout_ms=min(500, max(1, int((deadline - time.monotonic()) * 1000))))
        for tp, records in polled.items():
            kept[tp.partition].extend((r.timestamp if r.timestamp_type != -1 else -1, tp.partition, r.offset, r.value)
                                      for r in records)
        for tp in list(todo):
            high = consumer.highwater(tp)
            if high is not None and consumer.position(tp, timeout_ms=1000) >= high:
                todo.discard(tp)
    return kept, not todo


def run_samples(settings: Settings, secrets: Secrets, n: int, timeout: float) -> int:
    """`check --sample`: each monitor's sample on stdout, problems on stderr; 1 when a sample
    cannot be read or every record of one is invalid, else 0."""
    import sys

    status = 0
    for i, monitor in enumerate(settings.monitors):
        try:
            sample = sample_topic(monitor, i, secrets, n, timeout)
        except SampleError as exc:
            print(f"{monitor.name}: {exc}", file=sys.stderr)
            status = 1
            continue
        print("\n".join(sample.lines()))
        if sample.all_invalid:
            status = 1
    return status
