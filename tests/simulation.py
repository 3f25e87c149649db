"""Synthetic populations and windows for the calibration's statistics (tests and bench/).

A `Population` draws rows of a dozen features of the shapes real serving data has (normal,
skewed, heavy-tailed, integer counts, rounded values with many ties, missing values, binary,
few and many categories with skewed shares), half of them driven by one latent factor so
they are correlated, two of them copies of each other. `shift` moves chosen features by a
given amount of their own scale (numerical: a location shift in standard deviations;
categorical: that share of the values moved to another category).

`ArrayWindow` is a window profile built straight from column arrays: it implements
`evaluation.WindowView` (the seam `evaluate_window` reads), so thousands of windows are
evaluated without feeding events one by one through `window.WindowProfile`.

`first_flags` runs a sequence of shifted populations through Evidently's thresholds and
driftline's, and tells per feature when each first flagged it, and when Evidently first did
while the population itself was beyond the threshold (`population_verdicts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from driftline.service.config import MonitorSettings
from driftline.service.drift import ColumnKind, ColumnSample
from driftline.service.evaluation import evaluate_window
from driftline.service.reference import ReferenceProfile

NUMERICAL = ("normal", "skewed", "heavy", "count", "rounded", "sparse", "copy_a", "copy_b")
CATEGORICAL = ("binary", "few", "many", "region")
FEATURES = NUMERICAL + CATEGORICAL
_FEW = np.array([0.5, 0.3, 0.15, 0.05])
_MANY = np.random.default_rng(7).dirichlet(np.full(30, 0.8))
_REGION = np.array([0.3, 0.25, 0.2, 0.15, 0.1])


@dataclass
class Population:
    seed: int = 0
    shift: dict[str, float] = field(default_factory=dict)

    def frame(self, n: int, rng: np.random.Generator | None = None) -> pd.DataFrame:
        r = rng or np.random.default_rng(self.seed)
        s = self.shift.get
        latent = r.normal(size=n)

        def correlated(rho: float) -> np.ndarray:
            return rho * latent + np.sqrt(1 - rho * rho) * r.normal(size=n)

        skewed = np.exp(0.8 * correlated(0.6))
        sparse = r.exponential(30, n).round() + 30 * s("sparse", 0.0)
        sparse[r.random(n) < 0.4] = np.nan
        copy_a = 100 + 20 * correlated(0.8) + 20 * s("copy", 0.0)
        return pd.DataFrame({
            "normal": correlated(0.7) + s("normal", 0.0),
            "skewed": skewed + s("skewed", 0.0) * 1.0,  # the population's std is about 1
            "heavy": r.standard_t(4, n) * (1.0 + s("heavy", 0.0)),  # a scale change
            "count": r.poisson(np.exp(1.5 + 0.3 * correlated(0.5)) + 2 * s("count", 0.0), n).astype(float),
            "rounded": np.round(50 + 10 * correlated(0.7) + 10 * s("rounded", 0.0)),
            "sparse": sparse, "copy_a": copy_a, "copy_b": copy_a.copy(),
            "binary": self._categorical(r, np.array([0.7, 0.3]), "binary", correlated(0.6)),
            "few": self._categorical(r, _FEW, "few", correlated(0.6)),
            "many": self._categorical(r, _MANY, "many", r.normal(size=n)),
            "region": self._categorical(r, _REGION, "region", r.normal(size=n))})

    def _categorical(self, r: np.random.Generator, p: np.ndarray, name: str, score: np.ndarray) -> np.ndarray:
        codes = np.searchsorted(np.cumsum(p)[:-1], _normal_cdf(score), side="right")
        moved = self.shift.get(name, 0.0)
        if moved:  # that share of the values moves to the next category
            codes = np.where(r.random(score.size) < moved, (codes + 1) % p.size, codes)
        return np.array([f"{name}_{i}" for i in range(p.size)], dtype=object)[codes]


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return np.asarray(ndtr(x))


class ArrayWindow:
    """A window of rows given as columns (NaN / None missing): what `evaluate_window` reads."""

    def __init__(self, columns: Sequence[np.ndarray], kinds: Sequence[ColumnKind]) -> None:
        self.events = len(columns[0])
        self.start, self.end = 0.0, 1.0
        self.prediction_missing = 0
        self.model_versions: Mapping[str, int] = {}
        self.missing: list[int] = []
        self._samples: list[ColumnSample] = []
        for values, kind in zip(columns, kinds, strict=True):
            if kind is ColumnKind.NUMERICAL:
                finite = values[np.isfinite(values)]
                self._samples.append(ColumnSample(kind, values=np.sort(finite)))
                self.missing.append(values.size - finite.size)
            else:
                present = values[pd.notna(values)]
                labels, counts = np.unique(present.astype(str), return_counts=True)
                self._samples.append(ColumnSample(kind, labels=labels.astype(object), counts=counts))
                self.missing.append(values.size - present.size)

    def sample(self, i: int) -> ColumnSample:
        return self._samples[i]

    def exact(self, i: int) -> bool:
        return True

    def prediction_sample(self) -> ColumnSample | None:
        return None


def settings(reference: Path, features: Sequence[str] = FEATURES, calibration: str = "on",
             drift_share: float = 0.5, **drift: object) -> MonitorSettings:
    return MonitorSettings.model_validate({
        "name": "sim", "kafka": {"bootstrap_servers": ["127.0.0.1:9"], "topic": "t", "group_id": "g"},
        "reference": {"path": str(reference)}, "event": {"features": list(features)},
        "window": {"type": "count", "size": 10**9, "min_events": 1},
        "drift": {"calibration": calibration, "drift_share": drift_share, **drift}})


def windows(population: Population, size: int, count: int, seed: int,
            features: Sequence[str] = FEATURES) -> list[ArrayWindow]:
    """`count` windows of `size` rows of these features, each drawn afresh from the population."""
    rng = np.random.default_rng(seed)
    frame = population.frame(size * count, rng)
    kinds = [ColumnKind.NUMERICAL if n in NUMERICAL else ColumnKind.CATEGORICAL for n in features]
    cols = [frame[n].to_numpy() for n in features]
    return [ArrayWindow([c[i * size:(i + 1) * size] for c in cols], kinds) for i in range(count)]


def first_flagged(flags: Sequence[bool], onset: int = 0) -> int | None:
    """The first window flagged from the drift's onset on, counted from the onset (a flag before
    it is a false alarm); None if none is."""
    return next((i - onset for i, f in enumerate(flags) if f and i >= onset), None)


def first_caught(flags: Sequence[bool], beyond: Sequence[bool], onset: int = 0) -> int | None:
    """The first window from the onset on that is flagged while the population itself is beyond
    the threshold (`beyond`, per window), counted from the onset: Evidently's catch of a drift
    that matters, its flags on a population within the threshold left out as noise."""
    return first_flagged([f and b for f, b in zip(flags, beyond, strict=True)], onset)


def delay_counts(gaps: Sequence[int]) -> tuple[int, int, int]:
    """Of driftline's delays behind Evidently (in windows): in the same window (or before), one
    later, later."""
    return sum(g <= 0 for g in gaps), sum(g == 1 for g in gaps), sum(g > 1 for g in gaps)


DATASET = "(dataset drift)"  # first_flags: the window's dataset verdict, beside the features'


def first_flags(ref: ReferenceProfile, workdir: Path, shifts: list[dict[str, float]], size: int,
                seed: int, features: tuple[str, ...] = FEATURES, drift_share: float = 0.5,
                shifted: set[str] | None = None) -> dict[str, tuple[int | None, int | None, int | None]]:
    """Per feature (and DATASET): Evidently's first flag from the onset, driftline's, and
    Evidently's first flag in a window whose population is itself beyond the threshold."""
    verdicts: dict[str, dict[str, list[bool]]] = {"off": {}, "on": {}, "population": {}}
    for i, shift in enumerate(shifts):
        [w] = windows(Population(shift=shift), size, 1, seed=seed * 1000 + i, features=features)
        for mode in ("off", "on"):
            st = settings(workdir, features=features, calibration=mode, drift_share=drift_share)
            r = evaluate_window(w, ref, st, features)
            for f in r.features:
                verdicts[mode].setdefault(f.feature, []).append(f.drifted)
            verdicts[mode].setdefault(DATASET, []).append(r.dataset_drift)  # asked for by name in `shifted`
        for name, beyond in population_verdicts(ref, workdir, shift, features, drift_share).items():
            verdicts["population"].setdefault(name, []).append(beyond)

    onset = next(i for i, shift in enumerate(shifts) if any(shift.values()))
    names = shifted or {n for s in shifts for n in s}
    return {n: (first_flagged(verdicts["off"][n], onset), first_flagged(verdicts["on"][n], onset),
                first_caught(verdicts["off"][n], verdicts["population"][n], onset)) for n in sorted(names)}


_POPULATIONS: dict[tuple[object, ...], dict[str, bool]] = {}


def population_verdicts(ref: ReferenceProfile, workdir: Path, shift: dict[str, float], features: tuple[str, ...],
                        drift_share: float) -> dict[str, bool]:
    """Evidently's verdicts on the shifted population itself (100,000 rows of it), per feature
    and DATASET: whether it is beyond the threshold, a drift that matters by Evidently's measure."""
    key = (ref.content_hash, tuple(sorted(shift.items())), features, drift_share)
    if key not in _POPULATIONS:
        [w] = windows(Population(shift=shift), 100_000, 1, seed=123_456, features=features)
        r = evaluate_window(w, ref, settings(workdir, features=features, calibration="off", drift_share=drift_share),
                            features)
        _POPULATIONS[key] = {f.feature: f.drifted for f in r.features} | {DATASET: r.dataset_drift}
    return _POPULATIONS[key]
