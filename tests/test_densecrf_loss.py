"""The DenseCRF loss: value, gradient, ROI, downscaling, precision, bad inputs."""

import pytest
import torch
import torch.nn.functional as F

from inputs import dense_affinity, photo, smooth_probs
from rloss import DenseCRFLoss
from rloss.filtering import bilateral_features


def test_exact_loss_value_matches_definition():
    images = torch.cat([photo("coffee", 10), photo("chelsea", 10)])
    probs = smooth_probs(2, 3, 10)
    roi = torch.ones(2, 10, 10)
    loss = DenseCRFLoss(weight=0.5, sigma_rgb=15, sigma_xy=4, scale_factor=1.0, kernel="exact")(images, probs, roi)
    a = dense_affinity(images, 15, 4)
    s = probs.double().flatten(2)  # [N, K, P]
    expected = -0.5 / 2 * torch.einsum("nkp,npq,nkq->", s, a, s)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_passes_gradcheck_with_exact_kernel():
    images = photo("astronaut", 6).double()
    probs = smooth_probs(1, 3, 6, dtype=torch.float64).requires_grad_(True)
    roi = torch.ones(1, 6, 6, dtype=torch.float64)
    roi[:, :, 4:] = 0
    loss = DenseCRFLoss(weight=1.0, sigma_rgb=20, sigma_xy=3, scale_factor=1.0, kernel="exact", validate=False)
    assert torch.autograd.gradcheck(lambda p: loss(images, p, roi), (probs,))
    down = DenseCRFLoss(weight=1.0, sigma_rgb=20, sigma_xy=3, scale_factor=0.5, kernel="exact", validate=False)
    assert torch.autograd.gradcheck(lambda p: down(images, p, roi), (probs,))


def test_permutohedral_gradient_is_minus_two_weight_over_n_times_filtered(lattice_available):
    from rloss.filtering import permutohedral_filter

    images = torch.cat([photo("rocket", 32), photo("coffee", 32)])
    probs = smooth_probs(2, 5, 32).requires_grad_(True)
    roi = torch.ones(2, 32, 32)
    roi[1, :8] = 0
    DenseCRFLoss(3.0, 15, 6, 1.0, kernel="permutohedral")(images, probs, roi).backward()
    s = (probs.detach() * roi[:, None]).flatten(2)
    filtered = permutohedral_filter(bilateral_features(images, 15, 6), s).view_as(probs)
    torch.testing.assert_close(probs.grad, -2 * 3.0 / 2 * filtered * roi[:, None])


@pytest.mark.parametrize("kernel", ["exact", "permutohedral"])
def test_roi_zeroes_loss_and_gradient_outside(lattice_available, kernel):
    images = photo("chelsea", 24)
    roi = torch.zeros(1, 24, 24)
    roi[:, 4:20, 2:16] = 1
    loss_fn = DenseCRFLoss(1.0, 15, 5, 1.0, kernel=kernel)
    p1 = smooth_probs(1, 4, 24, seed=1).requires_grad_(True)
    p2 = smooth_probs(1, 4, 24, seed=2)
    p2 = torch.where(roi.bool()[:, None], p1.detach(), p2).requires_grad_(True)  # differs outside the ROI only
    l1, l2 = loss_fn(images, p1, roi), loss_fn(images, p2, roi)
    assert l1.item() == pytest.approx(l2.item(), rel=1e-6)
    l1.backward()
    outside = ~roi.bool()[:, None].expand_as(p1)
    assert torch.equal(p1.grad[outside], torch.zeros_like(p1.grad[outside]))
    assert p1.grad[~outside].abs().max() > 0


@pytest.mark.parametrize("kernel", ["exact", "permutohedral"])
def test_loss_decreases_as_segmentation_moves_to_colour_regions(lattice_available, kernel):
    # Two colour regions split by a wavy boundary; a segmentation along the
    # colour boundary must beat a straight split that cuts through them.
    h = w = 32
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    region = (xs > 12 + 5 * torch.sin(ys / 4.0)).float()
    images = torch.stack([60 + 140 * region, 180 - 120 * region, 90 + 0 * region])[None]
    images = (images + torch.randn(images.shape, generator=torch.Generator().manual_seed(0)) * 5).clamp(0, 255)
    straight = (xs > 12).float()
    loss_fn = DenseCRFLoss(1e-3, 15, 8, 1.0, kernel=kernel)
    roi = torch.ones(1, h, w)

    def seg(mask, confidence):
        p = 0.5 + (mask - 0.5) * confidence
        return torch.stack([1 - p, p])[None]

    losses = [
        loss_fn(images, seg(straight, 0.9), roi).item(),
        loss_fn(images, seg(0.5 * straight + 0.5 * region, 0.9), roi).item(),
        loss_fn(images, seg(region, 0.9), roi).item(),
        loss_fn(images, seg(region, 1.0), roi).item(),
    ]
    assert losses == sorted(losses, reverse=True) and len(set(losses)) == 4, losses


def test_downscaling_matches_manual_interpolation():
    images = photo("astronaut", 16)
    probs = smooth_probs(1, 3, 16)
    roi = torch.ones(1, 16, 16)
    roi[:, :, 12:] = 0
    loss = DenseCRFLoss(1.0, 15, 8, scale_factor=0.5, kernel="exact")(images, probs, roi)
    small_images = F.interpolate(images, scale_factor=0.5, mode="nearest")
    small_probs = F.interpolate(probs, scale_factor=0.5, mode="bilinear", align_corners=False)
    small_roi = F.interpolate(roi[:, None], scale_factor=0.5, mode="nearest")[:, 0]
    s = (small_probs * small_roi[:, None]).double().flatten(2)
    expected = -torch.einsum("nkp,npq,nkq->", s, dense_affinity(small_images, 15, 4), s)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_float32_under_autocast_and_with_bfloat16_probs(lattice_available):
    images = photo("coffee", 32)
    probs = smooth_probs(1, 4, 32)
    roi = torch.ones(1, 32, 32)
    loss_fn = DenseCRFLoss(1e-2, 15, 6, 1.0, kernel="permutohedral")
    reference = loss_fn(images, probs, roi)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = loss_fn(images, probs, roi)
    low = loss_fn(images, probs.bfloat16().requires_grad_(True), roi)
    assert reference.dtype == under_autocast.dtype == low.dtype == torch.float32
    assert under_autocast.item() == pytest.approx(reference.item(), rel=1e-6)
    assert low.item() == pytest.approx(reference.item(), rel=1e-2)


def test_backward_is_repeatable_and_scales_with_grad_output(lattice_available):
    images, probs = photo("coffee", 16), smooth_probs(1, 2, 16).requires_grad_(True)
    loss = DenseCRFLoss(1.0, 15, 3, 1.0, kernel="permutohedral")(images, probs, torch.ones(1, 16, 16))
    (g1,) = torch.autograd.grad(loss, probs, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, probs, retain_graph=True)
    (g3,) = torch.autograd.grad(loss * 3, probs)
    assert torch.equal(g1, g2)
    torch.testing.assert_close(g3, 3 * g1)


def _inputs(n=1, k=3, size=8):
    return photo("rocket", size).repeat(n, 1, 1, 1), smooth_probs(n, k, size), torch.ones(n, size, size)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda i, p, r: (i[:, :, :-1], p, r), r"images must be \[N, C, H, W\] = \(1, C, 8, 8\)"),
        (lambda i, p, r: (i, p[0], r), r"probs must be \[N, K, H, W\]"),
        (lambda i, p, r: (i, p, r[:, :4]), r"roi must be \[N, H, W\]"),
        (lambda i, p, r: (i, p.long(), r), "probs must be a floating-point tensor"),
        (lambda i, p, r: (i, p.index_fill(2, torch.tensor([1]), float("nan")), r), "probs contains NaN"),
        (lambda i, p, r: (i, p * 0.5, r), "probs must sum to 1"),
        (lambda i, p, r: (i, p * 3 - 1, r), "probs must be probabilities"),
        (lambda i, p, r: (i / 127.5 - 1, p, r), r"images must be RGB in 0..255"),
        (lambda i, p, r: (i * 2, p, r), r"images must be RGB in 0..255"),
        (lambda i, p, r: (i, p, r * 2), r"roi must be in 0..1"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, message):
    images, probs, roi = mutate(*_inputs())
    with pytest.raises(ValueError, match=message):
        DenseCRFLoss(1.0, 15, 3, 1.0, kernel="exact")(images, probs, roi)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kernel="fast"), "kernel must be one of"),
        (dict(sigma_rgb=0), "sigma_rgb must be > 0"),
        (dict(scale_factor=-1), "scale_factor must be > 0"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, message):
    settings = dict(weight=1.0, sigma_rgb=15, sigma_xy=3, scale_factor=1.0) | kwargs
    with pytest.raises(ValueError, match=message):
        DenseCRFLoss(**settings)


@pytest.mark.parametrize("kernel", ["exact", "permutohedral"])
def test_default_checks_run_on_scheduled_calls_and_catch_nan_on_every_call(lattice_available, kernel):
    from rloss import losses

    images, probs, roi = _inputs()
    halved = probs * 0.5  # in range, but sums to 0.5: only a full check sees it
    loss_fn = DenseCRFLoss(1.0, 15, 3, 1.0, kernel=kernel)
    for _ in range(losses.CHECK_FIRST_CALLS):
        with pytest.raises(ValueError, match="probs must sum to 1"):  # the first calls: full checks
            loss_fn(images, halved, roi)
    loss_fn(images, halved, roi)  # call CHECK_FIRST_CALLS: not a scheduled check
    # NaN and infinity: on every call, through the loss value or the op's own error,
    # then named by the full checks.
    nan_probs = probs.index_fill(2, torch.tensor([1]), float("nan"))
    with pytest.raises(ValueError, match="probs contains NaN"):
        loss_fn(images, nan_probs, roi)
    with pytest.raises(ValueError, match="images contains NaN"):
        loss_fn(images.index_fill(3, torch.tensor([2]), float("nan")), probs, roi)
    outside_roi = roi.clone()
    outside_roi[:, 0] = 0
    with pytest.raises(ValueError, match="probs contains NaN"):  # outside the ROI too
        loss_fn(images, probs.index_fill(2, torch.tensor([0]), float("inf")), outside_roi)
    while loss_fn._calls % losses.CHECK_EVERY != 0:
        loss_fn(images, probs, roi)
    with pytest.raises(ValueError, match="probs must sum to 1"):
        loss_fn(images, halved, roi)
    # validate=True checks everything on every call; validate=False no values.
    always = DenseCRFLoss(1.0, 15, 3, 1.0, kernel=kernel, validate=True)
    always._calls = losses.CHECK_FIRST_CALLS + 1
    with pytest.raises(ValueError, match="probs must sum to 1"):
        always(images, halved, roi)
    assert not torch.isfinite(DenseCRFLoss(1.0, 15, 3, 1.0, kernel=kernel, validate=False)(images, nan_probs, roi))


def test_infinite_values_are_reported_as_such():
    images, probs, roi = _inputs()
    with pytest.raises(ValueError, match="roi contains NaN or infinite"):
        DenseCRFLoss(1.0, 15, 3, 1.0, kernel="exact")(images, probs, roi.index_fill(1, torch.tensor([0]), float("inf")))
    with pytest.raises(ValueError, match="images contains NaN or infinite"):
        DenseCRFLoss(1.0, 15, 3, 1.0, kernel="exact")(images.index_fill(2, torch.tensor([0]), float("-inf")), probs, roi)
