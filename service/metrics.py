"""Prometheus metrics: names and labels are an API (PRODUCT.md), dashboards depend on them.

Drift numbers, lag and window sizes are read from the monitors at scrape time by one
collector; event counters are plain counters; histograms are observed a batch at a time
(one numpy pass per poll instead of a lock per event) and exported at scrape time.
Every series exists from startup for every configured monitor.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import numpy as np
from driftline.collectors.events import INVALID_REASONS
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .evaluation import FeatureDrift, WindowResult, WindowStatus
from .quality import FeatureQuality

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
EVENT_LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 21600.0)
EVALUATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

TRIGGER_OUTCOMES = ("requested", "suppressed_cooldown")
DELIVERY_STATUSES = ("2xx", "3xx", "4xx", "5xx", "timeout", "connection_error")


class BatchHistogram:
    """A histogram observed many values at a time; thread-safe; read at scrape time."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.upper = np.array([*buckets, math.inf], dtype=np.float64)
        self._counts = np.zeros(self.upper.size, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: Sequence[float] | np.ndarray) -> None:
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0:
            return
        idx = np.searchsorted(self.upper, arr, side="left")  # le-buckets: value <= upper bound
        counts = np.bincount(idx, minlength=self.upper.size)
        total = float(arr.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def observe(self, value: float) -> None:
        self.observe_many([value])

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        buckets = [("+Inf" if math.isinf(u) else repr(float(u)), float(c))
                   for u, c in zip(self.upper, cumulative, strict=True)]
        return buckets, total


class MonitorView(Protocol):
    """What the metrics collector reads from a monitor at scrape time."""

    name: str
    feature_names: tuple[str, ...]
    serving_latency: BatchHistogram
    event_lag: BatchHistogram
    evaluation_duration: BatchHistogram

    horizons: tuple[str, ...]

    def latest_result(self, horizon: str | None = None) -> WindowResult | None: ...
    @property
    def has_prediction(self) -> bool: ...

    def configured_method(self, feature: str) -> str: ...
    def configured_prediction_method(self) -> str: ...
    def consumer_lag(self) -> dict[int, int]: ...
    def open_window_events(self) -> int: ...
    def reference_hash(self) -> str | None: ...
    def ready(self) -> bool: ...
    def role(self) -> str: ...
    def rejecting(self) -> bool: ...


class MonitorCollector(Collector):
    """Yields the drift gauges and histograms of every monitor, computed at scrape time."""

    def __init__(self, monitors: Iterable[MonitorView]) -> None:
        self._monitors = list(monitors)

    def describe(self) -> list[Metric]:
        return []  # values are dynamic: skip the registration-time collect()

    def collect(self) -> Iterator[Metric]:
        g = {name: GaugeMetricFamily(f"driftline_{name}", doc, labels=labels) for name, doc, labels in _GAUGES}
        hists = {name: HistogramMetricFamily(f"driftline_{name}", doc, labels=["monitor"])
                 for name, doc in _HISTOGRAMS}
        for m in self._monitors:
            for horizon in m.horizons:
                self._collect_horizon(g, m, horizon, m.latest_result(horizon))
            g["open_window_events"].add_metric([m.name], float(m.open_window_events()))
            g["monitor_ready"].add_metric([m.name], float(m.ready()))
            g["monitor_active"].add_metric([m.name], float(m.role() == "active"))
            g["monitor_rejecting"].add_metric([m.name], float(m.rejecting()))
            ref = m.reference_hash()
            if ref:
                g["reference_info"].add_metric([m.name, ref], 1.0)
            lags = m.consumer_lag()
            for partition, lag in sorted(lags.items()):
                g["consumer_lag_messages"].add_metric([m.name, str(partition)], float(lag))
            for name, hist in (("serving_latency_seconds", m.serving_latency),
                               ("event_lag_seconds", m.event_lag),
                               ("evaluation_duration_seconds", m.evaluation_duration)):
                buckets, total = hist.snapshot()
                hists[name].add_metric([m.name], buckets, total)
        yield from g.values()
        yield from hists.values()

    @staticmethod
    def _collect_horizon(g: dict[str, GaugeMetricFamily], m: MonitorView, horizon: str,
                         r: WindowResult | None) -> None:
        evaluated = r is not None and r.status is WindowStatus.EVALUATED
        by_feature: dict[str, FeatureDrift] = {f.feature: f for f in r.features} if r else {}
        for feat in m.feature_names:
            f = by_feature.get(feat)
            # the configured method ("auto": Evidently's choice, which the API names): a label
            # that changed with the method a window resolved to would make a new series
            score = f.score if f and f.score is not None and evaluated else math.nan
            g["feature_drift_score"].add_metric([m.name, feat, m.configured_method(feat), horizon], score)
            g["feature_drift_threshold"].add_metric([m.name, feat, horizon], _threshold(f) if evaluated else math.nan)
            g["feature_drift_detected"].add_metric([m.name, feat, horizon], float(bool(f and f.drifted)))
            g["feature_missing_ratio"].add_metric([m.name, feat, horizon], f.missing_ratio if f else 0.0)
            _collect_calibration(g, [m.name, feat, horizon], f if evaluated else None)
            _collect_quality(g, [m.name, feat, horizon], f.quality if f else None)
        if m.has_prediction:
            p = r.prediction if r is not None else None
            g["prediction_drift_score"].add_metric(
                [m.name, m.configured_prediction_method(), horizon],
                p.score if p is not None and p.score is not None and evaluated else math.nan)
            g["prediction_drift_detected"].add_metric([m.name, horizon], float(bool(p and p.drifted)))
        g["dataset_drift_share"].add_metric([m.name, horizon], r.dataset_share if evaluated and r else 0.0)
        g["dataset_drift_detected"].add_metric([m.name, horizon], float(bool(r and r.dataset_drift)))
        g["window_events"].add_metric([m.name, horizon], float(r.events) if r else 0.0)
        g["window_insufficient_data"].add_metric([m.name, horizon], float(bool(r and not evaluated)))
        g["last_evaluation_timestamp_seconds"].add_metric([m.name, horizon], r.evaluated_at if r else 0.0)


def _threshold(f: FeatureDrift | None) -> float:
    """The line the score is compared with: a p-value method's threshold (drift below it), a
    distance's threshold or, with calibration on, the noise floor when that is higher."""
    line = f.decision_threshold if f is not None else None
    return math.nan if line is None else line


def _collect_calibration(g: dict[str, GaugeMetricFamily], labels: list[str], f: FeatureDrift | None) -> None:
    scored = f is not None and f.method is not None
    effect = (f.effect_size if f.effect_size_measure else f.score) if f is not None and scored else None
    practical = (f.effect_size_floor if f.effect_size_measure else f.threshold) if f is not None and scored else None
    for name, value in (("feature_effect_size", effect), ("feature_practical_threshold", practical),
                        ("feature_noise_floor", f.noise_floor if f is not None else None)):
        g[name].add_metric(labels, math.nan if value is None else value)
    g["feature_plain_drift_detected"].add_metric(labels, float(bool(f and f.plain_drifted)))


def _collect_quality(g: dict[str, GaugeMetricFamily], labels: list[str], q: FeatureQuality | None) -> None:
    # a share that does not apply to the feature's kind (out of range: categorical) is 0
    for name, value in (("feature_reference_missing_ratio", q.reference_missing_ratio if q else None),
                        ("feature_out_of_range_ratio", q.out_of_range_ratio if q else None),
                        ("feature_unseen_category_ratio", q.unseen_category_ratio if q else None),
                        ("feature_type_error_ratio", q.type_error_ratio if q else None)):
        g[name].add_metric(labels, value or 0.0)
    for issue, name in _QUALITY_SIGNALS:
        g[name].add_metric(labels, float(bool(q and issue in q.issues)))


_QUALITY_SIGNALS = (("unseen_category", "feature_unseen_category_detected"),
                    ("missing_increase", "feature_missing_increase_detected"),
                    ("out_of_range", "feature_out_of_range_detected"),
                    ("type_error", "feature_type_errors_detected"))
_FEATURE = ["monitor", "feature", "horizon"]

_GAUGES = (
    ("feature_drift_score", "Drift score of a feature in the latest evaluated window (p-value or distance, "
     "per the method)", ["monitor", "feature", "method", "horizon"]),
    ("feature_drift_detected", "1 if the feature drifted in the latest evaluated window",
     ["monitor", "feature", "horizon"]),
    ("feature_drift_threshold", "The line the feature's score is compared with: a p-value method's threshold, a "
     "distance's threshold or the noise floor when calibration puts it higher", _FEATURE),
    ("feature_missing_ratio", "Share of the latest window's events without the feature",
     ["monitor", "feature", "horizon"]),
    ("feature_plain_drift_detected", "1 if the feature drifted by Evidently's plain threshold alone (with "
     "calibration off, the verdict)", _FEATURE),
    ("feature_effect_size", "What calibration compares with the feature's limits: the effect size of a p-value "
     "method, the score of a distance", _FEATURE),
    ("feature_practical_threshold", "The smallest effect that drifts, whatever the window's size: a distance "
     "method's threshold, a p-value method's effect size floor", _FEATURE),
    ("feature_noise_floor", "The effect a window of this size without drift reaches once in about 1/level windows "
     "(NaN: calibration off or unavailable)", _FEATURE),
    ("feature_reference_missing_ratio", "Share of the reference's rows without the feature", _FEATURE),
    ("feature_out_of_range_ratio", "Share of a numerical feature's values outside the reference's min..max in "
     "the latest window", _FEATURE),
    ("feature_unseen_category_ratio", "Share of a categorical feature's values in categories the reference "
     "never had, in the latest window", _FEATURE),
    ("feature_type_error_ratio", "Share of the latest window's events rejected because the feature had the "
     "wrong type", _FEATURE),
    ("feature_unseen_category_detected", "1 if unseen categories passed data_quality.unseen_category_share, "
     "beyond chance", _FEATURE),
    ("feature_missing_increase_detected", "1 if the missing share rose far above the reference's, beyond chance",
     _FEATURE),
    ("feature_out_of_range_detected", "1 if values outside the reference's range passed "
     "data_quality.out_of_range_share, beyond chance", _FEATURE),
    ("feature_type_errors_detected", "1 if type errors passed data_quality.type_error_share", _FEATURE),
    ("prediction_drift_score", "Drift score of the model's prediction in the latest window",
     ["monitor", "method", "horizon"]),
    ("prediction_drift_detected", "1 if the prediction distribution drifted", ["monitor", "horizon"]),
    ("dataset_drift_share", "Share of features the dataset rule counted in the latest evaluated window: drifted, "
     "and beyond the dataset's noise floor where its false-alarm rate sets a stricter one", ["monitor", "horizon"]),
    ("dataset_drift_detected", "1 if dataset_drift_share reached the monitor's drift_share",
     ["monitor", "horizon"]),
    ("window_events", "Events in the latest closed window", ["monitor", "horizon"]),
    ("window_insufficient_data", "1 if the latest closed window had fewer events than min_events",
     ["monitor", "horizon"]),
    ("open_window_events", "Events accounted for in windows not yet closed", ["monitor"]),
    ("last_evaluation_timestamp_seconds", "Unix time of the latest window evaluation (0: none yet)",
     ["monitor", "horizon"]),
    ("monitor_ready", "1 if the reference is loaded and the broker answers (active or standby)", ["monitor"]),
    ("monitor_active", "1 if this instance reads the monitor's topic, 0 while it stands by", ["monitor"]),
    ("monitor_rejecting", "1 while every record read is invalid (the last 100 in a row, or all for a minute)",
     ["monitor"]),
    ("reference_info", "The reference profile in use, by content hash", ["monitor", "reference_hash"]),
    ("consumer_lag_messages", "Messages between the consumer position and the end of the partition",
     ["monitor", "partition"]),
)
_HISTOGRAMS = (
    ("serving_latency_seconds", "Model serving latency reported by the events"),
    ("event_lag_seconds", "Time from an event's timestamp to its consumption by driftline"),
    ("evaluation_duration_seconds", "Time to evaluate one window against the reference"),
)


def build_version() -> str:
    """The installed package's version, from its metadata."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("driftline")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class DriftlineMetrics:
    """The service's metrics, on an explicit registry (tests pass a fresh one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events_consumed = Counter("driftline_events_consumed", "Kafka records read, valid or not",
                                       ["monitor"], registry=registry)
        self.events_invalid = Counter("driftline_events_invalid", "Malformed events, by reason",
                                      ["monitor", "reason"], registry=registry)
        self.events_late = Counter("driftline_events_late", "Events whose window had already closed",
                                   ["monitor"], registry=registry)
        self.windows = Counter("driftline_windows", "Windows closed, by status (evaluated or insufficient_data)",
                               ["monitor", "status"], registry=registry)
        self.retrain_triggers = Counter("driftline_retrain_triggers", "Retraining decisions, by outcome",
                                        ["monitor", "outcome"], registry=registry)
        self.webhook_deliveries = Counter("driftline_webhook_deliveries", "Webhook delivery attempts, by result",
                                          ["monitor", "status"], registry=registry)
        self.dead_letters = Counter("driftline_dead_letters", "Invalid records copied to the dead-letter topic, "
                                    "by outcome (produced, failed: retried, dropped: refused by the broker)",
                                    ["monitor", "outcome"], registry=registry)
        self.dead_letters_pending = Gauge(
            "driftline_dead_letters_pending", "Copies of invalid records not yet acknowledged by the "
            "dead-letter topic", ["monitor"], registry=registry)
        self.dead_letters_pending_bytes = Gauge(
            "driftline_dead_letters_pending_bytes", "Bytes of those copies, as counted against "
            "kafka.dead_letter_max_pending_bytes (consumption pauses above it)", ["monitor"], registry=registry)
        # which version runs where: `driftline_build_info * on(instance) group_left(version) ...`
        self.build_info = Gauge("driftline_build_info", "The running driftline's version (always 1)", ["version"],
                                registry=registry)
        self.build_info.labels(build_version()).set(1)

    def add_monitors(self, monitors: Sequence[MonitorView], with_retrain: set[str]) -> None:
        for m in monitors:
            self.events_consumed.labels(m.name)
            self.events_late.labels(m.name)
            for status in WindowStatus:
                self.windows.labels(m.name, status.value)
            for reason in INVALID_REASONS:
                self.events_invalid.labels(m.name, reason)
            if m.name in with_retrain:
                for outcome in TRIGGER_OUTCOMES:
                    self.retrain_triggers.labels(m.name, outcome)
                for delivery in DELIVERY_STATUSES:
                    self.webhook_deliveries.labels(m.name, delivery)
        self.registry.register(MonitorCollector(monitors))
