#!/bin/bash
# The DenseCRF weight sweep of the built-in study's 40 px fine-tuning, at today's code: the recorded
# small_pce_seed0 config (the study's settings), pCE on 80% of train (32 epochs), then one 16-epoch
# fine-tuning per weight, scored on the 20% held out (val is never read).
cd /tmp/study-rep  # the runs (20:52); the same command from /work/main at a later commit re-scored them with the noise estimate (finished runs are skipped)
.venv/bin/python -m rloss sweep-weight --name small --two-phase --finetune-epochs 16 --weights 0,1,4,16,32,64 --holdout 0.2 \
  --config /work/main/benchmarks/results/study-default-2026-12-03-2028/runs/small_pce_seed0/config.yaml \
  --set loss.type=pce_crf --set run.results_dir=/tmp/sweep-rec/results
