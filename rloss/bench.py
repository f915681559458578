"""Speed and memory of the DenseCRF loss (forward + backward), per kernel.

Inputs are real photos (scikit-image's sample images, resized) with random
soft segmentations that are smooth at 1/8 resolution, as a network's are.
Each case runs in a fresh subprocess so its peak memory is its own.
Run as ``python -m rloss bench crf``; results are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

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

    @property
    def label(self) -> str:
        return f"{self.kernel} N={self.n} K={self.k} {self.size}x{self.size}"


# The published sigma_xy = 100 at 513 px, scaled to the filtered size
# (256 px = a 513 crop at scale_factor 0.5; 64 px = the 40 px setting upscaled).
def default_cases(include_exact_large: bool = False) -> list[Case]:
    cases = []
    for kernel in ("permutohedral", "exact"):
        for n, size in ((12, 256), (1, 256), (32, 64), (32, 32)):
            if kernel == "exact" and size * size > 64 * 64 and not include_exact_large:
                continue  # quadratic: minutes per call
            cases.append(Case(kernel, n, 21, size, 100.0 * size / 513))
    return cases


def crossover_cases() -> list[Case]:
    """Small sizes where the exact kernel may beat the lattice (for `auto`)."""
    return [Case(kernel, 32, 21, size, 100.0 * size / 513) for size in (8, 12, 16, 24) for kernel in ("exact", "permutohedral")]


def photo_batch(n: int, size: int) -> torch.Tensor:
    """``n`` sample photos resized to ``size``, RGB 0..255 float ``[n, 3, size, size]``."""
    try:
        from skimage import data
    except ImportError as exc:
        raise SystemExit("rloss bench needs scikit-image for its sample photos: pip install scikit-image") from exc
    images = []
    for i in range(n):
        photo = torch.from_numpy(getattr(data, PHOTOS[i % len(PHOTOS)])()).permute(2, 0, 1)[None].float()
        images.append(F.interpolate(photo, size=(size, size), mode="area").clamp(0, 255))
    return torch.cat(images)


def smooth_softmax(n: int, k: int, size: int, generator: torch.Generator) -> torch.Tensor:
    low = max(1, size // 8)
    logits = torch.randn(n, k, low, low, generator=generator) * 3
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False).softmax(dim=1)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_case(case: Case, repeats: int, warmup: int = 2) -> dict:
    """Times forward + backward of the loss in this process."""
    from .losses import DenseCRFLoss

    generator = torch.Generator().manual_seed(0)
    images = photo_batch(case.n, case.size)
    probs = smooth_softmax(case.n, case.k, case.size, generator).requires_grad_(True)
    roi = torch.ones(case.n, case.size, case.size)
    loss_fn = DenseCRFLoss(2e-9, 15.0, case.sigma_xy, 1.0, kernel=case.kernel, validate=False)
    if case.kernel == "permutohedral":
        from .filtering import load_extension

        load_extension()  # the first-use build is not timed
    rss_before = _rss_bytes()
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        # autograd.grad: the gradient w.r.t. probs, as a network's softmax receives
        # it, without the copy into a leaf's .grad that .backward() would add.
        torch.autograd.grad(loss_fn(images, probs, roi), probs)
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        **asdict(case),
        "label": case.label,
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "peak_rss_mib": peak / 2**20,
        "peak_rss_above_inputs_mib": max(0, peak - rss_before) / 2**20,
    }


def run_in_subprocess(case: Case, repeats: int, threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "rloss.bench", "--case", json.dumps(asdict(case)), "--repeats", str(repeats)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
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


def bench_crf(repeats: int = 10, threads: int | None = None, crossover: bool = False, json_path: str | None = None) -> list[dict]:
    from tqdm import tqdm

    cases = crossover_cases() if crossover else default_cases()
    results = []
    for case in tqdm(cases, desc="bench crf", unit="case", file=sys.stderr):
        results.append(run_in_subprocess(case, repeats, threads))
    print(f"DenseCRF loss forward+backward, {machine_description()}, {time.strftime('%Y-%m-%d')}")
    print(format_table(results))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "results": results}, f, indent=1)
    return results


def _main() -> None:  # one case, in a subprocess of bench_crf
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", required=True)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(run_case(Case(**json.loads(args.case)), args.repeats)))


if __name__ == "__main__":
    _main()
