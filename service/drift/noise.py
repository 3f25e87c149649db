"""Noise floors: how large a measure gets on a window that did not drift, by window size.

When a reference profile is built, windows of several sizes are drawn from the training data
itself and scored against it (`simulate.py`); here the scores of each (measure, size) are
summarised by the tail of their distribution, and looked up at evaluation time:

- **Tail.** Drift must be rare on windows without drift (a per-feature level q of about
  1 in 2,000, see `feature_level`), far beyond what a thousand simulated windows show
  directly. Every measure here is, on windows without drift, a norm of an asymptotically
  Gaussian process (KS, Wasserstein, energy distance, Cohen's d and h, rank-biserial), or of
  a Gaussian vector (Jensen-Shannon, Hellinger, Cohen's w, total variation; PSI and KL are
  squares of such norms, so their square roots are): its tail falls off like a Gaussian's,
  faster than any exponential. So an exponential tail fitted above the simulations' 90th
  percentile u (peaks over threshold with exponential excesses; the scale is the mean
  excess) bounds it from above, and the floor is its value exceeded with probability q:
  u + scale·ln(share above u / q), on the measure's distance scale. Checked against 100,000
  simulated windows (bench/bench_calibration.py --only-tails): the windows above the fitted
  floor are 0.04 to 1.13 times q on average (one fit at worst 2.2 times) for the default
  methods' measures, the floors 0-15% above the exact quantile.
- **Window size.** A window of n values scored against a reference of N values has the noise
  of both samples: for these measures it scales with 1/n + 1/N, so the floor of a window of
  n values is the simulated one at n_eff = n·N / (n + N) (log-log interpolation between the
  simulated sizes; beyond the largest simulated size the asymptotic law, floors shrinking
  with n_eff^-1/2, or n_eff^-1 for PSI and KL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Window sizes simulated: a log grid, four a decade, from 100 values to the exactness budget.
GRID: tuple[int, ...] = tuple(round(100 * 10 ** (i / 4)) for i in range(13))
TAIL_SHARE = 0.1  # the tail fitted: the simulations above their 90th percentile …
TAIL_MIN = 100  # … or above their top 100, when there are more than 1,000 (closer to the far tail)
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
    share of simulated windows above it, the mean excess above it, and the share of windows
    whose measure was infinite."""

    u: float
    above: float
    scale: float
    infinite: float = 0.0

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
        return cls(u, excess.size / values.size, float(excess.mean()) if excess.size else 0.0,
                   float(infinite.mean()))

    def quantile(self, measure: str, level: float) -> float:
        """The value the measure exceeds with probability `level` on a window without drift."""
        if level <= self.infinite:
            return math.inf
        finite_level = (level - self.infinite) / (1 - self.infinite)
        if self.above <= 0 or self.scale <= 0 or finite_level >= self.above:
            return from_tail_scale(measure, self.u)
        return from_tail_scale(measure, self.u + self.scale * math.log(self.above / finite_level))


@dataclass(frozen=True)
class NoiseTable:
    """The fitted tails of one reference column: measure -> one TailFit per simulated size."""

    sizes: tuple[int, ...]
    fits: dict[str, tuple[TailFit, ...]]
    replicates: dict[str, tuple[int, ...]]  # windows simulated per size
    _floors: dict[tuple[str, float], np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def measures(self) -> frozenset[str]:
        return frozenset(self.fits)

    def floor(self, measure: str, n: int, n_reference: int, level: float) -> float | None:
        """The noise floor of `measure` for a window of `n` values, or None if not simulated."""
        fits = self.fits.get(measure)
        if not fits or n <= 0:
            return None
        n_eff = n * n_reference / (n + n_reference)
        key = (measure, level)
        if key not in self._floors:  # a monitor asks at one level: the per-size floors once
            self._floors[key] = np.array([f.quantile(measure, level) for f in fits])
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

    def to_json(self) -> dict[str, Any]:
        return {"sizes": list(self.sizes), "replicates": {m: list(r) for m, r in self.replicates.items()},
                "fits": {m: [[f.u, f.above, f.scale, f.infinite] for f in fits] for m, fits in self.fits.items()}}

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
    """The chance per feature and window, without drift, at which the noise floors are set.

    The dataset drifts when at least d = needed(drift_share, j) of its j evaluated features
    drift. Whatever the features' correlation, P(at least d of j drift) <= j·q / d (Markov's
    inequality on the count of drifted features), so q = dataset_level · min over j of d / j
    keeps the dataset's false alarms at most `dataset_level` for any number j <= features of
    features evaluated in a window, correlated or not (with drift_share 0.5: q = level / 2).
    """
    ratio = min(needed(drift_share, j) / j for j in range(1, max(features, 1) + 1))
    return dataset_level * ratio
