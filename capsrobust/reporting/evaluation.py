"""Report of ``capsrobust evaluate``: test error of checkpoints side by side, the spread over seeds,
training cost, learning curves and provenance.

Input: the per-checkpoint tables of :func:`~capsrobust.evaluation.checkpoint_eval.error_table`,
labelled by :func:`label_test_errors` and joined by :func:`combine_test_errors`. Every file is written
atomically.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from capsrobust.files import atomic_write_text, write_csv, write_json
from capsrobust.provenance import file_sha256, provenance
from capsrobust.reporting import to_markdown

__all__ = ["breakdown_view", "checkpoint_record", "combine_test_errors", "confusion_view", "evaluation_text",
           "label_test_errors", "seed_spread", "write_breakdown", "write_confusion", "write_evaluation_report"]

#: The columns that say which checkpoint a row of a labelled table belongs to (not a group of it).
_IDENTITY_COLUMNS = ("model", "checkpoint", "step", "seed", "preset", "dataset", "split")


def label_test_errors(table: pd.DataFrame, path: str | os.PathLike[str], checkpoint: dict[str, Any]) -> pd.DataFrame:
    """``table`` (one :func:`~capsrobust.evaluation.checkpoint_eval.error_table`) with the checkpoint
    (``run/file``), its step, seed and preset inserted as columns 1-4; changed in place and returned."""
    path = Path(path)
    table.insert(1, "checkpoint", f"{path.parent.name}/{path.name}")
    table.insert(2, "step", table.attrs["step"])
    table.insert(3, "seed", checkpoint["config"].get("seed"))
    table.insert(4, "preset", checkpoint["config"].get("preset", "(none)"))
    return table


def combine_test_errors(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The labelled tables of every checkpoint (and crop setting) as one table, in order."""
    return pd.concat(list(tables), ignore_index=True)


def breakdown_view(table: pd.DataFrame) -> pd.DataFrame:
    """The combined, labelled :func:`~capsrobust.evaluation.checkpoint_eval.breakdown_table` of several
    checkpoints side by side: one row per group (and test subset, crop setting), ``n``, then one
    column of error in % per checkpoint (``run/file``)."""
    groups = [c for c in table.columns if c not in (*_IDENTITY_COLUMNS, "n", "error")]
    wide = table.assign(error=100 * table["error"]).pivot_table(index=groups + ["n"], columns="checkpoint",
                                                                values="error", sort=False)
    wide.columns.name = None
    return wide.reset_index().round(2)


def write_breakdown(table: pd.DataFrame, by: str, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``test-error-by-<by>.md`` (:func:`breakdown_view`) and ``.csv`` (long form) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    datasets = ", ".join(_datasets(table))
    return [
        atomic_write_text(out / f"test-error-by-{by}.md",
                          f"# Test error (%) by {by} on {datasets}\n\n{to_markdown(breakdown_view(table), float_digits=2)}\n\n"
                          "Written by the command in provenance.json; one column per checkpoint, n = test images per row.\n"),
        write_csv(table, out / f"test-error-by-{by}.csv"),
    ]


def confusion_view(table: pd.DataFrame) -> str:
    """The combined, labelled :func:`~capsrobust.evaluation.checkpoint_eval.confusion_table` of several
    checkpoints as markdown: one true x predicted count matrix per checkpoint (and subset, crops); a
    table broken down by a group (``--by``) gets one row per true class and group."""
    groups = [c for c in table.columns if c not in (*_IDENTITY_COLUMNS, "subset", "crops", "true", "predicted", "count")]
    blocks = []
    for (checkpoint, subset, crops), rows in table.groupby(["checkpoint", "subset", "crops"], sort=False):
        matrix = rows.pivot_table(index=["true", *groups], columns="predicted", values="count", sort=False).astype(int)
        matrix.columns.name = None
        blocks.append(f"{checkpoint}, {subset}, crops {crops} (rows: true class{''.join(f', {g}' for g in groups)}; "
                      f"columns: predicted)\n\n{to_markdown(matrix.reset_index())}")
    return "\n\n".join(blocks)


def write_confusion(table: pd.DataFrame, out_dir: str | os.PathLike[str], by: str | None = None) -> list[Path]:
    """Write ``confusion.md`` (:func:`confusion_view`) and ``confusion.csv`` (long form) into ``out_dir``;
    with ``by``, ``confusion-by-<by>.md/.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem, title = (f"confusion-by-{by}", f"Confusion matrices by {by}") if by else ("confusion", "Confusion matrices")
    return [
        atomic_write_text(out / f"{stem}.md", f"# {title} on {', '.join(_datasets(table))}\n\n"
                          f"{confusion_view(table)}\n\nWritten by the command in provenance.json.\n"),
        write_csv(table, out / f"{stem}.csv"),
    ]


def checkpoint_record(path: str | os.PathLike[str], checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Provenance of an evaluated checkpoint: path, SHA-256, model, step, seed, dataset and its checksum,
    and the number of trainable (floating-point) parameters."""
    return {"path": str(path), "sha256": file_sha256(path), "model": checkpoint["model"],
            "step": checkpoint["step"], "seed": checkpoint["config"].get("seed"),
            "dataset": checkpoint["dataset"], "mode": checkpoint["mode"],
            "dataset_checksum": checkpoint["dataset_checksum"],
            "parameters": sum(int(t.numel()) for t in checkpoint["model_state"].values()
                              if t.is_floating_point())}


def seed_spread(table: pd.DataFrame) -> pd.DataFrame | None:
    """Test error (%) mean, std and count over seeds per (model, preset, runs, checkpoint file, crops, test set);
    None with one seed each. ``runs``: the run directory's name without its ``-seedN`` suffix, so arms
    of an ablation are not pooled; the file (best.pt, averaged.pt, ...) keeps weights of one run apart."""
    if "checkpoint" in table:
        run, file = table["checkpoint"].str.rsplit("/", n=1).str[0], table["checkpoint"].str.rsplit("/", n=1).str[-1]
        table = table.assign(runs=run.str.replace(r"-seed\d+$", "-seed*", regex=True), file=file)
    keys = [c for c in ("model", "preset", "runs", "file", "crops", "subset", "dataset") if c in table]
    groups = table.groupby(keys, sort=False)
    if groups["seed"].nunique().max() < 2:
        return None
    stats = groups["error"].agg(["mean", "std", "count"]).reset_index()
    for column in ("mean", "std"):
        stats[column] = 100 * stats[column]
    return stats.rename(columns={"mean": "error_%_mean", "std": "error_%_std", "count": "seeds"})


def _datasets(table: pd.DataFrame) -> list[str]:
    return sorted(set(table["dataset"]))


def _shown(table: pd.DataFrame) -> pd.DataFrame:
    """The table as shown: error in % (2 decimals) as ``error_%``."""
    return table.assign(error=(100 * table["error"]).round(2)).rename(columns={"error": "error_%"})


def evaluation_text(table: pd.DataFrame) -> str:
    """The terminal view of :func:`combine_test_errors`: the datasets, the table (error in %) and, with
    more than one seed of a model, the mean and standard deviation over seeds. No trailing newline."""
    text = f"dataset: {', '.join(_datasets(table))}\n{to_markdown(_shown(table), float_digits=2)}"
    spread = seed_spread(table)
    if spread is not None:
        text += f"\n\nMean and standard deviation over seeds:\n{to_markdown(spread, float_digits=2)}"
    return text


def write_evaluation_report(table: pd.DataFrame, checkpoints: Sequence[str | os.PathLike[str]],
                            records: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], *,
                            started: float) -> list[Path]:
    """Write into ``out_dir`` (created), each atomically; returns their paths in this order:

    test-error.md (the table, the spread over seeds, the training cost of each run from its
    metrics.jsonl), test-error.csv (:func:`combine_test_errors`), learning-curves.png and time-to-error.png
    (from each run directory's metrics.jsonl; the batch size from its run.json) and provenance.json.

    ``checkpoints``: the evaluated checkpoint files (their parents are the run directories);
    ``records``: :func:`checkpoint_record` of each; ``started``: :func:`time.perf_counter` when the
    command started (provenance.json records the seconds since).
    """
    from capsrobust.evaluation.learning_curves import load_metrics, run_summary, training_seconds
    from capsrobust.reporting.plots import plot_learning_curves, plot_time_to_error

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    datasets = ", ".join(_datasets(table))
    spread = seed_spread(table)
    runs = list(dict.fromkeys(Path(p).parent for p in checkpoints))
    costs = pd.DataFrame([{"run": r.name, **run_summary(r)} for r in runs])
    costs_shown = costs.assign(train_hours=(costs["train_seconds"] / 3600).round(2)).drop(columns="train_seconds")
    paths = [
        atomic_write_text(out / "test-error.md",
                          f"# Test error on {datasets}\n\n{to_markdown(_shown(table), float_digits=2)}\n\n"
                          + (f"## Mean and standard deviation over seeds\n\n{to_markdown(spread, float_digits=2)}\n\n"
                             if spread is not None else "") +
                          f"## Training cost (time in training steps, from metrics.jsonl)\n\n{to_markdown(costs_shown)}\n\n"
                          "Written by the command in provenance.json. error_% = 100 x fraction misclassified; crops = 1: "
                          "centre 32x32 crop, 13: the paper's multi-crop test.\n"),
        write_csv(table, out / "test-error.csv"),
    ]
    metrics = pd.concat([load_metrics(r) for r in runs], ignore_index=True)
    paths.append(plot_learning_curves(metrics, out / "learning-curves.png", title=f"Learning curves, {datasets}"))
    batches = {r.name: json.loads((r / "run.json").read_text())["config"]["batch_size"]
               for r in runs if (r / "run.json").is_file()}
    metrics["train_seconds"] = pd.concat([training_seconds(rows, batches.get(run, float("nan")))
                                          for run, rows in metrics.groupby("run", sort=False)])
    paths.append(plot_time_to_error(metrics, out / "time-to-error.png",
                                    title=f"Validation error against training time, {datasets}"))
    record = provenance(checkpoints=list(records), dataset_checksums=sorted({r["dataset_checksum"] for r in records}),
                        seconds=round(time.perf_counter() - started, 1))
    paths.append(write_json(out / "provenance.json", record))
    return paths
