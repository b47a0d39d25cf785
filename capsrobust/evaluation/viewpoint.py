"""Viewpoint generalisation at matched familiar error (paper §5.1, Table 2; REFERENCE.md §5).

Train the CNN and a capsule net on the familiar views of a split (``azimuth``: 300°-40°;
``elevation``: 30°-40°), stop the capsule net where its familiar error first matches the CNN's,
and compare the two on the novel views. Two matching protocols, both reported:

- ``validation`` (clean): the target is the CNN's error on the held-out validation toys at familiar
  views (its ``best.pt``); the capsule checkpoint is chosen on the same validation set.
- ``test-familiar (paper)``: the target is the CNN's familiar *test* error and the capsule
  checkpoint is chosen on the familiar test set, as the paper did (selection on the test set).

Both use :func:`select_matched_checkpoint`: the first checkpoint (in training order) whose familiar
error is <= the target; if none reaches it, the one with the smallest familiar error, flagged
``matched=False``. The capsule run keeps an evaluation-only checkpoint at every evaluation
(``TrainConfig.keep_checkpoints``), so either rule can be applied after training.

On synthnorb, :func:`ensure_extrapolation_set` renders the same test toys at views outside
smallNORB's grid (elevations 0°-25° and 75°-85°, or the odd-10° azimuths), an extra "extrapolation"
test set. :func:`angular_distance_to_familiar` and :func:`error_by_distance` give the error as a
function of the distance to the nearest familiar view.

Example::

    from capsrobust.evaluation.viewpoint import viewpoint_experiment, table2_summary
    result = viewpoint_experiment("azimuth", "results/viewpoint/azimuth", seeds=[0], budget="quick")
    print(table2_summary(result.per_seed))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from capsrobust.checkpoints import check_trained_on, load_checkpoint
from capsrobust.data.prepared import PreparedData, prepare_data
from capsrobust.data.splits import SPLITS, ViewpointSplit, get_split
from capsrobust.errors import CheckpointError, ConfigError, DataError
from capsrobust.evaluation.accuracy import predict_scores
from capsrobust.evaluation.learning_curves import load_metrics
from capsrobust.models import MODEL_NAMES
from capsrobust.provenance import file_sha256

__all__ = [
    "BIN_WIDTH", "BUDGETS", "PAPER_TABLE2", "PROTOCOLS", "ViewpointBudget", "ViewpointResult",
    "angular_distance_to_familiar", "distance_markdown", "distance_summary", "ensure_extrapolation_set",
    "error_by_distance", "extrapolation_grid", "get_budget", "paper_table2", "plot_error_vs_distance",
    "select_matched_checkpoint", "table2_csv", "table2_markdown", "table2_summary", "viewpoint_experiment",
    "viewpoint_split", "write_report",
]

VALIDATION = "validation"
PAPER = "test-familiar (paper)"
#: The two matching protocols, in report order.
PROTOCOLS = (VALIDATION, PAPER)
CNN = "cnn"

#: Width (degrees) of the distance bins: one smallNORB azimuth step (20°) or elevation step (5°).
BIN_WIDTH = {"azimuth": 20, "elevation": 5}

#: Hinton, Sabour & Frosst 2018, Table 2 (smallNORB, test error as a fraction): (cnn, capsules).
PAPER_TABLE2: dict[tuple[str, str], tuple[float, float]] = {
    ("azimuth", "familiar"): (0.037, 0.037),
    ("azimuth", "novel"): (0.200, 0.135),
    ("elevation", "familiar"): (0.043, 0.043),
    ("elevation", "novel"): (0.178, 0.123),
}

VIEWS = ("familiar", "novel", "extrapolation")


def viewpoint_split(name: str) -> ViewpointSplit:
    """The ``azimuth`` or ``elevation`` protocol; :class:`ConfigError` otherwise (``full`` has no novel views)."""
    if name not in BIN_WIDTH:
        raise ConfigError(f"unknown viewpoint split {name!r}; choose azimuth or elevation")
    return get_split(name)


# ----------------------------------------------------------------------------------------------
# Distances and binning


def angular_distance_to_familiar(meta: pd.DataFrame, split: str) -> pd.Series:
    """Degrees from each row's view to the nearest familiar view, along the split's axis.

    ``azimuth``: circular distance to the nearest familiar azimuth (60° -> 20°, 180° -> 120°, 340° -> 0°).
    ``elevation``: ``|e - nearest familiar elevation|`` (50° -> 10°, 0° -> 30°).

    Args:
        meta: table with ``azimuth`` and ``elevation`` columns in degrees (one row per image).
    Returns: float Series aligned with ``meta`` (name ``distance``).
    """
    protocol = viewpoint_split(split)
    if split == "azimuth":
        values = meta["azimuth"].to_numpy(dtype=float)[:, None]
        familiar = np.array(sorted(protocol.familiar_azimuths), dtype=float)[None, :]
        gap = np.mod(np.abs(values - familiar), 360.0)
        distance = np.minimum(gap, 360.0 - gap).min(axis=1)
    else:
        values = meta["elevation"].to_numpy(dtype=float)[:, None]
        familiar = np.array(sorted(protocol.familiar_elevations), dtype=float)[None, :]
        distance = np.abs(values - familiar).min(axis=1)
    return pd.Series(distance, index=meta.index, name="distance")


def error_by_distance(
    predictions: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    distances: np.ndarray | pd.Series,
    bin_width: float,
) -> pd.DataFrame:
    """Error per distance bin ``[k·w, (k+1)·w)``: columns ``distance_from``, ``distance_to``,
    ``mean_distance``, ``n``, ``error`` (fraction); only non-empty bins, nearest first.

    Args:
        predictions, labels: ``(N,)`` class indices.
        distances: ``(N,)`` degrees (from :func:`angular_distance_to_familiar`).
    """
    predictions, labels = np.asarray(predictions).ravel(), np.asarray(labels).ravel()
    distances = np.asarray(distances, dtype=float).ravel()
    if not len(predictions) == len(labels) == len(distances):
        raise ValueError(f"lengths differ: {len(predictions)} predictions, {len(labels)} labels, "
                         f"{len(distances)} distances")
    if bin_width <= 0:
        raise ValueError(f"bin_width must be positive, got {bin_width}")
    table = pd.DataFrame({"bin": np.floor(distances / bin_width + 1e-9).astype(int), "distance": distances,
                          "wrong": predictions != labels})
    grouped = table.groupby("bin", sort=True).agg(mean_distance=("distance", "mean"), n=("wrong", "size"),
                                                  error=("wrong", "mean")).reset_index()
    grouped.insert(0, "distance_from", grouped.pop("bin") * bin_width)
    grouped.insert(1, "distance_to", grouped["distance_from"] + bin_width)
    grouped["error"] = grouped["error"].astype(float)
    return grouped


# ----------------------------------------------------------------------------------------------
# The matching rule


def select_matched_checkpoint(candidates: pd.DataFrame, target: float) -> dict[str, Any]:
    """The paper's stopping rule: the first checkpoint whose familiar error is at or below ``target``.

    Args:
        candidates: one row per checkpoint, columns ``step`` and ``familiar_error`` (fraction);
            any order (sorted by step here); rows with a NaN error are ignored.
        target: the familiar error to match -- the CNN's.
    Returns: ``{"step", "familiar_error", "target", "matched"}``. When no checkpoint reaches the
        target, the one with the smallest familiar error (the earliest of ties), ``matched=False``.
    """
    table = candidates.dropna(subset=["familiar_error"]).sort_values("step", kind="stable").reset_index(drop=True)
    if table.empty:
        raise CheckpointError("no checkpoint with a familiar error to choose from; train longer or evaluate more often")
    reached = table[table["familiar_error"] <= target]
    matched = not reached.empty
    row = reached.iloc[0] if matched else table.loc[table["familiar_error"].idxmin()]
    return {"step": int(row["step"]), "familiar_error": float(row["familiar_error"]), "target": float(target),
            "matched": matched}


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
        from capsrobust.training import TrainConfig, total_steps

        is_cnn = model == CNN
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
        from capsrobust.presets import resolve_preset

        return resolve_preset(config)  # as training records it, so a reused run compares like with like


BUDGETS: dict[str, ViewpointBudget] = {
    # Smoke run: a few hundred steps on a validation subsample, extrapolation at one lighting.
    "quick": ViewpointBudget("quick", cnn_steps=200, capsule_steps=200, eval_every=20, max_eval_examples=500,
                             extrapolation_lightings=(0,)),
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


@dataclass
class _TestSet:
    """Images ``(N, C, 48, 48)``, labels ``(N,)``, distances ``(N,)`` and the familiar mask of one test set."""

    images: torch.Tensor
    labels: np.ndarray
    distances: np.ndarray
    familiar: np.ndarray


def _extrapolation_set(directory: Path, split: str, mode: str) -> _TestSet:
    """Test toys (instances 0, 1, 2, 3, 5) of an extrapolation render; the training toys are never used."""
    from capsrobust.data.smallnorb import SPLIT_INSTANCES, load_split
    from capsrobust.data.transforms import downsample

    test = load_split(directory, "testing", mode)
    keep = test.meta["instance"].isin(SPLIT_INSTANCES["testing"]).to_numpy()
    meta = test.meta[keep].reset_index(drop=True)
    images = downsample(np.asarray(test.images)[keep])
    return _TestSet(images, meta["label"].to_numpy(), angular_distance_to_familiar(meta, split).to_numpy(),
                    np.zeros(len(meta), dtype=bool))


# ----------------------------------------------------------------------------------------------
# Training (or reusing) the runs


#: Settings a reused run must share with the experiment (besides the dataset checksum).
_RUN_KEYS = ("model", "split", "mode", "seed", "steps", "epochs", "batch_size", "lr", "eval_every",
             "max_eval_examples", "target_familiar_error", "keep_checkpoints", "model_overrides")


def _train_or_reuse(config: Any, run_dir: Path, data: PreparedData, *, reuse: bool, progress: bool,
                    log: Callable[[str], None]) -> str:
    """Train ``config`` into ``run_dir``; with ``reuse``, reuse a finished run or resume a partial one.

    Returns what happened: ``trained``, ``resumed`` or ``reused``.
    """
    from capsrobust.training import train

    last = run_dir / "last.pt"
    if not last.exists():
        # Leftovers of a run killed before its first checkpoint would mix into the new metrics.
        for leftover in ("metrics.jsonl", "best.pt", "matched.pt"):
            (run_dir / leftover).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        train(config, run_dir, data=data, progress=progress, log=log)
        return "trained"
    if not reuse:
        raise ConfigError(f"{run_dir} already holds a run; pass --reuse to reuse finished trainings and resume "
                          "partial ones, or choose another --out")
    checkpoint = load_checkpoint(last)
    saved = checkpoint.get("config", {})
    defaults = dataclasses.asdict(type(config)())
    for key in _RUN_KEYS:
        have, want = saved.get(key, defaults[key]), getattr(config, key)
        if have != want:
            raise CheckpointError(f"{last}: trained with {key}={have!r}, this experiment needs {want!r}; "
                                  "run with the same budget and options or choose another --out")
    check_trained_on(last, checkpoint, data, advice="choose another --out", log=log)
    if checkpoint["step"] >= checkpoint["total_steps"]:
        log(f"reusing finished run {run_dir} ({checkpoint['step']} steps)")
        return "reused"
    train(config, run_dir, resume=True, data=data, progress=progress, log=log)
    return "resumed"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _predict(checkpoint: dict[str, Any], images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Centre-crop class predictions ``(N,)`` of a checkpoint's model on images ``(N, C, 48, 48)``."""
    from capsrobust.training import model_from_checkpoint

    model = model_from_checkpoint(checkpoint).to(_device())
    if len(images) == 0:
        return np.empty(0, dtype=np.int64)
    return predict_scores(model, images, batch_size=batch_size).argmax(dim=1).numpy()


def _error(predictions: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    if mask is not None:
        predictions, labels = predictions[mask], labels[mask]
    return float(np.mean(predictions != labels)) if len(labels) else float("nan")


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
    if capsule_model not in MODEL_NAMES or capsule_model == CNN:
        capsules = ", ".join(m for m in MODEL_NAMES if m != CNN)
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
    test = _TestSet(data.images["testing"], data.labels["testing"].numpy(),
                    angular_distance_to_familiar(meta, split).to_numpy(), protocol.is_familiar(meta))
    n_train = len(data.indices.train)
    data_dir_text = str(data_dir) if data_dir is not None else None
    out = Path(out_dir)
    rows, distance_rows, checkpoints, runs = [], [], [], []
    for seed in seeds:
        cnn_dir = out / "runs" / f"{CNN}-seed{seed}"
        cnn_config = budget.train_config(CNN, split=split, data_dir=data_dir_text, mode=mode, seed=seed,
                                         n_train=n_train)
        runs.append({"run": str(cnn_dir), "model": CNN, "seed": seed,
                     "action": _train_or_reuse(cnn_config, cnn_dir, data, reuse=reuse, progress=progress, log=log)})
        cnn_best = load_checkpoint(cnn_dir / "best.pt")
        validation_target = float(cnn_best["best"]["validation_error"])

        caps_dir = out / "runs" / f"{capsule_model}-seed{seed}"
        caps_config = budget.train_config(capsule_model, split=split, data_dir=data_dir_text, mode=mode, seed=seed,
                                          n_train=n_train, target_familiar_error=validation_target)
        runs.append({"run": str(caps_dir), "model": capsule_model, "seed": seed,
                     "action": _train_or_reuse(caps_config, caps_dir, data, reuse=reuse, progress=progress, log=log)})

        cnn_predictions = {"test": _predict(cnn_best, test.images)}
        if extra_set is not None:
            cnn_predictions["extrapolation"] = _predict(cnn_best, extra_set.images)
        cnn_familiar_error = _error(cnn_predictions["test"], test.labels, test.familiar)

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
        paper_choice = _match_on_test(candidate_steps, step_path, test, cnn_familiar_error)

        trained_steps = {CNN: int(cnn_best["total_steps"])}
        cnn_path = cnn_dir / "best.pt"
        checkpoints.append({"role": "cnn best (both protocols)", "seed": seed, "path": str(cnn_path),
                            "step": int(cnn_best["step"]), "sha256": file_sha256(cnn_path)})
        caps_predictions: dict[int, dict[str, np.ndarray]] = {}
        for name, choice in ((VALIDATION, validation_choice), (PAPER, paper_choice)):
            step = choice["step"]
            if step not in caps_predictions:
                checkpoint = load_checkpoint(step_path[step])
                trained_steps[capsule_model] = int(checkpoint["total_steps"])
                caps_predictions[step] = {"test": _predict(checkpoint, test.images)}
                if extra_set is not None:
                    caps_predictions[step]["extrapolation"] = _predict(checkpoint, extra_set.images)
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
                    "familiar_error": _error(predictions["test"], test.labels, test.familiar),
                    "novel_error": _error(predictions["test"], test.labels, ~test.familiar),
                    "extrapolation_error": (_error(predictions["extrapolation"], extra_set.labels)
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


def _match_on_test(steps: list[int], step_path: dict[int, Path], test: _TestSet, target: float) -> dict[str, Any]:
    """The paper's protocol: familiar *test* error of each capsule checkpoint in training order, up to
    the first that reaches ``target`` (later ones cannot change the choice), then the matching rule."""
    familiar_images, familiar_labels = test.images[torch.as_tensor(test.familiar)], test.labels[test.familiar]
    seen = []
    for step in steps:
        predictions = _predict(load_checkpoint(step_path[step]), familiar_images)
        seen.append({"step": step, "familiar_error": _error(predictions, familiar_labels)})
        if seen[-1]["familiar_error"] <= target:
            break
    return select_matched_checkpoint(pd.DataFrame(seen), target)


def _prepare_extrapolation(split: str, data_dir: str | os.PathLike[str] | None, mode: str, budget: ViewpointBudget,
                           extrapolation_dir: str | os.PathLike[str] | None, progress: bool,
                           log: Callable[[str], None]) -> tuple[_TestSet, dict[str, Any]]:
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
    return _extrapolation_set(directory, split, mode), info


# ----------------------------------------------------------------------------------------------
# Summaries


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna()
    if values.empty:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def table2_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Table 2 over seeds: one row per (protocol, test views) with the mean and standard deviation
    of each model's test error, the relative reduction ``1 − capsules / cnn`` (of the means) and
    how many seeds reached the target familiar error.

    Columns: protocol, views, n_seeds, cnn_error_mean, cnn_error_std, capsules_error_mean,
    capsules_error_std, relative_reduction, capsules_matched (e.g. ``3/3``), capsule_model.
    """
    rows = []
    capsule_models = [m for m in dict.fromkeys(per_seed["model"]) if m != CNN]
    for name in [p for p in PROTOCOLS if p in set(per_seed["protocol"])]:
        part = per_seed[per_seed["protocol"] == name]
        cnn, caps = part[part["model"] == CNN], part[part["model"] != CNN]
        for views in VIEWS:
            column = f"{views}_error"
            if column not in part or part[column].isna().all():
                continue
            cnn_mean, cnn_std = _mean_std(cnn[column])
            caps_mean, caps_std = _mean_std(caps[column])
            rows.append({
                "protocol": name, "views": views, "n_seeds": int(part["seed"].nunique()),
                "cnn_error_mean": cnn_mean, "cnn_error_std": cnn_std,
                "capsules_error_mean": caps_mean, "capsules_error_std": caps_std,
                "relative_reduction": 1 - caps_mean / cnn_mean if cnn_mean > 0 else float("nan"),
                "capsules_matched": f"{int(caps['matched'].astype(bool).sum())}/{len(caps)}",
                "capsule_model": ", ".join(capsule_models),
            })
    return pd.DataFrame(rows)


def paper_table2(split: str) -> pd.DataFrame:
    """The paper's Table 2 rows for ``split`` (smallNORB; fractions): views, cnn_error, capsules_error."""
    viewpoint_split(split)
    return pd.DataFrame([{"views": views, "cnn_error": PAPER_TABLE2[(split, views)][0],
                          "capsules_error": PAPER_TABLE2[(split, views)][1]} for views in ("familiar", "novel")])


def _series(model: str, protocol: str) -> str:
    return model if model == CNN else f"{model} [{protocol}]"


def distance_summary(distance: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of the error per (views, distance bin, model as matched by a protocol).

    The CNN is the same under both protocols and appears once. Columns: views, distance_from,
    distance_to, mean_distance, n (images per seed), series, error_mean, error_std.
    """
    table = distance[(distance["model"] != CNN) | (distance["protocol"] == PROTOCOLS[0])].copy()
    table["series"] = [_series(m, p) for m, p in zip(table["model"], table["protocol"])]
    keys = ["views", "distance_from", "distance_to", "series"]
    summary = table.groupby(keys, sort=False).agg(
        mean_distance=("mean_distance", "mean"), n=("n", "max"), error_mean=("error", "mean"),
        error_std=("error", lambda e: e.std(ddof=1) if len(e) > 1 else float("nan"))).reset_index()
    order = {"test": 0, "extrapolation": 1}
    summary["_order"] = summary["views"].map(order)
    summary = summary.sort_values(["_order", "distance_from"], kind="stable").drop(columns="_order")
    return summary.reset_index(drop=True)


def plot_error_vs_distance(distance: pd.DataFrame, path: str | os.PathLike[str], *, title: str,
                           axis: str) -> Path:
    """Test error (%) against angular distance to the nearest familiar view, one line per model
    (the capsule net once per matching protocol), extrapolation views as hollow markers.

    ``distance``: :func:`viewpoint_experiment`'s per-seed distance table. Writes a PNG atomically.
    """
    from capsrobust.plots import pyplot, save_figure

    plt = pyplot()
    summary = distance_summary(distance)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for index, (series, rows) in enumerate(summary.groupby("series", sort=False)):
        colour, style = f"C{index}", "--" if PAPER in series else "-"
        for views, marker_face, line in (("test", colour, style), ("extrapolation", "none", ":")):
            part = rows[rows["views"] == views].sort_values("mean_distance")
            if part.empty:
                continue
            label = series if views == "test" else f"{series}, extrapolation views"
            ax.errorbar(part["mean_distance"], 100 * part["error_mean"], yerr=100 * part["error_std"].fillna(0),
                        color=colour, linestyle=line, marker="o", markerfacecolor=marker_face, capsize=3, label=label)
    ax.set(xlabel=f"angular distance to the nearest familiar {axis} (degrees)", ylabel="test error (%)", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# Report files


def _pct(mean: float, std: float) -> str:
    if math.isnan(mean):
        return ""
    return f"{100 * mean:.2f}" + ("" if math.isnan(std) else f" ± {100 * std:.2f}")


def _one_decimal(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1f}"


def _extrapolation_note(info: dict[str, Any]) -> str:
    def degrees(values: Sequence[int]) -> str:
        return ", ".join(f"{v}°" for v in values)

    return (f"Extrapolation: synthnorb test toys (instances 0, 1, 2, 3, 5) at views outside smallNORB's grid -- "
            f"azimuths {degrees(info['azimuths_deg'])}; elevations {degrees(info['elevations_deg'])}; "
            f"lightings {', '.join(map(str, info['lightings']))} "
            f"(render seed {info['seed']}, the training data's).\n\n")


def table2_markdown(result: ViewpointResult) -> str:
    """Table 2 for ``result`` (errors in %), then the paper's smallNORB numbers in a separate, labelled table."""
    from capsrobust.reporting import to_markdown

    summary = table2_summary(result.per_seed)
    shown = pd.DataFrame({
        "protocol": summary["protocol"], "test views": summary["views"],
        "cnn error %": [_pct(m, s) for m, s in zip(summary["cnn_error_mean"], summary["cnn_error_std"])],
        f"{result.capsule_model} error %": [_pct(m, s) for m, s in zip(summary["capsules_error_mean"],
                                                                       summary["capsules_error_std"])],
        "relative reduction % (1 − caps/cnn)": [_one_decimal(100 * r) for r in summary["relative_reduction"]],
        "capsules matched": summary["capsules_matched"],
    })
    paper = paper_table2(result.split)
    paper_shown = pd.DataFrame({
        "test views": paper["views"], "CNN error %": [_one_decimal(100 * e) for e in paper["cnn_error"]],
        "capsules error %": [_one_decimal(100 * e) for e in paper["capsules_error"]],
        "relative reduction % (1 − caps/cnn)": [_one_decimal(100 * (1 - c / n))
                                                for c, n in zip(paper["capsules_error"], paper["cnn_error"])],
    })
    split = SPLITS[result.split]
    n = len(result.seeds)
    return (
        f"# Viewpoint generalisation, {result.split} split — {result.dataset}\n\n"
        f"Split: {split.description}. Test error (%) at matched familiar error, mean ± std over "
        f"{n} seed{'s' if n != 1 else ''} ({', '.join(map(str, result.seeds))}); budget {result.budget.name}. "
        f"cnn: best.pt (lowest validation error). {result.capsule_model}: the first checkpoint whose familiar error is "
        f"<= the CNN's, chosen on the held-out validation toys (protocol `{VALIDATION}`) or on the familiar test set "
        f"as the paper did (protocol `{PAPER}`); when none reaches it, the lowest (counted as not matched).\n\n"
        f"## This run: {result.dataset}\n\n{to_markdown(shown, float_digits=1)}\n\n"
        + (_extrapolation_note(result.extrapolation) if result.extrapolation else "")
        + f"## Paper (smallNORB) — Hinton, Sabour & Frosst 2018, Table 2; reference only, not this dataset\n\n"
        f"{to_markdown(paper_shown, float_digits=1)}\n"
    )


def table2_csv(result: ViewpointResult) -> pd.DataFrame:
    """:func:`table2_summary` with dataset columns and the paper's smallNORB numbers in labelled columns."""
    summary = table2_summary(result.per_seed)
    paper = paper_table2(result.split).rename(columns={"cnn_error": "paper_smallNORB_cnn_error",
                                                       "capsules_error": "paper_smallNORB_capsules_error"})
    table = summary.merge(paper, on="views", how="left")
    for position, (name, value) in enumerate((("dataset", result.dataset_name), ("mode", result.mode),
                                              ("split", result.split))):
        table.insert(position, name, value)
    return table


def distance_markdown(result: ViewpointResult) -> str:
    """Error (%) per distance bin, one column per model (and matching protocol), mean over seeds."""
    from capsrobust.reporting import to_markdown

    summary = distance_summary(result.distance)
    summary["distance (deg)"] = [f"{int(a)}-{int(b)}" for a, b in zip(summary["distance_from"], summary["distance_to"])]
    summary["cell"] = [_pct(m, s) for m, s in zip(summary["error_mean"], summary["error_std"])]
    wide = summary.pivot_table(index=["views", "distance (deg)", "distance_from"], columns="series", values="cell",
                               aggfunc="first", sort=False).reset_index()
    counts = summary.groupby(["views", "distance_from"], sort=False)["n"].max()
    wide.insert(2, "images", [int(counts[(v, d)]) for v, d in zip(wide["views"], wide["distance_from"])])
    wide = wide.drop(columns="distance_from")
    wide.columns.name = None
    axis = result.split
    return (f"# Test error vs angular distance to the nearest familiar {axis} — {result.dataset}\n\n"
            f"Bins of {BIN_WIDTH[axis]}°; error % as mean ± std over seeds; images per seed and bin. "
            "views `test`: the dataset's test set; `extrapolation`: views outside smallNORB's grid.\n\n"
            f"{to_markdown(wide)}\n")


def write_report(result: ViewpointResult, out_dir: str | os.PathLike[str], *, command: str | None = None) -> list[Path]:
    """Write table2.md/.csv, per_seed.csv, distance.csv/.md, error_vs_distance.png and provenance.json
    into ``out_dir`` (each atomically); returns their paths.

    ``command``: the command line to record (the CLI passes every option spelled out); the process's
    own argv is kept beside it as ``argv``.
    """
    from capsrobust.provenance import provenance
    from capsrobust.reporting import atomic_write_text, write_csv, write_json

    out = Path(out_dir)
    labels = {"dataset": result.dataset_name, "mode": result.mode, "split": result.split}
    per_seed = result.per_seed.copy()
    distance = result.distance.copy()
    for position, (name, value) in enumerate(labels.items()):
        per_seed.insert(position, name, value)
        distance.insert(position, name, value)
    paths = [
        atomic_write_text(out / "table2.md", table2_markdown(result)),
        write_csv(table2_csv(result), out / "table2.csv"),
        write_csv(per_seed, out / "per_seed.csv"),
        write_csv(distance, out / "distance.csv"),
        atomic_write_text(out / "distance.md", distance_markdown(result)),
        plot_error_vs_distance(result.distance, out / "error_vs_distance.png", axis=result.split,
                               title=f"Test error vs {result.split} distance — {result.dataset}, "
                                     f"{len(result.seeds)} seed{'s' if len(result.seeds) != 1 else ''}"),
    ]
    record = provenance(
        experiment="viewpoint-split", split=result.split, dataset=result.dataset_name, mode=result.mode,
        dataset_checksum=result.dataset_checksum, seeds=result.seeds, capsule_model=result.capsule_model,
        budget=dataclasses.asdict(result.budget), runs=result.runs, checkpoints=result.checkpoints,
        extrapolation=result.extrapolation, seconds=round(result.seconds, 1),
    )
    if command is not None:
        record["argv"], record["command"] = record["command"], command
    paths.append(write_json(out / "provenance.json", record))
    return paths
