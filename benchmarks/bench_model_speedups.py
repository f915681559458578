"""The tiny model's training step with and without its two exact CPU speed-ups.

    python benchmarks/bench_model_speedups.py --json benchmarks/results/model-speedups-DATE.json

The speed-ups (rloss/models/deeplabv3plus.py): bilinear resizing as two matrix products
(``resize_bilinear``) and ASPP's atrous convolutions without the taps that only see padding
(``AtrousConv2d``). "without" swaps in ``F.interpolate`` and the plain ``nn.Conv2d`` forward; both
variants start from the same weights and see the same batch. Timed: forward, a cross-entropy
loss, backward and a fused AdamW step, as training does (the study's setting: batch 8, 64 px,
6 classes, one thread per run), median milliseconds per step over interleaved rounds.
"""

import argparse
import contextlib
import copy
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import rloss.models.deeplabv3plus as deeplab
from rloss.data.io import write_text_atomic
from rloss.models import build_model


@contextlib.contextmanager
def without_speedups():
    resize, forward = deeplab.resize_bilinear, deeplab.AtrousConv2d.forward
    deeplab.resize_bilinear = lambda x, size: F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    deeplab.AtrousConv2d.forward = nn.Conv2d.forward
    try:
        yield
    finally:
        deeplab.resize_bilinear, deeplab.AtrousConv2d.forward = resize, forward


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deeplabv3plus_tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image = torch.randn(args.batch, 3, args.size, args.size)
    target = torch.randint(0, args.classes, (args.batch, args.size, args.size))
    base = build_model(args.model, args.classes)
    nets = {"with": base, "without": copy.deepcopy(base)}
    optimizers = {k: torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True) for k, net in nets.items()}
    contexts = {"with": contextlib.nullcontext, "without": without_speedups}

    def step(variant: str) -> None:
        with contexts[variant]():
            loss = F.cross_entropy(nets[variant](image), target)
        optimizers[variant].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[variant].step()

    with torch.no_grad():  # the same function: outputs agree to float rounding
        nets["with"].eval(), nets["without"].eval()
        with without_speedups():
            reference = nets["without"](image)
        difference = (nets["with"](image) - reference).abs().max().item()
    for net in nets.values():
        net.train()
    ms: dict = {k: [] for k in nets}
    for _ in range(args.rounds):
        for variant in nets:
            step(variant)  # warm-up
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                step(variant)
                times.append(time.perf_counter() - start)
            ms[variant].append(statistics.median(times) * 1e3)
    summary = {k: statistics.median(v) for k, v in ms.items()}
    print(f"max |output difference| {difference:.2e}")
    print("  ".join(f"{k} speed-ups {v:.1f} ms/step" for k, v in summary.items()),
          f"  ratio {summary['without'] / summary['with']:.2f}x")
    doc = {"args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "median_ms_per_step": summary, "per_round_ms": ms, "max_output_difference": difference}
    if args.json:
        write_text_atomic(args.json, json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
