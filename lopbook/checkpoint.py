"""Resumable runs: periodic, atomic checkpoints that a restarted run picks up, in a format that runs no code.

An experiment calls :meth:`Checkpoint.load` once at the start and :meth:`Checkpoint.save` inside its loop
(as often as it likes: writes are throttled to one per ``every_s`` seconds unless ``force=True``).
A checkpoint remembers a fingerprint of the config and seeds, so a run never resumes from a
checkpoint made for different settings.

File format (a zip archive, written atomically). Loading never unpickles an arbitrary object:

- ``checkpoint.json``: format version, the fingerprint (checked before anything else is read), wall time,
  commits, and the state as a JSON tree. Dicts with non-string keys, tuples, numpy scalars, small numpy
  arrays and bytes are tagged ``{"$lopbook": kind, ...}`` nodes, so they come back with their exact type.
- ``arrays/<i>.npy``: larger numpy arrays (``allow_pickle=False``);
- ``tensors.pt``: the torch tensors of the state, read with ``torch.load(weights_only=True)``. torch is
  imported only when a state holds tensors, so numpy-only runs (the SCR trainer) never import it.

A state may hold dicts, lists, tuples, str, int, float, bool, None, bytes, numpy arrays and scalars
(not object arrays) and torch tensors; anything else is refused at save time with the path to the value.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import time
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from lopbook.errors import LopbookError
from lopbook.results import atomic_write_bytes

FORMAT = "lopbook-checkpoint/2"
HEADER = "checkpoint.json"
TENSORS = "tensors.pt"
TAG = "$lopbook"
INLINE_BYTES = 4096  # arrays and bytes up to this size live in the JSON tree (base64), larger ones in members
_ARRAY_KINDS = "biufcUSmM"  # numpy dtype kinds a checkpoint stores (no object or structured arrays)


class CheckpointError(LopbookError):
    """A checkpoint that cannot be resumed; the message says to delete it or pass ``--fresh``."""


class CheckpointMismatchError(CheckpointError, RuntimeError):
    """The checkpoint on disk belongs to another config or seed list."""


class CorruptCheckpointError(CheckpointError):
    """The checkpoint is truncated, corrupt, of an old format or not a lopbook checkpoint."""


def fingerprint(obj: Any) -> str:
    """A stable hash of a JSON-able object (config + seeds)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ encoding


class _Encoder:
    """State -> JSON tree + array members + tensors (see the module docstring)."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []
        self.tensors: list[Any] = []
        torch = sys.modules.get("torch")  # no tensor can exist unless torch was imported
        self._tensor_type = torch.Tensor if torch is not None else None

    def encode(self, obj: Any, where: str) -> Any:
        if isinstance(obj, np.generic):  # before the builtins: np.float64 and np.str_ subclass float and str
            return self._blob("scalar", np.asarray(obj), where)
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, dict):
            plain = type(obj) is dict and all(isinstance(k, str) for k in obj) and TAG not in obj
            if plain:
                return {k: self.encode(v, f"{where}[{k!r}]") for k, v in obj.items()}
            return {TAG: "dict", "ordered": isinstance(obj, OrderedDict),
                    "items": [[self.encode(k, f"{where} key"), self.encode(v, f"{where}[{k!r}]")]
                              for k, v in obj.items()]}
        if isinstance(obj, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {TAG: "tuple", "items": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, (bytes, bytearray)):
            return self._blob("bytes", np.frombuffer(bytes(obj), dtype=np.uint8))
        if isinstance(obj, np.ndarray):
            return self._blob("ndarray", obj, where)
        if self._tensor_type is not None and isinstance(obj, self._tensor_type):
            self.tensors.append(obj.detach())
            return {TAG: "tensor", "index": len(self.tensors) - 1}
        raise TypeError(f"checkpoint state {where} is a {type(obj).__module__}.{type(obj).__name__}, which a "
                        f"checkpoint cannot store safely; convert it to numbers, lists, dicts, numpy arrays "
                        f"or tensors")

    def _blob(self, kind: str, arr: np.ndarray, where: str = "") -> dict[str, Any]:
        if arr.dtype.kind not in _ARRAY_KINDS:
            raise TypeError(f"checkpoint state {where} is a numpy array of dtype {arr.dtype}; store numbers or "
                            f"strings (object and structured arrays are not stored)")
        if arr.nbytes <= INLINE_BYTES:
            return {TAG: kind, "dtype": arr.dtype.str, "shape": list(arr.shape),
                    "data": base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode()}
        self.arrays.append(arr)
        return {TAG: kind, "member": f"arrays/{len(self.arrays) - 1}.npy"}


def _decode_blob(node: dict[str, Any], zf: zipfile.ZipFile) -> np.ndarray:
    if "member" in node:
        arr = np.lib.format.read_array(io.BytesIO(zf.read(node["member"])), allow_pickle=False)
    else:
        dtype = np.dtype(node["dtype"])
        if dtype.kind not in _ARRAY_KINDS:
            raise ValueError(f"dtype {dtype} is not stored in checkpoints")
        arr = np.frombuffer(base64.b64decode(node["data"]), dtype=dtype).reshape(node["shape"]).copy()
    return arr


def _decode(node: Any, zf: zipfile.ZipFile, tensors: list[Any]) -> Any:
    if isinstance(node, list):
        return [_decode(v, zf, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    kind = node.get(TAG)
    if kind is None:
        return {k: _decode(v, zf, tensors) for k, v in node.items()}
    if kind == "dict":
        items = [(_decode(k, zf, tensors), _decode(v, zf, tensors)) for k, v in node["items"]]
        return OrderedDict(items) if node.get("ordered") else dict(items)
    if kind == "tuple":
        return tuple(_decode(v, zf, tensors) for v in node["items"])
    if kind == "ndarray":
        return _decode_blob(node, zf)
    if kind == "scalar":
        return _decode_blob(node, zf)[()]
    if kind == "bytes":
        return _decode_blob(node, zf).tobytes()
    if kind == "tensor":
        return tensors[node["index"]]
    raise ValueError(f"unknown node kind {kind!r}")


def encode_state(header: dict[str, Any], state: Any) -> bytes:
    """The bytes of a checkpoint file holding ``header`` (JSON-able) and ``state``."""
    enc = _Encoder()
    tree = enc.encode(state, "state")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(HEADER, json.dumps({**header, "format": FORMAT, "state": tree}))
        for i, arr in enumerate(enc.arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, arr, allow_pickle=False)
            zf.writestr(f"arrays/{i}.npy", member.getvalue())
        if enc.tensors:
            import torch

            member = io.BytesIO()
            torch.save([t.cpu() for t in enc.tensors], member)
            zf.writestr(TENSORS, member.getvalue())
    return buf.getvalue()


def read_header(path: Path, zf: zipfile.ZipFile) -> dict[str, Any]:
    """The JSON header of an open checkpoint archive; :class:`CorruptCheckpointError` if it has none."""
    fix = "delete it or pass --fresh to start over"
    names = zf.namelist()
    if HEADER not in names:
        old = any(n.endswith("data.pkl") for n in names)
        why = ("was written by an older lopbook as a pickle, which is no longer loaded because unpickling can "
               "run code" if old else "is not a lopbook checkpoint")
        raise CorruptCheckpointError(f"checkpoint {path} {why}; {fix}")
    header = json.loads(zf.read(HEADER))
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CorruptCheckpointError(f"checkpoint {path} has format "
                                     f"{header.get('format') if isinstance(header, dict) else '?'}, expected "
                                     f"{FORMAT}; {fix}")
    return header


def decode_state(path: Path, zf: zipfile.ZipFile, header: dict[str, Any]) -> Any:
    """The state of an open checkpoint archive whose header was checked."""
    tensors: list[Any] = []
    if TENSORS in zf.namelist():
        import torch

        tensors = torch.load(io.BytesIO(zf.read(TENSORS)), map_location="cpu", weights_only=True)
        if not isinstance(tensors, list):
            raise ValueError(f"{TENSORS} does not hold a list of tensors")
    return _decode(header["state"], zf, tensors)


class Checkpoint:
    """A single checkpoint file for one run; ``path=None`` disables checkpointing (quick runs)."""

    def __init__(self, path: str | Path | None, key: Any = None, every_s: float = 60.0):
        self.path = Path(path) if path is not None else None
        self.key = fingerprint(key)
        self.every_s = every_s
        self._last = self._start = time.monotonic()
        self.prior_elapsed_s = 0.0  # wall time spent by earlier, interrupted segments of this run
        self.resumed = False
        self.commits: list[str | None] = []  # code version of each segment of the run, oldest first

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def load(self) -> dict[str, Any] | None:
        """The saved state, or ``None`` when there is nothing to resume.

        Raises :class:`CheckpointMismatchError` for a checkpoint of another config or seeds (checked on the
        JSON header before any state is read) and :class:`CorruptCheckpointError` for an unreadable one.
        """
        if self.path is None or not self.path.exists():
            return None
        fix = "delete it or pass --fresh to start over"
        try:
            with zipfile.ZipFile(self.path) as zf:
                header = read_header(self.path, zf)
                if header.get("key") != self.key:
                    raise CheckpointMismatchError(
                        f"checkpoint {self.path} was written for a different config or seeds; {fix}")
                state = decode_state(self.path, zf, header)
        except CheckpointError:
            raise
        except Exception as err:  # zip, JSON, npy, zlib and torch errors: a truncated or damaged file
            raise CorruptCheckpointError(f"checkpoint {self.path} is truncated or corrupt "
                                         f"({type(err).__name__}: {err}); {fix}") from err
        self.prior_elapsed_s = float(header.get("elapsed_s", 0.0))
        self.commits = list(header.get("commits", [])) + self.commits[-1:]
        self.resumed = True
        return state

    def elapsed_s(self) -> float:
        """Wall time of the whole run so far, earlier interrupted segments included."""
        return self.prior_elapsed_s + time.monotonic() - self._start

    def save(self, state: dict[str, Any], force: bool = False) -> bool:
        """Write ``state`` if ``every_s`` seconds passed since the last write (or ``force``)."""
        if self.path is None or (not force and time.monotonic() - self._last < self.every_s):
            return False
        data = encode_state({"key": self.key, "elapsed_s": self.elapsed_s(), "commits": self.commits}, state)
        atomic_write_bytes(self.path, data)
        self._last = time.monotonic()
        return True

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)





def checkpoint_problem(path: str | Path, key: Any) -> str | None:
    """Why the checkpoint at ``path`` cannot resume a run with ``key`` (truncated, old format, another
    config), or ``None`` when it can. Reads only the archive's directory and JSON header (cheap)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            header = read_header(path, zf)
    except CheckpointError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - any read error means the file cannot resume a run
        return f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: {err})"
    if header.get("key") != fingerprint(key):
        return f"checkpoint {path} was written for a different config or seeds"
    return None


__all__ = ["Checkpoint", "CheckpointError", "CheckpointMismatchError", "CorruptCheckpointError", "fingerprint",
           "checkpoint_problem", "encode_state", "FORMAT"]
