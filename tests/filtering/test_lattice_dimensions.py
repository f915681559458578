"""The C++ lattice for any feature dimension D from 2 to 16 (spatial axes + channels): against
the float64 plain-Python lattice of the paper, both ops against each other, the D range."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reference_lattice import lattice_filter as reference_lattice_filter

DIMS = [2, 3, 4, 5, 6, 10, 16]


def smooth_features(n: int, size: int, dim: int, seed: int = 0) -> torch.Tensor:
    """[n, size*size, dim]: x and y over a sigma of 2.5 pixels, then dim - 2 smooth random fields
    whose amplitude falls as 1/sqrt(dim - 2), so that neighbouring pixels stay about half a unit
    apart in any D (the lattice spacing is about one unit) and the blur mixes them; seeded
    offsets keep pixels off the simplex facets (see test_filtering)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    xy = torch.stack([xs, ys], -1).reshape(1, size * size, 2).expand(n, -1, -1) / 2.5
    coarse = torch.randn(n, max(dim - 2, 1), 3, 3, generator=g) * (2.0 / max(dim - 2, 1) ** 0.5)
    fields = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True).flatten(2).transpose(1, 2)
    fields = fields[..., : dim - 2]
    offsets = torch.rand(dim, generator=g)
    return (torch.cat([xy, fields], -1) + offsets).contiguous()


def random_values(n: int, k: int, p: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, k, p, generator=torch.Generator().manual_seed(seed))


def random_roi(n: int, p: int, seed: int = 2) -> torch.Tensor:
    return (torch.rand(n, p, generator=torch.Generator().manual_seed(seed)) > 0.25).float()


@pytest.mark.parametrize("dim", DIMS)
def test_cpu_lattice_matches_the_float64_reference(lattice_available, dim):
    features, values = smooth_features(2, 10, dim), random_values(2, 3, 100)
    out = torch.ops.rloss.permutohedral_filter(features, values)
    for n in range(2):
        expected = reference_lattice_filter(features[n].double().numpy(), values[n].T.double().numpy()).T
        # The float32 lattice places and weights every pixel as the float64 one does (no pixel
        # lies within float32 rounding of a facet), so the two differ by float32 rounding only:
        # of the elevated coordinates (of order 10-100, so ~1e-6 absolute), hence of the
        # barycentric weights, and of the splat, blur and slice sums (a few dozen terms each).
        # Measured: 1.5e-7 (D = 2) to 5e-7 (D = 16) of the largest output; 1e-5 leaves a 20x
        # margin, while one wrong vertex, key or blur neighbour errs by 1e-2 or more.
        np.testing.assert_allclose(out[n].numpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("dim", DIMS)
def test_the_crf_op_equals_the_filter_op_on_the_masked_signal(lattice_available, dim):
    features, probs, roi = smooth_features(2, 16, dim, seed=3), random_values(2, 5, 256, seed=4), random_roi(2, 256)
    energy, out = torch.ops.rloss.permutohedral_crf(features, probs, roi, -0.5)
    signal = probs * roi.unsqueeze(1)
    filtered = torch.ops.rloss.permutohedral_filter(features, signal)
    # The same lattice and sums; only the output's scaling (-0.5 * roi) and the energy's
    # summation order (double per pixel row in C++, float32 here) differ.
    torch.testing.assert_close(out, -0.5 * roi.unsqueeze(1) * filtered)
    torch.testing.assert_close(energy, (signal * filtered).sum(dim=(1, 2)), rtol=1e-5, atol=0)
    assert energy.shape == (2,) and (energy > 0).all()


@pytest.mark.parametrize("dim", [1, 17])
@pytest.mark.parametrize("op", ["permutohedral_filter", "permutohedral_crf"])
def test_a_feature_dimension_outside_2_to_16_fails_with_one_line(lattice_available, dim, op):
    features, values = torch.zeros(1, 4, dim), torch.zeros(1, 2, 4)
    args = (features, values) if op == "permutohedral_filter" else (features, values, torch.ones(1, 4), 1.0)
    with pytest.raises(RuntimeError) as raised:
        getattr(torch.ops.rloss, op)(*args)
    message = str(raised.value).strip()
    assert message == (f"{op}: features must be [N, P, D] with 2 <= D <= 16 (spatial axes + channels), "
                       f"got [1, 4, {dim}]")


def test_the_feature_range_check_uses_the_actual_dimension(lattice_available):
    # Coordinates grow with D (elevation sums D scaled features): |features| of 1e4 fit the
    # 21-bit key fields at D = 2 but not at D = 16 (limits about 1.5e5 and 3.3e3).
    values = torch.ones(1, 1, 4)
    small = torch.ops.rloss.permutohedral_filter(torch.full((1, 4, 2), 1e4), values)
    assert torch.isfinite(small).all()
    with pytest.raises(RuntimeError, match="sigmas tiny"):
        torch.ops.rloss.permutohedral_filter(torch.full((1, 4, 16), 1e4), values)
    with pytest.raises(RuntimeError, match="sigmas tiny"):
        torch.ops.rloss.permutohedral_filter(torch.full((1, 4, 2), 2e5), values)


@pytest.mark.parametrize("dim", DIMS)
def test_each_dimension_blurs_across_pixels_and_batches_images_independently(lattice_available, dim):
    features, values = smooth_features(3, 12, dim, seed=5), random_values(3, 2, 144, seed=6)
    out = torch.ops.rloss.permutohedral_filter(features, values)
    alone = torch.cat([torch.ops.rloss.permutohedral_filter(features[i : i + 1], values[i : i + 1]) for i in range(3)])
    assert torch.equal(out, alone)
    # A pixel's output depends on its neighbours': changing one value moves other outputs.
    bumped = values.clone()
    bumped[0, 0, 70] += 1.0
    moved = (torch.ops.rloss.permutohedral_filter(features, bumped) - out)[0, 0].abs()
    assert (moved > 1e-3).sum() > 1


def features_with_zero_runs(p: int, dim: int, seed: int) -> torch.Tensor:
    """[1, p, dim]: random features with some coordinates exactly 0 (as the colour of a black
    pixel is), so that elevated coordinates tie exactly in exact arithmetic."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(1, p, dim, generator=g) * 2.0
    zero = torch.rand(1, p, dim, generator=g) < 0.4
    zero[:, :, 2:5] |= torch.rand(1, p, 1, generator=g) < 0.5  # a black pixel's three channels together
    return features.masked_fill(zero, 0.0).contiguous()


@pytest.mark.parametrize("dim", list(range(2, 17)))
def test_exact_ties_of_zero_features_are_kept_as_in_the_float64_reference(lattice_available, dim):
    # Fusing a product into an addition in one place and not another (FMA contraction) once
    # put such coordinates an ulp apart at D = 9-11: another simplex, other lattice points,
    # outputs 2-3% off at black pixels. The float64 reference keeps every such tie.
    features, values = features_with_zero_runs(64, dim, seed=dim), random_values(1, 2, 64, seed=dim)
    out = torch.ops.rloss.permutohedral_filter(features, values)
    expected = reference_lattice_filter(features[0].double().numpy(), values[0].T.double().numpy()).T
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
