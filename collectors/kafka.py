"""A Kafka source for one monitor: kafka-python consumer group, offsets committed by
driftline once the polled events are accounted for (never auto-commit).

kafka-python reads every standard record format (v0/v1 message sets and v2 record
batches) and every standard codec (gzip, snappy, lz4, zstd: the extras are dependencies
of driftline), so events from Java, librdkafka or kafka-python producers are read alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from driftline.service.config import KafkaSettings
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

log = logging.getLogger("driftline.collectors.kafka")


@dataclass
class Polled:
    """One poll's records, column by column (no object per record on the hot path)."""

    values: list[bytes | None] = field(default_factory=list)
    timestamps_ms: list[int | None] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)  # partition -> offset after its last record

    def __len__(self) -> int:
        return len(self.values)


def consumer_config(settings: KafkaSettings, secret: Callable[[str], str | None]) -> dict[str, Any]:
    """kafka-python's KafkaConsumer arguments for these settings (secrets looked up by field)."""
    conf: dict[str, Any] = {
        "bootstrap_servers": list(settings.bootstrap_servers),
        "group_id": settings.group_id,
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


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.source._on_revoked(revoked)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.source._on_assigned(assigned)


class KafkaSource:
    """Polls records of one topic; tracks what has been accounted for and commits it.

    Only the thread that polls may call poll/commit/close (kafka-python consumers are not
    thread-safe); `assigned`, `connected` and `lag` are safe to read from anywhere.
    """

    def __init__(self, settings: KafkaSettings, secret: Callable[[str], str | None],
                 on_revoked: Callable[[], None] | None = None) -> None:
        self.settings = settings
        conf = consumer_config(settings, secret)
        if settings.security_protocol.endswith("SSL"):
            # The one guard against a TLS handshake that never completes. kafka-python 3.0
            # bounds the TCP connect but awaits the handshake with no deadline
            # (kafka/net/transport.py, KafkaSSLTransport.handshake: wait_read without
            # timeout_at), and the bootstrap in KafkaConsumer() (and KafkaProducer()) awaits that
            # connection without looking at its own timeout again: a listener that accepts and
            # never answers blocks it forever, past bootstrap_timeout_ms and max_block_ms. So
            # each bootstrap server's handshake, verified as kafka-python verifies it, must
            # complete here within connect_timeout first; if one hangs or none succeeds, this
            # raises with the TLS error and the caller retries later.
            import socket
            import ssl

            from kafka.errors import KafkaConnectionError

            context = ssl.create_default_context(cafile=conf.get("ssl_cafile"))
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.check_hostname = settings.ssl_check_hostname
            if "ssl_certfile" in conf:
                context.load_cert_chain(conf["ssl_certfile"], conf.get("ssl_keyfile"), conf.get("ssl_password"))
            problems, hung, ok = [], False, 0
            for server in settings.bootstrap_servers:
                host, sep, port = server.rpartition(":")
                host, port = (host.strip("[]"), port) if sep else (server, "9092")
                try:
                    with socket.create_connection((host, int(port)), timeout=settings.connect_timeout) as sock, \
                            context.wrap_socket(sock, server_hostname=host):
                        ok += 1
                except TimeoutError:
                    hung = True
                    problems.append(f"TLS handshake with {server} did not complete within "
                                    f"{settings.connect_timeout:g}s")
                except ssl.SSLCertVerificationError as exc:
                    problems.append(f"TLS handshake with {server} failed: certificate refused: {exc.verify_message}")
                except ssl.SSLError as exc:
                    problems.append(f"TLS handshake with {server} failed: {exc.reason or exc}")
                except (OSError, ValueError) as exc:
                    problems.append(f"cannot connect to {server}: {exc}")
            if hung or not ok:
                raise KafkaConnectionError("; ".join(problems))
            for problem in problems:
                log.warning("%s", problem)
        self._consumer = KafkaConsumer(**conf)
        self._consumer.subscribe([settings.topic], listener=_Listener(self))
        self._on_revoked_cb = on_revoked
        self._lock = threading.Lock()
        self._assigned: frozenset[int] = frozenset()
        self._processed: dict[int, int] = {}  # partition -> next offset to read
        self._committed: dict[int, int] = {}
        self._lag: dict[int, int] = {}
        self._last_poll_ok = 0.0
        self._last_commit = time.monotonic()

    # -- rebalance ---------------------------------------------------------------------
    def _on_revoked(self, revoked: Any) -> None:
        if self._on_revoked_cb:
            self._on_revoked_cb()
        self.commit()
        with self._lock:
            self._assigned = frozenset()
            self._lag = {}

    def _on_assigned(self, assigned: Any) -> None:
        with self._lock:
            self._assigned = frozenset(tp.partition for tp in assigned)
        log.info("assigned partitions %s of %s", sorted(self._assigned), self.settings.topic)

    # -- state -------------------------------------------------------------------------
    @property
    def assigned(self) -> frozenset[int]:
        with self._lock:
            return self._assigned

    def connected(self) -> bool:
        """True while polls have been answered recently and partitions are assigned."""
        return bool(self.assigned) and time.monotonic() - self._last_poll_ok < max(
            10.0, self.settings.session_timeout)

    def lag(self) -> dict[int, int]:
        with self._lock:
            return dict(self._lag)

    # -- polling -----------------------------------------------------------------------
    def poll(self, timeout_ms: int = 500, timestamps: bool = True) -> Polled:
        """The next records; their creation/append timestamps too when asked for."""
        out = Polled()
        try:
            batches = self._consumer.poll(timeout_ms=timeout_ms)
        except KafkaError as exc:
            log.warning("poll failed: %s", exc)
            return out
        self._last_poll_ok = time.monotonic()
        for tp, records in batches.items():
            if not records:
                continue
            out.values.extend([r.value for r in records])
            if timestamps:
                out.timestamps_ms.extend([r.timestamp if r.timestamp_type != -1 else None for r in records])
            out.next_offsets[tp.partition] = records[-1].offset + 1
        return out

    def mark_processed(self, polled: Polled) -> None:
        """These records are accounted for: their offsets may be committed."""
        with self._lock:
            for partition, offset in polled.next_offsets.items():
                if offset > self._processed.get(partition, -1):
                    self._processed[partition] = offset

    def refresh_lag(self) -> None:
        lag = {}
        for p in self.assigned:
            tp = TopicPartition(self.settings.topic, p)
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            pos = self._processed.get(p)
            if pos is None:
                try:
                    pos = self._consumer.position(tp, timeout_ms=100)
                except KafkaError:
                    continue
            if pos is not None:
                lag[p] = max(0, high - pos)
        with self._lock:
            self._lag.update(lag)

    def maybe_commit(self) -> None:
        if time.monotonic() - self._last_commit >= self.settings.commit_interval:
            self.commit()

    def commit(self) -> None:
        with self._lock:
            pending = {p: o for p, o in self._processed.items()
                       if p in self._assigned and self._committed.get(p) != o}
        self._last_commit = time.monotonic()
        if not pending:
            return
        offsets = {TopicPartition(self.settings.topic, p): OffsetAndMetadata(o, "", -1) for p, o in pending.items()}
        try:
            self._consumer.commit(offsets, timeout_ms=5000)
        except KafkaError as exc:
            log.warning("offset commit failed (will retry): %s", exc)
            return
        with self._lock:
            self._committed.update(pending)

    def close(self) -> None:
        self.commit()
        try:
            self._consumer.close(autocommit=False)
        except Exception as exc:
            log.debug("closing the consumer: %s", exc)
