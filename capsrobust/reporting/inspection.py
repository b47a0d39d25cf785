"""Reports of ``capsrobust inspect``: routing histograms, the viewpoint pose probe and decoder
reconstructions -- terminal text, tables and the files (each written atomically).

The measurements come from :mod:`capsrobust.evaluation.routing_stats`,
:mod:`capsrobust.evaluation.pose_probe` and :mod:`capsrobust.experiments.decoder`; ``checkpoint``
arguments are checkpoint dicts as :func:`~capsrobust.training.checkpoints.load_checkpoint` returns them.
Images are tensors (N, C, 32, 32) in [0, 1], labels (N,) class indices.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from capsrobust.files import atomic_write_text, write_csv, write_json
from capsrobust.provenance import file_sha256, provenance
from capsrobust.reporting import to_markdown

if TYPE_CHECKING:
    from torch import Tensor

    from capsrobust.data.prepared import PreparedData
    from capsrobust.experiments.decoder import DecoderResult

__all__ = ["TRAINED_ON_ALL_VIEWS", "Traversal", "checkpoint_record", "combine_probe_tables", "label_probe_table",
           "pose_probe_text", "reconstruction_text", "routing_subject", "routing_table", "routing_text",
           "traversal_text", "write_pose_probe_report", "write_reconstruction_report", "write_routing_report"]

TRAINED_ON_ALL_VIEWS = ("The models were trained on all views (full split): 'novel' here means the views the "
                        "azimuth / elevation protocol would hold out; the probe is fitted on that protocol's "
                        "familiar training views only.")

#: One traversed held-out image: (class k, its index in the held-out images, the decoded traversal
#: (pose entries, steps, C, 32, 32) of :func:`~capsrobust.experiments.decoder.pose_traversal`, and
#: :func:`~capsrobust.experiments.decoder.traversal_effects`' table with a ``class_index`` column).
Traversal = tuple[int, int, "Tensor", pd.DataFrame]


def checkpoint_record(path: str | os.PathLike[str], checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Provenance of an inspected checkpoint: path, SHA-256, model, step, seed, split, dataset and its checksum."""
    return {"path": str(path), "sha256": file_sha256(path), "model": checkpoint["model"], "step": checkpoint["step"],
            "seed": checkpoint["config"].get("seed"), "split": checkpoint["split"], "dataset": checkpoint["dataset"],
            "mode": checkpoint["mode"], "dataset_checksum": checkpoint["dataset_checksum"]}


# ----------------------------------------------------------------------------------------------
# Routing: capsrobust.evaluation.routing_stats.inspect_routing


def routing_subject(image_index: int | None, per_class: int, labels: Tensor) -> str:
    """What the routing was looked at on: one validation image (and its class) or K images per class."""
    return (f"validation image {image_index} (class {int(labels[0])})" if image_index is not None
            else f"{per_class} validation images per class")


def routing_table(class_table: pd.DataFrame) -> pd.DataFrame:
    """The class-capsule table wide: per (class capsule, whose votes) the weighted mean distance and the
    share of the child activation mass, one column per routing iteration (``distance it1``, ``share it1``...)."""
    distance = class_table.pivot_table(index=["class_capsule", "whose"], columns="iteration", values="mean_distance")
    share = class_table.pivot_table(index=["class_capsule", "whose"], columns="iteration", values="weight_share")
    return pd.concat([distance.add_prefix("distance it"), share.add_prefix("share it")], axis=1).reset_index()


def routing_text(header: str, what: str, class_table: pd.DataFrame, conv_table: pd.DataFrame) -> str:
    """The terminal view: :func:`routing_table` and the convolutional capsule layers' table."""
    return "\n".join([
        f"{header}: routing on {what}",
        "Class capsules: assignment-weighted mean distance ||vote - mean|| and share of the child "
        "activation mass (sum_i R_ij a_i / sum_i a_i) per iteration",
        to_markdown(routing_table(class_table), float_digits=3),
        "\nConvolutional capsule layers (weighted mean distance, mean over positions, types and images)",
        to_markdown(conv_table, float_digits=3),
    ])


def write_routing_report(out_dir: str | os.PathLike[str], *, checkpoint_path: str | os.PathLike[str],
                         checkpoint: dict[str, Any], header: str, what: str, image_index: int | None,
                         records: list[dict[str, Tensor]], labels: Tensor, class_table: pd.DataFrame,
                         conv_table: pd.DataFrame, indices: Tensor, started: float) -> list[Path]:
    """Write STEM.png (the histograms), STEM.md, STEM-class.csv, STEM-conv.csv and STEM.json (provenance)
    into ``out_dir`` (created); STEM is ``routing``, or ``routing-imageI`` for one image. Returns the paths.

    ``records``, ``class_table``, ``conv_table``: :func:`~capsrobust.evaluation.routing_stats.inspect_routing`'s
    on the images labelled ``labels`` (N,); ``indices`` (N,): their positions in the validation set;
    ``what``: :func:`routing_subject`; ``started``: :func:`time.perf_counter` at the start (the JSON
    records the seconds since).
    """
    from capsrobust.reporting.inspect_plots import plot_routing_histograms

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"routing-image{image_index}" if image_index is not None else "routing"
    wide = routing_table(class_table)
    return [
        plot_routing_histograms(records, labels, out / f"{stem}.png",
                                title=f"{checkpoint['model']} step {checkpoint['step']}, {what}: distance of each "
                                      "class capsule's votes to its mean, weighted by R_ij a_i (colour: images of "
                                      "that class)"),
        atomic_write_text(out / f"{stem}.md",
                          f"# Routing, {header}\n\n{what}.\n\n## Class capsules: weighted mean distance and share of "
                          f"the child activation mass per iteration\n\n{to_markdown(wide, float_digits=3)}\n\n"
                          f"## Convolutional capsule layers\n\n{to_markdown(conv_table, float_digits=3)}\n\nWeights "
                          "R_ij a_i of the M-step of each iteration (iteration 1: uniform R); distances to the mean "
                          f"that M-step computes. Written by the command in {stem}.json.\n"),
        write_csv(class_table, out / f"{stem}-class.csv"),
        write_csv(conv_table, out / f"{stem}-conv.csv"),
        write_json(out / f"{stem}.json", provenance(checkpoint=checkpoint_record(checkpoint_path, checkpoint),
                                                    validation_indices=[int(i) for i in indices],
                                                    seconds=round(time.perf_counter() - started, 1))),
    ]


# ----------------------------------------------------------------------------------------------
# Pose probe: capsrobust.evaluation.pose_probe.viewpoint_probe_table


def label_probe_table(table: pd.DataFrame, checkpoint: dict[str, Any] | None, kind: str) -> pd.DataFrame:
    """``table`` (one :func:`~capsrobust.evaluation.pose_probe.viewpoint_probe_table`) with whose features
    it probed inserted as columns 0-3: model, seed, features and the split the model was trained on.

    ``checkpoint`` None: a reference without a model -- ``kind`` ``constant`` (no features: the probe
    predicts the fitting set's mean) or raw pixels (any other ``kind``). Else ``kind`` is the capsule
    features probed (``winning`` class pose or ``masked`` class poses; a CNN's are its penultimate layer).
    Changed in place and returned.
    """
    from capsrobust.models import is_capsule_model

    if checkpoint is None:
        model, seed, trained_on = ("constant" if kind == "constant" else "pixels"), None, None
        features = "none (fit-set mean)" if kind == "constant" else "pixels"
    else:
        model, seed, trained_on = checkpoint["model"], checkpoint["config"].get("seed"), checkpoint["split"]
        features = ("none (fit-set mean)" if kind == "constant" else "penultimate (1024)"
                    if not is_capsule_model(checkpoint["model"]) else "winning class pose (16)" if kind == "winning"
                    else "masked class poses (5x16)")
    table.insert(0, "model", model)
    table.insert(1, "seed", seed)
    table.insert(2, "features", features)
    table.insert(3, "trained_on", trained_on)
    return table


def combine_probe_tables(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The labelled probe tables of every subject as one table, in order."""
    return pd.concat(list(tables), ignore_index=True)


def _probe_shown(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=["r2_cos_azimuth", "r2_sin_azimuth", "fit_images"])


def _probe_spread(table: pd.DataFrame) -> pd.DataFrame:
    """R^2 and angle errors: mean, std and count over seeds per (model, features, split, views)."""
    spread = (table.groupby(["model", "features", "split", "views"], sort=False)
              [["r2_mean", "r2_elevation", "azimuth_error_deg", "elevation_error_deg"]]
              .agg(["mean", "std", "count"]))
    spread.columns = [f"{a}_{b}" for a, b in spread.columns]
    return spread.reset_index()


def pose_probe_text(table: pd.DataFrame, prepared: PreparedData, *, training_rows: int, testing_rows: int,
                    trained_on_all_views: bool) -> str:
    """The terminal view of :func:`combine_probe_tables` (R^2 per test subset, angle errors); with
    ``trained_on_all_views`` (a probed model trained on the full split) what 'novel' means then."""
    text = (f"Pose probe: {prepared.describe()}, {training_rows} training-file / {testing_rows} testing-file images\n"
            f"{to_markdown(_probe_shown(table), float_digits=3)}")
    return text + f"\n{TRAINED_ON_ALL_VIEWS}" if trained_on_all_views else text


def write_pose_probe_report(out_dir: str | os.PathLike[str], table: pd.DataFrame, prepared: PreparedData, *,
                            checkpoints: Sequence[tuple[str | os.PathLike[str], dict[str, Any]]], training_rows: int,
                            testing_rows: int, started: float) -> list[Path]:
    """Write pose-probe.md (the table and the spread over seeds), pose-probe.csv (:func:`combine_probe_tables`),
    pose-probe-seeds.csv (the spread) and pose-probe.json (provenance: the probed checkpoints, given as
    (path, checkpoint) pairs, the data and the image counts) into ``out_dir`` (created); returns the paths.

    ``started``: :func:`time.perf_counter` at the start (the JSON records the seconds since).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spread = _probe_spread(table)
    return [
        atomic_write_text(out / "pose-probe.md",
                          f"# Pose probe, {prepared.describe()}\n\n{TRAINED_ON_ALL_VIEWS}\n\n"
                          f"{to_markdown(_probe_shown(table), float_digits=3)}\n\n## Mean, std and count over seeds\n\n"
                          f"{to_markdown(spread, float_digits=3)}\n\nRidge probe on standardised features -> (cos az, "
                          "sin az, elevation in degrees), alpha chosen on familiar views of the held-out validation "
                          "toys. R^2 per test subset (relative to that subset's own mean); r2_mean averages the three "
                          "targets. azimuth_error_deg: mean |angle of predicted (cos, sin) - true azimuth|; "
                          "elevation_error_deg: mean |error|. constant: no features, the probe predicts the fitting "
                          "set's mean (what knowing nothing scores). pixels: the probe on raw centre-crop pixels. Split "
                          "full: the probe fitted on every view and scored on all test views. Written by "
                          "the command in pose-probe.json.\n"),
        write_csv(table, out / "pose-probe.csv"),
        write_csv(spread, out / "pose-probe-seeds.csv"),
        write_json(out / "pose-probe.json", provenance(
            checkpoints=[checkpoint_record(path, checkpoint) for path, checkpoint in checkpoints],
            dataset=prepared.describe(), dataset_checksum=prepared.checksum, training_file_rows=training_rows,
            testing_file_rows=testing_rows, note=TRAINED_ON_ALL_VIEWS, seconds=round(time.perf_counter() - started, 1))),
    ]


# ----------------------------------------------------------------------------------------------
# Reconstructions: capsrobust.experiments.decoder


def reconstruction_text(header: str, metrics: dict[str, float], fit_images: int) -> str:
    """One line: the decoder's steps and seconds, and its held-out MSE beside the class-mean and overall-mean images."""
    return (f"{header}: decoder {int(metrics['steps'])} steps in {metrics['seconds']:.0f} s on {fit_images} training "
            f"images; held-out MSE {metrics['decoder_mse']:.5f} vs class-mean image {metrics['class_mean_mse']:.5f} "
            f"vs overall mean image {metrics['overall_mean_mse']:.5f}")


def _traversal_summary(traversals: Sequence[Traversal]) -> pd.DataFrame:
    """Mean |change| (grey levels) per pose entry (rows) and class (columns ``class K``)."""
    effects = pd.concat([table for _, _, _, table in traversals], ignore_index=True)
    summary = effects.pivot_table(index="entry", columns="class_index", values="mean_abs_change_grey")
    return summary.add_prefix("class ").reset_index()


def traversal_text(traversals: Sequence[Traversal]) -> str:
    """The terminal view of the traversals' effects per pose entry and class ("" without traversals)."""
    if not traversals:
        return ""
    return ("Mean absolute change (grey levels) between -3 and +3 std of each pose entry, per class:\n"
            + to_markdown(_traversal_summary(traversals), float_digits=1))


def write_reconstruction_report(out_dir: str | os.PathLike[str], *, checkpoint_path: str | os.PathLike[str],
                                checkpoint: dict[str, Any], header: str, result: DecoderResult, fit_images: Tensor,
                                fit_labels: Tensor, held_images: Tensor, held_labels: Tensor, held_poses: Tensor,
                                predicted: Tensor, traversals: Sequence[Traversal], steps: tuple[float, ...],
                                started: float) -> list[Path]:
    """Write decoder.md, reconstructions.png (two held-out images per class, their reconstructions from
    the winning class pose and the class-mean image), traversal-classK.png (one per traversal),
    traversal-effects.csv and decoder.json (provenance and the decoder's metrics) into ``out_dir``
    (created); returns the paths.

    ``result``, ``held_poses`` (N, 16) and ``predicted`` (N,):
    :func:`~capsrobust.experiments.decoder.reconstruction_study`'s on ``held_images``/``held_labels``
    after fitting on ``fit_images``/``fit_labels``; ``steps``: the traversal steps in standard
    deviations; ``started``: :func:`time.perf_counter` at the start (the JSON records the seconds since).
    """
    import torch

    from capsrobust.experiments.decoder import masked_poses
    from capsrobust.reporting.inspect_plots import plot_pose_traversal, plot_reconstructions

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = result.metrics
    effect_table = pd.concat([t for _, _, _, t in traversals], ignore_index=True) if traversals else pd.DataFrame()
    paths = [atomic_write_text(
        out / "decoder.md",
        f"# Reconstructions, {header}\n\nDecoder (masked class poses -> 32x32 input, MLP 512-1024) "
        f"trained on the frozen net: {int(metrics['steps'])} Adam steps, {metrics['seconds']:.0f} s, "
        f"{len(fit_images)} training images (true-class masking).\n\nHeld-out MSE (500 validation "
        f"images, winning-class masking): decoder {metrics['decoder_mse']:.5f}, class-mean image "
        f"{metrics['class_mean_mse']:.5f}, overall mean image {metrics['overall_mean_mse']:.5f}.\n\n"
        + (f"## Change per pose entry (-3 to +3 std), grey levels\n\n"
           f"{to_markdown(_traversal_summary(traversals), float_digits=1)}\n"
           if len(effect_table) else "") + "\nWritten by the command in decoder.json.\n")]
    with torch.no_grad():
        shown = torch.cat([(held_labels == k).nonzero().flatten()[:2] for k in range(int(held_labels.max()) + 1)])
        decoded = result.decoder(masked_poses(held_poses[shown], predicted[shown]))
        means = torch.stack([fit_images[fit_labels == int(k)].mean(0) for k in held_labels[shown]])
    paths.append(plot_reconstructions(
        held_images[shown], decoded, out / "reconstructions.png", class_means=means,
        title=f"held-out validation images, their reconstructions from the winning class pose, and the class-mean "
              f"image (MSE {metrics['decoder_mse']:.4f} vs {metrics['class_mean_mse']:.4f})"))
    for k, i, traversal, table in traversals:
        paths.append(plot_pose_traversal(traversal, steps, out / f"traversal-class{k}.png", original=held_images[i],
                                         effects=table["mean_abs_change_grey"].to_numpy(),
                                         title=f"class {k}: each pose entry moved by -3..+3 of its std (left camera); "
                                               "right: mean |change| in grey levels"))
    paths.append(write_csv(effect_table, out / "traversal-effects.csv"))
    paths.append(write_json(out / "decoder.json", provenance(
        checkpoint=checkpoint_record(checkpoint_path, checkpoint), metrics=metrics, fit_images=len(fit_images),
        held_images=len(held_images), seconds=round(time.perf_counter() - started, 1))))
    return paths
