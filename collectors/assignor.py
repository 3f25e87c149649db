"""One active reader per consumer group: every partition to one member, none to the others.

A monitor's windows span all of its topic's partitions, so they must be read by one
process: several instances in one group would each hold part of every window. The group's
leader runs this assignor (kafka-python's `partition_assignment_strategy`): it gives every
partition of the subscribed topics to one member and an empty assignment to the others,
which stay in the group as standbys and take over when the active member leaves (the
group rebalances and this assignor picks again).

Which member: the one that held the partitions in the previous generation, so a standby
joining does not move them; otherwise the member running longest; ties by member id.
Each member says both in its subscription's user data (JSON).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from kafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment, ConsumerProtocolSubscription

log = logging.getLogger("driftline.collectors.kafka")

PROTOCOL = "driftline-single-active"


class SingleActiveAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    name = PROTOCOL
    version = 0

    def __init__(self) -> None:
        self.held = False  # this member was given the partitions in the last assignment
        self.since = time.time()

    def metadata(self, topics: Any) -> ConsumerProtocolSubscription:
        data = json.dumps({"held": self.held, "since": self.since}).encode()
        return ConsumerProtocolSubscription(self.version, sorted(topics), data)

    def assign(self, cluster: Any, members: list[Any]) -> dict[str, ConsumerProtocolAssignment]:
        topics = sorted({t for m in members for t in m.metadata.topics})

        def preference(m: Any) -> tuple[bool, float, str]:
            try:
                data = json.loads(m.metadata.user_data or b"{}")
            except ValueError:
                data = {}
            return not bool(data.get("held")), float(data.get("since", time.time())), str(m.member_id)

        active = min(members, key=preference)
        partitions = [(t, sorted(cluster.partitions_for_topic(t) or ())) for t in topics]
        log.debug("assigning every partition of %s to member %s of %d", topics, active.member_id, len(members))
        return {m.member_id: ConsumerProtocolAssignment(self.version, partitions if m is active else [], b"")
                for m in members}

    def on_assignment(self, assignment: Any, generation: int) -> None:
        self.held = bool(assignment.partitions())
