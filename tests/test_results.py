"""The results store: round trip, atomicity, schema checks and the cached-mode error."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lopbook import results
from lopbook.results import (
    MissingResultError,
    Result,
    ResultSchemaError,
    load_cached,
    load_result,
    provenance,
    save_result,
)


def make_meta(**kw):
    args = dict(experiment="toy", preset="quick", mode="quick", config={"lr": 0.1, "width": 5}, seeds=[0, 1],
                device="cpu", wall_time_s=1.5, dataset={"name": "synthetic", "stand_in": True, "note": "n"},
                scale={"paper_scale": False, "note": "tiny"}, command="python -m lopbook run toy")
    args.update(kw)
    return provenance(**args)


def test_round_trip_keeps_arrays_and_provenance(tmp_path: Path):
    arrays = {"err": np.arange(12, dtype=np.float32).reshape(3, 4), "labels": np.array(["bp", "cbp"]),
              "count": np.int64(7)}
    res = Result(arrays, make_meta())
    path = save_result(res, tmp_path / "sub" / "r.npz")
    back = load_result(path)
    assert set(back.arrays) == set(arrays)
    np.testing.assert_array_equal(back["err"], arrays["err"])
    assert back["err"].dtype == np.float32
    assert list(back["labels"]) == ["bp", "cbp"]
    assert back.meta["config"] == {"lr": 0.1, "width": 5}
    assert back.meta["seeds"] == [0, 1]
    for key in ("versions", "git_commit", "wall_time_s", "dataset", "scale", "device", "created"):
        assert key in back.meta
    assert back.meta["versions"]["numpy"] == np.__version__
    # plain numpy can read the arrays too, and the provenance is a readable JSON member
    with np.load(path) as npz:
        np.testing.assert_array_equal(npz["err"], arrays["err"])
    with zipfile.ZipFile(path) as zf:
        assert json.loads(zf.read("meta.json"))["experiment"] == "toy"


def test_describe_states_stand_in_and_scale(tmp_path: Path):
    text = Result({}, make_meta()).describe()
    assert "stand-in" in text and "reduced scale" in text and "2 seeds" in text


def test_missing_meta_keys_are_named():
    meta = make_meta()
    del meta["seeds"]
    meta["device"] = 3
    with pytest.raises(ResultSchemaError, match="missing key 'seeds'.*'device' should be str"):
        results.check_meta(meta)


def test_dataset_must_say_whether_it_is_a_stand_in():
    meta = make_meta()
    del meta["dataset"]["stand_in"]
    with pytest.raises(ResultSchemaError, match="'dataset' lacks 'stand_in'"):
        results.check_meta(meta)


def test_load_rejects_foreign_files(tmp_path: Path):
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(ResultSchemaError, match="no meta.json"):
        load_result(tmp_path / "plain.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ResultSchemaError, match="not a readable"):
        load_result(tmp_path / "junk.npz")


def test_object_arrays_are_refused(tmp_path: Path):
    with pytest.raises(TypeError, match="dtype object"):
        save_result(Result({"x": np.array([{}, None], dtype=object)}, make_meta()), tmp_path / "x.npz")


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "r.npz"
    save_result(Result({"v": np.ones(2)}, make_meta()), path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_result(Result({"v": np.zeros(2)}, make_meta()), path)
    np.testing.assert_array_equal(load_result(path)["v"], np.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["r.npz"], "temporary file left behind"


def test_missing_cached_result_names_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LOPBOOK_DATA", str(tmp_path))
    with pytest.raises(MissingResultError, match=r"python -m lopbook run scr --preset full --out data/scr/full.npz"):
        load_cached("scr", "full")
    save_result(Result({"v": np.ones(1)}, make_meta()), tmp_path / "scr" / "full.npz")
    assert load_cached("scr", "full")["v"][0] == 1


def test_combined_commit_reads_back_as_each_short_commit():
    one, two = "a" * 40, "0123456789abcdef"
    assert results.combined_commit([one]) == one and results.short_commit(one) == "a" * 10
    assert results.short_commit(results.combined_commit([one, two])) == "mixed (aaaaaaaaaa, 0123456789)"
    assert results.short_commit(None) == "unknown"
