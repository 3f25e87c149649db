"""`driftline evaluate`'s options: the columns to compare and the monitor's settings they
make, each error naming the option it came from."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .config import MonitorSettings
from .drift import ColumnKind


class OfflineError(Exception):
    """An input that cannot be evaluated; the message starts with the option at fault."""


def select(columns: list[str] | None, exclude: list[str], ref_names: list[str], cur_names: list[str],
            pred: str | None, reference: Path, current: Path) -> list[str]:
    def check(option: str, name: str) -> None:
        for names, option_file, path in ((ref_names, "--reference", reference), (cur_names, "--current", current)):
            if name not in names:
                raise OfflineError(f"{option}: no column {name!r} in {option_file} {path} "
                                   f"(it has {', '.join(names)})")

    if pred:
        check("--prediction-column", pred)
    for name in exclude:
        if name not in ref_names and name not in cur_names:
            raise OfflineError(f"--exclude: no column {name!r} in --reference {reference} or --current {current}")
    for name in columns or []:
        check("--columns", name)
    chosen = columns if columns else [c for c in ref_names if c in cur_names]
    features = [c for c in dict.fromkeys(chosen) if c not in exclude and c != pred]
    if not features:
        raise OfflineError(f"--columns: no column to compare (--reference {reference} has {', '.join(ref_names)}; "
                           f"--current {current} has {', '.join(cur_names)})")
    return features


def settings_for(reference: Path, features: list[str], method: str | None, num_method: str | None,
              cat_method: str | None, threshold: float | None, drift_share: float, col_methods: dict[str, str],
              col_thresholds: dict[str, float], types: dict[str, ColumnKind], pred: str | None,
              calibration: str = "on") -> MonitorSettings:
    """A monitor's settings for one file; where events would come from is inert (never used)."""
    def spec(name: str, **extra: Any) -> dict[str, Any]:
        return {"method": col_methods.get(name), "threshold": col_thresholds.get(name), **extra}

    conf = {"name": "offline",
            "kafka": {"bootstrap_servers": ["offline.invalid:9"], "topic": "offline", "group_id": "offline"},
            "reference": {"path": str(reference)},
            "event": {"features": {n: spec(n, path=f"c{i}", type=types.get(n)) for i, n in enumerate(features)},
                      "prediction": spec(pred, path="prediction", column=pred) if pred else None},
            "window": {"type": "count", "size": 1, "min_events": 1},
            "drift": {"method": method, "num_method": num_method, "cat_method": cat_method,
                      "threshold": threshold, "drift_share": drift_share, "calibration": calibration}}
    try:
        return MonitorSettings.model_validate(conf)
    except ValidationError as exc:  # the options are checked before; this names what slipped through
        raise OfflineError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None


def split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def number(option: str, text: str, ok: Callable[[float], bool] = math.isfinite, expected: str = "a number") -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not ok(value):
        raise OfflineError(f"{option}: expected {expected}, got {text!r}")
    return value


def pairs(option: str, text: str | None) -> dict[str, str]:
    out = {}
    for item in split(text):
        name, sep, value = item.rpartition("=")
        if not sep or not name.strip() or not value.strip():
            raise OfflineError(f"{option}: expected column=value[,column=value...], got {item!r}")
        out[name.strip()] = value.strip()
    return out
