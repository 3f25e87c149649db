"""A window's result as JSON, and back: what the status API, the state file's results, the
webhook body and `driftline evaluate --format json` hold (`evaluation.WindowResult`). Scores that are
not finite are written as null."""

from __future__ import annotations

import json
import math
from typing import Any

from .drift import ColumnKind
from .evaluation import FeatureDrift, WindowResult, WindowStatus
from .quality import FeatureQuality


def _num(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def quality_json(q: FeatureQuality | None) -> dict[str, Any] | None:
    if q is None:
        return None
    return {"issues": list(q.issues), "missing_ratio": q.missing_ratio,
            "reference_missing_ratio": q.reference_missing_ratio, "out_of_range_ratio": q.out_of_range_ratio,
            "unseen_category_ratio": q.unseen_category_ratio, "expected_unseen_ratio": q.expected_unseen_ratio,
            "unseen_categories": q.unseen_categories,
            "unseen_labels": [{"label": label, "count": n} for label, n in q.unseen_labels],
            "type_errors": q.type_errors, "type_error_ratio": q.type_error_ratio}


def quality_issues_json(r: WindowResult) -> list[dict[str, Any]]:
    """The window's features with data-quality issues, and which."""
    return [{"feature": f.feature, "issues": list(f.quality.issues)} for f in r.quality_issues if f.quality]


def feature_json(f: FeatureDrift) -> dict[str, Any]:
    return {"feature": f.feature, "type": f.kind.value, "method": f.method, "threshold": f.threshold,
            "score": _num(f.score), "drifted": f.drifted, "values": f.values,
            "missing_ratio": f.missing_ratio, "exact": f.exact, "plain_drifted": f.plain_drifted,
            "calibrated": f.calibrated, "noise_floor": _num(f.noise_floor), "effect_size": _num(f.effect_size),
            "effect_size_measure": f.effect_size_measure, "effect_size_floor": f.effect_size_floor,
            "decided_by": f.decided_by, "dataset_noise_floor": _num(f.dataset_noise_floor),
            "counts_for_dataset": f.counts_for_dataset, "data_quality": quality_json(f.quality)}


def verdict_json(r: WindowResult) -> dict[str, Any]:
    """A result's verdicts: the dataset's, each feature's and the prediction's, with their limits
    (what the status API and `driftline evaluate --format json` both show)."""
    return {"dataset_drift": r.dataset_drift, "drift_share": r.drift_share,
            "drift_share_threshold": r.drift_share_threshold, "dataset_share": r.dataset_share,
            "drifted_features": [f.feature for f in r.drifted_features],
            "calibration": r.calibration, "false_alarm_level": r.false_alarm_level,
            "dataset_false_alarm_level": r.dataset_false_alarm_level,
            "false_alarm_level_basis": r.false_alarm_level_basis,
            "data_quality_issues": quality_issues_json(r),
            "features": [feature_json(f) for f in r.features],
            "prediction": feature_json(r.prediction) if r.prediction else None}


def result_json(r: WindowResult | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"horizon": r.horizon, "status": r.status.value, "window_start": r.window_start,
            "window_end": r.window_end, "events": r.events, **verdict_json(r),
            "model_versions": r.model_versions, "reference_hash": r.reference_hash,
            "evaluated_at": r.evaluated_at, "evaluation_seconds": r.duration_seconds}


def result_from_json(monitor: str, wid: str, result: str | dict[str, Any]) -> WindowResult:
    """A stored result read back (as `result_json` wrote it): what the status API
    and the gauges show after a restart, until the next window closes."""
    r = json.loads(result) if isinstance(result, str) else result
    return WindowResult(
        monitor=monitor, horizon=r["horizon"], status=WindowStatus(r["status"]), window_start=r["window_start"],
        window_end=r["window_end"], events=r["events"], features=tuple(_feature(f) for f in r["features"]),
        prediction=_feature(r["prediction"]) if r.get("prediction") else None, drift_share=r["drift_share"],
        drift_share_threshold=r["drift_share_threshold"], dataset_drift=r["dataset_drift"],
        model_versions=dict(r.get("model_versions") or {}), reference_hash=r.get("reference_hash", ""),
        evaluated_at=r["evaluated_at"], duration_seconds=r.get("evaluation_seconds", 0.0),
        calibration=r.get("calibration", "off"), false_alarm_level=r.get("false_alarm_level"),
        # results stored before the dataset had its own level: it was the features'
        dataset_false_alarm_level=r.get("dataset_false_alarm_level", r.get("false_alarm_level")),
        dataset_share=r.get("dataset_share", r["drift_share"]),
        false_alarm_level_basis=r.get("false_alarm_level_basis"), window_id=wid)


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


def _feature(f: dict[str, Any]) -> FeatureDrift:
    q = f.get("data_quality")
    quality = None if q is None else FeatureQuality(
        missing_ratio=q["missing_ratio"], reference_missing_ratio=q["reference_missing_ratio"],
        out_of_range_ratio=q["out_of_range_ratio"], unseen_category_ratio=q["unseen_category_ratio"],
        expected_unseen_ratio=q["expected_unseen_ratio"], unseen_categories=q["unseen_categories"],
        unseen_labels=tuple((u["label"], u["count"]) for u in q["unseen_labels"]), type_errors=q["type_errors"],
        type_error_ratio=q["type_error_ratio"], issues=tuple(q["issues"]))
    return FeatureDrift(
        feature=f["feature"], kind=ColumnKind(f["type"]), method=f["method"], threshold=f["threshold"],
        score=_float(f["score"]), drifted=f["drifted"], values=f["values"], missing_ratio=f["missing_ratio"],
        exact=f["exact"], plain_drifted=f.get("plain_drifted", False), calibrated=f.get("calibrated", False),
        noise_floor=_float(f.get("noise_floor")), effect_size=_float(f.get("effect_size")),
        effect_size_measure=f.get("effect_size_measure"), effect_size_floor=f.get("effect_size_floor"),
        decided_by=f.get("decided_by"), quality=quality,
        dataset_noise_floor=_float(f.get("dataset_noise_floor", f.get("noise_floor"))),
        counts_for_dataset=f.get("counts_for_dataset", f["drifted"]))
