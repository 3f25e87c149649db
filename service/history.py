"""A monitor's evaluated windows, as the history API and the report links name them.

A window's id follows from the window itself (its horizon, start and end), so it is the same
after a restart, on a standby that took over, and in the webhook that cites it:
`10s-1796035820000-1796035830000` (milliseconds since the epoch); a count window's is its
number and its first event's time: `1000events-n17-1796035820000`.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import quote

from .drift import ColumnKind
from .evaluation import FeatureDrift, WindowResult, WindowStatus
from .quality import FeatureQuality


def window_id(horizon: str, start: float, end: float, number: int | None = None) -> str:
    """A time window's id: its length, start and end; a count window's: its number and its
    first event's time (its events may all share one time)."""
    def ms(t: float) -> int:
        return round(t * 1000) if math.isfinite(t) else 0

    if number is not None:
        return f"{horizon.replace(' ', '')}-n{number}-{ms(start)}"
    return f"{horizon.replace(' ', '')}-{ms(start)}-{ms(end)}"


def result_id(r: WindowResult) -> str:
    return r.window_id or window_id(r.horizon, r.window_start, r.window_end)


def report_path(monitor: str, wid: str) -> str:
    return f"/api/v1/monitors/{quote(monitor, safe='')}/windows/{quote(wid, safe='')}/report"


def report_link(base_url: str | None, monitor: str, wid: str) -> str:
    """The report's URL: absolute under `service.public_url` when set, else the API path."""
    path = report_path(monitor, wid)
    return base_url.rstrip("/") + path if base_url else path


def window_json(wid: str, result: str | dict[str, Any], has_sample: bool, monitor: str,
                base_url: str | None) -> dict[str, Any]:
    """One entry of the history: the stored result with its id, `start`/`end`, and the link
    to its report while its sample is kept (null after)."""
    r = json.loads(result) if isinstance(result, str) else dict(result)
    return {"id": wid, "horizon": r.get("horizon"), "start": r.get("window_start"), "end": r.get("window_end"),
            "events": r.get("events"), "status": r.get("status"), "dataset_drift": r.get("dataset_drift"),
            "drift_share": r.get("drift_share"),
            "report": report_link(base_url, monitor, wid) if has_sample else None,
            **{k: v for k, v in r.items() if k not in ("horizon", "window_start", "window_end", "events", "status",
                                                        "dataset_drift", "drift_share")}}


def result_from_json(monitor: str, wid: str, result: str | dict[str, Any]) -> WindowResult:
    """A stored result read back (`evaluation.result_json` written it): what the status API
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
        decided_by=f.get("decided_by"), quality=quality)
