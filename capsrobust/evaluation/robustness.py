"""Adversarial robustness sweeps (model × attack × ε × mode) and their sanity checks (REFERENCE.md §6).

:func:`robustness_sweep` returns one tidy row per (model, attack, eps, mode) plus a ``worst-case``
row per (model, eps, mode): the per-example worst case over every attack in the sweep (an example
counts as broken if *any* attack broke it; Carlini et al. 2019 §4). :func:`sanity_checks` turns
that table and :func:`gradient_statistics` into PASS / FAIL / SKIP rows; a FAIL is reported, never
hidden. :func:`attack_timings` times the same code path per (model, attack).

Conventions
-----------
- ``eps`` is the L∞ radius in pixel units of images in [0, 1] (standardisation is inside the models).
- ``eps_std`` is ``eps / mean_i(std_i)``, std_i the per-image standard deviation of the *clean*
  inputs exactly as the models' standardisation computes it (over C, H, W; + 1e-5 under the root).
  This is the ε the paper's Fig. 3 reports (per-image-standardised units); it is the ε of an
  image of average contrast, not a per-image bound.
- untargeted: ``adversarial_error`` = fraction misclassified after the attack; ``attack_success_rate``
  = fraction of the *clean-correct* examples that the attack misclassifies.
- targeted: every example is attacked towards each class t. ``attack_success_rate`` averages
  "prediction == t" over the 4 wrong classes (t ≠ label); ``success_rate_5class`` averages over all
  5 classes *including the true one*, the paper's Fig. 3 convention (20 % at ε = 0 for a perfect
  model) -- kept only for comparison. ``adversarial_error`` averages over the 4 wrong targets.
- ``linf_mean`` / ``linf_max``: mean and max over examples (and wrong targets) of ‖x_adv − x‖∞.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from capsrobust.attacks import (ATTACK_NAMES, LOSS_NAMES, TARGETED_OK, WHITE_BOX, ScoreModel, build_attack,
                                set_target)
from capsrobust.errors import ConfigError
from capsrobust.models.preprocessing import STANDARDISE_EPS

__all__ = ["CHANCE_ERROR", "CHANCE_TOLERANCE", "SweepConfig", "attack_timings", "evaluate_robustness",
           "gradient_statistics", "mean_image_std", "robustness_sweep", "sanity_checks", "sweep_cells", "tolerance"]

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
#: Gradient check: FAIL when more than this fraction of input-gradient entries is exactly zero.
MAX_ZERO_GRADIENT_FRACTION = 0.5
MODES = ("untargeted", "targeted")
#: Losses each attack accepts (others take every loss in LOSS_NAMES).
ATTACK_LOSSES = {"apgd": ("ce", "dlr"), "square": ("ce", "margin"), "autoattack": ("ce",)}


def tolerance(n: int) -> float:
    """Slack for comparisons between attacks on ``n`` examples: max(2 points, 2 examples)."""
    return max(COMPARE_TOLERANCE, 2.0 / max(n, 1))


@dataclass
class SweepConfig:
    """What to run: attacks × eps values × modes, and how (loss, steps, batch size, seed)."""

    attacks: tuple[str, ...] = ("fgsm", "bim")
    eps_values: tuple[float, ...] = (0.0, 0.05, 0.1)
    modes: tuple[str, ...] = ("untargeted",)
    loss: str = "ce"
    steps: int = 10
    batch_size: int = 100
    seed: int = 0
    scores: dict[str, str] = field(default_factory=dict)  # model name -> score (default per model)

    def validate(self) -> None:
        """Every option checked before any work (a bad loss must not surface hours into a sweep)."""
        if not self.attacks:
            raise ConfigError(f"no attack given; valid attacks: {', '.join(ATTACK_NAMES)}")
        if not self.eps_values:
            raise ConfigError("no eps value given; pass e.g. --eps 0.1 or --eps 0:0.3:0.02")
        for name in self.attacks:
            if name not in ATTACK_NAMES:
                raise ConfigError(f"unknown attack {name!r}; valid attacks: {', '.join(ATTACK_NAMES)}")
        if len(set(self.attacks)) != len(self.attacks):
            raise ConfigError(f"attack listed twice in {','.join(self.attacks)}; name each attack once")
        if self.loss not in LOSS_NAMES:
            raise ConfigError(f"unknown loss {self.loss!r}; valid losses: {', '.join(LOSS_NAMES)}")
        for name in self.attacks:
            allowed = ATTACK_LOSSES.get(name)
            if allowed and self.loss not in allowed:
                raise ConfigError(f"{name} supports --loss {' or '.join(allowed)}, not {self.loss!r}")
        if self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        for eps in self.eps_values:
            if not (0.0 <= eps <= 1.0) or math.isnan(eps):
                raise ConfigError(f"eps must be in [0, 1] (pixel units), got {eps}")
        for mode in self.modes:
            if mode not in MODES:
                raise ConfigError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        if "targeted" in self.modes:
            bad = [a for a in self.attacks if a not in TARGETED_OK]
            if bad:
                raise ConfigError(f"{', '.join(bad)} cannot run targeted here; targeted attacks: {', '.join(TARGETED_OK)}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")


def mean_image_std(images: Tensor) -> float:
    """Mean over images (N, C, H, W) of the per-image std the models standardise by."""
    flat = images.flatten(1).double()
    return float((flat.var(dim=1, unbiased=False) + STANDARDISE_EPS).sqrt().mean())


def _device(model: nn.Module) -> torch.device:
    """Where ``model`` lives (CPU for a parameter-free model)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def _predict(model: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    """Predicted classes (N,), on the CPU, for images (N, C, 32, 32) on the model's device."""
    model.eval()
    return torch.cat([model(images[i : i + batch_size]).argmax(1).cpu() for i in range(0, len(images), batch_size)])


def _attack_batches(attack, images: Tensor, labels: Tensor, batch_size: int) -> Tensor:
    """Adversarial images (N, C, H, W), the attack run batch by batch."""
    return torch.cat([attack(images[i : i + batch_size], labels[i : i + batch_size])
                      for i in range(0, len(images), batch_size)])


def _linf(adversarial: Tensor, images: Tensor) -> Tensor:
    """Per-example ‖x_adv − x‖∞: (N, …) → (N,), on the CPU."""
    return (adversarial - images).flatten(1).abs().max(dim=1).values.cpu()


@dataclass
class _Outcome:
    """Per-example results of one (model, attack, eps, mode): predictions (T, N) and L∞ (T, N).

    T = 1 (untargeted) or 5 (one row per target class)."""

    predictions: Tensor
    linf: Tensor


def _run_one(name: str, model: nn.Module, source: nn.Module | None, eps: float, mode: str, images: Tensor,
             labels: Tensor, config: SweepConfig, score: str | None) -> _Outcome:
    """Attack ``model`` (images and labels on its device; ``source``: the transfer source, a ScoreModel)."""
    targets = [None] if mode == "untargeted" else list(range(N_CLASSES))
    predictions, linfs = [], []
    for target in targets:
        torch.manual_seed(config.seed)  # random starts / Square's draws: reproducible per cell
        attack = build_attack(name, ScoreModel(model, score), eps, loss=config.loss, steps=config.steps,
                              source_model=source, seed=config.seed)
        set_target(attack, target)
        adversarial = _attack_batches(attack, images, labels, config.batch_size)
        predictions.append(_predict(model, adversarial, config.batch_size))
        linfs.append(_linf(adversarial, images))
    return _Outcome(torch.stack(predictions), torch.stack(linfs))


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
            "success_rate_5class": success5, "linf_mean": linf.mean().item(), "linf_max": linf.max().item()}


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
            "linf_mean": float("nan"), "linf_max": linf.max().item()}


def sweep_cells(models: dict[str, nn.Module], config: SweepConfig) -> int:
    """Number of (model, attack, eps, mode) cells :func:`robustness_sweep` runs (for progress bars)."""
    return len(models) * len(config.attacks) * len(set(config.eps_values)) * len(config.modes)


def _transfer_source(models: dict[str, nn.Module], model_name: str, config: SweepConfig) -> ScoreModel | None:
    """The other model of the pair, seen through its own configured score."""
    name = next((n for n in models if n != model_name), None)
    return None if name is None else ScoreModel(models[name], config.scores.get(name))


def robustness_sweep(models: dict[str, nn.Module], images: Tensor, labels: Tensor, config: SweepConfig,
                     *, dataset: str, progress: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Tidy table, one row per (model, attack, eps, mode) and a ``worst-case`` row per (model, eps, mode).

    models: name -> model (images (N, C, 32, 32) in [0, 1] -> scores (N, 5)); ``transfer`` crafts
    on the other model, so it needs exactly two. images: (N, C, 32, 32) in [0, 1]; labels: (N,)
    (any device: each model is attacked on its own). ``progress``, if given, is called after each
    cell with that cell's row. Columns: dataset, model, score, loss, attack, steps, eps, eps_std,
    mode, n, clean_error, adversarial_error, attack_success_rate, success_rate_5class, linf_mean,
    linf_max (see module doc).
    """
    config.validate()
    if "transfer" in config.attacks and len(models) != 2:
        raise ConfigError("transfer needs exactly two models (adversarial examples crafted on the other one)")
    mean_std = mean_image_std(images)
    labels_cpu = labels.cpu()
    rows = []
    for model_name, model in models.items():
        model.eval()
        device = _device(model)
        model_images, model_labels = images.to(device), labels.to(device)
        source = _transfer_source(models, model_name, config)
        score = ScoreModel(model, config.scores.get(model_name)).score
        clean_correct = _predict(model, model_images, config.batch_size) == labels_cpu
        base = {"dataset": dataset, "model": model_name, "score": score, "loss": config.loss,
                "steps": config.steps, "n": len(labels), "clean_error": 1.0 - clean_correct.float().mean().item()}
        for mode in config.modes:
            for eps in sorted(set(config.eps_values)):  # a repeated eps would give duplicate rows
                outcomes = []
                for attack in config.attacks:
                    outcome = _run_one(attack, model, source, eps, mode, model_images, model_labels, config, score)
                    outcomes.append(outcome)
                    rows.append({**base, "attack": attack, "eps": eps, "eps_std": eps / mean_std, "mode": mode,
                                 **_summarise(outcome, labels_cpu, clean_correct, mode)})
                    if progress is not None:
                        progress(rows[-1])
                if len(outcomes) > 1:
                    rows.append({**base, "attack": "worst-case", "eps": eps, "eps_std": eps / mean_std, "mode": mode,
                                 **_worst_case(outcomes, labels_cpu, clean_correct, mode)})
    columns = ["dataset", "model", "score", "loss", "attack", "steps", "eps", "eps_std", "mode", "n", "clean_error",
               "adversarial_error", "attack_success_rate", "success_rate_5class", "linf_mean", "linf_max"]
    table = pd.DataFrame(rows, columns=columns)
    table.attrs.update(dataset=dataset, mean_image_std=mean_std)
    return table


def gradient_statistics(models: dict[str, nn.Module], images: Tensor, labels: Tensor, *,
                        scores: dict[str, str] | None = None, batch_size: int = 100) -> pd.DataFrame:
    """Input gradients of the attack loss (CE on each model's attack score) at the clean images.

    Returns one row per model: model, score, zero_gradient_fraction (entries exactly 0),
    mean_abs_gradient, finite (no NaN/inf). A masked model (e.g. quantised input) shows ~all zeros.
    """
    rows = []
    for name, model in models.items():
        model.eval()
        wrapped = ScoreModel(model, (scores or {}).get(name))
        device = _device(model)
        grads = []
        for i in range(0, len(images), batch_size):
            batch = images[i : i + batch_size].to(device).requires_grad_(True)
            loss = F.cross_entropy(wrapped(batch), labels[i : i + batch_size].to(device), reduction="sum")
            grads.append(torch.autograd.grad(loss, batch)[0].cpu())
        grad = torch.cat(grads)
        rows.append({"model": name, "score": wrapped.score,
                     "zero_gradient_fraction": (grad == 0).float().mean().item(),
                     "mean_abs_gradient": grad.abs().mean().item(), "finite": bool(torch.isfinite(grad).all())})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Sanity checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness"; REFERENCE.md §6).


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
    return [float(e) for e in common if weaker[e] > stronger[e] + tol]


def _iterative_checks(table: pd.DataFrame, model: str, mode: str, tol: float) -> list[dict]:
    attacks = set(table.attack)
    name = "iterative >= single-step"
    iterative = [a for a in ("bim", "pgd", "apgd", "autoattack") if a in attacks]
    if "fgsm" not in attacks or not iterative:
        return [_check(name, model, mode, "SKIP", "needs fgsm and an iterative attack in the sweep")]
    rows = []
    for attack in iterative:
        bad = _compare(_series(table, model, attack, mode), _series(table, model, "fgsm", mode), tol)
        rows.append(_check(name, model, mode, "FAIL" if bad else "PASS",
                           f"{attack} vs fgsm" + (f": weaker at eps {bad}" if bad else f" at every eps (tol {tol:.3f})")))
    return rows


def _monotone_checks(table: pd.DataFrame, model: str, mode: str, tol: float) -> list[dict]:
    rows = []
    for attack in [a for a in dict.fromkeys(table.attack) if a != "worst-case"]:
        series = _series(table, model, attack, mode)
        if len(series) < 2:
            rows.append(_check("success monotone in eps", model, mode, "SKIP", f"{attack}: one eps only"))
            continue
        drops = [float(e) for e, prev, cur in zip(series.index[1:], series.values[:-1], series.values[1:])
                 if cur < prev - tol]
        rows.append(_check("success monotone in eps", model, mode, "FAIL" if drops else "PASS",
                           f"{attack}" + (f": drops at eps {drops}" if drops else f" (tol {tol:.3f})")))
    return rows


def _chance_check(table: pd.DataFrame, model: str, mode: str) -> dict:
    name = "chance error at eps >= 0.5"
    rows = table[(table.model == model) & (table["mode"] == mode)]
    largest = float(rows.eps.max())
    if largest < 0.5:
        return _check(name, model, mode, "SKIP", f"sweep stops at eps {largest:g} < 0.5")
    at_max = rows[rows.eps == largest]
    best = at_max[at_max.attack == "worst-case"] if (at_max.attack == "worst-case").any() else at_max
    error = float(best.adversarial_error.max())
    ok = error >= CHANCE_ERROR - CHANCE_TOLERANCE
    return _check(name, model, mode, "PASS" if ok else "FAIL",
                  f"strongest error {error:.3f} at eps {largest:g}; need >= {CHANCE_ERROR - CHANCE_TOLERANCE:.2f}", error)


def _black_box_checks(table: pd.DataFrame, model: str, mode: str, tol: float) -> list[dict]:
    attacks = set(table.attack)
    white = [a for a in WHITE_BOX if a in attacks]
    rows = []
    for black in [a for a in ("square", "transfer") if a in attacks]:
        name = f"{black} <= white-box"
        if not white:
            rows.append(_check(name, model, mode, "SKIP", "no white-box attack in the sweep"))
            continue
        strongest = pd.concat([_series(table, model, a, mode) for a in white], axis=1).max(axis=1)
        bad = _compare(strongest, _series(table, model, black, mode), tol)
        rows.append(_check(name, model, mode, "FAIL" if bad else "PASS",
                           f"vs best of {','.join(white)}" + (f": stronger at eps {bad} (gradient masking?)" if bad
                                                              else f" (tol {tol:.3f})")))
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


def sanity_checks(table: pd.DataFrame, gradients: pd.DataFrame | None = None) -> pd.DataFrame:
    """PASS / FAIL / SKIP rows (check, model, mode, status, value, detail) for a sweep table.

    Checks: iterative ≥ single-step at each eps; success monotone in eps; chance error (≥ 0.75) at
    the largest eps if the sweep reaches 0.5; square and transfer no stronger than the best
    white-box attack; and, given :func:`gradient_statistics`, non-zero finite input gradients.
    """
    rows: list[dict] = []
    for model in dict.fromkeys(table.model):
        for mode in dict.fromkeys(table["mode"]):
            n = int(table[(table.model == model)].n.iloc[0])
            tol = tolerance(n)
            rows += _iterative_checks(table, model, mode, tol)
            rows += _monotone_checks(table, model, mode, tol)
            rows.append(_chance_check(table, model, mode))
            rows += _black_box_checks(table, model, mode, tol)
    if gradients is not None:
        rows += _gradient_checks(gradients)
    dataset = table.attrs.get("dataset", "")
    checks = pd.DataFrame(rows, columns=["check", "model", "mode", "status", "value", "detail"])
    checks.insert(0, "dataset", dataset)
    return checks


def evaluate_robustness(models: dict[str, nn.Module], images: Tensor, labels: Tensor, config: SweepConfig,
                        *, dataset: str, progress: Callable[[dict], None] | None = None
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One call: (sweep table, sanity-check table including gradient statistics).

    The gradient statistics themselves are in ``checks.attrs["gradients"]`` (a DataFrame).
    """
    config.validate()  # before the gradients, so a bad option costs nothing
    gradients = gradient_statistics(models, images, labels, scores=config.scores, batch_size=config.batch_size)
    table = robustness_sweep(models, images, labels, config, dataset=dataset, progress=progress)
    checks = sanity_checks(table, gradients)
    checks.attrs["gradients"] = gradients
    return table, checks


def attack_timings(models: dict[str, nn.Module], images: Tensor, labels: Tensor, config: SweepConfig
                   ) -> pd.DataFrame:
    """Wall-clock seconds to run each attack of ``config`` at all its eps values and modes, per model.

    One row per (model, attack): model, attack, steps, eps_values, n, seconds, images_per_s
    (adversarial images produced per second, all eps values and targets counted). Models are
    timed in eval mode on their own device, with the same code path as :func:`robustness_sweep`.
    """
    config.validate()
    eps_values = sorted(set(config.eps_values))
    rows = []
    for model_name, model in models.items():
        model.eval()
        device = _device(model)
        model_images, model_labels = images.to(device), labels.to(device)
        source = _transfer_source(models, model_name, config)
        score = ScoreModel(model, config.scores.get(model_name)).score
        for attack in config.attacks:
            start = time.perf_counter()
            produced = 0
            for mode in config.modes:
                for eps in eps_values:
                    outcome = _run_one(attack, model, source, eps, mode, model_images, model_labels, config, score)
                    produced += outcome.predictions.numel()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            rows.append({"model": model_name, "attack": attack, "steps": config.steps, "eps_values": len(eps_values),
                         "n": len(labels), "seconds": seconds, "images_per_s": produced / seconds})
    return pd.DataFrame(rows, columns=["model", "attack", "steps", "eps_values", "n", "seconds", "images_per_s"])

