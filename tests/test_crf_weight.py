"""The relative DenseCRF weight: the same balance with pCE at every resolution and sigma_xy."""

import math

import pytest
import torch
import torch.nn.functional as F

from rloss import DenseCRFLoss
from rloss.engine.config import load_config
from rloss.crf_weight import (PUBLISHED_WEIGHT, absolute_crf_weight, crf_balance, kernel_mass_1d,
                              relative_crf_weight)


def test_kernel_mass_matches_a_brute_force_sum():
    for sigma, n in ((3.0, 17), (12.5, 64), (50.0, 256), (200.0, 40)):
        i = torch.arange(n, dtype=torch.float64)
        brute = torch.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma**2)).sum() / n
        assert kernel_mass_1d(sigma, n) == pytest.approx(brute.item(), rel=1e-9)
    # Far from the borders it is the Gaussian's integral, sqrt(2 pi) sigma.
    assert kernel_mass_1d(4.0, 100_000) == pytest.approx(math.sqrt(2 * math.pi) * 4.0, rel=1e-3)


def test_published_setting_is_relative_weight_one():
    assert absolute_crf_weight(1.0, 513, 513, 100.0, 0.5) == pytest.approx(PUBLISHED_WEIGHT, rel=1e-12)
    # At 64 px crops, sigma_xy 12.5, no resize: about 256x the published weight (4x fewer pixels per
    # side, 4x narrower kernel, minus what the borders cut off).
    w64 = absolute_crf_weight(1.0, 64, 64, 12.5, 1.0)
    assert 200 * PUBLISHED_WEIGHT < w64 < 300 * PUBLISHED_WEIGHT
    assert relative_crf_weight(w64, 64, 64, 12.5, 1.0) == pytest.approx(1.0, rel=1e-12)
    # Linear in the relative weight, and a 2x resize with a 2x sigma_xy is the same filtered problem.
    assert absolute_crf_weight(3.0, 64, 64, 12.5) == pytest.approx(3 * w64, rel=1e-12)
    assert crf_balance(1.0, 128, 128, 25.0, 0.5) == pytest.approx(crf_balance(1.0, 64, 64, 12.5, 1.0), rel=1e-12)


def _scene(size: int) -> torch.Tensor:
    """A smooth two-region colour image defined in continuous coordinates, sampled at ``size`` px."""
    t = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    y, x = torch.meshgrid(t, t, indexing="ij")
    inside = torch.sigmoid((0.3 - ((x - 0.45) ** 2 + (y - 0.55) ** 2).sqrt()) * 40)
    red = 60 + 150 * inside + 20 * x
    green = 140 - 80 * inside + 30 * y
    blue = 90 + 40 * torch.sin(3 * x)
    return torch.stack([red, green, blue])[None]


def _soft_segmentation(size: int) -> torch.Tensor:
    t = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    y, x = torch.meshgrid(t, t, indexing="ij")
    logits = torch.stack([4 * (x - 0.5), 3 * torch.cos(5 * y), 2 * x * y])[None]
    return logits.softmax(1)


def _crf_gradient_mass(size: int, weight: float, sigma_xy: float) -> float:
    """Total |d loss / d probs| of the DenseCRF term: how hard it pulls against pCE, whose total
    gradient is a mean over labeled pixels and so does not depend on the size."""
    probs = _soft_segmentation(size).requires_grad_(True)
    loss = DenseCRFLoss(weight, 15.0, sigma_xy, 1.0, kernel="exact")(_scene(size), probs, torch.ones(1, size, size))
    loss.backward()
    return probs.grad.abs().sum().item()


def test_relative_weight_keeps_the_balance_across_resolutions():
    # The same scene at 32 and 64 px, sigma_xy scaling with it (8 and 16 px, as a 2x crop would have).
    mass = {}
    for size, sigma in ((32, 8.0), (64, 16.0)):
        mass[size] = _crf_gradient_mass(size, absolute_crf_weight(1.0, size, size, sigma), sigma)
    assert mass[64] / mass[32] == pytest.approx(1.0, abs=0.1)
    # With one absolute weight instead, the balance moves by about 4x pixels times 4x kernel mass.
    same_weight = {size: _crf_gradient_mass(size, 1e-6, sigma) for size, sigma in ((32, 8.0), (64, 16.0))}
    assert same_weight[64] / same_weight[32] > 10


def test_relative_weight_keeps_the_balance_across_sigma_xy():
    # On one colour the kernel is spatial alone, and the normalisation makes the balance exact. (On a
    # varied image a wider sigma_xy also reaches other colours, which the colour term weighs down:
    # that part depends on the image and is left to the weight, as the module says.)
    flat = torch.full((1, 3, 48, 48), 120.0, dtype=torch.float64)
    mass = {}
    for sigma in (6.0, 12.0):
        probs = _soft_segmentation(48).requires_grad_(True)
        DenseCRFLoss(absolute_crf_weight(1.0, 48, 48, sigma), 15.0, sigma, 1.0, kernel="exact")(
            flat, probs, torch.ones(1, 48, 48)).backward()
        mass[sigma] = probs.grad.abs().sum().item()
    assert mass[12.0] / mass[6.0] == pytest.approx(1.0, abs=0.05)


def test_config_turns_the_relative_weight_into_the_absolute_one():
    cfg = load_config(None, ["data.crop_size=64", "loss.sigma_xy=12.5", "loss.crf_relative_weight=4"])
    assert cfg.absolute_crf_weight() == pytest.approx(absolute_crf_weight(4.0, 64, 64, 12.5), rel=1e-12)
    cfg = load_config(None, ["data.crop_size=513", "loss.sigma_xy=100", "loss.scale_factor=0.5"])
    assert cfg.absolute_crf_weight() == pytest.approx(2e-9, rel=1e-12)  # the default is the published balance
    cfg = load_config(None, ["loss.crf_weight=3e-6", "loss.crf_relative_weight=8"])
    assert cfg.absolute_crf_weight() == 3e-6  # an absolute weight, when given, is used as it is
    with pytest.raises(ValueError, match="loss.crf_relative_weight"):
        load_config(None, ["loss.crf_relative_weight=-1"])


def test_the_lattice_scale_table_is_what_its_measurement_gives():
    from rloss.crf_weight import LATTICE_SCALE, measure_lattice_scale

    assert measure_lattice_scale(2, 3, 32, 8.0, 16) == pytest.approx(LATTICE_SCALE[2][3], abs=6e-4)
    assert measure_lattice_scale(2, 6, 32, 8.0, 16) == pytest.approx(LATTICE_SCALE[2][6], abs=6e-4)
    assert measure_lattice_scale(3, 4, 20, 6.0, 8) == pytest.approx(LATTICE_SCALE[3][4], abs=6e-4)


def _lattice_gradient_mass(images: torch.Tensor, weight: float, sigma_xy) -> float:
    spatial = tuple(images.shape[2:])
    g = torch.Generator().manual_seed(0)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    low = torch.randn(1, 3, *[max(1, s // 4) for s in spatial], generator=g)
    probs = F.interpolate(low, size=spatial, mode=mode, align_corners=False).softmax(1).requires_grad_(True)
    DenseCRFLoss(weight, 15.0, sigma_xy, 1.0, kernel="permutohedral", backend="torch")(images, probs).backward()
    return probs.grad.abs().sum().item()


def test_relative_weight_keeps_the_balance_across_channel_counts_on_flat_colour():
    # Grayscale (d = 3), RGB (d = 5) and 8 bands (d = 10) of flat colour at levels the table was not
    # measured at: with each one's absolute weight the lattice's pull is RGB's, within the spread
    # of the lattice over colour levels; with RGB's weight it would be 1.4x and 0.54x.
    mass = {}
    for channels, level in ((1, 101.0), (3, 77.0), (8, 90.0)):
        flat = torch.full((1, channels, 40, 40), level)
        flat[:, :, :, 20:] += 13.0 * torch.arange(1, channels + 1).view(1, channels, 1, 1)  # two flat halves
        weight = absolute_crf_weight(1.0, 40, 40, 10.0, channels=channels)
        mass[channels] = _lattice_gradient_mass(flat, weight, 10.0)
    assert mass[1] / mass[3] == pytest.approx(1.0, abs=0.15)
    assert mass[8] / mass[3] == pytest.approx(1.0, abs=0.2)


def test_relative_weight_keeps_the_balance_of_a_volume_across_resolutions():
    # A volume and its 2x finer copy, sigma scaling with it: the same balance (exact kernel, as the
    # 2-D test above), with the voxel counts and masses of all three axes.
    def scene(size):
        t = (torch.arange(size, dtype=torch.float64) + 0.5) / size
        z, y, x = torch.meshgrid(t, t, t, indexing="ij")
        return (80 + 120 * torch.sigmoid((0.3 - ((x - 0.5) ** 2 + (y - 0.4) ** 2 + (z - 0.5) ** 2).sqrt()) * 30))[None, None]

    mass = {}
    for size, sigma in ((8, (2.0, 3.0, 3.0)), (16, (4.0, 6.0, 6.0))):
        weight = absolute_crf_weight(1.0, size, size, sigma, depth=size, channels=1)
        t = (torch.arange(size, dtype=torch.float64) + 0.5) / size
        z, y, x = torch.meshgrid(t, t, t, indexing="ij")
        probs = torch.stack([4 * (x - 0.5), 3 * torch.cos(5 * y), 2 * z * x])[None].softmax(1).requires_grad_(True)
        DenseCRFLoss(weight, 15.0, sigma, 1.0, kernel="exact")(scene(size), probs).backward()
        mass[size] = probs.grad.abs().sum().item()
    assert mass[16] / mass[8] == pytest.approx(1.0, abs=0.1)
