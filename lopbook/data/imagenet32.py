"""Downsampled ImageNet 32x32 for the Continual ImageNet experiment.

Two layouts are accepted under ``root``:

1. **Official batches** (Chrabaszcz et al. 2017, https://image-net.org/download-images.php, "Imagenet32_train_npz"
   and "Imagenet32_val_npz")::

       <root>/train_data_batch_1.npz ... train_data_batch_10.npz   keys 'data' uint8 (N, 3072) channel-first rows,
                                                                    'labels' 1-based ints in 1..1000, 'mean'
       <root>/val_data.npz                                          same keys (50 images per class; optional)

   (a sub-folder ``Imagenet32_train_npz/`` is also searched.) The paper uses **700 images per class**: 600 for
   training and 100 for testing. We derive them from the official *training* batches: per class, the first 700
   images in batch order (batch 1 row 0 onwards; every class has at least 732), of which the first 600 train and
   the last 100 test. The validation file is not needed (it has only 50 per class). The conversion runs once and
   writes the upstream layout (2.) to ``<root>/classes/`` so later runs read one small file per class.

2. **Upstream layout** (the authors' archive): ``<root>/classes/<c>.npy`` for c in 0..999, each ``(700, 3, 32, 32)``.

Pixels are returned as float32 in [0, 1] (``uint8 / 255``). Upstream does no scaling in code (whatever is baked into
its npy files is used as is); for uint8 files this is the natural choice and is documented in the chapter.

Task pairs (:func:`task_pair`): by default every task draws a **fresh pair** of distinct classes from an RNG seeded
by ``(seed, task)``, so there is no silent repetition: upstream tiles one permutation of the 1000 classes, so the
same pair with the same labels recurs every 500 tasks. ``pairing="tiled"`` reproduces that upstream behaviour.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from lopbook.errors import DatasetError, DatasetMissingError

NUM_CLASSES = 1000
PER_CLASS = 700
TRAIN_PER_CLASS = 600
TEST_PER_CLASS = 100
PAIRINGS = ("fresh", "tiled")


class ImageNet32Missing(DatasetMissingError):
    """Neither the official ImageNet32 batches nor the per-class files were found."""


def _batch_files(root: Path) -> list[Path]:
    for folder in (root, root / "Imagenet32_train_npz", root / "Imagenet32_train"):
        files = sorted(folder.glob("train_data_batch_*.npz"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        if files:
            return files
    return []


def convert_batches(root: str | Path, out: str | Path | None = None, per_class: int = PER_CLASS,
                    num_classes: int = NUM_CLASSES) -> Path:
    """Write ``classes/<c>.npy`` (first ``per_class`` images of class c, batch order) from the official batches."""
    root = Path(root)
    out = Path(out) if out is not None else root / "classes"
    files = _batch_files(root)
    if not files:
        raise ImageNet32Missing(_missing_message(root))
    buf = [np.empty((per_class, 3, 32, 32), dtype=np.uint8) for _ in range(num_classes)]
    fill = np.zeros(num_classes, dtype=np.int64)
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as z:
                if "data" not in z or "labels" not in z:
                    raise DatasetError(f"{f} lacks the 'data'/'labels' keys of the official ImageNet32 batches; "
                                       f"download 'Imagenet32_train_npz' again")
                data, labels = z["data"], np.asarray(z["labels"], dtype=np.int64) - 1  # official labels: 1-based
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as err:
            if isinstance(err, DatasetError):
                raise
            raise DatasetError(f"{f} is not a readable ImageNet32 batch ({type(err).__name__}: {err}); delete it "
                               f"and download 'Imagenet32_train_npz' again") from err
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DatasetError(f"{f}: 'data' must be (N, 3072) uint8 rows, got shape {data.shape}")
        if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
            raise DatasetError(f"{f}: labels must be 1..{num_classes} (1-based), got range "
                               f"{labels.min() + 1 if labels.size else '-'}..{labels.max() + 1 if labels.size else '-'}")
        imgs = data.reshape(-1, 3, 32, 32)
        for c in np.unique(labels):
            take = np.flatnonzero(labels == c)[: per_class - fill[c]]
            buf[c][fill[c]: fill[c] + len(take)] = imgs[take]
            fill[c] += len(take)
        if (fill >= per_class).all():
            break
    short = np.flatnonzero(fill < per_class)
    if len(short):
        raise DatasetError(f"classes {short[:10].tolist()} have fewer than {per_class} images in {files[0].parent}; "
                           f"are all ten training batches there?")
    out.mkdir(parents=True, exist_ok=True)
    for c in range(num_classes):
        tmp = out / f".{c}.tmp.npy"
        np.save(tmp, buf[c])
        tmp.replace(out / f"{c}.npy")
    return out


def _missing_message(root: Path) -> str:
    return (f"ImageNet32 not found under {root}. Expected either the official downsampled-ImageNet batches "
            f"({root}/train_data_batch_1.npz ... train_data_batch_10.npz, from 'Imagenet32_train_npz' at "
            "https://image-net.org/download-images.php, free registration) or the authors' per-class files "
            f"({root}/classes/0.npy ... 999.npy, each 700x3x32x32; Google-Drive link in the README of "
            "github.com/shibhansh/loss-of-plasticity). Pass --set data_root=<folder>.")


class ImageNet32Classes:
    """Per-class access to the 700-image split: :meth:`get` returns (train 600, test 100) float arrays in [0, 1]."""

    def __init__(self, root: str | Path, num_classes: int = NUM_CLASSES, train_per_class: int = TRAIN_PER_CLASS,
                 test_per_class: int = TEST_PER_CLASS):
        self.root = Path(root)
        self.num_classes = int(num_classes)
        self.n_train, self.n_test = int(train_per_class), int(test_per_class)
        self.folder = self.root / "classes"
        if not (self.folder / "0.npy").exists():
            if _batch_files(self.root):
                convert_batches(self.root, self.folder, self.n_train + self.n_test, self.num_classes)
            else:
                raise ImageNet32Missing(_missing_message(self.root))
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) images of class ``c``: float32 ``(600, 3, 32, 32)`` and ``(100, 3, 32, 32)`` in [0, 1]."""
        if not 0 <= c < self.num_classes:
            raise IndexError(f"class {c} is outside 0..{self.num_classes - 1}")
        if c not in self._cache:
            path = self.folder / f"{c}.npy"
            if not path.exists():
                raise ImageNet32Missing(f"{path} is missing. " + _missing_message(self.root))
            try:
                a = np.load(path, allow_pickle=False)
            except (ValueError, EOFError, OSError) as err:
                raise DatasetError(f"{path} is not a readable .npy file ({err}); delete {self.folder} to rebuild "
                                   f"it from the official batches, or copy the file again") from err
            if a.ndim != 4 or a.shape[1:] != (3, 32, 32) or a.shape[0] < self.n_train + self.n_test:
                raise DatasetError(f"{path} has shape {a.shape}; expected ({self.n_train + self.n_test}, 3, 32, 32)")
            a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
            self._cache[c] = (a[: self.n_train], a[self.n_train: self.n_train + self.n_test])
            if len(self._cache) > 64:  # bounded memory on long runs
                self._cache.pop(next(iter(self._cache)))
        return self._cache[c]


def task_pair(seed: int, task: int, num_classes: int = NUM_CLASSES, pairing: str = "fresh") -> tuple[int, int]:
    """The two classes of binary task ``task`` in run ``seed`` (label 0 = first, label 1 = second).

    ``fresh``: a new pair of distinct classes from ``default_rng([seed, task])`` (pairs almost never repeat).
    ``tiled`` (upstream): tasks walk through one seeded permutation two classes at a time and wrap around, so the
    same labelled pair recurs every ``num_classes // 2`` tasks.
    """
    if pairing == "fresh":
        a, b = np.random.default_rng([int(seed), int(task), 7]).choice(num_classes, 2, replace=False)
        return int(a), int(b)
    if pairing == "tiled":
        order = np.random.default_rng([int(seed), 7]).permutation(num_classes)
        k = (2 * int(task)) % (num_classes - num_classes % 2)
        return int(order[k]), int(order[k + 1])
    raise ValueError(f"unknown pairing {pairing!r}; choose one of {PAIRINGS}")


__all__ = ["ImageNet32Classes", "ImageNet32Missing", "convert_batches", "task_pair", "PAIRINGS"]
