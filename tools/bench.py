"""Speed and memory of the DenseCRF loss (forward + backward), per kernel; the cost of the
other regularized losses (normalized cut, KernelCut) relative to it.

Inputs are real photos (scikit-image's sample images, resized) with random
soft segmentations that are smooth at 1/8 resolution, as a network's are.
Each case runs in a fresh subprocess so its peak memory is its own.
Run as ``python -m rloss bench crf``; results are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


@dataclass(frozen=True)
class Case:
    kernel: str
    n: int
    k: int
    size: int
    sigma_xy: float  # in pixels of the filtered image
    device: str = "cpu"
    checks: bool = False  # the loss's default input checks on (validate=None), as users get it
    backend: str = "auto"  # the lattice's: extension | torch (portable)
    channels: int = 3  # the images': 1 = grayscale, 3 = RGB, more = bands (bench crf --channels)

    @property
    def label(self) -> str:
        where = "" if self.device == "cpu" else f" ({self.device})"
        plain = self.kernel == "exact" or self.backend == "auto"
        kernel = self.kernel if plain else f"{self.kernel} [{self.backend}]"
        bands = "" if self.channels == 3 else f" C={self.channels} (d={2 + self.channels})"
        return (f"{kernel}{where} N={self.n} K={self.k} {self.size}x{self.size}{bands}"
                + (" checks" if self.checks else ""))


# The published sigma_xy = 100 at 513 px, scaled to the filtered size
# (256 px = a 513 crop at scale_factor 0.5; 64 px = the 40 px setting upscaled; 40 px = not upscaled).
def default_cases(include_exact_large: bool = False, checks: bool = False) -> list[Case]:
    cases = []
    for kernel, backend in (("permutohedral", "extension"), ("permutohedral", "torch"), ("exact", "auto")):
        for n, size in ((12, 256), (1, 256), (32, 64), (32, 40), (32, 32)):
            if kernel == "exact" and size * size > 64 * 64 and not include_exact_large:
                continue  # quadratic: minutes per call
            cases.append(Case(kernel, n, 21, size, 100.0 * size / 513, checks=checks, backend=backend))
    return cases


def cuda_cases() -> list[Case]:
    """The GPU set: N=12 at 256 and 513 px (scale 1.0), N=32 at 64 px, both kernels
    (the exact kernel is left out at 513 px: about 10^12 affinities per batch)."""
    cases = []
    for kernel, backend in (("permutohedral", "extension"), ("permutohedral", "torch"), ("exact", "auto")):
        for n, size in ((12, 256), (12, 513), (32, 64)):
            if kernel == "exact" and size > 256:
                continue
            cases.append(Case(kernel, n, 21, size, 100.0 * size / 513, "cuda", backend))
    return cases


def channel_cases(channels: list[int], device: str = "cpu") -> list[Case]:
    """The lattice on images of each channel count side by side (grayscale, RGB, bands): N=12 at
    256 px and N=32 at 64 px, the extension and the portable lattice."""
    return [Case("permutohedral", n, 21, size, 100.0 * size / 513, device, backend=backend, channels=c)
            for backend in ("extension", "torch") for n, size in ((12, 256), (32, 64)) for c in channels]


def lattice_traffic_bytes(case: Case, dim: int = 5) -> int:
    """A lower bound on the bytes the lattice's splat, blur and slice move: read
    probs, roi and features, write the gradient, and write then read twice the
    (dim+1) vertex indices and weights per pixel. Lattice values are left out
    (they are few and mostly cached), so bytes / time underestimates bandwidth."""
    pixels = case.n * case.size * case.size
    return pixels * (4 * case.k + 4 + 4 * dim + 4 * case.k + 3 * (dim + 1) * 8)


def crossover_cases() -> list[Case]:
    """Small sizes where the exact kernel may beat the lattice (for `auto`)."""
    sizes = (8, 12, 16, 24)
    return [Case(kernel, 32, 21, s, 100.0 * s / 513, backend="extension") for s in sizes for kernel in ("exact", "permutohedral")]


def photo_batch(n: int, size: int, channels: int = 3) -> torch.Tensor:
    """``n`` sample photos resized to ``size``, 0..255 float ``[n, channels, size, size]``: RGB,
    their gray mean (1 channel), or RGB followed by derived bands (the mean, |r - b|, 255 - g, ...)."""
    try:
        from skimage import data
    except ImportError as exc:
        raise SystemExit("rloss bench needs scikit-image for its sample photos: pip install scikit-image") from exc
    images = []
    for i in range(n):
        photo = torch.from_numpy(getattr(data, PHOTOS[i % len(PHOTOS)])()).permute(2, 0, 1)[None].float()
        images.append(F.interpolate(photo, size=(size, size), mode="area").clamp(0, 255))
    rgb = torch.cat(images)
    if channels == 3:
        return rgb
    if channels == 1:
        return rgb.mean(dim=1, keepdim=True)
    derived = [rgb.mean(1), (rgb[:, 0] - rgb[:, 2]).abs(), 255 - rgb[:, 1], rgb.amax(1), rgb.amin(1)]
    bands = [rgb[:, i] for i in range(3)] + derived * (1 + channels // len(derived))
    return torch.stack(bands[:channels], dim=1).contiguous()


def smooth_softmax(n: int, k: int, size: int, generator: torch.Generator) -> torch.Tensor:
    low = max(1, size // 8)
    logits = torch.randn(n, k, low, low, generator=generator) * 3
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False).softmax(dim=1)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_case(case: Case, repeats: int, warmup: int = 3) -> dict:
    """Times forward + backward of the loss in this process (CUDA events on a GPU)."""
    from rloss.engine.timing import DeviceClock
    from rloss.losses import DenseCRFLoss

    device = torch.device(case.device)
    generator = torch.Generator().manual_seed(0)
    images = photo_batch(case.n, case.size, case.channels).to(device)
    probs = smooth_softmax(case.n, case.k, case.size, generator).to(device).requires_grad_(True)
    roi = torch.ones(case.n, case.size, case.size, device=device)
    loss_fn = DenseCRFLoss(2e-9, 15.0, case.sigma_xy, 1.0, kernel=case.kernel, backend=case.backend,
                           validate=None if case.checks else False)
    if case.kernel == "permutohedral" and case.backend != "torch":
        from rloss.filtering import require_lattice

        require_lattice(device)  # the first-use build is not timed

    def step():
        # autograd.grad: the gradient w.r.t. probs, as a network's softmax receives
        # it, without the copy into a leaf's .grad that .backward() would add.
        torch.autograd.grad(loss_fn(images, probs, roi), probs)

    for _ in range(warmup):
        step()
    rss_before = _rss_bytes()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        memory_before = torch.cuda.memory_allocated()
    clock, times = DeviceClock(device), []
    for _ in range(repeats):
        start = clock.mark()
        step()
        end = clock.mark()
        clock.wait(end)
        times.append(clock.seconds(start, end))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        **asdict(case),
        "label": case.label,
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "peak_rss_mib": peak / 2**20,
        "peak_rss_above_inputs_mib": max(0, peak - rss_before) / 2**20,
    }
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name(device)
        result["peak_gpu_mib_above_inputs"] = (torch.cuda.max_memory_allocated() - memory_before) / 2**20
        if case.kernel == "permutohedral" and case.backend != "torch":
            result["traffic_gb_per_s"] = lattice_traffic_bytes(case, 2 + case.channels) / statistics.median(times) / 1e9
    return result


def run_in_subprocess(case: Case, repeats: int, threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "tools.bench", "--case", json.dumps(asdict(case)), "--repeats", str(repeats)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])  # the checkout
    if out.returncode != 0:
        raise RuntimeError(f"benchmark case {case.label} failed:\n{out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def format_table(results: list[dict]) -> str:
    if any(r.get("device", "cpu") == "cuda" for r in results):
        lines = ["| case | median ms | min ms | peak GPU MiB above inputs | lattice traffic GB/s (lower bound) |", "|---|---:|---:|---:|---:|"]
        for r in results:
            traffic = f"{r['traffic_gb_per_s']:.0f}" if "traffic_gb_per_s" in r else "–"
            lines.append(
                f"| {r['label']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | {r.get('peak_gpu_mib_above_inputs', 0):.0f} | {traffic} |"
            )
        return "\n".join(lines)
    lines = [
        "| case | median ms | min ms | threads | peak RSS MiB (above inputs) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['threads']} | "
            f"{r['peak_rss_mib']:.0f} ({r['peak_rss_above_inputs_mib']:.0f}) |"
        )
    return "\n".join(lines)


def bench_crf(
    repeats: int = 10,
    threads: int | None = None,
    crossover: bool = False,
    json_path: str | None = None,
    device: str = "cpu",
    checks: bool = False,
    channels: list[int] | None = None,
) -> list[dict]:
    from tqdm import tqdm

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench crf --device cuda: no CUDA GPU is available")
    if channels:
        cases = channel_cases(channels, device)
    elif device == "cuda":
        cases = cuda_cases()
    else:
        cases = crossover_cases() if crossover else default_cases(checks=checks)
    if json_path and not Path(json_path).resolve().parent.is_dir():  # found out now, not after the benchmark
        raise NotADirectoryError(errno.ENOTDIR, "its folder does not exist or is not a folder", str(json_path))
    results = []
    for case in tqdm(cases, desc="bench crf", unit="case", file=sys.stderr):
        results.append(run_in_subprocess(case, repeats, threads))
    gpu = f", {torch.cuda.get_device_name()}" if device == "cuda" else ""
    print(f"DenseCRF loss forward+backward, {machine_description()}{gpu}, {time.strftime('%Y-%m-%d')}")
    print(format_table(results))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "results": results}, f, indent=1)
    return results


def bench_checks(repeats: int = 20, threads: int | None = None, n: int = 12, k: int = 21, size: int = 256) -> dict:
    """The cost of DenseCRFLoss's input checks on the CPU, side by side in one process:
    forward + backward with the default checks, with validate=False and with
    validate=True (every check on every call, as the default does on its first calls),
    interleaved call by call."""
    from rloss.losses import CHECK_EVERY, CHECK_FIRST_CALLS, DenseCRFLoss

    if threads:
        torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    images = photo_batch(n, size)
    probs = smooth_softmax(n, k, size, generator).requires_grad_(True)
    roi = torch.ones(n, size, size)
    variants = {
        name: DenseCRFLoss(2e-9, 15.0, 100.0 * size / 513, 1.0, kernel="permutohedral", validate=validate)
        for name, validate in (("default", None), ("validate=False", False), ("validate=True", True))
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(CHECK_FIRST_CALLS):  # warm-up, past the default's first fully checked calls
        for loss_fn in variants.values():
            torch.autograd.grad(loss_fn(images, probs, roi), probs)
    # Whole cycles of CHECK_EVERY calls, so the mean includes the scheduled full checks.
    calls = max(repeats, CHECK_EVERY) // CHECK_EVERY * CHECK_EVERY
    for _ in range(calls):
        for name, loss_fn in variants.items():
            start = time.perf_counter()
            torch.autograd.grad(loss_fn(images, probs, roi), probs)
            times[name].append(time.perf_counter() - start)
    base = times["validate=False"]
    print(f"DenseCRFLoss input checks, N={n} K={k} {size}x{size}, {torch.get_num_threads()} threads, "
          f"{calls} interleaved calls each, {machine_description()}, {time.strftime('%Y-%m-%d')}")
    print("| checks | median ms | mean ms | overhead (median) | overhead (mean) |\n|---|---:|---:|---:|---:|")
    result = {}
    for name, t in times.items():
        median, mean = statistics.median(t), statistics.fmean(t)
        over_median = median / statistics.median(base) - 1
        over_mean = mean / statistics.fmean(base) - 1
        print(
            f"| {name} | {1e3 * median:.1f} | {1e3 * mean:.1f} | {100 * over_median:+.1f}% | {100 * over_mean:+.1f}% |"
        )
        result[name] = {"median_ms": 1e3 * median, "mean_ms": 1e3 * mean, "overhead_median": over_median,
                        "overhead_mean": over_mean}
    return result


def regularized_losses(size: int) -> dict:
    """The three regularized losses as users get them (default kernel, backend and checks;
    the config's default bandwidths), sigma_xy scaled to ``size`` as in the cases above."""
    from rloss.engine.config import LossConfig
    from rloss.losses import DenseCRFLoss, KernelCutLoss, NormalizedCutLoss

    defaults = LossConfig()
    sigma_xy = 100.0 * size / 513
    nc_sigma_xy = sigma_xy * defaults.nc_sigma_xy / defaults.sigma_xy  # the config's ratio between the two
    return {
        "DenseCRF": DenseCRFLoss(2e-9, defaults.sigma_rgb, sigma_xy),
        "normalized cut": NormalizedCutLoss(defaults.nc_weight, defaults.nc_sigma_rgb, nc_sigma_xy),
        "KernelCut": KernelCutLoss(defaults.nc_weight, 2e-9, defaults.nc_sigma_rgb, nc_sigma_xy, defaults.sigma_rgb, sigma_xy),
    }


def bench_losses(repeats: int = 10, threads: int | None = None, n: int = 12, k: int = 21, size: int = 256,
                 device: str = "cpu") -> dict:
    """Forward + backward of DenseCRF, normalized cut and KernelCut side by side in one
    process, interleaved call by call, each as users get it; ratios to DenseCRF."""
    if threads:
        torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    images = photo_batch(n, size).to(device)
    probs = smooth_softmax(n, k, size, generator).to(device).requires_grad_(True)
    roi = torch.ones(n, size, size, device=device)
    variants = regularized_losses(size)

    def call(loss_fn) -> float:
        start = time.perf_counter()
        torch.autograd.grad(loss_fn(images, probs, roi), probs)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    from rloss.losses import CHECK_FIRST_CALLS

    for _ in range(CHECK_FIRST_CALLS):  # warm-up, past the default checks' fully checked first calls
        for loss_fn in variants.values():
            call(loss_fn)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, loss_fn in variants.items():
            times[name].append(call(loss_fn))
    base = statistics.median(times["DenseCRF"])
    print(f"Regularized losses forward+backward, N={n} K={k} {size}x{size}, {torch.get_num_threads()} threads, "
          f"{repeats} interleaved calls each, {machine_description()}, {time.strftime('%Y-%m-%d')}")
    print("| loss | median ms | min ms | x DenseCRF (median) |\n|---|---:|---:|---:|")
    result = {}
    for name, t in times.items():
        median = statistics.median(t)
        print(f"| {name} | {1e3 * median:.1f} | {1e3 * min(t):.1f} | {median / base:.2f} |")
        result[name] = {"median_ms": 1e3 * median, "min_ms": 1e3 * min(t), "ratio_to_densecrf": median / base}
    return result


def _main() -> None:  # one case, in a subprocess of bench_crf
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", required=True)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(run_case(Case(**json.loads(args.case)), args.repeats)))


def run_command(args: argparse.Namespace) -> int:
    """``python -m rloss bench crf [...]``: the benchmark its options choose."""
    if args.check_cost:
        bench_checks(repeats=args.repeats, threads=args.threads)
    elif args.losses:
        for n, size in ((12, 256), (32, 64)):
            bench_losses(repeats=args.repeats, threads=args.threads, n=n, size=size, device=args.device)
    else:
        bench_crf(repeats=args.repeats, threads=args.threads, crossover=args.crossover, json_path=args.json,
                  device=args.device, checks=args.checks, channels=args.channels)
    return 0


if __name__ == "__main__":
    _main()
