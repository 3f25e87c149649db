"""Invalid events are visible without flooding: the first of each reason logged at once with its
detail and origin, then one line per reason and minute; a monitor reading nothing but invalid
records says it is rejecting. Never a raw value in the log."""

from __future__ import annotations

import logging

import pytest
from driftline.service.invalid import REJECTING_AFTER, SUMMARY_EVERY, InvalidEvents

from tests.test_windows import FakeClock


def note(inv: InvalidEvents, n: int, reason: str = "bad_timestamp", valid: int = 0, offset: int = 0) -> None:
    inv.note([(i, reason, "ISO-8601 time without a time zone (add Z or +hh:mm)") for i in range(n)],
             lambda i: (2, offset + i), valid)


def test_the_first_of_a_reason_is_logged_at_once_then_a_summary_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(1000.0)
    inv = InvalidEvents("credit-risk", "serving", clock)
    with caplog.at_level(logging.WARNING, logger="driftline.monitor"):
        note(inv, 1, offset=7)
        assert len(caplog.records) == 1
        assert "invalid event (bad_timestamp): ISO-8601 time without a time zone" in caplog.text
        assert "at serving partition 2 offset 7" in caplog.text
        for k in range(30):  # 30 s of a thousand more each second: nothing more is logged
            clock.t += 1
            note(inv, 1000, offset=100 + k * 1000)
        note(inv, 5, reason="wrong_type")  # another reason: its own first line
        assert len(caplog.records) == 2
        clock.t = 1000.0 + SUMMARY_EVERY
        inv.flush()
        assert len(caplog.records) == 3
        assert "30000 invalid events (bad_timestamp) since the last line, 30001 in all" in caplog.records[2].message
        clock.t += 1
        inv.flush()  # nothing new: nothing said
        assert len(caplog.records) == 3
    described = inv.describe()["by_reason"]
    assert described["bad_timestamp"]["count"] == 30001 and described["wrong_type"]["count"] == 5
    assert described["bad_timestamp"]["latest_origin"] == "serving partition 2 offset 30099"


def test_rejecting_after_a_hundred_invalid_in_a_row_or_a_minute_of_nothing_else() -> None:
    clock = FakeClock(0.0)
    inv = InvalidEvents("m", "t", clock)
    note(inv, REJECTING_AFTER - 1)
    assert not inv.rejecting
    note(inv, 1)
    assert inv.rejecting
    note(inv, 3, valid=1)  # a valid event among them: no longer
    assert not inv.rejecting
    slow = InvalidEvents("m", "t", clock)
    for _ in range(6):  # a few invalid records, and nothing else, for a minute
        note(slow, 1)
        clock.t += 12
    assert slow.rejecting
    clock.t += 120  # no record at all since: the last minute had none, invalid or not
    assert not slow.rejecting
