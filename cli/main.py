"""The ``capsrobust`` command: one lazily loading Click group, one module per subcommand."""

from __future__ import annotations

import click

from capsrobust import __version__
from capsrobust_cli.lazy import LazyCommand, LazyGroup

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
  capsrobust inspect runs/caps/best.pt --routing  # routing histograms (also --pose-probe, --reconstruct)
  capsrobust attack fgsm,bim --eps 0:0.3:0.02 --targeted   # adversarial error vs eps, both models
  capsrobust viewpoint-split azimuth --seeds 3    # Table 2: novel-view error at matched familiar error
  capsrobust study --budget quick                 # everything above in one run: REPORT.md + report.html
  capsrobust bench models                         # images/s and memory per model

Every table the tool writes names the dataset (smallNORB or synthnorb) and the input
mode (stereo or mono) that produced it.  Run `capsrobust COMMAND --help` for more.
"""


#: Every subcommand: where it lives and its one-line help (kept equal to the command's own by
#: tests/test_cli_lazy.py). Nothing is imported until a command runs or shows its own --help,
#: so `capsrobust --help` starts without torch; see capsrobust_cli/lazy.py.
COMMANDS: dict[str, LazyCommand] = {
    "attack": LazyCommand("capsrobust_cli.attack:attack", "Attack a capsule net and the CNN with ATTACK at every "
                          "--eps and tabulate the results side by side."),
    "bench": LazyCommand("capsrobust_cli.bench:bench", "Measure speed and memory on this machine.", children={
        "data": LazyCommand("capsrobust_cli.data_synth:bench_data", "Time synthnorb rendering on a subset and "
                            "extrapolate to the full dataset."),
        "attacks": LazyCommand("capsrobust_cli.bench_attacks:bench_attacks", "Seconds for FGSM, BIM and PGD (--steps "
                               "each) at 8 eps values on each model, and the total."),
    }),
    "data": LazyCommand("capsrobust_cli.data:data", "Inspect, verify and fetch the dataset."),
    "evaluate": LazyCommand("capsrobust_cli.evaluate:evaluate", "Test error of one or more CHECKPOINTs (familiar "
                            "and novel test sets for split runs)."),
    "export": LazyCommand("capsrobust_cli.export:export", "Write an evaluation-only copy of CHECKPOINT: model, "
                          "configuration and dataset identity, without the optimiser and RNG state (a third of "
                          "the size for Adam)."),
    "inspect": LazyCommand("capsrobust_cli.inspect_caps:inspect_caps", "Look inside a capsule-net CHECKPOINT: "
                           "layer statistics, --routing histograms, --pose-probe, --reconstruct."),
    "study": LazyCommand("capsrobust_cli.study:study", "Run the whole study -- train, match, attack, viewpoint "
                         "splits -- and write one report."),
    "train": LazyCommand("capsrobust_cli.train:train", "Train a model; checkpoints, metrics and provenance go to the "
                         "run directory."),
    "viewpoint-split": LazyCommand("capsrobust_cli.viewpoint:viewpoint_split", "Table 2 of the paper for SPLIT "
                                   "(azimuth or elevation): train the CNN and a capsule net on the familiar views "
                                   "only, take them where their familiar errors match, and compare their error on "
                                   "novel views."),
}


@click.group(cls=LazyGroup, lazy_subcommands=COMMANDS, help=HELP,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="capsrobust")
def cli() -> None:
    """Entry point (help text in HELP)."""
    from capsrobust.runtime import keep_freed_memory

    keep_freed_memory()  # EM routing's big temporaries: +25 % training images/s (capsrobust/runtime.py)
