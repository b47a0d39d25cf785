"""What an attack differentiates: a model's class scores, and the losses ascended on them.

Which score is attacked (a capsule net outputs class *activations* in (0, 1), not logits):

=============  ===========================  ==============================================================
model          ``score`` (what the attack   meaning
               sees as its (N, 5) scores)
=============  ===========================  ==============================================================
cnn            ``logits``                   the CNN's logits; CE on them is the usual NLL.
capsules       ``log-activation`` (default) log a_j used as logits: softmax(log a) = a / Σ a, the
                                            normalised activations the paper's multi-crop test uses
                                            (REFERENCE.md §2), so CE is a proper NLL of that
                                            distribution and does not saturate at a ≈ 1.
capsules       ``activation``               raw activations used as logits (what plain torchattacks
                                            does with a capsule net, and presumably the paper): CE on
                                            values in (0, 1) is not a log-likelihood; its softmax is
                                            nearly flat, so gradients are weak -- kept for comparison.
=============  ===========================  ==============================================================

The kind of a model is ``model.score_kind`` (``"logits"`` or ``"activation"``), never its name.

Losses (``loss=``), each summed over the batch (so an image's gradient does not depend on which
other images share its batch) and *ascended* by the attack -- untargeted away from the label,
targeted towards the target: ``ce`` (cross-entropy, torchattacks' FGSM/BIM/PGD loss), ``margin``
(Carlini & Wagner 2017, max_{i≠y} s_i − s_y), ``dlr`` (Croce & Hein 2020, as torchattacks' UPGD
computes it) and ``spread`` (the capsule training loss, REFERENCE.md §4, margin 1, applied to
scores in (0, 1): activations, exp of log-activations, softmax of CNN logits -- so it never
saturates). Margin and DLR depend only on score differences/ratios, so they are the "losses
adapted to the model" Carlini et al. 2019 ask for: the same on logits, activations or
log-activations.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from capsrobust.errors import ConfigError
from capsrobust.models import is_capsule_model, score_kind

__all__ = ["LOSS_NAMES", "SCORE_NAMES", "ScoreModel", "attack_loss", "check_loss_name", "default_score", "dlr_loss",
           "margin_loss", "model_device", "spread_attack_loss", "unit_scores"]

LOSS_NAMES = ("ce", "margin", "dlr", "spread")
SCORE_NAMES = ("logits", "log-activation", "activation")

LossFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def check_loss_name(loss: str | LossFn) -> None:
    """One-line :class:`ConfigError` unless ``loss`` is a callable or a name in :data:`LOSS_NAMES`."""
    if not callable(loss) and loss not in LOSS_NAMES:
        raise ConfigError(f"unknown loss {loss!r}; valid losses: {', '.join(LOSS_NAMES)}")


def default_score(model: nn.Module) -> str:
    """``logits`` for a logit model, ``log-activation`` for a capsule net (see the module table)."""
    return "log-activation" if is_capsule_model(model) else "logits"


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` lives (CPU for a parameter-free model)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class ScoreModel(nn.Module):
    """Wraps a capsrobust model so an attack sees the chosen score: images (N, C, 32, 32) → (N, 5).

    ``score``: ``logits`` (CNN), ``log-activation`` or ``activation`` (capsule nets); default
    :func:`default_score`. ``model.score_kind`` must agree (logits cannot be turned into
    activations). The wrapped model's parameters are this module's, so torchattacks finds the device
    (a parameter-free model gets an empty anchor parameter on the CPU). Wrapping a ScoreModel
    re-wraps its model (never log(log a)).

    A model whose scores do not depend differentiably on the input (detached, argmax, NumPy round
    trip) gets exactly-zero input gradients instead of an autograd error, so attacks make no move
    and :func:`capsrobust.evaluation.robustness.gradient_statistics` reports the masking.
    """

    def __init__(self, model: nn.Module, score: str | None = None) -> None:
        super().__init__()
        if isinstance(model, ScoreModel):
            model = model.model
        self.model = model
        self.score_kind = score_kind(model)
        self.score = score or default_score(model)
        if self.score not in SCORE_NAMES:
            raise ConfigError(f"unknown score {self.score!r}; valid: {', '.join(SCORE_NAMES)}")
        if (self.score == "logits") != (self.score_kind == "logits"):
            raise ConfigError(f"score {self.score!r} does not apply to a model whose scores are {self.score_kind}")
        if next(model.parameters(), None) is None:
            self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.from_model_scores(self.model(images), images)

    def from_model_scores(self, scores: Tensor, images: Tensor) -> Tensor:
        """The attack score from the wrapped model's own output ``scores`` (N, K) on ``images``."""
        if images.requires_grad:
            # Keeps ``images`` in the graph even if the model cut it out: zero gradient, not an error.
            scores = scores + 0.0 * images.flatten(1).sum(dim=1, keepdim=True)
        if self.score == "log-activation":
            # Sigmoid outputs underflow to 0 only below ~1e-38; the clamp keeps log finite there.
            return scores.clamp_min(1e-30).log()
        return scores


def unit_scores(scores: Tensor, score: str) -> Tensor:
    """Scores (N, K) mapped into (0, 1) for the spread loss: activations as they are, log-activations
    exponentiated back, logits through softmax (the CNN has no activations of its own)."""
    if score == "log-activation":
        return scores.exp()
    if score == "logits":
        return scores.softmax(dim=1)
    return scores


# ----------------------------------------------------------------------------------------------
# Losses on scores (N, K) with labels (N,) and target labels (N,) or None; each returns a scalar
# (a sum over images) the attack *ascends*.


def _others_max(scores: Tensor, classes: Tensor) -> Tensor:
    """max_{i ≠ classes} scores_i: (N, K), (N,) → (N,) (masking with −inf, valid for negative scores)."""
    masked = scores.masked_fill(F.one_hot(classes, scores.shape[1]).bool(), float("-inf"))
    return masked.max(dim=1).values


def ce_loss(scores: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
    """Cross-entropy, summed: away from the label, or towards the target (its negative)."""
    if targets is None:
        return F.cross_entropy(scores, labels, reduction="sum")
    return -F.cross_entropy(scores, targets, reduction="sum")


def margin_loss(scores: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
    """C&W margin, not clipped at 0 so the attack keeps pushing once it has succeeded.

    torchattacks' UPGD ``margin`` masks the true class with 0 instead of −∞, wrong for negative
    scores (logits, log-activations), and clips at 0 -- hence this version.
    """
    if targets is None:
        return (_others_max(scores, labels) - scores.gather(1, labels[:, None])[:, 0]).sum()
    return (scores.gather(1, targets[:, None])[:, 0] - _others_max(scores, targets)).sum()


def dlr_loss(scores: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
    """Difference of logits ratio (Croce & Hein 2020), as torchattacks' UPGD computes it (needs K ≥ 4)."""
    ordered = scores.sort(dim=1).values
    true = scores.gather(1, labels[:, None])[:, 0]
    if targets is None:
        return (-(true - _others_max(scores, labels)) / (ordered[:, -1] - ordered[:, -3] + 1e-12)).sum()
    target = scores.gather(1, targets[:, None])[:, 0]
    return (-(true - target) / (ordered[:, -1] - 0.5 * ordered[:, -3] - 0.5 * ordered[:, -4] + 1e-12)).sum()


def spread_attack_loss(scores: Tensor, labels: Tensor, targets: Tensor | None, margin: float = 1.0) -> Tensor:
    """Spread loss Σ_{i≠t} max(0, m − (s_t − s_i))² (REFERENCE.md §4); ascended (untargeted, t = label)
    or descended (targeted, t = target). ``scores`` must lie in (0, 1) (see :func:`unit_scores`):
    then m = 1 ≥ any gap, so it never saturates -- on log-activations or logits gaps exceed 1 and
    the loss (and its gradient) would be exactly 0 on confidently classified examples."""
    true = targets if targets is not None else labels
    gap = scores.gather(1, true[:, None]) - scores  # (N, K)
    terms = (margin - gap).clamp_min(0) ** 2
    terms = terms.masked_fill(F.one_hot(true, scores.shape[1]).bool(), 0.0)
    total = terms.sum()
    return -total if targets is not None else total


_LOSSES: dict[str, LossFn] = {"ce": ce_loss, "margin": margin_loss, "dlr": dlr_loss, "spread": spread_attack_loss}


def attack_loss(loss: str | LossFn, scores: Tensor, labels: Tensor, targets: Tensor | None, score: str) -> Tensor:
    """The scalar an attack ascends: ``loss`` (a name in :data:`LOSS_NAMES` or a callable
    ``loss(scores, labels, targets_or_None)``) on ``scores`` (N, K) of kind ``score``."""
    check_loss_name(loss)
    if callable(loss):
        return loss(scores, labels, targets)
    if loss == "spread":
        scores = unit_scores(scores, score)
    return _LOSSES[loss](scores, labels, targets)
