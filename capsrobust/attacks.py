"""Adversarial attacks on both models, through torchattacks' ``Attack`` interface (REFERENCE.md §6).

Every attack here is a ``torchattacks.Attack``: it owns the device, targeted/untargeted mode, the
model's eval mode and clamping to [0, 1]; ``attack(images, labels)`` maps images (N, C, 32, 32) in
[0, 1] to adversarial images of the same shape within an L∞ ball of radius ``eps`` (pixel units).

Which score is differentiated (a capsule net outputs class *activations* in (0, 1), not logits):

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

Losses (``loss=``): ``ce`` uses torchattacks' own FGSM / BIM / PGD (cross-entropy on the scores);
``margin`` (Carlini & Wagner 2017, max_{i≠y} s_i − s_y), ``dlr`` (Croce & Hein 2020, UPGD's
implementation) and ``spread`` (the capsule training loss, REFERENCE.md §4, margin 1, applied to
scores in (0, 1): activations, exp of log-activations, softmax of CNN logits -- so it never
saturates) run through :class:`LossPGD`, a ``torchattacks.UPGD`` subclass. Margin and DLR depend
only on score differences/ratios, so they are the "losses adapted to the model" Carlini et al. 2019
ask for: they work the same on logits, activations or log-activations.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
import torchattacks
from torch import Tensor, nn
from torchattacks.attack import Attack

from capsrobust.errors import ConfigError

__all__ = ["ATTACK_NAMES", "LOSS_NAMES", "SCORE_NAMES", "LossPGD", "ScoreModel", "TransferAttack",
           "build_attack", "default_score", "set_target", "unit_scores"]

ATTACK_NAMES = ("fgsm", "bim", "pgd", "apgd", "square", "autoattack", "transfer")
LOSS_NAMES = ("ce", "margin", "dlr", "spread")
SCORE_NAMES = ("logits", "log-activation", "activation")
#: Attacks that differentiate the model they are evaluated on (white-box).
WHITE_BOX = ("fgsm", "bim", "pgd", "apgd", "autoattack")
#: Attacks that support torchattacks' targeted mode here (APGD/AutoAttack are untargeted in 3.5.1).
TARGETED_OK = ("fgsm", "bim", "pgd", "square", "transfer")


# ----------------------------------------------------------------------------------------------
# The model wrapper: one (N, 5) score tensor per batch of images in [0, 1].


def default_score(model: nn.Module) -> str:
    """``logits`` for a logit model, ``log-activation`` for a capsule net (see the module table)."""
    return "log-activation" if getattr(model, "score_kind", "logits") == "activation" else "logits"


class ScoreModel(nn.Module):
    """Wraps a capsrobust model so torchattacks sees the chosen score: images (N, C, 32, 32) → (N, 5).

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
        self.score_kind = getattr(model, "score_kind", "logits")
        self.score = score or default_score(model)
        if self.score not in SCORE_NAMES:
            raise ConfigError(f"unknown score {self.score!r}; valid: {', '.join(SCORE_NAMES)}")
        if (self.score == "logits") != (self.score_kind == "logits"):
            raise ConfigError(f"score {self.score!r} does not apply to a model whose scores are {self.score_kind}")
        if next(model.parameters(), None) is None:
            self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, images: Tensor) -> Tensor:
        scores = self.model(images)
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
# Losses on scores (N, 5) with labels (N,), target labels (N,) or None. Each returns a scalar the
# attack *ascends*: untargeted pushes away from the label, targeted towards the target.


def _others_max(scores: Tensor, classes: Tensor) -> Tensor:
    """max_{i ≠ classes} scores_i: (N, K), (N,) → (N,) (masking with −inf, valid for negative scores)."""
    masked = scores.masked_fill(F.one_hot(classes, scores.shape[1]).bool(), float("-inf"))
    return masked.max(dim=1).values


def margin_loss(scores: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
    """C&W margin, not clipped at 0 so the attack keeps pushing once it has succeeded.

    UPGD's built-in ``margin`` masks the true class with 0 instead of −∞, wrong for negative scores
    (logits, log-activations), and clips at 0 -- hence this version.
    """
    if targets is None:
        return (_others_max(scores, labels) - scores.gather(1, labels[:, None])[:, 0]).sum()
    return (scores.gather(1, targets[:, None])[:, 0] - _others_max(scores, targets)).sum()


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


_SCORE_LOSSES: dict[str, Callable[[Tensor, Tensor, Tensor | None], Tensor]] = {
    "margin": margin_loss,
    "spread": spread_attack_loss,
}


# ----------------------------------------------------------------------------------------------
# Attacks torchattacks lacks.


class LossPGD(torchattacks.UPGD):
    r"""L∞ PGD (Madry et al. 2018) with a choice of loss; FGSM is ``steps=1, alpha=eps, random_start=False``.

    Arguments: model (ScoreModel), eps, alpha (step size), steps, random_start, loss (``ce``,
    ``dlr`` from UPGD; ``margin``, ``spread`` from this module; or a callable
    ``loss(scores, labels, targets_or_None) -> scalar``).
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) → (N, C, H, W).

    Unlike ``UPGD.forward`` (which divides the gradient by its mean magnitude -- NaN wherever a
    gradient is exactly zero, e.g. an example already misclassified under a clipped margin, or a
    gradient-masked model) this takes a plain signed-gradient step, so a zero gradient means no move.

    Example::
        >>> attack = LossPGD(ScoreModel(capsnet), eps=0.1, alpha=0.025, steps=10, loss="margin")
        >>> adversarial = attack(images, labels)
    """

    def __init__(self, model: nn.Module, eps: float, alpha: float, steps: int, random_start: bool = True,
                 loss: str | Callable = "margin") -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start, loss=loss, decay=0.0)
        self.attack = "LossPGD"

    def get_loss(self, images: Tensor, labels: Tensor, target_labels: Tensor | None = None) -> Tensor:
        if callable(self.loss) or self.loss in _SCORE_LOSSES:
            loss = self.loss if callable(self.loss) else _SCORE_LOSSES[self.loss]
            scores = self.get_logits(images)
            if self.loss == "spread":
                scores = unit_scores(scores, getattr(self.model, "score", "activation"))
            return loss(scores, labels, target_labels if self.targeted else None)
        return super().get_loss(images, labels, target_labels)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        targets = self.get_target_label(images, labels) if self.targeted else None
        adversarial = images.clone()
        if self.random_start:
            adversarial = (adversarial + torch.empty_like(adversarial).uniform_(-self.eps, self.eps)).clamp(0, 1)
        for _ in range(self.steps):
            adversarial.requires_grad_(True)
            cost = self.get_loss(adversarial, labels, targets)
            grad = torch.autograd.grad(cost, adversarial)[0]
            step = adversarial.detach() + self.alpha * grad.sign()
            adversarial = (images + (step - images).clamp(-self.eps, self.eps)).clamp(0, 1).detach()
        return adversarial


class TransferAttack(Attack):
    r"""Transfer (black-box) attack: adversarial examples crafted on a *source* model by
    ``source_attack`` and applied unchanged to this model (Papernot et al. 2016; paper §6).

    Arguments: model (the model under evaluation; only its device is used), source_attack (any
    Attack built on the other model). Targeted mode set on this attack is passed to the source
    attack (torchattacks' ``wrapper_method`` forwards mode setters to sub-attacks).
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) → (N, C, H, W).

    Example::
        >>> transfer = TransferAttack(ScoreModel(capsnet), build_attack("pgd", cnn, eps=0.1))
        >>> adversarial = transfer(images, labels)   # evaluate capsnet on these
    """

    def __init__(self, model: nn.Module, source_attack: Attack) -> None:
        super().__init__("Transfer", model)
        self.source_attack = source_attack  # registered in self._attacks by Attack.__setattr__
        self.eps = getattr(source_attack, "eps", None)
        self.supported_mode = ["default", "targeted"]

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        return self.source_attack(images, labels).detach().to(self.device)


# ----------------------------------------------------------------------------------------------


def set_target(attack: Attack, target_class: int | None) -> Attack:
    """Make ``attack`` targeted at one class for every example (None: back to untargeted)."""
    if target_class is None:
        if attack.targeted:
            attack.attack_mode, attack.targeted = "default", False
            for sub in attack._attacks.values():
                sub.attack_mode, sub.targeted = "default", False
        return attack
    try:
        attack.set_mode_targeted_by_function(lambda images, labels: torch.full_like(labels, target_class), quiet=True)
    except ValueError:  # torchattacks: "Targeted mode is not supported."
        raise ConfigError(f"{attack.attack} has no targeted mode; targeted attacks: {', '.join(TARGETED_OK)}") from None
    return attack


def build_attack(
    name: str,
    model: nn.Module,
    eps: float,
    *,
    loss: str = "ce",
    steps: int = 10,
    score: str | None = None,
    source_model: nn.Module | None = None,
    seed: int = 0,
    n_classes: int = 5,
) -> Attack:
    """A torchattacks attack ``name`` (one of :data:`ATTACK_NAMES`) on ``model`` at L∞ radius ``eps``.

    ``model`` is a capsrobust model (wrapped here in :class:`ScoreModel` with ``score``) or already a
    ScoreModel. ``steps``: iterations (bim, pgd, apgd), queries for square (×100), source-attack
    iterations for transfer. Step size for bim/pgd is 2.5·eps/steps (Madry et al. 2018), so the
    iterate can reach any corner of the ball. ``transfer`` crafts PGD (same loss and steps) on
    ``source_model`` with that model's default score (or its own, if it is already a ScoreModel).
    """
    if name not in ATTACK_NAMES:
        raise ConfigError(f"unknown attack {name!r}; valid attacks: {', '.join(ATTACK_NAMES)}")
    if loss not in LOSS_NAMES:
        raise ConfigError(f"unknown loss {loss!r}; valid losses: {', '.join(LOSS_NAMES)}")
    if not 0.0 <= eps <= 1.0:
        raise ConfigError(f"eps must be in [0, 1] (pixel units), got {eps}")
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    wrapped = model if isinstance(model, ScoreModel) else ScoreModel(model, score)
    alpha = 2.5 * eps / steps
    if name == "transfer":
        if source_model is None:
            raise ConfigError("transfer needs a source model (the other model of the pair)")
        return TransferAttack(wrapped, build_attack("pgd", source_model, eps, loss=loss, steps=steps, seed=seed))
    if name == "fgsm":
        return torchattacks.FGSM(wrapped, eps=eps) if loss == "ce" else \
            LossPGD(wrapped, eps=eps, alpha=eps, steps=1, random_start=False, loss=loss)
    if name == "bim":
        return torchattacks.BIM(wrapped, eps=eps, alpha=alpha, steps=steps) if loss == "ce" else \
            LossPGD(wrapped, eps=eps, alpha=alpha, steps=steps, random_start=False, loss=loss)
    if name == "pgd":
        return torchattacks.PGD(wrapped, eps=eps, alpha=alpha, steps=steps, random_start=True) if loss == "ce" else \
            LossPGD(wrapped, eps=eps, alpha=alpha, steps=steps, random_start=True, loss=loss)
    if name == "apgd":
        if loss not in ("ce", "dlr"):
            raise ConfigError(f"apgd supports --loss ce or dlr, not {loss!r}")
        return torchattacks.APGD(wrapped, norm="Linf", eps=eps, steps=steps, loss=loss, seed=seed)
    if name == "square":
        if loss not in ("ce", "margin"):
            raise ConfigError(f"square supports --loss ce or margin, not {loss!r}")
        return torchattacks.Square(wrapped, norm="Linf", eps=eps, n_queries=100 * steps, loss=loss, seed=seed)
    return torchattacks.AutoAttack(wrapped, norm="Linf", eps=eps, version="standard", n_classes=n_classes, seed=seed)
