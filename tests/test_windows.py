"""Tumbling windows over several partitions, with an injected clock: event time per
partition, idleness, horizons, and a state that survives a restart as a value."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
from driftline.collectors.events import DecodedBatch
from driftline.service.drift import ColumnKind
from driftline.service.profile import WindowProfile
from driftline.service.windows import Origin, TumblingWindows
from hypothesis import given, settings
from hypothesis import strategies as st

KINDS = (ColumnKind.NUMERICAL, ColumnKind.CATEGORICAL)


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def windows(clock: FakeClock, size: float = 60.0, lateness: float = 5.0, horizons: tuple[float, ...] = (),
            kind: str = "time", idle: float = 30.0, partitions: int = 1) -> TumblingWindows:
    w = TumblingWindows(kind=kind, size=size, allowed_lateness=lateness,
                        template=WindowProfile(KINDS, 0, 0, prediction_kind=ColumnKind.NUMERICAL),
                        clock=clock, idle_timeout=idle, horizons=horizons)
    w.assign(dict.fromkeys(range(partitions), 0))
    return w


Record = tuple[int, int, float, float, str]  # partition, offset, event time, x, c


def batch_of(records: list[Record]) -> tuple[DecodedBatch, Origin]:
    n = len(records)
    nxt: dict[int, int] = {}
    for p, o, *_ in records:
        nxt[p] = max(nxt.get(p, 0), o + 1)
    batch = DecodedBatch(n, {0: np.array([r[3] for r in records])}, {1: [r[4] for r in records]},
                         np.array([r[2] for r in records]), np.full(n, 0.5), None, [None] * n)
    return batch, Origin(np.array([r[0] for r in records], dtype=np.int64), nxt)


def add(w: TumblingWindows, records: list[Record]) -> int:
    return w.add_batch(*batch_of(records)) if records else 0


def buckets(out: list[tuple[float, WindowProfile]], size: float) -> list[WindowProfile]:
    return [p for length, p in out if length == size]


def summary(p: WindowProfile) -> tuple[Any, ...]:
    """What a result depends on, independent of the order events arrived in."""
    return (p.start, p.end, p.events, tuple(np.sort(p.numerical[0].values).tolist()),
            tuple(sorted(p.categorical[1].items())), tuple(p.missing))


def test_time_windows_are_aligned_and_close_after_the_lateness() -> None:
    clock = FakeClock(1000.0)
    w = windows(clock)
    add(w, [(0, i, t, 1.0, "a") for i, t in enumerate((961.0, 979.0, 1019.0))])  # window [960, 1020)
    add(w, [(0, 3, 1021.0, 2.0, "b")])  # opens [1020, 1080): event time 1021 - 5 s has not passed 1020
    assert w.close_due() == []
    add(w, [(0, 4, 1025.5, 2.0, "b")])
    [first] = buckets(w.close_due(), 60.0)
    assert (first.start, first.end, first.events) == (960.0, 1020.0, 3)
    assert first.categorical[1] == {"a": 3}
    assert add(w, [(0, 5, 1000.0, 3.0, "c")]) == 1  # its window has closed: late
    assert w.late_events == 1


def test_a_window_closes_on_the_slowest_partition_not_the_fastest() -> None:
    clock = FakeClock(0.0)
    w = windows(clock, size=10, lateness=1, partitions=2)
    add(w, [(0, i, float(t), 0.0, "a") for i, t in enumerate(range(0, 100, 2))])  # partition 0: far ahead
    assert w.close_due() == []  # partition 1 has not been read yet
    add(w, [(1, 0, 3.0, 0.0, "a"), (1, 1, 12.5, 0.0, "a")])
    assert [p.start for p in buckets(w.close_due(), 10)] == [0.0]  # 12.5 - 1 passed 10, not 20
    assert add(w, [(1, 2, 13.0, 0.0, "a")]) == 0 and w.late_events == 0


@st.composite
def backlogs(draw: st.DrawFn, partitions: int) -> tuple[list[list[Record]], list[list[Record]]]:
    """Each partition's records in order of event time (gaps of 0 to 3 s, some partitions
    starting later, some empty), then a consumption order: chunks of any partition, in any
    interleaving, grouped into polls."""
    per: list[list[Record]] = []
    for p in range(partitions):
        n = draw(st.integers(0, 60))
        t = draw(st.floats(0, 40))
        gaps = draw(st.lists(st.floats(0, 3), min_size=n, max_size=n))
        recs = []
        for o, g in enumerate(gaps):
            t += g
            recs.append((p, o, 1_000.0 + t, float(o % 7), f"v{o % 3}"))
        per.append(recs)
    heads = [0] * partitions
    order: list[Record] = []
    while any(heads[p] < len(per[p]) for p in range(partitions)):
        waiting = [p for p in range(partitions) if heads[p] < len(per[p])]
        p = draw(st.sampled_from(waiting))
        take = draw(st.integers(1, 25))
        order.extend(per[p][heads[p]:heads[p] + take])
        heads[p] += take
    polls, i = [], 0
    while i < len(order):
        k = draw(st.integers(1, 40))
        polls.append(order[i:i + k])
        i += k
    return per, polls


def expected_buckets(per: list[list[Record]], size: float) -> dict[float, tuple[Any, ...]]:
    """Each window of the whole stream, by event time alone."""
    out: dict[float, WindowProfile] = {}
    for recs in per:
        for r in recs:
            start = math.floor(r[2] / size) * size
            w = out.setdefault(start, WindowProfile(KINDS, start, start + size, prediction_kind=ColumnKind.NUMERICAL))
            w.add_batch(batch_of([r])[0])
    return {s: summary(w) for s, w in out.items()}


def drain(w: TumblingWindows, partitions: int, clock: FakeClock) -> list[tuple[float, WindowProfile]]:
    """Every partition's event time moves far ahead: every window closes."""
    add(w, [(p, 10_000, 1e9, 0.0, "end") for p in range(partitions)])
    out = w.close_due()
    return [(length, p) for length, p in out if p.start < 1e8]


@pytest.mark.parametrize("partitions", [3, 12])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_backlog_read_in_any_interleaving_of_partitions_drops_nothing(partitions: int,
                                                                         data: st.DataObject) -> None:
    per, polls = data.draw(backlogs(partitions))
    clock = FakeClock(5_000.0)
    w = windows(clock, size=10, lateness=0, partitions=partitions)
    done: list[tuple[float, WindowProfile]] = []
    for poll in polls:
        assert add(w, poll) == 0
        done += w.close_due()
        clock.t += data.draw(st.floats(0, 2))  # reading takes time; nothing here is idle (lag unknown)
    done += drain(w, partitions, clock)
    assert w.late_events == 0
    assert {p.start: summary(p) for p in buckets(done, 10)} == expected_buckets(per, 10)


@pytest.mark.parametrize("kind", ["time", "count"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_restart_from_any_snapshot_gives_the_windows_of_an_uninterrupted_run(kind: str,
                                                                               data: st.DataObject) -> None:
    """Snapshot after any poll, restore into a new process (through bytes), read on from the
    snapshot's positions: every window, horizons included, equals the uninterrupted run's."""
    partitions = 3
    _, polls = data.draw(backlogs(partitions))
    cut = data.draw(st.integers(0, len(polls)))
    horizons = (30.0,) if kind == "time" else ()
    size = 10.0 if kind == "time" else float(data.draw(st.integers(1, 40)))

    def run(restart_at: int | None) -> list[tuple[Any, ...]]:
        clock = FakeClock(5_000.0)
        w = windows(clock, size=size, lateness=0, horizons=horizons, kind=kind, partitions=partitions)
        done: list[tuple[float, WindowProfile]] = []
        for i, poll in enumerate(polls):
            if i == restart_at:
                done += w.close_due()
                snap = w.snapshot()
                w = windows(clock, size=size, lateness=0, horizons=horizons, kind=kind, partitions=0)
                w.restore(snap.meta, snap.blobs)
                w.assign({p: snap.meta["positions"].get(str(p)) for p in range(partitions)})
                # reading goes on from the snapshot's positions: nothing before them again
                poll = [r for r in poll if r[1] >= w.positions.get(r[0], 0)]
            add(w, poll)
            done += w.close_due()
        if kind == "count":
            done += [(size, p) for p in w._open.values()]  # the window still filling
        else:
            done += drain(w, partitions, clock)
        return sorted((length, *summary(p)) for length, p in done)

    assert run(cut) == run(None)


def test_snapshots_carry_only_what_changed() -> None:
    clock = FakeClock(0.0)
    w = windows(clock, size=10, lateness=0, horizons=(30.0,))
    add(w, [(0, 0, 1.0, 1.0, "a"), (0, 1, 11.0, 1.0, "a")])
    first = w.snapshot()
    assert set(first.blobs) == {"b0", "b1"}
    add(w, [(0, 2, 12.0, 2.0, "b")])  # bucket 1 changes; bucket 0 closes into the 30 s horizon
    w.close_due()
    second = w.snapshot(first.stamps)
    assert set(second.blobs) == {"b1", "h30"} and set(second.stamps) == {"b1", "h30"}
    assert w.snapshot(second.stamps).blobs == {}  # nothing changed since


def test_an_idle_partition_stops_holding_windows_back_and_one_with_a_lag_never_does() -> None:
    clock = FakeClock(0.0)
    w = windows(clock, size=10, lateness=0, idle=30, partitions=3)
    add(w, [(0, 0, 5.0, 1.0, "a"), (1, 0, 25.0, 1.0, "a")])  # partition 2: nothing yet
    w.note_lag({0: 0, 1: 0, 2: 0})
    clock.t = 29.0
    assert w.close_due() == []  # partition 2 holds every window back
    add(w, [(0, 1, 15.0, 1.0, "a"), (1, 1, 25.5, 1.0, "a")])
    assert w.close_due() == []
    clock.t = 31.0  # 30 s without a record, and nothing waiting: idle
    w.note_lag({0: 0, 1: 0, 2: 0})
    assert [p.start for p in buckets(w.close_due(), 10)] == [0.0]  # partition 0 at 15 s holds [10, 20)
    # partition 2 wakes up behind: its records are judged against the windows as they are now
    assert add(w, [(2, 0, 3.0, 0.0, "x"), (2, 1, 12.0, 0.0, "x")]) == 1
    assert w.close_due() == []  # and it holds the next windows back again
    # a partition with records waiting is never idle, however long nothing comes from it
    clock2 = FakeClock(0.0)
    w2 = windows(clock2, size=10, lateness=0, idle=30, partitions=2)
    add(w2, [(0, 0, 25.0, 1.0, "a")])
    clock2.t = 1_000.0
    w2.note_lag({0: 0, 1: 5_000})
    assert w2.close_due() == []


def test_when_traffic_stops_the_last_window_closes_by_the_wall_clock() -> None:
    clock = FakeClock(100.0)
    w = windows(clock, size=10, lateness=2, idle=5, partitions=2)
    add(w, [(0, 0, 95.0, 1.0, "a"), (1, 0, 96.0, 1.0, "a")])
    w.note_lag({0: 0, 1: 0})
    clock.t = 104.0
    assert w.close_due() == []  # not idle yet
    clock.t = 106.5  # both idle; event time 96 + 6.5 s of wall clock - 2 s lateness passes 100
    assert [p.events for p in buckets(w.close_due(), 10)] == [2]


def test_time_spent_down_does_not_close_windows_after_a_restart() -> None:
    clock = FakeClock(100.0)
    w = windows(clock, size=10, lateness=2, idle=5)
    add(w, [(0, 0, 95.0, 1.0, "a")])
    snap = w.snapshot()
    clock.t = 10_000.0  # back hours later
    w = windows(clock, size=10, lateness=2, idle=5, partitions=0)
    w.restore(snap.meta, snap.blobs)
    w.assign({0: 1})
    w.note_lag({0: 0})
    assert w.close_due() == []  # the partition has not been read (nor been idle) since
    add(w, [(0, 1, 99.0, 1.0, "a")])
    clock.t += 6
    assert [p.events for p in buckets(w.close_due(), 10)] == [2]


def test_horizon_windows_are_merges_of_their_buckets() -> None:
    clock = FakeClock(0.0)
    w = windows(clock, size=10, lateness=0, horizons=(30.0, 60.0))
    recs = [(0, i, float(t), float(t), "a") for i, t in enumerate(range(0, 70, 2))]
    add(w, recs)
    out = w.close_due()
    b, h30, h60 = buckets(out, 10), buckets(out, 30), buckets(out, 60)
    assert [p.start for p in b] == [0, 10, 20, 30, 40, 50]
    assert [(p.start, p.end, p.events) for p in h30] == [(0, 30, 15), (30, 60, 15)]
    assert [(p.start, p.end, p.events) for p in h60] == [(0, 60, 30)]
    whole = WindowProfile(KINDS, 0, 60, prediction_kind=ColumnKind.NUMERICAL)
    for p in b:
        whole.merge(p)
    assert summary(h60[0]) == summary(whole)


def test_a_horizon_window_with_quiet_last_buckets_closes_when_event_time_passes_its_end() -> None:
    clock = FakeClock(0.0)
    w = windows(clock, size=10, lateness=0, horizons=(60.0,))
    add(w, [(0, 0, 5.0, 0.0, "a"), (0, 1, 15.0, 0.0, "a")])  # only the first two buckets of [0, 60)
    add(w, [(0, 2, 61.0, 0.0, "a")])  # the next period
    hours = buckets(w.close_due(), 60.0)
    assert [(p.start, p.end, p.events) for p in hours] == [(0, 60, 2)]


def test_count_windows_hold_exactly_size_events() -> None:
    clock = FakeClock(0.0)
    w = windows(clock, size=3, kind="count")
    add(w, [(0, i, 100.0 + i, float(i), "x") for i in range(8)])
    done = buckets(w.close_due(), 3)
    assert [p.events for p in done] == [3, 3]
    assert [sorted(p.numerical[0].values) for p in done] == [[0, 1, 2], [3, 4, 5]]
    assert w.open_events() == 2


def test_an_event_rejected_for_a_feature_of_the_wrong_type_is_counted_in_its_window() -> None:
    clock = FakeClock(0.0)
    w = windows(clock, size=10, lateness=0)
    b, origin = batch_of([(0, 0, 5.0, 1.0, "a")])
    b.type_errors = [(0, 6.0), (0, 7.0), (1, math.nan)]  # (no event time: no window to count it in)
    w.add_batch(b, origin)
    add(w, [(0, 1, 30.0, 1.0, "a")])
    [first, *_] = buckets(w.close_due(), 10)
    assert first.type_errors == [2, 0] and first.events == 1


def test_reset_starts_over_and_says_what_it_dropped() -> None:
    clock = FakeClock(0.0)
    w = windows(clock, size=10, lateness=0, horizons=(30.0,))
    add(w, [(0, 0, 1.0, 0.0, "a"), (0, 1, 12.0, 0.0, "a")])
    w.close_due()
    dropped = w.reset(closed_index=5)
    assert len(dropped) == 2 and w.open_events() == 0  # bucket [10, 20) and the horizon [0, 30)
    w.assign({0: 100})
    assert add(w, [(0, 100, 55.0, 0.0, "a")]) == 1  # window 5 counts as closed
    assert Counter(w.positions) == Counter({0: 101})
