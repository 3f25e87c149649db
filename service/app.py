"""The running service: monitors, their consumer threads, the scheduler and the HTTP API."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from driftline.collectors.dead_letters import DeadLetters
from driftline.collectors.kafka import KafkaSource, Polled
from prometheus_client import CollectorRegistry, disable_created_metrics

from .config import Secrets, Settings, decode_webhook_secret
from .drilldown import Reports
from .http import ApiServer
from .metrics import DriftlineMetrics
from .monitor import Monitor
from .store import Retention, Store
from .trigger import RetrainTrigger
from .webhooks import Dispatcher, Endpoint

log = logging.getLogger("driftline.service")


class ConsumerLoop(threading.Thread):
    """Polls one monitor's topic until stopped; commits what has been accounted for."""

    def __init__(self, monitor: Monitor, secrets: Secrets, metrics: DriftlineMetrics | None = None) -> None:
        super().__init__(name=f"consumer-{monitor.name}", daemon=True)
        self.monitor, self._secrets, self._metrics = monitor, secrets, metrics
        self._stop_event = threading.Event()
        self.source: KafkaSource | None = None
        self.dead_letters: DeadLetters | None = None
        monitor.source_ready = self.ready
        monitor.source_lag = self.lag
        monitor.source_role = self.role
        if metrics is not None and monitor.settings.kafka.dead_letter_topic:
            metrics.dead_letters_pending.labels(monitor.name).set_function(
                lambda: self.dead_letters.pending if self.dead_letters is not None else 0)
            metrics.dead_letters_pending_bytes.labels(monitor.name).set_function(
                lambda: self.dead_letters.pending_bytes if self.dead_letters is not None else 0)

    def ready(self) -> bool:
        return self.source is not None and self.source.connected()

    def lag(self) -> dict[int, int]:
        return self.source.lag() if self.source is not None else {}

    def role(self) -> str:
        return self.source.role if self.source is not None else "joining"

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        prefix = f"monitors[{self.monitor.index}].kafka."

        def secret(field: str) -> str | None:
            value = self._secrets.get(prefix + field)
            return value.get_secret_value() if value is not None else None

        while not self._stop_event.is_set() and self.source is None:
            try:
                self.source = KafkaSource(self.monitor.settings.kafka, secret, self.monitor)
            except Exception as exc:  # broker unreachable at startup: keep trying, stay up
                log.warning("monitor %s: cannot reach Kafka yet (%s); retrying", self.monitor.name, exc)
                self._stop_event.wait(2.0)
        source = self.source
        if source is None:
            return
        dead = self.dead_letters = self._dead_letters(secret)
        before_add: Callable[[Polled, list[tuple[int, str, str]]], None] | None = None
        if dead is not None:
            # before any commit: wait for the copies, and never commit past one not acknowledged
            source.commit_gate = lambda: dead.settle(timeout=2.0 if self._stop_event.is_set() else 5.0)
            self.monitor.state.first_pending = dead.first_pending

            def before_add(polled: Polled, rejected: list[tuple[int, str, str]]) -> None:
                if rejected or dead.pending:
                    dead.add(polled, rejected)  # also sends again what failed before
        last_lag = 0.0
        try:
            # SIGTERM: the batch in hand is finished and accounted for; closing the source
            # below checkpoints and commits (the partitions are revoked on close)
            while not self._stop_event.is_set():
                held = dead is not None and dead.full
                if dead is not None:
                    # too many dead letters not acknowledged: read nothing more until they are
                    source.hold(held)
                polled = source.poll(timeout_ms=100 if held else 500,
                                     timestamps=self.monitor.needs_record_timestamps)
                if polled:
                    self.monitor.consume(polled, before_add)
                    source.mark_processed(polled)
                elif dead is not None and dead.pending:
                    dead.pump()
                if time.monotonic() - last_lag > 1.0:
                    source.refresh_lag()
                    # a partition with records waiting is never idle (service/windows.py)
                    self.monitor.windows.note_lag(source.lag())
                    last_lag = time.monotonic()
                source.maybe_commit()
        except Exception:
            log.exception("monitor %s: consumer loop failed", self.monitor.name)
            raise
        finally:
            source.close(timeout=5.0)
            if dead is not None:
                dead.close(timeout=1.0)
            log.info("monitor %s: consumer stopped, %d records consumed, committed offsets %s", self.monitor.name,
                     self.monitor.consumed_total(), dict(sorted(source.committed.items())))

    def _dead_letters(self, secret: Callable[[str], str | None]) -> DeadLetters | None:
        settings = self.monitor.settings.kafka
        if not settings.dead_letter_topic or self._metrics is None:
            return None
        counter = self._metrics.dead_letters
        name = self.monitor.name
        return DeadLetters(settings, secret, name, lambda outcome, n: counter.labels(name, outcome).inc(n))


class Service:
    def __init__(self, settings: Settings, secrets: Secrets, *, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings, self.secrets, self._clock = settings, secrets, clock
        disable_created_metrics()  # *_created series double every counter for no use on dashboards
        self.registry = registry or CollectorRegistry(auto_describe=False)
        self.metrics = DriftlineMetrics(self.registry)
        h = settings.service.history
        self.store = Store(settings.service.state_path, Retention(h.windows, h.max_age, h.reports))
        self.monitors: list[Monitor] = []
        endpoints: dict[str, Endpoint] = {}
        for i, ms in enumerate(settings.monitors):
            trigger = None
            if ms.retrain is not None:
                trigger = RetrainTrigger(ms.name, ms.retrain, self.store, clock, settings.service.public_url)
                secret = secrets.get(f"monitors[{i}].retrain.secret_env")
                assert secret is not None  # load_settings refuses configs without it
                endpoints[ms.name] = Endpoint(decode_webhook_secret(secret.get_secret_value()),
                                              ms.retrain.timeout, ms.retrain.initial_backoff, ms.retrain.max_backoff)
            self.monitors.append(Monitor(ms, i, self.metrics, trigger, clock, self.store))
        self.metrics.add_monitors(self.monitors, set(endpoints))
        by_name = {m.name: m for m in self.monitors}
        self.dispatcher = Dispatcher(
            self.store, endpoints, lambda m, status: self.metrics.webhook_deliveries.labels(m, status).inc(), clock,
            # a standby sharing the state file leaves the active instance's requests to it
            active=lambda name: by_name[name].role() != "standby")
        self.consumers = [ConsumerLoop(m, secrets, self.metrics) for m in self.monitors]
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self._reference_mtimes: dict[str, float] = {}
        self.reports = Reports(self.store, settings.service.public_url)
        token = secrets.get("service.api_token_env")
        host, _, port = settings.service.listen.rpartition(":")
        self.api = ApiServer((host.strip("[]"), int(port)), self, token.get_secret_value() if token else None)

    @property
    def address(self) -> tuple[str, int]:
        return self.api.server_address[:2]  # type: ignore[return-value]

    def start(self) -> None:
        for m in self.monitors:
            self.scheduler.add_job(m.evaluate_due, "interval", seconds=m.settings.window.evaluation_interval,
                                   id=f"evaluate-{m.name}", max_instances=1, coalesce=True)
            if m.settings.reference.reload_interval:
                self._reference_mtimes[m.name] = _mtime(m.settings.reference.path)
                self.scheduler.add_job(self._reload_if_changed, "interval", args=[m],
                                       seconds=m.settings.reference.reload_interval, id=f"reference-{m.name}",
                                       max_instances=1, coalesce=True)
        # each monitor's deliveries run in the dispatcher's own threads: a tick never waits
        self.scheduler.add_job(self.dispatcher.run_once, "interval", seconds=0.5, id="webhooks",
                               kwargs={"wait": False}, max_instances=1, coalesce=True)
        self.scheduler.start()
        for c in self.consumers:
            c.start()
        self.api.start()
        log.info("driftline serving on http://%s:%d (metrics at /metrics, status at /api/v1/monitors)",
                 *self.address)

    def _reload_if_changed(self, monitor: Monitor) -> None:
        mtime = _mtime(monitor.settings.reference.path)
        if mtime != self._reference_mtimes.get(monitor.name):
            self._reference_mtimes[monitor.name] = mtime
            monitor.reload_reference()

    def ready(self) -> tuple[bool, dict[str, str]]:
        problems = {m.name: "partitions not assigned or broker unreachable" for m in self.monitors if not m.ready()}
        return not problems, problems

    def stop(self, timeout: float = 8.0) -> None:
        deadline = time.monotonic() + timeout
        for c in self.consumers:
            c.stop()
        for c in self.consumers:
            c.join(max(0.1, deadline - time.monotonic()))
        self.scheduler.shutdown(wait=False)
        self.dispatcher.close(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
        self.api.stop()
        self.reports.close()
        self.store.close()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
