"""The generalised Pareto distribution, the law of excesses over a high threshold (Pickands
1975): the tails of the reference's columns (`sim_ecdf.py`) and of the simulated measures
(`noise.TailFit`) are fitted with it."""

from __future__ import annotations

import math

import numpy as np


def pwm_gpd(excesses: np.ndarray) -> tuple[float, float]:
    """(shape, scale) of a generalised Pareto by probability-weighted moments (Hosking & Wallis
    1987): unbiased enough from a few dozen excesses and defined for shapes below 1/2, where a
    fit by moments (needing a finite fourth moment) is not."""
    y = np.sort(excesses)
    k = y.size
    a0 = float(y.mean())
    a1 = float(np.mean(y * (1 - (np.arange(1, k + 1) - 0.35) / k)))
    if a0 <= 0 or a0 - 2 * a1 <= 0:
        return 0.0, 0.0
    return 2 - a0 / (a0 - 2 * a1), 2 * a0 * a1 / (a0 - 2 * a1)


def pwm_shape_se(shape: float, count: int) -> float:
    """Asymptotic standard error of the PWM shape estimate (Hosking & Wallis 1987, with their
    k = -shape), at a shape within [0, 0.45] where the formula holds."""
    k = -min(max(shape, 0.0), 0.45)
    var = (1 - k) * (2 - k) ** 2 * (1 - k + 2 * k * k) / ((1 - 2 * k) * (3 - 2 * k))
    return math.sqrt(var / count)


def gpd_excess(survival: np.ndarray, shape: np.ndarray, median: float) -> np.ndarray:
    """The excess a generalised Pareto of this shape exceeds with probability `survival`,
    scaled so that its median excess is the fitted one (a heavier shape drawn for a window
    moves its far tail, not its bulk)."""
    s = np.maximum(shape, 1e-9)
    scale = median * s / np.expm1(s * math.log(2))
    return np.where(shape > 1e-9, scale / s * np.expm1(-s * np.log(survival)), -median / math.log(2) * np.log(survival))
