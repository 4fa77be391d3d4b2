"""Bad inputs and faults of ``python -m lopbook run|info``: one line naming the fix, exit status 2, and
nothing written or lost (toy experiment)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lopbook import cli
from lopbook.locking import OutputLock
from lopbook.results import load_result

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def files_in(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to assert that nothing was written or lost)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = cli.main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


BAD_RUNS = [
    (["--set", "lr=abc"], r"lr='abc' is a str; expected a number \(float\)"),
    (["--set", "steps=True"], r"steps=True is a bool; expected a whole number \(int\)"),
    (["--set", "steps=2.5"], r"steps=2.5 is a float; expected a whole number \(int\)"),
    (["--set", "lr=1e999"], "lr=inf is not a finite number"),
    (["--set", "lr=-1e999"], "lr=-inf is not a finite number"),
    (["--set", "lr=nan"], "lr=nan is not a finite number"),
    (["--set", "steps=0"], "steps must be positive"),
    (["--set", "stepz=3"], r"unknown keys \['stepz'\]"),
    (["--set", "lr"], "not of the form key=value"),
    (["--seed-start", "-5"], "--seed-start -5: give a first seed from 0"),
    (["--seeds", "0"], "--seeds 0: give a number of seeds from 1 to 10000"),
    (["--seeds", "1000000000"], "--seeds 1000000000: give a number of seeds from 1 to 10000"),
    (["--seeds", "2", "--seed-start", "2147483647"], "--seed-start 2147483647: give a first seed from 0 to"),
    (["--device", "tpu"], "device 'tpu' is not supported; use cpu, cuda or cuda:<index>"),
    (["--device", "cuda:x"], "device 'cuda:x' is not supported"),
    (["--preset", "huge"], "no preset 'huge'"),
    (["--mode", "quick", "--preset", "full"], "mode 'quick' does not match preset 'full'"),
]


@pytest.mark.parametrize("extra, message", BAD_RUNS, ids=[" ".join(a) for a, _ in BAD_RUNS])
def test_bad_run_inputs_fail_in_one_line_and_write_nothing(toy_registered, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture, extra, message):
    out = tmp_path / "r.npz"
    code, _, err = run_cli(["run", "toy", "--out", str(out), "--no-progress", *extra], capsys)
    assert code == 2
    assert re.search(message, one_error_line(err)), err
    assert files_in(tmp_path) == {}


def test_bad_out_paths_fail_before_any_work(toy_registered, tmp_path: Path, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch):
    import toy_experiment

    calls = []
    monkeypatch.setattr(toy_experiment.EXPERIMENT, "run", lambda *a, **k: calls.append(1))
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.npz").mkdir()
    cases = [(tmp_path / "x.txt", "must end in .npz"),
             (tmp_path / "afile" / "r.npz", "afile is a file, not a folder"),
             (tmp_path / "afile" / "deeper" / "r.npz", "afile is a file, not a folder"),
             (tmp_path / "adir.npz", "is a folder; give a file name ending in .npz")]
    for out, message in cases:
        code, _, err = run_cli(["run", "toy", "--out", str(out)], capsys)
        assert code == 2 and message in one_error_line(err), (out, err)
    assert calls == [], "training started before --out was checked"
    assert files_in(tmp_path) == {"afile": b"x"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to read-only folders")
def test_read_only_folder_fails_before_any_work(toy_registered, tmp_path: Path, capsys: pytest.CaptureFixture):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run_cli(["run", "toy", "--out", str(ro / "sub" / "r.npz")], capsys)
        assert code == 2 and "is not writable" in one_error_line(err)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_unwritable_folder_fails_before_any_work(toy_registered, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch):
    """The read-only case for every user, root included (root may write anywhere): os.access says no."""
    import lopbook.validation

    monkeypatch.setattr(lopbook.validation.os, "access", lambda *a, **k: False)
    code, _, err = run_cli(["run", "toy", "--out", str(tmp_path / "sub" / "r.npz")], capsys)
    assert code == 2 and f"is not writable: {tmp_path} is read-only for you" in one_error_line(err)
    assert files_in(tmp_path) == {}


def test_existing_result_of_another_run_is_never_overwritten(toy_registered, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture):
    out = tmp_path / "r.npz"
    assert run_cli(["run", "toy", "--preset", "full", "--out", str(out), "--no-progress"], capsys)[0] == 0
    before = files_in(tmp_path)
    for extra, message in [(["--preset", "quick"], "it is toy/full, this run is toy/quick"),
                           (["--preset", "full", "--seeds", "1"], "it has 3 seeds 0..2, this run 1 seeds 0..0"),
                           (["--preset", "full", "--set", "lr=0.05"], "lr: 0.1 there, 0.05 here")]:
        code, _, err = run_cli(["run", "toy", "--out", str(out), "--no-progress", *extra], capsys)
        line = one_error_line(err)
        assert code == 2 and "already holds another result" in line and message in line and "--force" in line
        assert files_in(tmp_path) == before, "the existing result was touched"
    # the very same run: nothing to do, file untouched
    code, printed, _ = run_cli(["run", "toy", "--preset", "full", "--out", str(out)], capsys)
    assert code == 0 and "already holds this result" in printed and files_in(tmp_path) == before
    # --force replaces it
    code, printed, _ = run_cli(["run", "toy", "--preset", "quick", "--out", str(out), "--force", "--no-progress"],
                               capsys)
    assert code == 0 and f"wrote {out}" in printed and load_result(out).meta["preset"] == "quick"


def test_unreadable_existing_result_needs_force(toy_registered, tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "r.npz"
    out.write_bytes(b"not a zip")
    code, _, err = run_cli(["run", "toy", "--out", str(out)], capsys)
    assert code == 2 and "exists but is not a readable lopbook result" in one_error_line(err)
    assert out.read_bytes() == b"not a zip"


def test_provenance_records_the_real_mode_and_files_get_normal_permissions(toy_registered, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture):
    old = os.umask(0o022)
    try:
        out = tmp_path / "r.npz"
        assert run_cli(["run", "toy", "--preset", "full", "--out", str(out), "--no-progress"], capsys)[0] == 0
    finally:
        os.umask(old)
    assert load_result(out).meta["mode"] == "full"  # was "quick", the --mode default, for every CLI run
    assert out.stat().st_mode & 0o777 == 0o644
    quick = tmp_path / "q.npz"
    assert run_cli(["run", "toy", "--out", str(quick), "--no-progress"], capsys)[0] == 0
    assert load_result(quick).meta["mode"] == "quick"


def test_stale_temporaries_of_a_killed_run_are_cleaned(toy_registered, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture):
    out = tmp_path / "r.npz"
    (tmp_path / ".r.npz.abc123.tmp").write_bytes(b"half a result")
    (tmp_path / ".r.npz.ckpt.xyz.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".other.npz.abc.tmp").write_bytes(b"someone else's")
    assert run_cli(["run", "toy", "--out", str(out), "--no-progress"], capsys)[0] == 0
    assert sorted(files_in(tmp_path)) == [".other.npz.abc.tmp", "r.npz"]


def test_a_second_run_to_the_same_out_stops_at_once(toy_registered, tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "r.npz"
    with OutputLock(out):
        code, _, err = run_cli(["run", "toy", "--out", str(out)], capsys)
        line = one_error_line(err)
        assert code == 2 and f"result file {out} is being written by pid {os.getpid()}" in line
    assert files_in(tmp_path) == {}
    assert run_cli(["run", "toy", "--out", str(out), "--no-progress"], capsys)[0] == 0  # released: runs


def test_lock_of_a_killed_process_is_released(tmp_path: Path):
    out = tmp_path / "r.npz"
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from lopbook.locking import OutputLock; "
            f"OutputLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        from lopbook.errors import BusyError

        with pytest.raises(BusyError, match=f"pid {proc.pid}"):
            OutputLock(out).acquire()
    finally:
        proc.kill()  # kill -9: the kernel drops the flock
        proc.wait()
    with OutputLock(out) as lock:
        assert lock.held
    assert not (tmp_path / "r.npz.lock").exists()


# ------------------------------------------------------------------------------------------ checkpoints


def _crash_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, out: Path, *extra: str) -> None:
    monkeypatch.setenv("LOPBOOK_TOY_CRASH_AT", "5")
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli.main(["run", "toy", "--preset", "full", "--out", str(out), "--no-progress", *extra])
    monkeypatch.delenv("LOPBOOK_TOY_CRASH_AT")
    capsys.readouterr()
    assert Path(str(out) + ".ckpt").exists()


def test_checkpoint_of_another_config_is_one_line(toy_registered, tmp_path: Path, capsys,
                                                  monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "r.npz"
    _crash_checkpoint(tmp_path, monkeypatch, capsys, out)
    before = files_in(tmp_path)
    code, _, err = run_cli(["run", "toy", "--preset", "full", "--set", "lr=0.05", "--out", str(out)], capsys)
    line = one_error_line(err)
    assert code == 2 and "was written for a different config or seeds; delete it or pass --fresh" in line
    assert files_in(tmp_path) == before
    assert run_cli(["run", "toy", "--preset", "full", "--set", "lr=0.05", "--out", str(out), "--fresh",
                    "--no-progress"], capsys)[0] == 0


@pytest.mark.parametrize("cut", [10, 100, -30])
def test_truncated_checkpoint_is_one_line(toy_registered, tmp_path: Path, capsys, monkeypatch, cut: int):
    out = tmp_path / "r.npz"
    _crash_checkpoint(tmp_path, monkeypatch, capsys, out)
    ckpt = Path(str(out) + ".ckpt")
    ckpt.write_bytes(ckpt.read_bytes()[:cut])
    code, _, err = run_cli(["run", "toy", "--preset", "full", "--out", str(out)], capsys)
    line = one_error_line(err)
    assert code == 2 and "is truncated" in line and "--fresh" in line
    assert not out.exists()


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_pickle_checkpoint_runs_nothing(toy_registered, tmp_path: Path, capsys):
    import torch

    out = tmp_path / "r.npz"
    marker = tmp_path / "pwned"
    torch.save({"key": "x", "state": _Payload(marker)}, Path(str(out) + ".ckpt"))  # the old checkpoint format
    code, _, err = run_cli(["run", "toy", "--out", str(out)], capsys)
    assert code == 2 and "no longer loaded because unpickling can run code" in one_error_line(err)
    assert not marker.exists()


def test_crafted_tensor_blob_with_the_right_key_runs_nothing(tmp_path: Path):
    import struct
    import zlib

    import torch

    from lopbook.checkpoint import FORMAT, MAGIC, Checkpoint, CorruptCheckpointError

    marker = tmp_path / "pwned"
    ck = Checkpoint(tmp_path / "c.ckpt", key={"a": 1})
    payload = io.BytesIO()
    torch.save([_Payload(marker)], payload)
    blob = payload.getvalue()
    header = json.dumps({"format": FORMAT, "key": ck.key, "blob_bytes": len(blob),
                         "blobs": [[0, len(blob), zlib.crc32(blob)]], "tensors": 0,
                         "state": {"$lopbook": "tensor", "index": 0}}).encode()
    ck.path.write_bytes(MAGIC + struct.pack("<Q", len(header)) + header + blob)
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt .*Weights only load failed"):
        ck.load()
    assert not marker.exists()


def test_flipped_bit_in_a_checkpoint_is_caught(tmp_path: Path):
    from lopbook.checkpoint import Checkpoint, CorruptCheckpointError

    ck = Checkpoint(tmp_path / "c.ckpt", key=0)
    ck.save({"w": np.arange(10_000.0)}, force=True)
    data = bytearray(ck.path.read_bytes())
    data[-100] ^= 0x01
    ck.path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="fails its CRC-32 check"):
        Checkpoint(ck.path, key=0).load()


# ------------------------------------------------------------------------------------------ info


def _good_result(tmp_path: Path, capsys) -> Path:
    out = tmp_path / "good.npz"
    assert cli.main(["run", "toy", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    return out


def test_info_on_damaged_files_is_one_line(toy_registered, tmp_path: Path, capsys):
    good = _good_result(tmp_path, capsys)
    raw = good.read_bytes()
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("loss.npy")
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    damaged = {
        "truncated.npz": raw[: len(raw) // 2],
        "deflate.npz": raw[:start + 5] + bytes(b ^ 0xFF for b in raw[start + 5: start + 40]) + raw[start + 40:],
        "empty.npz": b"",
    }
    for name, data in damaged.items():
        (tmp_path / name).write_bytes(data)
    list_meta = tmp_path / "list_meta.npz"
    with zipfile.ZipFile(list_meta, "w") as zf:
        zf.writestr("meta.json", "[1, 2]")
    for path in [*(tmp_path / n for n in damaged), list_meta, tmp_path / "missing.npz"]:
        code, _, err = run_cli(["info", str(path)], capsys)
        line = one_error_line(err)
        assert code == 2 and str(path) in line, (path, err)
        assert any(w in line for w in ("not a readable", "not a mapping", "no result file")), line


def test_debug_shows_the_traceback(toy_registered, tmp_path: Path, capsys):
    from lopbook.results import MissingResultError

    with pytest.raises(MissingResultError):
        cli.main(["--debug", "info", str(tmp_path / "missing.npz")])
    with pytest.raises(MissingResultError):
        cli.main(["info", str(tmp_path / "missing.npz"), "--debug"])


@pytest.mark.parametrize("experiment, message", [
    ("continual_imagenet", "ImageNet32 not found under .*--set data_root=<folder>"),
    ("permuted_mnist", r"MNIST files \['train-images-idx3-ubyte', 'train-labels-idx1-ubyte'\].* are not in .*mnist"),
])
def test_missing_dataset_is_one_line_from_the_real_program(tmp_path: Path, experiment: str, message: str):
    env = {**os.environ, "LOPBOOK_DATA": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "lopbook", "run", experiment, "--preset", "full",
                           "--seeds", "1", "--device", "cpu", "--no-progress", "--out", "r.npz"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert re.search(message, one_error_line(proc.stderr)), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a failed run left files behind"


@pytest.mark.parametrize("experiment, setting, message", [
    ("scr", "chunk=True", r"chunk=True is a bool; expected a whole number \(int\)"),
    ("scr", "lr=nan", "lr=nan is not a finite number"),
    ("scr", "methods=cbp", r"methods='cbp' is a str; expected a list \(list\[str\]\)"),
    ("permuted_mnist", "num_tasks=2.5", r"num_tasks=2.5 is a float; expected a whole number \(int\)"),
    ("permuted_mnist", "hidden=[100, 'x']", r"hidden\[1\]='x' is a str; expected a whole number"),
    ("slippery_ant", "fixed_friction=abc", r"fixed_friction='abc' is a str; expected a number \(float\)"),
    ("incremental_cifar", "train_per_class=1e400", "train_per_class=inf is a float"),
])
def test_issue_examples_on_real_experiments(tmp_path: Path, capsys: pytest.CaptureFixture, experiment: str,
                                            setting: str, message: str):
    code, _, err = run_cli(["run", experiment, "--set", setting, "--out", str(tmp_path / "r.npz")], capsys)
    assert code == 2 and re.search(message, one_error_line(err)), err
    assert files_in(tmp_path) == {}


def test_numpy_only_paths_do_not_import_torch(tmp_path: Path):
    """The SCR trainer (numpy), its checkpoints and its runs never pay for importing torch (~250 MiB, ~1 s)."""
    code = f"""
import sys
import numpy as np
import lopbook.checkpoint, lopbook.results, lopbook.problems.scr_trainer, lopbook.experiments.scr, lopbook.sweep
assert 'torch' not in sys.modules, 'import'
from lopbook.checkpoint import Checkpoint
ck = Checkpoint({str(tmp_path / 'c.ckpt')!r}, key=1)
ck.save({{"w": np.arange(5000.0), "rng": np.random.default_rng(0).bit_generator.state}}, force=True)
assert Checkpoint({str(tmp_path / 'c.ckpt')!r}, key=1).load()["w"][-1] == 4999.0
assert 'torch' not in sys.modules, 'checkpoint'
# a whole SCR run as a sweep worker runs it: checkpoint, result, provenance; --device is recorded truthfully
from lopbook.sweep.execute import RunJob
RunJob({{"experiment": "scr", "module": "lopbook.experiments.scr", "preset": "quick", "seed": 0,
        "overrides": {{"n_examples": 4000, "bin_size": 2000}}, "device": None, "threads": 1,
        "out": {str(tmp_path / 'scr.npz')!r}, "run": "r", "command": "test"}})()
from lopbook.experiments import run_experiment
res = run_experiment("scr", "quick", seeds=1, device="cuda", overrides={{"n_examples": 4000, "bin_size": 2000}},
                     progress=False)
assert res.meta["device"] == "cpu", res.meta["device"]
assert 'torch' not in sys.modules, 'run'
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_interrupt_is_one_line(toy_registered, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    import toy_experiment

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(toy_experiment.EXPERIMENT, "run", interrupted)
    code, _, err = run_cli(["run", "toy", "--out", str(tmp_path / "r.npz")], capsys)
    assert code == 130 and "rerun the same command to resume" in err
    assert not (tmp_path / "r.npz.lock").exists()


def test_lock_file_is_removed_after_a_run(toy_registered, tmp_path: Path, capsys):
    _good_result(tmp_path, capsys)
    assert sorted(files_in(tmp_path)) == ["good.npz"]
    assert np.isfinite(load_result(tmp_path / "good.npz")["loss"]).all()


@pytest.mark.parametrize("args, message", [
    (["run", "toy", "--seeds", "abc"], "argument --seeds: invalid int value: 'abc'"),
    (["run", "toy", "--mode", "cached"], "argument --mode: invalid choice: 'cached'"),
    (["sweep", "run"], "the following arguments are required: config"),
])
def test_usage_errors_are_one_line(toy_registered, capsys: pytest.CaptureFixture, args, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert message in line and "--help" in line
