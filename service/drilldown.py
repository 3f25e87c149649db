"""The API's drill-down reports: a window's stored sample against its monitor's reference.

`GET /api/v1/monitors/{name}/windows/{id}/report` is answered here. The window's profile
comes from the state file (the latest `service.history.reports` windows keep theirs; an
older window answers 410), Evidently renders it in one worker process (service/report.py),
one report at a time, each bounded by a timeout, never on the ingest path; the last few
pages are cached. The thresholds passed to Evidently are the ones that decided driftline's
verdicts: with calibration on, a distance method's noise floor where it is above the
threshold; where an effect-size floor decided a p-value method's verdict, which Evidently
cannot express, the page says so.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .history import window_json
from .profile import ProfileFormatError, WindowProfile
from .result_json import result_from_json

if TYPE_CHECKING:
    from .monitor import Monitor
    from .report import ReportRenderer
    from .store import Store

log = logging.getLogger("driftline.reports")

HTML = "text/html; charset=utf-8"
JSON = "application/json"


def _json(code: int, obj: Any) -> tuple[int, bytes, str]:
    return code, json.dumps(obj, indent=2).encode() + b"\n", JSON


class Reports:
    TIMEOUT = 120.0  # seconds for one report (a 100,000-event window takes about 8 s on 2 cores)
    CACHED = 4  # pages kept (each about 4.5 MB)

    def __init__(self, store: Store, base_url: str | None = None, timeout: float = TIMEOUT) -> None:
        self._store, self._base, self._timeout = store, base_url, timeout
        self._renderer: ReportRenderer | None = None
        self._lock = threading.Lock()  # one report at a time: Evidently holds ~400 MB while it renders
        self._cache: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()

    def get(self, m: Monitor, wid: str) -> tuple[int, bytes, str]:
        """(status, body, content type) of a window's report."""
        got = self._store.window(m.name, wid)
        if got is None:
            return _json(404, {"error": f"no window {wid!r} in the history of monitor {m.name}"})
        result_text, sample = got
        if sample is None:
            return _json(410, {"error": f"the sample of window {wid} is no longer kept: the state file keeps those "
                                        "of the latest service.history.reports windows; its result is still there",
                               "window": window_json(wid, result_text, False, m.name, self._base)})
        result = json.loads(result_text)
        key = (m.name, wid, m.reference.content_hash)
        with self._lock:
            cached = self._cache.get(key)
            if cached is None:
                rendered = self._render(m, wid, result, sample)
                if isinstance(rendered, tuple):
                    return rendered
                cached = self._cache[key] = rendered
                while len(self._cache) > self.CACHED:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
        return 200, cached, HTML

    def _render(self, m: Monitor, wid: str, result: dict[str, Any], sample: bytes) -> bytes | tuple[int, bytes, str]:
        from .report import (
            INSTALL_HINT,
            ReportError,
            ReportRenderer,
            ReportTimeout,
            ReportUnavailable,
            columns_from_result,
            render_report,
        )

        try:
            window = WindowProfile.from_bytes(sample)
        except ProfileFormatError as exc:
            return _json(500, {"error": f"the sample of window {wid} cannot be read: {exc}"})
        pred = m.settings.event.prediction
        features, prediction, notes = columns_from_result(result_from_json(m.name, wid, result),
                                                          pred.column if pred else None)
        if result.get("reference_hash") != m.reference.content_hash:
            notes.insert(0, f"The reference changed since this window was evaluated (then "
                            f"{result.get('reference_hash')}, now {m.reference.content_hash}): the report compares "
                            "it with the reference in use now.")
        if self._renderer is None:
            self._renderer = ReportRenderer()
        try:
            html = render_report(window, m.reference, features, drift_share=result["drift_share_threshold"],
                                 prediction=prediction, title=f"{m.name}: {result['horizon']} window {wid}",
                                 timeout=self._timeout, renderer=self._renderer, notes=notes)
        except ReportUnavailable as exc:
            return _json(501, {"error": str(exc), "install": INSTALL_HINT})
        except ReportTimeout as exc:
            log.warning("monitor %s: the report of window %s took too long: %s", m.name, wid, exc)
            return _json(504, {"error": str(exc)})
        except ReportError as exc:
            log.warning("monitor %s: the report of window %s failed: %s", m.name, wid, exc)
            return _json(500, {"error": str(exc)})
        return html.encode()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
