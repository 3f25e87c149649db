"""The dashboards and alert rules against a real stack: a real Prometheus (Debian's
`prometheus`, started here on 127.0.0.1) scrapes the real `driftline run` process, fed by the
real broker with traffic that drifts and a retraining webhook that gets delivered. The monitor
has 10 s time windows and a 30 s horizon, so every drift series comes once per horizon.

Every panel query of every dashboard in dashboards/, with its template variables substituted
as Grafana does (all horizons, and each one alone), goes through Prometheus's HTTP API and must
be valid and return data. The
alert rules of deploy/prometheus/ are loaded into the same Prometheus and must evaluate
cleanly on the live series; `promtool check metrics` must have nothing to say about /metrics.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from driftline.service.demo.broker import LocalBroker, free_port
from driftline.service.demo.receiver import WebhookReceiver
from driftline.service.demo.traffic import DEFAULT_SHIFT, FEATURES, TrafficModel, encode, monitor_config

from tests.helpers import ServiceProcess, new_webhook_secret, produce, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
RULES = ROOT / "deploy" / "prometheus" / "driftline-alerts.yml"
MONITOR = "credit-risk"
WINDOW = 500  # events per bucket
BUCKET, HORIZON, LATENESS = 10, 30, 1  # seconds: time windows (buckets) and one longer horizon
HORIZONS = ["10s", "30s"]  # their `horizon` labels
SCRAPE_SECONDS = 1
MALFORMED = [b"{not json", b"[1, 2]", b'{"ts": 1, "features": {"age": "forty"}}', b"\xff\xfe"]


class Replay:
    """Traffic laid out in event time, one bucket of WINDOW events after another, so windows close
    by event time whatever the wall clock does (README "Windows"), and after a pause by the wall
    clock (the partition is idle). Event times start a little under two minutes ago, so the
    event lag stays below DriftlineEventLagHigh's threshold."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.t = math.ceil((time.time() - 100) / HORIZON) * HORIZON  # a horizon's start
        self.sent_at = time.time()

    def send(self, model: TrafficModel, buckets: int) -> None:
        for _ in range(buckets):
            events = model.events(WINDOW)
            for i, e in enumerate(events):
                e["ts"] = self.t + i * BUCKET / WINDOW
            for half in (events[:WINDOW // 2], events[WINDOW // 2:]):  # rates show in several scrapes
                produce(self.bootstrap, self.topic, encode(half))
                time.sleep(0.5)
            self.t += BUCKET
            self.sent_at = time.time()

    def skip_to_next_horizon(self) -> None:
        """After a pause, event time has moved on with the wall clock (the partition went idle):
        start again at the next horizon's start past it, so nothing sent next is late and the open
        horizon closes as it is."""
        watermark = self.t + (time.time() - self.sent_at) + LATENESS + 1
        self.t = math.ceil(watermark / HORIZON) * HORIZON


class Prometheus:
    """`prometheus` on a free port of 127.0.0.1, its config and TSDB in a temporary directory."""

    def __init__(self, workdir: Path, target: str, rule_files: list[Path]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "prometheus.log"
        config = {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "scrape_timeout": f"{SCRAPE_SECONDS}s",
                       "evaluation_interval": f"{SCRAPE_SECONDS}s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": "driftline", "static_configs": [{"targets": [target]}]}],
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed: `make ops-tools` installs Debian's package"
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self._ready() or self.proc.poll() is not None, 30, what="prometheus to be ready")
        assert self.proc.poll() is None, f"prometheus exited:\n{self.log_path.read_text()}"
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=15) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422: invalid query; the body says why
            body = json.loads(exc.read())
        assert body.get("status") == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def value(self, expr: str) -> float | None:
        result = self.api("query", query=expr)["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Live:
    prom: Prometheus
    svc: ServiceProcess
    receiver: WebhookReceiver
    start: float
    end: float


@pytest.fixture(scope="module")
def live(broker: LocalBroker, reference_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """driftline + Prometheus, after stable traffic, malformed records, then drift that persists
    long enough for one verified retraining webhook: buckets 0-2 stable (the first 30 s horizon),
    3-4 drifted (the second), then 3 drifted buckets (the third)."""
    workdir = tmp_path_factory.mktemp("live")
    topic = f"serving-{uuid.uuid4().hex[:10]}"
    broker.create_topic(topic, partitions=1)
    secret = new_webhook_secret()
    receiver = WebhookReceiver(secret).start()
    conf = monitor_config(MONITOR, broker.bootstrap, topic, reference_path,
                          # traffic pauses between bursts: a quiet partition (the only one) soon
                          # counts as idle, so the wall clock closes its last window
                          window={"type": "time", "size": f"{BUCKET}s", "allowed_lateness": f"{LATENESS}s",
                                  "min_events": 200, "horizons": [f"{HORIZON}s"], "idle_timeout": "2s"})
    conf["retrain"] = {"webhook_url": receiver.url, "secret_env": "TEST_WEBHOOK_SECRET", "consecutive_windows": 2,
                       "cooldown": "1h", "initial_backoff": 0.2}
    broker.create_topic(f"{topic}-dead", partitions=1)  # the malformed records go there too
    conf["kafka"]["dead_letter_topic"] = f"{topic}-dead"
    svc = ServiceProcess(workdir, [conf], {"TEST_WEBHOOK_SECRET": secret})
    prom = Prometheus(workdir, f"127.0.0.1:{svc.port}", [RULES])
    try:
        svc.start()
        started = time.time()
        prom.start()
        wait_until(lambda: prom.value('up{job="driftline"}') == 1.0, 30, what="the first scrape of driftline")

        replay = Replay(broker.bootstrap, topic)
        stable, drifted, persisting = 3, 2, 3  # buckets
        replay.send(TrafficModel(seed=31), stable)
        produce(broker.bootstrap, topic, MALFORMED)
        shifted = TrafficModel(seed=32, shift=DEFAULT_SHIFT)
        replay.send(shifted, drifted)  # consecutive_windows: 2, so a webhook
        wait_until(lambda: receiver.state.unique_verified(), 30, what="a verified retraining webhook")
        replay.skip_to_next_horizon()
        replay.send(shifted, persisting)  # drift persists: a trigger suppressed by the cooldown
        windows = stable + drifted + persisting + 3  # and three 30 s horizons (retraining ignores them)
        wait_until(lambda: prom.value(f'driftline_windows_total{{monitor="{MONITOR}",status="evaluated"}}')
                   == windows, 30, what=f"Prometheus to scrape all {windows} windows")
        wait_until(lambda: prom.value(f'driftline_webhook_deliveries_total{{monitor="{MONITOR}",status="2xx"}}')
                   == 1.0, 20, what="Prometheus to scrape the delivery")
        wait_until(lambda: prom.value(f'driftline_retrain_triggers_total{{monitor="{MONITOR}",'
                                      'outcome="suppressed_cooldown"}') == 1.0, 20, what="a suppressed trigger")
        wait_until(lambda: len(prom.api("query", query='ALERTS{alertname="DriftlineDatasetDriftPersistent"}')["result"])
                   == len(HORIZONS), 20, what="the dataset drift alert of each horizon to be pending")
    except BaseException:
        print(f"----- driftline log -----\n{svc.log()[-6000:]}")
        if prom.log_path.exists():
            print(f"----- prometheus log -----\n{prom.log_path.read_text()[-3000:]}")
        prom.stop()
        svc.stop()
        receiver.stop()
        raise
    try:
        yield Live(prom, svc, receiver, started, time.time())
    finally:
        prom.stop()
        svc.stop()
        receiver.stop()


# --- Grafana's substitutions -------------------------------------------------------------

def grafana_intervals(start: float, end: float) -> dict[str, str]:
    """$__interval, $__rate_interval and $__range as Grafana computes them for this range, with the
    datasource's scrape interval (timeInterval) equal to the scrape interval used here."""
    interval = max(SCRAPE_SECONDS, math.ceil((end - start) / 1000))  # ~1000 points at most
    rate_interval = max(interval + SCRAPE_SECONDS, 4 * SCRAPE_SECONDS)
    return {"__rate_interval": f"{rate_interval}s", "__interval": f"{interval}s",
            "__range": f"{math.ceil(end - start)}s"}


def variable_value(values: list[str], multi: bool) -> str:
    """A multi-value variable in a Prometheus query: Grafana's regex of the chosen values."""
    escaped = [re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\1", v) for v in values]
    return f"({'|'.join(escaped)})" if multi else escaped[0]


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name in sorted(variables, key=len, reverse=True):  # $__range_s before $__range
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dashboard["panels"]:
        yield from p.get("panels", [])  # collapsed rows keep their panels inside
        if p["type"] != "row":
            yield p


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def variables_of(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def label_values(live: Live, definition: str, variables: dict[str, str]) -> list[str]:
    """A `label_values(selector, label)` variable query, as Grafana runs it."""
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", substitute(definition, variables))
    assert m, f"unsupported variable query {definition}"
    return sorted(live.prom.api(f"label/{m.group(2)}/values", **{"match[]": m.group(1)},
                                start=live.start, end=live.end))


def dashboard_variables(live: Live, dashboard: dict[str, Any], choices: dict[str, list[str]] | None = None
                        ) -> dict[str, str]:
    """Resolve the dashboard's variables in order (a later query may use an earlier variable):
    the values in `choices`, all of them (All) for the others."""
    resolved = grafana_intervals(live.start, live.end)
    for name, var in variables_of(dashboard).items():
        if var["type"] == "datasource":
            continue
        if var["type"] == "textbox":  # (the API's address, for the report links)
            resolved[name] = var["query"]
            continue
        options = label_values(live, var["definition"], resolved)
        assert options, f"variable {name}: {var['definition']} has no values"
        chosen = (choices or {}).get(name) or options
        assert set(chosen) <= set(options), f"variable {name}: {chosen} not among {options}"
        resolved[name] = variable_value(chosen, var.get("multi", False) or var.get("includeAll", False))
    return resolved


def run_target(live: Live, expr: str, instant: bool) -> list[dict[str, Any]]:
    if instant:
        return live.prom.api("query", query=expr, time=live.end)["result"]  # type: ignore[no-any-return]
    return live.prom.api("query_range", query=expr, start=live.start, end=live.end,  # type: ignore[no-any-return]
                         step=SCRAPE_SECONDS)["result"]


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    values = [float(v[1]) for s in result for v in (s.get("values") or [s["value"]])]
    return [v for v in values if math.isfinite(v)]


# --- tests -------------------------------------------------------------------------------

def test_the_dashboards_exist_and_have_queries() -> None:
    assert [p.name for p in DASHBOARDS] == ["driftline-monitor.json", "driftline-overview.json"]
    for path in DASHBOARDS:
        assert sum(len(p.get("targets", [])) for p in panels(load(path))) >= 10, path.name


@pytest.mark.parametrize(("path", "choices"), [
    *((p, {}) for p in DASHBOARDS),
    *((p, {"horizon": [h]}) for p in DASHBOARDS for h in HORIZONS),
    (ROOT / "dashboards" / "driftline-monitor.json", {"feature": ["income"], "horizon": [HORIZONS[-1]]}),
], ids=lambda v: v.stem if isinstance(v, Path) else ("-".join(f"{k}={'|'.join(c)}" for k, c in v.items()) or "all"))
def test_every_panel_query_is_valid_and_returns_data(live: Live, path: Path, choices: dict[str, list[str]]) -> None:
    dashboard = load(path)
    variables = dashboard_variables(live, dashboard, choices)
    empty, checked = [], 0
    for panel in panels(dashboard):
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for t in panel["targets"]:
            expr = substitute(t["expr"], variables)
            result = run_target(live, expr, bool(t.get("instant")))
            checked += 1
            if not finite_values(result):
                empty.append(f"{panel['title']!r} {t['refId']}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert checked >= 10


def test_template_variables_list_the_monitor_and_its_features(live: Live) -> None:
    for path in DASHBOARDS:
        dashboard = load(path)
        vars_ = variables_of(dashboard)
        assert vars_["datasource"]["query"] == "prometheus"
        assert label_values(live, vars_["monitor"]["definition"], {}) == [MONITOR]
        assert label_values(live, vars_["horizon"]["definition"], {"monitor": MONITOR}) == sorted(HORIZONS)
    monitor_dash = load(ROOT / "dashboards" / "driftline-monitor.json")
    feature = variables_of(monitor_dash)["feature"]
    assert label_values(live, feature["definition"], {"monitor": MONITOR}) == sorted(FEATURES)


def test_panels_show_the_drift_that_happened(live: Live) -> None:
    """The panels do not just return something: they show the shifted features, the drifted
    monitor (once, however many of its horizons drift) and the delivered webhook."""
    dashboard = load(ROOT / "dashboards" / "driftline-monitor.json")
    variables = dashboard_variables(live, dashboard)
    by_title = {p["title"]: p for p in panels(dashboard)}

    def instant(title: str, ref: str = "A", **choices: list[str]) -> list[dict[str, Any]]:
        [t] = [t for t in by_title[title]["targets"] if t["refId"] == ref]
        chosen = dashboard_variables(live, dashboard, choices) if choices else variables
        return run_target(live, substitute(t["expr"], chosen), instant=True)

    for horizon in HORIZONS:  # the latest window of each horizon drifted in the shifted features
        verdicts = {s["metric"]["feature"]: float(s["value"][1])
                    for s in instant("Drift verdict per feature", horizon=[horizon])}
        assert {f for f, v in verdicts.items() if v == 1.0} == set(DEFAULT_SHIFT), horizon
        assert set(verdicts) == set(FEATURES)
        [drift] = instant("Dataset drift", horizon=[horizon])
        assert drift["metric"] == {"horizon": horizon} and float(drift["value"][1]) == 1.0
        [share] = instant("Drift share", horizon=[horizon])
        assert float(share["value"][1]) == pytest.approx(len(DEFAULT_SHIFT) / len(FEATURES))
    # all horizons at once: one series per horizon, never mixed
    assert sorted(s["metric"]["horizon"] for s in instant("Dataset drift")) == sorted(HORIZONS)
    assert len(instant("Drift verdict per feature")) == len(FEATURES) * len(HORIZONS)
    events = {s["metric"]["horizon"]: float(s["value"][1]) for s in instant("Events in latest window")}
    assert events == {"10s": WINDOW, "30s": 3 * WINDOW}
    windows = {s["metric"]["status"]: float(s["value"][1]) for s in instant("Windows closed")}
    assert windows["evaluated"] >= 6
    deliveries = live.prom.api("query_range", query=substitute(
        by_title["Webhook deliveries"]["targets"][0]["expr"], variables), start=live.start, end=live.end, step=1)
    delivered = [s for s in deliveries["result"] if s["metric"]["status"] == "2xx"]
    assert delivered and max(finite_values(delivered)) > 0
    invalid = {s["metric"]["reason"] for s in run_target(live, substitute(
        by_title["Invalid events by reason"]["targets"][0]["expr"], variables), instant=False)
        if max(finite_values([s]), default=0) > 0}
    assert {"invalid_json", "not_an_object", "wrong_type", "invalid_encoding"} <= invalid

    overview = load(ROOT / "dashboards" / "driftline-overview.json")
    ov_vars = dashboard_variables(live, overview)
    [drifting] = [p for p in panels(overview) if p["title"] == "Monitors drifting now"]
    assert float(run_target(live, substitute(drifting["targets"][0]["expr"], ov_vars), True)[0]["value"][1]) == 1.0


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\b(driftline_[a-z_]+)\b", text))


def test_every_metric_named_in_dashboards_and_rules_is_exported(live: Live) -> None:
    """A misspelt name inside `or vector(0)` would still 'return data': check the names themselves."""
    exported = set(live.prom.api("label/__name__/values", start=live.start, end=live.end))
    used = set().union(*(metric_names(p.read_text()) for p in [*DASHBOARDS, RULES]))
    assert used, "no driftline metric referenced"
    assert not used - exported, f"referenced but not exported: {sorted(used - exported)}"


def test_alert_rules_evaluate_on_the_live_series(live: Live) -> None:
    groups = live.prom.api("rules", type="alert")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len([r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]])
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not broken, broken
    alerts = live.prom.api("alerts")["alerts"]
    active = {(a["labels"]["alertname"], a["labels"].get("feature"), a["labels"].get("horizon")) for a in alerts}
    # Drift that has lasted seconds is pending (for: 15m), never firing, once per horizon; nothing
    # else is wrong (in particular no freshness alert from the 30 s horizon evaluating less often).
    # The shifted debt_to_income lands beyond the training range 0.4% of the time: a window may
    # show it as out of range (a true statement), nothing else.
    drift = {*(("DriftlineDatasetDriftPersistent", None, h) for h in HORIZONS),
             *(("DriftlineFeatureDriftPersistent", f, h) for f in DEFAULT_SHIFT for h in HORIZONS)}
    assert drift <= active and active - drift <= {("DriftlineValuesOutOfRange", "debt_to_income", None)}, active
    assert {a["state"] for a in alerts} == {"pending"}
    for a in alerts:
        assert a["labels"]["monitor"] == MONITOR and a["labels"]["job"] == "driftline"
        assert a["labels"]["instance"] == f"127.0.0.1:{live.svc.port}"
    for dataset in [a for a in alerts if a["labels"]["alertname"] == "DriftlineDatasetDriftPersistent"]:
        summary, description = dataset["annotations"]["summary"], dataset["annotations"]["description"]
        # each names its own horizon's drifted features, once each
        assert summary.endswith(f"in its {dataset['labels']['horizon']} windows ({', '.join(sorted(DEFAULT_SHIFT))})")
        for feature in DEFAULT_SHIFT:
            assert len(re.findall(rf"\b{feature} \(", description)) == 1, description


def test_promtool_check_metrics_on_live_metrics_reports_nothing(live: Live) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: `make ops-tools` installs Debian's prometheus package"
    text = live.svc.metrics_text()
    assert "driftline_feature_drift_score{" in text
    proc = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    report = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 0 and report.strip() == "", report
