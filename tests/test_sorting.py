"""`sort_values`, the window sample's sort behind every evaluation: exactly `np.sort`'s result
on any data, the fast path (continuous values) and the ones it cannot spread alike."""

from __future__ import annotations

import numpy as np
import pytest
from driftline.service.drift.sorting import sort_values
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def _same(x: np.ndarray) -> None:
    got = sort_values(x)
    assert got.dtype == np.float64 and got.shape == x.shape
    assert np.array_equal(got, np.sort(x), equal_nan=True)
    assert got is not x


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(np.float64, st.integers(0, 6_000), elements=st.floats(allow_nan=True, allow_infinity=True)))
def test_any_values_come_out_as_np_sort_gives_them(x: np.ndarray) -> None:
    _same(x)


@pytest.mark.parametrize("shape", ["normal", "lognormal", "integers", "one value", "mostly one value", "outliers",
                                   "sorted", "reversed", "nan and inf", "huge range", "tiny scale",
                                   "two modes far apart"])
def test_data_the_grid_spreads_and_data_it_cannot(shape: str) -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    x = {"normal": rng.normal(size=n), "lognormal": rng.lognormal(0, 2, n),
         "integers": rng.integers(0, 30, n).astype(float), "one value": np.full(n, 3.5),
         "mostly one value": np.where(rng.random(n) < 0.99, 0.0, rng.normal(size=n)),
         "outliers": np.concatenate((rng.normal(size=n - 5), [1e300, -1e300, 1e9, -0.0, 0.0])),
         "sorted": np.sort(rng.normal(size=n)), "reversed": np.sort(rng.normal(size=n))[::-1].copy(),
         "nan and inf": np.concatenate((rng.normal(size=n - 6), [np.nan, np.inf, -np.inf] * 2)),
         "huge range": rng.uniform(-1, 1, n) * 1.7e308, "tiny scale": rng.normal(size=n) * 1e-300,
         "two modes far apart": np.concatenate((rng.normal(0, 1, n // 2), rng.normal(1e6, 1, n // 2)))}[shape]
    _same(x)
