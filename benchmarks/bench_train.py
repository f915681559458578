"""Training speed: median seconds per iteration, with and without the DenseCRF loss.

    python benchmarks/bench_train.py --data data/synthetic_40px --crop 64 --batch 8 --iterations 150 \
        --json benchmarks/results/train-40px-cpu-DATE.json
    # on a GPU, the paper's setting:
    python benchmarks/bench_train.py --data VOC_ROOT --model deeplabv3plus_resnet101 --crop 513 --batch 12 \
        --sigma-xy 100 --scale 0.5 --crf-weight 2e-9 --amp bf16 --iterations 60

Each loss is a real training run (rloss.engine.train.train) in a temporary results folder;
the figures are the trainer's own timings (metrics.json): the median time per
iteration (the first is left out) and the DenseCRF loss's share of the iteration time.
"""

import argparse
import json
import platform
import sys
import tempfile
import time

import torch

from rloss.data.io import write_text_atomic
from rloss.study.grid import base_config
from rloss.engine.train import train


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="deeplabv3plus_tiny")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--crf-weight", type=float, default=8e-6)
    p.add_argument("--sigma-xy", type=float, default=12.5)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--amp", default="off")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as results:
        for loss in ("pce", "pce_crf"):
            cfg = base_config(args.data, results, model_name=args.model, data_crop_size=args.crop,
                              data_batch_size=args.batch, optim_iterations=args.iterations,
                              run_eval_every_epochs=10_000, run_checkpoint_every_iters=10_000,
                              loss_type=loss, loss_crf_weight=args.crf_weight, loss_sigma_xy=args.sigma_xy,
                              loss_scale_factor=args.scale, run_amp=args.amp, run_device=args.device,
                              run_name=f"bench_{loss}")
            train(cfg)
            timings = json.loads((cfg.run_dir / "metrics.json").read_text())["timings"]
            rows.append({"loss": loss, **timings})
            print(f"{loss:8s} median {timings['median_iteration_s'] * 1000:.1f} ms/iteration"
                  + (f", DenseCRF share {timings['crf_share']:.1%}" if timings["crf_share"] else ""), flush=True)
    ratio = rows[1]["median_iteration_s"] / rows[0]["median_iteration_s"]
    print(f"pce_crf / pce time per iteration: {ratio:.3f}")
    doc = {"args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "rows": rows, "crf_over_pce": ratio}
    if args.json:
        write_text_atomic(args.json, json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
