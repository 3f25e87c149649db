"""Fixtures: a real Tansu broker, a real verifying webhook receiver, real training data."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")

from driftline.service.demo.broker import LocalBroker
from driftline.service.demo.receiver import WebhookReceiver
from driftline.service.demo.traffic import write_training_data
from driftline.service.reference import ReferenceProfile, build_profile, save_profile

from tests.helpers import ServiceProcess, new_webhook_secret


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with LocalBroker(log_path=log) as b:
        yield b


@pytest.fixture
def topic(broker: LocalBroker) -> str:
    """A fresh topic with one partition, so event order (and so each window) is known."""
    name = f"serving-{uuid.uuid4().hex[:10]}"
    broker.create_topic(name, partitions=1)
    return name


@pytest.fixture(scope="session")
def training_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_training_data(tmp_path_factory.mktemp("training") / "training.parquet", rows=20_000, seed=1)


@pytest.fixture(scope="session")
def reference_path(training_data: Path) -> Path:
    path = training_data.with_name("credit-risk.dlref")
    save_profile(build_profile(training_data), path)
    return path


@pytest.fixture(scope="session")
def simulated_references(tmp_path_factory: pytest.TempPathFactory) -> dict[int, ReferenceProfile]:
    """Profiles of tests/simulation.py's population, built as `driftline reference build` does: a
    large reference (Evidently picks wasserstein, jensenshannon) and a small one (ks, chisquare, z)."""
    import numpy as np

    from tests.simulation import Population

    d = tmp_path_factory.mktemp("calibration")
    out = {}
    for rows in (20_000, 800):
        Population().frame(rows, np.random.default_rng(rows)).to_parquet(d / f"{rows}.parquet", index=False)
        out[rows] = build_profile(d / f"{rows}.parquet")
    return out


@pytest.fixture
def webhook_secret() -> str:
    return new_webhook_secret()


@pytest.fixture
def receiver(webhook_secret: str) -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(webhook_secret).start()
    yield r
    r.stop()


@pytest.fixture
def services(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[ServiceProcess]]:
    """Services a test starts are stopped after it; their logs are shown when it fails."""
    started: list[ServiceProcess] = []
    yield started
    for s in started:
        s.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for s in started:
            print(f"----- driftline log ({s.log_path}) -----\n{s.log()[-6000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    rep = yield
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep


# what a test needs that `make unit` leaves out: a broker, a `driftline run` process
_SERVERS = {"broker", "topic", "services"}
# files `make unit` leaves out too: each runs the command line on built references, renders
# Evidently's reports or simulates thousands of windows (tens of seconds a test; `make test` runs them)
_SLOW_FILES = {"test_calibration.py", "test_calibration_levels.py", "test_calibration_real_data.py",
               "test_evaluation_vs_evidently.py",
               "test_offline.py", "test_ops_deploy.py", "test_report.py", "test_report_browser.py"}


# the files that take longest in all (`make test PYTEST_ARGS=--durations=0`), longest first: the
# workers take files in collection order (the Makefile turns xdist's own order, by the number of
# tests a file has, off), so these start first and the many short files fill in around them,
# and no long file is left to run alone at the end
_LONGEST_FIRST = ("test_offline.py", "test_evaluation_vs_evidently.py", "test_report.py", "test_resilience.py",
                  "test_e2e.py", "test_crash_count_windows.py", "test_standby.py", "test_fuzz.py", "test_crash.py",
                  "test_demo.py", "test_backlog.py", "test_reference.py", "test_calibration_real_data.py",
                  "test_calibration.py", "test_ops_deploy.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start a broker or a service are `integration` wherever they are, the ones of
    `_SLOW_FILES` are `slow`: `make unit` runs the others (`pytest -m "not integration and not slow"`).
    The files of `_LONGEST_FIRST` come first, in its order."""
    for item in items:
        if _SERVERS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if item.path.name in _SLOW_FILES:
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
