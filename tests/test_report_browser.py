"""A drifted window's report in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, installed by `make ops-tools`) opens it from a server on 127.0.0.1, and
the page must load without a JavaScript error, fetch nothing from elsewhere, draw its plots
and name, as drifted, exactly the features driftline's engine finds drifted."""

from __future__ import annotations

import http.server
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from driftline.service.demo.traffic import DEFAULT_SHIFT
from driftline.service.report import columns_from_result, render_report

from tests.test_offline import traffic
from tests.test_report import offline

# Chromium phones home (updates, sync, field trials, QUIC probes) unless told not to, and
# this machine's network is closed: these flags keep it to the page (a fresh profile each run).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,2000")


class _Pages(http.server.BaseHTTPRequestHandler):
    pages: ClassVar[dict[str, bytes]] = {}  # each test makes its own subclass (the `server` fixture)
    requested: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.requested.append(self.path)
        body = self.pages.get(self.path)
        if body is None:  # favicon and the like: nothing, and no console error for it
            self.send_response(204)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Pages]]]:
    handler = type("Pages", (_Pages,), {"pages": {}, "requested": []})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", handler
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("needs Debian's chromium and chromium-driver: run `make ops-tools`")
    monkeypatch.setenv("SE_AVOID_STATS", "true")  # Selenium's own usage statistics
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=options)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def wait_for(drv: Any, script: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = drv.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {script}")


# Each Plotly chart: an SVG of non-zero size with a trace drawing at least one non-empty shape.
PLOTLY_DRAWN = """
return Array.from(document.querySelectorAll('.js-plotly-plot')).map(p => {
  const svg = p.querySelector('svg.main-svg'); const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  const shapes = Array.from(p.querySelectorAll('.trace path, .trace rect'))
    .filter(s => (s.getAttribute('d') || '').length > 3 || s.getAttribute('width') > 0);
  return [box.width, box.height, p.querySelectorAll('.trace').length, shapes.length];
});"""
# Each canvas (the drift table's small histograms): non-zero size, and not blank.
CANVASES_DRAWN = """
return Array.from(document.querySelectorAll('canvas')).map(c => {
  const blank = document.createElement('canvas'); blank.width = c.width; blank.height = c.height;
  return [c.width, c.height, c.toDataURL() !== blank.toDataURL()];
});"""
# The drift table (the one headed "Data Drift"): the rows of the page shown, as (column, verdict).
DRIFT_ROWS = """
const table = Array.from(document.querySelectorAll('table'))
  .find(t => /Data Drift/.test(t.querySelector('thead') ? t.querySelector('thead').innerText : ''));
if (!table) return null;
const head = Array.from(table.querySelectorAll('thead th')).map(th => th.innerText.trim());
const col = head.indexOf('Column'), verdict = head.indexOf('Data Drift');
return Array.from(table.querySelectorAll('tbody tr')).map(tr => Array.from(tr.children).map(td => td.innerText.trim()))
  .filter(cells => cells.length === head.length).map(cells => [cells[col], cells[verdict]]);"""


def test_a_drifted_windows_report_renders_in_chromium(tmp_path: Path, server: tuple[str, type[_Pages]],
                                                      browser: Any) -> None:
    from selenium.webdriver.common.by import By

    reference, current = traffic(20_000, 3_000, DEFAULT_SHIFT, 41)
    out = offline(tmp_path, reference, current, prediction_column="prediction", drift_share=0.2)  # as the demo's
    assert out.result.dataset_drift
    drifted = {f.feature for f in out.result.drifted_features}  # driftline's engine decides, not this test
    assert drifted
    features, pred, _ = columns_from_result(out.result, "prediction")
    page = render_report(out.window, out.reference, features, drift_share=out.result.drift_share_threshold,
                         prediction=pred, title="credit-risk: a drifted window")
    base, pages = server
    pages.pages["/report"] = page.encode("utf-8")

    browser.get(f"{base}/report")
    columns = len(features) + 1  # the summary draws every column, the prediction too
    wait_for(browser, f"return document.querySelectorAll('.js-plotly-plot .trace').length >= {columns}")
    wait_for(browser, "return document.querySelectorAll('canvas').length > 0")
    time.sleep(1.0)  # let the last frames paint before the screenshot

    # the page as driftline wrote it, and Evidently's report under it
    assert browser.title == "credit-risk: a drifted window"
    assert "3,000 events" in browser.find_element(By.ID, "driftline-notes").text
    assert "Dataset Drift is detected. Dataset drift detection threshold is 0.2" in browser.find_element(
        By.TAG_NAME, "body").text

    # plots: Plotly charts with drawn traces, and the drift table's histograms drawn on canvases
    charts = browser.execute_script(PLOTLY_DRAWN)
    assert len(charts) >= columns
    for width, height, traces, shapes in charts:
        assert width > 0 and height > 0 and traces > 0 and shapes > 0, charts
    canvases = browser.execute_script(CANVASES_DRAWN)
    assert len(canvases) >= 2 * min(10, len(features))  # reference and current, per row shown
    assert all(w > 0 and h > 0 and drawn for w, h, drawn in canvases), canvases

    # the drifted features, by Evidently's table, page after page
    rows: list[list[str]] = []
    for _ in range(len(features)):
        shown = wait_for(browser, DRIFT_ROWS)
        rows += shown
        more = browser.find_elements(By.CSS_SELECTOR, "button[aria-label='Next Page']")
        if not more or not more[0].is_enabled():
            break
        first = shown[0][0]
        more[0].click()
        wait_for(browser, f"const r = (function(){{{DRIFT_ROWS}}})(); return r && r.length && r[0][0] !== {first!r};")
    assert sorted(name for name, _ in rows) == sorted(f.name for f in features)
    assert {name for name, verdict in rows if verdict == "Detected"} == drifted
    assert all(verdict in ("Detected", "Not Detected") for _, verdict in rows)

    # a row opens onto its own distribution plot
    browser.execute_script("document.querySelector(\"button[aria-label='First Page']\").click()")
    wait_for(browser, f"const r = (function(){{{DRIFT_ROWS}}})(); return r && r.length && r[0][1] === 'Detected';")
    before = len(browser.execute_script(PLOTLY_DRAWN))
    browser.find_elements(By.CSS_SELECTOR, "button[aria-label='Detail panel visibility toggle']")[0].click()
    wait_for(browser, f"return document.querySelectorAll('.js-plotly-plot').length > {before}")
    time.sleep(0.5)
    opened = browser.execute_script(PLOTLY_DRAWN)
    assert all(w > 0 and h > 0 and t > 0 and s > 0 for w, h, t, s in opened[before:] or [[0, 0, 0, 0]]), opened

    # no JavaScript error, and nothing fetched from anywhere but the test's server
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    # (chrome:// is the browser's own new-tab page, loaded before ours, never the network)
    fetched = [url for url in _requests(browser)
               if not url.startswith((base + "/", "data:", "blob:", "about:", "chrome://"))]
    assert fetched == []
    assert pages.requested[0] == "/report"

    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "report.png"
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("DRIFTLINE_REPORT_SCREENSHOT")  # how docs/report-drifted-window.png is made
    if keep:
        shutil.copyfile(shot, keep)


def _requests(browser: Any) -> list[str]:
    import json

    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
