"""``capsrobust study``: the whole study, one command, one report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

STUDY_HELP = """\
Run the whole study -- train, match, attack, viewpoint splits -- and write one report.

Per seed: the capsule net and the CNN trained on the full split; the clean-error-matched pair (the
CNN stopped when its validation error reaches the capsule net's); the attack sweep on that pair
(FGSM/BIM untargeted and targeted, PGD, AutoAttack (quick: APGD), transfer, the vote attack) with
the sanity checks; then Table 2 of the paper on the azimuth and elevation splits over all seeds.

OUT gets REPORT.md and report.html (figures embedded; opens offline in a browser), whose first
lines answer each question -- attacks, novel azimuths, novel elevations: who is better, by how
much, the spread over seeds, and whether the sanity checks support it -- then every table and
figure, the paper's smallNORB numbers in separate labelled tables, and provenance.json.

Resumable: each stage writes its files into OUT/stages/<stage>/ (done.json last) and trainings
checkpoint as they go; rerun with --reuse and finished stages are skipped, interrupted trainings
resumed. --budget quick (a smoke run, minutes on 2 cores; its report says so) or full (the real
study: capsules-small 30 epochs, the CNN 20, as results/train/ trained them). --train-runs DIR
takes the full-split trainings from DIR/<capsule model>-seed<k>/ and DIR/cnn-seed<k>/ (finished
runs, read only, checked against the data) instead of training them. --readme FILE copies the
answers into FILE between '<!-- study-headline:start -->' and '<!-- study-headline:end -->'.

\b
Examples:
  capsrobust study --budget quick --out results/study-quick        # smoke run, minutes
  capsrobust study --budget full --train-runs results/train --out results/study
  capsrobust study --budget full --out results/study --reuse       # continue after a kill
  capsrobust study --budget full --train-runs results/train --out results/study --reuse --readme README.md
  capsrobust study --data-dir ~/smallnorb --mode mono --seeds 3 --budget full
"""


@click.command(help=STUDY_HELP)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="smallNORB directory [default: synthnorb from the cache].")
@click.option("--mode", default="stereo", show_default=True, help="Input: stereo (2 channels) or mono.")
@click.option("--budget", default="quick", show_default=True, help="quick (smoke run) or full.")
@click.option("--seeds", type=int, default=None, help="Number of seeds (0, 1, ...) [default: the budget's, 2].")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output directory [default: results/study-BUDGET].")
@click.option("--reuse", is_flag=True, help="Continue the study in OUT: skip finished stages, resume trainings.")
@click.option("--train-runs", type=click.Path(path_type=Path), default=None,
              help="Take the full-split trainings (finished runs, read only) from this directory, e.g. results/train.")
@click.option("--readme", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also copy the report's answers into this file, between its study-headline markers.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def study(data_dir: Path | None, mode: str, budget: str, seeds: int | None, out_dir: Path | None, reuse: bool,
          train_runs: Path | None, readme: Path | None, no_progress: bool) -> None:
    """The whole study (help text in STUDY_HELP)."""
    from capsrobust.experiments.study import run_study
    from capsrobust.reporting.study import answers, check_headline_markers, copy_headline, write_study_report
    from capsrobust.training.loop import TrainingInterrupted
    from capsrobust_cli.viewpoint import command_line

    out = out_dir or Path("results") / f"study-{budget}"
    if readme is not None:
        check_headline_markers(readme)  # before the study, not after it
    try:
        result = run_study(out, budget=budget, seeds=seeds, data_dir=data_dir, mode=mode, reuse=reuse,
                           train_runs=train_runs, progress=not no_progress, log=lambda m: click.echo(m, err=True))
    except (TrainingInterrupted, KeyboardInterrupt) as exc:
        # Finished stages and the training state are on disk: nothing is lost.
        click.echo(f"study interrupted ({exc or 'Ctrl-C'}); continue with the same command and --reuse", err=True)
        sys.exit(130)
    paths = write_study_report(result, command=command_line(click.get_current_context(), out))
    if result.budget.smoke:
        click.echo("SMOKE RUN (--budget quick): not for conclusions.")
    for answer in answers(result):
        click.echo(f"- {answer.line}")
    click.echo(f"wrote {', '.join(p.name for p in paths[:3])} and {len(paths) - 3} figures to {out} "
               f"({result.seconds:.0f} s)")
    if readme is not None:
        click.echo(f"copied the answers into {copy_headline(readme, out)}")
