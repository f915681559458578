"""The portable lattice (torch operations) against the C++ lattice and the paper's reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inputs import photo, smooth_probs
from reference_lattice import lattice_filter as reference_lattice_filter
from rloss import DenseCRFLoss
from rloss.filtering import bilateral_features, permutohedral_crf, permutohedral_filter, portable_crf, portable_filter
from rloss.filtering.portable import locate

NAMES = ("astronaut", "coffee", "chelsea")


def photos(n: int, h: int, w: int) -> torch.Tensor:
    """``n`` sample photos at h x w (odd sizes too)."""
    return torch.cat([F.interpolate(photo(name, 128), size=(h, w), mode="area") for name in NAMES[:n]])


def banded_roi(n: int, h: int, w: int) -> torch.Tensor:
    roi = torch.ones(n, h, w)
    roi[:, h // 3 : h // 3 + 6] = 0  # a zeroed band, as padding leaves
    return roi


def relative_max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 21])
def test_portable_equals_cpp_lattice_on_photos(lattice_available, n, k):
    h, w = 65, 47
    features = bilateral_features(photos(n, h, w), 15.0, 100.0 * h / 513)
    probs = smooth_probs(n, k, 72, seed=k)[:, :, :h, :w].flatten(2)
    probs = probs / probs.sum(dim=1, keepdim=True)
    roi = banded_roi(n, h, w).flatten(1)

    filtered = portable_filter(features, probs)
    expected = permutohedral_filter(features, probs, backend="extension")
    assert relative_max_error(filtered, expected) <= 1e-4

    energy, gradient = portable_crf(features, probs, roi, -0.25)
    expected_energy, expected_gradient = permutohedral_crf(features, probs, roi, -0.25, backend="extension")
    assert float(((energy - expected_energy).abs() / expected_energy.abs()).max()) <= 1e-5
    assert relative_max_error(gradient, expected_gradient) <= 1e-4
    assert torch.equal(gradient[:, :, roi[0] == 0], torch.zeros_like(gradient[:, :, roi[0] == 0]))

    again = portable_crf(features, probs, roi, -0.25)
    assert torch.equal(again[0], energy) and torch.equal(again[1], gradient)  # bitwise, run to run


def test_portable_loss_and_gradient_equal_the_extensions(lattice_available):
    h, w = 65, 47
    images, roi = photos(2, h, w), banded_roi(2, h, w)
    probs = smooth_probs(2, 21, 72)[:, :, :h, :w]
    probs = probs / probs.sum(dim=1, keepdim=True)
    results = {}
    for backend in ("extension", "torch"):
        p = probs.clone().requires_grad_(True)
        loss = DenseCRFLoss(2e-9, 15, 100, 1.0, kernel="permutohedral", backend=backend)(images, p, roi)
        loss.backward()
        results[backend] = (loss.item(), p.grad)
    assert results["torch"][0] == pytest.approx(results["extension"][0], rel=1e-5)
    assert relative_max_error(results["torch"][1], results["extension"][1]) <= 1e-4


def test_portable_matches_the_papers_reference_lattice():
    # Runs without the extension: the float64 plain-Python lattice is the expectation.
    images = torch.cat([photo("astronaut", 16), photo("rocket", 16)])
    # An irrational shift moves pixel-grid points off simplex facets, where float32
    # and float64 may pick different, equally valid simplices.
    shift = torch.tensor([0.1 * 2**0.5, 0.1 * 3**0.5, 0.05 * 5**0.5, 0.05 * 7**0.5, 0.05 * 11**0.5])
    features = bilateral_features(images, 12.0, 3.0) + shift
    values = smooth_probs(2, 5, 16, seed=3).flatten(2) - 0.3  # negative values too
    out = portable_filter(features, values)
    for i in range(2):
        expected = reference_lattice_filter(features[i].double().numpy(), values[i].T.double().numpy()).T
        np.testing.assert_allclose(out[i].numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_locate_gives_a_simplex_of_the_lattice_around_the_point():
    # Properties of the enclosing simplex: weights are barycentric (>= 0, sum 1), every
    # vertex is a lattice point (all coordinates congruent mod D+1 once the implied last
    # coordinate is added), and the weighted vertices reproduce the elevated point.
    from reference_lattice import elevation_matrix

    features = torch.randn(500, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4
    coords, weights = locate(features.float())
    assert (weights >= -1e-6).all() and torch.allclose(weights.sum(-1), torch.ones(500), atol=1e-5)
    full = torch.cat([coords, -coords.sum(-1, keepdim=True)], dim=-1)  # [P, 6, 6], zero sum
    assert ((full - full[..., :1]) % 6 == 0).all()
    elevated = features @ torch.from_numpy(elevation_matrix(5)).T
    rebuilt = (weights.double().unsqueeze(-1) * full.double()).sum(dim=1)
    torch.testing.assert_close(rebuilt, elevated, rtol=0, atol=1e-3)


def test_portable_crf_rejects_a_roi_of_another_shape():
    # The filter's own input errors are checked for both lattices in test_filtering.py.
    with pytest.raises(RuntimeError, match="roi must be"):
        portable_crf(torch.zeros(1, 4, 5), torch.zeros(1, 2, 4), torch.ones(1, 3))


def test_fixed_point_splat_is_exact_whatever_the_order_of_additions(lattice_available, monkeypatch):
    # The splat of CUDA and other devices, run here: its sums are exact integers, so
    # splitting the cumulative sum into many chunks changes no bit of the result.
    from rloss.filtering import portable

    monkeypatch.setattr(portable, "fixed_point_splat", lambda device: True)
    features = bilateral_features(photos(2, 33, 29), 15.0, 6.0)
    probs = smooth_probs(2, 21, 40, seed=5)[:, :, :33, :29].flatten(2)
    roi = banded_roi(2, 33, 29).flatten(1)
    energy, gradient = portable_crf(features, probs, roi, -1.0)
    expected_energy, expected_gradient = permutohedral_crf(features, probs, roi, -1.0, backend="extension")
    assert float(((energy - expected_energy).abs() / expected_energy.abs()).max()) <= 1e-5
    assert relative_max_error(gradient, expected_gradient) <= 1e-4
    monkeypatch.setattr(portable, "SPLAT_CHUNK_BYTES", 12 * 97)  # 97 entries a chunk
    chunked = portable_crf(features, probs, roi, -1.0)
    assert torch.equal(chunked[0], energy) and torch.equal(chunked[1], gradient)
    assert torch.equal(portable_filter(features, -probs), -portable_filter(features, probs))  # rounding to nearest is odd
