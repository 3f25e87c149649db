"""Retraining webhooks: Standard Webhooks signatures and at-least-once delivery.

Real parts only: HTTP servers on 127.0.0.1, a SQLite `Store` in tmp_path, and the
`standardwebhooks` reference library to verify what arrives. The dispatcher's clock is a
fake one that starts at the real time (so the library's 5-minute timestamp tolerance
holds) and is advanced by hand, so backoff is tested without sleeping.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from driftline.service.config import decode_webhook_secret
from driftline.service.store import Store
from driftline.service.webhooks import USER_AGENT, Dispatcher, Endpoint, sign, signed_headers
from hypothesis import assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.helpers import new_webhook_secret, wait_until

MONITOR = "credit-risk"


# ---------------------------------------------------------------------------------------
# a configurable receiver
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0  # wait this long before answering (cut short when the receiver stops)
    drop: bool = False  # read the request, then close the connection without any answer
    raw: bytes | None = None  # answer with these bytes instead of an HTTP response


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def verify(self, secret: str) -> Any:
        """What a receiver using the reference library does: raises unless signed with `secret`."""
        return Webhook(secret).verify(self.body, self.headers)


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedReceiver
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        reply = self.server.record(Request(self.command, self.path,
                                           {k.lower(): v for k, v in self.headers.items()}, body))
        if reply.delay:
            self.server.release.wait(reply.delay)
        if reply.drop or reply.raw is not None:
            if reply.raw is not None:
                self.wfile.write(reply.raw)
            self.close_connection = True
            return
        self.send_response(reply.status)
        for k, v in reply.headers:
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET = do_PUT = do_HEAD = _handle


class ScriptedReceiver(ThreadingHTTPServer):
    """Answers with `replies` in order, then with `default`; records every request."""

    daemon_threads = True

    def __init__(self, replies: list[Reply] | None = None, default: Reply = Reply(200),
                 on_request: Callable[[Request], None] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = deque(replies or [])
        self.default = default
        self.on_request = on_request
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/retrain"

    def record(self, req: Request) -> Reply:
        with self.lock:
            self.requests.append(req)
            reply = self.script.popleft() if self.script else self.default
        if self.on_request is not None:
            self.on_request(req)
        return reply

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # e.g. a broken pipe answering a client that already gave up

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


# ---------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, t: float) -> None:
        self.now = t


class FixedRandom(random.Random):
    """An rng whose random() is always `value`: pins the jitter factor 0.5 + 0.5 * value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


ALMOST_ONE = 1.0 - 2.0**-53  # the largest value random.random() returns


@pytest.fixture
def receivers() -> Iterator[Callable[..., ScriptedReceiver]]:
    started: list[ScriptedReceiver] = []

    def make(*args: Any, **kwargs: Any) -> ScriptedReceiver:
        r = ScriptedReceiver(*args, **kwargs)
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "driftline.sqlite"


@pytest.fixture
def store(store_path: Path) -> Iterator[Store]:
    s = Store(store_path)
    yield s
    s.close()


@pytest.fixture
def secret() -> str:
    return new_webhook_secret()


@pytest.fixture
def attempts() -> list[str]:
    return []


def endpoint(secret: str, timeout: float = 2.0, initial_backoff: float = 1.0, max_backoff: float = 60.0) -> Endpoint:
    return Endpoint(decode_webhook_secret(secret), timeout, initial_backoff, max_backoff)


def dispatcher(store: Store, clock: FakeClock, attempts: list[str], ep: Endpoint | dict[str, Endpoint],
               rng: random.Random | None = None) -> Dispatcher:
    endpoints = ep if isinstance(ep, dict) else {MONITOR: ep}

    def on_attempt(monitor: str, status: str) -> None:
        assert monitor in endpoints
        attempts.append(status)

    return Dispatcher(store, endpoints, on_attempt, clock=clock, rng=rng or random.Random(1))


def enqueue(store: Store, clock: FakeClock, url: str, monitor: str = MONITOR) -> tuple[str, str]:
    message_id = "msg_" + uuid.uuid4().hex
    body = json.dumps({"type": "driftline.retrain.requested", "data": {"id": message_id, "monitor": monitor}},
                      separators=(",", ":"))
    store.enqueue(message_id, monitor, url, body, clock())
    return message_id, body


def outbox_row(path: Path, message_id: str) -> dict[str, Any]:
    """The message's row, read through a second SQLite connection (what is on disk)."""
    with closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM outbox WHERE id = ?", (message_id,)).fetchone()
    assert row is not None, message_id
    return dict(row)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redeliver_when_due(d: Dispatcher, store: Store, clock: FakeClock, receiver: ScriptedReceiver) -> float:
    """Check the message is not retried a moment before its next attempt, then is at it.
    Returns the delay that was scheduled."""
    next_at = store.next_due_at()
    assert next_at is not None
    delay = next_at - clock()
    before = len(receiver.requests)
    clock.set(next_at - 1e-3)
    assert d.run_once() == 0
    assert len(receiver.requests) == before, "retried before its backoff elapsed"
    clock.set(next_at)
    d.run_once()
    assert len(receiver.requests) == before + 1, "not retried once its backoff elapsed"
    return delay


# ---------------------------------------------------------------------------------------
# signing
# ---------------------------------------------------------------------------------------
keys = st.binary(min_size=16, max_size=64)
ids = st.one_of(st.uuids().map(lambda u: "msg_" + u.hex), st.text(min_size=1, max_size=40))
bodies = st.one_of(st.text(max_size=300),
                   st.dictionaries(st.text(max_size=10), st.floats(allow_nan=False) | st.text(max_size=10),
                                   max_size=5).map(json.dumps))


def secret_of(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


@hsettings(max_examples=300, derandomize=True, deadline=None)
@given(key=keys, message_id=ids, offset=st.integers(-290, 290), body=bodies)
def test_signed_headers_verify_with_the_reference_library(key: bytes, message_id: str, offset: int,
                                                          body: str) -> None:
    secret = secret_of(key)
    assert decode_webhook_secret(secret) == key
    timestamp = int(time.time()) + offset  # the library rejects timestamps over 5 minutes away from now
    headers = signed_headers(decode_webhook_secret(secret), message_id, timestamp, body)

    assert headers["webhook-id"] == message_id
    assert headers["webhook-timestamp"] == str(timestamp)
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == USER_AGENT
    version, _, mac = headers["webhook-signature"].partition(",")
    assert version == "v1" and len(base64.b64decode(mac, validate=True)) == 32

    wh = Webhook(secret)
    wh.verify(body, headers, json_parse=False)
    wh.verify(body.encode(), headers, json_parse=False)  # as bytes off the wire
    # header names are case-insensitive on the wire
    wh.verify(body, {k.title(): v for k, v in headers.items()}, json_parse=False)


@hsettings(max_examples=300, derandomize=True, deadline=None)
@given(key=keys, other_key=keys, message_id=ids, offset=st.integers(-290, 290), body=bodies,
       extra=st.text(min_size=1, max_size=5))
def test_tampering_or_a_wrong_secret_is_rejected(key: bytes, other_key: bytes, message_id: str, offset: int,
                                                 body: str, extra: str) -> None:
    assume(other_key != key)
    timestamp = int(time.time()) + offset
    headers = signed_headers(key, message_id, timestamp, body)
    wh = Webhook(secret_of(key))
    with pytest.raises(WebhookVerificationError):
        wh.verify(body + extra, headers, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret_of(other_key)).verify(body, headers, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        wh.verify(body, {**headers, "webhook-id": message_id + extra}, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        wh.verify(body, {**headers, "webhook-timestamp": str(timestamp + 1)}, json_parse=False)


@hsettings(max_examples=200, derandomize=True, deadline=None)
@given(key=keys, message_id=ids, timestamp=st.integers(0, 2**33), body=bodies)
def test_signature_equals_the_reference_signature_at_any_timestamp(key: bytes, message_id: str, timestamp: int,
                                                                   body: str) -> None:
    expected = Webhook(key).sign(message_id, datetime.fromtimestamp(timestamp, UTC), body)
    assert sign(key, message_id, timestamp, body) == expected


# ---------------------------------------------------------------------------------------
# delivery
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_a_2xx_marks_the_request_delivered(status, receivers, store, store_path, clock, attempts, secret) -> None:
    rx = receivers(default=Reply(status))
    message_id, body = enqueue(store, clock, rx.url)
    assert store.pending_count() == 1 and store.pending_count(MONITOR) == 1
    d = dispatcher(store, clock, attempts, endpoint(secret))

    assert d.run_once() == 1
    assert attempts == ["2xx"]
    assert store.pending_count() == 0 and store.next_due_at() is None
    [req] = rx.requests
    assert req.method == "POST" and req.path == "/retrain"
    assert req.verify(secret) == json.loads(body)
    assert req.body == body.encode()
    assert req.headers["webhook-id"] == message_id
    assert req.headers["webhook-timestamp"] == str(int(clock()))
    assert req.headers["content-type"] == "application/json"
    row = outbox_row(store_path, message_id)
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 1, str(status))

    clock.advance(3600)
    assert d.run_once() == 0
    assert len(rx.requests) == 1 and attempts == ["2xx"]


def test_retries_reuse_the_webhook_id_with_a_fresh_valid_signature(receivers, store, store_path, clock, attempts,
                                                                   secret) -> None:
    rx = receivers([Reply(500), Reply(500)], default=Reply(200))
    message_id, body = enqueue(store, clock, rx.url)
    d = dispatcher(store, clock, attempts, endpoint(secret, initial_backoff=2.0), rng=FixedRandom(ALMOST_ONE))

    sent_at = [clock()]
    assert d.run_once() == 0
    assert attempts == ["5xx"] and store.pending_count() == 1
    assert outbox_row(store_path, message_id)["last_status"] == "500"
    for _ in range(2):
        redeliver_when_due(d, store, clock, rx)
        sent_at.append(clock())
    assert attempts == ["5xx", "5xx", "2xx"]
    assert store.pending_count() == 0

    assert len(rx.requests) == 3
    assert {r.headers["webhook-id"] for r in rx.requests} == {message_id}
    assert [r.headers["webhook-timestamp"] for r in rx.requests] == [str(int(t)) for t in sent_at]
    assert len({r.headers["webhook-signature"] for r in rx.requests}) == 3  # signed anew each time
    for r in rx.requests:
        assert r.verify(secret) == json.loads(body)
    row = outbox_row(store_path, message_id)
    assert (row["state"], row["attempts"]) == ("delivered", 3)


@pytest.mark.parametrize(("rng_value", "factor"), [(0.0, 0.5), (ALMOST_ONE, 1.0)])
def test_backoff_grows_exponentially_up_to_max_backoff(rng_value, factor, receivers, store, clock, attempts,
                                                       secret) -> None:
    rx = receivers(default=Reply(503))
    enqueue(store, clock, rx.url)
    d = dispatcher(store, clock, attempts, endpoint(secret, initial_backoff=1.0, max_backoff=8.0),
                   rng=FixedRandom(rng_value))
    d.run_once()
    delays = [redeliver_when_due(d, store, clock, rx) for _ in range(6)]
    delays.append(store.next_due_at() - clock())  # type: ignore[operator]
    assert delays == pytest.approx([factor * min(8.0, 2.0**n) for n in range(7)], rel=1e-9)
    assert attempts == ["5xx"] * 7 and store.pending_count() == 1


def test_jitter_keeps_each_delay_within_half_to_all_of_the_exponential_value(receivers, store, store_path, clock,
                                                                              attempts, secret) -> None:
    rx = receivers(default=Reply(500))
    ep = endpoint(secret, initial_backoff=4.0, max_backoff=20.0)
    d = dispatcher(store, clock, attempts, ep, rng=random.Random(12345))
    message_ids = [enqueue(store, clock, rx.url)[0] for _ in range(25)]
    for attempt, base in enumerate([4.0, 8.0, 16.0, 20.0]):
        start = clock()
        sent = len(rx.requests)
        d.run_once()
        assert len(rx.requests) == sent + len(message_ids)
        delays = [outbox_row(store_path, m)["next_attempt_at"] - start for m in message_ids]
        assert all(0.5 * base <= x <= base for x in delays), (attempt, base, delays)
        assert len({round(x, 9) for x in delays}) > 15, "no jitter: retries of many monitors would align"
        clock.set(start + base)  # every message is due again
    assert set(attempts) == {"5xx"} and store.pending_count() == len(message_ids)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_honoured(status, receivers, store, clock, attempts, secret) -> None:
    rx = receivers([Reply(status, (("Retry-After", "7"),))], default=Reply(200))
    enqueue(store, clock, rx.url)
    d = dispatcher(store, clock, attempts, endpoint(secret, initial_backoff=1.0), rng=FixedRandom(ALMOST_ONE))
    d.run_once()
    assert attempts == [f"{status // 100}xx"]
    assert redeliver_when_due(d, store, clock, rx) == pytest.approx(7.0)
    assert attempts[-1] == "2xx" and store.pending_count() == 0


def test_retry_after_never_shortens_the_backoff_and_is_bounded_by_max_backoff(receivers, store, clock, attempts,
                                                                             secret) -> None:
    rx = receivers([Reply(503, (("Retry-After", "0"),)), Reply(429, (("Retry-After", "86400"),))],
                   default=Reply(204))
    enqueue(store, clock, rx.url)
    d = dispatcher(store, clock, attempts, endpoint(secret, initial_backoff=3.0, max_backoff=30.0),
                   rng=FixedRandom(0.0))
    d.run_once()
    assert redeliver_when_due(d, store, clock, rx) == pytest.approx(1.5)  # the backoff, not Retry-After: 0
    assert redeliver_when_due(d, store, clock, rx) == pytest.approx(30.0)  # a day, bounded by max_backoff
    assert attempts == ["5xx", "4xx", "2xx"] and store.pending_count() == 0


def test_retry_after_as_an_http_date_is_honoured(receivers, store, clock, attempts, secret) -> None:
    when = formatdate(time.time() + 20, usegmt=True)
    rx = receivers([Reply(503, (("Retry-After", when),))], default=Reply(200))
    enqueue(store, clock, rx.url)
    d = dispatcher(store, clock, attempts, endpoint(secret, initial_backoff=1.0), rng=FixedRandom(0.0))
    d.run_once()
    assert 17.0 <= store.next_due_at() - clock() <= 21.0  # type: ignore[operator]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_failure_and_is_not_followed(status, receivers, store, store_path, clock, attempts,
                                                     secret) -> None:
    rx = receivers(default=Reply(200))
    rx.script.append(Reply(status, (("Location", rx.url.replace("/retrain", "/moved")),)))
    message_id, _ = enqueue(store, clock, rx.url)
    d = dispatcher(store, clock, attempts, endpoint(secret))
    assert d.run_once() == 0
    assert attempts == ["3xx"]
    assert [r.path for r in rx.requests] == ["/retrain"]  # the Location was not requested
    assert store.pending_count() == 1
    assert outbox_row(store_path, message_id)["last_status"] == str(status)
    redeliver_when_due(d, store, clock, rx)  # the retry goes to the configured URL again
    assert [r.path for r in rx.requests] == ["/retrain", "/retrain"]
    assert attempts == ["3xx", "2xx"] and store.pending_count() == 0


def test_410_gone_is_never_retried(receivers, store, store_path, clock, attempts, secret) -> None:
    rx = receivers(default=Reply(410))
    message_id, _ = enqueue(store, clock, rx.url)
    d = dispatcher(store, clock, attempts, endpoint(secret))
    assert d.run_once() == 0
    assert attempts == ["4xx"]
    assert store.pending_count() == 0 and store.next_due_at() is None
    row = outbox_row(store_path, message_id)
    assert (row["state"], row["last_status"]) == ("gone", "410")
    for _ in range(3):
        clock.advance(86400)
        d.run_once()
    assert len(rx.requests) == 1 and attempts == ["4xx"]


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
def test_other_4xx_are_retried(status, receivers, store, clock, attempts, secret) -> None:
    rx = receivers([Reply(status)], default=Reply(200))
    enqueue(store, clock, rx.url)
    d = dispatcher(store, clock, attempts, endpoint(secret))
    d.run_once()
    assert attempts == ["4xx"] and store.pending_count() == 1
    redeliver_when_due(d, store, clock, rx)
    assert attempts == ["4xx", "2xx"] and store.pending_count() == 0


def test_connection_refused_counts_connection_error_and_is_retried(store, store_path, clock, attempts,
                                                                   secret) -> None:
    message_id, _ = enqueue(store, clock, f"http://127.0.0.1:{closed_port()}/retrain")
    d = dispatcher(store, clock, attempts, endpoint(secret), rng=FixedRandom(0.0))
    started = time.monotonic()
    assert d.run_once() == 0
    assert time.monotonic() - started < 1.0
    assert attempts == ["connection_error"]
    assert store.pending_count() == 1
    assert store.next_due_at() == pytest.approx(clock() + 0.5)
    row = outbox_row(store_path, message_id)
    assert (row["state"], row["attempts"], row["last_status"]) == ("pending", 1, "connection_error")


def test_a_slow_receiver_counts_timeout_without_hanging_the_dispatcher(receivers, store, clock, attempts,
                                                                       secret) -> None:
    rx = receivers([Reply(200, delay=10.0)], default=Reply(200))
    message_id, _ = enqueue(store, clock, rx.url)
    d = dispatcher(store, clock, attempts, endpoint(secret, timeout=0.3))
    started = time.monotonic()
    assert d.run_once() == 0
    assert time.monotonic() - started < 0.3 + 1.0
    assert attempts == ["timeout"]
    assert store.pending_count() == 1  # the 200 came too late to count
    redeliver_when_due(d, store, clock, rx)
    assert attempts == ["timeout", "2xx"] and store.pending_count() == 0
    assert [r.headers["webhook-id"] for r in rx.requests] == [message_id, message_id]


def test_a_hanging_endpoint_delays_only_its_own_monitor(receivers, store, clock, secret) -> None:
    """Two monitors; one endpoint answers after 3 s. The other monitor's request is delivered
    at once, and the hanging one is not sent twice while its attempt is under way."""
    slow = receivers([Reply(200, delay=3.0)], default=Reply(200))
    fast = receivers(default=Reply(200))
    enqueue(store, clock, slow.url, monitor="slow")
    fast_id, _ = enqueue(store, clock, fast.url, monitor="fast")
    seen: list[tuple[str, str]] = []
    d = Dispatcher(store, {"slow": endpoint(secret, timeout=10.0), "fast": endpoint(secret)},
                   lambda m, status: seen.append((m, status)), clock=clock, rng=random.Random(1))
    started = time.monotonic()
    assert d.run_once(wait=False) == 0  # the scheduler's tick: returns at once
    assert time.monotonic() - started < 0.5
    wait_until(lambda: ("fast", "2xx") in seen, 1.5, what="the fast monitor's delivery")
    assert time.monotonic() - started < 1.5
    assert [r.headers["webhook-id"] for r in fast.requests] == [fast_id]
    for _ in range(5):  # more ticks while the slow one hangs: it is not sent again
        d.run_once(wait=False)
        time.sleep(0.1)
    assert len(slow.requests) == 1 and ("slow", "2xx") not in seen
    wait_until(lambda: ("slow", "2xx") in seen, 10, what="the slow monitor's delivery")
    assert time.monotonic() - started >= 3.0
    assert store.pending_count() == 0 and len(slow.requests) == 1
    d.close()


def test_a_connection_closed_without_an_answer_is_a_connection_error(receivers, store, clock, attempts,
                                                                     secret) -> None:
    rx = receivers([Reply(drop=True)], default=Reply(200))
    enqueue(store, clock, rx.url)
    d = dispatcher(store, clock, attempts, endpoint(secret))
    assert d.run_once() == 0
    assert attempts == ["connection_error"] and store.pending_count() == 1
    redeliver_when_due(d, store, clock, rx)
    assert attempts == ["connection_error", "2xx"] and store.pending_count() == 0


def test_an_endpoint_that_does_not_speak_http_is_a_connection_error_not_a_crash(receivers, store, clock, attempts,
                                                                                secret) -> None:
    """E.g. retrain.webhook_url pointing at an SSH port: the answer is no HTTP status line.
    It is retried with backoff, and other monitors' requests still go out."""
    wrong = receivers(default=Reply(raw=b"SSH-2.0-OpenSSH_9.6\r\n"))
    right = receivers(default=Reply(200))
    enqueue(store, clock, wrong.url, monitor="wrong")
    clock.advance(1)
    enqueue(store, clock, right.url, monitor="right")
    d = dispatcher(store, clock, attempts, {"wrong": endpoint(secret), "right": endpoint(secret)},
                   rng=FixedRandom(0.0))
    assert d.run_once() == 1
    assert sorted(attempts) == ["2xx", "connection_error"]  # (the two monitors' in parallel)
    assert store.pending_count("wrong") == 1 and store.pending_count("right") == 0
    assert store.next_due_at() == pytest.approx(clock() + 0.5)
    assert len(wrong.requests) == 1 and len(right.requests) == 1


def test_backoff_after_a_very_long_outage_stays_at_max_backoff(receivers, store, store_path, clock, attempts,
                                                               secret) -> None:
    """About 1000 failed attempts (some days at max_backoff 300 s) must not break the arithmetic."""
    rx = receivers(default=Reply(503))
    message_id, _ = enqueue(store, clock, rx.url)
    with closing(sqlite3.connect(store_path)) as db:
        db.execute("UPDATE outbox SET attempts = 5000 WHERE id = ?", (message_id,))
        db.commit()
    d = dispatcher(store, clock, attempts, endpoint(secret, initial_backoff=1.0, max_backoff=30.0),
                   rng=FixedRandom(ALMOST_ONE))
    d.run_once()
    assert attempts == ["5xx"]
    assert store.next_due_at() == pytest.approx(clock() + 30.0)
    assert outbox_row(store_path, message_id)["attempts"] == 5001


def test_a_request_of_a_monitor_without_endpoint_is_kept(receivers, store, clock, attempts, secret) -> None:
    rx = receivers(default=Reply(200))
    message_id, _ = enqueue(store, clock, rx.url)
    assert dispatcher(store, clock, attempts, {}).run_once() == 0
    assert rx.requests == [] and attempts == [] and store.pending_count() == 1
    assert dispatcher(store, clock, attempts, endpoint(secret)).run_once() == 1
    assert [r.headers["webhook-id"] for r in rx.requests] == [message_id]


def test_requests_of_removed_monitors_do_not_crowd_out_the_others(receivers, store, clock, attempts,
                                                                  secret) -> None:
    rx = receivers(default=Reply(200))
    for _ in range(120):  # more than one page of due messages, all older than the live one
        enqueue(store, clock, rx.url, monitor="decommissioned")
    clock.advance(10)
    live_id, _ = enqueue(store, clock, rx.url)
    assert dispatcher(store, clock, attempts, endpoint(secret)).run_once() == 1
    assert [r.headers["webhook-id"] for r in rx.requests] == [live_id]
    assert store.pending_count("decommissioned") == 120


# ---------------------------------------------------------------------------------------
# durability and idempotency
# ---------------------------------------------------------------------------------------
def test_an_undelivered_request_survives_a_restart_and_keeps_its_webhook_id(receivers, store_path, clock,
                                                                           attempts, secret) -> None:
    rx = receivers(default=Reply(200))
    first = Store(store_path)
    message_id = "msg_" + uuid.uuid4().hex
    body = json.dumps({"data": {"id": message_id, "monitor": MONITOR}})
    first.request_retrain(MONITOR, message_id, rx.url, body, clock())
    first.close()  # the service stops before any delivery attempt

    clock.advance(5)
    second = Store(store_path)
    try:
        assert second.pending_count(MONITOR) == 1
        assert second.last_retrain_request(MONITOR) == clock() - 5
        assert dispatcher(second, clock, attempts, endpoint(secret)).run_once() == 1
        assert second.pending_count() == 0
    finally:
        second.close()
    [req] = rx.requests
    assert req.headers["webhook-id"] == message_id
    assert req.verify(secret) == json.loads(body)


def test_a_failed_request_survives_a_restart_with_its_backoff_and_webhook_id(receivers, store_path, clock,
                                                                            attempts, secret) -> None:
    rx = receivers([Reply(500)], default=Reply(200))
    first = Store(store_path)
    message_id, body = enqueue(first, clock, rx.url)
    dispatcher(first, clock, attempts, endpoint(secret, initial_backoff=4.0), rng=FixedRandom(0.0)).run_once()
    next_at = first.next_due_at()
    first.close()

    second = Store(store_path)
    try:
        assert second.pending_count() == 1 and second.next_due_at() == next_at == clock() + 2.0
        assert second.due(clock() + 1.9, [MONITOR]) == []
        [msg] = second.due(clock() + 2.0, [MONITOR])
        assert (msg.id, msg.body, msg.attempts) == (message_id, body, 1)
        d = dispatcher(second, clock, attempts, endpoint(secret, initial_backoff=4.0))
        redeliver_when_due(d, second, clock, rx)
        assert second.pending_count() == 0
    finally:
        second.close()
    assert attempts == ["5xx", "2xx"]
    assert [r.headers["webhook-id"] for r in rx.requests] == [message_id, message_id]
    for r in rx.requests:
        r.verify(secret)


class DeduplicatingApp:
    """A receiving application that verifies, then acts once per webhook-id."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.seen: set[str] = set()
        self.actions: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, req: Request) -> None:
        payload = req.verify(self.secret)
        with self.lock:
            if req.headers["webhook-id"] not in self.seen:
                self.seen.add(req.headers["webhook-id"])
                self.actions.append(payload)


@pytest.mark.parametrize(("lost", "counted_as"), [(Reply(500), "5xx"), (Reply(drop=True), "connection_error"),
                                                  (Reply(200, delay=5.0), "timeout")])
def test_a_receiver_deduplicating_by_webhook_id_acts_once_when_a_response_is_lost(
        lost, counted_as, receivers, store, clock, attempts, secret) -> None:
    app = DeduplicatingApp(secret)
    rx = receivers([lost], default=Reply(200), on_request=app)
    message_id, body = enqueue(store, clock, rx.url)
    d = dispatcher(store, clock, attempts, endpoint(secret, timeout=0.3))
    d.run_once()
    assert store.pending_count() == 1
    redeliver_when_due(d, store, clock, rx)
    assert attempts == [counted_as, "2xx"] and store.pending_count() == 0
    assert [r.headers["webhook-id"] for r in rx.requests] == [message_id, message_id]
    assert app.actions == [json.loads(body)]
