"""`make demo` does what the README promises: drift on the shifted features, one verified
webhook, and everything it started stopped again."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def fetch(url: str, token: str | None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_demo_shows_drift_on_the_shifted_features_and_a_verified_webhook(tmp_path: Path) -> None:
    # The README's defaults (60 s before the shift, 15 s windows) shortened to keep the suite quick.
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftline.service.demo", "--run-dir", str(tmp_path / "run"), "--shift-after", "15",
         "--window", "5s", "--rate", "300", "--duration", "55", "--shift", "income,debt_to_income,loan_purpose"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "DO_NOT_TRACK": "1"})
    assert proc.stdout is not None
    lines = []
    report = None
    for line in proc.stdout:  # the printed curl line fetches the drifted window's report, as a user would
        lines.append(line)
        m = re.search(r"curl -H 'Authorization: Bearer (\S+)' -o report.html (\S+)", line)
        if m and report is None:
            report = fetch(m.group(2), m.group(1)), fetch(m.group(2), None)
    assert proc.wait(60) == 0, "".join(lines)
    out = "".join(lines)
    assert report is not None, out
    (status, page), (anonymous, _) = report
    assert status == 200 and "income" in page and "loan_purpose" in page and anonymous == 401
    assert "metrics      http://127.0.0.1:" in out and "status API   http://127.0.0.1:" in out
    windows = re.findall(r"dataset drift (YES|no) \(share [0-9.]+\), drifted features: (.*)", out)
    assert ("no", "none") in windows, out
    assert ("YES", "income, debt_to_income, loan_purpose") in windows, out
    verified = re.findall(r"\[receiver\] verified retraining request (msg_\w+) for monitor credit-risk", out)
    assert len(verified) == 1, out
    assert "REJECTED" not in out
    assert "stopped everything the demo started" in out
    # nothing it started is left running
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "run")], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout
