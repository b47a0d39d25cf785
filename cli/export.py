"""``capsrobust export``: an evaluation-only copy of a checkpoint, small enough to share."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the copy (atomically; an existing file is replaced, CHECKPOINT itself included).")
def export(checkpoint: Path, out: Path) -> None:
    """Write an evaluation-only copy of CHECKPOINT: model, configuration and dataset identity,
    without the optimiser and RNG state (a third of the size for Adam). The copy evaluates and
    attacks exactly like the original; it cannot resume training.

    \b
    Examples:
      capsrobust export runs/cnn-full-seed0/last.pt --out results/train/cnn.pt
    """
    from capsrobust.training.checkpoints import evaluation_only, load_checkpoint, model_from_checkpoint, save_checkpoint
    from capsrobust.errors import CheckpointError

    # No data to check against here (the copy keeps the dataset identity, and every command that
    # uses it checks that through load_model); but a copy that cannot rebuild its model is refused.
    data = load_checkpoint(checkpoint)
    try:
        model_from_checkpoint(data)
    except CheckpointError as exc:
        raise CheckpointError(f"{checkpoint}: {exc}; nothing written") from None
    before = checkpoint.stat().st_size
    payload = {k: v for k, v in evaluation_only(data).items() if k not in ("format", "version")}
    save_checkpoint(out, payload)  # atomic, so --out may be CHECKPOINT itself (slimmed in place)
    after = out.stat().st_size
    click.echo(f"wrote {out} ({after / 1e6:.1f} MB, from {before / 1e6:.1f} MB): {data['model']} step {data['step']}")
