"""Horizon windows follow their partitions between processes, through commit metadata.

Kafka keeps the metadata committed with an offset; Tansu, the broker the other tests run
against, drops it (see README, *Limits*). So here the broker's committed offsets are played
by a dict, the one part that is simulated: two real `Monitor`s (decoder, windows, SQLite
checkpoints, evaluation against the reference) commit to it and read it back exactly as
`KafkaSource` does, and the records come from an in-memory log with Kafka's offsets.
"""

from __future__ import annotations

from collections import Counter, namedtuple
from pathlib import Path
from typing import Any

from driftline.collectors.kafka import Polled
from driftline.service.config import MonitorSettings
from driftline.service.demo.traffic import TrafficModel, encode, monitor_config
from driftline.service.metrics import DriftlineMetrics
from driftline.service.monitor import Monitor
from driftline.service.store import Store
from kafka.errors import OffsetMetadataTooLargeError
from prometheus_client import CollectorRegistry

Record = namedtuple("Record", "offset value key timestamp timestamp_type")
T0 = 1_700_000_040.0  # a minute boundary: 60 s horizon windows begin here
PARTITIONS = 3


class Log:
    """Three partitions of serving events, 4 a second each, and the group's committed offsets
    with their metadata (as Kafka keeps them)."""

    def __init__(self, seconds: float) -> None:
        model = TrafficModel(seed=3)
        n = int(seconds * 4)
        self.records = {p: encode(dict(e, ts=T0 + i / 4 + p * 0.05) for i, e in enumerate(model.events(n, now=T0)))
                        for p in range(PARTITIONS)}
        self.committed: dict[int, tuple[int, str]] = {}
        self.max_metadata = 4096  # the broker's offset.metadata.max.bytes

    def poll(self, positions: dict[int, int], upto: float, step: float = 5.0) -> Polled:
        """The records of these partitions from their positions, with event times before `upto`
        and within `step` seconds of the oldest one: partitions are read in step, as a consumer
        reading a topic's partitions evenly does."""
        polled = Polled()
        heads = [T0 + pos / 4 for p, pos in positions.items() if pos < len(self.records[p])]
        upto = min(upto, min(heads, default=upto) + step)
        for p, pos in sorted(positions.items()):
            take = []
            for offset in range(pos, len(self.records[p])):
                if T0 + offset / 4 >= upto:
                    break
                take.append(Record(offset, self.records[p][offset], None, -1, -1))
            if take:
                polled.add(p, take, timestamps=False)
                positions[p] = take[-1].offset + 1
        return polled

    def read(self, p: int, lo: int, hi: int) -> Polled:
        polled = Polled()
        polled.add(p, [Record(o, self.records[p][o], None, -1, -1) for o in range(lo, hi)], timestamps=False)
        return polled

    def commit(self, offsets: dict[int, tuple[int, str]]) -> None:
        if any(len(metadata) > self.max_metadata for _, metadata in offsets.values()):
            raise OffsetMetadataTooLargeError()  # as kafka-python raises it for that error code
        self.committed.update(offsets)

    def fetch(self, partitions: list[int]) -> dict[int, tuple[int, str] | None]:
        return {p: self.committed.get(p) for p in partitions}


class Process:
    """One driftline process's monitor, driven the way KafkaSource and the scheduler do."""

    def __init__(self, name: str, log: Log, settings: MonitorSettings, tmp_path: Path, clock: Any) -> None:
        self.log = log
        self.monitor = Monitor(settings, 0, DriftlineMetrics(CollectorRegistry()), None, clock,
                               store=Store(tmp_path / f"{name}.db"))
        self.positions: dict[int, int] = {}
        self.results: list[Any] = []
        self.side_reads = 0

    def assign(self, partitions: list[int]) -> None:
        starts = self.monitor.adopt(self.log.fetch(partitions))
        self.positions = {p: starts.get(p, 0) for p in partitions}

    def revoke(self) -> None:
        self.commit(self.monitor.release())

    def commit(self, offsets: dict[int, tuple[int, str]]) -> None:
        """As KafkaSource commits: once more with the small marks if the metadata is refused."""
        try:
            self.log.commit(offsets)
        except OffsetMetadataTooLargeError:
            self.monitor.metadata_refused()
            self.log.commit(self.monitor.committable())

    def run_until(self, upto: float) -> None:
        """Read up to event time `upto`, in polls, with an evaluation tick and a commit after
        each; the second reader reads its ranges after the first poll."""
        while True:
            polled = self.log.poll(self.positions, upto)
            if polled.values:
                self.monitor.consume(polled)
            self.monitor.windows.caught_up(dict(self.positions))
            self.read_aside()
            self.results.extend(self.monitor.evaluate_due())
            self.commit(self.monitor.committable())
            if not polled.values:
                return

    def read_aside(self) -> None:
        for p, (lo, hi, generation) in self.monitor.windows.side_reads().items():
            self.side_reads += 1
            assert self.monitor.add_side(self.log.read(p, lo, hi), generation)
            self.monitor.windows.side_done(p, generation)


def _events_per_window(results: list[Any]) -> Counter[tuple[str, float]]:
    got: Counter[tuple[str, float]] = Counter()
    for r in results:
        got[(r.horizon, r.window_start)] += r.events
    return got


def _single_run(tmp_path: Path, reference_path: Path) -> tuple[Log, list[float], Counter[tuple[str, float]], Any]:
    """The log, the clock, the events per window of one process that read it all, and a
    maker of processes (20 s buckets in 60 s horizon windows)."""
    conf = monitor_config("m", "127.0.0.1:9", "t", reference_path,
                          window={"type": "time", "size": "20s", "allowed_lateness": "2s", "min_events": 1,
                                  "horizons": ["60s"]})
    settings = MonitorSettings.model_validate(conf)
    now = [T0 + 1e4]  # after every event, and still: windows close by event time alone
    log = Log(seconds=420)

    def new(name: str) -> Process:
        return Process(name, log, settings, tmp_path, lambda: now[0])

    single = new("single")
    single.assign(list(range(PARTITIONS)))
    single.run_until(T0 + 1e4)
    now[0] += 60  # traffic stops: the last windows close by the wall clock
    single.run_until(T0 + 1e4)
    now[0] -= 60
    log.committed.clear()
    return log, now, _events_per_window(single.results), new


def test_horizon_windows_follow_their_partitions_as_processes_join_and_leave_for_good(
        tmp_path: Path, reference_path: Path) -> None:
    """A reads three partitions of a new group; B joins and takes partition 2, then C joins
    and takes partition 1; later A and C leave for good. Per (horizon, window start), the
    events A, B and C evaluated together equal those of a single process that read
    everything, for the 20 s buckets and for the 60 s horizon windows: nothing of a part is
    lost when its process leaves, and nothing is counted twice.

    A new group has committed nothing: A learns that the broker keeps commit metadata only
    from the offsets it gets back when B joins. Until then a moved partition's part stays
    with A, and so it does until A's horizon window holding it has closed: had A handed
    parts over from then on, C's joining would have emptied that window, partition 2's part
    with it. When A and C leave, B reads the closed buckets of their parts again (a second
    reader per partition) into its own horizon window."""
    _, now, want, new = _single_run(tmp_path, reference_path)
    a, b, c = (new(name) for name in "abc")

    def rebalance(to: dict[Process, list[int]], run_until: float) -> None:
        for process in (a, b, c):
            if process.positions:
                process.revoke()
                process.positions = {}
        for process, partitions in to.items():
            process.assign(partitions)
        for process in to:
            process.run_until(run_until)

    rebalance({a: [0, 1, 2]}, T0 + 95)  # mid-way through the second horizon window
    rebalance({a: [0, 1], b: [2]}, T0 + 110)
    assert not a.monitor.windows.handover and b.monitor.windows.handover
    rebalance({a: [0], b: [2], c: [1]}, T0 + 230)  # two buckets into the fourth horizon window
    assert a.monitor.windows.handover and c.monitor.windows.handover
    rebalance({b: [0, 1, 2]}, T0 + 1e4)  # A and C leave
    now[0] += 60
    b.run_until(T0 + 1e4)

    assert b.side_reads >= 2  # partitions 0 and 1: A's and C's parts of the open horizon window
    assert _events_per_window(a.results + b.results + c.results) == want
    assert sum(n for (h, _), n in want.items() if h == "1m") == sum(n for (h, _), n in want.items() if h == "20s")
    assert len([k for k in want if k[0] == "1m"]) >= 6


def test_a_part_handed_to_a_process_ahead_is_evaluated_without_moving_its_gauges_back(
        tmp_path: Path, reference_path: Path) -> None:
    """B reads partition 2 a period and more ahead of A when A leaves: A's part of its open
    horizon window [180, 240) belongs to a window B has evaluated already. B rebuilds it and
    evaluates it once its rebuild is done (the events add up per window), but the gauges and
    the status API keep showing B's newest window, not that older one."""
    _, now, want, new = _single_run(tmp_path, reference_path)
    a, b = new("a"), new("b")
    for process in (a, b):
        process.monitor.windows.hand_over_horizons()  # as once seen the broker keep metadata
    a.assign([0, 1])
    b.assign([2])
    a.run_until(T0 + 230)
    b.run_until(T0 + 330)
    a.revoke()  # A leaves
    b.revoke()
    b.assign([0, 1, 2])
    newest = b.monitor.latest_result("1m")
    assert newest is not None and newest.window_end == T0 + 300
    b.run_until(T0 + 250)  # the rebuild and the replay of A's partitions, up to B's buckets
    late = [r for r in b.results if r.horizon == "1m" and r.window_end == T0 + 240 and r.partitions is None]
    assert len(late) == 2  # B's own part, and A's evaluated after B's [240, 300)
    assert b.monitor.latest_result("1m").window_end == T0 + 300  # type: ignore[union-attr]
    b.run_until(T0 + 1e4)
    now[0] += 60
    b.run_until(T0 + 1e4)
    assert _events_per_window(a.results + b.results) == want


def test_after_a_refused_metadata_each_part_stays_with_its_reader_and_counts_once(
        tmp_path: Path, reference_path: Path) -> None:
    """A hands parts over, until the broker caps metadata at 150 bytes and refuses the commit
    A makes as B joins: A commits its small marks instead, and from then on. B takes
    partition 2 and A keeps the parts it holds: nobody rebuilds them, A does not rebuild its
    own again, and per window A and B together count every event once."""
    log, now, want, new = _single_run(tmp_path, reference_path)
    a, b = new("a"), new("b")
    a.monitor.windows.hand_over_horizons()  # as once it has seen the broker keep metadata
    a.assign([0, 1, 2])
    a.run_until(T0 + 95)
    assert a.monitor.windows.handover
    log.max_metadata = 150  # (a broker moved to a smaller cap)
    a.revoke()  # refused: its checkpoint had handed the parts over, its commit does not
    assert not a.monitor.windows.handover
    a.assign([0, 1])
    b.assign([2])
    a.run_until(T0 + 1e4)
    b.run_until(T0 + 1e4)
    now[0] += 60
    a.run_until(T0 + 1e4)
    b.run_until(T0 + 1e4)
    assert a.side_reads == b.side_reads == 0
    assert _events_per_window(a.results + b.results) == want


def test_a_broker_refusing_the_metadata_gets_the_small_marks_and_parts_stay_with_their_reader(
        broker: Any, tmp_path: Path, reference_path: Path, caplog: Any) -> None:
    """A broker whose offset.metadata.max.bytes is below what a handover takes refuses the
    commit (OffsetMetadataTooLarge). driftline then commits the small marks at once, and
    from then on keeps each partition's part of the horizon windows with its reader.

    The real part: a Tansu broker, the real KafkaSource and Monitor. Tansu drops metadata
    instead of refusing it, so the refusal is played by wrapping the consumer's commit: it
    raises kafka-python's OffsetMetadataTooLargeError, as kafka-python's coordinator does on
    that error code, for metadata over 120 bytes."""
    import logging
    import time
    import uuid

    from driftline.collectors.kafka import KafkaSource

    from tests.helpers import produce

    topic = f"refuse-{uuid.uuid4().hex[:10]}"
    broker.create_topic(topic, partitions=1)
    # events of the last 2 minutes but 30 s: closed 20 s buckets of today's horizon window
    if time.time() % 86400 < 150:
        time.sleep(150 - time.time() % 86400)  # (just after midnight UTC: wait for them)
    n = 360
    start = time.time() - 30 - n / 4
    produce(broker.bootstrap, topic, encode(dict(e, ts=start + i * 0.25)
                                            for i, e in enumerate(TrafficModel(seed=5).events(n, now=start))))
    conf = monitor_config("m", broker.bootstrap, topic, reference_path,
                          window={"type": "time", "size": "20s", "allowed_lateness": "2s", "min_events": 1,
                                  "horizons": ["1d"]},
                          kafka={"group_id": f"g-{topic}"})
    settings = MonitorSettings.model_validate(conf)
    monitor = Monitor(settings, 0, DriftlineMetrics(CollectorRegistry()), None, store=Store(tmp_path / "s.db"))
    monitor.windows.hand_over_horizons()  # as once it has seen the broker keep metadata
    source = KafkaSource(settings.kafka, lambda _: None, monitor)
    tries: list[dict[int, str]] = []
    commit = source._consumer.commit

    def refusing(offsets: dict[Any, Any], **kw: Any) -> None:
        tries.append({tp.partition: om.metadata for tp, om in offsets.items()})
        if any(len(om.metadata) > 120 for om in offsets.values()):
            raise OffsetMetadataTooLargeError()
        commit(offsets, **kw)

    source._consumer.commit = refusing
    try:
        read = 0
        deadline = time.monotonic() + 30
        while read < n and time.monotonic() < deadline:
            polled = source.poll(timeout_ms=500)
            if polled.values:
                monitor.consume(polled)
                source.mark_processed(polled)
                read += len(polled.values)
        assert read == n
        results = monitor.evaluate_due()
        assert [r.horizon for r in results].count("20s") >= 3  # closed buckets of today's open window
        with caplog.at_level(logging.ERROR, logger="driftline.collectors.kafka"):
            source.commit()
        assert len(tries) == 2 and '"handover":true' in tries[0][0] and "handover" not in tries[1][0]
        assert len(tries[1][0]) <= 120 and "refused the commit metadata as too large" in caplog.text
        assert source.committed == {0: monitor.committable()[0][0]}
        assert not monitor.windows.handover
        state = monitor.windows.checkpoint()
        assert "handover" not in state["partitions"]["0"]  # and the next checkpoints say so
    finally:
        source.close()
