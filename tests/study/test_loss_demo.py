"""Notebook 00's steps: its parameters (the defaults pass, each bad value is one line naming it), the
lattice's fit to a dense Gaussian computed here, and the descent of the loss."""

import math

import pytest
import torch

from rloss import DenseCRFLoss
from rloss.filtering import KERNELS, bilateral_features, exact_filter, permutohedral_filter
from rloss.study.loss_demo import (PHOTOS, check_demo_parameters, demo_inputs, descend, fit_scale,
                                   lattice_against_exact, loss_maps, plot_descent, plot_loss_maps)

DEMO_PARAMETERS = ("photo", "photo_size", "sigma_rgb", "sigma_xy", "kernel", "num_classes", "descent_steps")


@pytest.fixture
def demo(notebook_parameters):
    """The notebook's defaults, with ``changes``."""
    defaults = notebook_parameters("00_environment_and_loss", DEMO_PARAMETERS)
    return lambda **changes: {**defaults, **changes}


def test_the_notebook_defaults_and_every_photo_and_kernel_pass(demo):
    check_demo_parameters(**demo())
    for photo in PHOTOS:
        check_demo_parameters(**demo(photo=photo))
    for kernel in KERNELS:
        check_demo_parameters(**demo(kernel=kernel))
    check_demo_parameters(**demo(photo_size=8, num_classes=2, descent_steps=1, sigma_xy=0.5))
    check_demo_parameters(**demo(photo_size=1024))


@pytest.mark.parametrize("changes, message", [
    ({"photo": "moon"}, "photo must be one of astronaut, coffee, chelsea, rocket, immunohistochemistry; got 'moon'"),
    ({"photo_size": 7}, "photo_size must be an integer in 8..1024; got 7"),
    ({"photo_size": 1025}, "photo_size must be an integer in 8..1024; got 1025"),
    ({"photo_size": 64.5}, "photo_size must be an integer in 8..1024; got 64.5"),
    ({"photo_size": "64"}, "photo_size must be an integer in 8..1024; got '64'"),
    ({"sigma_rgb": 0}, "sigma_rgb must be a number > 0; got 0"),
    ({"sigma_xy": -1.0}, "sigma_xy must be a number > 0; got -1.0"),
    ({"sigma_xy": float("nan")}, "sigma_xy must be a number > 0; got nan"),
    ({"kernel": "lattice"}, "kernel must be one of ('auto', 'exact', 'permutohedral'), got 'lattice'"),
    ({"num_classes": 1}, "num_classes must be an integer >= 2; got 1"),
    ({"num_classes": True}, "num_classes must be an integer >= 2; got True"),
    ({"descent_steps": 0}, "descent_steps must be an integer >= 1; got 0"),
])
def test_each_bad_value_is_one_line_naming_it(demo, changes, message):
    with pytest.raises(ValueError) as info:
        check_demo_parameters(**demo(**changes))
    assert str(info.value) == message


# --------------------------------------------------------------------------------------------
# The lattice against the exact Gaussian, and the descent
# --------------------------------------------------------------------------------------------


def test_fit_scale_is_the_least_squares_scale_and_its_relative_residual():
    scale, residual = fit_scale(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]))
    assert scale == pytest.approx(0.5)
    assert residual == pytest.approx(0.5 / math.sqrt(0.5))  # |(0, 0.5)| / |(0.5, 0.5)|
    assert fit_scale(3 * torch.arange(1.0, 5.0), torch.arange(1.0, 5.0)) == pytest.approx((3.0, 0.0))


def two_halves(size=12, classes=2, seed=0):
    """A red left half and a blue right half, and random logits."""
    image = torch.zeros(1, 3, size, size)
    image[:, 0, :, : size // 2] = 200.0
    image[:, 2, :, size // 2:] = 200.0
    logits = torch.randn(1, classes, size, size, generator=torch.Generator().manual_seed(seed))
    return image, logits


def test_lattice_against_exact_fits_the_lattice_to_a_dense_gaussian():
    image, logits = two_halves(size=12, classes=3)
    probs = logits.softmax(dim=1)
    features = bilateral_features(image, 15.0, 4.0)
    distances = torch.cdist(features[0].double(), features[0].double()) ** 2
    dense = (torch.exp(-distances / 2) @ probs.flatten(2)[0].double().T).T[None].float()  # A·S by hand
    expected = fit_scale(permutohedral_filter(features, probs.flatten(2)), dense)
    assert lattice_against_exact(image, probs, 15.0, 4.0, side=64) == pytest.approx(expected, rel=1e-5)
    assert 0.3 < expected[0] < 1.0  # the lattice is a scaled Gaussian


def test_descend_lowers_the_loss_from_a_copy_of_the_logits():
    image, logits = two_halves()
    before = logits.clone()
    crf = DenseCRFLoss(weight=1.0 / 144, sigma_rgb=15.0, sigma_xy=4.0, scale_factor=1.0, kernel="exact")
    roi = torch.ones(1, 12, 12)
    history, snapshots = descend(crf, image, logits, roi, steps=6, lr=0.3)
    assert torch.equal(logits, before)
    assert len(history) == 7 and history[0] == pytest.approx(crf(image, logits.softmax(dim=1), roi).item())
    assert history[-1] < history[0]
    assert sorted(snapshots) == [0, 3, 6]
    assert torch.equal(snapshots[0], logits[0].argmax(dim=0))


# --------------------------------------------------------------------------------------------
# The notebook's set-up and its figures
# --------------------------------------------------------------------------------------------


def test_demo_inputs_are_the_photo_and_a_smooth_random_segmentation_of_the_seed():
    demo = demo_inputs("astronaut", 32, 3, seed=0)
    assert demo.image.shape == (1, 3, 32, 32) and 0 <= demo.image.min() and demo.image.max() <= 255
    assert demo.logits.shape == (1, 3, 32, 32) and demo.roi.shape == (1, 32, 32) and bool((demo.roi == 1).all())
    assert demo.probs.requires_grad and torch.allclose(demo.probs, demo.logits.softmax(dim=1))
    low = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 3  # drawn at 1/8 of the side
    assert torch.equal(demo.logits, torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear",
                                                                    align_corners=False))
    assert torch.equal(demo_inputs("astronaut", 32, 3, seed=0).logits, demo.logits)
    assert not torch.equal(demo_inputs("astronaut", 32, 3, seed=1).logits, demo.logits)


def test_loss_maps_are_the_loss_at_weight_1_and_its_gradient():
    demo = demo_inputs("coffee", 16, 2, seed=0)
    maps = loss_maps(demo, 15.0, 4.0, "exact")
    crf = DenseCRFLoss(weight=1.0, sigma_rgb=15.0, sigma_xy=4.0, scale_factor=1.0, kernel="exact")
    probs = demo.probs.detach().clone().requires_grad_(True)
    loss = crf(demo.image, probs, demo.roi)
    loss.backward()
    assert maps["loss"] == pytest.approx(loss.item()) and maps["kernel"] == "exact"
    assert torch.allclose(maps["gradient −2A·S"], probs.grad) and maps["gradient −2A·S"] is demo.probs.grad
    features = bilateral_features(demo.image, 15.0, 4.0)
    assert torch.equal(maps["S"], demo.probs.detach())
    assert torch.allclose(maps["A·S"].flatten(2), exact_filter(features, demo.probs.detach().flatten(2)), atol=1e-5)


def test_the_figures_show_each_map_and_each_kept_step():
    import matplotlib.pyplot as plt

    demo = demo_inputs("astronaut", 16, 2, seed=0)
    fig = plot_loss_maps(demo, loss_maps(demo, 15.0, 4.0, "exact"))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["photo", "S, class 0", "S, class 1", "photo", "A·S, class 0", "A·S, class 1",
                      "photo", "gradient −2A·S, class 0", "gradient −2A·S, class 1"]
    history = [3.0, 2.0, 1.0]
    snapshots = {0: torch.zeros(16, 16, dtype=torch.long), 2: torch.ones(16, 16, dtype=torch.long)}
    fig2 = plot_descent(demo.image, history, snapshots)
    assert [ax.get_title() for ax in fig2.axes] == ["DenseCRF loss", "step 0", "step 2"]
    assert list(fig2.axes[0].lines[0].get_ydata()) == history
    plt.close(fig)
    plt.close(fig2)
