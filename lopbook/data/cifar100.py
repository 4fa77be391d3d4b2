"""CIFAR-100 in the official python pickle format, split and normalised as in the paper.

Expected layout (what ``cifar-100-python.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html unpacks to)::

    <root>/cifar-100-python/train   pickle: {b'data': uint8 (50000, 3072) channel-first rows, b'fine_labels': [...]}
    <root>/cifar-100-python/test    same keys, 10000 rows
    <root>/cifar-100-python/meta    pickle: {b'fine_label_names': [...]}

The "python version" of CIFAR-100 is a set of Python **pickles**, and unpickling can run code. The files are
therefore read with a restricted unpickler that only builds dicts, lists, strings, numbers and numpy arrays
(anything else is refused with an error), and the archive is checked against its published MD5
(:data:`ARCHIVE_MD5`) before it is unpacked, whether downloaded or copied into ``<root>`` by hand.

:func:`load_cifar100` unpacks ``<root>/cifar-100-python.tar.gz`` when the files are missing and the archive is
there, else downloads it when ``download_if_missing=True`` (needs internet; offline you get an error naming
the URL and the folder to put the files in).

Splits (as upstream): **validation** = the first 50 training images of each class in file order (5,000 images),
**train** = the remaining 450 per class (45,000), **test** = the official test set (100 per class).
Normalisation: pixels / 255, then per channel ``(x - mean) / std`` with CIFAR-100's mean and std below.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lopbook.errors import DatasetError, DatasetMissingError

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE = "cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # published on the CIFAR page next to the download link
FOLDER = "cifar-100-python"
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)
NUM_CLASSES = 100
VAL_PER_CLASS = 50


class CIFAR100Missing(DatasetMissingError):
    """The CIFAR-100 files are not where the loader looked and could not be downloaded."""


def default_root() -> Path:
    """``$LOPBOOK_DATA`` or ``~/.cache/lopbook`` (the folder that holds ``cifar-100-python/``)."""
    return Path(os.environ.get("LOPBOOK_DATA", Path.home() / ".cache" / "lopbook"))


# the only globals a CIFAR python batch needs: numpy's array reconstruction (old and new pickle protocols)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only; any other global (a function to call) is refused."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a CIFAR batch holds only arrays, "
                                         f"lists and strings)")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    fix = (f"delete {path.parent} and unpack the official {ARCHIVE} again (MD5 {ARCHIVE_MD5}), "
           f"or put the archive in {path.parent.parent} and rerun")
    try:
        with open(path, "rb") as fh:
            data = _BatchUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            MemoryError) as err:
        raise DatasetError(f"{path} is not a readable CIFAR-100 python batch ({type(err).__name__}: {err}); "
                           f"{fix}") from err
    if not isinstance(data, dict):
        raise DatasetError(f"{path} holds a {type(data).__name__}, not the dict of a CIFAR-100 batch; {fix}")
    return data


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    """The MD5 hex digest of a file."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def unpack(archive: str | Path, root: str | Path, md5: str | None = ARCHIVE_MD5) -> Path:
    """Check ``archive`` against ``md5`` (the published one by default), then unpack it into ``root``."""
    archive, root = Path(archive), Path(root)
    if md5 is not None:
        got = md5sum(archive)
        if got != md5:
            raise DatasetError(f"{archive} has MD5 {got}, not the published {md5} of {ARCHIVE}: it is incomplete "
                               f"or not the official file. Delete it and download it again from {URL}")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DatasetError(f"cannot unpack {archive} ({err}); delete it and download it again from {URL}") from err
    return root / FOLDER


def download(root: str | Path, url: str = URL, timeout: float = 60.0, md5: str | None = ARCHIVE_MD5) -> Path:
    """Download the official archive into ``root``, check its MD5 and unpack it; returns ``root / FOLDER``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / ARCHIVE
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(archive, "wb") as fh:
            while chunk := resp.read(1 << 20):
                fh.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        archive.unlink(missing_ok=True)
        raise CIFAR100Missing(
            f"could not download CIFAR-100 from {url} ({err}). Offline? Download cifar-100-python.tar.gz "
            f"elsewhere and unpack it so that {root / FOLDER}/train, test and meta exist, or point "
            f"LOPBOOK_DATA / --set data_root=... at the folder that contains '{FOLDER}/'.") from err
    try:
        unpack(archive, root, md5)
    finally:
        archive.unlink(missing_ok=True)
    return root / FOLDER


def _to_images(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.uint8)
    if rows.ndim != 2 or rows.shape[1] != 3072:
        raise DatasetError(f"CIFAR 'data' must be (N, 3072) uint8 rows, got shape {rows.shape}")
    return rows.reshape(-1, 3, 32, 32)


@dataclass
class CIFAR100:
    """The three splits as uint8 ``(N, 3, 32, 32)`` arrays with integer fine labels in ``[0, 100)``."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]


def validation_split(labels: np.ndarray, per_class: int = VAL_PER_CLASS) -> np.ndarray:
    """Boolean mask of the first ``per_class`` images of every class, in file order (upstream's validation set)."""
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= per_class:
            raise ValueError(f"class {c} has only {len(idx)} training images; need more than {per_class} "
                             "to hold out a validation split")
        mask[idx[:per_class]] = True
    return mask


def load_cifar100(root: str | Path | None = None, *, download_if_missing: bool = True,
                  val_per_class: int = VAL_PER_CLASS) -> CIFAR100:
    """Load CIFAR-100 from ``root/cifar-100-python`` (downloading it if allowed and missing)."""
    root = Path(root) if root is not None else default_root()
    folder = root / FOLDER
    needed = [folder / n for n in ("train", "test")]
    if not all(p.exists() for p in needed):
        if (root / ARCHIVE).exists():
            unpack(root / ARCHIVE, root)
        elif not download_if_missing:
            raise CIFAR100Missing(f"CIFAR-100 not found: expected {needed[0]} and {needed[1]} (the official "
                                  f"python version, {URL}). Put {ARCHIVE} in {root} (it is checked and "
                                  f"unpacked), or unpack it there, or set LOPBOOK_DATA.")
        else:
            download(root)
    train, test = _read_pickle(folder / "train"), _read_pickle(folder / "test")
    for name, d in (("train", train), ("test", test)):
        if b"data" not in d or b"fine_labels" not in d:
            raise DatasetError(f"{folder / name} lacks b'data' / b'fine_labels'; is it the python version of "
                               f"CIFAR-100? Unpack the official {ARCHIVE} there")
    x, y = _to_images(train[b"data"]), np.asarray(train[b"fine_labels"], dtype=np.int64)
    tx, ty = _to_images(test[b"data"]), np.asarray(test[b"fine_labels"], dtype=np.int64)
    names = [f"class_{i}" for i in range(NUM_CLASSES)]
    if (folder / "meta").exists():
        meta = _read_pickle(folder / "meta")
        if b"fine_label_names" in meta:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"fine_label_names"]]
    val = validation_split(y, val_per_class)
    return CIFAR100(train_x=x[~val], train_y=y[~val], val_x=x[val], val_y=y[val], test_x=tx, test_y=ty,
                    class_names=names)


def normalize(x: np.ndarray | torch.Tensor, device: str | torch.device = "cpu",
              mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> float32 tensor on ``device``: ``/255`` then per-channel standardisation."""
    t = torch.as_tensor(x, device=device).float().div_(255.0)
    m = torch.tensor(mean, device=t.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=t.device).view(1, -1, 1, 1)
    return (t - m) / s


def class_order(seed: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """The order in which classes are added for run ``seed`` (a seeded permutation, stored in results)."""
    return np.random.default_rng([int(seed), 100]).permutation(num_classes)


__all__ = ["CIFAR100", "CIFAR100Missing", "load_cifar100", "download", "unpack", "md5sum", "normalize",
           "class_order", "validation_split", "MEAN", "STD", "URL", "ARCHIVE_MD5"]
