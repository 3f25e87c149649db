"""`driftline evaluate`: a file's drift table is Evidently's `Report([DataDriftPreset()])`, and
the command gates a pipeline by its exit code."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from driftline.service.cli import main
from driftline.service.demo.traffic import CATEGORICAL, DEFAULT_SHIFT, NUMERICAL, TrafficModel
from driftline.service.drift import METHODS, ColumnKind
from driftline.service.offline import evaluate_files

from tests.evidently_oracle import evidently_drift  # sets DO_NOT_TRACK before evidently is imported

DISPLAY_NAMES = {m.display_name: m.name for m in METHODS.values()}


# -- data ---------------------------------------------------------------------------------

def traffic(ref_rows: int, cur_rows: int, shift: tuple[str, ...], seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (pd.DataFrame(TrafficModel(seed=100 + seed).columns(ref_rows)),
            pd.DataFrame(TrafficModel(seed=seed, shift=shift).columns(cur_rows)))


MIXED_NUMERICAL = ("x", "count", "level", "binary")
MIXED_CATEGORICAL = ("code", "flag", "city")


def mixed(ref_rows: int, cur_rows: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every kind of column a file holds: floats with NaN and ±inf, few-valued and two-valued
    numbers, integer codes meant as categories (--categorical code), booleans, strings with None."""
    r = np.random.default_rng(seed)

    def frame(n: int, s: float) -> pd.DataFrame:
        x = r.normal(10 + 0.6 * s, 3, n)
        x[r.random(n) < 0.05] = np.nan
        x[r.random(n) < 0.01] = np.inf
        x[r.random(n) < 0.01] = -np.inf
        city = r.choice(["oslo", "lima", "pune", "kyiv", "nuuk"], n, p=[0.3, 0.3, 0.2, 0.1 + 0.05 * s, 0.1 - 0.05 * s])
        city = city.astype(object)
        city[r.random(n) < 0.1] = None
        return pd.DataFrame({
            "x": x, "count": r.poisson(3 + s, n).astype(float), "level": r.choice([1.0, 2.0, 3.0], n),
            "binary": (r.random(n) < 0.3 + 0.1 * s).astype(float),
            "code": r.choice([101, 202, 303, 404], n, p=[0.4, 0.3, 0.2 - 0.1 * s, 0.1 + 0.1 * s]),
            "flag": r.random(n) < 0.5, "city": city})

    return frame(ref_rows, 0.0), frame(cur_rows, 1.0)


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


# -- Evidently and our outputs --------------------------------------------------------------

def evidently_table(reference: pd.DataFrame, current: pd.DataFrame, numerical: tuple[str, ...],
                    categorical: tuple[str, ...], **preset: Any) -> dict[str, Any]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    cols = [*numerical, *categorical]
    dd = DataDefinition(numerical_columns=list(numerical), categorical_columns=list(categorical))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snap = Report([DataDriftPreset(**preset)]).run(Dataset.from_pandas(current[cols], data_definition=dd),
                                                       Dataset.from_pandas(reference[cols], data_definition=dd))
    out: dict[str, Any] = {"columns": {}}
    for m in snap.dict()["metrics"]:
        cfg = m["config"]
        if cfg["type"].endswith("ValueDrift"):
            method = DISPLAY_NAMES.get(cfg["method"], cfg["method"])  # a configured method keeps its name
            out["columns"][cfg["column"]] = (method, cfg["threshold"], float(m["value"]))
        elif cfg["type"].endswith("DriftedColumnsCount"):
            out["count"], out["share"] = m["value"]["count"], m["value"]["share"]
    return out


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """The command in this process (the subprocess tests below run it as a user does)."""
    rc = main(["evaluate", "--quiet", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def parse_table(text: str) -> dict[str, Any]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("feature "))
    header = lines[start].split()
    columns = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        row = dict(zip(header, line.split(), strict=True))
        columns[row["feature"]] = (row["method"], float(row["threshold"]), float(row["score"]), row["drifted"] == "YES")
    m = re.search(r"dataset drift: (YES|no), (\d+) of (\d+) features drifted \(share ([0-9.e-]+)", text)
    assert m, text
    return {"columns": columns, "dataset_drift": m[1] == "YES", "count": int(m[2]), "share": float(m[4])}


def assert_same_as_evidently(ours: dict[str, Any], table: str, theirs: dict[str, Any]) -> None:
    assert [f["feature"] for f in ours["features"]] == list(theirs["columns"])
    parsed = parse_table(table)
    assert list(parsed["columns"]) == list(theirs["columns"])
    for f in ours["features"]:
        method, threshold, score = theirs["columns"][f["feature"]]
        t_method, t_threshold, t_score, t_drifted = parsed["columns"][f["feature"]]
        assert (f["method"], f["threshold"]) == (method, threshold) == (t_method, t_threshold), f["feature"]
        if math.isnan(score):
            assert f["score"] is None and math.isnan(t_score)
        else:
            assert f["score"] == pytest.approx(score, rel=1e-9, abs=1e-12), f["feature"]
            assert t_score == pytest.approx(score, rel=1e-9, abs=1e-12), f["feature"]
        assert t_drifted == f["drifted"]
    assert sum(f["drifted"] for f in ours["features"]) == len(ours["drifted_features"]) == theirs["count"]
    assert parsed["count"] == theirs["count"]
    assert ours["drift_share"] == pytest.approx(theirs["share"], rel=1e-12)
    assert parsed["share"] == pytest.approx(theirs["share"], rel=1e-3)
    assert ours["dataset_drift"] == parsed["dataset_drift"]


# -- the drift table is Evidently's --------------------------------------------------------

@pytest.mark.parametrize(("data", "drift_share"), [
    pytest.param(lambda: traffic(20_000, 2_000, DEFAULT_SHIFT, 1), None, id="traffic-shifted"),
    pytest.param(lambda: traffic(800, 500, ("age", "region", "loan_term_months"), 2), 0.2,
                 id="traffic-small-reference"),  # Evidently picks ks, chisquare, z
    pytest.param(lambda: mixed(5_000, 1_500, 3), 0.3, id="mixed"),
    pytest.param(lambda: mixed(600, 400, 4), None, id="mixed-small-reference"),
])
def test_table_and_json_equal_evidently_report(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: Any,
                                              drift_share: float | None) -> None:
    reference, current = data()
    is_traffic = "prediction" in reference
    numerical, categorical = (NUMERICAL, CATEGORICAL) if is_traffic else (MIXED_NUMERICAL, MIXED_CATEGORICAL)
    ref, cur = write(reference, tmp_path / "ref.parquet"), write(current, tmp_path / "cur.parquet")
    args: list[str | Path] = ["--reference", ref, "--current", cur]
    args += ["--prediction-column", "prediction"] if is_traffic else ["--categorical", "code"]
    if drift_share is not None:
        args += ["--drift-share", str(drift_share)]
    rc, out, _ = cli(capsys, *args, "--calibration", "off", "--format", "json")
    assert rc == 0
    ours = json.loads(out)
    rc, table, _ = cli(capsys, *args, "--calibration", "off")
    assert rc == 0
    theirs = evidently_table(reference, current, numerical, categorical,
                             **({} if drift_share is None else {"drift_share": drift_share}))
    assert_same_as_evidently(ours, table, theirs)
    assert ours["calibration"] == "off" and all(f["decided_by"] == "threshold" for f in ours["features"])
    # calibrated: the same scores and Evidently's verdicts beside driftline's, each limit shown
    rc, out, _ = cli(capsys, *args, "--format", "json")
    calibrated = json.loads(out)
    assert rc == 0 and calibrated["calibration"] == "on"
    for plain, f in zip(ours["features"], calibrated["features"], strict=True):
        assert (f["score"], f["plain_drifted"]) == (plain["score"], plain["drifted"])
        assert f["calibrated"] and f["noise_floor"] is not None and f["noise_floor"] > 0
        assert f["drifted"] == (f["plain_drifted"] and _beyond_limits(f))
        # the dataset rule counts the drifted features beyond its own floor, never a lower one
        assert f["dataset_noise_floor"] >= f["noise_floor"]
        assert f["counts_for_dataset"] == (f["drifted"] and _beyond_limits(f, f["dataset_noise_floor"]))
    scored = [f for f in calibrated["features"] if f["method"] is not None]
    counted = sum(f["counts_for_dataset"] for f in scored) / len(scored)
    assert calibrated["dataset_share"] == pytest.approx(counted) and counted <= calibrated["drift_share"]
    assert calibrated["dataset_drift"] == (counted >= calibrated["drift_share_threshold"])
    assert calibrated["dataset_false_alarm_level"] <= calibrated["false_alarm_level"]
    assert ours["rows"] == len(current) and ours["reference"]["rows"] == len(reference)
    assert ours["reference_hash"].startswith("sha256:")
    for f in ours["features"]:
        expected = current[f["feature"]].replace([np.inf, -np.inf], np.nan).isna().mean()
        assert f["missing_ratio"] == pytest.approx(expected) and f["exact"]
    if is_traffic:  # scored like a feature, reported apart, not in the share
        method, score, drifted = evidently_drift(reference["prediction"], current["prediction"],
                                                 ColumnKind.NUMERICAL, None)
        p = ours["prediction"]
        assert (p["feature"], p["method"], p["drifted"]) == ("prediction", method, drifted)
        assert p["score"] == pytest.approx(score, rel=1e-9)
        assert "prediction" not in theirs["columns"]
    else:
        assert ours["prediction"] is None


def _beyond_limits(f: dict[str, Any], noise_floor: float | None = None) -> bool:
    """The calibrated verdict's extra conditions, from the reported limits alone (at the
    feature's noise floor, or the one given)."""
    floor = f["noise_floor"] if noise_floor is None else noise_floor
    if f["effect_size_measure"]:  # a p-value method: its effect size against both floors
        assert f["effect_size"] is not None and f["effect_size_floor"] is not None
        return bool(f["effect_size"] >= max(f["effect_size_floor"], floor))
    return bool(f["score"] >= floor)  # a distance (all here drift at score >= limit)


@pytest.mark.parametrize(("options", "preset"), [
    pytest.param(["--per-column-method", "income=psi,age=mannw,loan_purpose=chisquare,region=kl_div",
                  "--per-column-threshold", "income=0.5,age=0.2,region=0.01"],
                 {"per_column_method": {"income": "psi", "age": "mannw", "loan_purpose": "chisquare",
                                        "region": "kl_div"},
                  "per_column_threshold": {"income": 0.5, "age": 0.2, "region": 0.01}}, id="per-column"),
    pytest.param(["--num-method", "anderson", "--cat-method", "chisquare", "--threshold", "0.01",
                  "--per-column-method", "credit_score=t_test", "--drift-share", "0.3"],
                 {"num_method": "anderson", "cat_method": "chisquare", "threshold": 0.01,
                  "per_column_method": {"credit_score": "t_test"}, "drift_share": 0.3}, id="by-kind"),
    pytest.param(["--method", "jensenshannon", "--per-column-threshold", "region=0.02"],
                 {"method": "jensenshannon", "per_column_threshold": {"region": 0.02}}, id="one-method"),
])
def test_method_and_threshold_options_take_effect_as_in_evidently(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], preset: dict[str, Any]) -> None:
    reference, current = traffic(3_000, 1_000, ("age", "region", "income"), 7)
    ref, cur = write(reference, tmp_path / "ref.parquet"), write(current, tmp_path / "cur.parquet")
    args = ["--reference", ref, "--current", cur, "--exclude", "prediction", "--calibration", "off", *options]
    rc, out, _ = cli(capsys, *args, "--format", "json")
    assert rc == 0
    ours = json.loads(out)
    by_name = {f["feature"]: f for f in ours["features"]}
    for name, method in preset.get("per_column_method", {}).items():
        assert by_name[name]["method"] == method
    for name, threshold in preset.get("per_column_threshold", {}).items():
        assert by_name[name]["threshold"] == threshold
    _, table, _ = cli(capsys, *args)
    assert_same_as_evidently(ours, table, evidently_table(reference, current, NUMERICAL, CATEGORICAL, **preset))


# -- the same result whatever the files' form ----------------------------------------------

def test_profile_or_data_reference_csv_or_parquet_and_batch_size_give_one_result(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reference, current = mixed(4_000, 2_500, 11)
    current.loc[current.index[::7], "code"] = None  # ints become floats in those CSV chunks: labels stay "101"
    for suffix in (".parquet", ".csv"):
        write(reference, tmp_path / f"ref{suffix}")
        write(current, tmp_path / f"cur{suffix}")
    assert main(["reference", "build", "--data", str(tmp_path / "ref.parquet"), "--out", str(tmp_path / "ref.dlref"),
                 "--categorical", "code", "--quiet"]) == 0
    capsys.readouterr()
    results = {}
    for ref_name in ("ref.dlref", "ref.parquet", "ref.csv"):
        for cur_name in ("cur.parquet", "cur.csv"):
            types = [] if ref_name.endswith(".dlref") else ["--categorical", "code"]
            rc, out, _ = cli(capsys, "--reference", tmp_path / ref_name, "--current", tmp_path / cur_name,
                             *types, "--format", "json", "--drift-share", "0.25")
            assert rc == 0
            result = json.loads(out)
            del result["reference"]["path"], result["reference"]["source"], result["current"]["path"]
            results[ref_name, cur_name] = result
    first = results["ref.dlref", "cur.parquet"]
    assert first["dataset_drift"] and 0 < first["drift_share"] < 1
    assert {f["feature"] for f in first["features"]} == {*MIXED_NUMERICAL, *MIXED_CATEGORICAL}
    for key, result in results.items():
        assert result == first, key
    # many small batches (Parquet row groups read piecewise, CSV chunks of changing dtypes)
    for cur_name in ("cur.parquet", "cur.csv"):
        small = evaluate_files(tmp_path / "ref.dlref", tmp_path / cur_name, drift_share=0.25, batch_rows=333)
        assert small.to_json()["features"] == first["features"]


def test_a_type_override_that_contradicts_a_profile_is_refused(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    reference, current = mixed(500, 200, 12)
    write(reference, tmp_path / "ref.parquet")
    write(current, tmp_path / "cur.parquet")
    assert main(["reference", "build", "--data", str(tmp_path / "ref.parquet"),
                 "--out", str(tmp_path / "ref.dlref"), "--quiet"]) == 0
    rc, _, err = cli(capsys, "--reference", tmp_path / "ref.dlref", "--current", tmp_path / "cur.parquet",
                     "--categorical", "code")
    assert rc == 1
    assert "--categorical code: categorical, but the reference profile holds it as numerical" in err
    # agreeing with the profile is fine
    rc, _, _ = cli(capsys, "--reference", tmp_path / "ref.dlref", "--current", tmp_path / "cur.parquet",
                   "--numerical", "code")
    assert rc == 0


# -- the command as a pipeline runs it -------------------------------------------------------

def run_driftline(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "driftline.service.cli", "evaluate", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env={"DO_NOT_TRACK": "1", "PATH": ""})


@pytest.fixture(scope="module")
def pipeline_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pipeline")
    reference, shifted = traffic(20_000, 3_000, ("income", "debt_to_income", "loan_purpose", "age", "region",
                                                 "credit_score", "loan_amount"), 21)
    write(reference, d / "train.parquet")
    write(shifted, d / "shifted.parquet")
    write(pd.DataFrame(TrafficModel(seed=22).columns(3_000)), d / "stable.csv")
    write(pd.DataFrame({"age": ["young", "old"]}), d / "words.csv")
    (d / "notes.json").write_text("{}")
    return {"train": d / "train.parquet", "shifted": d / "shifted.parquet", "stable": d / "stable.csv",
            "words": d / "words.csv", "json": d / "notes.json", "dir": d}


def test_fail_on_drift_exits_3_on_drift_and_0_when_stable(pipeline_files: dict[str, Path]) -> None:
    train, shifted, stable = pipeline_files["train"], pipeline_files["shifted"], pipeline_files["stable"]
    drifted = run_driftline("--reference", train, "--current", shifted, "--prediction-column", "prediction",
                            "--fail-on-drift", "--format", "json")
    assert drifted.returncode == 3, drifted.stderr
    out = json.loads(drifted.stdout)
    assert out["dataset_drift"] and out["drift_share"] >= 0.5 and out["drift_share_threshold"] == 0.5
    assert {"income", "debt_to_income", "loan_purpose"} <= set(out["drifted_features"])
    assert out["prediction"]["feature"] == "prediction" and out["rows"] == 3_000
    assert "current: read 3,000 of 3,000 rows" in drifted.stderr  # progress goes to stderr, never stdout

    calm = run_driftline("--reference", train, "--current", stable, "--fail-on-drift", "--quiet")
    assert calm.returncode == 0, calm.stderr
    assert calm.stderr == ""
    assert re.search(r"^feature +type +method +threshold +score +effect_size +effect_floor +noise_floor "
                     r"+dataset_floor +decided_by +drifted +values +missing +quality$", calm.stdout, re.M)
    assert "calibration on: a feature drifts beyond its threshold and the noise floor" in calm.stdout
    assert "dataset drift: no, 0 of 13 features drifted" in calm.stdout

    reported = run_driftline("--reference", train, "--current", shifted, "--quiet", "--calibration", "off")  # no gate
    assert reported.returncode == 0
    assert "dataset drift: YES" in reported.stdout


def test_errors_exit_1_naming_the_option_from_the_real_command(pipeline_files: dict[str, Path]) -> None:
    missing = run_driftline("--reference", pipeline_files["train"], "--current", pipeline_files["dir"] / "nope.csv")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip() == f"driftline evaluate: --current {pipeline_files['dir'] / 'nope.csv'}: no such file"
    bad_format = run_driftline("--reference", pipeline_files["train"], "--current", pipeline_files["stable"],
                               "--format", "xml")
    assert bad_format.returncode == 1
    assert "--format: expected table or json, got 'xml'" in bad_format.stderr
    usage = run_driftline("--reference", pipeline_files["train"])
    assert usage.returncode == 2 and "--current" in usage.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--reference", "{dir}/nope.dlref"], "--reference {dir}/nope.dlref: no such file"),
    (["--reference", "{json}"], "--reference {json}: not a driftline reference profile"),
    (["--current", "{json}"], "--current {json}: expected a .parquet or .csv file"),
    (["--columns", "age,salary"], "--columns: no column 'salary' in --reference"),
    (["--columns", "age,prediction", "--current", "{words}"], "--columns: no column 'prediction' in --current"),
    (["--current", "{words}"], "--current {words}: column 'age' holds non-numeric values"),
    (["--exclude", "salary"], "--exclude: no column 'salary'"),
    (["--method", "ks"], "--method: ks applies to numerical columns, and home_ownership is categorical"),
    (["--cat-method", "wasserstein"], "--cat-method: wasserstein applies to numerical columns, and home_ownership"),
    (["--num-method", "g_test"], "--num-method: g_test applies to categorical columns, and age is numerical"),
    (["--num-method", "kstest"], "--num-method: unknown drift method 'kstest'"),
    (["--per-column-method", "region=ks"], "--per-column-method region: ks applies to numerical columns"),
    (["--prediction-column", "prediction", "--per-column-method", "prediction=TVD"],
     "--per-column-method prediction: TVD applies to categorical columns, and prediction is numerical"),
    (["--per-column-method", "salary=ks"], "--per-column-method: no column 'salary' in --reference"),
    (["--per-column-threshold", "age=high"], "--per-column-threshold age: expected a number, got 'high'"),
    (["--per-column-threshold", "age"], "--per-column-threshold: expected column=value"),
    (["--threshold", "nan"], "--threshold: expected a number, got 'nan'"),
    (["--drift-share", "1.5"], "--drift-share: expected a share greater than 0 and at most 1, got '1.5'"),
    (["--prediction-column", "score"], "--prediction-column: no column 'score' in --reference"),
    (["--numerical", "region", "--categorical", "region"], "--numerical/--categorical: region given as both"),
    (["--format", "yaml"], "--format: expected table or json, got 'yaml'"),
    (["--calibration", "maybe"], "--calibration: expected on or off, got 'maybe'"),
])
def test_bad_inputs_exit_1_with_a_message_naming_the_option(
        pipeline_files: dict[str, Path], capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    names = {k: str(v) for k, v in pipeline_files.items()}
    files = {"--reference": "{train}", "--current": "{stable}"}
    others: list[str] = []
    for option, value in zip(args[::2], args[1::2], strict=True):
        if option in files:
            files[option] = value
        else:
            others += [option, value]
    argv = [a.format(**names) for option, value in files.items() for a in (option, value)]
    argv += [a.format(**names) for a in others]
    rc, out, err = cli(capsys, *argv)
    assert rc == 1 and out == ""
    assert message.format(**names) in err


def test_an_empty_current_file_is_an_error(pipeline_files: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    empty = write(pd.DataFrame({"age": pd.Series([], dtype=float)}), tmp_path / "empty.parquet")
    rc, _, err = cli(capsys, "--reference", pipeline_files["train"], "--current", empty)
    assert rc == 1 and f"--current {empty}: no rows" in err


# -- identifiers and timestamps are not features -----------------------------------------------

def with_identifiers(ref_rows: int, cur_rows: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Real features (a real-valued one, whole-dollar incomes distinct in the small file but not
    in the training set, repeated codes and labels) beside ids and times of every kind."""
    r = np.random.default_rng(seed)

    def frame(n: int, first: int, shift: float) -> pd.DataFrame:
        times = pd.Timestamp("2026-03-01", tz="UTC") + pd.to_timedelta(first * 60 + np.arange(n) * 13, unit="s")
        order = np.arange(first, first + n, dtype=float) * 3 + 7
        order[n // 2] = np.nan  # an integer id with a gap: floats in the file
        return pd.DataFrame({
            "row_id": np.arange(first, first + n),
            "request_id": [f"req-{v:016x}" for v in r.permutation(np.arange(first, first + n) * 7919 + 11)],
            "order_id": order,
            "created_at": times,
            "created_at_text": times.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00"),
            "day": times.strftime("%Y/%m/%d"),
            "x": r.normal(shift, 1, n),  # real values, all distinct: a feature
            "income": r.lognormal(13 + 0.3 * shift, 0.8, n).round(),  # whole numbers
            "visits": r.poisson(4, n),
            "city": r.choice(["oslo", "lima", "pune"], n),
        })

    return frame(ref_rows, 0, 0.0), frame(cur_rows, 10 * ref_rows, 1.0)


LEFT_OUT = {"row_id": "every value distinct", "request_id": "every value distinct",
            "order_id": "every value distinct", "created_at": "datetime values",
            "created_at_text": "datetime values", "day": "datetime values"}
FEATURES = ["x", "income", "visits", "city"]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_identifier_and_timestamp_columns_are_left_out_and_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str) -> None:
    reference, current = with_identifiers(5_000, 400, 31)
    assert current["income"].is_unique and not reference["income"].is_unique  # a feature, distinct here by chance
    ref, cur = write(reference, tmp_path / f"ref{suffix}"), write(current, tmp_path / f"cur{suffix}")
    rc, out, err = cli(capsys, "--reference", ref, "--current", cur, "--format", "json")
    assert rc == 0
    assert [f["feature"] for f in json.loads(out)["features"]] == FEATURES
    m = re.fullmatch(r"driftline evaluate: left out 6 columns that look like identifiers or timestamps: (.*); "
                     r"to compare them too, name every column to compare: --columns (\S+)\n", err)
    assert m, err
    assert dict(re.findall(r"(\w+) \(([^)]*)\)", m[1])) == LEFT_OUT
    # the --columns it suggests compares every column
    rc, out, err = cli(capsys, "--reference", ref, "--current", cur, "--format", "json", "--columns", m[2])
    assert rc == 0 and err == ""
    assert {f["feature"] for f in json.loads(out)["features"]} == {*FEATURES, *LEFT_OUT}

    # a reference profile decides as its data does
    assert main(["reference", "build", "--data", str(ref), "--out", str(tmp_path / "ref.dlref"), "--quiet"]) == 0
    capsys.readouterr()
    rc, out, err = cli(capsys, "--reference", tmp_path / "ref.dlref", "--current", cur, "--format", "json")
    assert rc == 0 and [f["feature"] for f in json.loads(out)["features"]] == FEATURES
    assert "left out 6 columns" in err


def test_a_column_an_option_names_is_kept_and_only_ids_is_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reference, current = with_identifiers(2_000, 300, 32)
    ref, cur = write(reference, tmp_path / "ref.parquet"), write(current, tmp_path / "cur.parquet")
    rc, out, err = cli(capsys, "--reference", ref, "--current", cur, "--format", "json", "--categorical", "request_id",
                       "--per-column-threshold", "row_id=0.3")
    assert rc == 0
    assert [f["feature"] for f in json.loads(out)["features"]] == ["row_id", "request_id", *FEATURES]
    assert "left out 4 columns" in err and "request_id" not in err.split(";")[0]

    ids = ["row_id", "request_id", "created_at"]
    write(reference[ids], tmp_path / "ids-ref.parquet")
    write(current[ids], tmp_path / "ids-cur.parquet")
    rc, out, err = cli(capsys, "--reference", tmp_path / "ids-ref.parquet", "--current", tmp_path / "ids-cur.parquet")
    assert rc == 1 and out == ""
    assert ("--columns: every column both files have looks like an identifier or a timestamp "
            "(row_id, request_id, created_at); name the columns to compare with --columns") in err


# -- --html: the drill-down report of the file --------------------------------------------------

def test_html_writes_evidentlys_report_of_the_file_with_the_same_verdicts(pipeline_files: dict[str, Path]) -> None:
    page = pipeline_files["dir"] / "report.html"
    done = run_driftline("--reference", pipeline_files["train"], "--current", pipeline_files["shifted"],
                         "--prediction-column", "prediction", "--format", "json", "--html", page)
    assert done.returncode == 0, done.stderr
    ours = json.loads(done.stdout)
    text = page.read_text(encoding="utf-8")
    assert text.lstrip().startswith("<!DOCTYPE html>")
    assert "<title>driftline evaluate: shifted.parquet against train.parquet</title>" in text
    # Evidently's own summary line, in the page's data: its count is driftline's
    m = re.search(r"Drift is detected for [0-9.]+% of columns \((\d+) out of (\d+)\)", text)
    assert m, "no drift summary in the page"
    assert (int(m[1]), int(m[2])) == (len(ours["drifted_features"]), len(ours["features"]))
    for name in ours["drifted_features"]:
        assert f'"{name}"' in text


def test_html_without_evidently_says_what_to_install(pipeline_files: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # an interpreter where `import evidently` fails, as without the reports extra
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['evidently'] = None\n")
    done = subprocess.run([sys.executable, "-m", "driftline.service.cli", "evaluate", "--reference",
                           str(pipeline_files["train"]), "--current", str(pipeline_files["stable"]), "--html",
                           str(tmp_path / "r.html")], capture_output=True, text=True, timeout=120,
                          env={"DO_NOT_TRACK": "1", "PATH": "", "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 1 and done.stdout == ""  # before any work
    assert done.stderr.strip() == ("driftline evaluate: --html: reports need Evidently, which is not installed: "
                                   "pip install 'driftline[reports]'")
    # the worker that renders reports says the same when it cannot import Evidently
    from driftline.service.report import ReportRenderer, ReportUnavailable

    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with pytest.raises(ReportUnavailable, match=r"pip install 'driftline\[reports\]'"), ReportRenderer() as r:
        r.start()
