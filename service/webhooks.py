"""Retraining webhooks: signed per Standard Webhooks 1.0, delivered at least once.

`sign` produces the `webhook-signature` header: ``v1,`` + base64(HMAC-SHA256(key,
"{id}.{timestamp}.{body}")). The `Dispatcher` takes due messages from the store's
outbox, POSTs them, and on anything but a 2xx reschedules them with exponential backoff
and jitter (honouring Retry-After); the webhook-id stays the same on every attempt, so a
receiver that deduplicates by it acts once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import logging
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from .store import OutboxMessage, Store

log = logging.getLogger("driftline.webhooks")

USER_AGENT = "driftline-webhooks/0.1"


def sign(key: bytes, message_id: str, timestamp: int, body: str) -> str:
    mac = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(key: bytes, message_id: str, timestamp: int, body: str) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, message_id, timestamp, body),
    }


@dataclass(frozen=True)
class Endpoint:
    key: bytes
    timeout: float
    initial_backoff: float
    max_backoff: float


def status_class(code: int | None, error: str | None) -> str:
    """The `status` label of driftline_webhook_deliveries_total."""
    if code is None:
        return error or "connection_error"
    return f"{code // 100}xx" if 200 <= code < 600 else "connection_error"


class Dispatcher:
    """Delivers due outbox messages; `run_once` is scheduled periodically."""

    def __init__(self, store: Store, endpoints: dict[str, Endpoint],
                 on_attempt: Callable[[str, str], None], clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self._store, self._endpoints, self._on_attempt = store, endpoints, on_attempt
        self._clock = clock
        self._rng = rng or random.Random()

    def run_once(self) -> int:
        delivered = 0
        for msg in self._store.due(self._clock(), list(self._endpoints)):
            delivered += self._deliver(msg, self._endpoints[msg.monitor])
        return delivered

    def _deliver(self, msg: OutboxMessage, endpoint: Endpoint) -> int:
        timestamp = int(self._clock())
        req = urllib.request.Request(msg.url, data=msg.body.encode(), method="POST",
                                     headers=signed_headers(endpoint.key, msg.id, timestamp, msg.body))
        code: int | None = None
        error: str | None = None
        retry_after: float | None = None
        try:
            with _NO_REDIRECTS.open(req, timeout=endpoint.timeout) as resp:
                code = resp.status
                resp.read(65536)
        except urllib.error.HTTPError as exc:
            code = exc.code
            retry_after = _retry_after(exc.headers.get("Retry-After"))
            exc.close()
        except TimeoutError:
            error = "timeout"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            error = "timeout" if isinstance(reason, TimeoutError | socket.timeout) else "connection_error"
        except http.client.HTTPException:  # not an HTTP answer (e.g. the URL names another protocol's port)
            error = "connection_error"
        status = status_class(code, error)
        self._on_attempt(msg.monitor, status)
        now = self._clock()
        if code is not None and 200 <= code < 300:
            self._store.mark_delivered(msg.id, str(code), now)
            log.info("retraining request %s for monitor %s delivered (HTTP %s, attempt %d)",
                     msg.id, msg.monitor, code, msg.attempts + 1)
            return 1
        if code == 410:
            self._store.mark_gone(msg.id, "410")
            log.error("webhook endpoint of monitor %s answered 410 Gone: request %s will not be retried; "
                      "fix retrain.webhook_url", msg.monitor, msg.id)
            return 0
        # the exponent is bounded: 2 ** 1024 no longer converts to a float (an outage of some days)
        delay = min(endpoint.max_backoff, endpoint.initial_backoff * 2 ** min(msg.attempts, 1000))
        delay *= 0.5 + 0.5 * self._rng.random()  # jitter: spread retries of many monitors
        if retry_after is not None:
            delay = max(delay, min(retry_after, endpoint.max_backoff))
        self._store.reschedule(msg.id, str(code) if code is not None else status, now + delay)
        log.warning("retraining request %s for monitor %s not acknowledged (%s); retry %d in %.1fs",
                    msg.id, msg.monitor, code or error, msg.attempts + 2, delay)
        return 0


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is a failed delivery (Standard Webhooks): do not follow it."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_NO_REDIRECTS = urllib.request.build_opener(_NoRedirect)
