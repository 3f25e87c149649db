"""Noise floors: how large a measure gets on a window that did not drift, by window size.

When a reference profile is built, windows of several sizes are drawn from the training data
itself and scored against it (`simulate.py`); here the scores of each (measure, size) are
summarised by the tail of their distribution, and looked up at evaluation time:

- **Tail.** Drift must be rare on windows without drift (a per-feature level q of 1 in 1,000 to
  1 in 100, see `level.py`), beyond what the simulated windows show directly. The tail above the
  simulations' top 100 (or their 90th percentile, with fewer than 1,000) is fitted as a
  generalised Pareto (peaks over threshold; shape by probability-weighted moments, `gpd.py`),
  and the floor is its value exceeded with probability q, on the measure's distance scale (PSI
  and KL are squares of distances: their square roots). Most measures here are, on windows
  without drift, norms of asymptotically Gaussian processes or vectors, whose tails fall off
  faster than any exponential: their fitted shape is at most 0 and is taken as 0, an exponential
  tail, which bounds them from above. A heavy-tailed column's small windows are different (one
  large value moves a Wasserstein distance or a mean a lot): their measure has a heavy tail of
  its own, which the fitted shape then follows. Checked against 100,000 simulated windows
  (bench/bench_calibration.py --only tails, 25 fits of a build's size each, Wasserstein, KS
  and Jensen-Shannon on normal, lognormal, integer and 2- to 50-category data at 100 and 1,000
  values): at q = 1 in 200 and 1 in 1,000 the windows above the fitted floor are 0.32 to 1.12
  times q on average, one fit at worst 2.1 times (hence `level.py`'s margin), the floors at
  most 9% above the exact quantile.
- **Window size.** A window of n values scored against a reference of N values has the noise
  of both samples: for these measures it scales with 1/n + 1/N, so the floor of a window of
  n values is the simulated one at n_eff = n·N / (n + N) (log-log interpolation between the
  simulated sizes; beyond the largest simulated size the asymptotic law, floors shrinking
  with n_eff^-1/2, or n_eff^-1 for PSI and KL). This holds on average over the training sets
  the reference could have been: a given reference's own sampling error shifts every window's
  score alike, so its windows reach the floor somewhat more or less often than q, the more so
  the larger n is against N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .gpd import pwm_gpd

# Window sizes simulated: a log grid, four a decade, from 100 values to the exactness budget.
GRID: tuple[int, ...] = tuple(round(100 * 10 ** (i / 4)) for i in range(13))
TAIL_SHARE = 0.1  # the tail fitted: the simulations above their 90th percentile …
TAIL_MIN = 100  # … or above their top 100, when there are more than 1,000 (closer to the far tail)
_SHAPE_MIN_EXCESSES = 30  # fewer excesses: an exponential tail (a shape from fewer is noise)
_SHAPE_MAX = 0.5  # probability-weighted moments are defined below 1/2
# measures that shrink like 1/n on windows without drift (the others like 1/sqrt(n))
DIVERGENCES = frozenset({"psi", "kl_div"})


def to_tail_scale(measure: str, values: np.ndarray) -> np.ndarray:
    """The measure on a distance scale, where its tail is fitted: PSI and KL are squared
    distances, the others distances."""
    return np.sqrt(np.maximum(values, 0.0)) if measure in DIVERGENCES else values


def from_tail_scale(measure: str, x: float) -> float:
    return x * x if measure in DIVERGENCES and x > 0 else (0.0 if measure in DIVERGENCES else x)


@dataclass(frozen=True)
class TailFit:
    """One (measure, window size): the threshold u of the fitted tail (on the tail scale), the
    share of simulated windows above it, the scale of the excesses above it, the share of
    windows whose measure was infinite, and the excesses' generalised Pareto shape (0: an
    exponential tail, whose scale is the mean excess)."""

    u: float
    above: float
    scale: float
    infinite: float = 0.0
    shape: float = 0.0

    @classmethod
    def of(cls, measure: str, values: np.ndarray) -> TailFit:
        values = np.where(np.isnan(values), 0.0, values)  # undefined: no difference measured
        infinite = np.isinf(values) & (values > 0)
        x = to_tail_scale(measure, values[~infinite])
        if x.size == 0:
            return cls(0.0, 0.0, 0.0, 1.0)
        share = TAIL_SHARE if x.size < 10 * TAIL_MIN else TAIL_MIN / x.size
        u = float(np.quantile(x, 1 - share))
        excess = x[x > u] - u
        above, inf_share = excess.size / values.size, float(infinite.mean())
        if excess.size == 0:
            return cls(u, above, 0.0, inf_share)
        shape, scale = pwm_gpd(excess) if excess.size >= _SHAPE_MIN_EXCESSES else (0.0, 0.0)
        if shape > 0 and scale > 0:  # a heavy tail (a heavy-tailed column's small windows)
            return cls(u, above, scale, inf_share, min(shape, _SHAPE_MAX))
        return cls(u, above, float(excess.mean()), inf_share)

    def quantile(self, measure: str, level: float) -> float:
        """The value the measure exceeds with probability `level` on a window without drift."""
        if level <= self.infinite:
            return math.inf
        finite_level = (level - self.infinite) / (1 - self.infinite)
        if self.above <= 0 or self.scale <= 0 or finite_level >= self.above:
            return from_tail_scale(measure, self.u)
        log_ratio = math.log(self.above / finite_level)
        if self.shape > 0:
            return from_tail_scale(measure, self.u + self.scale / self.shape * math.expm1(self.shape * log_ratio))
        return from_tail_scale(measure, self.u + self.scale * log_ratio)

    def survival(self, measure: str, values: np.ndarray) -> np.ndarray:
        """The fitted probability that a window without drift reaches each of `values` (those
        above u; NaN at or below it, where the fit says nothing)."""
        x = to_tail_scale(measure, np.where(np.isnan(values), 0.0, values))
        finite = np.isfinite(x)
        excess = np.where(finite, x - self.u, 0.0)
        if self.above <= 0 or self.scale <= 0:
            tail = np.zeros(x.shape)
        elif self.shape > 0:
            tail = self.above * np.exp(-np.log1p(self.shape * np.maximum(excess, 0.0) / self.scale) / self.shape)
        else:
            tail = self.above * np.exp(-np.maximum(excess, 0.0) / self.scale)
        out = self.infinite + (1 - self.infinite) * tail
        out = np.where(finite, out, self.infinite)
        return np.where(finite & (excess <= 0), np.nan, out)


@dataclass(frozen=True)
class NoiseTable:
    """The fitted tails of one reference column: measure -> one TailFit per simulated size."""

    sizes: tuple[int, ...]
    fits: dict[str, tuple[TailFit, ...]]
    replicates: dict[str, tuple[int, ...]]  # windows simulated per size
    _floors: dict[tuple[str, float | tuple[float, ...]], np.ndarray] = field(default_factory=dict, compare=False,
                                                                             repr=False)

    def measures(self) -> frozenset[str]:
        return frozenset(self.fits)

    def floor(self, measure: str, n: int, n_reference: int, level: float | tuple[float, ...]) -> float | None:
        """The noise floor of `measure` for a window of `n` values, or None if not simulated;
        `level` one for every size, or one per size of `GRID` (`level.LevelChoice.levels`)."""
        fits = self.fits.get(measure)
        if not fits or n <= 0:
            return None
        n_eff = n * n_reference / (n + n_reference)
        key = (measure, level)
        if key not in self._floors:  # a monitor asks at one level: the per-size floors once
            levels = level if isinstance(level, tuple) else (level,) * len(fits)
            self._floors[key] = np.array([f.quantile(measure, q) for f, q in zip(fits, levels, strict=False)])
        floors = self._floors[key]
        sizes = np.array(self.sizes[:len(fits)], dtype=np.float64)
        if np.isinf(floors).any():
            # a measure infinite on noise at some size: take the nearest simulated size at or below
            below = np.flatnonzero(sizes <= n_eff)
            return float(floors[below[-1] if below.size else 0])
        law = -1.0 if measure in DIVERGENCES else -0.5
        if n_eff >= sizes[-1]:
            return float(floors[-1] * (n_eff / sizes[-1]) ** law)
        if n_eff <= sizes[0]:
            slope = law
            if floors.size > 1 and floors[0] > 0 and floors[1] > 0:
                slope = min(max(math.log(floors[1] / floors[0]) / math.log(sizes[1] / sizes[0]), -1.5), 0.0)
            return float(floors[0] * (n_eff / sizes[0]) ** slope)
        i = int(np.searchsorted(sizes, n_eff, side="right")) - 1
        f0, f1 = floors[i], floors[i + 1]
        t = math.log(n_eff / sizes[i]) / math.log(sizes[i + 1] / sizes[i])
        if f0 > 0 and f1 > 0:
            return float(math.exp(math.log(f0) + t * math.log(f1 / f0)))
        return float(f0 + t * (f1 - f0))

    def chance(self, measure: str, size: int, value: float) -> float:
        """The fitted chance that a window of `size` values (on the n_eff scale of `floor`)
        without drift reaches `value` of `measure`: at a simulated size its tail's, beyond the
        largest one that tail's at the value the asymptotic law of `floor` scales back to it.
        1 where the value is within the simulated windows' bulk (reached too often to matter)."""
        fits = self.fits.get(measure)
        if not fits:
            return 1.0
        sizes = self.sizes[:len(fits)]
        i = sizes.index(size) if size in sizes else len(fits) - 1
        if size > sizes[i]:
            law = -1.0 if measure in DIVERGENCES else -0.5
            value = value * (size / sizes[i]) ** -law
        found = fits[i].survival(measure, np.array([value]))[0]
        return 1.0 if math.isnan(found) else float(found)

    def to_json(self) -> dict[str, Any]:
        return {"sizes": list(self.sizes), "replicates": {m: list(r) for m, r in self.replicates.items()},
                "fits": {m: [[f.u, f.above, f.scale, f.infinite, f.shape] for f in fits]
                         for m, fits in self.fits.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NoiseTable:
        return cls(tuple(int(s) for s in data["sizes"]),
                   {m: tuple(TailFit(*map(float, f)) for f in fits) for m, fits in data["fits"].items()},
                   {m: tuple(int(n) for n in r) for m, r in data["replicates"].items()})


def needed(drift_share: float, evaluated: int) -> int:
    """How many of `evaluated` features must drift for the dataset to drift (share >= drift_share)."""
    d = max(1, math.ceil(drift_share * evaluated - 1e-9))
    while d > 1 and (d - 1) / evaluated >= drift_share:
        d -= 1
    while d / evaluated < drift_share:
        d += 1
    return d


def feature_level(dataset_level: float, drift_share: float, features: int) -> float:
    """Markov's level: the chance per feature and window, without drift, that keeps the dataset's
    false alarms within `dataset_level` for any correlation between the features (`level.py`
    uses it where the whole-row windows cannot tell the correlation).

    The dataset drifts when at least d = needed(drift_share, j) of its j evaluated features
    drift. Whatever the features' correlation, P(at least d of j drift) <= j·q / d (Markov's
    inequality on the count of drifted features), so q = dataset_level · min over j of d / j
    keeps the dataset's false alarms at most `dataset_level` for any number j <= features of
    features evaluated in a window, correlated or not (with drift_share 0.5: q = level / 2).
    """
    ratio = min(needed(drift_share, j) / j for j in range(1, max(features, 1) + 1))
    return dataset_level * ratio
