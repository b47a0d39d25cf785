"""``capsrobust evaluate``: test error of a trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--split", type=str, default=None, help="Viewpoint protocol [default: the one it was trained on].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="smallNORB directory [default: synthnorb from the cache].")
@click.option("--multi-crop", is_flag=True, help="The paper's 13-crop test instead of the centre crop.")
@click.option("--batch-size", type=int, default=256, show_default=True)
def evaluate(checkpoint: Path, split: str | None, data_dir: Path | None, multi_crop: bool, batch_size: int) -> None:
    """Test error of CHECKPOINT (familiar and novel test sets for split runs).

    \b
    Examples:
      capsrobust evaluate runs/capsules-small-full-seed0/best.pt
      capsrobust evaluate runs/caps-az/matched.pt --multi-crop
    """
    from capsrobust.evaluation.checkpoint_eval import evaluate_checkpoint

    table = evaluate_checkpoint(checkpoint, split=split, data_dir=data_dir, multi_crop=multi_crop, batch_size=batch_size)
    click.echo(f"dataset: {table.attrs['dataset']}  checkpoint: {checkpoint} (step {table.attrs['step']})")
    click.echo(table.to_markdown(index=False, floatfmt=".4f"))
