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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from driftline.collectors.schema import category_label

from .drift import ColumnKind, ColumnSample
from .drift.level import JointNoise, LevelChoice
from .drift.noise import NoiseTable
from .drift.sim_rows import ColumnRows
from .drift.simulate import CalibrationProgress, simulate_columns
from .quality import ReferenceFacts

__all__ = ["ReferenceColumn", "ReferenceError", "ReferenceProfile", "build_profile", "category_label",
           "load_profile", "save_profile"]

FORMAT = "driftline-reference"
FORMAT_VERSION = 3
READS_VERSIONS = (1, 2, 3)
NOISE_FILE = "noise.json"
JOINT_FILE = "joint.npy"

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
    # whole-row windows' levels (`drift/level.py`): the dataset rule's data; None in a profile
    # built before them (the level then falls back to the bound for any correlation)
    joint: JointNoise | None = None
    # the training rows' order, while the profile is being built (never saved)
    rows: dict[str, ColumnRows] | None = field(default=None, repr=False, compare=False)
    # levels chosen per monitor (features, methods, drift_share, rates): `level.choose_level`
    levels: dict[Any, LevelChoice] = field(default_factory=dict, repr=False, compare=False)

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
    """One column read batch by batch, in the training rows' order (which the whole-row
    windows of the noise floors' simulation need: `row_index`)."""

    def __init__(self, name: str, kind: ColumnKind) -> None:
        self.name, self.kind = name, kind
        self.chunks: list[np.ndarray] = []  # numerical: every row's value (NaN missing); categorical: label ids
        self.ids: dict[str, int] = {}  # categorical: label -> id, in order of first appearance

    def add(self, values: Any) -> None:
        import pandas as pd

        series = pd.Series(values)
        if self.kind is ColumnKind.NUMERICAL:
            try:
                arr = pd.to_numeric(series, errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError):
                raise ReferenceError(f"column {self.name!r} is numerical but holds non-numeric values; "
                                     "declare it categorical") from None
            self.chunks.append(np.where(np.isfinite(arr), arr, np.nan))
        else:
            codes, uniques = pd.factorize(series, use_na_sentinel=True)
            ids = np.array([self.ids.setdefault(category_label(v), len(self.ids)) for v in uniques.tolist()] + [-1],
                           dtype=np.int32)
            self.chunks.append(ids[codes])  # code -1 (missing) picks the trailing -1

    def finish(self) -> tuple[ReferenceColumn, ColumnRows]:
        joined = np.concatenate(self.chunks) if self.chunks else np.zeros(0)
        self.chunks = []
        index = np.full(joined.size, -1, dtype=np.int32)
        if self.kind is ColumnKind.NUMERICAL:
            present = np.flatnonzero(~np.isnan(joined))
            order = np.argsort(joined[present], kind="stable")
            values = joined[present][order]
            sample = ColumnSample.from_sorted(values)
            # each row's position in the sorted values: the first of its value's (a row's value, not its place
            # in the file, so the same rows in another order give the same positions)
            first = np.maximum.accumulate(np.where(np.diff(values, prepend=np.nan) != 0, np.arange(values.size), 0))
            index[present[order]] = first.astype(np.int32)
        else:
            labels = sorted(self.ids, key=self.ids.__getitem__)
            rank = np.argsort(np.argsort(np.array(labels, dtype=object), kind="stable"), kind="stable")
            ids = joined.astype(np.int64)
            has = ids >= 0
            index[has] = rank[ids[has]]  # each row's label, by its place among the sorted labels
            counts = np.bincount(index[has], minlength=len(labels))
            sample = ColumnSample(ColumnKind.CATEGORICAL, labels=np.array(sorted(labels), dtype=object),
                                  counts=counts.astype(np.int64))
        if sample.n == 0:
            raise ReferenceError(f"column {self.name!r} has no usable value in the training data")
        missing = int(joined.size - sample.n)
        return ReferenceColumn(self.name, self.kind, sample.prepare(), missing), ColumnRows(index)


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
    finished = {n: b.finish() for n, b in builders.items()}
    cols = {n: col for n, (col, _) in finished.items()}
    for c in cols.values():
        _ = c.facts
    profile = ReferenceProfile(cols, _content_hash(cols), time.time(), src.name, {"rows": rows},
                               "the profile was built without its noise floors",
                               rows={n: r for n, (_, r) in finished.items()})
    return with_noise_floors(profile, calibration_progress, workers) if calibrate else profile


def with_noise_floors(profile: ReferenceProfile, progress: CalibrationProgress | None = None,
                      workers: int = 1) -> ReferenceProfile:
    """The profile with every column's noise table simulated (seeded by its content hash), and
    its whole-row windows when the profile still holds the training rows' order (as built,
    not as loaded)."""
    sim = simulate_columns({n: c.sample for n, c in profile.columns.items()}, profile.content_hash, progress,
                           workers, profile.rows)
    columns = {n: dataclasses.replace(c, noise=sim.tables[n]) for n, c in profile.columns.items()}
    return dataclasses.replace(profile, columns=columns, calibration_note=None, joint=sim.joint, rows=None)


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
    joint_bytes = None
    if profile.joint is not None and noise:
        index = [[c, m] for c, measures in profile.joint.codes.items() for m in measures]
        codes = [profile.joint.codes[c][m] for c, m in index]
        shape = (len(index), len(profile.joint.sizes), profile.joint.windows)
        joint_bytes = _npy(np.stack(codes).astype(np.uint8) if codes else np.zeros(shape, dtype=np.uint8))
        header["joint"] = {"sizes": list(profile.joint.sizes), "windows": profile.joint.windows, "index": index,
                           "sha256": hashlib.sha256(joint_bytes).hexdigest()}
    tmp = dest.with_name(dest.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("header.json", json.dumps(header, indent=2))
        if noise:
            zf.writestr(NOISE_FILE, noise_bytes)
        if joint_bytes is not None:
            zf.writestr(JOINT_FILE, joint_bytes)
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
        joint = _read_joint(zf, header, src) if noise else None
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
                            dict(header.get("meta", {})), note, joint)


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


def _read_joint(zf: zipfile.ZipFile, header: dict[str, Any], src: Path) -> JointNoise | None:
    spec = header.get("joint")
    if spec is None:
        return None  # format 2: built before whole-row windows
    try:
        raw = zf.read(JOINT_FILE)
    except KeyError:
        raise ReferenceError(f"{src}: whole-row windows missing (file is corrupt or was edited)") from None
    if hashlib.sha256(raw).hexdigest() != spec.get("sha256"):
        raise ReferenceError(f"{src}: whole-row windows hash mismatch (file is corrupt or was edited)")
    arr = np.load(io.BytesIO(raw), allow_pickle=False)
    codes: dict[str, dict[str, np.ndarray]] = {}
    for (column, measure), values in zip(spec["index"], arr, strict=True):
        codes.setdefault(str(column), {})[str(measure)] = values
    return JointNoise(tuple(int(s) for s in spec["sizes"]), int(spec["windows"]), codes)
