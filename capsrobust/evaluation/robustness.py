"""Adversarial robustness sweeps (model × attack × ε × mode) and their sanity checks (REFERENCE.md §6).

:func:`robustness_sweep` returns one tidy row per (model, attack, eps, mode) plus a ``worst-case``
row per (model, eps, mode): the per-example worst case over every attack in the sweep (an example
counts as broken if *any* attack broke it; Carlini et al. 2019 §4). :func:`sanity_checks` turns
that table and :func:`gradient_statistics` into PASS / WARN / FAIL / SKIP rows under one verdict line
per model; a FAIL is reported, never hidden, and makes the model's numbers SUSPECT; a WARN (e.g.
FGSM's overshoot at large eps) is reported and does not. :func:`evaluate_robustness` also keeps the
per-image outcomes of the worst case (:data:`PER_IMAGE_COLUMNS`), from which robust accuracy and its
intervals are computed (:mod:`capsrobust.evaluation.robust_accuracy`). :func:`compare_savings` runs a
sweep with and without the savings below and checks that both give the same table.

Conventions
-----------
- ``eps`` is the L∞ radius in pixel units of images in [0, 1] (standardisation is inside the models).
- ``eps_std`` is ``eps / mean_i(std_i)``, std_i the per-image standard deviation of the *clean*
  inputs exactly as the models' standardisation computes it (over C, H, W; + 1e-5 under the root).
  This is the ε the paper's Fig. 3 reports (per-image-standardised units); it is the ε of an
  image of average contrast, not a per-image bound.
- An example the model already gets wrong on the clean input (untargeted), or already puts in the
  target class (targeted), counts as broken with its clean image (‖δ‖∞ = 0): the clean image is in
  every eps-ball. The iterative attacks return the first iterate that succeeds (see
  :class:`~capsrobust.attacks.SignGradientAttack`), so an example counts as broken if any iterate
  broke it (the AutoAttack convention).
- untargeted: ``adversarial_error`` = fraction misclassified after the attack; ``attack_success_rate``
  = fraction of the *clean-correct* examples that the attack misclassifies.
- targeted: every example is attacked towards each class t. ``attack_success_rate`` averages
  "prediction == t" over the 4 wrong classes (t ≠ label); ``success_rate_5class`` averages over all
  5 classes *including the true one*, the paper's Fig. 3 convention (20 % at ε = 0 for a perfect
  model) -- kept only for comparison. ``adversarial_error`` averages over the 4 wrong targets.
- ``linf_mean`` / ``linf_max``: mean and max over examples (and wrong targets) of ‖x_adv − x‖∞.
- ``seconds``, ``gradient_images``, ``forward_images``: what the cell cost (wall time; images
  through forward + backward and through forward alone -- empty for torchattacks' own attacks).

Savings (``SweepConfig.savings``, on by default; "attack only what is left to break")
-------------------------------------------------------------------------------------
Each saving skips work whose outcome is already known, so the table is the one the plain path
computes (:func:`compare_savings` checks it; the tests prove it on tiny models):

1. eps = 0: the ball is the clean image, so every attack's result is the clean prediction.
2. Examples already broken on the clean input (see above) are not attacked by FGSM, BIM, PGD, the
   vote attack or transfer. (APGD, Square and AutoAttack skip them internally; they get the same
   inputs in both paths, so their random draws are the same.)
3. FGSM, BIM, PGD and the vote attack stop per example once it is broken (untargeted) or on
   target (targeted); a PGD restart runs only on examples no earlier restart broke.
4. Computation, not results, is reused across eps: the loss gradient at the clean image is FGSM's
   only gradient and BIM's first, and is the same at every eps, so it is computed once per model
   and target. Results are never carried from a smaller eps to a larger one: none of these attacks
   is monotone in eps (FGSM's x + eps·sign g can step back over the decision boundary as eps grows;
   BIM and PGD take eps-dependent paths), so "broken at 0.05" does not imply "this attack breaks it
   at 0.1" -- exactly what the monotonicity check would then no longer see.
5. No autograd wherever no gradient is needed (clean and final predictions; ``no_grad``, as
   ``inference_mode`` would poison ConvCaps' lazily cached patch index), and batch sizes per model
   (:func:`default_batch_size`; Square and noise, forward-only, get their ``batch_factor`` times more).

Random starts are drawn once per model, per example and restart, and shared by every eps, attack
and both paths, so PGD and the vote attack are as reproducible as BIM. What can still differ
between the paths is floating-point rounding: a model's batched kernels round an example's
scores differently (measured: up to 4e-6 on capsules-small) depending on which other examples
share its batch, which can flip a gradient sign that is zero to within rounding, or a prediction
at a near-tie.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from capsrobust.attacks import (ATTACKS, TARGETED_OK, AttackInfo, AttackSpec, ScoreModel, SignGradientAttack,
                                TransferAttack, attack_info, build_attack, check_attack_loss, check_eps, check_votes,
                                model_device, parse_attack_specs, set_target)
from capsrobust.errors import ConfigError
from capsrobust.models import score_kind
from capsrobust.models.preprocessing import STANDARDISE_EPS

__all__ = ["CHANCE_EPS", "CHANCE_ERROR", "CHANCE_TOLERANCE", "COST_COLUMNS", "PER_IMAGE_COLUMNS", "RESULT_COLUMNS",
           "UNBOUNDED_EPS", "SweepConfig", "check_models",
           "compare_savings",
           "default_batch_size", "evaluate_robustness", "gradient_statistics", "mean_image_std", "robustness_sweep",
           "sanity_checks", "sweep_cells", "tolerance", "verdicts"]

N_CLASSES = 5
#: Error of a constant prediction on balanced 5-class data.
CHANCE_ERROR = 0.8
#: The chance check passes at error ≥ CHANCE_ERROR − CHANCE_TOLERANCE: test subsets are only roughly
#: balanced, and at ε = 0.5 the attacker can always reach a constant grey image, whose error is
#: 1 − (share of the class predicted for grey), ≈ 0.8.
CHANCE_TOLERANCE = 0.05
#: Checks between attacks (iterative ≥ single-step, monotone in ε, black-box ≤ white-box) allow
#: this absolute slack -- or two examples' worth on small sets (random starts add noise).
COMPARE_TOLERANCE = 0.02
#: From this eps on, the ball holds a constant grey image: the chance check applies, the noise check stops.
CHANCE_EPS = 0.5
#: At this eps the ball is the whole image space: the strongest attack must reach 100 %.
UNBOUNDED_EPS = 1.0
#: Gradient check: FAIL when more than this fraction of input-gradient entries is exactly zero.
MAX_ZERO_GRADIENT_FRACTION = 0.5
MODES = ("untargeted", "targeted")
#: Images per forward/backward by model kind (``score_kind``). Measured (one thread, a busy 2-core
#: CPU, best of 3 after a warm-up): capsules-small forward + backward 153 images/s at 8, 167 at 16,
#: 163 at 32, 156 at 64, 144 at 128 (a first pass at 100-128 ran at 50-100/s while its
#: vote-sized temporaries were allocated); capsules 30/s at 4-16, 19 at 32; the CNN 1,100/s at
#: 32, 1,300 at 128-256. Small batches also keep batches full as early stopping thins them out.
DEFAULT_BATCH_SIZES = {"activation": 16, "logits": 128}
#: What a cell measured (compared by :func:`compare_savings`) and what it cost (not compared).
RESULT_COLUMNS = ["dataset", "model", "score", "loss", "attack", "steps", "restarts", "eps", "eps_std", "mode", "n",
                  "clean_error", "adversarial_error", "attack_success_rate", "success_rate_5class", "linf_mean",
                  "linf_max"]
COST_COLUMNS = ["seconds", "gradient_images", "forward_images"]
#: The per-image outcomes of an untargeted sweep: one row per (model, eps, image); ``image`` indexes the
#: attacked images (the same for every model), ``broken`` the worst case over every attack at that eps.
PER_IMAGE_COLUMNS = ["dataset", "model", "eps", "eps_std", "image", "label", "clean_correct", "broken"]


def tolerance(n: int) -> float:
    """Slack for comparisons between attacks on ``n`` examples: max(2 points, 2 examples)."""
    return max(COMPARE_TOLERANCE, 2.0 / max(n, 1))


def default_batch_size(model: nn.Module) -> int:
    """Images per forward/backward for ``model``: :data:`DEFAULT_BATCH_SIZES` by its ``score_kind``."""
    return DEFAULT_BATCH_SIZES.get(score_kind(model), 100)


@dataclass
class SweepConfig:
    """What to run: attacks × eps values × modes, and how (loss, steps, batch size, seed, savings).

    ``attacks`` are specs ``NAME[:STEPS[xRESTARTS]]`` (:func:`~capsrobust.attacks.parse_attack_spec`),
    each the label of its rows; ``steps`` applies where a spec names none. ``batch_size`` None: per
    model (:func:`default_batch_size`). ``savings``: see the module docstring.
    """

    attacks: tuple[str, ...] = ("fgsm", "bim")
    eps_values: tuple[float, ...] = (0.0, 0.05, 0.1)
    modes: tuple[str, ...] = ("untargeted",)
    loss: str = "ce"
    steps: int = 10
    batch_size: int | None = None
    seed: int = 0
    scores: dict[str, str] = field(default_factory=dict)  # model name -> score (default per model)
    savings: bool = True

    def specs(self) -> list[AttackSpec]:
        """The parsed attack specs, in order."""
        return parse_attack_specs(self.attacks)

    def batch_size_for(self, model: nn.Module) -> int:
        return self.batch_size or default_batch_size(model)

    def validate(self) -> None:
        """Every option checked before any work (a bad loss must not surface hours into a sweep)."""
        specs = self.specs()  # none, a bad spec or one listed twice: ConfigError
        if not self.eps_values:
            raise ConfigError("no eps value given; pass e.g. --eps 0.1 or --eps 0:0.3:0.02")
        for spec in specs:
            check_attack_loss(spec.name, self.loss)
        if self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        for eps in self.eps_values:
            check_eps(eps)
        for mode in self.modes:
            if mode not in MODES:
                raise ConfigError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        if "targeted" in self.modes:
            bad = [s.label for s in specs if not attack_info(s.name).targeted]
            if bad:
                raise ConfigError(f"{', '.join(bad)} cannot run targeted here; targeted attacks: {', '.join(TARGETED_OK)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")


def mean_image_std(images: Tensor) -> float:
    """Mean over images (N, C, H, W) of the per-image std the models standardise by."""
    flat = images.flatten(1).double()
    return float((flat.var(dim=1, unbiased=False) + STANDARDISE_EPS).sqrt().mean())


def _predict(model: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    """Predicted classes (N,), on the images' device, for images (N, C, 32, 32) on the model's device.

    Under ``no_grad``, not ``inference_mode``: ConvCaps caches its patch index on first use, and an
    index built in inference mode could never again take part in a backward pass.
    """
    model.eval()
    with torch.no_grad():
        return torch.cat([model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def _attack_batches(attack, images: Tensor, labels: Tensor, batch_size: int) -> Tensor:
    """Adversarial images (N, C, H, W), the attack run batch by batch."""
    return torch.cat([attack(images[i : i + batch_size], labels[i : i + batch_size])
                      for i in range(0, len(images), batch_size)])


def _linf(adversarial: Tensor, images: Tensor) -> Tensor:
    """Per-example ‖x_adv − x‖∞: (N, …) → (N,), on the CPU."""
    if len(images) == 0:
        return torch.zeros(0)
    return (adversarial - images).flatten(1).abs().max(dim=1).values.cpu()


@dataclass
class _Outcome:
    """Per-example results of one (model, attack, eps, mode): predictions (T, N) and L∞ (T, N), on the CPU,
    and what they cost. T = 1 (untargeted) or 5 (one row per target class)."""

    predictions: Tensor
    linf: Tensor
    gradient_images: float = 0.0
    forward_images: float = 0.0


def _applies(spec: AttackSpec, model: nn.Module) -> bool:
    """Whether ``spec`` runs on ``model`` in a sweep (a capsule-only attack, the vote attack, needs class votes)."""
    if not attack_info(spec.name).capsule_only:
        return True
    try:
        check_votes(model)
    except ConfigError:
        return False
    return True


class _ModelSweep:
    """What every cell of one model shares: its device and batch size, the clean predictions, the
    random starts and (with savings) the loss gradients at the clean images."""

    def __init__(self, model: nn.Module, score: str | None, images: Tensor, labels: Tensor, config: SweepConfig,
                 source: ScoreModel | None) -> None:
        self.model, self.config, self.source = model.eval(), config, source
        device = model_device(model)
        self.images, self.labels = images.to(device), labels.to(device)
        self.scored = ScoreModel(model, score)
        self.batch_size = config.batch_size_for(model)
        self.clean = _predict(model, self.images, self.batch_size)
        self._noise: list[Tensor] = []
        self._start_gradients: dict[int | None, Tensor] = {}

    def noise(self, restarts: int) -> Tensor:
        """(restarts, N, C, H, W) uniform in [−1, 1]: restart r's random start for every example."""
        while len(self._noise) < restarts:
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + len(self._noise))
            self._noise.append((torch.rand(self.images.shape, generator=generator) * 2 - 1).to(self.images.device))
        return torch.stack(self._noise[:restarts])

    def _start_gradient(self, attack: SignGradientAttack, target: int | None, index: Tensor) -> tuple[Tensor, int]:
        """The loss gradient at the clean images ``index`` (eps plays no part in it); computed once per
        target, always over the same examples (those not already broken), and the images it cost."""
        if target not in self._start_gradients:
            gradient = torch.zeros_like(self.images)
            gradient[index] = attack.gradient(self.images[index], self.labels[index])
            self._start_gradients[target] = gradient
            return gradient[index], len(index)
        return self._start_gradients[target][index], 0

    def cell(self, spec: AttackSpec, eps: float, mode: str) -> _Outcome:
        targets = [None] if mode == "untargeted" else list(range(N_CLASSES))
        parts = [self._one_target(spec, eps, target) for target in targets]
        return _Outcome(torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts]),
                        sum(p[2] for p in parts), sum(p[3] for p in parts))

    def _one_target(self, spec: AttackSpec, eps: float, target: int | None) -> tuple[Tensor, Tensor, float, float]:
        """Predictions (N,) and L∞ (N,) after attacking towards ``target`` (None: untargeted), and the cost."""
        config, count = self.config, len(self.labels)
        already = self.clean != self.labels if target is None else self.clean == target
        predictions, linf = self.clean.clone(), torch.zeros(count)
        savings = config.savings
        if savings and eps == 0.0:
            return predictions.cpu(), linf, 0.0, 0.0
        info = attack_info(spec.name)
        skip_broken = savings and info.skips_broken
        index = torch.nonzero(~already if skip_broken else torch.ones_like(already))[:, 0]
        if len(index) == 0:
            return predictions.cpu(), linf, 0.0, 0.0
        torch.manual_seed(config.seed)  # Square's and APGD's draws: reproducible per cell
        attack = build_attack(spec, self.scored, eps, loss=config.loss, steps=config.steps, source_model=self.source,
                              seed=config.seed, early_stop=savings, batch_size=self.batch_size)
        set_target(attack, target)
        images, labels = self.images[index], self.labels[index]
        gradient_images, forward_images = 0.0, 0.0
        if isinstance(attack, SignGradientAttack):
            start_gradient = None
            if savings and info.shares_clean_gradient:
                start_gradient, gradient_images = self._start_gradient(attack, target, index)
            noise = self.noise(attack.restarts)[:, index] if attack.random_start else None
            result = attack.perturb(images, labels, start_gradient=start_gradient, start_noise=noise)
            adversarial, predicted = result.adversarial, result.predictions
            gradient_images += result.gradient_images
            forward_images += result.forward_images
        elif isinstance(attack, TransferAttack):
            adversarial = attack(images, labels, start_noise=self.noise(1)[:, index])
            predicted = _predict(self.model, adversarial, self.batch_size)
            gradient_images = len(index) * attack.source_attack.steps
            forward_images = 2 * len(index)  # the source's final iterate, then this model
        else:  # torchattacks' own (APGD, Square, AutoAttack) and random noise: cost not counted
            # Square and noise only run forward passes, one per query over the images still unbroken,
            # so a larger batch amortises the per-call cost (same batches in both paths).
            size = info.batch_factor * self.batch_size
            adversarial = _attack_batches(attack, images, labels, size)
            predicted = _predict(self.model, adversarial, self.batch_size)
            gradient_images = forward_images = float("nan")
        attacked = ~already[index]  # already-broken examples keep their clean image
        predictions[index[attacked]] = predicted[attacked]
        linf[index[attacked].cpu()] = _linf(adversarial[attacked], images[attacked])
        return predictions.cpu(), linf, gradient_images, forward_images


def _summarise(outcome: _Outcome, labels: Tensor, clean_correct: Tensor, mode: str) -> dict[str, float]:
    """adversarial_error, attack_success_rate, success_rate_5class, linf_mean, linf_max of one cell."""
    wrong = outcome.predictions != labels  # (T, N)
    if mode == "untargeted":
        pairs = torch.ones_like(wrong)
        success = wrong[0][clean_correct].float().mean().item() if clean_correct.any() else float("nan")
        success5 = float("nan")
    else:
        target = torch.arange(N_CLASSES)[:, None].expand_as(wrong)
        hit = outcome.predictions == target
        pairs = target != labels  # the 4 wrong classes of each example
        success = hit[pairs].float().mean().item()
        success5 = hit.float().mean().item()
    linf = outcome.linf[pairs]
    return {"adversarial_error": wrong[pairs].float().mean().item(), "attack_success_rate": success,
            "success_rate_5class": success5, "linf_mean": linf.mean().item(), "linf_max": linf.max().item(),
            "gradient_images": outcome.gradient_images, "forward_images": outcome.forward_images}


def _worst_case(outcomes: list[_Outcome], labels: Tensor, clean_correct: Tensor, mode: str) -> dict[str, float]:
    """Per-example worst case over attacks: broken (untargeted) / target hit (targeted) by any attack."""
    if mode == "untargeted":
        broken = torch.stack([o.predictions != labels for o in outcomes]).any(0)  # (1, N)
        success = broken[0][clean_correct].float().mean().item() if clean_correct.any() else float("nan")
        error, success5 = broken.float().mean().item(), float("nan")
    else:
        target = torch.arange(N_CLASSES)[:, None].expand(N_CLASSES, len(labels))
        hit = torch.stack([o.predictions == target for o in outcomes]).any(0)  # (5, N)
        broken = torch.stack([o.predictions != labels for o in outcomes]).any(0)
        pairs = target != labels
        success, success5 = hit[pairs].float().mean().item(), hit.float().mean().item()
        error = broken[pairs].float().mean().item()
    linf = torch.stack([o.linf for o in outcomes]).amax(0)
    return {"adversarial_error": error, "attack_success_rate": success, "success_rate_5class": success5,
            "linf_mean": float("nan"), "linf_max": linf.max().item(), "seconds": 0.0,
            "gradient_images": 0.0, "forward_images": 0.0}


def _per_image(outcomes: list[_Outcome], labels: Tensor, clean_correct: Tensor, eps: float) -> pd.DataFrame:
    """Untargeted, per image: broken by any attack at ``eps`` (the worst case; wrong on the clean input counts)."""
    broken = torch.stack([o.predictions[0] != labels for o in outcomes]).any(0)
    return pd.DataFrame({"eps": eps, "image": range(len(labels)), "label": labels.numpy(),
                         "clean_correct": clean_correct.numpy(), "broken": broken.numpy()})


def sweep_cells(models: dict[str, nn.Module], config: SweepConfig) -> int:
    """Number of (model, attack, eps, mode) cells :func:`robustness_sweep` runs (for progress bars)."""
    runs = sum(_applies(spec, model) for model in models.values() for spec in config.specs())
    return runs * len(set(config.eps_values)) * len(config.modes)


def _transfer_source(models: dict[str, nn.Module], model_name: str, config: SweepConfig) -> ScoreModel | None:
    """The other model of the pair, seen through its own configured score."""
    name = next((n for n in models if n != model_name), None)
    return None if name is None else ScoreModel(models[name], config.scores.get(name))


def check_models(models: dict[str, nn.Module], config: SweepConfig) -> None:
    """One-line :class:`ConfigError` if the sweep cannot run on these models (transfer needs two; the
    vote attack a capsule net among them)."""
    specs = config.specs()
    for spec in dict.fromkeys(s.name for s in specs):
        info = attack_info(spec)
        if info.needs_pair and len(models) != 2:
            raise ConfigError(f"{spec} needs exactly two models (adversarial examples crafted on the other one)")
        if info.capsule_only and not any(_applies(AttackSpec(spec), m) for m in models.values()):
            check_votes(next(iter(models.values())))  # raises the one-line reason


def robustness_sweep(models: dict[str, nn.Module], images: Tensor, labels: Tensor, config: SweepConfig,
                     *, dataset: str, progress: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Tidy table, one row per (model, attack, eps, mode) and a ``worst-case`` row per (model, eps, mode).

    models: name -> model (images (N, C, 32, 32) in [0, 1] -> scores (N, 5)); ``transfer`` crafts
    on the other model, so it needs exactly two; ``vote`` runs on the capsule nets only (no rows for
    a CNN). images: (N, C, 32, 32) in [0, 1]; labels: (N,) (any device: each model is attacked on its
    own). ``progress``, if given, is called after each cell with that cell's row. Columns:
    :data:`RESULT_COLUMNS` + :data:`COST_COLUMNS` (see module doc); ``attrs``: dataset,
    mean_image_std, savings, batch_sizes and clean_seconds (per model). The per-image outcomes behind
    the worst case: :func:`evaluate_robustness` (``checks.attrs["per_image"]``).
    """
    return _sweep(models, images, labels, config, dataset=dataset, progress=progress)[0]


def _sweep(models: dict[str, nn.Module], images: Tensor, labels: Tensor, config: SweepConfig,
           *, dataset: str, progress: Callable[[dict], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(:func:`robustness_sweep`'s table, the per-image table (:data:`PER_IMAGE_COLUMNS`) of the untargeted
    mode; empty without it)."""
    config.validate()
    check_models(models, config)
    specs = config.specs()
    mean_std = mean_image_std(images)
    labels_cpu = labels.cpu()
    rows, batch_sizes, clean_seconds, per_image = [], {}, {}, []
    for model_name, model in models.items():
        started = time.perf_counter()
        shared = _ModelSweep(model, config.scores.get(model_name), images, labels, config,
                             _transfer_source(models, model_name, config))
        clean_seconds[model_name] = time.perf_counter() - started
        batch_sizes[model_name] = shared.batch_size
        clean_correct = shared.clean.cpu() == labels_cpu
        base = {"dataset": dataset, "model": model_name, "score": shared.scored.score, "loss": config.loss,
                "n": len(labels), "clean_error": 1.0 - clean_correct.float().mean().item()}
        runnable = [s for s in specs if _applies(s, model)]
        for mode in config.modes:
            for eps in sorted(set(config.eps_values)):  # a repeated eps would give duplicate rows
                outcomes = []
                for spec in runnable:
                    started = time.perf_counter()
                    outcome = shared.cell(spec, eps, mode)
                    seconds = time.perf_counter() - started
                    outcomes.append(outcome)
                    steps = attack_info(spec.name).fixed_steps or spec.resolved_steps(config.steps)
                    rows.append({**base, "attack": spec.label, "steps": steps, "restarts": spec.restarts, "eps": eps,
                                 "eps_std": eps / mean_std, "mode": mode, "seconds": seconds,
                                 **_summarise(outcome, labels_cpu, clean_correct, mode)})
                    if progress is not None:
                        progress(rows[-1])
                if len(outcomes) > 1:
                    rows.append({**base, "attack": "worst-case", "steps": 0, "restarts": 0, "eps": eps,
                                 "eps_std": eps / mean_std, "mode": mode,
                                 **_worst_case(outcomes, labels_cpu, clean_correct, mode)})
                if mode == "untargeted":
                    per_image.append(_per_image(outcomes, labels_cpu, clean_correct, eps)
                                     .assign(model=model_name, eps_std=eps / mean_std))
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS + COST_COLUMNS)
    table.attrs.update(dataset=dataset, mean_image_std=mean_std, savings=config.savings, batch_sizes=batch_sizes,
                       clean_seconds=clean_seconds)
    images_table = pd.concat(per_image, ignore_index=True) if per_image else pd.DataFrame()
    return table, images_table.reindex(columns=PER_IMAGE_COLUMNS).assign(dataset=dataset)


def gradient_statistics(models: dict[str, nn.Module], images: Tensor, labels: Tensor, *,
                        scores: dict[str, str] | None = None, batch_size: int | None = None) -> pd.DataFrame:
    """Input gradients of the attack loss (CE on each model's attack score) at the clean images.

    Returns one row per model: model, score, zero_gradient_fraction (entries exactly 0),
    mean_abs_gradient, finite (no NaN/inf). A masked model (e.g. quantised input) shows ~all zeros.
    """
    rows = []
    for name, model in models.items():
        model.eval()
        wrapped = ScoreModel(model, (scores or {}).get(name))
        device = model_device(model)
        size = batch_size or default_batch_size(model)
        grads = []
        for i in range(0, len(images), size):
            batch = images[i : i + size].to(device).requires_grad_(True)
            loss = F.cross_entropy(wrapped(batch), labels[i : i + size].to(device), reduction="sum")
            grads.append(torch.autograd.grad(loss, batch)[0].cpu())
        grad = torch.cat(grads)
        rows.append({"model": name, "score": wrapped.score,
                     "zero_gradient_fraction": (grad == 0).float().mean().item(),
                     "mean_abs_gradient": grad.abs().mean().item(), "finite": bool(torch.isfinite(grad).all())})
    return pd.DataFrame(rows)


def compare_savings(models: dict[str, nn.Module], images: Tensor, labels: Tensor, config: SweepConfig, *,
                    dataset: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The same sweep without and with the savings: (timings, differences, table with savings).

    timings: one row per (model, attack): seconds_plain, seconds_savings, speedup, and the images
    through forward + backward / forward alone in each path; a ``(clean predictions)`` row per model
    and a ``total`` row. differences: every (model, attack, eps, mode) cell where a result column
    (:data:`RESULT_COLUMNS`) differs -- expected empty, exactly (see the module docstring; random
    starts are shared by both paths, so the tolerance is zero for every attack).
    """
    tables = {}
    for savings in (False, True):
        run = SweepConfig(**{**config.__dict__, "savings": savings})
        tables[savings] = robustness_sweep(models, images, labels, run, dataset=dataset)
    plain, saved = tables[False], tables[True]
    keys = ["model", "attack", "mode", "eps"]
    timings = []
    for (model, attack), group in plain[plain.attack != "worst-case"].groupby(["model", "attack"], sort=False):
        other = saved[(saved.model == model) & (saved.attack == attack)]
        timings.append({"model": model, "attack": attack, "seconds_plain": group.seconds.sum(),
                        "seconds_savings": other.seconds.sum(),
                        "gradient_images_plain": group.gradient_images.sum(min_count=1),
                        "gradient_images_savings": other.gradient_images.sum(min_count=1),
                        "forward_images_plain": group.forward_images.sum(min_count=1),
                        "forward_images_savings": other.forward_images.sum(min_count=1)})
    for model in dict.fromkeys(plain.model):
        timings.append({"model": model, "attack": "(clean predictions)",
                        "seconds_plain": plain.attrs["clean_seconds"][model],
                        "seconds_savings": saved.attrs["clean_seconds"][model]})
    timings = pd.DataFrame(timings)
    total = {"model": "total", "attack": "", **{c: timings[c].sum(min_count=1) for c in timings.columns[2:]}}
    timings = pd.concat([timings, pd.DataFrame([total])], ignore_index=True)
    timings["speedup"] = timings.seconds_plain / timings.seconds_savings
    merged = plain[RESULT_COLUMNS].merge(saved[RESULT_COLUMNS], on=keys, suffixes=("_plain", "_savings"))
    values = [c for c in RESULT_COLUMNS if c not in keys]
    differs = pd.Series(False, index=merged.index)
    for column in values:
        a, b = merged[f"{column}_plain"], merged[f"{column}_savings"]
        differs |= ~((a == b) | (a.isna() & b.isna()))
    shown = keys + [f"{c}_{p}" for c in ("adversarial_error", "attack_success_rate", "linf_mean", "linf_max")
                    for p in ("plain", "savings")]
    differences = merged.loc[differs, shown].reset_index(drop=True)
    if len(plain) != len(saved) or len(merged) != len(plain):
        raise AssertionError("the two paths produced different cells")  # a programming error, never user input
    return timings, differences, saved


# ----------------------------------------------------------------------------------------------
# Sanity checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness"; REFERENCE.md §6).


def _base(label: str) -> str:
    """The attack behind a row label (``pgd:50x5`` → ``pgd``; ``worst-case`` stays)."""
    return label.split(":")[0]


def _is(label: str, fact: Callable[[AttackInfo], bool]) -> bool:
    """Whether the attack behind row ``label`` has ``fact`` in :data:`~capsrobust.attacks.ATTACKS` (the
    worst case has none)."""
    info = ATTACKS.get(_base(label))
    return info is not None and fact(info)


def _single_step(info: AttackInfo) -> bool:
    """One step of size eps (fgsm): it overshoots at large eps and is not asked to reach 100 %."""
    return info.fixed_steps == 1


def _gradient_search(info: AttackInfo) -> bool:
    """A gradient attack that searches the evaluated model (the convergence check doubles one of them)."""
    return info.gradient and info.searches


def _metric(mode: str) -> str:
    """Strength of an attack: error for untargeted, 4-class success for targeted."""
    return "adversarial_error" if mode == "untargeted" else "attack_success_rate"


def _check(check: str, model: str, mode: str, status: str, detail: str, value: float = float("nan")) -> dict:
    return {"check": check, "model": model, "mode": mode, "status": status, "value": value, "detail": detail}


def _series(table: pd.DataFrame, model: str, attack: str, mode: str) -> pd.Series:
    rows = table[(table.model == model) & (table.attack == attack) & (table["mode"] == mode)]
    return rows.set_index("eps")[_metric(mode)].sort_index()


def _compare(stronger: pd.Series, weaker: pd.Series, tol: float) -> list[float]:
    """eps values where ``weaker`` exceeds ``stronger`` by more than ``tol``."""
    common = stronger.index.intersection(weaker.index)
    return [float(e) for e in common if weaker[e] > stronger[e] + tol + 1e-9]  # 1e-9: 0.96 + 0.04 < 1.0 in floats


def _attacks_of(table: pd.DataFrame, model: str, mode: str) -> list[str]:
    rows = table[(table.model == model) & (table["mode"] == mode)]
    return [a for a in dict.fromkeys(rows.attack) if a != "worst-case"]


def _iterative_checks(table: pd.DataFrame, model: str, mode: str, tol: float) -> list[dict]:
    attacks = _attacks_of(table, model, mode)
    name = "iterative >= single-step"
    iterative = [a for a in attacks if _is(a, lambda info: info.white_box and info.searches)]
    single = next((a for a in attacks if _is(a, _single_step)), None)
    if single is None or not iterative:
        needed = " or ".join(n for n, info in ATTACKS.items() if _single_step(info))
        return [_check(name, model, mode, "SKIP", f"needs {needed} and an iterative attack in the sweep")]
    rows = []
    for attack in iterative:
        bad = _compare(_series(table, model, attack, mode), _series(table, model, single, mode), tol)
        rows.append(_check(name, model, mode, "FAIL" if bad else "PASS",
                           f"{attack} vs {single}"
                           + (f": weaker at eps {bad}" if bad else f" at every eps (tol {tol:.3f})")))
    return rows


def _drops(series: pd.Series, tol: float) -> list[tuple[float, float, float]]:
    """(eps, value before, value at eps) wherever ``series`` (indexed by eps) falls by more than ``tol``."""
    return [(float(e), float(prev), float(cur)) for e, prev, cur in zip(series.index[1:], series.values[:-1],
                                                                        series.values[1:]) if cur < prev - tol]


def _strongest_at(table: pd.DataFrame, model: str, mode: str, eps: float) -> list[str]:
    """The attacks (not the worst case) with the highest strength at ``eps``."""
    rows = table[(table.model == model) & (table["mode"] == mode) & (table.eps == eps) & (table.attack != "worst-case")]
    values = rows[_metric(mode)]
    return list(rows.attack[values >= values.max() - 1e-9])


def _monotone_checks(table: pd.DataFrame, model: str, mode: str, tol: float) -> list[dict]:
    """Success monotone in eps (eps-balls nest), per attack and for the worst case.

    A drop FAILs for the per-example worst case and the attacks that search the model (``searches``): it
    means the attack is flawed, not the model (Carlini et al. 2019). FGSM's single eps-sized step
    overshoots at large eps, so its drop is a WARN -- a FAIL only where FGSM is the strongest attack at
    that eps (the headline would rest on it); transfer and noise drops are WARNs (they attack another
    model or nothing). The value is the largest drop.
    """
    rows, name = [], "success monotone in eps"
    attacks = _attacks_of(table, model, mode)
    has_worst = ((table.model == model) & (table["mode"] == mode) & (table.attack == "worst-case")).any()
    for attack in attacks + (["worst-case"] if has_worst else []):
        series = _series(table, model, attack, mode)
        if len(series) < 2:
            rows.append(_check(name, model, mode, "SKIP", f"{attack}: one eps only"))
            continue
        drops = _drops(series, tol)
        if not drops:
            rows.append(_check(name, model, mode, "PASS", f"{attack} (tol {tol:.3f})", 0.0))
            continue
        figures = ", ".join(f"{e:g} ({prev:.3f} -> {cur:.3f})" for e, prev, cur in drops)
        detail = f"{attack}: drops at eps {figures}"
        if attack == "worst-case" or _is(attack, lambda info: info.searches):
            status = "FAIL"
        elif _is(attack, _single_step):
            strongest = [e for e, _, _ in drops if _strongest_at(table, model, mode, e) == [attack]]
            status = "FAIL" if strongest else "WARN"
            detail += (f"; {attack} is the strongest attack at eps {strongest}" if strongest else
                       "; a single step overshoots at large eps (a stronger attack leads at every such eps)")
        else:
            status = "WARN"
        rows.append(_check(name, model, mode, status, detail, max(prev - cur for _, prev, cur in drops)))
    return rows


def _convergence_checks(table: pd.DataFrame, model: str, mode: str, tol: float) -> list[dict]:
    """Doubling the strongest gradient attack's steps and restarts changes success by at most ``tol``.

    Pairs are attacks of one family in the sweep, the second with at least twice the steps (and twice
    the restarts where the family takes restarts), e.g. ``pgd`` and ``pgd:20x3`` at 10 default steps.
    FAIL when the larger attack's strength differs by more than ``tol`` at some eps (the smaller one had
    not converged); WARN when it holds but a stronger gradient attack was not doubled; value: the
    largest change.
    """
    name = "converged (2x steps, restarts)"
    if not {"steps", "restarts"} <= set(table.columns):
        return [_check(name, model, mode, "SKIP", "the sweep table has no steps and restarts")]
    rows = table[(table.model == model) & (table["mode"] == mode) & (table.attack != "worst-case")]
    specs = rows.drop_duplicates("attack").set_index("attack")[["steps", "restarts"]]
    gradient = [a for a in specs.index if _is(a, _gradient_search)]
    pairs = [(a, b) for a in gradient for b in gradient if a != b and _base(a) == _base(b)
             and specs.steps[b] >= 2 * specs.steps[a]
             and (not _is(a, lambda info: info.restartable) or specs.restarts[b] >= 2 * specs.restarts[a])]
    if not pairs:
        return [_check(name, model, mode, "SKIP", "needs a gradient attack twice, the second with doubled steps and "
                                                  "restarts (e.g. pgd and pgd:20x2 at 10 steps)")]
    strength = {a: float(_series(table, model, a, mode).mean()) for a in gradient}
    base, doubled = max(pairs, key=lambda pair: strength[pair[0]])
    change = (_series(table, model, doubled, mode) - _series(table, model, base, mode)).dropna()
    worst = float(change.abs().max())
    figures = ", ".join(f"{e:g}: {100 * c:+.1f}" for e, c in change.items())
    detail = f"{doubled} vs {base}, change in points at eps {figures}"
    status = "FAIL" if worst > tol + 1e-9 else "PASS"
    stronger = [a for a in gradient if strength[a] > strength[base] + 1e-9 and a != doubled]
    if status == "PASS" and stronger:
        status = "WARN"
        detail += f"; not shown for the stronger {', '.join(stronger)}"
    return [_check(name, model, mode, status, detail + f" (tol {tol:.3f})", worst)]


def _unbounded_check(table: pd.DataFrame, model: str, mode: str, tol: float) -> dict:
    """At eps = 1 the ball is the whole image space: the strongest attack (the worst case; FGSM alone is not
    asked to) must reach 100 % (within ``tol``)."""
    name = "unbounded eps reaches 100 %"
    rows = table[(table.model == model) & (table["mode"] == mode)]
    largest = float(rows.eps.max())
    if largest < UNBOUNDED_EPS:
        return _check(name, model, mode, "SKIP", f"sweep stops at eps {largest:g} < {UNBOUNDED_EPS:g}")
    single = rows.attack.map(lambda attack: _is(attack, _single_step)).astype(bool)
    at_max = rows[(rows.eps == largest) & ~single]  # one step is not expected to get there
    if at_max.empty:
        return _check(name, model, mode, "SKIP", f"needs an iterative attack at eps {largest:g}")
    value = float(at_max[_metric(mode)].max())  # the worst case where there is one: it is the maximum
    best = ", ".join(at_max.attack[at_max[_metric(mode)] >= value - 1e-9])
    return _check(name, model, mode, "PASS" if value >= 1 - tol - 1e-9 else "FAIL",
                  f"{_metric(mode)} {value:.3f} at eps {largest:g} ({best}); need >= {1 - tol:.3f}", value)


def _noise_checks(table: pd.DataFrame, model: str, mode: str, tol: float) -> list[dict]:
    """Uniform random noise barely changes accuracy below eps 0.5 (where the ball stays near the image):
    WARN (a noise-fragile model, not a flawed evaluation) where it moves error by more than ``tol``."""
    name = "random noise barely changes accuracy"
    rows = []
    for attack in [a for a in _attacks_of(table, model, mode) if _is(a, lambda info: info.noise_baseline)]:
        series = _series(table, model, attack, mode)
        clean = float(series.get(0.0, series.iloc[0]))
        shown = series[(series.index > 0) & (series.index < CHANCE_EPS)] - clean
        changed = [float(e) for e, c in shown.items() if c > tol + 1e-9]
        figures = ", ".join(f"{e:g}: {100 * c:+.1f}" for e, c in shown.items())
        rows.append(_check(name, model, mode, "WARN" if changed else "PASS",
                           f"{attack}: change in points against eps 0 at eps {figures} (tol {tol:.3f})",
                           float(shown.max()) if len(shown) else float("nan")))
    return rows


def _chance_check(table: pd.DataFrame, model: str, mode: str) -> dict:
    name = "chance error at eps >= 0.5"
    rows = table[(table.model == model) & (table["mode"] == mode)]
    largest = float(rows.eps.max())
    if largest < CHANCE_EPS:
        return _check(name, model, mode, "SKIP", f"sweep stops at eps {largest:g} < {CHANCE_EPS:g}")
    at_max = rows[rows.eps == largest]
    best = at_max[at_max.attack == "worst-case"] if (at_max.attack == "worst-case").any() else at_max
    error = float(best.adversarial_error.max())
    ok = error >= CHANCE_ERROR - CHANCE_TOLERANCE
    return _check(name, model, mode, "PASS" if ok else "FAIL",
                  f"strongest error {error:.3f} at eps {largest:g}; need >= {CHANCE_ERROR - CHANCE_TOLERANCE:.2f}", error)


def _challenger_checks(table: pd.DataFrame, model: str, mode: str, tol: float) -> list[dict]:
    """Square, the vote attack and transfer against the white-box attacks.

    The *headline* attack at an eps is the white-box attack (``white_box`` in the attack table) with the highest
    error there: the number a robustness claim quotes. A challenger that beats it by more than
    ``tol`` FAILs, naming itself, the headline attack and the eps: the white-box number
    understates what an attacker achieves (gradient masking, or routing diluting the gradient).
    The detail also lists every other white-box attack the challenger beats.
    """
    attacks = _attacks_of(table, model, mode)
    white = [a for a in attacks if _is(a, lambda info: info.white_box)]
    rows = []
    for challenger in [a for a in attacks if _is(a, lambda info: not info.white_box)]:
        name = f"{_base(challenger)} <= white-box"
        if not white:
            rows.append(_check(name, model, mode, "SKIP", f"{challenger}: no white-box attack in the sweep"))
            continue
        series = pd.concat({a: _series(table, model, a, mode) for a in white}, axis=1)
        theirs = _series(table, model, challenger, mode)
        beaten = [e for e in _compare(series.max(axis=1), theirs, tol)]
        lost_to = {a: _compare(series[a], theirs, tol) for a in white}
        others = "; ".join(f"beats {a} at eps {eps}" for a, eps in lost_to.items() if eps)
        if beaten:
            headline = ", ".join(f"{series.loc[e].idxmax()} at eps {e:g} ({theirs[e]:.3f} vs {series.loc[e].max():.3f})"
                                 for e in beaten)
            detail = f"{challenger} beats the headline white-box attack: {headline} (gradient masking?)"
        else:
            detail = f"{challenger} vs best of {','.join(white)}: never stronger (tol {tol:.3f})" + \
                     (f"; {others}" if others else "")
        rows.append(_check(name, model, mode, "FAIL" if beaten else "PASS", detail, float(len(beaten))))
    return rows


def _gradient_checks(gradients: pd.DataFrame) -> list[dict]:
    rows = []
    for record in gradients.itertuples(index=False):
        ok = record.finite and record.zero_gradient_fraction <= MAX_ZERO_GRADIENT_FRACTION and record.mean_abs_gradient > 0
        rows.append(_check("input gradients non-zero", record.model, "-", "PASS" if ok else "FAIL",
                           f"zero fraction {record.zero_gradient_fraction:.3f} (max {MAX_ZERO_GRADIENT_FRACTION}), "
                           f"mean |grad| {record.mean_abs_gradient:.3g}, finite {record.finite}",
                           record.zero_gradient_fraction))
    return rows


def verdicts(checks: pd.DataFrame) -> pd.DataFrame:
    """One ``verdict`` row per model: HOLDS (no check FAILs) or SUSPECT, and why (every FAIL, in order).
    A WARN never makes a verdict SUSPECT; the detail names the checks that warned."""
    rows = []
    for model in dict.fromkeys(checks.model):
        own = checks[checks.model == model]
        failed = own[own.status == "FAIL"]
        skipped = own[own.status == "SKIP"]
        warned = own[own.status == "WARN"]
        if failed.empty:
            detail = f"robustness numbers hold: all {int((own.status == 'PASS').sum())} checks pass"
            notes = [f"{len(s)} {word}: {', '.join(dict.fromkeys(s.check))}"
                     for s, word in ((warned, "warned"), (skipped, "skipped")) if not s.empty]
            if notes:
                detail += f" ({'; '.join(notes)})"
        else:
            reasons = "; ".join(f"{r.check} [{r.mode}]: {r.detail}" for r in failed.itertuples(index=False))
            detail = f"robustness numbers suspect ({len(failed)} FAIL): {reasons}"
        rows.append(_check("verdict", model, "-", "SUSPECT" if len(failed) else "HOLDS", detail, float(len(failed))))
    return pd.DataFrame(rows, columns=["check", "model", "mode", "status", "value", "detail"])


def sanity_checks(table: pd.DataFrame, gradients: pd.DataFrame | None = None) -> pd.DataFrame:
    """Verdict rows (one per model, first), then PASS / WARN / FAIL / SKIP rows (check, model, mode,
    status, value, detail) for a sweep table; the detail carries each check's figures.

    Checks: iterative ≥ single-step at each eps; success monotone in eps for every attack and the
    worst case (:func:`_monotone_checks`: FGSM's overshoot only WARNs); converged, the strongest
    doubled gradient attack within tolerance of its double (:func:`_convergence_checks`); chance
    error (≥ 0.75) at the largest eps if the sweep reaches 0.5; 100 % at eps 1 (the unbounded ball)
    if it reaches 1; square, the vote attack, transfer and noise no stronger than the headline
    (strongest) white-box attack at any eps (:func:`_challenger_checks`; a lower bound of the
    white-box worst case, so a PASS holds against that too); random noise barely changes accuracy
    (:func:`_noise_checks`); and, given :func:`gradient_statistics`, non-zero finite input gradients.
    A model's verdict is HOLDS when none of its checks FAILs (WARNs do not count), else SUSPECT with
    every failing check.
    """
    rows: list[dict] = []
    for model in dict.fromkeys(table.model):
        for mode in dict.fromkeys(table[table.model == model]["mode"]):
            n = int(table[(table.model == model)].n.iloc[0])
            tol = tolerance(n)
            rows += _iterative_checks(table, model, mode, tol)
            rows += _monotone_checks(table, model, mode, tol)
            rows += _convergence_checks(table, model, mode, tol)
            rows.append(_chance_check(table, model, mode))
            rows.append(_unbounded_check(table, model, mode, tol))
            rows += _challenger_checks(table, model, mode, tol)
            rows += _noise_checks(table, model, mode, tol)
    if gradients is not None:
        rows += _gradient_checks(gradients)
    columns = ["check", "model", "mode", "status", "value", "detail"]
    checks = pd.DataFrame(rows, columns=columns)
    checks = pd.concat([verdicts(checks), checks], ignore_index=True)
    checks.insert(0, "dataset", table.attrs.get("dataset", ""))
    return checks


def evaluate_robustness(models: dict[str, nn.Module], images: Tensor, labels: Tensor, config: SweepConfig,
                        *, dataset: str, progress: Callable[[dict], None] | None = None
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One call: (sweep table, sanity-check table including gradient statistics).

    The gradient statistics themselves are in ``checks.attrs["gradients"]`` (a DataFrame), the
    untargeted per-image outcomes (:data:`PER_IMAGE_COLUMNS`; what robust accuracy and its intervals
    are computed from) in ``checks.attrs["per_image"]``.
    """
    config.validate()  # before the gradients, so a bad option costs nothing
    check_models(models, config)
    gradients = gradient_statistics(models, images, labels, scores=config.scores, batch_size=config.batch_size)
    table, per_image = _sweep(models, images, labels, config, dataset=dataset, progress=progress)
    checks = sanity_checks(table, gradients)
    checks.attrs["gradients"] = gradients
    checks.attrs["per_image"] = per_image
    return table, checks
