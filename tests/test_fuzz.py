"""Hostile input through the real broker to a running `driftline run`.

At least 100,000 records (DRIFTLINE_FUZZ_EVENTS for longer runs by hand): random bytes,
invalid UTF-8, JSON of the wrong shape, wrong types, NaN and infinities, huge numbers and
strings, deeply nested objects, duplicate keys, oversized messages, mixed with valid
events. The expected outcome of every record is computed with `EventDecoder.decode` (the
one definition of validity) on the same bytes; the service must count each record, each
invalid one under its reason, put the valid ones in windows, copy every invalid one once
to the dead-letter topic with its origin and error in headers, and keep its memory bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from driftline.collectors.dead_letters import LETTER_OVERHEAD_BYTES
from driftline.collectors.events import EventDecoder, InvalidEvent
from driftline.service.config import MonitorSettings
from driftline.service.demo.broker import LocalBroker, free_port
from driftline.service.demo.traffic import TrafficModel, encode, monitor_config
from driftline.service.monitor import feature_kinds
from driftline.service.reference import load_profile

from tests.helpers import ServiceProcess, produce, wait_until

pytestmark = pytest.mark.integration

N_EVENTS = int(os.environ.get("DRIFTLINE_FUZZ_EVENTS", "100000"))
WINDOW = 5000
MAX_EVENT_BYTES = 16_384
# the service's resident memory may grow this much over its size once started and ready:
# measured +55 to +79 MB (10 runs, 4 of them with two CPU hogs alongside), mostly the dead
# letters waiting for their acknowledgement (at most kafka.dead_letter_max_pending_bytes,
# 16 MiB, plus one poll) and the producer's copies of them; +181 to +284 MB before that
# buffer was bounded
RSS_GROWTH_LIMIT_MB = float(os.environ.get("DRIFTLINE_FUZZ_RSS_GROWTH_MB", "150"))


def hostile(rng: random.Random, valid: list[bytes], now: int) -> bytes:
    """One hostile record, of a kind picked at random."""
    base = json.loads(rng.choice(valid))
    kind = rng.randrange(22)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 200))
    if kind == 1:  # invalid UTF-8 inside otherwise good JSON
        return json.dumps(base).encode().replace(b'"features"', b'"request_id": "\xc3\x28\xff", "features"', 1)
    if kind == 2:  # JSON of the wrong shape
        return rng.choice([b"[]", b"[1,2,3]", b'"text"', b"42", b"null", b"true", json.dumps([base]).encode(),
                           b'{"features": [1, 2]}', b'{"features": "none"}'])
    if kind == 3:  # a number where a label is expected, text where a number is, …
        f = rng.choice(["age", "income", "region", "loan_purpose", "num_accounts"])
        base["features"][f] = rng.choice(["forty", True, [1], {"v": 1}, 3, 2.5, None])
        return json.dumps(base).encode()
    if kind == 4:  # NaN and ±Infinity literals
        lit = rng.choice([b"NaN", b"Infinity", b"-Infinity"])
        return json.dumps(base).encode().replace(b'"features": {', b'"features": {"age": ' + lit + b", ", 1)
    if kind == 5:  # huge numbers
        big = rng.choice([b"1e400", b"-1e999", b"1" + b"0" * 400, b"123456789012345678901234567890"])
        return json.dumps(base).encode().replace(b'"features": {', b'"features": {"income": ' + big + b", ", 1)
    if kind == 6:  # huge strings (some below the size limit: a long but valid label)
        base["features"]["region"] = "x" * rng.choice([100, 5000, MAX_EVENT_BYTES])
        return json.dumps(base).encode()
    if kind == 7:  # deeply nested: beyond the parsers' depth, and within it
        depth = rng.choice([50, 600, 2000, 5000])
        return b'{"request_id": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == 8:
        depth = rng.choice([10, 300])
        return b'{"ts": %d, "features": ' % now + b'{"age": ' * depth + b"1" + b"}" * depth + b"}"
    if kind == 9:  # duplicate keys: the later one wins
        first = rng.choice([b'"ts": "later", ', b'"features": {"age": "x"}, ', b'"ts": %d, ' % now])
        return json.dumps(base).encode().replace(b"{", b"{" + first, 1)
    if kind == 10:  # oversized
        return b'{"request_id": "' + b"y" * rng.choice([MAX_EVENT_BYTES, 100_000, 300_000]) + b'"}'
    if kind == 11:  # unknown fields
        base[rng.choice(["ssn", "debug", "__proto__"])] = "1"
        return json.dumps(base).encode()
    if kind == 12:  # missing or bad event time
        base.pop("ts") if rng.random() < 0.5 else base.update(ts=rng.choice(["noon", -1, now + 10**6, [1], None]))
        return json.dumps(base).encode()
    if kind == 13:  # truncated JSON
        raw = json.dumps(base).encode()
        return raw[: rng.randrange(len(raw))]
    if kind == 14:  # control bytes, BOM, lone surrogates
        return rng.choice([b"\xef\xbb\xbf", b"\x00", b""]) + json.dumps(base).encode().replace(
            b'"features"', b'"request_id": "\\ud800", "features"', rng.randrange(2))
    if kind == 15:  # negative latency, wrong prediction
        base["latency_ms"] = rng.choice([-5, "fast", 1e400 if False else 1e308])
        return json.dumps(base).encode()
    if kind == 16:  # random JSON value
        return json.dumps(rng.choice([{}, {"ts": now}, {"features": {}}, [None] * 5, 1.5, "x" * 50])).encode()
    if kind == 17:  # empty record
        return b""
    if kind == 18:  # random mutation of a valid event
        raw = bytearray(json.dumps(base).encode())
        for _ in range(rng.randrange(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    if kind == 19:  # missing features are not invalid
        for f in rng.sample(list(base["features"]), 3):
            base["features"].pop(f)
        return json.dumps(base).encode()
    if kind == 20:  # numbers as strings everywhere
        base["features"] = {k: str(v) for k, v in base["features"].items()}
        return json.dumps(base).encode()
    return json.dumps(base, ensure_ascii=False).encode()  # valid, non-ASCII spelled as is


def stream(n: int, now: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    valid = encode(TrafficModel(seed=seed).events(2000, now=now))
    out = []
    for i in range(n):
        out.append(valid[i % len(valid)] if rng.random() < 0.5 else hostile(rng, valid, now))
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def consume_all(bootstrap: str, topic: str, expect: int, timeout: float) -> list[Any]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"check-{uuid.uuid4().hex}",
                             auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=5000,
                             fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024)
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
            if len(records) >= expect:  # then a little longer: nothing more may come
                quiet_until = quiet_until or time.monotonic() + 2.0
                if time.monotonic() > quiet_until:
                    break
    finally:
        consumer.close(autocommit=False)
    return records


def start_with_dead_letters(services: list[ServiceProcess], tmp_path: Path, bootstrap: str, topic: str,
                            dead_topic: str, reference_path: Path, window: dict[str, Any],
                            **kafka: Any) -> tuple[ServiceProcess, dict[str, Any]]:
    """A running `driftline run` reading `topic` from the start, dead letters to `dead_topic`;
    and its monitor's configuration."""
    conf = monitor_config("credit-risk", bootstrap, topic, reference_path, window=window,
                          kafka={"bootstrap_servers": [bootstrap], "topic": topic,
                                 "group_id": f"fuzz-{uuid.uuid4().hex[:8]}", "auto_offset_reset": "earliest",
                                 "dead_letter_topic": dead_topic, **kafka})
    conf["event"]["max_event_bytes"] = MAX_EVENT_BYTES
    svc = ServiceProcess(tmp_path, [conf])
    services.append(svc)
    svc.start()
    return svc, conf


def test_hostile_events_are_counted_by_reason_copied_to_the_dead_letter_topic_and_memory_stays_bounded(
        services, tmp_path, broker, topic, reference_path) -> None:
    dead_topic = f"dead-{uuid.uuid4().hex[:10]}"
    broker.create_topic(dead_topic, partitions=2)
    svc, conf = start_with_dead_letters(services, tmp_path, broker.bootstrap, topic, dead_topic, reference_path,
                                        {"type": "count", "size": WINDOW, "min_events": 200})
    assert svc.proc is not None
    pid = svc.proc.pid

    now = int(time.time())
    records = stream(N_EVENTS, now)
    # what each record is, by the one definition (the service decodes a little later: the
    # event times here are minutes from the future-skew limit, so the verdicts hold)
    settings = MonitorSettings.model_validate(conf)
    reference = load_profile(reference_path)
    kinds = feature_kinds(settings, reference, 0)
    decoder = EventDecoder(settings.event, kinds, reference.columns["prediction"].kind)
    expected: dict[int, str] = {}  # offset -> reason
    for offset, raw in enumerate(records):
        try:
            decoder.decode(raw, None, now)
        except InvalidEvent as exc:
            expected[offset] = exc.reason
    reasons = Counter(expected.values())
    n_valid = len(records) - len(expected)
    assert len(reasons) >= 8 and n_valid > N_EVENTS // 3, reasons  # the mix is hostile and varied

    rss_start = rss_mb(pid)
    peak = [rss_start]
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.wait(0.2):
            try:
                peak[0] = max(peak[0], rss_mb(pid))
            except OSError:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        produce(broker.bootstrap, topic, records, max_request_size=1_048_576, batch_size=256 * 1024,
                compression_type="lz4")
        wait_until(lambda: svc.sample("driftline_events_consumed_total", monitor="credit-risk") >= len(records),
                   120, what="every record consumed")
        wait_until(lambda: svc.sample("driftline_dead_letters_total", monitor="credit-risk",
                                      outcome="produced") >= len(expected), 60, what="every dead letter produced")
    finally:
        stop_sampling.set()
        sampler.join()
    elapsed = time.monotonic() - started
    assert svc.proc.poll() is None, "driftline exited"
    print(f"\nfuzz: {len(records):,} records ({len(expected):,} invalid) in {elapsed:.1f}s; "
          f"RSS {rss_start:.0f} MB at start, peak {peak[0]:.0f} MB")
    assert peak[0] - rss_start < RSS_GROWTH_LIMIT_MB, (rss_start, peak[0])

    # every record counted once, every invalid one under its reason
    assert svc.sample("driftline_events_consumed_total", monitor="credit-risk") == len(records)
    for reason, n in reasons.items():
        assert svc.sample("driftline_events_invalid_total", monitor="credit-risk", reason=reason) == n, reason
    total_invalid = sum(v for (name, _), v in svc.samples().items() if name == "driftline_events_invalid_total")
    assert total_invalid == len(expected)
    # the valid ones are in windows: closed ones of WINDOW events, the rest in the open one
    wait_until(lambda: sum(svc.sample("driftline_windows_total", monitor="credit-risk", status=s) or 0
                           for s in ("evaluated", "insufficient_data")) >= n_valid // WINDOW, 30,
               what="every full window closed")
    m = svc.monitor("credit-risk")
    assert m["open_window_events"] == n_valid % WINDOW
    assert m["latest_window"]["events"] == WINDOW and m["latest_window"]["status"] == "evaluated"
    assert svc.sample("driftline_dead_letters_total", monitor="credit-risk", outcome="produced") == len(expected)
    assert svc.sample("driftline_dead_letters_total", monitor="credit-risk", outcome="dropped") == 0

    # each invalid record once on the dead-letter topic, unchanged, with its origin and error
    letters = consume_all(broker.bootstrap, dead_topic, len(expected), 90)
    seen: dict[int, Any] = {}
    for r in letters:
        h = {k: v.decode() for k, v in r.headers}
        assert h["driftline-original-topic"] == topic and h["driftline-original-partition"] == "0"
        assert h["driftline-monitor"] == "credit-risk"
        offset = int(h["driftline-original-offset"])
        assert offset not in seen, f"offset {offset} dead-lettered twice"
        seen[offset] = r
        assert h["driftline-error"].split(":")[0] == expected.get(offset), (offset, h["driftline-error"])
        assert r.value == records[offset]
    assert set(seen) == set(expected)


class StallingProxy:
    """A TCP proxy in front of the broker that can stop passing on the requests of one Kafka
    client (by the client id in each request's header): a dead-letter topic that cannot be
    reached, while the consumer's own connections are untouched.

    While stalled, that client's requests are held, never reach the broker, and are never
    answered (kafka-python times them out and reconnects, to be held again); `release()`
    closes the held connections, so nothing held is written late: the client sends again."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stalled: str | None = None
        self.held: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self, client_id: str) -> None:
        self.stalled = client_id

    def release(self) -> None:
        self.stalled = None
        with self.lock:
            held, self.held = self.held, []
        for sock in held:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the broker is gone (the test is ending)
                client.close()
                continue
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _read(sock: socket.socket, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError
            out += chunk
        return out

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while True:
                size = self._read(client, 4)
                frame = self._read(client, struct.unpack(">i", size)[0])
                # request header: api_key, api_version, correlation_id, client_id (int16 length)
                (n,) = struct.unpack(">h", frame[8:10])
                client_id = frame[10:10 + n].decode() if n > 0 else ""
                if self.stalled is not None and client_id == self.stalled:
                    with self.lock:
                        self.held += [client, upstream]
                    return  # held: nothing more from this connection reaches the broker
                upstream.sendall(size + frame)
        except OSError:
            pass
        for sock in (client, upstream):
            sock.close()

    @staticmethod
    def _responses(upstream: socket.socket, client: socket.socket) -> None:
        try:
            while chunk := upstream.recv(65536):
                client.sendall(chunk)
        except OSError:
            pass
        for sock in (client, upstream):
            sock.close()

    def close(self) -> None:
        self.listener.close()
        self.release()


def test_an_unreachable_dead_letter_topic_pauses_consumption_in_bounded_memory_and_loses_nothing(
        services, tmp_path, reference_path) -> None:
    """The dead-letter topic stops answering under heavy invalid traffic: driftline reads no
    further once the copies it holds exceed dead_letter_max_pending_bytes (rather than holding
    every copy in memory), stays in its group and ready, shows the lag growing, and once the
    topic answers again every invalid record arrives there exactly once, unchanged."""
    cap = 1024 * 1024
    max_poll = 100
    tansu_port = free_port()
    proxy = StallingProxy(tansu_port)
    broker = LocalBroker(port=proxy.port, log_path=tmp_path / "tansu.log")
    broker.tansu_port = tansu_port  # Tansu listens behind the proxy and advertises the proxy
    with broker, contextlib.closing(proxy):
        topic, dead_topic = f"serving-{uuid.uuid4().hex[:10]}", f"dead-{uuid.uuid4().hex[:10]}"
        broker.create_topic(topic)
        broker.create_topic(dead_topic)
        svc, _ = start_with_dead_letters(services, tmp_path, broker.bootstrap, topic, dead_topic, reference_path,
                                         {"type": "count", "size": 1000, "min_events": 100},
                                         dead_letter_max_pending_bytes=cap, max_poll_records=max_poll)
        assert svc.proc is not None
        rng = random.Random(11)
        valid = encode(TrafficModel(seed=11).events(500, now=int(time.time())))

        def invalid(i: int) -> bytes:  # oversized: 20-40 KB each, the copies add up fast
            return b'{"request_id": "%d' % i + b"y" * rng.randrange(20_000, 40_000) + b'"}'

        # the dead-letter producer connects and learns the topic's metadata while all is well
        warmup = [invalid(0), *valid[:10]]
        produce(broker.bootstrap, topic, warmup)
        wait_until(lambda: svc.sample("driftline_dead_letters_total", monitor="credit-risk", outcome="produced") == 1,
                   30, what="the first dead letter")
        proxy.stall("driftline-dead-letters")

        records = [invalid(i) if i % 2 else valid[i % len(valid)] for i in range(1, 3001)]  # 1,500 invalid: ~45 MB
        all_records = warmup + records
        expected = {0} | {len(warmup) + i for i in range(len(records)) if i % 2 == 0}  # offsets of the invalid
        invalid_bytes = sum(len(all_records[o]) for o in expected)
        letter_max = LETTER_OVERHEAD_BYTES + 40_100 + 200  # as DeadLetters.add counts a copy: value, headers
        rss_start = rss_mb(svc.proc.pid)
        produce(broker.bootstrap, topic, records)

        # stalled: reading stops with the copies held within the cap (plus one poll), the
        # failed sends are retried, and the service stays in its group and ready
        pending: list[float] = []
        peak = [rss_start]

        def stalled() -> bool:
            pending.append(svc.sample("driftline_dead_letters_pending_bytes", monitor="credit-risk") or 0.0)
            peak[0] = max(peak[0], rss_mb(svc.proc.pid))
            return bool((svc.sample("driftline_dead_letters_total", monitor="credit-risk", outcome="failed") or 0) > 0)

        wait_until(stalled, 60, interval=0.5, what="a dead letter to fail (delivery timeout)")
        consumed = svc.sample("driftline_events_consumed_total", monitor="credit-risk")
        time.sleep(3)
        assert svc.sample("driftline_events_consumed_total", monitor="credit-risk") == consumed
        assert consumed is not None and consumed < len(all_records) / 4, consumed
        assert 0 < max(pending) <= cap + max_poll * letter_max, (max(pending), cap)
        assert svc.sample("driftline_dead_letters_pending", monitor="credit-risk") > 0
        # the lag shows what waits, although nothing is fetched
        assert svc.sample("driftline_consumer_lag_messages", monitor="credit-risk", partition="0") \
            == len(all_records) - consumed
        with urllib.request.urlopen(svc.api + "/readyz", timeout=5) as resp:
            assert resp.status == 200
        growth = peak[0] - rss_start
        print(f"\nstalled: read {consumed:.0f} of {len(all_records)} records; copies held at most "
              f"{max(pending) / 1e6:.1f} MB of the {invalid_bytes / 1e6:.0f} MB invalid; RSS +{growth:.0f} MB")
        assert growth < invalid_bytes / 1e6 / 2, (growth, invalid_bytes)

        proxy.release()
        wait_until(lambda: svc.sample("driftline_events_consumed_total", monitor="credit-risk") == len(all_records),
                   60, what="every record consumed once the dead-letter topic answers")
        wait_until(lambda: svc.sample("driftline_dead_letters_total", monitor="credit-risk",
                                      outcome="produced") == len(expected), 30, what="every dead letter produced")
        assert svc.sample("driftline_dead_letters_total", monitor="credit-risk", outcome="dropped") == 0
        assert svc.sample("driftline_dead_letters_pending", monitor="credit-risk") == 0
        assert svc.sample("driftline_events_invalid_total", monitor="credit-risk", reason="oversized") == len(expected)

        letters = consume_all(broker.bootstrap, dead_topic, len(expected), 60)
        seen: dict[int, Any] = {}
        for r in letters:
            h = {k: v.decode() for k, v in r.headers}
            offset = int(h["driftline-original-offset"])
            assert offset not in seen, f"offset {offset} dead-lettered twice"
            seen[offset] = r
            assert h["driftline-original-topic"] == topic and h["driftline-error"].startswith("oversized")
            assert r.value == all_records[offset]
        assert set(seen) == expected
        log = svc.log()
        assert log.count("paused for") == 1 and log.count("again after") == 1, log[-3000:]
        assert svc.stop() == 0
