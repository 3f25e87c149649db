"""The service end to end: a real Tansu broker, `driftline run` as a process, a real
webhook receiver verifying with the `standardwebhooks` library.

Windows are count windows on a one-partition topic, so which events form each window is
known exactly and every assertion is deterministic.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from driftline.service.demo.broker import LocalBroker
from driftline.service.demo.receiver import WebhookReceiver
from driftline.service.demo.traffic import DEFAULT_SHIFT, FEATURES, TrafficModel, encode, monitor_config
from driftline.service.reference import load_profile

from tests.helpers import ServiceProcess, produce, wait_until

pytestmark = pytest.mark.integration

WINDOW = 1000
METRICS_OF_THE_CONTRACT = (
    "driftline_feature_drift_score", "driftline_feature_drift_detected", "driftline_dataset_drift_share",
    "driftline_dataset_drift_detected", "driftline_feature_missing_ratio", "driftline_window_events",
    "driftline_events_consumed_total", "driftline_events_invalid_total", "driftline_serving_latency_seconds_bucket",
    "driftline_event_lag_seconds_bucket", "driftline_consumer_lag_messages",
    "driftline_evaluation_duration_seconds_bucket", "driftline_last_evaluation_timestamp_seconds",
    "driftline_retrain_triggers_total", "driftline_webhook_deliveries_total",
)


def start(services: list[ServiceProcess], tmp_path: Path, broker: LocalBroker, topic: str, reference: Path,
          receiver: WebhookReceiver | None = None, secret: str | None = None, **overrides: Any) -> ServiceProcess:
    conf = monitor_config("credit-risk", broker.bootstrap, topic, reference,
                          window={"type": "count", "size": WINDOW, "min_events": 200}, **overrides)
    env = {}
    if receiver is not None:
        conf["retrain"] = {"webhook_url": receiver.url, "secret_env": "TEST_WEBHOOK_SECRET",
                           "consecutive_windows": 2, "cooldown": "1h", "initial_backoff": 0.2}
        env["TEST_WEBHOOK_SECRET"] = secret or ""
    svc = ServiceProcess(tmp_path, [conf], env)
    services.append(svc)
    return svc.start()


def windows_done(svc: ServiceProcess, n: int) -> bool:
    done = sum(svc.sample("driftline_windows_total", monitor="credit-risk", status=s) or 0
               for s in ("evaluated", "insufficient_data"))
    return done >= n


def drifted(svc: ServiceProcess) -> set[str]:
    w = svc.monitor("credit-risk")["latest_window"]
    return set(w["drifted_features"])


def test_every_contract_metric_is_exported_from_startup(services, tmp_path, broker, topic, reference_path,
                                                         receiver, webhook_secret) -> None:
    svc = start(services, tmp_path, broker, topic, reference_path, receiver, webhook_secret)
    wait_until(lambda: "driftline_consumer_lag_messages{" in svc.metrics_text(), 20, what="consumer lag series")
    text = svc.metrics_text()
    for name in METRICS_OF_THE_CONTRACT:
        assert f'{name}{{' in text and 'monitor="credit-risk"' in text, f"{name} missing from /metrics"
    for feature in FEATURES:
        assert svc.sample("driftline_feature_drift_detected", monitor="credit-risk", feature=feature) == 0.0
        assert svc.sample("driftline_feature_missing_ratio", monitor="credit-risk", feature=feature) == 0.0
    assert svc.sample("driftline_dataset_drift_detected", monitor="credit-risk") == 0.0
    status, body = svc.get("/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    assert svc.get("/healthz")[0] == 200


def test_stable_traffic_shows_no_drift_and_sends_no_webhook(services, tmp_path, broker, topic, reference_path,
                                                             receiver, webhook_secret) -> None:
    svc = start(services, tmp_path, broker, topic, reference_path, receiver, webhook_secret)
    produce(broker.bootstrap, topic, encode(TrafficModel(seed=11).events(4 * WINDOW)))
    wait_until(lambda: windows_done(svc, 4), 60, what="four windows")
    m = svc.monitor("credit-risk")["latest_evaluated_window"]
    assert m["events"] == WINDOW and m["dataset_drift"] is False and m["drifted_features"] == []
    assert svc.sample("driftline_dataset_drift_detected", monitor="credit-risk") == 0.0
    assert svc.sample("driftline_events_consumed_total", monitor="credit-risk") == 4 * WINDOW
    time.sleep(1.5)  # a webhook, were one due, would be out by now (dispatcher runs every 0.5 s)
    assert receiver.state.deliveries == []
    assert svc.sample("driftline_retrain_triggers_total", monitor="credit-risk", outcome="requested") == 0.0


def test_shift_drifts_exactly_the_shifted_features_and_one_verified_webhook_then_cooldown(
        services, tmp_path, broker, topic, reference_path, receiver, webhook_secret) -> None:
    svc = start(services, tmp_path, broker, topic, reference_path, receiver, webhook_secret)
    stable, shifted = TrafficModel(seed=21), TrafficModel(seed=22, shift=DEFAULT_SHIFT)
    produce(broker.bootstrap, topic, encode(stable.events(2 * WINDOW)))
    wait_until(lambda: windows_done(svc, 2), 60, what="two stable windows")
    assert drifted(svc) == set()

    produce(broker.bootstrap, topic, encode(shifted.events(WINDOW)))
    wait_until(lambda: windows_done(svc, 3), 60, what="the first shifted window")
    assert drifted(svc) == set(DEFAULT_SHIFT)
    assert receiver.state.deliveries == []  # one drifted window is not enough (consecutive_windows: 2)

    produce(broker.bootstrap, topic, encode(shifted.events(WINDOW)))
    wait_until(lambda: receiver.state.unique_verified(), 30, what="a verified webhook")
    assert drifted(svc) == set(DEFAULT_SHIFT)
    for feature in FEATURES:
        expected = 1.0 if feature in DEFAULT_SHIFT else 0.0
        assert svc.sample("driftline_feature_drift_detected", monitor="credit-risk", feature=feature) == expected
    assert svc.sample("driftline_dataset_drift_detected", monitor="credit-risk") == 1.0
    assert svc.sample("driftline_dataset_drift_share", monitor="credit-risk") == pytest.approx(3 / 12)

    [delivery] = receiver.state.deliveries
    assert delivery.verified
    data = delivery.body["data"]
    assert delivery.body["type"] == "driftline.retrain.requested"
    assert data["id"] == delivery.webhook_id and delivery.headers["webhook-id"].startswith("msg_")
    assert data["monitor"] == "credit-risk"
    assert data["window"]["events"] == WINDOW
    assert {f["feature"] for f in data["drifted_features"]} == set(DEFAULT_SHIFT)
    for f in data["drifted_features"]:
        assert f["method"] in ("wasserstein", "jensenshannon") and f["score"] >= f["threshold"]
    assert data["dataset_drift_share"] == pytest.approx(0.25)
    assert data["reference"]["content_hash"] == load_profile(reference_path).content_hash
    assert data["model_version"] == "credit-risk-3.2.0"
    assert svc.sample("driftline_webhook_deliveries_total", monitor="credit-risk", status="2xx") == 1.0

    # Drift persists for two more windows: due again, but inside the cooldown.
    produce(broker.bootstrap, topic, encode(shifted.events(2 * WINDOW)))
    wait_until(lambda: svc.sample("driftline_retrain_triggers_total", monitor="credit-risk",
                                  outcome="suppressed_cooldown") == 1.0, 60, what="a suppressed trigger")
    time.sleep(1.5)
    assert len(receiver.state.deliveries) == 1
    assert svc.sample("driftline_retrain_triggers_total", monitor="credit-risk", outcome="requested") == 1.0


MALFORMED: dict[str, list[bytes]] = {
    "invalid_json": [b"{not json", b"", b"[" * 3000],  # the last: nested deeper than the parser allows
    "invalid_encoding": [b'{"ts": 1, "features": {"region": "\xff\xfe"}}'],
    "not_an_object": [b"[1, 2, 3]", b'"a string"', b"42", b"null"],
    "wrong_type": [b'{"ts": %d, "features": {"age": "forty"}}', b'{"ts": %d, "features": {"region": [1]}}',
                   b'{"ts": %d, "features": {"income": true}}'],
    "non_finite": [b'{"ts": %d, "features": {"age": NaN}}', b'{"ts": %d, "features": {"income": Infinity}}',
                   b'{"ts": %d, "features": {"income": -Infinity}}', b'{"ts": %d, "features": {"age": 1e999}}'],
    "missing_field": [b'{"features": {"age": 30}}'],
    "unknown_field": [b'{"ts": %d, "features": {"age": 30, "ssn": "123"}}', b'{"ts": %d, "debug": 1}'],
    "bad_timestamp": [b'{"ts": "yesterday", "features": {"age": 30}}', b'{"ts": 99999999999, "features": {}}'],
    "oversized": [b'{"ts": %d, "features": {"region": "' + b"x" * 5000 + b'"}}'],
}


def test_malformed_events_are_counted_by_reason_and_the_service_goes_on(
        services, tmp_path, broker, topic, reference_path) -> None:
    conf_event = monitor_config("x", "b", "t", reference_path)["event"]
    svc = start(services, tmp_path, broker, topic, reference_path, event={**conf_event, "max_event_bytes": 4096})
    now = int(time.time())
    bad = [(v % now if b"%d" in v else v) for values in MALFORMED.values() for v in values]
    good = encode(TrafficModel(seed=5).events(2 * WINDOW))
    # interleave: garbage before, between and after valid events
    stream = bad + good[:WINDOW] + bad + good[WINDOW:] + bad
    produce(broker.bootstrap, topic, stream)
    wait_until(lambda: svc.sample("driftline_events_consumed_total", monitor="credit-risk") == len(stream), 60,
               what="every record consumed")
    wait_until(lambda: windows_done(svc, 2), 30, what="two windows of the valid events")
    for reason, values in MALFORMED.items():
        assert svc.sample("driftline_events_invalid_total", monitor="credit-risk", reason=reason) == 3 * len(values), \
            reason
    w = svc.monitor("credit-risk")["latest_window"]
    assert w["status"] == "evaluated" and w["events"] == WINDOW and w["drifted_features"] == []
    # A missing feature is not an invalid event: it shows in the missing ratio.
    ratios = {f["feature"]: f["missing_ratio"] for f in w["features"]}
    assert 0.45 < ratios["months_since_delinquency"] < 0.65 and 0.0 < ratios["employment_years"] < 0.1
    assert ratios["age"] == 0.0
    assert svc.sample("driftline_feature_missing_ratio", monitor="credit-risk",
                      feature="months_since_delinquency") == pytest.approx(ratios["months_since_delinquency"])


@pytest.mark.parametrize("producer_args", [
    {"compression_type": "gzip"}, {"compression_type": "snappy"}, {"compression_type": "lz4"},
    {"compression_type": "zstd"}, {"compression_type": None},
    {"compression_type": None, "acks": "all", "batch_size": 1, "linger_ms": 0},
], ids=["gzip", "snappy", "lz4", "zstd", "none", "unbatched"])
def test_records_from_every_standard_producer_setting_are_read(services, tmp_path, broker, topic, reference_path,
                                                               producer_args) -> None:
    svc = start(services, tmp_path, broker, topic, reference_path)
    n = WINDOW + 250
    produce(broker.bootstrap, topic, encode(TrafficModel(seed=9).events(n)), **producer_args)
    wait_until(lambda: svc.sample("driftline_events_consumed_total", monitor="credit-risk") == n, 60,
               what="every record consumed")
    wait_until(lambda: windows_done(svc, 1), 20, what="one window")
    invalid = sum(v for (name, _), v in svc.samples().items() if name == "driftline_events_invalid_total")
    assert invalid == 0
    assert svc.monitor("credit-risk")["open_window_events"] == n - WINDOW


def test_reference_reload_requires_the_bearer_token(services, tmp_path, broker, topic, reference_path,
                                                    training_data) -> None:
    import shutil
    import urllib.request

    import pandas as pd
    from driftline.service.reference import build_profile, save_profile

    ref = tmp_path / "ref.dlref"
    shutil.copy(reference_path, ref)
    conf = monitor_config("credit-risk", broker.bootstrap, topic, ref, window={"type": "count", "size": WINDOW})
    svc = ServiceProcess(tmp_path, [conf], {"TEST_API_TOKEN": "s3cret-token"},
                         service={"api_token_env": "TEST_API_TOKEN"})
    services.append(svc)
    svc.start()
    old_hash = svc.monitor("credit-risk")["reference"]["content_hash"]
    # retrain on half the data: a new reference with a new content hash
    frame = pd.read_parquet(training_data)
    half = tmp_path / "half.parquet"
    frame.iloc[: len(frame) // 2].to_parquet(half)
    save_profile(build_profile(half), ref)

    def post(token: str | None) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(f"{svc.api}/api/v1/monitors/credit-risk/reference/reload", method="POST",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert post(None)[0] == 401
    assert post("wrong")[0] == 401
    assert svc.monitor("credit-risk")["reference"]["content_hash"] == old_hash
    status, body = post("s3cret-token")
    assert status == 200 and body["reloaded"] is True
    new_hash = svc.monitor("credit-risk")["reference"]["content_hash"]
    assert new_hash != old_hash and new_hash == load_profile(ref).content_hash
    assert "s3cret-token" not in svc.log() and "s3cret-token" not in svc.metrics_text()


def test_several_horizons_from_one_stream_are_labelled_in_metrics_and_the_api(
        services, tmp_path, broker, topic, reference_path) -> None:
    # A replayed backlog: event times an hour ago, 10 s buckets, 30 s and 60 s horizons.
    start = (int(time.time()) // 60 - 60) * 60
    conf = monitor_config("credit-risk", broker.bootstrap, topic, reference_path,
                          window={"type": "time", "size": "10s", "allowed_lateness": "1s", "min_events": 50,
                                  "horizons": ["30s", "1m"]})
    svc = ServiceProcess(tmp_path, [conf])
    services.append(svc)
    svc.start()
    events = TrafficModel(seed=31).events(1200)
    for i, e in enumerate(events):
        e["ts"] = start + i * 0.05  # 60 s of traffic, 20 events per second
    events.append({**events[-1], "ts": start + 120.0})  # moves the watermark past every end
    produce(broker.bootstrap, topic, encode(events))
    wait_until(lambda: (svc.sample("driftline_window_events", monitor="credit-risk", horizon="1m") or 0) > 0, 60,
               what="the 1m horizon's window")
    m = svc.monitor("credit-risk")
    assert set(m["horizons"]) == {"10s", "30s", "1m"}
    minute = m["horizons"]["1m"]["latest_window"]
    assert (minute["horizon"], minute["events"], minute["window_start"]) == ("1m", 1200, start)
    half = m["horizons"]["30s"]["latest_window"]
    assert (half["events"], half["window_start"]) == (600, start + 30)
    assert m["latest_window"]["horizon"] == "10s" and m["latest_window"]["events"] == 200
    for horizon in ("10s", "30s", "1m"):
        assert svc.sample("driftline_dataset_drift_detected", monitor="credit-risk", horizon=horizon) == 0.0
        assert svc.sample("driftline_feature_drift_detected", monitor="credit-risk", feature="income",
                          horizon=horizon) == 0.0
