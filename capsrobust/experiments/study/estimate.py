"""How long each stage of a study should take on this machine: images through each model / its throughput,
measured here and now on random inputs (:func:`estimate_stages`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from capsrobust.experiments.viewpoint import CNN
from capsrobust.training.loop import TrainConfig, total_steps

from .budgets import StudyBudget
from .store import SPLITS, attack_stage, match_stage, train_stage, viewpoint_stage

__all__ = ["estimate_stages", "minutes"]


def minutes(seconds: float) -> str:
    """``12.5 min`` from a minute on, ``42 s`` below."""
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{math.ceil(seconds)} s"


def _throughput(model_name: str, in_channels: int, batch_size: int) -> tuple[float, float]:
    """(training, inference) images/s of a fresh ``model_name`` on random 32x32 inputs, here and now."""
    from capsrobust.models import build_model

    model = build_model(model_name, in_channels=in_channels)
    images = torch.rand(batch_size, in_channels, 32, 32)
    optimizer = torch.optim.Adam(model.parameters())

    def step() -> None:
        optimizer.zero_grad()
        model(images).sum().backward()
        optimizer.step()

    step()  # warm-up: lazy caches, allocations
    started = time.perf_counter()
    for _ in range(2):
        step()
    train_ips = 2 * batch_size / (time.perf_counter() - started)
    model.eval()
    with torch.no_grad():
        model(images)
        started = time.perf_counter()
        model(images)
        infer_ips = batch_size / (time.perf_counter() - started)
    return train_ips, infer_ips


def _capped(limit: int, n: int) -> int:
    return min(limit, n) if limit else n


@dataclass
class _Costs:
    """Seconds of training, inference and attack gradients, from the measured throughput of each model."""

    budget: StudyBudget
    speed: dict[str, tuple[float, float]]  # model -> (training, inference) images/s

    def training(self, model: str, steps: int, evals: int, eval_images: int) -> float:
        """A run of ``steps`` steps evaluated ``evals`` times on ``eval_images`` images."""
        train_ips, infer_ips = self.speed[model]
        return steps * self.budget.batch_size / train_ips + evals * eval_images / infer_ips

    def inference(self, model: str, images: int) -> float:
        return images / self.speed[model][1]

    def steps_of(self, model: str, steps: int | None, epochs: float | None, n: int) -> int:
        return total_steps(TrainConfig(model=model, steps=steps, epochs=epochs, batch_size=self.budget.batch_size), n)

    def attacks(self, attacks: tuple[str, ...], images: int, targets: int) -> float:
        """Every attack of one sweep on both models; a gradient costs ~ a training image. Early stopping
        makes this an upper bound."""
        gradient_images = 0.0
        for spec in attacks:
            name, _, rest = spec.partition(":")
            steps = int(rest.split("x")[0]) if rest else self.budget.attack_steps
            restarts = int(rest.split("x")[1]) if "x" in rest else 1
            per_image = {"fgsm": 1, "autoattack": 12 * steps}.get(name, steps * restarts)
            gradient_images += per_image * images * targets * sum(e > 0 for e in self.budget.eps)
        return sum(gradient_images / train_ips for train_ips, _ in self.speed.values())


def _seed_stages(costs: _Costs, sizes: dict[str, int], trains_here: bool) -> dict[str, float]:
    """Seconds of one seed's train, match and attack stages (the same for every seed)."""
    budget = costs.budget
    validation = _capped(budget.max_eval_examples, sizes["validation"])
    seconds = 0.0
    for model in (budget.capsule_model, CNN):
        if trains_here:
            own = budget.model(model)
            total = costs.steps_of(model, own.steps, own.epochs, sizes["full"])
            evals = max(10, total // max(1, budget.eval_every or sizes["full"] // budget.batch_size))
            seconds += costs.training(model, total, evals, validation)
        seconds += costs.inference(model, _capped(budget.clean_test_examples, sizes["test"]))
    return {"train": seconds,
            "match": costs.training(CNN, budget.matched_cnn_steps,
                                    budget.matched_cnn_steps // budget.matched_eval_every, validation),
            "untargeted": costs.attacks(budget.attacks, budget.attack_images, 1),
            "targeted": costs.attacks(budget.targeted_attacks, budget.targeted_images, 4)}


def _viewpoint_seconds(costs: _Costs, sizes: dict[str, int], split: str) -> float:
    """Seconds of one seed of the viewpoint stage on ``split``: both trainings and every kept checkpoint scored."""
    vp = costs.budget.viewpoint
    test = _capped(vp.max_test_examples, sizes["test"])
    extrapolation = _capped(vp.max_extrapolation_examples, sizes["test"])
    seconds = 0.0
    for model in (costs.budget.capsule_model, CNN):
        own = vp.model(model)
        total = costs.steps_of(model, own.steps, own.epochs, sizes[split])
        kept = math.ceil(total / vp.eval_every_for(total))  # each evaluation keeps a checkpoint
        seconds += costs.training(model, total, kept, _capped(vp.max_eval_examples, sizes["validation"] // 3))
        # Every kept checkpoint scored on the test images; each protocol's pick on the extrapolation views.
        seconds += costs.inference(model, kept * test + 2 * extrapolation)
    return seconds


def estimate_stages(budget: StudyBudget, seeds: list[int], sizes: dict[str, int], in_channels: int,
                    train_runs: str | None) -> dict[str, float]:
    """Seconds each stage should take: images through each model / its throughput measured here.

    ``sizes``: training images of each split (``full``, ``azimuth``, ``elevation``), ``validation``
    and ``test`` (of the full split). ``train_runs``: the full-split trainings are borrowed (not timed).
    """
    costs = _Costs(budget, {name: _throughput(name, in_channels, budget.batch_size)
                            for name in (budget.capsule_model, CNN)})
    per_seed = _seed_stages(costs, sizes, train_runs is None)
    estimate: dict[str, float] = {}
    for seed in seeds:
        estimate[train_stage(seed)] = per_seed["train"]
        estimate[match_stage(seed)] = per_seed["match"]
        for mode in ("untargeted", "targeted"):
            estimate[attack_stage(mode, seed)] = per_seed[mode]
    for split in SPLITS:
        estimate[viewpoint_stage(split)] = _viewpoint_seconds(costs, sizes, split) * len(seeds)
    return estimate
