"""Data-parallel training: torchrun with 2 CPU processes (gloo) against 1 process on the same data."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rloss.engine.config import load_config
from rloss.engine.distributed import DistContext, cpu_threads
from rloss.engine.datasets import EpochSampler, epoch_permutation
from rloss.engine.train import train

ROOT = Path(__file__).resolve().parents[2]


def test_shards_of_each_batch_add_up_to_the_single_process_batches():
    n, batch, world = 23, 6, 3
    single = list(EpochSampler(n, seed=4, epoch=2, start=6, batch_size=batch))
    shards = [list(EpochSampler(n, 4, 2, 6, batch, rank, world)) for rank in range(world)]
    per = batch // world
    rebuilt = []
    for b in range(len(single) // batch):
        for shard in shards:
            rebuilt += shard[b * per : (b + 1) * per]
    assert rebuilt == single
    # whole batches only, from position 6 of the epoch's order
    assert single == epoch_permutation(n, 4, 2)[6 : 6 + 2 * batch]
    with pytest.raises(ValueError, match="not divisible"):
        EpochSampler(n, 0, 0, 0, batch_size=6, rank=0, world_size=4)


def test_threads_are_shared_between_processes_on_one_machine():
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(DistContext(), None) is None  # a single process keeps torch's default
    assert cpu_threads(DistContext(0, 2, 0, 2), None) == max(1, cores // 2)
    assert cpu_threads(DistContext(1, 8, 1, 4), None) == max(1, cores // 4)
    assert cpu_threads(DistContext(1, 8, 1, 4), 3) == 3  # run.threads wins


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from rloss.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, size=40, n_train=8, n_val=5, seed=1, progress=False)
    return root


# Dropout draws come from each process's own RNG and cannot match one process's draws;
# both runs switch it off so the comparison is exact up to summation order.
_CHILD = """
import sys
import torch.nn.functional as F
F.dropout = lambda x, p=0.5, training=True, inplace=False: x
from rloss.engine.config import load_config
from rloss.engine.train import train
train(load_config(sys.argv[1]))
"""


_BN_CHILD = """
import os, sys, torch, torch.distributed as dist
from rloss.engine.distributed import CPUSyncBatchNorm
dist.init_process_group("gloo")
rank = dist.get_rank()
x, g, w, b = torch.load(sys.argv[1])
bn = CPUSyncBatchNorm(x.shape[1]).double()
with torch.no_grad():
    bn.weight.copy_(w); bn.bias.copy_(b)
part = x[rank * 3 : (rank + 1) * 3].clone().requires_grad_()
y = bn(part)
(y * g[rank * 3 : (rank + 1) * 3]).sum().backward()
torch.save({"y": y.detach(), "dx": part.grad, "dw": bn.weight.grad, "db": bn.bias.grad,
            "mean": bn.running_mean, "var": bn.running_var}, f"{sys.argv[2]}.{rank}")
dist.destroy_process_group()
"""


def _torchrun(script: Path, *args, nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
         f"--master_port={_free_port()}", str(script), *map(str, args)],
        env=env, capture_output=True, text=True, timeout=300,
    )


def test_cpu_sync_batchnorm_equals_batchnorm_on_the_whole_batch(tmp_path):
    """Two processes with 3 images each against PyTorch's BatchNorm2d on all 6 (float64)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 5, 7, generator=gen, dtype=torch.float64) * 3 + 1
    g = torch.randn(6, 4, 5, 7, generator=gen, dtype=torch.float64)
    w, b = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5, torch.randn(4, generator=gen, dtype=torch.float64)
    torch.save((x, g, w, b), tmp_path / "inputs.pt")
    script = tmp_path / "bn.py"
    script.write_text(_BN_CHILD)
    done = _torchrun(script, tmp_path / "inputs.pt", tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    parts = [torch.load(tmp_path / f"out.{r}", weights_only=True) for r in range(2)]

    bn = torch.nn.BatchNorm2d(4).double()
    with torch.no_grad():
        bn.weight.copy_(w)
        bn.bias.copy_(b)
    whole = x.clone().requires_grad_()
    y = bn(whole)
    (y * g).sum().backward()
    assert torch.allclose(torch.cat([p["y"] for p in parts]), y, atol=1e-10)
    assert torch.allclose(torch.cat([p["dx"] for p in parts]), whole.grad, atol=1e-10)
    # each process holds its share of the parameter gradients (DDP sums, then averages, them)
    assert torch.allclose(parts[0]["dw"] + parts[1]["dw"], bn.weight.grad, atol=1e-10)
    assert torch.allclose(parts[0]["db"] + parts[1]["db"], bn.bias.grad, atol=1e-10)
    for p in parts:
        assert torch.allclose(p["mean"], bn.running_mean, atol=1e-12)
        assert torch.allclose(p["var"], bn.running_var, atol=1e-12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(data_root, tmp_path, monkeypatch):
    settings = [
        f"data.root={data_root}", "data.crop_size=32", "data.batch_size=4", "model.name=deeplabv3plus_tiny",
        "optim.epochs=2", "loss.type=pce_crf", "loss.kernel=exact", f"run.results_dir={tmp_path}",
        "run.eval_every_epochs=1", "run.device=cpu", "run.checkpoint_every_iters=3", "run.threads=1",
    ]
    monkeypatch.setattr(F, "dropout", lambda x, p=0.5, training=True, inplace=False: x)
    final_one = train(load_config(None, [*settings, "run.name=one"]))

    config = tmp_path / "two.yaml"
    config.write_text(load_config(None, [*settings, "run.name=two"]).to_yaml())
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    done = _torchrun(script, config)
    assert done.returncode == 0, done.stderr[-3000:]

    metrics_one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    metrics_two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics_two["timings"]["processes"] == 2
    assert [e["iteration"] for e in metrics_two["evals"]] == [e["iteration"] for e in metrics_one["evals"]]
    assert metrics_two["final"]["miou"] == pytest.approx(final_one["miou"], abs=0.02)
    assert metrics_two["final"]["pixel_accuracy"] == pytest.approx(final_one["pixel_accuracy"], abs=0.01)

    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert len(two["rng"]) == 2 and len(one["rng"]) == 1
    assert one["model"].keys() == two["model"].keys()  # SyncBatchNorm leaves plain BatchNorm keys
    # In float32 the weights just before a BatchNorm (nearly zero-sum gradients) drift by a
    # few percent with the summation order, so the two models are compared by what they predict.
    from rloss.data.folder import SegmentationFolder
    from rloss.data.transforms import EvalTransform
    from rloss.models import build_model

    val = SegmentationFolder(data_root, "val", transform=EvalTransform(32), require_scribbles=False)
    images = torch.stack([val[i]["image"] for i in range(len(val))])
    logits = []
    for ckpt in (one, two):
        model = build_model("deeplabv3plus_tiny", ckpt["num_classes"]).eval()
        model.load_state_dict(ckpt["model"])
        with torch.no_grad():
            logits.append(model(images))
    assert (logits[0] - logits[1]).norm() / logits[0].norm() < 0.02
    assert (logits[0].argmax(1) == logits[1].argmax(1)).float().mean() > 0.97
    # one writer: no temporary files from a second process, one set of results
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.json"]
