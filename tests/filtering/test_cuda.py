"""The CUDA lattice: built everywhere a CUDA toolkit exists; run where a GPU is, against the
portable lattice on the same GPU and the C++ lattice on the CPU."""

import os
import subprocess
import sys

import pytest
import torch

from inputs import photo, smooth_probs
from rloss import DenseCRFLoss
from rloss.filtering import (
    _extension,
    bilateral_features,
    permutohedral_crf,
    permutohedral_filter,
    portable_crf,
    portable_filter,
    resolve_backend,
    resolve_kernel,
)

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@pytest.mark.slow
@pytest.mark.skipif(_extension.cuda_toolkit_home() is None, reason="needs nvcc (no CUDA toolkit found)")
def test_extension_builds_with_cuda_for_a100_and_h100_and_registers_both_ops(tmp_path):
    # No GPU is needed to compile, link and load the CUDA part (a library of its
    # own): a syntax, template or link error in the CUDA sources fails here.
    script = (
        "import torch\n"
        "from rloss.filtering import _extension\n"
        "_extension.load_cuda_extension()\n"
        "for op in ('permutohedral_filter', 'permutohedral_crf'):\n"
        "    for key in ('CPU', 'CUDA'):\n"
        "        assert torch._C._dispatch_has_kernel_for_dispatch_key(f'rloss::{op}', key), (op, key)\n"
        "print('registered')\n"
    )
    env = dict(os.environ, RLOSS_FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST="8.0;9.0", TORCH_EXTENSIONS_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "registered" in out.stdout, f"CUDA build failed:\n{out.stderr[-4000:]}"


def _inputs(n, k, size, device):
    images = torch.cat([photo(name, size) for name in ("astronaut", "coffee", "chelsea", "rocket")[:n]])
    features = bilateral_features(images, 15.0, 100.0 * size / 513)
    probs = smooth_probs(n, k, size).flatten(2)
    roi = torch.ones(n, size * size)
    roi[:, : size * 2] = 0  # a padded band
    return features.to(device), probs.to(device), roi.to(device)


@needs_gpu
@pytest.mark.parametrize("n, k, size", [(1, 1, 24), (2, 21, 64), (3, 5, 97), (4, 33, 128)])
def test_cuda_lattice_equals_cpu_lattice(lattice_available, n, k, size):
    features, probs, roi = _inputs(n, k, size, "cpu")
    cpu_filtered = permutohedral_filter(features, probs)
    cpu_energy, cpu_out = permutohedral_crf(features, probs, roi, -0.5)
    gpu_filtered = permutohedral_filter(features.cuda(), probs.cuda()).cpu()
    gpu_energy, gpu_out = (t.cpu() for t in permutohedral_crf(features.cuda(), probs.cuda(), roi.cuda(), -0.5))
    scale = cpu_filtered.abs().max()
    assert ((gpu_filtered - cpu_filtered).abs().max() / scale) <= 1e-3
    assert ((gpu_out - cpu_out).abs().max() / cpu_out.abs().max()) <= 1e-3
    assert ((gpu_energy - cpu_energy).abs() / cpu_energy.abs()).max() <= 1e-4


def _features_of_dim(features, dim, seed=7):
    """(x, y, r, g, b) features cut to their first ``dim`` or extended by ``dim - 5`` smooth random
    fields (amplitude falling as 1/sqrt(dim - 5), so that the blur still mixes pixels)."""
    if dim <= 5:
        return features[..., :dim].contiguous()
    n, p, _ = features.shape
    size = round(p**0.5)
    coarse = torch.randn(n, dim - 5, 8, 8, generator=torch.Generator().manual_seed(seed)) * (3.0 / (dim - 5) ** 0.5)
    extra = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return torch.cat([features, extra.flatten(2).transpose(1, 2)], -1).contiguous()


@needs_gpu
@pytest.mark.parametrize("dim", [3, 4, 6, 10, 16])
def test_cuda_lattice_equals_cpu_lattice_in_other_feature_dimensions_and_is_deterministic(lattice_available, dim):
    _extension.require_lattice("cuda")
    features, probs, roi = _inputs(2, 21, 64, "cpu")
    features = _features_of_dim(features, dim)
    ops = torch.ops.rloss
    cpu_filtered = ops.permutohedral_filter(features, probs)
    cpu_energy, cpu_out = ops.permutohedral_crf(features, probs, roi, -0.5)
    gpu_filtered = ops.permutohedral_filter(features.cuda(), probs.cuda())
    gpu_crf = ops.permutohedral_crf(features.cuda(), probs.cuda(), roi.cuda(), -0.5)
    gpu_energy, gpu_out = (t.cpu() for t in gpu_crf)
    # The D = 5 test's tolerances (test_cuda_lattice_equals_cpu_lattice).
    assert ((gpu_filtered.cpu() - cpu_filtered).abs().max() / cpu_filtered.abs().max()) <= 1e-3
    assert ((gpu_out - cpu_out).abs().max() / cpu_out.abs().max()) <= 1e-3
    assert ((gpu_energy - cpu_energy).abs() / cpu_energy.abs()).max() <= 1e-4
    for _ in range(2):  # no atomics: the same bits run after run
        assert torch.equal(ops.permutohedral_filter(features.cuda(), probs.cuda()), gpu_filtered)
        again = ops.permutohedral_crf(features.cuda(), probs.cuda(), roi.cuda(), -0.5)
        assert torch.equal(again[0], gpu_crf[0]) and torch.equal(again[1], gpu_crf[1])


@needs_gpu
@pytest.mark.parametrize("n, k, size", [(1, 1, 24), (2, 21, 64), (3, 5, 97)])
def test_cuda_op_equals_portable_lattice_on_the_same_gpu_and_both_the_cpu_op(lattice_available, n, k, size):
    features, probs, roi = _inputs(n, k, size, "cuda")
    cuda_energy, cuda_out = permutohedral_crf(features, probs, roi, -0.5, backend="extension")
    portable_energy, portable_out = portable_crf(features, probs, roi, -0.5)
    cpu_energy, cpu_out = permutohedral_crf(features.cpu(), probs.cpu(), roi.cpu(), -0.5, backend="extension")
    scale = cpu_out.abs().max()

    def error(out, energy, expected_out, expected_energy):
        out_error = (out.cpu() - expected_out.cpu()).abs().max() / scale
        return out_error, ((energy.cpu() - expected_energy.cpu()).abs() / expected_energy.cpu().abs()).max()

    # Elementwise on the same GPU: the portable lattice is the CUDA op's step-by-step
    # oracle. nvcc contracts multiply-adds, so a pixel on a simplex facet may take the
    # other, equally valid simplex: the CUDA op gets the CUDA-vs-CPU test's tolerances.
    out_error, energy_error = error(cuda_out, cuda_energy, portable_out, portable_energy)
    assert out_error <= 1e-3 and energy_error <= 1e-4
    out_error, energy_error = error(cuda_out, cuda_energy, cpu_out, cpu_energy)
    assert out_error <= 1e-3 and energy_error <= 1e-4
    # The portable lattice runs the same float32 operations on both devices.
    out_error, energy_error = error(portable_out, portable_energy, cpu_out, cpu_energy)
    assert out_error <= 1e-4 and energy_error <= 1e-5
    filtered = portable_filter(features, probs)
    expected = permutohedral_filter(features, probs, backend="extension")
    assert (filtered - expected).abs().max() <= 1e-3 * expected.abs().max()


@needs_gpu
@pytest.mark.parametrize("lattice", ["portable", "extension"])
def test_each_lattice_on_cuda_is_deterministic(lattice, request):
    if lattice == "extension":
        request.getfixturevalue("lattice_available")  # builds or loads the extension, as the other tests do
    crf = portable_crf if lattice == "portable" else permutohedral_crf
    features, probs, roi = _inputs(2, 21, 96, "cuda")
    first = crf(features, probs, roi, 1.0)
    for _ in range(3):
        again = crf(features, probs, roi, 1.0)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@needs_gpu
def test_loss_on_cuda_uses_the_cuda_lattice_and_matches_cpu(lattice_available):
    assert resolve_kernel("auto", 64 * 64, "cuda") == resolve_kernel("auto", 4 * 4, "cuda") == "permutohedral"
    assert resolve_backend("auto", "cuda") == "extension"
    images = torch.cat([photo("coffee", 64), photo("rocket", 64)])
    probs = smooth_probs(2, 21, 64)
    roi = torch.ones(2, 64, 64)
    for kernel in ("permutohedral", "exact"):
        loss_fn = DenseCRFLoss(2e-9, 15, 100, 0.5, kernel=kernel)
        p_cpu = probs.clone().requires_grad_(True)
        p_gpu = probs.cuda().requires_grad_(True)
        l_cpu, l_gpu = loss_fn(images, p_cpu, roi), loss_fn(images.cuda(), p_gpu, roi.cuda())
        l_cpu.backward()
        l_gpu.backward()
        assert l_gpu.item() == pytest.approx(l_cpu.item(), rel=1e-4), kernel
        assert (p_gpu.grad.cpu() - p_cpu.grad).abs().max() <= 1e-3 * p_cpu.grad.abs().max(), kernel


def test_cpu_only_build_refuses_cuda_tensors_with_a_clear_message(lattice_available, monkeypatch):
    monkeypatch.setattr(_extension, "build_with_cuda", lambda: False)
    monkeypatch.setattr(_extension, "_state", {"cpu": True})
    with pytest.raises(_extension.ExtensionUnavailable, match="built without CUDA"):
        _extension.require_lattice("cuda")
    _extension.require_lattice("cpu")  # the CPU lattice stays available

