"""A Kafka source for one monitor: kafka-python consumer group, offsets committed by
driftline once the polled events are accounted for (never auto-commit).

kafka-python reads every standard record format (v0/v1 message sets and v2 record
batches) and every standard codec (gzip, snappy, lz4, zstd: the extras are dependencies
of driftline), so events from Java, librdkafka or kafka-python producers are read alike.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from driftline.service.config import KafkaSettings
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError, OffsetMetadataTooLargeError
from kafka.protocol.consumer.offsets import OffsetResetStrategy
from kafka.structs import OffsetAndMetadata

log = logging.getLogger("driftline.collectors.kafka")


@dataclass
class Polled:
    """One poll's records, column by column (no object per record on the hot path)."""

    values: list[bytes | None] = field(default_factory=list)
    timestamps_ms: list[int | None] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)  # partition -> offset after its last record
    # (partition, position of its first record in `values`, kafka-python's records): where
    # each record came from, read only for the rare record that needs it (a dead letter)
    parts: list[tuple[int, int, list[Any]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)

    def origin(self, i: int) -> tuple[int, int, bytes | None]:
        """The partition, offset and key of the i-th record."""
        for partition, start, records in self.parts:
            if start <= i < start + len(records):
                r = records[i - start]
                return partition, r.offset, r.key
        raise IndexError(i)

    def add(self, partition: int, records: list[Any], timestamps: bool) -> None:
        """Append a partition's records (kafka-python ConsumerRecords, in offset order)."""
        self.parts.append((partition, len(self.values), records))
        self.values.extend([r.value for r in records])
        if timestamps:
            self.timestamps_ms.extend([r.timestamp if r.timestamp_type != -1 else None for r in records])
        self.next_offsets[partition] = records[-1].offset + 1


def consumer_config(settings: KafkaSettings, secret: Callable[[str], str | None]) -> dict[str, Any]:
    """kafka-python's KafkaConsumer arguments for these settings (secrets looked up by field)."""
    conf: dict[str, Any] = {
        "bootstrap_servers": list(settings.bootstrap_servers),
        "group_id": settings.group_id,
        "group_instance_id": settings.group_instance_id,
        "client_id": settings.client_id,
        "enable_auto_commit": False,
        "auto_offset_reset": settings.auto_offset_reset,
        "max_poll_interval_ms": int(settings.max_poll_interval * 1000),
        "session_timeout_ms": int(settings.session_timeout * 1000),
        "heartbeat_interval_ms": max(100, int(settings.session_timeout * 1000 / 3)),
        "request_timeout_ms": int(max(settings.request_timeout, settings.session_timeout + 1) * 1000),
        "max_poll_records": settings.max_poll_records,
        "security_protocol": settings.security_protocol,
        # bounded reconnects: a lost broker is retried, not hammered
        "reconnect_backoff_ms": 100,
        "reconnect_backoff_max_ms": 5000,
    }
    if settings.security_protocol.startswith("SASL"):
        conf["sasl_mechanism"] = settings.sasl_mechanism
        conf["sasl_plain_username"] = secret("sasl_username_env")
        conf["sasl_plain_password"] = secret("sasl_password_env")
    if settings.security_protocol.endswith("SSL"):
        conf["ssl_check_hostname"] = settings.ssl_check_hostname
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(settings, key)
            if value is not None:
                conf[key] = str(value)
        if settings.ssl_password_env:
            conf["ssl_password"] = secret("ssl_password_env")
    return conf


def producer_config(settings: KafkaSettings, secret: Callable[[str], str | None]) -> dict[str, Any]:
    """KafkaProducer arguments for the dead-letter topic: the consumer's connection and
    security settings, acks from every replica, and every wait bounded."""
    conf = {k: v for k, v in consumer_config(settings, secret).items() if k in KafkaProducer.DEFAULT_CONFIG}
    request_ms = int(min(settings.request_timeout, 10.0) * 1000)
    conf.update({
        "client_id": f"{settings.client_id}-dead-letters",
        "acks": "all",
        "max_block_ms": 5000,            # metadata wait in send(): a lost broker must not hang the consumer
        "request_timeout_ms": request_ms,
        "delivery_timeout_ms": request_ms + 5000,  # then the future fails and driftline retries it
        "linger_ms": 5,
        "max_request_size": 8 * 1024 * 1024,  # room for a large invalid record plus its headers
        # kafka-python 3.0.12's idempotent producer (its default) resets its producer id when a
        # batch expires after being sent, and then never asks for a new one: every later send
        # waits forever (seen with a dead-letter topic that stopped answering for 15 s, see
        # tests/test_fuzz.py). Without idempotence it sends again once the broker answers;
        # a copy retried by the producer may then be written twice, which at least once allows.
        "enable_idempotence": False,
    })
    return conf


# What a copy costs besides its key, value and headers: the letter and its header tuples,
# kafka-python's futures and record bookkeeping (1.3 KB measured with tracemalloc,
# bench/bench_dead_letters.py); counted so that many tiny copies are bounded too.
LETTER_OVERHEAD_BYTES = 1300


@dataclass
class _DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    size: int = 0  # bytes counted against dead_letter_max_pending_bytes
    future: Any = None  # kafka-python's FutureRecordMetadata while in flight


class DeadLetters:
    """Copies invalid records to the dead-letter topic, at least once, in bounded memory.

    `add` sends without waiting; `settle` (run before every offset commit) waits for the
    acknowledgements and returns, per partition, the offset of the first record whose copy
    is not yet acknowledged: the commit stops there, so a dead letter is never lost to a
    crash. A send that fails (broker unreachable, timeout) is counted as `failed` and sent
    again at the next batch (or `pump`). A copy the broker can never take (e.g. larger than
    its limit) is counted as `dropped`, logged with its origin, and no longer holds back the
    commit.

    Acknowledged copies are let go at every batch. Copies not yet acknowledged are held
    (here and in the producer's buffers) until they are: while they exceed `max_bytes`,
    `full` is true and the consumer stops reading (KafkaSource.hold) until they are down to
    half of it, so a dead-letter topic that cannot be reached stalls consumption instead of
    filling memory, and nothing is dropped.
    """

    RETRY_AFTER = 1.0  # seconds between attempts to send again when nothing else is read
    WARN_AFTER = 5.0  # a pause this long is logged (shorter ones are ordinary flow control)

    def __init__(self, settings: KafkaSettings, secret: Callable[[str], str | None], monitor: str,
                 count: Callable[[str, int], None]) -> None:
        assert settings.dead_letter_topic
        self.topic = settings.dead_letter_topic
        self._source_topic = settings.topic.encode()
        self._monitor = monitor.encode()
        self._conf = producer_config(settings, secret)
        self._count = count
        self._producer: KafkaProducer | None = None
        self._pending: list[_DeadLetter] = []  # in flight or to send again, in record order
        self._bytes = 0  # sum of their sizes
        self.max_bytes = settings.dead_letter_max_pending_bytes
        self.full = False  # reading is paused until the copies drain (KafkaSource.hold)
        self._full_since = 0.0
        self._held_before = False
        self._warned = False  # this pause was logged (it lasted WARN_AFTER s)
        self._retry_at = 0.0  # time.monotonic() before which pump() sends nothing again
        self._flush_failed = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def add(self, polled: Polled, rejected: list[tuple[int, str, str]]) -> None:
        self._reap()
        for i, reason, detail in rejected:
            partition, offset, key = polled.origin(i)
            headers = [("driftline-original-topic", self._source_topic),
                       ("driftline-original-partition", str(partition).encode()),
                       ("driftline-original-offset", str(offset).encode()),
                       ("driftline-error", (f"{reason}: {detail}" if detail else reason).encode()),
                       ("driftline-monitor", self._monitor)]
            value = polled.values[i]
            size = (LETTER_OVERHEAD_BYTES + len(value or b"") + len(key or b"")
                    + sum(len(k) + len(v) for k, v in headers))
            self._pending.append(_DeadLetter(partition, offset, key, value, headers, size))
            self._bytes += size
        self._send()
        self._check_full()

    def pump(self) -> None:
        """Between batches (nothing else read): let go of acknowledged copies and send again
        the failed ones (at most every RETRY_AFTER s: a send can wait for metadata)."""
        self._reap()
        if time.monotonic() >= self._retry_at:
            self._send()
        self._check_full()

    def _check_full(self) -> None:
        now = time.monotonic()
        if not self.full and self._bytes > self.max_bytes:
            self.full, self._full_since, self._warned = True, now, False
            if not self._held_before:  # flow control at work: said once, then only long pauses
                self._held_before = True
                log.info("dead letters to %s are acknowledged more slowly than %s is read: reading pauses "
                         "while more than %.1f MB of them wait (kafka.dead_letter_max_pending_bytes)",
                         self.topic, self._source_topic.decode(), self.max_bytes / 1e6)
        elif self.full and self._bytes <= self.max_bytes // 2:
            self.full = False
            if self._warned:
                log.warning("dead letters to %s acknowledged: reading %s again after %.1f s paused",
                            self.topic, self._source_topic.decode(), now - self._full_since)
        elif self.full and not self._warned and now - self._full_since >= self.WARN_AFTER:
            self._warned = True
            log.warning("reading %s paused for %.0f s: %d dead letters (%.1f MB) not acknowledged by %s, over "
                        "kafka.dead_letter_max_pending_bytes (%.1f MB); it resumes once they are down to half "
                        "of it", self._source_topic.decode(), now - self._full_since, len(self._pending),
                        self._bytes / 1e6, self.topic, self.max_bytes / 1e6)

    def _send(self) -> None:
        unsent = [d for d in self._pending if d.future is None]
        if not unsent:
            return
        if self._producer is None:
            try:
                self._producer = KafkaProducer(**self._conf)
            except Exception as exc:  # broker unreachable: try again at the next batch
                log.warning("dead-letter producer for %s not available yet (%d records waiting): %s",
                            self.topic, len(unsent), exc)
                self._count("failed", len(unsent))
                self._retry_at = time.monotonic() + self.RETRY_AFTER
                return
        dropped = []
        for letter in unsent:
            try:
                # a keyless tombstone cannot be produced as is: it goes with an empty key
                key = letter.key if letter.key is not None or letter.value is not None else b""
                letter.future = self._producer.send(self.topic, value=letter.value, key=key,
                                                    headers=letter.headers)
            except KafkaTimeoutError as exc:  # no metadata within max_block_ms
                n = sum(1 for d in self._pending if d.future is None)
                log.warning("dead letters to %s not sent (%d waiting, retried at the next batch): %s",
                            self.topic, n, exc)
                self._count("failed", n)
                self._retry_at = time.monotonic() + self.RETRY_AFTER
                break
            except KafkaError as exc:
                if exc.retriable:
                    self._count("failed", 1)
                    continue
                dropped.append(letter)
                self._drop(letter, exc)
        if dropped:
            gone = {id(d) for d in dropped}
            self._keep([d for d in self._pending if id(d) not in gone])

    def _keep(self, letters: list[_DeadLetter]) -> None:
        self._pending = letters
        self._bytes = sum(d.size for d in letters)

    def _drop(self, letter: _DeadLetter, exc: BaseException) -> None:
        log.error("dead letter of %s partition %d offset %d refused by the broker, not retried: %s",
                  self._source_topic.decode(), letter.partition, letter.offset, exc)
        self._count("dropped", 1)

    def _reap(self) -> None:
        """Without waiting: count and let go of the acknowledged copies (and the refused
        ones); a copy whose send failed is kept, to be sent again."""
        if not any(d.future is not None and d.future.is_done for d in self._pending):
            return
        still: list[_DeadLetter] = []
        produced = 0
        for letter in self._pending:
            f = letter.future
            if f is None or not f.is_done:
                still.append(letter)
            elif f.succeeded():
                produced += 1
            elif isinstance(f.exception, KafkaError) and not f.exception.retriable:
                self._drop(letter, f.exception)
            else:
                self._count("failed", 1)
                letter.future = None  # sent again at the next batch
                still.append(letter)
        if produced:
            self._count("produced", produced)
        self._keep(still)

    def settle(self, timeout: float) -> dict[int, int]:
        """Wait up to `timeout` s for the copies in flight; per partition, the first offset
        whose copy is not acknowledged (nothing from there on may be committed)."""
        if not self._pending:
            return {}
        self._send()
        if self._producer is not None and any(d.future is not None for d in self._pending):
            try:
                self._producer.flush(timeout=timeout)
                self._flush_failed = False
            except KafkaError as exc:  # said once until a flush completes again
                log.log(logging.DEBUG if self._flush_failed else logging.WARNING,
                        "dead letters to %s not yet acknowledged: %s", self.topic, exc)
                self._flush_failed = True
        self._reap()
        self._check_full()
        caps: dict[int, int] = {}
        for letter in self._pending:
            caps[letter.partition] = min(caps.get(letter.partition, letter.offset), letter.offset)
        return caps

    def close(self, timeout: float) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=timeout)
            except Exception as exc:
                log.debug("closing the dead-letter producer: %s", exc)


class PartitionOwner(Protocol):
    """What reads the partitions (a monitor): it keeps their state and says what to commit."""

    def adopt(self, committed: dict[int, tuple[int, str] | None]) -> dict[int, int]:
        """Partitions newly assigned, with their committed (offset, metadata), before any
        record; returns where to read each from."""

    def release(self) -> dict[int, tuple[int, str]]:
        """All partitions are being revoked: the (offset, metadata) to commit for them."""

    def committable(self) -> dict[int, tuple[int, str]]:
        """The (offset, metadata) that may be committed now, per partition."""

    def reset_partitions(self) -> None:
        """The topic was recreated: positions start again."""

    def metadata_refused(self) -> None:
        """The broker refused a commit's metadata as too large: commit only the small marks."""


class _Listener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """Async, so that the commit on revoke runs on kafka-python's own event loop: version 3
    calls rebalance listeners there, where its blocking commit() is refused."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.source._on_revoked(revoked)

    async def on_partitions_lost(self, lost: Any) -> None:
        await self.source._on_revoked(lost, commit=False)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.source._on_assigned(assigned)


def check_tls_handshakes(settings: KafkaSettings, conf: dict[str, Any]) -> None:
    """Raise unless a TLS handshake with the bootstrap servers completes in time."""
    # The one guard against a TLS handshake that never completes. kafka-python 3.0
    # bounds the TCP connect but awaits the handshake with no deadline
    # (kafka/net/transport.py, KafkaSSLTransport.handshake: wait_read without
    # timeout_at), and the bootstrap in KafkaConsumer() (and KafkaProducer()) awaits that
    # connection without looking at its own timeout again: a listener that accepts and
    # never answers blocks it forever, past bootstrap_timeout_ms and max_block_ms. So
    # each bootstrap server's handshake, verified as kafka-python verifies it, must
    # complete here within connect_timeout first; if one hangs or none succeeds, this
    # raises with the TLS error and the caller retries later.
    import socket
    import ssl

    from kafka.errors import KafkaConnectionError

    context = ssl.create_default_context(cafile=conf.get("ssl_cafile"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = settings.ssl_check_hostname
    if "ssl_certfile" in conf:
        context.load_cert_chain(conf["ssl_certfile"], conf.get("ssl_keyfile"), conf.get("ssl_password"))
    problems, hung, ok = [], False, 0
    for server in settings.bootstrap_servers:
        host, sep, port = server.rpartition(":")
        host, port = (host.strip("[]"), port) if sep else (server, "9092")
        try:
            with socket.create_connection((host, int(port)), timeout=settings.connect_timeout) as sock, \
                    context.wrap_socket(sock, server_hostname=host):
                ok += 1
        except TimeoutError:
            hung = True
            problems.append(f"TLS handshake with {server} did not complete within "
                            f"{settings.connect_timeout:g}s")
        except ssl.SSLCertVerificationError as exc:
            problems.append(f"TLS handshake with {server} failed: certificate refused: {exc.verify_message}")
        except ssl.SSLError as exc:
            problems.append(f"TLS handshake with {server} failed: {exc.reason or exc}")
        except (OSError, ValueError) as exc:
            problems.append(f"cannot connect to {server}: {exc}")
    if hung or not ok:
        raise KafkaConnectionError("; ".join(problems))
    for problem in problems:
        log.warning("%s", problem)


class KafkaSource:
    """Polls records of one topic; tracks what has been accounted for and commits it.

    Only the thread that polls may call poll/commit/close (kafka-python consumers are not
    thread-safe); `assigned`, `connected` and `lag` are safe to read from anywhere.
    """

    # Called before each commit: per partition, an offset the commit must not pass (the
    # dead-letter copies not yet acknowledged); see DeadLetters.settle.
    commit_gate: Callable[[], dict[int, int]] | None = None
    # /readyz: a fetch response older than this means the broker is not answering. The
    # consumer fetches every fetch_max_wait_ms (500 ms) even on an idle topic, so a healthy
    # broker answers several times within it.
    STALE_AFTER = 5.0
    # a silence this long (3 fetch waits) is treated as an outage: see poll()
    CHECK_AFTER_SILENCE = 1.5
    _last_records = 0.0  # time.monotonic() of the last poll that returned records
    _reset_earliest = False  # see _reset_to_earliest_from_now_on
    _topic_id: Any = None  # the topic's id as the broker last described it (see _topic_recreated)
    _seek_to_beginning = False
    _after_outage = False  # the broker did not answer for STALE_AFTER s since the last check
    _held = False  # see hold()
    _adopted_starts: dict[int, int] = {}  # noqa: RUF012  (replaced, never mutated)

    def __init__(self, settings: KafkaSettings, secret: Callable[[str], str | None],
                 owner: PartitionOwner) -> None:
        self.settings = settings
        conf = consumer_config(settings, secret)
        if settings.security_protocol.endswith("SSL"):
            check_tls_handshakes(settings, conf)
        self._consumer = KafkaConsumer(**conf)
        self._consumer.subscribe([settings.topic], listener=_Listener(self))
        self._owner = owner
        self._lock = threading.Lock()
        self._assigned: frozenset[int] = frozenset()
        self._to_adopt: frozenset[int] = frozenset()  # assigned, not yet handed to the owner
        self._processed: dict[int, int] = {}  # partition -> next offset to read (for the lag)
        self._committed: dict[int, tuple[int, str]] = {}
        self._lag: dict[int, int] = {}
        self._last_poll_ok = 0.0
        self._last_commit = time.monotonic()

    # -- rebalance ---------------------------------------------------------------------
    async def _on_revoked(self, revoked: Any, commit: bool = True) -> None:
        """On kafka-python's event loop, while the consumer thread waits in poll(): the
        owner checkpoints and drops the partitions' state, and what it covers is committed
        before the partitions go (kafka-python's default assignors are eager: every
        rebalance revokes all partitions)."""
        offsets = self._owner.release()
        with self._lock:
            assigned, self._assigned, self._to_adopt = self._assigned, frozenset(), frozenset()
            self._lag = {}
            self._processed.clear()
        pending = self._uncommitted(offsets, assigned)
        if commit and pending:
            try:
                # the coroutine behind KafkaConsumer.commit(), awaited on the loop we are on
                coordinator = self._consumer._coordinator
                try:
                    await coordinator._commit_offsets_sync_async(self._offsets(pending), timeout_ms=5000)
                except OffsetMetadataTooLargeError as exc:
                    pending = self._uncommitted(self._metadata_refused(exc), assigned)
                    await coordinator._commit_offsets_sync_async(self._offsets(pending), timeout_ms=5000)
                with self._lock:
                    self._committed.update(pending)
                log.info("partitions %s revoked; committed %s", sorted(p for p in assigned),
                         {p: o for p, (o, _) in sorted(pending.items())})
            except Exception as exc:
                log.warning("offset commit on revoke failed (the next reader rebuilds from the "
                            "last commit and skips what the checkpoint shows as done): %s", exc)

    def _on_assigned(self, assigned: Any) -> None:
        with self._lock:
            self._assigned = frozenset(tp.partition for tp in assigned if tp.topic == self.settings.topic)
            self._to_adopt = self._assigned
        log.info("assigned partitions %s of %s", sorted(self._assigned), self.settings.topic)

    def _adopt_new(self) -> bool:
        """Hand newly assigned partitions, with their committed offsets, to the owner, and
        seek each where the owner reads it from. True if any was handed over: the records
        of this poll are then dropped (kafka-python may have fetched a partition it held
        before from its old position, not from the committed offset)."""
        with self._lock:
            new, self._to_adopt = self._to_adopt, frozenset()
        if not new:
            return False
        committed: dict[int, tuple[int, str] | None] = {}
        for p in sorted(new):
            got = self._consumer.committed(TopicPartition(self.settings.topic, p), metadata=True)
            committed[p] = None if got is None else (got.offset, got.metadata or "")
            if got is not None:
                with self._lock:
                    self._committed[p] = (got.offset, got.metadata or "")
        starts = self._owner.adopt(committed)
        for p, offset in starts.items():
            self._consumer.seek(TopicPartition(self.settings.topic, p), offset)
        self._adopted_starts = starts
        return True

    # -- state -------------------------------------------------------------------------
    @property
    def assigned(self) -> frozenset[int]:
        with self._lock:
            return self._assigned

    def connected(self) -> bool:
        """True while partitions are assigned and the broker answered a fetch recently.

        kafka-python's poll() returns on time whether or not the broker answers, so the
        signal is the broker's answers themselves: the time of the last fetch response
        (kafka-python records each in its `fetch-latency` sensor), or of the last poll that
        returned records. A stopped broker (SIGSTOP) keeps its TCP connections open; this
        still turns false within STALE_AFTER seconds.
        """
        return bool(self.assigned) and time.monotonic() - self.last_answer() < self.STALE_AFTER

    def last_answer(self) -> float:
        """time.monotonic() of the broker's last fetch response (or of records received)."""
        last = self._last_records
        try:
            sensor = self._consumer._metrics.get_sensor("fetch-latency")
            if sensor is not None:
                last = max(last, sensor._last_record_time / 1000.0)
        except AttributeError:  # another kafka-python: fall back to the records themselves
            pass
        if self._held:
            # nothing is fetched while held: the group coordinator's heartbeat answers (every
            # session_timeout / 3) show the broker is there
            with contextlib.suppress(AttributeError):
                last = max(last, self._consumer._coordinator.heartbeat.last_receive)
        return last

    def lag(self) -> dict[int, int]:
        with self._lock:
            return dict(self._lag)

    # -- polling -----------------------------------------------------------------------
    def hold(self, on: bool) -> None:
        """Stop reading every assigned partition (on) or read on, staying in the group: poll()
        keeps being called, so the member is not evicted, and it returns nothing meanwhile.
        Called before every poll: partitions assigned since are held too."""
        if not on and not self._held:
            return
        try:
            if on:
                paused = self._consumer.paused()
                mine = [tp for tp in self._consumer.assignment() if tp.topic == self.settings.topic]
                if todo := [tp for tp in mine if tp not in paused]:
                    self._consumer.pause(*todo)
            else:
                self._consumer.resume(*self._consumer.paused())
        except (KafkaError, KeyError) as exc:  # the assignment changed under us: again next time
            log.debug("pausing/resuming partitions: %s", exc)
            return
        self._held = on

    def poll(self, timeout_ms: int = 500, timestamps: bool = True) -> Polled:
        """The next records; their creation/append timestamps too when asked for."""
        out = Polled()
        if time.monotonic() - self.last_answer() > self.CHECK_AFTER_SILENCE:
            self._after_outage = True
        try:
            batches = self._consumer.poll(timeout_ms=timeout_ms)
        except KafkaError as exc:
            log.warning("poll failed: %s", exc)
            return out
        self._last_poll_ok = time.monotonic()
        if batches and self._after_outage:
            # The first records after an outage may come from a broker that lost its data,
            # fetched before kafka-python refreshed the topic's metadata: refresh it first.
            try:
                self._consumer.topics()
                self._after_outage = False
            except KafkaError as exc:
                log.warning("metadata refresh after an outage failed; the records will be fetched again: %s", exc)
                for tp, records in batches.items():
                    if records:
                        self._consumer.seek(tp, records[0].offset)
                return out
        if self._topic_recreated() or self._seek_pending():
            if batches:
                log.warning("%d records polled while %s was recreated are read again from the beginning",
                            sum(len(r) for r in batches.values()), self.settings.topic)
            return out
        if not self._reset_earliest:
            self._reset_to_earliest_from_now_on()
        try:
            if self._adopt_new():
                for tp, records in batches.items():  # fetched again, from where the owner said
                    if records and tp.partition not in self._adopted_starts:
                        self._consumer.seek(tp, records[0].offset)
                return out
        except KafkaError as exc:  # the committed offsets could not be read: drop, fetch again
            log.warning("committed offsets of newly assigned partitions not read (%s); fetching again", exc)
            with self._lock:
                self._to_adopt = self._assigned
            for tp, records in batches.items():
                if records:
                    self._consumer.seek(tp, records[0].offset)
            return out
        for tp, records in batches.items():
            if records and tp.partition in self._assigned:
                out.add(tp.partition, records, timestamps)
        if out.values:
            self._last_records = self._last_poll_ok
        return out

    def _topic_recreated(self) -> bool:
        """True when the topic's id changed since the last poll (deleted and created again,
        or a broker that lost its data: offsets start again at 0). Every assigned partition
        is then read from its beginning, and offsets of the old topic are forgotten.

        A Kafka broker, and Tansu, may answer a fetch beyond the end of the new log with no
        records and no error: without this check driftline would wait, silently, until the
        new log grew past its old position and skip everything before it.
        """
        try:
            tid = self._consumer._client.cluster.topic_id(self.settings.topic)
        except AttributeError:  # another kafka-python: out-of-range resets still apply
            return False
        if tid is None or tid == self._topic_id:
            return False
        old, self._topic_id = self._topic_id, tid
        if old is None:
            return False
        assigned = [tp for tp in self._consumer.assignment() if tp.topic == self.settings.topic]
        log.warning("topic %s was recreated (id %s, was %s): reading partitions %s from the beginning",
                    self.settings.topic, tid, old, sorted(tp.partition for tp in assigned))
        with self._lock:
            self._processed.clear()
            self._committed.clear()
        self._owner.reset_partitions()
        self._seek_to_beginning = True
        self._seek_pending()
        return True

    def _seek_pending(self) -> bool:
        """After a recreated topic: until the partitions (assigned now, or once the group has
        rejoined) are sought to their beginning, polled records are dropped; kafka-python
        may keep a partition's old position across the rejoin."""
        if not self._seek_to_beginning:
            return False
        assigned = [tp for tp in self._consumer.assignment() if tp.topic == self.settings.topic]
        if assigned and self.assigned:
            self._consumer.seek_to_beginning(*assigned)
            self._seek_to_beginning = False
        return True

    def _reset_to_earliest_from_now_on(self) -> None:
        """Once every assigned partition has a position, an out-of-range position resets
        to the earliest offset, whatever auto_offset_reset says.

        auto_offset_reset is for a group that has no committed offset (where a new monitor
        starts). Later, a position out of range means the log moved under driftline: its
        start passed it (retention), or the broker lost its data (a restarted in-memory
        broker, a recreated topic), so offsets start again at 0. "latest" would then skip
        the records written since, silently; "earliest" reads all that is still there.
        """
        with self._lock:
            assigned = self._assigned
        if not assigned:
            return
        try:
            subs = self._consumer._subscription
            tps = [TopicPartition(self.settings.topic, p) for p in assigned]
            if all(subs.has_valid_position(tp) for tp in tps):
                subs._default_offset_reset_strategy = OffsetResetStrategy.EARLIEST
                self._reset_earliest = True
        except (AttributeError, KeyError) as exc:  # another kafka-python: keep its behaviour
            log.debug("cannot set the out-of-range reset strategy: %s", exc)
            self._reset_earliest = True

    def mark_processed(self, polled: Polled) -> None:
        """These records are accounted for: their offsets may be committed."""
        with self._lock:
            for partition, offset in polled.next_offsets.items():
                if offset > self._processed.get(partition, -1):
                    self._processed[partition] = offset

    def refresh_lag(self) -> None:
        lag = {}
        ends: dict[TopicPartition, int] = {}
        if self._held:  # no fetch brings the high watermark while held: ask for it
            with contextlib.suppress(KafkaError):
                ends = self._consumer.end_offsets(
                    [TopicPartition(self.settings.topic, p) for p in self.assigned], timeout_ms=500)
        for p in self.assigned:
            tp = TopicPartition(self.settings.topic, p)
            try:
                high = ends[tp] if tp in ends else self._consumer.highwater(tp)
            except KafkaError:  # unassigned under us (the group is rejoining)
                continue
            if high is None:
                continue
            pos = self._processed.get(p)
            if pos is None:
                try:
                    pos = self._consumer.position(tp, timeout_ms=100)
                except KafkaError:
                    continue
            if pos is not None:
                lag[p] = max(0, high - pos)
        with self._lock:
            self._lag.update(lag)

    def positions(self) -> dict[int, int]:
        """The consumer's fetch position (next offset to return) of each assigned partition."""
        out = {}
        for p in self.assigned:
            try:
                pos = self._consumer.position(TopicPartition(self.settings.topic, p), timeout_ms=100)
            except (KafkaError, AssertionError, ValueError):  # unassigned under us, or not yet known
                continue
            if pos is not None:
                out[p] = int(getattr(pos, "offset", pos))
        return out

    def maybe_commit(self) -> None:
        if time.monotonic() - self._last_commit >= self.settings.commit_interval:
            self.commit()

    def _uncommitted(self, offsets: dict[int, tuple[int, str]], assigned: frozenset[int]) -> dict[int, tuple[int, str]]:
        """The offsets (capped by the commit gate) of assigned partitions not committed yet."""
        caps = self.commit_gate() if self.commit_gate is not None else {}
        with self._lock:
            pending = {p: (min(o, caps.get(p, o)), meta) for p, (o, meta) in offsets.items() if p in assigned}
            return {p: om for p, om in pending.items() if self._committed.get(p) != om}

    def _offsets(self, pending: dict[int, tuple[int, str]]) -> dict[TopicPartition, OffsetAndMetadata]:
        return {TopicPartition(self.settings.topic, p): OffsetAndMetadata(o, meta, -1)
                for p, (o, meta) in pending.items()}

    def commit(self, timeout: float = 5.0) -> None:
        """Commit what the owner's last checkpoint covers (never more)."""
        self._last_commit = time.monotonic()
        pending = self._uncommitted(self._owner.committable(), self.assigned)
        if not pending:
            return
        try:
            try:
                self._consumer.commit(self._offsets(pending), timeout_ms=int(timeout * 1000))
            except OffsetMetadataTooLargeError as exc:
                pending = self._uncommitted(self._metadata_refused(exc), self.assigned)
                self._consumer.commit(self._offsets(pending), timeout_ms=int(timeout * 1000))
        except KafkaError as exc:
            log.warning("offset commit failed (will retry): %s", exc)
            return
        with self._lock:
            self._committed.update(pending)

    def _metadata_refused(self, exc: KafkaError) -> dict[int, tuple[int, str]]:
        """The broker caps commit metadata below what driftline wrote (its
        offset.metadata.max.bytes): from now on the owner commits its small marks only."""
        log.error("the broker refused the commit metadata as too large (%s): committing without the "
                  "horizon windows' parts from now on; a moved partition's part stays where it was", exc)
        self._owner.metadata_refused()
        return self._owner.committable()

    @property
    def committed(self) -> dict[int, int]:
        """The offsets this process committed last, per partition."""
        with self._lock:
            return {p: o for p, (o, _) in self._committed.items()}

    def close(self, timeout: float = 5.0) -> None:
        """Commit what is accounted for, then leave the group, both bounded by `timeout` s."""
        deadline = time.monotonic() + timeout
        self.commit(timeout=max(0.5, timeout * 0.6))
        try:
            self._consumer.close(autocommit=False, timeout_ms=int(max(0.5, deadline - time.monotonic()) * 1000))
        except Exception as exc:
            log.debug("closing the consumer: %s", exc)


class RangeReader(threading.Thread):
    """Reads offset ranges [from, to) of a topic's partitions with a consumer of its own,
    outside the consumer group (it commits nothing): after a restart, the records behind the
    group's position that rebuild the horizon windows (service/window.py, `side_reads`),
    read while the group's consumer goes on. `deliver` gets each poll's records and returns
    False once they are no longer wanted; `done` is called per partition read to its end.
    Broker trouble is retried from where it stopped."""

    def __init__(self, settings: KafkaSettings, secret: Callable[[str], str | None],
                 ranges: dict[int, tuple[int, int]], deliver: Callable[[Polled], bool],
                 done: Callable[[int], None], timestamps: bool, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._settings, self._secret = settings, secret
        self._remaining = dict(ranges)
        self._deliver, self._done, self._timestamps = deliver, done, timestamps
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while self._remaining and not self._stop_event.is_set():
            try:
                consumer = self._connect()
            except Exception as exc:
                log.warning("%s: cannot reach Kafka yet (%s); retrying", self.name, exc)
                self._stop_event.wait(2.0)
                continue
            try:
                self._read(consumer)
            except KafkaError as exc:
                log.warning("%s: reading failed (%s); reading on from offsets %s", self.name, exc,
                            {p: lo for p, (lo, _) in self._remaining.items()})
                self._stop_event.wait(1.0)
            except Exception:  # a bug: give up rather than hold what waits for it forever
                log.exception("%s: given up; partitions %s are left out of what it rebuilds", self.name,
                              sorted(self._remaining))
                for p in list(self._remaining):
                    del self._remaining[p]
                    self._done(p)
            finally:
                consumer.close()

    def _connect(self) -> KafkaConsumer:
        conf = consumer_config(self._settings, self._secret)
        conf.update(group_id=None, group_instance_id=None, client_id=f"{self._settings.client_id}-rebuild",
                    auto_offset_reset="earliest")  # a start deleted by retention: what is left
        if self._settings.security_protocol.endswith("SSL"):
            check_tls_handshakes(self._settings, conf)
        consumer = KafkaConsumer(**conf)
        consumer.assign([TopicPartition(self._settings.topic, p) for p in self._remaining])
        for p, (lo, _) in self._remaining.items():
            consumer.seek(TopicPartition(self._settings.topic, p), lo)
        return consumer

    def _read(self, consumer: KafkaConsumer) -> None:
        while self._remaining and not self._stop_event.is_set():
            batches = consumer.poll(timeout_ms=500)
            out = Polled()
            for tp, records in batches.items():
                if tp.partition not in self._remaining:
                    continue
                lo, hi = self._remaining[tp.partition]
                records = [r for r in records if lo <= r.offset < hi]
                if records:
                    out.add(tp.partition, records, self._timestamps)
                    self._remaining[tp.partition] = (records[-1].offset + 1, hi)
            if out.values and not self._deliver(out):
                self._stop_event.set()
                return
            for p, (_, hi) in list(self._remaining.items()):
                tp = TopicPartition(self._settings.topic, p)
                if consumer.position(tp) >= hi:  # (past gaps too: compacted or control records)
                    consumer.pause(tp)
                    del self._remaining[p]
                    self._done(p)
