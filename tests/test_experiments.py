"""The experiment registry, run modes, checkpoint/resume and the CLI, on a toy experiment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lopbook import cli, experiments, get_mode
from lopbook.experiments import ConfigError, obtain, parse_overrides, run_experiment
from lopbook.results import load_result


def test_mode_switch(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("LOPBOOK_MODE", raising=False)
    assert get_mode() == "cached"
    monkeypatch.setenv("LOPBOOK_MODE", "Quick")
    assert get_mode() == "quick"
    monkeypatch.setenv("LOPBOOK_MODE", "fast")
    with pytest.raises(ValueError, match="cached, quick, full"):
        get_mode()


def test_every_registered_experiment_has_valid_presets():
    for name in experiments.names():
        exp = experiments.get(name)
        assert {"quick", "full"} <= set(exp.presets), name
        for preset in exp.presets:
            exp.preset_config(preset)  # raises on an invalid preset


def test_unknown_names_and_keys_are_explained(toy_registered):
    with pytest.raises(ConfigError, match="unknown experiment 'nope'; known experiments: .*toy"):
        experiments.get("nope")
    with pytest.raises(ConfigError, match=r"unknown keys \['stepz'\]; valid keys are \['lr', 'steps'\]"):
        toy_registered.make_config({"stepz": 3})
    with pytest.raises(ConfigError, match="steps must be positive"):
        toy_registered.make_config({"steps": 0})
    with pytest.raises(ConfigError, match="no preset 'huge'"):
        toy_registered.preset_config("huge")


def test_parse_overrides():
    assert parse_overrides(["lr=0.5", "act=relu", "widths=[1, 2]"]) == {"lr": 0.5, "act": "relu",
                                                                          "widths": [1, 2]}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])


def test_run_writes_result_with_provenance(toy_registered, tmp_path: Path):
    out = tmp_path / "toy.npz"
    res = run_experiment("toy", "quick", out=out, overrides={"lr": 0.2}, progress=False)
    assert res["loss"].shape == (2, 10)
    back = load_result(out)
    assert back.meta["config"] == {"steps": 10, "lr": 0.2}
    assert back.meta["seeds"] == [0, 1]
    assert back.meta["scale"]["paper_scale"] is False and "lr=0.2" in back.meta["scale"]["note"]
    assert not Path(str(out) + ".ckpt").exists(), "checkpoint should be removed after success"
    # the line fit converges: the loss must go down
    assert back["loss"][:, -3:].mean() < back["loss"][:, :3].mean()


def test_seeded_runs_repeat_exactly(toy_registered):
    a = run_experiment("toy", "quick", progress=False)
    b = run_experiment("toy", "quick", progress=False)
    np.testing.assert_array_equal(a["loss"], b["loss"])
    c = run_experiment("toy", "quick", seeds=[5, 6], progress=False)
    assert not np.array_equal(a["loss"], c["loss"])


def test_interrupted_run_resumes_with_nothing_lost(toy_registered, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "toy.npz"
    monkeypatch.setenv("LOPBOOK_TOY_CRASH_AT", "25")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment("toy", "full", out=out, progress=False)
    assert Path(str(out) + ".ckpt").exists() and not out.exists()
    monkeypatch.delenv("LOPBOOK_TOY_CRASH_AT")
    resumed = run_experiment("toy", "full", out=out, progress=False)
    clean = run_experiment("toy", "full", progress=False)
    np.testing.assert_array_equal(resumed["loss"], clean["loss"])
    np.testing.assert_array_equal(resumed["w"], clean["w"])


def test_checkpoint_of_other_config_is_not_reused(toy_registered, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "toy.npz"
    monkeypatch.setenv("LOPBOOK_TOY_CRASH_AT", "5")
    with pytest.raises(RuntimeError):
        run_experiment("toy", "full", out=out, progress=False)
    monkeypatch.delenv("LOPBOOK_TOY_CRASH_AT")
    with pytest.raises(RuntimeError, match="different config"):
        run_experiment("toy", "full", out=out, overrides={"lr": 0.05}, progress=False)
    res = run_experiment("toy", "full", out=out, overrides={"lr": 0.05}, fresh=True, progress=False)
    assert res["loss"].shape == (3, 40)


def test_obtain_follows_the_mode(toy_registered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LOPBOOK_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python -m lopbook run toy --preset full"):
        obtain("toy", "cached")
    quick = obtain("toy", "quick")
    assert quick.meta["mode"] == "quick" and quick["loss"].shape == (2, 10)
    run_experiment("toy", "full", out=tmp_path / "toy" / "full.npz", progress=False)
    assert obtain("toy", "cached").meta["preset"] == "full"


def test_cuda_request_without_gpu_is_a_clear_error(toy_registered):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        run_experiment("toy", "quick", device="cuda", progress=False)


def test_cli_run_and_info(toy_registered, tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "cli.npz"
    assert cli.main(["run", "toy", "--mode", "full", "--seeds", "2", "--seed-start", "3",
                     "--set", "steps=5", "--out", str(out), "--no-progress"]) == 0
    meta = load_result(out).meta
    assert meta["seeds"] == [3, 4] and meta["config"]["steps"] == 5 and meta["mode"] == "full"
    assert meta["command"].startswith("python -m lopbook run toy --mode full")
    assert cli.main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert '"experiment": "toy"' in printed and "loss" in printed
    assert cli.main(["run", "toy", "--set", "bogus=1"]) == 2
    assert "unknown keys ['bogus']" in capsys.readouterr().err
    assert cli.main(["list"]) == 0
    assert "toy" in capsys.readouterr().out


def test_module_entry_point_runs_as_a_program():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "lopbook", "run", "no_such_experiment"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown experiment 'no_such_experiment'" in proc.stderr


def test_resumed_run_reports_total_wall_time_and_starting_commit(toy_registered, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch):
    import lopbook.experiments as exps

    out = tmp_path / "toy.npz"
    monkeypatch.setenv("LOPBOOK_TOY_CRASH_AT", "25")
    monkeypatch.setattr(exps, "git_commit", lambda: "commit-at-first-start")
    with pytest.raises(RuntimeError):
        run_experiment("toy", "full", out=out, progress=False)
    monkeypatch.delenv("LOPBOOK_TOY_CRASH_AT")
    # pretend the first segment ran for an hour: resave its state with an hour of earlier wall time
    from lopbook.checkpoint import Checkpoint

    ckpt = Checkpoint(Path(str(out) + ".ckpt"), key={"experiment": "toy", "config": {"steps": 40, "lr": 0.1},
                                                    "seeds": [0, 1, 2]})
    state = ckpt.load()
    ckpt.prior_elapsed_s = 3600.0
    ckpt.save(state, force=True)
    monkeypatch.setattr(exps, "git_commit", lambda: "commit-at-resume")
    meta = run_experiment("toy", "full", out=out, progress=False).meta
    assert meta["resumed_from_checkpoint"] is True
    assert 3600.0 <= meta["wall_time_s"] < 3700.0
    assert meta["git_commit"] == "commit-at-resume"  # the code of the segment that finished the run
    assert meta["git_commits_of_segments"] == ["commit-at-first-start", "commit-at-resume"]
