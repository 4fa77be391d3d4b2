"""Batched on-device image augmentation (the paper's CIFAR protocol).

Every function takes a whole ``(N, C, H, W)`` batch and a ``torch.Generator`` and does one set of tensor ops
for the batch (no per-sample Python), so it runs at GPU speed and repeats exactly under a seed.

- :func:`random_crop`: pad by ``padding`` pixels (reflect, as upstream) and cut a random ``H x W`` window per image.
- :func:`random_flip`: mirror left-right with probability ``p`` per image.
- :func:`random_rotation`: rotate by a uniform angle in ``[min_deg, max_deg]`` with zero fill (bilinear).
  Upstream rotates by an angle in [0°, 15°] (one direction only) *after* normalisation; lopbook keeps it
  **off by default** (``rotation_deg=0``) because the paper's Methods describe crop + flip, and documents it here.
- :func:`augment`: the CIFAR pipeline ``crop -> flip -> (rotation)``, applied to training batches only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    # draw on the generator's device, then move: a CPU generator must keep working for a CUDA batch
    gdev = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gdev).to(device)


def _randint(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randint(0, high, (n,), generator=generator, device=gdev).to(device)


def random_crop(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None,
                mode: str = "reflect") -> torch.Tensor:
    """Random ``H x W`` windows of the ``padding``-padded batch (one offset pair per image).

    Returns a new tensor of the input's shape; the window of image ``i`` starts at ``(dy_i, dx_i)`` in the
    padded image, ``0 <= dy_i, dx_i <= 2 * padding``.
    """
    if x.dim() != 4:
        raise ValueError(f"random_crop expects (N, C, H, W), got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return x.clone()
    n, c, h, w = x.shape
    xp = F.pad(x, (padding, padding, padding, padding), mode=mode)
    dy = _randint(2 * padding + 1, n, generator, x.device)
    dx = _randint(2 * padding + 1, n, generator, x.device)
    wp = w + 2 * padding
    # two gathers: first the rows of each window (all padded columns), then its columns
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, wp)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
    xr = xp.gather(2, rows)
    return xr.gather(3, cols)


def random_flip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"flip probability must be in [0, 1], got {p}")
    flip = _uniform(x.shape[0], generator, x.device) < p
    return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def random_rotation(x: torch.Tensor, max_deg: float = 15.0, min_deg: float = 0.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate each image by a uniform angle in ``[min_deg, max_deg]`` degrees about its centre (zero fill)."""
    if max_deg < min_deg:
        raise ValueError(f"max_deg ({max_deg}) must be >= min_deg ({min_deg})")
    n = x.shape[0]
    ang = (min_deg + (max_deg - min_deg) * _uniform(n, generator, x.device)) * (math.pi / 180.0)
    cos, sin = torch.cos(ang), torch.sin(ang)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, generator: torch.Generator | None = None, *, padding: int = 4, flip_p: float = 0.5,
            rotation_deg: float = 0.0) -> torch.Tensor:
    """The CIFAR training augmentation: reflect-padded random crop, horizontal flip, optional rotation.

    ``rotation_deg > 0`` adds upstream's one-sided rotation by ``U[0, rotation_deg]`` degrees. Never apply this
    to test or validation data (upstream augmented its test set; lopbook does not, see the book's differences appendix).
    """
    out = random_crop(x, padding, generator)
    out = random_flip(out, flip_p, generator)
    if rotation_deg > 0:
        out = random_rotation(out, rotation_deg, 0.0, generator)
    return out


__all__ = ["random_crop", "random_flip", "random_rotation", "augment"]
