"""`make demo` does what the README promises: drift on the shifted features, one verified
webhook, and everything it started stopped again."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_shows_drift_on_the_shifted_features_and_a_verified_webhook(tmp_path: Path) -> None:
    # The README's defaults (60 s before the shift, 15 s windows) shortened to keep the suite quick.
    res = subprocess.run(
        [sys.executable, "-m", "driftline.service.demo", "--run-dir", str(tmp_path / "run"), "--shift-after", "15",
         "--window", "5s", "--rate", "300", "--duration", "55", "--shift", "income,debt_to_income,loan_purpose"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "DO_NOT_TRACK": "1"})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
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
