"""An exponential moving average of a model's weights (Polyak averaging), kept beside training.

Averaging the weights over the last few thousand steps smooths the step-to-step jitter of the
trained network; the average is evaluated and saved instead of the last weights. The decay at
optimisation step ``t`` (1-based) is ``min(decay, (1 + t) / (10 + t))`` -- TensorFlow's
``ExponentialMovingAverage`` with ``num_updates`` -- so early steps are not dominated by the
initial weights, and the average depends on the step alone, which keeps a resumed run exact.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """Holds ``average``, a copy of ``model`` whose parameters track ``model``'s exponentially.

    Buffers (caches or BatchNorm statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.average = copy.deepcopy(model).eval()
        for parameter in self.average.parameters():
            parameter.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The averaging weight of the old average after optimisation step ``step`` (1-based)."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold ``model``'s weights after optimisation step ``step`` (1-based) into the average."""
        keep = self.decay_at(step)
        for averaged, current in zip(self.average.parameters(), model.parameters()):
            averaged.lerp_(current.detach(), 1.0 - keep)
        for averaged, current in zip(self.average.buffers(), model.buffers()):
            if averaged.shape == current.shape:
                averaged.copy_(current)
            else:  # a cache the model sizes on its first forward pass (the capsule nets' coordinate grids)
                averaged.data = current.detach().clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.average.load_state_dict(state)
