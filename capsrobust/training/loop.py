"""The training loop: exact resume, atomic checkpoints, validation, matched-error stopping.

Determinism by construction: every random draw at step ``s`` (data order, augmentation, dropout)
comes from a seed derived from ``(seed, s)``, so a run resumed from a checkpoint at step ``s``
repeats exactly what an uninterrupted run would have done -- no generator state to get wrong.

Run directory (``--out``)::

    run.json        config, dataset name and checksum, seed, commit, versions
    metrics.jsonl   one line per evaluation: step, epoch, train loss/error, validation errors, img/s
    last.pt         latest state (written every ``checkpoint_every`` steps, at the end and on Ctrl-C)
    best.pt         lowest validation (familiar) error so far (evaluation-only: no optimiser state)
    matched.pt      first checkpoint with validation familiar error <= --target-familiar-error (ditto)
    averaged.pt     with ``ema_decay``: the weight average at the end of the run (ditto); last.pt keeps the
                    raw weights (and the average, to resume), every other checkpoint holds the average
    checkpoints/    with ``keep_checkpoints``: ``step-<step>.pt`` at every evaluation (ditto), so a
                    checkpoint can be chosen afterwards by another rule (the paper's test-set matching)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

# model_from_checkpoint is re-exported for existing callers; it lives beside the one checkpoint loader.
from capsrobust.training.checkpoints import (check_trained_on, evaluation_only, load_checkpoint, model_from_checkpoint,
                                    save_checkpoint)
from capsrobust.data.prepared import PreparedData, prepare_data
from capsrobust.data.splits import HOLDOUTS
from capsrobust.data.transforms import (
    AugmentParams,
    augment_batch,
    sample_augment_params,
    sample_stretch,
    stretch_batch,
)
from capsrobust.training.distributed import Distributed, setup_distributed
from capsrobust.errors import CheckpointError, ConfigError
from capsrobust.training.losses import MARGIN_SCHEDULES, cross_entropy, margin_at, spread_loss
from capsrobust.models import MODEL_NAMES, build_model, is_capsule_model
from capsrobust.models.prediction import error_rate
from capsrobust.training.presets import RoutingOptions, flag, get_preset, resolve_preset
from capsrobust.provenance import provenance
from capsrobust.training.weight_average import WeightAverage

__all__ = ["KEPT_KEYS", "LEGACY_CONFIG", "LENGTH_KEYS", "RUN_KEYS", "TrainConfig", "TrainingInterrupted", "WEIGHT_KEYS",
           "loss_function", "model_from_checkpoint", "same_run", "saved_option", "train"]


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in ``run.json`` and every checkpoint).

    ``model_overrides`` holds the model's options as ``build_model`` keyword arguments (for capsule
    nets, :class:`~capsrobust.training.presets.RoutingOptions`' chosen ones); None fields are filled from the
    preset by :func:`~capsrobust.training.presets.resolve_preset`, the one function that turns a config into the
    complete one a run trains and records. Which fields make two runs "the same": :func:`same_run`.
    """

    model: str = "capsules-small"
    split: str = "full"
    data_dir: str | None = None
    mode: str = "stereo"
    steps: int | None = None  # total optimisation steps; default from epochs
    epochs: float | None = None  # used when steps is None (default 10)
    batch_size: int = 32
    lr: float | None = None  # Adam; None: the preset's for this model (presets.Preset: 3e-3 capsules, 1e-3 cnn)
    lr_decay: float | None = None  # multiplied every lr_decay_every steps; None: the preset's (presets.Preset)
    lr_decay_every: int = 0  # 0: total_steps // 20 (the paper's 20k-step period, scaled to the run)
    weight_decay: float = 2e-7
    shape_jitter: float | None = None  # size/aspect change before the crop (transforms.sample_stretch); None: the preset's
    ema_decay: float | None = None  # weight average (weight_average.py) evaluated and saved; 0: off; None: the preset's
    seed: int = 0
    eval_every: int = 0  # 0: once per epoch, at least 10 times per run
    checkpoint_every: int = 0  # 0: at every evaluation
    target_familiar_error: float | None = None
    max_eval_examples: int = 0  # 0: whole validation sets
    holdout: str = "toy"  # splits.HOLDOUTS: one training toy per class for validation, or none (final fit)
    keep_checkpoints: bool = False  # also save checkpoints/step-<step>.pt (evaluation-only) at each evaluation
    margin_schedule: str | None = None  # capsule nets' spread-loss margin (losses.MARGIN_SCHEDULES); None: the preset's
    preset: str = "default"  # capsule-net recipe under the explicit options (presets.PRESETS)
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Every check of a run's options, in one place: a one-line :class:`ConfigError` naming the option
        (by its command-line flag) and the fix. A resolved config passes too."""
        if self.model not in MODEL_NAMES:
            raise ConfigError(f"unknown model {self.model!r}; valid names: {', '.join(MODEL_NAMES)}")
        get_preset(self.preset)
        self._validate_schedule()
        self._validate_evaluation()
        self._validate_model_options()

    def _validate_schedule(self) -> None:
        """The run's length, batch, learning rate and augmentation."""
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"--epochs must be positive, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.lr_decay is not None and not 0 < self.lr_decay <= 1:
            raise ConfigError(f"--lr-decay must be in (0, 1] (1: constant learning rate), got {self.lr_decay}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ConfigError(f"--ema-decay must be in [0, 1) (0: no weight average), got {self.ema_decay}")
        if self.shape_jitter is not None and not 0 <= self.shape_jitter < 1:
            raise ConfigError(f"--shape-jitter must be in [0, 1) (0: off; 0.15: each axis x1/1.15 to x1.15), "
                              f"got {self.shape_jitter}")
        if self.margin_schedule is not None and self.margin_schedule not in MARGIN_SCHEDULES:
            raise ConfigError(f"unknown --margin-schedule {self.margin_schedule!r}; valid: {', '.join(MARGIN_SCHEDULES)}")

    def _validate_evaluation(self) -> None:
        """Validation, matching and the evaluation and checkpoint cadence."""
        if self.holdout not in HOLDOUTS:
            raise ConfigError(f"unknown --holdout {self.holdout!r}; valid: {', '.join(HOLDOUTS)}")
        if self.holdout == "none" and self.target_familiar_error is not None:
            raise ConfigError("--target-familiar-error matches on the held-out toy's validation error; "
                              "drop it or train with --holdout toy")
        if self.target_familiar_error is not None and not 0 <= self.target_familiar_error <= 1:
            raise ConfigError(f"--target-familiar-error must be a fraction in [0, 1], got {self.target_familiar_error}")
        if self.max_eval_examples < 0:
            raise ConfigError(f"--max-eval-examples must be 0 (all) or positive, got {self.max_eval_examples}")
        for key in ("eval_every", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{flag(key)} must be 0 (automatic) or positive, got {getattr(self, key)}")

    def _validate_model_options(self) -> None:
        """Routing options and the spread-loss margin belong to capsule nets; their values must be in range."""
        routing = RoutingOptions.from_overrides(self.model_overrides)
        if not is_capsule_model(self.model):
            chosen = routing.overrides()
            if chosen:
                raise ConfigError(f"{flag(next(iter(chosen)))} applies to capsule models only; "
                                  "drop it or choose --model capsules/capsules-small")
            # the value resolution records for the CNN (its recipe's) passes: a resolved config validates
            if self.margin_schedule not in (None, get_preset(self.preset).for_model(self.model).margin_schedule):
                raise ConfigError("--margin-schedule applies to the capsule nets' spread loss only (the cnn uses "
                                  "cross-entropy); drop it or choose --model capsules/capsules-small")
        routing.validate()


# ----------------------------------------------------------------------------------------------
# "Is this the same run?": one rule for resume, reuse, borrowed runs and the learning probe.

#: Options that decide the trained weights at every step (the model and its options, the data seen, the
#: optimiser, the loss, the weight average). A run is resumed only with all of them unchanged.
WEIGHT_KEYS: tuple[str, ...] = ("model", "model_overrides", "seed", "split", "mode", "holdout", "batch_size", "lr",
                                "lr_decay", "lr_decay_every", "weight_decay", "margin_schedule", "ema_decay",
                                "shape_jitter")
#: The run's length: it shapes the weights too (the learning-rate and margin schedules stretch over it),
#: but a resumed run keeps the length its checkpoint records, so resuming does not compare it.
LENGTH_KEYS: tuple[str, ...] = ("steps", "epochs")
#: Options that decide which evaluations and checkpoints a run keeps (best.pt, matched.pt, checkpoints/),
#: not its weights.
KEPT_KEYS: tuple[str, ...] = ("eval_every", "max_eval_examples", "target_familiar_error", "keep_checkpoints")
#: Everything a reused or borrowed run must share with the run wanted. Never compared: ``data_dir`` (the
#: data guard, :func:`~capsrobust.training.checkpoints.check_trained_on`, compares the data itself),
#: ``checkpoint_every`` (when last.pt is written) and ``preset`` (resolved into the options above).
RUN_KEYS: tuple[str, ...] = WEIGHT_KEYS + LENGTH_KEYS + KEPT_KEYS

#: What a run recorded before an option existed behaved as: a saved config without the key means this
#: (an option not listed here: :class:`TrainConfig`'s default; a routing option: the model's default).
LEGACY_CONFIG: dict[str, Any] = {"margin_schedule": "run", "ema_decay": 0.0, "holdout": "toy", "shape_jitter": 0.0}


def saved_option(saved: Mapping[str, Any], key: str) -> Any:
    """Option ``key`` of a saved config (``run.json`` / a checkpoint's ``config``), legacy default if absent."""
    if key in saved:
        return saved[key]
    if key in LEGACY_CONFIG:
        return LEGACY_CONFIG[key]
    default = _FIELDS[key]
    return default.default_factory() if default.default is dataclasses.MISSING else default.default


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def same_run(saved: Mapping[str, Any], wanted: TrainConfig, keys: Sequence[str] = RUN_KEYS) -> str | None:
    """None if the saved config (of a resolved run) agrees with the resolved ``wanted`` on ``keys``,
    else the first difference, naming the option and both values: ``trained with lr=0.001, not 0.003``.

    Options missing from an older file count as :func:`saved_option` says; a capsule net's routing options
    are compared with the model's defaults filled in on both sides, so ``{}`` equals ``{"iterations": 3}``.
    """
    for key in keys:
        if key == "model_overrides":
            difference = _options_difference(wanted.model, saved_option(saved, key), wanted.model_overrides)
            if difference is not None:
                return difference
            continue
        have, want = saved_option(saved, key), getattr(wanted, key)
        if have != want:
            return f"trained with {key}={have!r}, not {want!r}"
    return None


def _options_difference(model: str, saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> str | None:
    """The first model option that differs, as :func:`same_run` words it."""
    defaults = RoutingOptions.defaults().overrides() if is_capsule_model(model) else {}
    have, want = {**defaults, **saved}, {**defaults, **wanted}
    for key in [*have, *(key for key in want if key not in have)]:
        if have.get(key) != want.get(key):
            return f"trained with {key}={have.get(key)!r}, not {want.get(key)!r}"
    return None


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C once the state is saved; carries the checkpoint path and step."""

    def __init__(self, path: Path, step: int) -> None:
        super().__init__(f"interrupted at step {step}; state saved to {path}; continue with --resume")
        self.path, self.step = path, step


# ----------------------------------------------------------------------------------------------
# Per-step randomness, derived from (seed, step) so resume is exact.

_MIX = 0x9E3779B97F4A7C15

def _derived_seed(seed: int, *parts: int) -> int:
    value = seed & 0xFFFFFFFFFFFFFFFF
    for part in parts:
        value = (value * 6364136223846793005 + (part ^ _MIX)) & 0xFFFFFFFFFFFFFFFF
    return value >> 1


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(_derived_seed(seed, 1, epoch)))


def _batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the examples used at ``step``: consecutive slices of a per-epoch permutation."""
    steps_per_epoch = max(1, n // batch_size)  # drop the ragged tail of each epoch
    epoch, position = divmod(step, steps_per_epoch)
    order = _epoch_order(n, seed, epoch)
    return order[position * batch_size : (position + 1) * batch_size]


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Exponential decay: ``lr · decay^(step / every)`` (continuous, like tf.train.exponential_decay)."""
    every = config.lr_decay_every or max(1, total_steps // 20)
    return config.lr * config.lr_decay ** (step / every)


def total_steps(config: TrainConfig, n_train: int) -> int:
    if config.steps is not None:
        return config.steps
    epochs = config.epochs if config.epochs is not None else 10.0
    return max(1, math.ceil(epochs * max(1, n_train // config.batch_size)))


# ----------------------------------------------------------------------------------------------


def loss_function(model: nn.Module, step: int, steps: int, margin_schedule: str = "run",
                  steps_per_epoch: int | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss at ``step`` of ``steps``: spread loss (capsule activations) or cross-entropy (logits)."""
    if is_capsule_model(model):
        margin = margin_at(margin_schedule, step, steps, steps_per_epoch)
        return lambda scores, targets: spread_loss(scores, targets, margin)
    return cross_entropy


def _evaluate(model: nn.Module, data: PreparedData, config: TrainConfig) -> dict[str, float]:
    results = {}
    for name in ("validation", "validation_novel"):
        images, labels = data.subset(name)
        if len(labels) == 0:
            continue
        if config.max_eval_examples and len(labels) > config.max_eval_examples:
            keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(config.seed))
            keep = keep[: config.max_eval_examples]
            images, labels = images[keep], labels[keep]
        results[f"{name}_error"] = error_rate(model, images, labels)
    return results


#: Test hook: ``CAPSROBUST_PAUSE_AFTER_STEP=N`` makes the loop idle after step N's checkpoint, so the
#: kill/resume tests can SIGKILL or SIGINT a real training process at a known point.
_PAUSE_AFTER_STEP = int(os.environ.get("CAPSROBUST_PAUSE_AFTER_STEP", "-1"))


def _pause_until_interrupted(sigint: "_SigintFlag") -> None:
    print(f"paused after step {_PAUSE_AFTER_STEP}", flush=True)
    while not sigint.raised:
        time.sleep(0.05)


class _SigintFlag:
    """Turns the first Ctrl-C into a flag the loop checks after each step; restores the old handler."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def __enter__(self) -> "_SigintFlag":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C handling stays as it was
            self._previous = None
        return self

    def _handle(self, *_: Any) -> None:
        self.raised = True

    def __exit__(self, *_: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class _Run:
    """One training run in progress: what it trains, where, and how far it has got."""

    config: TrainConfig  # resolved
    out: Path
    data: PreparedData  # with the config's holdout
    dist: Distributed  # rank, world size, device, sharding
    model: nn.Module  # the plain module: evaluated and saved, whatever the process count
    optimizer: torch.optim.Optimizer
    average: WeightAverage | None
    train_images: torch.Tensor  # (N, C, 48, 48): the training subset, once
    train_labels: torch.Tensor  # (N,)
    steps: int  # the run's length
    start: int = 0  # the step it starts (or resumes) at
    parallel_model: nn.Module | None = None  # what a step calls: ``model``, or DDP over it (set by the loop)
    best: dict[str, Any] = field(default_factory=lambda: {"validation_error": None, "step": None, "matched_step": None})
    train_seconds: float = 0.0  # in training steps (evaluation and checkpointing excluded), across resumes

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.train_labels) // self.config.batch_size)

    @property
    def eval_every(self) -> int:
        return self.config.eval_every or max(1, min(self.steps_per_epoch, self.steps // 10))

    @property
    def checkpoint_every(self) -> int:
        return self.config.checkpoint_every or self.eval_every

    def save(self, path: Path, step: int, *, resumable: bool = True) -> None:
        """Write a checkpoint of ``step`` to ``path`` atomically; one writer: rank 0."""
        if self.dist.is_main:
            save_checkpoint(path, _checkpoint_payload(self, step, resumable))


def _checkpoint_payload(run: _Run, step: int, resumable: bool = True) -> dict[str, Any]:
    """A resumable checkpoint holds the raw weights (and the average, if any); an evaluation-only one
    holds the weights that are evaluated: the average when there is one."""
    extra: dict[str, Any] = {"weights": "raw"}
    model_state = run.model.state_dict()
    if run.average is not None:
        extra = {"weights": f"average (decay {run.average.decay})"}
        if resumable:
            extra["average_state"] = run.average.state_dict()
        else:
            model_state = run.average.state_dict()
    config, data = run.config, run.data
    payload = {
        "model": config.model,
        "model_config": dict(config.model_overrides),
        "in_channels": data.in_channels,
        "dataset": data.dataset,
        "dataset_checksum": data.checksum,
        "dataset_recipe": data.recipe,
        "mode": data.mode,
        "split": data.split,
        "config": dataclasses.asdict(config),
        "step": step,
        "total_steps": run.steps,
        "model_state": model_state,
        "optimizer_state": run.optimizer.state_dict(),
        "scheduler": {"kind": "exponential", "lr": run.optimizer.param_groups[0]["lr"]},
        "rng_state": torch.get_rng_state(),
        "best": run.best,
        "train_seconds": run.train_seconds,
        **extra,
    }
    return payload if resumable else evaluation_only(payload)


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after ``step`` (by a run killed after its last checkpoint)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    data: PreparedData | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``config.model`` into ``out_dir``; returns the final metrics record.

    With ``resume=True`` continues from ``out_dir/last.pt`` exactly where it stopped; a checkpoint
    of another model, configuration (:data:`WEIGHT_KEYS`, :func:`same_run`) or dataset is refused.
    Without it, an existing checkpoint in ``out_dir`` is an error (nothing is overwritten).
    """
    config = resolve_preset(config)
    out = Path(out_dir)
    checkpoint = _checkpoint_to_resume(out, resume)
    data = (data if data is not None else prepare_data(config.data_dir, config.split, config.mode)
            ).with_holdout(config.holdout)
    if checkpoint is not None:
        _check_resumable(out / "last.pt", checkpoint, config, data, log)
    run = _start(config, out, data)
    if checkpoint is not None:
        _restore(run, checkpoint, log)
    out.mkdir(parents=True, exist_ok=True)
    if checkpoint is None and run.dist.is_main:
        _write_run_json(run)
    return _train_loop(run, progress)


def _checkpoint_to_resume(out: Path, resume: bool) -> dict[str, Any] | None:
    """``out/last.pt`` read when resuming (which needs a resumable one); None for a new run, which needs none."""
    last_path = out / "last.pt"
    if not resume:
        if last_path.exists():
            raise CheckpointError(f"{out} already holds a run ({last_path.name}); pass --resume to continue it "
                                  "or choose another --out")
        return None
    if not last_path.exists():
        raise CheckpointError(f"{last_path}: nothing to resume; run without --resume to start training")
    checkpoint = load_checkpoint(last_path)
    if checkpoint.get("resumable") is False:
        raise CheckpointError(f"{last_path}: an evaluation-only checkpoint (no optimiser state) cannot be resumed; "
                              "start a new run or restore the run's own last.pt")
    return checkpoint


def _check_resumable(last_path: Path, checkpoint: dict[str, Any], config: TrainConfig, data: PreparedData,
                     log: Callable[[str], None]) -> None:
    """Refuse, in one line, to resume a checkpoint of other weights-deciding options or other data."""
    difference = same_run(checkpoint.get("config", {}), config, WEIGHT_KEYS)
    if difference is not None:
        raise CheckpointError(f"{last_path}: checkpoint {difference}; resume with the same settings or start a new "
                              "run directory (--out)")
    check_trained_on(last_path, checkpoint, data, advice="resume on the data it was trained on", log=log)


def _start(config: TrainConfig, out: Path, data: PreparedData) -> _Run:
    """The model (seeded by ``config.seed``), its optimiser and weight average, on this process's device."""
    dist = setup_distributed()
    if config.batch_size % dist.world_size:
        raise ConfigError(f"--batch-size {config.batch_size} must be divisible by the {dist.world_size} processes")
    torch.manual_seed(config.seed)
    model = build_model(config.model, in_channels=data.in_channels, **config.model_overrides).to(dist.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    average = WeightAverage(model, config.ema_decay) if config.ema_decay else None
    train_images, train_labels = data.subset("train")
    return _Run(config=config, out=out, data=data, dist=dist, model=model, optimizer=optimizer, average=average,
                train_images=train_images, train_labels=train_labels,
                steps=total_steps(config, len(train_labels)))


def _restore(run: _Run, checkpoint: dict[str, Any], log: Callable[[str], None]) -> None:
    """Put ``run`` back where ``checkpoint`` left it: weights, average, optimiser, RNG, step, best, clock."""
    run.steps = checkpoint["total_steps"]
    run.model.load_state_dict(checkpoint["model_state"])
    if run.average is not None:
        run.average.load_state_dict(checkpoint["average_state"])
    run.optimizer.load_state_dict(checkpoint["optimizer_state"])
    torch.set_rng_state(checkpoint["rng_state"])
    run.start, run.best = checkpoint["step"], checkpoint["best"]
    run.train_seconds = float(checkpoint.get("train_seconds", 0.0))
    if run.dist.is_main:
        _truncate_metrics(run.out / "metrics.jsonl", run.start)
    log(f"resuming {run.config.model} at step {run.start}/{run.steps} from {run.last_path}")


def _write_run_json(run: _Run) -> None:
    """``run.json``: the resolved config, the data's identity and the provenance of a new run."""
    data = run.data
    run_info = provenance(
        config=dataclasses.asdict(run.config), dataset=data.dataset, mode=data.mode, dataset_checksum=data.checksum,
        dataset_recipe=data.recipe,
        total_steps=run.steps, n_train=len(run.train_labels),
        parameters=sum(p.numel() for p in run.model.parameters()),
    )
    (run.out / "run.json").write_text(json.dumps(run_info, indent=2))


@dataclass
class _Window:
    """Training loss, error and speed since the last evaluation."""

    loss: float = 0.0  # summed over examples
    wrong: int = 0
    seen: int = 0
    seconds: float = 0.0

    def add(self, loss: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, seconds: float) -> None:
        self.seconds += seconds
        self.loss += float(loss.detach()) * len(labels)
        self.wrong += int((scores.argmax(1) != labels).sum())
        self.seen += len(labels)

    def postfix(self) -> dict[str, str]:
        """The progress bar's running figures."""
        return {"loss": f"{self.loss / self.seen:.4f}", "err": f"{self.wrong / self.seen:.3f}",
                "ips": f"{self.seen / max(self.seconds, 1e-9):.0f}"}


def _train_loop(run: _Run, progress: bool) -> dict[str, Any]:
    """Steps from ``run.start`` to the end, evaluating and checkpointing on the way; Ctrl-C saves and stops."""
    from capsrobust.progress import progress_bar

    bar = progress_bar(run.steps, f"{run.config.model} {run.data.describe()}", unit="step",
                       enabled=progress and run.dist.is_main, every=run.steps_per_epoch, initial=run.start)
    window = _Window()
    record: dict[str, Any] = {}  # the last evaluation's metrics
    run.parallel_model = _data_parallel(run.model, run.dist)
    run.model.train()
    with _SigintFlag() as sigint:
        for step in range(run.start, run.steps):
            t0 = time.perf_counter()
            loss, scores, labels = _train_step(run, step)
            seconds = time.perf_counter() - t0
            run.train_seconds += seconds
            window.add(loss, scores, labels, seconds)
            done = step + 1
            bar.update(1)
            bar.set_postfix(**window.postfix(), refresh=False)
            if run.dist.is_main and (done % run.eval_every == 0 or done == run.steps):
                record = _evaluate_and_keep(run, done, window)
                bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
                window = _Window()
            _checkpoint(run, done)
            if done == _PAUSE_AFTER_STEP and run.dist.is_main:
                _pause_until_interrupted(sigint)
            if sigint.raised:
                run.save(run.last_path, done)
                bar.close()
                raise TrainingInterrupted(run.last_path, done)
    bar.close()
    return {**record, "best": run.best, "total_steps": run.steps, "out": str(run.out), "is_main": run.dist.is_main}


def _data_parallel(model: nn.Module, dist: Distributed) -> nn.Module:
    """What a step calls: ``model`` itself, or over several processes DistributedDataParallel around it
    (gradients averaged across processes; ``model`` stays the plain module for evaluation and
    state_dict, so checkpoints are the same whatever the process count)."""
    if dist.world_size <= 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda"
                                               else None)


def _batch(run: _Run, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's share of step ``step``'s augmented training batch: images and labels, on its device.

    Every draw comes from a seed derived from ``(seed, step)``, for the global batch, so the batch is the
    same whatever the process count and whether the run was resumed."""
    config, dist = run.config, run.dist
    train_images, train_labels = run.train_images, run.train_labels
    idx = _batch_indices(len(train_labels), config.batch_size, config.seed, step)
    generator = torch.Generator().manual_seed(_derived_seed(config.seed, 2, step))
    params = sample_augment_params(len(idx), generator=generator)  # drawn for the global batch
    stretch = (sample_stretch(len(idx), config.shape_jitter,  # its own stream: jitter 0 changes no draw
                              torch.Generator().manual_seed(_derived_seed(config.seed, 4, step)))
               if config.shape_jitter else None)
    idx, params = dist.shard(idx), AugmentParams(
        *(dist.shard(getattr(params, f.name)) for f in dataclasses.fields(params)))
    originals = train_images[idx]
    if stretch is not None:
        originals = stretch_batch(originals, dist.shard(stretch))
    images = augment_batch(originals, params).to(dist.device, non_blocking=True)
    return images, train_labels[idx].to(dist.device, non_blocking=True)


def _train_step(run: _Run, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimisation step (and the weight average's update); returns (loss, scores, labels) of the batch."""
    config = run.config
    images, labels = _batch(run, step)
    rank = run.dist.rank
    torch.manual_seed(_derived_seed(config.seed, 3, step, *((rank,) if rank else ())))  # dropout
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(config, step, run.steps)
    scores = run.parallel_model(images) if run.parallel_model is not None else run.model(images)
    loss = loss_function(run.model, step, run.steps, config.margin_schedule, run.steps_per_epoch)(scores, labels)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    if run.average is not None:
        run.average.update(run.model, step + 1)
    return loss, scores, labels


def _evaluate_and_keep(run: _Run, done: int, window: _Window) -> dict[str, Any]:
    """The metrics record of step ``done`` (appended to metrics.jsonl), and the evaluation-only checkpoints
    it earns: best.pt, matched.pt, checkpoints/step-<done>.pt."""
    record = {"step": done, "epoch": done / run.steps_per_epoch,
              "train_loss": window.loss / window.seen, "train_error": window.wrong / window.seen,
              "images_per_s": run.dist.world_size * window.seen / max(window.seconds, 1e-9),
              "lr": run.optimizer.param_groups[0]["lr"], "train_seconds": run.train_seconds}
    record.update(_evaluate(run.average.average if run.average is not None else run.model, run.data, run.config))
    if run.average is not None:  # the raw weights too, to see what the average buys
        record.update({f"{k}_raw": v for k, v in _evaluate(run.model, run.data, run.config).items()})
    run.model.train()
    best, val = run.best, record.get("validation_error")
    if val is not None and (best["validation_error"] is None or val < best["validation_error"]):
        best.update(validation_error=val, step=done)
        run.save(run.out / "best.pt", done, resumable=False)
    target = run.config.target_familiar_error
    if target is not None and val is not None and val <= target and best["matched_step"] is None:
        best["matched_step"] = done
        run.save(run.out / "matched.pt", done, resumable=False)
    if run.config.keep_checkpoints:
        run.save(run.out / "checkpoints" / f"step-{done}.pt", done, resumable=False)
    _append_jsonl(run.out / "metrics.jsonl", record)
    return record


def _checkpoint(run: _Run, done: int) -> None:
    """last.pt every ``checkpoint_every`` steps and at the end; averaged.pt at the end of a weight-averaged run."""
    if done == run.steps and run.average is not None:
        run.save(run.out / "averaged.pt", done, resumable=False)
    if done % run.checkpoint_every == 0 or done == run.steps:
        run.save(run.last_path, done)
