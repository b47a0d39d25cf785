"""Attacks by name: the table :data:`ATTACKS`, specs such as ``pgd:50x5``, :func:`build_attack`, targeted mode,
transfer and noise."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torchattacks
from torch import Tensor, nn
from torchattacks.attack import Attack

from capsrobust.attacks.scores import ScoreModel, check_loss_name
from capsrobust.attacks.sign_gradient import SignGradientAttack, bim, fgsm, pgd
from capsrobust.attacks.vote import VoteAttack
from capsrobust.errors import ConfigError

__all__ = ["ATTACKS", "ATTACK_LOSSES", "ATTACK_NAMES", "BLACK_BOX", "FORWARD_ONLY_BATCH_FACTOR", "MAX_EPS_VALUES",
           "RANDOM_START", "RESTARTABLE", "SIGN_GRADIENT", "TARGETED_OK", "WHITE_BOX", "AttackInfo", "AttackRequest",
           "AttackSpec", "NoiseAttack", "TransferAttack", "attack_info", "build_attack", "check_attack_loss",
           "check_eps",
           "parse_attack_spec", "parse_attack_specs", "parse_eps", "set_target"]

#: Square's and the noise attack's batch, in multiples of the model's: they need no backward pass.
FORWARD_ONLY_BATCH_FACTOR = 4


@dataclass(frozen=True)
class AttackRequest:
    """What :func:`build_attack` hands an attack's builder: the model (already a :class:`ScoreModel`),
    the L∞ radius ``eps`` (pixel units), the loss, steps and restarts resolved from the spec, and the
    options some attacks take (see :func:`build_attack`)."""

    model: ScoreModel
    eps: float
    loss: str
    steps: int
    restarts: int
    seed: int = 0
    early_stop: bool = True
    batch_size: int | None = None
    source_model: nn.Module | None = None
    n_classes: int = 5

    def sign_options(self) -> dict:
        """Options of :class:`SignGradientAttack`."""
        return dict(early_stop=self.early_stop, batch_size=self.batch_size, seed=self.seed)


def _build_fgsm(r: AttackRequest) -> Attack:
    return fgsm(r.model, r.eps, loss=r.loss, **r.sign_options())


def _build_bim(r: AttackRequest) -> Attack:
    return bim(r.model, r.eps, r.steps, loss=r.loss, **r.sign_options())


def _build_pgd(r: AttackRequest) -> Attack:
    return pgd(r.model, r.eps, r.steps, r.restarts, loss=r.loss, **r.sign_options())


def _build_vote(r: AttackRequest) -> Attack:
    return VoteAttack(r.model, r.eps, r.steps, r.restarts, loss=r.loss, **r.sign_options())


def _build_apgd(r: AttackRequest) -> Attack:
    return torchattacks.APGD(r.model, norm="Linf", eps=r.eps, steps=r.steps, n_restarts=r.restarts, loss=r.loss,
                             seed=r.seed)


def _build_square(r: AttackRequest) -> Attack:
    return torchattacks.Square(r.model, norm="Linf", eps=r.eps, n_queries=100 * r.steps, loss=r.loss, seed=r.seed)


def _build_autoattack(r: AttackRequest) -> Attack:
    auto = torchattacks.AutoAttack(r.model, norm="Linf", eps=r.eps, version="standard", n_classes=r.n_classes,
                                   seed=r.seed)
    for sub in auto._autoattack.attacks:
        if not isinstance(sub, torchattacks.Square):
            sub.steps = r.steps
    return auto


def _build_transfer(r: AttackRequest) -> Attack:
    if r.source_model is None:
        raise ConfigError("transfer needs a source model (the other model of the pair)")
    source = r.source_model if isinstance(r.source_model, ScoreModel) else ScoreModel(r.source_model)
    crafted = pgd(source, r.eps, r.steps, 1, loss=r.loss, keep="last", early_stop=False, batch_size=r.batch_size,
                  seed=r.seed)
    return TransferAttack(r.model, crafted)


def _build_noise(r: AttackRequest) -> Attack:
    return NoiseAttack(r.model, r.eps, r.steps, seed=r.seed)


@dataclass(frozen=True)
class AttackInfo:
    """Everything the toolkit knows about one attack by name: how to build it and the facts that
    parsing, the sweep and its sanity checks act on. One row of :data:`ATTACKS`.

    - ``builder``: :class:`AttackRequest` → torchattacks ``Attack``.
    - ``white_box``: a gradient attack on the evaluated model's own scores -- the *headline* attacks
      a robustness number rests on; the others challenge them (the checks' "<= white-box").
    - ``gradient``: uses the evaluated model's gradients (the vote attack: those of its votes);
      the attacks without are the black-box ones.
    - ``searches``: an iterative search on the evaluated model, so its success must be monotone in
      eps (a drop is a flawed attack) and doubling its budget tests convergence where it is a gradient one.
    - ``targeted``: has a targeted mode here (APGD and AutoAttack are untargeted in torchattacks 3.5.1).
    - ``losses``: the losses it accepts; None: every loss in :data:`~capsrobust.attacks.scores.LOSS_NAMES`.
    - ``restartable``: takes ``xR`` random restarts in its spec.
    - ``needs_pair``: crafted on the other model of a pair (transfer).
    - ``capsule_only``: runs on capsule nets only (the vote attack needs class votes).
    - ``batch_factor``: its batch in multiples of the model's (forward-only attacks take larger ones).
    - ``sign_gradient``: run by :class:`SignGradientAttack` (per-image early stopping, shared clean gradients).
    - ``random_start``: starts from a random point in the ball.
    - ``skips_broken``: with the sweep's savings, examples the model already gets wrong are not attacked.
    - ``fixed_steps``: the only number of steps it takes (fgsm: one), else None.
    - ``noise_baseline``: random noise, the baseline every attack must beat.
    """

    name: str
    builder: Callable[[AttackRequest], Attack]
    white_box: bool
    gradient: bool
    searches: bool
    targeted: bool
    losses: tuple[str, ...] | None = None
    restartable: bool = False
    needs_pair: bool = False
    capsule_only: bool = False
    batch_factor: int = 1
    sign_gradient: bool = False
    random_start: bool = False
    skips_broken: bool = False
    fixed_steps: int | None = None
    noise_baseline: bool = False

    @property
    def shares_clean_gradient(self) -> bool:
        """Whether its first gradient is the loss gradient at the clean image (no random start), the same
        at every eps, so a sweep computes it once."""
        return self.sign_gradient and not self.random_start


def _table(*rows: AttackInfo) -> dict[str, AttackInfo]:
    return {row.name: row for row in rows}


#: The attacks by name, in the order they are listed: the one table every name list and fact derives from.
ATTACKS: dict[str, AttackInfo] = _table(
    AttackInfo("fgsm", _build_fgsm, white_box=True, gradient=True, searches=False, targeted=True,
               sign_gradient=True, skips_broken=True, fixed_steps=1),
    AttackInfo("bim", _build_bim, white_box=True, gradient=True, searches=True, targeted=True,
               sign_gradient=True, skips_broken=True),
    AttackInfo("pgd", _build_pgd, white_box=True, gradient=True, searches=True, targeted=True, restartable=True,
               sign_gradient=True, random_start=True, skips_broken=True),
    AttackInfo("apgd", _build_apgd, white_box=True, gradient=True, searches=True, targeted=False,
               losses=("ce", "dlr"), restartable=True, random_start=True),
    AttackInfo("square", _build_square, white_box=False, gradient=False, searches=True, targeted=True,
               losses=("ce", "margin"), batch_factor=FORWARD_ONLY_BATCH_FACTOR, random_start=True),
    AttackInfo("autoattack", _build_autoattack, white_box=True, gradient=True, searches=True, targeted=False,
               losses=("ce",), random_start=True),
    AttackInfo("vote", _build_vote, white_box=False, gradient=True, searches=True, targeted=True, restartable=True,
               capsule_only=True, sign_gradient=True, random_start=True, skips_broken=True),
    AttackInfo("transfer", _build_transfer, white_box=False, gradient=False, searches=False, targeted=True,
               needs_pair=True, skips_broken=True),
    AttackInfo("noise", _build_noise, white_box=False, gradient=False, searches=False, targeted=False,
               batch_factor=FORWARD_ONLY_BATCH_FACTOR, random_start=True, noise_baseline=True),
)


def attack_info(name: str) -> AttackInfo:
    """The row of :data:`ATTACKS` for an attack name (``pgd``, not ``pgd:50x5``); one-line :class:`ConfigError`
    listing the valid names for any other."""
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; valid attacks: {', '.join(ATTACKS)} "
                          "(or a comma-separated list such as fgsm,bim; pgd:50x5 = 50 steps, 5 restarts)")
    return ATTACKS[name]


def _names(fact: Callable[[AttackInfo], bool]) -> tuple[str, ...]:
    return tuple(name for name, info in ATTACKS.items() if fact(info))


ATTACK_NAMES = tuple(ATTACKS)
#: Gradient attacks on the evaluated model's own scores: what a robustness number usually rests on.
WHITE_BOX = _names(lambda a: a.white_box)
#: Attacks whose strength tests the white-box ones (gradient-free; crafted elsewhere; random noise).
BLACK_BOX = _names(lambda a: not a.gradient)
#: Run by :class:`SignGradientAttack` (per-image early stopping, shared clean gradients).
SIGN_GRADIENT = _names(lambda a: a.sign_gradient)
#: Attacks that start from a random point.
RANDOM_START = _names(lambda a: a.random_start)
#: Attacks that take ``xR`` restarts in their spec.
RESTARTABLE = _names(lambda a: a.restartable)
#: Attacks with a targeted mode here (APGD and AutoAttack are untargeted in torchattacks 3.5.1).
TARGETED_OK = _names(lambda a: a.targeted)
#: Losses each attack accepts (the others take every loss in LOSS_NAMES).
ATTACK_LOSSES = {name: info.losses for name, info in ATTACKS.items() if info.losses is not None}

#: A sweep longer than this is almost certainly a typo (0:0.3:0.0002).
MAX_EPS_VALUES = 200

_SPEC = re.compile(r"^(?P<name>[a-z]+)(?::(?P<steps>\d+)(?:x(?P<restarts>\d+))?)?$")


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a sweep: ``NAME[:STEPS[xRESTARTS]]``, e.g. ``pgd``, ``pgd:50x5``, ``autoattack:100``.

    ``steps`` None means the sweep's ``--steps``; it counts iterations (bim, pgd, vote, apgd, the
    gradient attacks inside autoattack), hundreds of queries (square) or the source PGD's iterations
    (transfer) or random draws (noise); ``restarts`` (pgd, vote, apgd) are random restarts. ``label`` is the spec as written,
    the name of its rows.
    """

    name: str
    steps: int | None = None
    restarts: int = 1
    label: str = ""

    def resolved_steps(self, default: int) -> int:
        return self.steps if self.steps is not None else default


def parse_attack_spec(text: str) -> AttackSpec:
    """``pgd:50x5`` → AttackSpec("pgd", 50, 5); one-line :class:`ConfigError` naming what is wrong."""
    label = text.strip().lower()
    match = _SPEC.match(label)
    name = match.group("name") if match else label.split(":")[0]
    info = attack_info(name)
    if match is None:
        raise ConfigError(f"attack {text.strip()!r} is not NAME[:STEPS[xRESTARTS]], e.g. pgd:50x5")
    steps = None if match.group("steps") is None else int(match.group("steps"))
    restarts = 1 if match.group("restarts") is None else int(match.group("restarts"))
    if info.fixed_steps is not None and steps is not None:
        count = "one step" if info.fixed_steps == 1 else f"{info.fixed_steps} steps"
        raise ConfigError(f"{name} takes {count}; write {name}, not {label}")
    if steps is not None and steps < 1 or restarts < 1:
        raise ConfigError(f"attack {label}: steps and restarts must be at least 1")
    if match.group("restarts") is not None and not info.restartable:
        raise ConfigError(f"attack {label}: only {', '.join(RESTARTABLE)} take restarts (xR)")
    return AttackSpec(name, steps, restarts, label)


def parse_attack_specs(attacks: Iterable[str]) -> list[AttackSpec]:
    """The specs of one sweep, in order; one-line :class:`ConfigError` for none, a bad one or one listed twice."""
    specs = [parse_attack_spec(text) for text in attacks]
    if not specs:
        raise ConfigError(f"no attack given; valid attacks: {', '.join(ATTACK_NAMES)}")
    labels = [spec.label for spec in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"attack listed twice in {','.join(labels)}; name each attack once")
    return specs


def check_attack_loss(attack: str, loss: str) -> None:
    """The one rule for ``--loss``: a name in :data:`~capsrobust.attacks.scores.LOSS_NAMES` that ``attack``
    (a name in :data:`ATTACK_NAMES`) accepts (its :attr:`AttackInfo.losses`); else a one-line :class:`ConfigError`."""
    check_loss_name(loss)
    allowed = attack_info(attack).losses
    if allowed and loss not in allowed:
        raise ConfigError(f"{attack} supports --loss {' or '.join(allowed)}, not {loss!r}")


def check_eps(eps: float) -> float:
    """``eps`` if it is an L∞ radius in [0, 1] (pixel units of images in [0, 1]), else a one-line
    :class:`ConfigError` naming it; the one rule for every eps, however it was given."""
    if not 0.0 <= eps <= 1.0:  # also rejects nan
        raise ConfigError(f"--eps {eps:g} is outside [0, 1] (pixel units of images in [0, 1]); "
                          "use values between 0 and 1, e.g. 0.1 or 0:0.3:0.02")
    return eps


def parse_eps(text: str) -> tuple[float, ...]:
    """``0.1`` | ``0,0.05,0.1`` | ``START:STOP:STEP`` (STOP included) -> sorted unique eps values in [0, 1].

    Values are pixel units of images in [0, 1]. Raises :class:`ConfigError` naming the bad value.
    """
    fix = "pass a value such as 0.1, a list 0,0.05,0.1 or a sweep START:STOP:STEP such as 0:0.3:0.02"
    text = text.strip()
    if not text:
        raise ConfigError(f"--eps is empty; {fix}")

    def number(part: str) -> float:
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"--eps: {part.strip()!r} is not a number; {fix}") from None
        return check_eps(value)

    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ConfigError(f"--eps: {text!r} is not START:STOP:STEP; {fix}")
        start, stop, step = (number(p) for p in parts)
        if step <= 0 or stop < start:
            raise ConfigError(f"--eps: sweep {text!r} needs STEP > 0 and STOP >= START; e.g. 0:0.3:0.02")
        count = int(round((stop - start) / step, 9) // 1) + 1  # STOP included when it lies on the grid
        if count > MAX_EPS_VALUES:
            raise ConfigError(f"--eps: sweep {text!r} has {count} values (max {MAX_EPS_VALUES}); use a larger STEP")
        values = [round(start + i * step, 10) for i in range(count)]
    else:
        values = [number(p) for p in text.split(",")]
    return tuple(sorted(set(values)))


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

    def forward(self, images: Tensor, labels: Tensor, start_noise: Tensor | None = None) -> Tensor:
        if isinstance(self.source_attack, SignGradientAttack):
            adversarial = self.source_attack.perturb(images, labels, start_noise=start_noise).adversarial
        else:
            adversarial = self.source_attack(images, labels)
        return adversarial.detach().to(self.device)


class NoiseAttack(Attack):
    r"""Uniform random noise, the baseline every attack must beat (Carlini et al. 2019, §sanity tests):
    ``draws`` samples x + u, u uniform in [−eps, eps] per pixel (clipped to [0, 1]); per image the first
    draw the model gets wrong, else the last draw. Gradient-free, untargeted only; the draws come from
    one generator seeded by ``seed``, so a run is reproducible batch by batch.

    Shapes: images (N, C, H, W) in [0, 1], labels (N,) → (N, C, H, W).

    Example::
        >>> noise = NoiseAttack(ScoreModel(cnn), eps=0.05, draws=20)
        >>> noisy = noise(images, labels)
    """

    def __init__(self, model: nn.Module, eps: float, draws: int, seed: int = 0) -> None:
        super().__init__("Noise", model)
        self.eps, self.draws = eps, draws
        self.generator = torch.Generator().manual_seed(seed)
        self.supported_mode = ["default"]

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        images, labels = images.clone().detach().to(self.device), labels.to(self.device)
        adversarial = images.clone()
        unbroken = torch.ones(len(images), dtype=torch.bool, device=self.device)
        for _ in range(self.draws):
            # Every draw covers the whole batch, so the stream does not depend on which images are left.
            noise = (torch.rand(images.shape, generator=self.generator) * 2 - 1).to(self.device) * self.eps
            index = torch.nonzero(unbroken)[:, 0]
            if len(index) == 0:
                continue
            candidate = (images[index] + noise[index]).clamp(0, 1)
            with torch.no_grad():
                wrong = self.get_logits(candidate).argmax(1) != labels[index]
            adversarial[index] = candidate
            unbroken[index[wrong]] = False
        return adversarial


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
    name: str | AttackSpec,
    model: nn.Module,
    eps: float,
    *,
    loss: str = "ce",
    steps: int = 10,
    restarts: int | None = None,
    score: str | None = None,
    source_model: nn.Module | None = None,
    seed: int = 0,
    n_classes: int = 5,
    early_stop: bool = True,
    batch_size: int | None = None,
) -> Attack:
    """A torchattacks ``Attack`` for ``name`` (an :class:`AttackSpec`, or a spec string such as
    ``pgd:50x5``) on ``model`` at L∞ radius ``eps`` (pixel units).

    ``model`` is a capsrobust model (wrapped here in :class:`ScoreModel` with ``score``) or already a
    ScoreModel. ``steps``/``restarts`` apply where the spec leaves them out. Step size for bim, pgd
    and vote is 2.5·eps/steps (Madry et al. 2018), so the iterate can reach any corner of the ball.

    - fgsm, bim, pgd: :class:`SignGradientAttack` (any loss; ``early_stop``: stop per image once it
      is broken or on target; ``batch_size``: images per forward/backward).
    - vote: :class:`VoteAttack` (capsule nets only: one-line error for a CNN).
    - apgd, square: torchattacks' APGD (ce/dlr) and Square (ce/margin, 100·steps queries).
    - autoattack: torchattacks' AutoAttack ``standard`` -- APGD-CE, APGD-T (DLR, 4 targets), FAB-T,
      then Square (5,000 queries), each on the points the earlier ones left robust; the three
      gradient attacks run ``steps`` iterations (torchattacks' default 10; Croce & Hein use 100:
      ``autoattack:100``). On a capsule net all four see the score of :class:`ScoreModel`:
      log-activations by default (softmax of them = the normalised activations).
    - transfer: PGD (same loss and steps, final iterate) crafted on ``source_model`` with that
      model's default score (or its own, if it is already a ScoreModel), applied to ``model``.
    - noise: :class:`NoiseAttack`, ``steps`` uniform random draws in the ball (the loss plays no part).
    """
    spec = name if isinstance(name, AttackSpec) else parse_attack_spec(name)
    check_attack_loss(spec.name, loss)
    check_eps(eps)
    steps = spec.resolved_steps(steps)
    restarts = spec.restarts if spec.restarts != 1 or restarts is None else restarts
    if steps < 1 or restarts < 1:
        raise ConfigError(f"--steps and restarts must be at least 1, got {steps} and {restarts}")
    wrapped = model if isinstance(model, ScoreModel) else ScoreModel(model, score)
    request = AttackRequest(wrapped, eps, loss, steps, restarts, seed=seed, early_stop=early_stop,
                            batch_size=batch_size, source_model=source_model, n_classes=n_classes)
    return attack_info(spec.name).builder(request)
