"""What a poll hands over (`Polled`), who takes partitions up (`PartitionOwner`), and the
kafka-python consumer settings for a monitor's Kafka settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .schema import KafkaSettings


@dataclass
class Polled:
    """One poll's records, column by column (no object per record on the hot path)."""

    values: list[bytes | None] = field(default_factory=list)
    timestamps_ms: list[int | None] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)  # partition -> offset after its last record
    # (partition, position of its first record in `values`, kafka-python's records): where
    # each record came from, read only for the rare record that needs it (a dead letter)
    parts: list[tuple[int, int, list[Any]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)

    def origin(self, i: int) -> tuple[int, int, bytes | None]:
        """The partition, offset and key of the i-th record."""
        for partition, start, records in self.parts:
            if start <= i < start + len(records):
                r = records[i - start]
                return partition, r.offset, r.key
        raise IndexError(i)

    def add(self, partition: int, records: list[Any], timestamps: bool) -> None:
        """Append a partition's records (kafka-python ConsumerRecords, in offset order)."""
        self.parts.append((partition, len(self.values), records))
        self.values.extend([r.value for r in records])
        if timestamps:
            self.timestamps_ms.extend([r.timestamp if r.timestamp_type != -1 else None for r in records])
        self.next_offsets[partition] = records[-1].offset + 1


def consumer_config(settings: KafkaSettings, secret: Callable[[str], str | None]) -> dict[str, Any]:
    """kafka-python's KafkaConsumer arguments for these settings (secrets looked up by field)."""
    conf: dict[str, Any] = {
        "bootstrap_servers": list(settings.bootstrap_servers),
        "group_id": settings.group_id,
        "group_instance_id": settings.group_instance_id,
        "client_id": settings.client_id,
        "enable_auto_commit": False,
        "auto_offset_reset": settings.auto_offset_reset,
        "max_poll_interval_ms": int(settings.max_poll_interval * 1000),
        "session_timeout_ms": int(settings.session_timeout * 1000),
        "heartbeat_interval_ms": max(100, int(settings.session_timeout * 1000 / 3)),
        "request_timeout_ms": int(max(settings.request_timeout, settings.session_timeout + 1) * 1000),
        "max_poll_records": settings.max_poll_records,
        "security_protocol": settings.security_protocol,
        # bounded reconnects: a lost broker is retried, not hammered
        "reconnect_backoff_ms": 100,
        "reconnect_backoff_max_ms": 5000,
    }
    if settings.security_protocol.startswith("SASL"):
        conf["sasl_mechanism"] = settings.sasl_mechanism
        conf["sasl_plain_username"] = secret("sasl_username_env")
        conf["sasl_plain_password"] = secret("sasl_password_env")
    if settings.security_protocol.endswith("SSL"):
        conf["ssl_check_hostname"] = settings.ssl_check_hostname
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(settings, key)
            if value is not None:
                conf[key] = str(value)
        if settings.ssl_password_env:
            conf["ssl_password"] = secret("ssl_password_env")
    return conf


class PartitionOwner(Protocol):
    """What reads the partitions (a monitor): it keeps their state and says what to commit."""

    def adopt(self, committed: dict[int, tuple[int, str] | None]) -> dict[int, int]:
        """Partitions newly assigned, with their committed (offset, metadata), before any
        record; returns where to read each from."""

    def release(self) -> dict[int, tuple[int, str]]:
        """All partitions are being revoked: the (offset, metadata) to commit for them."""

    def committable(self) -> dict[int, tuple[int, str]]:
        """The (offset, metadata) that may be committed now, per partition."""

    def reset_partitions(self) -> None:
        """The topic was recreated: positions start again."""
