"""Data-parallel training across processes started by ``torchrun`` (one per GPU, or CPU processes).

    torchrun --nproc_per_node 4 -m rloss train --config params/voc_resnet101.yaml

``data.batch_size`` is the global batch: each of the W processes takes a 1/W
slice of every batch of the same shuffled order a single process would use, so
a run gives the same result whatever W is, and a resume may change W.
BatchNorm statistics are synchronised across processes (``SyncBatchNorm`` on
GPUs; :class:`CPUSyncBatchNorm` on CPUs, where PyTorch's supports none), and the
partial cross-entropy is normalised by the global number of labeled pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env() -> DistContext:
    """The process's place in a ``torchrun`` job (a single process when not started by one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    return DistContext(
        rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )


def setup(ctx: DistContext, device: torch.device) -> torch.device:
    """Joins the process group (NCCL on GPUs, gloo on CPUs); returns this process's device."""
    if not ctx.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_threads(ctx: DistContext, requested: int | None) -> int | None:
    """Threads for torch and the lattice's OpenMP pool in this process.

    ``requested`` wins. Otherwise several processes on one machine share its cores
    (torchrun's default of one thread each leaves the rest idle; torch's default of
    all cores each oversubscribes them); a single process keeps torch's default (None).
    """
    if requested is not None:
        return requested
    if not ctx.enabled:
        return None
    return max(1, usable_cores() // ctx.local_world_size)


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_true(flag: bool, device: torch.device, ctx: DistContext) -> bool:
    """``flag`` or-ed across processes (so all of them stop together)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(obj, ctx: DistContext) -> list:
    """Every process's ``obj``, in rank order (a one-element list for a single process)."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


class _SumOverProcesses(torch.autograd.Function):
    """``all_reduce(SUM)`` with a backward pass: the gradient of a sum over processes is
    the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with batch statistics over all processes, for any device and backend.

    The per-channel sums and squared sums are summed over processes by an
    autograd-aware ``all_reduce``, so the backward pass sums the statistics' gradients across
    processes as well: the gradients equal those of one process holding the whole
    batch. The state-dict keys are BatchNorm2d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        # Statistics in float64, in two passes (mean, then squared deviations): float32 sums lose
        # enough that the gradients of the layers before a BatchNorm (nearly zero-sum) drift from
        # PyTorch's BatchNorm by percents; in float64 they agree to float32 precision.
        c = x.shape[1]
        xd = x.double()
        count = torch.tensor([x.numel() // c], dtype=torch.float64, device=x.device)
        sums = _SumOverProcesses.apply(torch.cat([xd.sum(dim=(0, 2, 3)), count]))
        n = sums[-1]
        mean = sums[:c] / n
        centered = xd - mean.view(1, c, 1, 1)
        var = _SumOverProcesses.apply((centered * centered).sum(dim=(0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach().to(self.running_var.dtype), alpha=m)
        y = (centered * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)).to(x.dtype)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1).to(x.dtype) + self.bias.view(1, c, 1, 1).to(x.dtype)
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers synchronised across processes: PyTorch's on GPUs, ours elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CPUSyncBatchNorm):
        new = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        with torch.no_grad():
            if module.affine:
                new.weight.copy_(module.weight)
                new.bias.copy_(module.bias)
                new.weight.requires_grad_(module.weight.requires_grad)
                new.bias.requires_grad_(module.bias.requires_grad)
            if module.track_running_stats:
                new.running_mean.copy_(module.running_mean)
                new.running_var.copy_(module.running_var)
                new.num_batches_tracked.copy_(module.num_batches_tracked)
        new.train(module.training)
        return new.to(next(module.parameters(), module.running_mean).device)
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module
