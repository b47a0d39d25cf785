"""The ``capsrobust`` command: one Click group, one module per subcommand."""

from __future__ import annotations

import click

from capsrobust import __version__
from capsrobust_cli.errors import CapsRobustGroup

HELP = """\
Are matrix capsules with EM routing (Hinton, Sabour & Frosst, ICLR 2018) really more
robust than a matched CNN -- to adversarial attacks and to viewpoints never seen in
training?  capsrobust trains both on smallNORB (or the embedded synthnorb, used by
default when no --data-dir is given), attacks them, tests them on novel azimuths and
elevations, and tabulates error rates side by side.

\b
Examples:
  capsrobust data info                            # synthnorb (rendered on first use): counts, checksums
  capsrobust data info --dir ~/smallnorb          # the official files, wherever you keep them
  capsrobust data download --dir ~/smallnorb      # fetch the six official .mat.gz files
  capsrobust data show --out sheet.png            # look at the data
  capsrobust train --model capsules-small --out runs/caps    # checkpoints, metrics, run.json
  capsrobust evaluate runs/caps/best.pt           # test error
  capsrobust inspect runs/caps/best.pt            # activation/pose statistics per capsule layer
  capsrobust attack fgsm,bim --eps 0:0.3:0.02 --targeted   # adversarial error vs eps, both models
  capsrobust viewpoint-split azimuth --seeds 3    # Table 2: novel-view error at matched familiar error
  capsrobust bench models                         # images/s and memory per model

Every table the tool writes names the dataset (smallNORB or synthnorb) and the input
mode (stereo or mono) that produced it.  Run `capsrobust COMMAND --help` for more.
"""


@click.group(cls=CapsRobustGroup, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="capsrobust")
def cli() -> None:
    """Entry point (help text in HELP)."""
    from capsrobust.runtime import keep_freed_memory

    keep_freed_memory()  # EM routing's big temporaries: +25 % training images/s (capsrobust/runtime.py)


def _register() -> None:
    # Imported here so `capsrobust --help` stays quick and import cycles are impossible.
    from capsrobust_cli.attack import attack
    from capsrobust_cli.bench import bench
    from capsrobust_cli.bench_attacks import bench_attacks
    from capsrobust_cli.data import data
    from capsrobust_cli.data_synth import bench_data, difficulty, render, show
    from capsrobust_cli.evaluate import evaluate
    from capsrobust_cli.export import export
    from capsrobust_cli.inspect_caps import inspect_caps
    from capsrobust_cli.train import train
    from capsrobust_cli.viewpoint import viewpoint_split

    for command in (render, show, difficulty):
        data.add_command(command)
    bench.add_command(bench_data)
    bench.add_command(bench_attacks)
    for command in (data, train, evaluate, export, inspect_caps, attack, viewpoint_split, bench):
        cli.add_command(command)


_register()
