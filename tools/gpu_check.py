"""``python -m rloss gpu-check`` (``make gpu-check``): one command that proves the GPU path within minutes.

Made for a bare GPU machine (a stock PyTorch image: torch, torchvision, numpy,
pillow, pyyaml, tqdm, scipy, scikit-image, matplotlib; no project environment,
no internet), run from a source checkout with ``PYTHONPATH=.``. Six steps, in
order, each in its own subprocess with its own time budget: an overrun is cut,
reported as ``timeout`` with the figures it had recorded, and the later steps
still run. Every figure lands in ``OUT/gpu_check.json`` as soon as it is
measured (``{"steps": {name: {"status": ..., ...figures}}, "goals": ...}``), the
steps' output in ``OUT/gpu_check.log``.

``--dry-run`` runs every step on the CPU at tiny sizes (a test does, so the check
cannot rot); its figures say nothing about speed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT, LOG = "gpu_check.json", "gpu_check.log"
TOTAL_BUDGET_S = 480  # the whole check on an H100/H200: 8 minutes
# A step is not started with less than this left of the total: it could not finish.
MIN_STEP_S = 10

# The published DenseCRF settings at 513 px (Tang et al. 2018; rloss's README).
PUBLISHED_CRF = dict(weight=2e-9, sigma_rgb=15.0, sigma_xy=100.0, scale_factor=0.5)
NUM_CLASSES = 21  # PASCAL VOC


class StepFailed(Exception):
    """A step's check did not hold; the message says which and by how much."""


@dataclass
class StepContext:
    """What a step gets: where to write, whether this is a dry run, and its deadline."""

    out: Path
    dry_run: bool
    deadline: float  # time.monotonic() by which the step is cut
    result_path: Path

    @property
    def device(self):
        import torch

        return torch.device("cpu" if self.dry_run else "cuda")

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, **figures) -> None:
        """Adds figures to the step's result now, so a step cut later keeps them."""
        doc = json.loads(self.result_path.read_text()) if self.result_path.exists() else {}
        doc.update(figures)
        _write_json(self.result_path, doc)
        for key, value in figures.items():
            print(f"  {key}: {json.dumps(value, default=str)[:300]}", flush=True)


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Timing on the device
# --------------------------------------------------------------------------------------------


def _median_ms(fn, device, repeats: int, warmup: int) -> tuple[float, float]:
    """Median and minimum milliseconds of ``fn()`` on the device (the trainer's clock), after ``warmup`` calls."""
    from rloss.engine.timing import DeviceClock

    clock = DeviceClock(device)
    for _ in range(warmup):
        fn()
    marks = []
    for _ in range(repeats):
        start = clock.mark()
        fn()
        marks.append((start, clock.mark()))
    clock.wait(marks[-1][1])
    times = [clock.ms(a, b) for a, b in marks]
    return statistics.median(times), min(times)


def _peak_mib_reset(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


# --------------------------------------------------------------------------------------------
# 1. environment
# --------------------------------------------------------------------------------------------


def _command_output(command: list[str], timeout: float = 20) -> str | None:
    if shutil.which(command[0]) is None and not Path(command[0]).is_file():
        return None
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def nvcc_release() -> str | None:
    from rloss.filtering._extension import cuda_toolkit_home

    home = cuda_toolkit_home()
    text = _command_output([str(Path(home) / "bin" / "nvcc"), "--version"]) if home else None
    found = re.search(r"release ([\d.]+)", text or "")
    return found.group(1) if found else None


def step_environment(ctx: StepContext) -> None:
    import torch

    figures = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
               "cpu_count": os.cpu_count(), "cuda_available": torch.cuda.is_available(), "nvcc": nvcc_release()}
    try:
        import torchvision

        figures["torchvision"] = torchvision.__version__
    except Exception as exc:  # a broken torchvision is a finding, not a crash
        figures["torchvision"] = f"unavailable ({type(exc).__name__}: {exc})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        figures.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                       gpu_memory_gib=round(props.total_memory / 2**30, 1),
                       compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                       cudnn=torch.backends.cudnn.version())
        smi = _command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        figures["driver"] = smi.splitlines()[0].strip() if smi else None
    ctx.record(**figures)
    if not ctx.dry_run and not torch.cuda.is_available():
        raise StepFailed("no CUDA GPU is visible to torch")


# --------------------------------------------------------------------------------------------
# 2. extension
# --------------------------------------------------------------------------------------------


def _lattice_inputs(n: int, k: int, size: int, seed: int = 0):
    """Photos, smooth softmax maps and an ROI with a padded band, as the loss sees them."""
    import torch

    from tools.bench import photo_batch, smooth_softmax

    images = photo_batch(n, size)
    probs = smooth_softmax(n, k, size, torch.Generator().manual_seed(seed))
    roi = torch.ones(n, size, size)
    roi[:, : max(1, size // 16)] = 0
    return images, probs, roi


def step_extension(ctx: StepContext) -> None:
    import torch

    from rloss.filtering import _extension, bilateral_features, exact_filter, permutohedral_filter

    arch = None
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        arch = f"sm_{major}{minor}"
    # Unset, torch builds for the visible GPU's architecture.
    nvcc = nvcc_release()
    ctx.record(arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST") or (f"the visible GPU ({arch})" if arch else None),
               toolkit=_extension.cuda_toolkit_home(), nvcc=nvcc, torch_cuda=torch.version.cuda,
               with_cuda=_extension.build_with_cuda())
    if not ctx.dry_run and nvcc and torch.version.cuda and nvcc.split(".")[0] != torch.version.cuda.split(".")[0]:
        # torch.utils.cpp_extension refuses this pairing; say so before a minute of building
        raise StepFailed(f"nvcc {nvcc} (CUDA_HOME={_extension.cuda_toolkit_home()}) does not match torch's CUDA "
                         f"{torch.version.cuda}: point CUDA_HOME at a CUDA {torch.version.cuda.split('.')[0]}.x toolkit")
    start = time.monotonic()
    status = _extension.extension_status()
    ctx.record(status=status, build_or_load_s=round(time.monotonic() - start, 1))
    if not status.startswith("ok"):
        raise StepFailed(status)
    if not ctx.dry_run and not status.startswith("ok (cpu+cuda)"):
        raise StepFailed(f"the extension was built without CUDA ({status}): is nvcc at CUDA_HOME?")

    images, probs, _ = _lattice_inputs(2, 5, 48)
    features = bilateral_features(images, 15.0, 100.0 * 48 / 513)
    values = probs.flatten(2)
    cpu = permutohedral_filter(features, values, backend="extension")
    if ctx.dry_run:  # the CPU op against the exact Gaussian: the lattice is a scaled approximation of it
        exact = exact_filter(features.double(), values.double()).float()
        ratio = float((cpu * exact).sum() / (exact * exact).sum())
        ctx.record(op_device="cpu", lattice_to_exact_scale=round(ratio, 3))
        if not 0.3 < ratio < 0.9:
            raise StepFailed(f"the CPU lattice is {ratio:.3f}x the exact Gaussian (expected about 0.5-0.6)")
        return
    gpu = permutohedral_filter(features.cuda(), values.cuda(), backend="extension").cpu()
    difference = float((gpu - cpu).abs().max() / cpu.abs().max())
    portable = permutohedral_filter(features.cuda(), values.cuda(), backend="torch").cpu()
    portable_difference = float((portable - gpu).abs().max() / gpu.abs().max())
    ctx.record(op_device=torch.cuda.get_device_name(), max_relative_difference_to_cpu=difference,
               portable_max_relative_difference_to_cuda_op=portable_difference)
    if not difference <= 1e-3:
        raise StepFailed(f"the CUDA op differs from the CPU op by {difference:.3g} (relative; limit 1e-3)")
    if not portable_difference <= 1e-3:
        raise StepFailed(f"the portable lattice on the GPU differs from the CUDA op by {portable_difference:.3g}")


# --------------------------------------------------------------------------------------------
# 3. tests
# --------------------------------------------------------------------------------------------

# The build test compiles for A100 and H100 again in a fresh folder (minutes): the extension
# step has built for the GPU at hand, and `rloss build --nvcc-check` covers the rest.
PYTEST_DESELECT = "not extension_builds"


def step_tests(ctx: StepContext) -> None:
    import importlib.util

    test_file = REPO / "tests" / "filtering" / "test_cuda.py"
    if test_file.is_file() and importlib.util.find_spec("pytest") is not None:
        _run_pytest(ctx, test_file)
    else:
        ctx.record(runner="built-in (no tests/filtering/test_cuda.py or no pytest here)")
        builtin_cuda_checks(ctx.device, ctx.record)


def _run_pytest(ctx: StepContext, test_file: Path) -> None:
    # No plugin autoloading and no project pytest options: nbval and the like may be absent
    # (or deliberately unimportable), and test_cuda.py needs none of them.
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    command = [sys.executable, "-m", "pytest", str(test_file), "-q", "-rs", "-o", "addopts=", "-p", "no:cacheprovider",
               "-k", PYTEST_DESELECT]
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=max(1.0, ctx.left_s() - 2))
    print(out.stdout[-6000:], out.stderr[-3000:], sep="\n", flush=True)
    lines = [line for line in out.stdout.strip().splitlines() if line.strip()]
    summary = lines[-1] if lines else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", summary)}
    ctx.record(runner="pytest", command=" ".join(command[1:]), summary=summary, **counts, exit_code=out.returncode)
    if out.returncode != 0:
        raise StepFailed(f"pytest: {summary or 'exit code ' + str(out.returncode)}")
    if not ctx.dry_run and counts.get("skipped", 0):
        raise StepFailed(f"pytest skipped tests on a GPU machine: {summary}")


def builtin_cuda_checks(device, record: Callable[..., None]) -> None:
    """What tests/filtering/test_cuda.py checks, for an installation without the tests: the lattice on
    ``device`` against the CPU lattice (filter, fused energy and gradient), run to run
    determinism, and the loss with its gradient against the CPU's."""
    import torch

    from rloss.filtering import bilateral_features, permutohedral_crf, permutohedral_filter
    from rloss.losses import DenseCRFLoss

    worst = 0.0
    for n, k, size in ((1, 1, 24), (2, 21, 64), (3, 5, 97)):
        images, probs, roi = _lattice_inputs(n, k, size)
        features, values, roi = bilateral_features(images, 15.0, 100.0 * size / 513), probs.flatten(2), roi.flatten(1)
        cpu = permutohedral_filter(features, values, "extension")
        cpu_energy, cpu_out = permutohedral_crf(features, values, roi, -0.5, "extension")
        dev = permutohedral_filter(features.to(device), values.to(device), "extension").cpu()
        dev_energy, dev_out = (t.cpu() for t in permutohedral_crf(features.to(device), values.to(device), roi.to(device),
                                                                   -0.5, "extension"))
        errors = (float((dev - cpu).abs().max() / cpu.abs().max()), float((dev_out - cpu_out).abs().max() / cpu_out.abs().max()),
                  float(((dev_energy - cpu_energy).abs() / cpu_energy.abs()).max()))
        worst = max(worst, *errors)
        if not (errors[0] <= 1e-3 and errors[1] <= 1e-3 and errors[2] <= 1e-4):
            raise StepFailed(f"lattice on {device} vs CPU at N={n} K={k} {size}px differs by {errors}")
    features, values, roi = (t.to(device) for t in (features, values, roi))
    first = permutohedral_crf(features, values, roi, 1.0, "extension")
    deterministic = all(torch.equal(first[i], again[i]) for again in (permutohedral_crf(features, values, roi, 1.0, "extension")
                                                                       for _ in range(3)) for i in (0, 1))
    images, probs, roi = _lattice_inputs(2, 21, 64)
    loss_fn = DenseCRFLoss(**PUBLISHED_CRF, kernel="permutohedral", backend="extension")
    p_cpu, p_dev = probs.clone().requires_grad_(True), probs.to(device).requires_grad_(True)
    l_cpu, l_dev = loss_fn(images, p_cpu, roi), loss_fn(images.to(device), p_dev, roi.to(device))
    l_cpu.backward()
    l_dev.backward()
    loss_error = abs(l_dev.item() - l_cpu.item()) / abs(l_cpu.item())
    grad_error = float((p_dev.grad.cpu() - p_cpu.grad).abs().max() / p_cpu.grad.abs().max())
    record(max_relative_difference_to_cpu=worst, deterministic=deterministic, loss_relative_difference=loss_error,
           gradient_relative_difference=grad_error, checks=5)
    if not deterministic:
        raise StepFailed(f"the lattice on {device} is not deterministic from run to run")
    if not (loss_error <= 1e-4 and grad_error <= 1e-3):
        raise StepFailed(f"the loss on {device} differs from the CPU's: loss {loss_error:.3g}, gradient {grad_error:.3g}")


# --------------------------------------------------------------------------------------------
# 4. bench_crf
# --------------------------------------------------------------------------------------------


def bench_crf_cases(dry_run: bool) -> list[tuple[int, int, int]]:
    """(N, K, side): a 513 crop at the published scale 0.5 (256 px), the full 513 px, and many small images."""
    return [(2, 5, 24), (2, 5, 32), (4, 5, 16)] if dry_run else [(12, 21, 256), (12, 21, 513), (32, 21, 64)]


def device_bandwidth_gb_s(device, dry_run: bool) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), the traffic estimate's yardstick."""
    import torch

    source = torch.empty(2**(24 if dry_run else 28), dtype=torch.float32, device=device)  # 64 MiB / 1 GiB
    target = torch.empty_like(source)
    median_ms, _ = _median_ms(lambda: target.copy_(source), device, repeats=5 if dry_run else 20, warmup=2)
    return 2 * source.numel() * 4 / (median_ms / 1e3) / 1e9


def step_bench_crf(ctx: StepContext) -> None:
    import torch

    device, dry = ctx.device, ctx.dry_run
    repeats, warmup = (3, 1) if dry else (10, 3)
    bandwidth = device_bandwidth_gb_s(device, dry)
    ctx.record(device_bandwidth_gb_s=round(bandwidth, 1), repeats=repeats, timing="CUDA events" if not dry else "perf_counter",
               measures="DenseCRF loss forward + backward: sigma_rgb 15, sigma_xy 100 x side / 513, "
                        "scale 1, kernel permutohedral, validate=False")
    failures = []
    for name in ("extension", "torch"):  # the compiled lattice, then the portable one
        rows = {}
        for n, k, size in bench_crf_cases(dry):
            label = f"N={n} K={k} {size}x{size}"
            if ctx.left_s() < 10:  # leave the rest to the budget: what is measured is kept
                rows[label] = f"skipped: {ctx.left_s():.0f} s left of the step's budget"
            else:
                try:
                    rows[label] = bench_case(name, n, k, size, device, bandwidth, repeats, warmup)
                except Exception as exc:  # e.g. out of memory: recorded, the next case still runs
                    traceback.print_exc()
                    rows[label] = {"error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
                    failures.append(f"{name} {label}")
                finally:
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            ctx.record(**{name: rows})
    if failures:
        raise StepFailed(f"failed: {', '.join(failures)} (see the log)")


def bench_case(backend: str, n: int, k: int, size: int, device, bandwidth: float, repeats: int, warmup: int) -> dict:
    """The loss's forward + backward with one lattice backend: times, memory, traffic; for the
    extension also the fused op alone and whether it makes the host wait."""
    import torch

    from tools.bench import Case, lattice_traffic_bytes
    from rloss.filtering import bilateral_features, permutohedral_crf
    from rloss.losses import DenseCRFLoss

    images, probs, roi = (t.to(device) for t in _lattice_inputs(n, k, size))
    probs.requires_grad_(True)
    loss_fn = DenseCRFLoss(2e-9, 15.0, 100.0 * size / 513, 1.0, kernel="permutohedral", backend=backend, validate=False)

    def step():
        torch.autograd.grad(loss_fn(images, probs, roi), probs)

    step()  # a first-use build or compile is not timed
    _peak_mib_reset(device)
    before = torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else None
    median_ms, min_ms = _median_ms(step, device, repeats, warmup)
    traffic = lattice_traffic_bytes(Case("permutohedral", n, k, size, 100.0 * size / 513))
    row = {"median_ms": round(median_ms, 3), "min_ms": round(min_ms, 3),
           "traffic_estimate_gb": float(f"{traffic / 1e9:.4g}"),
           "bandwidth_bound_ms": round(traffic / (bandwidth * 1e9) * 1e3, 3),
           "share_of_bandwidth": round(traffic / (median_ms / 1e3) / (bandwidth * 1e9), 3)}
    peak = _peak_mib(device)
    if peak is not None:
        row["peak_mib_above_inputs"] = round(peak - before, 1)
    if backend == "extension":
        features = bilateral_features(images, 15.0, 100.0 * size / 513)
        values, flat_roi = probs.detach().flatten(2), roi.flatten(1)

        def op():
            return permutohedral_crf(features, values, flat_roi, 1.0, "extension")

        row["op_median_ms"] = round(_median_ms(op, device, repeats, warmup)[0], 3)
        if device.type == "cuda":
            row.update(host_wait_probe(op))
    return row


def host_wait_probe(call) -> dict:
    """Whether ``call`` makes the host wait for the GPU (the lattice op's one 8-byte read).

    About 20 ms of matrix products are queued, then ``call`` is timed on the host: a call
    that returns before the queued work is done does not wait; one that takes longer waits
    for the queue (the host then cannot run ahead into the next step while the GPU works).
    The cost in a training step is what train_step's pCE + DenseCRF time adds beyond the
    loss's own time (the ``lattice_sync`` goal below)."""
    import torch

    from rloss.engine.timing import DeviceClock

    a = torch.randn(4096, 4096, device="cuda")
    clock = DeviceClock(torch.device("cuda"))
    start = clock.mark()
    for _ in range(8):
        a @ a
    end = clock.mark()
    clock.wait(end)
    queued_ms = clock.ms(start, end)
    repeats = max(1, round(20 / max(queued_ms / 8, 1e-3)))
    torch.cuda.synchronize()
    for _ in range(repeats):
        a @ a
    host_start = time.perf_counter()
    call()
    host_ms = 1e3 * (time.perf_counter() - host_start)
    torch.cuda.synchronize()
    queued = repeats * queued_ms / 8
    return {"host_call_ms_with_work_queued": round(host_ms, 3), "queued_work_ms": round(queued, 3),
            "host_waits_for_gpu": host_ms > 0.5 * queued}


# --------------------------------------------------------------------------------------------
# 5. train_step
# --------------------------------------------------------------------------------------------


def train_step_settings(dry_run: bool) -> dict:
    if dry_run:
        return dict(models=("deeplabv3plus_tiny",), crop=32, batch=2, warmup=1, timed=2)
    return dict(models=("deeplabv3plus_resnet101", "deeplabv3plus_mobilenet_v3_large"), crop=513, batch=12,
                warmup=3, timed=10)


def _training_batch(batch: int, crop: int, device):
    """Photos at crop size (normalised for the network, raw for the loss) and scribbles on
    about 3% of the pixels (six strokes of a random class), as ScribbleSup has."""
    import torch

    from tools.bench import photo_batch
    from rloss.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    images = photo_batch(batch, crop)
    g = torch.Generator().manual_seed(2)
    scribbles = torch.full((batch, crop, crop), 255, dtype=torch.long)
    for i in range(batch):
        for _ in range(6):
            row, col = torch.randint(0, crop - crop // 4, (2,), generator=g).tolist()
            scribbles[i, row : row + max(1, crop // 50), col : col + crop // 4] = int(torch.randint(0, NUM_CLASSES, (1,), generator=g))
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalised = (images / 255.0 - mean) / std
    return normalised.to(device), images.to(device), scribbles.to(device), torch.ones(batch, crop, crop, device=device)


def time_training(model, optimizer, batch_data, crf, amp_dtype, channels_last: bool, warmup: int, timed: int,
                  device) -> dict:
    """The trainer's step (forward under autocast, pCE, softmax in float32, DenseCRF, backward,
    SGD), timed by marks on the device and read once at the end, as the trainer does."""
    import torch

    from rloss.engine.timing import DeviceClock
    from rloss.losses import partial_cross_entropy

    image, raw, scribbles, roi = batch_data
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    clock = DeviceClock(device)
    marks = []
    for i in range(warmup + timed):
        start = clock.mark()
        with torch.autocast(device_type=device.type, dtype=amp_dtype):
            logits = model(image)
        loss = partial_cross_entropy(logits, scribbles)
        crf_marks = None
        if crf is not None:
            probs = torch.softmax(logits.float(), dim=1)
            crf_start = clock.mark()
            loss = loss + crf(raw, probs, roi)
            crf_marks = (crf_start, clock.mark())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i == warmup - 1:
            _peak_mib_reset(device)
        if i >= warmup:
            marks.append((start, clock.mark(), crf_marks))
    clock.wait(marks[-1][1])  # the last step's end: every mark before it is then read without waiting
    step_ms = [clock.ms(a, b) for a, b, _ in marks]
    crf_ms = [clock.ms(*c) for _, _, c in marks if c is not None]
    out = {"s_per_iteration": round(statistics.median(step_ms) / 1e3, 4), "iterations": timed,
           "loss": round(float(loss.detach()), 4)}
    if crf_ms:
        out.update(crf_forward_ms=round(statistics.median(crf_ms), 3), crf_share=round(sum(crf_ms) / sum(step_ms), 4))
    peak = _peak_mib(device)
    if peak is not None:
        out["peak_memory_gib"] = round(peak / 1024, 2)
    return out


def step_train_step(ctx: StepContext) -> None:
    import torch

    from rloss.filtering import resolve_backend
    from rloss.losses import DenseCRFLoss
    from rloss.models import build_model

    s, device = train_step_settings(ctx.dry_run), ctx.device
    ctx.record(crop=s["crop"], global_batch=s["batch"], amp="bf16", init="random (no weight download)",
               crf=dict(PUBLISHED_CRF, kernel="permutohedral"))
    batch_data = _training_batch(s["batch"], s["crop"], device)
    crf = DenseCRFLoss(**PUBLISHED_CRF, kernel="permutohedral")
    ctx.record(crf_backend=resolve_backend("auto", device))  # the extension where it is built, else the portable lattice
    torch.manual_seed(0)

    failures = []

    def attempt(name: str, work):
        """One figure; a failure is recorded under its name and the next figure is still measured."""
        try:
            row = work()
        except Exception as exc:
            traceback.print_exc()
            text = str(exc).strip().splitlines()
            row = {"error": f"{type(exc).__name__}: {text[0][:300] if text else ''}"}
            failures.append(name)
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        ctx.record(**{name: row})
        return row

    def training(model_name: str, with_crf: bool, channels_last: bool = False, compiled: bool = False):
        net = build_model(model_name, NUM_CLASSES, pretrained=False).to(device)
        if channels_last:
            net.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        forward = torch.compile(net) if compiled else net
        start = time.monotonic()
        row = time_training(forward, optimizer, batch_data, crf if with_crf else None, torch.bfloat16, channels_last,
                            s["warmup"], s["timed"], device)
        row["wall_s"] = round(time.monotonic() - start, 1)
        return row

    for model_name in s["models"]:
        short = model_name.removeprefix("deeplabv3plus_")
        pce = attempt(f"{short}_pce", lambda: training(model_name, False))
        pce_crf = attempt(f"{short}_pce_crf", lambda: training(model_name, True))
        if "error" not in pce and "error" not in pce_crf:
            ctx.record(**{f"{short}_crf_over_pce": round(pce_crf["s_per_iteration"] / pce["s_per_iteration"], 4)})
    main = s["models"][0]
    short = main.removeprefix("deeplabv3plus_")

    def if_time_allows(name: str, needed_s: float, work) -> None:
        if ctx.left_s() > needed_s:
            attempt(name, work)
        else:
            ctx.record(**{name: f"skipped: {ctx.left_s():.0f} s left of the step's budget, {needed_s} s needed"})

    dry = ctx.dry_run
    if_time_allows(f"{short}_pce_crf_channels_last", 5 if dry else 30, lambda: training(main, True, channels_last=True))
    if_time_allows(f"{short}_auto_batch_size", 10 if dry else 45, lambda: auto_batch_figure(main, s["crop"], device))
    if dry:  # compiling takes a minute of a small CPU and proves nothing about a GPU
        ctx.record(**{f"{short}_pce_crf_compiled": "skipped in a dry run"})
    else:  # compiling a ResNet-101 took 96 s on an H200
        if_time_allows(f"{short}_pce_crf_compiled", 120, lambda: training(main, True, compiled=True))
    if failures:
        raise StepFailed(f"failed: {', '.join(failures)} (see the log)")


def auto_batch_figure(model_name: str, crop: int, device) -> dict:
    """What ``data.batch_size: auto`` chooses for this model and crop (bf16, pCE + DenseCRF)."""
    from rloss.engine import distributed as D
    from rloss.engine.config import load_config
    from rloss.engine.memory import probe_batch_size

    c = PUBLISHED_CRF
    cfg = load_config(None, [f"model.name={model_name}", f"data.crop_size={crop}", "run.amp=bf16", "loss.type=pce_crf",
                             "loss.kernel=permutohedral", f"loss.crf_weight={c['weight']}", f"loss.sigma_rgb={c['sigma_rgb']}",
                             f"loss.sigma_xy={c['sigma_xy']}", f"loss.scale_factor={c['scale_factor']}"])
    # The CPU gets the documented default; probing its memory would swap, not fail.
    limit = 16 if device.type == "cpu" else 4096
    start = time.monotonic()
    batch = probe_batch_size(cfg, D.DistContext(), device, NUM_CLASSES, limit)
    return {"batch_size": batch, "search_s": round(time.monotonic() - start, 1), "limit": limit}


# --------------------------------------------------------------------------------------------
# 6. roundtrip
# --------------------------------------------------------------------------------------------

# A training run that stops for good (SIGKILL) right after writing the checkpoint of iteration KILL_AT.
_KILLED_RUN = """
import sys, time
import rloss.engine.checkpoint as C
from rloss.engine.config import load_config
from rloss.engine.train import train
save = C.write_checkpoint
def save_then_wait(path, state):
    save(path, state)
    if state["iteration"] == int(sys.argv[3]):
        open(sys.argv[2], "w").write("saved")
        time.sleep(600)  # killed here
C.write_checkpoint = save_then_wait
train(load_config(sys.argv[1]))
"""
ROUNDTRIP_ITERATIONS, KILL_AT = 12, 8


def count_host_syncs(run, device: str):
    """``run()`` and, on a GPU, where it made the host wait for the device: torch's sync debug
    mode warns at each synchronising call, attributed to the Python line that made it. For a
    training run of I iterations, a line with about I waits is a per-step synchronisation."""
    if device != "cuda":
        return run(), None
    import warnings
    from collections import Counter

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    lines = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower())
    return result, dict(lines.most_common(20))


def step_roundtrip(ctx: StepContext) -> None:
    import torch

    from rloss.engine.config import load_config
    from rloss.data.synthetic import generate_synthetic
    from rloss.engine.infer import load_predictor
    from rloss.engine.train import train

    work = ctx.out / "roundtrip"
    size = 32 if ctx.dry_run else 64
    data = work / "data"
    generate_synthetic(data, size=size, n_train=16, n_val=4, seed=0, progress=False)
    device = "cpu" if ctx.dry_run else "cuda"

    def config(name: str):
        return load_config(None, [
            f"data.root={data}", f"data.crop_size={size}", "data.batch_size=4", "model.name=deeplabv3plus_tiny",
            "loss.type=pce_crf", "loss.kernel=permutohedral", f"optim.iterations={ROUNDTRIP_ITERATIONS}",
            "run.checkpoint_every_iters=4", "run.eval_every_epochs=100", f"run.device={device}",
            f"run.results_dir={work / 'results'}", f"run.name={name}", "wandb.log_every_iters=5"])

    uninterrupted = config("uninterrupted")
    start = time.monotonic()
    final_a, syncs = count_host_syncs(lambda: train(uninterrupted), device)
    ctx.record(uninterrupted_s=round(time.monotonic() - start, 1), uninterrupted_miou=final_a["miou"])
    if syncs is not None:
        ctx.record(host_syncs_total=sum(syncs.values()), host_syncs_by_line=syncs)

    killed = config("killed")
    config_path = work / "killed.yaml"
    config_path.write_text(killed.to_yaml())
    marker = work / "killed.marker"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(config_path), str(marker), str(KILL_AT)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not marker.exists():
            if child.poll() is not None:
                raise StepFailed(f"the run to kill ended early: {child.stderr.read().decode()[-500:].strip()}")
            if ctx.left_s() < 5:
                raise StepFailed("the run to kill never reached its checkpoint")
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
        child.stderr.close()
    checkpoint = killed.run_dir / "checkpoint.pt"
    saved_at = torch.load(checkpoint, map_location="cpu", weights_only=True)["iteration"]
    final_b = train(killed, resume=True)
    weights_a = torch.load(uninterrupted.run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    weights_b = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    difference = max(float((weights_a[k].double() - weights_b[k].double()).abs().max())
                     for k in weights_a if weights_a[k].is_floating_point())
    ctx.record(killed_after_iteration=saved_at, resumed_final_iteration=final_b["iteration"], resumed_miou=final_b["miou"],
               resumed_weights_max_difference=difference, resume_bit_exact=difference == 0.0)
    if saved_at != KILL_AT or final_b["iteration"] != ROUNDTRIP_ITERATIONS:
        raise StepFailed(f"killed at {saved_at}, resumed to {final_b['iteration']} (expected {KILL_AT}, {ROUNDTRIP_ITERATIONS})")

    from rloss.data.folder import SegmentationFolder

    val = SegmentationFolder(data, "val", require_scribbles=False)
    images = [val.load(i).image for i in val.ids]
    # Plain float32 on both sides: the comparison is of the code paths, not of TF32's rounding.
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    here = load_predictor(checkpoint, device).predict(images, return_probs=True)
    on_cpu = load_predictor(checkpoint, "cpu").predict(images, return_probs=True)
    agree = sum(int((a.labels == b.labels).sum()) for a, b in zip(here, on_cpu)) / sum(a.labels.size for a in here)
    probs_difference = max(float(abs(a.probs - b.probs).max()) for a, b in zip(here, on_cpu))
    ctx.record(inference_device=device, labels_agreeing_with_cpu=agree, probs_max_difference_to_cpu=probs_difference)
    if agree < 0.999 or probs_difference > 1e-3:
        raise StepFailed(f"{device} and CPU predictions of one checkpoint differ: {agree:.4%} of labels agree, "
                         f"probabilities up to {probs_difference:.3g} apart")


# --------------------------------------------------------------------------------------------
# The steps, the goals and the driver
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[StepContext], None]
    budget_s: float  # on a GPU; a step also never gets more than what is left of TOTAL_BUDGET_S
    dry_budget_s: float  # --dry-run on a small CPU machine


# A later step gets at most what is left of the total: a slow build squeezes the last ones. What
# each took on an H200 (2026-12-04, benchmarks/results/gpu-check-h200-2026-12-04): environment 13 s,
# extension 67 s (a first build), tests 9 s, bench_crf 10 s, train_step 138 s (96 s of it
# compiling), roundtrip 22 s: 266 s in all.
# With the kernels for any feature dimension (999a914, gpu-check-h200-2026-12-04-999a914): extension
# 114 s (15 dimensions), tests 9 s, bench_crf 12 s, train_step 139 s, roundtrip 24 s: 319 s.
STEPS = (
    Step("environment", step_environment, 15, 60),
    Step("extension", step_extension, 180, 240),  # a first build: nvcc for one architecture, 15 lattice dimensions since issue 31
    Step("tests", step_tests, 90, 180),  # 52 s on an H200 when `--only tests` builds the extension itself
    Step("bench_crf", step_bench_crf, 60, 150),  # dry: room for a loaded 2-core machine (90 s was cut once)
    Step("train_step", step_train_step, 200, 180),  # 140 s cut the H200's run as its process ended
    Step("roundtrip", step_roundtrip, 55, 180),
)
STEP_NAMES = tuple(s.name for s in STEPS)

# The goals on an H100/H200.
GOALS = {
    "cuda_lattice_256_ms": ("bench_crf", ("extension", "N=12 K=21 256x256", "median_ms"), 5.0),
    "portable_lattice_256_ms": ("bench_crf", ("torch", "N=12 K=21 256x256", "median_ms"), 20.0),
    "crf_share_resnet101_513_bf16": ("train_step", ("resnet101_pce_crf", "crf_share"), 0.05),
}


def _dig(doc, path):
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc if isinstance(doc, (int, float)) and not isinstance(doc, bool) else None


def goals(steps: dict, dry_run: bool) -> dict:
    """Each goal's figure against its limit, and a bound on what the lattice op's host read
    costs a training step: pCE + DenseCRF time minus pCE time minus the loss's own time (the
    rest also holds the softmax and its backward, so the read costs at most that)."""
    out = {}
    for name, (step, path, limit) in GOALS.items():
        value = _dig(steps.get(step, {}), path)
        out[name] = {"value": value, "limit": limit,
                     "met": None if value is None or dry_run else value <= limit}
    pce, pce_crf = (_dig(steps.get("train_step", {}), (f"resnet101_{loss}", "s_per_iteration")) for loss in ("pce", "pce_crf"))
    # The loss at 513 px with scale 0.5 filters N=12 images of 256 x 256.
    loss_ms = _dig(steps.get("bench_crf", {}), ("extension", "N=12 K=21 256x256", "median_ms"))
    if None not in (pce, pce_crf, loss_ms) and not dry_run:
        extra_ms = 1e3 * (pce_crf - pce) - loss_ms
        out["lattice_sync"] = {
            "crf_cost_in_step_ms": round(1e3 * (pce_crf - pce), 3), "loss_alone_ms": loss_ms,
            "unexplained_ms": round(extra_ms, 3), "step_ms": round(1e3 * pce_crf, 3),
            "reading": "keep the 8-byte read" if extra_ms <= 0.01 * 1e3 * pce else
                       "the host read may cost the step: consider sizing the lattice buffers without it"}
    return out


def run_step_in_this_process(name: str, out: Path, dry_run: bool, budget_s: float) -> int:
    """The child side: runs one step, writing its figures and final status into OUT/steps/NAME.json."""
    step = next(s for s in STEPS if s.name == name)
    result_path = out / "steps" / f"{name}.json"
    ctx = StepContext(out, dry_run, time.monotonic() + budget_s, result_path)
    start = time.monotonic()
    try:
        step.run(ctx)
        status, error = "ok", None
    except StepFailed as exc:
        status, error = "failed", str(exc)
    except Exception as exc:  # an unexpected error is a finding too: one line here, the traceback in the log
        traceback.print_exc()
        text = str(exc).strip().splitlines()
        status, error = "failed", f"{type(exc).__name__}: {text[0][:300] if text else ''}"
    ctx.record(status=status, **({"error": error} if error else {}), seconds=round(time.monotonic() - start, 1))
    return 0 if status == "ok" else 1


def _child_env() -> dict:
    # The steps import this very checkout, whatever the caller's working directory.
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), path]) if path else str(REPO))


def step_command(step: Step, out: Path, dry_run: bool, budget_s: float) -> list[str]:
    command = [sys.executable, "-m", "tools.gpu_check", "--step", step.name, "--out", str(out), "--budget", str(budget_s)]
    return command + (["--dry-run"] if dry_run else [])


def run_with_budget(command: list[str], budget_s: float, log) -> str | None:
    """Runs ``command`` in its own process group, so that a cut takes its children too;
    returns ``"timeout"`` when it was cut at ``budget_s``."""
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_child_env(), start_new_session=True)
    try:
        child.wait(timeout=budget_s)
        return None
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        return "timeout"


def prepare_output(out: Path) -> None:
    """Refuses an output folder that would lose earlier results; creates it."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if (out / RESULT).exists():
        raise ValueError(f"--out {out}: already holds {RESULT} from an earlier check; choose another folder")
    (out / "steps").mkdir(parents=True, exist_ok=True)


def run_gpu_check(out: str | Path, dry_run: bool = False, only: list[str] | None = None) -> dict:
    """Runs the steps (all, or ``only``) and returns the ``gpu_check.json`` document."""
    from tqdm import tqdm

    if not dry_run:
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"no CUDA GPU is visible to torch {torch.__version__} "
                             f"(built for CUDA {torch.version.cuda}); --dry-run runs the check on the CPU")
    out = Path(out)
    prepare_output(out)
    steps = [s for s in STEPS if not only or s.name in only]
    total_budget = sum(s.dry_budget_s for s in steps) if dry_run else TOTAL_BUDGET_S
    doc = {"argv": sys.argv, "dry_run": dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "budget_s": total_budget, "steps": {}}
    result = out / RESULT
    _write_json(result, doc)
    started = time.monotonic()
    with open(out / LOG, "a") as log, tqdm(steps, desc="gpu-check", unit="step", file=sys.stderr) as bar:
        for step in bar:
            bar.set_postfix_str(step.name)
            budget = min(step.dry_budget_s if dry_run else step.budget_s, total_budget - (time.monotonic() - started))
            step_path = out / "steps" / f"{step.name}.json"
            if budget < MIN_STEP_S:
                _write_json(step_path, {"status": "skipped", "error": "the check's total budget is spent"})
            else:
                print(f"== {step.name} (budget {budget:.0f} s) ==", file=log, flush=True)
                step_start = time.monotonic()
                cut = run_with_budget(step_command(step, out, dry_run, budget), budget, log)
                figures = json.loads(step_path.read_text()) if step_path.exists() else {}
                if cut or "status" not in figures:  # cut, or died without a word (a crash)
                    figures.update(status=cut or "failed", seconds=round(time.monotonic() - step_start, 1),
                                   error=f"over its budget of {budget:.0f} s: cut" if cut else
                                         f"the step's process ended without a result (see {LOG})")
                    _write_json(step_path, figures)
                print(f"-- {step.name}: {figures['status']} in {figures.get('seconds')} s", file=log, flush=True)
            figures = json.loads(step_path.read_text())
            doc["steps"][step.name] = {"budget_s": round(budget, 1), **figures}
            doc["total_s"] = round(time.monotonic() - started, 1)
            doc["goals"] = goals(doc["steps"], dry_run)
            _write_json(result, doc)
            bar.write(f"{step.name}: {figures['status']}" + (f" ({figures['error']})" if figures.get("error") else ""))
    return doc


def run_command(args: argparse.Namespace) -> int:
    """``python -m rloss gpu-check``: the whole check, a line of its outcome; 1 when a step is not ok."""
    unknown = sorted(set(args.only or ()) - set(STEP_NAMES))
    if unknown:
        raise ValueError(f"--only {' '.join(unknown)}: no such step; the steps are {', '.join(STEP_NAMES)}")
    doc = run_gpu_check(args.out, dry_run=args.dry_run, only=args.only)
    failed = [name for name, step in doc["steps"].items() if step["status"] != "ok"]
    print(f"gpu-check: {len(doc['steps']) - len(failed)} of {len(doc['steps'])} steps ok"
          + (f", not ok: {', '.join(failed)}" if failed else "") + f"; figures in {Path(args.out) / RESULT}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:  # a step, in the subprocess run_gpu_check starts
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check")
    parser.add_argument("--step", choices=STEP_NAMES, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget", type=float, required=True)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    return run_step_in_this_process(args.step, Path(args.out), args.dry_run, args.budget)


if __name__ == "__main__":
    sys.exit(main())
