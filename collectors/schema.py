"""What a collector needs to know: where the events are (Kafka settings), what an event
looks like (the event schema), and the kinds of columns it carries.

These are validated pydantic models, frozen, with `extra="forbid"`, so a misspelt field
fails at startup with its path. The service's configuration (`driftline.service.config`)
embeds them; nothing here depends on the service.
"""

from __future__ import annotations

import enum
import math
import re
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """'90s', '5m', '1h', '1d', '250ms' or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {value!r}")


def format_duration(seconds: float) -> str:
    """The shortest spelling: 300 -> '5m', 86400 -> '1d', 90 -> '90s', 0.5 -> '500ms'."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds * 1000:g}ms"


def format_span(start: float, end: float, dates: bool | None = None) -> str:
    """A window as logs and reports name it: "start..end" in UTC, as times of day for a window
    shorter than a day and with the dates otherwise (a `1d` window would read
    00:00:00..00:00:00), or with the dates whenever `dates` is true."""
    form = "%Y-%m-%d %H:%M:%S" if (dates if dates is not None else end - start >= 86400) else "%H:%M:%S"

    def fmt(t: float) -> str:
        return time.strftime(form, time.gmtime(t)) if math.isfinite(t) else "?"

    return f"{fmt(start)}..{fmt(end)}"


def positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration)]
PositiveSeconds = Annotated[float, BeforeValidator(parse_duration), AfterValidator(positive)]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Threshold = Annotated[float, Field(allow_inf_nan=False)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnKind(str, enum.Enum):
    NUMERICAL = "numerical"
    CATEGORICAL = "categorical"


def category_label(value: Any) -> str:
    """The one spelling of a category on both sides: integral floats as integers
    (pandas turns an int column with gaps into floats), everything else as str()."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        return category_label(value.item())
    return str(value)


class KafkaSettings(Model):
    bootstrap_servers: list[str] = Field(min_length=1)
    topic: str = Field(min_length=1)
    group_id: str = Field(min_length=1)
    group_instance_id: str | None = Field(
        None, min_length=1, description="static group membership: a stable name per instance (e.g. its "
        "StatefulSet pod name), so a restarted instance takes its partitions back at once")
    client_id: str = "driftline"
    auto_offset_reset: Literal["earliest", "latest"] = "latest"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username_env: EnvName | None = None
    sasl_password_env: EnvName | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password_env: EnvName | None = None
    ssl_check_hostname: bool = True
    # With SSL/SASL_SSL, each bootstrap server's TLS handshake must complete within this
    # before the consumer starts (collectors/tls.py): kafka-python puts no deadline on it.
    connect_timeout: PositiveSeconds = 5.0
    # Tansu (and some brokers) can stall a consumer-group join until the rebalance
    # timeout; a modest poll interval bounds that (PRODUCT.md).
    max_poll_interval: PositiveSeconds = 10.0
    session_timeout: PositiveSeconds = 10.0
    request_timeout: PositiveSeconds = 30.0
    # how often the monitor's state is checkpointed and the offsets it covers committed
    commit_interval: PositiveSeconds = 5.0
    max_poll_records: int = Field(2000, ge=1)
    # invalid records are copied here, unchanged, with their origin and error in headers
    dead_letter_topic: str | None = Field(None, min_length=1)
    # copies not yet acknowledged are held in memory; beyond this consumption pauses until
    # they are down to half of it (collectors/dead_letters.py)
    dead_letter_max_pending_bytes: int = Field(16 * 1024 * 1024, ge=1024 * 1024)

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            missing = [f for f in ("sasl_mechanism", "sasl_username_env", "sasl_password_env")
                       if getattr(self, f) is None]
            if missing:
                raise ValueError(f"security_protocol {self.security_protocol} needs {', '.join(missing)}")
        return self


class FieldSpec(Model):
    """Where a value lives in an event: a dotted path into the JSON object."""

    path: str = Field(min_length=1, pattern=r"^[^.\s][^\s]*$")

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.path.split("."))


class FeatureSpec(FieldSpec):
    type: ColumnKind | None = Field(None, description="numerical or categorical; default: the reference's")
    method: str | None = Field(None, description="Evidently method name; default: Evidently's choice")
    threshold: Threshold | None = None


class EventTimeSpec(FieldSpec):
    format: Literal["epoch_seconds", "epoch_millis", "iso8601"] = "epoch_seconds"


class PredictionSpec(FieldSpec):
    column: str = Field("prediction", description="the prediction's column in the reference data")
    type: ColumnKind | None = None
    method: str | None = None
    threshold: Threshold | None = None


class LatencySpec(FieldSpec):
    unit: Literal["s", "ms", "us"] = "ms"


class EventSchema(Model):
    """How to read one serving event (a JSON object) into features and context."""

    features: dict[str, FeatureSpec] = Field(min_length=1)
    event_time: EventTimeSpec | None = Field(
        None, description="required for time windows; else the Kafka record timestamp is used")
    prediction: PredictionSpec | None = None
    latency: LatencySpec | None = None
    model_version: FieldSpec | None = None
    unknown_fields: Literal["reject", "ignore"] = Field(
        "reject", description="an event field no path mentions makes the event invalid (reject) or not")
    allowed_extra_fields: list[str] = Field(default_factory=list, description="dotted paths always accepted")
    max_event_bytes: int = Field(1_048_576, ge=64)

    @field_validator("features", mode="before")
    @classmethod
    def _features_shorthand(cls, v: Any) -> Any:
        # `features: [a, b]` means each feature at the top-level key of its name.
        if isinstance(v, list):
            return {name: {"path": name} for name in v}
        if isinstance(v, dict):
            return {k: ({"path": k} if spec is None else spec) for k, spec in v.items()}
        return v
