"""``capsrobust bench attacks``: how long the paper's attack sweep takes, with and without the savings."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from capsrobust.errors import ConfigError

#: The timed workload: FGSM, BIM(10), PGD(10) at 8 eps values (pixel units), untargeted.
BENCH_ATTACKS = ("fgsm", "bim", "pgd")
BENCH_EPS = (0.0125, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)


@click.command("attacks")
@click.option("--models", "models_text", default=None, metavar="PATH,PATH",
              help="Checkpoints (a capsule net and a cnn) [default: as `capsrobust attack`].")
@click.option("--n", "n", type=int, default=1000, show_default=True, help="Test images attacked per eps.")
@click.option("--steps", type=int, default=10, show_default=True, help="Iterations of BIM and PGD.")
@click.option("--batch-size", type=int, default=None,
              help="Images per forward/backward [default: per model, 16 for capsule nets, 128 for the CNN].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="smallNORB directory [default: synthnorb from the cache].")
@click.option("--savings-only", is_flag=True,
              help="Time only the sweep with the savings (no plain run, no table comparison).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write attacks.md, attacks.json and provenance.json (command, commit, CPU, wall time) here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of markdown tables.")
def bench_attacks(models_text: str | None, n: int, steps: int, batch_size: int | None, seed: int,
                  data_dir: Path | None, savings_only: bool, out_dir: Path | None, as_json: bool) -> None:
    """Seconds for FGSM, BIM and PGD (--steps each) at 8 eps values on each model, and the total.

    The same checkpoints, test images and sweep as `capsrobust attack fgsm,bim,pgd --eps
    0.0125,...,0.3` (untargeted, --n images per eps), run twice in one process: plain (every image
    attacked at every eps for every step) and with the savings (eps 0 not attacked, images wrong
    on the clean input not attacked, each image dropped once broken, the clean-image gradient shared
    by FGSM and BIM's first step across eps; see capsrobust.evaluation.robustness). It then checks
    that both runs give the same table, cell by cell and exactly (random starts are drawn once per
    image and shared by both runs), lists any cell that differs and exits with status 1 if one does.

    Reported per (model, attack): seconds of each run, the speed-up, and the images that went
    through forward + backward and through forward alone -- where the time went.

    \b
    Examples:
      capsrobust bench attacks                      # 1000 images, newest checkpoints
      capsrobust bench attacks --n 50 --models caps.pt,cnn.pt
      capsrobust bench attacks --savings-only --out results/bench/attacks
    """
    import torch

    from capsrobust.evaluation.attack_data import check_image_count, find_default_checkpoints, load_attack_setup
    from capsrobust.evaluation.robustness import SweepConfig, compare_savings, robustness_sweep
    from capsrobust.reporting import to_markdown

    check_image_count(n)
    config = SweepConfig(attacks=BENCH_ATTACKS, eps_values=BENCH_EPS, modes=("untargeted",), steps=steps,
                         batch_size=batch_size, seed=seed)
    config.validate()  # --steps and --batch-size, before the (slow) loading
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; pass a directory")
    paths = [p.strip() for p in models_text.split(",")] if models_text else find_default_checkpoints()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    setup = load_attack_setup(paths, data_dir, n=n, seed=seed, device=device)
    started = time.monotonic()
    if savings_only:
        table = robustness_sweep(setup.models, setup.images, setup.labels, config, dataset=setup.dataset)
        timings = _savings_timings(table)
        differences = None
    else:
        timings, differences, table = compare_savings(setup.models, setup.images, setup.labels, config,
                                                      dataset=setup.dataset)
    wall = time.monotonic() - started
    total = timings[timings.model == "total"].iloc[0]
    report = {"dataset": setup.dataset, "device": device, "threads": torch.get_num_threads(), "n": n, "steps": steps,
              "eps": list(BENCH_EPS), "attacks": list(BENCH_ATTACKS), "batch_sizes": table.attrs["batch_sizes"],
              "clean_error": dict(table.groupby("model", sort=False).clean_error.first()),
              "timings": json.loads(timings.to_json(orient="records")),
              "total_seconds_savings": float(total.seconds_savings), "wall_time_s": round(wall, 2)}
    if differences is not None:
        report.update(total_seconds_plain=float(total.seconds_plain), speedup=float(total.speedup),
                      tables_equal=differences.empty, cells_compared=int((table.attack != "worst-case").sum()),
                      differences=json.loads(differences.to_json(orient="records")))
    if out_dir is not None:
        _write(out_dir, report, timings, differences, setup)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"dataset: {setup.dataset}  device: {device}  threads: {torch.get_num_threads()}  n: {n}  "
                   f"batch sizes: {report['batch_sizes']}  eps: {', '.join(f'{e:g}' for e in BENCH_EPS)}\n")
        click.echo(to_markdown(timings, 2))
        click.echo("\n" + _summary(report))
        if differences is not None and not differences.empty:
            click.echo("\n" + to_markdown(differences, 4))
    if differences is not None and not differences.empty:
        raise SystemExit(1)


def _savings_timings(table):
    """The timing table of a sweep run only with the savings (same columns, plain ones empty)."""
    import pandas as pd

    rows = [{"model": model, "attack": attack, "seconds_savings": group.seconds.sum(),
             "gradient_images_savings": group.gradient_images.sum(), "forward_images_savings": group.forward_images.sum()}
            for (model, attack), group in table[table.attack != "worst-case"].groupby(["model", "attack"], sort=False)]
    rows += [{"model": m, "attack": "(clean predictions)", "seconds_savings": s}
             for m, s in table.attrs["clean_seconds"].items()]
    timings = pd.DataFrame(rows)
    total = {"model": "total", "attack": "", **{c: timings[c].sum(min_count=1) for c in timings.columns[2:]}}
    timings = pd.concat([timings, pd.DataFrame([total])], ignore_index=True)
    timings.insert(2, "seconds_plain", float("nan"))
    timings["speedup"] = float("nan")
    return timings


def _summary(report: dict) -> str:
    line = f"total with savings: {report['total_seconds_savings']:.1f} s"
    if "total_seconds_plain" not in report:
        return line + " (plain run skipped: --savings-only)"
    line = (f"total plain: {report['total_seconds_plain']:.1f} s, with savings: {report['total_seconds_savings']:.1f} s "
            f"(x{report['speedup']:.2f})\n")
    if report["tables_equal"]:
        return line + f"tables equal: yes, all {report['cells_compared']} cells identical (exact for fgsm, bim and pgd)"
    return line + f"tables equal: NO, {len(report['differences'])} of {report['cells_compared']} cells differ:"


def _write(out_dir: Path, report: dict, timings, differences, setup) -> None:
    from capsrobust.provenance import provenance
    from capsrobust.reporting import atomic_write_text, markdown_report, to_markdown, write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "attacks.json", report)
    sections = [("Seconds per model and attack", to_markdown(timings, 2)), ("Summary", _summary(report))]
    if differences is not None and not differences.empty:
        sections.append(("Cells that differ", to_markdown(differences, 4)))
    atomic_write_text(out_dir / "attacks.md", markdown_report(
        f"Attack sweep time: {setup.dataset}", sections,
        intro=f"FGSM + BIM({report['steps']}) + PGD({report['steps']}) x {len(report['eps'])} eps x {report['n']} "
              f"test images, untargeted, {report['threads']} torch threads on {report['device']}."))
    write_json(out_dir / "provenance.json", provenance(
        dataset=setup.data.dataset, mode=setup.data.mode, split=setup.data.split, dataset_checksum=setup.data.checksum,
        checkpoints=[c.record() for c in setup.checkpoints], n=report["n"], steps=report["steps"], eps=report["eps"],
        batch_sizes=report["batch_sizes"], wall_time_s=report["wall_time_s"],
        total_seconds_savings=report["total_seconds_savings"], total_seconds_plain=report.get("total_seconds_plain")))
