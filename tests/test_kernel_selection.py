"""`auto` kernel choice and the fallback when the extension cannot be built."""

import pytest
import torch

import rloss.filtering as filtering
from inputs import photo, smooth_probs
from rloss import DenseCRFLoss
from rloss.filtering import _extension


def test_auto_uses_exact_up_to_the_measured_size_then_the_lattice(lattice_available):
    limit = filtering.AUTO_EXACT_MAX_PIXELS
    assert filtering.resolve_kernel("auto", limit) == "exact"
    assert filtering.resolve_kernel("auto", limit + 1) == "permutohedral"
    assert filtering.resolve_kernel("exact", 10**6) == "exact"
    with pytest.raises(ValueError, match="kernel must be one of"):
        filtering.resolve_kernel("dense", 10)


def test_broken_build_reports_one_line_and_falls_back_to_exact(tmp_path, monkeypatch, capsys):
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    (csrc / "ops.cpp").write_text("#include <torch/library.h>\nthis is not C++;\n")
    (csrc / "permutohedral_cpu.cpp").write_text("")
    (csrc / "permutohedral_math.h").write_text("")
    monkeypatch.setattr(_extension, "CSRC", csrc)
    monkeypatch.setattr(_extension, "_loaded", None)
    monkeypatch.setattr(filtering, "_warned_fallback", False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))

    with pytest.raises(_extension.ExtensionUnavailable) as info:
        _extension.load_extension()
    message = str(info.value)
    assert "\n" not in message and "lattice extension is unavailable" in message and "error" in message.lower()

    # Small images fall back to the exact kernel with a one-line notice ...
    assert filtering.resolve_kernel("permutohedral", filtering.FALLBACK_EXACT_MAX_PIXELS) == "exact"
    notice = [line for line in capsys.readouterr().err.splitlines() if "using the exact kernel" in line]
    assert len(notice) == 1 and "lattice extension is unavailable" in notice[0]
    images, probs, roi = photo("coffee", 12), smooth_probs(1, 3, 12), torch.ones(1, 12, 12)
    fallback = DenseCRFLoss(1.0, 15, 3, 1.0, kernel="permutohedral")(images, probs, roi)
    exact = DenseCRFLoss(1.0, 15, 3, 1.0, kernel="exact")(images, probs, roi)
    assert fallback.item() == pytest.approx(exact.item())
    # ... large ones raise, naming the reason.
    with pytest.raises(_extension.ExtensionUnavailable, match="too large for the exact kernel"):
        filtering.resolve_kernel("auto", filtering.FALLBACK_EXACT_MAX_PIXELS + 1)
