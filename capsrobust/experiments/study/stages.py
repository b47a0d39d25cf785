"""The whole study in one call: are matrix capsules more robust than a matched CNN?

:func:`run_study` answers the project's two questions on one dataset, per seed:

1. ``train-seed<k>``: the capsule net and the CNN trained normally on the ``full`` split (or taken,
   read-only, from finished runs elsewhere: ``train_runs``), and their clean test error;
2. ``match-seed<k>``: the clean-error-matched pair, as ``capsrobust attack`` uses it
   (``results/attacks/README.md``): the CNN stopped when its validation error first reaches the
   capsule net's best (``cnn-matched`` run, its ``matched.pt``). If the CNN never gets there, the
   capsule net is the better model on clean data; the pair is then the two ``best.pt`` and is
   reported as *not matched*;
3. ``attack-untargeted-seed<k>``, ``attack-targeted-seed<k>``: the robustness sweep of that pair
   (:func:`~capsrobust.evaluation.robustness.evaluate_robustness`) with the budget's attacks and ε
   grid, and its sanity checks and verdicts;
4. ``viewpoint-azimuth``, ``viewpoint-elevation``: Table 2 of the paper over all seeds
   (:func:`~capsrobust.experiments.viewpoint.viewpoint_experiment`).

Everything a stage produces is written atomically into ``OUT/stages/<stage>/``, ``done.json``
last; a rerun (``reuse=True``) skips every stage with a ``done.json`` and resumes interrupted
trainings exactly, so a killed study continues where it stopped. Budgets are data
(:data:`STUDY_BUDGETS`). The report (``REPORT.md``, ``report.html``) is written by
:func:`capsrobust.reporting.study.write_study_report` from these files.

Example::

    from capsrobust.experiments.study import run_study
    from capsrobust.reporting.study import write_study_report
    result = run_study("results/study-quick", budget="quick")
    write_study_report(result, "results/study-quick")
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from capsrobust.data.prepared import PreparedData, prepare_data
from capsrobust.errors import ConfigError
from capsrobust.evaluation.attack_data import sample_test_images
from capsrobust.evaluation.learning_curves import load_metrics
from capsrobust.evaluation.robustness import SweepConfig, evaluate_robustness, sweep_cells
from capsrobust.evaluation.viewpoint import ViewTestSet, error_fraction, predict_classes
from capsrobust.experiments.runs import finished_run, load_model, train_or_reuse
from capsrobust.experiments.viewpoint import CNN, ViewpointBudget, ViewpointResult, viewpoint_experiment
from capsrobust.files import write_csv, write_json
from capsrobust.models import MODEL_NAMES, is_capsule_model
from capsrobust.presets import resolve_preset
from capsrobust.provenance import file_sha256
from capsrobust.training import TrainConfig, total_steps

__all__ = ["SPLITS", "STUDY_BUDGETS", "StudyBudget", "StudyResult", "get_study_budget", "load_stage",
           "run_study", "stage_names"]

#: The viewpoint protocols the study runs, in report order.
SPLITS = ("azimuth", "elevation")
#: Added to the matching target: errors are float32 means (0.8 is stored as 0.80000001), and an equal error
#: must count as reached. Far below one example of any validation set (1 / 2,000 = 5e-4).
TARGET_SLACK = 1e-6
#: The file a stage writes last: its presence means the stage is finished.
DONE = "done.json"
#: The file that records a study's settings; a rerun must use the same.
SETTINGS = "study.json"


@dataclass(frozen=True)
class StudyBudget:
    """Everything that sets a study's size: trainings, the matched CNN, attacks and viewpoint runs.

    Steps of ``None`` fall back to epochs (``training.total_steps``). ``attacks`` run untargeted,
    ``targeted_attacks`` targeted (every image towards each wrong class). ``smoke``: the report is
    marked as a smoke run, not for conclusions.
    """

    name: str
    smoke: bool
    seeds: int  # default number of seeds
    capsule_model: str = "capsules-small"
    capsule_overrides: dict[str, Any] = field(default_factory=dict)  # model options over the preset's
    batch_size: int = 32
    capsule_steps: int | None = None
    capsule_epochs: float | None = None
    cnn_steps: int | None = None
    cnn_epochs: float | None = None
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
    viewpoint: ViewpointBudget = field(default_factory=lambda: ViewpointBudget("full", cnn_epochs=10,
                                                                               capsule_epochs=10))

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
        capsule = is_capsule_model(model)
        config = TrainConfig(model=model, split="full", data_dir=data_dir, mode=mode, seed=seed,
                             batch_size=self.batch_size, steps=self.capsule_steps if capsule else self.cnn_steps,
                             epochs=self.capsule_epochs if capsule else self.cnn_epochs, eval_every=self.eval_every,
                             max_eval_examples=self.max_eval_examples,
                             model_overrides=dict(self.capsule_overrides) if capsule else {})
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
        "quick", smoke=True, seeds=2, capsule_steps=150, cnn_steps=150, eval_every=50, max_eval_examples=300,
        clean_test_examples=1000, matched_cnn_steps=150, matched_eval_every=10,
        attacks=("fgsm", "bim", "pgd", "pgd:10x2", "apgd", "transfer", "vote", "noise"), attack_steps=5,
        attack_images=64, targeted_images=24, eps=(0.0, 0.01, 0.02, 0.05, 0.1, 1.0),
        viewpoint=ViewpointBudget("quick", cnn_steps=120, capsule_steps=120, checkpoints_per_run=30,
                                  max_eval_examples=300, extrapolation_lightings=(0,), max_test_examples=600,
                                  max_extrapolation_examples=300),
    ),
    "full": StudyBudget(
        "full", smoke=False, seeds=2, capsule_epochs=30, cnn_epochs=20, max_eval_examples=2000,
        matched_cnn_steps=3000, matched_eval_every=50,
        attacks=("fgsm", "bim", "pgd", "pgd:20x3", "autoattack", "transfer", "vote", "noise:20"), attack_steps=10,
        attack_images=200, targeted_images=100,
        eps=(0.0, 0.005, 0.01, 0.0125, 0.02, 0.025, 0.0375, 0.05, 0.0625, 0.1, 0.5, 1.0),
        viewpoint=ViewpointBudget("full", cnn_epochs=10, capsule_epochs=10, max_eval_examples=2000,
                                  max_test_examples=6000, max_extrapolation_examples=4000),
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


def stage_names(seeds: Sequence[int]) -> list[str]:
    """Every stage of a study over ``seeds``, in the order they run."""
    names = []
    for seed in seeds:
        names += [f"train-seed{seed}", f"match-seed{seed}", f"attack-untargeted-seed{seed}",
                  f"attack-targeted-seed{seed}"]
    return names + [f"viewpoint-{split}" for split in SPLITS]


@dataclass
class StudyResult:
    """What :func:`run_study` did and where its stage outputs are (the report reads them from there)."""

    out: Path
    budget: StudyBudget
    seeds: list[int]
    dataset: str  # e.g. "synthnorb (stereo)"
    dataset_name: str
    mode: str
    dataset_checksum: str
    data_dir: str | None
    train_runs: str | None
    stages: dict[str, dict[str, Any]]  # stage -> its done.json record
    estimate_seconds: float
    seconds: float


# ----------------------------------------------------------------------------------------------
# Stage bookkeeping


def _stage_dir(out: Path, stage: str) -> Path:
    return out / "stages" / stage


def load_stage(out: str | os.PathLike[str], stage: str) -> dict[str, Any] | None:
    """The ``done.json`` record of a finished stage, or None when it has not finished."""
    path = _stage_dir(Path(out), stage) / DONE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None  # a torn record cannot happen (atomic writes); a hand-edited one is redone


def _finish(out: Path, stage: str, record: dict[str, Any], started: float) -> dict[str, Any]:
    record = {"stage": stage, "seconds": round(time.perf_counter() - started, 2), **record}
    write_json(_stage_dir(out, stage) / DONE, record)
    return record


def _settings(budget: StudyBudget, seeds: list[int], data_dir: str | None, mode: str,
              train_runs: str | None) -> dict[str, Any]:
    return {"budget": dataclasses.asdict(budget), "seeds": seeds, "data_dir": data_dir, "mode": mode,
            "train_runs": train_runs}


def _check_settings(out: Path, settings: dict[str, Any], reuse: bool) -> None:
    """Refuse to mix two studies in one directory: same settings with ``reuse``, none without."""
    path = out / SETTINGS
    if not path.exists():
        return
    if not reuse:
        raise ConfigError(f"{out} already holds a study; pass --reuse to continue it (finished stages are kept) "
                          "or choose another --out")
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"{path}: unreadable; choose another --out") from None
    normalised = json.loads(json.dumps(settings))  # tuples -> lists, as saved
    for key in ("budget", "seeds", "data_dir", "mode", "train_runs"):
        if saved.get(key) != normalised[key]:
            what = key.replace("_", "-")
            raise ConfigError(f"{out} holds a study with other {what} ({saved.get(key)!r} there); rerun it with the "
                              "same options or choose another --out")


# ----------------------------------------------------------------------------------------------
# The estimate


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


def _estimate(budget: StudyBudget, seeds: list[int], sizes: dict[str, int], in_channels: int,
              train_runs: str | None) -> dict[str, float]:
    """Seconds each stage should take: images through each model / its throughput measured here.

    ``sizes``: training images of each split (``full``, ``azimuth``, ``elevation``), ``validation``
    and ``test`` (of the full split).
    """
    speed = {name: _throughput(name, in_channels, budget.batch_size) for name in (budget.capsule_model, CNN)}

    def training(model: str, steps: int, evals: int, eval_images: int) -> float:
        train_ips, infer_ips = speed[model]
        return steps * budget.batch_size / train_ips + evals * eval_images / infer_ips

    def steps_of(model: str, steps: int | None, epochs: float | None, n: int) -> int:
        return total_steps(TrainConfig(model=model, steps=steps, epochs=epochs, batch_size=budget.batch_size), n)

    def capped(limit: int, n: int) -> int:
        return min(limit, n) if limit else n

    validation = capped(budget.max_eval_examples, sizes["validation"])
    estimate: dict[str, float] = {}
    caps, n_full = budget.capsule_model, sizes["full"]
    for seed in seeds:
        seconds = 0.0
        if train_runs is None:
            for model, steps, epochs in ((caps, budget.capsule_steps, budget.capsule_epochs),
                                         (CNN, budget.cnn_steps, budget.cnn_epochs)):
                total = steps_of(model, steps, epochs, n_full)
                evals = max(10, total // max(1, budget.eval_every or n_full // budget.batch_size))
                seconds += training(model, total, evals, validation)
        test = capped(budget.clean_test_examples, sizes["test"])
        seconds += test / speed[caps][1] + test / speed[CNN][1]
        estimate[f"train-seed{seed}"] = seconds
        estimate[f"match-seed{seed}"] = training(CNN, budget.matched_cnn_steps,
                                                 budget.matched_cnn_steps // budget.matched_eval_every, validation)
        for stage, attacks, images, targets in (("untargeted", budget.attacks, budget.attack_images, 1),
                                                ("targeted", budget.targeted_attacks, budget.targeted_images, 4)):
            gradient_images = 0.0
            for spec in attacks:
                name, _, rest = spec.partition(":")
                steps = int(rest.split("x")[0]) if rest else budget.attack_steps
                restarts = int(rest.split("x")[1]) if "x" in rest else 1
                per_image = {"fgsm": 1, "autoattack": 12 * steps}.get(name, steps * restarts)
                gradient_images += per_image * images * targets * sum(e > 0 for e in budget.eps)
            # Both models; a gradient costs ~ a training image. Early stopping makes this an upper bound.
            estimate[f"attack-{stage}-seed{seed}"] = sum(gradient_images / speed[m][0] for m in (caps, CNN))
    vp = budget.viewpoint
    test = capped(vp.max_test_examples, sizes["test"])
    extrapolation = capped(vp.max_extrapolation_examples, sizes["test"])
    for split in SPLITS:
        seconds = 0.0
        for model, steps, epochs in ((caps, vp.capsule_steps, vp.capsule_epochs), (CNN, vp.cnn_steps, vp.cnn_epochs)):
            total = steps_of(model, steps, epochs, sizes[split])
            kept = math.ceil(total / vp.eval_every_for(total))  # each evaluation keeps a checkpoint
            seconds += training(model, total, kept, capped(vp.max_eval_examples, sizes["validation"] // 3))
            # Every kept checkpoint scored on the test images; each protocol's pick on the extrapolation views.
            seconds += (kept * test + 2 * extrapolation) / speed[model][1]
        estimate[f"viewpoint-{split}"] = seconds * len(seeds)
    return estimate


# ----------------------------------------------------------------------------------------------
# The stages


@dataclass
class _Context:
    out: Path
    budget: StudyBudget
    data: PreparedData
    data_dir: str | None
    mode: str
    train_runs: Path | None
    progress: bool
    log: Callable[[str], None]


def _bar(context: _Context, stage: str, total: int) -> Any:
    from capsrobust.progress import progress_bar

    return progress_bar(total, stage, unit="task", enabled=context.progress, every=1, leave=True)


def _stage_train(context: _Context, seed: int, stage: str) -> dict[str, Any]:
    """The capsule net and the CNN on the full split (trained here or taken from ``train_runs``), clean test error."""
    budget, data = context.budget, context.data
    images, labels = data.subset("test_familiar")  # the whole test set on the full split
    test = ViewTestSet(images, labels.numpy(), np.zeros(len(labels)), np.ones(len(labels), dtype=bool))
    test = test.subsample(budget.clean_test_examples, seed=seed)
    models: dict[str, Any] = {}
    bar = _bar(context, stage, 4)
    for model in (budget.capsule_model, CNN):
        if context.train_runs is not None:
            run_dir = context.train_runs / f"{model}-seed{seed}"
            finished_run(run_dir, model=model, seed=seed, data=data, log=context.log)
            action = f"taken from {context.train_runs} (read only)"
        else:
            run_dir = context.out / "runs" / f"{model}-seed{seed}"
            config = budget.train_config(model, data_dir=context.data_dir, mode=context.mode, seed=seed)
            action = train_or_reuse(config, run_dir, data, reuse=True, progress=context.progress, log=context.log)
        bar.update(1)
        network, checkpoint = load_model(run_dir / "best.pt", data)
        predictions = predict_classes(network, test.images)
        models[model] = {
            "run": str(run_dir), "action": action, "best": str(run_dir / "best.pt"),
            "sha256": file_sha256(run_dir / "best.pt"), "step": int(checkpoint["step"]),
            "total_steps": int(checkpoint["total_steps"]),
            "validation_error": float(checkpoint["best"]["validation_error"]),
            "max_eval_examples": int(checkpoint["config"].get("max_eval_examples", 0)),
            "test_error": error_fraction(predictions, test.labels), "test_images": len(test.labels),
        }
        bar.update(1)
    bar.close()
    return {"seed": seed, "models": models}


def _stage_match(context: _Context, seed: int, stage: str) -> dict[str, Any]:
    """The clean-error-matched pair: the CNN stopped at the capsule net's best validation error."""
    budget = context.budget
    trained = load_stage(context.out, f"train-seed{seed}")
    assert trained is not None  # stages run in order
    caps = trained["models"][budget.capsule_model]
    target = caps["validation_error"]
    config = budget.matched_cnn_config(data_dir=context.data_dir, mode=context.mode, seed=seed, target=target,
                                       max_eval_examples=caps["max_eval_examples"])
    run_dir = context.out / "runs" / f"{CNN}-matched-seed{seed}"
    bar = _bar(context, stage, 1)
    action = train_or_reuse(config, run_dir, context.data, reuse=True, progress=context.progress, log=context.log)
    bar.update(1)
    bar.close()
    matched_path = run_dir / "matched.pt"
    if matched_path.is_file():
        _, checkpoint = load_model(matched_path, context.data)
        # matched.pt is saved at the first evaluation at or below the target: its error is that evaluation's.
        metrics = load_metrics(run_dir)
        row = metrics[metrics["step"] == int(checkpoint["step"])].iloc[0]
        cnn = {"checkpoint": str(matched_path), "step": int(checkpoint["step"]),
               "validation_error": float(row["validation_error"])}
        matched = True
    else:  # the CNN never got as bad as the capsule net is good: the capsule net is better on clean data
        cnn_best = trained["models"][CNN]
        cnn = {"checkpoint": cnn_best["best"], "step": cnn_best["step"],
               "validation_error": cnn_best["validation_error"]}
        matched = False
    cnn["sha256"] = file_sha256(cnn["checkpoint"])
    return {"seed": seed, "run": str(run_dir), "action": action, "target": target, "matched": matched,
            "capsules": {"model": budget.capsule_model, "checkpoint": caps["best"], "step": caps["step"],
                         "validation_error": target, "sha256": caps["sha256"]},
            "cnn": cnn}


def _stage_attack(context: _Context, seed: int, stage: str, mode: str) -> dict[str, Any]:
    """The robustness sweep of the matched pair (one mode), its sanity checks and gradient statistics, and
    (untargeted) the worst case per image (``per_image.csv``)."""
    budget = context.budget
    pair = load_stage(context.out, f"match-seed{seed}")
    assert pair is not None
    attacks = budget.attacks if mode == "untargeted" else budget.targeted_attacks
    directory = _stage_dir(context.out, stage)
    if not attacks:
        return {"seed": seed, "mode": mode, "skipped": "no attacks in this budget"}
    n = budget.attack_images if mode == "untargeted" else budget.targeted_images
    images, labels, _ = sample_test_images(context.data, n, seed)
    models = {budget.capsule_model: load_model(pair["capsules"]["checkpoint"], context.data)[0],
              CNN: load_model(pair["cnn"]["checkpoint"], context.data)[0]}
    config = SweepConfig(attacks=attacks, eps_values=budget.eps, modes=(mode,), steps=budget.attack_steps, seed=seed)
    bar = _bar(context, stage, sweep_cells(models, config))
    table, checks = evaluate_robustness(models, images, labels, config, dataset=context.data.describe(),
                                        progress=lambda row: bar.update(1))
    bar.close()
    files = {"sweep.csv": table, "checks.csv": checks, "gradients.csv": checks.attrs["gradients"]}
    if mode == "untargeted":  # the worst case per image: what robust accuracy and its intervals come from
        files["per_image.csv"] = checks.attrs["per_image"]
    for name, frame in files.items():
        write_csv(frame, directory / name)
    return {"seed": seed, "mode": mode, "n": n, "attacks": list(attacks), "eps": list(budget.eps),
            "steps": budget.attack_steps, "mean_image_std": table.attrs.get("mean_image_std"), "files": list(files)}


def _stage_viewpoint(context: _Context, split: str, seeds: list[int], stage: str) -> dict[str, Any]:
    """Table 2 of the paper for ``split`` over every seed (trainings in ``OUT/viewpoint/<split>/runs``)."""
    bar = _bar(context, stage, 1)
    result = viewpoint_experiment(split, context.out / "viewpoint" / split, data_dir=context.data_dir,
                                  mode=context.mode, seeds=seeds, budget=context.budget.viewpoint,
                                  capsule_model=context.budget.capsule_model, reuse=True, progress=context.progress,
                                  log=context.log)
    bar.update(1)
    bar.close()
    directory = _stage_dir(context.out, stage)
    for name in _VIEWPOINT_TABLES:
        write_csv(getattr(result, name), directory / f"{name}.csv")
    return {"split": split, "dataset": result.dataset, "dataset_name": result.dataset_name, "mode": result.mode,
            "dataset_checksum": result.dataset_checksum, "capsule_model": result.capsule_model,
            "budget": dataclasses.asdict(result.budget), "seeds": result.seeds, "checkpoints": result.checkpoints,
            "runs": result.runs, "lightings": result.lightings, "extrapolation": result.extrapolation,
            "files": [f"{name}.csv" for name in _VIEWPOINT_TABLES]}


#: The tables of a viewpoint result a stage keeps (``<name>.csv``), as :class:`ViewpointResult` names them.
_VIEWPOINT_TABLES = ("per_seed", "distance", "trajectory", "differences")


def load_viewpoint_result(out: str | os.PathLike[str], split: str) -> ViewpointResult | None:
    """The viewpoint result a finished ``viewpoint-<split>`` stage saved (None if it has not finished)."""
    record = load_stage(out, f"viewpoint-{split}")
    if record is None:
        return None
    directory = _stage_dir(Path(out), f"viewpoint-{split}")
    if "lightings" not in record or not all((directory / f"{name}.csv").is_file() for name in _VIEWPOINT_TABLES):
        raise ConfigError(f"{directory}: written by an older viewpoint stage (one-way matching, no kept CNN "
                          "checkpoints); run the study into a new --out")
    tables = {name: pd.read_csv(directory / f"{name}.csv") for name in _VIEWPOINT_TABLES}
    tables["per_seed"]["matched"] = tables["per_seed"]["matched"].astype(object)
    budget_fields = dict(record["budget"])
    for key in ("extrapolation_lightings",):
        if budget_fields.get(key) is not None:
            budget_fields[key] = tuple(budget_fields[key])
    return ViewpointResult(
        split=split, dataset=record["dataset"], dataset_name=record["dataset_name"], mode=record["mode"],
        dataset_checksum=record["dataset_checksum"], capsule_model=record["capsule_model"],
        budget=ViewpointBudget(**budget_fields), seeds=record["seeds"], **tables, checkpoints=record["checkpoints"],
        runs=record["runs"], lightings=record["lightings"], extrapolation=record["extrapolation"],
        seconds=record["seconds"])


# ----------------------------------------------------------------------------------------------
# The study


def run_study(
    out_dir: str | os.PathLike[str],
    *,
    budget: str | StudyBudget = "quick",
    seeds: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    mode: str = "stereo",
    reuse: bool = False,
    train_runs: str | os.PathLike[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> StudyResult:
    """Run (or continue) the study into ``out_dir`` and return where everything is.

    Args:
        budget: ``quick``, ``full`` or a :class:`StudyBudget` (tests use tiny ones).
        seeds: how many seeds (0, 1, ...); None: the budget's.
        data_dir: smallNORB directory; None: synthnorb from the cache.
        reuse: continue a study already in ``out_dir`` (same settings); without it such a directory is refused.
        train_runs: a directory holding finished full-split runs ``<capsule model>-seed<k>/`` and
            ``cnn-seed<k>/`` (e.g. ``results/train``), used read-only instead of training them.
    Raises: :class:`ConfigError` / :class:`~capsrobust.errors.CheckpointError` /
        :class:`~capsrobust.errors.DataError` (one line) before anything is written or overwritten.
    """
    started = time.perf_counter()
    chosen = get_study_budget(budget)
    chosen.validate()
    n_seeds = chosen.seeds if seeds is None else seeds
    if n_seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {n_seeds}")
    if mode not in ("stereo", "mono"):
        raise ConfigError(f"unknown input mode {mode!r}; choose stereo or mono")
    seed_list = list(range(n_seeds))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; --out must be a directory")
    runs_dir = Path(train_runs) if train_runs is not None else None
    if runs_dir is not None and not runs_dir.is_dir():
        raise ConfigError(f"--train-runs {runs_dir}: no such directory; pass one holding finished "
                          f"{chosen.capsule_model}-seed<k>/ and cnn-seed<k>/ runs (e.g. results/train)")
    data_dir_text = str(data_dir) if data_dir is not None else None
    settings = _settings(chosen, seed_list, data_dir_text, mode, str(runs_dir) if runs_dir else None)
    _check_settings(out, settings, reuse)
    data = prepare_data(data_dir, "full", mode)  # a missing or foreign data directory fails here, before any write
    if runs_dir is not None:  # every borrowed run checked before the first minute of work
        for seed in seed_list:
            for model in (chosen.capsule_model, CNN):
                finished_run(runs_dir / f"{model}-seed{seed}", model=model, seed=seed, data=data, log=log)
    write_json(out / SETTINGS, settings)

    context = _Context(out=out, budget=chosen, data=data, data_dir=data_dir_text, mode=mode, train_runs=runs_dir,
                       progress=progress, log=log)
    from capsrobust.data.splits import split_indices

    sizes = {"full": len(data.indices.train), "validation": len(data.indices.validation),
             "test": len(data.indices.test_familiar)}
    for split in SPLITS:
        sizes[split] = len(split_indices(split, data.meta["training"], data.meta["testing"]).train)
    estimate = _estimate(chosen, seed_list, sizes, data.in_channels, settings["train_runs"])
    stages = stage_names(seed_list)
    records: dict[str, dict[str, Any]] = {}
    left = sum(estimate[s] for s in stages if load_stage(out, s) is None)
    log(f"study: {len(stages)} stages, {sum(load_stage(out, s) is not None for s in stages)} already done; "
        f"estimate for the rest ~{_minutes(left)} on this machine ({chosen.name} budget, {n_seeds} seed(s))")
    spent, estimated_done = 0.0, 0.0
    for stage in stages:
        record = load_stage(out, stage)
        if record is not None:
            log(f"{stage}: done earlier ({record.get('seconds', 0):.0f} s), skipped")
            records[stage] = record
            continue
        stage_started = time.perf_counter()
        result = _run_stage(context, stage, seed_list)
        records[stage] = _finish(out, stage, result, stage_started)
        spent += records[stage]["seconds"]
        estimated_done += estimate[stage]
        left -= estimate[stage]
        scale = spent / estimated_done if estimated_done > 0 else 1.0
        log(f"{stage}: {records[stage]['seconds']:.0f} s (estimated {estimate[stage]:.0f} s); "
            f"~{_minutes(max(0.0, left) * scale)} left")
    return StudyResult(out=out, budget=chosen, seeds=seed_list, dataset=data.describe(), dataset_name=data.dataset,
                       mode=mode, dataset_checksum=data.checksum, data_dir=data_dir_text,
                       train_runs=settings["train_runs"], stages=records, estimate_seconds=sum(estimate.values()),
                       seconds=time.perf_counter() - started)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{math.ceil(seconds)} s"


def _run_stage(context: _Context, stage: str, seeds: list[int]) -> dict[str, Any]:
    """Dispatch ``stage`` (a name from :func:`stage_names`) to its function."""
    kind, _, rest = stage.partition("-")
    if kind == "viewpoint":
        return _stage_viewpoint(context, rest, seeds, stage)
    seed = int(stage.rsplit("seed", 1)[1])
    if kind == "train":
        return _stage_train(context, seed, stage)
    if kind == "match":
        return _stage_match(context, seed, stage)
    mode = rest.split("-")[0]
    return _stage_attack(context, seed, stage, mode)
