"""Timing on the device: marks on its timeline, the training steps waiting to be read back, and
the ``timings`` of metrics.json. The trainer, ``tools/gpu_check.py`` and ``tools/bench.py`` time with
the same :class:`DeviceClock`."""

from __future__ import annotations

import statistics
import time

import torch


class DeviceClock:
    """Marks on the device's timeline: CUDA events on a GPU (recording one does not make the host
    wait), ``perf_counter`` readings on the CPU. Read two marks once the device has passed the
    later one (:meth:`wait`)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def wait(self, mark) -> None:
        """Makes the host wait until the device has reached ``mark`` (nothing to wait for on the CPU)."""
        if self.cuda:
            mark.synchronize()

    def seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1e3 if self.cuda else end - start

    def ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else 1e3 * (end - start)


class PendingSteps:
    """The steps not yet read back from the device: their loss terms and timing marks.

    On a GPU nothing of a step is read when it runs, so the host queues the next
    step while the device works (a read would wait for the device to drain). The
    marks are CUDA events, timed on the device; every ``read()`` brings back all
    pending losses in one copy: every log interval, before a checkpoint is
    written and before an evaluation. On the CPU there is nothing to overlap:
    marks are ``perf_counter`` readings and the trainer reads after every step.
    """

    def __init__(self, device: torch.device):
        self.clock = DeviceClock(device)
        self.steps: list[tuple] = []  # (iteration, terms, loss, (start, end, crf_start, crf_end))

    def mark(self):
        return self.clock.mark()

    def add(self, iteration: int, terms: dict, loss: torch.Tensor, marks: tuple) -> None:
        self.steps.append((iteration, {k: v.detach() for k, v in terms.items()}, loss.detach(), marks))

    def read(self) -> list[dict]:
        """The pending steps as plain numbers (one host synchronisation on a GPU), oldest first."""
        if not self.steps:
            return []
        names = list(self.steps[0][1])
        values = torch.stack([torch.stack([*(terms[k].float() for k in names), loss.float()])
                              for _, terms, loss, _ in self.steps]).cpu().tolist()
        self.clock.wait(self.steps[-1][3][1])  # the last step's optimizer update: its end mark
        seconds = self.clock.seconds
        out = []
        for (iteration, _, _, (start, end, crf_start, crf_end)), row in zip(self.steps, values):
            out.append({"iteration": iteration, "terms": dict(zip(names, row[:-1])), "loss": row[-1],
                        "seconds": seconds(start, end),
                        "crf_seconds": seconds(crf_start, crf_end) if crf_start is not None else None})
        self.steps = []
        return out


def read_interval(cfg, device: torch.device) -> int:
    """Steps between reads of the pending losses: the log interval on a GPU (a non-finite loss
    then stops the run at most one interval late, before any checkpoint of it), every step on
    the CPU, where a read costs nothing."""
    return cfg.wandb.log_every_iters if device.type == "cuda" else 1


def timings(iter_times: list[float], crf_times: list[float], device: torch.device, world_size: int) -> dict:
    """metrics.json's ``timings``: the median step, the regularizer's share of it (``crf_share``), the device."""
    # The first iteration of a process (allocations, lazy initialisation) is left out when there are others.
    it, crf = (iter_times[1:], crf_times[1:]) if len(iter_times) > 1 else (iter_times, crf_times)
    out = {
        "median_iteration_s": statistics.median(it) if it else None,
        "crf_share": (sum(crf) / sum(it)) if it and crf and sum(it) > 0 else None,
        "median_crf_s": statistics.median(crf) if crf else None,
        "timed_iterations": len(it),
        "processes": world_size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out
