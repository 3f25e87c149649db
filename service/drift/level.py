"""The level of a monitor's noise floors: chosen for its features and `drift_share`, when it
first evaluates a window against a profile.

A feature drifts at level q when its score reaches the noise floor at q (and Evidently's
verdict holds); a window is declared dataset drift when at least d of its j features drift
(d = `noise.needed(drift_share, j)`). Two limits, with no drift, at every window size:

- **features**: at most `feature_false_alarm_rate` (1%) of them flagged. A feature is flagged at
  most as often as its floor is reached, q on average, so q is at most half of that rate: the
  other half is the margin for the floors' own error (their fitted tails are reached by up to
  twice the nominal share of windows for an unlucky fit, see `noise.TailFit`).
- **dataset**: at most `false_alarm_rate` (1 in 1,000) of windows declared dataset drift. The
  profile holds, for windows of whole training rows (`sim_rows.py`), each column's exceedance
  level under every measure: a window is dataset drift at level q when the d-th smallest of
  its features' levels is at most q. Its chance is read off those windows, the far tail of
  -log(d-th smallest level) fitted like any noise floor's (`noise.TailFit`: the chance falls
  as a power of q, the exponent 1 for copies of one feature, d for independent ones), at each
  simulated size; q is the largest level whose fitted chance stays within the rate at all of
  them. It holds for the features' actual correlation, as the training rows show it.

Where no such estimate can be made (a profile built before whole-row windows, a feature whose
column has no simulated levels), the level falls back to Markov's bound, true for any
correlation: P(at least d of j drift) <= j·q / d, so q = rate · min over j of d / j
(`noise.feature_level`). The whole-row estimate is never taken below it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .noise import TailFit, feature_level, needed
from .sim_rows import CODES_PER_DECADE

_LN10 = math.log(10)


@dataclass(frozen=True)
class JointNoise:
    """Whole-row windows of a profile: per column and measure, the coded exceedance level
    (`sim_rows.level_code`) of each window, an array (len(sizes), windows)."""

    sizes: tuple[int, ...]
    windows: int
    codes: dict[str, dict[str, np.ndarray]]

    def has(self, column: str, measure: str) -> bool:
        return measure in self.codes.get(column, {})


@dataclass(frozen=True)
class LevelChoice:
    level: float  # per feature and window
    basis: str  # "whole rows": estimated from the whole-row windows; "markov": the bound for any correlation
    dataset_rate: float | None  # whole rows: the estimated share of windows declared dataset drift at `level`
    note: str | None = None  # markov: why the whole-row estimate was not used


def choose_level(joint: JointNoise | None, features: Sequence[tuple[str, str | None]], drift_share: float,
                 dataset_level: float, feature_rate: float) -> LevelChoice:
    """The level for these (column, measure) features; measure None: a feature without noise
    floors, which drifts on Evidently's verdict alone (counted here as drifting in every window)."""
    j = len(features)
    cap = feature_rate / 2
    markov = min(feature_level(dataset_level, drift_share, max(j, 1)), cap)
    if joint is None:
        return LevelChoice(markov, "markov", None, "the profile has no whole-row windows (rebuild it)")
    missing = [c for c, m in features if m is not None and not joint.has(c, m)]
    if missing:
        return LevelChoice(markov, "markov", None, f"no whole-row levels for {', '.join(missing)}")
    calibrated = [(c, m) for c, m in features if m is not None]
    d = needed(drift_share, max(j, 1)) - (j - len(calibrated))
    if d <= 0 or not calibrated:
        return LevelChoice(markov, "markov", None, "features without noise floors alone reach drift_share")
    fits = [_fit(np.stack([joint.codes[c][m][s] for c, m in calibrated], axis=1), d)
            for s in range(len(joint.sizes))]
    estimated = min(math.exp(-fit.quantile("joint", dataset_level)) for fit in fits)
    if estimated <= markov:
        return LevelChoice(markov, "markov", None, "the whole-row estimate is no better than the bound")
    level = min(estimated, cap)
    rate = max(float(_chance(fit, level)) for fit in fits)
    return LevelChoice(level, "whole rows", rate)


def _fit(codes: np.ndarray, d: int) -> TailFit:
    """The fitted tail of -log(the d-th smallest level) over the windows (rows of `codes`)."""
    kth = np.partition(codes, codes.shape[1] - d, axis=1)[:, codes.shape[1] - d]
    return TailFit.of("joint", kth.astype(np.float64) / CODES_PER_DECADE * _LN10)


def _chance(fit: TailFit, level: float) -> float:
    """The fitted chance that the d-th smallest level is at most `level`."""
    x = -math.log(level)
    found = fit.survival("joint", np.array([x]))[0]
    return fit.above if math.isnan(found) else float(found)
