"""ImageNet32 loader on small files in the official npz batch format and in the upstream per-class layout."""

import numpy as np
import pytest

from lopbook.data import imagenet32


def _write_batches(root, classes=4, per_class=12, n_batches=3):
    rng = np.random.default_rng(0)
    rows_by_class = {c: [] for c in range(classes)}
    for b in range(1, n_batches + 1):
        labels = rng.permutation(np.repeat(np.arange(classes), per_class // n_batches))
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        for i, c in enumerate(labels):
            rows_by_class[c].append(data[i])
        np.savez(root / f"train_data_batch_{b}.npz", data=data, labels=labels + 1,  # 1-based as official
                 mean=data.mean(0))
    return {c: np.stack(r).reshape(-1, 3, 32, 32) for c, r in rows_by_class.items()}


def test_official_batches_convert_to_per_class_split(tmp_path):
    expect = _write_batches(tmp_path)
    ds = imagenet32.ImageNet32Classes(tmp_path, num_classes=4, train_per_class=8, test_per_class=2)
    assert (tmp_path / "classes" / "3.npy").exists()
    tr, te = ds.get(2)
    assert tr.shape == (8, 3, 32, 32) and te.shape == (2, 3, 32, 32) and tr.dtype == np.float32
    # first 10 images of class 2 in batch order: 8 train then 2 test, scaled to [0, 1]
    assert np.allclose(tr, expect[2][:8] / 255.0) and np.allclose(te, expect[2][8:10] / 255.0)


def test_upstream_layout_is_read_directly(tmp_path):
    (tmp_path / "classes").mkdir()
    for c in range(3):
        np.save(tmp_path / "classes" / f"{c}.npy", np.full((700, 3, 32, 32), c * 10, dtype=np.uint8))
    ds = imagenet32.ImageNet32Classes(tmp_path, num_classes=3)
    tr, te = ds.get(1)
    assert tr.shape == (600, 3, 32, 32) and te.shape == (100, 3, 32, 32) and np.allclose(te, 10 / 255)


def test_missing_data_error_names_expected_files(tmp_path):
    with pytest.raises(imagenet32.ImageNet32Missing, match="train_data_batch_1.npz"):
        imagenet32.ImageNet32Classes(tmp_path)


def test_pairs_fresh_vs_tiled():
    fresh = [imagenet32.task_pair(0, t) for t in range(1001)]
    assert all(a != b for a, b in fresh)
    assert fresh[0] != fresh[500]  # no silent 500-task repetition
    assert fresh == [imagenet32.task_pair(0, t) for t in range(1001)]
    tiled = [imagenet32.task_pair(0, t, pairing="tiled") for t in range(1001)]
    assert tiled[0] == tiled[500] and tiled[1] == tiled[501]  # upstream behaviour, made explicit
    assert sorted(sum(tiled[:500], ())) == list(range(1000))


def test_damaged_files_name_the_file_and_the_fix(tmp_path):
    from lopbook.errors import DatasetError

    _write_batches(tmp_path)
    batch = tmp_path / "train_data_batch_2.npz"
    batch.write_bytes(batch.read_bytes()[:200])
    with pytest.raises(DatasetError, match="train_data_batch_2.npz is not a readable ImageNet32 batch"):
        imagenet32.ImageNet32Classes(tmp_path, num_classes=4, train_per_class=8, test_per_class=2)
    classes = tmp_path / "classes"
    classes.mkdir()
    np.save(classes / "0.npy", np.zeros((10, 3, 32, 32), dtype=np.uint8))
    (classes / "1.npy").write_bytes((classes / "0.npy").read_bytes()[:100])
    ds = imagenet32.ImageNet32Classes(tmp_path, num_classes=4, train_per_class=8, test_per_class=2)
    with pytest.raises(DatasetError, match="1.npy is not a readable .npy file"):
        ds.get(1)
