"""Digit x transform classes: disjoint images, balanced classes, the transformation each class names."""

import pytest
import torch

from lopbook.data.digit_transforms import TRANSFORMS, digit_transform_classes
from lopbook.data.standins import ImageData


def _source(n_per_digit=6, n_digits=3):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_per_digit * n_digits, 4, 4), generator=g, dtype=torch.uint8)
    labels = torch.arange(n_digits).repeat_interleave(n_per_digit)
    return ImageData(images, labels, "toy", True, "toy digits")


def test_classes_are_digit_times_transform_and_use_each_image_once():
    src = _source()
    d = digit_transform_classes(("identity", "rot90", "invert"), source=src, pad=0)
    assert d.num_classes == 9 and torch.bincount(d.labels).tolist() == [2] * 9
    for k, name in enumerate(("identity", "rot90", "invert")):
        for digit in range(3):
            originals = src.images[src.labels == digit][k::3]  # round-robin share of this class
            assert torch.equal(d.images[d.labels == k * 3 + digit], TRANSFORMS[name](originals))
    # every source image appears exactly once (undo each class's transformation and compare as a multiset)
    undo = {"identity": lambda x: x, "rot90": lambda x: torch.rot90(x, -1, dims=(-2, -1)), "invert": lambda x: 255 - x}
    back = torch.cat([undo[n](d.images[(d.labels // 3) == k]) for k, n in enumerate(("identity", "rot90", "invert"))])
    key = lambda x: sorted(map(bytes, x.flatten(1).numpy()))  # noqa: E731
    assert key(back) == key(src.images)


def test_padding_happens_before_inversion():
    d = digit_transform_classes(("invert",), source=_source(2, 1), pad=2)
    assert d.images.shape[-1] == 8 and (d.images[:, 0, :] == 255).all()  # a white border, not a black one


def test_bad_transforms_fail_with_the_choices():
    with pytest.raises(ValueError, match="choose from"):
        digit_transform_classes(("rot180",), source=_source())
    with pytest.raises(ValueError, match="once"):
        digit_transform_classes(("identity", "identity"), source=_source())
