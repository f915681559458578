"""The regularized losses refuse bad input with one error naming the argument and its value
(issue: bad input), not a deep error from torch or a silently wrong loss."""

import re

import pytest
import torch

from inputs import photo, smooth_probs
from rloss import DenseCRFLoss, KernelCutLoss, NormalizedCutLoss

# Each loss with small valid settings, on the exact kernel (tiny images).
LOSSES = {
    "DenseCRFLoss": lambda **kw: DenseCRFLoss(**(dict(weight=1.0, sigma_rgb=15, sigma_xy=3, kernel="exact") | kw)),
    "NormalizedCutLoss": lambda **kw: NormalizedCutLoss(
        **(dict(weight=1.0, sigma_rgb=15, sigma_xy=3, kernel="exact") | kw)),
    "KernelCutLoss": lambda **kw: KernelCutLoss(**(dict(
        nc_weight=1.0, crf_weight=0.1, nc_sigma_rgb=15, nc_sigma_xy=3, crf_sigma_rgb=10, crf_sigma_xy=2,
        kernel="exact") | kw)),
}


def inputs(n=2, k=3, size=8):
    images = torch.cat([photo(name, size) for name in ("rocket", "coffee")[:n]])
    return images, smooth_probs(n, k, size), torch.ones(n, size, size)


# 1. Settings: every weight finite and >= 0, every sigma finite and > 0, scale_factor in (0, 1].
SETTINGS = [
    ("DenseCRFLoss", "weight", float("nan"), ">= 0 and finite"),
    ("DenseCRFLoss", "weight", float("inf"), ">= 0 and finite"),
    ("DenseCRFLoss", "weight", -1.0, ">= 0 and finite"),
    ("DenseCRFLoss", "sigma_rgb", float("inf"), "> 0 and finite"),
    ("DenseCRFLoss", "sigma_xy", float("nan"), "> 0 and finite"),
    ("DenseCRFLoss", "scale_factor", float("inf"), "> 0 and <= 1"),
    ("DenseCRFLoss", "scale_factor", 2.0, "> 0 and <= 1"),
    ("NormalizedCutLoss", "weight", float("nan"), ">= 0 and finite"),
    ("NormalizedCutLoss", "sigma_xy", float("inf"), "> 0 and finite"),
    ("NormalizedCutLoss", "scale_factor", float("nan"), "> 0 and <= 1"),
    ("KernelCutLoss", "nc_weight", float("inf"), ">= 0 and finite"),
    ("KernelCutLoss", "crf_weight", float("nan"), ">= 0 and finite"),
    ("KernelCutLoss", "nc_sigma_rgb", float("inf"), "> 0 and finite"),
    ("KernelCutLoss", "crf_sigma_xy", float("-inf"), "> 0 and finite"),
    ("KernelCutLoss", "scale_factor", 1.5, "> 0 and <= 1"),
]


@pytest.mark.parametrize("loss, key, value, rule", SETTINGS, ids=lambda v: str(v))
def test_settings_that_are_not_finite_or_out_of_range_are_refused(loss, key, value, rule):
    with pytest.raises(ValueError, match=rf"^{loss}: {key} must be {re.escape(rule)}, got {value}$"):
        LOSSES[loss](**{key: value})


def test_a_setting_that_is_not_a_number_is_a_type_error():
    with pytest.raises(TypeError, match=r"^DenseCRFLoss: weight must be a number, got NoneType$"):
        LOSSES["DenseCRFLoss"](weight=None)
    with pytest.raises(TypeError, match=r"^KernelCutLoss: crf_sigma_rgb must be a number, got str$"):
        LOSSES["KernelCutLoss"](crf_sigma_rgb="wide")


def test_zero_weights_and_a_scale_factor_of_one_are_valid():
    images, probs, roi = inputs()
    assert LOSSES["DenseCRFLoss"](weight=0.0, scale_factor=1.0)(images, probs, roi).item() == 0.0
    assert LOSSES["KernelCutLoss"](nc_weight=0, crf_weight=0)(images, probs, roi).item() == 0.0


# 2. roi=None (or left out) is every pixel: the same as an ROI of ones.


@pytest.mark.parametrize("loss", LOSSES)
def test_roi_none_is_every_pixel(loss):
    images, probs, ones = inputs()
    loss_fn = LOSSES[loss]()
    expected = loss_fn(images, probs, ones)
    torch.testing.assert_close(loss_fn(images, probs, None), expected)
    torch.testing.assert_close(loss_fn(images, probs), expected)
    with pytest.raises(TypeError, match=rf"^{loss}: roi must be a torch.Tensor \[N, H, W\] or None .*, got list$"):
        loss_fn(images, probs, ones.tolist())


# 3. A batch of 0 images.


@pytest.mark.parametrize("loss", LOSSES)
def test_an_empty_batch_is_refused_up_front(loss):
    images, probs, roi = (t[:0] for t in inputs())
    for validate in (None, True, False):
        with pytest.raises(ValueError, match=rf"^{loss}: .*got a batch of 0 images$"):
            LOSSES[loss](validate=validate)(images, probs, roi)
    images, probs, roi = (t[..., :0] for t in inputs())
    with pytest.raises(ValueError, match=rf"^{loss}: images must have at least one pixel, got H x W = 8 x 0$"):
        LOSSES[loss]()(images, probs, roi)


# 4. Inputs that are not tensors.


@pytest.mark.parametrize("loss", LOSSES)
def test_inputs_that_are_not_tensors_are_a_type_error(loss):
    images, probs, roi = inputs()
    with pytest.raises(TypeError, match=rf"^{loss}: images must be a torch.Tensor \[N, C, H, W\] .*, got list$"):
        LOSSES[loss]()(images.tolist(), probs, roi)
    with pytest.raises(TypeError, match=rf"^{loss}: probs must be a torch.Tensor \[N, K, H, W\] .*, got ndarray$"):
        LOSSES[loss]()(images, probs.numpy(), roi)


# 5. Images scaled to 0..1 (sigma_rgb is in 0..255 units).


@pytest.mark.parametrize("loss", LOSSES)
def test_images_scaled_to_0_1_are_refused_by_the_value_checks(loss):
    images, probs, roi = inputs()
    scaled = images / images.max()  # largest value exactly 1
    for validate in (None, True):  # the default checks every value on its first calls
        with pytest.raises(ValueError, match=rf"^{loss}: images look scaled to 0..1 \(their largest value is 1\); "
                                             r"the loss expects RGB in 0..255 \(sigma_rgb is in 0..255 units\)"):
            LOSSES[loss](validate=validate)(scaled, probs, roi)
    assert torch.isfinite(LOSSES[loss](validate=False)(scaled, probs, roi))  # no value checks asked for


@pytest.mark.parametrize("loss", LOSSES)
def test_black_and_dark_images_in_0_255_are_still_valid(loss):
    _, probs, roi = inputs()
    black = torch.zeros(2, 3, 8, 8)  # all zero: no scale to tell (training's memory probe passes these)
    dark = black.clone()
    dark[:, :, 2:5, 3:6] = 1.5
    for images in (black, dark):
        assert torch.isfinite(LOSSES[loss](validate=True)(images, probs, roi))
