"""Benchmark 4: what a dead letter waiting for its acknowledgement costs in memory.

    .venv/bin/python bench/bench_dead_letters.py [--letters 2000,10000]

Starts a local Tansu broker, then hands DeadLetters (collectors/kafka.py) batches of
invalid records with empty values, as the consumer loop does, and measures with
tracemalloc what one `add` allocates per letter: the letter, its headers, kafka-python's
futures and the producer's record, before any acknowledgement is let go. DeadLetters
counts each copy as its key, value and headers plus LETTER_OVERHEAD_BYTES against
kafka.dead_letter_max_pending_bytes; the check is that this accounts for at least 90% of
what is measured, so that many tiny copies are bounded as well as a few large ones.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from dataclasses import dataclass

from driftline.collectors.dead_letters import LETTER_OVERHEAD_BYTES, DeadLetters
from driftline.collectors.kafka import Polled
from driftline.service.config import KafkaSettings
from driftline.service.demo.broker import LocalBroker


@dataclass
class Record:  # the two fields of a kafka-python ConsumerRecord that DeadLetters reads
    offset: int
    key: bytes | None = None


def polled(n: int, first_offset: int) -> Polled:
    p = Polled()
    p.values = [b"" for _ in range(n)]
    p.parts = [(0, 0, [Record(first_offset + i) for i in range(n)])]
    return p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--letters", default="2000,10000", help="letters per measured batch, comma-separated")
    args = ap.parse_args()
    sizes = [int(x) for x in args.letters.split(",")]
    ok = True
    with LocalBroker() as broker:
        broker.create_topic("dead")
        settings = KafkaSettings(bootstrap_servers=[broker.bootstrap], topic="serving", group_id="bench",
                                 dead_letter_topic="dead")
        dead = DeadLetters(settings, lambda _: None, "bench", lambda outcome, n: None)
        dead.add(polled(10, 0), [(i, "invalid_json", "") for i in range(10)])  # producer connected
        dead.settle(10)
        offset = 10
        for n in sizes:
            batch = polled(n, offset)
            offset += n
            rejected = [(i, "invalid_json", "unexpected character: line 1 column 1 (char 0)") for i in range(n)]
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            dead.add(batch, rejected)
            traced = (tracemalloc.get_traced_memory()[0] - before) / n
            tracemalloc.stop()
            counted = dead.pending_bytes / n
            share = counted / traced
            ok &= share >= 0.9
            print(f"{n:>7,} letters: {traced:6.0f} bytes allocated per letter, {counted:6.0f} counted "
                  f"({LETTER_OVERHEAD_BYTES} overhead + headers): {share:.0%}")
            dead.settle(10)
        dead.close(2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
