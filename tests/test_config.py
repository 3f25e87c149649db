"""A bad configuration stops startup with a message naming every bad field."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from driftline.service.config import ConfigError, load_settings
from driftline.service.demo.traffic import monitor_config

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def good(reference: Path) -> dict[str, Any]:
    mon = monitor_config("credit-risk", "127.0.0.1:9092", "serving", reference)
    mon["retrain"] = {"webhook_url": "http://127.0.0.1:9/retrain", "secret_env": "WH_SECRET"}
    return {"service": {"listen": "127.0.0.1:9108"}, "monitors": [mon]}


def problems(tmp_path: Path, conf: Any, env: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "driftline.yaml"
    path.write_text(conf if isinstance(conf, str) else yaml.safe_dump(conf))
    try:
        load_settings(path, {"WH_SECRET": SECRET} if env is None else env)
    except ConfigError as exc:
        return exc.problems
    return []


def test_the_demo_configuration_is_valid(tmp_path: Path, reference_path: Path) -> None:
    assert problems(tmp_path, good(reference_path)) == []


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda c: c["monitors"][0]["window"].update(size="ten minutes"),
     "monitors[0].window.size: Value error, expected a duration"),
    (lambda c: c["monitors"][0]["window"].update(type="count", size=2.5),
     "monitors[0].window.size: Value error, a count window's size is a whole number"),
    (lambda c: c["monitors"][0]["window"].update(min_events=0),
     "monitors[0].window.min_events: Input should be greater than or equal to 1"),
    (lambda c: c["monitors"][0]["kafka"].pop("topic"), "monitors[0].kafka.topic: Field required"),
    (lambda c: c["monitors"][0]["kafka"].update(bootstrap_servers=[]), "monitors[0].kafka.bootstrap_servers:"),
    (lambda c: c["monitors"][0]["kafka"].update(dead_letter_max_pending_bytes=65536),
     "monitors[0].kafka.dead_letter_max_pending_bytes: Input should be greater than or equal to 1048576"),
    (lambda c: c["monitors"][0]["kafka"].update(security_protocol="SASL_SSL"),
     "monitors[0].kafka: Value error, security_protocol SASL_SSL needs sasl_mechanism, sasl_username_env"),
    (lambda c: c["monitors"][0]["event"]["features"]["age"].update(method="kolmogorov"),
     "monitors[0].event.features.age.method: Value error, unknown drift method 'kolmogorov'"),
    (lambda c: c["monitors"][0]["drift"].update(drift_share=1.5),
     "monitors[0].drift.drift_share: Input should be less than or equal to 1"),
    (lambda c: c["monitors"][0]["retrain"].update(webhook_url="ftp://x"), "monitors[0].retrain.webhook_url:"),
    (lambda c: c["monitors"][0].update(colour="blue"), "monitors[0].colour: unknown field"),
    (lambda c: c["service"].update(listen="localhost"), "service.listen: Value error, expected host:port"),
    (lambda c: c["monitors"].append(copy.deepcopy(c["monitors"][0])),
     "monitors[1].name: monitor name 'credit-risk' is used twice"),
    (lambda c: c["monitors"][0]["event"].pop("event_time"),
     "monitors[0].event.event_time: time windows need the event time's path"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_each_bad_field_is_named(tmp_path: Path, reference_path: Path, edit: Any, expected: str) -> None:
    conf = good(reference_path)
    edit(conf)
    found = problems(tmp_path, conf)
    assert any(p.replace("Value error, ", "").startswith(expected.replace("Value error, ", "")) for p in found), found


def test_every_error_is_reported_at_once(tmp_path: Path, reference_path: Path) -> None:
    conf = good(reference_path)
    conf["monitors"][0]["window"]["size"] = "soon"
    conf["monitors"][0]["kafka"].pop("group_id")
    conf["monitors"][0]["drift"]["method"] = "nope"
    found = problems(tmp_path, conf)
    assert {p.split(":")[0] for p in found} == {"monitors[0].window.size", "monitors[0].kafka.group_id",
                                                "monitors[0].drift.method"}


def test_secrets_come_from_the_environment(tmp_path: Path, reference_path: Path) -> None:
    assert problems(tmp_path, good(reference_path), env={}) == [
        "monitors[0].retrain.secret_env: environment variable WH_SECRET is not set"]
    assert problems(tmp_path, good(reference_path), env={"WH_SECRET": "hunter2"}) == [
        "monitors[0].retrain.secret_env: environment variable WH_SECRET: "
        "a webhook secret is 'whsec_' followed by base64 (24 to 64 random bytes)"]
    conf = good(reference_path)
    conf["monitors"][0]["retrain"]["secret"] = SECRET  # a secret in the file is refused outright
    assert problems(tmp_path, conf) == ["monitors[0].retrain.secret: unknown field"]


def test_yaml_errors_name_the_line(tmp_path: Path) -> None:
    found = problems(tmp_path, "monitors:\n  - name: a\n    kafka: [unclosed\n")
    assert len(found) == 1 and "not valid YAML (line" in found[0]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "driftline.service.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={"PATH": "/usr/bin:/bin", "DO_NOT_TRACK": "1", **(env or {})})


def test_check_prints_every_error_with_its_location_and_exits_nonzero(tmp_path: Path, reference_path: Path) -> None:
    conf = good(reference_path)
    conf["monitors"][0]["window"]["size"] = "-5m"
    conf["monitors"][0]["event"]["features"]["age"]["threshold"] = "high"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(conf))
    res = run_cli("check", "--config", str(path), env={"WH_SECRET": SECRET})
    assert res.returncode == 1
    assert "monitors[0].window.size:" in res.stderr
    assert "monitors[0].event.features.age.threshold:" in res.stderr

    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump(good(reference_path)))
    res = run_cli("check", "--config", str(ok), env={"WH_SECRET": SECRET})
    assert res.returncode == 0, res.stderr
    assert "OK (1 monitor)" in res.stdout


def test_check_finds_features_the_reference_does_not_have(tmp_path: Path, reference_path: Path) -> None:
    conf = good(reference_path)
    conf["monitors"][0]["event"]["features"]["zip_code"] = {"path": "features.zip_code"}
    conf["monitors"][0]["event"]["features"]["age"]["type"] = "categorical"
    conf_missing_ref = good(tmp_path / "nowhere.dlref")
    for c, expected in ((conf, "monitors[0].event.features."),
                        (conf_missing_ref, "monitors[0].reference.path:")):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(c))
        res = run_cli("check", "--config", str(path), env={"WH_SECRET": SECRET})
        assert res.returncode == 1 and expected in res.stderr, res.stderr


def test_run_refuses_to_start_on_a_bad_config(tmp_path: Path, reference_path: Path) -> None:
    conf = good(reference_path)
    conf["monitors"][0]["window"]["size"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(conf))
    res = run_cli("run", "--config", str(path), env={"WH_SECRET": SECRET})
    assert res.returncode == 1
    assert "monitors[0].window.size: must be greater than zero" in res.stderr
    assert "not starting" in res.stderr

    res = run_cli("run", "--config", str(path))  # and without the secret: both problems listed
    assert "monitors[0].retrain.secret_env: environment variable WH_SECRET is not set" in res.stderr


def test_the_documented_example_configuration_is_valid(tmp_path: Path, reference_path: Path) -> None:
    example = yaml.safe_load((Path(__file__).parents[1] / "deploy" / "driftline.example.yaml").read_text())
    example["monitors"][0]["reference"]["path"] = str(reference_path)
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(example))
    env = {"WH_SECRET": SECRET, "DRIFTLINE_WEBHOOK_SECRET": SECRET, "KAFKA_USERNAME": "u", "KAFKA_PASSWORD": "p",
           "DRIFTLINE_API_TOKEN": "t"}
    res = run_cli("check", "--config", str(path), env=env)
    assert res.returncode == 0, res.stderr
    res = run_cli("check", "--config", str(path), env={"DRIFTLINE_WEBHOOK_SECRET": SECRET})
    assert res.returncode == 1
    assert "monitors[0].kafka.sasl_password_env: environment variable KAFKA_PASSWORD is not set" in res.stderr


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda m: m["event"]["features"]["region"].update(method="ks"),
     "monitors[0].event.features.region.method: ks applies to numerical columns, and region is categorical"),
    (lambda m: m["drift"].update(method="wasserstein"),
     "monitors[0].drift.method: wasserstein applies to numerical columns, and home_ownership is categorical"),
    (lambda m: m["drift"].update(num_method="TVD"),
     "monitors[0].drift.num_method: TVD applies to categorical columns, and age is numerical"),
])
def test_a_method_must_apply_to_the_feature_kind(tmp_path: Path, reference_path: Path, edit: Any,
                                                 expected: str) -> None:
    conf = good(reference_path)
    edit(conf["monitors"][0])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(conf))
    res = run_cli("check", "--config", str(path), env={"WH_SECRET": SECRET})
    assert res.returncode == 1 and expected in res.stderr, res.stderr


def test_the_example_configuration_shows_every_field() -> None:
    """deploy/driftline.example.yaml promises every field: each field of each settings model
    appears there (as a key, or in a comment for the alternatives it shows)."""
    from driftline.collectors import schema
    from driftline.service import config
    from pydantic import BaseModel

    text = (Path(__file__).parents[1] / "deploy" / "driftline.example.yaml").read_text()
    models = {m for module in (config, schema) for m in vars(module).values()
              if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ == module.__name__}
    fields = {(m.__name__, name) for m in models for name in m.model_fields}
    assert len(fields) > 60
    missing = sorted(f"{m}.{name}" for m, name in fields if not re.search(rf"\b{name}\b", text))
    assert not missing, missing


def test_only_a_cancelled_metadata_refresh_is_kept_out_of_the_log() -> None:
    """Closing a consumer cancels its metadata refresh, which kafka-python logs as an ERROR:
    dropped; a refresh that really failed still reaches the log."""
    import logging

    from driftline.service.cli import _not_a_cancelled_refresh
    from kafka.errors import Cancelled, KafkaConnectionError

    def record(exc: Exception) -> logging.LogRecord:
        return logging.LogRecord("kafka.cluster", logging.ERROR, "", 0, "Metadata refresh: failed %s", (exc,), None)

    assert not _not_a_cancelled_refresh(record(Cancelled()))
    assert _not_a_cancelled_refresh(record(KafkaConnectionError("refused")))
