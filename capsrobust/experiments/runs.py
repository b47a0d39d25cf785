"""Training runs an experiment owns: train, resume or reuse one, and rebuild a checkpoint's model.

:func:`train_or_reuse` is the one rule for "may this run directory be used as it is?", shared by the
viewpoint experiment and the study: a finished run with the same settings and data is reused, a
partial one resumed (exactly: :func:`capsrobust.training.train` with ``resume=True``), anything else
refused with one line. :func:`finished_run` accepts a run trained elsewhere (read-only: it is
never resumed or written to) when it is the run wanted. Both decide "the same run" by
:func:`capsrobust.training.same_run` over :data:`~capsrobust.training.RUN_KEYS`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from capsrobust.training.checkpoints import check_trained_on, load_checkpoint
from capsrobust.training.checkpoints import load_model as load_checkpoint_model
from capsrobust.data.prepared import PreparedData
from capsrobust.errors import CheckpointError, ConfigError
from capsrobust.training.loop import RUN_KEYS, TrainConfig, same_run, train

__all__ = ["RUN_KEYS", "device", "finished_run", "load_model", "train_or_reuse"]


def device() -> torch.device:
    """Where experiments evaluate: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(path: str | Path, data: PreparedData, *, log: Callable[[str], None] | None = None
               ) -> tuple[nn.Module, dict[str, Any]]:
    """The model a checkpoint file describes, checked against ``data`` and rebuilt by the one loader
    (:func:`capsrobust.training.checkpoints.load_model`), in eval mode on :func:`device`, and the checkpoint."""
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
    difference = same_run(checkpoint.get("config", {}), config)
    if difference is not None:
        raise CheckpointError(f"{last}: {difference} as this experiment needs; "
                              "run with the same budget and options or choose another --out")
    check_trained_on(last, checkpoint, data, advice="choose another --out", log=log)
    if checkpoint["step"] >= checkpoint["total_steps"]:
        log(f"reusing finished run {run_dir} ({checkpoint['step']} steps)")
        return "reused"
    train(config, run_dir, resume=True, data=data, progress=progress, log=log)
    return "resumed"


def finished_run(run_dir: Path, config: TrainConfig, *, data: PreparedData,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Check that ``run_dir`` holds a *finished* run of the resolved ``config`` (every option of
    :data:`RUN_KEYS`), trained on ``data``; return its ``last.pt`` checkpoint (read only, never resumed here).

    One-line :class:`CheckpointError` otherwise, naming the differing option or saying how to finish it.
    """
    last = run_dir / "last.pt"
    if not last.is_file():
        raise CheckpointError(f"{last}: not found; the run directory must hold a finished "
                              f"`capsrobust train --model {config.model} --seed {config.seed}` run")
    checkpoint = load_checkpoint(last)
    difference = same_run(checkpoint.get("config", {}), config)
    if difference is not None:
        raise CheckpointError(f"{last}: {difference} as the study needs; point at runs of today's recipe "
                              "or train them here (drop --train-runs)")
    if int(checkpoint["step"]) < int(checkpoint["total_steps"]):
        raise CheckpointError(f"{last}: unfinished ({checkpoint['step']} of {checkpoint['total_steps']} steps); "
                              f"finish it with `capsrobust train ... --out {run_dir} --resume` first")
    if not (run_dir / "best.pt").is_file():
        raise CheckpointError(f"{run_dir / 'best.pt'}: not found; the run has no best checkpoint")
    check_trained_on(last, checkpoint, data, advice="point at runs trained on this data", log=log)
    return checkpoint
