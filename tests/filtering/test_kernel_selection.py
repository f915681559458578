"""Kernel and backend choice, RLOSS_EXTENSION=off, and how a broken extension degrades."""

import pytest
import torch

import rloss.filtering as filtering
from inputs import photo, smooth_probs
from rloss import DenseCRFLoss
from rloss.filtering import _extension, permutohedral
from rloss.filtering.portable import portable_filter


@pytest.fixture
def fresh_notices(monkeypatch):
    """Each test sees its own fallback notices."""
    monkeypatch.setattr(permutohedral, "_warned", set())


def _loss_inputs(size=24):
    return photo("coffee", size), smooth_probs(1, 3, size), torch.ones(1, size, size)


def test_auto_is_the_lattice_at_every_size_and_exact_only_when_asked():
    for pixels in (1, 8 * 8, 12 * 12, 10**6):
        assert filtering.resolve_kernel("auto", pixels) == "permutohedral"
        assert filtering.resolve_kernel("permutohedral", pixels, "cuda") == "permutohedral"
        assert filtering.resolve_kernel("exact", pixels) == "exact"
    with pytest.raises(ValueError, match="kernel must be one of"):
        filtering.resolve_kernel("dense", 10)
    with pytest.raises(ValueError, match="backend must be one of"):
        filtering.resolve_backend("cuda", "cpu")
    with pytest.raises(ValueError, match="DenseCRFLoss: backend must be one of"):
        DenseCRFLoss(1.0, 15, 3, backend="numpy")


def test_extension_off_gives_lattice_values_from_the_portable_lattice(monkeypatch, capsys, fresh_notices):
    images, probs, roi = _loss_inputs(8)  # 8x8: auto once switched to the exact kernel here
    lattice = DenseCRFLoss(1.0, 15, 3, kernel="permutohedral", backend="torch")(images, probs, roi).item()
    exact = DenseCRFLoss(1.0, 15, 3, kernel="exact")(images, probs, roi).item()
    assert abs(lattice / exact - 0.55) < 0.2  # the two scales differ: the test can tell them apart

    monkeypatch.setenv("RLOSS_EXTENSION", "off")
    monkeypatch.setattr(_extension, "_state", {})  # as in a fresh process: nothing loaded yet

    def no_build():
        raise AssertionError("RLOSS_EXTENSION=off must not build the extension")

    monkeypatch.setattr(_extension, "_build_cpu", no_build)
    monkeypatch.setattr(_extension, "_build_cuda", no_build)
    with pytest.raises(_extension.ExtensionUnavailable, match="RLOSS_EXTENSION=off"):
        _extension.load_extension()
    with pytest.raises(_extension.ExtensionUnavailable, match="RLOSS_EXTENSION=off"):
        _extension.require_lattice("cuda")
    for kernel in ("auto", "permutohedral"):
        value = DenseCRFLoss(1.0, 15, 3, kernel=kernel)(images, probs, roi).item()
        assert value == pytest.approx(lattice, rel=1e-6), kernel
    notices = [line for line in capsys.readouterr().err.splitlines() if "portable lattice" in line]
    assert len(notices) == 1 and "RLOSS_EXTENSION=off" in notices[0] and "slower" in notices[0]
    with pytest.raises(_extension.ExtensionUnavailable, match="RLOSS_EXTENSION=off"):
        DenseCRFLoss(1.0, 15, 3, kernel="permutohedral", backend="extension")(images, probs, roi)


def test_broken_build_reports_one_line_and_falls_back_to_the_portable_lattice(
    tmp_path, monkeypatch, capsys, fresh_notices
):
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    (csrc / "ops.cpp").write_text("#include <torch/library.h>\nthis is not C++;\n")
    (csrc / "permutohedral_cpu.cpp").write_text("")
    for header in _extension.HEADERS:
        (csrc / header).write_text("")
    monkeypatch.setattr(_extension, "CSRC", csrc)
    monkeypatch.setattr(_extension, "_state", {})
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    monkeypatch.delenv("RLOSS_EXTENSION", raising=False)

    with pytest.raises(_extension.ExtensionUnavailable) as info:
        _extension.load_extension()
    message = str(info.value)
    assert "\n" not in message and "lattice extension is unavailable" in message and "error" in message.lower()

    images, probs, roi = _loss_inputs()
    fallback = DenseCRFLoss(1.0, 15, 3, kernel="permutohedral")(images, probs, roi)
    portable = DenseCRFLoss(1.0, 15, 3, kernel="permutohedral", backend="torch")(images, probs, roi)
    assert fallback.item() == portable.item()
    notices = [line for line in capsys.readouterr().err.splitlines() if "portable lattice" in line]
    assert len(notices) == 1 and "lattice extension is unavailable" in notices[0]


@pytest.mark.skipif(_extension.cuda_toolkit_home() is None, reason="needs nvcc (no CUDA toolkit found)")
def test_failed_cuda_build_keeps_the_cpu_lattice(lattice_available, tmp_path, monkeypatch, capsys, fresh_notices):
    # A real nvcc failure (an option nvcc rejects) in the CUDA part's build; the CPU
    # part is already loaded and must stay in use.
    monkeypatch.setenv("RLOSS_FORCE_CUDA", "1")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(_extension, "_state", {"cpu": True})
    monkeypatch.setattr(_extension, "cuda_flags", lambda: ["--no-such-nvcc-option"])
    with pytest.raises(_extension.ExtensionUnavailable) as info:
        _extension.require_lattice("cuda")
    assert "\n" not in str(info.value) and "unavailable for CUDA" in str(info.value)
    _extension.require_lattice("cpu")  # the CPU lattice stays available
    assert filtering.resolve_backend("auto", "cpu") == "extension"
    assert filtering.resolve_backend("auto", "cuda") == "torch"  # CUDA tensors get the portable lattice
    notices = [line for line in capsys.readouterr().err.splitlines() if "portable lattice" in line]
    assert len(notices) == 1 and "unavailable for CUDA" in notices[0]
    assert _extension.extension_status().startswith("ok (cpu); CUDA: ")


def test_a_gpu_without_code_in_the_build_gets_one_line_naming_the_arch_list(monkeypatch):
    # Simulated: the launch check fails as CUDA does for a GPU outside the build's archs.
    def no_kernel_image(device):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nCUDA kernel errors ...")

    monkeypatch.setattr(_extension, "_launch_two_pixels", no_kernel_image)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (12, 0))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    with pytest.raises(_extension.ExtensionUnavailable) as info:
        _extension._check_cuda_launch()
    message = str(info.value)
    assert "\n" not in message and "TORCH_CUDA_ARCH_LIST=12.0" in message and "no kernel image" in message


def test_cuda_build_targets_the_listed_archs_with_ptx_for_the_newest(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0;8.0+PTX")
    archs = _extension.cuda_archs()
    assert archs == ["8.0", "9.0"]
    flags = _extension.cuda_arch_flags(archs)
    assert "-gencode=arch=compute_80,code=sm_80" in flags and "-gencode=arch=compute_90,code=sm_90" in flags
    assert flags[-1] == "-gencode=arch=compute_90,code=compute_90"  # PTX, newest only
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "Ampere")
    with pytest.raises(_extension.ExtensionUnavailable, match="TORCH_CUDA_ARCH_LIST"):
        _extension.cuda_archs()


def test_portable_filter_is_what_the_torch_backend_runs():
    features = filtering.bilateral_features(photo("rocket", 12), 15.0, 4.0)
    values = smooth_probs(1, 2, 12).flatten(2)
    assert torch.equal(filtering.permutohedral_filter(features, values, backend="torch"), portable_filter(features, values))


def test_training_config_takes_the_backend_and_rejects_unknown_ones():
    from rloss.engine.config import load_config

    assert load_config(None, ["loss.backend=torch"]).loss.backend == "torch"
    assert load_config(None).loss.backend == "auto"
    with pytest.raises(ValueError, match=r"loss.backend must be one of auto, extension, torch; got 'cuda'"):
        load_config(None, ["loss.backend=cuda"])
