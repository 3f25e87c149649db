"""The level of a monitor's noise floors: chosen for its features, their practical thresholds
and `drift_share`, when it loads a profile; one level per window size.

Two limits, with no drift, at every window size, and a level for each:

- **features**, level q: a feature drifts when its score reaches its noise floor at q (and
  Evidently's verdict holds); at most `feature_false_alarm_rate` (1%) of features flagged. A
  feature is flagged at most as often as the smaller of q and the chance that its score reaches
  its practical threshold at all (`NoiseTable.chance`, read off the same fitted tails): where
  that chance is below q its floor is below the threshold and Evidently's verdict decides. So
  at each size of `noise.GRID` q is the largest level at which the mean over the features of
  min(q, chance) is at most half of that rate (`_water_fill`), and at most the whole rate for
  any one feature: on small windows, where every threshold is within the noise, that is half
  the rate for all; on larger ones a feature that rarely reaches its threshold leaves its share
  to the features whose floors still decide (a small reference's, typically). The other half
  of the rate is the margin for the floors' own error (their fitted tails are reached by up to
  twice the nominal share of windows for an unlucky fit, see `noise.TailFit`).
- **dataset**, level q_d <= q: a window is declared dataset drift when at least d of its j
  features (d = `noise.needed(drift_share, j)`) reach their floors at q_d; at most
  `false_alarm_rate` (1 in 1,000) of windows. Where q itself keeps to that rate (several
  features must drift, and they do not drift together), q_d = q and the rule is Evidently's
  on the drifted features. Where it does not (one drifted feature is enough, or features that
  drift together), the dataset counts only the features beyond the stricter floor of q_d, and a
  feature can drift without counting: the features keep their own limit, and their timing.
  The profile holds, for windows of whole training rows (`sim_rows.py`), each column's
  exceedance level under every measure: a window is dataset drift at q_d when the d-th
  smallest of its features' levels is at most q_d. Its chance is read off those windows, the
  far tail of -log(d-th smallest level) fitted like any noise floor's (`noise.TailFit`: the
  chance falls as a power of q_d, the exponent 1 for copies of one feature, d for independent
  ones), at each simulated size; q_d is at most the largest level whose fitted chance stays
  within the rate at all of them. It holds for the features' actual correlation, as the
  training rows show it (counting every feature as reaching its threshold: an upper bound on
  the dataset's rate).

Where no such estimate can be made (a profile built before whole-row windows, a feature whose
column has no simulated levels), q_d falls back to Markov's bound, true for any correlation:
P(at least d of j drift) <= j·q_d / d, so q_d = rate · min over j of d / j
(`noise.feature_level`). The whole-row estimate is never taken below it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .noise import GRID, NoiseTable, TailFit, feature_level, needed
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
    """The levels at each size of `noise.GRID` (on the n_eff scale of `NoiseTable.floor`): per
    feature, and for the dataset rule (never above the feature's), and how the latter was chosen."""

    levels: tuple[float, ...]
    dataset_levels: tuple[float, ...]
    basis: str  # "whole rows": estimated from the whole-row windows; "markov": the bound for any correlation
    dataset_rate: float | None  # whole rows: the largest estimated share of windows declared dataset drift
    note: str | None = None  # markov: why the whole-row estimate was not used

    @property
    def level(self) -> float:
        """The features' level on the smallest windows (100 values), where most floors are above their thresholds."""
        return self.levels[0]

    @property
    def dataset_level(self) -> float:
        """The dataset rule's level on the smallest windows."""
        return self.dataset_levels[0]


def level_at(levels: Sequence[float], n_eff: float) -> float:
    """The level of a window of n_eff values (on the n_eff scale of `NoiseTable.floor`): log-log
    between the sizes of `GRID`, constant beyond them."""
    if n_eff <= GRID[0] or n_eff >= GRID[-1]:
        return float(levels[0] if n_eff <= GRID[0] else levels[-1])
    i = bisect.bisect_right(GRID, n_eff) - 1
    low, high = levels[i], levels[i + 1]
    if low == high:
        return float(low)
    return math.exp(math.log(low) + math.log(n_eff / GRID[i]) / math.log(GRID[i + 1] / GRID[i]) * math.log(high / low))


def choose_level(joint: JointNoise | None, features: Sequence[tuple[str, str | None]], drift_share: float,
                 dataset_level: float, feature_rate: float, thresholds: Mapping[str, float] | None = None,
                 tables: Mapping[str, NoiseTable] | None = None) -> LevelChoice:
    """The levels for these (column, measure) features; measure None: a feature without noise
    floors, which drifts on Evidently's verdict alone (counted here as drifting in every window).
    `thresholds` (column -> the practical threshold on its measure's scale) and `tables` (the
    columns' noise tables) tell how often each feature reaches its threshold at all; without
    them a feature is taken to reach it in every window, and its level is the same at every size."""
    j = len(features)
    calibrated = [(c, m) for c, m in features if m is not None]
    levels = tuple(_water_fill([_reach(c, m, size, thresholds, tables) for c, m in calibrated]
                               + [1.0] * (j - len(calibrated)), feature_rate / 2, feature_rate) for size in GRID)
    markov = feature_level(dataset_level, drift_share, max(j, 1))

    def fallback(note: str) -> LevelChoice:
        return LevelChoice(levels, tuple(min(q, markov) for q in levels), "markov", None, note)

    if joint is None:
        return fallback("the profile has no whole-row windows (rebuild it)")
    missing = [c for c, m in calibrated if not joint.has(c, m)]
    if missing:
        return fallback(f"no whole-row levels for {', '.join(missing)}")
    d = needed(drift_share, max(j, 1)) - (j - len(calibrated))
    if d <= 0 or not calibrated:
        return fallback("features without noise floors alone reach drift_share")
    fits = [_fit(np.stack([joint.codes[c][m][s] for c, m in calibrated], axis=1), d)
            for s in range(len(joint.sizes))]
    bound = max(markov, min(math.exp(-fit.quantile("joint", dataset_level)) for fit in fits))
    dataset = tuple(min(q, bound) for q in levels)
    if bound <= markov:
        return fallback("the whole-row estimate is no better than the bound")
    return LevelChoice(levels, dataset, "whole rows", max(_chance(fit, max(dataset)) for fit in fits))


def _reach(column: str, measure: str, size: int, thresholds: Mapping[str, float] | None,
           tables: Mapping[str, NoiseTable] | None) -> float:
    """The fitted chance that the feature's score reaches its practical threshold on a window
    of `size` without drift (1 when unknown)."""
    if not thresholds or not tables or column not in thresholds or column not in tables:
        return 1.0
    return tables[column].chance(measure, size, thresholds[column])


def _water_fill(reach: Sequence[float], budget: float, cap: float) -> float:
    """The largest level q <= cap at which the features' mean chance of drifting without drift,
    mean(min(q, reach)), stays within `budget`: a feature rarely reaching its threshold uses
    little of the budget, the rest goes to the features whose floors decide."""
    r = np.sort(np.asarray(reach, dtype=np.float64))
    n = r.size
    if n == 0 or np.minimum(cap, r).mean() <= budget:
        return cap
    below = np.concatenate([[0.0], np.cumsum(r)])  # below[m]: the m smallest reaches' sum
    for m in range(n):  # q in [r[m-1], r[m]]: the m smallest contribute their reach, the others q
        q = (budget * n - below[m]) / (n - m)
        if q <= r[m]:
            return float(min(q, cap))
    return cap


def _fit(codes: np.ndarray, d: int) -> TailFit:
    """The fitted tail of -log(the d-th smallest level) over the windows (rows of `codes`)."""
    kth = np.partition(codes, codes.shape[1] - d, axis=1)[:, codes.shape[1] - d]
    return TailFit.of("joint", kth.astype(np.float64) / CODES_PER_DECADE * _LN10)


def _chance(fit: TailFit, level: float) -> float:
    """The fitted chance that the d-th smallest level is at most `level`."""
    x = -math.log(level)
    found = fit.survival("joint", np.array([x]))[0]
    return fit.above if math.isnan(found) else float(found)
