"""The Grafana dashboards' JSON and provisioning files, checked without a Grafana server.

What their queries return is tested against a real Prometheus in test_ops_live_prometheus.py;
this file checks what Grafana needs to load them and what the issue asks them to show.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DASH_DIR = ROOT / "dashboards"
DASHBOARDS = sorted(DASH_DIR.glob("*.json"))
DATASOURCES = DASH_DIR / "provisioning" / "datasources" / "driftline-prometheus.yaml"
PROVIDER = DASH_DIR / "provisioning" / "dashboards" / "driftline.yaml"
PANEL_TYPES = {"stat", "timeseries", "state-timeline", "heatmap", "table", "bargauge", "gauge", "text", "row"}
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dashboard["panels"]:
        yield from p.get("panels", [])
        if p["type"] != "row":
            yield p


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]


def by_uid() -> dict[str, dict[str, Any]]:
    return {load(p)["uid"]: load(p) for p in DASHBOARDS}


def test_two_dashboards_with_unique_uids() -> None:
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert sorted(uids) == ["driftline-monitor", "driftline-overview"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_structure_grafana_loads(path: Path) -> None:
    d = load(path)
    assert d["title"].startswith("driftline / ") and d["schemaVersion"] >= 36
    assert "driftline" in d["tags"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], str] = {}
    for p in panels(d):
        assert p["type"] in PANEL_TYPES, p["type"]
        assert p["title"] and p.get("description"), f"panel {p['id']} needs a title and a description"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip()
            used = set(re.findall(r"\$\{?(\w+)", t["expr"]))
            assert used <= set(variables) | GRAFANA_VARIABLES, f"{p['title']}: undefined {used - set(variables)}"
            assert "credit-risk" not in t["expr"], "no monitor name hard-coded"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert re.fullmatch(r"label_values\(.+,\s*\w+\)", v["definition"]), v["definition"]
            assert v["query"]["query"] == v["definition"]


def test_the_drift_panels_link_the_latest_windows_report() -> None:
    """Each drift panel's series link to the drill-down report of the latest window of their
    horizon, on the API the `api_url` variable names (what the alerts' `report` does too)."""
    d = by_uid()["driftline-monitor"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["api_url"]["type"] == "textbox"
    linked = {p["title"] for p in panels(d)
              for link in p.get("fieldConfig", {}).get("defaults", {}).get("links", [])
              if link["url"] == "${api_url}/api/v1/monitors/${monitor}/windows/latest/report?horizon="
                                "${__field.labels.horizon}"}
    assert {"Dataset drift", "Drifted features", "Drift verdict per feature", "Drift score per feature"} <= linked
    [score] = [p for p in panels(d) if p["title"] == "Drift score per feature"]
    assert any("driftline_feature_drift_threshold" in t["expr"] for t in score["targets"])


def test_dashboard_links_point_at_existing_dashboards() -> None:
    dashboards = by_uid()
    for d in dashboards.values():
        urls = [link["url"] for link in d.get("links", []) if link.get("url")]
        urls += [link["url"] for p in panels(d) for link in p.get("links", [])]
        for url in urls:
            m = re.match(r"/d/([\w-]+)/", url)
            assert m and m.group(1) in dashboards, url


def test_overview_shows_what_the_issue_asks() -> None:
    d = by_uid()["driftline-overview"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["monitor"]["multi"] and variables["monitor"]["includeAll"]
    text = "\n".join(exprs(d))
    for metric in ("driftline_dataset_drift_share", "driftline_dataset_drift_detected",  # drift, drifted monitors
                   "driftline_events_consumed_total", "driftline_consumer_lag_messages",  # throughput, consumer lag
                   "driftline_last_evaluation_timestamp_seconds"):  # evaluation freshness
        assert metric in text, metric
    assert all('monitor=~"$monitor"' in e for e in exprs(d))


HORIZON_METRICS = ("driftline_feature_drift_score", "driftline_feature_drift_detected",
                   "driftline_feature_missing_ratio", "driftline_feature_effect_size",
                   "driftline_feature_practical_threshold", "driftline_feature_noise_floor",
                   "driftline_feature_plain_drift_detected", "driftline_feature_reference_missing_ratio",
                   "driftline_feature_out_of_range_ratio", "driftline_feature_unseen_category_ratio",
                   "driftline_feature_type_error_ratio", "driftline_feature_unseen_category_detected",
                   "driftline_feature_missing_increase_detected", "driftline_feature_out_of_range_detected",
                   "driftline_feature_type_errors_detected", "driftline_prediction_drift_score",
                   "driftline_prediction_drift_detected", "driftline_dataset_drift_share",
                   "driftline_dataset_drift_detected", "driftline_window_events",
                   "driftline_window_insufficient_data", "driftline_last_evaluation_timestamp_seconds")


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_horizon_labelled_metrics_are_filtered_by_the_horizon_variable(path: Path) -> None:
    """With several horizons per monitor (window.horizons) every drift series comes once per
    horizon: each selector of such a metric filters on $horizon, and the variable lists the
    selected monitors' horizons."""
    d = load(path)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    horizon = variables["horizon"]
    assert horizon["multi"] and horizon["includeAll"]
    assert horizon["definition"].startswith("label_values(driftline_dataset_drift_detected{monitor=")
    assert "$monitor" in horizon["definition"] and horizon["definition"].endswith(", horizon)")
    for e in exprs(d):
        for metric, selector in re.findall(r"(driftline_[a-z_]+)(\{[^}]*\})?", e):
            if metric in HORIZON_METRICS:
                assert 'horizon=~"$horizon"' in selector, f"{metric} without the horizon filter in {e}"


def test_monitor_view_shows_what_the_issue_asks() -> None:
    d = by_uid()["driftline-monitor"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert not variables["monitor"]["multi"]
    assert variables["feature"]["multi"] and "$monitor" in variables["feature"]["definition"]
    by_metric: dict[str, list[dict[str, Any]]] = {}
    for p in panels(d):
        for name in set(re.findall(r"driftline_[a-z_]+", " ".join(t["expr"] for t in p["targets"]))):
            by_metric.setdefault(name, []).append(p)
    # per-feature drift over time as a state timeline (or heatmap), per feature
    timelines = [p for p in by_metric["driftline_feature_drift_detected"] if p["type"] in ("state-timeline", "heatmap")]
    assert timelines and all('feature=~"$feature"' in p["targets"][0]["expr"] for p in timelines)
    assert any(p["type"] == "timeseries" for p in by_metric["driftline_feature_drift_score"])
    # calibration and data quality: the limits beside the effect, Evidently's own verdict, each check
    for metric in ("driftline_feature_noise_floor", "driftline_feature_practical_threshold",
                   "driftline_feature_effect_size", "driftline_feature_plain_drift_detected",
                   "driftline_feature_unseen_category_ratio", "driftline_feature_out_of_range_ratio",
                   "driftline_feature_reference_missing_ratio", "driftline_feature_type_error_ratio",
                   "driftline_feature_unseen_category_detected", "driftline_feature_type_errors_detected"):
        assert any('feature=~"$feature"' in t["expr"] for p in by_metric[metric] for t in p["targets"]), metric
    for metric in ("driftline_feature_missing_ratio", "driftline_events_invalid_total",
                   "driftline_retrain_triggers_total", "driftline_webhook_deliveries_total",
                   "driftline_evaluation_duration_seconds_bucket", "driftline_prediction_drift_score"):
        assert metric in by_metric, metric
    for hist in ("driftline_serving_latency_seconds_bucket", "driftline_event_lag_seconds_bucket"):
        [p] = by_metric[hist]
        quantiles = sorted(re.match(r"histogram_quantile\(([\d.]+),", t["expr"]).group(1)  # type: ignore[union-attr]
                           for t in p["targets"])
        assert quantiles == ["0.5", "0.95", "0.99"], hist
    assert any("by (reason)" in t["expr"] for p in by_metric["driftline_events_invalid_total"] for t in p["targets"])
    assert all('monitor="$monitor"' in e for e in exprs(d))


def test_provisioning_files() -> None:
    ds = yaml.safe_load(DATASOURCES.read_text())
    assert ds["apiVersion"] == 1
    [prom] = ds["datasources"]
    assert prom["type"] == "prometheus" and prom["access"] == "proxy" and prom["url"].startswith("http")
    for path in DASHBOARDS:  # the datasource variable defaults to the provisioned datasource
        [var] = [v for v in load(path)["templating"]["list"] if v["name"] == "datasource"]
        assert var["current"]["value"] == prom["uid"]
    provider = yaml.safe_load(PROVIDER.read_text())
    assert provider["apiVersion"] == 1
    [p] = provider["providers"]
    assert p["type"] == "file" and p["options"]["path"] == "/var/lib/grafana/dashboards/driftline"


def test_panels_named_in_the_runbooks_exist() -> None:
    """On-call follows the runbook to a panel by its title: the titles must be there."""
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    named = set()
    for m in re.finditer(r"[Pp]anels? \*\*([^*]+)\*\*(?: and \*\*([^*]+)\*\*)?", runbooks):
        named.update(t for t in m.groups() if t)
    titles = {p["title"] for path in DASHBOARDS for p in panels(load(path))}
    assert len(named) >= 10 and not named - titles, sorted(named - titles)
