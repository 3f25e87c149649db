"""Every window explainable, with `driftline run` on a real broker: the history API, a
window's drill-down report (Evidently's HTML, behind the bearer token), report links in the
status API and the webhook, stable metric labels, and invalid input made visible.

Count windows on a one-partition topic: which events form each window is known exactly.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from driftline.service.demo.traffic import DEFAULT_SHIFT, TrafficModel, encode, monitor_config

from tests.helpers import ServiceProcess, produce, wait_until

pytestmark = pytest.mark.integration

WINDOW = 500
TOKEN = "report-token-0123456789"


def get(svc: ServiceProcess, path: str, token: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    req = urllib.request.Request(svc.api + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=180) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def window_series(svc: ServiceProcess) -> set[tuple[tuple[str, str], ...]]:
    """The label sets of the drift score and verdict series."""
    return {labels for (name, labels) in svc.samples()
            if name in ("driftline_feature_drift_score", "driftline_feature_drift_detected",
                        "driftline_prediction_drift_score")}


def test_history_reports_and_their_links(services, tmp_path: Path, broker, topic, reference_path) -> None:
    conf = monitor_config("credit-risk", broker.bootstrap, topic, reference_path,
                          window={"type": "count", "size": WINDOW, "min_events": 100})
    svc = ServiceProcess(tmp_path, [conf], {"REPORT_TOKEN": TOKEN},
                         service={"api_token_env": "REPORT_TOKEN", "history": {"reports": 2}})
    services.append(svc)
    svc.start()
    before = window_series(svc)
    stable, shifted = TrafficModel(seed=5), TrafficModel(seed=6, shift=DEFAULT_SHIFT)
    produce(broker.bootstrap, topic, encode(stable.events(2 * WINDOW)))
    produce(broker.bootstrap, topic, encode(shifted.events(2 * WINDOW)))
    wait_until(lambda: svc.sample("driftline_windows_total", monitor="credit-risk", status="evaluated") == 4, 60,
               what="four windows")

    # the history, newest first, paged
    status, body, _ = get(svc, "/api/v1/monitors/credit-risk/windows?limit=3")
    assert status == 200
    page = json.loads(body)
    windows = page["windows"]
    assert [w["dataset_drift"] for w in windows] == [True, True, False]
    assert all(w["events"] == WINDOW and w["horizon"] == f"{WINDOW} events" for w in windows)
    assert [w["end"] >= w["start"] for w in windows] == [True] * 3
    assert {"id", "features", "drift_share", "data_quality_issues"} <= windows[0].keys()
    status, body, _ = get(svc, page["next"])
    [last] = json.loads(body)["windows"]
    assert not last["dataset_drift"] and last["id"] not in {w["id"] for w in windows}
    assert get(svc, "/api/v1/monitors/credit-risk/windows?before=nope")[0] == 404
    assert get(svc, "/api/v1/monitors/credit-risk/windows?limit=0")[0] == 400
    # the latest two windows keep their sample (history.reports: 2): a report link; older ones none
    assert [w["report"] is not None for w in (*windows, last)] == [True, True, False, False]
    status, body, _ = get(svc, f"/api/v1/monitors/credit-risk/windows/{windows[0]['id']}")
    assert status == 200 and json.loads(body)["id"] == windows[0]["id"]
    # the status API links its latest window's report
    latest = svc.monitor("credit-risk")["latest_window"]
    assert latest["id"] == windows[0]["id"] and latest["report"] == windows[0]["report"]

    # the report: behind the bearer token, Evidently's page naming driftline's drifted features
    url = windows[0]["report"]
    assert get(svc, url)[0] == 401
    status, body, headers = get(svc, url, TOKEN)
    assert status == 200 and headers["Content-Type"].startswith("text/html"), body[:500]
    html = body.decode()
    assert f"window {windows[0]['id']}</title>" in html and "root_metric_" in html  # Evidently's widgets
    assert f"{WINDOW:,} events" in html  # the window's own events, not a sample of them
    for feature in windows[0]["drifted_features"]:
        assert feature in html
    assert sorted(windows[0]["drifted_features"]) == sorted(DEFAULT_SHIFT)
    again = time.monotonic()
    assert get(svc, url, TOKEN)[1] == body  # cached: the same page at once
    assert time.monotonic() - again < 2.0
    # an older window's sample is gone: 410, with its result
    status, body, _ = get(svc, f"/api/v1/monitors/credit-risk/windows/{last['id']}/report", TOKEN)
    assert status == 410 and json.loads(body)["window"]["id"] == last["id"]
    assert get(svc, "/api/v1/monitors/credit-risk/windows/10events-1-2/report", TOKEN)[0] == 404
    # the alerts' link: the latest window of a horizon, redirected to its id
    status, _, headers = get(svc, "/api/v1/monitors/credit-risk/windows/latest/report", TOKEN)
    assert status == 302 and headers["Location"].endswith(windows[0]["id"] + "/report")

    # the drift series kept the labels they had at startup (the method resolved from "auto")
    assert window_series(svc) == before
    thresholds = {dict(labels)["feature"]: v for (name, labels), v in svc.samples().items()
                  if name == "driftline_feature_drift_threshold"}
    for f in windows[0]["features"]:
        expected = f["threshold"] if f["method"] in ("ks", "chisquare", "z") or not f["calibrated"] \
            else max(f["threshold"], f["noise_floor"])
        assert thresholds[f["feature"]] == pytest.approx(expected), f

    # a restart shows the last windows at once (status API and gauges), before any new one closes
    scores = {labels: v for (name, labels), v in svc.samples().items() if name == "driftline_feature_drift_score"}
    svc.stop()
    svc.start()
    wait_until(lambda: svc.monitor("credit-risk")["latest_window"] is not None, 60, what="the latest window shown")
    shown = svc.monitor("credit-risk")
    assert shown["latest_window"]["id"] == windows[0]["id"] and shown["latest_window"]["dataset_drift"]
    assert shown["latest_window"]["drifted_features"] == windows[0]["drifted_features"]
    assert {labels: v for (name, labels), v in svc.samples().items()
            if name == "driftline_feature_drift_score"} == scores
    assert svc.sample("driftline_windows_total", monitor="credit-risk", status="evaluated") in (None, 0)


def test_events_the_service_cannot_read_are_visible(services, tmp_path: Path, broker, reference_path) -> None:
    """A time format without a zone makes every event invalid: the log says why, once a
    minute, with the origin; the API counts by reason with the latest detail; the monitor is
    rejecting (metric, API) while /readyz stays 200; then valid events clear it."""
    topic = f"invalid-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions=1)
    conf = monitor_config("credit-risk", broker.bootstrap, topic, reference_path,
                          window={"type": "count", "size": WINDOW, "min_events": 100})
    conf["event"]["event_time"] = {"path": "when", "format": "iso8601"}
    svc = ServiceProcess(tmp_path, [conf])
    services.append(svc)
    svc.start()
    events = TrafficModel(seed=8).events(300)
    for e in events:
        e["when"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(e.pop("ts")))  # no zone
    produce(broker.bootstrap, topic, encode(events))
    wait_until(lambda: svc.sample("driftline_monitor_rejecting", monitor="credit-risk") == 1.0, 30,
               what="the monitor to say it rejects everything")
    status = svc.monitor("credit-risk")
    assert status["status"] == "rejecting"
    reason = status["invalid_events"]["by_reason"]["bad_timestamp"]
    assert reason["count"] == 300 and "without a time zone" in reason["latest_detail"]
    assert reason["latest_origin"] == f"{topic} partition 0 offset 299"
    assert svc.get("/readyz")[0] == 200
    lines = [ln for ln in svc.log().splitlines() if "invalid event" in ln]
    assert len(lines) == 1 and "offset 0" in lines[0], lines  # the first; the rest once a minute
    for e in events[:3]:  # never a value in the log
        assert e["request_id"] not in svc.log() and e["when"] not in svc.log()

    fine = TrafficModel(seed=9).events(10)
    for e in fine:
        e["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.pop("ts")))
    produce(broker.bootstrap, topic, encode(fine))
    wait_until(lambda: svc.sample("driftline_monitor_rejecting", monitor="credit-risk") == 0.0, 30,
               what="valid events to clear it")
    assert svc.monitor("credit-risk")["status"] == "ok"
    assert re.search(r"invalid event \(bad_timestamp\): ISO-8601 time without a time zone", svc.log())
