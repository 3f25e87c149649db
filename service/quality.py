"""Data quality per feature and window: broken data named as such, whatever the drift score says.

Four checks compare a window with the reference:

- **out of range** (numerical): the share of the window's values outside the reference's
  observed min..max. Without drift a new value falls outside the range of N exchangeable
  reference values with probability 2 / (N + 1).
- **unseen category** (categorical): the share of the window's values whose category the
  reference never had, with the most frequent of those categories named (see below).
  Without drift that share is about the share of reference values whose category was seen
  once (Good-Turing, f1 / N): features of identifiers or free text have a high one.
- **missing increase**: the window's missing share against the reference's.
- **type errors**: events rejected because the feature had the wrong type (a number field
  that turned into a string), from the window's `type_errors`.

Each is a signal on its own once it passes its configured share (`drift.data_quality`) and,
for the first three, is beyond the sampling noise of a window that size: a one-sided binomial
test against the no-drift share above, at a tenth of the per-feature level that keeps the
dataset's false alarms within `drift.false_alarm_rate` for any correlation (Markov's bound,
`noise.feature_level`: 1 in 2,000 with drift_share 0.5), shared by the several checks of a
feature: each check is a signal on its own, so it keeps that worst-case level whatever the
drift level chosen for the monitor (a window always shows some share, only one far beyond
chance is named).

**Naming unseen categories.** Labels are the only raw feature values driftline ever puts in
its output (the status API, the webhook, `driftline evaluate`; never metrics or logs), and only
where they look like codes rather than free text: the reference has at most 1,000 categories,
at most 1% of its values fall in categories seen once (a closed set: identifiers and free text
do not repeat), and none of its labels is longer than 40 characters or more than 3 words. A
label is named only if it also fits that shape and holds no '@' and no run of 6 or more digits
(addresses, phone, card and account numbers); the others are counted, never shown. At most
`data_quality.unseen_labels` (default 5) labels are named, the most frequent first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .drift import ColumnKind, ColumnSample

ISSUES = ("unseen_category", "missing_increase", "out_of_range", "type_error")
QUALITY_CHECKS = 10  # the checks' level is Markov's per-feature level over this (see above)
_MAX_CATEGORIES_NAMED = 1000
_MAX_SINGLETON_SHARE = 0.01
_MAX_LABEL_CHARS = 40
_MAX_LABEL_WORDS = 3
_IDENTIFYING = re.compile(r"@|\d{6}")


def label_shape_ok(label: str) -> bool:
    """A label short and plain enough to be a category's code, not someone's text."""
    return len(label) <= _MAX_LABEL_CHARS and len(label.split()) <= _MAX_LABEL_WORDS


@dataclass(frozen=True)
class ReferenceFacts:
    """What the checks compare a window with, from one reference column."""

    kind: ColumnKind
    values: int
    missing_ratio: float
    minimum: float | None  # numerical: the observed range
    maximum: float | None
    expected_outside: float  # share of new values outside that range without drift, 2 / (N + 1)
    expected_unseen: float  # share of new values in categories never seen, Good-Turing's f1 / N
    names_labels: bool  # the categories look like codes: unseen ones may be named

    @classmethod
    def of(cls, sample: ColumnSample, missing: int) -> ReferenceFacts:
        n = sample.n
        rows = n + missing
        if sample.kind is ColumnKind.NUMERICAL:
            s = sample.sorted
            return cls(sample.kind, n, missing / rows if rows else 0.0, float(s[0]) if n else None,
                       float(s[-1]) if n else None, 2 / (n + 1), 0.0, False)
        counts = sample.counts
        unseen = float(np.count_nonzero(counts == 1) / n) if n else 0.0
        names = (sample.nunique <= _MAX_CATEGORIES_NAMED and unseen <= _MAX_SINGLETON_SHARE
                 and all(label_shape_ok(str(label)) for label in sample.labels.tolist()))
        return cls(sample.kind, n, missing / rows if rows else 0.0, None, None, 0.0, unseen, names)


@dataclass(frozen=True)
class DataQualityLimits:
    """When each check is a signal (the `drift.data_quality` settings and the monitor's level)."""

    unseen_category_share: float
    out_of_range_share: float
    missing_share_factor: float
    missing_share_increase: float
    type_error_share: float
    unseen_labels: int
    level: float


@dataclass(frozen=True)
class FeatureQuality:
    """One feature in one window. Shares that do not apply to the feature's kind are None."""

    missing_ratio: float
    reference_missing_ratio: float
    out_of_range_ratio: float | None
    unseen_category_ratio: float | None
    expected_unseen_ratio: float | None  # Good-Turing's share without drift, for comparison
    unseen_categories: int | None  # distinct categories the reference never had
    unseen_labels: tuple[tuple[str, int], ...]  # the most frequent of them, where they may be named
    type_errors: int | None  # None: the window does not count them
    type_error_ratio: float | None
    issues: tuple[str, ...]  # of ISSUES, in that order


def _beyond_chance(count: int, trials: int, expected: float, level: float) -> bool:
    """One-sided binomial test: `count` of `trials` is more than `expected` explains."""
    if count == 0 or trials == 0:
        return False
    if expected <= 0:
        return True
    return bool(stats.binom.sf(count - 1, trials, min(expected, 1.0)) < level)


def feature_quality(facts: ReferenceFacts, ref: ColumnSample, cur: ColumnSample, missing: int, events: int,
                    type_errors: int | None, limits: DataQualityLimits, signals: bool = True) -> FeatureQuality:
    """The checks of one feature in one window; `signals` False (a window with too few events)
    measures the shares but raises no issue."""
    issues = []
    present = cur.n
    out_ratio = unseen_ratio = None
    unseen_n: int | None = None
    labels: tuple[tuple[str, int], ...] = ()
    if facts.kind is ColumnKind.NUMERICAL:
        outside = 0
        s = cur.sorted
        if present and facts.minimum is not None and facts.maximum is not None and (
                s[0] < facts.minimum or s[-1] > facts.maximum):  # most windows lie within the range
            below = np.searchsorted(s, facts.minimum, "left")
            outside = int(below + s.size - np.searchsorted(s, facts.maximum, "right"))
        out_ratio = outside / present if present else 0.0
        if out_ratio >= limits.out_of_range_share and _beyond_chance(outside, present, facts.expected_outside,
                                                                     limits.level):
            issues.append("out_of_range")
    else:
        ref_map = ref.count_map
        unseen = [(str(label), int(count)) for label, count in cur.count_map.items() if label not in ref_map]
        unseen_values = sum(c for _, c in unseen)
        unseen_ratio, unseen_n = (unseen_values / present if present else 0.0), len(unseen)
        if unseen_ratio >= limits.unseen_category_share and _beyond_chance(
                unseen_values, present, facts.expected_unseen, limits.level):
            issues.append("unseen_category")
        if facts.names_labels and limits.unseen_labels:
            shown = [u for u in unseen if label_shape_ok(u[0]) and not _IDENTIFYING.search(u[0])]
            labels = tuple(sorted(shown, key=lambda u: (-u[1], u[0]))[:limits.unseen_labels])
    missing_ratio = missing / events if events else 0.0
    ref_missing = facts.missing_ratio
    if (missing_ratio >= max(ref_missing * limits.missing_share_factor, ref_missing + limits.missing_share_increase)
            and _beyond_chance(missing, events, ref_missing, limits.level)):
        issues.append("missing_increase")
    type_ratio = None
    if type_errors is not None:
        type_ratio = type_errors / (events + type_errors) if type_errors else 0.0
        if type_errors and type_ratio >= limits.type_error_share:
            issues.append("type_error")
    return FeatureQuality(missing_ratio, ref_missing, out_ratio, unseen_ratio,
                          facts.expected_unseen if facts.kind is ColumnKind.CATEGORICAL else None, unseen_n,
                          labels, type_errors, type_ratio, tuple(i for i in ISSUES if signals and i in issues))
