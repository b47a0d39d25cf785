"""``capsrobust bench …``: throughput and memory of the models and of EM routing."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pandas as pd

BENCH_HELP = """\
Measure speed and memory on this machine.

\b
`bench models` reports, for each model (capsules, capsules-small, cnn):
  - training images/s: forward + loss + backward + Adam step, batch 32;
  - inference images/s: forward only, batch 128;
  - peak RSS (resident memory high-water mark) of a fresh process running that model;
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


def _records(table: pd.DataFrame) -> list[dict]:
    """Rows as dicts with NaN as null, so the output is strict JSON."""
    return json.loads(table.to_json(orient="records"))


@click.group(help=BENCH_HELP)
def bench() -> None:
    """Benchmark commands (help text in BENCH_HELP)."""


@bench.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of markdown tables.")
@click.option("--quick", is_flag=True, help="One warm-up and one timed step per measurement, a smaller straightforward run.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Timed steps per measurement (default 3; 1 with --quick).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: torch's choice).")
@click.option("--compile", "use_compile", is_flag=True, help="Run the fast models through torch.compile (optional path; slow to start).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write models.md, models.json and provenance.json (command, commit, CPU) here.")
@click.option("--train-batch", type=click.IntRange(min=1), default=32, show_default=True, hidden=True)
@click.option("--infer-batch", type=click.IntRange(min=1), default=128, show_default=True, hidden=True)
@click.option("--routing-batch", type=click.IntRange(min=1), default=None, hidden=True)
def models(as_json: bool, quick: bool, steps: int | None, threads: int | None, use_compile: bool,
           out_dir: Path | None, train_batch: int, infer_batch: int, routing_batch: int | None) -> None:
    """Training/inference images/s and peak RSS per model, and EM routing fast vs stored vs straightforward."""
    from capsrobust.bench import bench_models, bench_routing
    from capsrobust.reporting import to_markdown

    steps = steps or (1 if quick else 3)
    model_table = bench_models(
        steps=steps, warmup=1 if quick else 3, train_batch=train_batch, infer_batch=infer_batch,
        straightforward_batch=min(4 if quick else 8, train_batch), threads=threads, compile=use_compile,
    )
    routing_table = bench_routing(routing_batch or (2 if quick else 8), steps=steps, threads=threads)
    records = {"models": _records(model_table), "routing": _records(routing_table)}
    sections = [("Models", to_markdown(model_table)),
                ("EM routing alone (ConvCaps1 of `capsules`, votes included, 3 iterations)", to_markdown(routing_table))]
    if out_dir is not None:
        _write_bench(out_dir, records, sections)
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    click.echo("\n\n".join(f"## {heading}\n\n{body}" for heading, body in sections))


def _write_bench(out_dir: Path, records: dict, sections: list[tuple[str, str]]) -> None:
    """models.md / models.json / provenance.json, each written atomically."""
    from capsrobust.provenance import cpu_model, provenance
    from capsrobust.reporting import markdown_report, write_json, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    intro = ("Written by `capsrobust bench models` (exact command, commit and CPU in provenance.json). "
             "Random inputs: no dataset is involved. Ratios come from one run on one machine.")
    atomic_write_text(out_dir / "models.md", markdown_report("capsrobust bench models", sections, intro))
    write_json(out_dir / "models.json", records)
    write_json(out_dir / "provenance.json", provenance(cpu=cpu_model(),
                                                      torch_threads=records["models"][0]["threads"]))


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

    started = provenance(cpu=cpu_model())  # the commit that runs, taken before the (long) run
    parsed = [parse_variant(spec) for spec in (variants or ("capsules-small", "capsules-small@paper", "cnn"))]
    data = prepare_data(data_dir, "full", data_mode)
    if mode == "subset":
        steps = steps or 300
        curves, summary = probe_subset(parsed, data, n=n_images, steps=steps, check_every=check_every, seed=seed,
                                       batch_size=batch_size, lr=lr, progress=not no_progress)
        settings = f"{n_images} fixed training images, centre crops, no augmentation, {steps} steps, batch {batch_size}, lr {lr or 'preset'}, seed {seed}"
    else:
        steps = steps or 1500
        curves, summary = probe_full(parsed, data, runs_dir, steps=steps, eval_every=eval_every,
                                     max_eval_examples=max_eval_examples, seed=seed, batch_size=batch_size, lr=lr,
                                     resume=resume, progress=not no_progress, log=lambda m: click.echo(m, err=True))
        settings = (f"full training set with augmentation, {steps} steps, batch {batch_size}, lr {lr or 'preset'}, seed {seed}; "
                    f"validation error on {max_eval_examples or 'all'} held-out-toy images every {eval_every} steps")
    heading = f"Learning probe, {mode} mode: {data.describe()}; {settings}"
    if out_dir is not None:
        _write_learning(out_dir, mode, curves, summary, heading, data, started)
    if as_json:
        click.echo(json.dumps({"mode": mode, "settings": settings, "dataset": data.dataset, "data_mode": data.mode,
                               "summary": _records(summary), "curves": _records(curves)}, indent=2))
        return
    from capsrobust.reporting import to_markdown

    click.echo(f"{heading}\n\n{to_markdown(summary, float_digits=3)}")


def _write_learning(out_dir: Path, mode: str, curves: pd.DataFrame, summary: pd.DataFrame, heading: str,
                    data: object, started: dict) -> None:
    """learning.md / curves.csv / summary.csv / learning.json / learning.png / provenance.json, atomically."""
    from capsrobust.plots import plot_probe_curves
    from capsrobust.reporting import atomic_write_text, markdown_report, to_markdown, write_csv, write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(curves, out_dir / "curves.csv")
    write_csv(summary, out_dir / "summary.csv")
    write_json(out_dir / "learning.json", {"mode": mode, "summary": _records(summary), "curves": _records(curves)})
    if mode == "subset":
        plot_probe_curves(curves, out_dir / "learning.png", x="step", y="train_accuracy", xlabel="step",
                          ylabel="accuracy on the fixed training subset", title=heading, target=0.95)
    else:
        plot_probe_curves(curves.assign(seconds=curves["seconds"] / 60), out_dir / "learning.png", x="seconds",
                          y="validation_error", xlabel="training wall time (minutes, evaluations excluded)",
                          ylabel="validation error", title=heading)
    intro = (f"Written by `capsrobust bench learning` (exact command, commit, CPU in provenance.json). {heading}.\n\n"
             "![learning curves](learning.png)")
    atomic_write_text(out_dir / "learning.md", markdown_report("capsrobust bench learning", [
        ("Summary", to_markdown(summary, float_digits=3)), ("Curves", to_markdown(curves, float_digits=3))], intro))
    write_json(out_dir / "provenance.json", {**started, "dataset": data.dataset, "data_mode": data.mode,
                                             "dataset_checksum": data.checksum, "mode": mode})
