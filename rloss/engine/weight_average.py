"""An exponential moving average of a model's weights, the model a run is evaluated and saved as.

Late in a run the last iterate still moves with every mini-batch, and BatchNorm's running
statistics are those of the last few batches: on scribbles the validation mIoU of consecutive
epochs then differs by up to about 1 pp, which hides whether the run has levelled off. The
average over the last ``horizon`` iterations (Polyak averaging, with the BatchNorm statistics
averaged alike) keeps the run's progress and drops most of that noise.
"""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    """``model`` holds the average; :meth:`update` after every optimizer step folds the net's
    current weights and buffers in with weight ``1 / min(updates, horizon)``: the plain mean of
    every iterate until ``horizon`` of them, then an exponential average of time constant
    ``horizon`` iterations (so the first evaluations are not pulled towards the initial weights)."""

    def __init__(self, net: torch.nn.Module, horizon: float):
        if not horizon >= 1:
            raise ValueError(f"weight average: horizon must be >= 1 iteration, got {horizon}")
        self.horizon = float(horizon)
        self.updates = 0
        self.model = copy.deepcopy(net).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        # The state dicts' tensors share storage with the modules', so the pairs stay valid as the
        # optimizer updates the net in place.
        pairs = list(zip(self.model.state_dict().values(), net.state_dict().values()))
        self._averages = [a for a, _ in pairs if a.is_floating_point()]
        self._currents = [n for a, n in pairs if a.is_floating_point()]
        self._counts = [(a, n) for a, n in pairs if not a.is_floating_point()]  # BatchNorm's batch counters

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        weight = 1.0 / min(self.updates, self.horizon)
        if self._averages:
            torch._foreach_lerp_(self._averages, self._currents, weight)
        for average, current in self._counts:
            average.copy_(current)

    def load_state_dict(self, state: dict, updates: int) -> None:
        self.model.load_state_dict(state)
        self.updates = updates
