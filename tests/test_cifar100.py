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


@pytest.mark.parametrize("cut", [5, 500, -10])
def test_truncated_batch_names_the_file_and_the_fix(tmp_path, cut):
    from lopbook.errors import DatasetError

    _write(tmp_path, n_per_class=51, n_test=1)
    train = tmp_path / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:cut])
    with pytest.raises(DatasetError, match="is not a readable CIFAR-100 python batch") as err:
        cifar100.load_cifar100(tmp_path, download_if_missing=False)
    assert str(train) in str(err.value) and cifar100.ARCHIVE_MD5 in str(err.value)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_batch_that_would_run_code_is_refused(tmp_path):
    from lopbook.errors import DatasetError

    _write(tmp_path, n_per_class=51, n_test=1)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-100-python" / "test", "wb") as fh:
        pickle.dump({b"data": _Payload(marker), b"fine_labels": [0]}, fh)
    with pytest.raises(DatasetError, match=r"refusing to load io\.open"):
        cifar100.load_cifar100(tmp_path, download_if_missing=False)
    assert not marker.exists()


def _archive(tmp_path):
    import tarfile

    src = tmp_path / "src"
    _write(src, n_per_class=51, n_test=1)
    archive = tmp_path / "root" / cifar100.ARCHIVE
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-100-python", arcname="cifar-100-python")
    return archive


def test_archive_in_root_is_checked_against_the_published_md5(tmp_path):
    from lopbook.errors import DatasetError

    archive = _archive(tmp_path)
    root = archive.parent
    with pytest.raises(DatasetError, match=f"not the published {cifar100.ARCHIVE_MD5}"):
        cifar100.load_cifar100(root, download_if_missing=False)
    assert not (root / "cifar-100-python").exists(), "an unverified archive must not be unpacked"
    # the same archive with its own checksum unpacks and loads
    cifar100.unpack(archive, root, md5=cifar100.md5sum(archive))
    assert cifar100.load_cifar100(root, download_if_missing=False).val_x.shape == (5000, 3, 32, 32)


def test_cut_archive_is_refused(tmp_path):
    from lopbook.errors import DatasetError

    archive = _archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[:1000])
    with pytest.raises(DatasetError, match="cannot unpack"):
        cifar100.unpack(archive, archive.parent, md5=cifar100.md5sum(archive))
