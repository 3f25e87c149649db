"""Evidently itself, as the oracle the drift engine is compared with.

Importing evidently costs seconds, so only tests import this module. Telemetry is off
before the import (driftline never makes an outbound call its user did not configure).
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("DO_NOT_TRACK", "1")

import numpy as np
import pandas as pd
from driftline.service.drift import ColumnKind, ColumnSample
from evidently.legacy.calculations.stattests.registry import get_stattest
from evidently.legacy.core import ColumnType

_TYPES = {ColumnKind.NUMERICAL: ColumnType.Numerical, ColumnKind.CATEGORICAL: ColumnType.Categorical}


def evidently_drift(reference: pd.Series, current: pd.Series, kind: ColumnKind,
                    method: str | None, threshold: float | None = None) -> tuple[str, float, bool]:
    """(method name, score, drifted) exactly as Evidently's per-column drift computes it:
    NaN and ±inf dropped from both sides, then the named (or default) stattest.

    numpy's global generator is seeded with 0 for the call (and restored after):
    Evidently's empirical_mmd draws its permutations from it without seeding it, and
    driftline draws the same permutations from a private `RandomState(0)`.
    """
    ref = reference.replace([-np.inf, np.inf], np.nan).dropna()
    cur = current.replace([-np.inf, np.inf], np.nan).dropna()
    state = np.random.get_state()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Evidently's own numpy/pandas warnings are not ours
            stattest = get_stattest(ref, cur, _TYPES[kind], method)
            np.random.seed(0)
            result = stattest(ref, cur, _TYPES[kind], threshold)
    finally:
        np.random.set_state(state)
    return stattest.name, float(result.drift_score), bool(result.drifted)


def sample_of(series: pd.Series, kind: ColumnKind) -> ColumnSample:
    """The driftline sample for a pandas column, as the reference builder and windows make it."""
    if kind is ColumnKind.NUMERICAL:
        return ColumnSample.numerical(series.to_numpy(dtype=np.float64, na_value=np.nan))
    counts = series.dropna().astype(str).value_counts()
    return ColumnSample.categorical({str(k): int(v) for k, v in counts.items()})


def presented_rows(sample: ColumnSample) -> pd.Series:
    """The rows a sample presents, in its order: numerical values as held, categorical
    labels repeated by their counts in label order (what TVD's permutations move)."""
    if sample.kind is ColumnKind.NUMERICAL:
        return pd.Series(sample.values)
    return pd.Series(np.repeat(sample.labels, sample.counts), dtype=object)
