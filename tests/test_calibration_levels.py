"""The level of the noise floors: chosen per monitor from whole-row windows of the training data,
so the dataset rule sees the features' actual correlation; Markov's bound where that is not
possible; and floors that do not understate the noise of a small heavy-tailed reference.

Windows without drift are drawn afresh from the training data's population (tests/simulation.py),
not from the reference, as new data is.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from driftline.service.drift import ColumnKind
from driftline.service.drift.level import JointNoise, choose_level, level_at
from driftline.service.drift.noise import GRID, NoiseTable, TailFit, feature_level
from driftline.service.drift.sim_rows import level_code
from driftline.service.evaluation import evaluate_window, prepare
from driftline.service.reference import ReferenceProfile, build_profile

from tests.simulation import ArrayWindow, Population, settings, windows


def _joint(levels: np.ndarray) -> JointNoise:
    """A profile's whole-row levels from (sizes, windows, columns) exceedance levels."""
    codes = {f"c{i}": {"wasserstein": level_code(levels[:, :, i])} for i in range(levels.shape[2])}
    return JointNoise(tuple(100 * 10 ** (i / 2) for i in range(levels.shape[0])), levels.shape[1], codes)


def test_copies_get_the_dataset_level_and_independent_features_a_larger_one() -> None:
    """Four copies of one feature drift together: two of them drift as often as one does, so
    the level is the dataset's own (Markov's bound would halve it). Four independent features
    rarely drift two at a time: the level is then only capped by the features' budget."""
    rng = np.random.default_rng(0)
    u = rng.random((3, 20_000, 1))
    copies = choose_level(_joint(np.repeat(u, 4, axis=2)), [(f"c{i}", "wasserstein") for i in range(4)], 0.5,
                          0.001, 0.01)
    assert copies.basis == "whole rows" and 0.7e-3 <= copies.level <= 1.3e-3, copies
    assert copies.level > feature_level(0.001, 0.5, 4) == 0.0005
    independent = choose_level(_joint(rng.random((3, 20_000, 4))), [(f"c{i}", "wasserstein") for i in range(4)], 0.5,
                               0.001, 0.01)
    assert independent.level == 0.005 and independent.dataset_rate is not None and independent.dataset_rate < 1e-3
    # one drifted feature in four is dataset drift: the union of four independent ones, about 4q
    union = choose_level(_joint(rng.random((3, 20_000, 4))), [(f"c{i}", "wasserstein") for i in range(4)], 0.25,
                         0.001, 0.01)
    assert 0.18e-3 <= union.level <= 0.3e-3, union


def test_the_bound_for_any_correlation_is_the_fallback() -> None:
    features = [("c0", "wasserstein"), ("c1", "wasserstein")]
    assert choose_level(None, features, 0.5, 0.001, 0.01).basis == "markov"
    partial = choose_level(_joint(np.random.default_rng(1).random((3, 2_000, 1))), features, 0.5, 0.001, 0.01)
    assert partial.basis == "markov" and partial.level == feature_level(0.001, 0.5, 2) and "c1" in (partial.note or "")
    # a feature without floors drifts on Evidently's verdict alone: counted as always drifting
    alone = choose_level(_joint(np.random.default_rng(1).random((3, 2_000, 1))), [("c0", "wasserstein"), ("x", None)],
                         0.5, 0.001, 0.01)
    assert alone.basis == "markov"


def _tables(reach: list[list[float]]) -> dict[str, NoiseTable]:
    """Noise tables whose Wasserstein score reaches 0.1 with the chance reach[i][k] at GRID[k]
    (an exponential tail from 0: chance exp(-x / scale) of reaching x); reach 1: 0.1 is within
    the simulated windows' bulk (a tail fitted above 0.2)."""
    def fit(r: float) -> TailFit:
        return TailFit(0.2, 0.1, 0.01) if r >= 1 else TailFit(0.0, 1.0, -0.1 / math.log(r))
    return {f"c{i}": NoiseTable(GRID, {"wasserstein": tuple(map(fit, per_size))}, {"wasserstein": (2_000,) * len(GRID)})
            for i, per_size in enumerate(reach)}


def test_a_feature_that_rarely_reaches_its_threshold_leaves_its_share_of_the_budget_to_the_others() -> None:
    """The features' limit is on their mean: at most half of `feature_false_alarm_rate` flagged on
    average. At a window size where a feature's practical threshold is itself rarely reached
    (its floor below it: Evidently's verdict decides), the features whose floors decide get
    what it leaves, each at most the whole rate; where every threshold is within the noise
    (small windows), the level is half the rate, as for features that always reach them."""
    joint = _joint(np.random.default_rng(2).random((3, 20_000, 4)))  # independent: the dataset rule is slack
    features = [(f"c{i}", "wasserstein") for i in range(4)]
    thresholds = {f"c{i}": 0.1 for i in range(4)}
    slack = [1.0] * 4 + [0.001] * (len(GRID) - 4)  # c0 rarely reaches 0.1 from GRID[4] (1,000) on
    choice = choose_level(joint, features, 0.5, 0.001, 0.01, thresholds, _tables([slack] + [[1.0] * len(GRID)] * 3))
    assert choice.basis == "whole rows"
    assert choice.levels[:4] == (0.005,) * 4
    assert choice.levels[4] == pytest.approx((4 * 0.005 - 0.001) / 3)  # the mean of min(q, reach) is 0.005
    quiet = choose_level(joint, features, 0.5, 0.001, 0.01, thresholds, _tables([[0.002] * len(GRID)] * 4))
    assert quiet.levels == (0.01,) * len(GRID)  # all rarely reach: each at most the whole rate
    assert choose_level(joint, features, 0.5, 0.001, 0.01).levels == (0.005,) * len(GRID)  # thresholds unknown
    # the dataset's rate still bounds it: copies of one feature drift together
    copies = choose_level(_joint(np.repeat(np.random.default_rng(3).random((3, 20_000, 1)), 4, axis=2)),
                          features, 0.5, 0.001, 0.01, thresholds, _tables([[0.002] * len(GRID)] * 4))
    assert max(copies.levels) <= 1.3e-3, copies
    # the window's level: log-log between the sizes, constant beyond
    assert level_at(choice.levels, 50) == 0.005 and level_at(choice.levels, 1e6) == choice.levels[-1]
    assert 0.005 < level_at(choice.levels, 800) < choice.levels[4]


def test_the_chance_of_reaching_a_value_beyond_the_simulated_sizes_follows_the_floors_law() -> None:
    """A column simulated up to 1,000 values: at 4,000 the chance of reaching 0.1 is the one of
    reaching 0.2 at 1,000 (distances shrink with n^-1/2), as the floor's extrapolation has it."""
    [table] = _tables([[0.05] * 5]).values()
    table = NoiseTable(GRID[:5], table.fits, table.replicates)
    beyond = table.chance("wasserstein", 4_000, 0.1)
    assert beyond == pytest.approx(table.chance("wasserstein", 1_000, 0.2)) and beyond == pytest.approx(0.05 ** 2)
    floor = table.floor("wasserstein", 4_000, 10 ** 9, beyond)
    assert floor == pytest.approx(0.1, rel=1e-3)


def test_a_profile_without_whole_row_windows_falls_back_to_the_bound(
        simulated_references: dict[int, ReferenceProfile], tmp_path: Path) -> None:
    reference = dataclasses.replace(simulated_references[20_000], joint=None, levels={})
    [window] = windows(Population(), 100, 1, seed=3)
    names = tuple(reference.columns)
    result = evaluate_window(window, reference, settings(tmp_path, features=names), names)
    assert result.false_alarm_level_basis == "markov"
    assert result.false_alarm_level == feature_level(0.001, 0.5, len(names))


def test_the_level_is_chosen_when_the_reference_is_loaded_not_at_the_first_window(
        simulated_references: dict[int, ReferenceProfile], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`prepare` (the monitor calls it on loading or reloading a reference) chooses the level, so
    the first window does no more work than the next; it is the level evaluation then uses."""
    reference = dataclasses.replace(simulated_references[20_000], levels={})
    names = tuple(reference.columns)
    st = settings(tmp_path, features=names)
    prepare(reference, st, names)
    assert len(reference.levels) == 1
    [chosen] = reference.levels.values()

    def again(*args: object) -> None:
        raise AssertionError("the level was chosen again at the first window")

    monkeypatch.setattr("driftline.service.evaluation.choose_level", again)
    [window] = windows(Population(), 100, 1, seed=3)
    result = evaluate_window(window, reference, st, names)
    assert (result.false_alarm_level, result.false_alarm_level_basis) == (chosen.level, chosen.basis)


MONITORS = {"two copies of one feature": (("copy_a", "copy_b"), 0.5),
            "two independent features": (("normal", "region"), 0.5),
            "ten correlated features, one drifted is enough": (
                ("copy_a", "copy_b", "normal", "skewed", "rounded", "count", "binary", "few", "heavy", "region"), 0.1)}


@pytest.fixture(scope="module")
def levels(simulated_references: dict[int, ReferenceProfile], tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, float]:
    out = {}
    for label, (names, share) in MONITORS.items():
        st = settings(tmp_path_factory.mktemp("levels"), features=names, drift_share=share, false_alarm_rate=0.02,
                      feature_false_alarm_rate=0.1)
        [window] = windows(Population(), 100, 1, seed=1, features=names)
        result = evaluate_window(window, simulated_references[20_000], st, names)
        assert result.false_alarm_level_basis == "whole rows", label
        out[label] = float(result.false_alarm_level or 0.0)
    return out


def test_the_level_follows_the_features_correlation(levels: dict[str, float]) -> None:
    """The same dataset rule (one of two features) gets twice the level for copies, which drift
    together, as for independent features, which add up; both above Markov's bound."""
    copies, independent = levels["two copies of one feature"], levels["two independent features"]
    assert copies > 1.5 * independent, levels
    assert independent > 0.8 * feature_level(0.02, 0.5, 2), levels


@pytest.mark.parametrize("label", list(MONITORS))
@pytest.mark.parametrize("size", [100, 500])
def test_dataset_false_alarms_stay_within_the_rate_for_correlated_features(
        simulated_references: dict[int, ReferenceProfile], tmp_path: Path, levels: dict[str, float], label: str,
        size: int) -> None:
    """At a dataset rate of 1 in 50 (measurable in 2,000 windows), the share of windows declared
    dataset drift is within it, and not far below: the level uses the rate, no more."""
    names, share = MONITORS[label]
    st = settings(tmp_path, features=names, drift_share=share, false_alarm_rate=0.02, feature_false_alarm_rate=0.1)
    drifted = sum(evaluate_window(w, simulated_references[20_000], st, names).dataset_drift
                  for w in windows(Population(), size, 2_000, seed=size + len(names), features=names))
    expected = 0.02 * 2_000
    assert drifted <= expected + 3 * math.sqrt(expected), (label, drifted, levels[label])
    if size == 100:  # where the floors decide (Evidently flags most features of 100 events)
        assert drifted >= expected / 4, (label, drifted, levels[label])


# -- a small reference of a heavy-tailed column --------------------------------------------------

@pytest.fixture(scope="module")
def lognormal_references(tmp_path_factory: pytest.TempPathFactory) -> list[ReferenceProfile]:
    d = tmp_path_factory.mktemp("lognormal")
    rng = np.random.default_rng(2_000)
    out = []
    for i in range(4):
        pd.DataFrame({"x": rng.lognormal(0, 1, 2_000)}).to_parquet(d / f"{i}.parquet", index=False)
        out.append(build_profile(d / f"{i}.parquet"))
    return out


@pytest.mark.parametrize("level", [0.001, 0.005])
def test_a_small_heavy_tailed_reference_does_not_understate_the_noise(
        lognormal_references: list[ReferenceProfile], tmp_path: Path, level: float) -> None:
    """2,000 training rows of a lognormal column, windows of 100 new events without drift: a
    one-feature monitor (its level is the dataset's rate) flags at most its level. A resample of
    the 2,000 rows alone flagged over twice as many (its largest values are a lottery, and new
    data reaches beyond them): the floors model the tail, and how uncertain its fit is."""
    st = settings(tmp_path, features=("x",), false_alarm_rate=level)
    rng = np.random.default_rng(7)
    flagged = count = 0
    for reference in lognormal_references:
        for row in rng.lognormal(0, 1, (10_000, 100)):
            result = evaluate_window(ArrayWindow([row], [ColumnKind.NUMERICAL]), reference, st, ("x",))
            flagged += result.dataset_drift
            count += 1
    assert result.false_alarm_level == level and result.features[0].method == "wasserstein"
    assert flagged <= level * count, (flagged, count)
    assert flagged >= 0.1 * level * count, (flagged, count)  # the floor is not set absurdly high either
