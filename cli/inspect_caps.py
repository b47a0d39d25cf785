"""``capsrobust inspect``: activation and pose statistics of each capsule layer of a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("inspect")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--n", "count", type=click.IntRange(min=1), default=512, show_default=True,
              help="Validation images to look at (the first N of a fixed shuffle).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="smallNORB directory [default: synthnorb from the cache].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a markdown table.")
def inspect_caps(checkpoint: Path, count: int, data_dir: Path | None, as_json: bool) -> None:
    """What each capsule layer of a capsule-net CHECKPOINT does on validation images (centre crop):
    activation mean, spread (overall and within one image), quantiles, and pose scale.

    Activations stuck near one value (act_std ~0) carry no information: the layer passes pose
    means on whatever the image. The images come from the checkpoint's own dataset (checked as
    evaluate checks it) and are never test images.

    \b
    Examples:
      capsrobust inspect results/train/capsules-small-lam1-seed0/best.pt
      capsrobust inspect runs/caps/last.pt --n 128 --json
    """
    import torch

    from capsrobust.checkpoints import check_trained_on, load_checkpoint
    from capsrobust.data.prepared import prepare_data
    from capsrobust.data.transforms import center_crop
    from capsrobust.evaluation.capsule_stats import capsule_layer_statistics
    from capsrobust.reporting import to_markdown
    from capsrobust.training import model_from_checkpoint
    from capsrobust_cli.errors import UserError

    data = load_checkpoint(checkpoint)  # one-line error for a missing/foreign/truncated file
    if data["model"] == "cnn":
        raise UserError(f"{checkpoint} is a cnn checkpoint; inspect looks inside capsule nets "
                        "(capsules, capsules-small)")
    prepared = prepare_data(data_dir, data["split"], data["mode"])
    check_trained_on(checkpoint, data, prepared, advice="pass the --data-dir it was trained on")
    images, _ = prepared.subset("validation")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:count]
    table = capsule_layer_statistics(model_from_checkpoint(data), center_crop(images[order]))
    if as_json:
        click.echo(json.dumps({"checkpoint": str(checkpoint), "step": data["step"], "dataset": prepared.describe(),
                               "images": len(order), "layers": table.to_dict(orient="records")}, indent=2))
        return
    click.echo(f"{checkpoint} ({data['model']}, step {data['step']}), {len(order)} validation images of "
               f"{prepared.describe()}")
    click.echo(to_markdown(table, float_digits=3))
