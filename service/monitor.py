"""A monitor: one model's stream, from Kafka records to drift results.

Four parts, one file each: ingest is here (`consume`: decode, validate, add to the
windows, service/windows.py); state is `MonitorState` (checkpoints, what to commit, where
to read from on assignment, service/state.py); evaluation is `Evaluator` (score closed
windows, keep the latest results, service/evaluator.py); triggering is `RetrainTrigger`
(service/trigger.py). The consumer thread calls `consume`; the scheduler calls
`evaluate_due`, which closes what is due, scores it and checkpoints with the results.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from driftline.collectors.events import DecodedBatch, EventDecoder
from driftline.collectors.kafka import Polled

from .config import MonitorSettings
from .drift import ColumnKind, default_method, get_method
from .evaluation import WindowResult, prepare
from .evaluator import Evaluator
from .history import result_id
from .invalid import InvalidEvents
from .metrics import EVENT_LAG_BUCKETS, LATENCY_BUCKETS, BatchHistogram, DriftlineMetrics
from .profile import WindowProfile
from .reference import ReferenceError, ReferenceProfile, load_profile
from .result_json import result_from_json, result_json
from .state import MonitorState
from .store import ResultRow, Store
from .trigger import RetrainTrigger
from .windows import Origin, TumblingWindows

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
                 trigger: RetrainTrigger | None, clock: Callable[[], float] = time.time,
                 store: Store | None = None) -> None:
        self.settings, self.name, self.index = settings, settings.name, index
        self._metrics, self._clock = metrics, clock
        try:
            self._reference = load_profile(settings.reference.path)
        except ReferenceError as exc:
            raise MonitorSetupError(f"monitors[{index}].reference.path: {exc}") from None
        kinds = feature_kinds(settings, self._reference, index)
        self.feature_names = tuple(settings.event.features)
        prepare(self._reference, settings, self.feature_names)
        pred = settings.event.prediction
        self._prediction_kind = self._reference.columns[pred.column].kind if pred else None
        self.decoder = EventDecoder(settings.event, kinds, self._prediction_kind)
        w = settings.window
        template = WindowProfile(tuple(kinds[n] for n in self.feature_names), 0.0, 0.0,
                                 prediction_kind=self._prediction_kind)
        self.windows = TumblingWindows(kind=w.type, size=w.size, allowed_lateness=w.allowed_lateness,
                                       template=template, clock=clock, idle_timeout=w.idle_seconds,
                                       horizons=tuple(w.horizons))
        signature = {"features": [[n, kinds[n].value] for n in self.feature_names],
                     "prediction": self._prediction_kind.value if self._prediction_kind else None,
                     "window": [w.type, w.size, list(w.horizons)], "budget": template.budget}
        self._store = store
        self.state = MonitorState(self.name, settings.kafka.topic, self.windows, store, signature,
                                  settings.kafka.commit_interval, clock)
        self.evaluator = Evaluator(settings, self.feature_names, lambda: self._reference, metrics, trigger)
        self.horizons = self.evaluator.horizons
        self.serving_latency = BatchHistogram(LATENCY_BUCKETS)
        self.event_lag = BatchHistogram(EVENT_LAG_BUCKETS)
        self.evaluation_duration = self.evaluator.duration
        # checkpoints: written by the scheduler, or on revoke/shutdown, one at a time
        self._checkpoint_lock = threading.Lock()
        self._consumed = metrics.events_consumed.labels(self.name)
        self._consumed_n = 0  # the same count, for the consumer's own log lines
        self._late = metrics.events_late.labels(self.name)
        self._invalid: dict[str, Any] = {}  # reason -> labelled counter, filled on first use
        if settings.kafka.dead_letter_topic:
            for outcome in DEAD_LETTER_OUTCOMES:
                metrics.dead_letters.labels(self.name, outcome)
        self.source_ready: Callable[[], bool] = lambda: False
        self.source_lag: Callable[[], dict[int, int]] = dict
        self.source_role: Callable[[], str] = lambda: "joining"
        self.history_reports = store.retention.samples if store is not None else 0
        self.invalid = InvalidEvents(self.name, settings.kafka.topic, clock)
        self._labels = {name: self._method_label(spec.method, name) for name, spec in settings.event.features.items()}
        if pred is not None:
            self._labels["prediction"] = self._method_label(pred.method, pred.column)

    # -- MonitorView (read at scrape time) ---------------------------------------------------
    def latest_result(self, horizon: str | None = None) -> WindowResult | None:
        """The latest closed window of a horizon (default: the bucket's)."""
        return self.evaluator.latest(horizon)

    def latest_evaluated(self, horizon: str | None = None) -> WindowResult | None:
        return self.evaluator.latest_evaluated(horizon)

    def configured_method(self, feature: str) -> str:
        """The `method` label of a feature's series: the method the config names, or the one
        Evidently's choice gives for the reference, fixed at startup (a window may resolve the
        choice otherwise, as a feature with at most 5 distinct values in the reference and more
        in a window does: the result names the method used; the label stays)."""
        return self._labels[feature]

    @property
    def has_prediction(self) -> bool:
        return self._prediction_kind is not None

    def configured_prediction_method(self) -> str:
        return self._labels["prediction"]

    def _method_label(self, own: str | None, column: str) -> str:
        d, ref = self.settings.drift, self._reference.columns[column]
        named = own or d.method or (d.num_method if ref.kind is ColumnKind.NUMERICAL else d.cat_method)
        return named or default_method(ref.sample, ref.sample).name

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

    def role(self) -> str:
        """active (reads the topic), standby (another instance does), or joining."""
        return self.source_role()

    def rejecting(self) -> bool:
        """Every record read lately was invalid (service/invalid.py)."""
        return self.invalid.rejecting

    # -- ingest (consumer thread) ----------------------------------------------------------
    def consume(self, polled: Polled, before_add: Callable[[Polled, list[tuple[int, str, str]]], None] | None = None
                ) -> list[tuple[int, str, str]]:
        """Account for one poll's records; the invalid ones are returned as (position in
        `polled.values`, reason, detail), in record order, and handed to `before_add` before
        the valid ones are added (a checkpoint taken then knows their dead letters).

        Records before a partition's position in the state (`MonitorState.redo`: read
        again only for dead letters not acknowledged before a crash) are not added again."""
        now = self._clock()
        partitions, offsets = _origins(polled)
        batch = self.decoder.decode_batch(polled.values, polled.timestamps_ms or None, now)
        fresh = np.ones(len(polled.values), dtype=bool)
        if self.state.redo:
            for p, pos in list(self.state.redo.items()):
                fresh &= ~((partitions == p) & (offsets < pos))
                if polled.next_offsets.get(p, -1) >= pos:
                    del self.state.redo[p]
        valid = np.ones(len(polled.values), dtype=bool)
        valid[[i for i, _, _ in batch.rejected]] = False
        if not fresh.all():
            keep = fresh[valid]
            batch = _without(batch, keep)
        rejected = [r for r in batch.rejected if fresh[r[0]]]
        for _, reason, _ in rejected:
            self._count_invalid(reason)
        self.invalid.note(rejected, lambda i: (int(partitions[i]), int(offsets[i])), batch.size)
        if before_add is not None:
            before_add(polled, batch.rejected)
        self._add(batch, Origin(partitions[valid & fresh], polled.next_offsets), int(np.count_nonzero(fresh)), now)
        return batch.rejected

    def consume_batch(self, values: list[bytes | None], timestamps_ms: list[int | None] | None = None,
                      partition: int = 0) -> list[tuple[int, str, str]]:
        """Decode and account for records of one partition, outside Kafka (tests, benchmarks)."""
        now = self._clock()
        batch = self.decoder.decode_batch(values, timestamps_ms, now)
        for reason, n in batch.invalid.items():
            self._count_invalid(reason, n)
        self.invalid.note(batch.rejected, lambda i: (partition, i), batch.size)
        self._add(batch, Origin(np.full(batch.size, partition, dtype=np.int64), {}), len(values), now)
        return batch.rejected

    def _add(self, batch: DecodedBatch, origin: Origin, records: int, now: float) -> None:
        late = self.windows.add_batch(batch, origin)
        if self.windows.started_over:
            started, self.windows.started_over = self.windows.started_over, []
            for w in started:
                log.warning("monitor %s: window %s holds only the events read from the committed offsets on: any "
                            "of it read before, by the instance before, are not in it", self.name, w)
        self._consumed.inc(records)
        self._consumed_n += records
        if late:
            self._late.inc(late)
        if batch.latency is not None:
            self.serving_latency.observe_many(batch.latency[~np.isnan(batch.latency)])
        self.event_lag.observe_many(now - batch.event_time)

    def _count_invalid(self, reason: str, n: int = 1) -> None:
        counter = self._invalid.get(reason)
        if counter is None:
            counter = self._invalid[reason] = self._metrics.events_invalid.labels(self.name, reason)
        counter.inc(n)

    def consumed_total(self) -> int:
        return self._consumed_n

    @property
    def needs_record_timestamps(self) -> bool:
        return self.settings.event.event_time is None

    # -- partitions and checkpoints (collectors.kafka.PartitionOwner) -------------------------
    def adopt(self, committed: dict[int, tuple[int, str] | None]) -> dict[int, int]:
        """Partitions assigned, with their committed offsets: where to read each from."""
        with self._checkpoint_lock:
            starts = self.state.adopt(committed)
            if self.evaluator.trigger is not None and "streak" in self.state.extra:
                self.evaluator.trigger.streak = int(self.state.extra["streak"])
            self._seed_latest()
            return starts

    def _seed_latest(self) -> None:
        """The last stored results of each horizon become the latest shown (the status API, the
        gauges) until newer windows close: a restart or a takeover does not blank the
        dashboards for a window's length. Results of other features (the config changed) are not."""
        if self._store is None:
            return
        stored: list[WindowResult] = []
        for horizon in self.horizons:
            try:
                rows = self._store.latest_results(self.name, horizon)
                stored.extend(result_from_json(self.name, wid, text) for wid, text in rows)
            except Exception:  # the history is a convenience here: never fail an assignment for it
                log.exception("monitor %s: the latest stored results could not be read", self.name)
        self.evaluator.seed([r for r in stored if tuple(f.feature for f in r.features) == self.feature_names])

    def release(self) -> dict[int, tuple[int, str]]:
        """The partitions are being revoked (a rebalance, or shutdown): evaluate what is
        due, checkpoint, and return the offsets to commit."""
        with self._checkpoint_lock:
            results, rows = self._evaluate()
            offsets = self.state.release(rows, self._extra())
        self.evaluator.publish(results)
        return offsets

    def committable(self) -> dict[int, tuple[int, str]]:
        return self.state.committable()

    def reset_partitions(self) -> None:
        """The topic was recreated: offsets start again; the windows in progress stay."""
        with self._checkpoint_lock:
            self.state.forget_positions()

    def _extra(self) -> dict[str, Any]:
        return {"streak": self.evaluator.trigger.streak if self.evaluator.trigger is not None else 0}

    # -- evaluation (scheduler thread) ---------------------------------------------------------
    def evaluate_due(self, checkpoint: bool = False) -> list[WindowResult]:
        """Close and evaluate the windows due, feed the trigger, and checkpoint with the
        results (or when one is due, or asked for)."""
        with self._checkpoint_lock:
            results, rows = self._evaluate()
            self.state.save(rows, self._extra(), force=checkpoint)
        self.evaluator.publish(results)
        return results

    def _evaluate(self) -> tuple[list[WindowResult], list[ResultRow]]:
        """The results of the windows due, and their rows for the history: each with its id
        and, for the latest ones (`service.history.reports`), the window's sample."""
        self.invalid.flush()
        closed = self.windows.close_due()
        results = self.evaluator.evaluate(closed)
        keep = self.history_reports
        rows = [ResultRow(r.horizon, r.window_start, r.window_end, r.events, r.status.value, r.dataset_drift,
                          r.drift_share, json.dumps(result_json(r), separators=(",", ":")), result_id(r),
                          w.to_bytes() if i >= len(closed) - keep else None)
                for i, (r, (_, w)) in enumerate(zip(results, closed, strict=True))]
        return results, rows

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
            prepare(new, self.settings, self.feature_names)
            self._reference = new
            log.info("monitor %s: reference reloaded, now %s", self.name, new.content_hash)
        return changed, new.content_hash


def _without(batch: DecodedBatch, keep: np.ndarray) -> DecodedBatch:
    """The batch's events where `keep`, with its record of the invalid ones."""
    kept = batch.select(keep)
    kept.invalid, kept.rejected, kept.type_errors = batch.invalid, batch.rejected, batch.type_errors
    return kept


def _origins(polled: Polled) -> tuple[np.ndarray, np.ndarray]:
    """Per record of a poll, its partition and offset."""
    n = len(polled.values)
    partitions = np.empty(n, dtype=np.int64)
    offsets = np.empty(n, dtype=np.int64)
    for partition, start, records in polled.parts:
        partitions[start:start + len(records)] = partition
        offsets[start:start + len(records)] = [r.offset for r in records]
    return partitions, offsets
