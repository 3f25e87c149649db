"""Reference profiles: built from Parquet or CSV, typed, versioned by content, tamper-evident."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from driftline.service.drift import ColumnKind
from driftline.service.reference import ReferenceError, build_profile, load_profile, save_profile


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 5000
    df = pd.DataFrame({
        "amount": rng.normal(100, 15, n),
        "count": rng.integers(0, 9, n),
        "segment": rng.choice(["a", "b", "c"], n),
        "flag": rng.choice([True, False], n),
        "zip": rng.choice([75001, 69002, 13003], n),
    })
    df.loc[::10, "amount"] = np.nan
    df.loc[::7, "segment"] = None
    df.loc[3, "amount"] = np.inf
    return df


def test_parquet_and_csv_give_the_same_profile(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_csv(tmp_path / "t.csv", index=False)
    a = build_profile(tmp_path / "t.parquet", batch_rows=1234)
    b = build_profile(tmp_path / "t.csv", batch_rows=777)
    assert a.content_hash == b.content_hash
    kinds = {n: c.kind for n, c in a.columns.items()}
    assert kinds == {"amount": ColumnKind.NUMERICAL, "count": ColumnKind.NUMERICAL,
                     "segment": ColumnKind.CATEGORICAL, "flag": ColumnKind.CATEGORICAL, "zip": ColumnKind.NUMERICAL}
    amount = a.columns["amount"]
    finite = frame["amount"][np.isfinite(frame["amount"])].to_numpy()
    np.testing.assert_array_equal(amount.sample.sorted, np.sort(finite))
    assert amount.missing == len(frame) - finite.size
    assert a.columns["segment"].sample.count_map == frame["segment"].value_counts().to_dict()
    assert a.columns["segment"].missing == frame["segment"].isna().sum()


def test_types_can_be_overridden_and_integral_categories_read_as_integers(tmp_path: Path,
                                                                          frame: pd.DataFrame) -> None:
    frame.loc[::5, "zip"] = np.nan  # pandas turns the int column into floats
    frame.to_parquet(tmp_path / "t.parquet")
    p = build_profile(tmp_path / "t.parquet", kinds={"zip": ColumnKind.CATEGORICAL})
    assert set(p.columns["zip"].sample.count_map) == {"75001", "69002", "13003"}


def test_save_load_roundtrip_and_hash_is_independent_of_build_time(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_parquet(tmp_path / "t.parquet")
    p1, p2 = build_profile(tmp_path / "t.parquet"), build_profile(tmp_path / "t.parquet")
    assert p1.content_hash == p2.content_hash and p1.content_hash.startswith("sha256:")
    save_profile(p1, tmp_path / "r.dlref")
    loaded = load_profile(tmp_path / "r.dlref")
    assert loaded.content_hash == p1.content_hash
    for name, col in p1.columns.items():
        assert loaded.columns[name].kind is col.kind and loaded.columns[name].missing == col.missing
        assert loaded.columns[name].sample.count_map == col.sample.count_map


def test_a_pool_of_processes_simulates_the_same_floors_as_one_process(
        tmp_path: Path, frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line simulates in a pool once a profile has _POOL_MIN_VALUES values (the
    demo's does): each column's generator is seeded from the profile and its name, so the noise
    floors and the whole-row windows are those of one process."""
    frame.to_parquet(tmp_path / "t.parquet")
    one = build_profile(tmp_path / "t.parquet")
    monkeypatch.setattr("driftline.service.drift.simulate._POOL_MIN_VALUES", 1)
    pool = build_profile(tmp_path / "t.parquet", workers=2)
    assert one.joint is not None and pool.joint is not None
    assert pool.content_hash == one.content_hash
    for name, col in one.columns.items():
        assert pool.columns[name].noise == col.noise, name
    assert one.joint.codes.keys() == pool.joint.codes.keys()
    for name, codes in one.joint.codes.items():
        assert codes.keys() == pool.joint.codes[name].keys()
        assert all(np.array_equal(codes[m], pool.joint.codes[name][m]) for m in codes), name


def test_a_changed_training_set_gets_a_new_hash(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_parquet(tmp_path / "a.parquet")
    frame.assign(amount=frame["amount"] + 1e-9).to_parquet(tmp_path / "b.parquet")
    assert build_profile(tmp_path / "a.parquet").content_hash != build_profile(tmp_path / "b.parquet").content_hash


def test_a_tampered_profile_is_refused(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_parquet(tmp_path / "t.parquet")
    save_profile(build_profile(tmp_path / "t.parquet"), tmp_path / "r.dlref")
    with zipfile.ZipFile(tmp_path / "r.dlref") as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    entries["col2.json"] = entries["col2.json"].replace(b'"a"', b'"z"')
    with zipfile.ZipFile(tmp_path / "bad.dlref", "w") as zf:
        for n, data in entries.items():
            zf.writestr(n, data)
    with pytest.raises(ReferenceError, match="content hash mismatch"):
        load_profile(tmp_path / "bad.dlref")
    (tmp_path / "junk.dlref").write_bytes(b"not a zip")
    with pytest.raises(ReferenceError, match="not a driftline reference profile"):
        load_profile(tmp_path / "junk.dlref")
    with pytest.raises(ReferenceError, match="no such file"):
        load_profile(tmp_path / "missing.dlref")


def test_bad_inputs_are_named(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(ReferenceError, match="no column 'nope'"):
        build_profile(tmp_path / "t.parquet", columns=["amount", "nope"])
    with pytest.raises(ReferenceError, match="'segment' is numerical but holds non-numeric values"):
        build_profile(tmp_path / "t.parquet", kinds={"segment": ColumnKind.NUMERICAL})
    frame.assign(amount=np.nan).to_parquet(tmp_path / "empty.parquet")
    with pytest.raises(ReferenceError, match="'amount' has no usable value"):
        build_profile(tmp_path / "empty.parquet")
    (tmp_path / "t.xlsx").write_bytes(b"")
    with pytest.raises(ReferenceError, match=r"expected a \.parquet or \.csv"):
        build_profile(tmp_path / "t.xlsx")


def test_cli_builds_a_profile_and_shows_progress(tmp_path: Path, frame: pd.DataFrame) -> None:
    big = pd.concat([frame] * 120, ignore_index=True)  # 600,000 rows
    big.to_parquet(tmp_path / "t.parquet", row_group_size=100_000)
    res = subprocess.run([sys.executable, "-m", "driftline.service.cli", "reference", "build", "--data",
                          str(tmp_path / "t.parquet"), "--out", str(tmp_path / "r.dlref"), "--categorical", "zip"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "read 600,000 of 600,000 rows (100%)" in res.stderr and "read 250,000 of 600,000" in res.stderr
    assert "zip" in res.stdout and "categorical" in res.stdout
    assert "noise floors: 5 of 5 columns" in res.stderr
    loaded = load_profile(tmp_path / "r.dlref")
    assert loaded.columns["zip"].kind is ColumnKind.CATEGORICAL and loaded.calibration_note is None


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _write(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in entries.items():
            zf.writestr(n, data)
    return path


def test_noise_floors_are_built_from_the_data_alone_and_kept_in_the_profile(tmp_path: Path,
                                                                            frame: pd.DataFrame) -> None:
    frame.to_parquet(tmp_path / "t.parquet")
    frame.sample(frac=1, random_state=3).to_parquet(tmp_path / "shuffled.parquet", index=False)
    built = build_profile(tmp_path / "t.parquet")
    again = build_profile(tmp_path / "shuffled.parquet")  # the same rows in another order
    save_profile(built, tmp_path / "r.dlref")
    loaded = load_profile(tmp_path / "r.dlref")
    assert built.calibration_note is None and loaded.calibration_note is None
    for name, col in built.columns.items():
        assert col.noise is not None
        for other in (again, loaded):
            assert other.columns[name].noise == col.noise, name
    # the whole-row windows' levels too: every column, every measure its noise table has
    assert built.joint is not None and loaded.joint is not None and again.joint is not None
    assert loaded.joint.sizes == built.joint.sizes == (100, 316, 1_000)
    for name, col in built.columns.items():
        assert col.noise is not None and set(built.joint.codes[name]) == col.noise.measures(), name
        for measure, codes in built.joint.codes[name].items():
            assert codes.shape == (3, built.joint.windows) and codes.dtype == np.uint8
            assert np.array_equal(loaded.joint.codes[name][measure], codes)
            assert np.array_equal(again.joint.codes[name][measure], codes)  # row order does not matter
    numerical, categorical = built.columns["amount"].noise, built.columns["segment"].noise
    assert numerical is not None and categorical is not None
    assert {"wasserstein", "ks_statistic", "jensenshannon", "cohens_d"} <= numerical.measures()
    assert {"jensenshannon", "cohens_w", "cohens_h", "tv_distance"} <= categorical.measures()
    # larger windows need smaller differences: the floor shrinks with the window's size
    floors = [numerical.floor("wasserstein", n, 4_500, 0.00025) for n in (100, 300, 1_000, 3_000)]
    assert all(a > b > 0 for a, b in itertools.pairwise(floors)), floors


def test_a_format_1_profile_loads_with_calibration_unavailable_and_says_so(
        tmp_path: Path, frame: pd.DataFrame, caplog: pytest.LogCaptureFixture) -> None:
    frame.to_parquet(tmp_path / "t.parquet")
    save_profile(build_profile(tmp_path / "t.parquet", calibrate=False), tmp_path / "v2.dlref")
    entries = _entries(tmp_path / "v2.dlref")
    header = json.loads(entries["header.json"])
    assert header["format_version"] == 3 and "noise_sha256" not in header and "noise.json" not in entries
    assert "joint" not in header and "joint.npy" not in entries
    header["format_version"] = 1
    entries["header.json"] = json.dumps(header).encode()
    with caplog.at_level(logging.WARNING):
        old = load_profile(_write(tmp_path / "v1.dlref", entries))
    assert old.calibration_note and "format 1" in old.calibration_note and "rebuild" in old.calibration_note
    assert any("rebuild" in r.getMessage() for r in caplog.records)
    assert all(c.noise is None for c in old.columns.values())
    assert load_profile(tmp_path / "v2.dlref").calibration_note == "the profile was built without its noise floors"
    header["format_version"] = 7
    entries["header.json"] = json.dumps(header).encode()
    with pytest.raises(ReferenceError, match="format version 7 is not supported"):
        load_profile(_write(tmp_path / "v7.dlref", entries))


def test_tampered_noise_floors_are_refused(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_parquet(tmp_path / "t.parquet")
    save_profile(build_profile(tmp_path / "t.parquet"), tmp_path / "r.dlref")
    entries = _entries(tmp_path / "r.dlref")
    noise = json.loads(entries["noise.json"])
    noise["amount"]["fits"]["wasserstein"][0][0] *= 10  # a floor ten times higher
    entries["noise.json"] = json.dumps(noise).encode()
    with pytest.raises(ReferenceError, match="noise floors hash mismatch"):
        load_profile(_write(tmp_path / "bad.dlref", entries))
    del entries["noise.json"]
    with pytest.raises(ReferenceError, match="noise floors missing"):
        load_profile(_write(tmp_path / "gone.dlref", entries))


def test_whole_row_windows_are_tamper_evident_and_a_format_2_profile_loads_without_them(
        tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_parquet(tmp_path / "t.parquet")
    save_profile(build_profile(tmp_path / "t.parquet"), tmp_path / "r.dlref")
    entries = _entries(tmp_path / "r.dlref")
    joint = bytearray(entries["joint.npy"])
    joint[-1] ^= 0xFF  # one window's level changed
    with pytest.raises(ReferenceError, match="whole-row windows hash mismatch"):
        load_profile(_write(tmp_path / "bad.dlref", {**entries, "joint.npy": bytes(joint)}))
    gone = {n: data for n, data in entries.items() if n != "joint.npy"}
    with pytest.raises(ReferenceError, match="whole-row windows missing"):
        load_profile(_write(tmp_path / "gone.dlref", gone))
    # format 2: noise floors, no whole-row windows (the service then uses the bound for any correlation)
    header = json.loads(entries["header.json"])
    del header["joint"]
    header["format_version"] = 2
    old = load_profile(_write(tmp_path / "v2.dlref", {**gone, "header.json": json.dumps(header).encode()}))
    assert old.calibration_note is None and old.joint is None
    assert all(c.noise == load_profile(tmp_path / "r.dlref").columns[n].noise for n, c in old.columns.items())
