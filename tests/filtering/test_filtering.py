"""A·S kernels against independent expectations."""

import numpy as np
import pytest
import torch

from inputs import PHOTOS, photo, smooth_probs
from reference_lattice import lattice_filter as reference_lattice_filter
from rloss.filtering import (
    bilateral_features,
    exact_filter,
    permutohedral_crf,
    permutohedral_filter,
    portable_filter,
)


def dense_reference(features: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A·values with the full affinity matrix in float64."""
    f = features.double()
    affinity = torch.exp(-0.5 * torch.cdist(f, f) ** 2)  # [N, P, P]
    return torch.einsum("nij,nkj->nki", affinity, values.double())


def test_features_are_xy_over_sigma_xy_and_rgb_over_sigma_rgb():
    images = torch.arange(2 * 3 * 2 * 3, dtype=torch.float32).view(2, 3, 2, 3)
    f = bilateral_features(images, sigma_rgb=2.0, sigma_xy=4.0)
    assert f.shape == (2, 6, 5)
    # pixel (row 1, column 2) of image 1
    assert f[1, 1 * 3 + 2].tolist() == pytest.approx([2 / 4, 1 / 4, *(images[1, :, 1, 2] / 2).tolist()])


@pytest.mark.parametrize("block_bytes", [None, 4096, 64])
def test_exact_equals_dense_float64(block_bytes):
    images = photo("coffee", 12).repeat(3, 1, 1, 1) + torch.tensor([0.0, 20.0, 40.0]).view(3, 1, 1, 1)
    images = images.clamp(0, 255)
    features = bilateral_features(images, 15.0, 3.0)
    values = smooth_probs(3, 4, 12).flatten(2)
    kwargs = {} if block_bytes is None else {"block_bytes": block_bytes}
    out = exact_filter(features, values, **kwargs)
    expected = dense_reference(features, values)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_exact_in_float64_is_exact():
    features = bilateral_features(photo("chelsea", 10).double(), 10.0, 2.0)
    values = smooth_probs(1, 3, 10, dtype=torch.float64).flatten(2)
    torch.testing.assert_close(exact_filter(features, values, block_bytes=800), dense_reference(features, values))


def test_lattice_matches_reference_implementation(lattice_available):
    # Small enough for the plain-Python lattice; sigmas chosen so that many
    # lattice points (and missing blur neighbours) occur.
    images = torch.cat([photo("astronaut", 16), photo("rocket", 16)])
    # Pixel grids put points exactly on simplex facets (x = 0 gives tied
    # offsets), where float32 and float64 may pick different, equally valid
    # simplices; an irrational shift moves every point off the facets.
    shift = torch.tensor([0.1 * 2**0.5, 0.1 * 3**0.5, 0.05 * 5**0.5, 0.05 * 7**0.5, 0.05 * 11**0.5])
    features = bilateral_features(images, 12.0, 3.0) + shift
    values = smooth_probs(2, 5, 16, seed=3).flatten(2)
    out = permutohedral_filter(features, values)
    for n in range(2):
        expected = reference_lattice_filter(features[n].double().numpy(), values[n].T.double().numpy()).T
        np.testing.assert_allclose(out[n].numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("size", [48, 64])
def test_lattice_approximates_exact_gaussian_up_to_its_known_scale(lattice_available, name, size):
    images = photo(name, size)
    features = bilateral_features(images, 15.0, 100.0 * size / 513)
    for values in (torch.ones(1, 1, size * size), smooth_probs(1, 4, size).flatten(2)):
        exact = exact_filter(features.double(), values.double()).float()
        lattice = permutohedral_filter(features, values)
        scale = (lattice * exact).sum() / (exact * exact).sum()
        residual = (lattice - scale * exact).norm() / lattice.norm()
        assert 0.45 <= scale <= 0.7, f"{name} {size}px: fitted scale {scale:.3f}"
        assert residual <= 0.15, f"{name} {size}px: relative residual {residual:.3f}"


def test_lattice_is_linear_and_filters_channels_and_images_independently(lattice_available):
    images = torch.cat([photo("coffee", 20), photo("chelsea", 20)])
    features = bilateral_features(images, 15.0, 5.0)
    x = smooth_probs(2, 3, 20, seed=1).flatten(2)
    y = smooth_probs(2, 3, 20, seed=2).flatten(2)
    fx, fy = permutohedral_filter(features, x), permutohedral_filter(features, y)
    torch.testing.assert_close(permutohedral_filter(features, 2 * x - 0.5 * y), 2 * fx - 0.5 * fy, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(permutohedral_filter(features[1:], x[1:, 2:3]), fx[1:, 2:3])  # one channel, one image
    torch.testing.assert_close(permutohedral_filter(features.flip(0), x.flip(0)), fx.flip(0))
    assert torch.equal(permutohedral_filter(features, x), fx)  # deterministic


@pytest.mark.parametrize("k", [1, 3, 8, 21, 33])
def test_lattice_handles_any_number_of_channels(lattice_available, k):
    features = bilateral_features(photo("rocket", 24), 15.0, 5.0)
    values = smooth_probs(1, k, 24, seed=k).flatten(2)
    out = permutohedral_filter(features, values)
    per_channel = torch.cat([permutohedral_filter(features, values[:, c : c + 1]) for c in range(k)], dim=1)
    torch.testing.assert_close(out, per_channel)


def test_fused_crf_op_equals_filter_of_masked_signal(lattice_available):
    images = torch.cat([photo("astronaut", 32), photo("coffee", 32)])
    features = bilateral_features(images, 15.0, 6.0)
    probs = smooth_probs(2, 21, 32).flatten(2)
    roi = (torch.rand(2, 32 * 32, generator=torch.Generator().manual_seed(0)) > 0.3).float()
    energy, filtered_roi = permutohedral_crf(features, probs, roi)
    signal = probs * roi.unsqueeze(1)
    filtered = permutohedral_filter(features, signal)
    torch.testing.assert_close(filtered_roi, filtered * roi.unsqueeze(1))
    torch.testing.assert_close(energy, (signal * filtered).sum(dim=(1, 2)), rtol=1e-5, atol=0)


@pytest.mark.parametrize("lattice", [permutohedral_filter, portable_filter], ids=["extension", "portable"])
def test_lattice_rejects_bad_inputs(lattice_available, lattice):
    features = torch.zeros(1, 4, 5)
    with pytest.raises(RuntimeError, match=r"values must be \[N, K, P\]"):
        lattice(features, torch.zeros(1, 2, 5))
    for dim in (1, 17):  # the lattices take 2 to 16 feature dimensions
        with pytest.raises(RuntimeError, match=r"features must be \[N, P, D\] with 2 <= D <= 16"):
            lattice(torch.zeros(1, 4, dim), torch.zeros(1, 2, 4))
    with pytest.raises(RuntimeError, match="finite"):
        lattice(torch.full((1, 4, 5), float("nan")), torch.zeros(1, 2, 4))
    with pytest.raises(RuntimeError, match="sigmas tiny"):
        lattice(torch.full((1, 4, 5), 1e6), torch.zeros(1, 2, 4))
