"""Drift of one window against the reference profile, as Evidently's DataDriftPreset does it.

Per feature: NaN/missing values are left out (and reported as the missing ratio), the
method is the configured one or Evidently's automatic choice, the threshold the
configured one or the method's default. The dataset drifts when the share of drifted
features reaches `drift_share`. A window with fewer events than `min_events` is reported
as insufficient data and never drifts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .config import DriftSettings, MonitorSettings
from .drift import ColumnKind, ColumnSample, DriftMethod, default_method, get_method
from .profile import WindowProfile
from .reference import ReferenceProfile


class WindowStatus(str, Enum):
    EVALUATED = "evaluated"
    INSUFFICIENT_DATA = "insufficient_data"


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: ColumnKind
    method: str | None  # None when the window had no value of the feature
    threshold: float | None
    score: float | None
    drifted: bool
    values: int  # values compared (after dropping missing ones)
    missing_ratio: float
    exact: bool  # False once the window held more values than the exactness budget


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
    dataset_drift: bool
    model_versions: dict[str, int]
    reference_hash: str
    evaluated_at: float
    duration_seconds: float

    @property
    def drifted_features(self) -> tuple[FeatureDrift, ...]:
        return tuple(f for f in self.features if f.drifted)

    @property
    def model_version(self) -> str | None:
        """The window's model version when its events carry exactly one, else the most common."""
        if not self.model_versions:
            return None
        return max(self.model_versions.items(), key=lambda kv: kv[1])[0]


def _pick_method(spec_method: str | None, drift: DriftSettings, kind: ColumnKind,
                 ref: ColumnSample, cur: ColumnSample) -> DriftMethod:
    name = spec_method or drift.method or (drift.num_method if kind is ColumnKind.NUMERICAL else drift.cat_method)
    return get_method(name) if name else default_method(ref, cur)


def _column_drift(name: str, kind: ColumnKind, ref: ColumnSample, cur: ColumnSample, missing: int,
                  events: int, method_name: str | None, threshold: float | None, drift: DriftSettings,
                  exact: bool, evaluate: bool) -> FeatureDrift:
    missing_ratio = missing / events if events else 0.0
    if not evaluate or cur.n == 0:
        return FeatureDrift(name, kind, None, None, None, False, cur.n, missing_ratio, exact)
    method = _pick_method(method_name, drift, kind, ref, cur)
    thr = threshold if threshold is not None else (
        drift.threshold if drift.threshold is not None else method.default_threshold)
    score = method.score(ref, cur)
    return FeatureDrift(name, kind, method.name, thr, score, method.verdict.drifted(score, thr),
                        cur.n, missing_ratio, exact)


def evaluate_window(window: WindowProfile, reference: ReferenceProfile, settings: MonitorSettings,
                    feature_names: tuple[str, ...], horizon: str | None = None) -> WindowResult:
    started = time.perf_counter()
    enough = window.events >= settings.window.min_events
    drift = settings.drift
    features = []
    for i, name in enumerate(feature_names):
        spec = settings.event.features[name]
        ref_col = reference.column(name)
        features.append(_column_drift(name, ref_col.kind, ref_col.sample, window.sample(i), window.missing[i],
                                      window.events, spec.method, spec.threshold, drift,
                                      window.exact(i), enough))
    prediction = None
    pred_sample = window.prediction_sample()
    if pred_sample is not None and settings.event.prediction is not None:
        spec_p = settings.event.prediction
        ref_p = reference.column(spec_p.column)
        prediction = _column_drift("prediction", ref_p.kind, ref_p.sample, pred_sample,
                                   window.prediction_missing, window.events, spec_p.method, spec_p.threshold,
                                   drift, True, enough)
    evaluated = [f for f in features if f.method is not None]
    share = sum(f.drifted for f in evaluated) / len(evaluated) if evaluated else 0.0
    status = WindowStatus.EVALUATED if enough else WindowStatus.INSUFFICIENT_DATA
    return WindowResult(
        monitor=settings.name, horizon=horizon or settings.window.labels[0], status=status,
        window_start=window.start, window_end=window.end,
        events=window.events, features=tuple(features), prediction=prediction, drift_share=share,
        drift_share_threshold=drift.drift_share,
        dataset_drift=bool(enough and evaluated and share >= drift.drift_share),
        model_versions=dict(window.model_versions), reference_hash=reference.content_hash,
        evaluated_at=time.time(), duration_seconds=time.perf_counter() - started)


def _num(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def feature_json(f: FeatureDrift) -> dict[str, Any]:
    return {"feature": f.feature, "type": f.kind.value, "method": f.method, "threshold": f.threshold,
            "score": _num(f.score), "drifted": f.drifted, "values": f.values,
            "missing_ratio": f.missing_ratio, "exact": f.exact}


def result_json(r: WindowResult | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"horizon": r.horizon, "status": r.status.value, "window_start": r.window_start,
            "window_end": r.window_end,
            "events": r.events, "dataset_drift": r.dataset_drift, "drift_share": r.drift_share,
            "drift_share_threshold": r.drift_share_threshold,
            "drifted_features": [f.feature for f in r.drifted_features],
            "features": [feature_json(f) for f in r.features],
            "prediction": feature_json(r.prediction) if r.prediction else None,
            "model_versions": r.model_versions, "reference_hash": r.reference_hash,
            "evaluated_at": r.evaluated_at, "evaluation_seconds": r.duration_seconds}
