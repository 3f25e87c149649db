"""The one protocol every drift method follows.

A *column sample* holds one side of a comparison (the reference, or a window) in the form
methods need: finite numerical values, or category labels with counts. Anything derived
from a window's sample (sorted values, unique counts, moments) is computed once and cached
on it. A reference sample is *prepared* (`ColumnSample.prepare`) when its profile is built
or loaded: the reference side of every method is paid for then, once, and kept within
about 14 bytes per reference value, so the first window is evaluated as fast as the next.

A *method* is a named scoring function plus Evidently's metadata for it: which column
kinds it accepts, its default threshold, and how a score compares with the threshold.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from driftline.collectors.schema import ColumnKind

from .sorting import sort_values

# A prepared reference keeps its distinct values (and their counts) only up to this many.
LEAN_UNIQUES = 10_000


class Verdict(str, enum.Enum):
    """How a method's score is compared with its threshold (each as Evidently does)."""

    P_VALUE_LE = "p_le"  # drift when p <= threshold
    P_VALUE_LT = "p_lt"  # drift when p < threshold
    DISTANCE_GE = "d_ge"  # drift when distance >= threshold
    DISTANCE_GT = "d_gt"  # drift when distance > threshold

    def drifted(self, score: float, threshold: float) -> bool:
        if self is Verdict.P_VALUE_LE:
            return bool(score <= threshold)
        if self is Verdict.P_VALUE_LT:
            return bool(score < threshold)
        if self is Verdict.DISTANCE_GE:
            return bool(score >= threshold)
        return bool(score > threshold)


class ColumnSample:
    """The finite values of one column on one side of a comparison.

    Numerical samples hold float64 values (order irrelevant); categorical samples hold
    labels (strings) with their counts. NaN, missing and infinite values are never part
    of a sample: Evidently drops them before testing, and driftline counts them apart as
    missing.
    """

    __slots__ = ("__dict__", "kind")

    def __init__(self, kind: ColumnKind, values: np.ndarray | None = None,
                 labels: np.ndarray | None = None, counts: np.ndarray | None = None) -> None:
        self.kind = kind
        if kind is ColumnKind.NUMERICAL:
            if values is None:
                raise ValueError("a numerical sample needs values")
            arr = np.asarray(values, dtype=np.float64)
            if arr.ndim != 1:
                raise ValueError("values must be one-dimensional")
            self.__dict__["values"] = arr
        else:
            if labels is None or counts is None:
                raise ValueError("a categorical sample needs labels and counts")
            lab = np.asarray(labels, dtype=object)
            cnt = np.asarray(counts, dtype=np.int64)
            if lab.shape != cnt.shape:
                raise ValueError("labels and counts differ in length")
            keep = cnt > 0
            self.__dict__["labels"] = lab[keep]
            self.__dict__["counts"] = cnt[keep]

    @classmethod
    def numerical(cls, values: np.ndarray | list[float]) -> ColumnSample:
        arr = np.asarray(values, dtype=np.float64)
        return cls(ColumnKind.NUMERICAL, values=arr[np.isfinite(arr)])

    @classmethod
    def categorical(cls, counts: dict[str, int]) -> ColumnSample:
        labels = np.array(list(counts.keys()), dtype=object)
        return cls(ColumnKind.CATEGORICAL, labels=labels,
                   counts=np.fromiter(counts.values(), dtype=np.int64, count=len(counts)))

    @classmethod
    def from_sorted(cls, sorted_values: np.ndarray) -> ColumnSample:
        """A numerical sample whose values are known to be sorted (a reference profile)."""
        sample = cls(ColumnKind.NUMERICAL, values=sorted_values)
        sample.__dict__["sorted"] = sample.__dict__["values"]
        return sample

    # -- shape ---------------------------------------------------------------------
    @cached_property
    def n(self) -> int:
        if self.kind is ColumnKind.NUMERICAL:
            return int(self.values.shape[0])
        return int(self.counts.sum())

    @property
    def values(self) -> np.ndarray:
        try:
            return self.__dict__["values"]  # type: ignore[no-any-return]
        except KeyError:
            raise TypeError("a categorical sample has no numerical values") from None

    @property
    def labels(self) -> np.ndarray:
        if self.kind is ColumnKind.NUMERICAL:
            return self.uniques
        return self.__dict__["labels"]  # type: ignore[no-any-return]

    @property
    def counts(self) -> np.ndarray:
        if self.kind is ColumnKind.NUMERICAL:
            return self.unique_counts
        return self.__dict__["counts"]  # type: ignore[no-any-return]

    # -- derivations (cached on a window; on a prepared reference see `prepare`) -------
    @cached_property
    def sorted(self) -> np.ndarray:
        values = self.values
        # a window's sample arrives sorted already: checking is far cheaper than sorting again
        if values.size < 2 or not bool(np.any(values[1:] < values[:-1])):
            return values
        return sort_values(values)

    @property
    def _unique_and_counts(self) -> tuple[np.ndarray, np.ndarray]:
        hit = self.__dict__.get("_uniques")
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        s = self.sorted
        if s.size == 0:
            found: tuple[np.ndarray, np.ndarray] = (s, np.zeros(0, dtype=np.int64))
        else:
            new_value = s[1:] != s[:-1]
            if new_value.all():  # continuous data: no value repeats
                found = (s, np.ones(s.size, dtype=np.int64))
            else:
                starts = np.flatnonzero(np.concatenate(([True], new_value)))
                found = (s[starts], np.diff(np.append(starts, s.size)).astype(np.int64))
        if not self.__dict__.get("_lean") or found[0].size <= LEAN_UNIQUES:
            self.__dict__["_uniques"] = found
        return found

    @property
    def uniques(self) -> np.ndarray:
        return self._unique_and_counts[0]

    @property
    def unique_counts(self) -> np.ndarray:
        return self._unique_and_counts[1]

    @cached_property
    def nunique(self) -> int:
        if self.kind is ColumnKind.NUMERICAL:
            s = self.sorted
            return int(s.size and 1 + np.count_nonzero(s[1:] != s[:-1]))
        return int(self.labels.shape[0])

    @property
    def count_map(self) -> dict[object, int]:
        """Label → count (numerical samples: value → count)."""
        hit = self.__dict__.get("_count_map")
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        found = dict(zip(self.labels.tolist(), self.counts.tolist(), strict=True))
        if not self.__dict__.get("_lean") or len(found) <= LEAN_UNIQUES:
            self.__dict__["_count_map"] = found
        return found

    @cached_property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @cached_property
    def std(self) -> float:
        """Population standard deviation (ddof=0), as numpy and Evidently compute it."""
        return float(np.std(self.values))

    def prepare(self) -> ColumnSample:
        """Derive now what every method reads from this sample as a *reference*, and keep it lean.

        A reference is read by every window, so its derivations are built once, when the
        profile is built or loaded (the first window is then as fast as the next), and only
        those that stay small are kept: beyond `LEAN_UNIQUES` distinct values the unique
        values, their counts and the value → count map are derived again by the rare
        method that needs them (chisquare on a continuous column, anderson) instead of
        doubling the reference's memory. Each family of methods adds its own reference-side
        work through `register_preparation`.
        """
        _ = self.n, self.nunique
        if self.kind is ColumnKind.NUMERICAL:
            self.__dict__["_lean"] = True
            _ = self.sorted, self.mean, self.std
        if self.nunique <= LEAN_UNIQUES or self.kind is ColumnKind.CATEGORICAL:
            _ = self._unique_and_counts if self.kind is ColumnKind.NUMERICAL else None, self.count_map
        for prepare in _PREPARATIONS:
            prepare(self)
        return self

    def cache(self) -> dict[str, object]:
        """Per-method cache for reference-side work that only one method needs."""
        return self.__dict__.setdefault("_method_cache", {})  # type: ignore[no-any-return]


_PREPARATIONS: list[Callable[[ColumnSample], None]] = []


def register_preparation(prepare: Callable[[ColumnSample], None]) -> Callable[[ColumnSample], None]:
    """A family's reference-side work, run by `ColumnSample.prepare` (used as a decorator)."""
    _PREPARATIONS.append(prepare)
    return prepare


def ranks_in(ref: ColumnSample, cur: ColumnSample) -> np.ndarray:
    """For each distinct window value, how many reference values are <= it (cached on the
    window: the default-method choice and the rank-based methods all need it)."""
    cache = cur.cache()
    hit = cache.get("ranks_in")
    if not (isinstance(hit, tuple) and hit[0] is ref):
        hit = cache["ranks_in"] = (ref, np.searchsorted(ref.sorted, cur.uniques, side="right"))
    ranks: np.ndarray = hit[1]
    return ranks


def combined_nunique(ref: ColumnSample, cur: ColumnSample) -> int:
    """Distinct values over both samples, as Evidently's `pd.concat([...]).nunique()`."""
    if ref.kind is ColumnKind.NUMERICAL and cur.kind is ColumnKind.NUMERICAL:
        if cur.n == 0:
            return ref.nunique
        k = ranks_in(ref, cur)
        # a window value is in the reference iff the largest reference value <= it equals it
        found = (k > 0) & (ref.sorted[np.maximum(k - 1, 0)] == cur.uniques)
        return ref.nunique + int(cur.nunique - np.count_nonzero(found))
    ref_map = ref.count_map
    return ref.nunique + sum(1 for label in cur.labels.tolist() if label not in ref_map)


ScoreFn = Callable[[ColumnSample, ColumnSample], float]


@dataclass(frozen=True)
class DriftMethod:
    """A drift method under Evidently's name, with Evidently's default threshold."""

    name: str
    display_name: str
    kinds: frozenset[ColumnKind]
    default_threshold: float
    verdict: Verdict
    score_fn: ScoreFn
    # p-value methods: the effect size reported beside the p-value (service/drift/effects.py)
    effect: str | None = None

    @property
    def measure(self) -> str:
        """What the calibration compares with its floors: the effect size of a p-value
        method, the score itself of a distance method."""
        return self.effect or self.name

    @property
    def is_p_value(self) -> bool:
        return self.verdict in (Verdict.P_VALUE_LE, Verdict.P_VALUE_LT)

    def score(self, reference: ColumnSample, current: ColumnSample) -> float:
        # Degenerate inputs (a category unseen in the reference, a constant column) give
        # inf or nan inside the textbook formulas, and that value is the answer.
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(self.score_fn(reference, current))

    def accepts(self, kind: ColumnKind) -> bool:
        return kind in self.kinds
