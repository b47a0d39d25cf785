"""FGSM, BIM and PGD as one L∞ sign-gradient attack that can stop per image once it has succeeded."""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import Tensor, nn
from torchattacks.attack import Attack

from capsrobust.attacks.scores import LossFn, ScoreModel, attack_loss, check_loss_name
from capsrobust.errors import ConfigError

__all__ = ["KEEP_MODES", "AttackResult", "SignGradientAttack", "bim", "fgsm", "pgd"]

#: ``first``: the first successful iterate (evaluation); ``last``: the final iterate (torchattacks).
KEEP_MODES = ("first", "last")


@dataclass
class AttackResult:
    """What :meth:`SignGradientAttack.perturb` returns for N images.

    adversarial: (N, C, H, W) in [0, 1], within eps of the input. predictions: (N,) the attacked
    model's class at each returned image. succeeded: (N,) bool, broken (untargeted) or target hit
    (targeted) at the returned image. gradient_images / forward_images: images passed through
    forward + backward, and through forward alone (inference mode) -- the attack's cost.
    """

    adversarial: Tensor
    predictions: Tensor
    succeeded: Tensor
    gradient_images: int = 0
    forward_images: int = 0


class SignGradientAttack(Attack):
    r"""L∞ sign-gradient attack: FGSM (Goodfellow et al. 2015), BIM (Kurakin et al. 2017) and PGD
    with random restarts (Madry et al. 2018), on any loss of :mod:`capsrobust.attacks.scores`.

    x_{t+1} = clip_[0,1](x + clip_[−eps, eps](x_t + alpha · sign ∇ loss(x_t) − x)), t < steps, with
    the loss ascended (untargeted: away from the label; targeted: towards the target). FGSM is
    ``steps=1, alpha=eps, random_start=False``; BIM ``random_start=False``; PGD starts each of its
    ``restarts`` runs at x + eps·u, u uniform in [−1, 1] per pixel (clipped to [0, 1]).

    What is returned (``keep``): ``"first"`` (evaluation): per image the first iterate -- over every
    step and restart -- that the model gets wrong (untargeted) or puts in the target class
    (targeted), else the final iterate of the last restart; an image counts as broken if any iterate
    broke it, as in AutoAttack (Croce & Hein 2020) and Carlini et al. 2019. ``"last"``: the final
    iterate, as torchattacks' FGSM/BIM/PGD return it (for transfer, where the crafting model's
    own success is no reason to stop).

    ``early_stop`` (with ``keep="first"``): an image leaves the batch once it is broken and restart r
    runs only on images no earlier restart broke -- the same result as iterating everything (the
    first success is the first success), for fewer passes. Per-image random starts
    (``start_noise``) and per-image-summed losses keep each image's iterates independent of which
    other images share its batch, up to floating-point rounding of the model's batched kernels.

    Arguments: model (a :class:`ScoreModel`, or a capsrobust model wrapped with its default score),
    eps (pixel units), alpha (step), steps, random_start, restarts, loss (name or callable),
    keep, early_stop, batch_size (images per forward/backward; None: all), seed (random starts
    drawn without ``start_noise``).
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) → adversarial images (N, C, H, W).

    Example::
        >>> pgd = SignGradientAttack(capsnet, eps=0.05, alpha=0.0125, steps=10, random_start=True, restarts=5)
        >>> result = pgd.perturb(images, labels)      # result.adversarial, result.succeeded
    """

    def __init__(self, model: nn.Module, eps: float, alpha: float, steps: int, random_start: bool = True,
                 restarts: int = 1, loss: str | LossFn = "ce", *, keep: str = "first", early_stop: bool = True,
                 batch_size: int | None = None, seed: int = 0, name: str = "SignGradient") -> None:
        wrapped = model if isinstance(model, ScoreModel) else ScoreModel(model)
        super().__init__(name, wrapped)
        if keep not in KEEP_MODES:
            raise ConfigError(f"keep must be one of {', '.join(KEEP_MODES)}, got {keep!r}")
        check_loss_name(loss)
        if steps < 1 or restarts < 1:
            raise ConfigError(f"steps and restarts must be at least 1, got {steps} and {restarts}")
        self.eps, self.alpha, self.steps, self.random_start = eps, alpha, steps, random_start
        self.restarts = restarts if random_start else 1  # without a random start every restart is the same
        self.loss, self.keep, self.seed = loss, keep, seed
        self.early_stop = early_stop and keep == "first"
        self.batch_size = batch_size
        self.supported_mode = ["default", "targeted"]

    # ------------------------------------------------------------------------------------------
    # What the model says about a batch; the vote attack overrides these two.

    def _scores_and_predictions(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Attack scores (N, K) with autograd, and the attacked model's classes (N,)."""
        scores = self.get_logits(images)
        return scores, scores.detach().argmax(dim=1)

    def _classify(self, images: Tensor) -> Tensor:
        """The attacked model's classes (N,) at ``images``, no gradient."""
        return self.get_logits(images).argmax(dim=1)

    # ------------------------------------------------------------------------------------------

    def _chunks(self, count: int) -> list[slice]:
        size = self.batch_size or max(count, 1)
        return [slice(i, min(i + size, count)) for i in range(0, count, size)]

    def _gradients(self, images: Tensor, labels: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor]:
        """∇ loss (N, C, H, W) and predictions (N,) at ``images``, batch by batch."""
        grads, predictions = [], []
        score = getattr(self.model, "score", "logits")
        for part in self._chunks(len(images)):
            batch = images[part].clone().requires_grad_(True)
            scores, predicted = self._scores_and_predictions(batch)
            cost = attack_loss(self.loss, scores, labels[part], None if targets is None else targets[part], score)
            grads.append(torch.autograd.grad(cost, batch)[0])
            predictions.append(predicted)
        return torch.cat(grads), torch.cat(predictions)

    def _predictions(self, images: Tensor) -> Tensor:
        with torch.no_grad():  # not inference_mode: see capsrobust.evaluation.robustness._predict
            return torch.cat([self._classify(images[part]) for part in self._chunks(len(images))])

    def _start_noise(self, restart: int, shape: torch.Size) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + restart)
        return (torch.rand(shape, generator=generator) * 2 - 1).to(self.device)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        return self.perturb(images, labels).adversarial

    def gradient(self, images: Tensor, labels: Tensor) -> Tensor:
        """∇ of this attack's loss at ``images`` (N, C, H, W), targeted mode honoured: the ``start_gradient``
        :meth:`perturb` takes (it does not depend on eps)."""
        given_training = self.model.training
        self._change_model_mode(given_training)
        try:
            images, labels = images.detach().to(self.device), labels.detach().to(self.device)
            targets = self.get_target_label(images, labels).to(self.device) if self.targeted else None
            return self._gradients(images, labels, targets)[0]
        finally:
            self._recover_model_mode(given_training)

    def perturb(self, images: Tensor, labels: Tensor, *, start_gradient: Tensor | None = None,
                start_noise: Tensor | None = None) -> AttackResult:
        """Attack ``images`` (N, C, H, W) with ``labels`` (N,); see the class docstring.

        start_gradient: (N, C, H, W), the loss gradient at the clean images, for attacks without a
            random start (FGSM, BIM): their first step then needs no forward/backward. It is the
            same at every eps, so a sweep computes it once; the caller must pass only images not
            already successful on the clean input (their first iterate is the clean image).
        start_noise: (restarts, N, C, H, W) in [−1, 1], the random starts (default: drawn from ``seed``).
        """
        given_training = self.model.training
        self._change_model_mode(given_training)
        try:
            return self._perturb(images, labels, start_gradient, start_noise)
        finally:
            self._recover_model_mode(given_training)

    def _perturb(self, images: Tensor, labels: Tensor, start_gradient: Tensor | None,
                 start_noise: Tensor | None) -> AttackResult:
        images = images.detach().to(self.device)
        labels = labels.detach().to(self.device)
        targets = self.get_target_label(images, labels).to(self.device) if self.targeted else None
        goal = targets if targets is not None else labels
        count = len(images)
        result = images.clone()
        predictions = torch.zeros(count, dtype=torch.long, device=self.device)
        done = torch.zeros(count, dtype=torch.bool, device=self.device)
        costs = {"gradient": 0, "forward": 0}

        def success(predicted: Tensor, where: Tensor) -> Tensor:
            return predicted == goal[where] if targets is not None else predicted != goal[where]

        def record(where: Tensor, current: Tensor, predicted: Tensor) -> None:
            """Keep the first successful iterate of each image in ``where``."""
            new = success(predicted, where) & ~done[where]
            result[where[new]] = current[new]
            predictions[where[new]] = predicted[new]
            done[where[new]] = True

        for restart in range(self.restarts):
            active = torch.arange(count, device=self.device)
            if self.early_stop:
                active = active[~done]
            if len(active) == 0:
                break
            current = images[active]
            if self.random_start:
                noise = start_noise[restart] if start_noise is not None else self._start_noise(restart, images.shape)
                current = (current + self.eps * noise.to(self.device)[active]).clamp(0, 1)
            for step in range(self.steps):
                if step == 0 and start_gradient is not None and not self.random_start:
                    grad = start_gradient.to(self.device)[active]
                else:
                    grad, predicted = self._gradients(current, labels[active], None if targets is None else targets[active])
                    costs["gradient"] += len(active)
                    if self.keep == "first":
                        record(active, current, predicted)
                    if self.early_stop:
                        running = ~done[active]
                        active, current, grad = active[running], current[running], grad[running]
                        if len(active) == 0:
                            break
                stepped = current + self.alpha * grad.sign()
                delta = torch.clamp(stepped - images[active], min=-self.eps, max=self.eps)
                current = torch.clamp(images[active] + delta, min=0, max=1)
            if len(active) == 0:
                continue
            predicted = self._predictions(current)
            costs["forward"] += len(active)
            if self.keep == "first":
                record(active, current, predicted)
            failed = ~done[active] if self.keep == "first" else torch.ones_like(active, dtype=torch.bool)
            result[active[failed]] = current[failed]
            predictions[active[failed]] = predicted[failed]
        succeeded = success(predictions, torch.arange(count, device=self.device))
        return AttackResult(result.detach(), predictions, succeeded, costs["gradient"], costs["forward"])


def fgsm(model: nn.Module, eps: float, loss: str | LossFn = "ce", **options) -> SignGradientAttack:
    """FGSM (Goodfellow et al. 2015): one signed step of size eps from the clean image."""
    return SignGradientAttack(model, eps=eps, alpha=eps, steps=1, random_start=False, loss=loss, name="FGSM", **options)


def bim(model: nn.Module, eps: float, steps: int, loss: str | LossFn = "ce", **options) -> SignGradientAttack:
    """BIM (Kurakin et al. 2017): ``steps`` signed steps of 2.5·eps/steps from the clean image."""
    return SignGradientAttack(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=False, loss=loss,
                              name="BIM", **options)


def pgd(model: nn.Module, eps: float, steps: int, restarts: int = 1, loss: str | LossFn = "ce",
        **options) -> SignGradientAttack:
    """PGD (Madry et al. 2018): BIM from ``restarts`` uniform random starts in the eps-ball."""
    return SignGradientAttack(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True,
                              restarts=restarts, loss=loss, name="PGD", **options)

