"""Reference profiles: what the model was trained on, prepared once for every drift method.

A profile file (``.dlref``) is a zip of numpy arrays plus a JSON header: for each
numerical column its finite values sorted, for each categorical column its labels with
counts, and for every column how many values were missing. Its content hash (SHA-256
over the columns, independent of when or where it was built) identifies the version the
webhook and the status API report.

Format 2 adds each column's noise table (`drift/noise.py`): how far windows of 100 to
100,000 values drawn from the training data itself score against it, the data of the
calibrated thresholds, simulated when the profile is built (`drift/simulate.py`) and kept in
``noise.json``, with its own SHA-256 in the header. A format-1 profile still loads, with
calibration unavailable: every result says so, and the thresholds are Evidently's plain
ones until it is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from driftline.collectors.schema import category_label

from .drift import ColumnKind, ColumnSample
from .drift.noise import NoiseTable
from .drift.simulate import CalibrationProgress, simulate_columns
from .quality import ReferenceFacts

__all__ = ["ReferenceColumn", "ReferenceError", "ReferenceProfile", "build_profile", "category_label",
           "load_profile", "save_profile"]

FORMAT = "driftline-reference"
FORMAT_VERSION = 2
READS_VERSIONS = (1, 2)
NOISE_FILE = "noise.json"

log = logging.getLogger(__name__)


@dataclass
class ReferenceColumn:
    name: str
    kind: ColumnKind
    sample: ColumnSample
    missing: int
    noise: NoiseTable | None = None  # None: calibration unavailable (see ReferenceProfile.calibration_note)

    @property
    def rows(self) -> int:
        return self.sample.n + self.missing

    @cached_property
    def facts(self) -> ReferenceFacts:
        """What the data-quality checks compare a window with (built with the profile)."""
        return ReferenceFacts.of(self.sample, self.missing)


@dataclass
class ReferenceProfile:
    columns: dict[str, ReferenceColumn]
    content_hash: str
    created_at: float
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    # why the noise floors are unavailable (an older profile, built without them), else None
    calibration_note: str | None = None

    def column(self, name: str) -> ReferenceColumn:
        return self.columns[name]

    def summary(self) -> dict[str, Any]:
        return {"content_hash": self.content_hash, "created_at": self.created_at, "source": self.source,
                "calibration": self.calibration_note or "available",
                "columns": {n: {"kind": c.kind.value, "values": c.sample.n, "missing": c.missing}
                            for n, c in self.columns.items()}}


class ReferenceError(Exception):
    pass


# -- building --------------------------------------------------------------------------

class _ColumnBuilder:
    def __init__(self, name: str, kind: ColumnKind) -> None:
        self.name, self.kind = name, kind
        self.chunks: list[np.ndarray] = []
        self.counts: Counter[str] = Counter()
        self.missing = 0

    def add(self, values: Any) -> None:
        import pandas as pd

        series = pd.Series(values)
        if self.kind is ColumnKind.NUMERICAL:
            try:
                arr = pd.to_numeric(series, errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError):
                raise ReferenceError(f"column {self.name!r} is numerical but holds non-numeric values; "
                                     "declare it categorical") from None
            finite = np.isfinite(arr)
            self.missing += int(arr.size - np.count_nonzero(finite))
            self.chunks.append(arr[finite])
        else:
            present = series.dropna()
            self.missing += int(series.size - present.size)
            for value, n in present.value_counts(sort=False).items():
                self.counts[category_label(value)] += int(n)

    def finish(self) -> ReferenceColumn:
        if self.kind is ColumnKind.NUMERICAL:
            values = np.sort(np.concatenate(self.chunks) if self.chunks else np.zeros(0))
            sample = ColumnSample.from_sorted(values)
        else:
            labels = sorted(self.counts)
            sample = ColumnSample(ColumnKind.CATEGORICAL, labels=np.array(labels, dtype=object),
                                  counts=np.array([self.counts[k] for k in labels], dtype=np.int64))
        if sample.n == 0:
            raise ReferenceError(f"column {self.name!r} has no usable value in the training data")
        return ReferenceColumn(self.name, self.kind, sample.prepare(), self.missing)


def infer_kind(dtype: Any) -> ColumnKind:
    """Numbers are numerical, everything else (strings, booleans, categories) categorical."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
        return ColumnKind.CATEGORICAL
    return ColumnKind.NUMERICAL


ProgressFn = Callable[[int, int | None], None]


def _batches(path: Path, columns: list[str] | None, batch_rows: int) -> tuple[list[str], Iterator[Any], int | None]:
    """(column names, iterator of pandas DataFrames, total rows if known) for Parquet or CSV."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        wanted = columns or names
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise ReferenceError(f"{path}: no column {', '.join(map(repr, unknown))}; has {', '.join(names)}")
        it = (b.to_pandas() for b in pf.iter_batches(batch_size=batch_rows, columns=wanted))
        return wanted, it, pf.metadata.num_rows
    if suffix in {".csv", ".gz", ".txt"} or path.name.endswith(".csv.gz"):
        head = pd.read_csv(path, nrows=0)
        names = list(head.columns)
        wanted = columns or names
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise ReferenceError(f"{path}: no column {', '.join(map(repr, unknown))}; has {', '.join(names)}")
        # round_trip: the default parser can be off by one ulp, and reference values must be exact
        reader = pd.read_csv(path, usecols=wanted, chunksize=batch_rows, float_precision="round_trip")
        return wanted, iter(reader), None
    raise ReferenceError(f"{path}: expected a .parquet or .csv file")


def build_profile(path: str | Path, *, columns: list[str] | None = None,
                  kinds: dict[str, ColumnKind] | None = None, batch_rows: int = 250_000,
                  progress: ProgressFn | None = None, calibrate: bool = True,
                  calibration_progress: CalibrationProgress | None = None, workers: int = 1) -> ReferenceProfile:
    """Read training data (Parquet or CSV) batch by batch into a reference profile.

    Column kinds are inferred from the data types (numbers numerical, the rest
    categorical); `kinds` overrides any of them. With `calibrate` (the default) each
    column's noise table is simulated from it (`calibration_progress(done, total, column)`
    after each column; `workers` processes, see `simulate_columns`); without, calibration is
    unavailable with this profile.
    """
    src = Path(path)
    if not src.exists():
        raise ReferenceError(f"{src}: no such file")
    kinds = dict(kinds or {})
    names, batches, total = _batches(src, columns, batch_rows)
    unknown = sorted(set(kinds) - set(names))
    if unknown:
        raise ReferenceError(f"type given for {', '.join(map(repr, unknown))}, not columns of {src}")
    builders: dict[str, _ColumnBuilder] = {}
    rows = 0
    for frame in batches:
        for name in names:
            if name not in builders:
                builders[name] = _ColumnBuilder(name, kinds.get(name) or infer_kind(frame[name].dtype))
            builders[name].add(frame[name])
        rows += len(frame)
        if progress:
            progress(rows, total)
    if not builders:
        raise ReferenceError(f"{src}: no rows")
    cols = {n: b.finish() for n, b in builders.items()}
    for c in cols.values():
        _ = c.facts
    profile = ReferenceProfile(cols, _content_hash(cols), time.time(), src.name, {"rows": rows},
                               "the profile was built without its noise floors")
    return with_noise_floors(profile, calibration_progress, workers) if calibrate else profile


def with_noise_floors(profile: ReferenceProfile, progress: CalibrationProgress | None = None,
                      workers: int = 1) -> ReferenceProfile:
    """The profile with every column's noise table simulated (seeded by its content hash)."""
    tables = simulate_columns({n: c.sample for n, c in profile.columns.items()}, profile.content_hash, progress,
                              workers)
    columns = {n: dataclasses.replace(c, noise=tables[n]) for n, c in profile.columns.items()}
    return dataclasses.replace(profile, columns=columns, calibration_note=None)


def print_progress(rows: int, total: int | None) -> None:
    share = f" ({100 * rows / total:.0f}%)" if total else ""
    print(f"  read {rows:,}{f' of {total:,}' if total else ''} rows{share}", file=sys.stderr, flush=True)


def print_calibration_progress(done: int, total: int, column: str) -> None:
    print(f"  noise floors: {done} of {total} columns ({column})", file=sys.stderr, flush=True)


# -- file format -----------------------------------------------------------------------

def _content_hash(columns: dict[str, ReferenceColumn]) -> str:
    h = hashlib.sha256()
    for name in sorted(columns):
        col = columns[name]
        h.update(json.dumps([name, col.kind.value, col.missing]).encode())
        if col.kind is ColumnKind.NUMERICAL:
            h.update(np.ascontiguousarray(col.sample.sorted, dtype="<f8").tobytes())
        else:
            h.update(json.dumps([col.sample.labels.tolist(), col.sample.counts.tolist()]).encode())
    return "sha256:" + h.hexdigest()


def save_profile(profile: ReferenceProfile, path: str | Path) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    dest = Path(path)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "content_hash": profile.content_hash,
              "created_at": profile.created_at, "source": profile.source, "meta": profile.meta,
              "columns": [{"name": c.name, "kind": c.kind.value, "missing": c.missing}
                          for c in profile.columns.values()]}
    noise = {c.name: c.noise.to_json() for c in profile.columns.values() if c.noise is not None}
    noise_bytes = json.dumps(noise, separators=(",", ":")).encode()
    if noise:
        header["noise_sha256"] = hashlib.sha256(noise_bytes).hexdigest()
    tmp = dest.with_name(dest.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("header.json", json.dumps(header, indent=2))
        if noise:
            zf.writestr(NOISE_FILE, noise_bytes)
        for i, col in enumerate(profile.columns.values()):
            if col.kind is ColumnKind.NUMERICAL:
                zf.writestr(f"col{i}.npy", _npy(np.ascontiguousarray(col.sample.sorted, dtype="<f8")))
            else:
                zf.writestr(f"col{i}.json", json.dumps({"labels": col.sample.labels.tolist(),
                                                        "counts": col.sample.counts.tolist()}))
    tmp.replace(dest)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def load_profile(path: str | Path) -> ReferenceProfile:
    src = Path(path)
    try:
        zf = zipfile.ZipFile(src)
    except FileNotFoundError:
        raise ReferenceError(f"{src}: no such file (build one with `driftline reference build`)") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ReferenceError(f"{src}: not a driftline reference profile ({exc})") from None
    with zf:
        try:
            header = json.loads(zf.read("header.json"))
        except (KeyError, ValueError):
            raise ReferenceError(f"{src}: not a driftline reference profile (no header)") from None
        if header.get("format") != FORMAT:
            raise ReferenceError(f"{src}: not a driftline reference profile")
        version = header.get("format_version")
        if version not in READS_VERSIONS:
            raise ReferenceError(f"{src}: profile format version {version} is not supported (this driftline "
                                 f"reads versions {', '.join(map(str, READS_VERSIONS))}); rebuild it")
        noise = _read_noise(zf, header, src)
        cols: dict[str, ReferenceColumn] = {}
        for i, spec in enumerate(header["columns"]):
            kind = ColumnKind(spec["kind"])
            if kind is ColumnKind.NUMERICAL:
                arr = np.load(io.BytesIO(zf.read(f"col{i}.npy")), allow_pickle=False)
                sample = ColumnSample.from_sorted(arr.astype(np.float64, copy=False)).prepare()
            else:
                data = json.loads(zf.read(f"col{i}.json"))
                sample = ColumnSample(kind, labels=np.array(data["labels"], dtype=object),
                                      counts=np.array(data["counts"], dtype=np.int64)).prepare()
            cols[spec["name"]] = ReferenceColumn(spec["name"], kind, sample, int(spec["missing"]),
                                                 noise.get(spec["name"]))
    digest = _content_hash(cols)
    if digest != header["content_hash"]:
        raise ReferenceError(f"{src}: content hash mismatch (file is corrupt or was edited)")
    note = None
    if version == 1:
        note = ("profile format 1 has no noise floors: thresholds are Evidently's plain ones; rebuild it "
                "with `driftline reference build` for calibrated ones")
        log.warning("%s: %s", src, note)
    elif not noise:
        note = "the profile was built without its noise floors"
    for c in cols.values():
        _ = c.facts
    return ReferenceProfile(cols, digest, float(header["created_at"]), str(header["source"]),
                            dict(header.get("meta", {})), note)


def _read_noise(zf: zipfile.ZipFile, header: dict[str, Any], src: Path) -> dict[str, NoiseTable]:
    expected = header.get("noise_sha256")
    if expected is None:
        return {}
    try:
        raw = zf.read(NOISE_FILE)
    except KeyError:
        raise ReferenceError(f"{src}: noise floors missing (file is corrupt or was edited)") from None
    if hashlib.sha256(raw).hexdigest() != expected:
        raise ReferenceError(f"{src}: noise floors hash mismatch (file is corrupt or was edited)")
    return {name: NoiseTable.from_json(table) for name, table in json.loads(raw).items()}
