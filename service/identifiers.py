"""Columns of a data file that are not features: identifiers and timestamps.

`driftline evaluate` compares every column two files share unless told which; a row id, a
request id or an event time is in both and always "drifts" (new ids, later times), so such
columns are left out, and the command says which. A column is left out when

- its values are times: a datetime type, or text whose values read as dates or date-times
  (ISO 8601 or ``YYYY/MM/DD``, judged on its first 200 values);
- or it holds whole numbers or text (an integer type, floats that are all whole: an integer
  column with gaps reads as floats; text) and every value is distinct, in the current file
  and in the reference (a feature such as whole-dollar incomes can be distinct in a small
  file, but it repeats in a training set). Real-valued columns are never left out: their
  values are distinct too, and they are the features drift is about.

Each file is read once more for the candidate columns only; distinctness is checked on
64-bit hashes of the values (a collision makes a column look repeated: it is kept).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .drift import ColumnKind
from .reference import ReferenceProfile, _batches

DATETIME_VALUES = "datetime values"
DISTINCT_VALUES = "every value distinct"
_PROBE = 200  # text values looked at to decide whether a column holds times
_DATE = re.compile(r"^\d{4}([-/])\d{1,2}\1\d{1,2}([T ]\d{1,2}:\d{2}(:\d{2}([.,]\d+)?)?)?\s*(Z|[+-]\d{2}(:?\d{2})?)?$")


@dataclass
class _Scan:
    """What one column looked like so far."""

    times: bool | None = None  # None: not decided (no value seen yet)
    whole: bool = True  # integers, or text: a candidate identifier
    hashes: list[np.ndarray] = field(default_factory=list)
    values: int = 0

    def add(self, series: pd.Series) -> None:
        present = series.dropna()
        if present.empty or not self.whole:
            return
        dtype = present.dtype
        if self.times is None:
            self.times = pd.api.types.is_datetime64_any_dtype(dtype) or _text_times(present)
        if self.times:
            return
        if pd.api.types.is_bool_dtype(dtype):
            self.whole = False
            return
        if pd.api.types.is_integer_dtype(dtype):
            keys = present.to_numpy(dtype=np.int64).view(np.uint64)
        elif pd.api.types.is_float_dtype(dtype):
            arr = present.to_numpy(dtype=np.float64)
            if not np.all(np.isfinite(arr) & (arr == np.round(arr))):
                self.whole = False  # a real-valued column: a feature
                return
            keys = arr.astype(np.int64).view(np.uint64)
        elif all(type(v) is str for v in present.tolist()):
            keys = pd.util.hash_array(present.to_numpy(dtype=object))
        else:
            self.whole = False
            return
        if np.unique(keys).size != keys.size:  # a repeat in this batch: stop keeping hashes
            self.whole = False
            self.hashes.clear()
            return
        self.hashes.append(keys)
        self.values += keys.size

    @property
    def distinct(self) -> bool:
        if not self.whole or self.values < 2:
            return False
        keys = np.concatenate(self.hashes)
        return bool(np.unique(keys).size == keys.size)


def _text_times(values: pd.Series) -> bool:
    probe = values.iloc[:_PROBE].tolist()
    if not all(type(v) is str and _DATE.match(v.strip()) for v in probe):
        return False
    parsed = pd.to_datetime(pd.Series(probe), errors="coerce", format="mixed", utc=True)
    return bool(parsed.notna().all())


def _scan(path: Path, columns: list[str], batch_rows: int) -> dict[str, _Scan]:
    scans = {c: _Scan() for c in columns}
    if not columns:
        return scans
    _, batches, _ = _batches(path, columns, batch_rows)
    for frame in batches:
        for c in columns:
            scans[c].add(frame[c])
        if not any(s.whole and not s.times for s in scans.values()) and all(
                s.times is not None for s in scans.values()):
            break  # every column decided: nothing left to read for
    return scans


def _distinct_in_profile(reference: ReferenceProfile, name: str) -> bool:
    col = reference.columns.get(name)
    if col is None:
        return True  # nothing says otherwise
    if col.kind is ColumnKind.CATEGORICAL:
        return bool(np.all(col.sample.counts == 1))
    return bool(col.sample.nunique == col.sample.n)


def identifier_columns(current: Path, candidates: list[str], reference: ReferenceProfile | Path,
                       batch_rows: int) -> dict[str, str]:
    """The candidates that look like identifiers or timestamps, each with why (see above).

    `reference` is the reference's profile, or its data file (read for the columns still
    in question only)."""
    scans = _scan(current, candidates, batch_rows)
    out = {c: DATETIME_VALUES for c, s in scans.items() if s.times}
    distinct = [c for c, s in scans.items() if not s.times and s.distinct]
    if isinstance(reference, ReferenceProfile):
        confirmed = [c for c in distinct if _distinct_in_profile(reference, c)]
    else:
        ref_scans = _scan(reference, distinct, batch_rows)
        confirmed = [c for c in distinct if ref_scans[c].times or ref_scans[c].distinct]
    out.update({c: DISTINCT_VALUES for c in confirmed})
    return {c: out[c] for c in candidates if c in out}
