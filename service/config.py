"""The service configuration: one YAML file, validated into one frozen object.

Every error names the field it is about (``monitors[0].window.size: …``); secrets never
live in the file, only the names of the environment variables that hold them.

Example (the README's configuration reference documents every field)::

    service:
      listen: 127.0.0.1:9108
      state_path: /var/lib/driftline/state.sqlite
    monitors:
      - name: credit-risk
        kafka: {bootstrap_servers: [kafka:9092], topic: credit-risk-serving, group_id: driftline}
        reference: {path: /profiles/credit-risk.dlref}
        event:
          features: {income: {path: features.income}, region: {path: features.region}}
          event_time: {path: ts, format: epoch_seconds}
        window: {type: time, size: 5m, min_events: 500}
        retrain: {webhook_url: https://ml.example/retrain, secret_env: DRIFTLINE_WEBHOOK_SECRET}
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from driftline.collectors import schema
from driftline.collectors.schema import (
    EnvName,
    EventTimeSpec,
    FieldSpec,
    KafkaSettings,
    LatencySpec,
    PositiveSeconds,
    PredictionSpec,
    Seconds,
    Threshold,
    format_duration,
    parse_duration,
    positive,
)
from driftline.collectors.schema import Model as _Model
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator, model_validator

from .drift import METHODS, ColumnKind

__all__ = ["ColumnKind", "EventSchema", "EventTimeSpec", "FeatureSpec", "FieldSpec", "KafkaSettings",
           "LatencySpec", "MonitorSettings", "PredictionSpec", "Settings", "format_duration"]


def _known_method(v: str | None) -> str | None:
    if v is not None and v not in METHODS:
        raise ValueError(f"unknown drift method {v!r}; available: {', '.join(sorted(METHODS))}")
    return v


class HistorySettings(_Model):
    """How much window history each monitor keeps in the state file."""

    windows: int = Field(10_000, ge=1, description="evaluated windows kept per monitor (the oldest go first)")
    max_age: PositiveSeconds | None = Field(30 * 86400.0, description="windows older than this are deleted")
    reports: int = Field(10, ge=0, description="the latest windows whose sample is kept for their drill-down "
                         "report (each up to the exactness budget per feature: 800 KB per numerical feature)")


class ServiceSettings(_Model):
    """Process-wide settings."""

    listen: str = Field("127.0.0.1:9108", description="host:port of /metrics, /healthz, /readyz and the API")
    state_path: Path = Field(Path("driftline-state.sqlite"),
                             description="SQLite store: windows in progress, window history, webhook outbox, cooldowns")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    api_token_env: EnvName | None = Field(
        None, description="environment variable with the bearer token for state-changing endpoints and reports")
    public_url: str | None = Field(
        None, pattern=r"^https?://", description="where operators reach this instance's API, for the report links "
        "in webhooks and alerts (default: links are paths, /api/v1/…)")
    history: HistorySettings = Field(default_factory=HistorySettings)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"expected host:port, got {v!r}")
        return v


class FeatureSpec(schema.FeatureSpec):
    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str | None) -> str | None:
        return _known_method(v)


class EventSchema(schema.EventSchema):
    features: dict[str, FeatureSpec] = Field(min_length=1)  # type: ignore[assignment]


class ReferenceSettings(_Model):
    path: Path
    reload_interval: Seconds | None = Field(
        None, description="check the file for a new version this often (the API can also reload)")


class WindowSettings(_Model):
    type: Literal["time", "count"] = "time"
    size: float = Field(description="a duration (time windows) or a number of events (count windows)")
    allowed_lateness: Seconds = 5.0
    min_events: int = Field(100, ge=1, description="fewer events: insufficient data, never alerts")
    evaluation_interval: PositiveSeconds = Field(1.0, description="how often closed windows are looked for")
    idle_timeout: PositiveSeconds | None = Field(
        None, description="a partition with nothing to read for this long stops holding time windows back; "
        "default: three windows, at most 5 minutes")
    horizons: list[PositiveSeconds] = Field(
        default_factory=list, description="longer windows (multiples of size) built from the same buckets")

    @property
    def idle_seconds(self) -> float:
        return self.idle_timeout if self.idle_timeout is not None else min(3 * self.size, 300.0)

    @property
    def labels(self) -> tuple[str, ...]:
        """The `horizon` label of each window length evaluated: the buckets' first."""
        if self.type == "count":
            return (f"{int(self.size)} events",)
        return tuple(format_duration(h) for h in (self.size, *self.horizons))

    @model_validator(mode="after")
    def _horizons_fit(self) -> WindowSettings:
        if not self.horizons:
            return self
        if self.type != "time":
            raise ValueError("horizons need time windows")
        for h in self.horizons:
            ratio = h / self.size
            if ratio < 2 or abs(ratio - round(ratio)) > 1e-9:
                raise ValueError(f"each horizon is a whole multiple (2 or more) of size {format_duration(self.size)}; "
                                 f"{format_duration(h)} is not")
        if len(set(self.horizons)) != len(self.horizons):
            raise ValueError("a horizon is listed twice")
        return self

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: Any, info: Any) -> float:
        if info.data.get("type", "time") == "count":
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError("a count window's size is a whole number of events (>= 1)")
            return float(v)
        return positive(parse_duration(v))


class DataQualitySettings(_Model):
    """When a feature's data quality is a signal of its own (service/quality.py): each share
    must also be beyond the sampling noise of the window's size."""

    unseen_category_share: float = Field(0.01, gt=0, le=1, description="share of a categorical feature's "
                                         "values in categories the reference never had")
    out_of_range_share: float = Field(0.01, gt=0, le=1, description="share of a numerical feature's values "
                                      "outside the reference's observed min..max")
    missing_share_factor: float = Field(2.0, ge=1, description="the missing share reaches this multiple of "
                                        "the reference's …")
    missing_share_increase: float = Field(0.05, gt=0, le=1, description="… and exceeds it by this much")
    type_error_share: float = Field(0.01, gt=0, le=1, description="share of events rejected because the "
                                    "feature had the wrong type")
    unseen_labels: int = Field(5, ge=0, le=20, description="unseen categories named per feature, most frequent "
                               "first, where the labels look like codes (0: none)")


def _on_off(v: Any) -> Any:
    # YAML 1.1 reads a bare `on` / `off` as a boolean
    return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class DriftSettings(_Model):
    method: str | None = Field(None, description="method for every feature; default: Evidently's choice")
    num_method: str | None = None
    cat_method: str | None = None
    threshold: Threshold | None = None
    drift_share: float = Field(0.5, gt=0, le=1, description="dataset drift when this share of features drift")
    calibration: Annotated[Literal["on", "off"], BeforeValidator(_on_off)] = Field(
        "on", description="on: a feature drifts beyond both its threshold and the noise floor of a window "
        "its size; off: Evidently's plain thresholds")
    false_alarm_rate: float = Field(0.001, gt=0, le=0.05, description="with calibration: at most this share "
                                    "of windows without drift are declared dataset drift")
    feature_false_alarm_rate: float = Field(0.01, gt=0, le=0.1, description="with calibration: at most this share "
                                            "of features flagged in windows without drift (the noise floors' "
                                            "level is at most half of it)")
    effect_size_floors: dict[str, Threshold] = Field(
        default_factory=dict, description="p-value method -> the smallest effect size that drifts "
        "(defaults in docs/drift-methods.md)")
    data_quality: DataQualitySettings = Field(default_factory=DataQualitySettings)

    @field_validator("method", "num_method", "cat_method")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        return _known_method(v)

    @field_validator("effect_size_floors")
    @classmethod
    def _p_value_methods(cls, v: dict[str, float]) -> dict[str, float]:
        for name, floor in v.items():
            FeatureSpec._known_method(name)
            if METHODS[name].effect is None:
                p_value = ", ".join(sorted(n for n, m in METHODS.items() if m.effect))
                raise ValueError(f"{name} is a distance, whose threshold is its effect size; effect size "
                                 f"floors are for the p-value methods: {p_value}")
            if floor < 0:
                raise ValueError(f"{name}: an effect size floor is at least 0")
        return v


class RetrainSettings(_Model):
    webhook_url: str = Field(pattern=r"^https?://")
    secret_env: EnvName = Field(description="environment variable holding the whsec_… signing secret")
    consecutive_windows: int = Field(2, ge=1)
    cooldown: Seconds = 3600.0
    timeout: PositiveSeconds = 10.0
    initial_backoff: PositiveSeconds = 1.0
    max_backoff: PositiveSeconds = 300.0


class MonitorSettings(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", max_length=128)
    kafka: KafkaSettings
    reference: ReferenceSettings
    event: EventSchema
    window: WindowSettings
    drift: DriftSettings = Field(default_factory=DriftSettings)
    retrain: RetrainSettings | None = None


class Settings(_Model):
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    monitors: list[MonitorSettings] = Field(min_length=1)


class ConfigError(Exception):
    """A configuration that cannot run; `problems` lists each as 'path: message'."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "constrained-")) or part in {"str", "float", "int"}:
            continue
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def load_settings(path: str | Path, environ: dict[str, str] | None = None) -> tuple[Settings, Secrets]:
    """Read, validate and resolve a config file; raise ConfigError naming every bad field."""
    env = os.environ if environ is None else environ
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError([f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a mapping with a 'monitors' list at the top level"])
    secrets, problems = resolve_secrets(raw, env)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        schema_problems = []
        for err in exc.errors(include_url=False):
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            schema_problems.append(f"{_loc(err['loc'])}: {msg}")
        raise ConfigError(schema_problems + problems) from None
    problems += _cross_field_problems(settings)
    if problems:
        raise ConfigError(problems)
    return settings, secrets


def _cross_field_problems(settings: Settings) -> list[str]:
    problems = []
    seen: set[str] = set()
    for i, m in enumerate(settings.monitors):
        if m.name in seen:
            problems.append(f"monitors[{i}].name: monitor name {m.name!r} is used twice")
        seen.add(m.name)
        if m.window.type == "time" and m.event.event_time is None:
            problems.append(f"monitors[{i}].event.event_time: time windows need the event time's path")
        for name in m.event.features:
            if m.event.prediction is not None and name == "prediction":
                problems.append(f"monitors[{i}].event.features.{name}: the name 'prediction' is reserved "
                                "for event.prediction")
    return problems


class Secrets:
    """Secret values read from the environment, keyed by the field path that named them."""

    def __init__(self, values: dict[str, SecretStr]) -> None:
        self._values = values

    def get(self, field_path: str) -> SecretStr | None:
        return self._values.get(field_path)

    def __repr__(self) -> str:
        return f"Secrets({sorted(self._values)})"


def resolve_secrets(raw: Any, env: Any) -> tuple[Secrets, list[str]]:
    """Read every `…_env` field's environment variable; report each one that is unset."""
    values: dict[str, SecretStr] = {}
    problems: list[str] = []
    for path, var in _env_fields(raw, ""):
        val = env.get(var)
        if not val:
            problems.append(f"{path}: environment variable {var} is not set")
            continue
        values[path] = SecretStr(val)
        if path.endswith(".retrain.secret_env"):
            try:
                decode_webhook_secret(val)
            except ValueError as exc:
                problems.append(f"{path}: environment variable {var}: {exc}")
    return Secrets(values), problems


def _env_fields(node: Any, path: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and key.endswith("_env") and isinstance(value, str):
                found.append((sub, value))
            else:
                found += _env_fields(value, sub)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _env_fields(value, f"{path}[{i}]")
    return found


def decode_webhook_secret(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: the base64 after 'whsec_'."""
    if not secret.startswith("whsec_"):
        raise ValueError("a webhook secret is 'whsec_' followed by base64 (24 to 64 random bytes)")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after 'whsec_' is not valid base64") from None
    if len(key) < 16:
        raise ValueError("the key is shorter than 16 bytes")
    return key
