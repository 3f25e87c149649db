"""The DataFrames a drill-down report is run on, rebuilt column by column from a window's
profile and the reference profile (see `driftline.service.report` for what they hold and
how close Evidently's numbers then are to driftline's). No Evidently here."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from driftline.collectors.schema import format_span

from .drift import get_method
from .evaluation import FeatureDrift, WindowResult
from .profile import NumericalValues, WindowProfile
from .reference import ReferenceProfile, category_label

REFERENCE_ROWS = 100_000  # the window's exactness budget: above it a report costs minutes
# chisquare and z are Evidently's default choice for numerical columns with few values, yet
# Evidently registers them for categorical columns only: such a column is declared
# categorical to Evidently (the test is on value counts either way).
_CATEGORICAL_ONLY_IN_EVIDENTLY = frozenset({"chisquare", "z"})


class ReportError(Exception):
    """A report could not be made; the message says why and never quotes a value."""


class ReportUnavailable(ReportError):
    """Evidently is not installed."""


class ReportTimeout(ReportError):
    """Rendering took longer than its timeout (the worker was stopped)."""


@dataclass(frozen=True)
class ReportColumn:
    """A column of the report: its reference column, and driftline's method and threshold
    for it (None: driftline did not evaluate it; it is shown in the summary only)."""

    name: str
    method: str | None = None
    threshold: float | None = None

    @classmethod
    def from_drift(cls, f: FeatureDrift, name: str | None = None) -> ReportColumn:
        """The method and the line its score was compared with, as Evidently takes them: with
        calibration on, a distance method's noise floor where it is above the threshold."""
        line = f.decision_threshold
        return cls(name or f.feature) if line is None else cls(name or f.feature, f.method, line)


def _unexpressed(f: FeatureDrift, name: str) -> list[str]:
    """A note where driftline's verdict weighed an effect-size floor, which Evidently's test cannot."""
    if f.method is None or not get_method(f.method).is_p_value or f.plain_drifted == f.drifted:
        return []
    return [f"{name}: driftline's verdict ({'drifted' if f.drifted else 'not drifted'}) also weighs the effect "
            f"size ({f.effect_size_measure} {f.effect_size}, floor {f.effect_size_floor}), which Evidently's "
            "p-value test below does not."]


def columns_from_result(result: WindowResult, prediction_column: str | None = None
                        ) -> tuple[list[ReportColumn], ReportColumn | None, list[str]]:
    """The features (in the window's order) and the prediction as `result` evaluated them, so
    Evidently's verdicts are driftline's, and the notes for the verdicts Evidently cannot
    reproduce; `prediction_column` names the prediction's reference column."""
    features = [ReportColumn.from_drift(f) for f in result.features]
    notes = [note for f in result.features for note in _unexpressed(f, f.feature)]
    uncounted = [f.feature for f in result.drifted_features if not f.counts_for_dataset]
    if uncounted:
        notes.append(f"driftline's dataset rule counts a drifted feature only beyond the stricter noise floor of "
                     f"the dataset's false-alarm level ({result.dataset_false_alarm_level:.2g}); it did not count "
                     f"{', '.join(uncounted)}: dataset drift {'yes' if result.dataset_drift else 'no'} (share "
                     f"{result.dataset_share:.3g}). Evidently's summary below counts every drifted feature.")
    pred = None
    if result.prediction is not None and prediction_column:
        pred = ReportColumn.from_drift(result.prediction, prediction_column)
        notes += _unexpressed(result.prediction, prediction_column)
    return features, pred, notes


@dataclass(frozen=True)
class ReportJob:
    """Everything the worker needs: the two frames and Evidently's settings (picklable)."""

    current: pd.DataFrame
    reference: pd.DataFrame
    numerical: tuple[str, ...]
    categorical: tuple[str, ...]
    drift: tuple[ReportColumn, ...]  # features with a method: the drift preset's columns
    prediction: ReportColumn | None  # with a method: its own drift test, outside the share
    drift_share: float
    notes: tuple[str, ...]  # shown above Evidently's report
    title: str


# -- the frames -------------------------------------------------------------------------

def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def _numerical(values: np.ndarray, seen: int, missing: int, rows: int, rng: np.random.Generator, *,
               keep_order: bool) -> np.ndarray:
    """`rows` rows of a column whose `seen` (finite) values are `values` or a uniform sample
    of them, and `missing` more were missing: exactly them when that makes `rows`, else a
    uniform sample of the column's rows (the missing by a hypergeometric draw).

    A window's values keep their order (`keep_order`: an exact window's is the order they
    arrived in, and Evidently plots values by row index: sorted ones would draw a rising
    trend that never happened), its missing ones at random rows (where they were is not
    kept); a reference's are sorted (all its profile keeps), missing ones last."""
    if values.size != seen or seen + missing != rows:
        n_missing = int(rng.hypergeometric(missing, seen, rows)) if missing else 0
        n_values = min(rows - n_missing, values.size)
        picked = rng.choice(values.size, n_values, replace=False)
        values = values[np.sort(picked)] if keep_order else np.sort(values[picked])
        missing = rows - n_values
    if not keep_order:
        return np.concatenate((np.sort(values), np.full(missing, np.nan)))
    out = np.full(rows, np.nan)
    out[np.sort(rng.choice(rows, values.size, replace=False))] = values
    return out


def _categorical(labels: Sequence[str], counts: Sequence[int], missing: int, rows: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Labels in sorted order, each as often as counted (or as a uniform sample of rows
    draws it), then None for the missing."""
    order = sorted(range(len(labels)), key=lambda i: labels[i])
    labs = np.array([labels[i] for i in order], dtype=object)
    cnt = np.array([counts[i] for i in order] + [missing], dtype=np.int64)
    if int(cnt.sum()) != rows:
        cnt = rng.multivariate_hypergeometric(cnt, rows)
    out = np.empty(rows, dtype=object)
    out[:rows - int(cnt[-1])] = np.repeat(labs, cnt[:-1])
    out[rows - int(cnt[-1]):] = None
    return out


def _as_labels(values: np.ndarray) -> np.ndarray:
    """Numbers as the labels driftline gives them (one label per distinct value), None for NaN."""
    return np.array([None if v != v else category_label(v) for v in values.tolist()], dtype=object)


def _window_values(window: WindowProfile, i: int | None) -> tuple[NumericalValues | dict[str, int], int]:
    """Feature i's (or the prediction's, i None) values or counts, and its missing count."""
    if i is None:
        assert window.prediction is not None
        pred = window.prediction
        return (pred if isinstance(pred, NumericalValues) else dict(pred)), window.prediction_missing
    if i in window.numerical:
        return window.numerical[i], window.missing[i]
    return dict(window.categorical[i]), window.missing[i]


def report_job(window: WindowProfile, reference: ReferenceProfile, features: Sequence[ReportColumn], *,
               drift_share: float, prediction: ReportColumn | None = None, title: str = "",
               reference_rows: int = REFERENCE_ROWS, current_rows: int | None = None,
               notes: Sequence[str] = ()) -> ReportJob:
    """The frames and settings of the report (see the module docstring); no Evidently here.

    `features` are the window's features in its order (`window.kinds`), each named by its
    reference column; `prediction` names the prediction's reference column. The window is
    shown in at most `current_rows` rows (default: its budget), the reference in at most
    `reference_rows`."""
    if len(features) != len(window.kinds):
        raise ValueError(f"{len(features)} report columns for a window of {len(window.kinds)} features")
    if window.events == 0:
        raise ReportError("the window has no events")
    if prediction is not None and window.prediction is None:
        raise ValueError("a prediction column for a window without predictions")
    columns: list[tuple[ReportColumn, int | None]] = [(c, i) for i, c in enumerate(features)]
    if prediction is not None:
        columns.append((prediction, None))
    for c, i in columns:
        if c.name not in reference.columns:
            raise ValueError(f"no column {c.name!r} in the reference profile")
        kind = window.prediction_kind if i is None else window.kinds[i]
        if reference.columns[c.name].kind is not kind:
            raise ValueError(f"{c.name!r} is {kind.value if kind else None} in the window and "
                             f"{reference.columns[c.name].kind.value} in the reference")

    exact = all(v.exact for v in window.numerical.values()) and not (
        isinstance(window.prediction, NumericalValues) and not window.prediction.exact)
    cap = window.budget if current_rows is None else current_rows
    cur_rows = window.events if exact and window.events <= cap else min(window.events, cap)
    ref_total = max(col.rows for col in reference.columns.values())
    ref_rows = min(ref_total, reference_rows)
    rng = np.random.default_rng(_seed(reference.content_hash, window.start, window.end, window.events))
    current: dict[str, np.ndarray] = {}
    ref: dict[str, np.ndarray] = {}
    numerical: list[str] = []
    categorical: list[str] = []
    for c, i in columns:
        values, missing = _window_values(window, i)
        col = reference.columns[c.name]
        if isinstance(values, NumericalValues):
            current[c.name] = _numerical(values.values, values.seen, missing, cur_rows, rng, keep_order=True)
            ref[c.name] = _numerical(col.sample.sorted, col.sample.n, col.missing, ref_rows, rng, keep_order=False)
            if c.method in _CATEGORICAL_ONLY_IN_EVIDENTLY:  # Evidently's labels must be text
                current[c.name], ref[c.name] = _as_labels(current[c.name]), _as_labels(ref[c.name])
                categorical.append(c.name)
            else:
                numerical.append(c.name)
        else:
            current[c.name] = _categorical(list(values), list(values.values()), missing, cur_rows, rng)
            ref[c.name] = _categorical(col.sample.labels.tolist(), col.sample.counts.tolist(), col.missing,
                                       ref_rows, rng)
            categorical.append(c.name)

    notes_ = [f"{window.events:,} events" + _span(window) + f"; reference {reference.content_hash[:19]}…, "
             f"{ref_total:,} rows."]
    if not exact:
        notes_.append(f"The window holds more values than the exactness budget ({window.budget:,} per feature): "
                     f"each column shows a uniform sample of {cur_rows:,} rows drawn from the window's sample.")
    elif cur_rows < window.events:
        notes_.append(f"The window's {window.events:,} events are shown as a uniform sample of {cur_rows:,} rows "
                     f"(per column); driftline's own scores use every event.")
    if ref_rows < ref_total:
        notes_.append(f"The reference is shown as a uniform sample of {ref_rows:,} of its {ref_total:,} rows "
                     f"(per column); driftline's own scores use every row, so the numbers here can differ "
                     f"slightly from driftline's.")
    skipped = [c.name for c in features if c.method is None]
    if skipped:
        notes_.append(f"Not evaluated by driftline (no value, or too few events), shown in the summary only: "
                     f"{', '.join(skipped)}.")
    notes_.append("Rows are rebuilt column by column from the profiles: a row is not an event, so row-level "
                 "figures (duplicated or empty rows) say nothing about the events. Methods and thresholds are "
                 "driftline's; the prediction is tested on its own, outside the dataset drift share.")
    return ReportJob(pd.DataFrame(current), pd.DataFrame(ref), tuple(numerical), tuple(categorical),
                     tuple(c for c in features if c.method is not None),
                     prediction if prediction is not None and prediction.method is not None else None,
                     drift_share, (*notes_, *notes), title)


def _span(window: WindowProfile) -> str:
    return f" {format_span(window.start, window.end, dates=True)} UTC" if window.end > window.start else ""


