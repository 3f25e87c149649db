"""`driftline --version` and `driftline_build_info{version}` say which driftline runs: the
version of the installed package, which is the project's."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

from driftline.service.metrics import DriftlineMetrics
from prometheus_client import CollectorRegistry, generate_latest

PROJECT_VERSION = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]


def test_version_is_the_packages() -> None:
    assert version("driftline") == PROJECT_VERSION
    done = subprocess.run([sys.executable, "-m", "driftline.service.cli", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout == f"driftline {PROJECT_VERSION}\n"


def test_build_info_is_one_series_labelled_with_the_version() -> None:
    registry = CollectorRegistry()
    DriftlineMetrics(registry)
    assert registry.get_sample_value("driftline_build_info", {"version": PROJECT_VERSION}) == 1.0
    text = generate_latest(registry).decode()
    lines = [line for line in text.splitlines() if line.startswith("driftline_build_info")]
    assert lines == [f'driftline_build_info{{version="{PROJECT_VERSION}"}} 1.0']
