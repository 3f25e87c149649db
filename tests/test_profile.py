"""Window profiles are values: they round-trip through bytes, merge, and stay bounded."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from driftline.collectors.events import DecodedBatch
from driftline.service.drift import ColumnKind
from driftline.service.profile import (
    MAX_LABELS,
    OTHER_LABEL,
    NumericalValues,
    ProfileFormatError,
    WindowProfile,
)
from hypothesis import given, settings
from hypothesis import strategies as st

NUM, CAT = ColumnKind.NUMERICAL, ColumnKind.CATEGORICAL
KINDS = (NUM, CAT)

labels = st.text(min_size=0, max_size=6)  # any text: empty, NUL, surrogates-free unicode
values = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=64))


@st.composite
def profiles(draw: st.DrawFn, kinds: tuple[ColumnKind, ...] | None = None, budget: int | None = None
             ) -> tuple[WindowProfile, list[DecodedBatch]]:
    """A profile and the batches it was filled with (a small budget, so reservoirs fill)."""
    kinds = kinds or tuple(draw(st.lists(st.sampled_from([NUM, CAT]), min_size=1, max_size=4)))
    pred = draw(st.sampled_from([None, NUM, CAT]))
    budget = budget or draw(st.integers(1, 40))
    p = WindowProfile(kinds, 0.0, 60.0, budget=budget, prediction_kind=pred)
    batches = [batch(draw, kinds, pred) for _ in range(draw(st.integers(0, 4)))]
    for b in batches:
        p.add_batch(b)
    for _ in range(draw(st.integers(0, 3))):
        p.add_type_error(draw(st.integers(0, len(kinds) - 1)))
    return p, batches


def batch(draw: st.DrawFn, kinds: tuple[ColumnKind, ...], pred: ColumnKind | None) -> DecodedBatch:
    from driftline.collectors.events import MISSING

    n = draw(st.integers(1, 30))

    def column(kind: ColumnKind | None) -> np.ndarray | list[object] | None:
        if kind is NUM:
            return np.array([np.nan if v is None else v for v in draw(st.lists(values, min_size=n, max_size=n))])
        if kind is CAT:
            return [MISSING if v is None else v for v in draw(st.lists(st.none() | labels, min_size=n, max_size=n))]
        return None

    cols = [column(k) for k in kinds]
    return DecodedBatch(n, {i: c for i, c in enumerate(cols) if kinds[i] is NUM},  # type: ignore[misc]
                        {i: c for i, c in enumerate(cols) if kinds[i] is CAT},  # type: ignore[misc]
                        np.array(draw(st.lists(st.floats(0, 60, exclude_max=True), min_size=n, max_size=n))),
                        column(pred), None, column(CAT))  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(profiles())
def test_a_profile_comes_back_from_its_bytes_equal(made: tuple[WindowProfile, list[DecodedBatch]]) -> None:
    p, _ = made
    back = WindowProfile.from_bytes(p.to_bytes())
    assert back == p
    assert back.to_bytes() == p.to_bytes()  # nothing lost or reordered, the reservoir state included


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_a_restored_profile_goes_on_as_the_original_would(data: st.DataObject) -> None:
    """The reservoir's generator travels with it: the same events added to the original and to
    its copy from bytes keep the very same sample, beyond the budget too."""
    p, _ = data.draw(profiles())
    copy = WindowProfile.from_bytes(p.to_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        more = batch(data.draw, p.kinds, p.prediction_kind)
        p.add_batch(more)
        copy.add_batch(more)
    assert copy.to_bytes() == p.to_bytes()


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_merging_serialised_parts_equals_one_profile_of_all_events(data: st.DataObject) -> None:
    kinds = tuple(data.draw(st.lists(st.sampled_from([NUM, CAT]), min_size=1, max_size=3)))
    pred = data.draw(st.sampled_from([None, NUM, CAT]))
    parts = [[batch(data.draw, kinds, pred) for _ in range(data.draw(st.integers(0, 3)))]
             for _ in range(data.draw(st.integers(1, 4)))]
    budget = 10_000  # room for every value: the exact regime, where the merge is the whole
    whole = WindowProfile(kinds, 0.0, 60.0, budget=budget, prediction_kind=pred)
    merged = WindowProfile(kinds, 0.0, 60.0, budget=budget, prediction_kind=pred)
    for part in parts:
        piece = WindowProfile(kinds, 0.0, 60.0, budget=budget, prediction_kind=pred)
        for b in part:
            piece.add_batch(b)
            whole.add_batch(b)
        merged.merge(WindowProfile.from_bytes(piece.to_bytes()))
    assert merged == whole
    for i in range(len(kinds)):
        assert merged.sample(i).n == whole.sample(i).n


def test_beyond_the_budget_merged_parts_stand_for_every_event_and_stay_uniform() -> None:
    rng = np.random.default_rng(5)
    parts = []
    for k in range(4):  # four parts of 0..39,999, each holding 10,000 values, merged through bytes
        v = NumericalValues(budget=2_000, seed=k)
        v.add_many(rng.permutation(np.arange(k * 10_000, (k + 1) * 10_000, dtype=np.float64)))
        parts.append(v)
    merged = WindowProfile((NUM,), 0, 1, budget=2_000)
    for v in parts:
        piece = WindowProfile((NUM,), 0, 1, budget=2_000)
        piece.numerical[0] = v
        merged.merge(WindowProfile.from_bytes(piece.to_bytes()))
    sample = merged.numerical[0]
    assert sample.seen == 40_000 and sample.values.size == 2_000 and not sample.exact
    # each quarter of the population holds about a quarter of the sample (binomial sd ~19)
    counts = np.bincount((sample.values // 10_000).astype(int), minlength=4)
    assert np.all(np.abs(counts - 500) < 100), counts


@pytest.mark.parametrize(("damage", "message"), [
    (lambda b: b"XXXX" + b[4:], "not a driftline window profile"),
    (lambda b: b[:4] + bytes([9]) + b[5:], "window profile format 9"),
    (lambda b: b[:-3], "damaged"),
    (lambda b: b + b"\0", "trailing bytes"),
])
def test_damaged_or_newer_bytes_are_refused_with_a_clear_error(damage: object, message: str) -> None:
    p = WindowProfile(KINDS, 0, 60)
    p.add((1.5, "a"), 10.0)
    with pytest.raises(ProfileFormatError, match=message):
        WindowProfile.from_bytes(damage(p.to_bytes()))  # type: ignore[operator]


def test_missing_values_are_counted_per_feature() -> None:
    p = WindowProfile(KINDS, 0, 1)
    p.add((None, "a"), 0.5)
    p.add((1.0, None), 0.5)
    p.add((None, None), 0.5)
    assert p.missing == [2, 2] and p.events == 3


def test_memory_is_bounded_by_the_budget_and_the_sample_is_uniform() -> None:
    v = NumericalValues(budget=1000, seed=1)
    for chunk in np.array_split(np.arange(100_000, dtype=np.float64), 37):
        v.add_many(chunk)
    assert v.values.size == 1000 and v.seen == 100_000 and not v.exact
    # a uniform sample of 0..99,999: its deciles sit near the population's (±3 %)
    assert np.allclose(np.quantile(v.values, [0.1, 0.5, 0.9]), [10_000, 50_000, 90_000], atol=3_000)


def test_a_feature_of_ever_new_labels_cannot_grow_memory() -> None:
    p = WindowProfile(KINDS, 0, 1)
    for b in range(6):
        names = ["common"] * 100 + [f"id-{b}-{i}" for i in range(5000)]
        n = len(names)
        p.add_batch(DecodedBatch(n, {0: np.zeros(n)}, {1: names}, np.zeros(n), None, None, None))
    counts = p.categorical[1]
    assert len(counts) <= MAX_LABELS
    assert counts["common"] == 600 and sum(counts.values()) == 6 * 5100
    assert counts[OTHER_LABEL] > 0
    assert WindowProfile.from_bytes(p.to_bytes()).categorical[1] == Counter(counts)


def test_a_full_window_serialises_in_about_its_values_size() -> None:
    """25 features at the exactness budget: the bytes are the float64 values and little else."""
    p = WindowProfile((NUM,) * 25, 0, 300, budget=100_000)
    rng = np.random.default_rng(0)
    n = 100_000
    p.add_batch(DecodedBatch(n, {i: rng.normal(size=n) for i in range(25)}, {}, np.zeros(n), None, None, None))
    data = p.to_bytes()
    assert 25 * n * 8 <= len(data) < 25 * n * 8 * 1.01
