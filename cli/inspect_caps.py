"""``capsrobust inspect``: look inside a capsule net (layer statistics, routing, pose probe, reconstructions)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

TRAINED_ON_ALL_VIEWS = ("The models were trained on all views (full split): 'novel' here means the views the "
                        "azimuth / elevation protocol would hold out; the probe is fitted on that protocol's "
                        "familiar training views only.")


@click.command("inspect")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--n", "count", type=click.IntRange(min=1), default=512, show_default=True,
              help="Layer statistics: validation images to look at (the first N of a fixed shuffle).")
@click.option("--routing", is_flag=True,
              help="Routing histograms of the class layer (one panel per iteration and class) and the weighted "
                   "mean vote-to-mean distance per class and iteration; conv capsule layers in summary form.")
@click.option("--image", "image_index", type=click.IntRange(min=0), default=None,
              help="--routing on one validation image (its index in the validation set).")
@click.option("--per-class", "per_class", type=click.IntRange(min=1), default=None,
              help="--routing on K validation images of each class [default: 16].")
@click.option("--pose-probe", is_flag=True,
              help="Linear (ridge) probe from the winning class capsule's pose to the viewpoint, familiar vs "
                   "novel views of the azimuth and elevation protocols; CHECKPOINT may be a CNN "
                   "(penultimate features).")
@click.option("--compare", "compare", type=click.Path(path_type=Path), multiple=True,
              help="--pose-probe: more checkpoints probed the same way (e.g. the CNN baseline, other seeds).")
@click.option("--probe-images", type=(click.IntRange(min=10), click.IntRange(min=10)), default=(6000, 3000),
              show_default=True, help="--pose-probe: training-file and testing-file images sampled.")
@click.option("--reconstruct", is_flag=True,
              help="Train a decoder on the frozen net's masked class poses and draw pose traversals.")
@click.option("--decoder-steps", type=click.IntRange(min=1), default=3000, show_default=True)
@click.option("--decoder-seconds", type=click.FloatRange(min=1), default=240.0, show_default=True,
              help="Time budget of the decoder training (whichever of steps and seconds comes first).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write tables, figures and provenance here.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="smallNORB directory [default: synthnorb from the cache].")
@click.option("--json", "as_json", is_flag=True, help="Layer statistics: print JSON instead of a markdown table.")
def inspect_caps(checkpoint: Path, count: int, routing: bool, image_index: int | None, per_class: int | None,
                 pose_probe: bool, compare: tuple[Path, ...], probe_images: tuple[int, int], reconstruct: bool,
                 decoder_steps: int, decoder_seconds: float, out: Path | None, data_dir: Path | None,
                 as_json: bool) -> None:
    """Look inside a capsule-net CHECKPOINT: layer statistics, --routing histograms, --pose-probe, --reconstruct.

    By default: what each capsule layer does on validation images (centre crop): activation
    mean, spread (overall and within one image), quantiles, and pose scale.

    Activations stuck near one value (act_std ~0) carry no information: the layer passes pose
    means on whatever the image. The images come from the checkpoint's own dataset (checked as
    evaluate checks it); routing, layer statistics and the decoder use validation images and
    never test images; the pose probe scores on test images of toys neither model nor probe saw.

    --routing draws, per routing iteration and class capsule, the histogram of distances between
    the capsule's votes and its mean, weighted by the assignments R_ij a_i (routing should pull the
    true class's votes together), and prints the weighted mean distances. --pose-probe asks
    whether the poses carry the viewpoint (R^2, azimuth and elevation errors in degrees).
    --reconstruct trains a small decoder (a few minutes) and moves each pose entry up and down.

    \b
    Examples:
      capsrobust inspect results/train/capsules-small-seed0/best.pt
      capsrobust inspect runs/caps/last.pt --n 128 --json
      capsrobust inspect runs/caps/best.pt --routing --per-class 16 --out results/inspect
      capsrobust inspect runs/caps/best.pt --routing --image 3
      capsrobust inspect runs/caps/best.pt --pose-probe --compare runs/cnn/best.pt --out results/inspect
      capsrobust inspect runs/caps/best.pt --reconstruct --decoder-seconds 180 --out results/inspect
    """
    import torch

    from capsrobust.checkpoints import load_checkpoint, load_model
    from capsrobust.data.transforms import center_crop
    from capsrobust.models import is_capsule_model
    from capsrobust.reporting import to_markdown
    from capsrobust_cli.errors import UserError

    if image_index is not None and per_class is not None:
        raise UserError("--image and --per-class exclude each other: one image, or K images of each class")
    if (image_index is not None or per_class is not None) and not routing:
        raise UserError("--image and --per-class choose the images of --routing; add --routing")
    if compare and not pose_probe:
        raise UserError("--compare adds checkpoints to --pose-probe; add --pose-probe")
    data = load_checkpoint(checkpoint)  # one-line error for a missing/foreign/truncated file
    capsule = is_capsule_model(data["model"])
    wants_capsule = [flag for flag, on in (("--routing", routing), ("--reconstruct", reconstruct)) if on]
    if not capsule and (wants_capsule or not pose_probe):
        what = " and ".join(wants_capsule) or "inspect"
        raise UserError(f"{checkpoint} is a {data['model']} checkpoint; {what} looks inside capsule nets "
                        "(capsules, capsules-small); only --pose-probe also takes a CNN")
    compared = [(path, load_checkpoint(path)) for path in compare]
    loaded = load_model(checkpoint, data_dir=data_dir, checkpoint=data, advice="pass the --data-dir it was trained on")
    prepared, model = loaded.data, loaded.model
    others = []
    for path, other in compared:
        if other["mode"] != data["mode"]:
            raise UserError(f"{path} was trained on {other['mode']} images, {checkpoint} on {data['mode']}")
        others.append(load_model(path, data=prepared, checkpoint=other,
                                 advice="compare checkpoints trained on the same data"))
    header = f"{checkpoint} ({data['model']}, step {data['step']}), {prepared.describe()}"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    if not (routing or pose_probe or reconstruct):
        images, _ = prepared.subset("validation")
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:count]
        from capsrobust.evaluation.capsule_stats import capsule_layer_statistics

        table = capsule_layer_statistics(model, center_crop(images[order]))
        if as_json:
            click.echo(json.dumps({"checkpoint": str(checkpoint), "step": data["step"], "dataset": prepared.describe(),
                                   "images": len(order), "layers": table.to_dict(orient="records")}, indent=2))
            return
        click.echo(f"{header}: {len(order)} validation images")
        click.echo(to_markdown(table, float_digits=3))
        return
    if routing:
        _routing(checkpoint, data, model, prepared, image_index, per_class or 16, out, header)
    if pose_probe:
        _pose_probe([loaded, *others], prepared, probe_images, out, header)
    if reconstruct:
        _reconstruct(checkpoint, data, model, prepared, decoder_steps, decoder_seconds, out, header)


def _checkpoint_record(path: Path, data: dict) -> dict:
    from capsrobust.provenance import file_sha256

    return {"path": str(path), "sha256": file_sha256(path), "model": data["model"], "step": data["step"],
            "seed": data["config"].get("seed"), "split": data["split"], "dataset": data["dataset"],
            "mode": data["mode"], "dataset_checksum": data["dataset_checksum"]}


def _validation_choice(prepared, image_index: int | None, per_class: int):
    """(images, labels, indices into the validation set): one image, or K per class of a fixed shuffle."""
    import torch

    from capsrobust_cli.errors import UserError

    images, labels = prepared.subset("validation")
    if image_index is not None:
        if image_index >= len(images):
            raise UserError(f"--image {image_index} is out of range: the validation set has {len(images)} images")
        chosen = torch.tensor([image_index])
    else:
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        chosen = torch.cat([order[labels[order] == k][:per_class] for k in range(int(labels.max()) + 1)])
    return images[chosen], labels[chosen], chosen


def _routing(checkpoint, data, model, prepared, image_index, per_class, out, header) -> None:
    import pandas as pd

    from capsrobust.data.transforms import center_crop
    from capsrobust.evaluation.routing_stats import inspect_routing
    from capsrobust.provenance import provenance
    from capsrobust.reporting import atomic_write_text, to_markdown, write_csv, write_json

    start = time.perf_counter()
    images, labels, chosen = _validation_choice(prepared, image_index, per_class)
    records, class_table, conv_table = inspect_routing(model, center_crop(images), labels)
    what = (f"validation image {image_index} (class {int(labels[0])})" if image_index is not None
            else f"{per_class} validation images per class")
    distance = class_table.pivot_table(index=["class_capsule", "whose"], columns="iteration", values="mean_distance")
    share = class_table.pivot_table(index=["class_capsule", "whose"], columns="iteration", values="weight_share")
    wide = pd.concat([distance.add_prefix("distance it"), share.add_prefix("share it")], axis=1).reset_index()
    click.echo(f"{header}: routing on {what}")
    click.echo("Class capsules: assignment-weighted mean distance ||vote - mean|| and share of the child "
               "activation mass (sum_i R_ij a_i / sum_i a_i) per iteration")
    click.echo(to_markdown(wide, float_digits=3))
    click.echo("\nConvolutional capsule layers (weighted mean distance, mean over positions, types and images)")
    click.echo(to_markdown(conv_table, float_digits=3))
    if out is None:
        return
    stem = f"routing-image{image_index}" if image_index is not None else "routing"
    from capsrobust.inspect_plots import plot_routing_histograms

    plot_routing_histograms(records, labels, out / f"{stem}.png",
                            title=f"{data['model']} step {data['step']}, {what}: distance of each class capsule's "
                                  "votes to its mean, weighted by R_ij a_i (colour: images of that class)")
    write_csv(class_table, out / f"{stem}-class.csv")
    write_csv(conv_table, out / f"{stem}-conv.csv")
    atomic_write_text(out / f"{stem}.md",
                      f"# Routing, {header}\n\n{what}.\n\n## Class capsules: weighted mean distance and share of "
                      f"the child activation mass per iteration\n\n{to_markdown(wide, float_digits=3)}\n\n## Convolutional capsule layers\n\n"
                      f"{to_markdown(conv_table, float_digits=3)}\n\nWeights R_ij a_i of the M-step of each "
                      "iteration (iteration 1: uniform R); distances to the mean that M-step computes. Written by "
                      f"the command in {stem}.json.\n")
    write_json(out / f"{stem}.json", provenance(checkpoint=_checkpoint_record(checkpoint, data),
                                                validation_indices=[int(i) for i in chosen],
                                                seconds=round(time.perf_counter() - start, 1)))
    click.echo(f"wrote {out / (stem + '.png')}, {stem}.md, {stem}-class.csv, {stem}-conv.csv, {stem}.json")


def _pose_probe(loaded, prepared, probe_images, out, header) -> None:
    import numpy as np
    import pandas as pd

    from capsrobust.data.transforms import center_crop
    from capsrobust.evaluation.pose_probe import probe_features, probe_sample, viewpoint_probe_table
    from capsrobust.models import is_capsule_model
    from capsrobust.provenance import provenance
    from capsrobust.reporting import atomic_write_text, to_markdown, write_csv, write_json

    start = time.perf_counter()
    splits = ("full", "azimuth", "elevation")
    train_rows, test_rows = probe_sample(prepared, splits, *probe_images)
    train_images = center_crop(prepared.images["training"][train_rows])
    test_images = center_crop(prepared.images["testing"][test_rows])
    tables = []
    # Two references: "constant" (no features: the probe predicts the fitting set's mean, the score of
    # knowing nothing about the image) and raw pixels.
    subjects = [(None, None, "constant"), (None, None, "winning")]
    for one in loaded:
        kinds = ("winning", "masked") if is_capsule_model(one.name) else ("winning",)
        subjects += [(one.model, one.checkpoint, kind) for kind in kinds]
    for model, data, kind in subjects:
        if kind == "constant":
            train_x, test_x = np.zeros((len(train_rows), 1)), np.zeros((len(test_rows), 1))
        else:
            train_x = probe_features(model, train_images, capsule_features=kind)
            test_x = probe_features(model, test_images, capsule_features=kind)
        table = viewpoint_probe_table(train_x, test_x, prepared, train_rows, test_rows, splits)
        trained_on = None if data is None else data["split"]
        features = ("none (fit-set mean)" if kind == "constant" else "pixels" if data is None else "penultimate (1024)" if not is_capsule_model(data["model"])
                    else "winning class pose (16)" if kind == "winning" else "masked class poses (5x16)")
        table.insert(0, "model", kind if data is None and kind == "constant" else "pixels" if data is None
                     else data["model"])
        table.insert(1, "seed", None if data is None else data["config"].get("seed"))
        table.insert(2, "features", features)
        table.insert(3, "trained_on", trained_on)
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    shown = table.drop(columns=["r2_cos_azimuth", "r2_sin_azimuth", "fit_images"])
    spread = (table.groupby(["model", "features", "split", "views"], sort=False)
              [["r2_mean", "r2_elevation", "azimuth_error_deg", "elevation_error_deg"]]
              .agg(["mean", "std", "count"]))
    spread.columns = [f"{a}_{b}" for a, b in spread.columns]
    spread = spread.reset_index()
    click.echo(f"Pose probe: {prepared.describe()}, {len(train_rows)} training-file / {len(test_rows)} "
               f"testing-file images")
    click.echo(to_markdown(shown, float_digits=3))
    if any(one.checkpoint["split"] == "full" for one in loaded):
        click.echo(TRAINED_ON_ALL_VIEWS)
    if out is None:
        return
    write_csv(table, out / "pose-probe.csv")
    write_csv(spread, out / "pose-probe-seeds.csv")
    atomic_write_text(out / "pose-probe.md",
                      f"# Pose probe, {prepared.describe()}\n\n{TRAINED_ON_ALL_VIEWS}\n\n"
                      f"{to_markdown(shown, float_digits=3)}\n\n## Mean, std and count over seeds\n\n"
                      f"{to_markdown(spread, float_digits=3)}\n\nRidge probe on standardised features -> (cos az, "
                      "sin az, elevation in degrees), alpha chosen on familiar views of the held-out validation "
                      "toys. R^2 per test subset (relative to that subset's own mean); r2_mean averages the three "
                      "targets. azimuth_error_deg: mean |angle of predicted (cos, sin) - true azimuth|; "
                      "elevation_error_deg: mean |error|. constant: no features, the probe predicts the fitting set's "
                      "mean (what knowing nothing scores). pixels: the probe on raw centre-crop pixels. Split full: "
                      "the probe fitted on every view and scored on all test views. Written by "
                      "the command in pose-probe.json.\n")
    write_json(out / "pose-probe.json", provenance(
        checkpoints=[_checkpoint_record(one.path, one.checkpoint) for one in loaded], dataset=prepared.describe(),
        dataset_checksum=prepared.checksum, training_file_rows=len(train_rows), testing_file_rows=len(test_rows),
        note=TRAINED_ON_ALL_VIEWS, seconds=round(time.perf_counter() - start, 1)))
    click.echo(f"wrote {out / 'pose-probe.md'}, pose-probe.csv, pose-probe-seeds.csv, pose-probe.json")


def _reconstruct(checkpoint, data, model, prepared, steps, seconds, out, header) -> None:
    import torch

    from capsrobust.data.transforms import center_crop
    from capsrobust.experiments.decoder import pose_traversal, reconstruction_study, traversal_effects
    from capsrobust.provenance import provenance
    from capsrobust.reporting import atomic_write_text, to_markdown, write_csv, write_json

    start = time.perf_counter()
    fit_images, fit_labels = prepared.subset("train")
    held_images, held_labels = prepared.subset("validation")
    generator = torch.Generator().manual_seed(0)
    fit_pick = torch.randperm(len(fit_images), generator=generator)[:6000]
    held_pick = torch.randperm(len(held_images), generator=generator)[:500]
    fit_images, fit_labels = center_crop(fit_images[fit_pick]), fit_labels[fit_pick]
    held_images, held_labels = center_crop(held_images[held_pick]), held_labels[held_pick]
    result, held_poses, predicted = reconstruction_study(model, fit_images, fit_labels, held_images, held_labels,
                                                         steps=steps, time_budget_s=seconds)
    metrics = result.metrics
    click.echo(f"{header}: decoder {int(metrics['steps'])} steps in {metrics['seconds']:.0f} s on "
               f"{len(fit_images)} training images; held-out MSE {metrics['decoder_mse']:.5f} vs class-mean image "
               f"{metrics['class_mean_mse']:.5f} vs overall mean image {metrics['overall_mean_mse']:.5f}")
    steps_sd = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
    effects = []
    figures = []
    # One correctly classified held-out image per class (the first of each), traversed.
    for k in range(int(held_labels.max()) + 1):
        hits = ((held_labels == k) & (predicted == k)).nonzero().flatten()
        if not len(hits):
            continue
        i = int(hits[0])
        traversal = pose_traversal(result, held_poses[i], k, steps_sd)
        table = traversal_effects(traversal, steps_sd).assign(class_index=k)
        effects.append(table)
        figures.append((k, i, traversal, table))
    import pandas as pd

    effect_table = pd.concat(effects, ignore_index=True) if effects else pd.DataFrame()
    if len(effect_table):
        summary = effect_table.pivot_table(index="entry", columns="class_index", values="mean_abs_change_grey")
        click.echo("Mean absolute change (grey levels) between -3 and +3 std of each pose entry, per class:")
        click.echo(to_markdown(summary.add_prefix("class ").reset_index(), float_digits=1))
    if out is None:
        return
    from capsrobust.inspect_plots import plot_pose_traversal, plot_reconstructions

    for k, i, traversal, table in figures:
        plot_pose_traversal(traversal, steps_sd, out / f"traversal-class{k}.png", original=held_images[i],
                            effects=table["mean_abs_change_grey"].to_numpy(),
                            title=f"class {k}: each pose entry moved by -3..+3 of its std (left camera); "
                                  "right: mean |change| in grey levels")
    with torch.no_grad():
        from capsrobust.experiments.decoder import masked_poses

        shown = torch.cat([(held_labels == k).nonzero().flatten()[:2] for k in range(int(held_labels.max()) + 1)])
        decoded = result.decoder(masked_poses(held_poses[shown], predicted[shown]))
        means = torch.stack([fit_images[fit_labels == int(k)].mean(0) for k in held_labels[shown]])
    plot_reconstructions(held_images[shown], decoded, out / "reconstructions.png", class_means=means,
                         title=f"held-out validation images, their reconstructions from the winning class pose, "
                               f"and the class-mean image (MSE {metrics['decoder_mse']:.4f} vs "
                               f"{metrics['class_mean_mse']:.4f})")
    write_csv(effect_table, out / "traversal-effects.csv")
    atomic_write_text(out / "decoder.md",
                      f"# Reconstructions, {header}\n\nDecoder (masked class poses -> 32x32 input, MLP 512-1024) "
                      f"trained on the frozen net: {int(metrics['steps'])} Adam steps, {metrics['seconds']:.0f} s, "
                      f"{len(fit_images)} training images (true-class masking).\n\nHeld-out MSE (500 validation "
                      f"images, winning-class masking): decoder {metrics['decoder_mse']:.5f}, class-mean image "
                      f"{metrics['class_mean_mse']:.5f}, overall mean image {metrics['overall_mean_mse']:.5f}.\n\n"
                      + (f"## Change per pose entry (-3 to +3 std), grey levels\n\n"
                         f"{to_markdown(summary.add_prefix('class ').reset_index(), float_digits=1)}\n"
                         if len(effect_table) else "") + "\nWritten by the command in decoder.json.\n")
    write_json(out / "decoder.json", provenance(checkpoint=_checkpoint_record(checkpoint, data), metrics=metrics,
                                                fit_images=len(fit_images), held_images=len(held_images),
                                                seconds=round(time.perf_counter() - start, 1)))
    click.echo(f"wrote {out / 'decoder.md'}, reconstructions.png, traversal-class*.png, traversal-effects.csv, "
               "decoder.json")
