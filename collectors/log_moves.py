"""When the topic's log moves under driftline: a topic deleted and created again, a broker
that lost its data, retention passing a position. Offsets then start again at 0, and a
consumer that keeps its old positions would wait, silently, or skip what was written since.
`LogMoves` notices and has every assigned partition read again from its beginning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.protocol.consumer.offsets import OffsetResetStrategy

log = logging.getLogger("driftline.collectors.kafka")


class LogMoves:
    """Called from the polling thread only (it uses the consumer)."""

    def __init__(self, consumer: KafkaConsumer, topic: str, assigned: Callable[[], frozenset[int]],
                 forget: Callable[[], None]) -> None:
        self._consumer, self._topic = consumer, topic
        self._assigned = assigned  # the partitions driftline holds now
        self._forget = forget  # drop every offset of the old topic (the source's and its owner's)
        self._topic_id: Any = None  # the topic's id as the broker last described it
        self._seek_to_beginning = False
        self._reset_earliest = False

    def _mine(self) -> list[TopicPartition]:
        return [tp for tp in self._consumer.assignment() if tp.topic == self._topic]

    def recreated(self) -> bool:
        """True when the topic's id changed since the last poll (deleted and created again,
        or a broker that lost its data: offsets start again at 0). Every assigned partition
        is then read from its beginning, and offsets of the old topic are forgotten.

        A Kafka broker, and Tansu, may answer a fetch beyond the end of the new log with no
        records and no error: without this check driftline would wait, silently, until the
        new log grew past its old position and skip everything before it.
        """
        try:
            tid = self._consumer._client.cluster.topic_id(self._topic)
        except AttributeError:  # another kafka-python: out-of-range resets still apply
            return False
        if tid is None or tid == self._topic_id:
            return False
        old, self._topic_id = self._topic_id, tid
        if old is None:
            return False
        log.warning("topic %s was recreated (id %s, was %s): reading partitions %s from the beginning",
                    self._topic, tid, old, sorted(tp.partition for tp in self._mine()))
        self._forget()
        self._seek_to_beginning = True
        self.seek_pending()
        return True

    def seek_pending(self) -> bool:
        """After a recreated topic: until the partitions (assigned now, or once the group has
        rejoined) are sought to their beginning, polled records are dropped; kafka-python
        may keep a partition's old position across the rejoin."""
        if not self._seek_to_beginning:
            return False
        mine = self._mine()
        if mine and self._assigned():
            self._consumer.seek_to_beginning(*mine)
            self._seek_to_beginning = False
        return True

    def reset_to_earliest_from_now_on(self) -> None:
        """Once every assigned partition has a position, an out-of-range position resets
        to the earliest offset, whatever auto_offset_reset says (done once).

        auto_offset_reset is for a group that has no committed offset (where a new monitor
        starts). Later, a position out of range means the log moved under driftline: its
        start passed it (retention), or the broker lost its data (a restarted in-memory
        broker, a recreated topic), so offsets start again at 0. "latest" would then skip
        the records written since, silently; "earliest" reads all that is still there.
        """
        if self._reset_earliest:
            return
        assigned = self._assigned()
        if not assigned:
            return
        try:
            subs = self._consumer._subscription
            tps = [TopicPartition(self._topic, p) for p in assigned]
            if all(subs.has_valid_position(tp) for tp in tps):
                subs._default_offset_reset_strategy = OffsetResetStrategy.EARLIEST
                self._reset_earliest = True
        except (AttributeError, KeyError) as exc:  # another kafka-python: keep its behaviour
            log.debug("cannot set the out-of-range reset strategy: %s", exc)
            self._reset_earliest = True
