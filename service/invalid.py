"""Invalid events made visible: counted by reason, logged without flooding, shown in the API.

Each reason's first invalid event is logged at WARNING at once, with its detail and origin
(topic, partition, offset); after that, one summary line per reason and minute says how many
more came and the latest detail. Details name what is wrong, never a value (see
collectors/events.py). The monitor is *rejecting* while every record it reads is invalid:
the last `REJECTING_AFTER` records in a row, or every record for the last minute.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("driftline.monitor")

SUMMARY_EVERY = 60.0  # seconds between two log lines of one reason
REJECTING_AFTER = 100  # invalid records in a row
REJECTING_FOR = 60.0  # or: nothing but invalid records for this long


@dataclass
class _Reason:
    count: int = 0
    detail: str = ""
    origin: str = ""
    at: float = 0.0
    logged_at: float = -1e18
    unlogged: int = 0


class InvalidEvents:
    def __init__(self, monitor: str, topic: str, clock: Callable[[], float] = time.time) -> None:
        self.monitor, self.topic, self._clock = monitor, topic, clock
        self._reasons: dict[str, _Reason] = {}
        self._lock = threading.Lock()
        self._in_a_row = 0  # invalid records since the last valid one
        self._first_invalid_at: float | None = None  # wall time of the first of them
        self._last_invalid_at = 0.0

    def note(self, rejected: list[tuple[int, str, str]], origin: Callable[[int], tuple[int, int]], valid: int,
             ) -> None:
        """A poll's invalid records ((position, reason, detail); `origin(position)` gives the
        partition and offset) and how many valid events came with them."""
        now = self._clock()
        lines = []
        with self._lock:
            for i, reason, detail in rejected:
                r = self._reasons.setdefault(reason, _Reason())
                partition, offset = origin(i)
                r.count += 1
                r.detail, r.origin, r.at = detail, f"{self.topic} partition {partition} offset {offset}", now
                r.unlogged += 1
                if now - r.logged_at >= SUMMARY_EVERY:
                    lines.append(self._line(reason, r, now))
                    r.logged_at, r.unlogged = now, 0
            if valid:
                self._in_a_row, self._first_invalid_at = 0, None
            elif rejected:
                self._in_a_row += len(rejected)
                self._last_invalid_at = now
                if self._first_invalid_at is None:
                    self._first_invalid_at = now
        for line in lines:
            log.warning("%s", line)

    def _line(self, reason: str, r: _Reason, now: float) -> str:
        if r.count == r.unlogged == 1:
            return (f"monitor {self.monitor}: invalid event ({reason}): {r.detail or 'no detail'}; at {r.origin} "
                    f"(further ones are summed up once a minute)")
        return (f"monitor {self.monitor}: {r.unlogged} invalid events ({reason}) since the last line, {r.count} "
                f"in all; the latest: {r.detail or 'no detail'}, at {r.origin}")

    def flush(self) -> None:
        """Log the summaries due (called now and then, so a burst that stopped is still said)."""
        now = self._clock()
        with self._lock:
            lines = []
            for reason, r in self._reasons.items():
                if r.unlogged and now - r.logged_at >= SUMMARY_EVERY:
                    lines.append(self._line(reason, r, now))
                    r.logged_at, r.unlogged = now, 0
        for line in lines:
            log.warning("%s", line)

    @property
    def rejecting(self) -> bool:
        with self._lock:
            now = self._clock()
            # (invalid records for a minute, the latest of them within it: records still come)
            return self._in_a_row >= REJECTING_AFTER or (
                self._first_invalid_at is not None and now - self._first_invalid_at >= REJECTING_FOR
                and now - self._last_invalid_at < REJECTING_FOR)

    def describe(self) -> dict[str, Any]:
        """For the status API: whether the monitor is rejecting, and per reason the count, the
        latest detail and where it was."""
        rejecting = self.rejecting
        with self._lock:
            return {"rejecting": rejecting, "invalid_in_a_row": self._in_a_row,
                    "by_reason": {reason: {"count": r.count, "latest_detail": r.detail, "latest_origin": r.origin,
                                           "latest_at": r.at} for reason, r in sorted(self._reasons.items())}}
