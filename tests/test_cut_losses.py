"""The normalized cut and KernelCut losses: values and gradients against a dense float64
reference, a partition computed by hand, class permutations, an empty ROI, the lattice."""

import math

import pytest
import torch

from inputs import dense_affinity, photo, smooth_probs
from rloss import KernelCutLoss, NormalizedCutLoss
from rloss.losses import NC_EPS


def reference_nc(affinity: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
    """Per image sum_k S_k^T A (r - S_k) / (d^T S_k) with d = A r, the CVPR 2018 form (before
    the K - sum rewrite), through autograd; classes absent from an image count 1."""
    s = (probs.double() * roi.double()[:, None]).flatten(2)  # [N, K, P]
    r = roi.double().flatten(1)  # [N, P]
    d = torch.einsum("npq,nq->np", affinity, r)
    cut = torch.einsum("nkp,npq,nkq->nk", s, affinity, r[:, None] - s)
    volume = torch.einsum("nkp,np->nk", s, d)
    return torch.where(volume > 0, cut / volume.clamp(min=1e-300), torch.ones_like(volume)).sum(1)


def cases():
    images = torch.cat([photo("coffee", 9), photo("chelsea", 9)])
    probs = smooth_probs(2, 3, 9, dtype=torch.float64)
    roi = torch.ones(2, 9, 9, dtype=torch.float64)
    roi[1, :, 6:] = 0
    return images, probs, roi


def test_nc_value_and_gradient_match_a_dense_float64_reference():
    images, probs, roi = cases()
    probs.requires_grad_(True)
    loss = NormalizedCutLoss(0.7, sigma_rgb=15, sigma_xy=3, kernel="exact")(images, probs, roi)
    (grad,) = torch.autograd.grad(loss, probs)
    ref_probs = probs.detach().clone().requires_grad_(True)
    expected = 0.7 / 2 * reference_nc(dense_affinity(images, 15, 3), ref_probs, roi).sum()
    (expected_grad,) = torch.autograd.grad(expected, ref_probs)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-9)


def test_kernelcut_is_nc_plus_densecrf_with_shared_and_separate_kernels():
    images, probs, roi = cases()
    for crf_sigmas in ((15, 3), (30, 2)):
        probs.grad = None
        probs.requires_grad_(True)
        kc = KernelCutLoss(0.7, 0.01, 15, 3, *crf_sigmas, kernel="exact")(images, probs, roi)
        (grad,) = torch.autograd.grad(kc, probs)
        ref_probs = probs.detach().clone().requires_grad_(True)
        s = (ref_probs * roi[:, None]).flatten(2)
        crf = -0.01 / 2 * torch.einsum("nkp,npq,nkq->", s, dense_affinity(images, *crf_sigmas), s)
        expected = 0.7 / 2 * reference_nc(dense_affinity(images, 15, 3), ref_probs, roi).sum() + crf
        (expected_grad,) = torch.autograd.grad(expected, ref_probs)
        assert kc.item() == pytest.approx(expected.item(), rel=1e-6)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("scale_factor", [1.0, 0.5])
def test_gradcheck_in_float64_through_the_exact_kernel(scale_factor):
    images = photo("astronaut", 6).double()
    probs = smooth_probs(1, 3, 6, dtype=torch.float64).requires_grad_(True)
    roi = torch.ones(1, 6, 6, dtype=torch.float64)
    roi[:, 4:] = 0
    nc = NormalizedCutLoss(1.0, 20, 3, scale_factor, kernel="exact", validate=False)
    kc = KernelCutLoss(1.0, 0.1, 20, 3, 10, 2, scale_factor, kernel="exact", validate=False)
    assert torch.autograd.gradcheck(lambda p: nc(images, p, roi), (probs,))
    assert torch.autograd.gradcheck(lambda p: kc(images, p, roi), (probs,))


def test_normalized_cut_of_a_hard_partition_by_hand():
    """A 1x3 image, colours 0, 0, 255, sigma_xy 1, sigma_rgb 1 (across the two colours the
    affinity is exp(-255^2/2) = 0): A = [[1, e, 0], [e, 1, 0], [0, 0, 1]], e = exp(-1/2), so
    d = (1 + e, 1 + e, 1). Partition {0, 1} | {2}: nothing cut, NC = 0. Partition {0} | {1, 2}:
    cut({0}) = e over vol({0}) = 1 + e, cut({1, 2}) = e over vol({1, 2}) = (1 + e) + 1."""
    images = torch.tensor([0.0, 0.0, 255.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3).double()
    roi = torch.ones(1, 1, 3, dtype=torch.float64)
    loss = NormalizedCutLoss(1.0, sigma_rgb=1, sigma_xy=1, kernel="exact")
    e = math.exp(-0.5)
    together = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64).view(1, 2, 1, 3)
    # Each present class's term is off by NC_EPS / (d^T S_k + NC_EPS), here under NC_EPS.
    assert loss(images, together, roi).item() == pytest.approx(0.0, abs=2 * NC_EPS)
    apart = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64).view(1, 2, 1, 3)
    expected = e / (1 + e) + e / (e + 1 + 1)
    assert loss(images, apart, roi).item() == pytest.approx(expected, abs=2 * NC_EPS)
    # A third class, absent from the image, counts 1 (0/0 taken as 1, NC_EPS), with no gradient.
    three = torch.cat([apart, torch.zeros(1, 1, 1, 3, dtype=torch.float64)], dim=1).requires_grad_(True)
    value = loss(images, three, roi)
    assert value.item() == pytest.approx(expected + 1, abs=2 * NC_EPS)
    (grad,) = torch.autograd.grad(value, three)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("make", [
    lambda k: NormalizedCutLoss(0.5, 15, 4, kernel=k),
    lambda k: KernelCutLoss(0.5, 0.02, 15, 4, 15, 4, kernel=k),
], ids=["nc", "kernelcut"])
@pytest.mark.parametrize("kernel", ["exact", "permutohedral"])
def test_losses_are_invariant_to_permuting_the_classes(make, kernel, request):
    if kernel == "permutohedral":
        request.getfixturevalue("lattice_available")
    images = torch.cat([photo("rocket", 12), photo("coffee", 12)])
    probs = smooth_probs(2, 4, 12).requires_grad_(True)
    roi = torch.ones(2, 12, 12)
    order = torch.tensor([2, 0, 3, 1])
    loss = make(kernel)
    value = loss(images, probs, roi)
    (grad,) = torch.autograd.grad(value, probs)
    permuted = probs.detach()[:, order].requires_grad_(True)
    value_p = loss(images, permuted, roi)
    (grad_p,) = torch.autograd.grad(value_p, permuted)
    assert value_p.item() == pytest.approx(value.item(), rel=1e-5)
    torch.testing.assert_close(grad_p, grad[:, order])


@pytest.mark.parametrize("kernel", ["exact", "permutohedral"])
def test_an_roi_of_zeros_gives_a_finite_value_and_a_zero_gradient(kernel, request):
    if kernel == "permutohedral":
        request.getfixturevalue("lattice_available")
    images = photo("chelsea", 10)
    probs = smooth_probs(1, 3, 10).requires_grad_(True)
    roi = torch.zeros(1, 10, 10)
    for loss in (NormalizedCutLoss(2.0, 15, 4, kernel=kernel), KernelCutLoss(2.0, 1.0, 15, 4, 15, 4, kernel=kernel)):
        value = loss(images, probs, roi)
        (grad,) = torch.autograd.grad(value, probs)
        assert value.item() == pytest.approx(2.0 * 3)  # every class absent: K, times the weight
        assert torch.count_nonzero(grad) == 0


def test_the_gradient_does_not_grow_as_a_class_mass_shrinks():
    """S_k^T A S_k / d^T S_k is homogeneous of degree one in S_k, so its gradient is of degree
    zero: scaling a class's probabilities by 1e-2 leaves that class's gradient unchanged (while
    its mass stays far above NC_EPS), rather than growing like 1/mass."""
    images = photo("coffee", 8).double()
    roi = torch.ones(1, 8, 8, dtype=torch.float64)
    loss = NormalizedCutLoss(1.0, 15, 3, kernel="exact", validate=False)
    u = smooth_probs(1, 3, 8, dtype=torch.float64)
    u[:, 2] = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = []
    for t in (1e-1, 1e-3):
        probs = u.clone()
        probs[:, 2] *= t
        probs.requires_grad_(True)
        grads.append(torch.autograd.grad(loss(images, probs, roi), probs)[0][:, 2])
        assert probs[:, 2].sum() > 1e4 * NC_EPS
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=0)


def test_lattice_and_exact_normalized_cut_agree_on_a_smooth_image(lattice_available):
    """The lattice is a scaled approximation of the Gaussian; NC is a ratio, so the scale
    cancels and the two kernels' values agree closely on a smooth photo."""
    images = photo("astronaut", 24)
    probs = smooth_probs(1, 3, 24, seed=3)
    roi = torch.ones(1, 24, 24)
    exact = NormalizedCutLoss(1.0, 30, 6, kernel="exact")(images, probs, roi).item()
    lattice = NormalizedCutLoss(1.0, 30, 6, kernel="permutohedral")(images, probs, roi).item()
    assert lattice == pytest.approx(exact, rel=0.05)  # DenseCRF's lattice value is about 0.55x the exact one


def test_float32_under_autocast_and_bad_input_named():
    images, probs, roi = cases()
    loss = NormalizedCutLoss(1.0, 15, 3, kernel="exact")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(images.float(), probs.bfloat16(), roi.float())
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss(images.float(), probs.float(), roi.float()).item(), rel=2e-2)
    with pytest.raises(ValueError, match=r"^NormalizedCutLoss: probs must sum to 1"):
        NormalizedCutLoss(1.0, 15, 3, kernel="exact", validate=True)(images, probs * 0.5, roi)
    with pytest.raises(ValueError, match=r"^KernelCutLoss: images must be RGB in 0..255"):
        KernelCutLoss(1.0, 1.0, 15, 3, 15, 3, kernel="exact", validate=True)(images * 3, probs, roi)
    with pytest.raises(ValueError, match=r"^KernelCutLoss: crf_sigma_xy must be > 0"):
        KernelCutLoss(1.0, 1.0, 15, 3, 15, 0)
    with pytest.raises(ValueError, match=r"^NormalizedCutLoss: kernel must be one of"):
        NormalizedCutLoss(1.0, 15, 3, kernel="dense")


def test_portable_lattice_matches_the_extension(lattice_available):
    images = torch.cat([photo("rocket", 16), photo("coffee", 16)])
    probs = smooth_probs(2, 3, 16).requires_grad_(True)
    roi = torch.ones(2, 16, 16)
    grads = []
    values = []
    for backend in ("extension", "torch"):
        value = KernelCutLoss(1.0, 0.01, 15, 4, 15, 4, kernel="permutohedral", backend=backend)(images, probs, roi)
        values.append(value.item())
        grads.append(torch.autograd.grad(value, probs)[0])
    assert values[1] == pytest.approx(values[0], rel=1e-4)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-6)
