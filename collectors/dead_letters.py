"""Invalid records copied to a dead-letter topic: at least once, in bounded memory."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from .consumer import Polled, consumer_config
from .schema import KafkaSettings

log = logging.getLogger("driftline.collectors.kafka")


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
        # per partition, the offset of the first record whose copy is not acknowledged: read
        # by the checkpoint (another thread), so a crash cannot lose a copy (first_pending)
        self._first_lock = threading.Lock()
        self._first: dict[int, int] = {}

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
        self._note_first()
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
        self._note_first()

    def _note_first(self) -> None:
        first: dict[int, int] = {}
        for letter in self._pending:
            if letter.offset < first.get(letter.partition, letter.offset + 1):
                first[letter.partition] = letter.offset
        with self._first_lock:
            self._first = first

    def first_pending(self) -> dict[int, int]:
        """Per partition, the offset of the first invalid record whose copy is not yet
        acknowledged (safe to call from any thread): reading must start there again after
        a crash, for that copy's sake."""
        with self._first_lock:
            return dict(self._first)

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


