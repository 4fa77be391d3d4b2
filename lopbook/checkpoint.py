"""Resumable runs: periodic, atomic checkpoints that a restarted run picks up, in a format that runs no code.

An experiment calls :meth:`Checkpoint.load` once at the start and :meth:`Checkpoint.save` inside its loop
(as often as it likes: writes are throttled to one per ``every_s`` seconds unless ``force=True``).
A checkpoint remembers a fingerprint of the config and seeds, so a run never resumes from a
checkpoint made for different settings.

File format (one file, written atomically). Loading never unpickles an arbitrary object:

- the magic line ``LOPBOOK-CHECKPOINT/2``, then the length of a JSON header (8 bytes, little-endian);
- the JSON header: the fingerprint (checked before anything else is read), wall time, commits, the size
  of the blobs (a truncated file is caught before any state is read), the offset, size and CRC-32 of every
  blob, and the state as a JSON tree. Dicts with non-string keys, tuples, numpy scalars, small numpy arrays
  and bytes are tagged ``{"$lopbook": kind, ...}`` nodes, so they come back with their exact type;
- the blobs: larger numpy arrays and bytes as ``.npy`` data (read with ``allow_pickle=False``) and, when the
  state holds torch tensors, one ``torch.save`` blob of them read with ``torch.load(weights_only=True)``.
  torch is imported only then, so numpy-only runs (the SCR trainer) never import it.

A state may hold dicts, lists, tuples, str, int, float, bool, None, bytes, numpy arrays and scalars
(not object arrays) and torch tensors; anything else is refused at save time with the path to the value.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import struct
import sys
import time
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lopbook.errors import LopbookError
from lopbook.results import atomic_write_bytes

FORMAT = "lopbook-checkpoint/2"
MAGIC = b"LOPBOOK-CHECKPOINT/2\n"
TAG = "$lopbook"
INLINE_BYTES = 4096  # arrays and bytes up to this size live in the JSON tree (base64), larger ones in blobs
_ARRAY_KINDS = "biufcUSmM"  # numpy dtype kinds a checkpoint stores (no object or structured arrays)
_FIX = "delete it or pass --fresh to start over"


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
    """State -> JSON tree + blobs (see the module docstring)."""

    def __init__(self) -> None:
        self.blobs: list[bytes] = []
        self.tensors: list[Any] = []
        torch = sys.modules.get("torch")  # no tensor can exist unless torch was imported
        self._tensor_type = torch.Tensor if torch is not None else None

    def encode(self, obj: Any, where: str) -> Any:
        if isinstance(obj, np.generic):  # before the builtins: np.float64 and np.str_ subclass float and str
            return self._array("scalar", np.asarray(obj), where)
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
            return self._array("bytes", np.frombuffer(bytes(obj), dtype=np.uint8), where)
        if isinstance(obj, np.ndarray):
            return self._array("ndarray", obj, where)
        if self._tensor_type is not None and isinstance(obj, self._tensor_type):
            self.tensors.append(obj.detach().cpu())
            return {TAG: "tensor", "index": len(self.tensors) - 1}
        raise TypeError(f"checkpoint state {where} is a {type(obj).__module__}.{type(obj).__name__}, which a "
                        f"checkpoint cannot store safely; convert it to numbers, lists, dicts, numpy arrays "
                        f"or tensors")

    def _array(self, kind: str, arr: np.ndarray, where: str) -> dict[str, Any]:
        if arr.dtype.kind not in _ARRAY_KINDS:
            raise TypeError(f"checkpoint state {where} is a numpy array of dtype {arr.dtype}; store numbers or "
                            f"strings (object and structured arrays are not stored)")
        if arr.nbytes <= INLINE_BYTES:
            return {TAG: kind, "dtype": arr.dtype.str, "shape": list(arr.shape),
                    "data": base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode()}
        member = io.BytesIO()
        np.lib.format.write_array(member, arr, allow_pickle=False)
        self.blobs.append(member.getvalue())
        return {TAG: kind, "blob": len(self.blobs) - 1}


class _Reader:
    """Decodes the JSON tree of a checked checkpoint, pulling blobs out of its bytes."""

    def __init__(self, fh: BinaryIO, header: dict[str, Any], start: int):
        self.fh, self.blobs, self.start = fh, header["blobs"], start
        self.tensors: list[Any] = []
        if header.get("tensors") is not None:
            import torch

            self.tensors = torch.load(io.BytesIO(self.blob(header["tensors"])), map_location="cpu",
                                      weights_only=True)
            if not isinstance(self.tensors, list):
                raise ValueError("the tensor blob does not hold a list of tensors")

    def blob(self, i: int) -> bytes:
        offset, size, crc = self.blobs[i]
        self.fh.seek(self.start + offset)
        chunk = self.fh.read(size)
        if len(chunk) != size or zlib.crc32(chunk) != crc:
            raise ValueError(f"blob {i} fails its CRC-32 check")
        return chunk

    def array(self, node: dict[str, Any]) -> np.ndarray:
        if "blob" in node:
            return np.lib.format.read_array(io.BytesIO(self.blob(node["blob"])), allow_pickle=False)
        dtype = np.dtype(node["dtype"])
        if dtype.kind not in _ARRAY_KINDS:
            raise ValueError(f"dtype {dtype} is not stored in checkpoints")
        return np.frombuffer(base64.b64decode(node["data"]), dtype=dtype).reshape(node["shape"]).copy()

    def decode(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict):
            return node
        kind = node.get(TAG)
        if kind is None:
            return {k: self.decode(v) for k, v in node.items()}
        if kind == "dict":
            items = [(self.decode(k), self.decode(v)) for k, v in node["items"]]
            return OrderedDict(items) if node.get("ordered") else dict(items)
        if kind == "tuple":
            return tuple(self.decode(v) for v in node["items"])
        if kind == "ndarray":
            return self.array(node)
        if kind == "scalar":
            return self.array(node)[()]
        if kind == "bytes":
            return self.array(node).tobytes()
        if kind == "tensor":
            return self.tensors[node["index"]]
        raise ValueError(f"unknown node kind {kind!r}")


def encode_state(header: dict[str, Any], state: Any) -> list[bytes]:
    """The chunks of a checkpoint file (write them in order) holding ``header`` (JSON-able) and ``state``."""
    enc = _Encoder()
    tree = enc.encode(state, "state")
    blobs = enc.blobs
    tensors = None
    if enc.tensors:
        import torch

        member = io.BytesIO()
        torch.save(enc.tensors, member)
        blobs = [*blobs, member.getvalue()]
        tensors = len(blobs) - 1
    table, offset = [], 0
    for b in blobs:
        table.append([offset, len(b), zlib.crc32(b)])
        offset += len(b)
    text = json.dumps({**header, "format": FORMAT, "blob_bytes": offset, "blobs": table, "tensors": tensors,
                       "state": tree}).encode()
    return [MAGIC, struct.pack("<Q", len(text)), text, *blobs]


def read_header(path: Path, fh: BinaryIO, file_size: int) -> tuple[dict[str, Any], int]:
    """The JSON header of a checkpoint file and where its blobs start; :class:`CorruptCheckpointError` if
    the file is not a complete lopbook checkpoint (reads only the magic line and the header)."""
    first = fh.read(len(MAGIC))
    if len(first) < len(MAGIC) and MAGIC.startswith(first):
        raise CorruptCheckpointError(f"checkpoint {path} is truncated ({len(first)} bytes); {_FIX}")
    if first != MAGIC:
        why = ("was written by an older lopbook as a pickle, which is no longer loaded because unpickling can "
               "run code" if first.startswith(b"PK") else "is not a lopbook checkpoint")
        raise CorruptCheckpointError(f"checkpoint {path} {why}; {_FIX}")
    raw = fh.read(8)
    if len(raw) != 8:
        raise CorruptCheckpointError(f"checkpoint {path} is truncated (it ends inside its header); {_FIX}")
    (length,) = struct.unpack("<Q", raw)
    if len(MAGIC) + 8 + length > file_size:
        raise CorruptCheckpointError(f"checkpoint {path} is truncated (it ends inside its header); {_FIX}")
    header = json.loads(fh.read(length))
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CorruptCheckpointError(f"checkpoint {path} has an unknown header; {_FIX}")
    start = len(MAGIC) + 8 + length
    if start + header.get("blob_bytes", -1) != file_size:
        raise CorruptCheckpointError(f"checkpoint {path} is truncated or damaged: {file_size} bytes, its header "
                                     f"says {start + header.get('blob_bytes', 0)}; {_FIX}")
    return header, start


def decode_state(fh: BinaryIO, header: dict[str, Any], start: int) -> Any:
    """The state of the open checkpoint file ``fh`` whose ``header`` was checked (blobs start at ``start``)."""
    return _Reader(fh, header, start).decode(header["state"])


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
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                header, start = read_header(self.path, fh, size)
                if header.get("key") != self.key:
                    raise CheckpointMismatchError(
                        f"checkpoint {self.path} was written for a different config or seeds; {_FIX}")
                state = decode_state(fh, header, start)
        except CheckpointError:
            raise
        except Exception as err:  # JSON, npy, CRC and torch errors: a damaged (or crafted) file
            raise CorruptCheckpointError(f"checkpoint {self.path} is truncated or corrupt "
                                         f"({type(err).__name__}: {err}); {_FIX}") from err
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
    config), or ``None`` when it can. Reads only the magic line and the JSON header (cheap)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            header, _ = read_header(path, fh, os.fstat(fh.fileno()).st_size)
    except CheckpointError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - any read error means the file cannot resume a run
        return f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: {err})"
    if header.get("key") != fingerprint(key):
        return f"checkpoint {path} was written for a different config or seeds"
    return None


__all__ = ["Checkpoint", "CheckpointError", "CheckpointMismatchError", "CorruptCheckpointError", "fingerprint",
           "checkpoint_problem", "encode_state", "FORMAT"]
