"""The vote attack of Gu, Wu & Tresp (ICLR 2021, "Effective and Efficient Vote Attack on Capsule
Networks"), adapted to matrix capsules with EM routing.

Gu et al. attack a dynamic-routing CapsNet through its class *votes* instead of its outputs: the
class score is the length of the squashed average of the votes û_{j|i} over the children i --
up to a constant factor before the squash, the output routing would give with its initial,
uniform coupling coefficients, i.e. with no agreement iteration at all -- so the gradient
bypasses routing, which otherwise dilutes and distorts it.

EM routing has no vote length: a class capsule's activation is what its M-step makes of the
*spread* of its votes around their mean (paper Procedure 1). The score used here, per class j,
is therefore the activation EM routing gives the class layer when it stops after its first M-step
with the uniform initial assignments R_ij = 1/classes, at the layer's final inverse temperature:

    mu_j = Σ_i a_i V_ij / Σ_i a_i          (the activation-weighted average vote: Gu et al.'s mean)
    sigma_jh² = Σ_i a_i (V_ijh − mu_jh)² / Σ_i a_i + floor
    a_j = sigmoid(λ_final (β_a − (Σ_i a_i / classes) Σ_h (β_u + log sigma_jh)))

V_ij are the class layer's votes (coordinate addition included) and a_i its children's
activations. No E-step runs, so no assignment depends on agreement: routing is bypassed exactly
as in Gu et al.; the layers below the class layer route as usual (the CapsNet Gu et al. attack has
only one routing layer). The attack is PGD (random start, signed steps, optional restarts) on these
scores, seen through the same ``score`` and ``loss`` as every other attack (default: CE on
log a_j); success is always judged by the real model, with full routing.

How the votes are obtained: the class layer (``ClassCaps``) takes its routing function as a
constructor argument (``routing=``, the hook the benchmarks use for the straightforward EM);
:class:`VoteScores` swaps it, for the duration of one forward pass, for a function that runs the
real routing without gradient (the real prediction, for free: the child capsules are shared) and
returns the one-M-step activations above. The model's code is unchanged and nothing is copied.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from capsrobust.attacks.scores import LossFn, ScoreModel
from capsrobust.attacks.sign_gradient import SignGradientAttack
from capsrobust.errors import ConfigError
from capsrobust.models import is_capsule_model
from capsrobust.models.routing import inverse_temperatures

__all__ = ["VoteAttack", "VoteScores", "check_votes"]


def check_votes(model: nn.Module) -> nn.Module:
    """The capsule net behind ``model`` (a ScoreModel or a model), or a one-line :class:`ConfigError`."""
    inner = model.model if isinstance(model, ScoreModel) else model
    if not is_capsule_model(inner):
        raise ConfigError("the vote attack attacks the class votes of a capsule net, and this model outputs logits "
                          "(a CNN has no votes); run vote on a capsule checkpoint")
    if not hasattr(getattr(inner, "class_caps", None), "routing"):
        raise ConfigError(f"the vote attack needs a matrix capsule net with a class capsule layer; "
                          f"{type(inner).__name__} has none")
    return inner


class VoteScores(nn.Module):
    """Class scores of a matrix capsule net from its class votes, routing bypassed (see the module doc).

    images (N, C, 32, 32) in [0, 1] → vote activations (N, classes) in (0, 1) (``score_kind =
    "activation"``). After each call, :attr:`routed` holds the real model's class activations
    (N, classes) for the same images (full routing, no gradient).
    """

    score_kind = "activation"

    def __init__(self, capsnet: nn.Module) -> None:
        super().__init__()
        self.capsnet = check_votes(capsnet)
        self.routed: Tensor | None = None

    def forward(self, images: Tensor) -> Tensor:
        class_caps = self.capsnet.class_caps
        routing = class_caps.routing
        routed: list[Tensor] = []

        def vote_routing(votes: Tensor, activations: Tensor, beta_u: Tensor, beta_a: Tensor, iterations: int,
                         **options: Any) -> tuple[Tensor, Tensor]:
            # votes (N, 1, classes, children, 16), activations (N, 1, children), as ClassCaps passes them.
            with torch.no_grad():
                routed.append(routing(votes.detach(), activations.detach(), beta_u.detach(), beta_a.detach(),
                                      iterations, **options)[1])
            # One M-step at the final inverse temperature: the schedule is linear in lambda_scale.
            schedule = options.get("schedule", "official")
            ratio = inverse_temperatures(schedule, iterations)[-1] / inverse_temperatures(schedule, 1)[0]
            one_step = dict(options, lambda_scale=options.get("lambda_scale", 1.0) * ratio)
            return routing(votes, activations, beta_u, beta_a, 1, **one_step)

        class_caps.routing = vote_routing
        try:
            scores = self.capsnet(images)
        finally:
            class_caps.routing = routing
        self.routed = routed[0].reshape(scores.shape)
        return scores


class VoteAttack(SignGradientAttack):
    r"""Vote attack (Gu, Wu & Tresp, ICLR 2021) on a matrix capsule net: L∞ PGD on the class scores of
    :class:`VoteScores` (the first-M-step activations of the class votes, routing bypassed).

    Score optimised: ``loss`` (default CE) on ``score`` (default log) of the vote activations;
    success (and early stopping) judged by the real model's prediction. Refused (one-line
    ConfigError) for a model whose scores are logits.

    Arguments: model (a capsule net, or a ScoreModel of one, whose ``score`` is reused), eps, steps,
    restarts, loss, random_start (default True), and :class:`SignGradientAttack`'s keep,
    early_stop, batch_size, seed; step size 2.5·eps/steps.
    Shapes: images (N, C, 32, 32) in [0, 1], labels (N,) → (N, C, 32, 32).

    Example::
        >>> vote = VoteAttack(capsnet, eps=0.05, steps=10)
        >>> adversarial = vote(images, labels)      # evaluate capsnet on these
    """

    def __init__(self, model: nn.Module, eps: float, steps: int = 10, restarts: int = 1, loss: str | LossFn = "ce",
                 *, random_start: bool = True, score: str | None = None, **options: Any) -> None:
        capsnet = check_votes(model)
        score = score or (model.score if isinstance(model, ScoreModel) else None)
        super().__init__(ScoreModel(VoteScores(capsnet), score), eps=eps, alpha=2.5 * eps / steps, steps=steps,
                         random_start=random_start, restarts=restarts, loss=loss, name="Vote", **options)
        self.capsnet = capsnet

    def _scores_and_predictions(self, images: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.get_logits(images)
        return scores, self.model.model.routed.argmax(dim=1)

    def _classify(self, images: Tensor) -> Tensor:
        return self.capsnet(images).argmax(dim=1)
