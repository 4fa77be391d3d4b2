"""MNIST from the official IDX files (``train-images-idx3-ubyte[.gz]`` and friends), as uint8 tensors.

The paper's permuted-MNIST runs use the 60,000 training images only, scaled to [0, 1] with no mean/std
normalisation. This module reads the IDX format directly (no torchvision):
a big-endian header ``0x00 0x00 <dtype code> <ndim>`` followed by ``ndim`` uint32 sizes and the raw data.

Where to put the files: ``$LOPBOOK_DATA/mnist/`` (default ``data/raw/mnist/`` under the repository), either
gzipped or not. :func:`download_mnist` fetches them when a network is available; on an offline machine copy
the four files there by hand (see :data:`MNIST_FILES`).
"""

from __future__ import annotations

import gzip
import os
import struct
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lopbook.errors import DatasetError, DatasetMissingError

__all__ = ["MNIST_FILES", "MNIST_MIRRORS", "MNISTNotFoundError", "MNIST", "read_idx", "write_idx",
           "mnist_dir", "load_mnist", "download_mnist"]

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/")

# IDX type codes -> numpy dtypes (big-endian for multi-byte types)
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
              np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


class MNISTNotFoundError(DatasetMissingError):
    """The MNIST IDX files are not where lopbook looks for them."""


@dataclass
class MNIST:
    """MNIST as tensors: images ``(N, 28, 28)`` uint8, labels ``(N,)`` int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor | None
    test_labels: torch.Tensor | None
    name: str = "MNIST"
    stand_in: bool = False
    note: str = "official MNIST IDX files"


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped if the name ends in ``.gz``) into a numpy array of its stored shape."""
    path = Path(path)
    fix = "delete it and copy or download the official file again"
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DatasetError(f"{path} is not a complete gzip file ({err}); {fix}") from err
    if len(data) < 4:
        raise DatasetError(f"{path} is too short to be an IDX file ({len(data)} bytes); {fix}")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an IDX file (magic bytes {data[:4].hex()}); expected 0000 then a type "
                           f"code in {sorted(hex(c) for c in _IDX_DTYPES)}; {fix}")
    if len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: the header announces {ndim} dimensions but the file ends after "
                           f"{len(data)} bytes, inside the header (truncated download?); {fix}")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != expected:
        raise DatasetError(f"{path}: header says shape {dims} ({expected} bytes) but the file has {len(body)} "
                           f"data bytes (truncated download?); {fix}")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped if the name ends in ``.gz``); the inverse of :func:`read_idx`."""
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _IDX_CODES:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use one of {sorted(map(str, _IDX_CODES))}")
    header = struct.pack(">HBB", 0, _IDX_CODES[native], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    body = array.astype(native.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + body)
    return path


def mnist_dir() -> Path:
    """Where lopbook looks for MNIST: ``$LOPBOOK_DATA/mnist`` or ``<repo>/data/raw/mnist``."""
    root = os.environ.get("LOPBOOK_DATA")
    if root:
        return Path(root) / "mnist"
    return Path(__file__).resolve().parents[2] / "data" / "raw" / "mnist"


def _find(directory: Path, stem: str) -> Path | None:
    for cand in (directory / stem, directory / f"{stem}.gz"):
        if cand.exists():
            return cand
    return None


def load_mnist(directory: str | Path | None = None, *, test: bool = True) -> MNIST:
    """Load MNIST from IDX files in ``directory`` (default :func:`mnist_dir`).

    Raises :class:`MNISTNotFoundError` naming the missing files and where to put them.
    """
    directory = Path(directory) if directory is not None else mnist_dir()
    keys = list(MNIST_FILES) if test else ["train_images", "train_labels"]
    found = {k: _find(directory, MNIST_FILES[k]) for k in keys}
    missing = [MNIST_FILES[k] for k, v in found.items() if v is None]
    if missing:
        raise MNISTNotFoundError(
            f"MNIST files {missing} (optionally .gz) are not in {directory}. Put the official IDX files there "
            f"(or set LOPBOOK_DATA to a folder containing mnist/), or run "
            f"`python -c 'from lopbook.data.mnist import download_mnist; download_mnist()'` on a machine "
            f"with internet access. Offline, the book uses the stand-ins in lopbook.data.standins.")
    arrays = {k: read_idx(p) for k, p in found.items() if p is not None}
    for split in ("train", "test") if test else ("train",):
        imgs, labs = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if imgs.ndim != 3 or labs.ndim != 1 or len(imgs) != len(labs):
            raise DatasetError(f"MNIST {split} files in {directory} have shapes {imgs.shape} and {labs.shape}; "
                             f"expected (N, 28, 28) images and (N,) labels")

    def t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(a.copy()).to(dtype)

    return MNIST(train_images=t(arrays["train_images"], torch.uint8),
                 train_labels=t(arrays["train_labels"], torch.long),
                 test_images=t(arrays["test_images"], torch.uint8) if test else None,
                 test_labels=t(arrays["test_labels"], torch.long) if test else None,
                 note=f"official MNIST IDX files from {directory}")


def download_mnist(directory: str | Path | None = None, mirrors: tuple[str, ...] = MNIST_MIRRORS,
                   timeout: float = 30.0) -> Path:
    """Download the four gzipped IDX files into ``directory`` (default :func:`mnist_dir`); skips present files.

    Raises :class:`MNISTNotFoundError` with the manual fix when no mirror can be reached (e.g. offline).
    """
    directory = Path(directory) if directory is not None else mnist_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for stem in MNIST_FILES.values():
        if _find(directory, stem) is not None:
            continue
        errors = []
        for mirror in mirrors:
            url = f"{mirror}{stem}.gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    blob = resp.read()
                final = directory / f"{stem}.gz"
                final.write_bytes(blob)
                try:
                    read_idx(final)  # validate before trusting it
                except ValueError:
                    final.unlink()
                    raise
                break
            except (OSError, ValueError) as err:
                errors.append(f"{url}: {err}")
        else:
            raise MNISTNotFoundError(f"could not download {stem}.gz ({'; '.join(errors)}). Copy the official "
                                     f"MNIST IDX files into {directory} by hand.")
    return directory
