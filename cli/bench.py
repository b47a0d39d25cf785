"""``capsrobust bench …``: throughput and memory of the models and of EM routing."""

from __future__ import annotations

import json
from pathlib import Path

import click

BENCH_HELP = """\
Measure speed and memory on this machine.

\b
`bench models` reports, for each model (capsules, capsules-small, cnn), each capsule net
under today's default training recipe and the paper's (3 routing iterations):
  - training images/s: forward + loss + backward + Adam step, batch 32, and its ratio to
    the CNN's;
  - inference images/s: forward only, batch 128;
  - peak RSS (resident memory high-water mark) of a fresh process running that model;
  - the counted work (matrix products, convolutions, einsums) per training image, the
    GFLOP/s that makes, and its share of this machine's own peak (a float32 matrix
    product measured in the same run);
  - capsules-small in one process on every thread against one-thread processes side by
    side (does one process use the cores as well as several do?);
  - the same for each capsule net with EM routing done two slower ways, in the same run:
    `stored` (PyTorch over the stored vote tensor [V, V^2], the fused C kernels off) and
    `straightforward` (vectorised the obvious way: per-patch normalisation, every
    intermediate stored), and the speedup ratios -- ratios are robust to a busy CPU,
    absolute numbers are not;
  - EM routing alone on ConvCaps1-sized inputs (votes included), fast vs stored vs
    straightforward.
  `fast` is the default: C kernels (built on first use with the system C compiler) that
  recompute the votes inside every EM contraction instead of storing them; the
  `vote_kernels` column says whether they ran (CAPSROBUST_VOTE_KERNELS=0 turns them off).

`bench data` times synthnorb rendering; `bench attacks` times the FGSM + BIM + PGD sweep on
the trained models.

\b
Examples:
  capsrobust bench models                 # full run (minutes on 2 cores)
  capsrobust bench models --quick --json  # a short run, machine-readable
  capsrobust bench data                   # render speed, extrapolated to the full dataset
  capsrobust bench attacks --n 100        # attack sweep time on the latest trained models
"""


@click.group(help=BENCH_HELP)
def bench() -> None:
    """Benchmark commands (help text in BENCH_HELP)."""


@bench.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of markdown tables.")
@click.option("--quick", is_flag=True, help="One warm-up and one timed step per measurement, a smaller straightforward run.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Timed steps per measurement, their median taken (default 5; 1 with --quick).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: torch's choice).")
@click.option("--compile", "use_compile", is_flag=True, help="Run the fast models through torch.compile (optional path; slow to start).")
@click.option("--side-by-side/--no-side-by-side", default=True, show_default=True,
              help="Also time capsules-small in one process against one-thread processes side by side.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write models.md, models.json and provenance.json (command, commit, CPU) here.")
@click.option("--train-batch", type=click.IntRange(min=1), default=32, show_default=True, hidden=True)
@click.option("--infer-batch", type=click.IntRange(min=1), default=128, show_default=True, hidden=True)
@click.option("--routing-batch", type=click.IntRange(min=1), default=None, hidden=True)
def models(as_json: bool, quick: bool, steps: int | None, threads: int | None, use_compile: bool, side_by_side: bool,
           out_dir: Path | None, train_batch: int, infer_batch: int, routing_batch: int | None) -> None:
    """Training/inference images/s and peak RSS per model, and EM routing fast vs stored vs straightforward."""
    import torch

    from capsrobust.evaluation.bench import bench_models, bench_processes, bench_routing
    from capsrobust.reporting.bench import bench_models_record, bench_models_text, write_bench_models

    steps = steps or (1 if quick else 5)
    warmup = 1 if quick else 3
    model_table, machine = bench_models(
        steps=steps, warmup=warmup, train_batch=train_batch, infer_batch=infer_batch,
        straightforward_batch=min(4 if quick else 8, train_batch), threads=threads, compile=use_compile,
    )
    processes = None
    if side_by_side:
        processes = bench_processes(processes=threads or torch.get_num_threads(), steps=steps, warmup=warmup,
                                    train_batch=train_batch, infer_batch=infer_batch)
    routing_table = bench_routing(routing_batch or (2 if quick else 8), steps=steps, threads=threads)
    if out_dir is not None:
        write_bench_models(out_dir, model_table, routing_table, machine, processes)
    if as_json:
        click.echo(json.dumps(bench_models_record(model_table, routing_table, machine, processes), indent=2))
        return
    click.echo(bench_models_text(model_table, routing_table, machine, processes))


LEARNING_HELP = """\
How fast each model variant learns, in one run (the instrument behind the training defaults).

\b
--mode subset (default): every variant trains on the same N fixed training images (centre
  crops, no augmentation) for --steps steps at batch 32; every --check-every steps it reports
  accuracy on all N images, the class-score spread (per image max - min of the capsule
  activations, or of the CNN's softmax probabilities) and, per variant, the steps to 95 %.
--mode full: short runs of `capsrobust train` on the full training set (augmentation on),
  validation error against training wall time; run directories go under --runs and are
  reused (or continued with --resume).

A variant is MODEL[@PRESET][:key=value,...]: training keys lr, batch_size, margin_schedule,
weight_decay; any other key is a model option (iterations, beta_parametrisation,
cost_normalisation, class_lambda_scale, conv_lambda_scale, coordinates, lambda_scale, ...).

\b
Examples:
  capsrobust bench learning                               # default vs paper capsules-small, and the cnn
  capsrobust bench learning capsules-small:iterations=1 capsules-small:iterations=3 --out results/probe
  capsrobust bench learning capsules-small cnn --mode full --steps 1500 --runs runs/probe --out results/probe-full
"""


@bench.command("learning", help=LEARNING_HELP)
@click.argument("variants", nargs=-1)
@click.option("--mode", type=click.Choice(["subset", "full"]), default="subset", show_default=True)
@click.option("--n", "n_images", type=click.IntRange(min=1), default=512, show_default=True,
              help="subset mode: training images to fit.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Steps per variant [default: 300 subset, 1500 full].")
@click.option("--check-every", type=click.IntRange(min=1), default=25, show_default=True,
              help="subset mode: steps between accuracy checks.")
@click.option("--eval-every", type=click.IntRange(min=1), default=300, show_default=True,
              help="full mode: steps between validation evaluations.")
@click.option("--max-eval-examples", type=click.IntRange(min=0), default=1000, show_default=True,
              help="full mode: validation images per evaluation (0: all).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Adam learning rate for every variant [default: each preset's: 3e-3 capsule nets, 1e-3 cnn].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="smallNORB directory; default: synthnorb.")
@click.option("--data-mode", type=click.Choice(["stereo", "mono"]), default="stereo", show_default=True)
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/probe"),
              show_default=True, help="full mode: where the run directories go.")
@click.option("--resume", is_flag=True, help="full mode: continue unfinished run directories.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of markdown tables.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write learning.md, curves.csv, summary.csv, learning.json, learning.png, provenance.json.")
@click.option("--no-progress", is_flag=True)
def learning(variants: tuple[str, ...], mode: str, n_images: int, steps: int | None, check_every: int,
             eval_every: int, max_eval_examples: int, batch_size: int, lr: float, seed: int, data_dir: Path | None,
             data_mode: str, runs_dir: Path, resume: bool, as_json: bool, out_dir: Path | None,
             no_progress: bool) -> None:
    """Learning probe (help text in LEARNING_HELP)."""
    from capsrobust.data.prepared import prepare_data
    from capsrobust.experiments.learning_probe import parse_variant, probe_full, probe_subset
    from capsrobust.provenance import cpu_model, provenance
    from capsrobust.reporting.bench import (learning_heading, learning_record, learning_settings, learning_text,
                                            write_learning_report)

    started = provenance(cpu=cpu_model())  # the commit that runs, taken before the (long) run
    parsed = [parse_variant(spec) for spec in (variants or ("capsules-small", "capsules-small@paper", "cnn"))]
    data = prepare_data(data_dir, "full", data_mode)
    steps = steps or (300 if mode == "subset" else 1500)
    if mode == "subset":
        curves, summary = probe_subset(parsed, data, n=n_images, steps=steps, check_every=check_every, seed=seed,
                                       batch_size=batch_size, lr=lr, progress=not no_progress)
    else:
        curves, summary = probe_full(parsed, data, runs_dir, steps=steps, eval_every=eval_every,
                                     max_eval_examples=max_eval_examples, seed=seed, batch_size=batch_size, lr=lr,
                                     resume=resume, progress=not no_progress, log=lambda m: click.echo(m, err=True))
    settings = learning_settings(mode, n_images=n_images, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                 eval_every=eval_every, max_eval_examples=max_eval_examples)
    heading = learning_heading(mode, data, settings)
    if out_dir is not None:
        write_learning_report(out_dir, mode, curves, summary, heading, data, started)
    if as_json:
        click.echo(json.dumps(learning_record(mode, settings, data, summary, curves), indent=2))
        return
    click.echo(learning_text(heading, summary))
