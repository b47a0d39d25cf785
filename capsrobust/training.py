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
from typing import Any, Callable

import torch
from torch import nn

# model_from_checkpoint is re-exported for existing callers; it lives beside the one checkpoint loader.
from capsrobust.checkpoints import (check_compatible, check_trained_on, evaluation_only, load_checkpoint,
                                    model_from_checkpoint, save_checkpoint)
from capsrobust.data.prepared import PreparedData, prepare_data
from capsrobust.data.splits import HOLDOUTS
from capsrobust.data.transforms import (
    AugmentParams,
    augment_batch,
    sample_augment_params,
    sample_stretch,
    stretch_batch,
)
from capsrobust.distributed import setup_distributed
from capsrobust.errors import CheckpointError, ConfigError
from capsrobust.losses import MARGIN_SCHEDULES, cross_entropy, margin_at, spread_loss
from capsrobust.models import MODEL_NAMES, build_model, is_capsule_model
from capsrobust.models.prediction import error_rate
from capsrobust.presets import resolve_preset
from capsrobust.provenance import provenance
from capsrobust.weight_average import WeightAverage

__all__ = ["LEGACY_CONFIG", "TrainConfig", "TrainingInterrupted", "loss_function", "train", "model_from_checkpoint"]


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in ``run.json`` and every checkpoint)."""

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
        if self.model not in MODEL_NAMES:
            raise ConfigError(f"unknown model {self.model!r}; valid names: {', '.join(MODEL_NAMES)}")
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
                raise ConfigError(f"--{key.replace('_', '-')} must be 0 (automatic) or positive, got {getattr(self, key)}")
        if self.model_overrides.get("iterations", 1) < 1:
            raise ConfigError(f"--iterations must be at least 1, got {self.model_overrides['iterations']}")
        if self.margin_schedule is not None and self.margin_schedule not in MARGIN_SCHEDULES:
            raise ConfigError(f"unknown --margin-schedule {self.margin_schedule!r}; valid: {', '.join(MARGIN_SCHEDULES)}")
        for key in ("lambda_scale", "conv_lambda_scale", "class_lambda_scale"):
            value = self.model_overrides.get(key)
            if value is not None and not value > 0:
                raise ConfigError(f"--{key.replace('_', '-')} must be positive (1 = official), got {value}")


@dataclass
class _TrainClock:
    """Seconds spent in training steps (evaluation and checkpointing excluded), carried across resumes."""

    train_seconds: float = 0.0


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C once the state is saved; carries the checkpoint path and step."""

    def __init__(self, path: Path, step: int) -> None:
        super().__init__(f"interrupted at step {step}; state saved to {path}; continue with --resume")
        self.path, self.step = path, step


# ----------------------------------------------------------------------------------------------
# Per-step randomness, derived from (seed, step) so resume is exact.

_MIX = 0x9E3779B97F4A7C15

#: What a run recorded before an option existed behaved as: a saved config without the key means this.
LEGACY_CONFIG: dict[str, Any] = {"margin_schedule": "run", "ema_decay": 0.0, "holdout": "toy", "shape_jitter": 0.0}


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


def _checkpoint_payload(
    model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, data: PreparedData,
    step: int, steps: int, best: dict[str, Any], model_config: dict[str, Any], train_seconds: float = 0.0,
    average: WeightAverage | None = None, resumable: bool = True,
) -> dict[str, Any]:
    """A resumable checkpoint holds the raw weights (and the average, if any); an evaluation-only one
    holds the weights that are evaluated: the average when there is one."""
    extra: dict[str, Any] = {"weights": "raw"}
    model_state = model.state_dict()
    if average is not None:
        extra = {"weights": f"average (decay {average.decay})"}
        if resumable:
            extra["average_state"] = average.state_dict()
        else:
            model_state = average.state_dict()
    payload = {
        "model": config.model,
        "model_config": model_config,
        "in_channels": data.in_channels,
        "dataset": data.dataset,
        "dataset_checksum": data.checksum,
        "dataset_recipe": data.recipe,
        "mode": data.mode,
        "split": data.split,
        "config": dataclasses.asdict(config),
        "step": step,
        "total_steps": steps,
        "model_state": model_state,
        "optimizer_state": optimizer.state_dict(),
        "scheduler": {"kind": "exponential", "lr": optimizer.param_groups[0]["lr"]},
        "rng_state": torch.get_rng_state(),
        "best": best,
        "train_seconds": train_seconds,
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
    of another model, configuration or dataset is refused. Without it, an existing checkpoint in
    ``out_dir`` is an error (nothing is overwritten).
    """
    config.validate()
    config = resolve_preset(config)
    out = Path(out_dir)
    last_path = out / "last.pt"
    checkpoint = None
    if resume:
        if not last_path.exists():
            raise CheckpointError(f"{last_path}: nothing to resume; run without --resume to start training")
        checkpoint = load_checkpoint(last_path)
        if checkpoint.get("resumable") is False:
            raise CheckpointError(f"{last_path}: an evaluation-only checkpoint (no optimiser state) cannot be resumed; "
                                  "start a new run or restore the run's own last.pt")
    elif last_path.exists():
        raise CheckpointError(f"{out} already holds a run ({last_path.name}); pass --resume to continue it or choose another --out")

    data = (data if data is not None else prepare_data(config.data_dir, config.split, config.mode)
            ).with_holdout(config.holdout)
    model_config = dict(config.model_overrides)
    if checkpoint is not None:
        check_compatible(last_path, checkpoint, {
            "model": config.model, "model_config": model_config, "mode": data.mode, "split": data.split,
        })
        check_trained_on(last_path, checkpoint, data, advice="resume on the data it was trained on", log=log)
        saved = checkpoint["config"]
        for key in ("batch_size", "seed", "lr", "lr_decay", "lr_decay_every", "weight_decay", "margin_schedule",
                    "ema_decay", "holdout", "shape_jitter"):
            if saved.get(key, LEGACY_CONFIG.get(key)) != getattr(config, key):
                raise CheckpointError(f"{last_path}: checkpoint was trained with {key}={saved.get(key)!r}, not "
                                      f"{getattr(config, key)!r}; resume with the same settings")

    dist = setup_distributed()
    if config.batch_size % dist.world_size:
        raise ConfigError(f"--batch-size {config.batch_size} must be divisible by the {dist.world_size} processes")
    torch.manual_seed(config.seed)
    model = build_model(config.model, in_channels=data.in_channels, **model_config).to(dist.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    average = WeightAverage(model, config.ema_decay) if config.ema_decay else None
    evaluated = average.average if average is not None else model
    train_images, train_labels = data.subset("train")
    steps = total_steps(config, len(train_labels))
    start, best = 0, {"validation_error": None, "step": None, "matched_step": None}
    clock = _TrainClock()
    if checkpoint is not None:
        steps = checkpoint["total_steps"]
        model.load_state_dict(checkpoint["model_state"])
        if average is not None:
            average.load_state_dict(checkpoint["average_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        torch.set_rng_state(checkpoint["rng_state"])
        start, best = checkpoint["step"], checkpoint["best"]
        clock.train_seconds = float(checkpoint.get("train_seconds", 0.0))
        if dist.is_main:
            _truncate_metrics(out / "metrics.jsonl", start)
        log(f"resuming {config.model} at step {start}/{steps} from {last_path}")

    steps_per_epoch = max(1, len(train_labels) // config.batch_size)
    eval_every = config.eval_every or max(1, min(steps_per_epoch, steps // 10))
    checkpoint_every = config.checkpoint_every or eval_every
    out.mkdir(parents=True, exist_ok=True)
    if checkpoint is None and dist.is_main:
        run_info = provenance(
            config=dataclasses.asdict(config), dataset=data.dataset, mode=data.mode, dataset_checksum=data.checksum,
            dataset_recipe=data.recipe,
            total_steps=steps, n_train=len(train_labels),
            parameters=sum(p.numel() for p in model.parameters()),
        )
        (out / "run.json").write_text(json.dumps(run_info, indent=2))

    def save(path: Path, step: int, *, resumable: bool = True) -> None:
        if not dist.is_main:  # one writer: rank 0
            return
        save_checkpoint(path, _checkpoint_payload(model, optimizer, config, data, step, steps, best, model_config,
                                                  clock.train_seconds, average, resumable))

    from capsrobust.progress import progress_bar

    # Data parallel: gradients are averaged across processes; `model` stays the plain module for
    # evaluation and state_dict, so checkpoints are the same whatever the process count.
    parallel_model = model
    if dist.world_size > 1:
        parallel_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    bar = progress_bar(steps, f"{config.model} {data.describe()}", unit="step", enabled=progress and dist.is_main,
                       every=steps_per_epoch, initial=start)
    window_loss, window_wrong, window_seen, window_time = 0.0, 0, 0, 0.0
    record: dict[str, Any] = {}
    model.train()
    with _SigintFlag() as sigint:
        for step in range(start, steps):
            t0 = time.perf_counter()
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
            labels = train_labels[idx].to(dist.device, non_blocking=True)
            torch.manual_seed(_derived_seed(config.seed, 3, step, *((dist.rank,) if dist.rank else ())))  # dropout
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step, steps)
            scores = parallel_model(images)
            loss = loss_function(model, step, steps, config.margin_schedule, steps_per_epoch)(scores, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average is not None:
                average.update(model, step + 1)

            step_seconds = time.perf_counter() - t0
            window_time += step_seconds
            clock.train_seconds += step_seconds
            window_loss += float(loss.detach()) * len(labels)
            window_wrong += int((scores.argmax(1) != labels).sum())
            window_seen += len(labels)
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{window_loss / window_seen:.4f}", err=f"{window_wrong / window_seen:.3f}",
                            ips=f"{window_seen / max(window_time, 1e-9):.0f}", refresh=False)

            if dist.is_main and (done % eval_every == 0 or done == steps):
                record = {"step": done, "epoch": done / steps_per_epoch,
                          "train_loss": window_loss / window_seen, "train_error": window_wrong / window_seen,
                          "images_per_s": dist.world_size * window_seen / max(window_time, 1e-9), "lr": optimizer.param_groups[0]["lr"],
                          "train_seconds": clock.train_seconds}
                record.update(_evaluate(evaluated, data, config))
                if average is not None:  # the raw weights too, to see what the average buys
                    record.update({f"{k}_raw": v for k, v in _evaluate(model, data, config).items()})
                model.train()
                val = record.get("validation_error")
                if val is not None and (best["validation_error"] is None or val < best["validation_error"]):
                    best.update(validation_error=val, step=done)
                    save(out / "best.pt", done, resumable=False)
                target = config.target_familiar_error
                if target is not None and val is not None and val <= target and best["matched_step"] is None:
                    best["matched_step"] = done
                    save(out / "matched.pt", done, resumable=False)
                if config.keep_checkpoints:
                    save(out / "checkpoints" / f"step-{done}.pt", done, resumable=False)
                _append_jsonl(out / "metrics.jsonl", record)
                bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
                window_loss, window_wrong, window_seen, window_time = 0.0, 0, 0, 0.0
            if done == steps and average is not None:
                save(out / "averaged.pt", done, resumable=False)
            if done % checkpoint_every == 0 or done == steps:
                save(last_path, done)
            if done == _PAUSE_AFTER_STEP and dist.is_main:
                _pause_until_interrupted(sigint)
            if sigint.raised:
                save(last_path, done)
                bar.close()
                raise TrainingInterrupted(last_path, done)
    bar.close()
    return {**record, "best": best, "total_steps": steps, "out": str(out), "is_main": dist.is_main}
