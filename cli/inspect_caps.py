"""``capsrobust inspect``: look inside a capsule net (layer statistics, routing, pose probe, reconstructions)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click


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


def _wrote(paths: list[Path]) -> str:
    """``wrote DIR/FIRST, SECOND, ...``: the first file with its directory, the rest by name."""
    return f"wrote {paths[0]}, {', '.join(p.name for p in paths[1:])}"


def _routing(checkpoint, data, model, prepared, image_index, per_class, out, header) -> None:
    from capsrobust.data.transforms import center_crop
    from capsrobust.evaluation.routing_stats import inspect_routing
    from capsrobust.reporting.inspection import routing_subject, routing_text, write_routing_report

    started = time.perf_counter()
    images, labels, chosen = _validation_choice(prepared, image_index, per_class)
    records, class_table, conv_table = inspect_routing(model, center_crop(images), labels)
    what = routing_subject(image_index, per_class, labels)
    click.echo(routing_text(header, what, class_table, conv_table))
    if out is not None:
        click.echo(_wrote(write_routing_report(
            out, checkpoint_path=checkpoint, checkpoint=data, header=header, what=what, image_index=image_index,
            records=records, labels=labels, class_table=class_table, conv_table=conv_table, indices=chosen,
            started=started)))


def _pose_probe(loaded, prepared, probe_images, out, header) -> None:
    import numpy as np

    from capsrobust.data.transforms import center_crop
    from capsrobust.evaluation.pose_probe import probe_features, probe_sample, viewpoint_probe_table
    from capsrobust.models import is_capsule_model
    from capsrobust.reporting.inspection import (combine_probe_tables, label_probe_table, pose_probe_text,
                                                 write_pose_probe_report)

    started = time.perf_counter()
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
        tables.append(label_probe_table(table, data, kind))
    table = combine_probe_tables(tables)
    click.echo(pose_probe_text(table, prepared, training_rows=len(train_rows), testing_rows=len(test_rows),
                               trained_on_all_views=any(one.checkpoint["split"] == "full" for one in loaded)))
    if out is not None:
        click.echo(_wrote(write_pose_probe_report(
            out, table, prepared, checkpoints=[(one.path, one.checkpoint) for one in loaded],
            training_rows=len(train_rows), testing_rows=len(test_rows), started=started)))


#: Where each pose entry is moved, in standard deviations of that entry over the fitting images.
TRAVERSAL_STEPS = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)


def _reconstruct(checkpoint, data, model, prepared, steps, seconds, out, header) -> None:
    import torch

    from capsrobust.data.transforms import center_crop
    from capsrobust.experiments.decoder import pose_traversal, reconstruction_study, traversal_effects
    from capsrobust.reporting.inspection import reconstruction_text, traversal_text, write_reconstruction_report

    started = time.perf_counter()
    fit_images, fit_labels = prepared.subset("train")
    held_images, held_labels = prepared.subset("validation")
    generator = torch.Generator().manual_seed(0)
    fit_pick = torch.randperm(len(fit_images), generator=generator)[:6000]
    held_pick = torch.randperm(len(held_images), generator=generator)[:500]
    fit_images, fit_labels = center_crop(fit_images[fit_pick]), fit_labels[fit_pick]
    held_images, held_labels = center_crop(held_images[held_pick]), held_labels[held_pick]
    result, held_poses, predicted = reconstruction_study(model, fit_images, fit_labels, held_images, held_labels,
                                                         steps=steps, time_budget_s=seconds)
    click.echo(reconstruction_text(header, result.metrics, len(fit_images)))
    traversals = []
    # One correctly classified held-out image per class (the first of each), traversed.
    for k in range(int(held_labels.max()) + 1):
        hits = ((held_labels == k) & (predicted == k)).nonzero().flatten()
        if not len(hits):
            continue
        i = int(hits[0])
        traversal = pose_traversal(result, held_poses[i], k, TRAVERSAL_STEPS)
        traversals.append((k, i, traversal, traversal_effects(traversal, TRAVERSAL_STEPS).assign(class_index=k)))
    if traversals:
        click.echo(traversal_text(traversals))
    if out is not None:
        click.echo(_wrote(write_reconstruction_report(
            out, checkpoint_path=checkpoint, checkpoint=data, header=header, result=result, fit_images=fit_images,
            fit_labels=fit_labels, held_images=held_images, held_labels=held_labels, held_poses=held_poses,
            predicted=predicted, traversals=traversals, steps=TRAVERSAL_STEPS, started=started)))
