"""Wall-clock time of a set of study runs trained one at a time vs several at once.

    python benchmarks/bench_parallel_runs.py --data data/synthetic_40px --runs 4 --epochs 2 \
        --json benchmarks/results/parallel-runs-DATE.json

The runs are the study's (rloss.engine.run_pool.train_runs on the built-in recipe of params/default.yaml:
the tiny network, 64 px crops, an evaluation every epoch), for losses pCE, pCE + DenseCRF and full
supervision in turn, in a temporary results folder. Each way trains the same runs from scratch:
one at a time with torch's default threads, then ``parallel_runs="auto"`` (one process per core,
one thread each). Run it on a quiet machine; the order alternates over ``--repeats``.
"""

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time

import torch

from rloss.data.io import write_text_atomic
from rloss.engine.run_pool import resolve_processes
from rloss.engine.run_pool import train_runs
from rloss.study.grid import base_config, study_grid


def _configs(data: str, results: str, runs: int, epochs: int):
    base = base_config(data, results, model_name="deeplabv3plus_tiny", data_crop_size=64, data_batch_size=8,
                       data_scale_range=[0.9, 1.2], optim_epochs=epochs, optim_name="adamw", optim_lr=0.002,
                       optim_weight_decay=1e-4, loss_crf_relative_weight=4.0, loss_sigma_xy=12.5,
                       run_eval_every_epochs=1, run_device="cpu")
    grid = study_grid(base, "bench", seeds=range(runs))
    return grid[:runs]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    processes = resolve_processes("auto", "cpu", args.runs)
    times = {"one at a time": [], f"{processes} at once": []}
    for repeat in range(args.repeats):
        ways = [("one at a time", 1), (f"{processes} at once", "auto")]
        for label, setting in ways if repeat % 2 == 0 else ways[::-1]:
            with tempfile.TemporaryDirectory() as results:
                configs = _configs(args.data, results, args.runs, args.epochs)
                start = time.perf_counter()
                train_runs(configs, parallel_runs=setting)
                times[label].append(time.perf_counter() - start)
            print(f"{label}: {times[label][-1]:.1f} s for {args.runs} runs", flush=True)
    medians = {label: statistics.median(t) for label, t in times.items()}
    ratio = medians["one at a time"] / medians[f"{processes} at once"]
    print(f"speed-up with {processes} runs at once: {ratio:.2f}x")
    doc = {"args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "threads_default": torch.get_num_threads(), "processes": processes, "seconds": times,
           "median_s": medians, "speedup": ratio}
    if args.json:
        write_text_atomic(args.json, json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
