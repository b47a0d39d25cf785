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
