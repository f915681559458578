#!/bin/bash
cd /work/main
PYTHONPATH=/work/main /work/main/.venv/bin/python -m rloss sweep-weight --name cos40ft --weights 0,1,4,16,32,64 --holdout 0.2 \
  --set model.name=deeplabv3plus_micro --set data.root=/tmp/d40 --set data.crop_size=64 --set data.batch_size=8 \
  --set "data.scale_range=[0.9,1.2]" --set loss.type=pce_crf --set loss.sigma_xy=12.5 \
  --set optim.name=adamw --set optim.lr=0.002 --set optim.weight_decay=1e-4 --set optim.head_lr_mult=1 --set optim.lr_schedule=cosine \
  --set optim.iterations=2000 --set run.eval_every_epochs=1 --set run.threads=1 --set run.results_dir=/tmp/exp/results \
  --set run.seed=0 --set loss.init_from=/tmp/exp/results/B_small_pce_cos/checkpoint.pt > /tmp/exp/sweep.log 2>&1
echo "sweep exit $? $(date +%T)" >> /tmp/exp/done.txt
