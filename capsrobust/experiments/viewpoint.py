"""Viewpoint generalisation at matched familiar error, the orchestration (paper §5.1, Table 2).

Per seed: train (or reuse) the CNN and a capsule net on the familiar views of a split
(``azimuth``: 300°-40°; ``elevation``: 30°-40°). Both runs keep an evaluation-only checkpoint at
every evaluation (``TrainConfig.keep_checkpoints``; :attr:`ViewpointBudget.checkpoints_per_run`,
about 40, spread evenly over the run), and every kept checkpoint of both models is scored on the
test set. Then, under both protocols of :mod:`capsrobust.evaluation.viewpoint`, the weaker model
on familiar views sets the target (its smoothed best familiar error) and the stronger one is taken
at its checkpoint nearest it (:func:`~capsrobust.evaluation.viewpoint.select_two_way`); the pair's
novel errors are compared, and so are the whole novel-against-familiar curves at common familiar
levels, each with a 95 % interval from a bootstrap over the test toys. How long each model trains,
and on how many test images it is scored, is a :class:`ViewpointBudget` (:data:`BUDGETS`).

On synthnorb, :func:`ensure_extrapolation_set` renders the same test toys at views outside
smallNORB's grid (elevations 0°-25° and 75°-85°, or the odd-10° azimuths), an extra
"extrapolation" test set, scored for the matched checkpoints. The measurement maths is in
:mod:`capsrobust.evaluation.viewpoint`; the report files are written by
:mod:`capsrobust.reporting.viewpoint`.

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

from capsrobust.data.prepared import PreparedData, prepare_data
from capsrobust.data.splits import get_split
from capsrobust.errors import CheckpointError, ConfigError, DataError
from capsrobust.evaluation.learning_curves import load_metrics
from capsrobust.evaluation.viewpoint import (BIN_WIDTH, BOOTSTRAP_DRAWS, FAMILIAR_LEVELS, PAPER, PROTOCOLS,
                                             VALIDATION, ViewTestSet, angular_distance_to_familiar, common_levels,
                                             curve_difference, error_by_distance, lighting_halves, load_view_test_set,
                                             matched_difference, per_toy_counts, predict_classes, select_two_way,
                                             toy_bootstrap_weights, toy_index, viewpoint_split)
from capsrobust.experiments.budgets import (CAPSULE, CNN_KIND, KINDS, ModelBudget, check_kinds, kind_of,
                                            models_from_record)
from capsrobust.experiments.runs import load_model, train_or_reuse
from capsrobust.models import MODEL_NAMES, is_capsule_model
from capsrobust.progress import progress_bar
from capsrobust.provenance import file_sha256

__all__ = ["BUDGETS", "CNN", "ViewpointBudget", "ViewpointResult", "ensure_extrapolation_set", "extrapolation_grid",
           "get_budget", "viewpoint_experiment"]

#: The baseline's model name (what is trained; a model's kind is told by ``is_capsule_model``).
CNN = "cnn"

# ----------------------------------------------------------------------------------------------
# Budgets


@dataclass(frozen=True)
class ViewpointBudget:
    """How long each kind of model trains (``models``: a :class:`ModelBudget` per kind, ``capsule`` and
    ``cnn``) and how often it is evaluated (a matching candidate per evaluation)."""

    name: str
    models: dict[str, ModelBudget] = field(default_factory=lambda: {kind: ModelBudget() for kind in KINDS})
    batch_size: int = 32
    eval_every: int = 0  # 0: both models every steps // checkpoints_per_run steps
    checkpoints_per_run: int = 40  # evaluations per run, each keeping an evaluation-only checkpoint (protocol: 30-60)
    max_eval_examples: int = 0  # 0: whole validation sets
    extrapolation_lightings: tuple[int, ...] | None = None  # None: all six
    max_test_examples: int = 0  # 0: the whole test set; else a fixed random subset (seeded) of this many
    max_extrapolation_examples: int = 0  # the same for the extrapolation views

    def __post_init__(self) -> None:
        check_kinds(self.models, self.name)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "ViewpointBudget":
        """The budget as ``dataclasses.asdict`` saved it (JSON lists back to tuples)."""
        fields = dict(record)
        fields["models"] = models_from_record(fields["models"])
        if fields.get("extrapolation_lightings") is not None:
            fields["extrapolation_lightings"] = tuple(fields["extrapolation_lightings"])
        return cls(**fields)

    def model(self, model: str) -> ModelBudget:
        """The training budget of ``model``'s kind."""
        return self.models[kind_of(model)]

    def with_overrides(self, *, steps: int | None = None, epochs: float | None = None, batch_size: int | None = None,
                       eval_every: int | None = None, iterations: int | None = None,
                       lambda_scale: float | None = None, cnn_steps: int | None = None,
                       capsule_steps: int | None = None) -> "ViewpointBudget":
        """This budget with the given values replacing its own (``steps``/``epochs`` apply to both models;
        ``cnn_steps``/``capsule_steps`` to one, after them)."""
        models = _override_models(self.models, steps=steps, epochs=epochs,
                                  kind_steps={CNN_KIND: cnn_steps, CAPSULE: capsule_steps},
                                  capsule_options={"iterations": iterations, "lambda_scale": lambda_scale})
        changes: dict[str, Any] = {} if models == self.models else {"models": models}
        if batch_size is not None:
            if batch_size < 1:
                raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
            changes["batch_size"] = batch_size
        if eval_every is not None:
            if eval_every < 0:
                raise ConfigError(f"--eval-every must be 0 (automatic) or positive, got {eval_every}")
            changes["eval_every"] = eval_every
        if not changes:
            return self
        return dataclasses.replace(self, name=f"{self.name} (overridden)", **changes)

    def eval_every_for(self, steps: int) -> int:
        """Steps between evaluations (each keeps a checkpoint) of a run of ``steps`` steps: the budget's
        ``eval_every``, or automatic: evenly spread, at least ``checkpoints_per_run`` of them (when the run
        is that long) and, from 3x that many steps on, at most 1.5x (40 -> 40-60)."""
        return self.eval_every or max(1, steps // max(1, self.checkpoints_per_run))

    def train_config(self, model: str, *, split: str, data_dir: str | None, mode: str, seed: int,
                     n_train: int) -> Any:
        """The :class:`~capsrobust.training.TrainConfig` of ``model`` under this budget: evaluated every
        :meth:`eval_every_for` steps, an evaluation-only checkpoint kept at each evaluation."""
        from capsrobust.training.presets import resolve_preset
        from capsrobust.training.loop import TrainConfig, total_steps

        own = self.model(model)
        config = TrainConfig(
            model=model, split=split, data_dir=data_dir, mode=mode, seed=seed, batch_size=self.batch_size,
            steps=own.steps, epochs=own.epochs, max_eval_examples=self.max_eval_examples, keep_checkpoints=True,
            model_overrides=dict(own.overrides),
        )
        config.eval_every = self.eval_every_for(total_steps(config, n_train))
        return resolve_preset(config)  # as training records it, so a reused run compares like with like


def _override_models(models: dict[str, ModelBudget], *, steps: int | None, epochs: float | None,
                     kind_steps: dict[str, int | None], capsule_options: dict[str, Any]) -> dict[str, ModelBudget]:
    """The per-kind budgets with the command line's overrides applied (each checked: one line if bad)."""
    changed = dict(models)
    if steps is not None:
        if steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {steps}")
        changed = {kind: budget.replace(steps=steps) for kind, budget in changed.items()}
    if epochs is not None:
        if not epochs > 0:
            raise ConfigError(f"--epochs must be positive, got {epochs}")
        changed = {kind: budget.replace(epochs=epochs, **({} if steps is not None else {"steps": None}))
                   for kind, budget in changed.items()}
    for kind, value in kind_steps.items():
        if value is not None:
            if value < 1:
                raise ConfigError(f"--{kind}-steps must be at least 1, got {value}")
            changed[kind] = changed[kind].replace(steps=value)
    for option, value in capsule_options.items():
        if value is None:
            continue
        if option == "iterations" and value < 1:
            raise ConfigError(f"--iterations must be at least 1, got {value}")
        if option == "lambda_scale" and not value > 0:
            raise ConfigError(f"--lambda-scale must be positive (1 = official), got {value}")
        capsule = changed[CAPSULE]
        changed[CAPSULE] = capsule.replace(overrides={**capsule.overrides, option: value})
    return changed


BUDGETS: dict[str, ViewpointBudget] = {
    # Smoke run: a few hundred steps on a validation subsample, extrapolation at one lighting, 30 kept
    # checkpoints per run. Test sets subsampled (1,000 test, 1,000 extrapolation images): every kept
    # checkpoint is scored on the test images, and a capsule net scores ~300 images/s on 2 CPU cores.
    "quick": ViewpointBudget("quick", models={CAPSULE: ModelBudget(steps=200), CNN_KIND: ModelBudget(steps=200)},
                             checkpoints_per_run=30, max_eval_examples=500, extrapolation_lightings=(0,),
                             max_test_examples=1000, max_extrapolation_examples=1000),
    # Comparable to a real run: 10 epochs each, 40-60 kept checkpoints per run, every one scored on all 24,300
    # test images (~1 hour per capsule run on 2 CPU cores at ~300 images/s; minutes on a GPU).
    "full": ViewpointBudget("full", models={CAPSULE: ModelBudget(epochs=10), CNN_KIND: ModelBudget(epochs=10)}),
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
    per_seed: pd.DataFrame  # one row per (seed, protocol, model): the matched pair
    distance: pd.DataFrame  # one row per (seed, protocol, model, views, distance bin)
    trajectory: pd.DataFrame  # one row per (seed, model, kept checkpoint): its errors, path and SHA-256
    differences: pd.DataFrame  # capsules − CNN novel error: matched pairs and common familiar levels, with intervals
    checkpoints: list[dict[str, Any]]  # role, seed, path, step, sha256 of the checkpoints the answers rest on
    runs: list[dict[str, Any]]  # run directory, model, seed, what happened (trained/resumed/reused)
    lightings: dict[str, list[int]]  # test-familiar protocol: lightings it matches on ("match") and reports on
    extrapolation: dict[str, Any] | None = None  # directory, grid, seed of the extrapolation render
    seconds: float = 0.0


@dataclass
class _Trajectory:
    """Every kept checkpoint of one run, scored on the test set."""

    model: str
    steps: list[int]  # (K,) in training order
    paths: list[Path]  # (K,)
    validation_error: np.ndarray  # (K,) familiar error on the held-out validation toys (metrics.jsonl)
    predictions: np.ndarray  # (K, N) class of test image n by checkpoint k
    wrong: np.ndarray  # (K, N) bool: test image n misclassified by checkpoint k
    trained_steps: int


@dataclass
class _Scoring:
    """The test sets and the masks every seed is scored and matched with."""

    split: str
    out: Path
    data: PreparedData
    test: ViewTestSet
    extra: ViewTestSet | None
    codes: np.ndarray  # (N,) test toy of each image
    classes: np.ndarray  # (T,) class of each test toy
    match: np.ndarray  # (N,) in the matching half of the lightings (test-familiar protocol)
    report: np.ndarray  # (N,) in the reporting half
    lightings: dict[str, list[int]]  # the lightings of each half: {"match": [...], "report": [...]}

    @classmethod
    def build(cls, split: str, out: Path, data: PreparedData, budget: ViewpointBudget,
              extra: ViewTestSet | None) -> "_Scoring":
        """The split's test set (subsampled as the budget says), its toys and lighting halves; ``extra``:
        the extrapolation views (subsampled here). A test set of one lighting is refused (before training)."""
        meta = data.meta["testing"]
        test = ViewTestSet(data.images["testing"], data.labels["testing"].numpy(),
                           angular_distance_to_familiar(meta, split).to_numpy(), get_split(split).is_familiar(meta),
                           meta["instance"].to_numpy(), meta["lighting"].to_numpy())
        test = test.subsample(budget.max_test_examples)
        if extra is not None:
            extra = extra.subsample(budget.max_extrapolation_examples)
        codes, classes = toy_index(test.labels, test.instances)
        lightings = dict(zip(("match", "report"), (h.tolist() for h in lighting_halves(test.lightings))))
        return cls(split, out, data, test, extra, codes, classes, *test.halves(), lightings)

    def matching_errors(self, trajectory: _Trajectory, protocol: str) -> np.ndarray:
        """Familiar error ``(K,)`` of each kept checkpoint on the protocol's matching set."""
        if protocol == VALIDATION:
            return trajectory.validation_error
        return trajectory.wrong[:, self.test.familiar & self.match].mean(axis=1)

    def reported(self, protocol: str) -> np.ndarray:
        """Mask ``(N,)`` of the test images a protocol reports errors on (none chose the checkpoint)."""
        return np.ones(len(self.test.labels), dtype=bool) if protocol == VALIDATION else self.report


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
    """Table 2 for one split: per seed, train the CNN and the capsule net on the familiar views
    (each keeping ~40 evaluation-only checkpoints), score every kept checkpoint on the test set,
    match the two models both ways under both protocols, and compare novel errors -- at the
    matched pair and along the whole curve -- with intervals from a bootstrap over test toys.

    Runs live in ``out_dir/runs/<model>-seed<k>/``. Without ``reuse`` an existing run is an error;
    with it a finished run is reused (its settings must match) and a partial one resumed.

    Args:
        extrapolation: also test on views outside smallNORB's grid (synthnorb only); ``None``: when
            the data is synthnorb.
        extrapolation_dir: a ready render of those views (same seed as the training data) instead of
            rendering :func:`extrapolation_grid` into the cache.
    Returns: a :class:`ViewpointResult`; ``per_seed`` has columns seed, protocol, model, role
        (``target``: the weaker model, whose smoothed best familiar error is the target;
        ``matched``: the stronger, at its checkpoint nearest it), checkpoint, step, trained_steps,
        smoothed_best, matching_target, matching_error, gap, matched, familiar_error, novel_error,
        extrapolation_error (errors as fractions).
    """
    start = time.perf_counter()
    budget, seeds = _checked_arguments(split, budget, mode, capsule_model, seeds)
    data = prepare_data(data_dir, split, mode)
    extra_set, extra_info = _extrapolation_views(split, data, data_dir, mode, budget, extrapolation,
                                                 extrapolation_dir, progress, log)
    scoring = _Scoring.build(split, Path(out_dir), data, budget, extra_set)
    runs: list[dict[str, Any]] = []
    trajectories = {seed: _train_and_score_seed(seed, (CNN, capsule_model), scoring, budget, data_dir, mode, reuse,
                                                runs, progress, log) for seed in seeds}
    tables = _matched_tables(trajectories, scoring)
    return ViewpointResult(
        split=split, dataset=data.describe(), dataset_name=data.dataset, mode=mode, dataset_checksum=data.checksum,
        capsule_model=capsule_model, budget=budget, seeds=seeds, per_seed=tables["per_seed"],
        distance=tables["distance"], trajectory=tables["trajectory"],
        differences=_differences(tables["per_seed"], trajectories, scoring, capsule_model),
        checkpoints=tables["checkpoints"], runs=runs, lightings=scoring.lightings, extrapolation=extra_info,
        seconds=time.perf_counter() - start,
    )


def _checked_arguments(split: str, budget: str | ViewpointBudget, mode: str, capsule_model: str,
                       seeds: Sequence[int]) -> tuple[ViewpointBudget, list[int]]:
    """(the budget, the seeds as a list), every argument checked before any work (one-line errors)."""
    viewpoint_split(split)
    budget = get_budget(budget) if isinstance(budget, str) else budget
    if mode not in ("stereo", "mono"):
        raise ConfigError(f"unknown input mode {mode!r}; choose stereo or mono")
    if capsule_model not in MODEL_NAMES or not is_capsule_model(capsule_model):
        capsules = ", ".join(m for m in MODEL_NAMES if is_capsule_model(m))
        raise ConfigError(f"--capsule-model must be a capsule model ({capsules}), got {capsule_model!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("--seeds must be at least 1")
    return budget, seeds


def _extrapolation_views(split: str, data: PreparedData, data_dir: str | os.PathLike[str] | None, mode: str,
                         budget: ViewpointBudget, extrapolation: bool | None,
                         extrapolation_dir: str | os.PathLike[str] | None, progress: bool,
                         log: Callable[[str], None]) -> tuple[ViewTestSet | None, dict[str, Any] | None]:
    """The extrapolation test set and its description, or (None, None) when not wanted (default: on synthnorb)."""
    wanted = data.dataset == "synthnorb" if extrapolation is None else extrapolation
    if not wanted:
        return None, None
    if data.dataset != "synthnorb":
        raise ConfigError("extrapolation views exist only for synthnorb (smallNORB has no views outside its grid); "
                          "pass --no-extrapolation or omit --data-dir")
    return _prepare_extrapolation(split, data_dir, mode, budget, extrapolation_dir, progress, log)


def _train_and_score_seed(seed: int, models: Sequence[str], scoring: "_Scoring", budget: ViewpointBudget,
                          data_dir: str | os.PathLike[str] | None, mode: str, reuse: bool,
                          runs: list[dict[str, Any]], progress: bool,
                          log: Callable[[str], None]) -> dict[str, "_Trajectory"]:
    """Train (or reuse) each of ``models`` for ``seed`` and score every kept checkpoint; appends to ``runs``."""
    trajectories = {}
    data_dir_text = str(data_dir) if data_dir is not None else None
    for model in models:
        run_dir = scoring.out / "runs" / f"{model}-seed{seed}"
        config = budget.train_config(model, split=scoring.split, data_dir=data_dir_text, mode=mode, seed=seed,
                                     n_train=len(scoring.data.indices.train))
        action = train_or_reuse(config, run_dir, scoring.data, reuse=reuse, progress=progress, log=log)
        runs.append({"run": str(run_dir), "model": model, "seed": seed, "action": action})
        trajectories[model] = _score_run(model, run_dir, scoring, progress, log)
    return trajectories


def _matched_tables(trajectories: dict[int, dict[str, "_Trajectory"]], scoring: "_Scoring") -> dict[str, Any]:
    """Every seed's kept checkpoints (``trajectory``) and matched pairs under each protocol: ``per_seed``,
    ``distance`` (tables) and ``checkpoints`` (the ones the answers rest on)."""
    rows, distance_rows, trajectory_rows, checkpoints = [], [], [], []
    for seed, models in trajectories.items():
        trajectory_rows += [_trajectory_table(seed, trajectory, scoring) for trajectory in models.values()]
        for name in PROTOCOLS:
            seed_rows, seed_distance, seed_checkpoints = _match_seed(seed, name, models, scoring)
            rows += seed_rows
            distance_rows += seed_distance
            checkpoints += seed_checkpoints
    per_seed = pd.DataFrame(rows)
    per_seed["matched"] = per_seed["matched"].astype(object)
    return {"per_seed": per_seed, "distance": pd.concat(distance_rows, ignore_index=True),
            "trajectory": pd.concat(trajectory_rows, ignore_index=True), "checkpoints": checkpoints}


def _score_run(model: str, run_dir: Path, scoring: _Scoring, progress: bool,
               log: Callable[[str], None]) -> _Trajectory:
    """Every kept checkpoint of the run in ``run_dir`` (one per evaluation in metrics.jsonl), scored on the test set."""
    metrics = load_metrics(run_dir)
    steps = [int(s) for s in metrics["step"]]
    paths = [run_dir / "checkpoints" / f"step-{s}.pt" for s in steps]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise CheckpointError(f"{missing[0]}: missing; the run was not trained with keep_checkpoints -- "
                              "choose another --out to train it again")
    log(f"scoring {len(paths)} kept checkpoints of {run_dir} on {len(scoring.test.labels)} test images")
    predictions, trained_steps = [], 0
    with progress_bar(len(paths), f"score {run_dir.name}", unit="checkpoint", enabled=progress, every=10) as bar:
        for path in paths:
            network, checkpoint = load_model(path, scoring.data)
            predictions.append(predict_classes(network, scoring.test.images))
            trained_steps = int(checkpoint["total_steps"])
            bar.update(1)
    stacked = np.stack(predictions)
    return _Trajectory(model, steps, paths, metrics["validation_error"].to_numpy(dtype=float), stacked,
                       stacked != scoring.test.labels[None, :], trained_steps)


def _trajectory_table(seed: int, trajectory: _Trajectory, scoring: _Scoring) -> pd.DataFrame:
    """One row per kept checkpoint: path, SHA-256, validation error, familiar and novel test error
    (all test images) and the familiar error on the test-familiar protocol's matching half."""
    familiar = scoring.test.familiar
    return pd.DataFrame({
        "seed": seed, "model": trajectory.model, "step": trajectory.steps,
        "checkpoint": [str(p.relative_to(scoring.out)) for p in trajectory.paths],
        "sha256": [file_sha256(p) for p in trajectory.paths],
        "validation_error": trajectory.validation_error,
        "familiar_error": trajectory.wrong[:, familiar].mean(axis=1) if familiar.any() else np.nan,
        "novel_error": trajectory.wrong[:, ~familiar].mean(axis=1) if (~familiar).any() else np.nan,
        "matching_error": scoring.matching_errors(trajectory, PAPER),
    })


def _match_seed(seed: int, protocol: str, trajectories: dict[str, _Trajectory],
                scoring: _Scoring) -> tuple[list[dict[str, Any]], list[pd.DataFrame], list[dict[str, Any]]]:
    """Match the two models of one seed under ``protocol`` (:func:`select_two_way`) and score the
    pair on the protocol's reporting set: (per-seed rows, distance tables, checkpoints used)."""
    test, extra = scoring.test, scoring.extra
    choice = select_two_way({
        model: pd.DataFrame({"step": t.steps, "familiar_error": scoring.matching_errors(t, protocol)})
        for model, t in trajectories.items()})
    reported = scoring.reported(protocol)
    rows, distance, checkpoints = [], [], []
    for model, trajectory in trajectories.items():
        pick = choice["picks"][model]
        k = trajectory.steps.index(pick["step"])
        path, wrong = trajectory.paths[k], trajectory.wrong[k]
        extra_error = float("nan")
        views = [("test", trajectory.predictions[k][reported], test.labels[reported], test.distances[reported])]
        if extra is not None:
            extra_predictions = predict_classes(load_model(path, scoring.data)[0], extra.images)
            extra_error = _mean_or_nan(extra_predictions != extra.labels)
            views.append(("extrapolation", extra_predictions, extra.labels, extra.distances))
        rows.append({
            "seed": seed, "protocol": protocol, "model": model, "role": pick["role"],
            "checkpoint": str(path.relative_to(scoring.out)), "step": pick["step"],
            "trained_steps": trajectory.trained_steps, "smoothed_best": pick["smoothed_best"],
            "matching_target": choice["target"], "matching_error": pick["familiar_error"], "gap": choice["gap"],
            "matched": choice["matched"],
            "familiar_error": _mean_or_nan(wrong[reported & test.familiar]),
            "novel_error": _mean_or_nan(wrong[reported & ~test.familiar]),
            "extrapolation_error": extra_error,
        })
        for name, predictions, labels, distances in views:
            binned = error_by_distance(predictions, labels, distances, BIN_WIDTH[scoring.split])
            for position, (column, value) in enumerate((("seed", seed), ("protocol", protocol), ("model", model),
                                                        ("views", name))):
                binned.insert(position, column, value)
            distance.append(binned)
        what = "the weaker on familiar views: its smoothed best sets the target" if pick["role"] == "target" else \
            "the stronger: its checkpoint nearest the target"
        checkpoints.append({"role": f"{model} ({protocol}; {what})", "seed": seed, "path": str(path),
                            "step": pick["step"], "sha256": file_sha256(path)})
    return rows, distance, checkpoints


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else float("nan")


def _differences(per_seed: pd.DataFrame, trajectories: dict[int, dict[str, _Trajectory]], scoring: _Scoring,
                 capsule_model: str) -> pd.DataFrame:
    """Capsules − CNN novel error, mean over seeds, with 95 % intervals from one set of toy resamples:
    at each protocol's matched pair (on its reporting set), and along the curves at common familiar
    levels (all test images). Columns: comparison (``matched`` | ``curve``), protocol,
    familiar_level, capsules_novel_error, cnn_novel_error, difference, ci_low, ci_high, se,
    detectable, better (``capsules`` | ``cnn`` | ``neither``), n_seeds, draws."""
    test, codes, n_toys = scoring.test, scoring.codes, len(scoring.classes)
    weights = toy_bootstrap_weights(scoring.classes, BOOTSTRAP_DRAWS)
    seeds = list(trajectories)
    rows = []
    for protocol in PROTOCOLS:
        novel = ~test.familiar & scoring.reported(protocol)
        pairs = {model: [] for model in (capsule_model, CNN)}
        for seed in seeds:
            for model in pairs:
                row = per_seed[(per_seed["seed"] == seed) & (per_seed["protocol"] == protocol)
                               & (per_seed["model"] == model)].iloc[0]
                trajectory = trajectories[seed][model]
                wrong = trajectory.wrong[trajectory.steps.index(int(row["step"]))]
                pairs[model].append(per_toy_counts(wrong, codes, n_toys, novel))
        rows.append({"comparison": "matched", "protocol": protocol, "familiar_level": float("nan"),
                     **matched_difference(pairs[capsule_model], pairs[CNN], weights)})
    curves = {model: [] for model in (capsule_model, CNN)}
    familiar_curves = []
    for seed in seeds:
        for model in curves:
            wrong = trajectories[seed][model].wrong
            curves[model].append((*per_toy_counts(wrong, codes, n_toys, test.familiar),
                                  *per_toy_counts(wrong, codes, n_toys, ~test.familiar)))
            familiar_curves.append(wrong[:, test.familiar].mean(axis=1))
    levels = common_levels(familiar_curves, FAMILIAR_LEVELS)
    if len(levels):
        rows += [{"comparison": "curve", "protocol": "all test images", **level}
                 for level in curve_difference(curves[capsule_model], curves[CNN], levels, weights)]
    table = pd.DataFrame(rows).rename(columns={"first_error": "capsules_novel_error",
                                               "second_error": "cnn_novel_error"})
    table["better"] = table["better"].map({"first": "capsules", "second": "cnn", "neither": "neither"})
    table["n_seeds"], table["draws"] = len(seeds), BOOTSTRAP_DRAWS
    columns = ["comparison", "protocol", "familiar_level", "capsules_novel_error", "cnn_novel_error", "difference",
               "ci_low", "ci_high", "se", "detectable", "better", "n_seeds", "draws"]
    return table[columns]


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


