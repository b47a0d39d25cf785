"""``capsrobust evaluate``: test error of trained checkpoints, side by side, with learning curves."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import pandas as pd

EVALUATE_HELP = """\
Test error of one or more CHECKPOINTs (familiar and novel test sets for split runs).

Each checkpoint is scored on the data it was trained on (the same bytes; for synthnorb the same
recipe -- generator version, seed, grid -- within 1 grey level of a fresh render; anything else is
refused), centre crop by default or the paper's 13-crop test with --multi-crop. Several
checkpoints make one side-by-side table. With --out the table is also written as markdown and
CSV, beside provenance.json (command, commit, seed, dataset and its checksum, SHA-256 of each
checkpoint) and learning-curves.png (from each run directory's metrics.jsonl).

\b
Examples:
  capsrobust evaluate runs/capsules-small-full-seed0/best.pt
  capsrobust evaluate runs/caps/best.pt runs/cnn/best.pt --multi-crop --out results/train
  capsrobust evaluate runs/caps-az/matched.pt --split azimuth
"""


@click.command(help=EVALUATE_HELP)
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--split", type=str, default=None, help="Viewpoint protocol [default: the one each was trained on].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="smallNORB directory [default: synthnorb from the cache].")
@click.option("--multi-crop", is_flag=True, help="The paper's 13-crop test instead of the centre crop.")
@click.option("--both-crops", is_flag=True, help="Report the centre crop and the 13-crop test.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write test-error.md/.csv, provenance.json and learning-curves.png here.")
def evaluate(checkpoints: tuple[Path, ...], split: str | None, data_dir: Path | None, multi_crop: bool,
             both_crops: bool, batch_size: int, out: Path | None) -> None:
    """Test error of checkpoints (help text in EVALUATE_HELP)."""
    from capsrobust.checkpoints import load_model
    from capsrobust.evaluation.checkpoint_eval import error_table
    from capsrobust.evaluation.learning_curves import load_metrics, run_summary, training_seconds
    from capsrobust.plots import plot_learning_curves, plot_time_to_error
    from capsrobust.provenance import file_sha256, provenance
    from capsrobust.reporting import atomic_write_text, to_markdown, write_csv, write_json

    start = time.perf_counter()
    crops = (False, True) if both_crops else (multi_crop,)
    tables, records = [], []
    for path in checkpoints:
        # One-line error for a missing/foreign/truncated file or a checkpoint trained on other data.
        loaded = load_model(path, data_dir=data_dir, split=split, advice="evaluate on the data it was trained on")
        checkpoint = loaded.checkpoint
        for multi in crops:
            table = error_table(loaded, multi_crop=multi, batch_size=batch_size)
            table.insert(1, "checkpoint", f"{path.parent.name}/{path.name}")
            table.insert(2, "step", table.attrs["step"])
            tables.append(table)
        for frame in tables[-len(crops):]:
            frame.insert(3, "seed", checkpoint["config"].get("seed"))
            frame.insert(4, "preset", checkpoint["config"].get("preset", "(none)"))
        records.append({"path": str(path), "sha256": file_sha256(path), "model": checkpoint["model"],
                        "step": checkpoint["step"], "seed": checkpoint["config"].get("seed"),
                        "dataset": checkpoint["dataset"], "mode": checkpoint["mode"],
                        "dataset_checksum": checkpoint["dataset_checksum"],
                        "parameters": sum(int(t.numel()) for t in checkpoint["model_state"].values()
                                          if t.is_floating_point())})
    table = pd.concat(tables, ignore_index=True)
    datasets = sorted(set(table["dataset"]))
    shown = table.assign(error=(100 * table["error"]).round(2)).rename(columns={"error": "error_%"})
    click.echo(f"dataset: {', '.join(datasets)}")
    click.echo(to_markdown(shown, float_digits=2))
    spread = seed_spread(table)
    if spread is not None:
        click.echo(f"\nMean and standard deviation over seeds:\n{to_markdown(spread, float_digits=2)}")
    if out is None:
        return

    out.mkdir(parents=True, exist_ok=True)
    runs = [p.parent for p in checkpoints]
    costs = pd.DataFrame([{"run": r.name, **run_summary(r)} for r in dict.fromkeys(runs)])
    costs_shown = costs.assign(train_hours=(costs["train_seconds"] / 3600).round(2)).drop(columns="train_seconds")
    atomic_write_text(out / "test-error.md",
                  f"# Test error on {', '.join(datasets)}\n\n{to_markdown(shown, float_digits=2)}\n\n"
                  + (f"## Mean and standard deviation over seeds\n\n{to_markdown(spread, float_digits=2)}\n\n"
                     if spread is not None else "") +
                  f"## Training cost (time in training steps, from metrics.jsonl)\n\n{to_markdown(costs_shown)}\n\n"
                  "Written by the command in provenance.json. error_% = 100 x fraction misclassified; crops = 1: "
                  "centre 32x32 crop, 13: the paper's multi-crop test.\n")
    write_csv(table, out / "test-error.csv")
    metrics = pd.concat([load_metrics(r) for r in dict.fromkeys(runs)], ignore_index=True)
    plot_learning_curves(metrics, out / "learning-curves.png", title=f"Learning curves, {', '.join(datasets)}")
    batches = {r.name: json.loads((r / "run.json").read_text())["config"]["batch_size"]
               for r in dict.fromkeys(runs) if (r / "run.json").is_file()}
    metrics["train_seconds"] = pd.concat([training_seconds(rows, batches.get(run, float("nan")))
                                          for run, rows in metrics.groupby("run", sort=False)])
    plot_time_to_error(metrics, out / "time-to-error.png",
                       title=f"Validation error against training time, {', '.join(datasets)}")
    record = provenance(checkpoints=records, dataset_checksums=sorted({r["dataset_checksum"] for r in records}),
                        seconds=round(time.perf_counter() - start, 1))
    write_json(out / "provenance.json", record)
    click.echo(f"wrote {out / 'test-error.md'}, test-error.csv, learning-curves.png, provenance.json")


def seed_spread(table: pd.DataFrame) -> pd.DataFrame | None:
    """Test error (%) mean, std and count over seeds per (model, preset, crops, test set); None with one seed each."""
    keys = [c for c in ("model", "preset", "crops", "subset", "dataset") if c in table]
    groups = table.groupby(keys, sort=False)
    if groups["seed"].nunique().max() < 2:
        return None
    stats = groups["error"].agg(["mean", "std", "count"]).reset_index()
    for column in ("mean", "std"):
        stats[column] = 100 * stats[column]
    return stats.rename(columns={"mean": "error_%_mean", "std": "error_%_std", "count": "seeds"})
