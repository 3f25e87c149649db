"""Test helpers: the real service process, a producer, polling until a condition holds."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from driftline.service.demo.broker import free_port
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def wait_until(check: Callable[[], T], timeout: float, interval: float = 0.25, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def produce(bootstrap: str, topic: str, values: Iterable[bytes], partition: int | None = None,
            **producer_args: Any) -> int:
    from kafka import KafkaProducer

    producer = KafkaProducer(**{"bootstrap_servers": bootstrap, "max_block_ms": 15000, "linger_ms": 5,
                                **producer_args})
    n = 0
    for v in values:
        producer.send(topic, v, partition=partition)
        n += 1
    producer.flush(30)
    producer.close(10)
    return n


class ServiceProcess:
    """`driftline run --config FILE` as a user runs it, on a free port."""

    def __init__(self, workdir: Path, monitors: list[dict[str, Any]], env: dict[str, str] | None = None,
                 service: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config_path = workdir / f"config-{self.port}.yaml"
        self.log_path = workdir / f"driftline-{self.port}.log"
        conf = {"service": {"listen": f"127.0.0.1:{self.port}", "state_path": str(workdir / "state.sqlite"),
                            **(service or {})}, "monitors": monitors}
        self.config_path.write_text(yaml.safe_dump(conf, sort_keys=False))
        self.env = {**os.environ, "DO_NOT_TRACK": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> ServiceProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "driftline.service.cli", "run", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env)
        wait_until(lambda: self._answers("/healthz") or self._exited(), 30, what="driftline to listen")
        if self.proc.poll() is not None:
            raise AssertionError(f"driftline exited with {self.proc.returncode}:\n{self.log()}")
        if wait_ready:
            wait_until(lambda: self._answers("/readyz"), 60, what="/readyz to answer 200")
        return self

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def _answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.api + path, timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.api + path, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def monitor(self, name: str) -> dict[str, Any]:
        status, body = self.get(f"/api/v1/monitors/{name}")
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    def metrics_text(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200
        return body.decode()

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for family in text_string_to_metric_families(self.metrics_text()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def sample(self, name: str, **labels: str) -> float | None:
        """The value of the one series of `name` whose labels include these (None if none)."""
        want = set(labels.items())
        found = [v for (n, lab), v in self.samples().items() if n == name and want <= set(lab)]
        assert len(found) <= 1, f"{len(found)} series of {name} match {labels}"
        return found[0] if found else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"driftline did not stop within {timeout}s of SIGTERM") from None
