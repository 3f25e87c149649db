"""A webhook receiver that verifies every delivery with the `standardwebhooks` reference
library, deduplicates by webhook-id, and prints or records what it received.

Run it alone: ``python -m driftline.service.demo.receiver --port 9200`` with
DRIFTLINE_WEBHOOK_SECRET set; the demo and the tests start it themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Delivery:
    webhook_id: str
    verified: bool
    body: dict[str, Any] | None
    headers: dict[str, str]
    error: str | None = None


@dataclass
class ReceiverState:
    secret: str
    respond_with: int = 204
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_delivery: Callable[[Delivery], None] | None = None

    def unique_verified(self) -> dict[str, Delivery]:
        with self.lock:
            return {d.webhook_id: d for d in self.deliveries if d.verified}


class _Handler(BaseHTTPRequestHandler):
    server: WebhookReceiver
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        from standardwebhooks.webhooks import Webhook, WebhookVerificationError

        state = self.server.state
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = Webhook(state.secret).verify(raw.decode(), headers)
            delivery = Delivery(headers.get("webhook-id", ""), True, body, headers)
        except (WebhookVerificationError, ValueError) as exc:
            delivery = Delivery(headers.get("webhook-id", ""), False, None, headers, str(exc))
        with state.lock:
            state.deliveries.append(delivery)
            code = state.respond_with if delivery.verified else 400
        if state.on_delivery:
            state.on_delivery(delivery)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


class WebhookReceiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, secret: str, port: int = 0, on_delivery: Callable[[Delivery], None] | None = None,
                 host: str = "127.0.0.1") -> None:
        super().__init__((host, port), _Handler)
        self.state = ReceiverState(secret, on_delivery=on_delivery)
        self._thread = threading.Thread(target=self.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/retrain"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def print_delivery(d: Delivery) -> None:
    if not d.verified:
        print(f"[receiver] REJECTED delivery {d.webhook_id or '?'}: {d.error}", flush=True)
        return
    data = (d.body or {}).get("data", {})
    feats = ", ".join(f"{f['feature']} ({f['method']} {f['score']:.3g} vs {f['threshold']})"
                      for f in data.get("drifted_features", []) if f.get("score") is not None)
    print(f"[receiver] verified retraining request {d.webhook_id} for monitor {data.get('monitor')}: "
          f"drift share {data.get('dataset_drift_share', 0):.2f}, window of {data.get('window', {}).get('events')} "
          f"events, drifted: {feats}", flush=True)
    print(json.dumps(d.body, indent=2), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a container, to accept other containers")
    p.add_argument("--port", type=int, default=9200)
    p.add_argument("--secret-env", default="DRIFTLINE_WEBHOOK_SECRET")
    args = p.parse_args(argv)
    secret = os.environ.get(args.secret_env)
    if not secret:
        print(f"set {args.secret_env} to the webhook secret (whsec_…)", file=sys.stderr)
        return 2
    receiver = WebhookReceiver(secret, args.port, on_delivery=print_delivery, host=args.host)
    print(f"[receiver] listening on {args.host}:{receiver.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        receiver.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
