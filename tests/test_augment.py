"""Batched augmentation: exact crops and mirrors, seeded repeatability."""

import torch
import torch.nn.functional as F

from lopbook.data.augment import augment, random_crop, random_flip, random_rotation


def _batch(n=16, c=3, h=8, w=8):
    return torch.arange(n * c * h * w, dtype=torch.float32).view(n, c, h, w)


def test_crop_is_an_exact_shifted_window_of_the_reflect_padded_image():
    x = _batch()
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    xp = F.pad(x, (2, 2, 2, 2), mode="reflect")
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[i], xp[i, :, dy:dy + 8, dx:dx + 8])]
        assert len(hits) == 1, f"image {i} is not exactly one window"
        offsets.add(hits[0])
    assert len(offsets) > 3  # offsets really vary across the batch


def test_flip_is_exact_mirror_or_identity():
    x = _batch(n=64)
    out = random_flip(x, 0.5, torch.Generator().manual_seed(1))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(64)]
    same = [torch.equal(out[i], x[i]) for i in range(64)]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert 15 < sum(flipped) < 49
    assert torch.equal(random_flip(x, 1.0), x.flip(-1)) and torch.equal(random_flip(x, 0.0), x)


def test_seeded_and_shapes():
    x = torch.rand(10, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(5), rotation_deg=15)
    b = augment(x, torch.Generator().manual_seed(5), rotation_deg=15)
    c = augment(x, torch.Generator().manual_seed(6), rotation_deg=15)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_rotation_by_zero_is_identity_and_90_degrees_rotates():
    x = torch.rand(4, 3, 8, 8)
    assert torch.allclose(random_rotation(x, 0.0, 0.0), x, atol=1e-5)
    r = random_rotation(x, 90.0, 90.0)
    assert torch.allclose(r, torch.rot90(x, 1, (2, 3)), atol=1e-4) or torch.allclose(r, torch.rot90(x, -1, (2, 3)),
                                                                                      atol=1e-4)
