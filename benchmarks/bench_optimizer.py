"""The optimizer's update on the tiny network's parameters: one tensor at a time, foreach, fused.

    python benchmarks/bench_optimizer.py --json benchmarks/results/optimizer-DATE.json

Median milliseconds per ``step()`` of AdamW and SGD (momentum), interleaved over the three
implementations; training uses the fused one on CPU and CUDA (rloss.engine.train).
"""

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from rloss.data.io import write_text_atomic
from rloss.models import build_model

IMPLEMENTATIONS = {"one tensor at a time": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deeplabv3plus_tiny")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args()
    params = list(build_model(args.model, num_classes=6).parameters())
    for param in params:
        param.grad = torch.randn_like(param)
    ms: dict = {}
    for _ in range(args.rounds):
        for name, make in (("adamw", lambda kw: torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, **kw)),
                           ("sgd", lambda kw: torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4, **kw))):
            for impl, kw in IMPLEMENTATIONS.items():
                opt = make(kw)
                opt.step()
                times = []
                for _ in range(args.steps):
                    start = time.perf_counter()
                    opt.step()
                    times.append(time.perf_counter() - start)
                ms.setdefault(name, {}).setdefault(impl, []).append(statistics.median(times) * 1e3)
    summary = {name: {impl: statistics.median(v) for impl, v in d.items()} for name, d in ms.items()}
    for name, d in summary.items():
        print(name, "  ".join(f"{impl} {v:.2f} ms" for impl, v in d.items()))
    doc = {"args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "parameters": len(params), "median_ms": summary}
    if args.json:
        write_text_atomic(args.json, json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
