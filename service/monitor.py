"""A monitor: one model's stream, from Kafka records to drift results.

The consumer thread runs `consume_batch` (decode, validate, add to windows, then mark
the records accounted for so their offsets may be committed); the scheduler runs
`evaluate_due` (close windows, score them against the reference, feed the trigger).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from driftline.collectors.events import EventDecoder

from .config import MonitorSettings
from .drift import ColumnKind, get_method
from .evaluation import WindowResult, WindowStatus, evaluate_window
from .metrics import EVALUATION_BUCKETS, EVENT_LAG_BUCKETS, LATENCY_BUCKETS, BatchHistogram, DriftlineMetrics
from .reference import ReferenceError, ReferenceProfile, load_profile
from .trigger import RetrainTrigger
from .window import TumblingWindows

log = logging.getLogger("driftline.monitor")


DEAD_LETTER_OUTCOMES = ("produced", "failed", "dropped")


class MonitorSetupError(Exception):
    pass


def feature_kinds(settings: MonitorSettings, reference: ReferenceProfile, index: int,
                  at: Callable[[str], str] | None = None) -> dict[str, ColumnKind]:
    """Each feature's kind: the config's where given, else the reference's; they must agree.

    Errors name the field they are about, as `at` spells a field path such as
    ``event.features.income.method`` (default: ``monitors[index].…``, the config's; the
    offline command names its options instead)."""
    at = at or (lambda path: f"monitors[{index}].{path}")
    kinds = {}
    for name, spec in settings.event.features.items():
        if name not in reference.columns:
            raise MonitorSetupError(
                f"{at(f'event.features.{name}')}: no column {name!r} in the reference profile "
                f"{settings.reference.path} (it has {', '.join(sorted(reference.columns))})")
        ref_kind = reference.columns[name].kind
        if spec.type is not None and spec.type is not ref_kind:
            raise MonitorSetupError(
                f"{at(f'event.features.{name}.type')}: {spec.type.value}, but the reference profile "
                f"holds it as {ref_kind.value}; rebuild the reference with --{spec.type.value} {name}")
        kinds[name] = ref_kind
        _check_method(settings, index, f"event.features.{name}", spec.method, ref_kind, at)
    pred = settings.event.prediction
    if pred is not None:
        if pred.column not in reference.columns:
            raise MonitorSetupError(
                f"{at('event.prediction.column')}: no column {pred.column!r} in the reference profile")
        _check_method(settings, index, "event.prediction", pred.method, reference.columns[pred.column].kind, at)
    return kinds


def _check_method(settings: MonitorSettings, index: int, where: str, own: str | None, kind: ColumnKind,
                  at: Callable[[str], str] | None = None) -> None:
    """A configured method must accept the column's kind; name the field it came from."""
    at = at or (lambda path: f"monitors[{index}].{path}")
    d = settings.drift
    by_kind = ("num_method", d.num_method) if kind is ColumnKind.NUMERICAL else ("cat_method", d.cat_method)
    for field, name in ((f"{where}.method", own), ("drift.method", d.method), (f"drift.{by_kind[0]}", by_kind[1])):
        if name is None:
            continue
        if not get_method(name).accepts(kind):
            accepted = " or ".join(sorted(k.value for k in get_method(name).kinds))
            raise MonitorSetupError(f"{at(field)}: {name} applies to {accepted} columns, and "
                                    f"{where.split('.')[-1]} is {kind.value}")
        return


class Monitor:
    def __init__(self, settings: MonitorSettings, index: int, metrics: DriftlineMetrics,
                 trigger: RetrainTrigger | None, clock: Callable[[], float] = time.time) -> None:
        self.settings, self.name, self.index = settings, settings.name, index
        self._metrics, self._trigger, self._clock = metrics, trigger, clock
        try:
            self._reference = load_profile(settings.reference.path)
        except ReferenceError as exc:
            raise MonitorSetupError(f"monitors[{index}].reference.path: {exc}") from None
        kinds = feature_kinds(settings, self._reference, index)
        self.feature_names = tuple(settings.event.features)
        pred = settings.event.prediction
        self._prediction_kind = self._reference.columns[pred.column].kind if pred else None
        self.decoder = EventDecoder(settings.event, kinds, self._prediction_kind)
        self.windows = TumblingWindows(
            kind=settings.window.type, size=settings.window.size, allowed_lateness=settings.window.allowed_lateness,
            kinds=tuple(kinds[n] for n in self.feature_names), prediction_kind=self._prediction_kind, clock=clock,
            horizons=tuple(settings.window.horizons))
        self.horizons = settings.window.labels
        self._horizon_of = dict(zip((settings.window.size, *settings.window.horizons), self.horizons, strict=False))
        self.serving_latency = BatchHistogram(LATENCY_BUCKETS)
        self.event_lag = BatchHistogram(EVENT_LAG_BUCKETS)
        self.evaluation_duration = BatchHistogram(EVALUATION_BUCKETS)
        self._latest: dict[str, WindowResult] = {}  # per horizon
        self._latest_evaluated: dict[str, WindowResult] = {}
        self._lock = threading.Lock()
        self._consumed = metrics.events_consumed.labels(self.name)
        self._consumed_n = 0  # the same count, for the consumer's own log lines
        self._late = metrics.events_late.labels(self.name)
        self._invalid: dict[str, Any] = {}  # reason -> labelled counter, filled on first use
        if settings.kafka.dead_letter_topic:
            for outcome in DEAD_LETTER_OUTCOMES:
                metrics.dead_letters.labels(self.name, outcome)
        self.source_ready: Callable[[], bool] = lambda: False
        self.source_lag: Callable[[], dict[int, int]] = dict

    # -- MonitorView (read at scrape time) ---------------------------------------------------
    def latest_result(self, horizon: str | None = None) -> WindowResult | None:
        """The latest closed window of a horizon (default: the bucket's)."""
        with self._lock:
            return self._latest.get(horizon or self.horizons[0])

    def latest_evaluated(self, horizon: str | None = None) -> WindowResult | None:
        with self._lock:
            return self._latest_evaluated.get(horizon or self.horizons[0])

    def configured_method(self, feature: str) -> str:
        """The method the config names for a feature, or "auto" (Evidently's choice)."""
        return self._configured(self.settings.event.features[feature].method, self._reference.columns[feature].kind)

    @property
    def has_prediction(self) -> bool:
        return self._prediction_kind is not None

    def configured_prediction_method(self) -> str:
        pred = self.settings.event.prediction
        assert pred is not None and self._prediction_kind is not None
        return self._configured(pred.method, self._prediction_kind)

    def _configured(self, own: str | None, kind: ColumnKind) -> str:
        d = self.settings.drift
        return own or d.method or (d.num_method if kind is ColumnKind.NUMERICAL else d.cat_method) or "auto"

    def consumer_lag(self) -> dict[int, int]:
        return self.source_lag()

    def open_window_events(self) -> int:
        return self.windows.open_events()

    @property
    def reference(self) -> ReferenceProfile:
        return self._reference

    def reference_hash(self) -> str | None:
        return self._reference.content_hash

    def ready(self) -> bool:
        return self.source_ready()

    # -- ingest (consumer thread) ----------------------------------------------------------
    def consume_batch(self, values: list[bytes | None],
                      timestamps_ms: list[int | None] | None = None) -> list[tuple[int, str, str]]:
        """Decode, validate and account for one poll's records; the invalid ones are
        returned as (position in `values`, reason, detail), in record order."""
        now = self._clock()
        batch = self.decoder.decode_batch(values, timestamps_ms, now)
        for reason, n in batch.invalid.items():
            self._count_invalid(reason, n)
        late = self.windows.add_batch(batch)
        self._consumed.inc(len(values))
        self._consumed_n += len(values)
        if late:
            self._late.inc(late)
        if batch.latency is not None:
            present = batch.latency[~np.isnan(batch.latency)]
            self.serving_latency.observe_many(present)
        self.event_lag.observe_many(now - batch.event_time)
        return batch.rejected

    def consumed_total(self) -> int:
        return self._consumed_n

    @property
    def needs_record_timestamps(self) -> bool:
        return self.settings.event.event_time is None

    def _count_invalid(self, reason: str, n: int = 1) -> None:
        counter = self._invalid.get(reason)
        if counter is None:
            counter = self._invalid[reason] = self._metrics.events_invalid.labels(self.name, reason)
        counter.inc(n)

    # -- evaluation (scheduler thread) ---------------------------------------------------------
    def evaluate_due(self) -> list[WindowResult]:
        results = []
        for size, window in self.windows.close_due():
            horizon = self._horizon_of[size]
            result = evaluate_window(window, self._reference, self.settings, self.feature_names, horizon)
            self.evaluation_duration.observe(result.duration_seconds)
            self._metrics.windows.labels(self.name, result.status.value).inc()
            with self._lock:
                self._latest[horizon] = result
                if result.status is WindowStatus.EVALUATED:
                    self._latest_evaluated[horizon] = result
            drifted = ", ".join(f.feature for f in result.drifted_features) or "none"
            log.info("monitor %s %s window %s..%s: %d events, %s, drift share %.2f, drifted: %s",
                     self.name, horizon, _fmt(result.window_start), _fmt(result.window_end), result.events,
                     result.status.value, result.drift_share, drifted)
            # retraining follows the buckets; longer horizons inform, they do not trigger
            if self._trigger is not None and horizon == self.horizons[0]:
                outcome = self._trigger.observe(result)
                if outcome is not None:
                    self._metrics.retrain_triggers.labels(self.name, outcome).inc()
                    log.warning("monitor %s: retraining %s after %d drifted windows", self.name,
                                "requested" if outcome == "requested" else "not requested (cooldown)",
                                self._trigger.settings.consecutive_windows)
            results.append(result)
        return results

    # -- reference reload -----------------------------------------------------------------------
    def reload_reference(self) -> tuple[bool, str]:
        """Load the reference file again; keep the current one if the new one is unusable."""
        try:
            new = load_profile(self.settings.reference.path)
            feature_kinds(self.settings, new, self.index)
        except (ReferenceError, MonitorSetupError) as exc:
            log.error("monitor %s: reference reload refused: %s", self.name, exc)
            return False, str(exc)
        changed = new.content_hash != self._reference.content_hash
        if changed:
            kinds_now = {n: self._reference.columns[n].kind for n in self.feature_names}
            if any(new.columns[n].kind is not kinds_now[n] for n in self.feature_names):
                msg = "the new reference changes a feature's type; restart driftline to apply it"
                log.error("monitor %s: reference reload refused: %s", self.name, msg)
                return False, msg
            self._reference = new
            log.info("monitor %s: reference reloaded, now %s", self.name, new.content_hash)
        return changed, new.content_hash


def _fmt(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) if t == t else "?"
