"""The study's budgets: everything that sets its size, as data (:data:`STUDY_BUDGETS`).

Each kind of model (``capsule``, ``cnn``) has its own :class:`~capsrobust.experiments.budgets.ModelBudget`
(steps or epochs, model options), looked up by :func:`~capsrobust.experiments.budgets.kind_of`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from capsrobust.errors import ConfigError
from capsrobust.evaluation.robustness import SweepConfig
from capsrobust.experiments.budgets import CAPSULE, CNN_KIND, KINDS, ModelBudget, check_kinds, kind_of
from capsrobust.experiments.viewpoint import CNN, ViewpointBudget
from capsrobust.models import MODEL_NAMES, is_capsule_model
from capsrobust.training.presets import resolve_preset
from capsrobust.training.loop import TrainConfig

__all__ = ["STUDY_BUDGETS", "TARGET_SLACK", "StudyBudget", "get_study_budget"]

#: Added to the matching target: errors are float32 means (0.8 is stored as 0.80000001), and an equal error
#: must count as reached. Far below one example of any validation set (1 / 2,000 = 5e-4).
TARGET_SLACK = 1e-6


def _default_viewpoint() -> ViewpointBudget:
    return ViewpointBudget("full", models={CAPSULE: ModelBudget(epochs=10), CNN_KIND: ModelBudget(epochs=10)})


@dataclass(frozen=True)
class StudyBudget:
    """Everything that sets a study's size: trainings, the matched CNN, attacks and viewpoint runs.

    ``models``: the full-split training of each kind (``capsule``, ``cnn``); steps of ``None`` fall back
    to epochs (``training.total_steps``). ``attacks`` run untargeted, ``targeted_attacks`` targeted
    (every image towards each wrong class). ``smoke``: the report is marked as a smoke run, not for
    conclusions.
    """

    name: str
    smoke: bool
    seeds: int  # default number of seeds
    capsule_model: str = "capsules-small"
    models: dict[str, ModelBudget] = field(default_factory=lambda: {kind: ModelBudget() for kind in KINDS})
    batch_size: int = 32
    eval_every: int = 0  # 0: training's default (once per epoch, at least 10 times per run)
    max_eval_examples: int = 0  # validation subsample (0: all)
    clean_test_examples: int = 0  # test subsample for the clean test error (0: all)
    matched_cnn_steps: int = 1000  # the CNN stopped at the capsule net's validation error
    matched_eval_every: int = 20
    attacks: tuple[str, ...] = ("fgsm", "bim", "pgd", "autoattack", "transfer", "vote")
    targeted_attacks: tuple[str, ...] = ("fgsm", "bim")
    attack_steps: int = 10
    attack_images: int = 500
    targeted_images: int = 100
    eps: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1)
    viewpoint: ViewpointBudget = field(default_factory=_default_viewpoint)

    def __post_init__(self) -> None:
        check_kinds(self.models, self.name)

    def model(self, model: str) -> ModelBudget:
        """The full-split training budget of ``model``'s kind."""
        return self.models[kind_of(model)]

    def validate(self) -> None:
        """Every value checked before any work (a typo must not surface an hour in)."""
        if self.capsule_model not in MODEL_NAMES or not is_capsule_model(self.capsule_model):
            raise ConfigError(f"budget {self.name}: capsule model must be a capsule net, got {self.capsule_model!r}")
        for key in ("seeds", "batch_size", "matched_cnn_steps", "matched_eval_every", "attack_steps", "attack_images",
                    "targeted_images"):
            if getattr(self, key) < 1:
                raise ConfigError(f"budget {self.name}: {key} must be at least 1, got {getattr(self, key)}")
        SweepConfig(attacks=self.attacks, eps_values=self.eps, steps=self.attack_steps).validate()
        if self.targeted_attacks:
            SweepConfig(attacks=self.targeted_attacks, eps_values=self.eps, modes=("targeted",),
                        steps=self.attack_steps).validate()

    def train_config(self, model: str, *, data_dir: str | None, mode: str, seed: int) -> TrainConfig:
        """The full-split training of ``model`` under this budget, as training records it (preset resolved)."""
        own = self.model(model)
        config = TrainConfig(model=model, split="full", data_dir=data_dir, mode=mode, seed=seed,
                             batch_size=self.batch_size, steps=own.steps, epochs=own.epochs,
                             eval_every=self.eval_every, max_eval_examples=self.max_eval_examples,
                             model_overrides=dict(own.overrides))
        return resolve_preset(config)

    def matched_cnn_config(self, *, data_dir: str | None, mode: str, seed: int, target: float,
                           max_eval_examples: int) -> TrainConfig:
        """The CNN run stopped (``matched.pt``) at validation error ``target``, evaluated on the same
        validation subsample as the capsule net (``max_eval_examples``; the subset is seeded by ``seed``)."""
        config = TrainConfig(model=CNN, split="full", data_dir=data_dir, mode=mode, seed=seed,
                             batch_size=self.batch_size, steps=self.matched_cnn_steps,
                             eval_every=self.matched_eval_every, max_eval_examples=max_eval_examples,
                             target_familiar_error=round(float(target) + TARGET_SLACK, 9))
        return resolve_preset(config)

    def settings(self) -> dict[str, Any]:
        """This budget as ``study.json`` and provenance record it (nested dataclasses as dicts)."""
        return dataclasses.asdict(self)


#: The two budgets. ``quick`` runs end to end on synthnorb in minutes on 2 CPU cores; ``full`` trains
#: as ``results/train/`` did (capsules-small 30 epochs, the CNN 20, validation on 2,000 images), so
#: ``--train-runs results/train`` can stand in for its trainings. Its attack sweep is sized for 2 CPU
#: cores (~2 hours for two seeds with borrowed trainings): AutoAttack alone took 238 s for 50 images and
#: both models there (results/attacks/autoattack), so the sweep attacks 200 images per seed with
#: 10-step attacks, PGD 20x3 as the convergence check (pgd doubled), 20 draws of uniform noise as the
#: random baseline, and an eps grid with the paper's standardised 0.1-0.5 (pixel 0.0125-0.0625 at the
#: synthnorb mean image std of 0.127), 0.5 for the chance check and 1.0, the unbounded ball (at these
#: eps every image breaks at the first steps, so they cost little). ``quick`` keeps a doubled pgd,
#: noise and eps 1.0 too, so every check runs in the smoke test.
#: The viewpoint tests use a fixed random 6,000
#: of the 24,300 test images (~2,000 familiar, ~4,000 novel) and 4,000 extrapolation views: every kept
#: checkpoint of both models (40 per run) is scored on them, ~15 minutes per capsule run on 2 CPU cores.
STUDY_BUDGETS: dict[str, StudyBudget] = {
    "quick": StudyBudget(
        "quick", smoke=True, seeds=2, models={CAPSULE: ModelBudget(steps=150), CNN_KIND: ModelBudget(steps=150)},
        eval_every=50, max_eval_examples=300, clean_test_examples=1000, matched_cnn_steps=150, matched_eval_every=10,
        attacks=("fgsm", "bim", "pgd", "pgd:10x2", "apgd", "transfer", "vote", "noise"), attack_steps=5,
        attack_images=64, targeted_images=24, eps=(0.0, 0.01, 0.02, 0.05, 0.1, 1.0),
        viewpoint=ViewpointBudget("quick", models={CAPSULE: ModelBudget(steps=120), CNN_KIND: ModelBudget(steps=120)},
                                  checkpoints_per_run=30, max_eval_examples=300, extrapolation_lightings=(0,),
                                  max_test_examples=600, max_extrapolation_examples=300),
    ),
    "full": StudyBudget(
        "full", smoke=False, seeds=2, models={CAPSULE: ModelBudget(epochs=30), CNN_KIND: ModelBudget(epochs=20)},
        max_eval_examples=2000, matched_cnn_steps=3000, matched_eval_every=50,
        attacks=("fgsm", "bim", "pgd", "pgd:20x3", "autoattack", "transfer", "vote", "noise:20"), attack_steps=10,
        attack_images=200, targeted_images=100,
        eps=(0.0, 0.005, 0.01, 0.0125, 0.02, 0.025, 0.0375, 0.05, 0.0625, 0.1, 0.5, 1.0),
        viewpoint=ViewpointBudget("full", models={CAPSULE: ModelBudget(epochs=10), CNN_KIND: ModelBudget(epochs=10)},
                                  max_eval_examples=2000, max_test_examples=6000, max_extrapolation_examples=4000),
    ),
}


def get_study_budget(name: str | StudyBudget) -> StudyBudget:
    """A budget by name (or the budget itself); one-line :class:`ConfigError` for an unknown name."""
    if isinstance(name, StudyBudget):
        return name
    try:
        return STUDY_BUDGETS[name]
    except KeyError:
        raise ConfigError(f"unknown budget {name!r}; choose one of: {', '.join(STUDY_BUDGETS)}") from None
