"""``capsrobust viewpoint-split``: novel-viewpoint error of the CNN and a capsule net at matched familiar error."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click

VIEWPOINT_HELP = """\
Table 2 of the paper for SPLIT (azimuth or elevation): train the CNN and a capsule net on the
familiar views only, take them where their familiar errors match, and compare their error on
novel views.

\b
azimuth:   familiar azimuths 300°-40° (6 of 18); novel: the 12 others (60°-280°)
elevation: familiar elevations 30°-40° (the 3 lowest); novel: 45°-70°

Both models keep an evaluation-only checkpoint at every evaluation (about 40 per run) and every
one is scored on the test set. Matching goes both ways, per seed: the model that is weaker on
familiar views sets the target (its best familiar error, smoothed over neighbouring evaluations)
and the stronger one is taken at its checkpoint nearest it; a pair more than 1 point apart is
reported as such. Both protocols are reported: `validation` matches on the held-out validation
toys; `test-familiar (paper)` matches on the familiar test images of half the lightings and
reports on the other half. Novel-error differences, at the matched pair and along the
novel-vs-familiar curves at common familiar levels, come with 95 % intervals from a bootstrap
over the test toys. On synthnorb the same test toys are also rendered at views outside
smallNORB's grid (elevations 0°-25° and 75°-85°, or the odd-10° azimuths) as an extrapolation
test set (rendered once into the cache; --no-extrapolation skips it).

Runs live in OUT/runs/<model>-seed<k>/; with --reuse, finished trainings are reused and
interrupted ones resumed, so a killed experiment continues where it stopped. Writes table2.md/.csv
(the paper's smallNORB numbers in a separate, labelled table), per_seed.csv, pairs.csv,
differences.csv, trajectory.csv (every kept checkpoint with its errors and SHA-256),
distance.md/.csv, novel_vs_familiar.png, error_vs_distance.png and provenance.json (command,
commit, seeds, dataset checksum, budget, the matched checkpoints' SHA-256s) into OUT.

\b
Examples:
  capsrobust viewpoint-split azimuth --budget quick --seeds 1      # smoke run, minutes
  capsrobust viewpoint-split elevation --seeds 3 --budget full     # the real experiment
  capsrobust viewpoint-split azimuth --data-dir ~/smallnorb --no-extrapolation
  capsrobust viewpoint-split azimuth --reuse                       # continue / re-report
"""


def command_line(ctx: click.Context, out: Path) -> str:
    """The command with every option spelled out (defaults included), for provenance.json."""
    parts = ["capsrobust", str(ctx.info_name)]
    for param in ctx.command.params:
        value: Any = out if param.name == "out_dir" else ctx.params.get(param.name or "")
        if isinstance(param, click.Argument):
            parts.append(str(value))
        elif isinstance(param, click.Option) and param.is_flag:
            if value:
                parts.append(param.opts[0])
            elif value is False and param.secondary_opts:
                parts.append(param.secondary_opts[0])
        elif value is not None and isinstance(param, click.Option):
            parts += [param.opts[0], str(value)]
    return shlex.join(parts)


@click.command("viewpoint-split", help=VIEWPOINT_HELP)
@click.argument("split")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="smallNORB directory [default: synthnorb from the cache].")
@click.option("--mode", default="stereo", show_default=True, help="Input: stereo (2 channels) or mono.")
@click.option("--seeds", type=int, default=3, show_default=True,
              help="Number of seeds (0, 1, ...); mean ± std over them.")
@click.option("--budget", default="full", show_default=True,
              help="quick: 200 steps each, 30 kept checkpoints, for smoke runs; full: 10 epochs each, 40 kept "
                   "checkpoints.")
@click.option("--capsule-model", default="capsules-small", show_default=True, help="capsules or capsules-small.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory [default: results/viewpoint/SPLIT].")
@click.option("--reuse", is_flag=True, help="Reuse finished runs in OUT/runs and resume interrupted ones.")
@click.option("--extrapolation/--no-extrapolation", default=None,
              help="Also test on views outside smallNORB's grid [default: on for synthnorb].")
@click.option("--steps", type=int, default=None, help="Override the budget: total steps of each model.")
@click.option("--epochs", type=float, default=None, help="Override the budget: epochs of each model.")
@click.option("--cnn-steps", type=int, default=None, help="Override the budget: total steps of the CNN only.")
@click.option("--capsule-steps", type=int, default=None, help="Override the budget: total steps of the capsule net only.")
@click.option("--batch-size", type=int, default=None, help="Override the budget's batch size (32).")
@click.option("--eval-every", type=int, default=None,
              help="Override: steps between evaluations (each keeps a checkpoint, a matching candidate) of both "
                   "models [default: about 40 per run].")
@click.option("--iterations", type=int, default=None, help="EM routing iterations of the capsule net [default: 3].")
@click.option("--lambda-scale", type=float, default=None,
              help="Multiply the capsule net's EM inverse temperatures (1 = official) [default: 1].")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def viewpoint_split(split: str, data_dir: Path | None, mode: str, seeds: int, budget: str, capsule_model: str,
                    out_dir: Path | None, reuse: bool, extrapolation: bool | None, steps: int | None,
                    epochs: float | None, cnn_steps: int | None, capsule_steps: int | None,
                    batch_size: int | None, eval_every: int | None, iterations: int | None,
                    lambda_scale: float | None, no_progress: bool) -> None:
    """Viewpoint generalisation at matched familiar error (help text in VIEWPOINT_HELP)."""
    from capsrobust.errors import ConfigError
    from capsrobust.evaluation.viewpoint import viewpoint_split as check_split
    from capsrobust.experiments.viewpoint import get_budget, viewpoint_experiment
    from capsrobust.reporting.viewpoint import distance_markdown, table2_markdown, write_report

    check_split(split)
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    chosen = get_budget(budget).with_overrides(steps=steps, epochs=epochs, batch_size=batch_size,
                                               eval_every=eval_every, iterations=iterations,
                                               lambda_scale=lambda_scale, cnn_steps=cnn_steps,
                                               capsule_steps=capsule_steps)
    out = out_dir or Path("results") / "viewpoint" / split
    result = viewpoint_experiment(
        split, out, data_dir=data_dir, mode=mode, seeds=range(seeds), budget=chosen, capsule_model=capsule_model,
        reuse=reuse, extrapolation=extrapolation, progress=not no_progress, log=lambda m: click.echo(m, err=True),
    )
    paths = write_report(result, out, command=command_line(click.get_current_context(), out))
    click.echo(table2_markdown(result))
    click.echo(distance_markdown(result))
    click.echo(f"wrote {', '.join(p.name for p in paths)} to {out}")
