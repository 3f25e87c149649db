"""A monitor's state in the SQLite file: written in one transaction with the results, only
what changed, private to its owner, and taken up on assignment only when it is not older
than the committed offsets."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from driftline.service.drift import ColumnKind
from driftline.service.profile import WindowProfile
from driftline.service.state import MonitorState
from driftline.service.store import ResultRow, Store
from driftline.service.windows import TumblingWindows

from tests.test_windows import FakeClock, add

KINDS = (ColumnKind.NUMERICAL, ColumnKind.CATEGORICAL)
SIGNATURE = {"features": [["x", "numerical"], ["c", "categorical"]], "window": ["time", 10.0, [30.0]]}


def state(store: Store | None, clock: FakeClock, signature: dict[str, object] | None = None,
          interval: float = 5.0) -> MonitorState:
    w = TumblingWindows(kind="time", size=10, allowed_lateness=0, clock=clock, horizons=(30.0,),
                        template=WindowProfile(KINDS, 0, 0, prediction_kind=ColumnKind.NUMERICAL))
    return MonitorState("m", "topic", w, store, signature or SIGNATURE, interval, clock)


def row(start: float) -> ResultRow:
    return ResultRow("10s", start, start + 10, 3, "evaluated", False, 0.0, "{}")


def test_the_state_file_is_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    store = Store(path)
    s = state(store, FakeClock(0.0))
    s.adopt({0: None})
    add(s.windows, [(0, 0, 1.0, 1.0, "a")])
    assert s.save([], {}, force=True)
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
    store.close()
    os.chmod(path, 0o644)  # a file made readable by others is made private again, and said so
    Store(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_checkpoint_writes_the_changed_profiles_and_the_results_in_one_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.sqlite")
    clock = FakeClock(0.0)
    s = state(store, clock)
    s.adopt({0: None, 1: None})
    add(s.windows, [(0, 0, 1.0, 1.0, "a"), (1, 0, 12.0, 2.0, "b")])
    assert s.save([], {"streak": 1}, force=True)
    meta, blobs = store.load_state("m")  # type: ignore[misc]
    assert set(blobs) == {"b0", "b1"} and meta["windows"]["positions"] == {"0": 1, "1": 1}
    assert meta["streak"] == 1

    add(s.windows, [(0, 1, 13.0, 1.0, "a"), (1, 1, 14.0, 1.0, "a")])
    closed = s.windows.close_due()  # bucket 0 closes (both partitions passed 10 s)
    assert [p.start for _, p in closed] == [0.0]
    written: list[set[str]] = []
    real = store.save_state

    def spy(monitor, meta, blobs, keys, results, now):  # type: ignore[no-untyped-def]
        written.append(set(blobs))
        return real(monitor, meta, blobs, keys, results, now)

    store.save_state = spy  # type: ignore[method-assign]
    assert s.save([row(0.0)], {})  # results: written at once, not waiting for the interval
    assert written == [{"b1", "h30"}]  # bucket 1 changed, the horizon took bucket 0; bucket 0 is gone
    meta, blobs = store.load_state("m")  # type: ignore[misc]
    assert set(blobs) == {"b1", "h30"}
    assert [r.window_start for r, _ in store.window_results("m")] == [0.0]
    assert not s.save([], {})  # nothing due: the interval has not passed
    clock.t = 5.0
    assert s.save([], {}) and written[-1] == set()  # due, and nothing changed: only the meta


def test_a_restart_takes_the_state_up_and_reads_on_from_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    clock = FakeClock(0.0)
    s = state(Store(path), clock)
    s.adopt({0: None, 1: None})
    add(s.windows, [(0, i, 1.0 + i, 1.0, "a") for i in range(5)] + [(1, 0, 2.0, 1.0, "b")])
    s.save([], {"streak": 2}, force=True)
    committed = s.committable()
    assert {p: o for p, (o, _) in committed.items()} == {0: 5, 1: 1}
    assert json.loads(committed[0][1])["driftline"] == 2

    again = state(Store(path), clock)
    # the committed offsets may lag the checkpoint (committed every interval): still ours
    starts = again.adopt({0: (3, committed[0][1]), 1: None})
    assert starts == {0: 5, 1: 1} and again.extra == {"streak": 2}
    assert again.windows.open_events() == 6


def test_a_checkpoint_behind_the_committed_offsets_starts_the_windows_over(tmp_path: Path, caplog) -> None:
    path = tmp_path / "state.sqlite"
    clock = FakeClock(0.0)
    s = state(Store(path), clock)
    s.adopt({0: None})
    add(s.windows, [(0, i, 1.0 + i, 1.0, "a") for i in range(5)])
    s.save([], {}, force=True)
    other = json.dumps({"driftline": 2, "store": "another", "seq": 9, "closed": 3})
    again = state(Store(path), clock)
    with caplog.at_level(logging.WARNING, logger="driftline.monitor"):
        starts = again.adopt({0: (40, other)})
    assert starts == {0: 40} and again.windows.open_events() == 0
    assert "another instance read further" in caplog.text and "these windows start over" in caplog.text
    assert add(again.windows, [(0, 40, 35.0, 0.0, "a")]) == 1  # window 3 was closed by the other instance


def test_without_the_state_file_the_log_names_the_windows_the_reader_before_had_in_progress(
        tmp_path: Path, caplog) -> None:
    """A standby on its own volume: the committed offset's metadata names the windows in progress
    at the instance before (Kafka keeps it; the local test broker does not)."""
    before = state(Store(tmp_path / "a.sqlite"), FakeClock(0.0))
    before.adopt({0: None})
    add(before.windows, [(0, i, 11.0 + i, 1.0, "a") for i in range(5)])
    before.save([], {}, force=True)
    offset, metadata = before.committable()[0]
    standby = state(Store(tmp_path / "b.sqlite"), FakeClock(0.0))
    with caplog.at_level(logging.WARNING, logger="driftline.monitor"):
        assert standby.adopt({0: (offset, metadata)}) == {0: 5}
    assert "no checkpoint of it in this state file" in caplog.text
    assert "1970-01-01 00:00:10..1970-01-01 00:00:20 (5 events)" in caplog.text  # the bucket
    assert "1970-01-01 00:00:00..1970-01-01 00:00:30 (0 events)" not in caplog.text  # (no horizon window yet)


def test_a_checkpoint_for_other_features_or_windows_is_not_taken_up(tmp_path: Path, caplog) -> None:
    path = tmp_path / "state.sqlite"
    s = state(Store(path), FakeClock(0.0))
    s.adopt({0: None})
    add(s.windows, [(0, 0, 1.0, 1.0, "a")])
    s.save([], {}, force=True)
    again = state(Store(path), FakeClock(0.0), signature={**SIGNATURE, "window": ["time", 60.0, []]})
    with caplog.at_level(logging.WARNING, logger="driftline.monitor"):
        assert again.adopt({0: (0, "")}) == {0: 0}
    assert "window settings changed" in caplog.text and again.windows.open_events() == 0


def test_dead_letters_not_acknowledged_are_read_again_and_nothing_else_counted_twice(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    s = state(Store(path), FakeClock(0.0))
    s.first_pending = lambda: {0: 2}  # the copy of record 2 was not acknowledged at the checkpoint
    s.adopt({0: None})
    add(s.windows, [(0, i, 1.0 + i, 1.0, "a") for i in range(5)])
    s.save([], {}, force=True)
    assert s.committable()[0][0] == 2  # the commit never passes it
    again = state(Store(path), FakeClock(0.0))
    assert again.adopt({0: (2, "")}) == {0: 2}
    assert again.redo == {0: 5}  # records 2..4 are read for their dead letters only


def test_a_standby_writes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.sqlite")
    s = state(store, FakeClock(100.0))
    assert not s.save([], {})
    assert store.load_state("m") is None


@pytest.mark.parametrize("damage", [b"garbage", b"DLWP\x01"])
def test_damaged_profiles_start_the_windows_over_instead_of_stopping(tmp_path: Path, damage: bytes,
                                                                    caplog) -> None:
    path = tmp_path / "state.sqlite"
    store = Store(path)
    s = state(store, FakeClock(0.0))
    s.adopt({0: None})
    add(s.windows, [(0, 0, 1.0, 1.0, "a")])
    s.save([], {}, force=True)
    store._db.execute("UPDATE monitor_windows SET profile = ?", (damage,))
    again = state(Store(path), FakeClock(0.0))
    with caplog.at_level(logging.WARNING, logger="driftline.monitor"):
        assert again.adopt({0: (0, "")}) == {0: 0}
    assert "cannot be read" in caplog.text
    assert np.isclose(again.windows.open_events(), 0)


def test_the_history_stays_bounded_by_count_and_age_and_keeps_the_latest_samples(tmp_path: Path) -> None:
    from driftline.service.store import Retention

    store = Store(tmp_path / "state.sqlite", Retention(windows=5, max_age=100.0, samples=2))

    def rows(starts: range) -> list[ResultRow]:
        return [ResultRow("10s", t, t + 10, 3, "evaluated", False, 0.0, json.dumps({"window_start": t}),
                          f"10s-{t}", b"sample-%d" % t) for t in starts]

    store.save_state("m", {}, {}, set(), rows(range(0, 40, 10)), now=0.0)
    store.save_state("m", {}, {}, set(), rows(range(40, 80, 10)), now=50.0)
    history = store.history("m", 100)
    assert [wid for wid, _, _ in history] == ["10s-70", "10s-60", "10s-50", "10s-40", "10s-30"]  # the latest 5
    assert [has for _, _, has in history] == [True, True, False, False, False]  # samples of the latest 2
    assert store.window("m", "10s-70") == (json.dumps({"window_start": 70}), b"sample-70")
    assert store.window("m", "10s-50") == (json.dumps({"window_start": 50}), None)
    assert store.window("m", "10s-0") is None
    assert [w for w, _, _ in store.history("m", 2, before="10s-60")] == ["10s-50", "10s-40"]
    store.save_state("m", {}, {}, set(), rows(range(80, 90, 10)), now=120.0)  # 100 s after the first four
    assert [w for w, _, _ in store.history("m", 100)] == ["10s-80", "10s-70", "10s-60", "10s-50", "10s-40"]
    store.save_state("m", {}, {}, set(), rows(range(90, 100, 10)), now=151.0)  # those of t=50 are too old now
    assert [w for w, _, _ in store.history("m", 100)] == ["10s-90", "10s-80"]
    assert store._db.execute("SELECT count(*) FROM window_samples").fetchone()[0] == 2
