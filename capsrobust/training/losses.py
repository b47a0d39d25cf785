"""Training losses: the spread loss of matrix capsules (paper §4) and cross-entropy for the CNN."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MARGIN_START = 0.2
MARGIN_END = 0.9
#: Official schedule m = 0.2 + 0.79 * sigmoid(min(10, step / 50000 - 4)) (REFERENCE.md §4).
_OFFICIAL_SCALE = 0.79
_OFFICIAL_OFFSET = 4.0
_OFFICIAL_CAP = 10.0
#: The sigmoid argument at which the official curve reaches MARGIN_END: logit(0.7 / 0.79) ~= 2.05.
_END_ARGUMENT = math.log((MARGIN_END - MARGIN_START) / (_OFFICIAL_SCALE - (MARGIN_END - MARGIN_START)))


def spread_loss(activations: Tensor, targets: Tensor, margin: float) -> Tensor:
    """Spread loss, mean over the batch: sum_{i != t} max(0, m - (a_t - a_i))^2 (paper §4).

    activations: (N, classes) class-capsule activations; targets: (N,) class ids -> scalar.
    """
    target_act = activations.gather(1, targets.view(-1, 1))  # (N, 1)
    gaps = F.relu(margin - (target_act - activations)) ** 2  # (N, classes); the target term is m^2
    not_target = torch.ones_like(gaps).scatter_(1, targets.view(-1, 1), 0.0)
    return (gaps * not_target).sum(dim=1).mean()


def spread_margin(step: int, total_steps: int) -> float:
    """Spread-loss margin at ``step`` of a ``total_steps`` run: ~0.2 at the start, 0.9 at the end.

    The official curve, m = 0.2 + 0.79 * sigmoid(min(10, step / 50000 - 4)), with its time axis
    rescaled so that the sigmoid argument goes from -4 (m = 0.214, as officially) at step 0 to
    ~2.05 (m = 0.9) at ``total_steps``; the official run would need ~300K steps to get there.
    """
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    argument = -_OFFICIAL_OFFSET + (_OFFICIAL_OFFSET + _END_ARGUMENT) * step / total_steps
    argument = min(_OFFICIAL_CAP, argument)
    return MARGIN_START + _OFFICIAL_SCALE / (1.0 + math.exp(-argument))


#: ``"run"``: :func:`spread_margin` (the official curve stretched over the run, 0.2 -> 0.9);
#: ``"official"``: :func:`official_spread_margin` (the official time axis: ~0.2 for the first
#: ~100K steps, 0.9 only after ~300K); ``"held"``: 0.2 throughout; ``"epoch"``: the paper's text,
#: 0.2 growing by 0.1 per epoch up to 0.9 (:func:`epoch_spread_margin`).
MARGIN_SCHEDULES: tuple[str, ...] = ("run", "official", "held", "epoch")
MARGIN_PER_EPOCH = 0.1


def official_spread_margin(step: int) -> float:
    """The official code's margin at ``step``: 0.2 + 0.79 sigmoid(min(10, step / 50000 - 4))."""
    return MARGIN_START + _OFFICIAL_SCALE / (1.0 + math.exp(-min(_OFFICIAL_CAP, step / 50000.0 - _OFFICIAL_OFFSET)))


def epoch_spread_margin(step: int, steps_per_epoch: int) -> float:
    """The paper's schedule: 0.2 in the first epoch, +0.1 per completed epoch, at most 0.9."""
    if steps_per_epoch <= 0:
        raise ValueError("steps_per_epoch must be positive")
    return min(MARGIN_END, MARGIN_START + MARGIN_PER_EPOCH * (step // steps_per_epoch))


def margin_at(schedule: str, step: int, total_steps: int, steps_per_epoch: int | None = None) -> float:
    """Spread-loss margin at ``step`` under ``schedule`` (one of :data:`MARGIN_SCHEDULES`).

    ``steps_per_epoch`` is needed by ``"epoch"`` only.
    """
    if schedule == "run":
        return spread_margin(step, total_steps)
    if schedule == "official":
        return official_spread_margin(step)
    if schedule == "held":
        return MARGIN_START
    if schedule == "epoch":
        if steps_per_epoch is None:
            raise ValueError("the 'epoch' margin schedule needs steps_per_epoch")
        return epoch_spread_margin(step, steps_per_epoch)
    raise ValueError(f"unknown margin schedule {schedule!r}; valid: {', '.join(MARGIN_SCHEDULES)}")


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy for the CNN: logits (N, classes), targets (N,) -> scalar."""
    return F.cross_entropy(logits, targets)
