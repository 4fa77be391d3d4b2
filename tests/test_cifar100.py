"""CIFAR-100 loader on small files written in the official pickle format (bytes keys)."""

import pickle

import numpy as np
import pytest
import torch

from lopbook.data import cifar100


def _write(root, n_per_class=60, n_test=3, classes=100):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(classes), n_per_class)  # interleaved, as in the real file
    data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    data[:, 0] = labels  # tag: first pixel = class, to check rows stay with their labels
    with open(folder / "train", "wb") as fh:
        pickle.dump({b"data": data, b"fine_labels": labels.tolist(), b"coarse_labels": [0] * len(labels)}, fh)
    tl = np.tile(np.arange(classes), n_test)
    td = rng.integers(0, 256, (len(tl), 3072), dtype=np.uint8)
    with open(folder / "test", "wb") as fh:
        pickle.dump({b"data": td, b"fine_labels": tl.tolist()}, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(classes)]}, fh)
    return data, labels


def test_loads_splits_first_50_per_class_as_validation(tmp_path):
    data, labels = _write(tmp_path)
    ds = cifar100.load_cifar100(tmp_path, download_if_missing=False)
    assert ds.val_x.shape == (5000, 3, 32, 32) and ds.train_x.shape == (1000, 3, 32, 32)
    assert ds.test_x.shape == (300, 3, 32, 32) and ds.class_names[3] == "c3"
    # validation holds exactly the first 50 rows of class 7 in file order
    first = np.flatnonzero(labels == 7)[:50]
    assert np.array_equal(ds.val_x[ds.val_y == 7], data[first].reshape(-1, 3, 32, 32))
    assert (ds.train_x[:, 0, 0, 0] == ds.train_y).all() and (ds.val_x[:, 0, 0, 0] == ds.val_y).all()


def test_missing_files_error_names_the_fix(tmp_path):
    with pytest.raises(cifar100.CIFAR100Missing, match="cifar-100-python"):
        cifar100.load_cifar100(tmp_path, download_if_missing=False)


def test_offline_download_error_is_clear(tmp_path):
    with pytest.raises(cifar100.CIFAR100Missing, match="could not download"):
        cifar100.download(tmp_path, url="http://127.0.0.1:9/none.tar.gz", timeout=2)


def test_normalize_and_class_order():
    x = np.full((2, 3, 4, 4), 255, dtype=np.uint8)
    t = cifar100.normalize(x)
    assert torch.allclose(t[0, :, 0, 0], torch.tensor([(1 - m) / s for m, s in zip(cifar100.MEAN, cifar100.STD,
                                                                                  strict=True)]))
    o = cifar100.class_order(3)
    assert sorted(o) == list(range(100)) and np.array_equal(o, cifar100.class_order(3))
    assert not np.array_equal(o, cifar100.class_order(4))
