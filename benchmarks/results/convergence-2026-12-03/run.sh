#!/bin/bash
# usage: run.sh NAME ROOT LOSS ITERS [extra --set ...]
name=$1; root=$2; loss=$3; its=$4; shift 4
cd /work/main  # the repository
extra=()
for s in "$@"; do extra+=(--set "$s"); done
PYTHONPATH=/work/main /work/main/.venv/bin/python -m rloss train --set model.name=deeplabv3plus_micro --set data.root=$root --set data.crop_size=64 --set data.batch_size=8 \
  --set "data.scale_range=[0.9,1.2]" --set loss.type=$loss --set loss.crf_relative_weight=16.0 --set loss.sigma_xy=12.5 \
  --set optim.name=adamw --set optim.lr=0.002 --set optim.weight_decay=1e-4 --set optim.head_lr_mult=1 \
  --set optim.iterations=$its --set run.eval_every_epochs=1 --set run.threads=1 --set data.holdout_fraction=0.2 \
  --set run.name=$name --set run.results_dir=/tmp/exp/results --set run.seed=0 "${extra[@]}" > /tmp/exp/$name.log 2>&1
echo "$name exit $? $(date +%T)" >> /tmp/exp/done.txt
