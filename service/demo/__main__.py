"""`make demo`: driftline on an embedded default, everything local, Ctrl-C stops it all.

Starts a Tansu broker, a webhook receiver that verifies signatures, the driftline service
and a producer of credit-risk serving traffic; after --shift-after seconds the producer
shifts some features, and driftline reports exactly those as drifted and asks for
retraining once drift persists for two windows.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .broker import LocalBroker, free_port, wait_for_port
from .traffic import DEFAULT_SHIFT, FEATURES, TrafficModel, encode, monitor_config, write_training_data

TOPIC = "credit-risk-serving"
MONITOR = "credit-risk"
DEMO_REPORTS = 60  # windows whose drill-down report stays available (10 minutes of 10 s windows)


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


class Producer(threading.Thread):
    def __init__(self, bootstrap: str, rate: float, shift_after: float, shift: tuple[str, ...]) -> None:
        super().__init__(name="producer", daemon=True)
        self.bootstrap, self.rate, self.shift_after, self.shift = bootstrap, rate, shift_after, shift
        self.stop_event = threading.Event()
        self.sent = 0

    def run(self) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap, compression_type="lz4", linger_ms=20,
                                 max_block_ms=10000)
        model = TrafficModel(seed=42)
        started = time.monotonic()
        tick = 0.25
        while not self.stop_event.is_set():
            if not model.shift and time.monotonic() - started >= self.shift_after:
                model.shift = self.shift
                say(f"producer: shifting {', '.join(self.shift)} now (after {self.shift_after:.0f}s)")
            batch = max(1, round(self.rate * tick))
            for value in encode(model.events(batch)):
                producer.send(TOPIC, value)
            self.sent += batch
            self.stop_event.wait(tick)
        producer.flush(5)
        producer.close(5)


def status_line(api: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{api}/api/v1/monitors/{MONITOR}", timeout=2) as resp:
            m = json.load(resp)
    except OSError:
        return None
    w = m.get("latest_window")
    if not w:
        return f"waiting for the first window to close ({m['open_window_events']} events so far)"
    drifted = ", ".join(w["drifted_features"]) or "none"
    return (f"window of {w['events']} events: dataset drift {'YES' if w['dataset_drift'] else 'no'} "
            f"(share {w['drift_share']:.2f}), drifted features: {drifted}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m driftline.service.demo", description=__doc__)
    p.add_argument("--run-dir", type=Path, default=Path("demo-run"), help="where data, config and logs go")
    p.add_argument("--shift-after", type=float, default=60.0, help="seconds before the producer shifts features")
    p.add_argument("--shift", default=",".join(DEFAULT_SHIFT), help=f"features to shift, from: {', '.join(FEATURES)}")
    p.add_argument("--rate", type=float, default=200.0, help="events per second")
    p.add_argument("--window", default="10s", help="window size")
    p.add_argument("--duration", type=float, default=None, help="stop by itself after this many seconds")
    p.add_argument("--port", type=int, default=None, help="driftline's HTTP port (default: a free one)")
    args = p.parse_args(argv)
    shift = tuple(s.strip() for s in args.shift.split(",") if s.strip())
    TrafficModel(shift=shift)  # validate names before starting anything

    run = args.run_dir.resolve()
    run.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    broker = LocalBroker(log_path=run / "broker.log")
    producer: Producer | None = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        say(f"generating training data and its reference profile in {run}")
        train = write_training_data(run / "training.parquet", rows=50_000)
        ref = run / "credit-risk.dlref"
        subprocess.run([sys.executable, "-m", "driftline.service.cli", "reference", "build", "--data", str(train),
                        "--out", str(ref), "--quiet"], check=True, stdout=subprocess.DEVNULL)

        broker.start()
        broker.create_topic(TOPIC, partitions=3)
        say(f"Tansu broker on {broker.bootstrap}, topic {TOPIC} (3 partitions)")

        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        token = secrets.token_urlsafe(18)  # the API's bearer token: reports show serving data
        env = {**os.environ, "DRIFTLINE_WEBHOOK_SECRET": secret, "DRIFTLINE_API_TOKEN": token, "DO_NOT_TRACK": "1"}
        receiver_port = free_port()
        receiver_log = open(run / "receiver.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(
            [sys.executable, "-u", "-m", "driftline.service.demo.receiver", "--port", str(receiver_port)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True))
        threading.Thread(target=_tee, args=(procs[-1], receiver_log), daemon=True).start()
        wait_for_port("127.0.0.1", receiver_port, 15)

        port = args.port or free_port()
        config: dict[str, Any] = {
            "service": {"listen": f"127.0.0.1:{port}", "state_path": str(run / "state.sqlite"),
                        "api_token_env": "DRIFTLINE_API_TOKEN",
                        # the printed report link must still work when you get to it: the default
                        # (10 windows) is under two minutes of 10 s windows
                        "history": {"reports": DEMO_REPORTS}},
            "monitors": [monitor_config(
                MONITOR, broker.bootstrap, TOPIC, ref,
                kafka={"auto_offset_reset": "latest"},
                window={"type": "time", "size": args.window, "allowed_lateness": "2s", "min_events": 200},
                retrain={"webhook_url": f"http://127.0.0.1:{receiver_port}/retrain",
                         "secret_env": "DRIFTLINE_WEBHOOK_SECRET", "consecutive_windows": 2, "cooldown": "10m"})],
        }
        cfg = run / "config.yaml"
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        service_log = open(run / "driftline.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen([sys.executable, "-m", "driftline.service.cli", "run", "--config", str(cfg)],
                                      env=env, stdout=service_log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        wait_for_port("127.0.0.1", port, 30)
        api = f"http://127.0.0.1:{port}"
        _wait_ready(api, procs[-1], 60)

        producer = Producer(broker.bootstrap, args.rate, args.shift_after, shift)
        producer.start()
        say("driftline is running. Look at:")
        say(f"  metrics      {api}/metrics")
        say(f"  status API   {api}/api/v1/monitors")
        say(f"  history      {api}/api/v1/monitors/{MONITOR}/windows")
        say(f"  readiness    {api}/readyz")
        say(f"  config       {cfg}")
        say(f"  logs         {run}/driftline.log, {run}/receiver.log")
        say(f"producer: {args.rate:.0f} events/s; {', '.join(shift)} shift after {args.shift_after:.0f}s. "
            "Ctrl-C stops everything.")
        started, last, last_said, shown = time.monotonic(), None, 0.0, False
        while not stop.is_set():
            if args.duration is not None and time.monotonic() - started >= args.duration:
                break
            for proc in procs:
                if proc.poll() is not None:
                    say(f"a process exited unexpectedly ({' '.join(map(str, proc.args))}, "  # type: ignore[arg-type]
                        f"code {proc.returncode}); stopping")
                    return 1
            line = status_line(api)
            waiting = line is not None and line.startswith("waiting")
            if line and line != last and (not waiting or time.monotonic() - last_said >= 5):
                say(line)
                last, last_said = line, time.monotonic()
            if not shown and line and "dataset drift YES" in line:
                shown = _show_report(api, token)
            stop.wait(1.0)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        say("stopping")
        if producer is not None:
            producer.stop_event.set()
            producer.join(10)
        for proc in reversed(procs):
            _stop(proc)
        broker.stop()
        say("stopped everything the demo started")


def _show_report(api: str, token: str) -> bool:
    """Print the command that fetches the latest drifted window's drill-down report."""
    try:
        with urllib.request.urlopen(f"{api}/api/v1/monitors/{MONITOR}", timeout=2) as resp:
            w = json.load(resp)["latest_window"]
    except (OSError, KeyError, TypeError):
        return False
    if not w or not w.get("report"):
        return False
    say("the drifted window's drill-down report (Evidently's HTML, rendered on demand in a few seconds; "
        f"kept while the window is among the latest {DEMO_REPORTS}, the history lists which are):")
    say(f"  curl -H 'Authorization: Bearer {token}' -o report.html {api}{w['report']}")
    return True


def _tee(proc: subprocess.Popen[bytes], log: Any) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        log.flush()
        sys.stdout.write(line.decode(errors="replace"))
        sys.stdout.flush()


def _wait_ready(api: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"driftline exited with code {proc.returncode}; see its log")
        try:
            with urllib.request.urlopen(f"{api}/readyz", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    say("driftline is not ready yet (partitions not assigned); going on")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(12)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


if __name__ == "__main__":
    sys.exit(main())
