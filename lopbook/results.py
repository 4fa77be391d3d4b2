"""The results store: one file per result, arrays plus JSON provenance, written atomically.

A result file is a zip archive with the ``.npz`` suffix: every array is a ``<name>.npy`` member (so
``numpy.load`` reads it like any ``.npz``) and the provenance is a ``meta.json`` member, readable with
``unzip -p file.npz meta.json`` or ``python -m lopbook info file.npz``. One file means one atomic
``os.replace``: a reader never sees arrays without their provenance, and an interrupted write leaves
the previous result intact.

Cached results live in ``data/<experiment>/<preset>.npz`` and are produced only by the CLI
(``python -m lopbook run <experiment> --preset <preset> --out data/<experiment>/<preset>.npz``).
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from lopbook.errors import LopbookError

SCHEMA_VERSION = 1
META_MEMBER = "meta.json"

# key -> accepted types; checked on every load so a malformed file fails with a clear message
META_SCHEMA: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "experiment": (str,),
    "preset": (str,),
    "mode": (str,),
    "config": (dict,),
    "seeds": (list,),
    "scale": (dict,),
    "dataset": (dict,),
    "device": (str,),
    "versions": (dict,),
    "git_commit": (str, type(None)),
    "wall_time_s": (float, int),
    "created": (str,),
    "command": (str,),
}
DATASET_KEYS = ("name", "stand_in", "note")
SCALE_KEYS = ("paper_scale", "note")


class ResultError(LopbookError):
    """Base class for results-store errors."""


class ResultSchemaError(ResultError):
    """A result file exists but does not follow the store's format."""


class MissingResultError(ResultError, FileNotFoundError):
    """A cached result the book needs is not in ``data/``."""


@dataclass
class Result:
    """Named arrays (curves, metrics) and the provenance that says where they came from."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    reused: bool = field(default=False, repr=False, compare=False)  # loaded from an existing file, not trained

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.arrays[name]
        except KeyError:
            raise KeyError(f"result of {self.meta.get('experiment', '?')!r} has no array {name!r}; "
                           f"it has {sorted(self.arrays)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def describe(self) -> str:
        """One paragraph for a chapter: data, scale, seeds, device, time and commit."""
        m = self.meta
        ds = m.get("dataset", {})
        data = ds.get("name", "?") + (" (a stand-in for the paper's data)" if ds.get("stand_in") else "")
        scale = m.get("scale", {})
        scale_txt = "the paper's full scale" if scale.get("paper_scale") else "a reduced scale"
        if scale.get("note"):
            scale_txt += f" ({scale['note']})"
        return (f"Result `{m.get('experiment')}/{m.get('preset')}`: data {data}; {scale_txt}; "
                f"{len(m.get('seeds', []))} seeds; device {m.get('device')}; "
                f"{m.get('wall_time_s', 0):.0f} s wall time; commit {short_commit(m.get('git_commit'))}; "
                f"created {m.get('created')}.")


_MIXED = "mixed: "  # the prefix of a ``git_commit`` that lists several commits


def combined_commit(commits: list[str]) -> str:
    """The ``git_commit`` of a result built from runs of ``commits`` (one, or several: "mixed: a, b")."""
    return commits[0] if len(commits) == 1 else _MIXED + ", ".join(commits)


def short_commit(commit: str | None) -> str:
    """A result's ``git_commit`` as text: 10 hex digits, or each commit's 10 for a sweep built across commits."""
    text = str(commit or "unknown")
    if text.startswith(_MIXED):
        return "mixed (" + ", ".join(c.strip()[:10] for c in text[len(_MIXED):].split(",")) + ")"
    return text[:10]


def git_commit() -> str | None:
    """HEAD of the repository lopbook runs from (``-dirty`` when tracked files changed), or None."""
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    """Versions of the interpreter and of the packages a result depends on."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("lopbook", "torch", "numpy", "gymnasium", "mujoco"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return versions


def provenance(*, experiment: str, preset: str, mode: str, config: dict[str, Any], seeds: list[int],
               device: str, wall_time_s: float, dataset: dict[str, Any], scale: dict[str, Any],
               command: str | None = None, commit: str | None = None) -> dict[str, Any]:
    """Build the ``meta`` dict of a result; every field of :data:`META_SCHEMA` is filled."""
    meta = {
        "schema_version": SCHEMA_VERSION,
        "experiment": experiment,
        "preset": preset,
        "mode": mode,
        "config": config,
        "seeds": [int(s) for s in seeds],
        "scale": dict(scale),
        "dataset": dict(dataset),
        "device": device,
        "versions": package_versions(),
        "git_commit": commit if commit is not None else git_commit(),
        "wall_time_s": float(wall_time_s),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    check_meta(meta)
    return meta


def check_meta(meta: dict[str, Any], source: str = "result") -> None:
    """Raise :class:`ResultSchemaError` naming every problem with ``meta``."""
    problems = []
    for key, types in META_SCHEMA.items():
        if key not in meta:
            problems.append(f"missing key {key!r}")
        elif not isinstance(meta[key], types) or isinstance(meta[key], bool) and bool not in types:
            problems.append(f"{key!r} should be {'/'.join(t.__name__ for t in types)}, "
                            f"got {type(meta[key]).__name__}")
    for sub, keys in (("dataset", DATASET_KEYS), ("scale", SCALE_KEYS)):
        if isinstance(meta.get(sub), dict):
            problems += [f"{sub!r} lacks {k!r}" for k in keys if k not in meta[sub]]
    if meta.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        problems.append(f"schema_version {meta.get('schema_version')} is not {SCHEMA_VERSION}")
    if problems:
        raise ResultSchemaError(f"{source} is not a valid lopbook result: " + "; ".join(problems)
                                + ". Regenerate it with `python -m lopbook run ...`.")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in result metadata")


def _default_mode() -> int:
    """``0o666`` minus the umask: the permissions ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes | Sequence[bytes]) -> None:
    """Write ``data`` (bytes, or a sequence of chunks written in order) to ``path`` so that readers see
    either the old file or the whole new one.

    The file gets the user's normal permissions (``mkstemp`` alone would leave it ``-rw-------``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _default_mode())
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, (bytes, bytearray, memoryview)):
                fh.write(data)
            else:
                fh.writelines(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files that interrupted :func:`atomic_write_bytes` calls for ``path`` left behind (``kill -9``).

    Only call this while holding the output's lock (:class:`lopbook.locking.OutputLock`): then no other
    process is writing them.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{glob_escape(path.name)}.*.tmp"))


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def save_result(result: Result, path: str | os.PathLike) -> Path:
    """Check and write ``result`` atomically to ``path`` (a ``.npz`` file); returns the path."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"result files end in .npz, got {path}")
    check_meta(result.meta)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in result.arrays.items():
            arr = np.asarray(arr)
            if arr.dtype == object:
                raise TypeError(f"array {name!r} has dtype object; store numbers or strings only")
            member = io.BytesIO()
            np.lib.format.write_array(member, arr, allow_pickle=False)
            zf.writestr(f"{name}.npy", member.getvalue())
        zf.writestr(META_MEMBER, json.dumps(result.meta, indent=1, sort_keys=True, default=_json_default))
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_result(path: str | os.PathLike) -> Result:
    """Read a result file, checking its schema; raises :class:`ResultSchemaError` on a bad file."""
    path = Path(path)
    if not path.exists():
        raise MissingResultError(f"no result file at {path}")
    if path.is_dir():
        raise ResultSchemaError(f"{path} is a folder; give the path of a result file (.npz)")
    if not os.access(path, os.R_OK):
        raise ResultError(f"cannot read {path}: permission denied; fix its permissions (chmod u+r)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if META_MEMBER not in names:
                raise ResultSchemaError(f"{path} has no {META_MEMBER}; it was not written by lopbook.results")
            meta = json.loads(zf.read(META_MEMBER))
            if not isinstance(meta, dict):
                raise ResultSchemaError(f"{path}: {META_MEMBER} holds a {type(meta).__name__}, not a mapping; "
                                        f"it was not written by lopbook.results. Regenerate it with "
                                        f"`python -m lopbook run ...`")
            arrays = {n[:-4]: np.lib.format.read_array(io.BytesIO(zf.read(n)), allow_pickle=False)
                      for n in names if n.endswith(".npy")}
    except ResultSchemaError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, UnicodeDecodeError, ValueError) as err:
        kind = "zlib error" if isinstance(err, zlib.error) else type(err).__name__
        raise ResultSchemaError(f"{path} is not a readable lopbook result ({kind}: {err}); "
                                f"it is truncated or damaged. Regenerate it with `python -m lopbook run ...`") from err
    check_meta(meta, source=str(path))
    return Result(arrays=arrays, meta=meta)


def data_dir() -> Path:
    """Where cached results live: ``$LOPBOOK_DATA`` or the ``data/`` folder of the repository."""
    env = os.environ.get("LOPBOOK_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


def cached_path(experiment: str, preset: str = "full") -> Path:
    return data_dir() / experiment / f"{preset}.npz"


def produce_command(experiment: str, preset: str = "full") -> str:
    """The CLI command that writes the cached result ``experiment/preset``."""
    return f"python -m lopbook run {experiment} --preset {preset} --out data/{experiment}/{preset}.npz"


def load_cached(experiment: str, preset: str = "full") -> Result:
    """Load ``data/<experiment>/<preset>.npz``; a missing file names the command that makes it."""
    path = cached_path(experiment, preset)
    if not path.exists():
        raise MissingResultError(
            f"cached result {path} is missing. Produce it with:\n    {produce_command(experiment, preset)}\n"
            f"or run the chapter with LOPBOOK_MODE=quick to train a tiny version instead.")
    return load_result(path)
