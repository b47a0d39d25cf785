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
  capsrobust data info --dir ~/smallnorb          # counts, checksums, mode
  capsrobust data verify --dir ~/smallnorb        # SHA-256 against the official files
  capsrobust data download --dir ~/smallnorb      # fetch the six official .mat.gz files

Every table the tool writes names the dataset (smallNORB or synthnorb) and the input
mode (stereo or mono) that produced it.  Run `capsrobust COMMAND --help` for more.
"""


@click.group(cls=CapsRobustGroup, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="capsrobust")
def cli() -> None:
    """Entry point (help text in HELP)."""


def _register() -> None:
    # Imported here so `capsrobust --help` stays quick and import cycles are impossible.
    from capsrobust_cli.bench import bench
    from capsrobust_cli.data import data
    from capsrobust_cli.evaluate import evaluate
    from capsrobust_cli.train import train

    for command in (data, train, evaluate, bench):
        cli.add_command(command)


_register()
