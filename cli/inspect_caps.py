"""``capsrobust inspect``: look inside a capsule net (layer statistics, routing, pose probe, reconstructions)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from capsrobust.experiments.inspection import Subjects


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
    from capsrobust.experiments.inspection import load_subjects

    _check_options(routing, image_index, per_class, compare, pose_probe)
    subjects = load_subjects(checkpoint, data_dir=data_dir, compare=compare,
                             needs_capsule=_capsule_views(routing, reconstruct, pose_probe))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if not (routing or pose_probe or reconstruct):
        _layer_statistics(subjects, count, as_json)
    if routing:
        _routing(subjects, image_index, per_class or 16, out)
    if pose_probe:
        _pose_probe(subjects, probe_images, out)
    if reconstruct:
        _reconstruct(subjects, decoder_steps, decoder_seconds, out)


def _check_options(routing: bool, image_index: int | None, per_class: int | None, compare: tuple[Path, ...],
                   pose_probe: bool) -> None:
    """One-line errors for options that exclude or need each other."""
    from capsrobust_cli.errors import UserError

    if image_index is not None and per_class is not None:
        raise UserError("--image and --per-class exclude each other: one image, or K images of each class")
    if (image_index is not None or per_class is not None) and not routing:
        raise UserError("--image and --per-class choose the images of --routing; add --routing")
    if compare and not pose_probe:
        raise UserError("--compare adds checkpoints to --pose-probe; add --pose-probe")


def _capsule_views(routing: bool, reconstruct: bool, pose_probe: bool) -> list[str]:
    """The requested views that need a capsule net (the default layer statistics, ``inspect``, among them)."""
    wanted = [flag for flag, on in (("--routing", routing), ("--reconstruct", reconstruct)) if on]
    return wanted or ([] if pose_probe else ["inspect"])


def _wrote(paths: list[Path]) -> str:
    """``wrote DIR/FIRST, SECOND, ...``: the first file with its directory, the rest by name."""
    return f"wrote {paths[0]}, {', '.join(p.name for p in paths[1:])}"


def _layer_statistics(subjects: "Subjects", count: int, as_json: bool) -> None:
    from capsrobust.experiments.inspection import layer_statistics
    from capsrobust.reporting import to_markdown

    table, images = layer_statistics(subjects.main.model, subjects.data, count)
    if as_json:
        click.echo(json.dumps({"checkpoint": str(subjects.path), "step": subjects.checkpoint["step"],
                               "dataset": subjects.data.describe(), "images": images,
                               "layers": table.to_dict(orient="records")}, indent=2))
        return
    click.echo(f"{subjects.header()}: {images} validation images")
    click.echo(to_markdown(table, float_digits=3))


def _routing(subjects: "Subjects", image_index: int | None, per_class: int, out: Path | None) -> None:
    from capsrobust.data.transforms import center_crop
    from capsrobust.evaluation.routing_stats import inspect_routing
    from capsrobust.experiments.inspection import routing_images
    from capsrobust.reporting.inspection import routing_subject, routing_text, write_routing_report

    started = time.perf_counter()
    images, labels, chosen = routing_images(subjects.data, image_index, per_class)
    records, class_table, conv_table = inspect_routing(subjects.main.model, center_crop(images), labels)
    what = routing_subject(image_index, per_class, labels)
    click.echo(routing_text(subjects.header(), what, class_table, conv_table))
    if out is not None:
        click.echo(_wrote(write_routing_report(
            out, checkpoint_path=subjects.path, checkpoint=subjects.checkpoint, header=subjects.header(), what=what,
            image_index=image_index, records=records, labels=labels, class_table=class_table,
            conv_table=conv_table, indices=chosen, started=started)))


def _pose_probe(subjects: "Subjects", probe_images: tuple[int, int], out: Path | None) -> None:
    from capsrobust.experiments.inspection import pose_probe
    from capsrobust.reporting.inspection import (combine_probe_tables, label_probe_table, pose_probe_text,
                                                 write_pose_probe_report)

    started = time.perf_counter()
    loaded = [subjects.main, *subjects.others]
    probe = pose_probe(loaded, subjects.data, probe_images)
    table = combine_probe_tables([label_probe_table(t, checkpoint, kind) for t, checkpoint, kind in probe.tables])
    click.echo(pose_probe_text(table, subjects.data, training_rows=probe.training_rows,
                               testing_rows=probe.testing_rows,
                               trained_on_all_views=any(one.checkpoint["split"] == "full" for one in loaded)))
    if out is not None:
        click.echo(_wrote(write_pose_probe_report(
            out, table, subjects.data, checkpoints=[(one.path, one.checkpoint) for one in loaded],
            training_rows=probe.training_rows, testing_rows=probe.testing_rows, started=started)))


def _reconstruct(subjects: "Subjects", steps: int, seconds: float, out: Path | None) -> None:
    from capsrobust.experiments.inspection import TRAVERSAL_STEPS, reconstruction
    from capsrobust.reporting.inspection import reconstruction_text, traversal_text, write_reconstruction_report

    started = time.perf_counter()
    done = reconstruction(subjects.main.model, subjects.data, steps=steps, seconds=seconds)
    click.echo(reconstruction_text(subjects.header(), done.result.metrics, len(done.fit_images)))
    if done.traversals:
        click.echo(traversal_text(done.traversals))
    if out is not None:
        click.echo(_wrote(write_reconstruction_report(
            out, checkpoint_path=subjects.path, checkpoint=subjects.checkpoint, header=subjects.header(),
            result=done.result, fit_images=done.fit_images, fit_labels=done.fit_labels,
            held_images=done.held_images, held_labels=done.held_labels, held_poses=done.held_poses,
            predicted=done.predicted, traversals=done.traversals, steps=TRAVERSAL_STEPS, started=started)))
