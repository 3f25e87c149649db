"""`driftline evaluate`: a whole file's drift against a reference, with the service's engine.

The reference is a ``.dlref`` profile, or training data (Parquet or CSV) profiled in memory
by `build_profile`. The current file is read batch by batch into one `WindowProfile` with
room for every row (so every score is exact), and `evaluate_window` scores it under a
`MonitorSettings` built from the options: the drift table is the one the service computes
for a window holding the same rows. The option checks are the service's (`feature_kinds`),
with each error naming the option it came from.

Exit codes: 0 evaluated (no dataset drift, or drift without ``--fail-on-drift``), 1 an
error (the message names the option), 3 dataset drift with ``--fail-on-drift``; argparse
exits 2 on a malformed command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from driftline.collectors.events import MISSING, DecodedBatch

from .drift import ColumnKind, UnknownMethodError, get_method
from .evaluation import WindowResult, evaluate_window
from .identifiers import identifier_columns
from .monitor import MonitorSetupError, feature_kinds
from .offline_options import OfflineError, number, pairs, select, settings_for, split
from .offline_table import render_table
from .profile import DEFAULT_BUDGET, WindowProfile
from .reference import (
    ReferenceError,
    ReferenceProfile,
    _batches,
    build_profile,
    category_label,
    load_profile,
    with_noise_floors,
)
from .result_json import verdict_json

EXIT_OK, EXIT_ERROR, EXIT_DRIFT = 0, 1, 3
HTML_TIMEOUT = 600.0  # a report of a large file against a large reference takes a minute or two
BATCH_ROWS = 250_000
_DATA_SUFFIXES = {".parquet", ".pq", ".csv", ".gz", ".txt"}  # what reference._batches reads


Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class OfflineResult:
    result: WindowResult
    reference: ReferenceProfile
    reference_path: Path
    current_path: Path
    prediction_column: str | None
    window: WindowProfile  # the current file as one window: what --html reports on
    left_out: dict[str, str] = dataclasses.field(default_factory=dict)  # identifiers, timestamps: why

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {"reference": {"path": str(self.reference_path), "source": self.reference.source,
                              "rows": self.reference.meta.get("rows")},
                "current": {"path": str(self.current_path)},
                "rows": r.events, "reference_hash": r.reference_hash, **verdict_json(r)}

    def to_table(self) -> str:
        ref_rows = self.reference.meta.get("rows")
        return render_table(self.result, f"reference  {self.reference_path}"
                            + (f": {ref_rows:,} rows" if ref_rows else "") + f", {self.reference.content_hash}",
                            f"current    {self.current_path}: {self.result.events:,} rows")


# -- reading files ------------------------------------------------------------------------

def _is_data(path: Path) -> bool:
    return path.suffix.lower() in _DATA_SUFFIXES


def _column_names(path: Path, option: str) -> list[str]:
    if not path.exists():
        raise OfflineError(f"{option} {path}: no such file")
    if not _is_data(path):
        raise OfflineError(f"{option} {path}: expected a .parquet or .csv file")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        return list(pd.read_csv(path, nrows=0).columns)
    except Exception as exc:  # pyarrow and pandas raise many kinds for a file they cannot parse
        raise OfflineError(f"{option} {path}: cannot read it: {exc}") from None


def _load_reference(path: Path) -> tuple[ReferenceProfile | None, list[str]]:
    """The profile when `path` is one (else None, to be built from the data), and its columns."""
    if _is_data(path):
        return None, _column_names(path, "--reference")
    try:
        profile = load_profile(path)
    except ReferenceError as exc:
        raise OfflineError(f"--reference {exc}") from None
    return profile, list(profile.columns)


def _batch(frame: pd.DataFrame, names: list[str], kinds: list[ColumnKind], pred: str | None,
           pred_kind: ColumnKind | None, path: Path) -> DecodedBatch:
    """A file's rows as the columns a decoded Kafka batch holds: numbers with NaN where
    missing (±inf too, as in the reference), labels spelled as the reference spells them."""
    def column(name: str, kind: ColumnKind) -> np.ndarray | list[Any]:
        series = frame[name]
        if kind is ColumnKind.NUMERICAL:
            try:
                arr = pd.to_numeric(series, errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError):
                raise OfflineError(f"--current {path}: column {name!r} holds non-numeric values, and the "
                                   "reference holds it as numerical") from None
            return np.where(np.isfinite(arr), arr, np.nan)
        codes, uniques = pd.factorize(series)  # missing values get code -1: the last label, MISSING
        labels = np.array([*(category_label(u) for u in uniques), MISSING], dtype=object)
        return labels[codes].tolist()  # type: ignore[no-any-return]

    n = len(frame)
    cols = {i: column(name, kind) for i, (name, kind) in enumerate(zip(names, kinds, strict=True))}
    return DecodedBatch(
        size=n, numerical={i: c for i, c in cols.items() if isinstance(c, np.ndarray)},
        categorical={i: c for i, c in cols.items() if isinstance(c, list)}, event_time=np.zeros(n),
        prediction=column(pred, pred_kind) if pred and pred_kind else None, latency=None, model_version=None)


# -- the evaluation -----------------------------------------------------------------------

def evaluate_files(reference: Path, current: Path, *, columns: list[str] | None = None,
                   exclude: list[str] | None = None, method: str | None = None, num_method: str | None = None,
                   cat_method: str | None = None, threshold: float | None = None, drift_share: float = 0.5,
                   per_column_method: dict[str, str] | None = None,
                   per_column_threshold: dict[str, float] | None = None,
                   types: dict[str, ColumnKind] | None = None, prediction_column: str | None = None,
                   calibration: str = "on", batch_rows: int = BATCH_ROWS,
                   progress: Progress | None = None, workers: int = 1,
                   leave_out_identifiers: bool = True) -> OfflineResult:
    """The service's drift table for `current` against `reference`; OfflineError on bad input.

    Without `columns`, columns that look like identifiers or timestamps are left out
    (`identifiers.py`; not those an option names) and listed in `left_out`.
    `progress(file, rows, total)` is called after each batch read (file: "reference" or "current")."""
    col_methods, col_thresholds, types = per_column_method or {}, per_column_threshold or {}, types or {}
    for option, name in [("--method", method), ("--num-method", num_method), ("--cat-method", cat_method),
                         *((f"--per-column-method {c}", m) for c, m in col_methods.items())]:
        try:
            if name is not None:
                get_method(name)
        except UnknownMethodError as exc:
            raise OfflineError(f"{option}: {exc}") from None
    cur_names = _column_names(current, "--current")
    profile, ref_names = _load_reference(reference)
    built = False
    pred = prediction_column
    features = select(columns, exclude or [], ref_names, cur_names, pred, reference, current)
    left_out: dict[str, str] = {}
    if columns is None and leave_out_identifiers:
        named = {*col_methods, *col_thresholds, *types}
        left_out = identifier_columns(current, [c for c in features if c not in named],
                                      reference if profile is None else profile, batch_rows)
        features = [c for c in features if c not in left_out]
        if not features:
            raise OfflineError(f"--columns: every column both files have looks like an identifier or a timestamp "
                               f"({', '.join(left_out)}); name the columns to compare with --columns")
    compared = [*features, *([pred] if pred else [])]
    for option, keys in (("--per-column-method", col_methods), ("--per-column-threshold", col_thresholds),
                         ("--numerical/--categorical", types)):
        for c in keys:
            if c not in ref_names and c not in cur_names:
                raise OfflineError(f"{option}: no column {c!r} in --reference {reference} or --current {current}")
    # a column left out of the comparison (--columns, --exclude) keeps no option
    col_methods = {c: v for c, v in col_methods.items() if c in compared}
    col_thresholds = {c: v for c, v in col_thresholds.items() if c in compared}
    types = {c: v for c, v in (types or {}).items() if c in compared}
    if profile is None:
        try:
            # its noise floors are simulated once the options are known to be right (below)
            profile = build_profile(reference, columns=compared, kinds=types, batch_rows=batch_rows, calibrate=False,
                                    progress=progress and (lambda rows, total: progress("reference", rows, total)))
            built = True
        except ReferenceError as exc:
            raise OfflineError(f"--reference {exc}") from None
    elif pred in types and types[pred] is not profile.columns[pred].kind:
        raise OfflineError(f"--{types[pred].value} {pred}: the reference profile holds it as "
                           f"{profile.columns[pred].kind.value}; rebuild the reference with --{types[pred].value}")
    settings = settings_for(reference, features, method, num_method, cat_method, threshold, drift_share,
                         col_methods, col_thresholds, types, pred, calibration)

    def at(path: str) -> str:  # a config field, as the option that set it
        if path.startswith("drift."):
            return "--" + path.removeprefix("drift.").replace("_", "-")
        if path.startswith("event.prediction"):
            return f"--per-column-method {pred}" if path.endswith(".method") else "--prediction-column"
        name = path.removeprefix("event.features.")
        if name in settings.event.features:
            return f"--columns {name}"
        if name.endswith(".type"):
            return f"--{types[name[:-5]].value} {name[:-5]}"
        return f"--per-column-method {name.removesuffix('.method')}"

    try:
        kinds = feature_kinds(settings, profile, 0, at)
    except MonitorSetupError as exc:
        raise OfflineError(str(exc)) from None
    if built and calibration == "on":
        profile = with_noise_floors(profile, progress and (lambda done, total, _: progress("noise floors", done,
                                                                                          total)), workers)
    pred_kind = profile.columns[pred].kind if pred else None
    names = list(features)
    try:
        _, batches, total = _batches(current, [*names, *([pred] if pred else [])], batch_rows)
        # budget: room for every row, so no value is ever sampled away
        window = WindowProfile(tuple(kinds[n] for n in names), 0.0, 0.0, budget=max(total or sys.maxsize, 1),
                               prediction_kind=pred_kind)
        for frame in batches:
            window.add_batch(_batch(frame, names, [kinds[n] for n in names], pred, pred_kind, current))
            if progress:
                progress("current", window.events, total)
    except ReferenceError as exc:
        raise OfflineError(f"--current {exc}") from None
    except (ValueError, OSError) as exc:  # a malformed CSV row, an unreadable Parquet page
        raise OfflineError(f"--current {current}: cannot read it: {exc}") from None
    if window.events == 0:
        raise OfflineError(f"--current {current}: no rows")
    result = evaluate_window(window, profile, settings, tuple(names))
    if result.prediction is not None and pred:
        result = dataclasses.replace(result, prediction=dataclasses.replace(result.prediction, feature=pred))
    return OfflineResult(result, profile, reference, current, pred, window, left_out)


# -- the command --------------------------------------------------------------------------

def _check_html(path: Path) -> None:
    """Fail before the evaluation, not after it, when the report cannot be written."""
    import importlib.util

    from .report import INSTALL_HINT

    if importlib.util.find_spec("evidently") is None:
        raise OfflineError(f"--html: reports need Evidently, which is not installed: {INSTALL_HINT}")
    if not path.parent.is_dir():
        raise OfflineError(f"--html {path}: no such directory {path.parent}")


def _print_progress(what: str, rows: int, total: int | None) -> None:
    if what == "noise floors":
        print(f"  noise floors: {rows} of {total} columns", file=sys.stderr, flush=True)
        return
    share = f" ({100 * rows / total:.0f}%)" if total else ""
    print(f"  {what}: read {rows:,}{f' of {total:,}' if total else ''} rows{share}", file=sys.stderr, flush=True)


def write_html_report(out: OfflineResult, path: Path, timeout: float = HTML_TIMEOUT) -> None:
    """Evidently's drill-down report of the file's window, as the service renders a window's
    (at most DEFAULT_BUDGET rows of the current file, REFERENCE_ROWS of the reference)."""
    from .report import columns_from_result, render_report

    features, pred, notes = columns_from_result(out.result, out.prediction_column)
    page = render_report(out.window, out.reference, features, drift_share=out.result.drift_share_threshold,
                         prediction=pred, title=f"driftline evaluate: {out.current_path.name} against "
                         f"{out.reference_path.name}", timeout=timeout, current_rows=DEFAULT_BUDGET, notes=notes)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)


def _print_left_out(out: OfflineResult) -> None:
    """Which columns were left out as identifiers or timestamps, and how to compare them anyway."""
    why = ", ".join(f"{c} ({reason})" for c, reason in out.left_out.items())
    keep = ",".join([*(f.feature for f in out.result.features), *out.left_out])
    print(f"driftline evaluate: left out {len(out.left_out)} column{'s' if len(out.left_out) != 1 else ''} that "
          f"look{'s' if len(out.left_out) == 1 else ''} like identifiers or timestamps: {why}; to compare "
          f"{'it' if len(out.left_out) == 1 else 'them'} too, name every column to compare: --columns {keep}",
          file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """`driftline evaluate`; prints the table or JSON on stdout, errors on stderr."""
    try:
        if args.format not in ("table", "json"):
            raise OfflineError(f"--format: expected table or json, got {args.format!r}")
        calibration = getattr(args, "calibration", "on")
        if calibration not in ("on", "off"):
            raise OfflineError(f"--calibration: expected on or off, got {calibration!r}")
        if args.html is not None:
            _check_html(args.html)
        types = {c: ColumnKind.NUMERICAL for c in split(args.numerical)}
        both = sorted(set(types) & set(split(args.categorical)))
        if both:
            raise OfflineError(f"--numerical/--categorical: {', '.join(both)} given as both")
        types.update({c: ColumnKind.CATEGORICAL for c in split(args.categorical)})
        thresholds = {c: number(f"--per-column-threshold {c}", v)
                      for c, v in pairs("--per-column-threshold", args.per_column_threshold).items()}
        show = None if args.quiet else _print_progress
        out = evaluate_files(
            args.reference, args.current, columns=split(args.columns) or None, exclude=split(args.exclude),
            method=args.method, num_method=args.num_method, cat_method=args.cat_method,
            threshold=None if args.threshold is None else number("--threshold", args.threshold),
            drift_share=number("--drift-share", args.drift_share, lambda x: 0 < x <= 1,
                                "a share greater than 0 and at most 1"),
            per_column_method=pairs("--per-column-method", args.per_column_method),
            per_column_threshold=thresholds, types=types, prediction_column=args.prediction_column,
            calibration=calibration, progress=show, workers=os.cpu_count() or 1)
    except OfflineError as exc:
        print(f"driftline evaluate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if out.left_out:
        _print_left_out(out)
    print(json.dumps(out.to_json(), indent=2) if args.format == "json" else out.to_table())
    if args.html is not None:
        from .report import ReportError

        if not args.quiet:
            print(f"  writing the report to {args.html} (Evidently: seconds to minutes)", file=sys.stderr, flush=True)
        try:
            write_html_report(out, args.html)
        except (ReportError, OSError) as exc:
            print(f"driftline evaluate: --html {args.html}: {exc}", file=sys.stderr)
            return EXIT_ERROR
    return EXIT_DRIFT if args.fail_on_drift and out.result.dataset_drift else EXIT_OK
