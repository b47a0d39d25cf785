"""Viewpoint generalisation at matched familiar error, the orchestration (paper §5.1, Table 2).

Per seed: train (or reuse) the CNN and a capsule net on the familiar views of a split
(``azimuth``: 300°-40°; ``elevation``: 30°-40°), stop the capsule net where its familiar error
first matches the CNN's -- under both protocols of :mod:`capsrobust.evaluation.viewpoint` -- and
compare the two on the novel views. The capsule run keeps an evaluation-only checkpoint at every
evaluation (``TrainConfig.keep_checkpoints``), so either matching rule can be applied after
training. How long each model trains, and on how many test images it is scored, is a
:class:`ViewpointBudget` (:data:`BUDGETS`).

On synthnorb, :func:`ensure_extrapolation_set` renders the same test toys at views outside
smallNORB's grid (elevations 0°-25° and 75°-85°, or the odd-10° azimuths), an extra
"extrapolation" test set. The measurement maths is in :mod:`capsrobust.evaluation.viewpoint`; the
report files are written by :mod:`capsrobust.reporting.viewpoint`.

Example::

    from capsrobust.experiments.viewpoint import viewpoint_experiment
    from capsrobust.reporting.viewpoint import table2_markdown
    result = viewpoint_experiment("azimuth", "results/viewpoint/azimuth", seeds=[0], budget="quick")
    print(table2_markdown(result))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from capsrobust.data.prepared import PreparedData, prepare_data
from capsrobust.errors import CheckpointError, ConfigError, DataError
from capsrobust.evaluation.learning_curves import load_metrics
from capsrobust.evaluation.viewpoint import (BIN_WIDTH, PAPER, VALIDATION, ViewTestSet, angular_distance_to_familiar,
                                             error_by_distance, error_fraction, load_view_test_set, predict_classes,
                                             select_matched_checkpoint, viewpoint_split)
from capsrobust.experiments.runs import load_model, train_or_reuse
from capsrobust.models import MODEL_NAMES, is_capsule_model
from capsrobust.provenance import file_sha256

__all__ = ["BUDGETS", "CNN", "ViewpointBudget", "ViewpointResult", "ensure_extrapolation_set", "extrapolation_grid",
           "get_budget", "viewpoint_experiment"]

#: The baseline's model name (what is trained; a model's kind is told by ``is_capsule_model``).
CNN = "cnn"

# ----------------------------------------------------------------------------------------------
# Budgets


@dataclass(frozen=True)
class ViewpointBudget:
    """How long each model trains and how often it is evaluated (a matching candidate per evaluation)."""

    name: str
    cnn_steps: int | None = None
    cnn_epochs: float | None = None
    capsule_steps: int | None = None
    capsule_epochs: float | None = None
    batch_size: int = 32
    eval_every: int = 0  # 0: the CNN once per epoch, capsules capsule_evals_per_epoch times
    capsule_evals_per_epoch: int = 4  # finer than the CNN's: the matched step is found at this resolution
    max_eval_examples: int = 0  # 0: whole validation sets
    capsule_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"iterations": 2}
    extrapolation_lightings: tuple[int, ...] | None = None  # None: all six
    max_test_examples: int = 0  # 0: the whole test set; else a fixed random subset (seeded) of this many
    max_extrapolation_examples: int = 0  # the same for the extrapolation views

    def with_overrides(self, *, steps: int | None = None, epochs: float | None = None, batch_size: int | None = None,
                       eval_every: int | None = None, iterations: int | None = None,
                       lambda_scale: float | None = None, cnn_steps: int | None = None,
                       capsule_steps: int | None = None) -> "ViewpointBudget":
        """This budget with the given values replacing its own (``steps``/``epochs`` apply to both models;
        ``cnn_steps``/``capsule_steps`` to one, after them)."""
        changes: dict[str, Any] = {}
        if steps is not None:
            if steps < 1:
                raise ConfigError(f"--steps must be at least 1, got {steps}")
            changes.update(cnn_steps=steps, capsule_steps=steps)
        if epochs is not None:
            if not epochs > 0:
                raise ConfigError(f"--epochs must be positive, got {epochs}")
            changes.update(cnn_epochs=epochs, capsule_epochs=epochs)
            if steps is None:
                changes.update(cnn_steps=None, capsule_steps=None)
        for key, value in (("cnn_steps", cnn_steps), ("capsule_steps", capsule_steps)):
            if value is not None:
                if value < 1:
                    raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
                changes[key] = value
        if batch_size is not None:
            if batch_size < 1:
                raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
            changes["batch_size"] = batch_size
        if eval_every is not None:
            if eval_every < 0:
                raise ConfigError(f"--eval-every must be 0 (automatic) or positive, got {eval_every}")
            changes["eval_every"] = eval_every
        if iterations is not None:
            if iterations < 1:
                raise ConfigError(f"--iterations must be at least 1, got {iterations}")
            changes["capsule_overrides"] = {**self.capsule_overrides, "iterations": iterations}
        if lambda_scale is not None:
            if not lambda_scale > 0:
                raise ConfigError(f"--lambda-scale must be positive (1 = official), got {lambda_scale}")
            overrides = changes.get("capsule_overrides", self.capsule_overrides)
            changes["capsule_overrides"] = {**overrides, "lambda_scale": lambda_scale}
        if not changes:
            return self
        return dataclasses.replace(self, name=f"{self.name} (overridden)", **changes)

    def train_config(self, model: str, *, split: str, data_dir: str | None, mode: str, seed: int, n_train: int,
                     target_familiar_error: float | None = None) -> Any:
        """The :class:`~capsrobust.training.TrainConfig` of ``model`` under this budget."""
        from capsrobust.presets import resolve_preset
        from capsrobust.training import TrainConfig, total_steps

        is_cnn = not is_capsule_model(model)
        config = TrainConfig(
            model=model, split=split, data_dir=data_dir, mode=mode, seed=seed, batch_size=self.batch_size,
            steps=self.cnn_steps if is_cnn else self.capsule_steps,
            epochs=self.cnn_epochs if is_cnn else self.capsule_epochs,
            max_eval_examples=self.max_eval_examples, target_familiar_error=target_familiar_error,
            keep_checkpoints=not is_cnn, model_overrides={} if is_cnn else dict(self.capsule_overrides),
        )
        if self.eval_every:
            config.eval_every = self.eval_every
        elif not is_cnn:
            steps_per_epoch = max(1, n_train // self.batch_size)
            default = max(1, min(steps_per_epoch, total_steps(config, n_train) // 10))  # training's own default
            config.eval_every = max(1, default // self.capsule_evals_per_epoch)
        return resolve_preset(config)  # as training records it, so a reused run compares like with like


BUDGETS: dict[str, ViewpointBudget] = {
    # Smoke run: a few hundred steps on a validation subsample, extrapolation at one lighting.
    # Test sets subsampled (2,000 test, 1,000 extrapolation images): a capsule net scores ~300 images/s here.
    "quick": ViewpointBudget("quick", cnn_steps=200, capsule_steps=200, eval_every=20, max_eval_examples=500,
                             extrapolation_lightings=(0,), max_test_examples=2000, max_extrapolation_examples=1000),
    # Comparable to a real run: 10 epochs each; the capsule net evaluated 4 times per epoch.
    "full": ViewpointBudget("full", cnn_epochs=10, capsule_epochs=10),
}


def get_budget(name: str) -> ViewpointBudget:
    try:
        return BUDGETS[name]
    except KeyError:
        raise ConfigError(f"unknown budget {name!r}; choose one of: {', '.join(BUDGETS)}") from None



# ----------------------------------------------------------------------------------------------
# Extrapolation views (synthnorb only)


def extrapolation_grid(split: str, lightings: Sequence[int] | None = None) -> Any:
    """Views outside smallNORB's grid, beyond the split's novel views.

    ``elevation``: elevations 0°-25° and 75°-85° at the 18 standard azimuths; ``azimuth``: the 18
    odd-10° azimuths (10°, 30°, ..., 350°) at the 9 standard elevations. Returns a synthnorb Grid.
    """
    from capsrobust.data.synthnorb import FULL_AZIMUTHS, FULL_ELEVATIONS, make_grid

    viewpoint_split(split)
    if split == "elevation":
        return make_grid(FULL_AZIMUTHS, [*range(0, 30, 5), *range(75, 90, 5)], lightings)
    return make_grid(range(10, 360, 20), FULL_ELEVATIONS, lightings)


def _grid_key(grid: Any) -> str:
    text = json.dumps([list(grid.azimuths), list(grid.elevations), list(grid.lightings)])
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def ensure_extrapolation_set(
    split: str,
    *,
    seed: int = 0,
    grid: Any = None,
    lightings: Sequence[int] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Directory of a synthnorb render of ``grid`` (default :func:`extrapolation_grid`) for ``seed``,
    rendered on first use into ``<cache>/synthnorb-extrapolation/v<generator>-seed<seed>-<split>-<grid hash>``.

    ``seed`` must be the seed of the training data's render, so the toys are the same ones. Rendered
    into a temporary sibling and renamed into place, so an interrupted render leaves nothing behind.
    """
    from capsrobust.data.synthnorb import GENERATOR_VERSION, is_complete, render_dataset
    from capsrobust.paths import cache_dir as user_cache_dir

    grid = grid if grid is not None else extrapolation_grid(split, lightings)
    root = Path(cache_dir).expanduser() if cache_dir is not None else user_cache_dir()
    target = root / "synthnorb-extrapolation" / f"v{GENERATOR_VERSION}-seed{seed}-{split}-{_grid_key(grid)}"
    if is_complete(target, seed=seed, grid=grid):
        return target
    log(f"synthnorb: rendering the {split} extrapolation views ({2 * grid.pairs_per_split} stereo pairs) into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    try:
        render_dataset(tmp, seed=seed, azimuths=grid.azimuths, elevations=grid.elevations, lightings=grid.lightings,
                       progress=progress)
        if target.exists():
            if is_complete(target, seed=seed, grid=grid):  # a concurrent render finished first
                return target
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _synthnorb_manifest(directory: Path) -> dict[str, Any]:
    from capsrobust.data.synthnorb import MANIFEST_NAME

    try:
        return json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        raise DataError(f"{directory}: no readable synthnorb manifest; "
                        "re-render the data with `capsrobust data render`") from None



# ----------------------------------------------------------------------------------------------
# The experiment


@dataclass
class ViewpointResult:
    """What :func:`viewpoint_experiment` found; :func:`write_report` turns it into files."""

    split: str
    dataset: str  # e.g. "synthnorb (stereo)"
    dataset_name: str
    mode: str
    dataset_checksum: str
    capsule_model: str
    budget: ViewpointBudget
    seeds: list[int]
    per_seed: pd.DataFrame  # one row per (seed, protocol, model)
    distance: pd.DataFrame  # one row per (seed, protocol, model, views, distance bin)
    checkpoints: list[dict[str, Any]]  # role, seed, path, step, sha256
    runs: list[dict[str, Any]]  # run directory, model, seed, what happened (trained/resumed/reused)
    extrapolation: dict[str, Any] | None = None  # directory, grid, seed of the extrapolation render
    seconds: float = 0.0


def viewpoint_experiment(
    split: str,
    out_dir: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    mode: str = "stereo",
    seeds: Sequence[int] = (0, 1, 2),
    budget: str | ViewpointBudget = "full",
    capsule_model: str = "capsules-small",
    reuse: bool = False,
    extrapolation: bool | None = None,
    extrapolation_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ViewpointResult:
    """Table 2 for one split: per seed, train the CNN and the capsule net on the familiar views,
    match the capsule net to the CNN's familiar error under both protocols, and test both.

    Runs live in ``out_dir/runs/<model>-seed<k>/``. Without ``reuse`` an existing run is an error;
    with it a finished run is reused (its settings must match) and a partial one resumed.

    Args:
        extrapolation: also test on views outside smallNORB's grid (synthnorb only); ``None``: when
            the data is synthnorb.
        extrapolation_dir: a ready render of those views (same seed as the training data) instead of
            rendering :func:`extrapolation_grid` into the cache.
    Returns: a :class:`ViewpointResult`; ``per_seed`` has columns seed, protocol, model, checkpoint,
        step, trained_steps, matching_target, matching_error, matched, familiar_error, novel_error,
        extrapolation_error (errors as fractions).
    """
    start = time.perf_counter()
    protocol = viewpoint_split(split)
    budget = get_budget(budget) if isinstance(budget, str) else budget
    if mode not in ("stereo", "mono"):
        raise ConfigError(f"unknown input mode {mode!r}; choose stereo or mono")
    if capsule_model not in MODEL_NAMES or not is_capsule_model(capsule_model):
        capsules = ", ".join(m for m in MODEL_NAMES if is_capsule_model(m))
        raise ConfigError(f"--capsule-model must be a capsule model ({capsules}), got {capsule_model!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("--seeds must be at least 1")

    data = prepare_data(data_dir, split, mode)
    want_extrapolation = data.dataset == "synthnorb" if extrapolation is None else extrapolation
    extra_set, extra_info = None, None
    if want_extrapolation:
        if data.dataset != "synthnorb":
            raise ConfigError("extrapolation views exist only for synthnorb (smallNORB has no views outside its grid); "
                              "pass --no-extrapolation or omit --data-dir")
        extra_set, extra_info = _prepare_extrapolation(split, data_dir, mode, budget, extrapolation_dir, progress, log)

    meta = data.meta["testing"]
    test = ViewTestSet(data.images["testing"], data.labels["testing"].numpy(),
                       angular_distance_to_familiar(meta, split).to_numpy(), protocol.is_familiar(meta))
    test = test.subsample(budget.max_test_examples)
    if extra_set is not None:
        extra_set = extra_set.subsample(budget.max_extrapolation_examples)
    n_train = len(data.indices.train)
    data_dir_text = str(data_dir) if data_dir is not None else None
    out = Path(out_dir)
    rows, distance_rows, checkpoints, runs = [], [], [], []
    for seed in seeds:
        cnn_dir = out / "runs" / f"{CNN}-seed{seed}"
        cnn_config = budget.train_config(CNN, split=split, data_dir=data_dir_text, mode=mode, seed=seed,
                                         n_train=n_train)
        runs.append({"run": str(cnn_dir), "model": CNN, "seed": seed,
                     "action": train_or_reuse(cnn_config, cnn_dir, data, reuse=reuse, progress=progress, log=log)})
        cnn_model, cnn_best = load_model(cnn_dir / "best.pt", data)
        validation_target = float(cnn_best["best"]["validation_error"])

        caps_dir = out / "runs" / f"{capsule_model}-seed{seed}"
        caps_config = budget.train_config(capsule_model, split=split, data_dir=data_dir_text, mode=mode, seed=seed,
                                          n_train=n_train, target_familiar_error=validation_target)
        runs.append({"run": str(caps_dir), "model": capsule_model, "seed": seed,
                     "action": train_or_reuse(caps_config, caps_dir, data, reuse=reuse, progress=progress, log=log)})

        cnn_predictions = {"test": predict_classes(cnn_model, test.images)}
        if extra_set is not None:
            cnn_predictions["extrapolation"] = predict_classes(cnn_model, extra_set.images)
        cnn_familiar_error = error_fraction(cnn_predictions["test"], test.labels, test.familiar)

        # Capsule candidates: every kept checkpoint, in training order.
        metrics = load_metrics(caps_dir)
        candidate_steps = [int(s) for s in metrics["step"]]
        step_path = {s: caps_dir / "checkpoints" / f"step-{s}.pt" for s in candidate_steps}
        missing = [str(p) for p in step_path.values() if not p.exists()]
        if missing:
            raise CheckpointError(f"{missing[0]}: missing; the capsule run was not trained with keep_checkpoints -- "
                                  "choose another --out to train it again")
        validation_choice = select_matched_checkpoint(
            pd.DataFrame({"step": metrics["step"], "familiar_error": metrics["validation_error"]}), validation_target)
        paper_choice = _match_on_test(candidate_steps, step_path, test, cnn_familiar_error, data)

        trained_steps = {CNN: int(cnn_best["total_steps"])}
        cnn_path = cnn_dir / "best.pt"
        checkpoints.append({"role": "cnn best (both protocols)", "seed": seed, "path": str(cnn_path),
                            "step": int(cnn_best["step"]), "sha256": file_sha256(cnn_path)})
        caps_predictions: dict[int, dict[str, np.ndarray]] = {}
        for name, choice in ((VALIDATION, validation_choice), (PAPER, paper_choice)):
            step = choice["step"]
            if step not in caps_predictions:
                caps_model, checkpoint = load_model(step_path[step], data)
                trained_steps[capsule_model] = int(checkpoint["total_steps"])
                caps_predictions[step] = {"test": predict_classes(caps_model, test.images)}
                if extra_set is not None:
                    caps_predictions[step]["extrapolation"] = predict_classes(caps_model, extra_set.images)
            checkpoints.append({"role": f"{capsule_model} matched ({name})", "seed": seed, "path": str(step_path[step]),
                                "step": step, "sha256": file_sha256(step_path[step])})
            cnn_matching_error = validation_target if name == VALIDATION else cnn_familiar_error
            entries = (
                (CNN, cnn_path, int(cnn_best["step"]), float("nan"), cnn_matching_error, None, cnn_predictions),
                (capsule_model, step_path[step], step, choice["target"], choice["familiar_error"], choice["matched"],
                 caps_predictions[step]),
            )
            for model, path, model_step, target, matching_error, matched, predictions in entries:
                rows.append({
                    "seed": seed, "protocol": name, "model": model, "checkpoint": str(path.relative_to(out)),
                    "step": model_step, "trained_steps": trained_steps[model], "matching_target": target,
                    "matching_error": matching_error, "matched": matched,
                    "familiar_error": error_fraction(predictions["test"], test.labels, test.familiar),
                    "novel_error": error_fraction(predictions["test"], test.labels, ~test.familiar),
                    "extrapolation_error": (error_fraction(predictions["extrapolation"], extra_set.labels)
                                            if extra_set is not None else float("nan")),
                })
                for views, test_set in (("test", test), ("extrapolation", extra_set)):
                    if test_set is None:
                        continue
                    binned = error_by_distance(predictions[views], test_set.labels, test_set.distances,
                                               BIN_WIDTH[split])
                    binned.insert(0, "views", views)
                    binned.insert(0, "model", model)
                    binned.insert(0, "protocol", name)
                    binned.insert(0, "seed", seed)
                    distance_rows.append(binned)

    per_seed = pd.DataFrame(rows)
    per_seed["matched"] = per_seed["matched"].astype(object)
    distance = pd.concat(distance_rows, ignore_index=True)
    return ViewpointResult(
        split=split, dataset=data.describe(), dataset_name=data.dataset, mode=mode, dataset_checksum=data.checksum,
        capsule_model=capsule_model, budget=budget, seeds=seeds, per_seed=per_seed, distance=distance,
        checkpoints=checkpoints, runs=runs, extrapolation=extra_info, seconds=time.perf_counter() - start,
    )


def _match_on_test(steps: list[int], step_path: dict[int, Path], test: ViewTestSet, target: float,
                   data: PreparedData) -> dict[str, Any]:
    """The paper's protocol: familiar *test* error of each capsule checkpoint in training order, up to
    the first that reaches ``target`` (later ones cannot change the choice), then the matching rule."""
    familiar_images, familiar_labels = test.images[torch.as_tensor(test.familiar)], test.labels[test.familiar]
    seen = []
    for step in steps:
        predictions = predict_classes(load_model(step_path[step], data)[0], familiar_images)
        seen.append({"step": step, "familiar_error": error_fraction(predictions, familiar_labels)})
        if seen[-1]["familiar_error"] <= target:
            break
    return select_matched_checkpoint(pd.DataFrame(seen), target)


def _prepare_extrapolation(split: str, data_dir: str | os.PathLike[str] | None, mode: str, budget: ViewpointBudget,
                           extrapolation_dir: str | os.PathLike[str] | None, progress: bool,
                           log: Callable[[str], None]) -> tuple[ViewTestSet, dict[str, Any]]:
    """The extrapolation test set, rendered (or given) with the training data's seed and generator."""
    from capsrobust.data.synthnorb import GENERATOR_VERSION, ensure_rendered

    source = Path(data_dir) if data_dir is not None else ensure_rendered(progress=progress)
    trained_on = _synthnorb_manifest(source)
    if trained_on.get("generator_version") != GENERATOR_VERSION:
        raise DataError(f"{source}: rendered by synthnorb generator {trained_on.get('generator_version')}, this is "
                        f"{GENERATOR_VERSION}; re-render the training data so the extrapolation toys are the same ones")
    seed = int(trained_on["seed"])
    if extrapolation_dir is None:
        directory = ensure_extrapolation_set(split, seed=seed, lightings=budget.extrapolation_lightings,
                                             progress=progress, log=log)
    else:
        directory = Path(extrapolation_dir)
    rendered = _synthnorb_manifest(directory)
    if (rendered.get("generator_version"), rendered.get("seed")) != (GENERATOR_VERSION, seed):
        raise DataError(f"{directory}: rendered with seed {rendered.get('seed')} by generator "
                        f"{rendered.get('generator_version')}, but the training data used seed {seed}, generator "
                        f"{GENERATOR_VERSION}; the toys would differ")
    info = {"directory": str(directory), "seed": seed, "generator_version": GENERATOR_VERSION,
            "azimuths_deg": rendered.get("azimuths_deg"), "elevations_deg": rendered.get("elevations_deg"),
            "lightings": rendered.get("lightings"), "instances": "test toys only (0, 1, 2, 3, 5)",
            "files_sha256": {name: entry.get("sha256") for name, entry in rendered.get("files", {}).items()
                             if "-testing-" in name}}
    return load_view_test_set(directory, split, mode), info


