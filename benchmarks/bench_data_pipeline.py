"""The training data pipeline of one run: the train transform per sample and the batch collation.

    python benchmarks/bench_data_pipeline.py --data data/synthetic_40px --json benchmarks/results/data-pipeline-DATE.json

With ``num_workers=0`` (the default; on a CPU each run's cores are busy training) this work runs
between training steps, in the training process. Samples are read once first (the data set's
cache keeps them decoded), so what is timed is the transform: random rescaling (bicubic image,
nearest labels), padding, cropping, flipping and conversion to tensors; then ``default_collate``
of a batch. Median over rounds, one thread, the study's settings (crop 64, scale 0.9-1.2).
"""

import argparse
import json
import platform
import statistics
import sys
import time

import torch
from torch.utils.data import default_collate

from rloss.data.folder import SegmentationFolder
from rloss.data.io import write_text_atomic
from rloss.data.transforms import TrainTransform


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a data set in the VOC layout (e.g. data/synthetic_40px)")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--samples", type=int, default=400, help="samples per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = SegmentationFolder(args.data, "train", transform=TrainTransform(args.crop, (0.9, 1.2), seed=0),
                              cache_bytes=1 << 30)
    count = min(args.samples, len(data))
    for i in range(count):  # decode and cache
        data[i]
    per_sample, per_batch = [], []
    starts = range(0, count - args.batch + 1, args.batch)
    for round_ in range(args.rounds):
        data.transform.set_epoch(round_)
        transform_s = collate_s = 0.0
        for first in starts:  # batch by batch, each freed before the next, as a DataLoader does
            start = time.perf_counter()
            items = [data[i] for i in range(first, first + args.batch)]
            middle = time.perf_counter()
            default_collate(items)
            transform_s += middle - start
            collate_s += time.perf_counter() - middle
        per_sample.append(transform_s / (len(starts) * args.batch) * 1e3)
        per_batch.append(collate_s / len(starts) * 1e3)
    summary = {"transform_ms_per_sample": statistics.median(per_sample),
               "collate_ms_per_batch": statistics.median(per_batch)}
    summary["ms_per_batch"] = summary["transform_ms_per_sample"] * args.batch + summary["collate_ms_per_batch"]
    print(f"transform {summary['transform_ms_per_sample']:.3f} ms/sample, collate "
          f"{summary['collate_ms_per_batch']:.3f} ms/batch: {summary['ms_per_batch']:.2f} ms per batch of {args.batch}")
    doc = {"args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "median": summary, "per_round": {"transform_ms_per_sample": per_sample, "collate_ms_per_batch": per_batch}}
    if args.json:
        write_text_atomic(args.json, json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
