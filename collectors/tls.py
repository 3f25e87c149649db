"""TLS handshakes with a deadline, before kafka-python connects (it sets none)."""

from __future__ import annotations

import logging
from typing import Any

from .schema import KafkaSettings

log = logging.getLogger("driftline.collectors.kafka")


def check_tls_handshakes(settings: KafkaSettings, conf: dict[str, Any]) -> None:
    """Raise unless a TLS handshake with the bootstrap servers completes in time."""
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


