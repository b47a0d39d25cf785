"""Learning curves of training runs: ``metrics.jsonl`` -> a tidy DataFrame and a figure.

A run directory (``capsrobust train --out``) holds ``metrics.jsonl``, one JSON record per
evaluation (step, epoch, train_loss, train_error, validation_error, images_per_s, ...).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from capsrobust.errors import DataError

__all__ = ["load_metrics", "plot_learning_curves", "plot_time_to_error", "run_summary", "training_seconds"]


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


def plot_time_to_error(metrics: pd.DataFrame, path: str | os.PathLike[str], *, title: str) -> Path:
    """Validation error (log) against training wall time (minutes, evaluations excluded), one line per run.

    ``metrics``: :func:`load_metrics` tables with a ``train_seconds`` column (:func:`training_seconds`).
    """
    from matplotlib.ticker import LogLocator, NullFormatter

    from capsrobust.plots import plain_tick_labels, pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(7.5, 4.5))
    for run, rows in metrics.groupby("run", sort=False):
        ax.plot(rows["train_seconds"] / 60, 100 * rows["validation_error"], marker=".", label=run)
    ax.set(xlabel="training wall time (minutes; evaluations excluded)", ylabel="validation error (%)", yscale="log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_formatter(NullFormatter())
    plain_tick_labels(ax.yaxis)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


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


def plot_learning_curves(metrics: pd.DataFrame, path: str | os.PathLike[str], *, title: str) -> Path:
    """Train loss (left) and train/validation error (right) against epoch, one colour per run.

    ``metrics``: :func:`load_metrics` tables concatenated. Writes a PNG atomically; returns its path.
    """
    from matplotlib.ticker import LogLocator, NullFormatter

    from capsrobust.plots import plain_tick_labels, pyplot, save_figure

    from matplotlib.lines import Line2D

    runs = list(dict.fromkeys(metrics["run"]))
    below = len(runs) > 3  # many runs: one colour legend under both panels instead of over the curves
    fig, (loss_ax, error_ax) = pyplot().subplots(1, 2, figsize=(11, 4.2 + (0.25 * ((len(runs) + 2) // 3) if below else 0)))
    styles = {"train": ":"}
    for index, (run, rows) in enumerate(metrics.groupby("run", sort=False)):
        colour = f"C{index}"
        loss_ax.plot(rows["epoch"], rows["train_loss"], color=colour, label=run)
        error_ax.plot(rows["epoch"], 100 * rows["train_error"], color=colour, linestyle=":")
        for column, style, name in (("validation_error", "-", "validation"),
                                    ("validation_novel_error", "--", "validation (novel views)")):
            if column in rows and rows[column].notna().any():
                error_ax.plot(rows["epoch"], 100 * rows[column], color=colour, linestyle=style, marker=".")
                styles[name] = style
    loss_ax.set(xlabel="epoch", ylabel="training loss (spread for capsules, CE for cnn)", yscale="log")
    error_ax.set(xlabel="epoch", ylabel="error (%)", yscale="log")
    for ax in (loss_ax, error_ax):
        # Plain numbers at 1-2-5 steps on the log axes ("0.2", "5", "10", "20", "50").
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(NullFormatter())
        plain_tick_labels(ax.yaxis)
        ax.grid(True, which="both", alpha=0.3)
    # Colour = run (left panel, or under both); line style = which error (right panel).
    error_ax.legend([Line2D([], [], color="0.3", linestyle=style) for style in styles.values()], list(styles),
                    fontsize=7)
    fig.suptitle(title)
    if below:
        handles, labels = loss_ax.get_legend_handles_labels()
        fig.tight_layout(rect=(0, 0.02 + 0.04 * ((len(runs) + 2) // 3), 1, 1))
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    else:
        loss_ax.legend(fontsize=7)
        fig.tight_layout()
    return save_figure(fig, path)
