"""Learning curves of training runs: ``metrics.jsonl`` -> a tidy DataFrame, training time and cost.

A run directory (``capsrobust train --out``) holds ``metrics.jsonl``, one JSON record per
evaluation (step, epoch, train_loss, train_error, validation_error, images_per_s, ...). Their
figures are drawn by :func:`capsrobust.reporting.plots.plot_learning_curves` and
:func:`capsrobust.reporting.plots.plot_time_to_error`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from capsrobust.errors import DataError

__all__ = ["load_metrics", "run_summary", "training_seconds"]


def load_metrics(run_dir: str | os.PathLike[str], *, label: str | None = None) -> pd.DataFrame:
    """Records of ``run_dir/metrics.jsonl`` as a DataFrame with a ``run`` column (``label`` or the dir name)."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]
    except FileNotFoundError:
        raise DataError(f"{path}: no metrics log; pass a checkpoint inside a `capsrobust train` run directory") from None
    except ValueError as exc:
        raise DataError(f"{path}: unreadable metrics log ({exc}); the run directory is damaged") from None
    table = pd.DataFrame.from_records(records)
    table.insert(0, "run", label or Path(run_dir).name)
    return table


def training_seconds(metrics: pd.DataFrame, batch_size: float) -> pd.Series:
    """Training wall seconds at each record: ``train_seconds`` where logged, else summed from images/s."""
    if "train_seconds" in metrics and metrics["train_seconds"].notna().all():
        return metrics["train_seconds"].astype(float)
    steps = metrics["step"].diff().fillna(metrics["step"].iloc[0])
    return (steps * batch_size / metrics["images_per_s"]).cumsum()


def run_summary(run_dir: str | os.PathLike[str]) -> dict[str, float]:
    """Training cost of a run from its metrics: steps, epochs, wall seconds, median images/s.

    Wall seconds = sum over evaluation windows of (images in the window / images/s), i.e. the time
    spent in training steps, without evaluations and data preparation.
    """
    metrics = load_metrics(run_dir)
    run = json.loads((Path(run_dir) / "run.json").read_text()) if (Path(run_dir) / "run.json").is_file() else {}
    batch = run.get("config", {}).get("batch_size", float("nan"))
    seconds = float(training_seconds(metrics, batch).iloc[-1])
    return {"steps": int(metrics["step"].iloc[-1]), "epochs": float(metrics["epoch"].iloc[-1]),
            "train_seconds": seconds, "images_per_s": float(metrics["images_per_s"].median())}
