"""The HTTP surface: /metrics, /healthz, /readyz and the status API.

GET  /metrics                                   Prometheus exposition
GET  /healthz                                   200 while the process runs
GET  /readyz                                    200 when every monitor has its reference and partitions
GET  /api/v1/monitors                           every monitor's latest window, scores, verdicts
GET  /api/v1/monitors/{name}                    one monitor
GET  /api/v1/monitors/{name}/windows            its evaluated windows, newest first (?limit&before&horizon)
GET  /api/v1/monitors/{name}/windows/{id}       one of them
GET  /api/v1/monitors/{name}/windows/{id}/report  its drill-down report (bearer token, when one is set)
POST /api/v1/monitors/{name}/reference/reload   bearer token required (service.api_token_env)
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client.exposition import choose_encoder

from .evaluation import WindowResult
from .history import report_link, report_path, result_id, window_json
from .result_json import result_json

if TYPE_CHECKING:
    from .app import Service
    from .monitor import Monitor

log = logging.getLogger("driftline.http")


def monitor_json(m: Monitor, base_url: str | None = None) -> dict[str, Any]:
    def latest(r: WindowResult | None) -> dict[str, Any] | None:
        out = result_json(r)
        if r is not None and out is not None:
            wid = result_id(r)
            out = {"id": wid, **out, "report": report_link(base_url, m.name, wid) if m.history_reports else None}
        return out

    invalid = m.invalid.describe()
    return {"name": m.name, "ready": m.ready(), "role": m.role(), "topic": m.settings.kafka.topic,
            "status": "standby" if m.role() == "standby" else "rejecting" if invalid["rejecting"] else "ok",
            "invalid_events": invalid,
            "window": {"type": m.settings.window.type, "size": m.settings.window.size,
                       "min_events": m.settings.window.min_events},
            "reference": {"path": str(m.settings.reference.path), "content_hash": m.reference.content_hash},
            "open_window_events": m.open_window_events(),
            "consumer_lag": {str(p): lag for p, lag in m.consumer_lag().items()},
            # per partition: its event time, and whether it is idle (no longer holding windows back)
            "partitions": {str(p): d for p, d in m.windows.describe_partitions().items()},
            "latest_window": latest(m.latest_result()),
            "latest_evaluated_window": latest(m.latest_evaluated()),
            "horizons": {h: {"latest_window": latest(m.latest_result(h)),
                             "latest_evaluated_window": latest(m.latest_evaluated(h))} for h in m.horizons}}


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, code: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(obj, indent=2, allow_nan=False).encode() + b"\n", headers=headers)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        service = self.server.service
        base = service.settings.service.public_url
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept") or "")
            self._send(200, encoder(service.registry), content_type)
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            ok, problems = service.ready()
            self._json(200 if ok else 503, {"ready": ok, "monitors": problems})
        elif path == "/api/v1/monitors":
            self._json(200, {"monitors": [monitor_json(m, base) for m in service.monitors]})
        elif path.startswith("/api/v1/monitors/"):
            parts = path.split("/")[4:]
            m = self._monitor(parts[0])
            if m is None:
                return
            if len(parts) == 1:
                self._json(200, monitor_json(m, base))
            elif parts[1:] == ["windows"]:
                self._history(m, parse_qs(url.query))
            elif len(parts) == 3 and parts[1] == "windows":
                self._window(m, unquote(parts[2]))
            elif len(parts) == 4 and parts[1] == "windows" and parts[3] == "report":
                if self._authorized(required=False):
                    self._report(m, unquote(parts[2]), parse_qs(url.query).get("horizon", [None])[-1])
            else:
                self._json(404, {"error": "not found"})
        elif path == "/":
            self._json(200, {"service": "driftline", "endpoints": ["/metrics", "/healthz", "/readyz",
                                                                   "/api/v1/monitors",
                                                                   "/api/v1/monitors/{name}/windows"]})
        else:
            self._json(404, {"error": "not found"})

    do_HEAD = do_GET

    def do_POST(self) -> None:
        parts = urlsplit(self.path).path.rstrip("/").split("/")
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 65536))
        if len(parts) == 7 and parts[1:4] == ["api", "v1", "monitors"] and parts[5:] == ["reference", "reload"]:
            if not self._authorized():
                return
            m = self._monitor(parts[4])
            if m is None:
                return
            changed, detail = m.reload_reference()
            ok = changed or detail == m.reference.content_hash
            self._json(200 if ok else 422, {"reloaded": changed, "reference_hash": m.reference.content_hash,
                                            **({} if ok else {"error": detail})})
        else:
            self._json(404, {"error": "not found"})

    def _history(self, m: Monitor, query: dict[str, list[str]]) -> None:
        try:
            limit = int(query.get("limit", ["50"])[-1])
            if not 1 <= limit <= 1000:
                raise ValueError
        except ValueError:
            self._json(400, {"error": "limit: expected a whole number from 1 to 1000"})
            return
        before = query.get("before", [None])[-1]
        horizon = query.get("horizon", [None])[-1]
        if horizon is not None and horizon not in m.horizons:
            self._json(400, {"error": f"horizon: expected one of {', '.join(m.horizons)}"})
            return
        rows = self.server.service.store.history(m.name, limit, before, horizon)
        if rows is None:
            self._json(404, {"error": f"before: no window {before!r} in the history of {m.name}"})
            return
        base = self.server.service.settings.service.public_url
        windows = [window_json(wid, res, has, m.name, base) for wid, res, has in rows]
        nxt = {"next": f"/api/v1/monitors/{m.name}/windows?limit={limit}&before={windows[-1]['id']}"
                       + (f"&horizon={horizon}" if horizon else "")} if len(windows) == limit else {}
        self._json(200, {"windows": windows, **nxt})

    def _window(self, m: Monitor, wid: str) -> None:
        got = self.server.service.store.window(m.name, wid)
        if got is None:
            self._json(404, {"error": f"no window {wid!r} in the history of {m.name}"})
            return
        self._json(200, window_json(wid, got[0], got[1] is not None, m.name,
                                    self.server.service.settings.service.public_url))

    def _report(self, m: Monitor, wid: str, horizon: str | None) -> None:
        if wid == "latest":  # (the alerts' link) the latest window of a horizon, default the buckets'
            if horizon is not None and horizon not in m.horizons:
                self._json(400, {"error": f"horizon: expected one of {', '.join(m.horizons)}"})
                return
            latest = m.latest_result(horizon)
            if latest is None:
                self._json(404, {"error": f"monitor {m.name} has evaluated no window yet"})
                return
            self._send(302, b"", headers={"Location": report_path(m.name, result_id(latest))})
            return
        status, body, content_type = self.server.service.reports.get(m, wid)
        self._send(status, body, content_type)

    def _monitor(self, name: str) -> Monitor | None:
        name = unquote(name)
        for m in self.server.service.monitors:
            if m.name == name:
                return m
        self._json(404, {"error": f"no monitor named {name!r}"})
        return None

    def _authorized(self, required: bool = True) -> bool:
        """The bearer token; without one configured, state-changing endpoints are off (403) and
        the others (`required=False`: reports) open."""
        token = self.server.token
        if token is None:
            if not required:
                return True
            self._json(403, {"error": "state-changing endpoints are disabled; set service.api_token_env"})
            return False
        given = self.headers.get("Authorization", "")
        if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].encode(), token.encode()):
            self._json(401, {"error": "bearer token required"}, {"WWW-Authenticate": 'Bearer realm="driftline"'})
            return False
        return True


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: Service, token: str | None) -> None:
        super().__init__(address, _Handler)
        self.service, self.token = service, token
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
