"""Sweep faults: a second `sweep run` at once, workers that outlived a killed `sweep run`, corrupt
checkpoints and results, and what the failure message promises (toy experiment, debug executor)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lopbook import cli
from lopbook.errors import BusyError
from lopbook.locking import OutputLock
from lopbook.sweep import load_sweep, plan, run_sweep, status

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def make_sweep(tmp_path: Path, **kw):
    cfg = {"experiment": "toy", "preset": "full", "overrides": {"steps": 12}, "grid": {"lr": [0.1, 0.05]},
           "seeds": 2, "out": str(tmp_path / "out"), "executor": {"type": "debug"},
           "aggregate": str(tmp_path / "agg.npz"), **kw}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, load_sweep(path)


def quiet(_: str) -> None:
    pass


def test_a_second_sweep_run_stops_at_once(toy_registered, tmp_path: Path, capsys: pytest.CaptureFixture):
    path, sw = make_sweep(tmp_path)
    with OutputLock(sw.out / "sweep"):
        with pytest.raises(BusyError, match=f"sweep 's' in {sw.out} is being written by pid {os.getpid()}"):
            run_sweep(sw, log=quiet)
        assert cli.main(["sweep", "run", str(path)]) == 2
        assert "is being written by" in capsys.readouterr().err
    assert len(status(sw)["pending"]) == 4, "nothing ran twice, nothing ran at all"
    assert run_sweep(sw, log=quiet).ok and len(status(sw)["done"]) == 4
    assert not (sw.out / "sweep.lock").exists()


def test_a_worker_that_outlived_its_sweep_is_not_started_twice(toy_registered, tmp_path: Path):
    _, sw = make_sweep(tmp_path)
    busy = sw.runs()[1]
    busy.path.parent.mkdir(parents=True)
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from lopbook.locking import OutputLock; "
            f"OutputLock({str(busy.path)!r}).acquire(); print('locked', flush=True); time.sleep(60)")
    orphan = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert orphan.stdout.readline().strip() == "locked"
        assert [r.name for r in status(sw)["running"]] == [busy.name]
        assert f"{busy.name} is being written by pid {orphan.pid}" in plan(sw)
        report = run_sweep(sw, log=quiet)
        assert list(report.running) == [busy.name] and f"pid {orphan.pid}" in report.running[busy.name]
        assert sorted(report.completed) == sorted(r.name for r in sw.runs() if r != busy)
        assert not busy.path.exists()
    finally:
        orphan.kill()  # the orphan dies (kill -9): its lock goes with it
        orphan.wait()
    report = run_sweep(sw, log=quiet)
    assert report.completed == [busy.name] and len(status(sw)["done"]) == 4


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other_config", "old_pickle"])
def test_corrupt_checkpoint_blocks_until_discarded(toy_registered, tmp_path: Path, monkeypatch, damage: str,
                                                   capsys: pytest.CaptureFixture):
    path, sw = make_sweep(tmp_path)
    run = sw.runs()[0]
    monkeypatch.setenv("LOPBOOK_TOY_CRASH_AT", "5")
    first = run_sweep(sw, log=quiet)
    monkeypatch.delenv("LOPBOOK_TOY_CRASH_AT")
    assert len(first.failed) == 4 and len(status(sw)["partial"]) == 4
    if damage == "truncated":
        run.checkpoint.write_bytes(run.checkpoint.read_bytes()[:-40])
    elif damage == "garbage":
        run.checkpoint.write_bytes(b"\x00" * 100)
    elif damage == "other_config":
        sw.runs()[2].checkpoint.replace(run.checkpoint)  # lr=0.05's checkpoint where lr=0.1's should be
    else:
        import torch

        torch.save({"key": "x", "state": {}}, run.checkpoint)
    assert [r.name for r in status(sw)["corrupt"]] == [run.name]
    ckpt_bytes = run.checkpoint.read_bytes()

    assert cli.main(["sweep", "run", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{run.name}: checkpoint {run.checkpoint}" in err and "rerun with --discard-corrupt" in err
    assert run.checkpoint.read_bytes() == ckpt_bytes, "a corrupt checkpoint is only deleted when asked"
    assert not run.path.exists() and len(status(sw)["done"]) == 3

    assert "would be deleted and started over" in plan(sw, discard_corrupt=True)
    assert cli.main(["sweep", "run", str(path), "--discard-corrupt"]) == 0
    assert len(status(sw)["done"]) == 4


def test_corrupt_result_is_discarded_only_when_asked(toy_registered, tmp_path: Path):
    _, sw = make_sweep(tmp_path)
    assert run_sweep(sw, log=quiet).ok
    run = sw.runs()[3]
    run.path.write_bytes(b"PK\x03\x04 broken")
    report = run_sweep(sw, log=quiet)
    assert list(report.blocked) == [run.name] and "not a readable lopbook result" in report.blocked[run.name]
    report = run_sweep(sw, log=quiet, discard_corrupt=True)
    assert report.completed == [run.name] and "deleted seed1.npz" in report.discarded[run.name]
    assert len(status(sw)["done"]) == 4


def test_failure_message_says_what_a_rerun_will_do(toy_registered, tmp_path: Path, monkeypatch,
                                                   capsys: pytest.CaptureFixture):
    path, sw = make_sweep(tmp_path)
    monkeypatch.setenv("LOPBOOK_TOY_CRASH_AT", "5")
    assert cli.main(["sweep", "run", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("simulated crash at step 5") == 4 and err.count("a rerun resumes from its checkpoint") == 4
    monkeypatch.setenv("LOPBOOK_TOY_CRASH_AT", "0")  # crashes before its first checkpoint
    for r in sw.runs():
        r.checkpoint.unlink()
    assert cli.main(["sweep", "run", str(path)]) == 1
    assert capsys.readouterr().err.count("a rerun starts over (it wrote no checkpoint)") == 4


def test_huge_seed_count_fails_fast_in_a_dry_run(toy_registered, tmp_path: Path, capsys: pytest.CaptureFixture):
    path, _ = make_sweep(tmp_path)
    path.write_text(path.read_text().replace("seeds: 2", "seeds: 1000000000"))
    assert cli.main(["sweep", "run", str(path), "--dry-run"]) == 2
    assert "asks for 1000000000 seeds" in capsys.readouterr().err


def test_slurm_jobs_still_queued_are_not_submitted_twice(toy_registered, tmp_path: Path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "Submitted batch job 4242"\n')
    (bin_dir / "squeue").write_text('#!/bin/sh\necho 4242_1\necho 999_0\n')  # -r: one line per array task
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    _, sw = make_sweep(tmp_path, executor={"type": "slurm", "slurm": {"partition": "gpu"}})
    first = run_sweep(sw, log=quiet)
    assert first.submitted == ["4242_0", "4242_1", "4242_2", "4242_3"] and not first.running
    second = run_sweep(sw, log=quiet)  # all still pending on disk; only job 4242_1 is still in the queue
    assert list(second.running) == [sw.runs()[1].name] and "SLURM job 4242_1" in second.running[sw.runs()[1].name]
    assert len(second.submitted) == 3


def test_aggregate_never_replaces_a_run_result_without_force(toy_registered, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture):
    from lopbook.experiments import run_experiment
    from lopbook.results import load_result

    path, sw = make_sweep(tmp_path)
    assert run_sweep(sw, log=quiet).ok
    run_experiment("toy", "quick", out=sw.target, progress=False)  # someone's `run` result at the target
    before = sw.target.read_bytes()
    assert cli.main(["sweep", "aggregate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "holds the result of" in err and "pass --force to replace it" in err
    assert sw.target.read_bytes() == before
    assert cli.main(["sweep", "aggregate", str(path), "--force"]) == 0
    assert cli.main(["sweep", "aggregate", str(path)]) == 0  # its own earlier aggregate: replaced
    assert load_result(sw.target).meta["sweep"]["name"] == "s"
