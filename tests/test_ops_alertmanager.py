"""The Alertmanager example (deploy/alertmanager/): amtool checks it and proves its routing,
and a real Alertmanager (Debian's `prometheus-alertmanager`, on 127.0.0.1) proves the
grouping by monitor and the inhibitions with alerts shaped like driftline's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from driftline.service.demo.broker import free_port

from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RULES = ROOT / "deploy" / "prometheus" / "driftline-alerts.yml"
RECEIVER_OF = {"critical": "pager", "warning": "tickets"}


def tool(name: str) -> str:
    binary = shutil.which(name)
    assert binary, f"{name} is not installed: `make ops-tools` installs Debian's prometheus-alertmanager"
    return binary


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("amtool"), *args], capture_output=True, text=True, timeout=60)


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_amtool_check_config_is_clean() -> None:
    proc = amtool("check-config", str(CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout and "3 inhibit rules" in proc.stdout and "2 receivers" in proc.stdout


def route(labels: dict[str, str], verify: str | None = None) -> subprocess.CompletedProcess[str]:
    args = ["config", "routes", "test", f"--config.file={CONFIG}"]
    if verify:
        args.append(f"--verify.receivers={verify}")
    return amtool(*args, *(f"{k}={v}" for k, v in labels.items()))


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_amtool_routes_each_alert_by_its_severity(rule: dict[str, Any]) -> None:
    labels = {"alertname": rule["alert"], "monitor": "credit-risk", "job": "driftline",
              "instance": "driftline:9108", **rule["labels"]}
    expected = RECEIVER_OF[rule["labels"]["severity"]]
    proc = route(labels, verify=expected)
    assert proc.returncode == 0 and proc.stdout.strip() == expected, proc.stdout + proc.stderr


def test_amtool_route_verification_fails_on_the_wrong_receiver() -> None:
    """--verify.receivers has teeth: a page expected as a ticket fails."""
    proc = route({"alertname": "DriftlineDown", "severity": "critical"}, verify="tickets")
    assert proc.returncode != 0
    assert route({"alertname": "SomethingElse"}).stdout.strip() == "tickets"  # nothing falls through unseen


def test_alerts_are_grouped_by_monitor() -> None:
    conf = yaml.safe_load(CONFIG.read_text())
    assert conf["route"]["group_by"] == ["monitor"]
    assert all("group_by" not in r for r in conf["route"]["routes"])  # children inherit it


# --- a real Alertmanager -----------------------------------------------------------------

class Notifications(ThreadingHTTPServer):
    """Collects Alertmanager's webhook notifications, by receiver (the URL path)."""

    daemon_threads = True

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.received.append((self.path.strip("/"), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, receiver: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{receiver}"


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[str, Notifications]]:
    """The example config, with its receivers pointed at a local collector (no outbound call) and
    its group_wait shortened; routes, grouping and inhibit rules are untouched."""
    notes = Notifications()
    conf = yaml.safe_load(CONFIG.read_text())
    conf["receivers"] = [{"name": r["name"], "webhook_configs": [{"url": notes.url(r["name"]), "send_resolved": False}]}
                         for r in conf["receivers"]]
    for r in [conf["route"], *conf["route"]["routes"]]:
        r["group_wait"] = "1s"
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(conf))
    port = free_port()
    log = open(tmp_path / "alertmanager.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([tool("prometheus-alertmanager"), f"--config.file={path}",
                             f"--storage.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address=", "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(url + "/-/ready") is not None or proc.poll() is not None, 30,
                   what="alertmanager to be ready")
        assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()
        yield url, notes
    finally:
        proc.terminate()
        proc.wait(15)
        notes.shutdown()
        log.close()


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.read()  # type: ignore[no-any-return]
    except (urllib.error.URLError, OSError):
        return None


def driftline_alert(name: str, instance: str, **labels: str) -> dict[str, Any]:
    """An alert as Prometheus sends it, with the severity its rule gives it."""
    [severity] = [r["labels"]["severity"] for r in alert_rules() if r["alert"] == name]
    now = datetime.now(UTC)
    return {"labels": {"alertname": name, "severity": severity, "job": "driftline", "instance": instance, **labels},
            "annotations": {"summary": f"{name} {labels}"},
            "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=10)).isoformat()}


def test_real_alertmanager_pages_tickets_groups_by_monitor_and_inhibits(
        alertmanager: tuple[str, Notifications]) -> None:
    url, notes = alertmanager
    alerts = [
        driftline_alert("DriftlineDown", "driftline-a:9108"),
        # from the instance that is down: inhibited
        driftline_alert("DriftlineDatasetDriftPersistent", "driftline-a:9108", monitor="credit-risk"),
        driftline_alert("DriftlineNoEvents", "driftline-a:9108", monitor="credit-risk"),
        # another instance, up: its drift opens a ticket, grouped with its missing feature; its
        # other monitor rejecting every event pages
        driftline_alert("DriftlineDatasetDriftPersistent", "driftline-b:9108", monitor="fraud",
                        horizon="5m"),
        driftline_alert("DriftlineFeatureMissing", "driftline-b:9108", monitor="fraud",
                        feature="device_type"),
        driftline_alert("DriftlineRejectingEverything", "driftline-b:9108", monitor="payments"),
        # a per-feature drift of a monitor whose whole dataset drifts in the same horizon: inhibited
        driftline_alert("DriftlineFeatureDriftPersistent", "driftline-b:9108", monitor="fraud",
                        feature="amount", horizon="5m"),
        # the same feature drifting in another horizon is news: a ticket
        driftline_alert("DriftlineFeatureDriftPersistent", "driftline-b:9108", monitor="fraud",
                        feature="amount", horizon="1d"),
        # a warning of a third monitor: a ticket
        driftline_alert("DriftlineEventLagHigh", "driftline-b:9108", monitor="churn"),
    ]
    req = urllib.request.Request(url + "/api/v2/alerts", data=json.dumps(alerts).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200

    def states() -> dict[tuple[str, str], str]:
        body = _get(url + "/api/v2/alerts")
        return {(a["labels"]["alertname"], a["labels"].get("monitor", ""), a["labels"].get("horizon", "")):
                a["status"]["state"] for a in json.loads(body or b"[]")}

    expected = {("DriftlineDown", "", ""): "active",
                ("DriftlineDatasetDriftPersistent", "credit-risk", ""): "suppressed",
                ("DriftlineNoEvents", "credit-risk", ""): "suppressed",
                ("DriftlineDatasetDriftPersistent", "fraud", "5m"): "active",
                ("DriftlineFeatureMissing", "fraud", ""): "active",
                ("DriftlineFeatureDriftPersistent", "fraud", "5m"): "suppressed",
                ("DriftlineFeatureDriftPersistent", "fraud", "1d"): "active",
                ("DriftlineRejectingEverything", "payments", ""): "active",
                ("DriftlineEventLagHigh", "churn", ""): "active"}
    wait_until(lambda: states() == expected, 20, what="the inhibitions to apply")

    def notified() -> dict[tuple[str, str], set[str]]:
        out: dict[tuple[str, str], set[str]] = {}
        for receiver, body in list(notes.received):
            key = (receiver, body["groupLabels"].get("monitor", ""))
            out.setdefault(key, set()).update(a["labels"]["alertname"] for a in body["alerts"])
        return out

    want = {("pager", ""): {"DriftlineDown"},
            ("pager", "payments"): {"DriftlineRejectingEverything"},
            ("tickets", "fraud"): {"DriftlineDatasetDriftPersistent", "DriftlineFeatureMissing",
                                   "DriftlineFeatureDriftPersistent"},
            ("tickets", "churn"): {"DriftlineEventLagHigh"}}
    wait_until(lambda: notified() == want, 30, what="the notifications")
    time.sleep(1.5)  # nothing else arrives: the inhibited alerts are never notified
    assert notified() == want
    for _receiver, body in notes.received:
        assert body["groupLabels"].keys() <= {"monitor"}
