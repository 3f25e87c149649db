"""Drift of one window against the reference profile, as Evidently's DataDriftPreset does it,
with thresholds calibrated to the window's size, and each feature's data quality.

Per feature: NaN/missing values are left out (and reported as the missing ratio), the
method is the configured one or Evidently's automatic choice, the threshold the
configured one or the method's default. The dataset drifts when the share of drifted
features reaches `drift_share`. A window with fewer events than `min_events` is reported
as insufficient data and never drifts.

**Calibration** (`drift.calibration: on`, the default). Evidently's verdict (the score
against the threshold) stands, and two more conditions must hold for a feature to drift:

- the *noise floor*: the score, for a p-value method its effect size, is at least what a
  window of this many values drawn from the training data itself reaches with probability q
  (`drift/noise.py`). The level q is the monitor's for the window's size, chosen when it loads
  a profile (`prepare`; else at its first window), for its features and their thresholds
  (`drift/level.py`): the features are flagged on average at most half of
  `drift.feature_false_alarm_rate` (1 in 200 by default on small windows; more for some features
  on larger ones, where others rarely reach their thresholds). Small windows need a larger
  difference, large windows do not;
- for p-value methods the *effect size floor*: the effect size is at least the smallest
  difference worth acting on (`drift/effects.py`), so that a huge window does not flag a
  difference nobody would act on.

The dataset rule counts the features beyond the floor of the dataset's level q_d <= q: the
largest at which whole-row windows of the training data are declared dataset drift at most
`drift.false_alarm_rate` of the time, for `drift_share` and the features' correlation. Mostly
q_d = q and it counts the drifted features, as Evidently does; where one drifted feature is
enough (or the features drift together) its floor is the stricter one, and a feature can drift
without counting (`counts_for_dataset`).

Every feature reports Evidently's own verdict (`plain_drifted`), the limits and which of
them decided. `drift.calibration: off` gives Evidently's plain thresholds exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol, runtime_checkable

import numpy as np

from .config import DriftSettings, MonitorSettings
from .drift import ColumnKind, ColumnSample, DriftMethod, default_method, get_method
from .drift.effects import EFFECTS
from .drift.level import choose_level, level_at
from .drift.noise import GRID, feature_level
from .quality import QUALITY_CHECKS, DataQualityLimits, FeatureQuality, feature_quality
from .reference import ReferenceColumn, ReferenceProfile


class WindowView(Protocol):
    """What `evaluate_window` reads from a window profile (service/profile.py's WindowProfile)."""

    @property
    def events(self) -> int: ...
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def missing(self) -> Sequence[int]: ...  # per feature: events lacking it
    @property
    def prediction_missing(self) -> int: ...
    @property
    def model_versions(self) -> Mapping[str, int]: ...

    def sample(self, i: int) -> ColumnSample: ...  # feature i's values (sorted) or label counts
    def exact(self, i: int) -> bool: ...  # False once feature i held more values than the budget
    def prediction_sample(self) -> ColumnSample | None: ...


@runtime_checkable
class CountsTypeErrors(Protocol):
    """A window that also counts, per feature, the events rejected because that feature had the
    wrong type (WindowProfile does)."""

    @property
    def type_errors(self) -> Sequence[int]: ...


class WindowStatus(str, Enum):
    EVALUATED = "evaluated"
    INSUFFICIENT_DATA = "insufficient_data"


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: ColumnKind
    method: str | None  # None when the window had no value of the feature
    threshold: float | None  # the method's threshold, Evidently's practical one
    score: float | None
    drifted: bool
    values: int  # values compared (after dropping missing ones)
    missing_ratio: float
    exact: bool  # False once the window held more values than the exactness budget
    plain_drifted: bool = False  # Evidently's verdict: the score against the threshold alone
    calibrated: bool = False  # a noise floor took part in the verdict
    noise_floor: float | None = None  # on the scale of `effect_size` (p-value methods) or of the score
    effect_size: float | None = None  # p-value methods: how large the difference is
    effect_size_measure: str | None = None  # its name (ks_statistic, cohens_d, …)
    effect_size_floor: float | None = None  # p-value methods, calibration on: the smallest that drifts
    decided_by: str | None = None  # threshold | effect_size_floor | noise_floor (see `_verdict`)
    quality: FeatureQuality | None = None
    dataset_noise_floor: float | None = None  # the floor at the dataset rule's level (>= noise_floor)
    counts_for_dataset: bool = False  # beyond every limit at the dataset's floor too: counted by the dataset rule

    @property
    def decision_threshold(self) -> float | None:
        """The line the score was compared with (None: not evaluated): a p-value method's
        threshold, a distance's threshold or, with calibration on, its noise floor when higher."""
        if self.method is None or self.threshold is None:
            return None
        if get_method(self.method).is_p_value or not self.calibrated or self.noise_floor is None:
            return self.threshold
        return max(self.threshold, self.noise_floor)


@dataclass(frozen=True)
class WindowResult:
    monitor: str
    horizon: str  # the window's length, e.g. "5m": the bucket's own, or a longer horizon's
    status: WindowStatus
    window_start: float
    window_end: float
    events: int
    features: tuple[FeatureDrift, ...]
    prediction: FeatureDrift | None
    drift_share: float
    drift_share_threshold: float
    dataset_drift: bool  # the share of features counted for the dataset reached drift_share_threshold
    model_versions: dict[str, int]
    reference_hash: str
    evaluated_at: float
    duration_seconds: float
    calibration: str = "off"  # on | off | unavailable: why
    false_alarm_level: float | None = None  # calibration on: the per-feature level of the floors at this size
    dataset_false_alarm_level: float | None = None  # calibration on: the level of the dataset rule's floors
    dataset_share: float = 0.0  # share of the evaluated features counted for the dataset (<= drift_share)
    false_alarm_level_basis: str | None = None  # how the dataset's was chosen: "whole rows" or "markov"
    window_id: str = ""  # set by the monitor's evaluator (service/history.py), "" offline

    @property
    def drifted_features(self) -> tuple[FeatureDrift, ...]:
        return tuple(f for f in self.features if f.drifted)

    @property
    def quality_issues(self) -> tuple[FeatureDrift, ...]:
        return tuple(f for f in self.features if f.quality is not None and f.quality.issues)

    @property
    def model_version(self) -> str | None:
        """The window's model version when its events carry exactly one, else the most common."""
        if not self.model_versions:
            return None
        return max(self.model_versions.items(), key=lambda kv: kv[1])[0]


@dataclass(frozen=True)
class _Calibration:
    on: bool
    levels: tuple[float, ...]  # per-feature chance of a noise-floor exceedance without drift, per size of
    # noise.GRID (`level.LevelChoice`)
    dataset_levels: tuple[float, ...]  # the dataset rule's, per size (<= levels)
    quality_level: float  # the data-quality checks' (see `_calibration`)
    status: str
    basis: str | None = None  # how the dataset's level was chosen: "whole rows" or "markov" (drift/level.py)


_EMPTY = {ColumnKind.NUMERICAL: ColumnSample(ColumnKind.NUMERICAL, values=np.zeros(0)),
          ColumnKind.CATEGORICAL: ColumnSample(ColumnKind.CATEGORICAL, labels=np.zeros(0, dtype=object),
                                               counts=np.zeros(0, dtype=np.int64))}


def _planned(spec_method: str | None, spec_threshold: float | None, drift: DriftSettings,
             ref_col: ReferenceColumn) -> tuple[str | None, float | None]:
    """The measure a feature's noise floor will be read for, known before any window (the
    configured method's, or Evidently's choice from the reference alone: a window bringing new
    values can change it for a column of at most 5 distinct values; None without floors), and
    the practical limit on that measure's scale: the threshold of a distance, the effect size
    floor of a p-value method."""
    if ref_col.noise is None:
        return None, None
    method = _pick_method(spec_method, drift, ref_col.kind, ref_col.sample, _EMPTY[ref_col.kind])
    if method.measure not in ref_col.noise.measures():
        return None, None
    return method.measure, _effect_floor(method, drift) if method.effect else _threshold(method, spec_threshold, drift)


def _calibration(settings: MonitorSettings, reference: ReferenceProfile,
                 feature_names: tuple[str, ...]) -> _Calibration:
    """The monitor's levels, chosen once per reference (`drift/level.py`). The data-quality
    checks keep a tenth of the bound for any correlation: each is a signal on its own."""
    drift = settings.drift
    markov = min(feature_level(drift.false_alarm_rate, drift.drift_share, len(feature_names)),
                 drift.feature_false_alarm_rate / 2)
    quality = markov / QUALITY_CHECKS
    flat = (markov,) * len(GRID)
    if drift.calibration == "off":
        return _Calibration(False, flat, flat, quality, "off")
    if reference.calibration_note:
        return _Calibration(True, flat, flat, quality, f"unavailable: {reference.calibration_note}", "markov")
    specs = settings.event.features
    planned = {n: _planned(specs[n].method, specs[n].threshold, drift, reference.column(n)) for n in feature_names}
    key = (tuple((n, *planned[n]) for n in feature_names), drift.drift_share, drift.false_alarm_rate,
           drift.feature_false_alarm_rate)
    choice = reference.levels.get(key)
    if choice is None:
        choice = reference.levels[key] = choose_level(
            reference.joint, [(n, planned[n][0]) for n in feature_names], drift.drift_share,
            drift.false_alarm_rate, drift.feature_false_alarm_rate,
            thresholds={n: t for n, (m, t) in planned.items() if m is not None and t is not None},
            tables={n: t for n, (m, _) in planned.items() if m is not None and (t := reference.column(n).noise)})
    return _Calibration(True, choice.levels, choice.dataset_levels, quality, "on", choice.basis)


def prepare(reference: ReferenceProfile, settings: MonitorSettings, feature_names: tuple[str, ...]) -> None:
    """The work of evaluating with this reference that no window changes (the monitor's
    false-alarm level, from the whole-row windows), done when the reference is loaded so the
    first window is evaluated as fast as the next; `evaluate_window` does it otherwise."""
    _calibration(settings, reference, feature_names)


def _pick_method(spec_method: str | None, drift: DriftSettings, kind: ColumnKind,
                 ref: ColumnSample, cur: ColumnSample) -> DriftMethod:
    name = spec_method or drift.method or (drift.num_method if kind is ColumnKind.NUMERICAL else drift.cat_method)
    return get_method(name) if name else default_method(ref, cur)


def _threshold(method: DriftMethod, spec_threshold: float | None, drift: DriftSettings) -> float:
    """The feature's configured threshold, else the monitor's, else the method's default."""
    if spec_threshold is not None:
        return spec_threshold
    return drift.threshold if drift.threshold is not None else method.default_threshold


def _effect_floor(method: DriftMethod, drift: DriftSettings) -> float:
    """A p-value method's effect size floor: the configured one, else its effect's default."""
    assert method.effect is not None
    return drift.effect_size_floors.get(method.name, EFFECTS[method.effect].default_floor)


def _verdict(method: DriftMethod, score: float, threshold: float, effect: float | None,
             effect_floor: float | None, noise: float | None) -> tuple[bool, str]:
    """(drifted, decided_by) with calibration on.

    decided_by names the limit that decided: for a p-value method whose p-value is not below
    its threshold, "threshold" (Evidently's verdict: no drift); otherwise the larger of the
    limits on the effect scale: "effect_size_floor" or "noise_floor" for a p-value method,
    "threshold" or "noise_floor" for a distance."""
    plain = method.verdict.drifted(score, threshold)
    if effect_floor is not None:  # a p-value method
        if not plain:
            return False, "threshold"
        limit, by = (noise, "noise_floor") if noise is not None and noise > effect_floor else (effect_floor,
                                                                                               "effect_size_floor")
        return effect is not None and math.isfinite(effect) and effect >= limit, by
    if noise is None or noise <= threshold:
        return plain, "threshold"
    return plain and method.verdict.drifted(score, noise), "noise_floor"


def _column_drift(name: str, ref_col: ReferenceColumn, cur: ColumnSample, missing: int, events: int,
                  method_name: str | None, threshold: float | None, drift: DriftSettings, exact: bool,
                  evaluate: bool, calib: _Calibration, quality: FeatureQuality | None) -> FeatureDrift:
    ref, kind = ref_col.sample, ref_col.kind
    missing_ratio = missing / events if events else 0.0
    if not evaluate or cur.n == 0:
        return FeatureDrift(name, kind, None, None, None, False, cur.n, missing_ratio, exact, quality=quality)
    method = _pick_method(method_name, drift, kind, ref, cur)
    thr = _threshold(method, threshold, drift)
    score = method.score(ref, cur)
    plain = method.verdict.drifted(score, thr)
    effect = EFFECTS[method.effect].size(ref, cur) if method.effect else None
    if not calib.on:
        return FeatureDrift(name, kind, method.name, thr, score, plain, cur.n, missing_ratio, exact, plain,
                            effect_size=effect, effect_size_measure=method.effect, decided_by="threshold",
                            quality=quality, counts_for_dataset=plain)
    effect_floor = _effect_floor(method, drift) if method.effect else None
    noise = dataset_noise = None
    if ref_col.noise:
        noise = ref_col.noise.floor(method.measure, cur.n, ref.n, calib.levels)
        dataset_noise = ref_col.noise.floor(method.measure, cur.n, ref.n, calib.dataset_levels)
    drifted, by = _verdict(method, score, thr, effect, effect_floor, noise)
    counts = drifted and _verdict(method, score, thr, effect, effect_floor, dataset_noise)[0]
    return FeatureDrift(name, kind, method.name, thr, score, drifted, cur.n, missing_ratio, exact, plain,
                        noise is not None, noise, effect, method.effect, effect_floor, by, quality,
                        dataset_noise, counts)


def _type_errors(window: WindowView, count: int) -> list[int | None]:
    if isinstance(window, CountsTypeErrors):
        return [int(n) for n in window.type_errors[:count]]
    return [None] * count


def evaluate_window(window: WindowView, reference: ReferenceProfile, settings: MonitorSettings,
                    feature_names: tuple[str, ...], horizon: str | None = None) -> WindowResult:
    started = time.perf_counter()
    enough = window.events >= settings.window.min_events
    drift = settings.drift
    calib = _calibration(settings, reference, feature_names)
    dq = drift.data_quality
    limits = DataQualityLimits(dq.unseen_category_share, dq.out_of_range_share, dq.missing_share_factor,
                               dq.missing_share_increase, dq.type_error_share, dq.unseen_labels,
                               calib.quality_level)
    features = []
    type_errors = _type_errors(window, len(feature_names))
    for i, name in enumerate(feature_names):
        spec = settings.event.features[name]
        ref_col = reference.column(name)
        cur = window.sample(i)
        quality = feature_quality(ref_col.facts, ref_col.sample, cur, window.missing[i], window.events,
                                  type_errors[i], limits, signals=enough)
        features.append(_column_drift(name, ref_col, cur, window.missing[i], window.events, spec.method,
                                      spec.threshold, drift, window.exact(i), enough, calib, quality))
    prediction = None
    pred_sample = window.prediction_sample()
    if pred_sample is not None and settings.event.prediction is not None:
        spec_p = settings.event.prediction
        # scored like a feature, reported apart: never counted by the dataset rule
        prediction = replace(_column_drift("prediction", reference.column(spec_p.column), pred_sample,
                                           window.prediction_missing, window.events, spec_p.method, spec_p.threshold,
                                           drift, True, enough, calib, None), counts_for_dataset=False)
    evaluated = [f for f in features if f.method is not None]
    share = sum(f.drifted for f in evaluated) / len(evaluated) if evaluated else 0.0
    dataset_share = sum(f.counts_for_dataset for f in evaluated) / len(evaluated) if evaluated else 0.0
    n_eff = _n_eff(window.events, reference)
    status = WindowStatus.EVALUATED if enough else WindowStatus.INSUFFICIENT_DATA
    return WindowResult(
        monitor=settings.name, horizon=horizon or settings.window.labels[0], status=status,
        window_start=window.start, window_end=window.end,
        events=window.events, features=tuple(features), prediction=prediction, drift_share=share,
        drift_share_threshold=drift.drift_share,
        dataset_drift=bool(enough and evaluated and dataset_share >= drift.drift_share),
        model_versions=dict(window.model_versions), reference_hash=reference.content_hash,
        evaluated_at=time.time(), duration_seconds=time.perf_counter() - started,
        calibration=calib.status,
        false_alarm_level=level_at(calib.levels, n_eff) if calib.on else None,
        dataset_false_alarm_level=level_at(calib.dataset_levels, n_eff) if calib.on else None,
        dataset_share=dataset_share, false_alarm_level_basis=calib.basis)


def _n_eff(events: int, reference: ReferenceProfile) -> float:
    """A window's size as the floors see it: n·N / (n + N), N the reference's rows."""
    rows = max((c.rows for c in reference.columns.values()), default=0)
    return events * rows / (events + rows) if events and rows else float(events)
