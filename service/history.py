"""A monitor's evaluated windows, as the history API and the report links name them.

A window's id follows from the window itself (its horizon, start and end), so it is the same
after a restart, on a standby that took over, and in the webhook that cites it:
`10s-1796035820000-1796035830000` (milliseconds since the epoch); a count window's is its
number and its first event's time: `1000events-n17-1796035820000`.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import quote

from .evaluation import WindowResult


def window_id(horizon: str, start: float, end: float, number: int | None = None) -> str:
    """A time window's id: its length, start and end; a count window's: its number and its
    first event's time (its events may all share one time)."""
    def ms(t: float) -> int:
        return round(t * 1000) if math.isfinite(t) else 0

    if number is not None:
        return f"{horizon.replace(' ', '')}-n{number}-{ms(start)}"
    return f"{horizon.replace(' ', '')}-{ms(start)}-{ms(end)}"


def result_id(r: WindowResult) -> str:
    return r.window_id or window_id(r.horizon, r.window_start, r.window_end)


def report_path(monitor: str, wid: str) -> str:
    return f"/api/v1/monitors/{quote(monitor, safe='')}/windows/{quote(wid, safe='')}/report"


def report_link(base_url: str | None, monitor: str, wid: str) -> str:
    """The report's URL: absolute under `service.public_url` when set, else the API path."""
    path = report_path(monitor, wid)
    return base_url.rstrip("/") + path if base_url else path


def window_json(wid: str, result: str | dict[str, Any], has_sample: bool, monitor: str,
                base_url: str | None) -> dict[str, Any]:
    """One entry of the history: the stored result with its id, `start`/`end`, and the link
    to its report while its sample is kept (null after)."""
    r = json.loads(result) if isinstance(result, str) else dict(result)
    return {"id": wid, "horizon": r.get("horizon"), "start": r.get("window_start"), "end": r.get("window_end"),
            "events": r.get("events"), "status": r.get("status"), "dataset_drift": r.get("dataset_drift"),
            "drift_share": r.get("drift_share"),
            "report": report_link(base_url, monitor, wid) if has_sample else None,
            **{k: v for k, v in r.items() if k not in ("horizon", "window_start", "window_end", "events", "status",
                                                        "dataset_drift", "drift_share")}}

