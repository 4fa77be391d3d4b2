"""Sweeps: validation before anything runs, local subprocess execution with crash/resume, skipping of
finished runs, the manifest, aggregation shapes and provenance, and the CLI (toy experiment)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from lopbook import cli, experiments, sweep
from lopbook.experiments import ConfigError, Experiment, Preset, RunOutput, run_experiment
from lopbook.results import load_cached, load_result
from lopbook.sweep import SweepConfigError, aggregate, load_sweep, run_sweep, status

TESTS = Path(__file__).resolve().parent


@dataclass
class MethodsConfig:
    methods: list[str] = field(default_factory=lambda: ["bp", "cbp", "l2"])
    steps: int = 6


def _methods_run(cfg: MethodsConfig, *, seeds, device, checkpoint, progress) -> RunOutput:
    """A methods-first experiment like the real ones: arrays (methods, seeds, steps); each (method, seed)
    curve depends only on that method and seed."""
    err = np.stack([np.stack([np.random.default_rng([s, sum(map(ord, m))]).normal(size=cfg.steps) for s in seeds])
                    for m in cfg.methods])
    # a variable-length episode log (like slippery_ant's): rows of (method, seed), with index columns
    eps = [(mi, si, np.random.default_rng([s, 7, sum(map(ord, m))]).normal(size=2 + s + len(m))) for mi, m in enumerate(cfg.methods)
           for si, s in enumerate(seeds)]
    return RunOutput(arrays={"methods": np.array(cfg.methods), "err": err, "step": np.arange(cfg.steps),
                             "order": np.stack([np.random.default_rng(s).permutation(4) for s in seeds]),
                             "ep_return": np.concatenate([r for _, _, r in eps]),
                             "ep_method": np.concatenate([np.full(len(r), mi) for mi, _, r in eps]),
                             "ep_seed": np.concatenate([np.full(len(r), si) for _, si, r in eps])},
                     dataset={"name": "noise", "stand_in": True, "note": "test"})


EXPERIMENT = Experiment("methods_toy", "methods-first test experiment", MethodsConfig, _methods_run,
                        {"quick": Preset({"steps": 3}, 2, False, "tiny"), "full": Preset({}, 3, True, "all")})


def write(tmp_path: Path, cfg: dict, name: str = "toy_sweep.yaml") -> Path:
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(cfg))
    else:
        path.write_text(yaml.safe_dump(cfg))
    return path


def base_cfg(tmp_path: Path, **kw) -> dict:
    cfg = {"experiment": "toy", "preset": "full", "overrides": {"steps": 30}, "grid": {"lr": [0.1, 0.05]},
           "seeds": 2, "out": str(tmp_path / "out"), "executor": {"type": "debug"},
           "aggregate": str(tmp_path / "agg.npz")}
    cfg.update(kw)
    return cfg


@pytest.mark.slow
def test_local_sweep_crashes_resumes_and_skips(toy_registered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Real subprocesses (submitit LocalExecutor): 2 variants × 2 seeds, every run killed at step 20 on the
    first attempt, resumed from its checkpoint on the second, skipped on the third."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    path = write(tmp_path, base_cfg(tmp_path, executor={"type": "local", "max_parallel": 2}))
    sw = load_sweep(path)
    assert [len(sw.variants), len(sw.seeds)] == [2, 2]

    monkeypatch.setenv("LOPBOOK_TOY_CRASH_AT", "20")
    first = run_sweep(sw, log=lambda _: None, poll_s=0.05)
    assert sorted(first.failed) == sorted(r.name for r in sw.runs())
    assert all("simulated crash at step 20" in msg for msg in first.failed.values())
    st = status(sw)
    assert len(st["partial"]) == 4 and not st["done"]
    assert all(r.checkpoint.exists() and not r.path.exists() for r in sw.runs())

    # a resumed run starts at step 20, so a crash planted at step 10 must never fire; a restart would hit it
    monkeypatch.setenv("LOPBOOK_TOY_CRASH_AT", "10")
    second = run_sweep(sw, log=lambda _: None, poll_s=0.05)
    assert second.ok and sorted(second.completed) == sorted(second.resumed) == sorted(first.failed)
    assert len(status(sw)["done"]) == 4
    monkeypatch.delenv("LOPBOOK_TOY_CRASH_AT")
    for run in sw.runs():
        assert not run.checkpoint.exists()
        got = load_result(run.path)
        clean = run_experiment("toy", "full", seeds=[run.seed], overrides=run.variant.config_overrides,
                               progress=False)
        np.testing.assert_array_equal(got["loss"], clean["loss"])  # nothing lost across the crash
        np.testing.assert_array_equal(got["w"], clean["w"])
        assert got.meta["config"] == {"steps": 30, "lr": run.variant.overrides["lr"]}

    stamps = {r.name: r.path.stat().st_mtime_ns for r in sw.runs()}
    third = run_sweep(sw, log=lambda _: None, poll_s=0.05)
    assert sorted(third.skipped) == sorted(stamps) and not third.completed and not third.failed
    assert {r.name: r.path.stat().st_mtime_ns for r in sw.runs()} == stamps


def test_manifest_ids_and_variants_times_grid(toy_registered, tmp_path: Path):
    cfg = base_cfg(tmp_path, grid={"lr": [0.1, 0.05]}, variants=[{"name": "short", "set": {"steps": 5}},
                                                                  {"name": "long", "set": {"steps": 8}}],
                   overrides={}, seeds=[3, 7])
    sw = load_sweep(write(tmp_path, cfg))
    assert [v.label for v in sw.variants] == ["short, lr=0.1", "short, lr=0.05", "long, lr=0.1", "long, lr=0.05"]
    assert sw.variants[1].config == {"steps": 5, "lr": 0.05}
    assert sw.variants[0].id.startswith("short_lr-0.1-")
    # ids are stable across loads and depend on the overrides, not on their order in the file
    again = load_sweep(write(tmp_path, {**cfg, "variants": cfg["variants"][::-1]}, "other.yaml"))
    assert {v.id for v in again.variants} == {v.id for v in sw.variants}
    assert len({v.id for v in sw.variants}) == 4
    sweep.write_manifest(sw)
    manifest = json.loads((sw.out / "manifest.json").read_text())
    assert [v["id"] for v in manifest["variants"]] == [v.id for v in sw.variants]
    assert manifest["variants"][2]["overrides"] == {"steps": 8, "lr": 0.1}
    assert manifest["variants"][0]["runs"] == [f"runs/{sw.variants[0].id}/seed3.npz",
                                               f"runs/{sw.variants[0].id}/seed7.npz"]


def test_aggregate_shapes_values_and_provenance(toy_registered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LOPBOOK_DATA", str(tmp_path / "data"))
    cfg = base_cfg(tmp_path, grid={"lr": [0.1, 0.05, 0.01]}, seeds=[0, 4], aggregate="lr_sweep")
    sw = load_sweep(write(tmp_path, cfg))
    assert sw.target == tmp_path / "data" / "toy" / "lr_sweep.npz"
    with pytest.raises(SweepConfigError, match="6 of 6 runs are not finished"):
        aggregate(sw)
    assert run_sweep(sw, log=lambda _: None).ok
    res = aggregate(sw)
    assert res["loss"].shape == (3, 2, 30) and res["w"].shape == (3, 2, 2)
    assert list(res["variants"]) == [v.id for v in sw.variants]
    np.testing.assert_allclose(res["param/lr"], [0.1, 0.05, 0.01])
    np.testing.assert_array_equal(res["seeds"], [0, 4])
    v1 = sw.variants[1].id
    assert res[f"{v1}/loss"].shape == (2, 30)
    seed4 = load_result(sw.out / "runs" / v1 / "seed4.npz")
    np.testing.assert_array_equal(res["loss"][1, 1], seed4["loss"][0])
    np.testing.assert_array_equal(res[f"{v1}/loss"][1], seed4["loss"][0])
    # per-seed runs stacked back are exactly what one multi-seed run of the variant returns
    together = run_experiment("toy", "full", seeds=[0, 4], overrides=sw.variants[1].config_overrides,
                              progress=False)
    np.testing.assert_array_equal(res[f"{v1}/loss"], together["loss"])
    np.testing.assert_array_equal(res[f"{v1}/w"], together["w"])
    assert res.meta["sweep"]["seed_axis"] == {"loss": 0, "w": 0}
    # larger steps fit faster on this problem: the final loss is ordered by lr
    final = res["loss"][:, :, -5:].mean(axis=(1, 2))
    assert final[0] < final[1] < final[2]
    # the chapters' loader reads it, with provenance naming every run
    back = load_cached("toy", "lr_sweep")
    runs = back.meta["sweep"]["runs"]
    assert len(runs) == 6 and {(r["variant"], r["seed"]) for r in runs} == {(v.id, s) for v in sw.variants
                                                                              for s in (0, 4)}
    assert back.meta["seeds"] == [0, 4] and back.meta["config"] == {"steps": 30, "lr": 0.1}
    assert back.meta["sweep"]["variants"][2] == {"id": sw.variants[2].id, "label": "lr=0.01",
                                                 "overrides": {"lr": 0.01}}
    note = back.meta["scale"]["note"]
    assert back.meta["scale"]["paper_scale"] is False and "3 variants × 2 seeds" in note
    # the note names what every run shared and what each variant changed, not just the first run's overrides
    assert "every run with steps=30" in note
    assert "variants: lr=0.1 (lr=0.1); lr=0.05 (lr=0.05); lr=0.01 (lr=0.01)" in note


def test_partial_aggregate_and_stale_results(toy_registered, tmp_path: Path):
    sw = load_sweep(write(tmp_path, base_cfg(tmp_path)))
    first = sw.runs()[0]
    run_experiment("toy", "full", seeds=[first.seed], overrides=first.variant.config_overrides, out=first.path,
                   progress=False)
    res = aggregate(sw, partial=True, write=False)
    assert list(res["variants"]) == [first.variant.id] and res["loss"].shape == (1, 1, 30)
    assert res.meta["sweep"]["partial"] is True
    # a result for another config in a run's place is refused, not silently reused or overwritten
    other = sw.runs()[1]
    run_experiment("toy", "full", seeds=[other.seed], overrides={"steps": 3}, out=other.path, progress=False)
    assert sweep.run_state(sw, other) == "stale"
    with pytest.raises(SweepConfigError, match="belong to another config"):
        run_sweep(sw, log=lambda _: None)


@pytest.mark.parametrize("change, message", [
    ({"experiment": "nope"}, "unknown experiment 'nope'; known experiments: .*toy"),
    ({"grid": {"lr": [0.1], "stepz": [3]}}, r"variant 'lr=0.1, stepz=3' \(#0\).*unknown keys \['stepz'\]; "
                                            r"valid keys are \['lr', 'steps'\]"),
    ({"grid": {"lr": []}}, "grid key 'lr' has an empty list"),
    ({"grid": {}}, "grid is empty"),
    ({"variants": []}, "variants must be a non-empty list"),
    ({"grid": {"lr": 0.1}}, "grid key 'lr' must be a list"),
    ({"grid": {"steps": [10, 0]}, "overrides": {}}, r"variant 'steps=0' \(#1\).*steps must be positive"),
    ({"grid": {"lr": ["fast"]}}, r"lr='fast' is a str; expected a number \(float\)"),
    ({"grid": {"lr": [float("inf")]}}, "lr=inf is not a finite number"),
    ({"grid": {"steps": [True]}, "overrides": {}}, r"steps=True is a bool; expected a whole number \(int\)"),
    ({"grid": {"steps": [2.5]}, "overrides": {}}, r"steps=2.5 is a float; expected a whole number \(int\)"),
    ({"seeds": 1_000_000_000}, "asks for 1000000000 seeds"),
    ({"device": "tpu"}, "device 'tpu' must be cpu, cuda or cuda:<index>"),
    ({"seeds": 0}, "seeds: 0 runs nothing"),
    ({"seeds": [1, 1]}, r"seeds \[1\] appear more than once"),
    ({"seeds": [-1]}, r"seeds \[-1\] are not integers in 0\.\.2147483647"),
    ({"preset": "huge"}, "no preset 'huge'"),
    ({"executor": {"type": "local", "workers": 4}}, r"executor has unknown options \['workers'\]"),
    ({"executor": {"type": "kubernetes"}}, "unknown executor type 'kubernetes'"),
    ({"executor": {"slurm": {"partition": "gpu", "gpu": 1}}}, r"executor.slurm has unknown options \['gpu'\]"),
    ({"executor": {"max_parallel": 0}}, "max_parallel must be an integer >= 1"),
    ({"lr": 0.1}, r"unknown sweep keys \['lr'\].*go under `overrides:`"),
    ({"overrides": {"lr": 0.2}}, r"sets \['lr'\], which `overrides:` also sets"),
])
def test_bad_configs_fail_before_any_run(toy_registered, tmp_path: Path, change: dict, message: str):
    path = write(tmp_path, base_cfg(tmp_path, **change))
    with pytest.raises(ConfigError, match=message):
        load_sweep(path)
    assert not (tmp_path / "out" / "runs").exists()


def test_seeds_only_sweep_has_one_base_variant(toy_registered, tmp_path: Path):
    sw = load_sweep(write(tmp_path, base_cfg(tmp_path, grid=None, seeds=3)))
    assert [v.label for v in sw.variants] == ["base"] and sw.variants[0].config == {"steps": 30, "lr": 0.1}
    assert len(sw.runs()) == 3


def test_output_folder_must_be_writable(toy_registered, tmp_path: Path):
    (tmp_path / "afile").write_text("x")
    path = write(tmp_path, base_cfg(tmp_path, out=str(tmp_path / "afile" / "out")))
    with pytest.raises(SweepConfigError, match="output folder .*afile/out cannot be created: .*afile is a file, not a folder"):
        load_sweep(path)


def test_yaml_exponent_floats_and_json_configs(toy_registered, tmp_path: Path):
    path = tmp_path / "e.yaml"
    path.write_text(f"experiment: toy\ngrid: {{lr: [1e-4, 2.5E-3, 1]}}\nseeds: 1\nout: {tmp_path / 'o'}\n")
    sw = load_sweep(path)
    assert [v.config["lr"] for v in sw.variants] == [1e-4, 2.5e-3, 1]
    js = load_sweep(write(tmp_path, base_cfg(tmp_path), "s.json"))
    assert js.name == "s" and len(js.runs()) == 4


def test_cli_dry_run_run_status_aggregate(toy_registered, tmp_path: Path, capsys: pytest.CaptureFixture):
    path = write(tmp_path, base_cfg(tmp_path, executor={
        "type": "local", "max_parallel": 3, "slurm": {"partition": "gpu", "time": 600, "gpus_per_node": 1}}))
    assert cli.main(["sweep", "run", str(path), "--executor", "slurm", "--max-parallel", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 variants × 2 seeds = 4 runs" in out and "0 done, 0 running, 0 partial, 4 pending" in out
    assert "#SBATCH --partition=gpu" in out and "#SBATCH --array=0-3%2" in out and "#SBATCH --time=600" in out
    assert not (tmp_path / "out").exists(), "a dry run writes nothing"

    assert cli.main(["sweep", "run", str(path), "--executor", "debug", "--aggregate"]) == 0
    out = capsys.readouterr().out
    assert "4 runs finished now" in out and f"aggregated 4 runs into {tmp_path / 'agg.npz'}" in out
    assert cli.main(["sweep", "status", str(path)]) == 0
    assert "4 done, 0 running, 0 partial, 0 pending" in capsys.readouterr().out
    assert cli.main(["sweep", "aggregate", str(path), "--target", str(tmp_path / "b.npz")]) == 0
    assert load_result(tmp_path / "b.npz")["loss"].shape == (2, 2, 30)

    bad = write(tmp_path, base_cfg(tmp_path, grid={"bogus": [1]}), "bad.yaml")
    assert cli.main(["sweep", "run", str(bad)]) == 2
    assert "unknown keys ['bogus']" in capsys.readouterr().err


def test_example_sweep_configs_parse(tmp_path: Path):
    """Every shipped config under sweeps/ is a well-formed sweep for a registered experiment."""
    from lopbook import experiments

    files = sorted((TESTS.parent / "sweeps").glob("*.yaml"))
    assert files, "no example sweep configs"
    checked = 0
    for f in files:
        raw = sweep.read_config_file(f)
        if raw["experiment"] not in experiments.names():
            continue  # its experiment module is not in this checkout
        sw = sweep.parse_sweep({**raw, "out": str(tmp_path / f.stem)}, source=f)
        assert sw.variants and sw.seeds and sw.target.name.endswith(".npz")
        assert not (tmp_path / f.stem).exists()
        checked += 1
    if not checked:
        pytest.skip("no experiment of the example sweeps is registered")


def test_stack_seeds_finds_the_seed_axis():
    """Per-seed arrays go back to the layout one multi-seed run returns."""
    rng = np.random.default_rng(0)
    curves = [rng.normal(size=(1, 7)) for _ in range(3)]                  # (seeds, T)
    out, axis = sweep._stack_seeds(curves)
    assert out.shape == (3, 7) and axis == 0 and np.array_equal(out[2], curves[2][0])
    per_method = [rng.normal(size=(4, 1, 5)) for _ in range(3)]          # (methods, seeds, bins)
    out, axis = sweep._stack_seeds(per_method, n_methods=4)
    assert out.shape == (4, 3, 5) and axis == 1 and np.array_equal(out[:, 1], per_method[1][:, 0])
    single = [rng.normal(size=(1, 1, 5)) for _ in range(3)]              # one method: still methods-first
    assert sweep._stack_seeds(single, n_methods=1)[0].shape == (1, 3, 5)
    assert sweep._stack_seeds(single)[0].shape == (3, 1, 5)               # without labels: seeds first
    labels = [np.array(["bp", "cbp"])] * 3
    out, axis = sweep._stack_seeds(labels)
    assert axis is None and list(out) == ["bp", "cbp"]
    steps = [np.arange(5)] * 3                                             # shared step index: stored once
    assert sweep._stack_seeds(steps)[1] is None
    with pytest.raises(SweepConfigError, match="differs across seeds"):
        sweep._stack_seeds([np.zeros(2), np.ones(2)], axis=None)


def test_merge_methods_rebuilds_the_single_run_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """One variant per method, merged: the same file `python -m lopbook run <exp> --preset full` writes."""
    real = experiments._discover
    monkeypatch.setattr(experiments, "_discover", lambda: {**real(), "methods_toy": __name__})
    monkeypatch.setenv("LOPBOOK_DATA", str(tmp_path / "data"))
    cfg = {"experiment": "methods_toy", "preset": "full", "seeds": 3, "out": str(tmp_path / "out"),
           "variants": [{"name": m, "set": {"methods": [m]}} for m in ("bp", "cbp", "l2")],
           "executor": "debug", "aggregate": {"target": "full", "merge": "methods"}}
    sw = load_sweep(write(tmp_path, cfg))
    assert run_sweep(sw, log=lambda _: None).ok
    aggregate(sw)
    merged = load_cached("methods_toy", "full")
    single = run_experiment("methods_toy", "full", progress=False)
    assert set(merged.arrays) == set(single.arrays)
    for name in single.arrays:
        np.testing.assert_array_equal(merged[name], single[name])
    assert merged.meta["sweep"]["merged"]["label_array"] == "methods" and len(merged.meta["sweep"]["runs"]) == 9
    assert merged.meta["sweep"]["tables"] == ["ep"] and merged.meta["sweep"]["seed_axis"]["ep_return"] == "rows"
    # two variants running the same method cannot be merged
    clash = {**cfg, "out": str(tmp_path / "out2"),
             "variants": [{"name": "a", "set": {"methods": ["bp", "cbp"]}}, {"name": "b", "set": {"methods": ["bp"]}}]}
    sw2 = load_sweep(write(tmp_path, clash, "clash.yaml"))
    assert run_sweep(sw2, log=lambda _: None).ok
    with pytest.raises(SweepConfigError, match=r"would repeat methods \['bp'\]"):
        aggregate(sw2, write=False)
    plain = aggregate(sw2, write=False, merge=None)  # kept per variant; shapes differ, so no stacked `err`
    assert plain[f"{sw2.variants[0].id}/err"].shape == (2, 3, 6) and "err" not in plain


def test_slurm_submission_is_one_array(toy_registered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """With stand-in `srun`/`sbatch` on PATH: unfinished runs go out as one job array with the config's
    #SBATCH options, finished runs are not resubmitted, and the run -> job id map is written."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/sbatch_script.sh\necho "Submitted batch job 4242"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = base_cfg(tmp_path, executor={"type": "slurm", "max_parallel": 2,
                                       "slurm": {"partition": "gpu", "time": 90, "gpus_per_node": 1}})
    sw = load_sweep(write(tmp_path, cfg))
    done = sw.runs()[0]
    run_experiment("toy", "full", seeds=[done.seed], overrides=done.variant.config_overrides, out=done.path,
                   progress=False)
    report = run_sweep(sw, log=lambda _: None)
    assert report.skipped == [done.name] and report.submitted == ["4242_0", "4242_1", "4242_2"]
    script = (tmp_path / "sbatch_script.sh").read_text()
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --time=90",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --job-name=lopbook-toy_sweep"):
        assert line in script
    jobs = json.loads((sw.out / "slurm_jobs.json").read_text())
    assert jobs == {r.name: f"4242_{i}" for i, r in enumerate(sw.runs()[1:])}
    # what a compute node would unpickle and call: it writes the run's result
    from submitit.core.utils import DelayedSubmission

    job = DelayedSubmission.load(sw.out / "submitit" / "4242_1" / "4242_1_submitted.pkl")
    assert job.result()["run"] == sw.runs()[2].name and sweep.run_state(sw, sw.runs()[2]) == "done"
    assert isinstance(job.function, sweep.RunJob) and hasattr(job.function, "checkpoint")  # requeue on preemption


def test_local_jobs_spread_over_visible_gpus(toy_registered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sw = load_sweep(write(tmp_path, base_cfg(tmp_path, executor="local")))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert sweep._local_gpus(sw) == [3, 5]  # physical ids, as submitit sets CUDA_VISIBLE_DEVICES per job
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert sweep._local_gpus(sw) == []
    assert sweep._pick_gpu([3, 5], []) == 3 and sweep._pick_gpu([3, 5], [3]) == 5
    assert sweep._pick_gpu([3, 5], [3, 5, 3]) == 5 and sweep._pick_gpu([], [None]) is None
    pinned = load_sweep(write(tmp_path, base_cfg(tmp_path, executor={"local": {"gpus": [1]}}), "p.yaml"))
    assert sweep._local_gpus(pinned) == [1]
    with pytest.raises(SweepConfigError, match="executor.local.gpus must be a list"):
        load_sweep(write(tmp_path, base_cfg(tmp_path, executor={"local": {"gpus": 2}}), "q.yaml"))
