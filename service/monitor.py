"""A monitor: one model's stream, from Kafka records to drift results.

The consumer thread runs `consume` (decode, validate, add to windows); the scheduler
runs `evaluate_due` (close windows, score them against the reference, feed the trigger,
then checkpoint). Offsets are committed from the last checkpoint written (`committable`).

Crash safety without raw values on disk: a checkpoint holds, per partition, the offset
from which the open windows can be rebuilt (`replay_from`, the one committed to Kafka),
how far it was read (`position`) and which windows were closed, with the results of the
windows closed since the previous checkpoint, in one SQLite transaction. After a crash
or a rebalance the reader of a partition starts at `replay_from` and re-adds the events
of windows still open, skipping those already evaluated and counting none twice. The
same marks travel in the committed offset's metadata, so a partition moving to another
process (a rebalance) carries them along; once the broker is seen to keep that metadata,
so does the partition's part of the open horizon windows (`PartitionMark.handover`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from driftline.collectors.events import EventDecoder
from driftline.collectors.kafka import Polled

from .config import MonitorSettings
from .drift import ColumnKind, get_method
from .evaluation import WindowResult, WindowStatus, evaluate_window, result_json
from .metrics import EVALUATION_BUCKETS, EVENT_LAG_BUCKETS, LATENCY_BUCKETS, BatchHistogram, DriftlineMetrics
from .reference import ReferenceError, ReferenceProfile, load_profile
from .store import ResultRow, Store
from .trigger import RetrainTrigger
from .window import Origin, PartitionMark, TumblingWindows

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
        self._metrics, self._trigger, self._clock, self._store = metrics, trigger, clock, store
        try:
            self._reference = load_profile(settings.reference.path)
        except ReferenceError as exc:
            raise MonitorSetupError(f"monitors[{index}].reference.path: {exc}") from None
        kinds = feature_kinds(settings, self._reference, index)
        self.feature_names = tuple(settings.event.features)
        pred = settings.event.prediction
        self._prediction_kind = self._reference.columns[pred.column].kind if pred else None
        self.decoder = EventDecoder(settings.event, kinds, self._prediction_kind)
        self._side_decoder = EventDecoder(settings.event, kinds, self._prediction_kind)  # (its own thread)
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
        # checkpoints: written by the scheduler, or on revoke/shutdown, one at a time
        self._checkpoint_lock = threading.Lock()
        self._saved: dict[str, Any] | None = None  # the last checkpoint written
        # partition -> its mark in the last checkpoint that held it (kept once the partition
        # is revoked: used if it comes back and nobody has committed it since)
        self._known_marks: dict[int, PartitionMark] = {}
        self._parked: set[int] | None = None  # partitions held when last revoked
        self._metadata_kept = False  # seen a driftline mark come back from the broker
        self._metadata_refused = False  # the broker refused a commit's metadata as too large
        self._too_large: set[int] = set()  # partitions whose handover did not fit (logged once)
        if store is not None:
            saved = store.load_checkpoint(self.name)
            if saved is not None and saved.get("topic") == settings.kafka.topic:
                self.windows.restore(saved)
                if trigger is not None:
                    trigger.streak = int(saved.get("streak", 0))
                self._known_marks = {int(p): PartitionMark.from_json(m)
                                     for p, m in saved.get("partitions", {}).items()}
                self._saved = saved
                log.info("monitor %s: checkpoint loaded (partitions %s)", self.name,
                         {p: m.replay_from for p, m in sorted(self._known_marks.items())})

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
    def consume(self, polled: Polled) -> list[tuple[int, str, str]]:
        """Account for one poll's records; the invalid ones are returned as (position in
        `polled.values`, reason, detail), in record order. Records that replay what a
        checkpoint had accounted for rebuild open windows and are not counted again."""
        n = len(polled.values)
        partitions, offsets = _origins(polled)
        if not self.windows.replaying:
            return self.consume_batch(polled.values, polled.timestamps_ms or None,
                                      Origin(partitions, offsets, polled.next_offsets))
        skip = np.zeros(n, dtype=bool)
        replay = np.zeros(n, dtype=bool)
        for partition, start, records in polled.parts:
            mark = self.windows.mark(partition)
            if mark is not None:
                part = slice(start, start + len(records))
                skip[part] = offsets[part] < mark.replay_from
                replay[part] = ~skip[part] & (offsets[part] < mark.position)

        def pick(idx: np.ndarray) -> tuple[list[bytes | None], list[int | None] | None]:
            values = [polled.values[i] for i in idx.tolist()]
            ts = [polled.timestamps_ms[i] for i in idx.tolist()] if polled.timestamps_ms else None
            return values, ts

        again = np.flatnonzero(replay)
        if again.size:
            values, ts = pick(again)
            batch = self.decoder.decode_batch(values, ts, self._clock())
            self.windows.add_batch(batch, Origin(*self._valid(batch, partitions[again], offsets[again]), {},
                                                 replay=True))
        fresh = np.flatnonzero(~(skip | replay))
        values, ts = pick(fresh)
        rejected = self.consume_batch(values, ts, Origin(partitions[fresh], offsets[fresh], polled.next_offsets))
        return [(int(fresh[i]), reason, detail) for i, reason, detail in rejected]

    def add_side(self, polled: Polled, generation: int) -> bool:
        """Records a second reader read again after a restart, for the horizon windows
        (`TumblingWindows.side_reads`); counted before, so not counted again. False once
        they are no longer wanted."""
        partitions, offsets = _origins(polled)
        batch = self._side_decoder.decode_batch(polled.values, polled.timestamps_ms or None, self._clock())
        return self.windows.add_side(batch, Origin(*self._valid(batch, partitions, offsets), {}), generation)

    @staticmethod
    def _valid(batch: Any, partitions: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not batch.rejected:
            return partitions, offsets
        keep = np.ones(partitions.size, dtype=bool)
        keep[[i for i, _, _ in batch.rejected]] = False
        return partitions[keep], offsets[keep]

    def consume_batch(self, values: list[bytes | None], timestamps_ms: list[int | None] | None = None,
                      origin: Origin | None = None) -> list[tuple[int, str, str]]:
        """Decode, validate and account for new records (`origin`: per record its
        partition and offset); the invalid ones are returned as (position in `values`,
        reason, detail), in record order."""
        now = self._clock()
        batch = self.decoder.decode_batch(values, timestamps_ms, now)
        for reason, n in batch.invalid.items():
            self._count_invalid(reason, n)
        if origin is not None:
            origin = Origin(*self._valid(batch, origin.partitions, origin.offsets), origin.next_offsets)
        late = self.windows.add_batch(batch, origin)
        self._consumed.inc(len(values))
        self._consumed_n += len(values)
        if late:
            self._late.inc(late)
        if batch.latency is not None:
            present = batch.latency[~np.isnan(batch.latency)]
            self.serving_latency.observe_many(present)
        self.event_lag.observe_many(now - batch.event_time)
        return batch.rejected

    # -- partitions and checkpoints ------------------------------------------------------------
    def adopt(self, committed: dict[int, tuple[int, str] | None]) -> dict[int, int]:
        """Partitions newly assigned, with their committed offset and its metadata; returns
        the offset each must be read from (the consumer seeks there).

        If the partitions this process held came back and nobody committed them since, the
        open windows stay as they are and reading goes on where it was. Otherwise they are
        dropped, and every partition takes up the marks of whoever read it last (this
        process's own checkpoint, unless another process committed the partition since) and
        is read from where its open windows begin."""
        own = self._store.store_id if self._store is not None else None
        saved = {int(p): m["replay_from"] for p, m in (self._saved or {}).get("partitions", {}).items()}
        parked, self._parked = self._parked, None

        def others(p: int) -> bool:
            """True if another process committed p since this one's last checkpoint of it."""
            got = committed.get(p)
            if got is None:
                return False
            theirs = PartitionMark.from_metadata(got[0], got[1])
            if theirs is not None:
                return theirs[0] != own
            # No metadata (e.g. Tansu): by offset. This process commits only from checkpoints
            # written, so a committed offset beyond its last checkpoint's is another's; one
            # behind it is this process's own (a crash between checkpoint and commit).
            return p not in saved or got[0] > saved[p]

        keep = parked is not None and all(p in committed and not others(p) for p in parked)
        if parked is not None and not keep:
            log.info("monitor %s: partitions moved (held %s, now %s): open windows rebuilt from Kafka",
                     self.name, sorted(parked), sorted(committed))
            self.windows.release()
        starts: dict[int, int] = {}
        for p, got in sorted(committed.items()):
            if keep and parked is not None and p in parked:
                pos = self.windows.keep(p)
                if pos is not None:
                    starts[p] = pos
                continue
            offset, meta = (got if got is not None else (None, ""))
            theirs = PartitionMark.from_metadata(offset, meta)
            if others(p):
                mark = theirs[1] if theirs is not None else None
                self._known_marks.pop(p, None)  # this process's own mark of it is stale now
            else:
                mark = self._known_marks.get(p) or (theirs[1] if theirs is not None else None)
            start = self.windows.adopt(p, mark, offset)
            if start is not None:
                starts[p] = start
            log.info("monitor %s: partition %d from offset %s%s", self.name, p, start,
                     f", replaying to {mark.position} (windows up to #{mark.closed} closed)"
                     if mark is not None and start is not None and mark.position > start else "")
        if not self._metadata_kept and not self._metadata_refused and any(
                got is not None and PartitionMark.from_metadata(*got) is not None for got in committed.values()):
            # (only now: the partitions just released were committed without it)
            self._metadata_kept = True
            self.windows.hand_over_horizons()
            log.info("monitor %s: the broker keeps commit metadata: each partition's part of the horizon "
                     "windows goes with it to its next reader", self.name)
        return starts

    def release(self) -> dict[int, tuple[int, str]]:
        """All partitions are being revoked (a rebalance, or shutdown): close what is due,
        checkpoint, and return the offsets to commit before they go. The open windows wait
        (nothing closes) until `adopt` knows whether the partitions came back."""
        self.evaluate_due()
        with self._checkpoint_lock:
            state = self.windows.checkpoint()
            held = {int(p) for p in state["partitions"]}
            self._save(state, [])
            offsets = self.committable()
            self.windows.pause()
            self._parked = held
        return offsets

    def metadata_refused(self) -> None:
        """The broker caps commit metadata lower than Kafka's default: no horizon windows'
        parts in it from now on, so each part stays with its reader (as without metadata)."""
        with self._checkpoint_lock:
            self._metadata_refused = True
            self.windows.hand_over_horizons(False)
            # (the partitions that come back must not be rebuilt: their parts stay here now)
            self._known_marks = {p: replace(m, handover=False) for p, m in self._known_marks.items()}

    def reset_partitions(self) -> None:
        """The topic was recreated: offsets start again, the old marks mean nothing."""
        with self._checkpoint_lock:
            self.windows.forget_positions()
            self._known_marks.clear()
            if self._saved is not None:
                self._saved = {**self._saved, "partitions": {}}

    def committable(self) -> dict[int, tuple[int, str]]:
        """Per partition, the offset (with its metadata) the last checkpoint written covers."""
        saved = self._saved
        if saved is None:
            return {}
        own = self._store.store_id if self._store is not None else ""
        out = {}
        for p, m in saved.get("partitions", {}).items():
            mark = PartitionMark.from_json(m)
            if self._metadata_refused:
                mark = mark.for_commit(handover=False)
            metadata, whole = mark.to_metadata(own)
            if not whole and int(p) not in self._too_large:
                self._too_large.add(int(p))
                log.warning("monitor %s: partition %s: its part of the horizon windows is too large for the "
                            "commit metadata (%d late buckets): lost if the partition moves", self.name, p,
                            len(mark.late))
            out[int(p)] = (mark.replay_from, metadata)
        return out

    def _save(self, state: dict[str, Any], results: list[WindowResult]) -> None:
        """Caller holds _checkpoint_lock."""
        state["topic"] = self.settings.kafka.topic
        state["streak"] = self._trigger.streak if self._trigger is not None else 0
        marks = {int(p): PartitionMark.from_json(m) for p, m in state["partitions"].items()}
        for p, m in self._known_marks.items():  # revoked partitions: their last known marks
            if p not in marks:
                state["partitions"][str(p)] = m.to_json()
        if self._store is None:
            self._saved = state
            return
        if not results and state == self._saved:
            return
        rows = [ResultRow(r.horizon, r.window_start, r.window_end, r.events, r.status.value, r.dataset_drift,
                          r.drift_share, json.dumps(result_json(r), separators=(",", ":"))) for r in results]
        try:
            self._store.save_checkpoint(self.name, state, rows, self._clock())
        except Exception:
            # Kafka offsets stay where the last checkpoint left them: nothing is lost, the
            # windows since are rebuilt after a restart
            log.exception("monitor %s: checkpoint not written", self.name)
            return
        self._saved = state
        self._known_marks.update(marks)

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
        """Close and evaluate the windows due, feed the trigger, checkpoint with the results."""
        with self._checkpoint_lock:
            closed, state = self.windows.close_and_checkpoint()
            results = []
            for size, window in closed:
                result = evaluate_window(window, self._reference, self.settings, self.feature_names,
                                         self._horizon_of[size])
                results.append(result)
                # retraining follows the buckets; longer horizons inform, they do not trigger,
                # nor do shares of windows evaluated before (they come out of order)
                if self._trigger is not None and result.horizon == self.horizons[0] and result.partitions is None:
                    outcome = self._trigger.observe(result)
                    if outcome is not None:
                        self._metrics.retrain_triggers.labels(self.name, outcome).inc()
                        log.warning("monitor %s: retraining %s after %d drifted windows", self.name,
                                    "requested" if outcome == "requested" else "not requested (cooldown)",
                                    self._trigger.settings.consecutive_windows)
            self._save(state, results)
        for result in results:
            horizon = result.horizon
            self.evaluation_duration.observe(result.duration_seconds)
            self._metrics.windows.labels(self.name, result.status.value).inc()
            if result.partitions is None:  # a share is not the monitor's latest state
                with self._lock:
                    # nor is an older time window evaluated late (a part handed over, rebuilt
                    # after this process had moved on): the gauges never go back in time
                    if self._newer(result, self._latest.get(horizon)):
                        self._latest[horizon] = result
                    if result.status is WindowStatus.EVALUATED and self._newer(
                            result, self._latest_evaluated.get(horizon)):
                        self._latest_evaluated[horizon] = result
            drifted = ", ".join(f.feature for f in result.drifted_features) or "none"
            share = "" if result.partitions is None else f" (share of partitions {list(result.partitions)})"
            log.info("monitor %s %s window %s..%s%s: %d events, %s, drift share %.2f, drifted: %s",
                     self.name, horizon, _fmt(result.window_start), _fmt(result.window_end), share, result.events,
                     result.status.value, result.drift_share, drifted)
        return results

    def _newer(self, result: WindowResult, latest: WindowResult | None) -> bool:
        """Whether `result` may replace `latest` (count windows come in order; their ends are
        event times, which need not be)."""
        return latest is None or self.settings.window.type != "time" or result.window_end >= latest.window_end

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


def _origins(polled: Polled) -> tuple[np.ndarray, np.ndarray]:
    """Per record of a poll, its partition and offset."""
    n = len(polled.values)
    partitions = np.empty(n, dtype=np.int64)
    offsets = np.empty(n, dtype=np.int64)
    for partition, start, records in polled.parts:
        partitions[start:start + len(records)] = partition
        offsets[start:start + len(records)] = [r.offset for r in records]
    return partitions, offsets


def _fmt(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) if t == t else "?"
