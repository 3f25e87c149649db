"""A Kafka source for one monitor: kafka-python consumer group, offsets committed by
driftline from the monitor's last checkpoint (never auto-commit).

One member of the group reads every partition (collectors/assignor.py); the others wait as
standbys (`role`). The source hands each assignment to its owner (the monitor's state),
which says where every partition is read from, and commits what the owner's last
checkpoint covers.

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
from typing import Any, Literal

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError, OffsetMetadataTooLargeError
from kafka.structs import OffsetAndMetadata

from .assignor import SingleActiveAssignor
from .consumer import PartitionOwner, Polled, consumer_config
from .log_moves import LogMoves
from .schema import KafkaSettings
from .tls import check_tls_handshakes

__all__ = ["KafkaSource", "PartitionOwner", "Polled", "consumer_config"]

log = logging.getLogger("driftline.collectors.kafka")


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


Role = Literal["joining", "active", "standby"]


class KafkaSource:
    """Polls records of one topic; commits what its owner's checkpoint covers.

    Only the thread that polls may call poll/commit/close (kafka-python consumers are not
    thread-safe); `assigned`, `role`, `connected` and `lag` are safe to read from anywhere.
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
    _after_outage = False  # the broker did not answer for STALE_AFTER s since the last check
    _held = False  # see hold()
    _adopted_starts: dict[int, int] = {}  # noqa: RUF012  (replaced, never mutated)

    def __init__(self, settings: KafkaSettings, secret: Callable[[str], str | None],
                 owner: PartitionOwner) -> None:
        self.settings = settings
        conf = consumer_config(settings, secret)
        if settings.security_protocol.endswith("SSL"):
            check_tls_handshakes(settings, conf)
        self.assignor = SingleActiveAssignor()
        self._consumer = KafkaConsumer(**conf, partition_assignment_strategy=[self.assignor])
        self._consumer.subscribe([settings.topic], listener=_Listener(self))
        self._owner = owner
        self._lock = threading.Lock()
        self._assigned: frozenset[int] = frozenset()
        self._to_adopt: frozenset[int] = frozenset()  # assigned, not yet handed to the owner
        self._processed: dict[int, int] = {}  # partition -> next offset to read (for the lag)
        self._committed: dict[int, tuple[int, str]] = {}
        self._lag: dict[int, int] = {}
        self._ends: dict[int, int] = {}  # partition -> the highest end offset the broker reported
        self._last_poll_ok = 0.0
        self._last_commit = time.monotonic()
        self.role: Role = "joining"
        self._plain_metadata = False  # the broker refused commit metadata: commit offsets alone
        self._moves = LogMoves(self._consumer, settings.topic, lambda: self.assigned, self._forget_positions)

    # -- rebalance ---------------------------------------------------------------------
    async def _on_revoked(self, revoked: Any, commit: bool = True) -> None:
        """On kafka-python's event loop, while the consumer thread waits in poll(): the
        owner checkpoints, and what it covers is committed before the partitions go
        (kafka-python's eager rebalances revoke every partition, even those that come back)."""
        with self._lock:
            assigned, self._assigned, self._to_adopt = self._assigned, frozenset(), frozenset()
            self._lag = {}
            self._ends.clear()
            self._processed.clear()
        if not assigned:
            return
        offsets = self._owner.release()
        pending = self._uncommitted(offsets, assigned)
        if commit and pending:
            try:
                # the coroutine behind KafkaConsumer.commit(), awaited on the loop we are on
                coordinator = self._consumer._coordinator
                try:
                    await coordinator._commit_offsets_sync_async(self._offsets(pending), timeout_ms=5000)
                except OffsetMetadataTooLargeError as exc:
                    self._metadata_refused(exc)
                    await coordinator._commit_offsets_sync_async(self._offsets(pending), timeout_ms=5000)
                with self._lock:
                    self._committed.update(pending)
                log.info("partitions %s revoked; committed %s", sorted(p for p in assigned),
                         {p: o for p, (o, _) in sorted(pending.items())})
            except Exception as exc:
                log.warning("offset commit on revoke failed (the checkpoint keeps the positions; another "
                            "instance taking over reads from the previous commit): %s", exc)

    def _on_assigned(self, assigned: Any) -> None:
        with self._lock:
            self._assigned = frozenset(tp.partition for tp in assigned if tp.topic == self.settings.topic)
            self._to_adopt = self._assigned
            before, self.role = self.role, "active" if self._assigned else "standby"
        if self._assigned:
            log.info("active for %s: assigned partitions %s", self.settings.topic, sorted(self._assigned))
        elif before != "standby":
            log.info("standby for %s: another instance of group %s reads it; this one takes over if it "
                     "leaves", self.settings.topic, self.settings.group_id)

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
        """True while the group is joined (active or standby) and the broker answered recently.

        kafka-python's poll() returns on time whether or not the broker answers, so the
        signal is the broker's answers themselves: the time of the last fetch response
        (kafka-python records each in its `fetch-latency` sensor), or of the last poll that
        returned records. A stopped broker (SIGSTOP) keeps its TCP connections open; this
        still turns false within STALE_AFTER seconds.
        """
        return self.role != "joining" and time.monotonic() - self.last_answer() < self.STALE_AFTER

    def last_answer(self) -> float:
        """time.monotonic() of the broker's last fetch response (or of records received)."""
        last = self._last_records
        try:
            sensor = self._consumer._metrics.get_sensor("fetch-latency")
            if sensor is not None:
                last = max(last, sensor._last_record_time / 1000.0)
        except AttributeError:  # another kafka-python: fall back to the records themselves
            pass
        if self._held or not self.assigned:
            # nothing is fetched while held or standing by: the group coordinator's heartbeat
            # answers (every session_timeout / 3) show the broker is there
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
        if self._moves.recreated() or self._moves.seek_pending():
            if batches:
                log.warning("%d records polled while %s was recreated are read again from the beginning",
                            sum(len(r) for r in batches.values()), self.settings.topic)
            return out
        self._moves.reset_to_earliest_from_now_on()
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

    def _forget_positions(self) -> None:
        """The topic was recreated: no offset of the old one counts any more."""
        with self._lock:
            self._processed.clear()
            self._committed.clear()
            self._ends.clear()
        self._owner.reset_partitions()

    def mark_processed(self, polled: Polled) -> None:
        """These records are accounted for: their offsets may be committed."""
        with self._lock:
            for partition, offset in polled.next_offsets.items():
                if offset > self._processed.get(partition, -1):
                    self._processed[partition] = offset

    def refresh_lag(self) -> None:
        """Each assigned partition's lag: records between what was accounted for and the end
        of the partition, as far as the broker has said. The end is the highest the broker
        reported (a fetch's high watermark, or a ListOffsets answer while reading is held),
        so a stale answer never makes a partition with records waiting look caught up."""
        ends: dict[TopicPartition, int] = {}
        if self._held:  # no fetch brings the high watermark while held: ask for it
            with contextlib.suppress(KafkaError):
                ends = self._consumer.end_offsets(
                    [TopicPartition(self.settings.topic, p) for p in self.assigned], timeout_ms=2000)
        lag = {}
        for p in self.assigned:
            tp = TopicPartition(self.settings.topic, p)
            try:
                high = ends.get(tp, self._consumer.highwater(tp))
            except KafkaError:  # unassigned under us (the group is rejoining)
                continue
            with self._lock:
                if high is not None and high > self._ends.get(p, -1):
                    self._ends[p] = high
                end = self._ends.get(p)
            pos = self._processed.get(p)
            if pos is None:
                try:
                    pos = self._consumer.position(tp, timeout_ms=100)
                except KafkaError:
                    continue
            if pos is not None and end is not None:
                lag[p] = max(0, end - pos)
        with self._lock:
            self._lag.update(lag)

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
        return {TopicPartition(self.settings.topic, p): OffsetAndMetadata(o, "" if self._plain_metadata else meta, -1)
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
                self._metadata_refused(exc)
                self._consumer.commit(self._offsets(pending), timeout_ms=int(timeout * 1000))
        except KafkaError as exc:
            log.warning("offset commit failed (will retry): %s", exc)
            return
        with self._lock:
            self._committed.update(pending)

    def _metadata_refused(self, exc: KafkaError) -> None:
        """The broker caps commit metadata below the few dozen bytes driftline writes (its
        offset.metadata.max.bytes): commit the offsets alone from now on."""
        log.error("the broker refused the commit metadata as too large (%s): committing offsets without it", exc)
        self._plain_metadata = True

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
