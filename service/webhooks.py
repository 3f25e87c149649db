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
import threading
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
    """Delivers due outbox messages; `run_once` is scheduled periodically.

    Each monitor's messages go out in order, one at a time, in a thread of its own; monitors
    are served in parallel (up to `parallel` at once), so a slow or hanging endpoint delays
    only its own monitor's requests. The threads are daemons: at exit a delivery under way
    is cut short, and the message, still in the outbox, goes out again after a restart."""

    def __init__(self, store: Store, endpoints: dict[str, Endpoint],
                 on_attempt: Callable[[str, str], None], clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, parallel: int = 8,
                 active: Callable[[str], bool] = lambda monitor: True) -> None:
        self._store, self._endpoints, self._on_attempt = store, endpoints, on_attempt
        self._active = active  # monitors whose requests this instance delivers
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()  # guards _busy, _closed and the rng
        self._busy: set[str] = set()  # monitors whose deliveries are under way
        self._closed = False
        self._slots = threading.Semaphore(max(1, parallel))

    def run_once(self, wait: bool = True) -> int:
        """Start delivering the due messages of every monitor not already delivering; with
        `wait`, wait for them and return how many were acknowledged."""
        with self._lock:
            if self._closed:
                return 0
            idle = [m for m in self._endpoints if m not in self._busy and self._active(m)]
        by_monitor: dict[str, list[OutboxMessage]] = {}
        for msg in self._store.due(self._clock(), idle):
            by_monitor.setdefault(msg.monitor, []).append(msg)
        acknowledged: dict[str, int] = {}
        threads = []
        for monitor, messages in by_monitor.items():
            with self._lock:
                self._busy.add(monitor)
            t = threading.Thread(target=self._deliver_all, args=(monitor, messages, acknowledged),
                                 name=f"webhooks-{monitor}", daemon=True)
            t.start()
            threads.append(t)
        if not wait:
            return 0
        for t in threads:
            t.join()
        return sum(acknowledged.values())

    def close(self, timeout: float = 2.0) -> None:
        """Start nothing more, and wait up to `timeout` for the deliveries under way."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
        while time.monotonic() < deadline:
            with self._lock:
                if not self._busy:
                    return
            time.sleep(0.05)

    def _deliver_all(self, monitor: str, messages: list[OutboxMessage], acknowledged: dict[str, int]) -> None:
        try:
            with self._slots:
                for msg in messages:
                    with self._lock:
                        if self._closed:
                            return
                    acknowledged[monitor] = acknowledged.get(monitor, 0) + self._deliver(msg, self._endpoints[monitor])
        except Exception:
            log.exception("webhook deliveries of monitor %s failed (they stay in the outbox)", monitor)
        finally:
            with self._lock:
                self._busy.discard(monitor)

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
        with self._lock:
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
