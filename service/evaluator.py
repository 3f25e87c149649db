"""A monitor's closed windows scored against its reference, one horizon at a time.

Keeps each horizon's latest result (what the gauges and the status API show; an older
window evaluated late never replaces a newer one), feeds the bucket results to the
retraining trigger, and logs one line per window.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace

from driftline.collectors.schema import format_span

from .config import MonitorSettings
from .evaluation import WindowResult, WindowStatus, evaluate_window
from .history import window_id
from .metrics import EVALUATION_BUCKETS, BatchHistogram, DriftlineMetrics
from .profile import WindowProfile
from .reference import ReferenceProfile
from .trigger import RetrainTrigger

log = logging.getLogger("driftline.monitor")


class Evaluator:
    def __init__(self, settings: MonitorSettings, feature_names: tuple[str, ...],
                 reference: Callable[[], ReferenceProfile], metrics: DriftlineMetrics,
                 trigger: RetrainTrigger | None) -> None:
        self.settings, self.name, self.feature_names = settings, settings.name, feature_names
        self._reference, self._metrics, self.trigger = reference, metrics, trigger
        self.horizons = settings.window.labels
        self._label = dict(zip((settings.window.size, *settings.window.horizons), self.horizons, strict=False))
        self.duration = BatchHistogram(EVALUATION_BUCKETS)
        self._latest: dict[str, WindowResult] = {}
        self._latest_evaluated: dict[str, WindowResult] = {}
        self._lock = threading.Lock()

    def evaluate(self, closed: list[tuple[float, WindowProfile]]) -> list[WindowResult]:
        """Score the windows; the buckets' results feed the retraining trigger."""
        results = []
        reference = self._reference()
        for length, window in closed:
            result = evaluate_window(window, reference, self.settings, self.feature_names, self._label[length])
            result = replace(result, window_id=window_id(result.horizon, result.window_start, result.window_end,
                                                         window.number))
            results.append(result)
            # retraining follows the buckets; longer horizons inform, they do not trigger
            if self.trigger is not None and result.horizon == self.horizons[0]:
                outcome = self.trigger.observe(result)
                if outcome is not None:
                    self._metrics.retrain_triggers.labels(self.name, outcome).inc()
                    log.warning("monitor %s: retraining %s after %d drifted windows", self.name,
                                "requested" if outcome == "requested" else "not requested (cooldown)",
                                self.trigger.settings.consecutive_windows)
        return results

    def publish(self, results: list[WindowResult]) -> None:
        """The results become the latest (unless older than what is shown), and are logged."""
        for result in results:
            horizon = result.horizon
            self.duration.observe(result.duration_seconds)
            self._metrics.windows.labels(self.name, result.status.value).inc()
            with self._lock:
                if self._newer(result, self._latest.get(horizon)):
                    self._latest[horizon] = result
                if result.status is WindowStatus.EVALUATED and self._newer(result,
                                                                           self._latest_evaluated.get(horizon)):
                    self._latest_evaluated[horizon] = result
            drifted = ", ".join(f.feature for f in result.drifted_features) or "none"
            log.info("monitor %s %s window %s: %d events, %s, dataset drift %s (share %.2f), drifted: %s",
                     self.name, horizon, format_span(result.window_start, result.window_end), result.events,
                     result.status.value, "yes" if result.dataset_drift else "no", result.dataset_share, drifted)

    def seed(self, results: list[WindowResult]) -> None:
        """Stored results (the last ones before a restart or a takeover) shown as the latest
        until newer windows are evaluated; never replacing a newer one."""
        with self._lock:
            for result in sorted(results, key=lambda r: -r.evaluated_at):
                if result.horizon not in self.horizons:
                    continue
                self._latest.setdefault(result.horizon, result)
                if result.status is WindowStatus.EVALUATED:
                    self._latest_evaluated.setdefault(result.horizon, result)

    def _newer(self, result: WindowResult, latest: WindowResult | None) -> bool:
        """Whether `result` may replace `latest` (count windows come in order; their ends are
        event times, which need not be)."""
        return latest is None or self.settings.window.type != "time" or result.window_end >= latest.window_end

    def latest(self, horizon: str | None = None) -> WindowResult | None:
        with self._lock:
            return self._latest.get(horizon or self.horizons[0])

    def latest_evaluated(self, horizon: str | None = None) -> WindowResult | None:
        with self._lock:
            return self._latest_evaluated.get(horizon or self.horizons[0])
