"""Training runs an experiment owns: train, resume or reuse one, and rebuild a checkpoint's model.

:func:`train_or_reuse` is the one rule for "may this run directory be used as it is?", shared by the
viewpoint experiment and the study: a finished run with the same settings and data is reused, a
partial one resumed (exactly: :func:`capsrobust.training.train` with ``resume=True``), anything else
refused with one line. :func:`finished_run` accepts a run trained elsewhere (read-only: it is
never resumed or written to).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from capsrobust.checkpoints import check_trained_on, load_checkpoint
from capsrobust.checkpoints import load_model as load_checkpoint_model
from capsrobust.data.prepared import PreparedData
from capsrobust.errors import CheckpointError, ConfigError
from capsrobust.training import LEGACY_CONFIG, TrainConfig, train

__all__ = ["RUN_KEYS", "device", "finished_run", "load_model", "train_or_reuse"]

#: Settings a reused run must share with the experiment (besides the data, checked by the data guard).
RUN_KEYS = ("model", "split", "mode", "seed", "steps", "epochs", "batch_size", "lr", "lr_decay", "eval_every",
            "max_eval_examples", "target_familiar_error", "keep_checkpoints", "model_overrides", "margin_schedule",
            "ema_decay", "holdout", "shape_jitter")


def device() -> torch.device:
    """Where experiments evaluate: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(path: str | Path, data: PreparedData, *, log: Callable[[str], None] | None = None
               ) -> tuple[nn.Module, dict[str, Any]]:
    """The model a checkpoint file describes, checked against ``data`` and rebuilt by the one loader
    (:func:`capsrobust.checkpoints.load_model`), in eval mode on :func:`device`, and the checkpoint."""
    loaded = load_checkpoint_model(path, data=data, advice="choose another --out", log=log, device=device())
    return loaded.model, loaded.checkpoint


def train_or_reuse(config: TrainConfig, run_dir: Path, data: PreparedData, *, reuse: bool, progress: bool,
                   log: Callable[[str], None]) -> str:
    """Train ``config`` into ``run_dir``; with ``reuse``, reuse a finished run or resume a partial one.

    Returns what happened: ``trained``, ``resumed`` or ``reused``. A run with other settings
    (:data:`RUN_KEYS`) or other data is refused with a one-line :class:`CheckpointError`.
    """
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
    defaults = {**dataclasses.asdict(type(config)()), **LEGACY_CONFIG}
    for key in RUN_KEYS:
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


def finished_run(run_dir: Path, *, model: str, seed: int, data: PreparedData,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Check that ``run_dir`` holds a *finished* ``model`` run of ``seed`` on ``data``'s split and mode,
    trained on this data; return its ``last.pt`` checkpoint (read only, never resumed here).

    One-line :class:`CheckpointError` otherwise, saying how to finish or replace it.
    """
    last = run_dir / "last.pt"
    if not last.is_file():
        raise CheckpointError(f"{last}: not found; the run directory must hold a finished "
                              f"`capsrobust train --model {model} --seed {seed}` run")
    checkpoint = load_checkpoint(last)
    config = checkpoint.get("config", {})
    for key, want in (("model", model), ("seed", seed), ("split", data.split), ("mode", data.mode)):
        have = checkpoint.get(key, config.get(key))
        if have != want:
            raise CheckpointError(f"{last}: a run with {key}={have!r}, the study needs {want!r}; "
                                  "point at the right run directory")
    if int(checkpoint["step"]) < int(checkpoint["total_steps"]):
        raise CheckpointError(f"{last}: unfinished ({checkpoint['step']} of {checkpoint['total_steps']} steps); "
                              f"finish it with `capsrobust train ... --out {run_dir} --resume` first")
    if not (run_dir / "best.pt").is_file():
        raise CheckpointError(f"{run_dir / 'best.pt'}: not found; the run has no best checkpoint")
    check_trained_on(last, checkpoint, data, advice="point at runs trained on this data", log=log)
    return checkpoint
