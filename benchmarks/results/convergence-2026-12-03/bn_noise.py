# Usage: python bn_noise.py <run folder> <data root>  (run 2026-12-03 ~06:22 UTC on small_pce_seed0 / seed2 of the 02:59 study).
# Is the late-epoch mIoU noise BatchNorm running statistics? Re-estimate them from 20 random batches
# (what momentum 0.1 effectively averages) several times, and precisely from many batches.
import sys, copy, torch
from pathlib import Path
from torch.utils.data import DataLoader
from rloss.models import build_model
from rloss.data.folder import SegmentationFolder
from rloss.data.transforms import TrainTransform, EvalTransform
from rloss.train import evaluate
torch.set_num_threads(2)
run = Path(sys.argv[1]); root = sys.argv[2]
ck = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
net = build_model(ck["model_name"], ck["num_classes"], pretrained=False)
net.load_state_dict(ck["model"])
names = ck["class_names"]
val = SegmentationFolder(root, "val", transform=EvalTransform(64, "bicubic"), require_scribbles=False)
vl = DataLoader(val, batch_size=8, collate_fn=list)
def ev(m): return round(100 * evaluate(m, vl, torch.device("cpu"), ck["num_classes"], names)[0]["miou"], 2)
print("as saved", ev(net))
tr = SegmentationFolder(root, "train", transform=TrainTransform(64, (0.9, 1.2), "bicubic", flip=True, seed=0))
for trial in range(4):
    m = copy.deepcopy(net); m.train()
    g = torch.Generator().manual_seed(trial)
    dl = DataLoader(tr, batch_size=8, shuffle=True, generator=g, drop_last=True)
    with torch.no_grad():
        for i, d in enumerate(dl):
            if i == 20: break
            m(d["image"])
    print("bn from 20 batches, momentum 0.1, trial", trial, ev(m))
m = copy.deepcopy(net); m.train()
for mod in m.modules():
    if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
        mod.reset_running_stats(); mod.momentum = None
with torch.no_grad():
    for i, d in enumerate(DataLoader(tr, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(9), drop_last=True)):
        if i == 100: break
        m(d["image"])
print("precise bn, 100 batches", ev(m))
