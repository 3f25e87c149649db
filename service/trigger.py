"""When to ask for retraining: dataset drift in K consecutive evaluated windows, at most
once per cooldown. Windows with insufficient data neither extend nor break a streak."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from typing import Any

from .config import RetrainSettings
from .evaluation import FeatureDrift, WindowResult, WindowStatus
from .history import report_link, result_id
from .result_json import quality_json
from .store import Store

EVENT_TYPE = "driftline.retrain.requested"


class RetrainTrigger:
    def __init__(self, monitor: str, settings: RetrainSettings, store: Store,
                 clock: Callable[[], float], base_url: str | None = None) -> None:
        self.monitor, self.settings, self._store, self._clock = monitor, settings, store, clock
        self.base_url = base_url  # service.public_url: where the window's report link points
        self.streak = 0

    def observe(self, result: WindowResult) -> str | None:
        """Feed one window's result; return the outcome if a request was due, else None."""
        if result.status is not WindowStatus.EVALUATED:
            return None
        self.streak = self.streak + 1 if result.dataset_drift else 0
        if self.streak < self.settings.consecutive_windows:
            return None
        self.streak = 0
        # The id follows from the window: after a crash between this request and the
        # checkpoint of its window, the window is restored and closes again, and the request
        # it makes is the one already in the outbox, not a second one.
        message_id = "msg_" + uuid.uuid5(uuid.NAMESPACE_URL, "driftline:" + json.dumps(
            [self.monitor, result.horizon, result.window_start, result.window_end, result.events])).hex
        if self._store.has_message(message_id):
            return "requested"
        now = self._clock()
        last = self._store.last_retrain_request(self.monitor)
        if last is not None and now - last < self.settings.cooldown:
            return "suppressed_cooldown"
        body = json.dumps(request_body(message_id, result, self.settings.consecutive_windows, now, self.base_url),
                          separators=(",", ":"), sort_keys=True, allow_nan=False)
        self._store.request_retrain(self.monitor, message_id, self.settings.webhook_url, body, now)
        return "requested"


def request_body(message_id: str, result: WindowResult, consecutive: int, now: float,
                 base_url: str | None = None) -> dict[str, Any]:
    """The webhook payload: the evidence for retraining, aggregates only."""
    from datetime import UTC, datetime

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")

    return {
        "type": EVENT_TYPE,
        "timestamp": iso(now),
        "data": {
            "id": message_id,
            "monitor": result.monitor,
            "reason": f"dataset drift in {consecutive} consecutive windows",
            "window": {"id": result_id(result), "start": iso(result.window_start), "end": iso(result.window_end),
                       "events": result.events,
                       # its drill-down report (needs the API's bearer token when one is set)
                       "report": report_link(base_url, result.monitor, result_id(result))},
            "drifted_features": [{**_drift(f), "feature": f.feature} for f in result.drifted_features],
            # the share the dataset rule counted (drifted beyond the dataset's floors too)
            "dataset_drift_share": result.dataset_share,
            "drift_share_threshold": result.drift_share_threshold,
            "calibration": result.calibration,
            "false_alarm_level": result.false_alarm_level,
            "dataset_false_alarm_level": result.dataset_false_alarm_level,
            "false_alarm_level_basis": result.false_alarm_level_basis,
            "prediction_drift": None if result.prediction is None or result.prediction.method is None else {
                **_drift(result.prediction), "drifted": result.prediction.drifted},
            "data_quality_issues": [_quality(f) for f in result.quality_issues],
            "reference": {"content_hash": result.reference_hash},
            "model_version": result.model_version,
        },
    }


def _drift(f: FeatureDrift) -> dict[str, Any]:
    """A feature's evidence: Evidently's score and threshold, and the calibrated verdict's limits."""
    return {"method": f.method, "score": _finite(f.score), "threshold": f.threshold,
            "noise_floor": _finite(f.noise_floor), "effect_size": _finite(f.effect_size),
            "effect_size_measure": f.effect_size_measure, "effect_size_floor": f.effect_size_floor,
            "decided_by": f.decided_by, "calibrated": f.calibrated,
            "dataset_noise_floor": _finite(f.dataset_noise_floor), "counts_for_dataset": f.counts_for_dataset}


def _quality(f: FeatureDrift) -> dict[str, Any]:
    """A feature's data-quality issues and the shares behind them, as the status API shows them
    (aggregates, and unseen category labels only where they look like codes: service/quality.py)."""
    return {"feature": f.feature, **(quality_json(f.quality) or {})}


def _finite(x: float | None) -> float | None:
    """JSON has no NaN or infinity; a degenerate score is sent as null."""
    return x if x is not None and math.isfinite(x) else None
