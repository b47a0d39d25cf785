"""The study's stages, one function each: train, match, attack (per seed) and viewpoint (per split).

Each takes the :class:`StageContext` and returns the record its ``done.json`` keeps; its tables go
through the :class:`~capsrobust.experiments.study.store.StageStore`. :func:`run_stage` dispatches a
stage name (:func:`~capsrobust.experiments.study.store.stage_names`) to its function.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from capsrobust.data.prepared import PreparedData
from capsrobust.errors import ConfigError
from capsrobust.evaluation.attack_data import sample_test_images
from capsrobust.evaluation.learning_curves import load_metrics
from capsrobust.evaluation.robustness import SweepConfig, evaluate_robustness, sweep_cells
from capsrobust.evaluation.viewpoint import ViewTestSet, error_fraction, predict_classes
from capsrobust.experiments.runs import finished_run, load_model, train_or_reuse
from capsrobust.experiments.viewpoint import CNN, ViewpointBudget, ViewpointResult, viewpoint_experiment
from capsrobust.provenance import file_sha256

from .budgets import StudyBudget
from .store import StageStore, match_stage, train_stage, viewpoint_stage

__all__ = ["VIEWPOINT_TABLES", "StageContext", "load_viewpoint_result", "run_stage", "stage_attack", "stage_match",
           "stage_train", "stage_viewpoint"]

#: The tables of a viewpoint result a stage keeps (``<name>.csv``), as :class:`ViewpointResult` names them.
VIEWPOINT_TABLES = ("per_seed", "distance", "trajectory", "differences")


@dataclass
class StageContext:
    """What every stage works with: the store, the budget, the prepared full-split data and the options."""

    store: StageStore
    budget: StudyBudget
    data: PreparedData
    data_dir: str | None
    mode: str
    train_runs: Path | None
    progress: bool
    log: Callable[[str], None]

    @property
    def out(self) -> Path:
        return self.store.out

    def bar(self, stage: str, total: int) -> Any:
        """The stage's progress bar of ``total`` tasks."""
        from capsrobust.progress import progress_bar

        return progress_bar(total, stage, unit="task", enabled=self.progress, every=1, leave=True)


def _test_set(data: PreparedData, examples: int, seed: int) -> ViewTestSet:
    """The whole full-split test set, subsampled to ``examples`` (0: all)."""
    images, labels = data.subset("test_familiar")  # the whole test set on the full split
    test = ViewTestSet(images, labels.numpy(), np.zeros(len(labels)), np.ones(len(labels), dtype=bool))
    return test.subsample(examples, seed=seed)


def _full_split_run(context: StageContext, model: str, seed: int) -> tuple[Path, str]:
    """(run directory, what happened) of ``model``'s full-split training: borrowed read-only or trained here."""
    config = context.budget.train_config(model, data_dir=context.data_dir, mode=context.mode, seed=seed)
    if context.train_runs is not None:
        run_dir = context.train_runs / f"{model}-seed{seed}"
        finished_run(run_dir, config, data=context.data, log=context.log)
        return run_dir, f"taken from {context.train_runs} (read only)"
    run_dir = context.out / "runs" / f"{model}-seed{seed}"
    return run_dir, train_or_reuse(config, run_dir, context.data, reuse=True, progress=context.progress,
                                   log=context.log)


def stage_train(context: StageContext, seed: int, stage: str) -> dict[str, Any]:
    """The capsule net and the CNN on the full split (trained here or taken from ``train_runs``), clean test error."""
    test = _test_set(context.data, context.budget.clean_test_examples, seed)
    models: dict[str, Any] = {}
    bar = context.bar(stage, 4)
    for model in (context.budget.capsule_model, CNN):
        run_dir, action = _full_split_run(context, model, seed)
        bar.update(1)
        network, checkpoint = load_model(run_dir / "best.pt", context.data)
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


def _matched_cnn(context: StageContext, run_dir: Path, trained: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the CNN of the pair, whether it is matched): ``matched.pt`` when the run reached the target, else
    the CNN's ``best.pt`` (the CNN never got as bad as the capsule net is good)."""
    matched_path = run_dir / "matched.pt"
    if matched_path.is_file():
        _, checkpoint = load_model(matched_path, context.data)
        # matched.pt is saved at the first evaluation at or below the target: its error is that evaluation's.
        metrics = load_metrics(run_dir)
        row = metrics[metrics["step"] == int(checkpoint["step"])].iloc[0]
        cnn = {"checkpoint": str(matched_path), "step": int(checkpoint["step"]),
               "validation_error": float(row["validation_error"])}
        matched = True
    else:  # the capsule net is better on clean data
        cnn_best = trained["models"][CNN]
        cnn = {"checkpoint": cnn_best["best"], "step": cnn_best["step"],
               "validation_error": cnn_best["validation_error"]}
        matched = False
    cnn["sha256"] = file_sha256(cnn["checkpoint"])
    return cnn, matched


def stage_match(context: StageContext, seed: int, stage: str) -> dict[str, Any]:
    """The clean-error-matched pair: the CNN stopped at the capsule net's best validation error."""
    budget = context.budget
    trained = context.store.load(train_stage(seed))
    assert trained is not None  # stages run in order
    caps = trained["models"][budget.capsule_model]
    target = caps["validation_error"]
    config = budget.matched_cnn_config(data_dir=context.data_dir, mode=context.mode, seed=seed, target=target,
                                       max_eval_examples=caps["max_eval_examples"])
    run_dir = context.out / "runs" / f"{CNN}-matched-seed{seed}"
    bar = context.bar(stage, 1)
    action = train_or_reuse(config, run_dir, context.data, reuse=True, progress=context.progress, log=context.log)
    bar.update(1)
    bar.close()
    cnn, matched = _matched_cnn(context, run_dir, trained)
    return {"seed": seed, "run": str(run_dir), "action": action, "target": target, "matched": matched,
            "capsules": {"model": budget.capsule_model, "checkpoint": caps["best"], "step": caps["step"],
                         "validation_error": target, "sha256": caps["sha256"]},
            "cnn": cnn}


def stage_attack(context: StageContext, seed: int, stage: str, mode: str) -> dict[str, Any]:
    """The robustness sweep of the matched pair (one mode), its sanity checks and gradient statistics, and
    (untargeted) the worst case per image (``per_image.csv``)."""
    budget = context.budget
    pair = context.store.load(match_stage(seed))
    assert pair is not None
    attacks = budget.attacks if mode == "untargeted" else budget.targeted_attacks
    if not attacks:
        return {"seed": seed, "mode": mode, "skipped": "no attacks in this budget"}
    n = budget.attack_images if mode == "untargeted" else budget.targeted_images
    images, labels, _ = sample_test_images(context.data, n, seed)
    models = {budget.capsule_model: load_model(pair["capsules"]["checkpoint"], context.data)[0],
              CNN: load_model(pair["cnn"]["checkpoint"], context.data)[0]}
    config = SweepConfig(attacks=attacks, eps_values=budget.eps, modes=(mode,), steps=budget.attack_steps, seed=seed)
    bar = context.bar(stage, sweep_cells(models, config))
    table, checks = evaluate_robustness(models, images, labels, config, dataset=context.data.describe(),
                                        progress=lambda row: bar.update(1))
    bar.close()
    files = {"sweep.csv": table, "checks.csv": checks, "gradients.csv": checks.attrs["gradients"]}
    if mode == "untargeted":  # the worst case per image: what robust accuracy and its intervals come from
        files["per_image.csv"] = checks.attrs["per_image"]
    for name, frame in files.items():
        context.store.write_table(stage, name, frame)
    return {"seed": seed, "mode": mode, "n": n, "attacks": list(attacks), "eps": list(budget.eps),
            "steps": budget.attack_steps, "mean_image_std": table.attrs.get("mean_image_std"), "files": list(files)}


def stage_viewpoint(context: StageContext, split: str, seeds: list[int], stage: str) -> dict[str, Any]:
    """Table 2 of the paper for ``split`` over every seed (trainings in ``OUT/viewpoint/<split>/runs``)."""
    bar = context.bar(stage, 1)
    result = viewpoint_experiment(split, context.out / "viewpoint" / split, data_dir=context.data_dir,
                                  mode=context.mode, seeds=seeds, budget=context.budget.viewpoint,
                                  capsule_model=context.budget.capsule_model, reuse=True, progress=context.progress,
                                  log=context.log)
    bar.update(1)
    bar.close()
    for name in VIEWPOINT_TABLES:
        context.store.write_table(stage, f"{name}.csv", getattr(result, name))
    return {"split": split, "dataset": result.dataset, "dataset_name": result.dataset_name, "mode": result.mode,
            "dataset_checksum": result.dataset_checksum, "capsule_model": result.capsule_model,
            "budget": dataclasses.asdict(result.budget), "seeds": result.seeds, "checkpoints": result.checkpoints,
            "runs": result.runs, "lightings": result.lightings, "extrapolation": result.extrapolation,
            "files": [f"{name}.csv" for name in VIEWPOINT_TABLES]}


def load_viewpoint_result(out: str | os.PathLike[str] | StageStore, split: str) -> ViewpointResult | None:
    """The viewpoint result a finished ``viewpoint-<split>`` stage saved (None if it has not finished)."""
    store = out if isinstance(out, StageStore) else StageStore(out)
    stage = viewpoint_stage(split)
    record = store.load(stage)
    if record is None:
        return None
    names = [f"{name}.csv" for name in VIEWPOINT_TABLES]
    if "lightings" not in record or not all(store.path(stage, name).is_file() for name in names):
        raise ConfigError(f"{store.directory(stage)}: written by an older viewpoint stage (one-way matching, no kept "
                          "CNN checkpoints); run the study into a new --out")
    tables = {name: store.read_table(stage, f"{name}.csv") for name in VIEWPOINT_TABLES}
    tables["per_seed"]["matched"] = tables["per_seed"]["matched"].astype(object)
    return ViewpointResult(
        split=split, dataset=record["dataset"], dataset_name=record["dataset_name"], mode=record["mode"],
        dataset_checksum=record["dataset_checksum"], capsule_model=record["capsule_model"],
        budget=ViewpointBudget.from_record(record["budget"]), seeds=record["seeds"], **tables,
        checkpoints=record["checkpoints"], runs=record["runs"], lightings=record["lightings"],
        extrapolation=record["extrapolation"], seconds=record["seconds"])


def run_stage(context: StageContext, stage: str, seeds: list[int]) -> dict[str, Any]:
    """Run ``stage`` (a name from :func:`~capsrobust.experiments.study.store.stage_names`) and return its record."""
    kind, _, rest = stage.partition("-")
    if kind == "viewpoint":
        return stage_viewpoint(context, rest, seeds, stage)
    seed = int(stage.rsplit("seed", 1)[1])
    if kind == "train":
        return stage_train(context, seed, stage)
    if kind == "match":
        return stage_match(context, seed, stage)
    mode = rest.split("-")[0]
    return stage_attack(context, seed, stage, mode)
