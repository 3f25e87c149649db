"""The demo parts of the Compose stack, run in the driftline image (deploy/compose.yaml):

  reference  build the credit-risk model's reference profile from synthetic training data
  traffic    produce the model's serving events to Kafka, shifting some features after a while
  receiver   a webhook receiver that verifies every retraining request (listens on all interfaces)

For your own model you replace all three: your training data (`driftline reference build`),
your serving events, your ML platform's webhook endpoint.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from driftline.service.demo.traffic import DEFAULT_SHIFT, FEATURES, TrafficModel, encode, write_training_data


def reference(args: argparse.Namespace) -> int:
    from driftline.service.reference import build_profile, save_profile

    if args.out.exists() and not args.force:
        print(f"[reference] {args.out} exists, keeping it", flush=True)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_training_data(Path(tmp) / "training.parquet", rows=args.rows, seed=1)
        profile = build_profile(data)
    save_profile(profile, args.out)
    print(f"[reference] wrote {args.out} ({profile.content_hash})", flush=True)
    return 0


def traffic(args: argparse.Namespace) -> int:
    from kafka import KafkaProducer

    shift = tuple(s for s in args.shift.split(",") if s)
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=20, max_block_ms=30000)
    model = TrafficModel(seed=args.seed)
    started = time.monotonic()
    sent, tick = 0, 0.5
    print(f"[traffic] {args.rate:g} events/s to {args.topic}; shifting {', '.join(shift)} after "
          f"{args.shift_after:g}s", flush=True)
    while args.duration is None or time.monotonic() - started < args.duration:
        if not model.shift and time.monotonic() - started >= args.shift_after:
            model.shift = shift
            print(f"[traffic] shifting {', '.join(shift)} now", flush=True)
        for value in encode(model.events(max(1, round(args.rate * tick)))):
            producer.send(args.topic, value)
            sent += 1
        time.sleep(tick)
    producer.flush(30)
    producer.close(10)
    print(f"[traffic] sent {sent} events", flush=True)
    return 0


def receiver(args: argparse.Namespace) -> int:
    from driftline.service.demo.receiver import main as receiver_main

    return receiver_main(["--host", args.host, "--port", str(args.port), "--secret-env", args.secret_env])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("reference", help="build the demo model's reference profile")
    ref.add_argument("--out", type=Path, required=True)
    ref.add_argument("--rows", type=int, default=50_000)
    ref.add_argument("--force", action="store_true", help="rebuild even if --out exists")
    ref.set_defaults(run=reference)
    tr = sub.add_parser("traffic", help="produce the demo model's serving events")
    tr.add_argument("--bootstrap", required=True)
    tr.add_argument("--topic", required=True)
    tr.add_argument("--rate", type=float, default=100.0, help="events per second")
    tr.add_argument("--shift-after", type=float, default=600.0, help="seconds before the shift")
    tr.add_argument("--shift", default=",".join(DEFAULT_SHIFT), help=f"features to shift, from {', '.join(FEATURES)}")
    tr.add_argument("--seed", type=int, default=42)
    tr.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    tr.set_defaults(run=traffic)
    rc = sub.add_parser("receiver", help="verify and print retraining webhooks")
    rc.add_argument("--host", default="0.0.0.0")
    rc.add_argument("--port", type=int, default=9200)
    rc.add_argument("--secret-env", default="DRIFTLINE_WEBHOOK_SECRET")
    rc.set_defaults(run=receiver)
    args = p.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
