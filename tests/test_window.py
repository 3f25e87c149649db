"""Tumbling windows with an injected clock: assignment, closing, lateness, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
from driftline.service.drift import ColumnKind
from driftline.service.window import NumericalValues, TumblingWindows, WindowProfile
from hypothesis import given, settings
from hypothesis import strategies as st

KINDS = (ColumnKind.NUMERICAL, ColumnKind.CATEGORICAL)


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def time_windows(clock: FakeClock, size: float = 60.0, lateness: float = 5.0) -> TumblingWindows:
    return TumblingWindows(kind="time", size=size, allowed_lateness=lateness, kinds=KINDS,
                           prediction_kind=ColumnKind.NUMERICAL, clock=clock)


def test_time_windows_are_aligned_and_close_after_the_lateness() -> None:
    clock = FakeClock(1000.0)
    w = time_windows(clock)
    for t in (961.0, 979.0, 1019.0):  # windows [960, 1020)
        w.add((1.0, "a"), t, 0.5, "v1")
    clock.t = 1020.0
    w.add((2.0, "b"), 1021.0, 0.5, "v1")  # opens [1020, 1080)
    assert w.close_due() == []  # watermark 1021 - 5 has not passed 1020
    clock.t = 1026.0
    [closed] = w.close_due()  # watermark 1021 + 5 s of wall clock - 5 s lateness = 1021 >= 1020
    assert (closed.start, closed.end, closed.events) == (960.0, 1020.0, 3)
    assert closed.categorical[1] == {"a": 3} and closed.model_versions == {"v1": 3}
    assert not w.add((3.0, "c"), 1000.0, None, None)  # its window has closed: late
    assert w.late_events == 1


def test_an_idle_stream_still_closes_its_last_window() -> None:
    clock = FakeClock(100.0)
    w = time_windows(clock, size=10, lateness=2)
    w.add((1.0, "a"), 95.0, None, None)
    clock.t = 106.0
    assert w.close_due() == []
    clock.t = 107.5  # no event since; the watermark follows the wall clock: 95 + 7.5 - 2 >= 100
    assert [x.events for x in w.close_due()] == [1]


def test_a_replayed_backlog_follows_event_time_not_the_wall_clock() -> None:
    clock = FakeClock(10_000.0)
    w = time_windows(clock, size=10, lateness=1)
    for t in range(100, 160):  # one event per second, an hour-old backlog read in one go
        w.add((float(t), "a"), float(t), None, None)
    closed = w.close_due()
    assert [c.start for c in closed] == [100.0, 110.0, 120.0, 130.0, 140.0]
    assert all(c.events == 10 for c in closed)


def test_count_windows_hold_exactly_size_events() -> None:
    w = TumblingWindows(kind="count", size=3, allowed_lateness=0, kinds=KINDS, prediction_kind=None,
                        clock=FakeClock(0))
    for i in range(8):
        w.add((float(i), "x"), 100.0 + i, None, None)
    closed = w.close_due()
    assert [c.events for c in closed] == [3, 3]
    assert [list(c.numerical[0].values) for c in closed] == [[0, 1, 2], [3, 4, 5]]
    assert w.open_events() == 2


def test_missing_values_are_counted_per_feature() -> None:
    p = WindowProfile(KINDS, 0, 1)
    p.add((None, "a"), 0.5, None, None)
    p.add((1.0, None), 0.5, None, None)
    p.add((None, None), 0.5, None, None)
    assert p.missing == [2, 2] and p.events == 3


def test_profiles_merge_to_the_profile_of_all_events() -> None:
    rng = np.random.default_rng(3)
    events = [(float(x), str(c)) for x, c in zip(rng.normal(size=500), rng.integers(0, 5, 500), strict=True)]
    whole, a, b = WindowProfile(KINDS, 0, 10), WindowProfile(KINDS, 0, 5), WindowProfile(KINDS, 5, 10)
    for i, e in enumerate(events):
        whole.add(e, i / 50, None, "v")
        (a if i % 3 else b).add(e, i / 50, None, "v")
    a.merge(b)
    assert (a.events, a.start, a.end) == (whole.events, 0, 10)
    assert sorted(a.numerical[0].values) == sorted(whole.numerical[0].values)
    assert a.categorical[1] == whole.categorical[1] and a.model_versions == whole.model_versions


def test_memory_is_bounded_by_the_budget_and_the_sample_is_uniform() -> None:
    v = NumericalValues(budget=1000, seed=1)
    for x in range(100_000):
        v.add(float(x))
    assert len(v.values) == 1000 and v.seen == 100_000 and not v.exact
    sample = np.frombuffer(v.values)
    # a uniform sample of 0..99,999: its deciles sit near the population's (±3 %)
    assert np.allclose(np.quantile(sample, [0.1, 0.5, 0.9]), [10_000, 50_000, 90_000], atol=3_000)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 3000), budget=st.integers(1, 500))
def test_reservoir_keeps_min_of_budget_and_count(n: int, budget: int) -> None:
    v = NumericalValues(budget=budget, seed=n)
    for x in range(n):
        v.add(float(x))
    assert len(v.values) == min(n, budget) and v.exact == (n <= budget)
    assert len(set(v.values)) == len(v.values)  # no value kept twice


def test_merging_two_reservoirs_weighs_each_side_by_what_it_saw() -> None:
    low, high = NumericalValues(budget=2000, seed=1), NumericalValues(budget=2000, seed=2)
    for _ in range(30_000):
        low.add(0.0)
    for _ in range(10_000):
        high.add(1.0)
    low.merge(high)
    assert low.seen == 40_000 and len(low.values) == 2000
    assert np.mean(np.frombuffer(low.values)) == pytest.approx(0.25, abs=0.04)
